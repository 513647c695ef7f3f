"""Pure train and eval steps (no TensorFlow, no I/O): jit them with shardings in `mbt.train`.

Randomness: `TrainState.rng` is a fixed base key; step `s` uses `fold_in(rng, s)` as its
dropout key (micro-batch `i` of gradient accumulation folds in `i`); the mixup lambdas come
from `mixup.sample_lambdas(seed, s, ...)` on the host. A resumed run therefore draws exactly
the random numbers an uninterrupted run would.
"""

import dataclasses
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from mbt import losses
from mbt import mixup as mixup_lib


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds.

    step: int32 scalar, optimiser updates done so far (= train batches consumed).
    params: the model parameters (float32).
    opt_state: the optax state.
    rng: uint32[2] base PRNG key of the run.
    """

    step: jnp.ndarray
    params: Any
    opt_state: Any
    rng: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static settings of a train/eval step (hashable, read from the config by the trainer).

    modalities: inputs the model reads.
    multi_label / class_splits: which loss (sigmoid CE / softmax CE / per-split softmax CE).
    label_smoothing: smoothing of the training targets.
    head_reduction: 'sum' | 'mean' over class-split heads.
    mixup_alpha: Beta(alpha, alpha) mixup; 0 = off. mixmod: one lambda per modality
    (the trainer draws the lambdas, see `mixup.sample_lambdas`).
    grad_accum_steps: micro-batches per optimiser update (the batch is split in this many).
    latent_mixup: the model mixes its hidden states in training and sows
    `intermediates/latent_mixup_lambda` and `latent_mixup_partner` (its family's
    `latent_mixup(config.model)`, e.g. SFT with `latent_mixup_alpha > 0`); the targets are
    then mixed with those λs and partners.
    latent_mixup_start_step: steps before it (0-based `state.step`) run the model with
    `latent_mixup_active=False` (nothing mixed); the family's `latent_mixup_start_step`.
    """

    modalities: tuple[str, ...]
    multi_label: bool
    class_splits: tuple[int, ...] | None = None
    label_smoothing: float = 0.0
    head_reduction: str = "sum"
    mixup_alpha: float = 0.0
    mixmod: bool = False
    grad_accum_steps: int = 1
    latent_mixup: bool = False
    latent_mixup_start_step: int = 0


def init_state(
    model,
    optimizer: optax.GradientTransformation,
    input_shapes: Mapping[str, Sequence[int]],
    seed: int,
    modalities: Sequence[str],
) -> TrainState:
    """Initial state from dummy inputs of batch size 1 (`input_shapes` exclude the batch)."""
    rng = jax.random.PRNGKey(seed)
    init_rng, dropout_rng, run_rng = jax.random.split(rng, 3)
    dummy = {name: jnp.zeros((1,) + tuple(input_shapes[name]), jnp.float32) for name in modalities}
    variables = model.init({"params": init_rng, "dropout": dropout_rng}, dummy, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=run_rng
    )


def _model_inputs(batch: Mapping[str, jnp.ndarray], modalities: Sequence[str]):
    return {name: batch[name] for name in modalities}


def _split_micro_batches(tree, num: int):
    """`[B, ...]` -> `[num, B/num, ...]`; micro-batch i takes rows i, i+num, i+2num, ...

    Striding (rather than contiguous blocks) keeps each micro-batch spread over all
    data-parallel devices when the batch axis is sharded.
    """

    def one(x):
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree_util.tree_map(one, tree)


def latent_mixup_targets(targets_BxC: jnp.ndarray, intermediates: Mapping[str, Any]) -> jnp.ndarray:
    """Targets of a model that mixed its hidden states (SFT latent mixup), `[B, C]`.

    The model sows `latent_mixup_lambda = ({modality: λ_m},)`, each λ_m `[B]` (one per
    example) or a scalar, and `latent_mixup_partner = ([B] int,)`, the example each one was
    mixed with (absent: b − 1, i.e. `roll(…, 1, axis=0)`). Its single head sees all
    modalities, so the targets mix with the mean λ over modalities, per example:
    `λ̄_b·y_b + (1 − λ̄_b)·y_partner(b)` (the SFT authors' loss λ̄·CE(y) + (1 − λ̄)·CE(y'), as
    cross-entropy is linear in the targets).
    """
    if "latent_mixup_lambda" not in intermediates:
        raise ValueError(
            "the step expects latent mixup (StepConfig.latent_mixup) but the model sowed no "
            "intermediates/latent_mixup_lambda (config.model.latent_mixup_alpha)"
        )
    batch = targets_BxC.shape[0]
    lambdas = intermediates["latent_mixup_lambda"][0]
    per_modality = [
        jnp.broadcast_to(jnp.asarray(v, jnp.float32), (batch,)) for v in lambdas.values()
    ]
    lam_Bx1 = jnp.mean(jnp.stack(per_modality), axis=0)[:, None]
    if "latent_mixup_partner" in intermediates:
        partner_targets = jnp.take(targets_BxC, intermediates["latent_mixup_partner"][0], axis=0)
    else:
        partner_targets = jnp.roll(targets_BxC, 1, axis=0)
    return lam_Bx1 * targets_BxC + (1.0 - lam_Bx1) * partner_targets


def train_step(
    state: TrainState,
    batch: Mapping[str, jnp.ndarray],
    mixup_lambdas: Mapping[str, jnp.ndarray] | None = None,
    *,
    model,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: StepConfig,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimiser update on a global batch.

    Args:
      state: current TrainState.
      batch: `{modality: [B, ...], 'label': [B, C], 'batch_mask': [B] (optional)}`.
      mixup_lambdas: `{modality: scalar}` when `cfg.mixup_alpha > 0`, else ignored.
    With `cfg.latent_mixup` the model mixes its hidden states itself; the targets are then
    mixed with the λ it sows (`latent_mixup_targets`).
    Returns:
      (new state, metrics): `loss` (training loss with mixup and smoothing, the objective),
      `grad_norm` (global L2 norm of the averaged gradient, before clipping),
      `learning_rate` (used for this update), `param_norm`.
    """
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    inputs = _model_inputs(batch, cfg.modalities)
    targets = batch["label"].astype(jnp.float32)
    weights = batch.get("batch_mask")
    if weights is None:
        weights = jnp.ones(targets.shape[:1], jnp.float32)
    if cfg.mixup_alpha > 0:
        if mixup_lambdas is None:
            raise ValueError(
                "config.mixup.alpha > 0 needs mixup_lambdas (mbt.mixup.sample_lambdas)"
            )
        inputs, targets = mixup_lib.mixup(
            inputs, targets, mixup_lambdas, per_modality_targets=cfg.mixmod
        )

    latent_mixup = cfg.latent_mixup

    def loss_fn(params, micro_inputs, micro_targets, micro_weights, rng):
        if latent_mixup:
            logits, variables = model.apply(
                {"params": params},
                micro_inputs,
                train=True,
                latent_mixup_active=state.step >= cfg.latent_mixup_start_step,
                rngs={"dropout": rng},
                mutable=["intermediates"],
            )
            micro_targets = latent_mixup_targets(micro_targets, variables["intermediates"])
        else:
            logits = model.apply(
                {"params": params}, micro_inputs, train=True, rngs={"dropout": rng}
            )
        return losses.classification_loss(
            logits,
            micro_targets,
            micro_weights,
            multi_label=cfg.multi_label,
            class_splits=cfg.class_splits,
            smoothing=cfg.label_smoothing,
            head_reduction=cfg.head_reduction,
        )

    grad_fn = jax.value_and_grad(loss_fn)
    if cfg.grad_accum_steps <= 1:
        loss, grads = grad_fn(state.params, inputs, targets, weights, dropout_rng)
    else:
        num = cfg.grad_accum_steps
        micro = _split_micro_batches((inputs, targets, weights), num)

        def accumulate(carry, xs):
            loss_sum, grad_sum = carry
            index, (m_inputs, m_targets, m_weights) = xs
            m_loss, m_grads = grad_fn(
                state.params, m_inputs, m_targets, m_weights, jax.random.fold_in(dropout_rng, index)
            )
            grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, m_grads)
            return (loss_sum + m_loss, grad_sum), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        (loss_sum, grad_sum), _ = jax.lax.scan(
            accumulate, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(num), micro)
        )
        loss = loss_sum / num
        grads = jax.tree_util.tree_map(lambda g: g / num, grad_sum)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "param_norm": optax.tree.norm(params),
    }
    new_state = state.replace(  # type: ignore[attr-defined]  # added by flax.struct.dataclass
        step=state.step + 1, params=params, opt_state=opt_state
    )
    return new_state, metrics


def eval_step(
    params: Any, batch: Mapping[str, jnp.ndarray], *, model, cfg: StepConfig
) -> dict[str, jnp.ndarray]:
    """Logits and loss of a (possibly padded) eval/test batch.

    Returns `logits [B, C]` (float32; per-modality heads averaged if the model returns a
    dict), `loss_sum` (sum over real examples of the unsmoothed loss), `num_examples`
    (sum of `batch_mask`), and the batch's `label`, `batch_mask`, `video_index` passed
    through so the caller gets them as global arrays.
    """
    logits = model.apply({"params": params}, _model_inputs(batch, cfg.modalities), train=False)
    if isinstance(logits, Mapping):
        logits = sum(logits.values()) / len(logits)
    logits = logits.astype(jnp.float32)
    targets = batch["label"].astype(jnp.float32)
    weights = batch["batch_mask"].astype(jnp.float32)
    per_example = losses.per_example_loss(
        logits,
        targets,
        multi_label=cfg.multi_label,
        class_splits=cfg.class_splits,
        head_reduction=cfg.head_reduction,
    )
    return {
        "logits": logits,
        "loss_sum": jnp.sum(per_example * weights),
        "num_examples": jnp.sum(weights),
        "label": targets,
        "batch_mask": weights,
        "video_index": batch["video_index"],
    }


def make_train_step(model, optimizer, schedule, cfg: StepConfig) -> Callable:
    """`train_step` with the static arguments bound.

    `(state, batch, mixup_lambdas) -> (state, metrics)`.
    """

    def step(state, batch, mixup_lambdas):
        return train_step(
            state,
            batch,
            mixup_lambdas,
            model=model,
            optimizer=optimizer,
            schedule=schedule,
            cfg=cfg,
        )

    return step


def make_eval_step(model, cfg: StepConfig) -> Callable:
    """`eval_step` with the static arguments bound: `(params, batch) -> outputs`."""

    def step(params, batch):
        return eval_step(params, batch, model=model, cfg=cfg)

    return step

"""SFT's latent mixup: mixing hidden states of two examples at one layer, in training.

A `MixPlan` is drawn once per forward pass (`draw_plan`): the layer to mix at, one λ per
modality (per example or per batch) and every example's partner. The encoder then mixes
`h_b ← λ_b·h_b + (1 − λ_b)·h_partner(b)` where the plan says (`mix_at`), and the trainer mixes
the targets with the same partners and the mean λ over modalities
(`mbt.train_step.latent_mixup_targets`).

Placements (`config.model.latent_mixup`), the authors' first (`yding37/sft`,
`SparseFusionTransformer.forward`, `utils/mixup.py`). Layers are numbered over the
pre-fusion blocks 0 … P−1 and then the joint blocks P … P+J−1 (the sparse block is not a
mixing point); "after layer l" is the output of that block:
- `within`: after one pre-fusion block l ∈ [0, P), every modality with its own λ_m.
- `cross`: l is drawn from [0, P) but nothing is mixed; only the targets are. This is what
  the authors' SFT does with `--mixup cross` (its forward mixes for `within`, `any` and
  `fused` only, while the training loop mixes the labels for every type but `none`).
- `fused`: after one joint block l ∈ [P, P+J), the joint sequence with the first modality's
  λ (their `mixup_lam[0]`; the targets still use the mean over modalities, as theirs do).
- `any`: l ∈ [0, P+J): `within` when l < P, else `fused` (their run.sh setting).
- `unimodal`: this project's earlier variant: point p ∈ [0, P+2) over the unimodal stages,
  0 = the embedded tokens, i = after pre-fusion block i−1, P+1 = after pooling ([CLS ;
  pooled tokens] per modality, before the CLS sum).
The layer is drawn uniformly from the placement's range (their `np.random.randint`) unless
`latent_mixup_layer` >= 0 fixes it.

λ (`latent_mixup_lambdas`): `per_sample` draws λ_{m,b} ~ Beta(α, α) for every modality m and
example b (their `--alpha_type permodality`); `per_batch` one λ_m per modality (earlier
variant). Partner (`latent_mixup_partner`): `permutation`, one random permutation of the batch
shared by every modality and layer (their `torch.randperm`; an example may draw itself);
`roll`, example b mixes with b − 1 (earlier variant, `mbt.mixup`'s convention).

`active` (a traced bool) turns the mix off without recompiling: λ = 1 everywhere, so the
hidden states and the targets are unchanged (their first `--warmup_epochs` train unmixed).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

PLACEMENTS = ("within", "cross", "fused", "any", "unimodal")
LAMBDAS = ("per_sample", "per_batch")
PARTNERS = ("permutation", "roll")


@dataclasses.dataclass(frozen=True)
class MixupSettings:
    """The latent-mixup keys of `config.model` (hashable, a module field)."""

    alpha: float
    placement: str = "any"
    lambdas: str = "per_sample"
    partner: str = "permutation"
    layer: int = -1  # -1: drawn per step; >= 0: fixed


class MixPlan(NamedTuple):
    """point: int32 scalar, the layer (or `unimodal` point) to mix after.
    lambdas: `{modality: [B]}` float32. partner: `[B]` int32, the example each one mixes with."""

    point: jax.Array
    lambdas: dict[str, jax.Array]
    partner: jax.Array


def point_range(placement: str, n_pre: int, n_post: int) -> tuple[int, int]:
    """[low, high) of the mixing points of `placement` (module docstring)."""
    if placement in ("within", "cross"):
        return 0, n_pre
    if placement == "fused":
        return n_pre, n_pre + n_post
    if placement == "any":
        return 0, n_pre + n_post
    if placement == "unimodal":
        return 0, n_pre + 2
    raise ValueError(f"config.model.latent_mixup={placement!r}; allowed: {PLACEMENTS}")


def draw_plan(
    key: jax.Array,
    settings: MixupSettings,
    modalities: tuple[str, ...],
    batch_size: int,
    n_pre: int,
    n_post: int,
    active: jax.Array | bool = True,
) -> MixPlan:
    """The mixing point, λs and partners of one training step (module docstring)."""
    point_key, lambda_key, partner_key = jax.random.split(key, 3)
    low, high = point_range(settings.placement, n_pre, n_post)
    if settings.layer >= 0:
        point = jnp.asarray(settings.layer, jnp.int32)
    else:
        point = jax.random.randint(point_key, (), low, high, dtype=jnp.int32)
    shape = (batch_size,) if settings.lambdas == "per_sample" else ()
    lambdas = {}
    for m, k in zip(modalities, jax.random.split(lambda_key, len(modalities))):
        lam = jax.random.beta(k, settings.alpha, settings.alpha, shape, dtype=jnp.float32)
        lam = jnp.where(active, jnp.broadcast_to(lam, (batch_size,)), 1.0)
        lambdas[m] = lam
    if settings.partner == "permutation":
        partner = jax.random.permutation(partner_key, batch_size).astype(jnp.int32)
    else:
        partner = (jnp.arange(batch_size, dtype=jnp.int32) - 1) % batch_size
    return MixPlan(point=point, lambdas=lambdas, partner=partner)


def mix(h_BxLxD: jax.Array, lam_B: jax.Array, partner_B: jax.Array) -> jax.Array:
    """λ_b·h_b + (1 − λ_b)·h_partner(b) for every example b."""
    lam = lam_B.astype(h_BxLxD.dtype).reshape((-1,) + (1,) * (h_BxLxD.ndim - 1))
    return lam * h_BxLxD + (1 - lam) * jnp.take(h_BxLxD, partner_B, axis=0)


def mix_at(plan: MixPlan, point: int, tokens: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Every modality's hidden state mixed with its own λ if the plan's point is `point`."""
    return {
        m: jnp.where(plan.point == point, mix(h, plan.lambdas[m], plan.partner), h)
        for m, h in tokens.items()
    }


def mix_joint_at(plan: MixPlan, point: int, joint_BxLxD: jax.Array, first_modality: str):
    """The joint sequence mixed with the first modality's λ if the plan's point is `point`."""
    mixed = mix(joint_BxLxD, plan.lambdas[first_modality], plan.partner)
    return jnp.where(plan.point == point, mixed, joint_BxLxD)

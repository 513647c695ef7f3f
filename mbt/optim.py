"""Optimisers and learning-rate schedules built from `config.optimizer` and `config.lr`.

The optimiser sees the gradient *after* averaging over the global batch and over the
micro-batches of gradient accumulation (the scan in `mbt.train_step`), so the global-norm
clipping here always clips the averaged gradient.

Config keys read:
  config.optimizer.name           'sgd' (momentum, as in the paper) | 'adamw'
  config.optimizer.momentum       SGD momentum (0.9 in the paper); None or 0 = plain SGD
  config.optimizer.nesterov       SGD Nesterov momentum
  config.optimizer.b1, b2, eps    AdamW moments
  config.optimizer.weight_decay   decay of every parameter with >= 2 dims (`_decay_mask`):
                                  kernels, patch and position embeddings, the CLS [1, 1, D]
                                  and bottleneck [1, B, D] tokens, and also the query / key /
                                  value biases [heads, D / heads]; not the 1-D parameters
                                  (the other biases, LayerNorm scale and bias). AdamW: its
                                  decoupled decay; SGD: wd * param added to the clipped grad
  config.optimizer.grad_clip_norm global-norm clipping threshold; None or 0 = no clipping
  config.lr.schedule              'warmup_cosine' | 'constant' (both with the linear warmup)
  config.lr.base_lr               peak learning rate
  config.lr.warmup_steps          linear warmup length in optimiser steps, or
  config.lr.warmup_epochs         ... in epochs (the paper: 2.5); steps win when both are set
  config.lr.end_lr                learning rate at the end of the cosine decay
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("warmup_cosine", "constant")


def warmup_steps(lr_config: Any, steps_per_epoch: float) -> int:
    """Warmup length in optimiser steps from `warmup_steps` or `warmup_epochs`."""
    if lr_config.get("warmup_steps", None) is not None:
        return int(lr_config.warmup_steps)
    return int(round(float(lr_config.get("warmup_epochs", 0.0) or 0.0) * steps_per_epoch))


def make_lr_schedule(
    lr_config: Any, total_steps: int, steps_per_epoch: float = 1.0
) -> optax.Schedule:
    """Learning rate per optimiser step (a function of the int step count).

    Both schedules start with a linear warmup from 0 to `base_lr` whose length is
    `warmup_steps(lr_config, steps_per_epoch)`: `lr.warmup_steps` when it is not None (0 =
    no warmup), else `round(lr.warmup_epochs * steps_per_epoch)`; with the trainer defaults
    (`warmup_steps=None`, `warmup_epochs=2.5`) that is 2.5 epochs.

    `warmup_cosine`: the warmup (capped at `total_steps - 1`), then cosine decay to `end_lr`
    at `total_steps`. `constant`: the same warmup (not capped), then `base_lr` to the end;
    so `constant` is flat from step 0 only when the warmup is 0 (set `lr.warmup_steps=0`).
    """
    base_lr = float(lr_config.base_lr)
    warmup = warmup_steps(lr_config, steps_per_epoch)
    if lr_config.schedule == "constant":
        if warmup <= 0:
            return optax.constant_schedule(base_lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, base_lr, warmup), optax.constant_schedule(base_lr)],
            [warmup],
        )
    if lr_config.schedule == "warmup_cosine":
        warmup = min(warmup, max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=base_lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=float(lr_config.get("end_lr", 0.0) or 0.0),
        )
    raise ValueError(f"config.lr.schedule={lr_config.schedule!r} is not one of {SCHEDULES}")


def _decay_mask(params):
    """True for the parameters that get weight decay: every array with >= 2 dimensions.

    That includes the [1, 1, D] / [1, B, D] CLS and bottleneck tokens, the position
    embeddings and the [heads, D / heads] query / key / value biases; 1-D arrays (the other
    biases, LayerNorm scale and bias) are not decayed.
    """
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(opt_config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Optax chain: [clip global norm] -> [weight decay] -> SGD momentum / AdamW."""
    name = opt_config.name
    clip = opt_config.get("grad_clip_norm", None)
    weight_decay = float(opt_config.get("weight_decay", 0.0) or 0.0)
    parts = []
    if clip:
        parts.append(optax.clip_by_global_norm(float(clip)))
    if name == "sgd":
        if weight_decay:
            # Classic SGD weight decay: wd * param added to the (clipped) gradient.
            parts.append(optax.add_decayed_weights(weight_decay, mask=_decay_mask))
        momentum = opt_config.get("momentum", 0.9)
        parts.append(
            optax.sgd(
                schedule,
                momentum=momentum or None,
                nesterov=bool(opt_config.get("nesterov", False)),
            )
        )
    elif name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=float(opt_config.get("b1", 0.9)),
                b2=float(opt_config.get("b2", 0.999)),
                eps=float(opt_config.get("eps", 1e-8)),
                weight_decay=weight_decay,
                mask=_decay_mask,
            )
        )
    else:
        raise ValueError(f"config.optimizer.name={name!r} is not one of {OPTIMIZERS}")
    return optax.chain(*parts)

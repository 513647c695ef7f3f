"""Mixup and modality mixup ("mixmod") of a training batch.

Each example `i` is mixed with partner `i - 1` (the batch rolled by one along axis 0), with
one coefficient `lam ~ Beta(alpha, alpha)` for the whole batch:
  x_mixed = lam * x + (1 - lam) * x_partner,   y_mixed = lam * y + (1 - lam) * y_partner.

- Plain mixup: one `lam` shared by every modality; targets are one `[batch, C]` array.
- Mixmod: an independent `lam_m` per modality; targets become `{modality: [batch, C]}`,
  each mixed with its own modality's `lam_m`, so each modality's head (token classifier)
  is trained on labels that match how its own input was mixed. A model with a single head
  (`classifier='gap'`) is trained on the mean of these targets, which equals mixing the
  labels with the mean lambda (see `mbt.losses.classification_loss`).

The lambdas are drawn on the host with numpy (`sample_lambdas`, seeded by run seed and
step, so a resumed run draws the same ones) and enter the jitted step as scalars: XLA's
Beta/Gamma samplers are rejection loops that cost seconds of compile time per program.
"""

from collections.abc import Mapping
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def sample_lambdas(
    seed: int, step: int, alpha: float, names: Sequence[str], mixmod: bool
) -> dict[str, np.ndarray]:
    """`{modality: float32 0-d array}` for train step `step` (deterministic in seed and step).

    Plain mixup: the same Beta(alpha, alpha) draw for every name; mixmod: one draw per name
    (in sorted name order). alpha <= 0: all ones (no mixing).
    """
    names = sorted(names)
    if alpha is None or alpha <= 0:
        return {name: np.ones((), np.float32) for name in names}
    rng = np.random.default_rng([int(seed), int(step), 0x6D6978])
    draws = rng.beta(alpha, alpha, size=len(names) if mixmod else 1).astype(np.float32)
    return {name: np.asarray(draws[i if mixmod else 0]) for i, name in enumerate(names)}


def _mix(x: jnp.ndarray, lam) -> jnp.ndarray:
    """`lam * x + (1 - lam) * roll(x, 1, axis=0)`, computed in x's dtype."""
    lam = jnp.asarray(lam).astype(x.dtype)
    return lam * x + (1 - lam) * jnp.roll(x, 1, axis=0)


def mixup(
    inputs: Mapping[str, jnp.ndarray],
    targets: jnp.ndarray,
    lambdas: Mapping[str, jnp.ndarray],
    *,
    per_modality_targets: bool,
):
    """Mixes the inputs named in `lambdas`, each with its lambda; other inputs pass through.

    Args:
      inputs: `{modality: [batch, ...]}` model inputs.
      targets: `[batch, C]` float labels (one-hot, multi-hot or split one-hots).
      lambdas: `{modality: scalar}` (from `sample_lambdas`).
      per_modality_targets: True (mixmod) -> targets `{modality: [batch, C]}`, each mixed
        with its modality's lambda; False -> one `[batch, C]` array mixed with the lambda
        of the first name in sorted order (all names share it in plain mixup).
    Returns:
      (mixed inputs dict, mixed targets).
    """
    mixed_inputs = dict(inputs)
    for name, lam in lambdas.items():
        mixed_inputs[name] = _mix(inputs[name], lam)
    mixed_targets: jnp.ndarray | dict[str, jnp.ndarray]
    if per_modality_targets:
        mixed_targets = {name: _mix(targets, lam) for name, lam in lambdas.items()}
    else:
        mixed_targets = _mix(targets, lambdas[sorted(lambdas)[0]])
    return mixed_inputs, mixed_targets

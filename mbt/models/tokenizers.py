"""Turn each modality's input into a sequence of tokens `[batch, tokens, D]`.

Three kinds, chosen per modality by `config.model.tokenizers.<modality>.kind`:
- `2d`: non-overlapping 2-D patches of an image-like input `[B, H, W, C]` (spectrograms are
  `[B, time_bins, mel_bins, C]`), tokens ordered row-major over the patch grid.
- `temporal_sampling`: from a video `[B, T, H, W, C]` take `n_sampled_frames` frames at indices
  round(k·T/(n+1)), k = 1..n, and cut each into 2-D patches (tokens ordered time, row, column).
- `3d_conv`: non-overlapping tubelets `[t, h, w]` of a video, by a 3-D convolution whose kernel
  `[t, h, w, C, D]` can start from a 2-D kernel placed at the central frame or averaged over time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("2d", "temporal_sampling", "3d_conv")
KERNEL_INITS = ("central_frame_initializer", "average_frame_initializer", None)


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """How one modality is tokenised. `patches` is (h, w), or (t, h, w) for `3d_conv`."""

    kind: str
    patches: tuple[int, ...]
    n_sampled_frames: int | None = None
    kernel_init: str | None = None

    def validate(self, modality: str) -> None:
        key = f"config.model.tokenizers.{modality}"
        if self.kind not in KINDS:
            raise ValueError(f"{key}.kind={self.kind!r}; allowed: {KINDS}")
        want = 3 if self.kind == "3d_conv" else 2
        if len(self.patches) != want or any(int(p) < 1 for p in self.patches):
            raise ValueError(
                f"{key}.patches={self.patches!r} must hold {want} positive sizes "
                f"for kind {self.kind!r}"
            )
        if self.kind == "temporal_sampling" and not self.n_sampled_frames:
            raise ValueError(f"{key}.n_sampled_frames must be a positive int for temporal_sampling")
        if self.kernel_init not in KERNEL_INITS:
            raise ValueError(f"{key}.kernel_init={self.kernel_init!r}; allowed: {KERNEL_INITS}")

    def sampled_frames(self) -> int:
        """`n_sampled_frames`, which a `temporal_sampling` spec must set."""
        if self.n_sampled_frames is None:
            raise ValueError(f"{self.kind} tokenizer needs n_sampled_frames; it is None")
        return self.n_sampled_frames


_LECUN_NORMAL = nn.initializers.lecun_normal()


def central_frame_initializer(base_init=_LECUN_NORMAL):
    """3-D kernel init `[t, h, w, C, D]`: a 2-D kernel at time index t//2, zeros elsewhere.

    A tubelet model so initialised maps a static video to the same tokens as the 2-D model maps
    one of its frames.
    """

    def init(key, shape, dtype=jnp.float32):
        kernel_2d = base_init(key, shape[1:], dtype)
        return jnp.zeros(shape, dtype).at[shape[0] // 2].set(kernel_2d)

    return init


def average_frame_initializer(base_init=_LECUN_NORMAL):
    """3-D kernel init `[t, h, w, C, D]`: a 2-D kernel tiled over time and divided by t."""

    def init(key, shape, dtype=jnp.float32):
        kernel_2d = base_init(key, shape[1:], dtype)
        return jnp.broadcast_to(kernel_2d / shape[0], shape).astype(dtype)

    return init


def sampled_frame_indices(num_frames: int, n_sampled: int) -> np.ndarray:
    """Indices round(k·T/(n+1)) for k = 1..n, clipped to T-1; all frames when n >= T."""
    if n_sampled >= num_frames:
        return np.arange(num_frames)
    k = np.arange(1, n_sampled + 1)
    return np.minimum(np.round(k * num_frames / (n_sampled + 1)).astype(np.int32), num_frames - 1)


def token_grid(spec: TokenizerSpec, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Grid of tokens the tokenizer makes from one example of shape `input_shape` (no batch).

    `2d`: (H/ph, W/pw); `temporal_sampling`: (n, H/ph, W/pw); `3d_conv`: (T/pt, H/ph, W/pw).
    Sizes are floored, as a VALID convolution does.
    """
    if spec.kind == "2d":
        h, w = input_shape[:2]
        return (h // spec.patches[0], w // spec.patches[1])
    t, h, w = input_shape[:3]
    if spec.kind == "temporal_sampling":
        n = min(spec.sampled_frames(), t)
        return (n, h // spec.patches[0], w // spec.patches[1])
    pt, ph, pw = spec.patches
    return (t // pt, h // ph, w // pw)


def embed(
    x: jax.Array, spec: TokenizerSpec, hidden_size: int, *, name: str, dtype: Any = jnp.float32
) -> jax.Array:
    """Embeds one modality into `[batch, tokens, hidden_size]` with a strided convolution.

    Call inside a parent's `nn.compact` method: the convolution becomes the parent's submodule
    `name` (`embedding`, `embedding_<modality>`), holding `kernel` and `bias` directly.
    """
    if spec.kind == "2d":
        if x.ndim != 4:
            raise ValueError(f"{name}: 2d tokenizer expects [B, H, W, C]; got shape {x.shape}")
        kernel_init = nn.initializers.lecun_normal()
    elif x.ndim != 5:
        raise ValueError(f"{name}: {spec.kind} tokenizer expects [B, T, H, W, C]; got {x.shape}")
    elif spec.kind == "temporal_sampling":
        batch, frames, height, width, channels = x.shape
        x = x[:, sampled_frame_indices(frames, spec.sampled_frames())]
        sampled = x.shape[1]
        # Frames stacked vertically: one 2-D convolution patches every frame at once; patch rows
        # never straddle two frames because the height is cropped to a patch multiple first.
        rows = (height // spec.patches[0]) * spec.patches[0]
        x = x[:, :, :rows].reshape(batch, sampled * rows, width, channels)
        kernel_init = nn.initializers.lecun_normal()
    else:
        kernel_init = {
            "central_frame_initializer": central_frame_initializer(),
            "average_frame_initializer": average_frame_initializer(),
            None: nn.initializers.lecun_normal(),
        }[spec.kernel_init]
    y = nn.Conv(
        hidden_size,
        spec.patches,
        strides=spec.patches,
        padding="VALID",
        kernel_init=kernel_init,
        dtype=dtype,
        name=name,
    )(x)
    return y.reshape(y.shape[0], -1, y.shape[-1])

"""Early-fusion convolutional LSTM (C-LSTM; Barnum et al., 2020) for audio-visual clips.

Every stream becomes a sequence of 2-D maps over time `[B, T, H, W, C]`:
- video-like inputs (`rgb`, `flow`) are frames `[B, T, H, W, C]` as they come;
- audio-like inputs (`spectrogram`, `[B, time, mel, C]`) are cut into T consecutive time slices,
  one per video frame, each a map `[time // T, mel, C]` (optionally resized to `audio_map_size`).

`num_layers` ConvLSTM layers run over time; before each, the maps are downsampled spatially by
`spatial_strides[i]` (max pooling, or a strided convolution), which keeps the recurrence cheap.
`fusion_layer` k chooses where the streams meet:
- k = 0: the inputs are fused; all layers are shared;
- 0 < k < num_layers: k separate layers per stream, then shared layers;
- k = num_layers: late fusion — separate layers only; the pooled features are concatenated
  before the head, so no stream influences another before it.
Fusing resizes every stream's maps to the grid of the first video-like stream
(`jax.image.resize`, bilinear) and concatenates them on channels. The last hidden state is
global-average pooled over space and classified by `output_projection`.

Parameter tree: `convlstm_<i>_<modality>` (separate layers), `convlstm_<i>` (shared layers),
each holding `downsample` (with `downsample='conv'` and stride > 1) and `cell/{ih,hh}`
(the ConvLSTM's input-to-hidden and hidden-to-hidden convolutions, 4·features outputs in gate
order i, g, f, o), then `output_projection`.

`FAMILY` (end of file) is this model's `mbt.models.family.ModelFamily`; its partition rules
split every convolution's output features over the 'model' mesh axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mbt.models import common
from mbt.models import family

DOWNSAMPLES = ("pool", "conv")


def default_config() -> ml_collections.ConfigDict:
    """Every `config.model` key of the C-LSTM with small defaults (3 layers, input /4 /2 /2)."""
    return ml_collections.ConfigDict(
        {
            "name": "clstm",
            "modalities": ("rgb", "spectrogram"),
            "num_layers": 3,
            "features": (32, 64, 128),  # per layer, or one int for all
            "kernel_size": (3, 3),
            "spatial_strides": (4, 2, 2),  # downsampling before each layer
            "downsample": "pool",
            "fusion_layer": 0,
            "audio_map_size": None,  # (h, w) each audio slice is resized to; None: (time/T, mel)
            "audio_slices": None,  # T for audio when no video-like modality sets it
            "dropout_rate": 0.0,
            "dtype": "float32",
        }
    )


def per_layer(value: int | Sequence[int], num_layers: int, key: str) -> tuple[int, ...]:
    """One int per layer from an int or a sequence of `num_layers` ints (`key` names it)."""
    values = (value,) * num_layers if isinstance(value, int) else tuple(value)
    if len(values) != num_layers or any(not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(
            f"config.model.{key}={value!r} must be a positive int or "
            f"{num_layers} positive ints (one per layer)"
        )
    return values


def check_config(model_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the `config.model` key of a bad C-LSTM setting.

    `model_config` is merged over `default_config()` (`FAMILY.resolve`).
    """
    common.check_modalities(model_config)
    num_layers = model_config.num_layers
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"config.model.num_layers={num_layers!r} must be an integer >= 1")
    per_layer(model_config.features, num_layers, "features")
    per_layer(model_config.spatial_strides, num_layers, "spatial_strides")
    kernel = tuple(model_config.kernel_size)
    if len(kernel) != 2 or any(not isinstance(k, int) or k < 1 for k in kernel):
        raise ValueError(f"config.model.kernel_size={kernel!r} must be two positive ints")
    common.check_choice(model_config, "downsample", DOWNSAMPLES)
    fusion_layer = model_config.fusion_layer
    if not isinstance(fusion_layer, int) or not 0 <= fusion_layer <= num_layers:
        raise ValueError(
            f"config.model.fusion_layer={fusion_layer!r}; allowed: integers "
            f"0..{num_layers} (0 = fuse the inputs, {num_layers} = late fusion)"
        )
    map_size = model_config.audio_map_size
    if map_size is not None and (len(tuple(map_size)) != 2 or min(map_size) < 1):
        raise ValueError(f"config.model.audio_map_size={map_size!r} must be None or (h, w)")
    rate = model_config.dropout_rate
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"config.model.dropout_rate={rate!r} must lie in [0, 1)")
    common.check_choice(model_config, "dtype", common.DTYPES)


def audio_to_frames(
    spectrogram_BxTimexMelxC: jax.Array, num_frames: int, map_size: tuple[int, int] | None = None
) -> jax.Array:
    """Cuts a spectrogram into `num_frames` consecutive slices `[B, T, time // T, mel, C]`.

    Trailing time bins beyond T·(time // T) are dropped. With `map_size` each slice is resized
    (bilinear) to `[B, T, h, w, C]`.
    """
    if spectrogram_BxTimexMelxC.ndim != 4:
        raise ValueError(
            "C-LSTM audio input must be [B, time, mel, C]; got shape "
            f"{spectrogram_BxTimexMelxC.shape}"
        )
    batch, time_bins, mel_bins, channels = spectrogram_BxTimexMelxC.shape
    per_frame = time_bins // num_frames
    if per_frame < 1:
        raise ValueError(
            f"spectrogram of {time_bins} time bins cannot be cut into {num_frames} "
            "frames; feed a longer spectrogram or fewer frames"
        )
    frames = spectrogram_BxTimexMelxC[:, : num_frames * per_frame].reshape(
        batch, num_frames, per_frame, mel_bins, channels
    )
    if map_size is not None:
        frames = resize_maps(frames, (int(map_size[0]), int(map_size[1])))
    return frames


def resize_maps(x_BxTxHxWxC: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of every map `[B, T, H, W, C]` → `[B, T, h, w, C]`; identity if equal."""
    if tuple(x_BxTxHxWxC.shape[2:4]) == tuple(size):
        return x_BxTxHxWxC
    shape = x_BxTxHxWxC.shape[:2] + tuple(size) + x_BxTxHxWxC.shape[4:]
    return jax.image.resize(x_BxTxHxWxC, shape, method="bilinear").astype(x_BxTxHxWxC.dtype)


class ConvLSTMLayer(nn.Module):
    """Spatial downsampling by `stride`, then a ConvLSTM over time.

    `[B, T, H, W, C]` → hidden states `[B, T, H // stride, W // stride, features]`; the carry
    starts at zero for every clip.
    """

    features: int
    kernel_size: tuple[int, int]
    stride: int
    downsample: str
    dtype: Any

    @nn.compact
    def __call__(self, x_BxTxHxWxC: jax.Array) -> jax.Array:
        batch, frames, height, width, channels = x_BxTxHxWxC.shape
        if self.stride > 1:
            if min(height, width) < self.stride:
                raise ValueError(
                    f"{self.name}: maps of {height}×{width} cannot be downsampled by "
                    f"{self.stride}; lower config.model.spatial_strides"
                )
            maps = x_BxTxHxWxC.reshape(batch * frames, height, width, channels)
            window = (self.stride, self.stride)
            if self.downsample == "conv":
                maps = nn.Conv(
                    self.features,
                    window,
                    strides=window,
                    padding="VALID",
                    dtype=self.dtype,
                    name="downsample",
                )(maps)
            else:
                maps = nn.max_pool(maps, window, strides=window, padding="VALID")
            x_BxTxHxWxC = maps.reshape((batch, frames) + maps.shape[1:])
        cell = nn.ConvLSTMCell(self.features, self.kernel_size, dtype=self.dtype, name="cell")
        # Fully unrolled over the (few) frames: as a while loop, XLA's CPU backend runs the
        # convolutions' gradients ~35x slower (1.28 s vs 37 ms per step for the
        # sounding-objects C-LSTM at batch 64). return_carry=False (the default): the outputs
        # alone, not (carry, outputs).
        return cast(jax.Array, nn.RNN(cell, unroll=frames)(x_BxTxHxWxC))


class ConvLSTMClassifier(nn.Module):
    """The C-LSTM over `{modality: array}` inputs; returns logits `[B, num_classes]` (float32).

    Sows into 'intermediates' the pooled features `[B, F]` each head input is made of:
    `pooled_<modality>` per stream with late fusion, `pooled_fused` otherwise. Every field
    comes from `config.model` (`FAMILY.build`); none has a default of its own.
    """

    num_classes: int
    modalities: tuple[str, ...]
    features: tuple[int, ...]
    spatial_strides: tuple[int, ...]
    kernel_size: tuple[int, int]
    downsample: str
    fusion_layer: int
    audio_map_size: tuple[int, int] | None
    audio_slices: int | None
    dropout_rate: float
    dtype: Any

    def _streams(self, inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Every modality as maps over time `[B, T, H, W, C]`, video and audio sharing T."""
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(f"model inputs lack modalities {missing}; got {sorted(inputs)}")
        dtype = jnp.dtype(self.dtype)
        arrays = {m: jnp.asarray(inputs[m], dtype) for m in self.modalities}
        for m, x in arrays.items():
            if x.ndim not in (4, 5):
                raise ValueError(
                    f"C-LSTM input {m!r} must be video [B, T, H, W, C] or "
                    f"spectrogram [B, time, mel, C]; got shape {x.shape}"
                )
        video_frames = {x.shape[1] for x in arrays.values() if x.ndim == 5}
        if len(video_frames) > 1:
            raise ValueError(f"C-LSTM video inputs disagree on frame count: {sorted(video_frames)}")
        num_frames = next(iter(video_frames)) if video_frames else self.audio_slices
        if num_frames is None:
            raise ValueError("config.model.audio_slices must be set when no modality is video")
        return {
            m: x if x.ndim == 5 else audio_to_frames(x, num_frames, self.audio_map_size)
            for m, x in arrays.items()
        }

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> jax.Array:
        streams = self._streams(inputs)
        num_layers = len(self.features)
        # With one modality there is nothing to fuse: all layers are the (shared) trunk.
        fusion_layer = self.fusion_layer if len(self.modalities) > 1 else 0

        def layer(index, name):
            return ConvLSTMLayer(
                self.features[index],
                tuple(self.kernel_size),
                self.spatial_strides[index],
                self.downsample,
                dtype=jnp.dtype(self.dtype),
                name=name,
            )

        for i in range(fusion_layer):
            streams = {m: layer(i, f"convlstm_{i}_{m}")(x) for m, x in streams.items()}

        if fusion_layer == num_layers:
            pooled = {m: jnp.mean(x[:, -1], axis=(1, 2)) for m, x in streams.items()}
            for m in self.modalities:
                self.sow("intermediates", f"pooled_{m}", pooled[m])
            features_BxF = jnp.concatenate([pooled[m] for m in self.modalities], axis=-1)
        else:
            video_like = [m for m in self.modalities if jnp.ndim(inputs[m]) == 5]
            reference = video_like[0] if video_like else self.modalities[0]
            grid = (streams[reference].shape[2], streams[reference].shape[3])
            x = jnp.concatenate([resize_maps(streams[m], grid) for m in self.modalities], axis=-1)
            for i in range(fusion_layer, num_layers):
                x = layer(i, f"convlstm_{i}")(x)
            features_BxF = jnp.mean(x[:, -1], axis=(1, 2))
            self.sow("intermediates", "pooled_fused", features_BxF)

        features_BxF = nn.Dropout(self.dropout_rate)(features_BxF, deterministic=not train)
        logits = nn.Dense(self.num_classes, name="output_projection")(features_BxF)
        return logits.astype(jnp.float32)


class CLSTMFamily(family.ModelFamily):
    """`config.model.name = 'clstm'`: no branches (early fusion), no ViT/Scenic import."""

    name = "clstm"
    # Gate convolutions `cell/{ih,hh}` [kh, kw, in, 4F] and strided `downsample` [s, s, C, F]:
    # output features split over 'model' (with their biases); the head replicated.
    partition_rules = (
        (r"cell/(ih|hh)/kernel$", (None, None, None, family.MODEL_AXIS)),
        (r"cell/(ih|hh)/bias$", (family.MODEL_AXIS,)),
        (r"downsample/kernel$", (None, None, None, family.MODEL_AXIS)),
        (r"downsample/bias$", (family.MODEL_AXIS,)),
        (r"(^|/)output_projection/(kernel|bias)$", family.REPLICATE),
    )

    def default_config(self) -> ml_collections.ConfigDict:
        return default_config()

    def adapt_recipe(self, config, mbt_model) -> None:
        """Barnum et al. 2020: fused at the input (`fusion_layer = 0`, the paper's most robust
        choice), trained from scratch with AdamW (lr 1e-3, warmup + cosine, clipping 1.0): MBT's
        SGD recipe (lr 0.5) is too aggressive for a recurrent model without normalisation. No
        stochastic depth; label smoothing and mixup as MBT's."""
        del mbt_model
        config.model.fusion_layer = 0
        config.optimizer.name = "adamw"
        config.optimizer.weight_decay = 1e-4
        config.lr.base_lr = 1e-3
        config.init_from.checkpoint_path = None  # no ImageNet ViT weights fit a ConvLSTM

    def check(self, resolved: ml_collections.ConfigDict) -> None:
        check_config(resolved)

    def make(self, resolved: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
        num_layers = resolved.num_layers
        map_size = resolved.audio_map_size
        return ConvLSTMClassifier(
            num_classes=num_classes,
            modalities=tuple(resolved.modalities),
            features=per_layer(resolved.features, num_layers, "features"),
            spatial_strides=per_layer(resolved.spatial_strides, num_layers, "spatial_strides"),
            kernel_size=tuple(resolved.kernel_size),
            downsample=resolved.downsample,
            fusion_layer=resolved.fusion_layer,
            audio_map_size=tuple(map_size) if map_size is not None else None,
            audio_slices=resolved.audio_slices,
            dropout_rate=float(resolved.dropout_rate),
            dtype=str(resolved.dtype),
        )

    def analytic_macs(self, model_config, input_shapes, num_classes):
        from mbt.tools import flops  # pylint: disable=g-import-not-at-top (flops imports models)

        return flops.clstm_macs(self.resolve(model_config), input_shapes, num_classes)


FAMILY = CLSTMFamily()

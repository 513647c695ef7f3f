"""Initialise any MBT config from an ImageNet ViT checkpoint.

Mapping rules (ViT → MBT, see docs/pretrained.md):
- encoder block i → `Transformer/encoderblock_i` and every `encoderblock_i_<modality>`; blocks
  past the ViT's depth stay fresh. The `vision_transformer` names `LayerNorm_0`,
  `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3` become Scenic's `LayerNorm_0`,
  `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`.
- patch kernel `[ph, pw, 3, D]` → each 2-D tokenizer: copied for 3 channels, summed over RGB for
  1 channel (other counts: the sum spread evenly over the channels); for 3-D tubelets
  `[t, ph, pw, C, D]` inflated at the central frame (t//2, zeros elsewhere) or averaged (÷ t).
- position grid `[gh, gw, D]` resized bilinearly to each modality's token grid; video: the
  spatial grid tiled over the token time steps, optionally plus a random N(0, 0.02) temporal
  part ('learned') or not loaded at all ('none'); the CLS position copied (zeros if the
  checkpoint has none).
- `bottleneck` `[1, n, D]`: the flattened position grid resized linearly to n tokens.
- `cls` copied into every modality's CLS token; `encoder_norm` copied; `pre_logits` copied when
  shapes match; `output_projection` from `head` only with `restore_output_projection`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from mbt import models
from mbt.models import mbt as mbt_lib
from mbt.models import tokenizers
from mbt.pretrained import formats
from mbt.pretrained import torch_vit
from mbt.pretrained import train_state
from mbt.pretrained.report import InitReport

INFLATIONS = ("central_frame", "average")
TEMPORAL_POSEMBS = ("tile", "none", "learned")

# vision_transformer block names → Scenic's.
_VIT_BLOCK_RENAMES = {
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}
BLOCK_KEYS = frozenset(
    [f"LayerNorm_{i}/{p}" for i in (0, 1) for p in ("scale", "bias")]
    + [
        f"MultiHeadDotProductAttention_0/{n}/{p}"
        for n in ("query", "key", "value", "out")
        for p in ("kernel", "bias")
    ]
    + [f"MlpBlock_0/Dense_{i}/{p}" for i in (0, 1) for p in ("kernel", "bias")]
)


@dataclasses.dataclass
class ViTWeights:
    """A ViT checkpoint in one canonical layout (numpy float32).

    `arrays`: `embedding/kernel` `[ph, pw, C, D]`, `embedding/bias`, optional `cls` `[1, 1, D]`,
    `encoder_norm/{scale,bias}`, optional `head/*`, `pre_logits/*`, and `block_<i>/<Scenic block
    key>`. `posemb_grid` `[gh, gw, D]` (None without a learned position embedding),
    `posemb_cls` `[D]` or None. `sources` maps canonical names to the checkpoint's keys.
    """

    path: str
    checkpoint_format: str
    arrays: dict[str, np.ndarray]
    sources: dict[str, str]
    num_layers: int
    posemb_grid: np.ndarray | None
    posemb_cls: np.ndarray | None
    unrecognised: list[str]


@dataclasses.dataclass(frozen=True)
class Options:
    """`config.init_from` rules: see `mbt.pretrained.default_init_from_config`."""

    inflation: str = "central_frame"
    temporal_posemb: str = "tile"
    restore_output_projection: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.inflation not in INFLATIONS:
            raise ValueError(
                f"config.init_from.inflation={self.inflation!r}; allowed: {INFLATIONS}"
            )
        if self.temporal_posemb not in TEMPORAL_POSEMBS:
            raise ValueError(
                f"config.init_from.temporal_posemb={self.temporal_posemb!r}; "
                f"allowed: {TEMPORAL_POSEMBS}"
            )


# --- reading -----------------------------------------------------------------------------


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n and n > 0 else None


def _canonical_block(raw: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    renames = (
        _VIT_BLOCK_RENAMES
        if any(k.startswith("MultiHeadDotProductAttention_1/") for k in raw)
        else {}
    )
    block = {}
    for key, value in raw.items():
        head, _, rest = key.partition("/")
        block[f"{renames.get(head, head)}/{rest}"] = value
    if set(block) != BLOCK_KEYS:
        missing, extra = sorted(BLOCK_KEYS - set(block)), sorted(set(block) - BLOCK_KEYS)
        raise ValueError(f"{where}: not a ViT encoder block; missing {missing}, unexpected {extra}")
    return block


def vit_weights_from_flat(
    flat: Mapping[str, np.ndarray], path: str, checkpoint_format: str
) -> ViTWeights:
    """Canonicalises the flat '/'-keyed arrays of any supported ViT checkpoint layout."""
    prefix = "params/" if any(k.startswith("params/") for k in flat) else ""
    unrecognised = [k for k in flat if not k.startswith(prefix)]  # big_vision optimizer state
    flat = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}

    def take(canonical: str, key: str) -> None:
        arrays[canonical] = np.asarray(flat[key], np.float32)
        sources[canonical] = prefix + key

    raw_blocks: dict[int, dict[str, np.ndarray]] = {}
    block_sources: dict[int, dict[str, str]] = {}
    posemb_key = None
    for key in flat:
        block_match = re.match(r"^Transformer/encoderblock_(\d+)/(.+)$", key)
        scanned = re.match(r"^Transformer/encoderblock/(.+)$", key)
        if block_match:
            layer = int(block_match.group(1))
            name = block_match.group(2)
            raw_blocks.setdefault(layer, {})[name] = np.asarray(flat[key], np.float32)
            block_sources.setdefault(layer, {})[name] = prefix + key
        elif scanned:  # big_vision scan=True: one stacked block, layers on axis 0
            for layer, value in enumerate(np.asarray(flat[key], np.float32)):
                raw_blocks.setdefault(layer, {})[scanned.group(1)] = value
                block_sources.setdefault(layer, {})[scanned.group(1)] = f"{prefix}{key}[{layer}]"
        elif key in ("embedding/kernel", "embedding/bias", "cls"):
            take(key, key)
        elif key in ("Transformer/posembed_input/pos_embedding", "pos_embedding"):
            posemb_key = key
        elif key.startswith("Transformer/encoder_norm/"):
            take(key[len("Transformer/") :], key)
        elif re.match(r"^(head|output_projection)/(kernel|bias)$", key):
            take("head/" + key.split("/")[1], key)
        elif re.match(r"^pre_logits/(kernel|bias)$", key):
            take(key, key)
        else:
            unrecognised.append(prefix + key)

    for required in ("embedding/kernel", "embedding/bias", "encoder_norm/scale"):
        if required not in arrays:
            raise ValueError(
                f"{path}: not a ViT checkpoint in a known layout: no {required!r} "
                f"(format {checkpoint_format}; first keys {sorted(flat)[:8]})"
            )
    if np.ndim(arrays["embedding/kernel"]) != 4:
        raise ValueError(
            f"{path}: {sources['embedding/kernel']} has shape "
            f"{arrays['embedding/kernel'].shape}; a ViT patch kernel is "
            "[ph, pw, C, D]"
        )
    layers = sorted(raw_blocks)
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"{path}: encoder blocks {layers} are not numbered 0..L-1")
    for layer in layers:
        block = _canonical_block(raw_blocks[layer], f"{path}: Transformer/encoderblock_{layer}")
        renames = {
            f"{_VIT_BLOCK_RENAMES.get(k.split('/')[0], k.split('/')[0])}/{k.partition('/')[2]}": s
            for k, s in block_sources[layer].items()
        }
        for name, value in block.items():
            arrays[f"block_{layer}/{name}"] = value
            sources[f"block_{layer}/{name}"] = renames[name]

    posemb_grid = posemb_cls = None
    if posemb_key is not None:
        posemb = np.asarray(flat[posemb_key], np.float32)
        if posemb.ndim == 2:
            posemb = posemb[None]
        n = posemb.shape[1]
        if "cls" in arrays and n > 1 and _square_side(n - 1):
            posemb_cls, grid_tokens = posemb[0, 0], posemb[0, 1:]
        elif _square_side(n):
            grid_tokens = posemb[0]
        else:
            raise ValueError(
                f"{path}: {posemb_key} has shape {posemb.shape}: {n} positions are "
                "neither a square grid nor 1 + a square grid"
            )
        side = _square_side(grid_tokens.shape[0])
        assert side is not None  # both branches above checked that the grid is square
        posemb_grid = grid_tokens.reshape(side, side, -1)
        sources["pos_embedding"] = prefix + posemb_key
    for value in arrays.values():
        value.flags.writeable = False
    return ViTWeights(
        path, checkpoint_format, arrays, sources, len(layers), posemb_grid, posemb_cls, unrecognised
    )


def load_vit(
    path: str, checkpoint_format: str = "auto", num_heads: int | None = None
) -> ViTWeights:
    """Reads a ViT checkpoint in `vit_npz`, `big_vision_npz`, `flax` or `torch_safetensors`
    format (or 'auto'). `num_heads`: the head count of the model being initialised (PyTorch
    layouts store attention as [D, D] matrices, without it)."""
    if checkpoint_format == "auto":
        checkpoint_format = formats.detect_format(path)
    if checkpoint_format in ("vit_npz", "big_vision_npz"):
        return vit_weights_from_flat(formats.read_npz(path), path, checkpoint_format)
    if checkpoint_format == "flax":
        stored = train_state.read_params(path)
        return vit_weights_from_flat(formats.flatten(stored.params), path, checkpoint_format)
    if checkpoint_format == torch_vit.FORMAT:
        file = formats.safetensors_file(path) or path
        flat, origin, unused = torch_vit.to_vit_npz(
            torch_vit.read_safetensors(file), file, num_heads
        )
        vit = vit_weights_from_flat(flat, file, checkpoint_format)
        vit.sources = {k: origin.get(s, s) for k, s in vit.sources.items()}
        vit.unrecognised = sorted(set(vit.unrecognised) | set(unused))
        return vit
    raise ValueError(
        f"config.init_from.checkpoint_format={checkpoint_format!r} is not a ViT "
        f"format; allowed: 'auto', 'vit_npz', 'big_vision_npz', 'flax', '{torch_vit.FORMAT}'"
    )


# --- array rules -------------------------------------------------------------------------


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` linear interpolation with half-pixel centres and clamped edges."""
    centres = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = centres - low
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), low] += 1 - frac
    weights[np.arange(n_out), high] += frac
    return weights


def resize_grid(grid_HxWxD: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a position grid `[H, W, D]` → `[h, w, D]` (half-pixel centres, as
    `jax.image.resize(..., 'bilinear', antialias=False)`); rows of weights sum to 1, so a
    constant grid stays constant."""
    rows = _linear_weights(grid_HxWxD.shape[0], size[0])
    cols = _linear_weights(grid_HxWxD.shape[1], size[1])
    return np.einsum("ai,bj,ijd->abd", rows, cols, grid_HxWxD.astype(np.float64)).astype(np.float32)


def resize_tokens(tokens_NxD: np.ndarray, n: int) -> np.ndarray:
    """Linear resize of a token sequence `[N, D]` → `[n, D]` along the token axis."""
    weights = _linear_weights(tokens_NxD.shape[0], n)
    return (weights @ tokens_NxD.astype(np.float64)).astype(np.float32)


def adapt_channels(kernel_HxWxCxD: np.ndarray, channels: int) -> tuple[np.ndarray, str]:
    """Patch kernel for `channels` input channels: unchanged when they match; otherwise the sum
    over the checkpoint's channels, divided evenly among the new ones (1 channel: the plain sum),
    so an input whose channels all equal x gives what the checkpoint gives on x tiled."""
    have = kernel_HxWxCxD.shape[2]
    if channels == have:
        return kernel_HxWxCxD, ""
    summed = kernel_HxWxCxD.sum(axis=2, keepdims=True)
    spread = np.repeat(summed / channels, channels, axis=2)
    if channels == 1:
        return summed, f"summed over {have} input channels"
    return spread, f"summed over {have} input channels, spread over {channels}"


def inflate(kernel_HxWxCxD: np.ndarray, frames: int, inflation: str) -> np.ndarray:
    """2-D kernel → tubelet kernel `[t, h, w, C, D]` by `central_frame` or `average`."""
    if inflation == "central_frame":
        out = np.zeros((frames,) + kernel_HxWxCxD.shape, np.float32)
        out[frames // 2] = kernel_HxWxCxD
        return out
    if inflation == "average":
        return np.repeat(kernel_HxWxCxD[None] / frames, frames, axis=0).astype(np.float32)
    raise ValueError(f"config.init_from.inflation={inflation!r}; allowed: {INFLATIONS}")


# --- token grids -------------------------------------------------------------------------


def _posemb_path(modality: str) -> str:
    return f"Transformer/posembed_input{mbt_lib.suffix(modality)}/pos_embedding"


def token_grids(
    model_config: ml_collections.ConfigDict,
    flat_params: Mapping[str, Any],
    input_shapes: Mapping[str, Any] | None = None,
    dataset_config: Mapping[str, Any] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Each modality's token grid: (rows, cols) for 2-D tokenizers, (time, rows, cols) for video.

    From `input_shapes[modality]` (per example, no batch) when given; otherwise from
    `config.dataset` (`num_frames`, `frame_size` for video; `num_mel_bins` for spectrograms, the
    time rows then following from the position embedding's length). Checked against the model's
    position embedding length.
    """
    sizes = models.resolve_sizes(model_config)
    classifier_tokens = 1 if model_config.get("classifier", "token") == "token" else 0
    dataset_config = dataset_config or {}
    grids = {}
    for m in model_config.modalities:
        spec = models.tokenizer_spec(model_config, m, sizes.patch)
        tokens = int(np.shape(flat_params[_posemb_path(m)])[1]) - classifier_tokens
        shape = (input_shapes or {}).get(m)
        grid = None
        if shape is not None:
            grid = tokenizers.token_grid(spec, tuple(int(s) for s in shape))
        elif spec.kind == "2d" and dataset_config.get("num_mel_bins") and m == "spectrogram":
            cols = int(dataset_config["num_mel_bins"]) // spec.patches[1]
            if cols and tokens % cols == 0:
                grid = (tokens // cols, cols)
        elif (
            spec.kind != "2d"
            and dataset_config.get("frame_size")
            and dataset_config.get("num_frames")
        ):
            side = int(dataset_config["frame_size"])
            example = (int(dataset_config["num_frames"]), side, side)
            grid = tokenizers.token_grid(spec, example)
        if grid is None:
            raise ValueError(
                f"cannot tell the token grid of modality {m!r} ({tokens} tokens): set "
                f"config.init_from.input_shapes.{m} to its per-example input shape (no batch), "
                "or pass input_shapes to init_from"
            )
        if int(np.prod(grid)) != tokens:
            raise ValueError(
                f"modality {m!r}: token grid {grid} from input shape {shape} holds "
                f"{int(np.prod(grid))} tokens but the model's {_posemb_path(m)} has {tokens} "
                "(plus the CLS position); the input shape does not match the model"
            )
        grids[m] = tuple(int(g) for g in grid)
    return grids


# --- the mapping -------------------------------------------------------------------------


class _Mapper:
    """Builds the new flat params and the report, one target parameter at a time."""

    def __init__(self, vit: ViTWeights, flat_target: dict[str, np.ndarray], options: Options):
        self.vit = vit
        self.target = flat_target
        self.options = options
        self.decided: dict[str, tuple[np.ndarray, str, str, str]] = {}
        self.used: set[str] = set()

    def source(self, canonical: str) -> np.ndarray:
        self.used.add(canonical)
        return self.vit.arrays[canonical]

    def check_shape(self, path: str, value: np.ndarray, hint: str, source: str) -> None:
        want = tuple(self.target[path].shape)
        if tuple(value.shape) != want:
            raise ValueError(
                f"{path}: checkpoint {self.vit.path} key {source!r} gives shape "
                f"{tuple(value.shape)} but the model's parameter is {want} ({hint})"
            )

    def set(
        self,
        path: str,
        value: np.ndarray,
        category: str,
        source: str = "",
        note: str = "",
        hint: str = "",
    ) -> None:
        self.check_shape(path, value, hint or "config and checkpoint sizes differ", source)
        # No copy: branches initialised from one ViT block share its arrays (made read-only).
        self.decided[path] = (np.asarray(value, self.target[path].dtype), category, source, note)

    def fresh(self, path: str, note: str) -> None:
        self.decided[path] = (self.target[path], "fresh", "", note)

    def src_key(self, canonical: str) -> str:
        return self.vit.sources.get(canonical, canonical)


def _map_embedding(mapper: _Mapper, modality: str, spec: tokenizers.TokenizerSpec) -> None:
    name = f"embedding{mbt_lib.suffix(modality)}"
    kernel_path, bias_path = f"{name}/kernel", f"{name}/bias"
    kernel = mapper.source("embedding/kernel")
    want = mapper.target[kernel_path].shape
    source = mapper.src_key("embedding/kernel")
    patch_hint = f"config.model.tokenizers.{modality}.patches={spec.patches}"
    if kernel.shape[:2] != tuple(want[-4:-2]):
        raise ValueError(
            f"{kernel_path}: checkpoint key {source!r} has {kernel.shape[0]}x"
            f"{kernel.shape[1]} patches but {patch_hint} asks for "
            f"{want[-4]}x{want[-3]}; use the checkpoint's patch size"
        )
    if kernel.shape[-1] != want[-1]:
        raise ValueError(
            f"{kernel_path}: checkpoint key {source!r} has width {kernel.shape[-1]} "
            f"but config.model.hidden_size gives {want[-1]}"
        )
    adapted, note = adapt_channels(kernel, want[-2])
    if len(want) == 5:
        inflated = inflate(adapted, want[0], mapper.options.inflation)
        note = "; ".join(
            filter(None, [note, f"{mapper.options.inflation} inflation over {want[0]} frames"])
        )
        mapper.set(kernel_path, inflated, "inflated", source, note, patch_hint)
    else:
        mapper.set(kernel_path, adapted, "resized" if note else "loaded", source, note, patch_hint)
    mapper.set(
        bias_path,
        mapper.source("embedding/bias"),
        "loaded",
        mapper.src_key("embedding/bias"),
        hint="config.model.hidden_size",
    )


def _map_posemb(
    mapper: _Mapper,
    modality: str,
    grid: tuple[int, ...],
    classifier_tokens: int,
    rng: np.random.Generator,
) -> None:
    path = _posemb_path(modality)
    vit = mapper.vit
    if vit.posemb_grid is None:
        mapper.fresh(path, "checkpoint has no learned position embedding")
        return
    if len(grid) == 3 and mapper.options.temporal_posemb == "none":
        mapper.fresh(path, "config.init_from.temporal_posemb='none'")
        return
    mapper.used.add("pos_embedding")
    source_grid = vit.posemb_grid
    spatial = resize_grid(source_grid, (grid[-2], grid[-1]))
    notes = []
    changed = tuple(grid[-2:]) != source_grid.shape[:2]
    if changed:
        notes.append(
            f"grid {source_grid.shape[0]}x{source_grid.shape[1]} -> {grid[-2]}x{grid[-1]} bilinear"
        )
    if len(grid) == 3:
        frames = grid[0]
        tokens = np.repeat(spatial[None], frames, axis=0)
        notes.append(f"tiled over {frames} time steps")
        if mapper.options.temporal_posemb == "learned":
            tokens = tokens + rng.normal(0.0, 0.02, (frames, 1, 1, tokens.shape[-1]))
            notes.append("plus a random N(0, 0.02) temporal part")
        changed = True
    else:
        tokens = spatial
    tokens = tokens.reshape(-1, tokens.shape[-1])
    if classifier_tokens:
        if vit.posemb_cls is None:
            cls_position = np.zeros((1, tokens.shape[-1]), np.float32)
            notes.append("CLS position zero (checkpoint has none)")
            changed = True
        else:
            cls_position = vit.posemb_cls[None]
        tokens = np.concatenate([cls_position, tokens], axis=0)
    mapper.set(
        path,
        tokens[None],
        "resized" if changed else "loaded",
        vit.sources["pos_embedding"],
        "; ".join(notes),
        f"token grid {grid} of modality {modality!r}",
    )


def map_vit_to_mbt(
    vit: ViTWeights,
    params: Mapping[str, Any],
    model_config: ml_collections.ConfigDict,
    grids: Mapping[str, tuple[int, ...]],
    options: Options,
) -> tuple[dict[str, Any], InitReport]:
    """New MBT params (nested dict of numpy arrays) and the report of what each one got.

    `params`: the model's freshly initialised params (used for shapes, dtypes and fresh values);
    `grids`: each modality's token grid (`token_grids`).
    """
    options.validate()
    flat_target = formats.flatten(params)
    mapper = _Mapper(vit, flat_target, options)
    sizes = models.resolve_sizes(model_config)
    modalities = tuple(model_config.modalities)
    classifier_tokens = 1 if model_config.get("classifier", "token") == "token" else 0
    rng = np.random.default_rng(options.seed)

    for m in modalities:
        _map_embedding(mapper, m, models.tokenizer_spec(model_config, m, sizes.patch))
        _map_posemb(mapper, m, grids[m], classifier_tokens, rng)
        cls_name = "cls" if (m == mbt_lib.PRIMARY or len(modalities) == 1) else f"cls{m}"
        if cls_name in flat_target:
            if "cls" in vit.arrays:
                mapper.set(
                    cls_name,
                    mapper.source("cls"),
                    "loaded",
                    mapper.src_key("cls"),
                    hint="config.model.hidden_size",
                )
            else:
                mapper.fresh(cls_name, "checkpoint has no CLS token")

    for path in flat_target:
        block = re.match(r"^Transformer/encoderblock_(\d+)(?:_[^/]+)?/(.+)$", path)
        if path in mapper.decided:
            continue
        if block:
            layer, key = int(block.group(1)), block.group(2)
            if layer >= vit.num_layers:
                mapper.fresh(path, f"checkpoint has only {vit.num_layers} layers")
                continue
            canonical = f"block_{layer}/{key}"
            value = mapper.source(canonical)
            if (
                value.shape != flat_target[path].shape
                and value.size == flat_target[path].size
                and "MultiHeadDotProductAttention" in key
            ):
                value = value.reshape(flat_target[path].shape)  # heads fused in the checkpoint
            mapper.set(
                path,
                value,
                "loaded",
                mapper.src_key(canonical),
                hint="config.model hidden_size / num_heads / mlp_dim",
            )
        elif path == "bottleneck":
            if vit.posemb_grid is None:
                mapper.fresh(path, "checkpoint has no learned position embedding")
                continue
            mapper.used.add("pos_embedding")
            n = flat_target[path].shape[1]
            grid_tokens = vit.posemb_grid.reshape(-1, vit.posemb_grid.shape[-1])
            mapper.set(
                path,
                resize_tokens(grid_tokens, n)[None],
                "resized",
                vit.sources["pos_embedding"],
                f"position grid ({grid_tokens.shape[0]} tokens) resized linearly to {n}",
            )
        elif path.startswith("Transformer/encoder_norm/"):
            canonical = path[len("Transformer/") :]
            mapper.set(path, mapper.source(canonical), "loaded", mapper.src_key(canonical))
        elif path.startswith("output_projection/"):
            canonical = "head/" + path.split("/")[1]
            if not options.restore_output_projection:
                mapper.fresh(path, "classifier left fresh (restore_output_projection=False)")
            elif canonical not in vit.arrays:
                raise ValueError(
                    f"config.init_from.restore_output_projection=True but "
                    f"{vit.path} has no classifier head "
                    "('head' / 'output_projection')"
                )
            else:
                mapper.set(
                    path,
                    mapper.source(canonical),
                    "loaded",
                    mapper.src_key(canonical),
                    hint="the checkpoint's classes differ from the model's num_classes",
                )
        elif path.startswith("pre_logits/"):
            pre_logits = vit.arrays.get(path)
            if pre_logits is not None and pre_logits.shape == flat_target[path].shape:
                mapper.set(path, mapper.source(path), "loaded", mapper.src_key(path))
            else:
                mapper.fresh(path, "checkpoint has no pre_logits of this size")
        else:
            mapper.fresh(path, "no ViT counterpart")

    report = InitReport(vit.path, vit.checkpoint_format)
    new_flat = {}
    for path, target in flat_target.items():
        value, category, source, note = mapper.decided[path]
        new_flat[path] = np.asarray(value)
        report.add(path, target.shape, category, source, note)
    unused = [vit.sources[c] for c in vit.arrays if c not in mapper.used]
    if vit.posemb_grid is not None and "pos_embedding" not in mapper.used:
        unused.append(vit.sources["pos_embedding"])
    report.unused_checkpoint_keys = sorted(set(unused)) + list(vit.unrecognised)
    return formats.unflatten(new_flat), report

"""Where an MBT model's CLS and bottleneck tokens attend, over the frames and the log-mel.

    python -m mbt.tools.attention --workdir=W clip.mp4 --out=maps.png [--layer=N]
        [--save_arrays]        # also maps.npz with the raw maps

The model and the clip's inputs come as in `mbt.predict` (`--workdir` / `--export_dir` /
`--checkpoint` + `--config`); the clip gives one view, the test split's middle window and
centre crop. The model runs once with its attention weights captured: every
`vit.MultiHeadDotProductAttention` sows softmax(q·kᵀ/√H) averaged over the heads, `[B, Q, K]`,
into the collection `vit.ATTENTION_COLLECTION` when that collection is mutable; the weights
are computed explicitly (the fused kernel does not return them) beside an unchanged forward
pass, so the logits and the parameter tree are those of a plain call.

Tokens live on one global axis (`TokenLayout`): each modality's tokens in `modalities` order
-- its CLS (token classifier), then its patches in the tokenizer's order (rgb tubelets
time, row, column; log-mel patches time, frequency) -- then the bottleneck tokens. Each layer
becomes one matrix `A_l` `[N, N]` over that axis, heads averaged, rows = the layer's output
tokens, columns = its input tokens:

- unfused layers: each modality's own attention on its block of the diagonal;
- `bottleneck`: modality m's block attends over [its tokens ; bottleneck]; its rows go to
  m's tokens, and a bottleneck token's row is the mean over modalities of its rows in each
  block (the model averages the bottleneck outputs the same way);
- `concat`: the shared block's attention over all tokens as it is;
- `cross`: modality m's tokens attend over [other modalities' tokens ; own tokens], placed
  in those tokens' columns.

Tokens a layer does not update (bottleneck tokens before the fusion layer) have zero rows.

Two methods:

- rollout (default; Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): each
  layer's residual connection is added as identity and rows renormalised,
  `Â_l = (A_l + I) / rowsum(A_l + I)` (a token updated by attention keeps half its mass,
  one that is not updated keeps all), and `R = Â_{L-1} ··· Â_0`. A row of `R` is a
  distribution over the input tokens (patch embeddings + position, CLS, initial bottleneck
  tokens): how much each contributed to that output token through attention and residuals.
  The residual of every token is itself in every fusion mode (the bottleneck average keeps
  it too), so one identity serves all.
- `--layer=N`: the raw, head-averaged attention `A_N` of layer N (0-based): over that
  layer's input tokens at their patch positions, no residual, no product.

Queries (the map rows): `cls_<modality>` (the CLS row of each modality; with the `gap`
classifier, `gap`, the mean row of all modality tokens, which is what the head reads) and,
for bottleneck fusion with bottleneck tokens at test (`test_with_bottlenecks`),
`bottleneck`: the mean row of the bottleneck tokens after the last layer (rollout; omitted
when no layer fuses) or at layer N (omitted when layer N does not fuse). A map is the query's
row restricted to a modality's patch tokens, reshaped to its token grid; the share of the
row's mass on each modality is printed beside it (the rest sits on CLS and bottleneck tokens).

The PNG (`mbt.tools.attention_plot`): a header line, then one row of cells for the inputs and
one per query; a label column on the left; one 160-px cell per rgb token time step (the
tubelet's middle frame, or the sampled frame) and a 2-cell-wide log-mel (time →, mel ↑),
each overlaid with the query's map (nearest-neighbour over the patches it covers; colours
from the minimum to the maximum of the row's map of that modality, all frames of a row on
one scale; a map that is zero everywhere, e.g. an rgb CLS no audio reaches, reads
'no attention'). Size in pixels, at 80 dpi:
width = 160 + 160 · (time steps + 2), height = 40 + 160 · (1 + queries); a modality the model
does not read has no columns. `--save_arrays` writes beside it `<out without .png>.npz`:
`<query>_over_<modality>` (the maps, token-grid shaped), `matrix` (`R` or `A_N`, `[N, N]`),
`token_modality` and `token_kind` (`[N]`: modality or 'bottleneck'; 'cls', 'patch' or
'bottleneck'), `queries`, `method`, `logits`, `frames` (`[time steps, H, W, 3]` in [0, 1]) and
`logmel` (`[time, mel]`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from mbt import cli
from mbt.models import mbt as mbt_lib
from mbt.models import tokenizers
from mbt.models import vit

_ATTENTION = "MultiHeadDotProductAttention_0"
_WEIGHTS = "weights_mean_over_heads"  # what `vit.MultiHeadDotProductAttention` sows


# --- capture -------------------------------------------------------------------------------


def capture(model, params, inputs: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """Runs `model` (evaluation mode) on `inputs` with its attention weights sown.

    Returns (logits `[B, C]`, the sown collection: a nested dict by module path ending in
    `{'weights_mean_over_heads': (array [B, Q, K], ...)}`, one entry per call of the block).
    """
    apply = jax.jit(
        lambda p, x: model.apply({"params": p}, x, train=False, mutable=[vit.ATTENTION_COLLECTION])
    )
    logits, variables = apply(params, dict(inputs))
    sown = jax.tree.map(np.asarray, dict(variables).get(vit.ATTENTION_COLLECTION, {}))
    return np.asarray(logits), sown


# --- the global token axis -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """The global token axis: each modality's [CLS,] patch tokens in order, then bottleneck.

    Attributes:
      modalities: the model's modalities, in order.
      grids: `{modality: token grid}`, e.g. (T/2, H/16, W/16) for rgb tubelets, (time/16,
        mel/16) for the log-mel (`tokenizers.token_grid`).
      has_cls: whether each modality's tokens start with a CLS token (token classifier).
      num_bottlenecks: bottleneck tokens at the end of the axis (0 without).
    """

    modalities: tuple[str, ...]
    grids: dict[str, tuple[int, ...]]
    has_cls: bool
    num_bottlenecks: int

    def num_tokens(self, modality: str) -> int:
        """Tokens of `modality` in the encoder, CLS included."""
        return math.prod(self.grids[modality]) + int(self.has_cls)

    def start(self, modality: str) -> int:
        """Index of the modality's first token (its CLS, if any)."""
        i = self.modalities.index(modality)
        return sum(self.num_tokens(m) for m in self.modalities[:i])

    def indices(self, modality: str) -> np.ndarray:
        """All the modality's token indices, CLS first."""
        return np.arange(self.start(modality), self.start(modality) + self.num_tokens(modality))

    def patch_indices(self, modality: str) -> np.ndarray:
        return self.indices(modality)[int(self.has_cls) :]

    @property
    def num_modality_tokens(self) -> int:
        return sum(self.num_tokens(m) for m in self.modalities)

    @property
    def size(self) -> int:
        return self.num_modality_tokens + self.num_bottlenecks

    def bottleneck_indices(self) -> np.ndarray:
        return np.arange(self.num_modality_tokens, self.size)

    def token_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(`token_modality`, `token_kind`) `[N]`: see the module docstring."""
        modality, kind = [], []
        for m in self.modalities:
            modality += [m] * self.num_tokens(m)
            kind += ["cls"] * int(self.has_cls) + ["patch"] * math.prod(self.grids[m])
        modality += ["bottleneck"] * self.num_bottlenecks
        kind += ["bottleneck"] * self.num_bottlenecks
        return np.array(modality), np.array(kind)


def _check_mbt(model) -> None:
    if not isinstance(model, mbt_lib.MBT):
        raise ValueError(
            f"attention maps need an MBT model (config.model.name='mbt'); got "
            f"{type(model).__name__}"
        )


def uses_bottlenecks(model) -> bool:
    """Whether the model in evaluation runs bottleneck fusion with bottleneck tokens."""
    return (
        model.fusion == "bottleneck" and len(model.modalities) > 1 and model.test_with_bottlenecks
    )


def token_layout(model, input_shapes: Mapping[str, Sequence[int]]) -> TokenLayout:
    """The `TokenLayout` of an MBT `model` on per-example `input_shapes` (no batch axis)."""
    _check_mbt(model)
    specs = dict(model.tokenizer_specs)
    grids = {
        m: tuple(tokenizers.token_grid(specs[m], tuple(input_shapes[m]))) for m in model.modalities
    }
    has_cls = model.classifier == "token"
    num_bottlenecks = model.n_bottlenecks + int(has_cls) if uses_bottlenecks(model) else 0
    return TokenLayout(tuple(model.modalities), grids, has_cls, num_bottlenecks)


def layer_kinds(model) -> list[str]:
    """Per layer, as the model runs in evaluation: 'separate' or the fusion mode."""
    _check_mbt(model)
    multimodal = len(model.modalities) > 1
    kinds = []
    for layer in range(model.num_layers):
        fused = multimodal and layer >= model.fusion_layer
        if model.fusion == "bottleneck" and not model.test_with_bottlenecks:
            fused = False
        kinds.append(model.fusion if fused else "separate")
    return kinds


def _block_name(model, layer: int, modality: str) -> str:
    """The module of `modality`'s block at `layer` (`FusionEncoder`'s naming)."""
    if modality == mbt_lib.PRIMARY or model.share_encoder:
        return f"encoderblock_{layer}"
    return f"encoderblock_{layer}{mbt_lib.suffix(modality)}"


def _weights(sown: Mapping, name: str, call: int, shape: tuple[int, ...]) -> np.ndarray:
    """Head-averaged weights `[B, Q, K]` of call `call` of block `name`, shape-checked."""
    try:
        calls = sown["Transformer"][name][_ATTENTION][_WEIGHTS]
        weights_BxQxK = np.asarray(calls[call], np.float64)
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"no captured attention for call {call} of Transformer/{name}; the model's layers "
            "do not match mbt.models.mbt.FusionEncoder as this tool reads it"
        ) from None
    if weights_BxQxK.shape[1:] != shape:
        raise ValueError(
            f"captured attention of Transformer/{name} is {weights_BxQxK.shape[1:]}, "
            f"expected {shape} (queries, keys) from the token layout"
        )
    return weights_BxQxK


def layer_matrix(model, layout: TokenLayout, sown: Mapping, layer: int) -> np.ndarray:
    """Layer `layer`'s head-averaged attention `A_l` `[B, N, N]` on the global token axis.

    Rows are the layer's output tokens, columns its input tokens (module docstring); rows of
    tokens the layer does not update are zero.
    """
    kind = layer_kinds(model)[layer]
    # (row indices, column indices, weights [B, rows, columns], scale) to add up.
    placed: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
    if kind == "concat":
        columns = np.concatenate([layout.indices(m) for m in layout.modalities])
        shape = (len(columns), len(columns))
        placed.append((columns, columns, _weights(sown, f"encoderblock_{layer}", 0, shape), 1.0))
    else:
        calls: dict[str, int] = {}  # block name → its calls so far in this layer
        for m in layout.modalities:
            own = layout.indices(m)
            name = _block_name(model, layer, m)
            call = calls[name] = calls.get(name, -1) + 1
            if kind == "separate":
                columns = own
            elif kind == "bottleneck":
                columns = np.concatenate([own, layout.bottleneck_indices()])
            else:  # cross: [other modalities' tokens ; own]
                others = [layout.indices(o) for o in layout.modalities if o != m]
                columns = np.concatenate(others + [own])
            queries = len(columns) if kind == "bottleneck" else len(own)
            weights = _weights(sown, name, call, (queries, len(columns)))
            placed.append((own, columns, weights[:, : len(own)], 1.0))
            if kind == "bottleneck":  # the next bottleneck: mean over modalities
                scale = 1.0 / len(layout.modalities)
                bottleneck = layout.bottleneck_indices()
                placed.append((bottleneck, columns, weights[:, len(own) :], scale))
    matrix_BxNxN = np.zeros((placed[0][2].shape[0], layout.size, layout.size))
    for rows, columns, weights, scale in placed:
        matrix_BxNxN[:, rows[:, None], columns[None, :]] += scale * weights
    return matrix_BxNxN


def layer_matrices(model, layout: TokenLayout, sown: Mapping) -> list[np.ndarray]:
    """`layer_matrix` of every layer."""
    return [layer_matrix(model, layout, sown, layer) for layer in range(model.num_layers)]


def rollout(matrices: Iterable[np.ndarray]) -> np.ndarray:
    """Attention rollout `R = Â_{L-1} ··· Â_0` with `Â = (A + I) / rowsum(A + I)`.

    `matrices`: per layer `[B, N, N]` (rows: outputs, columns: inputs), first layer first;
    consumed one at a time. Returns `[B, N, N]`; each row a distribution over the first
    layer's input tokens.
    """
    result_BxNxN = None
    for matrix_BxNxN in matrices:
        with_residual = matrix_BxNxN + np.eye(matrix_BxNxN.shape[-1])
        with_residual /= with_residual.sum(axis=-1, keepdims=True)
        result_BxNxN = with_residual if result_BxNxN is None else with_residual @ result_BxNxN
    if result_BxNxN is None:
        raise ValueError("attention rollout needs at least one layer")
    return result_BxNxN


# --- queries and maps ----------------------------------------------------------------------


def query_rows(
    matrix_BxNxN: np.ndarray, layout: TokenLayout, bottleneck_attends: bool
) -> dict[str, np.ndarray]:
    """`{query: row [B, N]}` in display order: `cls_<m>` per modality (or `gap`), then
    `bottleneck` when `bottleneck_attends` and the model has bottleneck tokens."""
    rows = {}
    if layout.has_cls:
        for m in layout.modalities:
            rows[f"cls_{m}"] = matrix_BxNxN[:, layout.start(m)]
    else:
        tokens = np.arange(layout.num_modality_tokens)
        rows["gap"] = matrix_BxNxN[:, tokens].mean(axis=1)
    if bottleneck_attends and layout.num_bottlenecks:
        rows["bottleneck"] = matrix_BxNxN[:, layout.bottleneck_indices()].mean(axis=1)
    return rows


def modality_maps(row_BxN: np.ndarray, layout: TokenLayout) -> dict[str, np.ndarray]:
    """`{modality: [B, *grid]}`: the row's weights on each modality's patch tokens."""
    batch = row_BxN.shape[0]
    return {
        m: row_BxN[:, layout.patch_indices(m)].reshape((batch,) + layout.grids[m])
        for m in layout.modalities
    }


@dataclasses.dataclass
class AttentionMaps:
    """What the figure and the arrays are made of (batch axis dropped: one view).

    Attributes:
      method: 'rollout' or 'layer_<N>'.
      matrix: `R` or `A_N` `[N, N]`.
      layout: the token axis.
      maps: `{query: {modality: token-grid array}}`.
      shares: `{query: {modality: the row's mass on the modality's patches}}`.
    """

    method: str
    matrix: np.ndarray
    layout: TokenLayout
    maps: dict[str, dict[str, np.ndarray]]
    shares: dict[str, dict[str, float]]


def attention_maps(
    model, sown: Mapping, input_shapes: Mapping[str, Sequence[int]], layer: int | None = None
) -> AttentionMaps:
    """Rollout (`layer=None`) or layer `layer`'s raw attention, as maps of example 0."""
    layout = token_layout(model, input_shapes)
    kinds = layer_kinds(model)
    if layer is None:
        layers = (layer_matrix(model, layout, sown, i) for i in range(len(kinds)))
        method, matrix = "rollout", rollout(layers)
        bottleneck_attends = "bottleneck" in kinds
    else:
        if not 0 <= layer < len(kinds):
            raise ValueError(f"--layer={layer}; the model has layers 0..{len(kinds) - 1}")
        method, matrix = f"layer_{layer}", layer_matrix(model, layout, sown, layer)
        bottleneck_attends = kinds[layer] == "bottleneck"
    rows = query_rows(matrix, layout, bottleneck_attends)
    maps = {q: {m: v[0] for m, v in modality_maps(r, layout).items()} for q, r in rows.items()}
    shares = {q: {m: float(v.sum()) for m, v in by_m.items()} for q, by_m in maps.items()}
    return AttentionMaps(method, matrix[0], layout, maps, shares)


# --- the command line ----------------------------------------------------------------------


def _flags() -> flags.FlagValues:
    from mbt import predict  # pylint: disable=g-import-not-at-top (imports TensorFlow)

    fv = flags.FlagValues()
    predict.define_model_flags(fv)
    flags.DEFINE_string("out", None, "the PNG to write", flag_values=fv)
    flags.DEFINE_integer(
        "layer",
        None,
        "raw head-averaged attention of this layer (0-based); default: rollout",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "save_arrays", False, "also write the maps as <out without .png>.npz", flag_values=fv
    )
    return fv


def arrays_path(out: str) -> str:
    """Where `--save_arrays` writes: `maps.png` → `maps.npz`."""
    root, ext = os.path.splitext(out)
    return (root if ext.lower() == ".png" else out) + ".npz"


def save_arrays(path: str, result: AttentionMaps, logits: np.ndarray, shown: Any) -> None:
    """The `.npz` of the module docstring (`shown`: `attention_plot.shown_inputs`)."""
    token_modality, token_kind = result.layout.token_labels()
    arrays: dict[str, Any] = {
        f"{q}_over_{m}": grid for q, by_m in result.maps.items() for m, grid in by_m.items()
    }
    arrays.update(
        matrix=result.matrix.astype(np.float32),
        token_modality=token_modality,
        token_kind=token_kind,
        queries=np.array(list(result.maps)),
        method=np.array(result.method),
        logits=np.asarray(logits, np.float32),
    )
    if shown.frames is not None:
        arrays["frames"] = shown.frames
    if shown.logmel is not None:
        arrays["logmel"] = shown.logmel
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; 0 on success, 1 when the clip cannot be read, 2 on bad arguments."""
    from mbt import predict  # pylint: disable=g-import-not-at-top (imports TensorFlow)
    from mbt.data import media  # pylint: disable=g-import-not-at-top
    from mbt.tools import attention_plot  # pylint: disable=g-import-not-at-top (matplotlib)

    prog = "python -m mbt.tools.attention"
    args = _flags()
    files = cli.parse(
        args, argv, prog=prog, description=__doc__.split("\n\n")[0], positional="CLIP"
    )
    if len(files) != 1:
        cli.usage_error(prog, f"give one video file (got {len(files)})")
    if not args.out:
        cli.usage_error(prog, "--out=PNG is required")
    try:
        model_args = types.SimpleNamespace(
            **{n: getattr(args, n) for n in ("workdir", "export_dir", "checkpoint")},
            config=args.config,
            class_names=args.class_names,
            num_test_clips=1,
            num_spatial_crops="1",
        )
        predictor = predict.build_predictor(model_args)
        _check_mbt(predictor.model)
        layers = predictor.model.num_layers
        if args.layer is not None and not 0 <= args.layer < layers:
            raise ValueError(f"--layer={args.layer}; the model has layers 0..{layers - 1}")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = files[0]
    try:
        views = predict.file_views(path, predictor)
    except (predict.PredictError, media.MediaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    missing = [m for m in predictor.meta.modalities if m not in views.provided]
    if missing:
        streams = {"spectrogram": "audio track", "rgb": "video stream"}
        lacks = " or ".join(streams.get(m, m) for m in missing)
        reads = "+".join(predictor.meta.modalities)
        print(f"error: {path} has no {lacks}; the model reads {reads}", file=sys.stderr)
        return 1
    inputs = {m: views.inputs[m] for m in predictor.meta.modalities}
    logits, sown = capture(predictor.model, predictor.params, inputs)
    result = attention_maps(predictor.model, sown, predictor.meta.input_shapes, args.layer)
    scores = predict.combine_views(logits, predictor)
    best = int(np.argmax(scores))
    seconds_per_frame = predictor.settings.stride / predictor.meta.video_fps
    shown = attention_plot.shown_inputs(predictor.model, inputs, seconds_per_frame)
    header = (
        f"{os.path.basename(path)} · {result.method} · top class: "
        f"{predictor.meta.class_names[best]} ({scores[best]:.2f})"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    size = attention_plot.draw(args.out, result, shown, header)
    print(f"wrote {args.out} ({size[0]}x{size[1]} px, {result.method})")
    if args.save_arrays:
        npz = arrays_path(args.out)
        save_arrays(npz, result, logits[0], shown)
        print(f"wrote {npz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

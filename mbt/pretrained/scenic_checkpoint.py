"""Scenic MBT training checkpoints: read them, infer `config.model`, restore into our MBT.

A Scenic checkpoint is what flax's `save_checkpoint` writes for Scenic: a msgpack file
`checkpoint_<step>` (flax before orbax) or an orbax directory `checkpoint_<step>/` (flax since),
holding the train state, with the parameters under `optimizer/target` (older Scenic) or `params`
(newer). mbt's own training checkpoints hold the same tree and read the same way
(`train_state`). Our MBT has Scenic's parameter tree, so restoring is a shape check and a copy.

What the parameter shapes tell (`infer_model_config`):
- modalities: `embedding` (rgb) and `embedding_<m>`; tokenizer: 5-D kernel → `3d_conv` with its
  (t, h, w), 4-D → `2d` (spectrogram) or `temporal_sampling` (video; `n_sampled_frames` unknown);
- hidden size (kernel's last axis), layers (block indices), heads (`query/kernel`
  `[D, heads, D/heads]`),
  MLP size (`Dense_0/kernel` `[D, mlp]`), classes (`output_projection/kernel` `[D', classes]`),
  `representation_size` (`pre_logits`), classifier (`cls` present → token, else gap);
- tokens per modality (position embedding length) → input size hints;
- fusion: `bottleneck` present with 2+ modalities → bottleneck fusion with n = its length − 1
  (token) or n (gap), but the fusion layer is unknown (every layer keeps a block per
  modality); no bottleneck and per-modality blocks only below layer k < L → concat fusion from
  k; per-modality blocks at every layer → cross (any Lf) or concat with Lf = L; one shared
  block per layer → concat from 0 or cross with a shared encoder: ask. A single-modality
  checkpoint's `bottleneck` (Scenic creates one) is unused and ignored on loading.
What cannot be read must come from `hints` (a partial or full `config.model`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mbt import models
from mbt.models import mbt as mbt_lib
from mbt.pretrained import formats
from mbt.pretrained import train_state
from mbt.pretrained.report import InitReport

_LOG = logging.getLogger(__name__)
_VIDEO_LIKE = ("rgb", "flow")
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)(?:_([^/]+))?/")
# Keys that only change computation, never parameter shapes: taken from hints or defaults.
_FREE_KEYS = (
    "dropout_rate",
    "attention_dropout_rate",
    "stochastic_droplayer_rate",
    "dtype",
    "remat",
    "attention",
    "test_with_bottlenecks",
    "name",
)
# Of those, the ones that change what the model computes and that a user of a Scenic checkpoint
# may have set differently: `test_with_bottlenecks` (evaluation of bottleneck models) and
# `stochastic_droplayer_rate` (fine-tuning).
_UNSEEN_KEYS = ("test_with_bottlenecks", "stochastic_droplayer_rate")


# A Scenic MBT train state's parameters and where they were: `path` (the msgpack file or orbax
# directory read), `params`, `location` ('optimizer/target' in older Scenic, 'params' in newer),
# `step`.
ScenicCheckpoint = train_state.StoredParams


def read_scenic_checkpoint(path: str) -> ScenicCheckpoint:
    """Reads an MBT train state's parameters: a msgpack file, an orbax directory, a directory
    of `checkpoint_<step>` (the latest), or an mbt workdir (`train_state.locate`)."""
    return train_state.read_params(path)


@dataclasses.dataclass
class InferredConfig:
    """`config.model` recovered from a checkpoint.

    `model`: a complete `config.model`; `num_classes`; `token_counts` `{modality: tokens}` (no
    CLS); `input_channels` `{modality: C}`; `evidence` `{config key: parameter it came from}`;
    `from_hints`: keys the checkpoint could not tell, taken from the hints;
    `input_shape_hints` `{modality: text}`: input sizes that give the checkpoint's token counts;
    `defaults_used` `{key: value}`: settings that change the outputs but leave no trace in the
    parameters, neither given by the hints, so set to our defaults (see `_UNSEEN_KEYS`).
    """

    model: ml_collections.ConfigDict
    num_classes: int
    token_counts: dict[str, int]
    input_channels: dict[str, int]
    evidence: dict[str, str]
    from_hints: list[str]
    input_shape_hints: dict[str, str]
    defaults_used: dict[str, Any] = dataclasses.field(default_factory=dict)


def _hint(hints: Mapping[str, Any] | None, key: str) -> Any:
    if hints is None:
        return None
    return hints.get(key) if hasattr(hints, "get") else None


def _hint_sizes(hints) -> dict[str, int] | None:
    if hints is None:
        return None
    try:
        sizes = models.resolve_sizes(ml_collections.ConfigDict(dict(hints)))
    except (ValueError, TypeError):
        return None
    return dataclasses.asdict(sizes)


def _input_shape_hint(
    modality: str,
    kind: str,
    patches: tuple[int, ...],
    tokens: int,
    channels: int,
    n_sampled: int | None,
) -> str:
    if kind == "2d":
        examples = [
            f"[{tokens // (bins // patches[1]) * patches[0]}, {bins}, {channels}]"
            for bins in (128, 64)
            if bins % patches[1] == 0 and tokens % (bins // patches[1]) == 0
        ]
        text = f"{tokens} patches of {patches[0]}x{patches[1]}"
        return text + (
            f", e.g. input {' or '.join(examples)} (time, mel bins, channels)" if examples else ""
        )
    frames_per_token = patches[0] if kind == "3d_conv" else None
    spatial = patches[-2:]
    candidates = []
    for side in range(max(2, int(math.isqrt(tokens))), 1, -1):
        if tokens % (side * side) == 0:
            steps = tokens // (side * side)
            if kind == "temporal_sampling" and n_sampled and steps != n_sampled:
                continue
            frames = steps * frames_per_token if frames_per_token else f">={steps}"
            candidates.append(f"[{frames}, {side * spatial[0]}, {side * spatial[1]}, {channels}]")
    text = f"{tokens} tokens of {'x'.join(map(str, patches))}"
    return text + (
        f", e.g. input {' or '.join(candidates[:4])} (frames, height, width, channels)"
        if candidates
        else ""
    )


def infer_model_config(
    params: Mapping[str, Any], hints: Mapping[str, Any] | None = None
) -> InferredConfig:
    """`config.model` of a Scenic MBT params tree, from its shapes plus `hints` for the rest.

    `hints`: any `config.model` keys (e.g. the user's whole config); a hint that contradicts a
    shape raises ValueError naming the parameter. Keys that neither the shapes nor the hints
    give (e.g. `fusion_layer` of a bottleneck model) raise ValueError listing all of them.
    """
    flat = formats.flatten(params)
    shapes = {k: tuple(v.shape) for k, v in flat.items()}
    evidence: dict[str, str] = {}
    needs: list[str] = []
    from_hints: list[str] = []

    embeddings = {
        ("rgb" if k == "embedding/kernel" else k[len("embedding_") : -len("/kernel")]): k
        for k in shapes
        if re.match(r"^embedding(_[^/]+)?/kernel$", k)
    }
    if not embeddings:
        raise ValueError(
            "not an MBT params tree: no 'embedding' or 'embedding_<modality>' kernel; "
            f"top-level keys {sorted(params)[:20]}"
        )
    modalities = sorted(embeddings, key=lambda m: (m != mbt_lib.PRIMARY, m))
    hinted_modalities = _hint(hints, "modalities")
    if hinted_modalities:
        if set(hinted_modalities) != set(modalities):
            raise ValueError(
                f"config.model.modalities={tuple(hinted_modalities)} but the "
                f"checkpoint holds embeddings of {tuple(modalities)} "
                f"({sorted(embeddings.values())})"
            )
        modalities = list(hinted_modalities)
    evidence["modalities"] = ", ".join(sorted(embeddings.values()))

    first = embeddings[modalities[0]]
    hidden = shapes[first][-1]
    evidence["hidden_size"] = first
    for key in embeddings.values():
        if shapes[key][-1] != hidden:
            raise ValueError(f"{key} has width {shapes[key][-1]} but {first} has {hidden}")

    owners: dict[str, set[int]] = {}
    for key in shapes:
        block = _BLOCK.match(key)
        if block:
            owners.setdefault(block.group(2) or "", set()).add(int(block.group(1)))
    if not owners:
        raise ValueError("not an MBT params tree: no Transformer/encoderblock_<i> parameters")
    num_layers = max(max(layers) for layers in owners.values()) + 1
    some_block = next(k for k in sorted(shapes) if _BLOCK.match(k)).split("/")[1]
    query = f"Transformer/{some_block}/MultiHeadDotProductAttention_0/query/kernel"
    dense = f"Transformer/{some_block}/MlpBlock_0/Dense_0/kernel"
    num_heads, mlp_dim = shapes[query][1], shapes[dense][1]
    evidence.update(
        num_layers=f"Transformer/encoderblock_0..{num_layers - 1}", num_heads=query, mlp_dim=dense
    )
    inferred = {
        "hidden_size": (hidden, first),
        "num_layers": (num_layers, evidence["num_layers"]),
        "num_heads": (num_heads, query),
        "mlp_dim": (mlp_dim, dense),
    }
    hinted_sizes = _hint_sizes(hints)
    for key, (value, source) in inferred.items():
        if hinted_sizes is not None and hinted_sizes[key] != value:
            raise ValueError(
                f"config.model.{key}={hinted_sizes[key]} (from the config's variant "
                f"or sizes) but the checkpoint's {source} has shape "
                f"{shapes.get(source, '')} → {key} {value}"
            )

    classifier = "token" if "cls" in shapes else "gap"
    evidence["classifier"] = "cls present" if classifier == "token" else "no cls"
    classifier_tokens = 1 if classifier == "token" else 0
    representation_size = shapes["pre_logits/kernel"][1] if "pre_logits/kernel" in shapes else None
    evidence["representation_size"] = (
        "pre_logits/kernel" if representation_size else "no pre_logits"
    )
    if "output_projection/kernel" not in shapes:
        raise ValueError("the checkpoint has no output_projection/kernel: num_classes unknown")
    num_classes = shapes["output_projection/kernel"][-1]

    token_counts, channels, tokenizer_cfg, shape_hints = {}, {}, {}, {}
    hinted_tokenizers = _hint(hints, "tokenizers") or {}
    for m in modalities:
        kernel = shapes[embeddings[m]]
        posemb = f"Transformer/posembed_input{mbt_lib.suffix(m)}/pos_embedding"
        if posemb not in shapes:
            raise ValueError(f"the checkpoint has {embeddings[m]} but no {posemb}")
        token_counts[m] = shapes[posemb][1] - classifier_tokens
        channels[m] = kernel[-2]
        hinted = dict(hinted_tokenizers.get(m) or {})
        if len(kernel) == 5:
            spec = {
                "kind": "3d_conv",
                "patches": tuple(kernel[:3]),
                "kernel_init": hinted.get("kernel_init", "central_frame_initializer"),
            }
        elif m in _VIDEO_LIKE or hinted.get("kind") == "temporal_sampling":
            spec = {
                "kind": "temporal_sampling",
                "patches": tuple(kernel[:2]),
                "n_sampled_frames": hinted.get("n_sampled_frames"),
            }
            if not spec["n_sampled_frames"]:
                needs.append(
                    f"config.model.tokenizers.{m}.n_sampled_frames (a 2-D kernel on "
                    f"video: the number of sampled frames is not in the parameters)"
                )
            else:
                from_hints.append(f"tokenizers.{m}.n_sampled_frames")
        else:
            spec = {"kind": "2d", "patches": tuple(kernel[:2])}
        for key in ("kind", "patches"):
            given = hinted.get(key)
            if given is not None and tuple(np.atleast_1d(given)) != tuple(np.atleast_1d(spec[key])):
                raise ValueError(
                    f"config.model.tokenizers.{m}.{key}={given!r} but the "
                    f"checkpoint's {embeddings[m]} has shape {kernel} "
                    f"→ {key} {spec[key]!r}"
                )
        tokenizer_cfg[m] = spec
        evidence[f"tokenizers.{m}"] = embeddings[m]
        shape_hints[m] = _input_shape_hint(
            m,
            spec["kind"],
            spec["patches"],
            token_counts[m],
            channels[m],
            spec.get("n_sampled_frames"),
        )

    # Which layers each non-primary modality has its own block at (Scenic names: _<modality>).
    own = {m: owners.get(m, set()) for m in modalities if m != mbt_lib.PRIMARY}
    own_sets = {frozenset(s) for s in own.values()}
    if len(own_sets) > 1:
        raise ValueError(
            "modalities have their own encoder blocks at different layers: "
            + "; ".join(f"{m}: {sorted(s)}" for m, s in own.items())
        )
    own_layers = set(next(iter(own_sets))) if own_sets else set()
    multimodal = len(modalities) > 1
    hinted_fusion = _hint(hints, "fusion")
    hinted_layer = _hint(hints, "fusion_layer")
    fusion = fusion_layer = share_encoder = None
    if "bottleneck" in shapes and multimodal:
        fusion, share_encoder = "bottleneck", not own_layers
        evidence["fusion"] = "bottleneck"
        evidence["n_bottlenecks"] = "bottleneck"
    elif not multimodal:
        share_encoder = False
    elif own_layers == set(range(num_layers)):
        share_encoder = False
        if hinted_fusion == "concat":
            fusion, fusion_layer = "concat", num_layers
            evidence["fusion_layer"] = "concat with blocks per modality at every layer"
    elif own_layers == set(range(len(own_layers))):
        if own_layers:
            fusion, fusion_layer, share_encoder = "concat", len(own_layers), False
            evidence["fusion"] = evidence["fusion_layer"] = (
                f"own blocks stop at Transformer/encoderblock_{len(own_layers) - 1}_*"
            )
        else:
            share_encoder = True  # or concat from layer 0: the same parameters either way
    else:
        raise ValueError(f"per-modality blocks at layers {sorted(own_layers)} fit no fusion mode")
    evidence.setdefault("share_encoder", "per-modality block names")

    if fusion is None:
        if multimodal and not hinted_fusion:
            if own_layers:
                fits = (
                    "its own block per modality at every layer fits 'cross' (any fusion "
                    f"layer) and 'concat' fused after the last layer (fusion_layer={num_layers})"
                )
            else:
                fits = (
                    "one block per layer shared by all modalities fits 'concat' from "
                    "fusion_layer 0 and 'cross' with share_encoder=True"
                )
            needs.append(f"config.model.fusion (no bottleneck parameter; {fits})")
        elif hinted_fusion:
            if hinted_fusion == "bottleneck" and multimodal:
                raise ValueError(
                    "config.model.fusion='bottleneck' but the checkpoint has no "
                    "'bottleneck' parameter"
                )
            from_hints.append("fusion")
        fusion = hinted_fusion or "bottleneck"
    elif hinted_fusion and hinted_fusion != fusion:
        raise ValueError(
            f"config.model.fusion={hinted_fusion!r} but the checkpoint "
            f"({evidence['fusion']}) says {fusion!r}"
        )
    if fusion_layer is None:
        if multimodal and hinted_layer is None:
            needs.append(
                f"config.model.fusion_layer ({fusion} fusion keeps every layer's "
                "parameters whatever the fusion layer, so it leaves no trace)"
            )
        elif hinted_layer is not None:
            from_hints.append("fusion_layer")
        fusion_layer = num_layers if hinted_layer is None else int(hinted_layer)
    elif hinted_layer is not None and int(hinted_layer) != fusion_layer:
        raise ValueError(
            f"config.model.fusion_layer={hinted_layer} but the checkpoint "
            f"({evidence['fusion_layer']}) says {fusion_layer}"
        )

    n_bottlenecks = None
    if "bottleneck" in shapes and multimodal:  # a single modality never uses it
        n_bottlenecks = shapes["bottleneck"][1] - classifier_tokens
        hinted_n = _hint(hints, "n_bottlenecks")
        if hinted_n is not None and int(hinted_n) != n_bottlenecks:
            raise ValueError(
                f"config.model.n_bottlenecks={hinted_n} but the checkpoint's "
                f"bottleneck has shape {shapes['bottleneck']} → {n_bottlenecks} "
                f"(+{classifier_tokens} with the token classifier)"
            )
    if needs:
        raise ValueError("cannot infer from the checkpoint, please set: " + "; ".join(needs))

    for key, value in (
        ("classifier", classifier),
        ("representation_size", representation_size),
        ("share_encoder", share_encoder if multimodal else None),
    ):
        given = _hint(hints, key)
        if (
            value is not None
            and hints is not None
            and key in hints
            and given != value
            and not (key == "share_encoder" and fusion == "concat" and fusion_layer == 0)
        ):
            raise ValueError(
                f"config.model.{key}={given!r} but the checkpoint ({evidence[key]}) says {value!r}"
            )

    model = models.default_mbt_config()
    defaults_used = {}
    for key in _FREE_KEYS:
        given = _hint(hints, key)
        if given is not None:
            model[key] = given
        elif key in _UNSEEN_KEYS:
            defaults_used[key] = model[key]
    if fusion != "bottleneck" or not multimodal:
        defaults_used.pop("test_with_bottlenecks", None)  # changes nothing then
    model.update(
        dict(
            modalities=tuple(modalities),
            variant=None,
            hidden_size=hidden,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            fusion=fusion,
            fusion_layer=int(fusion_layer),
            n_bottlenecks=n_bottlenecks if n_bottlenecks is not None else model.n_bottlenecks,
            share_encoder=bool(share_encoder),
            classifier=classifier,
            representation_size=representation_size,
        )
    )
    model.tokenizers = ml_collections.ConfigDict(tokenizer_cfg)
    models.validate_model_config(model)
    return InferredConfig(
        model, num_classes, token_counts, channels, evidence, from_hints, shape_hints, defaults_used
    )


# --- checking and restoring -------------------------------------------------------------


def dummy_input_shapes(
    model_config: ml_collections.ConfigDict,
    token_counts: Mapping[str, int],
    channels: Mapping[str, int],
) -> dict[str, tuple[int, ...]]:
    """Smallest per-example input shapes that give each modality `token_counts[m]` tokens (a
    grid of one patch column), enough to build parameters of the right shapes."""
    sizes = models.resolve_sizes(model_config)
    shapes: dict[str, tuple[int, ...]] = {}
    for m in model_config.modalities:
        spec = models.tokenizer_spec(model_config, m, sizes.patch)
        tokens, c = int(token_counts[m]), int(channels[m])
        if spec.kind == "2d":
            shapes[m] = (tokens * spec.patches[0], spec.patches[1], c)
        elif spec.kind == "3d_conv":
            shapes[m] = (tokens * spec.patches[0], spec.patches[1], spec.patches[2], c)
        else:
            n = int(spec.sampled_frames())
            if tokens % n:
                raise ValueError(
                    f"modality {m!r}: {tokens} tokens are not a multiple of "
                    f"config.model.tokenizers.{m}.n_sampled_frames={n}"
                )
            shapes[m] = (n, tokens // n * spec.patches[0], spec.patches[1], c)
    return shapes


def expected_param_shapes(
    model_config: ml_collections.ConfigDict,
    num_classes: int,
    input_shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, tuple]:
    """`{path: shape}` of the params `build_model(model_config, num_classes)` creates for inputs
    of `input_shapes` (per example); computed abstractly, nothing is run."""
    model = models.build_model(model_config, num_classes)
    inputs = {
        m: jax.ShapeDtypeStruct((1,) + tuple(input_shapes[m]), jnp.float32)
        for m in model_config.modalities
    }
    variables = jax.eval_shape(
        lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False), inputs
    )
    return {k: tuple(v.shape) for k, v in formats.flatten(variables["params"]).items()}


def config_key_for(path: str) -> str:
    """The `config.model` key (or input) most likely behind a mismatch of parameter `path`."""
    rules = (
        (r"^embedding(_[^/]+)?/", "config.model.tokenizers patches / input channels / hidden_size"),
        (r"posembed_input", "the input size, tokenizer patches or classifier"),
        (r"^bottleneck$", "config.model.n_bottlenecks / fusion / classifier"),
        (r"^cls", "config.model.classifier / hidden_size"),
        (r"^output_projection/", "num_classes / config.model.representation_size"),
        (r"^pre_logits/", "config.model.representation_size"),
        (r"MultiHeadDotProductAttention", "config.model.num_heads / hidden_size"),
        (r"MlpBlock", "config.model.mlp_dim / hidden_size"),
        (r"encoderblock", "config.model.num_layers / fusion / fusion_layer / share_encoder"),
    )
    for pattern, key in rules:
        if re.search(pattern, path):
            return key
    return "config.model.hidden_size"


def check_shapes(
    checkpoint_shapes: Mapping[str, tuple], model_shapes: Mapping[str, tuple], source: str
) -> None:
    """Raises ValueError naming every parameter whose presence or shape differs."""
    problems = []
    for path in sorted(set(checkpoint_shapes) | set(model_shapes)):
        have, want = checkpoint_shapes.get(path), model_shapes.get(path)
        if have == want:
            continue
        if have is None:
            problems.append(f"{path}: missing from the checkpoint (model shape {want})")
        elif want is None:
            problems.append(f"{path}: in the checkpoint {have} but not in the model")
        else:
            problems.append(f"{path}: checkpoint shape {have} vs model shape {want}")
        problems[-1] += f" [check {config_key_for(path)}]"
    if problems:
        shown = problems[:12]
        if len(problems) > 12:
            shown.append(f"... and {len(problems) - 12} more")
        raise ValueError(f"{source} does not fit config.model:\n  " + "\n  ".join(shown))


@dataclasses.dataclass
class RestoredModel:
    """A model built from a checkpoint and its params (numpy float32, ready for `apply`)."""

    model: Any
    params: dict[str, Any]
    model_config: ml_collections.ConfigDict
    num_classes: int
    step: int | None
    inferred: InferredConfig
    ignored: list[str] = dataclasses.field(default_factory=list)  # unused checkpoint params


def load_scenic_mbt(
    path: str,
    model_config: ml_collections.ConfigDict | None = None,
    num_classes: int | None = None,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    hints: Mapping[str, Any] | None = None,
) -> RestoredModel:
    """Restores a Scenic MBT checkpoint into our MBT for evaluation, prediction or fine-tuning.

    With `model_config` the checkpoint must fit it (ValueError naming the first mismatching
    parameters otherwise); without, the config is inferred from the shapes plus `hints`.
    `input_shapes` (per example) additionally checks the position embeddings against real inputs.
    """
    checkpoint = read_scenic_checkpoint(path)
    explicit_config = model_config
    inferred = infer_model_config(
        checkpoint.params, model_config if model_config is not None else hints
    )
    model_config = model_config if model_config is not None else inferred.model
    if num_classes is not None and int(num_classes) != inferred.num_classes:
        raise ValueError(
            f"num_classes={num_classes} but the checkpoint's output_projection/kernel "
            f"has shape {checkpoint.params['output_projection']['kernel'].shape}"
        )
    num_classes = inferred.num_classes
    shapes = (
        dict(input_shapes)
        if input_shapes
        else dummy_input_shapes(model_config, inferred.token_counts, inferred.input_channels)
    )
    flat = formats.flatten(checkpoint.params)
    ignored = unused_params(flat, model_config)
    for key in ignored:
        _LOG.info(
            "%s: ignoring %s %s: Scenic creates bottleneck tokens for a single-modality model "
            "too, which never uses them.",
            checkpoint.path,
            key,
            tuple(flat[key].shape),
        )
        del flat[key]
    check_shapes(
        {k: tuple(v.shape) for k, v in flat.items()},
        expected_param_shapes(model_config, num_classes, shapes),
        checkpoint.path,
    )
    if explicit_config is None and inferred.defaults_used:
        _LOG.warning(
            "%s: the parameters do not say %s; using %s. Set them (--config.model.<key>) if the "
            "checkpoint was trained otherwise: e.g. test_with_bottlenecks=False changes the "
            "test logits of a bottleneck model.",
            checkpoint.path,
            " or ".join(inferred.defaults_used),
            ", ".join(f"{k}={v!r}" for k, v in inferred.defaults_used.items()),
        )
    params = formats.unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})
    return RestoredModel(
        models.build_model(model_config, num_classes),
        params,
        model_config,
        num_classes,
        checkpoint.step,
        inferred,
        sorted(ignored),
    )


def unused_params(flat: Mapping[str, Any], model_config: ml_collections.ConfigDict) -> set[str]:
    """Checkpoint parameters the model built from `model_config` never uses and does not create:
    the `bottleneck` Scenic keeps for a single-modality model with bottleneck fusion."""
    if len(model_config.modalities) == 1 and "bottleneck" in flat:
        return {"bottleneck"}
    return set()


def init_from_scenic(
    checkpoint: ScenicCheckpoint,
    params: Mapping[str, Any],
    *,
    restore_output_projection: bool = False,
) -> tuple[dict, InitReport]:
    """Initialises a model's `params` from a Scenic MBT checkpoint (fine-tuning).

    Same-shaped parameters are loaded; parameters the checkpoint lacks stay fresh; the classifier
    (`output_projection`) stays fresh unless `restore_output_projection`. A parameter present in
    both with different shapes raises ValueError naming it.
    """
    ckpt_flat = formats.flatten(checkpoint.params)
    report = InitReport(checkpoint.path, "scenic")
    new_flat = {}
    for path, fresh in formats.flatten(params).items():
        head = path.startswith("output_projection/")
        if head and not restore_output_projection:
            new_flat[path] = fresh
            report.add(
                path,
                fresh.shape,
                "fresh",
                note="classifier left fresh (restore_output_projection=False)",
            )
        elif path not in ckpt_flat:
            new_flat[path] = fresh
            report.add(path, fresh.shape, "fresh", note="not in the checkpoint")
        elif tuple(ckpt_flat[path].shape) != tuple(fresh.shape):
            raise ValueError(
                f"{path}: checkpoint {checkpoint.path} has shape "
                f"{tuple(ckpt_flat[path].shape)} but the model wants "
                f"{tuple(fresh.shape)} [check {config_key_for(path)}]"
            )
        else:
            new_flat[path] = np.asarray(ckpt_flat[path], fresh.dtype)
            report.add(path, fresh.shape, "loaded", source=path)
    report.unused_checkpoint_keys = sorted(
        k
        for k in ckpt_flat
        if k not in new_flat
        or (k.startswith("output_projection/") and not restore_output_projection)
    )
    return formats.unflatten(new_flat), report

"""Parameter count and inference GFLOPs per example: analytic count and XLA's cost analysis.

    python -m mbt.tools.flops --config=configs/<file>.py [--xla=compiled|lowered|none]

Conventions (see docs/compute.md):
- The analytic count is in multiply-adds (MACs): one multiply-add = one FLOP, the convention
  behind "ViT-B/16 at 224² = 17.56 GFLOPs". It counts the matrix products only: patch
  embedding, Q/K/V/out projections, attention logits q·kᵀ, the attention-weighted sum of
  values, the two MLP layers and the classifier head. Layer norms, softmax, GELU, biases,
  residual adds, position embeddings and the bottleneck average are left out (O(tokens·D)).
  SFT (`sft_macs`) adds its sparse blocks, the attention-score recomputation of the pools
  that need it and the joint blocks over the pooled sequence (max / avg pooling has no
  multiply-adds). The C-LSTM
  (`clstm_macs`) counts its convolutions (gate convolutions input→4F and hidden→4F per time
  step, strided downsampling convolutions) over the real, non-padding input taps, as XLA
  does, plus the bilinear resizes (`jax.image.resize` contracts with dense interpolation
  matrices) and the head; the gate nonlinearities are elementwise and left out.
- XLA's count (`cost_analysis()['flops']` of the jitted forward pass) counts a multiply-add as
  2 FLOPs and includes the elementwise ops, so `xla / (2 · analytic)` is a little above 1.
  The XLA check always runs the model with `attention='einsum'` (where the config has the key)
  because a fused attention kernel may be a custom call whose FLOPs XLA cannot see. XLA counts
  the body of a while loop once, whatever its trip count, so for a model with a loop (a scan
  over time; the C-LSTM's recurrence is unrolled and has none) its figure is a lower bound;
  the report says so (`XlaReport.has_while_loop`).

A model contributes its analytic count through its family (`mbt.models.family.ModelFamily`):
`analytic_macs(model_config, input_shapes, num_classes) -> AnalyticCount`; MBT, SFT and the
C-LSTM call `mbt_macs`, `sft_macs` and `clstm_macs` below with `config.model` merged over their
defaults. A family without one gets only the XLA count. None of this imports TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from mbt import models
from mbt.data import registry
from mbt.models import clstm as clstm_lib
from mbt.models import sft as sft_lib
from mbt.models import sft_pooling
from mbt.models import tokenizers

SPECTROGRAM_FRAMES_PER_SECOND = 100  # 10 ms hop
# The head's size when neither a flag, config.dataset.num_classes nor the dataset's registry
# spec gives it.
DEFAULT_NUM_CLASSES = 527


@dataclasses.dataclass
class AnalyticCount:
    """Multiply-adds per example by component, and the token count each sequence had.

    `macs`: component name → multiply-adds for one example (one forward pass, inference).
    `tokens`: a description of each sequence the encoder processed → its length, for reports.
    `stages`: optional second breakdown of the same total by model stage (SFT, C-LSTM).
    `notes`: extra report lines (e.g. the C-LSTM's map sizes).
    """

    macs: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    stages: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return int(sum(self.macs.values()))

    def add(self, other: Mapping[str, int], stage: str | None = None) -> None:
        """Adds `{component: macs}`; with `stage`, also books their sum under that stage."""
        for name, value in other.items():
            self.macs[name] += int(value)
        if stage is not None:
            self.stages[stage] += int(sum(other.values()))


# --- analytic building blocks ---------------------------------------------------------------


def encoder_block_macs(
    num_tokens: int, width: int, mlp_dim: int, num_key_tokens: int | None = None
) -> dict[str, int]:
    """Multiply-adds of one pre-LN transformer block on one example.

    `num_tokens` queries attend to `num_key_tokens` keys (default: the same tokens, i.e.
    self-attention). Q and out projections run on the queries, K and V on the keys.
    """
    q, k, d = num_tokens, num_key_tokens if num_key_tokens is not None else num_tokens, width
    return {
        "qkv_out_projections": 2 * q * d * d + 2 * k * d * d,
        "attention_logits": q * k * d,  # q·kᵀ summed over heads: Σ_heads q·k·(D/heads)
        "attention_weighted_sum": q * k * d,  # weights·v
        "mlp": 2 * q * d * mlp_dim,
    }


def patch_embedding_macs(
    spec: tokenizers.TokenizerSpec, input_shape: tuple[int, ...], width: int
) -> tuple[int, int]:
    """(tokens, multiply-adds) of tokenising one example of `input_shape` (no batch axis)."""
    grid = tokenizers.token_grid(spec, tuple(input_shape))
    num_tokens = math.prod(grid)
    channels = input_shape[-1]
    patch_volume = math.prod(spec.patches) * channels
    return num_tokens, num_tokens * patch_volume * width


def head_macs(
    model_config: ml_collections.ConfigDict, width: int, num_classes: int, num_heads_applied: int
) -> int:
    """The classifier (and optional pre-logits layer) applied `num_heads_applied` times."""
    representation = model_config.get("representation_size")
    per_head = (
        (width * representation + representation * num_classes)
        if representation
        else width * num_classes
    )
    return num_heads_applied * per_head


def require_input_shapes(
    model_config: ml_collections.ConfigDict, input_shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """Raises ValueError naming the first configured modality without an input shape."""
    for m in model_config.modalities:
        if m not in input_shapes:
            raise ValueError(
                f"no input shape for modality {m!r} (config.model.modalities); "
                f"have {sorted(input_shapes)}"
            )


def add_patch_embeddings(
    count: AnalyticCount,
    model_config: ml_collections.ConfigDict,
    input_shapes: Mapping[str, tuple[int, ...]],
    patch: int,
    width: int,
    stage: str | None = None,
) -> dict[str, int]:
    """Adds every modality's patch-embedding MACs to `count`; returns `{modality: patch tokens}`."""
    require_input_shapes(model_config, input_shapes)
    tokens = {}
    for m in model_config.modalities:
        spec = models.tokenizer_spec(model_config, m, patch)
        tokens[m], macs = patch_embedding_macs(spec, input_shapes[m], width)
        count.add({"patch_embedding": macs}, stage)
    return tokens


def mbt_macs(
    model_config: ml_collections.ConfigDict,
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    *,
    scenic_cross: bool = False,
) -> AnalyticCount:
    """Inference multiply-adds of `mbt.models.mbt.MBT` for one example, as the model computes them.

    Before layer Lf every modality runs its own block on its own tokens (CLS included). From Lf:
    `bottleneck`: each modality's block runs on its tokens + the bottleneck tokens
    (n_bottlenecks, + 1 with the token classifier, as in Scenic); `cross`: each modality's block
    computes queries, the output projection and the MLP for its own L_m tokens, keys and values
    for all modalities' tokens; `concat`: one block on the concatenated sequence.
    `scenic_cross=True` counts Scenic's cross fusion instead, a reference: each modality's block
    runs on all modalities' tokens and keeps only its own outputs.
        `model_config` is merged over the family defaults (`ModelFamily.resolve`).
    """
    sizes = models.resolve_sizes(model_config)
    width, mlp_dim = sizes.hidden_size, sizes.mlp_dim
    modalities = tuple(model_config.modalities)
    classifier = model_config.classifier
    fusion = model_config.fusion
    fusion_layer = model_config.fusion_layer
    count = AnalyticCount()

    patches = add_patch_embeddings(count, model_config, input_shapes, sizes.patch, width)
    lengths = {m: n + (1 if classifier == "token" else 0) for m, n in patches.items()}
    count.tokens.update(lengths)

    multimodal = len(modalities) > 1
    # Inference: test_with_bottlenecks=False turns bottleneck fusion into late fusion.
    fusing = multimodal and (fusion != "bottleneck" or model_config.test_with_bottlenecks)
    n_bottleneck = int(model_config.n_bottlenecks) + (1 if classifier == "token" else 0)
    joint = sum(lengths.values())
    for layer in range(sizes.num_layers):
        if not (fusing and layer >= fusion_layer):
            for m in modalities:
                count.add(encoder_block_macs(lengths[m], width, mlp_dim))
        elif fusion == "bottleneck":
            for m in modalities:
                count.add(encoder_block_macs(lengths[m] + n_bottleneck, width, mlp_dim))
                count.tokens[f"{m}+bottleneck"] = lengths[m] + n_bottleneck
        elif fusion == "cross" and scenic_cross:
            for _ in modalities:
                count.add(encoder_block_macs(joint, width, mlp_dim))
            count.tokens["cross, Scenic (per modality)"] = joint
        elif fusion == "cross":
            for m in modalities:
                count.add(encoder_block_macs(lengths[m], width, mlp_dim, num_key_tokens=joint))
            count.tokens["cross keys (per modality)"] = joint
        else:
            count.add(encoder_block_macs(joint, width, mlp_dim))
            count.tokens["concat"] = joint
    heads = len(modalities) if classifier == "token" else 1
    count.add({"head": head_macs(model_config, width, num_classes, heads)})
    return count


def sft_macs(
    model_config: ml_collections.ConfigDict,
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
) -> AnalyticCount:
    """Inference multiply-adds of `mbt.models.sft.SparseFusionTransformer` for one example.

    Per modality m with N_m patch tokens (L_m = 1 + N_m with its CLS): the patch embedding,
    `n_layers_pre_fusion` blocks on L_m tokens, and the sparse block: a full encoder block
    (`sparse_block='encoder'`) or its attention only (`'attention'`: projections, logits and
    weighted sum; with the fixed sparse mask the masked logits are still computed, as in the
    model). Pooling: with an encoder block, `cls_topk` recomputes the CLS's attention (query
    of the CLS, keys of all L_m tokens, q·kᵀ) and the saliency pools the whole attention
    (queries and keys of L_m tokens, q·kᵀ); the attention block hands its weights over for
    free. `attn` weights the tokens (N_m·D), `attn_wkmedoids` counts its L1 distances
    (N_m²·D) and 5 rounds of cluster costs (N_m²·k); max / avg / top-k / random pools and the
    CLS sum have no multiply-adds. Then `n_layers_post_fusion` joint blocks on 1 + Σ_m K_m
    tokens (K_m: `mbt.models.sft.pooled_length`) and the head on the fused CLS. `stages`
    splits the total into these stages.
        `model_config` is merged over the family defaults (`ModelFamily.resolve`).
    """
    sizes = sft_lib.vit_sizes(model_config)
    width, mlp_dim = sizes.hidden_size, sizes.mlp_dim
    modalities = tuple(model_config.modalities)
    pool_type = model_config.pool_type
    attention_block = model_config.sparse_block == "attention"
    n_pre = int(model_config.n_layers_pre_fusion)
    n_post = int(model_config.n_layers_post_fusion)
    count = AnalyticCount()
    joint = 1  # the fused CLS
    patches = add_patch_embeddings(
        count, model_config, input_shapes, sizes.patch, width, stage="patch_embedding"
    )
    for m in modalities:
        n = patches[m]
        length = n + 1
        count.tokens[m] = length
        for _ in range(n_pre):
            count.add(encoder_block_macs(length, width, mlp_dim), "pre_fusion_blocks")
        block = encoder_block_macs(length, width, mlp_dim)
        if attention_block:
            block.pop("mlp")
        count.add(block, "sparse_pool_blocks")
        kept = sft_lib.pooled_length(model_config, m, n)
        pooling: dict[str, int] = {}
        if not attention_block and pool_type == "cls_topk":
            pooling["cls_attention_scores"] = (
                width * width + length * width * width + length * width
            )
        elif not attention_block and pool_type in sft_pooling.SALIENCY_POOLS:
            pooling["attention_scores"] = 2 * length * width * width + length * length * width
        if pool_type == "attn":
            pooling["attention_weighting"] = n * width
        elif pool_type == "attn_wkmedoids" and kept < n:
            pooling["kmedoid_distances"] = n * n * width
            pooling["kmedoid_costs"] = sft_pooling.KMEDOIDS_ITERATIONS * n * n * kept
        count.add(pooling, "pooling")
        count.tokens[f"{m} pooled"] = kept
        joint += kept
    count.tokens["joint"] = joint
    for _ in range(n_post):
        count.add(encoder_block_macs(joint, width, mlp_dim), "post_fusion_blocks")
    count.add({"head": head_macs(model_config, width, num_classes, 1)}, "head")
    return count


def conv_taps(size: int, kernel: int) -> int:
    """Kernel taps on real inputs summed over the `size` outputs of a stride-1 'SAME' conv.

    Taps that fall on the zero padding are not counted (XLA's convention): size 8, kernel 3
    gives 22, not 24.
    """
    low = (kernel - 1) // 2
    return sum(min(size, o - low + kernel) - max(0, o - low) for o in range(size))


def resize_macs(shape: tuple[int, ...], target_hw: tuple[int, int]) -> int:
    """Multiply-adds of `jax.image.resize` (bilinear) of maps `[..., h, w, C]` to `target_hw`.

    It contracts every changed spatial axis with a dense `[in, out]` interpolation matrix, in
    the cheaper order when both change; unchanged axes cost nothing.
    """
    *lead, h, w, channels = shape
    rest = math.prod(lead) * channels
    th, tw = target_hw
    if (h, w) == (th, tw):
        return 0
    if h == th:
        return rest * h * w * tw
    if w == tw:
        return rest * h * th * w
    return rest * min(th * h * w + th * tw * w, h * tw * w + th * tw * h)


def clstm_macs(
    model_config: ml_collections.ConfigDict,
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
) -> AnalyticCount:
    """Inference multiply-adds of `mbt.models.clstm.ConvLSTMClassifier` for one example.

    Streams: video-like inputs `[T, H, W, C]`, audio `[time, mel, C]` cut into T slices
    `[time // T, mel, C]` (resized to `audio_map_size` if set). Layer i, on maps `[T, H, W, C]`:
    downsampling by s_i (max pooling: no multiply-adds; `downsample='conv'`: T·H'·W'·s²·C·F),
    then per time step the gate convolutions input→4F (kh·kw·C·4F per output position) and
    hidden→4F (kh·kw·F·4F), over the real (non-padding) taps of the 'SAME' kernel. At the
    fusion layer every stream is resized to the reference grid (bilinear) and concatenated on
    channels. Head: `output_projection` on the pooled features.
        `model_config` is merged over the family defaults (`ModelFamily.resolve`).
    """
    modalities = tuple(model_config.modalities)
    num_layers = int(model_config.num_layers)
    features = clstm_lib.per_layer(model_config.features, num_layers, "features")
    strides = clstm_lib.per_layer(model_config.spatial_strides, num_layers, "spatial_strides")
    kh, kw = tuple(model_config.kernel_size)
    downsample = model_config.downsample
    map_size = model_config.audio_map_size
    fusion_layer = int(model_config.fusion_layer) if len(modalities) > 1 else 0
    count = AnalyticCount()

    require_input_shapes(model_config, input_shapes)
    video = [m for m in modalities if len(input_shapes[m]) == 4]
    num_frames = input_shapes[video[0]][0] if video else model_config.audio_slices
    if num_frames is None:
        raise ValueError("config.model.audio_slices must be set when no modality is video")
    streams: dict[str, tuple[int, ...]] = {}  # modality (or 'fused') -> maps [T, H, W, C]
    for m in modalities:
        shape = tuple(input_shapes[m])
        if len(shape) == 4:
            streams[m] = shape
            continue
        time_bins, mel, channels = shape
        streams[m] = (num_frames, time_bins // num_frames, mel, channels)
        if map_size is not None:
            size = (int(map_size[0]), int(map_size[1]))
            count.add({"resize": resize_macs(streams[m], size)}, "resize")
            streams[m] = (num_frames,) + size + (channels,)

    def run_layer(i: int, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
        frames, height, width, channels = shape
        stride, out = strides[i], features[i]
        macs = {}
        if stride > 1:
            height, width = height // stride, width // stride
            if downsample == "conv":
                macs["downsample_conv"] = frames * height * width * stride * stride * channels * out
                channels = out
        taps = frames * conv_taps(height, kh) * conv_taps(width, kw)
        macs["convlstm_input_conv"] = taps * channels * 4 * out
        macs["convlstm_hidden_conv"] = taps * out * 4 * out
        count.add(macs, f"layer_{i}")
        count.notes.append(
            f"layer {i} ({name}): {height}×{width} maps, {channels} → {out} "
            f"channels, {frames} steps"
        )
        return (frames, height, width, out)

    for i in range(fusion_layer):
        streams = {m: run_layer(i, s, m) for m, s in streams.items()}
    if fusion_layer == num_layers:
        width_in = sum(streams[m][-1] for m in modalities)
    else:
        reference = video[0] if video else modalities[0]
        grid = (streams[reference][1], streams[reference][2])
        for m in modalities:
            count.add({"resize": resize_macs(streams[m], grid)}, "resize")
        fused = streams[reference][:1] + tuple(grid) + (sum(streams[m][-1] for m in modalities),)
        for i in range(fusion_layer, num_layers):
            fused = run_layer(i, fused, "+".join(modalities))
        width_in = fused[-1]
    count.add({"head": width_in * num_classes}, "head")
    count.notes.insert(
        0, f"time steps T = {num_frames}; fusion at layer {fusion_layer} of {num_layers}"
    )
    return count


# --- XLA ------------------------------------------------------------------------------------


@dataclasses.dataclass
class XlaReport:
    """XLA's view of the jitted inference forward pass at batch `batch_size`.

    `flops`: cost_analysis()['flops'] (a multiply-add = 2, elementwise ops included), for the
    whole batch. Memory fields (bytes) come from the compiled executable only, else None:
    `temp_bytes` is XLA's scratch/activation buffer, the peak-activation estimate;
    `argument_bytes` holds parameters and inputs. `has_while_loop`: the lowered graph has a
    while loop (e.g. `nn.RNN`'s scan); XLA counts a loop body once, so `flops` is then a lower
    bound.
    """

    flops: float
    batch_size: int
    seconds: float
    compiled: bool
    temp_bytes: int | None = None
    argument_bytes: int | None = None
    output_bytes: int | None = None
    has_while_loop: bool = False


def input_structs(
    input_shapes: Mapping[str, tuple[int, ...]], batch_size: int = 1, dtype=jnp.float32
) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract inputs `{modality: [batch, *shape]}` for lowering without data."""
    return {
        m: jax.ShapeDtypeStruct((batch_size,) + tuple(s), dtype) for m, s in input_shapes.items()
    }


def abstract_params(model, inputs: Mapping[str, jax.ShapeDtypeStruct]):
    """Parameter shapes of `model` from `jax.eval_shape` (nothing is allocated or computed)."""

    def init(x):
        return model.init(
            {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False
        )

    return jax.eval_shape(init, dict(inputs))["params"]


def count_params(params) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def _first(analysis):
    # Older JAX returned a list with one dict per executable.
    return analysis[0] if isinstance(analysis, (list, tuple)) else analysis


def xla_model_config(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with `attention='einsum'`, so no fused custom call hides FLOPs from XLA."""
    config = ml_collections.ConfigDict(model_config.to_dict())
    if "attention" in config:
        config.attention = "einsum"
    return config


def xla_report(
    model,
    params,
    input_shapes: Mapping[str, tuple[int, ...]],
    *,
    batch_size: int = 1,
    compile: bool = True,
) -> XlaReport:
    """Lowers (and compiles, if `compile`) the inference forward pass; never runs it."""
    start = time.perf_counter()
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    lowered = forward.lower(params, input_structs(input_shapes, batch_size))
    has_loop = "stablehlo.while" in lowered.as_text()
    if not compile:
        flops = float(_first(lowered.cost_analysis())["flops"])
        return XlaReport(
            flops, batch_size, time.perf_counter() - start, compiled=False, has_while_loop=has_loop
        )
    compiled = lowered.compile()
    flops = float(_first(compiled.cost_analysis())["flops"])
    memory = compiled.memory_analysis()
    get = lambda name: getattr(memory, name, None) if memory is not None else None  # noqa: E731
    return XlaReport(
        flops,
        batch_size,
        time.perf_counter() - start,
        compiled=True,
        temp_bytes=get("temp_size_in_bytes"),
        argument_bytes=get("argument_size_in_bytes"),
        output_bytes=get("output_size_in_bytes"),
        has_while_loop=has_loop,
    )


# --- input shapes from a config -------------------------------------------------------------


def parse_shape(text: str, flag: str) -> tuple[int, ...]:
    """'8,224,224,3' → (8, 224, 224, 3); ValueError naming `flag` otherwise."""
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"--{flag}={text!r} must be comma-separated positive sizes, e.g. 8,224,224,3"
        )
    return shape


def input_shapes_from_config(
    config: ml_collections.ConfigDict, overrides: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Per-example input shape of each modality in `config.model.modalities` (no batch axis).

    rgb: (num_frames, frame_size, frame_size, 3); spectrogram: (audio_seconds · 100,
    num_mel_bins, spec_channels), from `config.dataset`. `overrides` (from flags) win.
    """
    overrides = dict(overrides or {})
    dataset = config.get("dataset") or ml_collections.ConfigDict()
    shapes = {}
    for m in tuple(config.model.modalities):
        if m in overrides:
            shapes[m] = tuple(overrides[m])
            continue
        if m == "rgb" and dataset.get("num_frames") and dataset.get("frame_size"):
            size = dataset.frame_size
            h, w = (size, size) if isinstance(size, int) else tuple(size)
            shapes[m] = (int(dataset.num_frames), int(h), int(w), 3)
        elif m == "spectrogram" and dataset.get("audio_seconds"):
            frames = int(round(float(dataset.audio_seconds) * SPECTROGRAM_FRAMES_PER_SECOND))
            shapes[m] = (
                frames,
                int(dataset.get("num_mel_bins", 128) or 128),
                int(dataset.get("spec_channels", 1) or 1),
            )
        else:
            keys = {"rgb": "num_frames and frame_size", "spectrogram": "audio_seconds"}.get(m)
            where = f"config.dataset.{keys} or " if keys else ""
            raise ValueError(
                f"no input shape for modality {m!r}: set {where}--{m}_shape "
                f"(or --shape={m}=d1,d2,...)"
            )
    return shapes


def num_classes_from_config(config: ml_collections.ConfigDict) -> int:
    dataset = config.get("dataset") or {}
    if dataset.get("num_classes"):
        return int(dataset["num_classes"])
    name = dataset.get("name")
    if not name:
        return DEFAULT_NUM_CLASSES
    try:
        spec = registry.get(name, dataset.get("imports") or ())
    except ValueError:
        return DEFAULT_NUM_CLASSES
    return spec.num_classes or DEFAULT_NUM_CLASSES


# --- report ---------------------------------------------------------------------------------


@dataclasses.dataclass
class FlopsReport:
    """Everything the CLI prints, per example unless said otherwise."""

    model_name: str
    input_shapes: dict[str, tuple[int, ...]]
    num_classes: int
    num_params: int
    analytic: AnalyticCount | None
    xla: XlaReport | None

    @property
    def analytic_gflops(self) -> float | None:
        """Analytic GFLOPs (1 multiply-add = 1 FLOP) per example."""
        return self.analytic.total / 1e9 if self.analytic is not None else None

    @property
    def xla_gflops(self) -> float | None:
        """XLA GFLOPs per example (1 multiply-add = 2 FLOPs, elementwise ops included)."""
        return self.xla.flops / self.xla.batch_size / 1e9 if self.xla is not None else None

    @property
    def ratio(self) -> float | None:
        """XLA FLOPs / (2 × analytic multiply-adds); ≈ 1 when the analytic count is complete."""
        if self.analytic is None or self.xla is None or not self.analytic.total:
            return None
        xla_flops_per_example = self.xla.flops / self.xla.batch_size
        return xla_flops_per_example / (2 * self.analytic.total)

    def lines(self) -> list[str]:
        shapes = ", ".join(f"{m} {list(s)}" for m, s in self.input_shapes.items())
        out = [
            f"model: {self.model_name}   inputs per example: {shapes}   "
            f"classes: {self.num_classes}",
            f"parameters: {self.num_params:,} ({self.num_params / 1e6:.2f} M)",
        ]
        if self.analytic is not None:
            out.append(
                "analytic GFLOPs/example (1 multiply-add = 1 FLOP): "
                f"{_number(self.analytic.total / 1e9)}"
            )
            total = max(self.analytic.total, 1)
            for name, macs in self.analytic.macs.items():
                out.append(
                    f"  {name:<24} {_number(macs / 1e9):>10} G  ({100 * macs / total:5.1f} %)"
                )
            if self.analytic.stages:
                out.append("  by stage:")
                for name, macs in self.analytic.stages.items():
                    out.append(
                        f"    {name:<22} {_number(macs / 1e9):>10} G  ({100 * macs / total:5.1f} %)"
                    )
            if self.analytic.tokens:
                out.append(
                    "  sequence lengths: "
                    + ", ".join(f"{k} {v}" for k, v in self.analytic.tokens.items())
                )
            out += [f"  {note}" for note in self.analytic.notes]
        else:
            out.append(
                f"analytic GFLOPs: not available for model {self.model_name!r} "
                "(give its family an analytic_macs); XLA's count only"
            )
        if self.xla is not None:
            how = "compiled" if self.xla.compiled else "lowered, unoptimised HLO"
            out.append(
                f"XLA GFLOPs/example (1 multiply-add = 2 FLOPs, elementwise included; {how}, "
                f"{self.xla.seconds:.1f} s): {_number(self.xla.flops / self.xla.batch_size / 1e9)}"
            )
            if self.xla.has_while_loop:
                out.append(
                    "  (a lower bound: the graph has a while loop, e.g. a scan over time, "
                    "and XLA counts its body once)"
                )
            if self.ratio is not None:
                suffix = (
                    " (not a check: XLA counts each loop body once)"
                    if self.xla.has_while_loop
                    else ""
                )
                out.append(f"XLA / (2 x analytic): {self.ratio:.4f}{suffix}")
            if self.xla.temp_bytes is not None:
                out.append(
                    f"peak activation memory estimate (XLA temp buffers, batch "
                    f"{self.xla.batch_size}): {_mib(self.xla.temp_bytes)}; "
                    f"arguments (params + inputs): {_mib(self.xla.argument_bytes)}"
                )
        return out


def _number(value: float) -> str:
    """3 decimals for big numbers, 4 significant digits for small ones."""
    return f"{value:.3f}" if abs(value) >= 1 else f"{value:.4g}"


def _mib(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "unknown"
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KiB"


def analytic_count(
    config: ml_collections.ConfigDict,
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
) -> AnalyticCount | None:
    """The model family's analytic multiply-add count per example (None where the family has
    none); no model is built or traced. `config` is the model config (`config.model`)."""
    models.validate_model_config(config)
    shapes = {m: tuple(int(d) for d in s) for m, s in input_shapes.items()}
    return models.get_family(config.get("name")).analytic_macs(config, shapes, num_classes)


def analyse(
    config: ml_collections.ConfigDict,
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    *,
    xla: str = "compiled",
    batch_size: int = 1,
) -> FlopsReport:
    """Counts parameters, analytic multiply-adds and XLA FLOPs (`xla`: compiled|lowered|none).

    `config` is the model config (`config.model`); `input_shapes` exclude the batch axis.
    """
    if xla not in ("compiled", "lowered", "none"):
        raise ValueError(f"--xla={xla!r}; allowed: 'compiled', 'lowered', 'none'")
    input_shapes = {m: tuple(int(d) for d in s) for m, s in input_shapes.items()}
    name = config.get("name")
    analytic = analytic_count(config, input_shapes, num_classes)
    model = models.build_model(xla_model_config(config), num_classes)
    params = abstract_params(model, input_structs(input_shapes, batch_size))
    report = None
    if xla != "none":
        report = xla_report(
            model, params, input_shapes, batch_size=batch_size, compile=xla == "compiled"
        )
    return FlopsReport(
        name, dict(input_shapes), num_classes, count_params(params), analytic, report
    )


def main(argv):
    del argv
    from absl import flags  # pylint: disable=g-import-not-at-top

    flag_values = flags.FLAGS
    config = flag_values.config
    if config is None or config.get("model") is None:
        raise ValueError("--config must name a config file whose get_config() has config.model")
    overrides = {}
    for modality in ("rgb", "spectrogram"):
        value = flag_values[f"{modality}_shape"].value
        if value:
            overrides[modality] = parse_shape(value, f"{modality}_shape")
    for item in flag_values.shape or ():
        modality, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--shape={item!r} must look like modality=d1,d2,...")
        overrides[modality.strip()] = parse_shape(value, f"shape {modality}")
    shapes = input_shapes_from_config(config, overrides)
    num_classes = flag_values.num_classes or num_classes_from_config(config)
    report = analyse(
        config.model, shapes, num_classes, xla=flag_values.xla, batch_size=flag_values.batch_size
    )
    print("\n".join(report.lines()))


def define_flags():
    from absl import flags  # pylint: disable=g-import-not-at-top
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

    config_flags.DEFINE_config_file(
        "config", None, "Config file with get_config().", lock_config=False
    )
    flags.DEFINE_string("rgb_shape", None, "Per-example rgb shape T,H,W,C (overrides the config).")
    flags.DEFINE_string(
        "spectrogram_shape",
        None,
        "Per-example spectrogram shape time,mel,C (overrides the config).",
    )
    flags.DEFINE_multi_string("shape", [], "modality=d1,d2,... for any other modality.")
    flags.DEFINE_integer(
        "num_classes", None, "Head size; default config.dataset.num_classes or the dataset's."
    )
    flags.DEFINE_enum(
        "xla",
        "compiled",
        ["compiled", "lowered", "none"],
        "XLA cross-check: compile (adds memory analysis), lower only, or skip.",
    )
    flags.DEFINE_integer("batch_size", 1, "Batch for the XLA lowering (GFLOPs are per example).")


if __name__ == "__main__":
    from absl import app  # pylint: disable=g-import-not-at-top

    define_flags()
    app.run(main)

"""ViT weights in PyTorch layouts, from `.safetensors` files: timm (`blocks.<i>.attn.qkv`) and
Hugging Face transformers (`encoder.layer.<i>.attention.attention.query`), converted to the
`vision_transformer` `.npz` layout that `vit_init` reads. Neither torch nor safetensors is
needed.

safetensors: an 8-byte little-endian header length n, n bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, offsets
into the byte buffer that follows), then the buffer.

Conversions (torch `Linear` computes `x @ W.T + b`; `Conv2d` weights are `[out, in, h, w]`):
- patch embedding `[D, C, ph, pw]` → `embedding/kernel` `[ph, pw, C, D]`;
- query, key, value `[D, D]` (timm: one fused `qkv` `[3D, D]`, in that order) →
  `[D, heads, D/heads]` kernels, biases `[heads, D/heads]`; the output projection `[D, D]` →
  `[heads, D/heads, D]`;
- MLP and head `[out, in]` → `[in, out]`; LayerNorm `weight` → `scale`.
The head count is not in the weights: it comes from the model being initialised, or from a
Hugging Face `config.json` beside the file (`num_attention_heads`), which must agree.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

FORMAT = "torch_safetensors"
_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_MAX_HEADER_BYTES = 100 * 2**20
_BLOCK = "Transformer/encoderblock_{}/"


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a `.safetensors` file, as numpy arrays in the stored dtype."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(data)} bytes)")
    (header_bytes,) = struct.unpack("<Q", data[:8])
    if header_bytes > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError(f"{path}: not a safetensors file (header length {header_bytes})")
    try:
        header = json.loads(data[8 : 8 + header_bytes])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a safetensors file (header: {err})") from err
    buffer = memoryview(data)[8 + header_bytes :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}")
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        if not 0 <= begin <= end <= len(buffer) or end - begin != dtype.itemsize * int(
            np.prod(shape, dtype=np.int64)
        ):
            raise ValueError(
                f"{path}: tensor {name!r} {info['dtype']}{list(shape)} does not fit its byte "
                f"range [{begin}, {end}) of a {len(buffer)}-byte buffer (a truncated file?)"
            )
        tensors[name] = np.frombuffer(buffer[begin:end], dtype).reshape(shape)
    return tensors


_LAYOUTS = (  # (kind, the name that tells it; group 1 is the prefix of every name)
    ("timm", re.compile(r"^(module\.|model\.)?blocks\.\d+\.attn\.qkv\.weight$")),
    ("hf", re.compile(r"^(.*?)encoder\.layer\.\d+\.attention\.attention\.query\.weight$")),
)


def layout(names: Mapping[str, object] | list[str]) -> tuple[str, str] | None:
    """('timm' or 'hf', the prefix of the names, e.g. 'vit.') from the tensor names, or None."""
    for kind, pattern in _LAYOUTS:
        for name in names:
            if match := pattern.match(name):
                return kind, match.group(1) or ""
    return None


def hf_num_heads(path: str) -> int | None:
    """`num_attention_heads` of a Hugging Face `config.json` beside the weights, if any."""
    config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config):
        return None
    with open(config, encoding="utf-8") as f:
        value = json.load(f).get("num_attention_heads")
    return int(value) if value else None


class _Converter:
    """Collects the `.npz`-layout arrays and, per array, the source tensor it came from."""

    def __init__(self, tensors: Mapping[str, np.ndarray], path: str, num_heads: int):
        self.tensors, self.path, self.heads = tensors, path, num_heads
        self.flat: dict[str, np.ndarray] = {}
        self.origin: dict[str, str] = {}
        self.used: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        self.used.add(name)
        return np.asarray(self.tensors[name], np.float32)

    def put(self, key: str, value: np.ndarray, source: str) -> None:
        self.flat[key], self.origin[key] = value, source

    def copy(self, key: str, name: str) -> None:
        self.put(key, self.get(name), name)

    def dense(self, key: str, name: str) -> None:  # torch Linear [out, in] -> [in, out]
        self.put(f"{key}/kernel", self.get(f"{name}.weight").T, f"{name}.weight")
        self.copy(f"{key}/bias", f"{name}.bias")

    def norm(self, key: str, name: str) -> None:
        self.copy(f"{key}/scale", f"{name}.weight")
        self.copy(f"{key}/bias", f"{name}.bias")

    def head_split(self, key: str, weight: np.ndarray, bias: np.ndarray, source: str) -> None:
        """One of query/key/value: [D, D] -> kernel [D, heads, D/heads], bias [heads, D/heads]."""
        width = weight.shape[1]
        if width % self.heads:
            raise ValueError(
                f"{self.path}: {source}: width {width} is not divisible by {self.heads} heads"
            )
        self.put(f"{key}/kernel", weight.T.reshape(width, self.heads, -1), source)
        self.put(f"{key}/bias", bias.reshape(self.heads, -1), source)

    def out_projection(self, key: str, name: str) -> None:
        weight = self.get(f"{name}.weight")  # [D, heads * D/heads]
        self.put(
            f"{key}/kernel", weight.T.reshape(self.heads, -1, weight.shape[0]), f"{name}.weight"
        )
        self.copy(f"{key}/bias", f"{name}.bias")

    def patch_embedding(self, name: str) -> None:
        self.put(
            "embedding/kernel", self.get(f"{name}.weight").transpose(2, 3, 1, 0), f"{name}.weight"
        )
        self.copy("embedding/bias", f"{name}.bias")

    def optional(self, name: str) -> bool:
        return name in self.tensors

    def layers(self, pattern: str) -> list[int]:
        """The block numbers in the tensor names (`pattern`'s group 1, matched at the start)."""
        return sorted({int(m.group(1)) for k in self.tensors if (m := re.match(pattern, k))})


def _timm(c: _Converter, prefix: str) -> None:
    c.patch_embedding(f"{prefix}patch_embed.proj")
    if c.optional(f"{prefix}cls_token"):
        c.copy("cls", f"{prefix}cls_token")
    if c.optional(f"{prefix}pos_embed"):
        c.copy("Transformer/posembed_input/pos_embedding", f"{prefix}pos_embed")
    layers = c.layers(rf"{re.escape(prefix)}blocks\.(\d+)\.")
    for i in layers:
        src, dst = f"{prefix}blocks.{i}.", _BLOCK.format(i)
        c.norm(dst + "LayerNorm_0", src + "norm1")
        qkv_w, qkv_b = c.get(src + "attn.qkv.weight"), c.get(src + "attn.qkv.bias")
        for part, (weight, bias) in zip(
            ("query", "key", "value"), zip(np.split(qkv_w, 3), np.split(qkv_b, 3))
        ):
            c.head_split(
                f"{dst}MultiHeadDotProductAttention_1/{part}", weight, bias, src + "attn.qkv"
            )
        c.out_projection(dst + "MultiHeadDotProductAttention_1/out", src + "attn.proj")
        c.norm(dst + "LayerNorm_2", src + "norm2")
        c.dense(dst + "MlpBlock_3/Dense_0", src + "mlp.fc1")
        c.dense(dst + "MlpBlock_3/Dense_1", src + "mlp.fc2")
    if not c.optional(f"{prefix}norm.weight"):
        raise ValueError(
            f"{c.path}: no final 'norm' (a timm model pooled through 'fc_norm' is not "
            "supported: MBT reads its CLS token after the encoder norm)"
        )
    c.norm("Transformer/encoder_norm", f"{prefix}norm")
    if c.optional(f"{prefix}pre_logits.fc.weight"):
        c.dense("pre_logits", f"{prefix}pre_logits.fc")
    if c.optional(f"{prefix}head.weight"):
        c.dense("head", f"{prefix}head")


def _hf(c: _Converter, prefix: str) -> None:
    c.patch_embedding(f"{prefix}embeddings.patch_embeddings.projection")
    c.copy("cls", f"{prefix}embeddings.cls_token")
    c.copy("Transformer/posembed_input/pos_embedding", f"{prefix}embeddings.position_embeddings")
    layers = c.layers(rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.")
    for i in layers:
        src, dst = f"{prefix}encoder.layer.{i}.", _BLOCK.format(i)
        c.norm(dst + "LayerNorm_0", src + "layernorm_before")
        for part in ("query", "key", "value"):
            name = f"{src}attention.attention.{part}"
            c.head_split(
                f"{dst}MultiHeadDotProductAttention_1/{part}",
                c.get(name + ".weight"),
                c.get(name + ".bias"),
                name,
            )
        c.out_projection(dst + "MultiHeadDotProductAttention_1/out", src + "attention.output.dense")
        c.norm(dst + "LayerNorm_2", src + "layernorm_after")
        c.dense(dst + "MlpBlock_3/Dense_0", src + "intermediate.dense")
        c.dense(dst + "MlpBlock_3/Dense_1", src + "output.dense")
    c.norm("Transformer/encoder_norm", f"{prefix}layernorm")
    if c.optional(f"{prefix}pooler.dense.weight"):  # Dense + tanh on the CLS: ViT's pre_logits
        c.dense("pre_logits", f"{prefix}pooler.dense")
    if c.optional("classifier.weight"):
        c.dense("head", "classifier")


def to_vit_npz(
    tensors: Mapping[str, np.ndarray], path: str, num_heads: int | None
) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """(arrays in the `vision_transformer` `.npz` layout, their source tensor names, the
    tensors not used) of a timm or Hugging Face ViT."""
    found = layout(tensors)
    if found is None:
        raise ValueError(
            f"{path}: not a timm or Hugging Face ViT (no 'blocks.<i>.attn.qkv.weight' or "
            f"'encoder.layer.<i>.attention.attention.query.weight'; first names "
            f"{sorted(tensors)[:6]})"
        )
    kind, prefix = found
    declared = hf_num_heads(path) if kind == "hf" else None
    if num_heads and declared and num_heads != declared:
        raise ValueError(
            f"{path}: config.json says num_attention_heads={declared}, the model being "
            f"initialised has {num_heads} heads (config.model.num_heads)"
        )
    heads = num_heads or declared
    if not heads:
        raise ValueError(
            f"{path}: the head count is not in the weights; it comes from the model being "
            "initialised (config.model.num_heads) or a Hugging Face config.json beside the file"
        )
    converter = _Converter(tensors, path, int(heads))
    try:
        (_timm if kind == "timm" else _hf)(converter, prefix)
    except KeyError as err:
        raise ValueError(f"{path}: a {kind} ViT without tensor {err.args[0]!r}") from err
    unused = sorted(set(tensors) - converter.used)
    return converter.flat, converter.origin, unused

"""ViT weights in timm and Hugging Face layouts, written with the `safetensors` library itself,
read into the same weights as the `vision_transformer` `.npz` of the same ViT; the torch
conventions (Linear `x @ W.T + b`, Conv2d `[out, in, h, w]`, heads concatenated) checked
against the converted kernels; errors that name the file and the tensor."""

import json

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from test_vit_init import HEADS
from test_vit_init import fresh_params
from test_vit_init import full_config
from test_vit_init import input_shapes_of
from test_vit_init import make_vit
from test_vit_init import tiny_model_config
from test_vit_init import write_vit_npz

from mbt.pretrained import formats
from mbt.pretrained import init_from
from mbt.pretrained import torch_vit
from mbt.pretrained import vit_init

LAYERS = 2


def _linear(kernel_in_out):
    """A torch Linear weight [out, in] from a kernel [in, ...] (any trailing output axes)."""
    return kernel_in_out.reshape(kernel_in_out.shape[0], -1).T


def _attention_weights(w, block):
    """(weight [D, D], bias [D]) of query, key and value in torch layout (heads concatenated)."""
    out = {}
    for part in ("query", "key", "value"):
        kernel = w[f"{block}/MultiHeadDotProductAttention_0/{part}/kernel"]  # [D, H, D/H]
        out[part] = (
            _linear(kernel),
            w[f"{block}/MultiHeadDotProductAttention_0/{part}/bias"].reshape(-1),
        )
    return out


def timm_tensors(w, prefix=""):
    t = {
        "patch_embed.proj.weight": w["embedding/kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": w["embedding/bias"],
        "cls_token": w["cls"],
        "pos_embed": w["pos_embedding"],
        "norm.weight": w["Transformer/encoder_norm/scale"],
        "norm.bias": w["Transformer/encoder_norm/bias"],
        "head.weight": w["head/kernel"].T,
        "head.bias": w["head/bias"],
        "pre_logits.fc.weight": w["pre_logits/kernel"].T,
        "pre_logits.fc.bias": w["pre_logits/bias"],
    }
    for i in range(LAYERS):
        b, s = f"Transformer/encoderblock_{i}", f"blocks.{i}."
        qkv = _attention_weights(w, b)
        t[s + "attn.qkv.weight"] = np.concatenate([qkv[p][0] for p in ("query", "key", "value")])
        t[s + "attn.qkv.bias"] = np.concatenate([qkv[p][1] for p in ("query", "key", "value")])
        t[s + "attn.proj.weight"] = _linear(
            w[f"{b}/MultiHeadDotProductAttention_0/out/kernel"].reshape(-1, w["cls"].shape[-1])
        )
        t[s + "attn.proj.bias"] = w[f"{b}/MultiHeadDotProductAttention_0/out/bias"]
        for ours, theirs in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
            t[f"{s}{theirs}.weight"] = w[f"{b}/{ours}/scale"]
            t[f"{s}{theirs}.bias"] = w[f"{b}/{ours}/bias"]
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            t[f"{s}mlp.{fc}.weight"] = w[f"{b}/MlpBlock_0/{dense}/kernel"].T
            t[f"{s}mlp.{fc}.bias"] = w[f"{b}/MlpBlock_0/{dense}/bias"]
    return {prefix + k: np.ascontiguousarray(v) for k, v in t.items()}


def hf_tensors(w):
    """ViTForImageClassification's names (`vit.` prefix, `classifier`, `pooler`)."""
    t = {
        "embeddings.patch_embeddings.projection.weight": w["embedding/kernel"].transpose(
            3, 2, 0, 1
        ),
        "embeddings.patch_embeddings.projection.bias": w["embedding/bias"],
        "embeddings.cls_token": w["cls"],
        "embeddings.position_embeddings": w["pos_embedding"],
        "layernorm.weight": w["Transformer/encoder_norm/scale"],
        "layernorm.bias": w["Transformer/encoder_norm/bias"],
        "pooler.dense.weight": w["pre_logits/kernel"].T,
        "pooler.dense.bias": w["pre_logits/bias"],
    }
    for i in range(LAYERS):
        b, s = f"Transformer/encoderblock_{i}", f"encoder.layer.{i}."
        for part, (weight, bias) in _attention_weights(w, b).items():
            t[f"{s}attention.attention.{part}.weight"] = weight
            t[f"{s}attention.attention.{part}.bias"] = bias
        t[s + "attention.output.dense.weight"] = _linear(
            w[f"{b}/MultiHeadDotProductAttention_0/out/kernel"].reshape(-1, w["cls"].shape[-1])
        )
        t[s + "attention.output.dense.bias"] = w[f"{b}/MultiHeadDotProductAttention_0/out/bias"]
        for ours, theirs in (
            ("LayerNorm_0", "layernorm_before"),
            ("LayerNorm_1", "layernorm_after"),
        ):
            t[f"{s}{theirs}.weight"] = w[f"{b}/{ours}/scale"]
            t[f"{s}{theirs}.bias"] = w[f"{b}/{ours}/bias"]
        t[s + "intermediate.dense.weight"] = w[f"{b}/MlpBlock_0/Dense_0/kernel"].T
        t[s + "intermediate.dense.bias"] = w[f"{b}/MlpBlock_0/Dense_0/bias"]
        t[s + "output.dense.weight"] = w[f"{b}/MlpBlock_0/Dense_1/kernel"].T
        t[s + "output.dense.bias"] = w[f"{b}/MlpBlock_0/Dense_1/bias"]
    t = {"vit." + k: v for k, v in t.items()}
    t["classifier.weight"], t["classifier.bias"] = w["head/kernel"].T, w["head/bias"]
    return {k: np.ascontiguousarray(v) for k, v in t.items()}


def scenic_vit():
    """make_vit's weights with Scenic's block names (what the writers above read)."""
    return make_vit(layers=LAYERS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    w = scenic_vit()
    npz = write_vit_npz(tmp_path_factory.mktemp("npz") / "vit.npz", w)
    return w, vit_init.load_vit(npz)


def _same_weights(vit, reference_vit):
    assert sorted(vit.arrays) == sorted(reference_vit.arrays)
    for key, value in reference_vit.arrays.items():
        np.testing.assert_allclose(vit.arrays[key], value, rtol=0, atol=0, err_msg=key)
    np.testing.assert_array_equal(vit.posemb_grid, reference_vit.posemb_grid)
    np.testing.assert_array_equal(vit.posemb_cls, reference_vit.posemb_cls)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_timm_safetensors_read_as_the_npz_of_the_same_vit(tmp_path, reference, prefix):
    w, expected = reference
    path = str(tmp_path / "model.safetensors")
    safetensors.numpy.save_file(timm_tensors(w, prefix), path, metadata={"format": "pt"})
    assert formats.detect_format(path) == torch_vit.FORMAT
    vit = vit_init.load_vit(path, num_heads=HEADS)
    _same_weights(vit, expected)
    assert (
        vit.sources["block_1/MultiHeadDotProductAttention_0/key/kernel"]
        == f"{prefix}blocks.1.attn.qkv"
    )
    assert vit.sources["embedding/kernel"] == f"{prefix}patch_embed.proj.weight"
    assert vit.unrecognised == []


def test_hugging_face_folder_with_config_json_reads_as_the_npz_of_the_same_vit(tmp_path, reference):
    w, expected = reference
    folder = tmp_path / "vit-tiny"
    folder.mkdir()
    safetensors.numpy.save_file(hf_tensors(w), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({"num_attention_heads": HEADS, "hidden_size": 16})
    )
    assert formats.detect_format(str(folder)) == torch_vit.FORMAT
    vit = vit_init.load_vit(str(folder))  # heads from config.json
    _same_weights(vit, expected)
    assert vit.sources["pre_logits/kernel"] == "vit.pooler.dense.weight"
    with pytest.raises(ValueError, match="num_attention_heads=2.*4 heads"):
        vit_init.load_vit(str(folder), num_heads=4)


def test_the_torch_conventions_hold_for_the_converted_kernels():
    """What torch computes with the stored tensors equals what the converted kernels compute
    in flax's layout, for a random input: attention projections, MLP, patch embedding."""
    w = scenic_vit()
    tensors = timm_tensors(w)
    flat, _, _ = torch_vit.to_vit_npz(tensors, "model.safetensors", HEADS)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    block = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1"
    qkv = x @ tensors["blocks.0.attn.qkv.weight"].T + tensors["blocks.0.attn.qkv.bias"]  # torch
    for index, part in enumerate(("query", "key", "value")):
        torch_heads = qkv[:, index * 16 : (index + 1) * 16].reshape(3, HEADS, -1)
        ours = (
            np.einsum("nd,dhk->nhk", x, flat[f"{block}/{part}/kernel"])
            + flat[f"{block}/{part}/bias"]
        )
        np.testing.assert_allclose(ours, torch_heads, rtol=1e-5, atol=1e-5)
    heads = rng.normal(size=(3, HEADS, 16 // HEADS)).astype(np.float32)
    torch_out = (
        heads.reshape(3, -1) @ tensors["blocks.0.attn.proj.weight"].T
        + tensors["blocks.0.attn.proj.bias"]
    )
    ours = np.einsum("nhk,hkd->nd", heads, flat[f"{block}/out/kernel"]) + flat[f"{block}/out/bias"]
    np.testing.assert_allclose(ours, torch_out, rtol=1e-5, atol=1e-5)
    torch_mlp = x @ tensors["blocks.0.mlp.fc1.weight"].T
    np.testing.assert_allclose(
        x @ flat["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"],
        torch_mlp,
        rtol=1e-5,
        atol=1e-5,
    )
    patch_chw = rng.normal(size=(3, 8, 8)).astype(np.float32)  # one patch, torch's [C, H, W]
    torch_token = np.einsum("dcij,cij->d", tensors["patch_embed.proj.weight"], patch_chw)
    ours = np.einsum("ijcd,ijc->d", flat["embedding/kernel"], patch_chw.transpose(1, 2, 0))
    np.testing.assert_allclose(ours, torch_token, rtol=1e-5, atol=1e-5)


def test_init_from_a_bfloat16_safetensors_vit_equals_init_from_its_npz(tmp_path, reference):
    """timm and HF publish some ViTs in bfloat16: read as such, they initialise the model as
    the float32 .npz of the same (rounded) weights does."""
    w, _ = reference
    path = str(tmp_path / "vit.safetensors")
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in timm_tensors(w).items()}
    safetensors.numpy.save_file(bf16, path)
    model_config = tiny_model_config()
    params = fresh_params(model_config, input_shapes_of(model_config))
    from_torch, report = init_from(
        full_config(model_config, path), params, input_shapes_of(model_config)
    )
    rounded = {k: np.asarray(v.astype(ml_dtypes.bfloat16), np.float32) for k, v in w.items()}
    npz = write_vit_npz(tmp_path / "rounded.npz", rounded)
    from_npz, npz_report = init_from(
        full_config(model_config, npz), params, input_shapes_of(model_config)
    )
    flat_torch, flat_npz = formats.flatten(from_torch), formats.flatten(from_npz)
    for key, value in flat_npz.items():
        np.testing.assert_array_equal(flat_torch[key], value, err_msg=key)
    assert report.checkpoint_format == torch_vit.FORMAT
    assert [(e.path, e.category) for e in report.entries] == [
        (e.path, e.category) for e in npz_report.entries
    ]


def test_bad_files_are_errors_naming_the_file_and_what_is_wrong(tmp_path, reference):
    w, _ = reference
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(timm_tensors(w), str(path))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"cut.safetensors: tensor .* does not fit its byte range"):
        vit_init.load_vit(str(tmp_path / "cut.safetensors"), num_heads=HEADS)
    with pytest.raises(
        ValueError, match="head count is not in the weights.*config.model.num_heads"
    ):
        vit_init.load_vit(str(path))
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors: not a safetensors file"):
        vit_init.load_vit(str(tmp_path / "garbage.safetensors"), num_heads=HEADS)
    other = tmp_path / "resnet.safetensors"
    safetensors.numpy.save_file({"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)}, str(other))
    with pytest.raises(ValueError, match="resnet.safetensors: not a timm or Hugging Face ViT"):
        vit_init.load_vit(str(other), num_heads=HEADS)
    tensors = timm_tensors(w)
    del tensors["blocks.1.mlp.fc2.weight"]
    safetensors.numpy.save_file(tensors, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="a timm ViT without tensor 'blocks.1.mlp.fc2.weight'"):
        vit_init.load_vit(str(tmp_path / "partial.safetensors"), num_heads=HEADS)

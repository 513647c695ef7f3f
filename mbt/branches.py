"""A multimodal model run on a subset of its modalities, sharing the full model's parameters.

Used by `python -m mbt.predict` for a file without an audio or a video stream and by the
robustness evaluation's dropped-token removal (`mbt.robustness`). TensorFlow-free.

The branch is `build_model` of the same config with `modalities` replaced. Its parameter names
are the full model's, except:
- the CLS token of a lone non-rgb modality is `cls` in the branch (Scenic's single-modality
  rule, `mbt.models.mbt.cls_name`) and `cls<modality>` in the full model;
- MBT with concat fusion: a lone modality's blocks from Lf on are `encoderblock_<i>_<m>` in the
  branch and the shared `encoderblock_<i>` in the full model (it has no per-modality block
  there).
SFT needs only the CLS rule: the kept modality's unimodal and sparse-pool blocks, then the joint
blocks and the head, are the trained ones; the fused CLS is that modality's CLS alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import ml_collections

from mbt import export
from mbt import models
from mbt.models import mbt as mbt_lib
from mbt.pretrained import formats

# `config.model.name`s whose model can run on a subset of its modalities.
BRANCH_MODELS = ("mbt", "sft")


def branch_model(
    model_config: ml_collections.ConfigDict,
    num_classes: int,
    input_shapes: Mapping[str, Sequence[int]],
    params: Mapping[str, Any],
    modalities: Sequence[str],
):
    """(model, params) of the model of `model_config` on `modalities` only.

    `input_shapes`: per-example input shape of each modality (at least those kept), for the
    branch's parameter shapes. `params`: the full model's (nested); the branch's are the same
    arrays, not copies. Raises ValueError for a model without branches or a parameter the full
    model lacks.
    """
    name = model_config.get("name", "mbt")
    if name not in BRANCH_MODELS:
        raise ValueError(
            f"config.model.name={name!r} cannot run a subset of its modalities "
            f"(drop a modality's tokens); models that can: {BRANCH_MODELS}"
        )
    modalities = tuple(modalities)
    full_modalities = tuple(model_config.modalities)
    sub_config = ml_collections.ConfigDict(model_config.to_dict())
    sub_config.modalities = modalities
    model = models.build_model(sub_config, int(num_classes))
    expected = export.expected_param_shapes(model, {m: tuple(input_shapes[m]) for m in modalities})
    rename = {
        mbt_lib.cls_name(m, modalities): mbt_lib.cls_name(m, full_modalities) for m in modalities
    }
    full = formats.flatten(params)
    branch = {}
    for path in expected:
        candidates = [rename.get(path, path)]
        block = path.split("/")[1] if path.startswith("Transformer/encoderblock_") else None
        if block is not None and len(modalities) == 1:
            shared = "encoderblock_" + block.split("_")[1]
            candidates.append(path.replace(f"/{block}/", f"/{shared}/", 1))
        source = next((c for c in candidates if c in full), None)
        if source is None:
            raise ValueError(
                f"branch {modalities}: parameter {path} has no counterpart "
                f"among {candidates} in the full model"
            )
        branch[path] = full[source]
    sub_params = formats.unflatten(branch)
    export.check_param_shapes(sub_params, expected, f"branch {modalities}")
    return model, sub_params

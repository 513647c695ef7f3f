"""Models of the package, built from `config.model` by name.

Each model family (MBT, SFT, C-LSTM) is one `mbt.models.family.ModelFamily` object, `FAMILY`,
at the end of its module `mbt/models/<name>.py`; `get_family(config.model.name)` finds it.
`build_model(config.model, num_classes)` returns a `flax.linen.Module` (call contract:
`docs/design.md`); `validate_model_config` raises a ValueError naming the offending key and the
allowed values. Keys missing from `config.model` take the family's default
(`default_config(name)`).
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from mbt.models.common import ATTENTIONS  # noqa: F401 (public helpers)
from mbt.models.common import resolve_sizes  # noqa: F401
from mbt.models.common import tokenizer_spec  # noqa: F401
from mbt.models.common import transformer_options  # noqa: F401
from mbt.models.family import ModelFamily  # noqa: F401
from mbt.models.registry import get_family
from mbt.models.registry import known_names  # noqa: F401


def validate_model_config(model_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key and the allowed values for a bad `config.model`."""
    get_family(model_config.get("name")).validate(model_config)


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the model named by `config.model.name` with `num_classes` outputs."""
    return get_family(model_config.get("name")).build(model_config, num_classes)


def default_config(name: str) -> ml_collections.ConfigDict:
    """Every `config.model` key of family `name` with its defaults."""
    return get_family(name).default_config()


def default_mbt_config() -> ml_collections.ConfigDict:
    """Every `config.model` key of MBT with MBT-B/16's defaults from the paper's code."""
    return default_config("mbt")

"""`ModelFamily`: everything the rest of the package knows about one model family.

A family (MBT, SFT, C-LSTM, ...) is one object, `FAMILY`, at the end of its model module
`mbt/models/<name>.py`; `mbt.models.registry.get_family(name)` finds it by `config.model.name`.
It holds:

- `name` and `default_config()`: every `config.model` key with its default, stated once.
  `resolve(config.model)` merges the given keys over these defaults (top-level keys; a given
  key, e.g. `tokenizers`, replaces the default value whole), so a missing key takes the
  family default. Module fields that a config sets have no defaults of their own, or take
  them from this dict.
- `validate(config.model)`: ValueError naming `config.model.<key>`, the bad value and the
  allowed values. `build(config.model, num_classes)` → `flax.linen.Module`.
- `analytic_macs(config.model, input_shapes, num_classes)`: the analytic multiply-add count
  (`mbt.tools.flops.AnalyticCount`) or None.
- `supports_branches` and `branch_param_candidates(...)`: whether the model can run on a subset
  of its modalities (`mbt.branches`) and where a branch's parameter lives in the full model;
  `predict_missing_with_branch`: whether `mbt.predict` runs that branch for a file lacking a
  stream (MBT: each modality's CLS is trained through the head alone) or feeds it silence /
  blank frames, as the training data held.
- `supports_init_from`: whether `config.init_from` (Scenic checkpoint / ViT import) applies.
- `latent_mixup(config.model)`: whether the model mixes its hidden states in training and sows
  `intermediates/latent_mixup_lambda` and `latent_mixup_partner`
  (`mbt.train_step.latent_mixup_targets`); such a model's `__call__` takes
  `latent_mixup_active` (a traced bool), which the train step sets from step
  `latent_mixup_start_step(config.model, steps_per_epoch)` on.
- `partition_rules`: `(regex, spec)` pairs for `mbt.sharding`: the regex is searched in the
  '/'-joined parameter path (optimiser-state paths end in it); `spec` names a mesh axis or
  None per dimension, or is `REPLICATE` (any rank, never split over 'model'). Every parameter
  must be covered by some rule; `mbt.sharding` reports those that are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import ml_collections

MODEL_AXIS = "model"  # the mesh axis of tensor parallelism (`mbt.sharding.MODEL_AXIS`)
REPLICATE: tuple = ()  # a partition rule's spec: the array stays whole on every 'model' shard

Rule = tuple[str, tuple]


def as_dict(model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain (nested) dict of a ConfigDict or mapping."""
    if model_config is None:
        return {}
    if hasattr(model_config, "to_dict"):
        return model_config.to_dict()
    return dict(model_config)


class ModelFamily:
    """Base of the family objects; subclasses set the class attributes and override methods."""

    name: str = ""
    supports_branches: bool = False
    predict_missing_with_branch: bool = False
    supports_init_from: bool = False
    partition_rules: tuple[Rule, ...] = ()

    def default_config(self) -> ml_collections.ConfigDict:
        """Every `config.model` key of the family with its default."""
        raise NotImplementedError

    def resolve(self, model_config: Mapping[str, Any] | None) -> ml_collections.ConfigDict:
        """`config.model` merged over `default_config()` (top-level keys)."""
        merged = self.default_config().to_dict()
        merged.update(as_dict(model_config))
        return ml_collections.ConfigDict(merged)

    def validate(self, model_config: Mapping[str, Any]) -> None:
        """Raises ValueError naming the `config.model` key of a bad setting."""
        self.check(self.resolve(model_config))

    def build(self, model_config: Mapping[str, Any], num_classes: int) -> nn.Module:
        """The validated model with `num_classes` outputs."""
        resolved = self.resolve(model_config)
        self.check(resolved)
        return self.make(resolved, int(num_classes))

    def check(self, resolved: ml_collections.ConfigDict) -> None:
        """`validate` on a config already merged over the defaults."""
        raise NotImplementedError

    def make(self, resolved: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
        """`build` on a checked config already merged over the defaults."""
        raise NotImplementedError

    def analytic_macs(
        self,
        model_config: Mapping[str, Any],
        input_shapes: Mapping[str, tuple[int, ...]],
        num_classes: int,
    ):
        """The analytic count (`mbt.tools.flops.AnalyticCount`), or None when there is none."""
        del model_config, input_shapes, num_classes
        return None

    def adapt_recipe(
        self, config: ml_collections.ConfigDict, mbt_model: ml_collections.ConfigDict
    ) -> None:
        """Changes MBT's paper recipe (`mbt.recipe.mbt_b16_config`) needs for this family.

        Called by `mbt.recipe.set_model` after `config.model` became this family's defaults
        with MBT's modalities; `mbt_model` is the MBT-B/16 `config.model` it replaced.
        """
        del config, mbt_model

    def latent_mixup(self, model_config: Mapping[str, Any]) -> bool:
        """Whether training mixes hidden states and sows `latent_mixup_lambda`."""
        del model_config
        return False

    def latent_mixup_start_step(
        self, model_config: Mapping[str, Any], steps_per_epoch: float
    ) -> int:
        """The first optimiser step (0-based) whose forward pass mixes hidden states."""
        del model_config, steps_per_epoch
        return 0

    def branch_param_candidates(
        self, path: str, modalities: Sequence[str], full_modalities: Sequence[str]
    ) -> list[str]:
        """Paths in the full model that may hold the branch parameter `path`, first match wins."""
        del modalities, full_modalities
        return [path]

"""The flat train / evaluate / test loop: jit over a ('data', 'model') device mesh, no pmap.

`train_and_evaluate(config, workdir)` trains (resuming from `<workdir>/checkpoints` when a
checkpoint exists), evaluates every `config.eval_every_steps` and at the end, runs the
multi-view test and writes `<workdir>/results_<split>.json` (metrics and per-class results)
and `<workdir>/per_class.md` (classes ranked by score). `evaluate(config, workdir, mode)`
restores the latest checkpoint and runs one evaluation ('evaluate' = single-view
pass on the eval split, 'test' = multi-view pass on the test split).

The input pipeline (`mbt.data.pipeline`, TensorFlow) is imported only inside
`PipelineData`, so this module imports without TensorFlow; tests pass their own data
object with the same two members (`meta`, `batches`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any
from typing import Protocol

import jax
import ml_collections
import numpy as np

from mbt import checkpointing
from mbt import config_validation
from mbt import evaluate as evaluate_lib
from mbt import launch
from mbt import metrics as metrics_lib
from mbt import mixup as mixup_lib
from mbt import models
from mbt import optim
from mbt import sharding
from mbt import summaries
from mbt import train_step as step_lib
from mbt import workdir as workdir_lib
from mbt.data import random_input
from mbt.data import settings as data_settings

_LOG = logging.getLogger(__name__)

# Batch keys the jitted steps read; anything else a pipeline yields stays on the host.
_TRAIN_KEYS = ("label", "batch_mask")
_EVAL_KEYS = ("label", "batch_mask", "video_index")


class DataSource(Protocol):
    """What the trainer needs from the input side (see `PipelineData`)."""

    meta: Any  # mbt.data.pipeline.DatasetMeta (num_classes, class_splits, multi_label, ...)

    def batches(
        self, split: str, mode: str, batch_size: int, *, seed: int, start_batch: int = 0
    ) -> Iterator[dict[str, np.ndarray]]:
        """Per-process numpy batches; 'train' is infinite, 'eval' / 'test' one padded pass."""


class PipelineData:
    """`DataSource` over `mbt.data.pipeline` (imports TensorFlow on construction)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None):
        from mbt.data import pipeline  # pylint: disable=g-import-not-at-top

        self._pipeline = pipeline
        self._config = config
        if (
            workdir is not None
            and config.dataset.get("synthetic") is not None
            and int(config.dataset.synthetic.get("num_clips", 0) or 0) > 0
        ):
            pipeline.prepare_dataset(config, workdir)
        self.meta = pipeline.get_dataset_meta(config)
        # Eval / test batch sources, by request: one pass is deterministic, so a source is
        # read again instead of rebuilt (building traces its TF functions: ~0.5 s each time,
        # for every periodic evaluation and every robustness condition).
        self._one_pass_sources: dict[tuple, Any] = {}

    def split_names(self) -> dict[str, str]:
        """Configured split per role, with the dataset spec's defaults."""
        values = self._pipeline.dataset_values(self._config)
        return {role: self._pipeline.split_names(values)[role] for role in ROLES}

    def batches(self, split, mode, batch_size, *, seed, start_batch=0):
        request = dict(
            split=split,
            mode=mode,
            batch_size=batch_size,
            seed=seed,
            start_batch=start_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        if mode == "train":
            return self._pipeline.make_dataset(self._config, **request)
        key = tuple(request.values())
        if key not in self._one_pass_sources:
            self._one_pass_sources[key] = self._pipeline.batch_source(self._config, **request)
        return iter(self._one_pass_sources[key])


def data_source(config: ml_collections.ConfigDict, workdir: str | None = None) -> DataSource:
    """The config's input: its dataset through the pipeline, or random batches of its shapes
    (`config.dataset.random_input.enabled`: no files, no TensorFlow)."""
    if random_input.enabled(config):
        data = random_input.RandomData(config)
        _LOG.info(
            "Random input (config.dataset.random_input): %s train / %s test examples of %d "
            "classes, shapes %s; no dataset is read.",
            data.meta.num_examples["train"],
            data.meta.num_examples["test"],
            data.meta.num_classes,
            data.meta.input_shapes,
        )
        return data
    return PipelineData(config, workdir)


# --- setup ----------------------------------------------------------------------------------


class Setup:
    """Model, optimiser, mesh, shardings and jitted steps of one config (built once)."""

    def __init__(self, config: ml_collections.ConfigDict, meta: Any, splits: Mapping[str, str]):
        self.config = config
        self.meta = meta
        self.splits = dict(splits)  # role ('train' / 'eval' / 'test') -> split name
        self.mesh = sharding.make_mesh(config.get("mesh_shape"))
        config_validation.validate_config(
            config,
            meta,
            mesh_shape=tuple(self.mesh.shape.values()),
            process_count=jax.process_count(),
        )
        self.family = models.get_family(config.model.get("name"))
        self.model = self.family.build(config.model, meta.num_classes)
        self.modalities = tuple(config.model.modalities)
        if self.splits["train"] not in meta.num_examples:
            raise ValueError(
                f"train split {self.splits['train']!r} (config.dataset.train_split) "
                f"is not a split of the dataset; allowed: {sorted(meta.num_examples)}"
            )
        self.steps_per_epoch = max(
            train_examples(config, meta, self.splits["train"]) / config.batch_size, 1e-9
        )
        self.total_steps = num_train_steps(config, meta, self.splits["train"])
        self.schedule = optim.make_lr_schedule(config.lr, self.total_steps, self.steps_per_epoch)
        self.optimizer = optim.make_optimizer(config.optimizer, self.schedule)
        mixup = config.get("mixup") or {}
        class_splits = tuple(meta.class_splits) if meta.class_splits else None
        self.step_cfg = step_lib.StepConfig(
            modalities=self.modalities,
            multi_label=bool(meta.multi_label),
            class_splits=class_splits,
            label_smoothing=float(config.get("label_smoothing", 0.0) or 0.0),
            head_reduction=(config.get("loss") or {}).get("head_reduction", "sum"),
            mixup_alpha=float(mixup.get("alpha", 0.0) or 0.0),
            mixmod=bool(mixup.get("mixmod", False)),
            latent_mixup=self.family.latent_mixup(config.model),
            latent_mixup_start_step=self.family.latent_mixup_start_step(
                config.model, self.steps_per_epoch
            ),
            grad_accum_steps=int(config.get("grad_accum_steps", 1) or 1),
        )

        input_shapes = {m: tuple(meta.input_shapes[m]) for m in self.modalities}

        def init_fn():
            return step_lib.init_state(
                self.model, self.optimizer, input_shapes, int(config.seed), self.modalities
            )

        self.abstract_state = jax.eval_shape(init_fn)
        self.state_shardings = sharding.tree_shardings(
            self.abstract_state,
            self.mesh,
            fsdp=bool(config.get("fsdp", False)),
            fsdp_min_size=int(config.get("fsdp_min_size", 2**14)),
            rules=sharding.rules_for(config.model),
        )
        self.params_shardings = self.state_shardings.params
        replicated = sharding.replicated(self.mesh)
        batch = sharding.batch_sharding(self.mesh)
        self.init = jax.jit(init_fn, out_shardings=self.state_shardings)
        self.train_step = jax.jit(
            step_lib.make_train_step(self.model, self.optimizer, self.schedule, self.step_cfg),
            in_shardings=(self.state_shardings, batch, replicated),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            step_lib.make_eval_step(self.model, self.step_cfg),
            in_shardings=(self.params_shardings, batch),
            out_shardings=replicated,
        )

    def device_batch(self, batch: Mapping[str, np.ndarray], keys) -> dict[str, jax.Array]:
        """The keys the step reads, as global arrays sharded over 'data'."""
        wanted = {k: batch[k] for k in self.modalities + tuple(keys) if k in batch}
        return sharding.global_batch(wanted, self.mesh)

    def mixup_lambdas(self, step: int) -> dict[str, np.ndarray]:
        """The mixup lambdas of train step `step` (1-based), drawn on the host."""
        return mixup_lib.sample_lambdas(
            int(self.config.seed),
            step,
            self.step_cfg.mixup_alpha,
            self.modalities,
            self.step_cfg.mixmod,
        )

    def run_train_step(self, state, batch: Mapping[str, np.ndarray], step: int):
        """One update on a per-process numpy batch; returns (state, device metrics)."""
        return self.train_step(
            state, self.device_batch(batch, _TRAIN_KEYS), self.mixup_lambdas(step)
        )


_SETUP_CACHE: dict[str, Setup] = {}


def get_setup(config: ml_collections.ConfigDict, data: Any) -> Setup:
    """`Setup` for this config and data source, reused for an identical pair (saves compiles)."""
    splits = resolve_splits(config, data)
    # init_from only matters before the first step (`initial_state` reads it from `config`).
    compiled_keys = {k: v for k, v in config.to_dict().items() if k != "init_from"}
    key = json.dumps(
        [
            ml_collections.ConfigDict(compiled_keys).to_json_best_effort(sort_keys=True),
            repr(data.meta),
            splits,
            [d.id for d in jax.devices()],
        ]
    )
    if key not in _SETUP_CACHE:
        _SETUP_CACHE.clear()  # keep at most one: compiled executables hold memory
        _SETUP_CACHE[key] = Setup(config, data.meta, splits)
    return _SETUP_CACHE[key]


ROLES = ("train", "eval", "test")
# Split names tried, in order, for a data source that does not name its splits itself.
_SPLIT_CANDIDATES = {
    "train": ("train",),
    "eval": ("validation", "eval", "test"),
    "test": ("test", "eval", "validation"),
}


def resolve_splits(config: ml_collections.ConfigDict, data: Any) -> dict[str, str]:
    """`{'train' | 'eval' | 'test': split name}` from the data source or the config.

    A source with a `split_names()` method decides (the pipeline applies its per-dataset
    defaults); otherwise `config.dataset.<role>_split` when set, else the first split of
    the dataset in `_SPLIT_CANDIDATES`.
    """
    if hasattr(data, "split_names"):
        return dict(data.split_names())
    dataset = config.get("dataset") or {}
    available = tuple(data.meta.num_examples)
    names = {}
    for role in ROLES:
        explicit = dataset.get(f"{role}_split") if hasattr(dataset, "get") else None
        found = [explicit] if explicit else [c for c in _SPLIT_CANDIDATES[role] if c in available]
        if not found:
            raise ValueError(
                f"config.dataset.{role}_split is not set and the dataset has "
                f"none of {_SPLIT_CANDIDATES[role]}; available: {available}"
            )
        names[role] = found[0]
    return names


def train_examples(config, meta, train_split: str) -> int:
    """Examples training reads: `config.dataset.train_fraction` (default 1) of the train split.

    An epoch is one pass over these, so `num_epochs` counts passes over the fraction.
    """
    fraction = (config.get("dataset") or {}).get("train_fraction")
    fraction = 1.0 if fraction is None else float(fraction)
    return data_settings.train_fraction_size(meta.num_examples[train_split], fraction)


def num_train_steps(config, meta, train_split: str) -> int:
    """`config.num_train_steps` if set (> 0), else epochs x training examples / global batch."""
    steps = config.get("num_train_steps")
    if steps:
        return int(steps)
    examples = train_examples(config, meta, train_split)
    return max(1, int(math.ceil(float(config.num_epochs) * examples / config.batch_size)))


# --- evaluation -----------------------------------------------------------------------------


EVAL_PROGRESS_SECS = 30.0  # how often a long evaluation pass logs how far it is


def _evaluation_pass(
    setup: Setup, data: DataSource, params: Any, split: str, mode: str
) -> tuple[evaluate_lib.ViewAggregator, float, float]:
    """(aggregator holding one score row per video, summed view loss, number of real views)."""
    config, meta = setup.config, setup.meta
    aggregator = evaluate_lib.ViewAggregator(
        meta.num_classes,
        combine=config.get("test_combine", "mean_logits"),
        multi_label=bool(meta.multi_label),
        class_splits=tuple(meta.class_splits) if meta.class_splits else None,
    )
    per_process = config.get("eval_batch_size") or config.batch_size
    per_process //= jax.process_count()
    loss_sum, num_views = 0.0, 0.0
    videos = (getattr(meta, "num_examples", None) or {}).get(split)
    of_videos = f" of {videos}" if videos else ""
    start = last_report = time.monotonic()
    for batch in data.batches(split, mode, per_process, seed=int(config.seed)):
        out = jax.device_get(setup.eval_step(params, setup.device_batch(batch, _EVAL_KEYS)))
        aggregator.add(out["logits"], out["label"], out["video_index"], out["batch_mask"])
        loss_sum += float(out["loss_sum"])
        num_views += float(out["num_examples"])
        if time.monotonic() - last_report >= EVAL_PROGRESS_SECS:
            last_report = time.monotonic()
            _LOG.info(
                "%s %s: %d views, %d%s videos, %.0f s",
                mode,
                split,
                num_views,
                aggregator.num_videos,
                of_videos,
                last_report - start,
            )
    _LOG.info(
        "%s %s done: %d views of %d videos in %.1f s",
        mode,
        split,
        num_views,
        aggregator.num_videos,
        time.monotonic() - start,
    )
    if aggregator.num_videos == 0:
        raise ValueError(f"split {split!r} ({mode}) yielded no examples")
    return aggregator, loss_sum, num_views


def run_evaluation(
    setup: Setup, data: DataSource, params: Any, split: str, mode: str
) -> dict[str, float]:
    """One padded pass over `split` ('eval': 1 view per video, 'test': several views).

    Views are averaged per `video_index` by `evaluate.ViewAggregator` (padding rows dropped);
    returns `metrics.compute_metrics` plus `loss` (mean over real views, unsmoothed) and
    `num_views`.
    """
    aggregator, loss_sum, num_views = _evaluation_pass(setup, data, params, split, mode)
    results = aggregator.metrics()
    results["loss"] = loss_sum / max(num_views, 1.0)
    results["num_views"] = int(num_views)
    return results


def run_evaluation_per_class(
    setup: Setup, data: DataSource, params: Any, split: str, mode: str
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """`run_evaluation`'s metrics and the per-class results (`evaluate.per_class_entries`,
    named with the dataset's class names and, for class splits, head names)."""
    aggregator, loss_sum, num_views = _evaluation_pass(setup, data, params, split, mode)
    results, classes = aggregator.metrics_and_classes()
    results["loss"] = loss_sum / max(num_views, 1.0)
    results["num_views"] = int(num_views)
    meta = setup.meta
    class_splits = tuple(meta.class_splits) if meta.class_splits else None
    entries = evaluate_lib.per_class_entries(
        classes, meta.class_names, class_splits, _head_names(setup.config, class_splits)
    )
    return results, entries


def _head_names(config: ml_collections.ConfigDict, class_splits) -> tuple[str, ...]:
    """The dataset spec's head names ('verb', 'noun' for EPIC), () for one head."""
    if not class_splits:
        return ()
    from mbt import export  # pylint: disable=g-import-not-at-top

    dataset = config.get("dataset") or {}
    return export.default_head_names(
        dataset.get("name"), class_splits, tuple(dataset.get("imports") or ())
    )


def per_class_markdown_path(workdir: str, split: str, mode: str) -> str:
    """`<workdir>/per_class.md` for the multi-view test, `per_class_<split>.md` otherwise."""
    name = "per_class.md" if mode == "test" else f"per_class_{split}.md"
    return os.path.join(workdir, name)


def write_results(
    workdir: str,
    split: str,
    mode: str,
    results: Mapping[str, Any],
    step: int,
    config: ml_collections.ConfigDict,
    per_class: list[dict[str, Any]] | None = None,
    multi_label: bool = False,
) -> str:
    """`<workdir>/results_<split>.json` (process 0 only); returns its path.

    With `per_class` (from `run_evaluation_per_class`) the JSON gets the key `per_class`
    and the classes ranked by score go to `per_class_markdown_path` (AP for `multi_label`
    data, top-1 accuracy otherwise).

    Replacing results of the same checkpoint step (e.g. `--mode=test` after training) is
    logged with what they were; later steps replace earlier ones silently, as training goes.
    """
    path = os.path.join(workdir, f"results_{split}.json")
    if jax.process_index() == 0:
        previous = _previous_results(path)
        if previous is not None and previous.get("step") == int(step):
            metrics = previous.get("metrics", {})
            _LOG.info(
                "replacing %s (mode %s at step %s, %s)",
                path,
                previous.get("mode"),
                step,
                {k: metrics[k] for k in ("top1", "map") if k in metrics},
            )
        extra: dict[str, Any] = {
            "split": split,
            "mode": mode,
            "step": int(step),
            "dataset": (config.get("dataset") or {}).get("name"),
            "model": config.model.get("name"),
            "modalities": list(config.model.modalities),
        }
        if per_class is not None:
            extra["per_class"] = per_class
        evaluate_lib.write_results_json(path, results, extra=extra)
        if per_class is not None:
            table_path = per_class_markdown_path(workdir, split, mode)
            _write_per_class_markdown(table_path, split, mode, step, per_class, multi_label)
            _LOG.info("per-class results of %s (%s) -> %s", split, mode, table_path)
    return path


def _write_per_class_markdown(
    path: str,
    split: str,
    mode: str,
    step: int,
    per_class: list[dict[str, Any]],
    multi_label: bool,
) -> None:
    """The ranked per-class tables with a heading naming the split, views and step (atomic)."""
    score = "AP" if multi_label else "top-1 accuracy"
    views = "all test views" if mode == "test" else "one view"
    text = (
        f"# Per-class results: split `{split}`, {views}, step {int(step)}\n\n"
        f"Classes ranked by {score} (ties by name; classes without one last).\n\n"
        + evaluate_lib.format_per_class_table(per_class, multi_label)
    )
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _previous_results(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _summary(results: Mapping[str, Any], multi_label: bool, class_splits) -> str:
    name = metrics_lib.primary_metric_name(multi_label, class_splits)
    return f"{name} {results.get(name, float('nan')):.4f}, loss {results['loss']:.4f}"


# --- training -------------------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient norm."""


def _check_finite(metrics: Mapping[str, Any], step: int, ckpt: checkpointing.Checkpointer):
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    ckpt.wait()
    last = ckpt.latest_step()
    raise NonFiniteLossError(
        f"Non-finite training loss {loss} (grad norm {grad_norm}) at step {step}; training "
        f"stopped. The last good checkpoint is "
        f"{'step ' + str(last) if last is not None else 'none'} in {ckpt.directory}. Lower "
        f"config.lr.base_lr, set config.optimizer.grad_clip_norm, or check the inputs."
    )


class _RunningMeans:
    """Host-side means of the train metrics between two log lines, each step checked finite."""

    def __init__(self, ckpt: checkpointing.Checkpointer):
        self._ckpt = ckpt
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, step: int, device_metrics: Mapping[str, Any]):
        """Fetches one step's metrics; raises NonFiniteLossError on a NaN/inf loss or grad."""
        host = jax.device_get(device_metrics)
        _check_finite(host, step, self._ckpt)
        for name, value in host.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._count += 1

    def pop(self) -> dict[str, float]:
        """`{'train/<name>': mean}` since the last pop; resets."""
        means = {f"train/{k}": v / max(self._count, 1) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return means


def _format_secs(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def initial_state(setup: Setup, config: ml_collections.ConfigDict, workdir: str):
    """A fresh TrainState; parameters from `config.init_from.checkpoint_path` when set.

    The loading report (one row per parameter: loaded / resized / inflated / fresh) is
    written to `<workdir>/init_report.txt`. Optimiser state starts at zero either way.

    The compiled init program is dropped once it has run: a run needs it once, and it is
    large (the random initialisers' threefry rounds, unrolled per parameter: 24 586 HLO
    instructions for the experiments' 4-layer demo MBT, ~250-310 MB of host memory once
    loaded, more than the train step). A later call compiles or loads it again.
    """
    state = setup.init()
    setup.init.clear_cache()  # type: ignore[attr-defined]  # jax sets it on its jit class
    init_cfg = config.get("init_from")
    if not init_cfg or not init_cfg.get("checkpoint_path"):
        return state
    from mbt import pretrained  # pylint: disable=g-import-not-at-top

    host_params = jax.device_get(state.params)
    params, report = pretrained.init_from(config, host_params, input_shapes=setup.meta.input_shapes)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "init_report.txt"), "w", encoding="utf-8") as f:
            f.write(str(report) + "\n")
    params = jax.tree_util.tree_map(
        lambda value, like, sharding: jax.make_array_from_callback(
            like.shape, sharding, lambda index: np.asarray(value, like.dtype)[index]
        ),
        params,
        host_params,
        setup.state_shardings.params,
    )
    return state.replace(params=params)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    data: DataSource | None = None,
    *,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`, evaluates, tests; returns the final results.

    The run holds `<workdir>/train.lock` throughout (`checkpointing.workdir_lock`): a second
    training run on the same workdir raises `checkpointing.WorkdirLockedError` before doing
    anything. A resume skips damaged checkpoints (moving them to
    `<workdir>/checkpoints_damaged/`); a failed checkpoint write stops training with
    `checkpointing.CheckpointWriteError` at the next log step or save.

    Args:
      config: the full config (see docs/training.md for the keys); written to
        `<workdir>/config.json` (`mbt.workdir`) after checking that it does not change the
        model or optimizer structure of a config.json already there.
      workdir: checkpoints, TensorBoard events and results JSON go here.
      data: a `DataSource`; default `data_source(config, workdir)`.
      on_step: called with the step number after each train step (tests, hooks).
    Returns:
      `{'step': last step, 'stopped_early': bool, 'final_state': TrainState,
        'eval': metrics or None, 'test': metrics or None}`.
    """
    with checkpointing.workdir_lock(workdir):
        return _train_and_evaluate(config, workdir, data, on_step)


def _train_and_evaluate(config, workdir, data, on_step) -> dict[str, Any]:
    workdir_lib.check_compatible(config, workdir)  # before any data is read or restored
    workdir_lib.save_config(config, workdir)
    data = data if data is not None else data_source(config, workdir)
    setup = get_setup(config, data)
    meta, total_steps = setup.meta, setup.total_steps
    is_main = jax.process_index() == 0
    writer = summaries.make_writer(workdir, is_main)
    ckpt_cfg = config.get("checkpoint") or {}
    ckpt = checkpointing.Checkpointer(
        workdir,
        every_steps=int(ckpt_cfg.get("every_steps", 1000) or 0),
        keep=int(ckpt_cfg.get("keep", 3)),  # validated: an integer >= 1
        use_async=bool(ckpt_cfg.get("use_async", True)),
    )
    ckpt.install_sigterm_handler()
    try:
        restored = ckpt.restore(setup.abstract_state, setup.state_shardings, set_aside_damaged=True)
        if restored is None:
            state = initial_state(setup, config, workdir)
            start_step, consumed = 0, 0
            _LOG.info(
                "Training from scratch: %d steps (%.2f steps per epoch).",
                total_steps,
                setup.steps_per_epoch,
            )
        else:
            state, ckpt_meta = restored
            start_step = int(state.step)
            consumed = resume_batches(ckpt_meta, start_step, config)
            _LOG.info("Resumed at step %d of %d from %s.", start_step, total_steps, ckpt.directory)
        if is_main and start_step == 0:
            writer.write_hparams(
                {
                    k: v
                    for k, v in _flatten(config.to_dict()).items()
                    if isinstance(v, (int, float, str, bool))
                }
            )
            for line in sharding.describe_shardings(setup.state_shardings.params):
                _LOG.info("sharded parameter %s", line)

        per_process_batch = config.batch_size // jax.process_count()
        train_batches = data.batches(
            setup.splits["train"],
            "train",
            per_process_batch,
            seed=int(config.seed),
            start_batch=consumed,
        )
        report = summaries.ProgressReporter(total_steps, writer, every_secs=30.0)
        log_every = int(config.get("log_every_steps", 50) or 50)
        eval_every = int(config.get("eval_every_steps", 0) or 0)
        the_eval_split = setup.splits["eval"]

        means = _RunningMeans(ckpt)
        previous = None  # (step, device metrics) checked one step late to keep the device busy
        t_start, step_start = time.monotonic(), start_step
        step = start_step
        stopped_early = False
        eval_results = None
        for step in range(start_step + 1, total_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                batch = next(train_batches)
                state, metrics = setup.run_train_step(state, batch, step)
            consumed += 1
            if on_step is not None:
                on_step(step)
            if previous is not None:
                means.add(*previous)
            previous = (step, metrics)
            report(step)

            is_last = step == total_steps
            preempted = ckpt.should_stop(step)
            do_log = step % log_every == 0 or is_last
            do_eval = eval_every > 0 and step % eval_every == 0 and not is_last
            do_save = ckpt.should_save(step) or is_last or preempted
            if do_log or do_eval or do_save:  # never log or save unchecked metrics
                means.add(*previous)
                previous = None
            if do_log:
                ckpt.check_for_errors()  # a failed background write stops the run here
                train_means = means.pop()
                writer.write_scalars(step, train_means)
                rate = (step - step_start) / max(time.monotonic() - t_start, 1e-9)
                _LOG.info(
                    "step %d/%d | loss %.4f | lr %.3g | grad norm %.3g | %.2f steps/s | ETA %s",
                    step,
                    total_steps,
                    train_means["train/loss"],
                    train_means["train/learning_rate"],
                    train_means["train/grad_norm"],
                    rate,
                    _format_secs((total_steps - step) / max(rate, 1e-9)),
                )
            if do_save:
                ckpt.save(step, state, checkpoint_meta(consumed, config))
            if do_eval:
                eval_results = run_evaluation(setup, data, state.params, the_eval_split, "eval")
                writer.write_scalars(
                    step,
                    {
                        f"eval/{k}": v
                        for k, v in eval_results.items()
                        if isinstance(v, (int, float))
                    },
                )
                _LOG.info(
                    "eval %s at step %d: %s",
                    the_eval_split,
                    step,
                    _summary(eval_results, meta.multi_label, meta.class_splits),
                )
            if preempted:
                _LOG.warning("Stopped at step %d on SIGTERM after saving a checkpoint.", step)
                stopped_early = True
                break
            if step == start_step + 1:
                t_start, step_start = time.monotonic(), step  # exclude the compile from rates
        if previous is not None:
            means.add(*previous)
        ckpt.wait()
        if jax.process_count() > 1:  # equal on every process unless a replica drifted
            _LOG.info(
                "process %d parameters at step %d: %s",
                jax.process_index(),
                step,
                launch.replica_fingerprint(state.params),
            )

        test_results = None
        if not stopped_early:
            eval_results, test_results = _final_evaluations(setup, data, state, workdir, writer)
            if random_input.enabled(config):
                _LOG.info("No export: the model was trained on random input.")
            elif config.get("export", True):
                meta = setup.meta
                # The inference bundle `mbt.predict` reads: params, config and dataset metadata.
                from mbt import export  # pylint: disable=g-import-not-at-top

                export_dir = export.default_export_dir(workdir)
                export.save_export(export_dir, state.params, config, meta, step=step)
                _LOG.info("exported the model for mbt.predict to %s", export_dir)
        writer.flush()
        return {
            "step": step,
            "stopped_early": stopped_early,
            "final_state": state,
            "eval": eval_results,
            "test": test_results,
        }
    finally:
        ckpt.close()
        writer.close()


def checkpoint_meta(consumed: int, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a checkpoint stores besides the train state: the input stream's position.

    `train_input` does not depend on the process layout: the next global position of the
    train stream (examples, `consumed` global batches of `config.batch_size`), which the
    grain loader (mbt.data.grain_input) continues from on any number of processes.
    """
    return {
        "train_batches_consumed": consumed,
        "train_input": {
            "next_position": consumed * int(config.batch_size),
            "global_batch_size": int(config.batch_size),
            "seed": int(config.seed),
        },
    }


def resume_batches(ckpt_meta: Mapping[str, Any], step: int, config) -> int:
    """Global batches of `config.batch_size` the restored run had read (its data position)."""
    position = (ckpt_meta.get("train_input") or {}).get("next_position")
    if position is None:  # checkpoints written before train_input was stored
        return int(ckpt_meta.get("train_batches_consumed", step))
    batches, rest = divmod(int(position), int(config.batch_size))
    if rest:
        raise ValueError(
            f"the checkpoint's input stream is at example {position}, not a whole number of "
            f"batches of config.batch_size={config.batch_size}: resume with the batch size it "
            f"was written with ({ckpt_meta['train_input'].get('global_batch_size')})"
        )
    return batches


def _final_evaluations(setup, data, state, workdir, writer):
    """Single-view eval on the eval split and multi-view test on the test split."""
    config, meta = setup.config, setup.meta
    step = int(state.step)
    the_eval_split, the_test_split = setup.splits["eval"], setup.splits["test"]
    eval_results = None
    multi_label = bool(meta.multi_label)
    if config.get("final_eval", True) and the_eval_split != the_test_split:
        eval_results, eval_classes = run_evaluation_per_class(
            setup, data, state.params, the_eval_split, "eval"
        )
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_results.items()})
        write_results(
            workdir, the_eval_split, "eval", eval_results, step, config, eval_classes, multi_label
        )
        _LOG.info(
            "final eval %s: %s",
            the_eval_split,
            _summary(eval_results, meta.multi_label, meta.class_splits),
        )
    test_results, test_classes = run_evaluation_per_class(
        setup, data, state.params, the_test_split, "test"
    )
    writer.write_scalars(step, {f"test/{k}": v for k, v in test_results.items()})
    path = write_results(
        workdir, the_test_split, "test", test_results, step, config, test_classes, multi_label
    )
    _LOG.info(
        "test %s (%d views): %s -> %s",
        the_test_split,
        test_results["num_views"],
        _summary(test_results, meta.multi_label, meta.class_splits),
        path,
    )
    return eval_results, test_results


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    mode: str = "evaluate",
    data: DataSource | None = None,
) -> dict[str, Any]:
    """Restores the latest checkpoint of `workdir` and evaluates it.

    mode 'evaluate': single-view pass on the eval split; 'test': multi-view pass on the test
    split. Writes `<workdir>/results_<split>.json` and returns the metrics. Takes no workdir
    lock: evaluating the checkpoints of a run still training is allowed.
    """
    if mode not in ("evaluate", "test"):
        raise ValueError(f"mode={mode!r}; allowed: 'evaluate', 'test'")
    data = data if data is not None else data_source(config, workdir)
    setup = get_setup(config, data)
    params, step = restore_params(setup, workdir, config)
    if mode == "evaluate":
        split, data_mode = setup.splits["eval"], "eval"
    else:
        split, data_mode = setup.splits["test"], "test"
    results, per_class = run_evaluation_per_class(setup, data, params, split, data_mode)
    write_results(
        workdir, split, data_mode, results, step, config, per_class, bool(setup.meta.multi_label)
    )
    _LOG.info(
        "%s %s at step %d: %s",
        mode,
        split,
        step,
        _summary(results, setup.meta.multi_label, setup.meta.class_splits),
    )
    return results


def restore_params(
    setup: Setup, workdir: str, config: ml_collections.ConfigDict | None = None
) -> tuple[Any, int]:
    """(params, step) of the latest checkpoint in `<workdir>/checkpoints`, sharded as in training.

    Damaged checkpoints are skipped with a warning (the newest one that restores is used) and
    left where they are; `checkpointing.CheckpointRestoreError` when none restores.

    With no checkpoint in the workdir and `config.init_from` naming a checkpoint whose classifier
    head is restored (`restore_output_projection=True`, e.g. a Scenic MBT model-zoo checkpoint),
    that checkpoint's params are evaluated instead, at step 0.
    """
    ckpt = checkpointing.Checkpointer(workdir, every_steps=0)
    try:
        restored = ckpt.restore(setup.abstract_state, setup.state_shardings)
    finally:
        ckpt.close()
    if restored is not None:
        state, _ = restored
        return state.params, int(state.step)
    init_cfg = config.get("init_from") if config is not None else None
    if init_cfg and init_cfg.get("checkpoint_path") and init_cfg.get("restore_output_projection"):
        _LOG.info(
            "No checkpoint in %s: evaluating config.init_from.checkpoint_path=%s",
            ckpt.directory,
            init_cfg.checkpoint_path,
        )
        os.makedirs(workdir, exist_ok=True)
        return initial_state(setup, config, workdir).params, 0
    raise FileNotFoundError(
        f"No checkpoint in {ckpt.directory}; train first "
        f"(--mode=train --workdir={workdir}), or set "
        "config.init_from.checkpoint_path with "
        "config.init_from.restore_output_projection=True to evaluate a "
        "pretrained checkpoint."
    )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat

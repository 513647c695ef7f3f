"""Orbax checkpoints of the train state in `<workdir>/checkpoints`: periodic, async, resumable.

A checkpoint holds two items:
  'state': the `TrainState` (step, params, optimiser state, base RNG key), restored with the
           shardings of the current mesh (a run may resume on a different mesh shape);
  'meta':  JSON with the step and the input position (`train_batches_consumed`), which the
           trainer passes to the pipeline as `start_batch` so a resumed run reads the
           batches an uninterrupted run would have read.

`save` writes in the background (async); `wait` blocks until pending writes are on disk.
A SIGTERM (e.g. preemption) sets `preemption_requested`; the train loop then saves and stops.
"""

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

_LOG = logging.getLogger(__name__)


_ARRAY_WRITES_CONFIGURED = False


def _configure_array_writes():
    """Single process: write each array from one device instead of slicing it per replica.

    Orbax's replica-parallel writing splits replicated arrays across the devices holding
    them, which compiles one slicing program per array shape (100+ compiles for a small
    model on 8 devices) and only pays off when several hosts share the writing.
    """
    global _ARRAY_WRITES_CONFIGURED
    if jax.process_count() == 1 and not _ARRAY_WRITES_CONFIGURED:
        _ARRAY_WRITES_CONFIGURED = True
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
        )


class Checkpointer:
    """Saves every `every_steps` (and when forced), keeps the last `keep`, resumes the latest."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int = 3, use_async: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.every_steps = int(every_steps)
        _configure_array_writes()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=use_async,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )
        self._preempted = threading.Event()
        self._previous_handler = None

    # --- saving ---------------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Starts writing `state` + JSON `meta` as checkpoint `step` (returns at once if async)."""
        if step in self._manager.all_steps():
            return False
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(dict(meta, step=int(step))),
            ),
            force=True,
        )
        _LOG.info("Checkpoint %d %s in %s", step, "started" if saved else "skipped", self.directory)
        return saved

    def wait(self):
        """Blocks until every started save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()
        self.uninstall_sigterm_handler()

    # --- restoring ------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(
        self, abstract_state: Any, shardings: Any, step: int | None = None
    ) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of checkpoint `step` (default latest), or None when there is none.

        Args:
          abstract_state: tree of arrays / ShapeDtypeStructs with the state's structure.
          shardings: matching tree of `jax.sharding.Sharding` for the restored arrays.
        """
        step = self._manager.latest_step() if step is None else step
        if step is None:
            return None
        target = jax.tree_util.tree_map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state,
            shardings,
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        _LOG.info("Restored checkpoint %d from %s", step, self.directory)
        return restored["state"], dict(restored["meta"])

    # --- preemption -----------------------------------------------------------------------
    @property
    def preemption_requested(self) -> bool:
        """True once this process received SIGTERM (see `should_stop` for the loop's test)."""
        return self._preempted.is_set()

    def should_stop(self, step: int) -> bool:
        """Whether the train loop must save and stop after `step`.

        One process: after a SIGTERM. Several processes: when JAX's preemption service
        (started by `jax.distributed.initialize`) reports that every process reached the
        same sync step, so all of them save and stop together.
        """
        if jax.process_count() == 1:
            return self.preemption_requested
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        return bool(multihost_utils.reached_preemption_sync_point(step))

    def install_sigterm_handler(self):
        """On SIGTERM, ask the train loop to save and stop (main thread only; no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            del frame
            _LOG.warning("Signal %d received: saving a checkpoint and stopping.", signum)
            self._preempted.set()

        self._previous_handler = signal.signal(signal.SIGTERM, handler)

    def uninstall_sigterm_handler(self):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

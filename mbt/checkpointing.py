"""Orbax checkpoints of the train state in `<workdir>/checkpoints`: periodic, async, resumable.

A checkpoint holds two items:
  'state': the `TrainState` (step, params, optimiser state, base RNG key), restored with the
           shardings of the current mesh (a run may resume on a different mesh shape);
  'meta':  JSON with the step and the input position (`train_batches_consumed`), which the
           trainer passes to the pipeline as `start_batch` so a resumed run reads the
           batches an uninterrupted run would have read.

`save` writes in the background (async); `wait` blocks until pending writes are on disk.
A SIGTERM (e.g. preemption) sets `preemption_requested`; the train loop then saves and stops.

Faults are reported as `CheckpointError`s, whose messages say what happened and what to do:
  - restoring the latest checkpoint tries the checkpoints newest to oldest and resumes from
    the newest one that restores, warning about each damaged one; training moves the damaged
    ones to `<workdir>/checkpoints_damaged/<step>` (`CheckpointRestoreError` when none
    restores);
  - a background write that failed (e.g. a full disk) is raised by `check_for_errors` (the
    train loop calls it every log step), `save`, `wait` and `close`, as one
    `CheckpointWriteError` naming the step, the directory, the OS error and the last complete
    checkpoint;
  - `workdir_lock` gives one training run at a time a workdir (`WorkdirLockedError`).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

# Exit status of `python -m mbt.main` after a SIGTERM stop with a saved checkpoint
# (EX_TEMPFAIL: a temporary failure; the same command resumes).
EXIT_PREEMPTED = 75

_LOG = logging.getLogger(__name__)

DAMAGED_DIR = "checkpoints_damaged"  # `<workdir>/checkpoints_damaged/<step>`: set aside, kept
LOCK_FILE = "train.lock"  # `<workdir>/train.lock`: flock'ed by the training run


class CheckpointError(RuntimeError):
    """A checkpoint fault; the message says what happened, where, and what to do."""


class CheckpointRestoreError(CheckpointError):
    """No checkpoint of the workdir restores, or an explicitly requested one does not."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota, I/O error)."""


class WorkdirLockedError(CheckpointError):
    """Another training run holds the workdir."""


def one_line(error: BaseException, limit: int = 400) -> str:
    """`Type: message` on one line, at most about `limit` characters."""
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


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


# --- the library's reports of a failed read or write ------------------------------------------
#
# When one of the concurrent tensorstore reads or writes of a checkpoint fails, orbax logs the
# error with a traceback from each of its threads, closes the asyncio event loop the other
# reads / writes were awaited in, and every one of those still running then fails to deliver
# its result to the closed loop: an "Event loop is closed" traceback each (printed through
# `sys.unraisablehook`) and, when the futures are collected, "<class> exception was never
# retrieved" (asyncio's logger); orbax's read coroutines, closed unfinished when collected,
# turn their GeneratorExit into an error ("Exception ignored in: <coroutine ...>"), and its
# write coroutines never started warn "coroutine '...' was never awaited" (a RuntimeWarning,
# often at interpreter exit, after our own message). A
# checkpoint of a real model has hundreds of arrays, so one failure gave ~700 lines. The
# Checkpointer reports each failure itself in one message, so these are dropped unless the
# library logs are on (absl at INFO, `--library_logs`).

_QUIET_INSTALLED = False
_ORBAX_SOURCE = os.sep + "orbax" + os.sep  # in the path of every orbax source file


def _library_logs_on() -> bool:
    return logging.getLogger("absl").isEnabledFor(logging.INFO)


def _from_orbax(record: logging.LogRecord) -> bool:
    """Whether the record was logged by orbax or is about an exception raised inside it."""
    if _ORBAX_SOURCE in record.pathname or ".orbax-checkpoint-tmp" in record.getMessage():
        return True
    exc = record.exc_info[1] if record.exc_info else None
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        if _ORBAX_SOURCE in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _is_orbax_coroutine(obj: object) -> bool:
    code = getattr(obj, "cr_code", None)
    return code is not None and _ORBAX_SOURCE in code.co_filename


def _orbax_teardown(unraisable) -> bool:
    """An unraisable error of the cascade above: a delivery to a closed loop, or a closed
    orbax coroutine's error."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return unraisable.object is None
    return _is_orbax_coroutine(unraisable.object) and isinstance(
        exc.__cause__ or exc.__context__, GeneratorExit
    )


class _DropOrbaxFailureReports(logging.Filter):
    """Drops orbax's ERROR tracebacks and asyncio's unread-exception reports about them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or _library_logs_on():
            return True
        message = record.getMessage()
        # asyncio names the future's class: Future, Task, _GatheringFuture (orbax's gather).
        unread = "exception was never retrieved" in message
        if record.name == "asyncio" and not unread:
            return True
        if record.name != "asyncio" and not record.exc_info:
            return True
        return not _from_orbax(record)


def _install_quiet_failure_reports():
    global _QUIET_INSTALLED
    if _QUIET_INSTALLED:
        return
    _QUIET_INSTALLED = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_DropOrbaxFailureReports())
    previous = sys.unraisablehook

    def hook(unraisable):
        if _orbax_teardown(unraisable) and not _library_logs_on():
            return
        previous(unraisable)

    sys.unraisablehook = hook

    # The interpreter warns of an unawaited coroutine through this function of `warnings`
    # (CPython's _PyErr_WarnUnawaitedCoroutine looks it up on each call); only orbax's are
    # dropped. The warning filters cannot tell whose coroutine it was.
    warn_unawaited = getattr(warnings, "_warn_unawaited_coroutine", None)
    if warn_unawaited is not None:

        def warn_unless_orbax(coro):
            if _is_orbax_coroutine(coro) and not _library_logs_on():
                return
            warn_unawaited(coro)

        warnings._warn_unawaited_coroutine = warn_unless_orbax


# --- write errors ----------------------------------------------------------------------------


def _errno_text(code: int) -> str:
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def os_error_text(error: BaseException) -> str | None:
    """'No space left on device (ENOSPC)' for the first OS error in `error`'s chain, or None.

    tensorstore reports OS errors inside a ValueError's text (`[os_error_code='28']`).
    """
    todo: list[BaseException | None] = [error]
    seen = set()
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return _errno_text(current.errno)
        match = re.search(r"os_error_code='?(\d+)", str(current))
        if match:
            return _errno_text(int(match.group(1)))
        todo += [current.__cause__, current.__context__]
    return None


class Checkpointer:
    """Saves every `every_steps` (and when forced), keeps the last `keep`, resumes the latest."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int = 3, use_async: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.every_steps = int(every_steps)
        _configure_array_writes()
        _install_quiet_failure_reports()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=use_async,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )
        self._writing: int | None = None  # step of the save started last, until it is checked
        self._reported_write_error = False
        self._preempted = threading.Event()
        self._previous_handler = None

    # --- saving ---------------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Starts writing `state` + JSON `meta` as checkpoint `step` (returns at once if async).

        Raises CheckpointWriteError if the previous write failed, or this one fails to start.
        """
        self.wait()  # orbax waits for the previous write here anyway; this names its failure
        if step in self._manager.all_steps():
            return False
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(dict(meta, step=int(step))),
                ),
                force=True,
            )
        except Exception as error:
            if os_error_text(error) is None:
                raise
            raise self._write_error(step, error) from error
        self._writing = int(step) if saved else None
        _LOG.info("Checkpoint %d %s in %s", step, "started" if saved else "skipped", self.directory)
        return saved

    def check_for_errors(self):
        """Raises CheckpointWriteError if the last background write failed; does not wait
        for a write still running."""
        if self._writing is None or self._manager.is_saving_in_progress():
            return
        self.wait()

    def wait(self):
        """Blocks until every started save is complete on disk (CheckpointWriteError if not)."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            step, self._writing = self._writing, None
            raise self._write_error(step, error) from error
        self._writing = None

    def _write_error(self, step: int | None, error: BaseException) -> CheckpointWriteError:
        self._reported_write_error = True
        reason = os_error_text(error) or one_line(error)
        complete = [s for s in self._manager.all_steps() if s != step]
        last = (
            f"{max(complete)} ({os.path.join(self.directory, str(max(complete)))})"
            if complete
            else "none: there is no complete checkpoint yet"
        )
        what = (
            f"checkpoint {step} could not be written to {os.path.join(self.directory, str(step))}"
            if step is not None
            else f"a checkpoint could not be written to {self.directory}"
        )
        return CheckpointWriteError(
            f"{what}: {reason}. Disk full? Free "
            f"space and resume (run the same command again); the last complete checkpoint "
            f"is {last}."
        )

    def close(self):
        """Waits for pending writes (CheckpointWriteError if one failed) and closes."""
        try:
            self.wait()
        finally:
            self.uninstall_sigterm_handler()
            try:
                self._manager.close()
            except Exception as error:
                # orbax keeps a failed write's error in two places; the second copy surfaces
                # here, after the first was reported.
                if not self._reported_write_error:
                    raise self._write_error(None, error) from error

    # --- restoring ------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(
        self,
        abstract_state: Any,
        shardings: Any,
        step: int | None = None,
        *,
        set_aside_damaged: bool = False,
    ) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of checkpoint `step`, or of the newest checkpoint that restores;
        None when there is none.

        Without `step`, the checkpoints are tried newest to oldest; each one that fails to
        restore (a data file cut or missing, an item deleted, ...) is logged as a warning and
        skipped. With `set_aside_damaged` (training), the skipped ones are then moved to
        `<workdir>/checkpoints_damaged/<step>`, so that the run can save those steps again
        and the next restart does not trip on them; evaluation leaves them where they are.
        With several processes, a checkpoint counts as restored only when it restored on
        every process, and process 0 moves the damaged ones.

        Args:
          abstract_state: tree of arrays / ShapeDtypeStructs with the state's structure.
          shardings: matching tree of `jax.sharding.Sharding` for the restored arrays.
          step: restore this step, with no fallback (CheckpointRestoreError if it fails).
          set_aside_damaged: move the checkpoints newer than the restored one that failed.
        Raises:
          CheckpointRestoreError: `step` does not restore, or no checkpoint does (the message
            lists each step with its error).
        """
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        target = jax.tree_util.tree_map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state,
            shardings,
        )
        if step is not None:
            try:
                restored = self._restore_step(step, target)
            except Exception as error:
                raise CheckpointRestoreError(
                    f"checkpoint {step} in {self.directory} could not be restored: "
                    f"{one_line(error)}"
                ) from error
            _LOG.info("Restored checkpoint %d from %s", step, self.directory)
            return restored
        damaged: list[tuple[int, str]] = []
        for candidate in steps:
            found: tuple[Any, dict[str, Any]] | None = None
            reason = "it failed to restore on another process"
            try:
                found = self._restore_step(candidate, target)
            except Exception as error:  # any fault of the files: try the next older one
                reason = one_line(error)
            if _on_every_process(found is not None):
                if damaged and set_aside_damaged:
                    self._set_aside([s for s, _ in damaged])
                _LOG.info("Restored checkpoint %d from %s", candidate, self.directory)
                return found
            _LOG.warning(
                "Checkpoint %d (%s) cannot be restored, trying an older one: %s",
                candidate,
                os.path.join(self.directory, str(candidate)),
                reason,
            )
            damaged.append((candidate, reason))
        raise self._all_damaged_error(damaged)

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def _all_damaged_error(self, damaged: list[tuple[int, str]]) -> CheckpointRestoreError:
        lines = "\n".join(f"  step {step}: {reason}" for step, reason in damaged)
        # The same error for every step (paths aside) suggests a config that does not match.
        kinds = {reason.replace(os.path.join(self.directory, str(s)), "") for s, reason in damaged}
        same = len(kinds) == 1 and len(damaged) > 1
        return CheckpointRestoreError(
            f"no checkpoint in {self.directory} can be restored:\n{lines}\n"
            f"Nothing was moved or deleted. Restore the checkpoints from a backup, or move "
            f"{self.directory} aside (or use a new --workdir) to train from scratch."
            + (
                f" Every step failed the same way: check that the config matches the one "
                f"they were written with ({os.path.join(self.workdir, 'config.json')})."
                if same
                else ""
            )
        )

    def _set_aside(self, steps: list[int]):
        """Moves checkpoints `steps` to `<workdir>/checkpoints_damaged/` (process 0; all wait)."""
        if jax.process_index() == 0:
            root = os.path.join(self.workdir, DAMAGED_DIR)
            os.makedirs(root, exist_ok=True)
            for step in steps:
                target, n = os.path.join(root, str(step)), 1
                while os.path.exists(target):
                    target, n = os.path.join(root, f"{step}.{n}"), n + 1
                shutil.move(os.path.join(self.directory, str(step)), target)
                _LOG.warning(
                    "Moved damaged checkpoint %d to %s (kept for inspection; delete it when "
                    "not needed).",
                    step,
                    target,
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

            multihost_utils.sync_global_devices("mbt_checkpoints_set_aside")
        self._manager.reload()

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
        """On SIGTERM, ask the train loop to save and stop (main thread only; no-op elsewhere).

        With several processes, JAX's preemption service (its own SIGTERM handler, installed
        by `jax.distributed.initialize`) agrees on the step to stop at: a Python handler
        here would replace it, so none is installed.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if jax.process_count() > 1:
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


def _on_every_process(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective with several: all must call it)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


# --- one training run per workdir ------------------------------------------------------------

_NO_LOCKING_WARNED = False


class WorkdirLock:
    """An exclusive `fcntl.flock` on `<workdir>/train.lock`, which names its holder.

    The kernel drops the lock when the holding process exits or is killed (even SIGKILL), so
    a crashed run leaves nothing to clean up: the file stays, the lock does not. Where the
    filesystem has no locking (some network / FUSE mounts) `acquire` warns once per process
    and goes on unlocked.
    """

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        """Takes the lock or raises WorkdirLockedError at once (never waits)."""
        global _NO_LOCKING_WARNED
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"another training run is using --workdir={self.workdir} ({holder}; lock "
                f"{self.path}): two runs would write the same checkpoints and results. Wait "
                f"for it to finish or stop it, or train in another --workdir; "
                f"--mode=test/evaluate can run on it meanwhile."
            ) from None
        except OSError as error:
            os.close(fd)
            if not _NO_LOCKING_WARNED:
                _NO_LOCKING_WARNED = True
                _LOG.warning(
                    "Cannot lock %s (%s): the filesystem has no file locking, so nothing stops "
                    "a second training run on this workdir; make sure only one runs.",
                    self.path,
                    _errno_text(error.errno) if error.errno else error,
                )
            return self
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # while still locked: never wipes the next holder's line
        finally:
            os.close(fd)  # drops the lock

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def _read_holder(fd: int) -> str:
    """'host h, pid 12, since <time>' from the lock file, or what is known."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "holder not recorded yet"
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
        f"since {holder.get('since', '?')}"
    )


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """Holds `WorkdirLock(workdir)` in process 0 for the block; every process raises
    WorkdirLockedError if process 0 could not take it."""
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    error: WorkdirLockedError | None = None
    if lock is not None:
        try:
            lock.acquire()
        except WorkdirLockedError as locked:
            error = locked
    if not _on_every_process(error is None) and error is None:
        error = WorkdirLockedError(
            f"process 0 could not lock --workdir={workdir}: another training run is using it "
            f"(see process 0's log)."
        )
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()

"""Training metrics to the console (every process) and to TensorBoard event files (process 0).

The event files are written with `tf.summary` and TensorBoard's hparams summary directly.
clu's metric writers would write the same, but importing them loads TensorBoard's Keras
callback and with it Keras: about 2 s and 180 MB more per training process. Without
TensorFlow installed (a GPU machine with JAX only) the metrics go to the console alone.

Writer interface (as clu's `MetricWriter`, the part the trainer uses): `write_scalars(step,
{name: number})`, `write_hparams({name: int | float | str | bool})`, `flush()`, `close()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

_LOG = logging.getLogger(__name__)


class ConsoleWriter:
    """Scalars and hyperparameters as log lines (`[step] name=value, ...`) at `level`."""

    def __init__(self, level: int = logging.INFO):
        self.level = level

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        text = ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items())
        _LOG.log(self.level, "[%d] %s", step, text)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        _LOG.log(self.level, "hparams: %s", dict(hparams))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """Event files in `logdir`: each scalar under its name, the hyperparameters for
    TensorBoard's HParams tab."""

    def __init__(self, logdir: str):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        with self._writer.as_default():
            for name, value in scalars.items():
                self._tf.summary.scalar(name, float(value), step=step)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        # summary_v2 alone: the hparams `api` module imports Keras for its callback.
        from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top

        with self._writer.as_default():
            summary_v2.hparams(dict(hparams))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiWriter:
    """Every call goes to each writer in turn."""

    def __init__(self, writers: Sequence[Any]):
        self.writers = tuple(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write_scalars(step, scalars)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.write_hparams(hparams)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def make_writer(workdir: str, is_main: bool) -> ConsoleWriter | MultiWriter:
    """TensorBoard (`<workdir>` event files) and DEBUG log lines on the main process; DEBUG log
    lines on the others; INFO log lines where TensorFlow is missing (the only record then).
    The trainer's own progress lines carry the train metrics at INFO either way."""
    if not is_main:
        return ConsoleWriter(logging.DEBUG)
    try:
        board = TensorBoardWriter(workdir)
    except ImportError as error:
        _LOG.warning("No TensorBoard logging (%s); logging to the console only.", error)
        return ConsoleWriter(logging.INFO)
    _LOG.info("TensorBoard summaries: tensorboard --logdir=%s", workdir)
    return MultiWriter([ConsoleWriter(logging.DEBUG), board])


class ProgressReporter:
    """`steps_per_sec` (over the period) and `uptime` (s since this object was made) to the
    writer, at most every `every_secs` and at the last step; the first call only starts the
    clock (it carries the compilation)."""

    def __init__(self, total_steps: int, writer: Any, every_secs: float = 30.0):
        self.total_steps, self.writer, self.every_secs = total_steps, writer, every_secs
        self._start = time.monotonic()
        self._previous: tuple[int, float] | None = None  # (step, time) of the last report

    def __call__(self, step: int, now: float | None = None) -> bool:
        """Reports if due; returns whether it did."""
        now = time.monotonic() if now is None else now
        if self._previous is None:
            self._previous = (step, now)
            return False
        last_step, last_time = self._previous
        due = now - last_time >= self.every_secs or step == self.total_steps
        if step == last_step or now <= last_time or not due:
            return False
        rate = (step - last_step) / (now - last_time)
        self.writer.write_scalars(step, {"steps_per_sec": rate})
        self.writer.write_scalars(step, {"uptime": now - self._start})
        self._previous = (step, now)
        return True

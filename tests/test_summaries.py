"""mbt.summaries: the writers the trainer logs to and the steps/s reporter."""

import logging
import os

import pytest

from mbt import summaries


class _Recorder:
    def __init__(self):
        self.scalars = []

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))


def test_progress_reporter_reports_every_period_and_at_the_last_step():
    writer = _Recorder()
    report = summaries.ProgressReporter(total_steps=100, writer=writer, every_secs=30.0)
    t0 = report._start
    assert not report(1, now=t0 + 5.0)  # starts the clock (the first step compiles)
    assert not report(10, now=t0 + 20.0)  # 15 s: not due
    assert report(61, now=t0 + 35.0)  # 30 s since the first call: 60 steps
    assert writer.scalars[0] == (61, {"steps_per_sec": pytest.approx(2.0)})
    assert writer.scalars[1] == (61, {"uptime": pytest.approx(35.0)})
    assert not report(61, now=t0 + 80.0)  # the same step again
    assert report(100, now=t0 + 45.0)  # the last step, though only 10 s later
    assert writer.scalars[2] == (100, {"steps_per_sec": pytest.approx(3.9)})


def test_writers_by_process_and_what_they_log(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="mbt.summaries")
    other = summaries.make_writer(str(tmp_path / "other"), is_main=False)
    assert isinstance(other, summaries.ConsoleWriter) and other.level == logging.DEBUG
    assert not os.path.exists(tmp_path / "other")  # no event files off the main process
    main = summaries.make_writer(str(tmp_path / "main"), is_main=True)
    assert isinstance(main, summaries.MultiWriter)
    assert [type(w).__name__ for w in main.writers] == ["ConsoleWriter", "TensorBoardWriter"]
    main.write_hparams({"lr": 0.5, "model": "mbt"})
    main.write_scalars(3, {"train/loss": 0.25})
    main.close()
    assert "[3] train/loss=0.25" in caplog.text and "'model': 'mbt'" in caplog.text
    events = [n for n in os.listdir(tmp_path / "main") if n.startswith("events.out.tfevents")]
    assert len(events) == 1

"""One training run per workdir: `<workdir>/train.lock`, held with `fcntl.flock`.

The holder is a real second process (a child holding `WorkdirLock`, or this test process
for the command line). That the kernel drops the lock of a SIGKILLed run, so it resumes
without manual steps, is checked by tests/test_kill_resume.py.
"""

import errno
import fcntl
import logging
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import train_fixtures

from mbt import checkpointing
from mbt import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = textwrap.dedent("""
    import sys
    from mbt import checkpointing
    with checkpointing.WorkdirLock(sys.argv[1]):
        print('locked', flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")


def test_a_second_training_run_fails_at_once_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, workdir],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(checkpointing.WorkdirLockedError) as error:
            train.train_and_evaluate(
                train_fixtures.tiny_config(), workdir, train_fixtures.InMemoryData()
            )
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(f"another training run is using --workdir={workdir} (")
        assert f"host {socket.gethostname()}, pid {holder.pid}, since 20" in message
        assert "Wait for it to finish or stop it, or train in another --workdir" in message
        assert os.listdir(workdir) == ["train.lock"]  # no config.json, data or checkpoints
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    with checkpointing.WorkdirLock(workdir) as lock:  # released with its holder
        with open(lock.path, encoding="utf-8") as f:
            assert f'"pid": {os.getpid()}' in f.read()
    with open(lock.path, encoding="utf-8") as f:
        assert f.read() == ""


def test_the_command_line_refuses_a_locked_workdir_in_one_line(tmp_path):
    workdir = str(tmp_path / "run")
    with checkpointing.WorkdirLock(workdir):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mbt.main",
                "--config=configs/synthetic.py",
                f"--workdir={workdir}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
        )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: another training run is using --workdir={workdir} (host ")
    assert f"pid {os.getpid()}, since " in last
    assert os.listdir(workdir) == ["train.lock"]


def test_a_filesystem_without_locking_warns_once_and_continues(tmp_path, monkeypatch, caplog):
    # No such filesystem can be mounted without root here: flock fails as it does on one.
    def no_locking(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locking)
    monkeypatch.setattr(checkpointing, "_NO_LOCKING_WARNED", False)
    caplog.set_level(logging.WARNING, logger="mbt.checkpointing")
    for name in ("a", "b"):
        with checkpointing.WorkdirLock(str(tmp_path / name)):
            pass
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "mbt.checkpointing"]
    assert warning.startswith(f"Cannot lock {tmp_path / 'a' / 'train.lock'} (No locks available")
    assert "make sure only one runs" in warning

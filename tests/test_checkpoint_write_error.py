"""A checkpoint write that fails in the background stops training promptly with one message.

A real tiny training run in a child process (checkpoints every 4 steps, a log line every 2)
lowers its own file-size limit (`RLIMIT_FSIZE`, SIGXFSZ ignored) once checkpoint 4 is on
disk, so the background write of checkpoint 8 fails with EFBIG the way a full disk fails
with ENOSPC, without root. The run must stop at the next log step (10), before the next
save (12), with a short stderr whose last line names the step, the directory, the OS error
and the last complete checkpoint; resuming then continues from that checkpoint.
"""

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import train_fixtures

from mbt import checkpointing
from mbt import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))

_OVERRIDES = {
    "num_train_steps": 16,
    "checkpoint.every_steps": 4,
    "log_every_steps": 2,
    "final_eval": False,
    "export": False,
}
_FILE_SIZE_LIMIT = 16 * 1024  # bytes: below checkpoint 8's data file, above nothing else

# argv: tests dir, workdir, JSON overrides, file size limit. `main` reports a
# CheckpointError as `error: <message>` and exit status 1; so does this child.
_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys, time
    sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None  # saves ~5 s
    sys.path.insert(0, sys.argv[1])
    import train_fixtures
    from mbt import checkpointing, train

    workdir, overrides, limit = sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG

    def on_step(step):
        print('step', step, flush=True)
        if step == 5:
            deadline = time.monotonic() + 60
            while not os.path.isdir(os.path.join(workdir, 'checkpoints', '4')):
                assert time.monotonic() < deadline, 'checkpoint 4 was not committed'
                time.sleep(0.01)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        if step >= 8:
            time.sleep(0.2)  # the failed write is over by the next log step

    config = train_fixtures.tiny_config(**overrides)
    try:
        train.train_and_evaluate(config, workdir, train_fixtures.InMemoryData(), on_step=on_step)
    except checkpointing.CheckpointError as error:
        sys.exit(f'error: {error}')
    print('finished', flush=True)
""")


def test_a_failed_background_write_stops_training_at_the_next_log_step(tmp_path):
    workdir = str(tmp_path / "run")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            TESTS,
            workdir,
            json.dumps(_OVERRIDES),
            str(_FILE_SIZE_LIMIT),
        ],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=os.environ.get("XLA_FLAGS", "")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    stderr = child.stderr.strip().splitlines()
    assert child.returncode == 1, child.stderr[-3000:]
    directory = os.path.join(workdir, "checkpoints")
    assert stderr[-1] == (
        f"error: checkpoint 8 could not be written to {directory}/8: File too large (EFBIG). "
        f"Disk full? Free space and resume (run the same command again); the last complete "
        f"checkpoint is 4 ({directory}/4)."
    ), child.stderr[-3000:]
    # No tracebacks, no "Event loop is closed": two library warnings at most besides it.
    assert len(stderr) <= 3, child.stderr[-3000:]
    steps = [int(line.split()[1]) for line in child.stdout.splitlines() if line.startswith("step")]
    assert max(steps) == 10, steps  # the log step after the failed save, before the next save
    assert "finished" not in child.stdout
    assert sorted(os.listdir(directory)) == ["4", "8.orbax-checkpoint-tmp"]

    # With space again, the same command resumes from checkpoint 4 and finishes.
    data = train_fixtures.InMemoryData()
    result = train.train_and_evaluate(train_fixtures.tiny_config(**_OVERRIDES), workdir, data)
    assert data.start_batches == [4] and result["step"] == 16
    assert sorted(os.listdir(directory)) == ["12", "16", "8"]


def _unread_gather_failure(message):
    """Makes asyncio report a gather whose failure nobody read, as orbax's writes leave it."""

    async def fail():
        raise ValueError(message)

    async def start():
        gathered = asyncio.gather(fail(), fail())
        await asyncio.sleep(0.01)
        return gathered

    loop = asyncio.new_event_loop()
    gathered = loop.run_until_complete(start())
    loop.close()
    del gathered
    gc.collect()


@pytest.mark.parametrize("orbax_write", [True, False])
def test_unread_failures_of_a_checkpoint_write_are_not_reported_again(caplog, orbax_write):
    checkpointing._install_quiet_failure_reports()
    where = "run/checkpoints/8.orbax-checkpoint-tmp/state" if orbax_write else "elsewhere"
    _unread_gather_failure(f'Error writing "{where}/d/1": File too large')
    unread = [r for r in caplog.records if "exception was never retrieved" in r.getMessage()]
    assert [r.getMessage().split()[0] for r in unread] == (
        [] if orbax_write else ["_GatheringFuture"]
    )


@pytest.mark.parametrize("orbax_coroutine", [True, False])
def test_orbax_coroutines_never_awaited_after_a_failure_are_not_reported(orbax_coroutine):
    from orbax.checkpoint._src.serialization import serialization

    async def other_write():
        pass

    checkpointing._install_quiet_failure_reports()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Never started, as orbax's write coroutines are when a sibling write fails.
        coroutine = (
            serialization.async_serialize_from_host(None, None)
            if orbax_coroutine
            else other_write()
        )
        del coroutine
        gc.collect()
    unawaited = [str(w.message) for w in caught if "was never awaited" in str(w.message)]
    assert unawaited == (
        [] if orbax_coroutine else [f"coroutine '{other_write.__qualname__}' was never awaited"]
    )

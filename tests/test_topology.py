"""A run moves between topologies: the grain input stream and the train state do not depend on
the process layout (mbt.data.grain_input, issue 12).

The toy dataset is built once as ArrayRecord. In this process: 1 device and 4 devices train
to the same parameters (float32, ≤ 1e-6). On 127.0.0.1, two `python -m mbt.main` processes
× 2 simulated devices (gloo collectives): train to the end, both exit 0 with the same
parameter digest and test metrics; are SIGKILLed after their first checkpoint and the run is
resumed here on one process; one of them gets SIGTERM and both save one checkpoint and stop
with status 75, and the run is resumed here. Each ends with the 1-device parameters.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import toy_dataset_fixtures
from flax import serialization

from mbt import checkpointing
from mbt import train
from mbt.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
NUM_STEPS = 12  # 8 epochs of the toy train split (1.5 steps each); checkpoints at 4, 8, 12


def topology_config(data_dir: str, num_devices: int):
    """The toy config read through grain, on a (num_devices, 1) mesh, SGD (no Adam: its
    normalisation would magnify last-bit differences of the reductions)."""
    config = toy_dataset_fixtures.toy_config()
    config.dataset.data_dir = data_dir
    config.dataset.file_format = "array_record"
    config.dataset.loader = "grain"
    config.dataset.grain_threads = 2
    config.dataset.synthetic.num_clips = 0
    config.num_train_steps = NUM_STEPS
    config.checkpoint.every_steps = 4
    config.checkpoint.use_async = False
    config.log_every_steps = 4
    config.final_eval = False
    config.mesh_shape = (num_devices, 1)
    return config


_CONFIG_FILE = textwrap.dedent("""
    import sys

    sys.path[:0] = [{tests!r}, {src!r}]
    import test_topology

    test_topology.cache_programs_of_every_process()


    def get_config(arg=None):
        return test_topology.topology_config({data_dir!r}, int(arg))
""")


def cache_programs_of_every_process() -> None:
    """Lets every process of a run write its compiled programs to the persistent cache.

    jax writes cache entries from process 0 only, and on CPU a program's cache key includes
    the process's own topology fingerprint, so process 1 never finds an entry and compiles
    everything at every start (about 7 s of each two-process run here, while process 0 waits
    for it). The programs are the same either way; only where they come from changes. A jax
    without these private names keeps its own behaviour.
    """
    try:
        from jax._src import compilation_cache
        from jax._src import compiler
    except ImportError:
        return
    if not hasattr(compiler, "_cache_write") or not hasattr(
        compilation_cache, "put_executable_and_time"
    ):
        return

    def write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
        if not host_callbacks:  # as jax: a host callback's address differs between runs
            compilation_cache.put_executable_and_time(
                cache_key, module_name, executable, backend, int(compile_time_secs)
            )

    compiler._cache_write = write


@pytest.fixture(scope="module")
def toy_grain(tmp_path_factory):
    """(data dir of the ArrayRecord build, src dir of the toy module, config file path)."""
    root = tmp_path_factory.mktemp("topology")
    with pytest.MonkeyPatch.context() as monkeypatch:
        toy_dataset_fixtures.install_toy_module(root / "src", monkeypatch)
        config = toy_dataset_fixtures.toy_config()
        config.dataset.file_format = "array_record"
        pipeline.prepare_dataset(config, str(root / "data"))
        config_path = root / "topology_config.py"
        config_path.write_text(
            _CONFIG_FILE.format(
                tests=TESTS, src=str(root / "src"), data_dir=config.dataset.data_dir
            )
        )
        yield config.dataset.data_dir, config_path
    sys.modules.pop(toy_dataset_fixtures.MODULE, None)


def _flat(params) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(params))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _params(result) -> dict[str, np.ndarray]:
    return _flat(result["final_state"].params)


def _assert_close(got: dict, want: dict):
    assert got.keys() == want.keys()
    worst = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
    assert worst <= 1e-6, worst


@pytest.fixture(scope="module")
def one_device_params(toy_grain, tmp_path_factory):
    data_dir, _ = toy_grain
    workdir = str(tmp_path_factory.mktemp("one_device") / "run")
    result = train.train_and_evaluate(topology_config(data_dir, 1), workdir)
    assert result["step"] == NUM_STEPS and not result["stopped_early"]
    return _params(result)


def test_four_devices_train_to_the_one_device_parameters(toy_grain, one_device_params, tmp_path):
    data_dir, _ = toy_grain
    result = train.train_and_evaluate(topology_config(data_dir, 4), str(tmp_path / "run"))
    _assert_close(_params(result), one_device_params)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_processes(config_path, workdir, log_dir):
    """Two `python -m mbt.main` processes × 2 CPU devices; their output goes to files."""
    address = f"127.0.0.1:{_free_port()}"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    procs, logs = [], []
    for pid in (0, 1):
        log = open(log_dir / f"process{pid}.log", "w+")  # noqa: SIM115 (closed by the caller)
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mbt.main",
                    f"--config={config_path}:4",
                    f"--workdir={workdir}",
                    f"--coordinator_address={address}",
                    "--num_processes=2",
                    f"--process_id={pid}",
                    "--initialization_timeout_s=120",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs, logs


def _wait_for_checkpoint(procs, workdir, timeout_s=300.0) -> None:
    """Returns once `<workdir>/checkpoints` holds a finished checkpoint (step 4 or later)."""
    deadline = time.monotonic() + timeout_s
    checkpoints = os.path.join(workdir, "checkpoints")
    while time.monotonic() < deadline:
        steps = (
            [n for n in os.listdir(checkpoints) if n.isdigit()]
            if os.path.isdir(checkpoints)
            else []
        )
        if steps:
            return
        if any(proc.poll() is not None for proc in procs):
            return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint in {checkpoints} after {timeout_s} s")


def _finish(procs, logs, timeout_s=300.0) -> list[str]:
    try:
        for proc in procs:
            proc.wait(timeout=timeout_s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    return texts


def _exported_params(workdir) -> dict[str, np.ndarray]:
    with open(os.path.join(workdir, "export", "params.msgpack"), "rb") as f:
        return _flat(serialization.msgpack_restore(f.read()))


@pytest.mark.usefixtures("programs_released")
def test_two_processes_train_to_the_end_like_one_device(toy_grain, one_device_params, tmp_path):
    _, config_path = toy_grain
    workdir = tmp_path / "run"
    procs, logs = _start_two_processes(config_path, workdir, tmp_path)
    texts = _finish(procs, logs)
    for pid, (proc, text) in enumerate(zip(procs, texts)):
        assert proc.returncode == 0, f"process {pid}:\n{text[-4000:]}"
        assert f"process {pid} of 2: 2 local cpu devices" in text, text[-4000:]
    fingerprints = [
        re.findall(rf"parameters at step {NUM_STEPS}: (sha256 \S+ of \d+ .*)", text)
        for text in texts
    ]
    assert len(fingerprints[0]) == 1 and fingerprints[0] == fingerprints[1], fingerprints
    tests = [re.findall(r"test test \(8 views\): (.*) ->", text) for text in texts]
    assert len(tests[0]) == 1 and tests[0] == tests[1], tests
    assert (workdir / "results_test.json").is_file()
    _assert_close(_exported_params(workdir), one_device_params)


@pytest.mark.usefixtures("programs_released")
def test_sigkilled_two_process_run_resumes_on_one_process(toy_grain, one_device_params, tmp_path):
    data_dir, config_path = toy_grain
    workdir = tmp_path / "run"
    procs, logs = _start_two_processes(config_path, workdir, tmp_path)
    _wait_for_checkpoint(procs, workdir)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    texts = _finish(procs, logs)
    assert [proc.returncode for proc in procs] == [-signal.SIGKILL] * 2, texts[0][-3000:]
    steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    assert steps and steps[-1] < NUM_STEPS, steps

    resumed = train.train_and_evaluate(topology_config(data_dir, 2), str(workdir))
    assert resumed["step"] == NUM_STEPS
    _assert_close(_params(resumed), one_device_params)


@pytest.mark.usefixtures("programs_released")
def test_sigterm_to_one_process_stops_both_after_one_checkpoint(
    toy_grain, one_device_params, tmp_path
):
    data_dir, config_path = toy_grain
    workdir = tmp_path / "run"
    procs, logs = _start_two_processes(config_path, workdir, tmp_path)
    _wait_for_checkpoint(procs, workdir)
    procs[1].send_signal(signal.SIGTERM)
    texts = _finish(procs, logs)
    codes = [proc.returncode for proc in procs]
    assert codes == [checkpointing.EXIT_PREEMPTED] * 2, (codes, texts[0][-3000:], texts[1][-3000:])
    stops = {tuple(re.findall(r"stopped at step (\d+) on SIGTERM", text)) for text in texts}
    assert len(stops) == 1, stops  # both stopped, at the same step
    (stop,) = (int(s) for s in stops.pop())
    steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    assert steps[-1] == stop < NUM_STEPS, (steps, stop)

    resumed = train.train_and_evaluate(topology_config(data_dir, 1), str(workdir))
    assert resumed["step"] == NUM_STEPS
    _assert_close(_params(resumed), one_device_params)

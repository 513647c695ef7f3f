"""Multi-process launch by flags (`mbt.launch`, `python -m mbt.main --num_processes=...`).

The flag checks are unit tests of `launch.resolve` (no JAX job is started), plus one
command line showing that a bad combination stops `mbt.main` with status 2 before it touches
the workdir. The real thing, two `python -m mbt.main` processes on 127.0.0.1, is in
tests/test_topology.py.
"""

import os
import subprocess
import sys

import pytest

from mbt import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def resolve(environ=None, **flags):
    return launch.resolve(environ=environ or {}, **flags)


# --- flag checks --------------------------------------------------------------------------


def test_nothing_given_is_a_single_process():
    assert resolve() == launch.LaunchSpec(launch.SINGLE)
    assert resolve(num_processes=1).mode == launch.SINGLE
    assert resolve(num_processes=1, process_id=0).mode == launch.SINGLE


def test_explicit_flags_and_the_environment_variables_jax_does_not_read():
    spec = resolve(
        coordinator_address="10.0.0.2:8476",
        num_processes=4,
        process_id=3,
        local_device_ids=["0", "1"],
        initialization_timeout_s=60,
    )
    assert spec == launch.LaunchSpec(launch.EXPLICIT, "10.0.0.2:8476", 4, 3, (0, 1), 60)
    env = {
        "JAX_COORDINATOR_ADDRESS": "node-0:1234",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
    }
    assert resolve(env) == launch.LaunchSpec(launch.EXPLICIT, "node-0:1234", 2, 1)
    # A flag wins over its variable.
    assert resolve(env, process_id=0).process_id == 0


def test_auto_detection_stays_when_nothing_is_given():
    assert resolve({"SLURM_NTASKS": "8"}) == launch.LaunchSpec(launch.AUTO)
    assert resolve({"OMPI_COMM_WORLD_SIZE": "2"}).mode == launch.AUTO
    assert resolve({"TPU_WORKER_HOSTNAMES": "t1,t2"}).mode == launch.AUTO
    assert resolve({"SLURM_NTASKS": "1"}).mode == launch.SINGLE
    assert resolve({"MBT_DISTRIBUTED": "1"}).mode == launch.AUTO
    assert resolve({"MBT_DISTRIBUTED": "0", "SLURM_NTASKS": "8"}).mode == launch.SINGLE
    # Under SLURM an address alone is passed on; jax detects the count and the id.
    spec = resolve({"SLURM_NTASKS": "8"}, coordinator_address="n0:9000")
    assert (spec.mode, spec.coordinator_address, spec.num_processes) == (
        launch.AUTO,
        "n0:9000",
        None,
    )
    # --num_processes=1 is one process even inside a SLURM job of several tasks.
    assert resolve({"SLURM_NTASKS": "8"}, num_processes=1).mode == launch.SINGLE


@pytest.mark.parametrize(
    "environ, flags, message",
    [
        ({}, {"process_id": 1}, "--process_id=1 without --num_processes: give every process"),
        (
            {},
            {"num_processes": 2, "process_id": 2, "coordinator_address": "h:1"},
            "--process_id=2 is out of range for --num_processes=2: process ids are 0..1",
        ),
        ({}, {"num_processes": 2, "process_id": -1}, "--process_id=-1 is out of range"),
        ({"JAX_PROCESS_ID": "5", "JAX_NUM_PROCESSES": "4"}, {}, "JAX_PROCESS_ID=5 is out of"),
        ({}, {"num_processes": 0}, "--num_processes=0 must be at least 1"),
        ({"JAX_NUM_PROCESSES": "two"}, {}, "JAX_NUM_PROCESSES='two' is not an integer"),
        (
            {},
            {"num_processes": 2, "coordinator_address": "h:1"},
            "--num_processes=2 also needs --process_id on every process",
        ),
        (
            {},
            {"num_processes": 2},
            "--num_processes=2 also needs --process_id and --coordinator_address",
        ),
        ({}, {"coordinator_address": "10.0.0.2"}, "--coordinator_address='10.0.0.2' is not"),
        ({}, {"coordinator_address": "http://h:1"}, "is not host:port"),
        ({}, {"coordinator_address": "h:70000"}, "port 70000 is not in 1..65535"),
        ({"JAX_COORDINATOR_ADDRESS": "h:"}, {}, "JAX_COORDINATOR_ADDRESS='h:' is not host:port"),
        ({}, {"coordinator_address": "h:1"}, "--coordinator_address=h:1 alone: outside SLURM"),
        (
            {"MBT_DISTRIBUTED": "0"},
            {"num_processes": 2, "process_id": 0, "coordinator_address": "h:1"},
            "MBT_DISTRIBUTED=0 turns multi-process off but --num_processes=2",
        ),
        ({}, {"local_device_ids": ["0", "0"]}, "must be distinct device numbers >= 0"),
        ({}, {"local_device_ids": ["a"]}, "--local_device_ids='a' is not an integer"),
        ({}, {"local_device_ids": ["1"]}, "selects devices for one of several processes"),
        ({}, {"initialization_timeout_s": 0}, "--initialization_timeout_s=0 must be at least"),
    ],
)
def test_inconsistent_or_malformed_values_are_refused(environ, flags, message):
    with pytest.raises(launch.LaunchError) as error:
        resolve(environ, **flags)
    assert message in str(error.value)


def test_addresses():
    assert launch.parse_address("10.0.0.2:8476") == ("10.0.0.2", 8476)
    assert launch.parse_address("node-0.cluster:1") == ("node-0.cluster", 1)
    assert launch.parse_address("[::1]:8476") == ("[::1]", 8476)


def test_the_command_line_stops_before_touching_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mbt.main", f"--workdir={workdir}", "--process_id=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "python -m mbt.main: error: --process_id=1 without --num_processes: give every process "
        "the same --num_processes=N and its own --process_id in 0..N-1"
    )
    assert not workdir.exists()


def test_the_replica_fingerprint_sees_one_changed_element():
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from mbt import sharding

    mesh = sharding.make_mesh((-1, 1))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    tree = {"w": put(w, P()), "b": put(np.ones(8, np.float32), P("data"))}
    same = {"w": put(w.copy(), P()), "b": put(np.zeros(8, np.float32), P("data"))}
    w_changed = w.copy()  # (device_put on CPU may share w's memory)
    w_changed[3, 3] += 1e-6
    changed = {"w": put(w_changed, P()), "b": tree["b"]}
    text = launch.replica_fingerprint(tree)
    assert text.endswith("of 1 replicated arrays (1 sharded ones not included)")
    assert launch.replica_fingerprint(same) == text
    assert launch.replica_fingerprint(changed) != text


def test_import_and_freeze_imports_then_freezes_what_lives():
    import gc

    from mbt import startup

    sys.modules.pop("colorsys", None)
    before = gc.get_freeze_count()
    gc.disable()  # as `python -m mbt.main` does while it imports
    try:
        startup.import_and_freeze("colorsys")
        assert "colorsys" in sys.modules
        assert gc.get_freeze_count() > before  # the module and everything alive now
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
        gc.collect()
        gc.freeze()  # as conftest leaves this process

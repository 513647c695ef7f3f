"""Test setup, before jax is imported anywhere: 8 simulated CPU devices and a persistent JAX
compilation cache.

Most of the suite's time is XLA compiling tiny models. The cache keeps every compiled program
(keyed by its HLO, the compile options, the XLA flags and the jax/jaxlib versions, so a changed
model or flag compiles afresh) in `$MBT_TEST_JAX_CACHE`, default
`${XDG_CACHE_HOME:-~/.cache}/mbt/jax-tests`, shared by the subprocesses the tests start
(they inherit the environment). `MBT_TEST_JAX_CACHE=off` runs without it; a
`JAX_COMPILATION_CACHE_DIR` already set is used as it is. It is not size-capped (jax's LRU
eviction reads every entry's access time on every write, which costs more than it saves
here): one run of the suite adds about 20-40 MB; delete the folder to clear it.
"""

import ctypes
import os
import sys

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Before any test module imports TensorFlow: it then loads without Keras, as in mbt's own
# processes (mbt.data.tf_import), 2.5 s and 180 MB less per worker.
import mbt.data  # noqa: E402, F401
from mbt import startup  # noqa: E402


def _compilation_cache_dir() -> str | None:
    setting = os.environ.get("MBT_TEST_JAX_CACHE", "")
    if setting.lower() == "off":
        return None
    if setting:
        return os.path.abspath(os.path.expanduser(setting))
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mbt", "jax-tests")


if "JAX_COMPILATION_CACHE_DIR" not in os.environ and (cache_dir := _compilation_cache_dir()):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    # Every program, however small or quick to compile: the eager ops of the module tests too.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _rss_bytes() -> int | None:
    """This process's resident set size (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def pytest_collection_finish(session):
    # Collects garbage, then freezes the survivors for the cyclic collector, as the commands
    # do: the test modules and what they import, later also the session fixtures. Millions of
    # long-lived objects once TF, jax and flax are imported, and each full collection walked
    # them all: about 0.5 s, some 27 times in test_experiments.py alone (10 % of its time).
    startup.import_and_freeze()


# The longest files, longest first (seconds summed over their tests, 2 workers on 2 cores).
# pytest-xdist's `--dist loadfile` hands out files in collection order; its default reorder by
# test count left test_topology.py (4 tests, ~90 s) for the end of the run, with the other
# worker idle. Longest-first lets the short files fill in at the end.
LONGEST_FILES = (
    "test_experiments.py",  # ~125 s
    "test_topology.py",  # ~90 s
    "test_demo.py",  # ~80 s
    "test_model.py",  # ~70 s
    "test_beam_builds.py",  # ~45 s
    "test_sounding_objects.py",  # ~35 s
    "test_pipeline.py",  # ~28 s
    "test_benchmarks.py",  # ~23 s
    "test_builders.py",  # ~20 s
    "test_grain_input.py",  # ~17 s
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's reorder by test count
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


def _release_compiled_programs() -> int | None:
    """Drops jax's in-memory program caches, collects and freezes what survives, returns the
    freed heap to the OS (glibc) and returns the resident size after that."""
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    startup.import_and_freeze()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass
    return _rss_bytes()


# jax keeps every traced and compiled program in memory: the XLA:CPU executables of the eager
# ops and tiny models add up to more than 4 GB over the suite. They are released after each
# module, and after any test that leaves the process this much larger than after the last
# release; a later test that needs one again retraces it and reads the compiled program back
# from the persistent cache. 0.5 GB rather than 0.75: the suite's peak 2.88 -> 2.77 GiB (two
# workers at up to 1.5 GiB beside a subprocess), for about 10 CPU-s more of reloading.
RSS_GROWTH_LIMIT_BYTES = int(float(os.environ.get("MBT_TEST_RSS_GROWTH_GB", "0.5")) * 2**30)
_rss_after_release: list[int | None] = [None]


@pytest.fixture(autouse=True, scope="module")
def _release_after_module():
    yield
    _rss_after_release[0] = _release_compiled_programs()


@pytest.fixture(autouse=True)
def _release_after_growth():
    yield
    rss, base = _rss_bytes(), _rss_after_release[0]
    if rss is not None and (base is None or rss - base > RSS_GROWTH_LIMIT_BYTES):
        _rss_after_release[0] = _release_compiled_programs() if base is not None else rss


@pytest.fixture
def release_after_each_run(monkeypatch):
    """Releases the compiled programs after each run of `mbt.experiments` in this process.

    A test that runs an experiment trains several small configs in turn; each leaves about
    0.3-0.6 GB of programs and freed heap behind until the test ends (measured in
    test_experiments.py: 1.2-1.5 GB between its tests, 0.86-1.0 GB with this).
    """
    from mbt.experiments import runner

    run_one = runner.run_one

    def run_one_then_release(*args, **kwargs):
        try:
            return run_one(*args, **kwargs)
        finally:
            _release_compiled_programs()

    monkeypatch.setattr(runner, "run_one", run_one_then_release)


@pytest.fixture
def programs_released():
    """Releases this worker's compiled programs before the test: for tests that spend their
    time waiting on subprocesses of their own, which then have that memory."""
    _release_compiled_programs()

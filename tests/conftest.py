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

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


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

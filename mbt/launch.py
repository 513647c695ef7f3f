"""Starting one process of a multi-process (multi-host) JAX job: which layout, and joining it.

Three ways, decided by `resolve` before any JAX call:

- **explicit**: `--num_processes=N` (N > 1) with `--process_id` and `--coordinator_address`
  (`host:port` of process 0), given to every process. Each falls back to the environment
  variable `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` / `JAX_COORDINATOR_ADDRESS` when its flag is
  unset (jax itself reads only the address, so the variables alone used to fail with
  "Number of processes must be defined").
- **auto**: nothing given, and the environment shows several processes (a SLURM job with more
  than one task, an Open MPI world of more than one, a multi-host Cloud TPU slice, or
  `JAX_COORDINATOR_ADDRESS` inside one of them): `jax.distributed.initialize` detects the
  rest. `MBT_DISTRIBUTED=1` forces this (other cluster kinds jax knows), `=0` turns it off.
- **single**: one process (nothing detected, `--num_processes=1` or `MBT_DISTRIBUTED=0`).

`--local_device_ids` (or `JAX_LOCAL_DEVICE_IDS`) restricts a process to some of the host's
accelerators (one process per GPU). On CPU the cross-process collectives are gloo's
(TCP), unless `JAX_CPU_COLLECTIVES_IMPLEMENTATION` says otherwise (e.g. `mpi`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

_LOG = logging.getLogger(__name__)

SINGLE, EXPLICIT, AUTO = "single", "explicit", "auto"

# host:port; host a name, an IPv4 address or a bracketed IPv6 address.
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]+)$")


class LaunchError(ValueError):
    """Flags / environment that do not describe one process of a job; the message says why."""


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """How this process starts. `num_processes` / `process_id` are None in auto mode (jax
    detects them); `local_device_ids` None = every local device."""

    mode: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    initialization_timeout_s: int = 300


def _from_env(
    value: Any, flag: str, env_name: str, environ: Mapping[str, str]
) -> tuple[Any, str | None]:
    """(value, where it came from): the flag when set, else the environment variable."""
    if value is not None and value != "" and value != []:
        return value, f"--{flag}"
    text = environ.get(env_name, "").strip()
    if text:
        return text, env_name
    return None, None


def _as_int(value: Any, source: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LaunchError(f"{source}={value!r} is not an integer") from None


def parse_address(address: str, source: str = "--coordinator_address") -> tuple[str, int]:
    """`'host:port'` -> (host, port); LaunchError naming `source` when malformed."""
    match = _ADDRESS.match(address.strip())
    if match is None:
        raise LaunchError(
            f"{source}={address!r} is not host:port (e.g. 10.0.0.2:8476, node-0:8476 or "
            "[::1]:8476): the address and a free port of process 0, the same on every process"
        )
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise LaunchError(f"{source}={address!r}: port {port} is not in 1..65535")
    return match.group("host"), port


def _device_ids(value: Any, source: str) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    ids = tuple(_as_int(str(item).strip(), source) for item in items if str(item).strip())
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise LaunchError(
            f"{source}={value!r} must be distinct device numbers >= 0, e.g. 0,1 "
            "(this process's accelerators on its host)"
        )
    return ids


def cluster_detected(environ: Mapping[str, str]) -> bool:
    """Whether the environment is a job of several processes that jax can describe itself."""

    def count(name: str) -> int:
        try:
            return int(environ.get(name, "1") or "1")
        except ValueError:
            return 1

    return (
        count("SLURM_NTASKS") > 1
        or count("OMPI_COMM_WORLD_SIZE") > 1
        or "," in environ.get("TPU_WORKER_HOSTNAMES", "")
    )


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int | str] | str | None = None,
    initialization_timeout_s: int = 300,
    environ: Mapping[str, str] | None = None,
) -> LaunchSpec:
    """The launch of this process from the flags (None = unset) and the environment.

    Raises:
      LaunchError: the values contradict each other or are malformed (a process id without a
        process count, or out of its range; a count below 1; an address that is not
        host:port; `MBT_DISTRIBUTED=0` with a count above 1; ...). Nothing has been started.
    """
    environ = os.environ if environ is None else environ
    address, address_src = _from_env(
        coordinator_address, "coordinator_address", "JAX_COORDINATOR_ADDRESS", environ
    )
    count, count_src = _from_env(num_processes, "num_processes", "JAX_NUM_PROCESSES", environ)
    pid, pid_src = _from_env(process_id, "process_id", "JAX_PROCESS_ID", environ)
    ids, ids_src = _from_env(local_device_ids, "local_device_ids", "JAX_LOCAL_DEVICE_IDS", environ)
    device_ids = _device_ids(ids, ids_src) if ids_src else None
    if initialization_timeout_s < 1:
        raise LaunchError(
            f"--initialization_timeout_s={initialization_timeout_s} must be at least 1 (seconds)"
        )
    if address_src:
        parse_address(address, address_src)
    forced = environ.get("MBT_DISTRIBUTED")
    forced_on = forced is not None and forced.strip() not in ("", "0", "false", "False")
    forced_off = forced is not None and not forced_on

    if count_src is not None:
        count = _as_int(count, count_src)
        if count < 1:
            raise LaunchError(f"{count_src}={count} must be at least 1")
    if pid_src is not None:
        pid = _as_int(pid, pid_src)
        if count_src is None:
            raise LaunchError(
                f"{pid_src}={pid} without --num_processes: give every process the same "
                "--num_processes=N and its own --process_id in 0..N-1"
            )
        if not 0 <= pid < count:
            raise LaunchError(
                f"{pid_src}={pid} is out of range for {count_src}={count}: "
                f"process ids are 0..{count - 1}, one per process"
            )

    single_ids_error = LaunchError(
        f"{ids_src}={ids!r} selects devices for one of several processes; a single process "
        "uses every visible device (restrict them with CUDA_VISIBLE_DEVICES / TPU_VISIBLE_CHIPS)"
    )
    if count_src is not None and count == 1:
        if ids_src == "--local_device_ids":
            raise single_ids_error
        return LaunchSpec(SINGLE)
    if count_src is not None:  # several processes, named explicitly
        if forced_off:
            raise LaunchError(
                f"MBT_DISTRIBUTED={forced} turns multi-process off but {count_src}={count}: "
                "unset one of them"
            )
        missing = [
            name
            for name, src in (("--process_id", pid_src), ("--coordinator_address", address_src))
            if src is None
        ]
        if missing:
            raise LaunchError(
                f"{count_src}={count} also needs {' and '.join(missing)} on every process "
                "(process 0's host:port as the address; ids 0.."
                f"{count - 1}), or leave all three unset under SLURM / Open MPI / Cloud TPU"
            )
        return LaunchSpec(EXPLICIT, address, count, pid, device_ids, int(initialization_timeout_s))
    if forced_off:
        if ids_src == "--local_device_ids":
            raise single_ids_error
        return LaunchSpec(SINGLE)
    if forced_on or cluster_detected(environ):
        return LaunchSpec(AUTO, address, None, None, device_ids, int(initialization_timeout_s))
    if address_src is not None:
        raise LaunchError(
            f"{address_src}={address} alone: outside SLURM / Open MPI / Cloud TPU also give "
            "--num_processes=N and --process_id (0..N-1) to every process"
        )
    if ids_src == "--local_device_ids":
        raise single_ids_error
    return LaunchSpec(SINGLE)


def initialize(spec: LaunchSpec) -> None:
    """Joins the job described by `spec` (nothing for a single process). Must run before any
    other JAX call.

    Raises:
      LaunchError: jax could not start or join the job (coordinator unreachable within the
        timeout, port taken, ...), with jax's message.
    """
    if spec.mode == SINGLE:
        return
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        # Cross-process collectives on CPU; set explicitly, as jax's default has changed.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {"initialization_timeout": spec.initialization_timeout_s}
    if spec.coordinator_address is not None:
        kwargs["coordinator_address"] = spec.coordinator_address
    if spec.num_processes is not None:
        kwargs["num_processes"] = spec.num_processes
        kwargs["process_id"] = spec.process_id
    if spec.local_device_ids is not None:
        kwargs["local_device_ids"] = list(spec.local_device_ids)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError, TypeError) as error:
        where = (
            f"process {spec.process_id} of {spec.num_processes}, coordinator "
            f"{spec.coordinator_address}"
            if spec.mode == EXPLICIT
            else "auto-detected cluster"
        )
        message = " ".join(str(error).split())
        raise LaunchError(
            f"jax.distributed.initialize ({where}) failed: {message[:500]}. Check that every "
            "process was started with the same --num_processes and --coordinator_address, "
            "that process 0 is running and its port is free and reachable."
        ) from error


def topology() -> str:
    """'process i of n: L local <platform> devices [ids] of G' for the log."""
    local = jax.local_devices()
    ids = ", ".join(str(d.id) for d in local)
    return (
        f"process {jax.process_index()} of {jax.process_count()}: {len(local)} local "
        f"{local[0].platform} devices [{ids}] of {jax.device_count()}"
    )


def replica_fingerprint(tree: Any) -> str:
    """A digest of this process's copy of every fully replicated array of `tree`.

    Processes that applied the same updates print the same digest; a process whose copy
    drifted (a collective that did not reach it) prints another. Sharded arrays differ per
    process by design and are only counted. Copies every replicated array to the host.
    """
    digest = hashlib.sha256()
    replicated = sharded = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, jax.Array):
            continue
        if not leaf.is_fully_replicated:
            sharded += 1
            continue
        replicated += 1
        host = np.asarray(leaf.addressable_shards[0].data)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(str(host.dtype).encode() + str(host.shape).encode())
        digest.update(np.ascontiguousarray(host).tobytes())
    return f"sha256 {digest.hexdigest()[:16]} of {replicated} replicated arrays" + (
        f" ({sharded} sharded ones not included)" if sharded else ""
    )

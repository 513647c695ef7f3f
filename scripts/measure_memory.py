"""Runs a command and prints its wall time, CPU time and the peak memory of its whole
process tree.

    python scripts/measure_memory.py python -m pytest -q -n 2 --dist loadfile tests

Every 0.5 s it sums, over the command and all its descendants, the proportional set size
(PSS: shared pages split between the processes that map them) and the resident set size
(RSS: shared pages counted in each process) from /proc/<pid>/smaps_rollup (Linux). It also
prints the largest peak RSS of any one process (its VmHWM, what `/usr/bin/time -v` reports
for a command that runs in one process), which misses the workers and subprocesses beside
it, and the user + system CPU seconds of the whole tree. Sampling costs some CPU: compare
runs measured the same way. A last line per process lists what the tree held at its PSS
peak (the largest first): PSS, pid and the start of the command line.
"""

import resource
import subprocess
import sys
import time


def _descendants(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return [pid]
    return [pid] + [d for child in children for d in _descendants(child)]


def _pss_rss_kib(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return pss, rss


def _peak_rss_kib(pid: int) -> int:
    """The process's own peak RSS so far (VmHWM), 0 if it has ended."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _command(pid: int, width: int = 90) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:width]
    except OSError:
        return "?"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.monotonic()
    proc = subprocess.Popen(argv)
    peak_pss = peak_rss = largest = 0
    at_peak: list[tuple[int, int, str]] = []  # (PSS KiB, pid, command) at the PSS peak
    while proc.poll() is None:
        pids = _descendants(proc.pid)
        sizes = [_pss_rss_kib(pid) for pid in pids]
        total_pss = sum(p for p, _ in sizes)
        if total_pss > peak_pss:
            peak_pss = total_pss
            at_peak = sorted(
                ((pss, pid, _command(pid)) for pid, (pss, _) in zip(pids, sizes)), reverse=True
            )
        peak_rss = max(peak_rss, sum(r for _, r in sizes))
        largest = max([largest] + [_peak_rss_kib(pid) for pid in pids])
        time.sleep(0.5)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"wall {time.monotonic() - start:.0f} s | CPU {usage.ru_utime + usage.ru_stime:.1f} s | "
        f"peak PSS of the process tree {peak_pss / 2**20:.2f} GiB | peak summed RSS "
        f"{peak_rss / 2**20:.2f} GiB | largest process peak RSS {largest / 2**20:.2f} GiB",
        flush=True,
    )
    for pss, pid, command in at_peak:
        print(f"  at the peak: {pss / 2**20:.2f} GiB pid {pid} {command}", flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

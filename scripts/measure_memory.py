"""Runs a command and prints its wall time and the peak memory of its whole process tree.

    python scripts/measure_memory.py python -m pytest -q -n 2 --dist loadfile tests

Every 0.5 s it sums, over the command and all its descendants, the proportional set size
(PSS: shared pages split between the processes that map them) and the resident set size
(RSS: shared pages counted in each process) from /proc/<pid>/smaps_rollup (Linux). A
process's own peak RSS (`/usr/bin/time -v`) misses the workers and subprocesses beside it.
Sampling costs some CPU: compare runs measured the same way.
"""

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


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.monotonic()
    proc = subprocess.Popen(argv)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        sizes = [_pss_rss_kib(pid) for pid in _descendants(proc.pid)]
        peak_pss = max(peak_pss, sum(p for p, _ in sizes))
        peak_rss = max(peak_rss, sum(r for _, r in sizes))
        time.sleep(0.5)
    print(
        f"wall {time.monotonic() - start:.0f} s | peak PSS of the process tree "
        f"{peak_pss / 2**20:.2f} GiB | peak summed RSS {peak_rss / 2**20:.2f} GiB",
        flush=True,
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

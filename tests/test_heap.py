"""mbt.data.heap: after keep_freed_buffers, a clip's worth of freed buffers is reused rather
than page-faulted again (counted in minor page faults of a fresh process)."""

import platform
import resource
import subprocess
import sys

import pytest

_PROGRAM = """
import ctypes, resource
from mbt.data import heap

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def faults_per_cycle(cycles=10, size=8 << 20):
    # Two clip-sized buffers alive at once, written, freed: a record and its copy.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        first, second = libc.malloc(size), libc.malloc(size)
        ctypes.memset(first, 1, size)
        ctypes.memset(second, 1, size)
        libc.free(second)
        libc.free(first)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / cycles

faults_per_cycle(1)
default = faults_per_cycle()
assert heap.keep_freed_buffers() and heap.keep_freed_buffers()  # once; the second is a no-op
faults_per_cycle(1)
print(default, faults_per_cycle())
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_clip_buffers_are_reused_not_faulted_in_again():
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, text=True, check=True
    ).stdout
    default, kept = map(float, out.split())
    pages = (2 * (8 << 20)) // resource.getpagesize()
    assert default > 0.5 * pages  # glibc's default hands the buffers back every time
    assert kept < 0.02 * pages

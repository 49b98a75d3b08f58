"""Process memory: the peak resident size, and handing freed heap memory back to the system.

glibc keeps freed memory in its heap, and after large frees raises its mmap threshold so
later large buffers land in the heap too; the resident size then creeps up with garbage.
``return_large_buffers`` fixes the threshold (large buffers are mapped and unmapped on
their own; an out-of-core prune sets it), ``trim`` hands the free heap back now (after a
load, whose temporaries are done). Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import resource
from functools import cache


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory of this process now (Linux: /proc/self/statm; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


@cache
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


def return_large_buffers(threshold: int = 8 << 20) -> None:
    """Allocations of ``threshold`` bytes or more by mmap, freed straight back (M_MMAP_THRESHOLD, fixed)."""
    if _libc() is not None:
        _libc().mallopt(-3, threshold)  # M_MMAP_THRESHOLD = -3


def trim() -> None:
    """Give the heap's free memory back to the system."""
    if _libc() is not None:
        _libc().malloc_trim(0)

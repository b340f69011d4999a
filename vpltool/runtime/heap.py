"""The C heap a CPU process keeps (:func:`keep_freed_memory`): glibc's malloc returns freed memory to the system
early, and a loop that makes and frees tensors of a few MB (segment-anything's mask decoder on a batch of prompts)
then pays a page fault for every 4 KB page of each one, again and again (system time, and the kernel zeroing pages).
"""

from __future__ import annotations

import ctypes
import functools
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# a freed block under this comes from and goes back to the heap, not its own mapping: glibc's largest (32 MB on a
# 64-bit system); its default starts at 128 KB and only rises as large blocks are freed
MMAP_THRESHOLD = 32 << 20
# the heap's free top is handed back to the system only beyond this (glibc's default: twice the mmap threshold)
TRIM_THRESHOLD = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process's heap keep what it frees (up to :data:`TRIM_THRESHOLD` at its top; blocks under
    :data:`MMAP_THRESHOLD` from the heap): the next tensor of that size reuses pages already mapped instead of
    faulting new ones in. The resident memory stays near the process's peak instead of falling back between
    batches. Arithmetic is untouched (torch aligns every block itself). Once a process; True where it took effect
    (glibc), False elsewhere (another C library: nothing done)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # setting either also stops glibc adjusting both as blocks are freed (mallopt(3))
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["keep_freed_memory"]

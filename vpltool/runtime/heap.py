"""The C heap a CPU process keeps, under glibc (elsewhere nothing is done).

glibc serves a block above its mmap threshold (128 KB at first, rising as large blocks are freed, up to 32 MB) by
its own mapping, unmaps it when freed, and the kernel zeroes its pages again at the next one; below it, the heap's
free top is handed back to the system beyond its trim threshold. A loop that makes and frees tensors of a few MB to
tens of MB then pays a page fault for every 4 KB page of each, again and again (system time, and the kernel zeroing
pages): SAM's automatic mask generator on each batch of prompts, a photo's bands, SAM 3's 1008-px activations.

* :func:`keep_freed_memory`: the heap keeps what it frees, so the next tensor of that size reuses mapped pages;
* :func:`give_back_freed_memory`: the heap's free pages handed back now, after a burst nothing will reuse.

Arithmetic is untouched (torch aligns every block itself); the resident memory stays near the process's peak.
"""

from __future__ import annotations

import functools
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# SAM's generator: a freed block under 32 MB (glibc's own dynamic ceiling) comes from and goes back to the heap, whose
# free top is handed back beyond 256 MB (tests/test_heap.py counts the faults)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
# a photo's bands (a band's tensors pass 32 MB from about 4000 rows; a 48 MP photo spent as much system time in page
# faults as in the arithmetic: bench/results/photo.json) and SAM 3's 1008-px activations: blocks up to 1 GiB kept
KEEP_FREED = 2**30


@functools.cache
def keep_freed_memory(mmap_below: int = MMAP_THRESHOLD, trim_above: int = TRIM_THRESHOLD) -> bool:
    """Blocks up to ``mmap_below`` bytes come from the heap, and its free top goes back to the system only beyond
    ``trim_above`` bytes (``mallopt``'s M_MMAP_THRESHOLD and M_TRIM_THRESHOLD; setting either also stops glibc
    adjusting them as blocks are freed). Once a process per setting. True where it took effect (glibc)."""
    if (libc := _glibc()) is None:
        return False
    # both asked, whatever the first answers (a glibc may refuse a threshold over its own ceiling)
    took = [libc.mallopt(M_MMAP_THRESHOLD, mmap_below), libc.mallopt(M_TRIM_THRESHOLD, trim_above)]
    return all(took)


def give_back_freed_memory() -> bool:
    """The heap's free pages given back to the system now (``malloc_trim(0)``), whatever :func:`keep_freed_memory`
    set: after a burst of temporaries that the next work will not reuse (a text tower's batches before the photos),
    so that their pages neither stay resident nor scatter the heap the photos then grow. True where glibc was there
    to ask."""
    if (libc := _glibc()) is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _glibc():
    """glibc (a ``ctypes.CDLL`` with ``mallopt``'s argument types), or None under another C library or system:
    ``mallopt``'s numbers and ``malloc_trim`` are glibc's own."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc's alone)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return libc


__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "KEEP_FREED", "keep_freed_memory", "give_back_freed_memory"]

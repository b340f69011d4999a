"""Pages of a memory-mapped weights file, handed back once read: the weights check reads every value of a model, and
a tensor that a file backs (``torch.load(mmap=True)``, a safetensors file that transformers maps) stays resident
after its pages are read, so a check of SigLIP 2's 1.1 GB token table made all of it resident, though a run touches
only the rows of its prompts. :func:`page_out` asks the kernel to drop such pages (``madvise(MADV_PAGEOUT)``, Linux
5.4 and later); they are read again from the file if the model touches them. A copy of a file's tensors reads them
without a mapping (:func:`read_at`), so that a file cut short while it is read is an error (:class:`CutShort`), not
a SIGBUS.

A leaf module (no import of vpltool), used by :mod:`vpltool.io.values`. Everything here is best effort: where the
kernel, the platform or the mapping says no, nothing is dropped and nothing fails.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys

# Linux's MADV_PAGEOUT (asm-generic/mman-common.h; Python's mmap module exports it only when built on such headers).
# On a private mapping it is never destructive: a clean page is dropped and read again from the file, a page written
# since (copy on write) goes to swap or stays.
MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)
_refused = False  # the kernel said no once (older than 5.4, or a seccomp filter): ask no more in this process


def file_backed(address: int) -> bool:
    """Whether ``address`` lies in a mapping of a file (``/proc/self/maps``: an inode, a path not in brackets), as
    a memory-mapped tensor's data does; False off Linux or where the maps cannot be read."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= address < high:
                    path = fields[5].strip() if len(fields) > 5 else ""
                    return fields[4] != "0" and bool(path) and not path.startswith("[")
    except (OSError, ValueError, IndexError):
        pass
    return False


def file_ranges() -> list[tuple[int, int]]:
    """The address ranges ``[low, high)`` of this process's mappings of files (``/proc/self/maps``, as
    :func:`file_backed` reads it), read once; ``[]`` off Linux or where the maps cannot be read."""
    if not sys.platform.startswith("linux"):
        return []
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                path = fields[5].strip() if len(fields) > 5 else ""
                if fields[4] != "0" and path and not path.startswith("["):
                    out.append(tuple(int(x, 16) for x in fields[0].split("-")))
    except (OSError, ValueError, IndexError):
        return []
    return out


def page_out_tensors(tensors) -> int:
    """:func:`page_out` of the data of each contiguous CPU tensor of ``tensors`` (torch's, by duck typing) that a
    file backs (a memory-mapped load's, once its values were read or copied: the maps read once for all of them);
    views of one storage asked once. Returns the bytes handed back."""
    ranges, done, seen = file_ranges(), 0, set()
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous() or not t.numel():
            continue
        start, nbytes = t.data_ptr(), t.numel() * t.element_size()
        if start in seen or not any(low <= start < high for low, high in ranges):
            continue
        seen.add(start)
        done += nbytes if page_out(start, nbytes) else 0
    return done


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def page_out(address: int, nbytes: int) -> bool:
    """Ask the kernel to drop the whole pages of ``[address, address + nbytes)`` from this process's resident set
    (``madvise(MADV_PAGEOUT)``); True where it was done. A page only partly inside is kept (its rest may be
    another tensor's, read next)."""
    global _refused
    if _refused or not sys.platform.startswith("linux") or nbytes <= 0:
        return False
    size = mmap.PAGESIZE
    start = -(-address // size) * size
    end = (address + nbytes) // size * size
    if end <= start:
        return False
    try:
        done = _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(MADV_PAGEOUT)) == 0
    except (OSError, AttributeError):
        done = False
    _refused = not done
    return done


class CutShort(EOFError):
    """A file that ended before the bytes its header (checked against the file's size when opened) places there: it
    was cut short or replaced while it was read. Not handed to the library (whose reader maps the file)."""


# numpy asks for transparent huge pages on an array of this many bytes or more (its NPY_HUGEPAGE_THRESHOLD)
HUGE_PAGE_ADVICE_FROM = 4 << 20


def read_buffer(nbytes: int):
    """``nbytes`` bytes of this process's own, not zero-filled (a ``[nbytes]`` uint8 numpy array), for a file's bytes
    to be read into, in the kernel's ordinary 4 KiB pages. numpy's own ``empty`` asks for transparent huge pages
    (``madvise(MADV_HUGEPAGE)``) on any array of 4 MiB or more, and where the kernel then compacts memory at the
    first touch of each 2 MiB page (``defrag`` set to ``madvise``) a read of a 3.4 GB weights file into one cost
    several CPU-seconds more than into ordinary pages (``bench/bench_sam3_footprint.py --layout both``). The bytes
    are a mapping of their own (anonymous, private), not the heap's: an allocator may serve a request from a heap
    range that an earlier numpy array had advised (:mod:`vpltool.runtime.heap` raises glibc's mmap threshold), and
    the advice stays with the range. The array holds the mapping; it is unmapped when the last view goes. Below
    :data:`HUGE_PAGE_ADVICE_FROM` (a feature file of a run's images) numpy's own: no advice asked, and the heap's
    pages reused, where a mapping of its own faults each of its pages in anew on every call."""
    import numpy as np

    if nbytes < HUGE_PAGE_ADVICE_FROM:
        return np.empty(nbytes, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype=np.uint8)


def read_at(fh, offset: int, into: memoryview) -> None:
    """``len(into)`` bytes of the open file ``fh`` from byte ``offset`` into ``into``, by plain reads (a read may
    return less than asked: Linux's stops near 2 GiB); :class:`CutShort` where the file ends first."""
    got = 0
    while got < len(into):
        fh.seek(offset + got)
        more = fh.readinto(into[got:])
        if not more:
            raise CutShort(f"cut short while it was read (it ends at byte {offset + got:,}, a tensor's data runs to "
                           f"{offset + len(into):,})")
        got += more


__all__ = ["CutShort", "file_backed", "file_ranges", "page_out", "page_out_tensors", "read_at", "read_buffer"]

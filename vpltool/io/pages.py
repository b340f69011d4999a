"""Pages of a memory-mapped weights file, handed back once read: the weights check reads every value of a model, and
a tensor that a file backs (``torch.load(mmap=True)``, a safetensors file that transformers maps) stays resident
after its pages are read, so a check of SigLIP 2's 1.1 GB token table made all of it resident, though a run touches
only the rows of its prompts. :func:`page_out` asks the kernel to drop such pages (``madvise(MADV_PAGEOUT)``, Linux
5.4 and later); they are read again from the file if the model touches them.

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
_refused: set[int] = set()  # advice the kernel said no to once (older than 5.4, a seccomp filter): not asked again


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


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def page_out(address: int, nbytes: int, advice: int = MADV_PAGEOUT) -> bool:
    """Ask the kernel to drop the whole pages of ``[address, address + nbytes)`` from this process's resident set
    (``madvise(advice)``: MADV_PAGEOUT, or ``mmap.MADV_DONTNEED`` for pages only read from a private mapping of a
    file, dropped at once); True where it was done. A page only partly inside is kept (its rest may be another
    tensor's, read next)."""
    if advice in _refused or not sys.platform.startswith("linux") or nbytes <= 0:
        return False
    size = mmap.PAGESIZE
    start = -(-address // size) * size
    end = (address + nbytes) // size * size
    if end <= start:
        return False
    try:
        done = _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(advice)) == 0
    except (OSError, AttributeError):
        done = False
    if not done:
        _refused.add(advice)
    return done


__all__ = ["file_backed", "page_out"]

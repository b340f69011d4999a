"""The weights check of a memory-mapped tensor, a chunk at a time (``vpltool.io.values``): the same verdict and
min/max as one ``aminmax`` over the whole tensor, a NaN or inf in the last chunk still caught, and the file's pages
handed back, not left resident (SigLIP 2's token table made RADSeg's process 1 GB larger than its reference's)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from vpltool.errors import VplError
from vpltool.io import pages, values

N = 600_000  # 2.3 MiB of fp32: over the patched threshold, ten chunks and a short last one


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(values, "PAGED_BYTES", 1 * 2**20)
    monkeypatch.setattr(values, "CHUNK_BYTES", 256 * 2**10)
    calls = []
    real = pages.page_out
    monkeypatch.setattr(pages, "page_out", lambda address, nbytes: calls.append(nbytes) or real(address, nbytes))
    return calls


def _mapped(tmp_path, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a file backs it: saved, then loaded memory-mapped (as RADIO's checkpoint is). Synced to disk
    first, as a downloaded file is: the kernel does not drop a page it has yet to write."""
    torch.save({"w": tensor}, tmp_path / "w.pt")
    with open(tmp_path / "w.pt", "rb+") as f:
        os.fsync(f.fileno())
    return torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)["w"]


def _resident_kib(address: int) -> int:
    """Rss of the mapping that holds ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(x, 16) for x in head.split("-"))
                inside = low <= address < high
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the tensor")


def test_chunked_check_gives_the_whole_tensors_min_and_max(tmp_path, small_chunks):
    tensor = torch.randn(N, generator=torch.Generator().manual_seed(0)) * 3
    mapped = _mapped(tmp_path, tensor)
    assert pages.file_backed(mapped.data_ptr()) and not pages.file_backed(tensor.data_ptr())
    whole = tuple(float(v) for v in torch.aminmax(tensor))
    assert values._extremes(mapped) == whole
    assert len(small_chunks) == math.ceil(N * 4 / values.CHUNK_BYTES)  # the chunked path ran, every chunk
    small_chunks.clear()
    assert values._extremes(tensor) == whole and not small_chunks  # memory of the process's own: one aminmax


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_bad_value_in_the_last_chunk_is_caught(tmp_path, small_chunks, bad):
    tensor = torch.randn(N, generator=torch.Generator().manual_seed(1))
    tensor[-1] = bad
    mapped = _mapped(tmp_path, tensor)
    assert math.isnan(values._extremes(mapped)[0]) == math.isnan(bad)
    small_chunks.clear()
    with pytest.raises(VplError, match="'w' holds NaN or inf"):
        values.check_weight_values(tmp_path / "w.pt", [("w", mapped)], "fix it")
    assert len(small_chunks) == math.ceil(N * 4 / values.CHUNK_BYTES)


def test_the_checked_pages_are_handed_back(tmp_path, small_chunks):
    mapped = _mapped(tmp_path, torch.randn(4 * N, generator=torch.Generator().manual_seed(2)))
    nbytes = mapped.numel() * 4
    torch.aminmax(mapped)  # the whole-tensor check: every page read stays resident
    assert _resident_kib(mapped.data_ptr()) * 1024 >= 0.9 * nbytes
    values.check_weight_values(tmp_path / "w.pt", [("w", mapped)], "fix it")
    if not pages.page_out(mapped.data_ptr(), 0) and pages._refused:
        pytest.skip("this kernel refuses madvise(MADV_PAGEOUT)")
    assert _resident_kib(mapped.data_ptr()) * 1024 < 0.1 * nbytes
    assert float(mapped[-1]) == float(mapped[-1])  # still readable: paged back in from the file


def _vm_flags(address: int) -> list[str] | None:
    """The kernel's ``VmFlags`` of the mapping that holds ``address`` (``/proc/self/smaps``), None if not found."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: "lo-hi perms offset dev inode ..."
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    return None


@pytest.mark.skipif(not os.path.isfile("/proc/self/smaps"), reason="the mappings' flags are Linux's")
def test_a_read_buffer_is_not_asked_for_huge_pages():
    """A weights file is read into :func:`pages.read_buffer`'s ordinary pages, not numpy's (which asks for huge
    pages, ``hg``, on any array of 4 MiB or more: a 3.4 GB read into one cost several CPU-seconds more)."""
    import numpy as np

    size = 16 << 20
    mine, numpys = pages.read_buffer(size), np.empty(size, dtype=np.uint8)
    middle = size // 2  # past the first 2 MiB boundary, where numpy's advice starts
    assert mine.shape == (size,) and mine.dtype == np.uint8
    if "hg" not in (_vm_flags(numpys.ctypes.data + middle) or []):
        pytest.skip("numpy asks for no huge pages on this kernel: nothing to tell apart")
    assert "hg" not in (_vm_flags(mine.ctypes.data + middle) or ["hg"])

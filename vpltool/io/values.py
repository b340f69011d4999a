"""The values rule of every weights file, made once: each floating-point tensor finite (no NaN, no inf), and not
every one of them 0.

A leaf module (it imports nothing of vpltool but its errors), so that the registry's ``load_model``
(:mod:`vpltool.models.registry`), which applies the rule to every model a family loads, and the file readers of
:mod:`vpltool.io.tensors` share it without an import circle.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

from ..errors import VplError
from . import pages

# A weight over PAGED_BYTES that a file backs is checked CHUNK_BYTES at a time, and each chunk's pages handed back:
# a file-backed table read whole stays resident (SigLIP 2's 1.1 GB token table, of which a run reads a few rows).
PAGED_BYTES = 64 * 2**20
CHUNK_BYTES = 16 * 2**20


def is_finite(tensor) -> bool:
    """Whether a torch tensor holds no NaN and no inf (True for an integer or empty one). One pass that allocates
    nothing of the tensor's size: ``aminmax`` propagates NaN, and an inf is an extreme (ten times quicker than
    ``isfinite(t).all()``: ViT-B/16's 150 M weights in 0.03 CPU-s)."""
    extremes = _extremes(tensor)
    return extremes is None or all(math.isfinite(v) for v in extremes)


def _extremes(tensor) -> tuple[float, float] | None:
    """``(min, max)`` of a floating-point torch tensor (NaN propagates), None for an integer, empty or meta one.
    A tensor over :data:`PAGED_BYTES` that a file backs is read a chunk at a time (:func:`_paged_extremes`)."""
    import torch

    if not tensor.is_floating_point() or not tensor.numel() or tensor.device.type == "meta":
        return None
    tensor = tensor.detach()
    if _is_mapped(tensor):
        return _paged_extremes(tensor)
    low, high = torch.aminmax(tensor)
    return float(low), float(high)


def _is_mapped(tensor) -> bool:
    """A contiguous CPU tensor over :data:`PAGED_BYTES` whose data a file backs (a memory-mapped load)."""
    return (tensor.device.type == "cpu" and tensor.numel() * tensor.element_size() > PAGED_BYTES
            and tensor.is_contiguous() and pages.file_backed(tensor.data_ptr()))


def _paged_extremes(tensor) -> tuple[float, float]:
    """``(min, max)`` of a file-backed tensor, :data:`CHUNK_BYTES` at a time, each chunk's pages handed back once
    read (:func:`vpltool.io.pages.page_out`): the same pair as one ``aminmax`` (NaN, found in any chunk, makes
    both NaN), with at most one chunk resident, not the whole mapping."""
    import torch

    flat = tensor.reshape(-1)
    step = max(1, CHUNK_BYTES // tensor.element_size())
    low, high = math.inf, -math.inf
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step]
        lo, hi = (float(v) for v in torch.aminmax(part))
        pages.page_out(part.data_ptr(), part.numel() * part.element_size())
        if math.isnan(lo) or math.isnan(hi):
            return math.nan, math.nan
        low, high = min(low, lo), max(high, hi)
    return low, high


def check_weight_values(where: str | os.PathLike, tensors: Iterable[tuple[str, Any]], fix: str) -> None:
    """The values rule of every weights file, made once (:func:`vpltool.models.registry.load_model` applies it to
    every model a family loads, :func:`vpltool.io.tensors.check_weights` to a file's tensors): each
    floating-point tensor of ``tensors`` (name, tensor) finite, else one line naming ``where`` (the file), the
    first such tensor and ``fix``. A NaN weight gives NaN scores everywhere and every pixel one class, certified.
    A file whose every floating-point weight is 0 (a placeholder, a save that wrote no values) is refused too: its
    features are 0 everywhere, and every pixel scored alike, certified."""
    floats, nonzero = 0, False
    for key, value in tensors:
        extremes = _extremes(value)
        if extremes is None:
            continue
        if not all(math.isfinite(v) for v in extremes):
            raise VplError(f"{where}: tensor {key!r} holds NaN or inf; {fix}")
        floats += 1
        nonzero = nonzero or extremes != (0.0, 0.0)
    if floats and not nonzero:
        raise VplError(f"{where}: every weight is 0 (its {floats} floating-point tensors): a placeholder or a save "
                       f"that wrote no values; {fix}")


__all__ = ["check_weight_values", "is_finite"]

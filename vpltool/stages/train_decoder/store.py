"""train-decoder's feature store (``--feature-store DIR``): the frozen features of ``--cache-features`` kept on disk,
named by their content (:mod:`vpltool.runtime.store`, shared with predict's), so that a second decoder on the same
images (another refinement's pseudo masks: `make demo` trains two at once) reads them instead of running the CLIP over
every image again.

* Key: the CLIP's identity (the prototypes' model record, its weights by content), its input mean and std, the blocks
  read, the view (crop), the dtype and the numerics mode (:func:`store_key`), and every image's bytes in the run's
  order; the pseudo masks are never stored (each run reads its own).
* One builder at a time, under the store's lock; an entry that cannot be read, or holds another shape or dtype than
  its key's run builds, is built again and rewritten, with one warning naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ...runtime.store import FORMAT, LOCK, entry_path, locked, read_entry, store_key, write_entry

TENSOR = "feats"

__all__ = ["FORMAT", "LOCK", "TENSOR", "store_key", "stored_features"]


def stored_features(folder: str | Path, key: str, n_images: int, build: Callable[[], Tensor]) -> Tensor:
    """Features ``[n_images, 2, L, h, w, width]`` float16 from ``folder/<key>.safetensors``, or ``build()`` written
    there first (under the store's lock: one builder)."""

    def check(tensors: dict[str, Tensor]) -> str | None:
        feats = tensors.get(TENSOR)
        if feats is None:
            return f"without {TENSOR!r}"
        if feats.dtype != torch.float16 or tuple(feats.shape[:2]) != (n_images, 2):
            return f"of shape {tuple(feats.shape)} {feats.dtype}"
        return None

    path = entry_path(folder, key)
    with locked(folder):
        stored = read_entry(path, check)
        if stored is not None:
            return stored[TENSOR]
        feats = build()
        write_entry(path, {TENSOR: feats})
    return feats

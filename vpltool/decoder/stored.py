"""predict's frozen features in the feature store (``predict --feature-store DIR``, :mod:`vpltool.runtime.store`).

The frozen CLIP's features of a split's test views do not depend on the decoder: `make demo` predicts the training
split with each candidate refinement's decoder (the pseudo-mask choice), on the same CLIP, images and views. The first
run keeps the features its CLIP computes (:meth:`ViewFeatures.features`, what :func:`decoder_forward` calls) and
writes them to the store; a later run of the same key runs its decoder on them (:meth:`ViewFeatures.batch`,
:func:`stored_view`) instead of decoding, resizing and encoding every image again: the same values in the same
batches, so the same masks, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..device import available_memory
from ..errors import VplError
from ..runtime.store import entry_path, locked, read_entry, store_key, write_entry
from .network import block_features
from .views import mirrored_mean


class ViewFeatures:
    """Each image's frozen features per test scale: ``"<i>/<j>"`` (image ``i``'s place in the run's items, scale
    ``j``) -> ``[V, L, h, w, width]`` on the CPU (V = 2 with ``flip``: the view, then its mirror), in the dtype the
    frozen blocks return. ``stored``: a store entry's (a hit), else None: :meth:`features` computes and keeps them.
    """

    def __init__(self, flip: bool, stored: dict[str, Tensor] | None = None):
        self.flip, self.stored, self.kept = flip, stored, {}
        self._index: list[int] = []
        self._scale = 0

    def at(self, index: Sequence[int]) -> None:
        """The images of the next forwards (one per scale, in the scales' order)."""
        self._index, self._scale = list(index), 0

    def features(self, bb, pixels: Tensor, blocks: Sequence[int], dtype: torch.dtype) -> Tensor:
        """:func:`block_features` of a forward's ``[V*b, 3, H, W]`` pixels (the images of :meth:`at`, then their
        mirrors), each image's rows kept."""
        feats = block_features(bb, pixels, blocks, dtype)
        b, j = len(self._index), self._scale
        for k, i in enumerate(self._index):
            self.kept[f"{i}/{j}"] = torch.stack([feats[k], feats[b + k]] if self.flip else [feats[k]]).cpu()
        self._scale += 1
        return feats

    def batch(self, index: Sequence[int], scale: int, device: torch.device) -> Tensor:
        """The stored ``[V*b, L, h, w, width]`` features of a forward at ``scale``: the images ``index``, then
        their mirrors, as the frozen blocks returned them."""
        views = [self.stored[f"{i}/{scale}"] for i in index]
        rows = [v[0:1] for v in views] + ([v[1:2] for v in views] if self.flip else [])
        return torch.cat(rows).to(device)


def stored_view(head: Callable[[Tensor], Tensor], feats: Tensor, flip: bool) -> Tensor:
    """:func:`vpltool.decoder.views.view_logits` of stored features (``view`` of :func:`multiscale_logits`):
    ``[B, C + 1, h, w]`` float32 scores, each view's averaged with its mirror's."""
    return mirrored_mean(head(feats).float(), flip)


def expected_shapes(views: Sequence[Sequence[tuple[int, int]]], flip: bool, n_blocks: int, patch: int,
                    width: int) -> dict[str, tuple[int, ...]]:
    """``"<i>/<j>"`` -> the ``[V, L, h, w, width]`` shape of image i's view at scale j (``views[i][j]`` its ``(H,
    W)`` in pixels, cut to whole patches as :func:`decoder_forward` cuts them)."""
    v = 2 if flip else 1
    return {f"{i}/{j}": (v, n_blocks, max(1, h // patch), max(1, w // patch), width)
            for i, sizes in enumerate(views) for j, (h, w) in enumerate(sizes)}


@contextlib.contextmanager
def view_store(folder: str | Path, identity: dict[str, Any], images: Sequence[Path],
               shapes: dict[str, tuple[int, ...]], flip: bool, item_bytes: int = 4) -> Iterator[ViewFeatures]:
    """The run's :class:`ViewFeatures`: a store entry of ``identity`` and ``images`` (a hit, the lock free again),
    or (a miss, under the store's lock: one builder) an empty one, whose kept features are written to the store
    when the block ends without an error, every shape of ``shapes`` there. A miss whose features would take more
    than half the free memory (``item_bytes`` a number) is refused in one line before any CLIP runs."""
    path = entry_path(folder, store_key(identity, images))

    def check(tensors: dict[str, Tensor]) -> str | None:
        wrong = next((k for k, shape in shapes.items() if k not in tensors or tuple(tensors[k].shape) != shape), None)
        if wrong is not None or len(tensors) != len(shapes):
            return (f"of {len(tensors)} views ({wrong}: {tuple(tensors[wrong].shape) if wrong in tensors else None})"
                    if wrong else f"of {len(tensors)} views, not {len(shapes)}")
        return None

    with locked(folder):
        stored = read_entry(path, check)
        if stored is None:
            need = sum(math.prod(shape) for shape in shapes.values()) * item_bytes
            if need > 0.5 * available_memory():
                raise VplError(f"--feature-store {folder}: the frozen features of {len(images)} images' test views "
                               f"need {need / 2**30:.1f} GiB, more than half the free memory; predict without it")
            memo = ViewFeatures(flip)
            yield memo
            if set(memo.kept) == set(shapes):
                write_entry(path, memo.kept)
            return
    yield ViewFeatures(flip, stored)


"""The two rules of `sam-pseudo`: SAM's automatic masks merged into the CAM's label (SAM_WSSS), and SAM 3's
prompted masks gated by it. numpy only; one image at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...config import IGNORE_INDEX, SAM_COVERAGE

MASK_PROBABILITY = 0.5  # a pixel is inside a SAM 3 instance where its probability exceeds this (Meta's `masks`)


def merge_masks(start: np.ndarray, masks: np.ndarray, merge: str = "max-iou-imp2",
                coverage: float = SAM_COVERAGE) -> np.ndarray:
    """SAM_WSSS's merge of a CAM label with SAM's masks (cskyl/SAM_WSSS @4885dde, ``merge/max_iou*.py``).

    For each class ``c`` of ``start`` in increasing order, every mask no earlier class took whose pixels are more
    than half ``c`` (``2 |m ∩ P_c| > |m|``), or (``max-iou-imp2``) that holds at least ``coverage`` of ``P_c``, is
    taken by ``c`` and painted ``c``; ``max-iou-imp`` and ``-imp2`` also paint ``c`` where ``P_c`` lies outside
    every mask no earlier class took. A later class paints over an earlier one; the rest is background.

    Args:
        start: ``[H, W]`` uint8 CAM label: 0 background, class ids (255 is no class: such pixels end background
            unless a taken mask covers them, as in the released code, whose labels hold none).
        masks: ``[N, H, W]`` bool, SAM's masks (overlapping; their order does not matter).
        merge: ``max-iou-imp2`` | ``max-iou-imp`` | ``max-iou`` (:data:`vpltool.config.SAM_MERGES`).
        coverage: ``max-iou-imp2``'s share of a class's pixels that a mask must hold to be taken for it anyway.

    Returns:
        ``[H, W]`` uint8: 0 background or a class id of ``start``.
    """
    if masks.ndim != 3 or masks.shape[1:] != start.shape:
        raise ValueError(f"masks {masks.shape} do not fit a {start.shape} label")
    out = np.zeros_like(start)
    flat, label = masks.reshape(len(masks), start.size).astype(bool, copy=False), start.reshape(-1)
    painted = out.reshape(-1)
    area = np.count_nonzero(flat, axis=1)
    taken = np.zeros(len(masks), bool)
    for c in np.unique(label):
        if c in (0, IGNORE_INDEX):
            continue
        cls = label == c
        free = np.flatnonzero(~taken)
        inter = np.count_nonzero(flat[free] & cls, axis=1)
        pick = 2 * inter - area[free] > 0
        if merge == "max-iou-imp2":
            pick |= inter / np.count_nonzero(cls) >= coverage
        region = flat[free[pick]].any(0)
        if merge != "max-iou":  # the class's own pixels that no mask still free covers
            region |= cls & ~flat[free].any(0)
        painted[region] = c
        taken[free[pick]] = True
    return out


def prompted_masks(start: np.ndarray, found: Sequence[tuple[int, np.ndarray]], gate: float
                   ) -> tuple[np.ndarray, int, list[int]]:
    """SAM 3's rule: each image-level label's instances, gated by the CAM's label.

    An instance SAM 3 kept for label ``k`` (its pixels: probability above :data:`MASK_PROBABILITY`) stays when at
    least ``gate`` of its pixels carry ``k`` in ``start``. A pixel inside a staying instance takes the label of the
    most probable one there (ties: the earlier label); a label left with no instance (SAM 3 missed it, or the gate
    dropped them all) keeps its pixels of ``start``, under SAM 3's; everything else is background, the found
    labels' CAM pixels outside their instances included.

    Args:
        start: ``[H, W]`` uint8 CAM label (as :func:`merge_masks`'s).
        found: per image-level label ``(k, probs)``: ``probs`` ``[n, H, W]`` float, the mask probabilities of the
            instances SAM 3 kept for ``k``'s name (n may be 0).
        gate: share of an instance's pixels that must be ``k`` in ``start``.

    Returns:
        ``[H, W]`` uint8 label, the number of instances kept, and the labels left to the CAM.
    """
    best = np.zeros(start.shape, np.float32)
    owner = np.zeros(start.shape, np.uint8)
    kept, missed = 0, []
    for k, probs in found:
        inside = probs.reshape(len(probs), start.size) > MASK_PROBABILITY
        area = inside.sum(1)
        on_cam = (inside & (start.reshape(-1) == k)).sum(1)
        keep = (area > 0) & (on_cam >= gate * area)
        if not keep.any():
            missed.append(int(k))
            continue
        kept += int(keep.sum())
        top = probs[keep].max(0)
        better = (top > MASK_PROBABILITY) & (top > best)
        owner[better], best[better] = k, top[better]
    out = np.zeros_like(start)
    for k in missed:
        out[start == k] = k
    claimed = best > MASK_PROBABILITY
    out[claimed] = owner[claimed]
    return out, kept, missed


__all__ = ["MASK_PROBABILITY", "merge_masks", "prompted_masks"]

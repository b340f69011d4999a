"""SSR's superpixel-guided correction (SGC) of CAA: which patches may pass activation to each other.

SSR (Semantic and Spatial Rectification, AAAI 2026) publishes no code; docs/pipeline.md lists our reading and its
departures. SLIC superpixels of the image (scikit-image) are grouped by K-means over their mean Lab colour and
(optionally) centroid (:func:`superpixel_groups`); each patch takes the group most of its pixels fall in
(:func:`patch_majority`), and ``M[i, j] = 1`` when patches i and j share a group (:func:`group_mask`). CAA then
propagates with ``T * M`` (:func:`vpltool.stages.cam.caa.caa_transition`): activation does not cross groups.
"""

from __future__ import annotations

import numpy as np
import torch


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """``[n]`` int64 cluster of each row of ``x`` ``[n, d]`` float: Lloyd's K-means from a seeded k-means++ start
    (deterministic for a given ``seed``); fewer than ``k`` clusters when ``x`` has fewer distinct rows."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, min(k, len(x))):
        d2 = ((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(1)
        if d2.sum() <= 0:  # every row already sits on a centre
            break
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.asarray(centres)
    labels = np.full(len(x), -1)
    for _ in range(iters):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(len(c))])
    return labels.astype(np.int64)


def patch_majority(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``[h*w]`` int64: the most frequent value of ``labels`` ``[H, W]`` (non-negative ints) inside each patch of an
    ``h x w`` grid laid over the whole image (pixel row ``y`` falls in patch row ``y * h // H``); ties go to the
    smaller value. A patch no pixel falls in (a grid finer than the image) takes the pixel at its centre."""
    (big_h, big_w), (h, w) = labels.shape, grid
    patch = ((np.arange(big_h) * h) // big_h)[:, None] * w + ((np.arange(big_w) * w) // big_w)[None, :]
    n = int(labels.max()) + 1
    counts = np.bincount((patch * n + labels).ravel(), minlength=h * w * n).reshape(h * w, n)
    out = counts.argmax(1)
    empty = counts.sum(1) == 0
    if empty.any():
        ys = ((np.arange(h) + 0.5) * big_h / h).astype(int).clip(0, big_h - 1)
        xs = ((np.arange(w) + 0.5) * big_w / w).astype(int).clip(0, big_w - 1)
        out[empty] = labels[ys[:, None], xs[None, :]].ravel()[empty]
    return out.astype(np.int64)


def superpixel_features(image: np.ndarray, segments: np.ndarray, position: float) -> np.ndarray:
    """``[S, 5]`` float64 per superpixel: mean CIE-Lab colour (L in [0, 100]) and ``position * 100 *`` centroid
    ``(y, x)`` divided by the image's longer side, so ``position`` 1 weighs one image side like the full L range."""
    from skimage.color import rgb2lab

    seg = segments.ravel()
    n = int(seg.max()) + 1
    counts = np.bincount(seg, minlength=n).clip(1)[:, None]
    lab = rgb2lab(image).reshape(-1, 3)
    colour = np.stack([np.bincount(seg, lab[:, c], n) for c in range(3)], 1) / counts
    ys, xs = np.indices(segments.shape)
    centre = np.stack([np.bincount(seg, ys.ravel(), n), np.bincount(seg, xs.ravel(), n)], 1) / counts
    return np.concatenate([colour, centre * (position * 100.0 / max(segments.shape))], 1)


def superpixel_groups(image: np.ndarray, grid: tuple[int, int], n_segments: int, n_clusters: int,
                      compactness: float = 10.0, position: float = 0.5, seed: int = 0) -> np.ndarray:
    """SSR's spatial prior: ``[h*w]`` int64 group of each patch.

    SLIC superpixels of ``image`` ``[H, W, 3]`` uint8 (scikit-image, ``n_segments``, ``compactness``), K-means
    (``n_clusters``, seeded) over :func:`superpixel_features`, then each patch of the ``grid`` takes the group most
    of its pixels belong to (:func:`patch_majority`).
    """
    from skimage.segmentation import slic

    segments = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
    groups = kmeans(superpixel_features(image, segments, position), n_clusters, seed=seed)
    return patch_majority(groups[segments], grid)


def group_mask(groups: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[n, n]`` float32 in {0, 1}: ``M[i, j] = 1`` when ``groups[i] == groups[j]`` (``groups`` ``[n]`` ints)."""
    g = torch.as_tensor(groups)
    return (g[:, None] == g[None, :]).float()



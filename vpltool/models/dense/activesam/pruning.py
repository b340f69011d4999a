"""ActiveSAM's preview-driven class selection and bucket schedule (``activesam/pruning/``, read and restated).

The preview scores each query word's presence on a low-resolution view (SAM 3's presence head alone: the
segmentation head is skipped there); the words at or above the ``1 - alpha`` quantile of those scores stay
active, at most ``max_active`` of them (the highest), and only those are decoded at full resolution, in buckets.
"""

from __future__ import annotations

import torch


def buckets(n: int, size: int) -> list[list[int]]:
    """``range(n)`` in consecutive runs of ``size`` (the last shorter): the prompts decoded in one forward."""
    if n <= 0 or size <= 0:
        raise ValueError(f"buckets: n {n} and size {size} must be positive")
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def needs_preview(n_queries: int, max_active: int) -> bool:
    """Whether a vocabulary of ``n_queries`` words is pruned at all (larger than ``max_active``)."""
    return n_queries > max_active


def active_words(scores: torch.Tensor, alpha: float, max_active: int) -> list[int]:
    """``[Q]`` presence scores in [0, 1] -> the sorted indices kept: those at or above the scores' ``1 - alpha``
    quantile (torch's linear interpolation) or, when none is, the top one; of more than ``max_active``, the
    ``max_active`` highest (torch.topk's order among ties)."""
    scores = scores.float()
    tau = float(scores.quantile(1.0 - alpha).item())
    index = torch.where(scores >= tau)[0]
    if index.numel() == 0:
        return [int(scores.argmax().item())]
    if index.numel() > max_active:
        index = index[torch.topk(scores[index], k=max_active).indices]
    return sorted(int(v) for v in index.tolist())


__all__ = ["buckets", "needs_preview", "active_words"]

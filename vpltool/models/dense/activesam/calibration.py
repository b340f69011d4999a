"""What follows the per-word score maps in both SAM 3 methods (``activesam/model/base.py``'s ``predict`` and
``activesam/background/mabc.py``, read and restated): the words of a class collapsed onto it by their max, the
argmax, and the background rule: the top score under a threshold (the "SAM 3" row) or ActiveSAM's margin-aware
background calibration.
"""

from __future__ import annotations

import torch


def class_scores(scores: torch.Tensor, query_class: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[Q, H, W]`` per-word scores in [0, 1] and ``[Q]`` int64 each word's class -> ``[C, H, W]``: each class the
    max of its words (the reference's one-hot product: a class without a word scores 0, as a score is >= 0), or the
    scores themselves when every class has one word in class order."""
    query_class = query_class.to(scores.device)
    if len(query_class) == n_classes and bool((query_class == torch.arange(n_classes, device=scores.device)).all()):
        return scores
    index = query_class.view(-1, 1, 1).expand_as(scores)
    out = scores.new_zeros(n_classes, *scores.shape[1:])
    return out.scatter_reduce_(0, index, scores, "amax", include_self=True)


def threshold_background(probs: torch.Tensor, threshold: float, background: int = 0) -> torch.Tensor:
    """``[C, H, W]`` -> ``[H, W]`` int64: the argmax, ``background`` where the top score is below ``threshold``."""
    labels = probs.argmax(0)  # the first of equal scores, as torch.argmax (the reference's)
    return labels.masked_fill_(probs.amax(0) < threshold, background)


def mabc_labels(probs: torch.Tensor, threshold: float, exponent: float, background: int = 0) -> torch.Tensor:
    """Margin-aware background calibration: ``[C, H, W]`` -> ``[H, W]`` int64, the argmax, ``background`` where
    ``s1 * sqrt(max(s1 - s2, 0)) < threshold ** exponent`` (``s1 >= s2`` the two top scores); off (the argmax) for
    ``threshold <= 0`` or a single class."""
    labels = probs.argmax(0)
    if threshold <= 0 or probs.shape[0] < 2:
        return labels
    top = probs.topk(2, dim=0).values
    energy = top[0] * (top[0] - top[1]).clamp_min(0).sqrt()
    return labels.masked_fill_(energy < float(threshold) ** float(exponent), background)


__all__ = ["class_scores", "threshold_background", "mabc_labels"]

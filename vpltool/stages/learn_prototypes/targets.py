"""VPL phase 1 targets: what the text-prototype CAMs say each pixel is (the paper's P', Eq. 7), and sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...ops.kernels import background_score


def pool_cams(cams: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Area-average ``[K, H0, W0]`` CAMs onto the ``(h, w)`` patch grid; returns ``[K, h*w]`` float32 in [0, 1]."""
    if len(cams) == 0:
        return torch.zeros(0, grid[0] * grid[1])
    return F.adaptive_avg_pool2d(cams.float()[None], grid)[0].flatten(1)


def make_targets(cams: torch.Tensor, x: torch.Tensor, bg_prototypes: torch.Tensor, tau_t: float, mode: str = "hard",
                 threshold: float = 0.4, bg_exponent: float = 1.0) -> torch.Tensor:
    """Per-pixel target distributions over ``[K present classes; M background rows]``.

    Args:
        cams: ``[K, hw]`` float in [0, 1], text-prototype CAMs on the patch grid (see :func:`pool_cams`).
        x: ``[hw, D]`` L2-normalised pixel features.
        bg_prototypes: ``[M, D]`` unit background rows of the text prototypes, M >= 1.
        tau_t: the text prototypes' temperature (1 / CLIP logit scale).
        mode: 'hard' (paper: class argmax where ``max cam >= threshold``, else background) or 'soft'
            (``[cams, (1 - max cam) ** bg_exponent]`` normalised per pixel).

    Returns:
        ``[hw, K + M]`` float32, rows sum to 1.
    """
    hw, k = x.shape[0], cams.shape[0]
    peak, arg = cams.max(0) if k else (torch.zeros(hw), torch.zeros(hw, dtype=torch.long))
    if mode == "hard":
        fg = peak >= threshold if k else torch.zeros(hw, dtype=torch.bool)
        cls = torch.zeros(hw, k)
        cls[fg.nonzero().flatten(), arg[fg]] = 1.0
        bg = (~fg).float()
    elif mode == "soft":
        bg = background_score(peak, bg_exponent)
        total = (cams.sum(0) + bg).clamp_min(1e-12)
        cls, bg = (cams / total).T, bg / total
    else:
        raise ValueError(f"targets mode {mode!r}: hard or soft")
    # background words keep their meaning: each gets the share the text prototypes give it at this pixel
    split = (x.float() @ bg_prototypes.float().T / tau_t).softmax(1)  # [hw, M]
    return torch.cat([cls, bg[:, None] * split], 1)


def hard_labels(cams: torch.Tensor, labels: Sequence[int], threshold: float) -> torch.Tensor:
    """``[hw]`` int64 class id (0 = background) of the hard target rule, whatever the targets mode."""
    if len(labels) == 0:
        return torch.zeros(cams.shape[1], dtype=torch.long)
    peak, arg = cams.max(0)
    return torch.where(peak >= threshold, torch.as_tensor(list(labels))[arg], 0)


def sampled_count(n: int, fraction: float) -> int:
    """Pixels an image of ``n`` keeps under ``--pixel-fraction``: ``round(fraction * n)``, at least one."""
    return max(1, round(fraction * n))


def sample_pixels(tensors: tuple[torch.Tensor, ...], fraction: float, seed: int, index: int
                  ) -> tuple[torch.Tensor, ...]:
    """The same ``round(fraction * n)`` rows (at least one, in order) of each ``[n, ...]`` tensor.

    Drawn from ``(seed, index)`` alone, so a run is reproducible and an image's sample does not depend on which
    other images are in the set.
    """
    n = len(tensors[0])
    keep = sampled_count(n, fraction)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    rows = torch.randperm(n, generator=gen)[:keep].sort().values
    return tuple(tensor[rows] for tensor in tensors)

"""Windowed attention as an additive mask, shared by the families whose early blocks keep patch tokens local (the
toy CLIP's blocks, the pgseg family's ``attention_window``)."""

from __future__ import annotations

import functools

import torch

_KEPT = 1 << 24  # masks of at most this many entries (64 MiB) are made once a process (every block asks again)


def window_attention_mask(h: int, w: int, size: int, *, lead: int = 0, trail: int = 0) -> torch.Tensor:
    """``[L, L]`` float32 additive mask, ``L = lead + h*w + trail``, over ``lead`` global tokens (a CLS), the
    ``h x w`` patch tokens row by row, then ``trail`` global tokens (GroupViT's group tokens): a patch token sees
    the patches of its ``size x size`` neighbourhood alone (``0``; ``-inf`` elsewhere, the global tokens too, so
    that what it carries stays local), a global token sees every token. A new tensor each call (the caller's)."""
    n = lead + h * w + trail
    if n * n > _KEPT:
        return _mask(h, w, size, lead, trail)
    return _kept_mask(h, w, size, lead, trail).clone()


@functools.lru_cache(maxsize=4)
def _kept_mask(h: int, w: int, size: int, lead: int, trail: int) -> torch.Tensor:
    return _mask(h, w, size, lead, trail)


def _mask(h: int, w: int, size: int, lead: int, trail: int) -> torch.Tensor:
    r = size // 2
    rows, cols = torch.arange(h), torch.arange(w)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= r  # [h, h]: rows within the window of each other
    near_cols = (cols[:, None] - cols[None, :]).abs() <= r  # [w, w]
    # patch (i, j) sees patch (k, l) where rows i, k and columns j, l are near: [h*w, h*w], row by row
    near = (near_rows[:, None, :, None] & near_cols[None, :, None, :]).reshape(h * w, h * w)
    n = lead + h * w + trail
    allowed = torch.ones(n, n, dtype=torch.bool)
    patches = slice(lead, lead + h * w)
    allowed[patches] = False
    allowed[patches, patches] = near
    return torch.zeros(n, n).masked_fill_(~allowed, float("-inf"))

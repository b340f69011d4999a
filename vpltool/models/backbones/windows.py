"""Windowed attention as an additive mask, shared by the families whose early blocks keep patch tokens local (the
toy CLIP's blocks, the pgseg family's ``attention_window``)."""

from __future__ import annotations

import torch


def window_attention_mask(h: int, w: int, size: int, *, lead: int = 0, trail: int = 0) -> torch.Tensor:
    """``[L, L]`` float32 additive mask, ``L = lead + h*w + trail``, over ``lead`` global tokens (a CLS), the
    ``h x w`` patch tokens row by row, then ``trail`` global tokens (GroupViT's group tokens): a patch token sees
    the patches of its ``size x size`` neighbourhood alone (``0``; ``-inf`` elsewhere, the global tokens too, so
    that what it carries stays local), a global token sees every token."""
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    r = size // 2
    near = ((rows[:, None] - rows[None, :]).abs() <= r) & ((cols[:, None] - cols[None, :]).abs() <= r)
    n = lead + h * w + trail
    allowed = torch.ones(n, n, dtype=torch.bool)
    patches = slice(lead, lead + h * w)
    allowed[patches] = False
    allowed[patches, patches] = near
    return torch.zeros(n, n).masked_fill_(~allowed, float("-inf"))

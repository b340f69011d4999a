"""Mimetic initialisation of attention's query-key half (Trockman & Kolter, ICML 2023), shared by the model
families that use it (the toy CLIP's blocks, the pgseg family's ``qk_init``).

Why: with ``W_q = W_k`` the logit ``q . k`` starts as a similarity kernel of the two tokens, so a token attends to
(or, in GroupViT's assignment, is assigned to) what looks like it from the first step; at the usual init the logits
are near 0 and every map uniform.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def equal_query_key(w_q: torch.Tensor, w_k: torch.Tensor, b_q: torch.Tensor | None, b_k: torch.Tensor | None,
                    gain: float) -> None:
    """In place: ``W_q = W_k = gain * G / sqrt(width)`` (``[width, width]``, G standard normal, one draw from
    torch's global RNG), the query and key biases 0."""
    width = w_q.shape[1]
    w = torch.randn(width, width) * (gain / math.sqrt(width))
    w_q.copy_(w)
    w_k.copy_(w)
    for bias in (b_q, b_k):
        if bias is not None:
            bias.zero_()


__all__ = ["equal_query_key"]

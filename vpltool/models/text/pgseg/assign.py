"""GroupViT's assignment of image tokens to groups (:class:`AssignAttention`) and what it draws on: the straight-
through hard softmax, the reference's gumbel noise, and the farthest-point seeds of ``assign_init`` "tokens".

Written after GroupViT (NVlabs/GroupViT ``models/group_vit.py``); arithmetic follows it operation for operation
(the parity runner checks it to 1e-5 in fp32). Shapes: ``B`` images, ``L`` image tokens, ``G`` groups, ``C``
width; float32 unless said.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hard_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Straight-through one-hot of the softmax's argmax along ``dim`` (values 0/1 forward, softmax gradient)."""
    y_soft = logits.softmax(dim)
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1) -> torch.Tensor:
    """Gumbel-softmax as GroupViT draws it: noise from ``torch.distributions.Gumbel(0, 1)`` (the same generator calls
    as the reference, so a seeded run draws the same noise), straight-through when ``hard``."""
    gumbel = torch.distributions.gumbel.Gumbel(torch.tensor(0.0, device=logits.device, dtype=logits.dtype),
                                               torch.tensor(1.0, device=logits.device, dtype=logits.dtype))
    y_soft = ((logits + gumbel.sample(logits.shape)) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


@torch.no_grad()
def farthest_point_seeds(keys: torch.Tensor, count: int) -> torch.Tensor:
    """``[B, L, c]`` -> ``[B, count]`` int64: farthest-point seeds in each image's key space (no gradient). The
    first is the key farthest from the image's mean key (an object among a large background), each next one the
    key farthest from every seed chosen so far: k-means++'s spread without its draw, so a run stays seeded alike."""
    b, n, c = keys.shape
    seeds = torch.empty(b, count, dtype=torch.long, device=keys.device)
    nearest = (keys - keys.mean(1, keepdim=True)).pow(2).sum(-1)  # [B, L]: the first seed's score
    for j in range(count):
        seeds[:, j] = nearest.argmax(1)
        chosen = keys.gather(1, seeds[:, j, None, None].expand(b, 1, c))  # [B, 1, c]
        gap = (keys - chosen).pow(2).sum(-1)
        nearest = gap if j == 0 else torch.minimum(nearest, gap)
    return seeds


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C // heads]``."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N, c]`` -> ``[B, N, heads * c]``."""
    b, h, n, c = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * c)


class AssignAttention(nn.Module):
    """One-head assignment of image tokens to groups: softmax over the GROUP axis (each token picks a group),
    gumbel + straight-through hard in training, hard argmax in eval; then ``attn / (sum over tokens + eps)``.

    Returns ``(out [B, G, C], {'hard': [B, 1, G, L], 'soft': [B, 1, G, L]})``: ``soft`` is the plain softmax over
    groups (what zero-shot segmentation reads), ``hard`` the assignment used.
    """

    def __init__(self, dim: int, qkv_bias: bool = True, hard: bool = True, gumbel: bool = True,
                 gumbel_tau: float = 1.0, assign_eps: float = 1.0, iters: int = 1, metric: str = "dot",
                 init: str = "query"):
        super().__init__()
        self.num_heads = 1
        self.scale = dim ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.hard, self.gumbel, self.gumbel_tau, self.assign_eps = hard, gumbel, gumbel_tau, assign_eps
        self.iters, self.metric, self.init = iters, metric, init

    def _logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``[B, 1, G, c]``, ``[B, 1, L, c]`` -> ``[B, 1, G, L]``: ``q . k`` scaled (the reference's), or with
        ``metric`` "distance" ``q . k - |q|^2 / 2`` scaled, which differs from ``-|q - k|^2 / 2`` by a term of the
        token alone: over the groups it is the nearest-centre (k-means) assignment, where in the dot product the
        query of largest norm takes every token on its side."""
        raw = q @ k.transpose(-2, -1)
        if self.metric == "distance":
            raw = raw - 0.5 * q.pow(2).sum(-1, keepdim=True)
        return raw * self.scale

    def _assign(self, raw: torch.Tensor, gumbel: bool, hard: bool) -> torch.Tensor:
        if gumbel and self.training:
            return gumbel_softmax(raw, dim=-2, hard=hard, tau=self.gumbel_tau)
        return hard_softmax(raw, dim=-2) if hard else F.softmax(raw, dim=-2)

    def _token_centres(self, k: torch.Tensor, groups: int) -> torch.Tensor:
        """``init`` "tokens": ``[B, 1, L, c]`` keys -> ``[B, 1, G, c]`` centres: farthest-point seeds among the
        keys, then ``iters - 1`` hard k-means steps (each centre the mean key of the tokens nearest it; the choice
        carries no gradient, the means do; a centre that holds no token stays where it is)."""
        seeds = farthest_point_seeds(k[:, 0].detach(), groups)  # [B, G]
        q = k[:, 0].gather(1, seeds[..., None].expand(-1, -1, k.shape[-1]))[:, None]  # [B, 1, G, c]
        for _ in range(self.iters - 1):
            with torch.no_grad():
                near = torch.cdist(k[:, 0], q[:, 0]).argmin(-1)  # [B, L]
                member = F.one_hot(near, groups).transpose(1, 2)[:, None].to(k.dtype)  # [B, 1, G, L]
                mass = member.sum(-1, keepdim=True)
            q = torch.where(mass > 0, (member @ k) / mass.clamp(min=1), q)
        return q

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k, v = split_heads(self.k_proj(key), 1), split_heads(self.v_proj(key), 1)
        if self.init == "tokens":  # the centres come from this image's tokens, not from the group tokens
            raw = self._logits(self._token_centres(k, query.shape[1]), k)
        else:
            q = split_heads(self.q_proj(query), 1)
            raw = self._logits(q, k)  # [B, 1, G, L]
            for _ in range(self.iters - 1):  # k-means steps in the key space: each query moves to its tokens' mean
                soft = F.softmax(raw, dim=-2)  # [B, 1, G, L]
                mass = soft.sum(-1, keepdim=True)  # [B, 1, G, 1]
                # a group that holds (almost) no token keeps its query: a mean over nothing is no centre
                q = torch.where(mass > 1e-3, (soft @ k) / mass.clamp(min=1e-3), q)
                raw = self._logits(q, k)
        attn = self._assign(raw, self.gumbel, self.hard)
        maps = {"hard": attn.clone(), "soft": self._assign(raw, gumbel=False, hard=False)}
        attn = self.attn_drop(attn / (attn.sum(dim=-1, keepdim=True) + self.assign_eps))
        return self.proj_drop(self.proj(merge_heads(attn @ v))), maps

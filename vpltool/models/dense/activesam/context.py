"""ActiveSAM's context memory bank (``activesam/prompt_expansion/memory_bank.py``, ``neighbor_tokens.py``,
``hypernym_tokens.py``, read and restated): per class a few extra text tokens appended to its concept prompt's token
sequence before SAM 3's grounding decoder reads it.

Two banks, their tokens concatenated in this order:

1. **semantic neighbours** (``neighbor_tokens`` M1): each query word's pooled text embedding ``e`` (the mean of
   its prompt's token embeddings, before the text transformer, over the non-padding tokens); the cosine of every
   pair, the word itself excluded; its M1 nearest, weighted by the softmax of their cosines, each through SAM 3's
   text resizer (the text encoder's ``width -> d`` linear layer), every token attended;
2. **WordNet hypernyms** (``hypernym_tokens`` M2): each word's first-sense hypernyms
   (:func:`~.vocabulary.hypernyms`), each hypernym's pooled embedding through the resizer; a class with fewer
   hypernyms has its missing slots masked (zeros, not attended).

Shapes: ``Q`` query words, ``D`` the text encoder's width, ``d`` the prompt width (256), ``M = M1 + M2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def pooled_embeddings(embeds: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """``[K, L, D]`` token embeddings and ``[K, L]`` bool padding (True = pad) -> ``[K, D]`` each prompt's mean over
    its non-padding tokens (at least one counted)."""
    valid = (~padding).to(embeds.dtype)[..., None]
    return (embeds * valid).sum(1) / valid.sum(1).clamp_min(1.0)


def neighbor_tokens(pooled: torch.Tensor, resizer: nn.Module, count: int) -> torch.Tensor:
    """``[Q, D]`` pooled embeddings -> ``[Q, count, d]``: per word its ``count`` nearest other words by cosine
    (ties: torch.topk's order), each embedding scaled by the softmax of the kept cosines, through ``resizer``.

    With ``count >= Q`` the word itself fills a slot at cosine -inf, so weight 0 (the reference's arithmetic, the
    resizer's image of a zero embedding); the reference's ``topk`` fails where ``count > Q``: the slots past Q are
    such zero-weight slots too, and a lone word's softmax over nothing but -inf (NaN) is zero weights."""
    unit = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    sim = unit @ unit.T
    sim.fill_diagonal_(-float("inf"))
    values, index = sim.topk(min(count, sim.shape[1]), dim=1)
    weights = values.softmax(dim=1).nan_to_num(0.0)
    if index.shape[1] < count:  # fewer words than neighbour slots
        pad = count - index.shape[1]
        index = torch.cat([index, index.new_zeros(index.shape[0], pad)], dim=1)
        weights = torch.cat([weights, weights.new_zeros(weights.shape[0], pad)], dim=1)
    return resizer(pooled[index] * weights[..., None]).float()


@dataclass(frozen=True)
class ContextBank:
    """The bank of one vocabulary: ``neighbors`` ``[Q, M1, d]`` (None: M1 = 0), ``hypernyms`` ``[Q, M2, d]`` and
    ``has_hypernym`` ``[Q, M2]`` bool (None: M2 = 0, or no word has a hypernym), float32."""

    neighbors: torch.Tensor | None
    hypernyms: torch.Tensor | None
    has_hypernym: torch.Tensor | None

    def tokens(self, words: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The extra tokens of one bucket of query words (indices ``words``, K of them): ``[M, K, d]`` tokens
        (sequence first, as SAM 3's text features) and ``[K, M]`` bool padding (True = not attended); None when
        the bank holds none."""
        index = torch.as_tensor(list(words), dtype=torch.long)
        parts = []
        if self.neighbors is not None:
            tok = self.neighbors[index.to(self.neighbors.device)]
            parts.append((tok.transpose(0, 1), torch.zeros(len(index), tok.shape[1], dtype=torch.bool,
                                                            device=tok.device)))
        if self.hypernyms is not None:
            has = self.has_hypernym[index.to(self.hypernyms.device)]
            tok = self.hypernyms[index.to(self.hypernyms.device)] * has[..., None]
            parts.append((tok.transpose(0, 1), ~has))
        if not parts:
            return None
        return torch.cat([t for t, _ in parts]), torch.cat([m for _, m in parts], dim=1)

    def to(self, device) -> ContextBank:
        def move(t):
            return None if t is None else t.to(device)

        return ContextBank(move(self.neighbors), move(self.hypernyms), move(self.has_hypernym))


def context_bank(words: Sequence[str], pooled_of: Callable[[list[str]], torch.Tensor], resizer: nn.Module,
                 n_neighbors: int, n_hypernyms: int, hypernyms_of: Callable[[str, int], list[str]]) -> ContextBank:
    """The bank of the query ``words`` (already canonical: what the text encoder reads): ``pooled_of(strings)`` ->
    ``[n, D]`` pooled embeddings (:func:`pooled_embeddings` of the text encoder's token embeddings),
    ``hypernyms_of(word, count)`` its hypernyms' names (canonicalised by the caller as the encoder reads them)."""
    pooled = pooled_of(list(words)).float()
    weight = next(resizer.parameters())
    neighbors = (neighbor_tokens(pooled, resizer, n_neighbors) if n_neighbors > 0 and len(words) else None)
    if n_hypernyms <= 0:
        return ContextBank(neighbors, None, None)
    per_word = [hypernyms_of(w, n_hypernyms) for w in words]
    unique = list(dict.fromkeys(h for hs in per_word for h in hs))
    if not unique:
        return ContextBank(neighbors, None, None)
    table = pooled_of(unique).float()
    position = {h: i for i, h in enumerate(unique)}
    raw = table.new_zeros(len(words), n_hypernyms, table.shape[-1])
    has = torch.zeros(len(words), n_hypernyms, dtype=torch.bool, device=table.device)
    for c, hs in enumerate(per_word):
        for m, h in enumerate(hs[:n_hypernyms]):
            raw[c, m], has[c, m] = table[position[h]], True
    return ContextBank(neighbors, resizer(raw.to(weight.dtype)).float(), has)


__all__ = ["pooled_embeddings", "neighbor_tokens", "ContextBank", "context_bank"]

"""The targets of the pgseg family's contrastive losses: which texts of a batch are positives of which
(``--multi-positive``), which noun prompts are distinct, and the one-to-one match of noun prompts to groups with the
loss read group by group (``--multi-label-pool match``). Float32 unless said; ``Gather``: the cross-rank all-gather
that passes gradients (None: one process)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .npr import Gather


def gathered_ids(tokens: torch.Tensor, gather: Gather | None) -> torch.Tensor:
    """Every rank's token ids, rank by rank (exact through float32: ids < 2**24)."""
    if gather is None:
        return tokens
    return gather(tokens.float()).round().long()


def positive_targets(own: torch.Tensor, batch: torch.Tensor, per: str = "text") -> torch.Tensor:
    """Multi-positive targets from token ids: ``own`` ``[R, A, L]`` (each row's own texts), ``batch`` ``[N, C, L]``
    (every sample's texts). ``per="text"`` -> ``[R, N * C]``: weight ``1 / n`` on each of the ``n`` texts ``(j, c)``
    equal to one of row ``r``'s own ``A`` texts; ``per="sample"`` -> ``[R, N]``: ``1 / n`` on each of the ``n``
    samples ``j`` one of whose texts equals one of row ``r``'s. float32, 0 elsewhere, rows sum to 1."""
    same = (own[:, None, :, None, :] == batch[None, :, None, :, :]).all(-1).any(2)  # [R, N, C]
    same = (same.flatten(1) if per == "text" else same.any(2)).float()
    return same / same.sum(1, keepdim=True).clamp(min=1)


def distinct_prompts(prompts: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
    """``[B, K, L]`` prompt ids and ``[B, L]`` caption ids -> ``[B, K]`` bool: the prompt is a noun prompt (not the
    caption that pads a caption of fewer than K nouns) and not a repeat of an earlier prompt of its image."""
    not_caption = ~(prompts == caption[:, None]).all(-1)
    equal = (prompts[:, :, None] == prompts[:, None]).all(-1)  # [B, K, K]
    earlier = torch.tril(equal, diagonal=-1).any(-1)
    return not_caption & ~earlier


def match_groups(similarity: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, K, G]`` prompt-group similarities, ``[B, K]`` bool -> ``[B, K]`` int64: each image's valid prompts
    assigned to distinct groups so that their summed similarity is largest (the Hungarian method:
    ``scipy.optimize.linear_sum_assignment``); an invalid prompt's entry is 0 and never read."""
    from scipy.optimize import linear_sum_assignment

    sim = similarity.float().cpu().numpy()
    keep = valid.cpu().numpy()
    out = torch.zeros(valid.shape, dtype=torch.long)
    for i in range(sim.shape[0]):
        k = keep[i].nonzero()[0]
        if len(k):
            rows, cols = linear_sum_assignment(sim[i, k], maximize=True)
            out[i, torch.as_tensor(k[rows])] = torch.as_tensor(cols, dtype=torch.long)
    return out.to(similarity.device)


def _rows_sum_to_one(target: torch.Tensor) -> torch.Tensor:
    return target / target.sum(1, keepdim=True).clamp(min=1e-12)


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's ``SoftTargetCrossEntropy``: the mean over rows of ``-sum(target * log_softmax(logits))``."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def matched_label_loss(group_feat: torch.Tensor, text_feat: torch.Tensor, tokens: torch.Tensor, scale: torch.Tensor,
                       gather: Gather | None = None) -> torch.Tensor:
    """The multi-label loss read group by group (``cfg.multi_label_pool`` "match"; not the reference's).

    Args:
        group_feat: ``[B, G, D]`` each final group projected, unnormalised.
        text_feat: ``[B, K, D]`` the noun prompts projected, unnormalised.
        tokens: ``[B, 1 + K, L]`` int64, the caption then its prompts (a prompt equal to the caption is the
            reference's padding, and a repeat of an earlier prompt of the image is the same noun: neither has
            a row).

    Each image's distinct prompts take distinct groups, the one-to-one assignment of largest summed cosine
    (:func:`match_groups`, no gradient). Then a symmetric soft cross-entropy over the batch (every rank's):
    a prompt against every group, its target spread over the groups matched to a prompt with its ids; a
    matched group against every valid prompt, its target spread over the prompts with its prompt's ids. Every
    other group of the image is a negative, so the nouns of one image pull apart into groups of their own.
    ``scale``: the logits' scale (a 0-d tensor). Returns a scalar float32 (0 with no valid prompt).
    """
    b, g, _ = group_feat.shape
    groups = F.normalize(group_feat, dim=-1)
    text = F.normalize(text_feat, dim=-1)
    prompts = tokens[:, 1:]  # [B, K, L]
    valid = distinct_prompts(prompts, tokens[:, 0])  # [B, K] bool
    matched = match_groups(torch.einsum("bkd,bgd->bkg", text, groups).detach(), valid)  # [B, K] int64
    if gather is not None:
        all_groups, all_text = gather(groups), gather(text)
        all_prompts, all_valid = gathered_ids(prompts, gather), gathered_ids(valid.long(), gather).bool()
        all_matched = gathered_ids(matched, gather)
    else:
        all_groups, all_text, all_prompts, all_valid, all_matched = groups, text, prompts, valid, matched
    n = all_groups.shape[0]
    # which valid prompts of the batch are the same text: [B, K, N, K]
    same = (prompts[:, :, None, None] == all_prompts[None, None]).all(-1) & valid[:, :, None, None] & \
        all_valid[None, None]
    # prompt -> groups: the groups matched to an equal prompt, [B, K, N, G]
    to_group = torch.zeros(b, prompts.shape[1], n, g, dtype=groups.dtype, device=groups.device)
    to_group.scatter_add_(3, all_matched[None, None].expand(b, prompts.shape[1], -1, -1),
                          same.to(groups.dtype))
    if not bool(valid.any()):
        return group_feat.sum() * 0.0
    t2g = torch.einsum("bkd,ngd->bkng", text, all_groups).flatten(2)[valid] * scale  # [P, N G]
    target_t2g = to_group.flatten(2)[valid]
    # matched group -> prompts: the valid prompts equal to its own, [P, N K]
    own = torch.gather(groups, 1, matched[..., None].expand(-1, -1, groups.shape[-1]))[valid]  # [P, D]
    g2t = (own @ all_text.flatten(0, 1).t()) * scale
    g2t = g2t.masked_fill(~all_valid.flatten()[None], float("-inf"))
    target_g2t = same.flatten(2)[valid].to(groups.dtype)
    return 0.5 * (soft_target_ce(t2g, _rows_sum_to_one(target_t2g))
                  + soft_target_ce(g2t.clamp(min=-1e4), _rows_sum_to_one(target_g2t)))


__all__ = ["gathered_ids", "positive_targets", "distinct_prompts", "match_groups", "soft_target_ce",
           "matched_label_loss"]

"""The losses of VPL phase 2 (Eq. 14: CE + regional semantic contrast) and SSR's CMPA.

* :func:`ce_loss`, :func:`balanced_ce_loss`: pixel cross-entropy on the pseudo masks (255 ignored).
* :func:`rsc_loss` (Eq. 13, the reading of docs/decoder.md): each region embedding (the decoder's own soft mask,
  :func:`region_masks`, pooling V: :func:`region_embeddings`) is pulled to its class row of W and pushed from the
  other rows.
* :func:`cmpa_loss` (SSR, AAAI 2026; our reading, docs/decoder.md): pseudo-mask regions against W's class rows and
  an image-prototype bank (:func:`refresh_bank`, per class :func:`spherical_kmeans` of region embeddings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import IGNORE_INDEX
from .network import SegDecoder


def ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel cross-entropy, 255 ignored; 0 (not NaN) when every pixel is ignored.

    Args:
        logits: ``[B, C + 1, H, W]`` float.
        target: ``[B, H, W]`` int64 in 0..C or 255.
    """
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (target != IGNORE_INDEX).sum().clamp_min(1)


def balanced_ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """WeCLIP/AFA's ``0.5 * (CE over background pixels + CE over foreground pixels)``, 255 ignored.

    Background-heavy pseudo masks otherwise teach the decoder to say background; a part without pixels adds 0.
    """
    bg = target.masked_fill(target != 0, IGNORE_INDEX)
    fg = target.masked_fill(target == 0, IGNORE_INDEX)
    return 0.5 * (ce_loss(logits, bg) + ce_loss(logits, fg))


def present_classes(target: Tensor, n_classes: int) -> Tensor:
    """``[B, H, W]`` int64 masks -> ``[B, n_classes]`` bool: which classes have a pixel (255 ignored)."""
    valid = target.masked_fill(target == IGNORE_INDEX, n_classes).flatten(1)  # 255 -> a spare bin
    counts = torch.zeros(len(target), n_classes + 1, dtype=torch.long, device=target.device)
    counts.scatter_add_(1, valid, torch.ones_like(valid))
    return counts[:, :n_classes] > 0


def region_masks(logits: Tensor, present: Tensor) -> Tensor:
    """Soft region masks from the scores A (Eq. 12): softmax over background + the classes of the image.

    Restricting the softmax to the image's classes (as CAMs use image-level labels) stops an absent class from
    claiming pixels. The masks are not detached: as in Eq. 12, RSC's gradient reaches V through the pooled
    values and through A (on the demo world detaching scored lower; docs/decoder.md).

    Args:
        logits: ``[B, C + 1, h, w]``; present: ``[B, C + 1]`` bool (background is always kept).

    Returns:
        ``[B, C + 1, h, w]`` float32 in [0, 1], zero for absent classes.
    """
    keep = present.clone()
    keep[:, 0] = True
    masked = logits.float().masked_fill(~keep[:, :, None, None], float("-inf"))
    return masked.softmax(1)


def region_embeddings(v: Tensor, probs: Tensor, present: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Masked average pooling (Eq. 12) of the foreground classes present in each image.

    Args:
        v: ``[B, D, h, w]`` pixel embeddings.
        probs: ``[B, C + 1, h, w]`` soft masks in [0, 1] (softmax of A), channel 0 = background.
        present: ``[B, C + 1]`` bool, the classes of each image's pseudo mask; background is never a region.

    Returns:
        ``P [R, D]`` float32 unit region embeddings and ``[R]`` int64 their classes (1..C), R = regions in the batch.
    """
    present = present.clone()
    present[:, 0] = False
    b_idx, c_idx = present.nonzero(as_tuple=True)
    masks = probs[b_idx, c_idx]  # [R, h, w]
    pooled = torch.einsum("rhw,rdhw->rd", masks, v[b_idx]) / masks.sum((1, 2)).clamp_min(eps)[:, None]
    return F.normalize(pooled.float(), dim=-1), c_idx


def rsc_loss(regions: Tensor, region_class: Tensor, protos: Tensor, row_class: Tensor, tau: float) -> Tensor:
    """Regional semantic contrast (Eq. 13), symmetric InfoNCE between regions and their class prototypes.

    With ``s_r = cos(P_r, w_{c_r})``, row r of the first term contrasts region r against *every* prototype row
    (the other classes and all background rows are negatives); the second contrasts the prototype of region r
    against the regions of the batch, where the negatives are the regions of *other* classes (a region of the
    same class in another image is not a negative and is left out):

        L = 1/(2R) sum_r [ -log e^{s_r/tau} / sum_n e^{cos(P_r, w_n)/tau}
                           -log e^{s_r/tau} / sum_{q: q = r or c_q != c_r} e^{cos(P_q, w_{c_r})/tau} ]

    Args:
        regions: ``[R, D]`` unit region embeddings; region_class: ``[R]`` int64 in 1..C.
        protos: ``[N, D]`` unit prototype rows; row_class: ``[N]`` int64 (0 = background row).
        tau: temperature.

    Returns:
        Scalar float32; 0 (still attached to ``regions``) when the batch has no region.
    """
    if len(regions) == 0:
        return regions.sum() * 0.0
    own = (row_class[None, :] == region_class[:, None]).float().argmax(1)  # [R] the row of each region's class
    sim = regions @ protos.T / tau  # [R, N]
    to_protos = F.cross_entropy(sim, own)
    sim_t = protos[own] @ regions.T / tau  # [R, R]: prototype of region r vs region q
    same = region_class[:, None] == region_class[None, :]
    same.fill_diagonal_(False)
    to_regions = F.cross_entropy(sim_t.masked_fill(same, float("-inf")), torch.arange(len(regions), device=sim.device))
    return 0.5 * (to_protos + to_regions)


# --------------------------------------------------------------------------------------------- CMPA (SSR)
def mask_fractions(target: Tensor, n_classes: int, grid: tuple[int, int]) -> Tensor:
    """Hard pseudo masks -> per-patch class fractions (soft masks for masked average pooling at the patch grid).

    Args:
        target: ``[B, S, S']`` int64 in 0..C or 255 (ignored pixels count for no class); S a multiple of ``grid``.
        n_classes: C + 1.
        grid: ``(h, w)`` of the decoder's embeddings.

    Returns:
        ``[B, C + 1, h, w]`` float32 in [0, 1]: the share of each patch's pixels labelled with each class.
    """
    valid = target != IGNORE_INDEX
    onehot = F.one_hot(target.masked_fill(~valid, 0), n_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    return F.adaptive_avg_pool2d(onehot, grid)


def cmpa_loss(regions: Tensor, region_class: Tensor, text: Tensor, bank: Tensor, bank_valid: Tensor,
              log_temp: Tensor, min_temp: float = 0.01) -> Tensor:
    """CMPA's prototype InfoNCE (our reading of SSR): each region against every class prototype, text and image.

    The prototype set is the C class rows of W ("text prototypes") and the valid K-means centres of the image-
    prototype bank; a region's positives are every prototype of its class (multi-positive InfoNCE)::

        L = 1/R sum_r -log( sum_{q : class(q) = c_r} e^{cos(P_r, q)/t} / sum_q e^{cos(P_r, q)/t} ),  t = e^log_temp

    Args:
        regions: ``[R, D]`` unit region embeddings; region_class: ``[R]`` int64 in 1..C.
        text: ``[C, D]`` unit class rows (class c at row c - 1).
        bank: ``[C, K, D]`` image prototypes; bank_valid: ``[C, K]`` bool (centres not yet built are left out).
        log_temp: scalar learnable log temperature (clamped below at ``log(min_temp)``).

    Returns:
        Scalar float32; 0 (attached to ``regions`` and ``log_temp``) when the batch has no region.
    """
    t = log_temp.float().clamp(min=math.log(min_temp)).exp()
    if len(regions) == 0:
        return regions.sum() * 0.0 + t * 0.0
    n_fg, k = bank.shape[:2]
    protos = torch.cat([text.float(), bank.flatten(0, 1).float()])  # [C + C*K, D]
    proto_class = torch.cat([torch.arange(1, n_fg + 1), torch.arange(1, n_fg + 1).repeat_interleave(k)])
    valid = torch.cat([torch.ones(n_fg, dtype=torch.bool), bank_valid.flatten().cpu()]).to(regions.device)
    logits = (regions.float() @ protos.T / t).masked_fill(~valid, float("-inf"))  # [R, Q]
    pos = (proto_class.to(regions.device)[None, :] == region_class[:, None]) & valid
    return (logits.logsumexp(1) - logits.masked_fill(~pos, float("-inf")).logsumexp(1)).mean()


def spherical_kmeans(x: Tensor, k: int, iters: int = 20, seed: int = 0) -> Tensor:
    """K-means on the unit sphere (cosine): ``[n, D]`` unit rows -> ``[min(k, n), D]`` unit centres.

    Deterministic: k-means++ seeding from a generator seeded by ``seed``, then ``iters`` Lloyd steps; an empty
    cluster keeps its previous centre.
    """
    x = F.normalize(x.float(), dim=-1)
    k = min(k, len(x))
    gen = torch.Generator().manual_seed(seed)
    centres = [x[int(torch.randint(len(x), (1,), generator=gen))]]
    for _ in range(1, k):
        dist = (1 - x @ torch.stack(centres).T).amin(1).clamp_min(0)
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1 / len(x))
        centres.append(x[int(torch.multinomial(probs, 1, generator=gen))])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=k) > 0
        c = torch.where(filled[:, None], F.normalize(sums, dim=-1), c)
    return c


@torch.no_grad()
def refresh_bank(model: SegDecoder, batches, seed: int = 0) -> int:
    """Rebuild CMPA's image-prototype bank from the current decoder: per class, K-means of the region embeddings
    (pseudo-mask masked average pooling of V) of the training images. Returns the number of regions pooled.

    Args:
        model: a CMPA decoder (``cfg.lambda_proto > 0``); run in eval mode (no dropout), left in eval mode.
        batches: iterable of ``(feats [B, L, h, w, width], target [B, S, S] int64)``.
    """
    model.eval()
    n_classes = model.n_classes
    regions, classes = [], []
    for feats, target in batches:
        v = model.embed(feats)
        present = present_classes(target, n_classes)
        r, c = region_embeddings(v, mask_fractions(target, n_classes, v.shape[-2:]), present)
        regions.append(r.cpu())
        classes.append(c.cpu())
    regions, classes = torch.cat(regions), torch.cat(classes)
    bank = torch.zeros_like(model.proto_bank, device="cpu")
    valid = torch.zeros_like(model.proto_bank_valid, device="cpu")
    for c in range(1, n_classes):
        own = regions[classes == c]
        if len(own):
            centres = spherical_kmeans(own, bank.shape[1], seed=seed + c)
            bank[c - 1, : len(centres)], valid[c - 1, : len(centres)] = centres, True
    model.proto_bank.copy_(bank)
    model.proto_bank_valid.copy_(valid)
    return len(regions)


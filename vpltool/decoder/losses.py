"""The losses of VPL phase 2 (Eq. 14: CE + regional semantic contrast) and SSR's CMPA.

* :func:`upsample_logits`: the scores at the crop's size, bilinear, as two matrix products (the CE's input).
* :func:`ce_loss`, :func:`balanced_ce_loss`: pixel cross-entropy on the pseudo masks (255 ignored).
* :func:`rsc_loss` (Eq. 13, the reading of docs/decoder.md): each region embedding (the decoder's own soft mask,
  :func:`region_masks`, pooling V: :func:`region_embeddings`) is pulled to its class row of W and pushed from the
  other rows.
* :func:`cmpa_loss` (SSR, AAAI 2026; our reading, docs/decoder.md): pseudo-mask regions against W's class rows and
  an image-prototype bank (:func:`refresh_bank`, per class :func:`spherical_kmeans` of region embeddings).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import IGNORE_INDEX
from .network import SegDecoder


def bilinear_weights(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """``[n_out, n_in]`` float32 on ``device``: 1-D bilinear interpolation with half-pixel centres
    (``F.interpolate``'s ``align_corners=False``, no antialias) as a matrix; each row holds at most two non-zero
    weights, summing to 1.

    Source of output pixel i: ``s = max(0, (i + 0.5) * n_in / n_out - 0.5)``, weight ``1 - (s - floor s)`` on
    ``floor s`` and ``s - floor s`` on the next pixel (the last pixel again at the border); in float64, then
    rounded once.
    """
    src = ((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(n_in - 1)
    frac = src - lo
    rows = torch.arange(n_out, device=device)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64, device=device)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, (lo + 1).clamp_max(n_in - 1)), frac, accumulate=True)
    return weights.float()


# eager: the training loop asks for the same two matrices every iteration, so they are made once; a compiled graph
# builds them in the graph on the device (constants the compiler folds; no host tensor to break a CUDA graph)
_cached_weights = functools.lru_cache(maxsize=32)(bilinear_weights)


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, K, h, w]`` -> ``[B, K, H, W]`` float32: ``F.interpolate(..., mode="bilinear", align_corners=False)``
    written as ``M_h @ logits @ M_w^T`` (:func:`bilinear_weights`); within float32 rounding of that map (closer
    to its float64 values than torch's own float32 kernel).

    Why: the same linear map, but its backward is two matrix products where ``upsample_bilinear2d_backward``
    scatters with atomic adds (each output pixel's gradient into its four source pixels, each of which a 16x
    enlargement shares among ~1,000 output pixels); on a CPU the forward and backward at the paper's shapes take
    about half the time (bench/bench_decoder.py ``--mode host``; the GPU's figure is for
    bench/gpu_session.sh to measure). In float32 whatever the autocast around it (the CE reads these scores).
    """
    weights = bilinear_weights if torch.compiler.is_compiling() else _cached_weights
    rows = weights(logits.shape[-2], size[0], logits.device)
    cols = weights(logits.shape[-1], size[1], logits.device)
    with torch.autocast(logits.device.type, enabled=False):
        return rows @ logits.float() @ cols.T


def ce_loss(logits: Tensor, target: Tensor, count: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Pixel cross-entropy, 255 ignored; 0 (not NaN) when every pixel is ignored.

    Args:
        logits: ``[B, C + 1, H, W]`` float.
        target: ``[B, H, W]`` int64 in 0..C or 255.
        count: the denominator from the ``[]`` count of the batch's labelled pixels; None = that count (the mean
            over them). DDP passes the mean count over its ranks, so that the averaged gradients are those of the
            mean over every rank's pixels (the one of a single process with the whole batch).
    """
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    n = (target != IGNORE_INDEX).sum()
    return loss / (n if count is None else count(n)).clamp_min(1)


def balanced_ce_loss(logits: Tensor, target: Tensor, count: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """WeCLIP/AFA's ``0.5 * (CE over background pixels + CE over foreground pixels)``, 255 ignored (``count``: as
    :func:`ce_loss`'s, for each part).

    Background-heavy pseudo masks otherwise teach the decoder to say background; a part without pixels adds 0.
    """
    bg = target.masked_fill(target != 0, IGNORE_INDEX)
    fg = target.masked_fill(target == 0, IGNORE_INDEX)
    return 0.5 * (ce_loss(logits, bg, count) + ce_loss(logits, fg, count))


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


def class_regions(v: Tensor, probs: Tensor, present: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Masked average pooling (Eq. 12) of every (image, foreground class) pair: a fixed-size batch of regions, so
    the training step never waits for the host to count them (no ``nonzero``).

    Args:
        v: ``[B, D, h, w]`` pixel embeddings.
        probs: ``[B, C + 1, h, w]`` soft masks in [0, 1] (softmax of A), channel 0 = background.
        present: ``[B, C + 1]`` bool, the classes of each image's pseudo mask; background is never a region.

    Returns:
        ``P [B*C, D]`` float32 unit region embeddings (zero rows where a class has no mass), ``[B*C]`` int64 their
        classes (1..C, image-major) and ``[B*C]`` bool which of them are regions (the class is present).
    """
    masks = probs[:, 1:].float()  # [B, C, h, w]
    pooled = torch.einsum("bchw,bdhw->bcd", masks, v.float()) / masks.sum((2, 3)).clamp_min(eps)[..., None]
    n_img, n_fg = masks.shape[:2]
    region_class = torch.arange(1, n_fg + 1, device=v.device).repeat(n_img)
    return F.normalize(pooled, dim=-1).flatten(0, 1), region_class, present[:, 1:].flatten()


def region_embeddings(v: Tensor, probs: Tensor, present: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """:func:`class_regions` of the classes present only (their count is read on the host: for the bank refresh
    and tests, not for the per-iteration loss).

    Returns:
        ``P [R, D]`` float32 unit region embeddings and ``[R]`` int64 their classes (1..C), R = regions in the batch.
    """
    regions, region_class, valid = class_regions(v, probs, present, eps)
    return regions[valid], region_class[valid]


def _weighted_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``values [R]`` over the rows ``valid [R]`` marks (all when None); 0 when none is (no host read)."""
    if valid is None:
        return values.mean()
    weight = valid.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1)


def rsc_loss(regions: Tensor, region_class: Tensor, protos: Tensor, row_class: Tensor, tau: float,
             valid: Tensor | None = None) -> Tensor:
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
        valid: ``[R]`` bool, the rows that are regions (:func:`class_regions`' fixed-size batch); None = all. The
            others are neither anchors nor negatives: the loss equals the one of the valid rows alone.

    Returns:
        Scalar float32; 0 (still attached to ``regions``) when the batch has no region.
    """
    if len(regions) == 0:
        return regions.sum() * 0.0
    own = (row_class[None, :] == region_class[:, None]).float().argmax(1)  # [R] the row of each region's class
    sim = regions @ protos.T / tau  # [R, N]
    to_protos = F.cross_entropy(sim, own, reduction="none")
    sim_t = protos[own] @ regions.T / tau  # [R, R]: prototype of region r vs region q
    left_out = region_class[:, None] == region_class[None, :]
    if valid is not None:
        left_out = left_out | ~valid[None, :]  # no region, no negative
    left_out.fill_diagonal_(False)  # each row keeps its own region: finite, also on rows weighted 0
    index = torch.arange(len(regions), device=sim.device)
    to_regions = F.cross_entropy(sim_t.masked_fill(left_out, float("-inf")), index, reduction="none")
    return 0.5 * (_weighted_mean(to_protos, valid) + _weighted_mean(to_regions, valid))


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
    # scatter, not F.one_hot: one_hot checks the labels' range on the host (two reads of the device per call)
    onehot = torch.zeros(len(target), n_classes, *target.shape[1:], device=target.device)
    onehot.scatter_(1, target.masked_fill(~valid, 0)[:, None], valid[:, None].float())
    return F.adaptive_avg_pool2d(onehot, grid)


def cmpa_loss(regions: Tensor, region_class: Tensor, text: Tensor, bank: Tensor, bank_valid: Tensor,
              log_temp: Tensor, min_temp: float = 0.01, valid: Tensor | None = None) -> Tensor:
    """CMPA's prototype InfoNCE (our reading of SSR): each region against every class prototype, text and image.

    The prototype set is the C class rows of W ("text prototypes") and the valid K-means centres of the image-
    prototype bank; a region's positives are every prototype of its class (multi-positive InfoNCE)::

        L = 1/R sum_r -log( sum_{q : class(q) = c_r} e^{cos(P_r, q)/t} / sum_q e^{cos(P_r, q)/t} ),  t = e^log_temp

    Args:
        regions: ``[R, D]`` unit region embeddings; region_class: ``[R]`` int64 in 1..C.
        text: ``[C, D]`` unit class rows (class c at row c - 1).
        bank: ``[C, K, D]`` image prototypes; bank_valid: ``[C, K]`` bool (centres not yet built are left out).
        log_temp: scalar learnable log temperature (clamped below at ``log(min_temp)``).
        valid: ``[R]`` bool, the rows that are regions (:func:`class_regions`); None = all.

    Returns:
        Scalar float32; 0 (attached to ``regions`` and ``log_temp``) when the batch has no region.
    """
    t = log_temp.float().clamp(min=math.log(min_temp)).exp()
    if len(regions) == 0:
        return regions.sum() * 0.0 + t * 0.0
    n_fg, k = bank.shape[:2]
    device = regions.device
    protos = torch.cat([text.float(), bank.flatten(0, 1).float()])  # [C + C*K, D]
    classes = torch.arange(1, n_fg + 1, device=device)
    proto_class = torch.cat([classes, classes.repeat_interleave(k, output_size=n_fg * k)])
    built = torch.cat([torch.ones(n_fg, dtype=torch.bool, device=device), bank_valid.flatten().to(device)])
    logits = (regions.float() @ protos.T / t).masked_fill(~built, float("-inf"))  # [R, Q]
    pos = (proto_class[None, :] == region_class[:, None]) & built  # the text row of its class: never empty
    return _weighted_mean(logits.logsumexp(1) - logits.masked_fill(~pos, float("-inf")).logsumexp(1), valid)


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


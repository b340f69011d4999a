"""SC-CLIP (``--dense sc-clip``; SuleBai/SC-CLIP): self-calibration around CLIP's last block.

It repairs the outlier tokens entering the last block (Local Outlier Factor), gives the block an attention prior from
an earlier block's similarity and fuses the outputs of earlier blocks (multi-level fusion). Still one forward of
CLIP's blocks, with the last block replaced. Its segmentor settings are the spec table's
(:data:`vpltool.config.dense.DENSE_SPECS`); docs/open-vocabulary.md has its parity figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import VplError
from .hooks import DenseHooks
from .mixing import DenseMixing, mixed_attention


@dataclass(frozen=True)
class SelfCalibration:
    """SC-CLIP's self-calibration around the last block (SuleBai/SC-CLIP ``clip/model.py``, ``base_config.py``).

    Attributes:
        neighbours, contamination: the Local Outlier Factor of the patch tokens entering the last block; the
            ``contamination`` share with the highest LOF are outliers, replaced by the mean of their non-outlier
            3x3 neighbours (in those tokens and in the ``pre_level`` tokens).
        pre_level: block (0-based) whose repaired, unit patch tokens give the similarity ``S``: the attention prior
            ``3 (S - mean S)`` (negatives masked) and, thresholded at ``beta``, the aggregation before the block.
        post_level: block whose unit patch tokens, thresholded at ``beta``, aggregate the block's outputs.
        fuse_levels: ``(start, stop)``: the sum of blocks ``start..stop-1``'s tokens runs the last block again and is
            added (multi-level fusion).
        res_cls: weight of the class token added to every output token.
        beta: similarity threshold of the aggregations.
        prior_scale: the factor of the mean-shifted similarity (3.0 in the code).
    """

    neighbours: int = 30
    contamination: float = 0.05
    pre_level: int = 8
    post_level: int = 3
    fuse_levels: tuple[int, int] = (3, 10)
    res_cls: float = 0.3
    beta: float = 0.4
    prior_scale: float = 3.0



def lof_outliers(x: torch.Tensor, neighbours: int, contamination: float, chunk: int = 1 << 25) -> torch.Tensor:
    """SC-CLIP's ``lof_pytorch`` on one image's tokens ``[N, C]`` -> ``[N]`` bool, True for the outliers.

    As coded: squared euclidean distances ``|x_i - x_j|²`` (the difference's norm, squared), the ``neighbours``
    nearest after the first (itself), reach distance ``max(d(i, j), k-distance of i)`` (the point's own k-distance,
    as the code has it), ``LRD = neighbours / mean reach``, ``LOF_i = mean_j LRD_j / LRD_i``; outliers have a LOF
    above its ``1 - contamination`` quantile. The distance rows are made ``chunk`` elements at a time (same values;
    the reference makes the whole ``[N, N, C]`` difference at once). A grid of ``neighbours`` patches or fewer
    (the reference fails there) uses ``N - 1`` neighbours.
    """
    n = x.shape[0]
    k = min(neighbours, n - 1)
    rows = max(1, chunk // max(1, n * x.shape[1]))
    distances = torch.cat([torch.norm(x[i : i + rows, None] - x[None, :], dim=2, p=2) ** 2
                           for i in range(0, n, rows)])
    knn_distances, knn_indices = torch.topk(distances, k=k + 1, largest=False)
    knn_distances, knn_indices = knn_distances[:, 1:], knn_indices[:, 1:]
    reach = torch.max(knn_distances, knn_distances[:, -1:].expand_as(knn_distances))
    lrd = k / torch.nan_to_num(reach.mean(dim=1), nan=1e-6)
    lof = (lrd[knn_indices] / lrd[:, None]).mean(dim=1)
    return lof > torch.quantile(lof.float(), 1 - contamination)


def repair_outliers(tokens: torch.Tensor, outliers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """SC-CLIP's ``mean_interpolation``: ``[B, hw, C]`` patch tokens, ``[B, hw]`` bool outliers -> ``[B, hw, C]``
    with each outlier replaced by the mean of its non-outlier 3x3 neighbours (zero padding; kept when none is)."""
    b, hw, c = tokens.shape
    h, w = grid
    fmap = tokens.transpose(1, 2).reshape(b, c, h, w)
    keep = (~outliers).to(tokens.dtype).reshape(b, 1, h, w)
    kernel = torch.ones(c, 1, 3, 3, device=tokens.device, dtype=tokens.dtype)
    kernel[:, 0, 1, 1] = 0
    neighbour_sum = F.conv2d(F.pad(fmap * keep, (1, 1, 1, 1)), kernel, groups=c)
    valid = F.conv2d(F.pad(keep, (1, 1, 1, 1)), kernel[:1])
    mean = neighbour_sum / torch.where(valid == 0, torch.ones_like(valid), valid)
    update = (1 - keep) * (valid > 0).to(tokens.dtype)
    out = fmap * (1 - update) + mean * update
    return out.reshape(b, c, hw).transpose(1, 2)


def unit_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, N, N]`` cosine similarity of the tokens."""
    unit = tokens / tokens.norm(dim=2, keepdim=True)
    return unit @ unit.transpose(1, 2)


def aggregate(tokens: torch.Tensor, similarity: torch.Tensor, beta: float) -> torch.Tensor:
    """SC-CLIP's ``adaptively_aggregate`` of ``[B, N, C]`` by ``[B, N, N]`` similarity zeroed below ``beta``, each
    row divided by its sum + 1e-6."""
    corrs = torch.where(similarity < beta, torch.zeros_like(similarity), similarity)
    return (corrs / (corrs.sum(dim=-1, keepdim=True) + 1e-6)) @ tokens


def scaled_levels(cal: SelfCalibration, n_blocks: int) -> tuple[int, int, int, int]:
    """``(pre_level, post_level, fuse_start, fuse_stop)`` for a model of ``n_blocks`` blocks: SC-CLIP's values are
    ViT-B/16's (12 blocks) and are used as they are there; another depth gets ``round(i * (n - 1) / 11)`` (a vpltool
    choice for the toy and test models, which the code does not cover), the fused range at least one block."""
    values = (cal.pre_level, cal.post_level, *cal.fuse_levels)
    if n_blocks == 12:
        return values
    if n_blocks < 3:
        raise VplError(f"--dense sc-clip needs a model of 3 blocks or more (this one has {n_blocks})")
    pre, post, start, stop = (int(round(i * (n_blocks - 1) / 11)) for i in values)
    return pre, post, start, max(stop, start + 1)


def self_calibrated_tokens(blk, levels: list[torch.Tensor], grid: tuple[int, int], cal: SelfCalibration,
                           mixing: DenseMixing) -> torch.Tensor:
    """SC-CLIP's last block (``VisionTransformer.forward``) from the outputs of blocks ``0..L-2``.

    Args:
        blk: the last ``ResidualAttentionBlock``.
        levels: ``[B, 1 + hw, width]`` the output of each block ``0..L-2``, in order.
        grid: ``(h, w)``.

    Returns:
        ``[B, hw, width]`` patch tokens (no class token) for ``ln_post`` and ``proj``.

    Per image: LOF outliers of the last input's patches (:func:`lof_outliers`) repaired (:func:`repair_outliers`);
    ``S`` the cosine of the repaired ``pre_level`` patches; the input aggregated by ``S >= beta``; the block's
    attention ``(softmax(3 (S - mean S), negatives masked) + softmax(k kᵀ s)) / 2`` without residual or FFN, plus
    ``res_cls`` times the class token; aggregated by the ``post_level`` similarity; plus the same block run on the
    sum of blocks ``fuse_levels`` (their class token's sum as its class token), aggregated alike (levels of a model
    that is not 12 blocks deep: :func:`scaled_levels`). The outlier
    position is the patch's row-major ``(i // w, i % w)``; the reference computes ``(i // h, i % h)``, the same on
    square grids (its slide windows), another patch on non-square ones.
    """
    pre_level, post_level, fuse_start, fuse_stop = scaled_levels(cal, len(levels) + 1)
    last = levels[-1]
    cls, patches = last[:, :1], last[:, 1:]
    outliers = torch.stack([lof_outliers(p, cal.neighbours, cal.contamination) for p in patches])
    x = repair_outliers(patches, outliers, grid)
    before = unit_similarity(repair_outliers(levels[pre_level][:, 1:], outliers, grid))
    shifted = (before - before.mean(dim=(1, 2), keepdim=True)) * cal.prior_scale
    prior = torch.where(shifted < 0, torch.full_like(shifted, float("-inf")), shifted)
    x = aggregate(x, before, cal.beta)
    x = mixed_attention(blk.attn, blk.ln_1(x), mixing, prior=prior) + cal.res_cls * cls
    after = unit_similarity(levels[post_level][:, 1:])
    x = aggregate(x, after, cal.beta)
    fused = torch.zeros_like(levels[0])
    for i in range(fuse_start, fuse_stop):
        fused = fused + levels[i]
    fused_out = mixed_attention(blk.attn, blk.ln_1(fused[:, 1:]), mixing, prior=prior) + cal.res_cls * fused[:, :1]
    return x + aggregate(fused_out, after, cal.beta)


# SC-CLIP base_config.py: pre_adjust_idx 8, post_adjust_idx 3, multi 3..10, res_cls 0.3 (beta 0.4 in model.py)
PRESET = DenseMixing("sc-clip", "prior+kk", False, False, "bicubic-dino", calibration=SelfCalibration())


def features(bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
    """The method's feature hook: ``[B, 3, H, W]`` CLIP-normalised pixels -> ``[B, hw, D]`` joint-space patch
    features (not normalised): blocks ``0..L-2``, every output kept, then :func:`self_calibrated_tokens`,
    ``ln_post`` and ``proj``."""
    grid = bb.grid_of(pixels)
    x, levels = bb.embed(pixels, fp16_pos), []
    for i in range(bb.n_blocks - 1):
        x = bb.block(i, x, grid)[0]
        levels.append(x)
    tokens = self_calibrated_tokens(bb.blocks[-1], levels, grid, bb.mixing.calibration, bb.mixing)
    return bb.project(tokens)


class Hooks(DenseHooks, method="sc-clip", preset=PRESET):
    """SC-CLIP's hooks: its feature forward (:func:`features`)."""

    def features(self, bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        return features(bb, pixels, fp16_pos)


__all__ = ["Hooks", "SelfCalibration", "lof_outliers", "repair_outliers", "unit_similarity", "aggregate",
           "scaled_levels", "self_calibrated_tokens", "PRESET", "features"]

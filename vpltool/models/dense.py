"""The training-free dense CLIP family as one parameter of the backbone's last block (``--dense``).

MaskCLIP, SCLIP, ClearCLIP and NACLIP all run CLIP's blocks ``0..L-2`` unchanged and change only how the **last**
block mixes its tokens. :class:`DenseMixing` says how, one frozen preset per method (:data:`DENSE_PRESETS`), and
:func:`mix_last_block` is the one forward that runs any of them. ``none`` is today's CLIP-ES path (the vanilla last
block through :meth:`~vpltool.models.ClipBackbone.block`, the bilinearly resized positional embedding),
bit-identical to what `extract` stores.

As each method's public code has it (per head, attention scale ``s = head_dim ** -0.5``, then ``out_proj``):

========== ================================ ======== === =============================================
method     attention                        residual FFN public code
========== ================================ ======== === =============================================
maskclip   identity (value path: ``v``)     kept     kept mc-lan/ClearCLIP ``model_type='MaskCLIP'``,
                                                          ``ignore_residual=False``
sclip      softmax(q qᵀ s) + softmax(k kᵀ s) kept    kept wangf3014/SCLIP ``clip/model.py`` (csa=True)
clearclip  softmax(q qᵀ s)                  dropped  dropped mc-lan/ClearCLIP ``open_clip/transformer.py``
naclip     softmax(k kᵀ s + Ω)              dropped  dropped sinahmr/NACLIP ``clip/model.py`` ('reduced',
                                                          'naclip', std 5)
========== ================================ ======== === =============================================

Ω (:func:`neighbourhood_bias`) is NACLIP's ``get_attention_addition``: for patches ``(i, j)`` and ``(k, l)`` the
unnormalised Gaussian ``exp(-((i-k)² + (j-l)²) / (2 std²))`` (peak 1 on the diagonal, not a distribution; its window
``(2h-1) x (2w-1)`` covers every offset of the grid), and 0 in the class token's row and column. SCLIP's sum of two
softmaxes is not renormalised (rows sum to 2), as coded.

Two newer methods read more than the last block's input: SC-CLIP (``sc-clip``, :class:`SelfCalibration`,
:func:`self_calibrated_tokens`) repairs outlier tokens and fuses the outputs of earlier blocks; ProxyCLIP
(``proxyclip``, :class:`ProxyAttention`, :func:`proxy_attention_tokens`) takes its attention from a proxy vision
model's patch similarity (a DINO, given to ``with_dense(method, proxy=...)``). Both are still one forward of CLIP's
blocks, with the last block replaced; docs/open-vocabulary.md has their parity figures.

The methods resize the positional embedding like DINO (``pos_interpolation='bicubic-dino'``): bicubic,
``scale_factor=((h + 0.1) / gh, (w + 0.1) / gw)`` from the native ``gh x gw`` grid, align_corners False, whenever the
grid differs from the native one; CLIP-ES (``none``) resizes bilinearly to the size (:func:`resize_positional`).

Stable API (used by ``parity/dense_parity.py``):

* :data:`DENSE_METHODS`, :func:`dense_mixing`;
* ``load_backbone(spec, device, dense="naclip")`` or ``bb.with_dense("naclip")``;
* ``bb.dense_features(pixels)``: ``[B, 3, H, W]`` float32 CLIP-normalised pixels (H, W multiples of the patch size)
  -> ``[B, h*w, D]`` joint-space patch features, not normalised;
* the segmentor (:mod:`vpltool.models.segmentor`, also importable from :mod:`vpltool.stages.segment`):
  ``segment_logits(bb, pixels, text, settings, sizes)`` (slide inference + PAMR with a method's
  :class:`~vpltool.config.DenseSettings`; ``SegmentConfig(dense=M).resolved()`` gives the method's own) or
  ``dense_logits(bb, pixels, text, sizes, crop, stride, pad, whole)`` -> per image ``[Q, H0, W0]`` cosine logits at
  image size; ``pamr(image, logits, steps, dilations)``; ``dense_probabilities(logits, query_class, n_classes,
  logit_scale, prob_threshold, area_threshold)`` -> (``[C, H0, W0]`` probabilities, ``[H0, W0]`` labels);
  ``query_rows(bb, classes, templates, background)`` -> the text queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError

DENSE_METHODS = ("none", "maskclip", "sclip", "clearclip", "naclip", "sc-clip", "proxyclip", "cass", "trident")
ATTENTIONS = ("qk", "identity", "qq+kk", "qq", "kk", "prior+kk", "proxy", "spectral")
POS_INTERPOLATIONS = ("bilinear", "bicubic-dino")


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


@dataclass(frozen=True)
class ProxyAttention:
    """ProxyCLIP's proxy attention (mc-lan/ProxyCLIP ``open_clip/transformer.py`` ``custom_attn``): the last block's
    attention is ``softmax(gamma (S - beta mean S))``, negatives masked, ``S`` the cosine of a vision model's final
    patch tokens (DINO's ``get_intermediate_layers``), shared by the heads, applied to CLIP's values resized
    bilinearly to that model's grid; no residual, no FFN, the output on the proxy's grid.

    Attributes:
        beta, gamma: the segmentor's defaults (1.2, 3.0).
        pooled_mean: ``mean S`` over every window of the batch at once (Trident: its ``torch.mean(similarity)``
            runs on all of one image's windows together), instead of per window (ProxyCLIP, one window a call).
    """

    beta: float = 1.2
    gamma: float = 3.0
    pooled_mean: bool = False


@dataclass(frozen=True)
class SamAggregation:
    """Trident's splicing and SAM aggregation (YuHengsss/Trident ``open_clip/transformer.py`` ``guidance_attn`` and
    ``get_sam_sim``): each window's proxy-attention output (:func:`proxy_attention_tokens`, before ``ln_post``) is
    spliced into one grid over the whole input (overlaps averaged, :func:`splice_windows`), resized bilinearly to
    SAM's patch grid, and mixed there by SAM's last global attention, kept only between patches whose SAM values
    are similar (:func:`sam_affinity`).

    Attributes:
        cos_fac: a pair is kept where the cosine of its SAM values exceeds ``cos_fac`` times the row's head-mean
            mean cosine (the segmentor's ``cos_fac``, 1.2).
        refine_neg_cos: a negative threshold is kept (True, the configs' value); False: it becomes ``neg_fallback``.
        cap: thresholds above it are lowered to it (0.9 in the code).
        neg_fallback: 0.6 in the code.
        halves: SAM sees the left and the right half of the photo apart, and each half of the spliced map is
            aggregated by its own half's attention (Trident's Cityscapes, ``dataset_type='CityscapesDataset'``).
    """

    cos_fac: float = 1.2
    refine_neg_cos: bool = True
    cap: float = 0.9
    neg_fallback: float = 0.6
    halves: bool = False


@dataclass(frozen=True)
class SpectralMatching:
    """CASS's spectral key-graph matching (MICV-yonsei/CASS ``clip/model.py``, ``attn_strategy='spectral'``): per
    head the top ``k_eigen`` eigenvalues of CLIP's and the proxy DINO's key-key graphs are compared, heads matched
    by a Hungarian assignment, and each CLIP graph blended with a low-rank, rescaled copy of its DINO graph.

    Attributes:
        k_eigen: eigenvalues compared per head (``custom_attn``'s config, 20).
        scale_factor: weight of the DINO graph (10.0).
        energy_threshold, initial_q, step_q: ``optimal_q``'s search of the rank of ``torch.svd_lowrank``
            (0.95, 10, 5; the first rank always passes, as coded: the energy is that of the rank's own values).
        stretch: CASS's ``_scale_singular_values`` for every dataset but VOC20 and Cityscapes: the singular values
            mapped linearly from ``[min, max]`` to ``[0.5 min, 1.5 max]``; False: kept (``voc20``, ``city_scapes``).
        seed: the seed of the randomised SVD's basis, set before each window (CASS draws it from the global
            generator: its result depends on what ran before; here each window is reproducible alone).
    """

    k_eigen: int = 20
    scale_factor: float = 10.0
    energy_threshold: float = 0.95
    initial_q: int = 10
    step_q: int = 5
    stretch: bool = True
    seed: int = 0


@dataclass(frozen=True)
class TextShift:
    """CASS's object-presence text shift (``cass_segmentor.py`` ``hierarchical_prompt``): the queries are grouped
    by Ward clustering of their cosine distances (cut at ``h_threshold``); in each group the query closest to the
    image's CLIP embedding moves ``mean_vector_weight`` of the way to the mean of its ``top_k`` most similar patch
    features; the patch logits are then ``(1 - w) cos + w`` the image embedding's cosine, ``w`` =
    ``global_weight``. The defaults are ``configs/cfg_voc21.py``'s.

    Attributes:
        global_weight: ``global_semantics_weight`` (0.1).
        mean_vector_weight: the shift (0.03).
        h_threshold: the Ward cut (0.10).
        top_k: patches averaged (2).
        window_global: the image embedding of each window itself (CASS's ``city_scapes``); False: of the whole
            input (every other dataset; with ``--slide-crop 0`` both are the same).
    """

    global_weight: float = 0.1
    mean_vector_weight: float = 0.03
    h_threshold: float = 0.10
    top_k: int = 2
    window_global: bool = False


@dataclass(frozen=True)
class DenseMixing:
    """How the last block mixes its tokens.

    Attributes:
        method: the preset's name (one of :data:`DENSE_METHODS`).
        attention: ``qk`` (CLIP's own), ``identity`` (each token keeps its value: MaskCLIP), ``qq+kk`` (SCLIP's
            ``softmax(q qᵀ s) + softmax(k kᵀ s)``), ``qq`` (ClearCLIP), ``kk`` (NACLIP, with Ω when
            ``gaussian_std > 0``).
        residual: the block's output adds its input (``x + attn``); False: the attention output alone.
        ffn: the block's MLP (``+ mlp(ln_2(.))``) runs after the attention.
        pos_interpolation: ``bilinear`` (CLIP-ES: resized to the grid) or ``bicubic-dino`` (the +0.1 scale factor).
        gaussian_std: std in patches of NACLIP's neighbourhood bias Ω added to the attention logits; 0: none.
        calibration: SC-CLIP's outlier repair, similarity prior and multi-level fusion
            (:func:`self_calibrated_tokens`), with ``attention='prior+kk'``
            (``(softmax(prior) + softmax(k kᵀ s)) / 2``); None: the last block alone.
        proxy: ProxyCLIP's proxy attention (``attention='proxy'``, :func:`proxy_attention_tokens`); the backbone
            needs a proxy vision model (``with_dense(method, proxy=...)``).
        spectral: CASS's key-graph matching with the proxy DINO's last-block keys (``attention='spectral'``,
            :func:`spectral_key_attention`, with Ω when ``gaussian_std > 0``); needs a proxy vision model.
        text_shift: CASS's object-presence text shift and global blend (:func:`object_presence_logits`), applied
            by the segmentor to each window's patch features.
        splice: Trident's splicing of the windows' proxy-attention outputs and their SAM aggregation
            (:class:`SamAggregation`, :func:`splice_windows`, :func:`sam_affinity`); with ``proxy``, and the
            backbone needs a SAM encoder too (``with_dense(method, proxy=..., sam=...)``).
    """

    method: str
    attention: str = "qk"
    residual: bool = True
    ffn: bool = True
    pos_interpolation: str = "bilinear"
    gaussian_std: float = 0.0
    calibration: SelfCalibration | None = None
    proxy: ProxyAttention | None = None
    spectral: SpectralMatching | None = None
    text_shift: TextShift | None = None
    splice: SamAggregation | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise VplError(f"dense attention {self.attention!r}: choose one of {', '.join(ATTENTIONS)}")
        if self.pos_interpolation not in POS_INTERPOLATIONS:
            raise VplError(f"positional interpolation {self.pos_interpolation!r}: choose one of "
                           f"{', '.join(POS_INTERPOLATIONS)}")
        if self.gaussian_std < 0:
            raise VplError(f"gaussian std {self.gaussian_std}: give 0 (none) or a positive number of patches")

    @property
    def vanilla(self) -> bool:
        """True for CLIP's own last block (``none``): the backbone's ordinary block runs it."""
        return (self.attention == "qk" and self.residual and self.ffn and not self.gaussian_std
                and self.calibration is None and self.proxy is None and self.spectral is None)


DENSE_PRESETS: dict[str, DenseMixing] = {
    "none": DenseMixing("none"),
    "maskclip": DenseMixing("maskclip", "identity", True, True, "bicubic-dino"),
    "sclip": DenseMixing("sclip", "qq+kk", True, True, "bicubic-dino"),
    "clearclip": DenseMixing("clearclip", "qq", False, False, "bicubic-dino"),
    "naclip": DenseMixing("naclip", "kk", False, False, "bicubic-dino", gaussian_std=5.0),  # test_all.sh's std 5
    # SC-CLIP base_config.py: pre_adjust_idx 8, post_adjust_idx 3, multi 3..10, res_cls 0.3 (beta 0.4 in model.py)
    "sc-clip": DenseMixing("sc-clip", "prior+kk", False, False, "bicubic-dino", calibration=SelfCalibration()),
    # ProxyCLIP proxyclip_segmentor.py: beta 1.2, gamma 3.0; its open_clip resizes the positional embedding DINO's way
    "proxyclip": DenseMixing("proxyclip", "proxy", False, False, "bicubic-dino", proxy=ProxyAttention()),
    # CASS cass_segmentor.py + base_config.py + cfg_voc21.py: arch 'reduced', attn_strategy 'spectral', std 5
    "cass": DenseMixing("cass", "spectral", False, False, "bicubic-dino", gaussian_std=5.0,
                        spectral=SpectralMatching(), text_shift=TextShift()),
    # Trident trident.py + configs/base_config.py: ProxyCLIP's last block with DINO ViT-B/16 (beta 1.2, gamma 3.0)
    # per window, spliced, then SAM ViT-B's last attention (cos_fac 1.2, refine_neg_cos True)
    # (its windows batched: the similarity's mean is over all of an image's windows, as its torch.mean)
    "trident": DenseMixing("trident", "proxy", False, False, "bicubic-dino", proxy=ProxyAttention(pooled_mean=True),
                           splice=SamAggregation()),
}


def dense_mixing(method: str | DenseMixing) -> DenseMixing:
    """The preset of ``--dense METHOD`` (a :class:`DenseMixing` passes through)."""
    if isinstance(method, DenseMixing):
        return method
    if method not in DENSE_PRESETS:
        raise VplError(f"--dense {method!r}: choose one of {', '.join(DENSE_METHODS)}")
    return DENSE_PRESETS[method]


def resize_positional(pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int], mode: str) -> torch.Tensor:
    """``[1 + gh*gw, width]`` positional embedding -> ``[1 + h*w, width]`` for ``grid`` (CLS row kept).

    ``bilinear``: CLIP-ES (``upsample_pos_emb``), resized to the size. ``bicubic-dino``: the dense methods' (DINO's)
    ``interpolate_pos_encoding``: bicubic with the scale factor ``(h + 0.1) / gh``, not recomputed from the size,
    so the sampling positions are those of that factor.
    """
    if tuple(grid) == tuple(native):
        return pos
    gh, gw = native
    patches = pos[1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    if mode == "bilinear":
        patches = F.interpolate(patches, size=tuple(grid), mode="bilinear", align_corners=False)
    else:
        patches = F.interpolate(patches, scale_factor=((grid[0] + 0.1) / gh, (grid[1] + 0.1) / gw), mode="bicubic",
                                align_corners=False, recompute_scale_factor=False)
        if tuple(patches.shape[-2:]) != tuple(grid):  # the +0.1 makes floor() land on the grid; guard it anyway
            raise VplError(f"positional embedding resized to {tuple(patches.shape[-2:])}, not the grid {grid}")
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([pos[:1], patches])


def neighbourhood_bias(grid: tuple[int, int], std: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """NACLIP's Ω: ``[1 + hw, 1 + hw]``; patch rows/columns ``exp(-d² / (2 std²))`` with ``d`` the distance in
    patches between the two tokens (peak 1, not normalised), the class token's row and column 0. Made on ``device``
    (no host-to-device copy)."""
    h, w = grid
    rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
    d2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    out = torch.zeros(1 + h * w, 1 + h * w, device=device, dtype=torch.float32)
    out[1:, 1:] = torch.exp(-d2 / (2.0 * std * std))
    return out.to(dtype)


def mixed_attention(attn, h: torch.Tensor, mixing: DenseMixing, bias: torch.Tensor | None = None,
                    prior: torch.Tensor | None = None) -> torch.Tensor:
    """The last block's attention under ``mixing``: ``out_proj(A v)`` per head.

    Args:
        attn: the block's ``nn.MultiheadAttention`` (its ``in_proj_weight``/``in_proj_bias``, ``num_heads``,
            ``out_proj``).
        h: ``[B, L, width]`` the block's ``ln_1`` output.
        bias: ``[L, L]`` added to the scaled logits before the softmax (Ω), or None.
        prior: ``[B, L, L]`` attention logits shared by the heads (``prior+kk``: SC-CLIP's masked similarity,
            ``-inf`` where masked).

    Returns:
        ``[B, L, width]``.
    """
    if getattr(attn, "in_proj_weight", None) is None or not hasattr(attn, "out_proj"):
        raise VplError("--dense: the last block's attention has no packed in_proj_weight (a custom attention "
                       "module); only standard nn.MultiheadAttention blocks take a dense method")
    b, n, width = h.shape
    heads = attn.num_heads
    scale = (width // heads) ** -0.5
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, width // heads).transpose(1, 2) for t in (q, k, v))  # [B, heads, L, hd]
    if mixing.attention == "identity":
        out = v
    elif mixing.attention == "prior+kk":  # SC-CLIP's custom_attn: the mean of the two softmaxes
        if prior is None:
            raise VplError("--dense: the prior+kk attention needs its prior (SC-CLIP's similarity)")
        weights = F.softmax(prior, dim=-1)[:, None] + F.softmax((k @ k.transpose(-1, -2)) * scale, dim=-1)
        out = (weights / 2) @ v
    else:
        if mixing.attention == "qk":
            logits = [(q @ k.transpose(-1, -2)) * scale]
        elif mixing.attention == "qq+kk":
            logits = [(q @ q.transpose(-1, -2)) * scale, (k @ k.transpose(-1, -2)) * scale]
        elif mixing.attention == "qq":
            logits = [(q @ q.transpose(-1, -2)) * scale]
        else:  # kk
            logits = [(k @ k.transpose(-1, -2)) * scale]
        if bias is not None:
            logits = [x + bias.to(x.dtype) for x in logits]
        weights = F.softmax(logits[0], dim=-1)
        for extra in logits[1:]:  # SCLIP: the sum of the two softmaxes, not renormalised
            weights = weights + F.softmax(extra, dim=-1)
        out = weights @ v
    out = out.transpose(1, 2).reshape(b, n, width)
    return attn.out_proj(out)


def mix_last_block(blk, x: torch.Tensor, mixing: DenseMixing, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Run open_clip's ``ResidualAttentionBlock`` ``blk`` on ``[B, L, width]`` tokens with ``mixing``.

    ``x' = [x +] ls_1(attn)``, then ``x' = x' + ls_2(mlp(ln_2(x')))`` when ``mixing.ffn`` (``ls_*`` are identities
    in CLIP). Returns ``[B, L, width]``.
    """
    a = blk.ls_1(mixed_attention(blk.attn, blk.ln_1(x), mixing, bias))
    x = x + a if mixing.residual else a
    if mixing.ffn:
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x


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


def proxy_attention_tokens(blk, x: torch.Tensor, grid: tuple[int, int], proxy: torch.Tensor,
                           proxy_grid: tuple[int, int], cfg: ProxyAttention) -> torch.Tensor:
    """ProxyCLIP's last block (its ``custom_attn``).

    Args:
        blk: the last ``ResidualAttentionBlock``.
        x: ``[B, 1 + hw, width]`` tokens entering it; ``grid`` ``(h, w)``.
        proxy: ``[B, HW, C]`` the proxy model's final patch tokens on ``proxy_grid`` ``(H, W)``.

    Returns:
        ``[B, HW, width]``: ``out_proj(softmax(gamma (S - beta mean S)) v')`` per head, ``S`` the tokens' cosine
        (its mean per image; with ``cfg.pooled_mean`` over the whole batch), negatives ``-inf``, ``v'`` CLIP's patch
        values resized bilinearly (align_corners False) from ``(h, w)`` to ``(H, W)``. Row-major grids (the code
        reshapes with ``(w, h)``: the same on its square windows).
    """
    attn = blk.attn
    h = blk.ln_1(x)
    b, _, width = h.shape
    heads = attn.num_heads
    hd = width // heads
    v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)[2]
    unit = F.normalize(proxy, dim=-1)
    similarity = unit @ unit.transpose(1, 2)  # [B, HW, HW]
    mean = similarity.mean() if cfg.pooled_mean else similarity.mean(dim=(1, 2), keepdim=True)
    similarity = (similarity - mean * cfg.beta) * cfg.gamma
    similarity = torch.where(similarity < 0, torch.full_like(similarity, float("-inf")), similarity)
    weights = F.softmax(similarity, dim=-1)
    v = v[:, 1:].reshape(b, grid[0], grid[1], heads, hd).permute(0, 3, 4, 1, 2).reshape(b * heads, hd, *grid)
    v = F.interpolate(v, size=tuple(proxy_grid), mode="bilinear", align_corners=False)
    v = v.reshape(b, heads, hd, -1).transpose(-1, -2)  # [B, heads, HW, hd]
    out = (weights[:, None] @ v).transpose(1, 2).reshape(b, -1, width)
    return attn.out_proj(out)


def splice_windows(tokens: torch.Tensor, proxy_grid: tuple[int, int], window_grid: tuple[int, int],
                   boxes: Sequence[tuple[int, int, int, int]], grid: tuple[int, int]) -> torch.Tensor:
    """Trident's splicing (``guidance_attn``, before its SAM step): the windows' tokens placed into one map.

    Args:
        tokens: ``[n, HW, width]`` each window's proxy-attention output on the proxy's grid ``proxy_grid`` ``(H, W)``.
        window_grid: ``(h, w)`` CLIP's patch grid of one window.
        boxes: per window ``(y0, x0, y1, x1)`` in CLIP patches of the whole input (row-major, mmseg's order).
        grid: ``(gh, gw)`` CLIP's patch grid of the whole input.

    Returns:
        ``[1, width, gh r, gw r]``: the sum of the windows over the cells they cover divided by their count,
        ``r`` the proxy's patches per CLIP patch (``W // w`` when the sides divide, else the proxy's map is first
        resized bilinearly to ``r`` times CLIP's window grid with ``r = round(H / h)``, as coded; where that is 0,
        a proxy grid under half CLIP's, as the demo world's toy DINO (patch 16) against the toy CLIP (patch 8),
        ``r`` = 1: the proxy's map resized to CLIP's window grid, where the reference's code would fail on an empty
        map).
    """
    n, _, width = tokens.shape
    maps = tokens.transpose(1, 2).reshape(n, width, *proxy_grid)
    if proxy_grid[1] % window_grid[1] != 0:
        ratio = max(1, int(round(proxy_grid[0] / window_grid[0])))
        maps = F.interpolate(maps, size=(window_grid[0] * ratio, window_grid[1] * ratio), mode="bilinear",
                             align_corners=False)
    else:
        ratio = proxy_grid[1] // window_grid[1]
    out = maps.new_zeros(1, width, grid[0] * ratio, grid[1] * ratio)
    count = maps.new_zeros(1, 1, grid[0] * ratio, grid[1] * ratio)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        out[0, :, y0 * ratio : y1 * ratio, x0 * ratio : x1 * ratio] += maps[k]
        count[:, :, y0 * ratio : y1 * ratio, x0 * ratio : x1 * ratio] += 1
    return out / count


def sam_affinity(attn: torch.Tensor, values: torch.Tensor, cfg: SamAggregation) -> torch.Tensor:
    """Trident's ``get_sam_sim``: SAM's last attention kept where SAM's values agree, as one row-stochastic matrix.

    Args:
        attn: ``[heads, N, N]`` SAM's last-block attention between the ``N = h w`` patches the image covers.
        values: ``[heads, h, w, hd]`` that block's values there.

    Returns:
        ``[N, N]``: per head, ``attn`` where the cosine of the two patches' values exceeds the threshold
        ``t_i = min(cos_fac * mean_{heads, j} cos_ij, cap)`` of row ``i`` (zero elsewhere); the mean over heads,
        each row divided by its sum.
    """
    unit = F.normalize(values.flatten(1, 2), dim=-1)  # [heads, N, hd]
    sim = unit @ unit.transpose(-1, -2)  # [heads, N, N]
    thresh = cfg.cos_fac * sim.mean(dim=0, keepdim=True).mean(dim=-1, keepdim=True)  # [1, N, 1]
    if not cfg.refine_neg_cos:
        thresh = torch.where(thresh < 0.0, torch.full_like(thresh, cfg.neg_fallback), thresh)
    thresh = torch.where(thresh > cfg.cap, torch.full_like(thresh, cfg.cap), thresh)
    kept = torch.where(sim > thresh, attn, torch.zeros_like(attn)).mean(dim=0)
    return kept / kept.sum(dim=-1, keepdim=True)


def sam_aggregate(spliced: torch.Tensor, attn: torch.Tensor | Sequence[torch.Tensor],
                  values: torch.Tensor | Sequence[torch.Tensor], cfg: SamAggregation) -> torch.Tensor:
    """``[1, width, H, W]`` spliced tokens -> ``[N, width]`` on SAM's ``h x w`` grid (``values``'s): resized
    bilinearly (align_corners False) there, then mixed by :func:`sam_affinity` (the same weights for every head,
    so one product over all channels).

    With two halves (``cfg.halves``: ``attn`` and ``values`` lists of the left and the right half's), the spliced
    map's left ``W // 2`` columns go to the left half's grid and the rest to the right's, each mixed by its own
    half, and the two results are joined side by side: ``[h (w_l + w_r), width]`` row-major."""
    if isinstance(values, (list, tuple)):
        cut = spliced.shape[-1] // 2
        parts = [sam_aggregate(part, a, v, cfg).view(v.shape[1], v.shape[2], -1)
                 for part, a, v in zip((spliced[..., :cut], spliced[..., cut:]), attn, values)]
        if parts[0].shape[0] != parts[1].shape[0]:
            raise VplError(f"--sam-halves: the halves' SAM grids have {parts[0].shape[0]} and {parts[1].shape[0]} "
                           "rows; they must match")
        return torch.cat(parts, dim=1).flatten(0, 1)
    h, w = values.shape[1:3]
    mapped = F.interpolate(spliced, size=(h, w), mode="bilinear", align_corners=False)
    weights = sam_affinity(attn, values, cfg).to(mapped.dtype)
    return weights @ mapped[0].flatten(1).T


# CASS's inverse of a normalisation it never applied: ImageNet's statistics (with 0.255 for blue, as coded) undone
# from CLIP-normalised pixels, before the uint8 round trip that feeds its DINO
_CASS_UNDO_MEAN = (-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.255)
_CASS_UNDO_STD = (1 / 0.229, 1 / 0.224, 1 / 0.255)


def cass_proxy_input(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], patch: int) -> torch.Tensor:
    """CASS's DINO input from one window: ``[3, H, W]`` CLIP-normalised pixels -> ``[1, 3, s', s']`` float32
    normalised with the proxy's ``mean`` / ``std``, on the host.

    As ``forward_feature`` and ``VisionTransformer.forward`` do: ``Normalize`` with the means
    ``-m / s`` and stds ``1 / s`` of ImageNet (blue ``s`` 0.255), ``* 255``, numpy's ``astype(uint8)`` (values
    outside 0..255 wrap, as there), a PIL image resized to the square ``s = min(H, W)`` (PIL's default
    resampling), ``ToTensor``, the proxy's ``Normalize``, and the sides cut to a multiple of ``patch``.
    """
    import torchvision.transforms.functional as TF
    from PIL import Image

    undone = TF.normalize(pixels.detach().float().cpu(), list(_CASS_UNDO_MEAN), list(_CASS_UNDO_STD))
    image = Image.fromarray((undone.permute(1, 2, 0).numpy() * 255).astype("uint8"))
    side = min(pixels.shape[-2:])
    x = TF.normalize(TF.to_tensor(image.resize((side, side))), list(mean), list(std))
    h, w = x.shape[1] - x.shape[1] % patch, x.shape[2] - x.shape[2] % patch
    return x[:, :h, :w][None]


def _range_like(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` mapped linearly from its ``[min, max]`` onto ``target``'s (CASS's ``_normalize_key_range`` and
    ``_normalize_attention_range``)."""
    normalized = (source - source.min()) / (source.max() - source.min())
    return normalized * (target.max() - target.min()) + target.min()


def _low_rank(adj: torch.Tensor, cfg: SpectralMatching) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CASS's ``optimal_q``: ``torch.svd_lowrank`` (float64) of rank ``initial_q``, raised by ``step_q`` until the
    cumulative energy of its own values reaches ``energy_threshold`` (at once, as coded). A graph of fewer nodes than
    ``initial_q`` takes all of them (the code fails there)."""
    max_q = min(adj.shape)
    q = min(cfg.initial_q, max_q)
    while True:
        u, s, v = torch.svd_lowrank(adj.double(), q=q)
        energy = torch.cumsum(s, dim=0) / torch.sum(s)
        if (energy >= cfg.energy_threshold).any() or q + cfg.step_q > max_q:
            return u, s, v
        q += cfg.step_q


def _spectra(keys: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """``[heads, N, d]`` keys -> ``[heads, min(k, N)]`` float64: the top ``k`` eigenvalues (descending) of each head's
    key graph ``k kᵀ scale``, L2-normalised, then L1-normalised (the cost's inputs).

    CASS takes ``eigvalsh`` of the ``N x N`` graph in float64; its nonzero eigenvalues are those of the ``d x d``
    Gram matrix ``kᵀ k scale`` (the same singular values of ``k``), which is what is decomposed here (``d`` 64
    against ``N`` 196..1200 patches: ~``(N / d)³`` fewer operations); a graph of rank ``d < k`` has zeros after
    them. The two differ by the float32 rounding of the graph's entries (~1e-7 relative)."""
    x = keys.double()
    values = torch.linalg.eigvalsh(x.transpose(1, 2) @ x * scale).flip(-1)
    n = min(k, keys.shape[1])
    if values.shape[1] < n:
        values = F.pad(values, (0, n - values.shape[1]))
    return F.normalize(F.normalize(values[:, :n], p=2, dim=1), p=1, dim=-1)


def head_matching_cost(k: torch.Tensor, dino_keys: torch.Tensor, dino_grid: tuple[int, int], grid: tuple[int, int],
                       cfg: SpectralMatching) -> tuple[torch.Tensor, torch.Tensor]:
    """CASS's head-matching cost (``custom_attn``, ``'spectral'``) for ONE image.

    Args:
        k: ``[heads, hw, hd]`` CLIP's last-block keys (class token removed) on ``grid`` ``(h, w)``.
        dino_keys: ``[heads', HW, hd']`` the proxy DINO's last-block keys on ``dino_grid``.

    Returns:
        (``[heads, hw, hd]`` DINO's keys regrouped into CLIP's heads, resized bilinearly to ``grid`` and mapped
        linearly onto the range of CLIP's keys (all heads at once: one scale, one offset); ``[heads, heads]``
        float32 ``1 - Σ|sorted spectrum_D - sorted spectrum_K|``, rows DINO's heads, columns CLIP's, the matrix
        CASS hands ``linear_sum_assignment``.)
    """
    heads = k.shape[0]
    n = grid[0] * grid[1]
    scale = k.shape[-1] ** -0.5
    channels = dino_keys.shape[0] * dino_keys.shape[2]
    if channels % heads:
        raise VplError(f"--dense cass: the proxy model's {channels} key channels do not split into CLIP's {heads} "
                       "heads; use a proxy whose width is a multiple of CLIP's head count (ViT-B/8 DINO for ViT-B/16)")
    # the code regroups DINO's key channels into CLIP's heads (the same heads when both are ViT-B)
    dk = dino_keys.to(k.dtype).permute(0, 2, 1).reshape(heads, channels // heads, *dino_grid)
    dk = F.interpolate(dk, size=tuple(grid), mode="bilinear", align_corners=False).reshape(heads, -1, n)
    dk = _range_like(dk.permute(0, 2, 1), k)
    dino_spec, clip_spec = _spectra(dk, scale, cfg.k_eigen), _spectra(k, scale, cfg.k_eigen)
    distance = (torch.sort(dino_spec, dim=-1)[0][:, None] - torch.sort(clip_spec, dim=-1)[0][None]).abs().sum(-1)
    return dk, (1 - distance).to(torch.float32).to(k.device)


def spectral_key_attention(attn, h: torch.Tensor, dino_keys: torch.Tensor, dino_grid: tuple[int, int],
                           grid: tuple[int, int], cfg: SpectralMatching, bias: torch.Tensor | None) -> torch.Tensor:
    """CASS's last block (``custom_attn``, ``'spectral'``) for ONE image.

    Args:
        attn: the block's ``nn.MultiheadAttention``.
        h: ``[1, 1 + hw, width]`` its ``ln_1`` output; ``grid`` ``(h, w)``.
        dino_keys: ``[heads', HW, hd']`` the proxy DINO's last-block keys (class token removed) on ``dino_grid``;
            their channels are regrouped into CLIP's heads as the code's reshape does (ViT-B/8 DINO and ViT-B/16
            CLIP: the same 12 heads of 64; a proxy of another width: ``heads' hd' / heads`` channels a head).
        bias: ``[hw, hw]`` Ω (NACLIP's neighbourhood bias) or None.

    Returns:
        ``[1, hw, width]`` patch tokens (no class token): ``out_proj(softmax(G + Ω) v)`` per head, where for CLIP
        head ``i`` matched to DINO head ``j``: ``G = (w s D_j + K_i) / (w s + 1)``, ``K_i = k kᵀ scale`` CLIP's
        key graph, ``D_j`` DINO's key graph (its keys resized bilinearly to the grid and mapped onto the range of
        CLIP's keys) approximated by the randomised SVD (:func:`_low_rank`; singular values stretched when
        ``cfg.stretch``), diagonal zeroed, mapped onto ``K_i``'s range; ``w = 1 - cost``, the cost
        ``1 - Σ|sorted spectrum_D - sorted spectrum_K|`` and the matching scipy's ``linear_sum_assignment`` on it
        (minimised, as coded). The seed of the SVD's basis is the caller's.
    """
    from scipy.optimize import linear_sum_assignment

    heads = attn.num_heads
    width = h.shape[-1]
    hd = width // heads
    scale = hd**-0.5
    _, k, v = F.linear(h[0], attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k = k.reshape(-1, heads, hd).transpose(0, 1)[:, 1:]  # [heads, hw, hd]
    v = v.reshape(-1, heads, hd).transpose(0, 1)[:, 1:]
    n = grid[0] * grid[1]
    dk, cost = head_matching_cost(k, dino_keys, dino_grid, grid, cfg)
    clip_graph = torch.bmm(k, k.transpose(1, 2)) * scale
    dino_graph = torch.bmm(dk, dk.transpose(1, 2)) * scale
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    combined = torch.zeros_like(clip_graph)
    for idx in range(heads):
        i, j = int(rows[idx]), int(cols[idx])
        w = 1 - cost[i, j]
        u, s, vv = _low_rank(dino_graph[j], cfg)
        if cfg.stretch:
            lo, hi = s.min(), s.max()
            s = (s - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo
        approx = u @ torch.diag(s) @ vv.T
        approx.fill_diagonal_(0)
        dino_adj = _range_like(approx, clip_graph[i])
        combined[idx] = (w * cfg.scale_factor * dino_adj + clip_graph[i]) / (w * cfg.scale_factor + 1)
    if bias is not None:
        combined = combined + bias.to(combined.dtype)[None]
    out = torch.bmm(F.softmax(combined, dim=-1), v)  # [heads, hw, hd]
    return attn.out_proj(out.transpose(0, 1).reshape(1, n, width))


def query_clusters(text: torch.Tensor, threshold: float) -> np.ndarray:
    """CASS's ``hierarchical_clustering``: ``[Q, D]`` query rows -> ``[Q]`` cluster ids ``0..K-1``: Ward linkage of
    their cosine distances (scikit-learn's ``cosine_distances`` restated: rows re-normalised, ``1 - cos`` clipped
    to ``[0, 2]``, zero diagonal), cut at distance ``threshold`` (scipy's ``fcluster``). One query: one cluster."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    x = text.detach().float().cpu().numpy()
    if len(x) < 2:
        return np.zeros(len(x), dtype=np.int64)
    x = x / np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    d = np.clip(1 - x @ x.T, 0, 2)
    np.fill_diagonal(d, 0.0)
    return fcluster(linkage(squareform(d, checks=False), method="ward"), t=threshold, criterion="distance") - 1


def object_presence_logits(feats: torch.Tensor, image: torch.Tensor, text: torch.Tensor, clusters: np.ndarray,
                           cfg: TextShift) -> torch.Tensor:
    """CASS's logits of one window (``forward_feature`` after the image encoder).

    Args:
        feats: ``[hw, D]`` unit patch features. image: ``[D]`` the unit CLIP embedding (class token through the
            ordinary last block) of the window or of the whole input (:attr:`TextShift.window_global`).
        text: ``[Q, D]`` unit query rows; clusters: their :func:`query_clusters`.

    Returns:
        ``[hw, Q]``: ``(1 - w) feats @ T'ᵀ + w (image @ textᵀ)``, ``T'`` the rows with each cluster's query closest
        to ``image`` shifted to ``normalize((1 - a) t + a m)``, ``m`` the unit mean of its ``top_k`` most similar
        patches (as ranked by the re-normalised features), ``a`` = ``mean_vector_weight``.
    """
    sims = image @ text.T  # [Q]
    order = sims.detach().float().cpu().numpy()
    adjusted = text.clone()
    unit = F.normalize(feats, dim=1)
    for cluster in range(int(clusters.max()) + 1 if len(clusters) else 0):
        members = np.where(clusters == cluster)[0]
        c = int(members[np.argmax(order[members])])
        row = F.normalize(text[c][None], dim=1)
        top = torch.topk((unit @ row.T).squeeze(1), min(cfg.top_k, feats.shape[0])).indices
        mean = F.normalize(feats[top].mean(dim=0), dim=0)
        adjusted[c] = F.normalize((1 - cfg.mean_vector_weight) * row[0] + cfg.mean_vector_weight * mean, dim=0)
    return (feats @ adjusted.T) * (1 - cfg.global_weight) + sims[None] * cfg.global_weight


__all__ = ["DENSE_METHODS", "DENSE_PRESETS", "DenseMixing", "dense_mixing", "resize_positional",
           "neighbourhood_bias", "mixed_attention", "mix_last_block", "ATTENTIONS", "POS_INTERPOLATIONS",
           "SelfCalibration", "lof_outliers", "repair_outliers", "unit_similarity", "aggregate",
           "self_calibrated_tokens", "scaled_levels", "ProxyAttention", "proxy_attention_tokens", "SpectralMatching",
           "TextShift", "SamAggregation", "splice_windows", "sam_affinity", "sam_aggregate", "cass_proxy_input",
           "spectral_key_attention", "head_matching_cost", "query_clusters", "object_presence_logits"]

"""How the last block mixes its tokens (``--dense``): :class:`DenseMixing`, the four pure-mixing presets and the one
forward that runs them.

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

The four newer methods read more than the last block's input, each in a module of its own beside this one
(:mod:`.sc_clip`, :mod:`.proxyclip`, :mod:`.cass`, :mod:`.trident`, loaded by name through :mod:`vpltool.models.dense`);
their presets carry their configs in :class:`DenseMixing`'s optional fields.

The methods resize the positional embedding like DINO (``pos_interpolation='bicubic-dino'``): bicubic,
``scale_factor=((h + 0.1) / gh, (w + 0.1) / gw)`` from the native ``gh x gw`` grid, align_corners False, whenever the
grid differs from the native one; CLIP-ES (``none``) resizes bilinearly to the size (:func:`resize_positional`).

Stable API (used by ``parity/dense_parity.py``):

* :data:`DENSE_METHODS`, :func:`dense_mixing`;
* ``load_backbone(spec, device, dense="naclip")`` or ``bb.with_dense("naclip")``;
* ``bb.dense_features(pixels)``: ``[B, 3, H, W]`` float32 CLIP-normalised pixels (H, W multiples of the patch size)
  -> ``[B, h*w, D]`` joint-space patch features, not normalised;
* the segmentor (:mod:`vpltool.models.dense.segmentor`, also importable from :mod:`vpltool.stages.segment`):
  ``segment_logits(bb, pixels, text, settings, sizes)`` (slide inference + PAMR with a method's
  :class:`~vpltool.config.DenseSettings`; ``SegmentConfig(dense=M).resolved()`` gives the method's own) or
  ``dense_logits(bb, pixels, text, sizes, crop, stride, pad, whole)`` -> per image ``[Q, H0, W0]`` cosine logits at
  image size; ``pamr(image, logits, steps, dilations)``; ``dense_probabilities(logits, query_class, n_classes,
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...config.dense import DENSE_CHOICES
from ...errors import VplError
from ..backbones.onednn import f_linear

DENSE_METHODS = DENSE_CHOICES  # the spec table's names (vpltool.config.dense.DENSE_SPECS)
ATTENTIONS = ("qk", "identity", "qq+kk", "qq", "kk", "prior+kk", "proxy", "spectral", "hook")
POS_INTERPOLATIONS = ("bilinear", "bicubic-dino", "bicubic-antialias")


@dataclass(frozen=True)
class DenseMixing:
    """How the last block mixes its tokens.

    Attributes:
        method: the preset's name (one of :data:`DENSE_METHODS`).
        attention: ``qk`` (CLIP's own), ``identity`` (each token keeps its value: MaskCLIP), ``qq+kk`` (SCLIP's
            ``softmax(q qᵀ s) + softmax(k kᵀ s)``), ``qq`` (ClearCLIP), ``kk`` (NACLIP, with Ω when
            ``gaussian_std > 0``), ``hook`` (the method's own: its :meth:`~vpltool.models.dense.DenseHooks.attention`
            hook on the block's q, k and v, which applies no Ω itself).
        residual: the block's output adds its input (``x + attn``); False: the attention output alone.
        ffn: the block's MLP (``+ mlp(ln_2(.))``) runs after the attention.
        pos_interpolation: ``bilinear`` (CLIP-ES: resized to the grid), ``bicubic-dino`` (the +0.1 scale factor) or
            ``bicubic-antialias`` (to the size, antialiased: :func:`resize_positional`).
        gaussian_std: std in patches of NACLIP's neighbourhood bias Ω added to the attention logits; 0: none.
        calibration: SC-CLIP's outlier repair, similarity prior and multi-level fusion
            (:func:`.sc_clip.self_calibrated_tokens`), with ``attention='prior+kk'``
            (``(softmax(prior) + softmax(k kᵀ s)) / 2``); None: the last block alone.
        proxy: ProxyCLIP's proxy attention (``attention='proxy'``, :func:`.proxyclip.proxy_attention_tokens`);
            the backbone needs a proxy vision model (``with_dense(method, proxy=...)``).
        spectral: CASS's key-graph matching with the proxy DINO's last-block keys (``attention='spectral'``,
            :func:`.cass.spectral_key_attention`, with Ω when ``gaussian_std > 0``); needs a proxy vision model.
        text_shift: CASS's object-presence text shift and global blend (:func:`.cass.object_presence_logits`), applied
            by the segmentor to each window's patch features.
        splice: Trident's splicing of the windows' proxy-attention outputs and their SAM aggregation
            (:mod:`.trident`); with ``proxy``, and the
            backbone needs a SAM encoder too (``with_dense(method, proxy=..., sam=...)``).
    """

    method: str
    attention: str = "qk"
    residual: bool = True
    ffn: bool = True
    pos_interpolation: str = "bilinear"
    gaussian_std: float = 0.0
    # the methods' own configs, each defined in its module (the arrows run from the methods to this one)
    calibration: Any = None  # sc_clip.SelfCalibration | None
    proxy: Any = None  # proxyclip.ProxyAttention | None
    spectral: Any = None  # cass.SpectralMatching | None
    text_shift: Any = None  # cass.TextShift | None
    splice: Any = None  # trident.SamAggregation | None

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


# the four pure-mixing methods (and CLIP's own block): data, run by mix_last_block
PURE_PRESETS: dict[str, DenseMixing] = {
    "none": DenseMixing("none"),
    "maskclip": DenseMixing("maskclip", "identity", True, True, "bicubic-dino"),
    "sclip": DenseMixing("sclip", "qq+kk", True, True, "bicubic-dino"),
    "clearclip": DenseMixing("clearclip", "qq", False, False, "bicubic-dino"),
    "naclip": DenseMixing("naclip", "kk", False, False, "bicubic-dino", gaussian_std=5.0),  # test_all.sh's std 5
}


def resize_positional(pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int], mode: str,
                      lead: int = 1) -> torch.Tensor:
    """``[lead + gh*gw, width]`` positional embedding -> ``[lead + h*w, width]`` for ``grid`` (the ``lead`` rows
    before the patches kept: CLIP's class row; none for SigLIP 2).

    ``bilinear``: CLIP-ES (``upsample_pos_emb``), resized to the size. ``bicubic-dino``: the dense methods' (DINO's)
    ``interpolate_pos_encoding``: bicubic with the scale factor ``(h + 0.1) / gh``, not recomputed from the size,
    so the sampling positions are those of that factor. ``bicubic-antialias``: bicubic to the size with torch's
    antialiased kernel (``interpolate_offset=0, interpolate_antialias=True``: the DINOv2 ``*_reg`` hub models', and
    timm's own ``resample_abs_pos_embed``); that kernel is not the plain one even when it enlarges (its cubic
    coefficient is PIL's -0.5, the plain kernel's -0.75).
    """
    if tuple(grid) == tuple(native):
        return pos
    gh, gw = native
    patches = pos[lead:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    if mode == "bilinear":
        patches = F.interpolate(patches, size=tuple(grid), mode="bilinear", align_corners=False)
    elif mode == "bicubic-antialias":
        patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False, antialias=True)
    else:
        patches = F.interpolate(patches, scale_factor=((grid[0] + 0.1) / gh, (grid[1] + 0.1) / gw), mode="bicubic",
                                align_corners=False, recompute_scale_factor=False)
        if tuple(patches.shape[-2:]) != tuple(grid):  # the +0.1 makes floor() land on the grid; guard it anyway
            raise VplError(f"positional embedding resized to {tuple(patches.shape[-2:])}, not the grid {grid}")
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([pos[:lead], patches])


def neighbourhood_bias(grid: tuple[int, int], std: float, device=None, dtype=torch.float32,
                       lead: int = 1) -> torch.Tensor:
    """NACLIP's Ω: ``[lead + hw, lead + hw]``; patch rows/columns ``exp(-d² / (2 std²))`` with ``d`` the distance
    in patches between the two tokens (peak 1, not normalised), the ``lead`` tokens' rows and columns 0 (CLIP's class
    token; SigLIP 2 has none). Made on ``device`` (no host-to-device copy)."""
    h, w = grid
    rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
    d2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    out = torch.zeros(lead + h * w, lead + h * w, device=device, dtype=torch.float32)
    out[lead:, lead:] = torch.exp(-d2 / (2.0 * std * std))
    return out.to(dtype)


def mixed_attention(attn, h: torch.Tensor, mixing: DenseMixing, bias: torch.Tensor | None = None,
                    prior: torch.Tensor | None = None, attend: Any = None) -> torch.Tensor:
    """The last block's attention under ``mixing``: ``out_proj(A v)`` per head.

    Args:
        attn: the block's ``nn.MultiheadAttention`` (its ``in_proj_weight``/``in_proj_bias``, ``num_heads``,
            ``out_proj``), or an attention that gives its own q, k, v per head (``heads(h)``: a timm tower's, its
            q and k after its norms and RoPE, :mod:`vpltool.models.backbones.timm_tower`) and ``out_proj``.
        h: ``[B, L, width]`` the block's ``ln_1`` output.
        bias: ``[L, L]`` added to the scaled logits before the softmax (Ω), or None.
        prior: ``[B, L, L]`` attention logits shared by the heads (``prior+kk``: SC-CLIP's masked similarity,
            ``-inf`` where masked).
        attend: ``attend(q, k, v) -> [B, heads, L, hd]`` (``hook``: the method's attention hook, each ``[B, heads,
            L, hd]``).

    Returns:
        ``[B, L, width]``.
    """
    own = getattr(attn, "heads", None)
    if own is None and (getattr(attn, "in_proj_weight", None) is None or not hasattr(attn, "out_proj")):
        raise VplError("--dense: the last block's attention has no packed in_proj_weight (a custom attention "
                       "module); only standard nn.MultiheadAttention blocks take a dense method")
    b, n, width = h.shape
    heads = attn.num_heads
    scale = (width // heads) ** -0.5
    if own is not None:
        q, k, v = own(h)  # [B, heads, L, hd], as the model computes them
    else:
        q, k, v = f_linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, heads, width // heads).transpose(1, 2) for t in (q, k, v))  # [B, heads, L, hd]
    if mixing.attention == "identity":
        out = v
    elif mixing.attention == "hook":  # a method's own attention (DenseHooks.attention)
        if attend is None:
            raise VplError(f"--dense {mixing.method}: its attention is its hook's, and none was given")
        out = attend(q, k, v)
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


def mix_last_block(blk, x: torch.Tensor, mixing: DenseMixing, bias: torch.Tensor | None = None,
                   attend: Any = None) -> torch.Tensor:
    """Run open_clip's ``ResidualAttentionBlock`` ``blk`` on ``[B, L, width]`` tokens with ``mixing`` (``attend``:
    the method's attention hook, for ``attention='hook'``: :func:`mixed_attention`).

    ``x' = [x +] ls_1(attn)``, then ``x' = x' + ls_2(mlp(ln_2(x')))`` when ``mixing.ffn`` (``ls_*`` are identities
    in CLIP). Returns ``[B, L, width]``.
    """
    a = blk.ls_1(mixed_attention(blk.attn, blk.ln_1(x), mixing, bias, attend=attend))
    x = x + a if mixing.residual else a
    if mixing.ffn:
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x


__all__ = ["DENSE_METHODS", "PURE_PRESETS", "DenseMixing", "resize_positional", "neighbourhood_bias",
           "mixed_attention", "mix_last_block", "ATTENTIONS", "POS_INTERPOLATIONS"]

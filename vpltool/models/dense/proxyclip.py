"""ProxyCLIP (``--dense proxyclip``; mc-lan/ProxyCLIP): the last block's attention taken from a proxy vision model.

The attention is the proxy's (a DINO's) patch similarity, shared by the heads, applied to CLIP's values on the proxy's
grid: :class:`ProxyAttention`, :func:`proxy_attention_tokens`, and the feature hook :func:`features` (the backbone
needs the proxy: ``with_dense("proxyclip", proxy=...)``). Its segmentor settings and proxy model are the spec
table's (:data:`vpltool.config.dense.DENSE_SPECS`). Trident (:mod:`.trident`) runs the same block per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import VplError
from ..backbones.onednn import f_linear, references_library
from .hooks import DenseHooks
from .mixing import DenseMixing


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



def proxy_attention_tokens(blk, x: torch.Tensor, grid: tuple[int, int], proxy: torch.Tensor,
                           proxy_grid: tuple[int, int], cfg: ProxyAttention) -> torch.Tensor:
    """ProxyCLIP's last block (its ``custom_attn``).

    Args:
        blk: the last ``ResidualAttentionBlock``.
        x: ``[B, 1 + hw, width]`` tokens entering it; ``grid`` ``(h, w)``.
        proxy: ``[B, HW, C]`` the proxy model's final patch tokens on ``proxy_grid`` ``(H, W)``.

    Returns:
        ``[B, HW, width]``: ``out_proj(softmax(gamma (S - beta mean S)) v')`` per head, ``S`` the tokens' cosine
        (its mean per image; with ``cfg.pooled_mean`` over the whole batch), negatives ``-inf`` (a row of nothing
        else: the token alone), ``v'`` CLIP's patch
        values resized bilinearly (align_corners False) from ``(h, w)`` to ``(H, W)``. Row-major grids (the code
        reshapes with ``(w, h)``: the same on its square windows).
    """
    attn = blk.attn
    h = blk.ln_1(x)
    b, _, width = h.shape
    heads = attn.num_heads
    hd = width // heads
    v = f_linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)[2]
    unit = F.normalize(proxy, dim=-1)
    similarity = unit @ unit.transpose(1, 2)  # [B, HW, HW]
    mean = similarity.mean() if cfg.pooled_mean else similarity.mean(dim=(1, 2), keepdim=True)
    similarity = (similarity - mean * cfg.beta) * cfg.gamma
    negative = similarity < 0
    # a token whose every similarity is masked (a blank photo: all tokens alike, mean S > 1 / beta, so even its own
    # S of 1 falls below the mean) got a softmax of -inf only: NaN, in the reference too, and NaN masks; it attends
    # to itself alone, its most similar token. Every other row is the reference's, bit for bit
    alone = negative.all(dim=-1, keepdim=True) & torch.eye(negative.shape[-1], dtype=torch.bool,
                                                           device=negative.device)
    similarity = torch.where(negative & ~alone, torch.full_like(similarity, float("-inf")), similarity)
    weights = F.softmax(similarity, dim=-1)
    v = v[:, 1:].reshape(b, grid[0], grid[1], heads, hd).permute(0, 3, 4, 1, 2).reshape(b * heads, hd, *grid)
    v = F.interpolate(v, size=tuple(proxy_grid), mode="bilinear", align_corners=False)
    v = v.reshape(b, heads, hd, -1).transpose(-1, -2)  # [B, heads, HW, hd]
    out = (weights[:, None] @ v).transpose(1, 2).reshape(b, -1, width)
    return attn.out_proj(out)


# ProxyCLIP proxyclip_segmentor.py: beta 1.2, gamma 3.0; its open_clip resizes the positional embedding DINO's way
PRESET = DenseMixing("proxyclip", "proxy", False, False, "bicubic-dino", proxy=ProxyAttention())


def proxy_tokens(bb, pixels: torch.Tensor, fp16_pos: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """The proxy-attention last block's output before ``ln_post``: ``[B, 3, H, W]`` CLIP-normalised pixels ->
    (``[B, HW, width]``, the proxy's grid ``(H', W')``). The proxy sees the same pixels (CLIP's normalisation
    undone, the proxy's applied, as its ``UnNormalize`` + ``Normalize``)."""
    if bb.proxy is None:
        raise VplError(f"--dense {bb.mixing.method} needs a proxy vision model: pass --proxy-model and "
                       "--proxy-weights (a DINO ViT, e.g. vit_base_patch8_224.dino)")
    encoded = bb.encode(pixels, stop=bb.n_blocks - 1, fp16_pos=fp16_pos)
    raw = pixels.to(bb.device).float() * bb._stats[1] + bb._stats[0]
    mean = torch.tensor(bb.proxy.mean, device=raw.device).view(1, 3, 1, 1)
    std = torch.tensor(bb.proxy.std, device=raw.device).view(1, 3, 1, 1)
    with references_library():  # its similarity is masked below 0: the reference's bits (onednn.py)
        feats, grid = bb.proxy.final_tokens(((raw - mean) / std).to(pixels.dtype))
    tokens = proxy_attention_tokens(bb.blocks[-1], encoded.tokens, encoded.grid, feats.to(encoded.tokens.dtype),
                                    grid, bb.mixing.proxy)
    return tokens, grid


def features(bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
    """The method's feature hook: :func:`proxy_tokens`, ``ln_post`` and ``proj`` -> ``[B, HW, D]`` on the proxy's
    grid (not normalised)."""
    return bb.project(proxy_tokens(bb, pixels, fp16_pos)[0])


def feature_grid(bb, size: tuple[int, int]) -> tuple[int, int]:
    """The grid of :func:`features` for an input of ``size`` ``(H, W)`` pixels: the proxy model's."""
    p = bb.proxy.patch_size if bb.proxy is not None else bb.patch_size
    return int(size[0]) // p, int(size[1]) // p


class Hooks(DenseHooks, method="proxyclip", preset=PRESET):
    """ProxyCLIP's hooks: its feature forward on the proxy's grid (:func:`features`, :func:`feature_grid`)."""

    def features(self, bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        return features(bb, pixels, fp16_pos)

    def feature_grid(self, bb, size: tuple[int, int]) -> tuple[int, int]:
        return feature_grid(bb, size)


__all__ = ["Hooks", "ProxyAttention", "proxy_attention_tokens", "PRESET", "proxy_tokens", "features", "feature_grid"]

"""The image tower of a :class:`~vpltool.models.ClipBackbone`: the family's parameter that says how its tokens are
made, mixed and projected, so that one forward (``ClipBackbone.encode`` / ``frozen_pass``) and one GradCAM serve every
open_clip model whose image tower is a ViT.

A tower gives:

* ``n_prefix``: the tokens before the patches (open_clip's ViT and PE-Core: the class token, 1; SigLIP 2: none, 0);
* ``pos_table`` ``[lead + gh*gw, width]`` and ``pos_lead`` (its rows before the patch rows), resized per grid by
  the backbone (:func:`vpltool.models.dense.resize_positional`);
* ``embed(pixels, pos)``: ``[B, 3, H, W]`` -> ``[B, n_prefix + hw, width]`` tokens entering block 0;
* ``block(i, x, grid, need_weights, keep_ln1, mask)``: one block, its head-mean attention when asked, its ``ln_1``
  output when asked (GradCAM's layer);
* ``mixing_block(grid)``: the last block in open_clip's form (``ln_1``, ``attn`` with its q/k/v, ``ls_1``,
  ``ln_2``, ``mlp``, ``ls_2``), for the ``--dense`` mixing presets (:func:`vpltool.models.dense.mix_last_block`);
* ``project(tokens)``: ``[..., width]`` patch tokens -> ``[..., D]`` dense tokens in the joint image-text space;
* ``pooled(out)``: ``[N, n_prefix + hw, width]`` the last block's output -> ``[N, D]`` float32 unit image embeddings,
  the mean of the projected patch tokens (CLIP-ES's "surgery": the patch mean in place of the class token);
* ``methods``: the ``--dense`` methods whose arithmetic it supports (None: all).

:class:`OpenClipTower` is open_clip's own ViT (OpenAI's CLIP, LAION's, MetaCLIP's QuickGELU ViTs, the toy CLIP):
the arithmetic every earlier release ran, unchanged. The timm towers of open_clip (SigLIP 2, PE-Core) are
:class:`~vpltool.models.backbones.timm_tower.TimmTower`. :func:`image_tower` picks one.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import VplError
from .onednn import applies, f_linear, use_onednn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def self_attention(attn: nn.MultiheadAttention, h: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> torch.Tensor | None:
    """``attn(h, h, h, need_weights=False, attn_mask=mask)[0]`` for a batch-first ``[B, L, width]`` float32 ``h``
    (``mask`` additive ``[L, L]`` or None): the packed ``in_proj``, ``softmax(q kᵀ / sqrt(hd) + mask) v`` per head
    (fused) and ``out_proj``, both products through :func:`.onednn.f_linear`. None where :func:`.onednn.applies`
    does not (the caller runs the module) or the module is not a plain packed self-attention."""
    if (not getattr(attn, "batch_first", False) or not getattr(attn, "_qkv_same_embed_dim", False)
            or attn.bias_k is not None or attn.add_zero_attn or (attn.dropout and attn.training)
            or not applies(h, attn.in_proj_weight)):
        return None
    heads = attn.num_heads
    b, length, width = h.shape
    q, k, v = (t.reshape(b, length, heads, width // heads).transpose(1, 2)
               for t in f_linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return f_linear(out.transpose(1, 2).reshape(b, length, width), attn.out_proj.weight, attn.out_proj.bias)


class OpenClipTower:
    """open_clip's ``VisionTransformer``: ``conv1`` patches, the class token, the positional table, ``ln_pre``, the
    ``ResidualAttentionBlock`` s (``nn.MultiheadAttention``), ``ln_post`` then ``proj``."""

    kind = "open_clip"
    n_prefix = 1
    pos_lead = 1
    methods = None  # every --dense method

    def __init__(self, visual, name: str):
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise VplError(f"--model {name}: only ViT image towers are supported (no ResNet)")
        if getattr(visual, "attn_pool", None) is not None:
            raise VplError(f"--model {name}: attentional-pooling towers (CoCa) are not supported")
        use_onednn(visual, out_proj=True)  # its fp32 linear layers through oneDNN on the CPU (onednn.py)
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        ps = visual.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        grid = visual.grid_size
        self.native_grid = (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) else (int(grid), int(grid))

    @property
    def pos_table(self) -> torch.Tensor:
        return self.visual.positional_embedding

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def in_dtype(self, dtype: torch.dtype) -> OpenClipTower:
        """A copy of this tower with its modules stored in ``dtype`` (the model's own is untouched)."""
        clone = copy.copy(self)
        clone.visual = copy.deepcopy(self.visual).to(dtype)
        clone.blocks = list(clone.visual.transformer.resblocks)
        return clone

    def embed(self, pixels: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels, ``pos`` ``[1 + hw, width]`` -> ``[B, 1 + hw, width]``."""
        v = self.visual
        x = v.conv1(pixels.to(v.conv1.weight.dtype))  # [B, width, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, hw, width]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        return v.ln_pre(torch.cat([cls, x], dim=1) + pos.to(x.device, x.dtype))

    def block(self, i: int, x: torch.Tensor, grid: tuple[int, int], need_weights: bool = False,
              keep_ln1: bool = False, mask: torch.Tensor | None = None):
        """Block ``i`` on ``[B, L, width]`` (``mask``: an additive ``[L, L]`` window mask or None) -> (output,
        head-mean attention ``[B, L, L]`` or None, ``ln_1`` output or None)."""
        blk = self.blocks[i]
        h = blk.ln_1(x)
        mask = None if mask is None else mask.to(h.dtype)
        attn_out, attn = None if need_weights else self_attention(blk.attn, h, mask), None
        if attn_out is None:  # the weights asked for, or not a CPU's fp32 inference: the module itself
            attn_out, attn = blk.attn(h, h, h, need_weights=need_weights, average_attn_weights=True,
                                      attn_mask=mask)
        x = x + blk.ls_1(attn_out)
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x, attn, (h if keep_ln1 else None)

    def class_token(self, i: int, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Block ``i``'s output for the class token alone: ``[B, L, width]`` -> ``[B, 1, width]``."""
        blk = self.blocks[i]
        h = blk.ln_1(x)
        out, _ = blk.attn(h[:, :1], h, h, need_weights=False,
                          attn_mask=None if mask is None else mask[:1].to(h.dtype))
        x = x[:, :1] + blk.ls_1(out)
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def mixing_block(self, grid: tuple[int, int]):
        """The last block as the ``--dense`` mixing reads it: open_clip's own."""
        return self.blocks[-1]

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then ``proj``: ``[..., width]`` -> ``[..., D]``."""
        v = self.visual
        x = v.ln_post(tokens)
        return x @ v.proj.to(x.dtype) if v.proj is not None else x

    def pooled(self, out: torch.Tensor) -> torch.Tensor:
        """``[N, 1 + hw, width]`` -> ``[N, D]`` float32 unit embeddings: ``ln_post``, the patch mean, then ``proj``
        (linear, so the mean of the projected tokens), the projection as a product and a sum: a matmul's rounding
        depends on how many rows it has (measured on a CPU), this does not, so an image's score is the same in any
        batch."""
        v = self.visual
        pooled = v.ln_post(out[:, 1:]).float().mean(1)  # [N, width]
        embedding = pooled if v.proj is None else (pooled[:, :, None] * v.proj.float()).sum(1)
        return F.normalize(embedding, dim=-1)


def image_tower(visual, name: str):
    """The tower of open_clip image tower ``visual``: :class:`OpenClipTower` for open_clip's ViT, a
    :class:`~vpltool.models.backbones.timm_tower.TimmTower` for a timm tower (SigLIP 2, PE-Core); one line for
    the others (ResNets, CoCa's attentional pooling)."""
    if hasattr(visual, "trunk"):
        from .timm_tower import TimmTower

        return TimmTower(visual, name)
    return OpenClipTower(visual, name)


__all__ = ["OPENAI_MEAN", "OPENAI_STD", "OpenClipTower", "image_tower", "self_attention"]

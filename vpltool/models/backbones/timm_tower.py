"""The timm image towers of open_clip (``TimmModel``): SigLIP 2 and PE-Core, as a
:class:`~vpltool.models.ClipBackbone`'s tower (:mod:`.towers`).

Neither pools with a class token: both end in timm's attention-pooling head (``AttentionPoolLatent``, ``global_pool
'map'``: one learned latent query attends to the final-norm tokens, ``proj``, then ``x + mlp(norm(x))``). SigLIP 2
(``vision_transformer.VisionTransformer``, ``class_token=False``) has no class token at all; PE-Core (``eva.Eva``) keeps
one in its blocks, which its pooling head reads with the patches, and applies 2-D RoPE to the patches' q and k in
every block.

What vpltool takes from them follows TextRegion (avaxiao/TextRegion @ e392cd2, the method that runs both;
``TextRegionSegmenter.py`` lines):

* **dense tokens**: SigLIP 2's final-norm tokens (L537-538, ``trunk.forward_intermediates``) and PE's ``ln_post``
  tokens (L535; ``core/vision_encoder/pe.py`` L554-558) with the class token dropped (L324-325). A region's feature
  is the pooling head with every key replaced by one shared key, so that the latent query weights the region's
  patches uniformly (SigLIP 2: L296-308, the mean key; PE: L387-389, the normed mean), then ``proj`` and SigLIP 2's
  ``fc_norm`` (L311-314; PE: ``@ visual.proj``, L392), **without** the head's MLP. A region of one patch is that
  patch's value through the head, ``head(proj(v(norm(x_p))))``: the value path of the attention pool, as MaskCLIP
  reads CLIP's own attention pooling. That is :meth:`TimmTower.project`; every step after ``norm`` is affine, so
  the mean of a region's dense tokens *is* TextRegion's region feature.
* **the CLIP-ES surgery** (the image embedding is the mean of the projected patch tokens, not the class token):
  the pooling head over every patch with uniform weights, TextRegion's region feature for the whole image
  (:meth:`TimmTower.pooled`); PE's class token is kept in the blocks and left out of the mean, as CLIP's.
* **token mixing** of the blocks: timm's own (:mod:`.timm_blocks`), PE's RoPE included (``rope.get_embed(shape=grid)``,
  the tensor timm's dynamic-size forward gives its blocks); the ``--dense`` mixing presets read q and k with it.
* **positions at another size**: the absolute table resized per grid as open_clip's ViT's is (the ``--dense``
  preset's interpolation; class rows kept), RoPE recomputed for the grid.

``--dense`` methods beyond the last block's mixing read open_clip's ``nn.MultiheadAttention`` modules or the class
token (SC-CLIP's fused levels, ProxyCLIP's and Trident's value path, CASS's class-token embedding, CorrCLIP's region
tokens): :data:`TIMM_METHODS` lists what a timm tower runs (the spec rows that say ``timm_tower=True``: the mixing
presets, and a plugin whose attention hook reads only q, k and v), and the clip family refuses the others before any
model loads (:func:`vpltool.models.backbones.clip.check_backbone`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ...config.dense import TIMM_METHODS  # the --dense rows that say they run on a timm tower (timm_tower=True)
from ...errors import VplError
from .timm_blocks import check_blocks, heads_qkv, run_block, scale_1, scale_2

TRUNKS = ("VisionTransformer", "Eva")  # timm classes whose embedding :meth:`TimmTower.embed` repeats
_LINEAR = (nn.Linear, nn.Identity, nn.Dropout)  # what may follow the pooling head: affine, so means commute


class TimmTower:
    """open_clip's ``TimmModel`` around a timm ViT with an attention-pooling head (module docstring)."""

    kind = "timm"
    methods = TIMM_METHODS

    def __init__(self, visual, name: str):
        trunk = visual.trunk
        if type(trunk).__name__ not in TRUNKS:
            raise VplError(f"--model {name}: its timm tower is a {type(trunk).__name__}; vpltool reads timm "
                           f"{' / '.join(TRUNKS)} towers (SigLIP 2, PE-Core)")
        check_blocks(trunk.blocks, f"--model {name}")
        pool = getattr(trunk, "attn_pool", None)
        if pool is None or getattr(pool, "pos_embed", None) is not None or int(pool.latent_len) != 1:
            raise VplError(f"--model {name}: its timm tower pools with {getattr(trunk, 'global_pool', '?')!r}; vpltool "
                           "takes dense tokens through an attention-pooling head (timm_pool 'map': SigLIP 2, PE-Core)")
        after = [trunk.fc_norm, trunk.head, *visual.head.children()]
        if not all(isinstance(m, _LINEAR) for m in after):
            raise VplError(f"--model {name}: a non-linear layer after its pooling head "
                           f"({', '.join(type(m).__name__ for m in after if not isinstance(m, _LINEAR))}); the mean "
                           "of dense tokens would not be the pooled embedding")
        self.visual, self.trunk, self.name = visual, trunk, name
        self.blocks = list(trunk.blocks)
        self.n_prefix = int(trunk.num_prefix_tokens)
        self.pos_lead = 0 if getattr(trunk, "no_embed_class", False) else self.n_prefix
        ps = trunk.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.width = int(trunk.embed_dim)
        grid = trunk.patch_embed.grid_size
        self.native_grid = (int(grid[0]), int(grid[1]))
        with torch.no_grad():
            self.embed_dim = int(self._head(torch.zeros(1, self.width, device=self.dtype_device())).shape[-1])
        self._ropes: dict[tuple, torch.Tensor] = {}

    def dtype_device(self) -> torch.device:
        return self.trunk.patch_embed.proj.weight.device

    @property
    def pos_table(self) -> torch.Tensor | None:
        pos = self.trunk.pos_embed
        return None if pos is None else pos[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.trunk.patch_embed.proj.weight.dtype

    def in_dtype(self, dtype: torch.dtype) -> TimmTower:
        """A copy of this tower with its modules stored in ``dtype``."""
        clone = copy.copy(self)
        clone.visual = copy.deepcopy(self.visual).to(dtype)
        clone.trunk = clone.visual.trunk
        clone.blocks, clone._ropes = list(clone.trunk.blocks), {}
        return clone

    def rope(self, grid: tuple[int, int], device) -> torch.Tensor | None:
        """The RoPE tensor the model's blocks take on ``grid``, or None: what timm's dynamic-size forward computes
        (``rope.get_embed(shape=grid)``, the sines and cosines of the grid from the rope's frequency bands). open_clip
        builds its towers at a fixed size, whose rope keeps one grid's table (``get_embed`` then ignores ``shape``), so
        that table is rebuilt from the same bands for another grid (``_build_embed_cat``, timm's own builder: at the
        native grid the cached table exactly, tests/test_backbones_siglip_pe.py)."""
        rope = getattr(self.trunk, "rope", None)
        if rope is None:
            return None
        key = (int(grid[0]), int(grid[1]), str(device))
        if key not in self._ropes:
            shape = [int(grid[0]), int(grid[1])]
            if getattr(rope, "_use_cached_embed", False):
                table = rope._build_embed_cat(shape, rope.bands)
            else:
                table = rope.get_embed(shape=shape)
            self._ropes[key] = table.to(device)
        return self._ropes[key]

    def embed(self, pixels: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels, ``pos`` ``[pos_lead + hw, width]`` or None -> ``[B, n_prefix + hw,
        width]``: timm's ``patch_embed`` (its projection, flattened, its norm), the positions, the prefix tokens
        (class token, registers) first, then ``norm_pre`` (timm's ``_pos_embed``)."""
        t = self.trunk
        pe = t.patch_embed
        x = pe.norm(pe.proj(pixels.to(pe.proj.weight.dtype)).flatten(2).transpose(1, 2))  # [B, hw, width]
        prefix = [tok.to(x.dtype).expand(x.shape[0], -1, -1) for tok in (getattr(t, "cls_token", None),
                                                                          getattr(t, "reg_token", None))
                  if tok is not None]
        if pos is not None:
            pos = pos.to(x.device, x.dtype)
            x = x + pos[self.pos_lead:]
            if self.pos_lead:
                prefix = [torch.cat(prefix, 1) + pos[: self.pos_lead]]
        return t.norm_pre(torch.cat([*prefix, x], dim=1))

    def block(self, i: int, x: torch.Tensor, grid: tuple[int, int], need_weights: bool = False,
              keep_ln1: bool = False, mask: torch.Tensor | None = None):
        """Block ``i``: timm's own (:func:`.timm_blocks.run_block`), with the grid's RoPE."""
        if mask is not None:
            raise VplError(f"--model {self.name}: windowed attention is for open_clip ViTs (the toy CLIP) only")
        return run_block(self.blocks[i], x, self.rope(grid, x.device), need_weights, keep_ln1)

    def class_token(self, i: int, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise VplError(f"--model {self.name}: its image embedding is an attention pool, not a class token")

    def mixing_block(self, grid: tuple[int, int]) -> _BlockView:
        """The last block in open_clip's form, its q and k as the model computes them on ``grid``."""
        blk = self.blocks[-1]
        return _BlockView(blk, self.rope(grid, blk.norm1.weight.device))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """The affine part: the pooling head's value path, its ``proj``, then what follows it (``fc_norm``, the
        trunk's head, open_clip's projection): ``[..., width]`` final-norm tokens -> ``[..., D]``."""
        pool, width = self.trunk.attn_pool, self.width
        kv = pool.kv
        v = F.linear(x, kv.weight[width:], None if kv.bias is None else kv.bias[width:])  # kv = [k; v] rows
        x = self.trunk.head(self.trunk.fc_norm(pool.proj(v)))
        return self.visual.head(x)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., width]`` patch tokens -> ``[..., D]`` dense tokens: the final ``norm``, then :meth:`_head`."""
        return self._head(self.trunk.norm(tokens))

    def pooled(self, out: torch.Tensor) -> torch.Tensor:
        """``[N, n_prefix + hw, width]`` -> ``[N, D]`` float32 unit embeddings: the pooling head with uniform
        weights over the patches (the mean of :meth:`project`'s tokens)."""
        return F.normalize(self._head(self.trunk.norm(out[:, self.n_prefix:]).mean(1)).float(), dim=-1)


class _AttentionView:
    """A timm attention module as :func:`vpltool.models.dense.mixed_attention` reads one: ``heads(h)`` (q, k, v per
    head, q and k after the module's norms and RoPE), ``out_proj`` (its tail), ``num_heads``."""

    def __init__(self, attn, rope: torch.Tensor | None):
        self.module, self.rope, self.num_heads = attn, rope, int(attn.num_heads)

    def heads(self, h: torch.Tensor):
        return heads_qkv(self.module, h, self.rope)

    def out_proj(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.proj(self.module.norm(x))


class _BlockView:
    """A timm block in open_clip's ``ResidualAttentionBlock`` names (``ln_1``, ``attn``, ``ls_1``, ``ln_2``,
    ``mlp``, ``ls_2``) for :func:`vpltool.models.dense.mix_last_block`."""

    def __init__(self, blk, rope: torch.Tensor | None):
        self._blk = blk
        self.ln_1, self.ln_2, self.mlp = blk.norm1, blk.norm2, blk.mlp
        self.attn = _AttentionView(blk.attn, rope)

    def ls_1(self, a: torch.Tensor) -> torch.Tensor:
        return scale_1(self._blk, a)

    def ls_2(self, a: torch.Tensor) -> torch.Tensor:
        return scale_2(self._blk, a)


__all__ = ["TIMM_METHODS", "TimmTower"]

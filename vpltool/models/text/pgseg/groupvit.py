"""GroupViT's image encoder with PGSeg's I-NPR hooks: patch embedding, transformer blocks over image + group tokens,
grouping blocks with (gumbel) hard assignment.

Written after GroupViT (NVlabs/GroupViT ``models/group_vit.py``) and PGSeg (Ferenas/PGSeg ``models/text/pgseg.py`` at
9f167cd); the attribute names are theirs so that their checkpoints load through a key map that renames nothing of
the encoder. Arithmetic follows theirs operation for operation (the parity runner checks it to 1e-5 in fp32).

Shapes: ``B`` images, ``L`` image tokens (``h*w`` patches in stage 1, then the previous stage's groups), ``S`` group
tokens of a stage, ``G`` output groups of a grouping block, ``C`` width. All float32 unless said.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

from ...backbones.windows import window_attention_mask
from .assign import AssignAttention, merge_heads, split_heads
from .npr import NPR, ProjectMLP


class DropPath(nn.Module):
    """Stochastic depth per sample, as timm 0.4.12 draws it (the version GroupViT and PGSeg pin): a mask
    ``floor(keep + U[0, 1))`` from ``torch.rand([B, 1, ...])``, output ``x / keep * mask``. timm 1.x draws the same
    distribution with ``bernoulli_``, another use of the RNG: with the same seed its masks are not the reference's
    (the whole-trainer parity, parity/pgseg_trainer_parity.py, follows the reference's seeded steps bit for bit)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class MixerMlp(Mlp):
    """An MLP over the token axis: ``[B, S, C]`` -> ``[B, S', C]`` (GroupViT's group projector)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention; ``qkv_fuse``: one ``qkv`` linear (self-attention), else ``q_proj``/``k_proj``/``v_proj``
    (cross-attention: queries ``[B, N, C]``, keys/values ``[B, S, C]``).

    ``fused``: ``softmax(q k^T * scale) v`` through PyTorch's fused ``F.scaled_dot_product_attention`` (one kernel,
    no ``[B, heads, N, S]`` map kept for the backward); False: the reference's explicit matmul-softmax-matmul, bit
    for bit. The two agree to float rounding (~1e-7 in fp32); the fused path is taken only where no attention
    dropout runs in training (its mask would be drawn differently)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qkv_fuse: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused: bool = False):
        super().__init__()
        self.num_heads, self.fused = num_heads, fused
        self.scale = (dim // num_heads) ** -0.5
        self.qkv_fuse = qkv_fuse
        if qkv_fuse:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: an additive ``[N, S]`` float mask (``-inf`` where a query may not look), or None."""
        if self.qkv_fuse:
            b, n, c = query.shape
            qkv = self.qkv(query).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            key = query if key is None else key
            q, k, v = (split_heads(p(t), self.num_heads) for p, t in
                       ((self.q_proj, query), (self.k_proj, key), (self.v_proj, key)))
        if self.fused and not (self.training and self.attn_drop.p > 0):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            logits = (q @ k.transpose(-2, -1)) * self.scale
            out = self.attn_drop((logits if mask is None else logits + mask).softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(merge_heads(out)))


class AttnBlock(nn.Module):
    """Pre-norm transformer block (fused qkv), stochastic depth on both branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, fused: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qkv_fuse=True, attn_drop=attn_drop, proj_drop=drop,
                              fused=fused)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask=mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttnBlock(nn.Module):
    """Group tokens ``[B, G, C]`` attend to image tokens ``[B, L, C]``; ``post_norm`` as GroupViT's pre-assignment
    block (no norm on q/k, a LayerNorm after the MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 post_norm: bool = False, fused: bool = False):
        super().__init__()
        if post_norm:
            self.norm_post, self.norm_q, self.norm_k = nn.LayerNorm(dim), nn.Identity(), nn.Identity()
        else:
            self.norm_q, self.norm_k, self.norm_post = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.Identity()
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, fused=fused)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        x = query + self.drop_path(self.attn(self.norm_q(query), self.norm_k(key)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.norm_post(x)


class GroupingBlock(nn.Module):
    """Merge ``L`` image tokens into ``G`` groups: project the stage's ``S`` group tokens to ``G`` (token MLP),
    cross-attend them to the image tokens, assign every image token to one group (:class:`AssignAttention`), then
    a residual MLP. ``[B, L, C]``, ``[B, S, C]`` -> ``[B, G, C_out]``, the maps, and the projected group tokens
    ``[B, G, C]`` (``center``: what PGSeg's I-NPR and T-NPR match with prototypes; with ``assign_init`` "tokens"
    the mean of each group's tokens)."""

    def __init__(self, dim: int, out_dim: int, num_heads: int, num_group_token: int, num_output_group: int,
                 mlp_ratio: tuple[float, float] = (0.5, 4.0), hard: bool = True, gumbel: bool = True,
                 fused: bool = False, assign_iters: int = 1, center_residual: bool = True,
                 assign_metric: str = "dot", assign_init: str = "query"):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        tokens_dim, channels_dim = (int(r * dim) for r in mlp_ratio)
        self.mlp_inter = Mlp(num_group_token, tokens_dim, num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio=4, qkv_bias=True, post_norm=True,
                                              fused=fused)
        self.assign = AssignAttention(dim, qkv_bias=True, hard=hard, gumbel=gumbel, iters=assign_iters,
                                      metric=assign_metric, init=assign_init)
        self.center_residual = center_residual
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, channels_dim, out_dim)
        self.reduction = (nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim, bias=False))
                          if dim != out_dim else nn.Identity())

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor):
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        center = self.norm_post_tokens(self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2))
        center = self.pre_assign_attn(center, x)
        new_x, maps = self.assign(center, x)
        if self.assign.init == "tokens":  # the groups are clusters of x, which no group token stands for: a
            # group's centre (what NPR matches with its prototypes) is the mean of the tokens it holds; a group
            # that holds none keeps its group token (a zero centre would blow up NPR's normalised similarities)
            hard = maps["hard"][:, 0]  # [B, G, L]
            mass = hard.sum(-1, keepdim=True)  # [B, G, 1]
            center = torch.where(mass > 0, (hard @ x) / mass.clamp(min=1), center)
        if self.center_residual:  # the reference's: a group is its token plus what it gathered
            new_x = new_x + center
        new_x = self.reduction(new_x) + self.mlp_channels(self.norm_new_x(new_x))
        return new_x, maps, center


class GroupingLayer(nn.Module):
    """One stage: transformer blocks over ``[image tokens; group tokens]``, then (all but the last stage) PGSeg's
    NPR on the stage's INPUT tokens (prototypes ``mu`` and a reconstruction added to the image tokens) and the
    grouping block. ``downsample_spatial`` is the NPR module (the reference's name), None for plain GroupViT."""

    def __init__(self, dim: int, depth: int, num_heads: int, num_group_token: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: list[float],
                 downsample: GroupingBlock | None, group_projector: nn.Module | None, npr: NPR | None,
                 fused: bool = False):
        super().__init__()
        self.num_group_token = num_group_token
        if num_group_token > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_token, dim))
            if group_projector is None:  # only zero init the group token when a projection feeds it
                trunc_normal_(self.group_token, std=0.02)
        else:
            self.group_token = None
        self.blocks = nn.ModuleList(AttnBlock(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path[i],
                                              fused) for i in range(depth))
        self.downsample = downsample
        self.downsample_spatial = npr
        self.group_projector = group_projector

    def forward(self, x: torch.Tensor, prev_group_token: torch.Tensor | None, mask: torch.Tensor | None = None):
        """``x`` ``[B, L, C]`` -> ``(x_next, group_tokens [B, S, C] | None, stage dict)``; the dict holds ``maps``
        (the assignment, None in the last stage), ``center`` (projected group tokens) and ``mu`` (NPR prototypes
        ``[B, G, C]``) where they exist. ``mask``: the blocks' additive ``[L + S, L + S]`` attention mask, or
        None (global)."""
        group_token = None
        if self.group_token is not None:
            group_token = self.group_token.expand(x.size(0), -1, -1)
            if self.group_projector is not None:
                group_token = group_token + self.group_projector(prev_group_token)
        inp_x = x
        cat_x = x if group_token is None else torch.cat([x, group_token], dim=1)
        for blk in self.blocks:
            cat_x = blk(cat_x, mask)
        if self.group_token is not None:
            x, group_token = cat_x[:, :-self.num_group_token], cat_x[:, -self.num_group_token:]
        else:
            x = cat_x
        stage: dict[str, torch.Tensor | None] = {"maps": None, "center": None, "mu": None}
        if self.downsample_spatial is not None:
            mu, _, recon = self.downsample_spatial(inp_x)
            stage["mu"] = mu
            x = x + recon
        if self.downsample is not None:
            x, stage["maps"], stage["center"] = self.downsample(x, group_token)
        return x, group_token, stage


class PatchEmbed(nn.Module):
    """``[B, 3, H, W]`` -> ``([B, h*w, C], (h, w))``: a stride-``patch`` convolution and a LayerNorm."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patches_resolution = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def num_patches(self) -> int:
        return self.patches_resolution[0] * self.patches_resolution[1]

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        hw = tuple(x.shape[2:])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


def interpolate_pos_encoding(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The square ``[1, N, C]`` position table bicubic-resized to ``h x w`` (as the reference, at eval time only)."""
    n = pos_embed.shape[1]
    if n == h * w and h == w:
        return pos_embed
    side, dim = int(n ** 0.5), pos_embed.shape[-1]
    grid = pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim)


class GroupViTEncoder(nn.Module):
    """GroupViT's image encoder (``img_encoder`` in the reference checkpoints); ``npr``: PGSeg's NPR modules in the
    grouping stages, its ``mapping_text`` projector and its group-prototype ``logit_scale`` (log(1/0.1))."""

    def __init__(self, cfg):
        super().__init__()
        depths, dim = list(cfg.depths), cfg.embed_dim
        self.num_group_tokens = list(cfg.num_group_tokens)
        self.attention_window = cfg.attention_window
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, 3, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = [x.item() for x in torch.linspace(0, cfg.drop_path_rate, sum(depths), device="cpu")]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            last = i == len(depths) - 1
            downsample = None if last else GroupingBlock(
                dim, dim, cfg.num_heads[i], cfg.num_group_tokens[i], cfg.num_output_groups[i],
                hard=cfg.hard_assignment, gumbel=cfg.hard_assignment, fused=cfg.fused_attention,
                assign_iters=cfg.assign_iters, center_residual=cfg.center_residual,
                assign_metric=cfg.assign_metric, assign_init=cfg.assign_init)
            npr = None if (last or not cfg.npr) else NPR(
                dim=dim, out_dim=dim, num_output_group=cfg.num_output_groups[i], iters=cfg.npr_iters,
                momentum=cfg.npr_momentum)
            projector = None
            if i > 0 and cfg.num_group_tokens[i] > 0:
                projector = nn.Sequential(nn.LayerNorm(dim), MixerMlp(cfg.num_group_tokens[i - 1], dim // 2,
                                                                      cfg.num_group_tokens[i]))
            self.layers.append(GroupingLayer(
                dim, depth, cfg.num_heads[i], cfg.num_group_tokens[i], cfg.mlp_ratio, True, cfg.drop_rate,
                cfg.attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample, projector, npr,
                cfg.fused_attention))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Identity()
        if cfg.npr:
            self.mapping_text = ProjectMLP(in_dim=dim, out_dim=256)  # defined (and saved) by PGSeg, never called
        self.apply(_init_weights)
        _mimetic(self, cfg.assign_qk_init, cfg.qk_init)
        if cfg.npr:
            self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.1)))

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """``[B, 3, H, W]`` normalised -> (the final group tokens after the norm ``[B, G_last, C]``, one dict per
        stage: see :meth:`GroupingLayer.forward`). In training the size must be the configured one."""
        x, hw = self.patch_embed(images)
        if self.training and hw != self.patch_embed.patches_resolution:  # the reference asserts the size too
            side = self.patch_embed.img_size[0]
            raise ValueError(f"PGSeg trains on {side}x{side} images (the position table is not resized in "
                             f"training); got {tuple(images.shape[-2:])}")
        pos = self.pos_embed if self.training else interpolate_pos_encoding(self.pos_embed, *hw)
        x = self.pos_drop(x + pos)
        group_token, stages = None, []
        for i, layer in enumerate(self.layers):
            # only the first stage's tokens are patches on a grid; the later stages' are groups
            mask = window_mask(hw, self.attention_window, layer.num_group_token, x.device) if i == 0 else None
            x, group_token, stage = layer(x, group_token, mask)
            stages.append(stage)
        return self.norm(x), stages

    @staticmethod
    def pooled(tokens: torch.Tensor) -> torch.Tensor:
        """``[B, G, C]`` -> ``[B, C]``: the mean over the final groups (the image embedding before projection)."""
        return tokens.mean(dim=1)


def window_mask(hw: tuple[int, int], size: int, groups: int, device: torch.device) -> torch.Tensor | None:
    """The first stage's additive attention mask over ``[h*w patch tokens; groups group tokens]``
    (:func:`vpltool.models.backbones.windows.window_attention_mask`: a patch token sees its ``size x size``
    neighbourhood, a group token every token). None when ``size`` is 0 (global attention: the reference's)."""
    if size < 1:
        return None
    return window_attention_mask(hw[0], hw[1], size, trail=groups).to(device)


def _mimetic(encoder: nn.Module, assign_gain: float, gain: float) -> None:
    """The config's mimetic query-key inits (:func:`vpltool.models.backbones.mimetic.equal_query_key`), in module order:
    ``assign_gain`` on every :class:`AssignAttention`, ``gain`` on every other attention (fused or not); a gain
    of 0 leaves those as initialised (the reference)."""
    from ...backbones.mimetic import equal_query_key

    for m in encoder.modules():
        g = assign_gain if isinstance(m, AssignAttention) else gain if isinstance(m, Attention) else 0.0
        if g == 0:
            continue
        if getattr(m, "qkv_fuse", False):
            w, b, width = m.qkv.weight, m.qkv.bias, m.qkv.weight.shape[1]
            equal_query_key(w[:width], w[width:2 * width], None if b is None else b[:width],
                            None if b is None else b[width:2 * width], g)
        else:
            equal_query_key(m.q_proj.weight, m.k_proj.weight, m.q_proj.bias, m.k_proj.bias, g)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)

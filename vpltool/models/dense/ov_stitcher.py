"""OV-Stitcher (``--dense ov-stitcher``; atw617/OV-Stitcher@91a9489, CVPR'26 Findings): CorrCLIP's correlation,
branches and map correction computed once for the whole image, its sliding windows' features stitched together
inside the last blocks rather than their logits averaged afterwards.

Restated from a reading of its ``ov_stitcher_segmentor.py`` and patched ``open_clip/transformer.py``
(``VisionTransformer.forward``); the parts it shares with CorrCLIP are CorrCLIP's package
(:mod:`vpltool.models.dense.corrclip`: the region merging, the scope-restricted correlation, the semantic branch's
mask, the depth rule, the region maps and the map correction). One image:

1. mmseg's windows (``slide_crop`` / ``slide_stride``, none padded: see :func:`check_windows`);
2. the proxy DINO's blocks ``0..L-2`` on every window; the last block's input (final-normed) and its ``q``, ``k``,
   ``v`` **stitched**: each window's map placed at its top-left patch, the overlaps averaged (:func:`stitch`);
   the last block rebuilt once on the stitched grid (global attention, its projection and MLP), L2-normalised
   (:func:`dino_features`);
3. the region ids on that grid merged by DBSCAN, the correlation ``softmax(4 S)`` restricted to the merged regions
   (CorrCLIP's :func:`~vpltool.models.dense.corrclip.merge_regions`, :func:`~.corrclip.scope_attention`);
4. CLIP's blocks ``0..L-2`` on every window with one class-token copy per merged region of the whole image
   prepended; before each block of the spatial range its input, ``q``, ``k`` and ``v`` stitched and one
   single-head global attention (scale ``head_dim^-0.5``), projection and MLP run on them: the spatial branch, the
   mean of those outputs;
5. the last block: the stitched main path's and the spatial branch's values, resized to the DINO grid and mixed
   by the correlation, then ``out_proj``; each region token's last-block output spread over its region per window
   and stitched (the semantic branch); ``ln_post`` of each, ``main + 1.0 spatial + 0.5 semantic``, ``proj``;
6. the cosine with the queries on the DINO grid, resized bilinearly to the input, then to the photo; after the
   argmax, CorrCLIP's map correction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...config.dense import DEFAULT_PROXY_MODEL
from ...errors import VplError
from ..backbones.onednn import f_linear, references_library
from .concept_regions import fill_regions
from .corrclip import (
    Correlation,
    input_regions,
    merge_regions,
    scope_attention,
    spatial_blocks,
)
from .corrclip import (
    Hooks as CorrCLIPHooks,
)
from .mixing import DenseMixing
from .segmentor import slide_windows

METHOD = "ov-stitcher"
# ov_stitcher_segmentor.py + its open_clip: CorrCLIP's DINO-style positional resize (interpolate_pos_encoding, +0.1)
PRESET = DenseMixing(METHOD, "proxy", False, False, "bicubic-dino")
CORRELATION = Correlation()  # its transformer.py's ALPHA 1, BETA 0.5, TAU 4, DBSCAN eps 0.2; windows of 56 pixels
# ov_stitcher_segmentor.py's SAM2AutomaticMaskGenerator arguments (set_mask_generator('sam2'))
SAM_SETTINGS = {"points_per_side": 64, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.7}


def check_windows(crop: int, short_side: int, multiple: int) -> None:
    """The windows OV-Stitcher's code can stitch: ``crop`` a positive multiple of ``multiple`` (its 56-pixel
    padding, and both models' patches: 112 for a ViT-B/16 and a DINO ViT-B/8) no larger than the short side. Its
    code pads a smaller window and then fails (a stitched grid with unfilled cells, or a token count that is no
    reshape of the padded window), so these are refused, in one line."""
    if crop <= 0 or crop % multiple:
        raise VplError(f"--slide-crop {crop}: --dense {METHOD} stitches whole windows; give a positive multiple of "
                       f"{multiple} (its 56-pixel windows and both models' patches), e.g. 336 or 224")
    if short_side < crop:
        raise VplError(f"--short-side {short_side} is smaller than --slide-crop {crop}: --dense {METHOD}'s windows "
                       f"would be padded, which its code cannot stitch; pass --short-side {crop} or more, or a smaller "
                       "--slide-crop")


def stitch(maps: torch.Tensor, boxes, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """The reference's ``stitch_features_from_batch`` for unpadded windows: per window ``[N, C, h, w]`` maps on its
    own patch grid -> ``[C, H // patch, W // patch]``, each window added at ``(y0 // patch, x0 // patch)`` in window
    order and the sums divided by the count of windows over each cell. ``boxes``: the windows' ``(y0, y1, x0, x1)``
    pixels; ``size``: the input's ``(H, W)``."""
    c = maps.shape[1]
    grid = (size[0] // patch, size[1] // patch)
    out = maps.new_zeros(c, *grid)
    count = maps.new_zeros(1, *grid)
    for m, (y0, y1, x0, x1) in zip(maps, boxes):
        h, w = (y1 - y0) // patch, (x1 - x0) // patch
        out[:, y0 // patch : y0 // patch + h, x0 // patch : x0 // patch + w] += m[:, :h, :w]
        count[:, y0 // patch : y0 // patch + h, x0 // patch : x0 // patch + w] += 1
    return out / count


def _grid_maps(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[N, hw, C]`` tokens -> ``[N, C, h, w]`` maps."""
    return tokens.transpose(1, 2).unflatten(2, grid)


def dino_features(proxy, pixels: torch.Tensor, boxes, size: tuple[int, int]) -> tuple[torch.Tensor, tuple]:
    """The proxy DINO's last block on the stitched grid (the reference's ``forward_feature`` before CLIP).

    Args:
        proxy: a :class:`~vpltool.models.backbones.dino.DinoBackbone`.
        pixels: ``[N, 3, c, c]`` windows normalised with the proxy's mean and std.
        boxes, size: the windows and the input's ``(H, W)`` (:func:`stitch`).

    Returns:
        (``[H // p * W // p, C]`` float32 unit features, the grid ``(H // p, W // p)``).
    """
    blk, k = proxy.model.blocks[-1], proxy.n_prefix
    with references_library():  # CorrCLIP's merging compares their similarities with eps: the reference's bits
        x, grid = proxy.last_block_input(pixels)  # [N, prefix + hw, C], each block mixed as the model's code
        # what the reference stitches: get_intermediate_layers(n=2)[0] (the final norm of this input) and the last
        # block's fused qkv (its forward hook), the prefix tokens dropped; one stitch for all four
        parts = torch.cat([proxy.model.norm(x), blk.attn.qkv(blk.norm1(x))], dim=-1)[:, k:]
    c = x.shape[-1]
    st = stitch(_grid_maps(parts, grid), boxes, proxy.patch_size, size)
    fgrid = tuple(st.shape[-2:])
    base, q, kk, v = st.flatten(1).T.split(c, dim=-1)  # [n, C] each
    heads = blk.attn.num_heads

    def split(t):
        return t.view(-1, heads, c // heads).transpose(0, 1)[None]  # [1, heads, n, hd]

    # the stitched last block mixes its tokens as the model's own code does (DINO's written out: the reference's)
    att = proxy.attend(blk.attn.q_norm(split(q)), blk.attn.k_norm(split(kk)), split(v), blk.attn.scale)
    y = base + blk.ls1(blk.attn.proj(att[0].transpose(0, 1).reshape(-1, c)))
    y = y + blk.ls2(blk.mlp(blk.norm2(y)))
    return F.normalize(y.float(), dim=-1), fgrid


def _attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``nn.MultiheadAttention``'s arithmetic after its input projection: ``[N, Lq, width]`` queries over ``[N, Lk,
    width]`` keys and values, ``mask`` broadcast to ``[N, heads, Lq, Lk]`` (bool, True = attended; or additive, the
    toy CLIP's windows), ``out_proj`` -> ``[N, Lq, width]``."""
    heads = attn.num_heads

    def split(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def _regions_step(blk, reg: torch.Tensor, qkv: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """One block for the region tokens ``reg`` ``[N, R, width]``: each attends to the class token and its region's
    patches of its window (``seen`` ``[N, 1, R, 1 + hw]`` bool), their keys and values the ordinary tokens' of the
    same block (``qkv`` ``[N, 1 + hw, 3 width]``), then the block's residuals and MLP. In the reference the region
    tokens share one sequence with the ordinary tokens, which never attend to them and which they attend to as here:
    the same arithmetic, without the keys and values no token reads."""
    width = reg.shape[-1]
    q = f_linear(blk.ln_1(reg), blk.attn.in_proj_weight[:width], blk.attn.in_proj_bias[:width])
    reg = reg + blk.ls_1(_attention(blk.attn, q, qkv[..., width : 2 * width], qkv[..., 2 * width :], seen))
    return reg + blk.ls_2(blk.mlp(blk.ln_2(reg)))


def _spatial(blk, x: torch.Tensor, qkv: torch.Tensor, boxes, patch: int, size, grid) -> torch.Tensor:
    """The reference's stitched spatial branch at one block: the windows' patch tokens ``x`` ``[N, hw, width]`` and
    their ``q``, ``k``, ``v`` (``qkv`` ``[N, hw, 3 width]``) stitched, one single-head attention over the whole
    grid (scale ``head_dim^-0.5``), ``out_proj`` and the MLP -> ``[n, width]``."""
    width = x.shape[-1]
    st = stitch(_grid_maps(torch.cat([x, qkv], dim=-1), grid), boxes, patch, size).flatten(1).T
    sx, q, k, v = st.split(width, dim=-1)
    scale = (width // blk.attn.num_heads) ** -0.5
    att = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale)[0]
    s = sx + blk.ls_1(blk.attn.out_proj(att))
    return s + blk.ls_2(blk.mlp(blk.ln_2(s)))


def image_features(bb, pixels: torch.Tensor, ids: torch.Tensor, crop: int, stride: int, cfg: Correlation
                   ) -> tuple[torch.Tensor, tuple[int, int]]:
    """OV-Stitcher's image tower on one input.

    Args:
        bb: a :class:`~vpltool.models.ClipBackbone` with a proxy DINO (``bb.proxy``).
        pixels: ``[1, 3, H, W]`` CLIP-normalised, both sides at least ``crop``.
        ids: ``[H, W]`` int region ids at the input's size (the smallest = unsegmented).
        crop, stride: the windows (:func:`check_windows`).

    Returns:
        (``[n, D]`` joint-space features on the DINO grid, not normalised; that grid ``(H // 8, W // 8)`` for DINO
        ViT-B/8).
    """
    if bb.proxy is None:
        raise VplError(f"--dense {METHOD} needs a proxy vision model: pass --proxy-model and --proxy-weights (a DINO "
                       "ViT, e.g. vit_base_patch8_224.dino)")
    size = tuple(pixels.shape[-2:])
    p, dp = bb.patch_size, bb.proxy.patch_size
    check_windows(crop, crop, math.lcm(cfg.pad_multiple, p, dp))
    if min(size) < crop:  # a photo so long that mmseg's resize capped its long side at 2048
        raise VplError(f"a {size[0]}x{size[1]} input (its long side capped at 2048 by the resize) is narrower than "
                       f"--slide-crop {crop}: --dense {METHOD} cannot stitch padded windows; pass a smaller "
                       "--slide-crop")
    boxes = slide_windows(*size, crop, stride)
    wins = torch.cat([pixels[..., y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]).to(bb.device)
    raw = wins.float() * bb._stats[1] + bb._stats[0]
    mean = torch.tensor(bb.proxy.mean, device=raw.device).view(1, 3, 1, 1)
    std = torch.tensor(bb.proxy.std, device=raw.device).view(1, 3, 1, 1)
    dino, fgrid = dino_features(bb.proxy, ((raw - mean) / std).to(pixels.dtype), boxes, size)
    ids_f = F.interpolate(ids.view(1, 1, *size).to(bb.device).float(), size=fgrid, mode="nearest").int().flatten()
    with torch.autocast(bb.device.type, enabled=False):  # the regions' clustering in float32 under --precision bf16
        merged = merge_regions(ids_f, dino, cfg)
        weights = scope_attention(dino, merged, cfg.temperature)

    # the region tokens: the merged map at the input's size, cut into the windows, on CLIP's grid of each
    grid = (crop // p, crop // p)
    full = F.interpolate(merged.view(1, 1, *fgrid).float(), size=size, mode="nearest")
    cut = torch.cat([full[..., y0:y1, x0:x1] for y0, y1, x0, x1 in boxes])
    tok = F.interpolate(cut, size=grid, mode="nearest").int().flatten(1)  # [N, hw]
    regions = tok[:, None, :] == torch.unique(merged)[None, :, None]  # [N, R, hw]
    x = bb.embed(wins)  # [N, 1 + hw, width]: the ordinary tokens
    reg = x[:, :1].expand(-1, regions.shape[1], -1)  # [N, R, width]: a copy of the class token per region
    seen = torch.cat([regions.new_ones(*regions.shape[:2], 1), regions], dim=2)[:, None]  # [N, 1, R, 1 + hw]
    spatial, wanted = [], set(spatial_blocks(bb.n_blocks, METHOD))
    for i, blk in enumerate(bb.blocks[:-1]):
        width = x.shape[-1]
        qkv = f_linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)
        if i in wanted:
            spatial.append(_spatial(blk, x[:, 1:], qkv[:, 1:], boxes, p, size, grid))
        reg = _regions_step(blk, reg, qkv, seen)
        window = bb.attention_mask(i, grid, x.device)  # the toy CLIP's local windows; None for a CLIP's blocks
        x = x + blk.ls_1(_attention(blk.attn, *qkv.split(width, dim=-1), None if window is None else
                                    window.to(qkv.dtype)))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    last = bb.blocks[-1]
    width = x.shape[-1]
    qkv = f_linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias)
    wv, bv = last.attn.in_proj_weight[2 * width :], last.attn.in_proj_bias[2 * width :]
    v_main = stitch(_grid_maps(qkv[:, 1:, 2 * width :], grid), boxes, p, size)
    v_spatial = f_linear(last.ln_1(torch.stack(spatial).mean(0)), wv, bv).T.reshape(v_main.shape)
    v = F.interpolate(torch.stack([v_main, v_spatial]), size=fgrid, mode="bilinear", align_corners=False)
    pair = last.attn.out_proj(torch.bmm(weights.to(v.dtype).expand(2, -1, -1), v.flatten(2).transpose(1, 2)))

    # the semantic branch: each region token's last-block output, spread over its region in each window
    tokens = _regions_step(last, reg, qkv, seen)  # [N, R, width]
    spread = F.interpolate(regions.unflatten(2, grid).to(tokens.dtype), size=(crop // dp, crop // dp),
                           mode="nearest").flatten(2)  # [N, R, c8 * c8]
    semantic = stitch(_grid_maps(spread.transpose(1, 2) @ tokens, (crop // dp, crop // dp)), boxes, dp, size)
    y = bb.visual.ln_post(torch.cat([pair, semantic.flatten(1).T[None]]))
    y = y[0] + y[1] * cfg.spatial_weight + y[2] * cfg.semantic_weight
    proj = bb.visual.proj
    return (y @ proj.to(y.dtype) if proj is not None else y), fgrid


def ov_stitcher_logits(bb, pixels: torch.Tensor, text: torch.Tensor, ids, sizes, crop: int, stride: int,
                       cfg: Correlation = CORRELATION) -> list[torch.Tensor]:
    """The reference's ``forward_slide`` per image: per image ``[Q, H0, W0]`` float32 cosine logits.

    Args:
        pixels: ``[B, 3, H, W]`` CLIP-normalised inputs. text: ``[Q, D]`` unit query rows.
        ids: per image ``[H, W]`` int region ids at the input's size. sizes: each photo's ``(H0, W0)``.
        crop, stride: the windows.

    The cosine of the normalised features with ``text`` on the DINO grid is resized bilinearly to the input, then
    to the photo.
    """
    rows = text.to(bb.device).float()
    out = []
    for i, size in enumerate(sizes):
        feats, fgrid = image_features(bb, pixels[i : i + 1], ids[i], crop, stride, cfg)
        logits = (F.normalize(feats.float(), dim=-1) @ rows.T).T.reshape(1, -1, *fgrid)
        logits = F.interpolate(logits, size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False)
        out.append(F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[0].float())
    return out


def _runs_timm_forward(name: str) -> bool:
    """Whether proxy ``name`` runs timm's own forward (DINOv3, C-RADIOv3:
    :func:`~vpltool.models.backbones.timm_blocks.timm_forward`), from the model built on the meta device (no memory,
    no weights); False for a name timm does not know (the dino family's check says so)."""
    from ..backbones.dino import import_timm
    from ..backbones.timm_blocks import timm_forward

    timm = import_timm()
    if not timm.is_model(name):
        return False
    with torch.device("meta"):
        return timm_forward(timm.create_model(name, num_classes=0))


class Hooks(CorrCLIPHooks, method=METHOD, preset=PRESET):
    """OV-Stitcher's hooks: CorrCLIP's (each image's region map, ``regions``, the photo's ``[H0, W0]`` int64 ids,
    its record and its map correction after the argmax) with OV-Stitcher's SAM settings, its windows checked and
    its own segmentor (:func:`ov_stitcher_logits`)."""

    _sam_settings = SAM_SETTINGS

    def check(self) -> None:
        super().check()
        s = self.cfg.resolved()
        check_windows(s.slide_crop, s.short_side, CORRELATION.pad_multiple)
        if _runs_timm_forward(self.cfg.proxy_model):  # before any model loads: its last block is rebuilt here
            raise VplError(f"--proxy-model {self.cfg.proxy_model}: --dense {METHOD} rebuilds its proxy's last block "
                           "on stitched windows with DINO's and DINOv2's forward, and this is a DINOv3 or C-RADIOv3 "
                           f"(RoPE, or NaFlexViT's own embedding); pass a DINO or DINOv2 ViT, e.g. --proxy-model "
                           f"{DEFAULT_PROXY_MODEL} (its reference's)")

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        fill_regions(self, extras, pixels.device)
        ids = [input_regions(torch.as_tensor(e["regions"]), pixels.shape[-2:]) for e in extras]
        return ov_stitcher_logits(bb, pixels, text, ids, sizes, settings.slide_crop, settings.slide_stride)


__all__ = ["Hooks", "PRESET", "CORRELATION", "SAM_SETTINGS", "check_windows", "stitch", "dino_features",
           "image_features", "ov_stitcher_logits"]

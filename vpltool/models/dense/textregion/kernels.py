"""TextRegion's arithmetic (avaxiao/TextRegion ``model_semantic.py``, ``CLIPWithSAM2ForSegmentation``), restated from
a reading of its code, for a CLIP image tower (its ``clip_pretrained='openai'`` path, ``pool_feature='value'``,
``mask_type='soft'``, ``resize_method='multi_resolution'``: its configs' settings).

One photo at a time (its ``predict`` asserts a batch of one):

1. the resized photo's views (:func:`clip_views`): the whole photo (or, for Cityscapes, its left and right halves)
   and a grid of ``max(H // crop, 1) x max(W // crop, 1)`` tiles, each resized to ``crop x crop`` (bicubic,
   antialiased: torchvision's ``v2.Resize`` on a float tensor) and CLIP-normalised;
2. CLIP's blocks ``0..L-2`` on the views, then the last block's value path (``ln_1``, the value third of
   ``in_proj``): the whole view's values bilinearly resized onto the tiles' grid, each tile's own added in place
   (:func:`multi_resolution`);
3. the region masks (each ``[H0, W0]`` in [0, 3], the SAM 2 generator's soft masks) resized bilinearly to that grid
   and clamped to [0, 1]; a mask with no weight there is dropped; the "global patches" (a patch whose value is
   no more similar to the regions it is in than to those it is not, by :attr:`RegionPooling.threshold`) are taken
   out of every mask (:func:`global_patch_filter`); a mask left empty is dropped;
4. each region's token: the masks' weighted sum of the unit values (the reference normalises the values in place
   for the filter, and pools the normalised ones), the block's ``out_proj``, ``ln_post``, ``proj``, normalised; its
   cosine with each text row (:func:`region_logits`);
5. the photo's logits (:func:`photo_logits`): each region's logits times its mask (clamped to [0, 1]), summed over
   the regions; pixels no mask covers take SCLIP's patch logits of the views (the last block with
   ``softmax(q qᵀ) + softmax(k kᵀ)``, assembled as in 2), resized bilinearly to the photo.

The softmax (``region_logit_scale`` 50), the background words' maximum and the threshold are the shared
segmentor's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ....errors import VplError
from ...backbones.onednn import f_linear


@dataclass(frozen=True)
class RegionPooling:
    """TextRegion's constants (``configs/base_config.py`` over ``model_semantic.py``'s ``__init__``).

    Attributes:
        crop: the side of each view (``crop_size`` 336).
        remove_global_patch: take the global patches out of the masks (``remove_global_patch`` True).
        threshold: a patch is global when its in-region minus out-of-region mean similarity is below this
            (``global_patch_threshold`` 0.07).
        halves: the whole-photo view is the photo's left and right halves (its Cityscapes configs: ``"city_scape"
            in config``), each resized onto half of the tiles' grid.
    """

    crop: int = 336
    remove_global_patch: bool = True
    threshold: float = 0.07
    halves: bool = False


def _tiles(height: int, width: int, crop: int) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """The reference's tile grid over a ``height x width`` photo: ``(rows, cols, [(y1, y2, x1, x2)])`` row by row,
    tiles of ``ceil(side / count)``, the last flush with the border."""
    nh, nw = max(height // crop, 1), max(width // crop, 1)
    th, tw = math.ceil(height / nh), math.ceil(width / nw)
    boxes = []
    for i in range(nh):
        for j in range(nw):
            y2, x2 = min(i * th + th, height), min(j * tw + tw, width)
            boxes.append((max(y2 - th, 0), y2, max(x2 - tw, 0), x2))
    return nh, nw, boxes


def clip_views(raw: torch.Tensor, cfg: RegionPooling, mean: torch.Tensor, std: torch.Tensor
               ) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[3, H, W]`` float pixels in [0, 1] -> (``[G + rows * cols, 3, crop, crop]`` CLIP-normalised views, the
    whole photo's first (``G`` 1, or 2 halves), then the tiles row by row; ``(rows, cols)``). ``mean``, ``std``:
    ``[3, 1, 1]``."""
    height, width = raw.shape[-2:]
    size = (cfg.crop, cfg.crop)

    def view(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != size:  # torchvision's Resize returns a same-size image untouched
            x = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]
        return (x - mean) / std

    whole = [raw[..., : width // 2], raw[..., width // 2 :]] if cfg.halves else [raw]
    nh, nw, boxes = _tiles(height, width, cfg.crop)
    return torch.stack([view(x) for x in whole] + [view(raw[:, y1:y2, x1:x2]) for y1, y2, x1, x2 in boxes]), (nh, nw)


def multi_resolution(maps: torch.Tensor, tiles: tuple[int, int], halves: bool, whole_weight: float = 1.0
                     ) -> torch.Tensor:
    """The views' maps ``[G + rows * cols, C, g, g]`` -> ``[1, C, rows * g, cols * g]``: the whole view's resized
    bilinearly (align_corners False) to the tiles' grid (two halves: each to half its width, side by side), times
    ``whole_weight`` (CLIP 1; SigLIP 2 and PE 0.5 in the reference), each tile's map added in its place."""
    nh, nw = tiles
    g = maps.shape[-1]
    ph, pw = g * nh, g * nw
    if halves:
        if pw % 2:
            raise VplError(f"--dense textregion: a halves view needs an even grid width, not {pw} (a photo at least "
                           "two crops wide)")
        base = torch.cat([F.interpolate(maps[k : k + 1], size=(ph, pw // 2), mode="bilinear", align_corners=False)
                          for k in (0, 1)], dim=-1)
    else:
        base = F.interpolate(maps[:1], size=(ph, pw), mode="bilinear", align_corners=False)
    if whole_weight != 1.0:
        base = whole_weight * base
    first = 2 if halves else 1
    for k in range(nh * nw):
        i, j = divmod(k, nw)
        base[:, :, i * g : (i + 1) * g, j * g : (j + 1) * g] += maps[first + k]
    return base


def feature_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[R, H0, W0]`` region masks -> ``[R, h * w]`` float32 on the feature grid: bilinear (align_corners False, no
    antialias), clamped to [0, 1]."""
    if not len(masks):
        return masks.new_zeros(0, grid[0] * grid[1], dtype=torch.float32)
    small = F.interpolate(masks.float()[None], size=tuple(grid), mode="bilinear", align_corners=False)[0]
    return small.reshape(len(masks), -1).clamp(0, 1)


def global_patch_filter(units: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """The reference's global-patch removal: ``units`` ``[P, C]`` unit patch values, ``masks`` ``[R, P]`` in [0, 1]
    -> ``masks`` with the columns of the global patches zeroed (in place).

    Per patch: the mean over the regions it is in (``mask > 0``) of its mean similarity to each region's patches,
    minus that mean over the regions it is not in; a patch below ``threshold`` is global."""
    inside = masks > 0
    # (U Uᵀ) Mᵀ as U (Uᵀ Mᵀ): the [P, P] similarities are never made (the same sums, associated otherwise)
    to_region = (units @ (units.T @ inside.float().T)) / inside.sum(dim=-1)  # [P, R]
    belong = (to_region * inside.float().T).sum(dim=-1) / (inside.sum(dim=0) + 1e-9)
    outside = masks == 0
    away = (to_region * outside.float().T).sum(dim=-1) / (outside.sum(dim=0) + 1e-9)
    masks[:, (belong - away) < threshold] = 0
    return masks


def region_logits(bb, values: torch.Tensor, masks: torch.Tensor, text: torch.Tensor, cfg: RegionPooling
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3 and 4 of the module docstring.

    Args:
        bb: a :class:`~vpltool.models.ClipBackbone` (its last block's ``out_proj``, ``ln_post``, ``proj``).
        values: ``[C, P]`` the last block's values on the tiles' grid (:func:`multi_resolution`, flattened).
        masks: ``[R, P]`` feature masks (:func:`feature_masks`), none empty.
        text: ``[Q, D]`` unit rows.

    Returns:
        (``[R', Q]`` cosine logits of the regions kept, ``[R]`` bool: which were kept).
    """
    width, n = values.shape
    heads = bb.blocks[-1].attn.num_heads
    if cfg.remove_global_patch:
        # the reference normalises the patch values in place here: the regions pool the unit values
        units = values.T / values.T.norm(dim=-1, keepdim=True)
        masks = global_patch_filter(units, masks.clone(), cfg.threshold)
        values = units.T
    keep = masks.sum(dim=1) > 0
    masks = masks[keep]
    # the reference's per-head product (its attention's shape), for the same sums
    per_head = values.reshape(heads, width // heads, n).transpose(1, 2)  # [heads, P, hd]
    pooled = torch.bmm(masks[None].repeat(heads, 1, 1).to(per_head.dtype), per_head)  # [heads, R', hd]
    pooled = bb.blocks[-1].attn.out_proj(pooled.transpose(0, 1).reshape(len(masks), width))
    feats = bb.project(pooled)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    return feats @ text.to(feats.dtype).T, keep


def _qkv(blk, tokens: torch.Tensor) -> torch.Tensor:
    """The last block's packed ``in_proj`` of ``ln_1``: ``[n, L, width]`` -> ``[n, L, 3 width]`` (q, k, v), made once
    for the value path and the uncovered pixels' SCLIP block (the reference makes it in each)."""
    return f_linear(blk.ln_1(tokens), blk.attn.in_proj_weight, blk.attn.in_proj_bias)


def _values(qkv: torch.Tensor) -> torch.Tensor:
    """The value third of :func:`_qkv`'s patch rows: ``[n, width, g, g]``."""
    n, length, three = qkv.shape
    g = math.isqrt(length - 1)
    return qkv[:, 1:, 2 * three // 3 :].transpose(1, 2).reshape(n, three // 3, g, g)


def _sources(out_size: int, in_size: int, device) -> list[torch.Tensor]:
    """For a bilinear resize (align_corners False) of ``in_size`` to ``out_size`` along one axis: each output index's
    source indices, with a neighbour more on each side (``[out_size]`` int64 each; a superset, so that a position
    float32 puts on the other side of an integer still finds its sources)."""
    pos = ((torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(0)
    low = pos.floor().long()
    return [(low + d).clamp(0, in_size - 1) for d in (-1, 0, 1, 2)]


def _sources_2d(needed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The cells of a ``size`` grid that a bilinear resize reads for the True cells of ``needed`` (its output):
    ``[h, w]`` bool."""
    ys, xs = needed.nonzero(as_tuple=True)
    out = torch.zeros(size, dtype=torch.bool, device=needed.device)
    for yy in _sources(needed.shape[0], size[0], needed.device):
        for xx in _sources(needed.shape[1], size[1], needed.device):
            out[yy[ys], xx[xs]] = True
    return out


def _view_rows(needed: torch.Tensor, tiles: tuple[int, int], g: int, halves: bool) -> list[torch.Tensor]:
    """The assembled grid's needed cells (``[rows * g, cols * g]`` bool) -> per view the patch tokens it must give
    (``[g * g]`` bool): the whole view's (each half's) cells its resize reads, each tile's own cells."""
    nh, nw = tiles
    width = needed.shape[1] // (2 if halves else 1)
    whole = [_sources_2d(needed[:, k * width : (k + 1) * width], (g, g)) for k in range(2 if halves else 1)]
    cells = [needed[i * g : (i + 1) * g, j * g : (j + 1) * g] for i in range(nh) for j in range(nw)]
    return [m.flatten() for m in whole + cells]


def _sclip_rows(bb, tokens: torch.Tensor, qkv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The last block as SCLIP mixes it (mixing.py's ``qq+kk`` with the residual and the MLP: ``softmax(q qᵀ s) +
    softmax(k kᵀ s)``) for the query tokens ``rows`` of one view only (every token a key): ``[L, width]`` tokens,
    their :func:`_qkv` ``[L, 3 width]``, ``rows`` ``[m]`` indices -> ``[m, D]`` joint-space features."""
    blk = bb.blocks[-1]
    heads = blk.attn.num_heads
    length, three = qkv.shape
    width = three // 3
    q, k, v = (t.reshape(length, heads, width // heads).transpose(0, 1) for t in qkv.split(width, dim=-1))
    scale = (width // heads) ** -0.5
    weights = (F.softmax((q[:, rows] @ q.transpose(-1, -2)) * scale, dim=-1)
               + F.softmax((k[:, rows] @ k.transpose(-1, -2)) * scale, dim=-1))
    x = tokens[rows] + blk.ls_1(blk.attn.out_proj((weights @ v).transpose(0, 1).reshape(len(rows), width)))
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return bb.project(x)


def photo_logits(region: torch.Tensor, masks: torch.Tensor, fallback: torch.Tensor | None, rows: int = 0
                 ) -> torch.Tensor:
    """Step 5: ``[R, Q]`` region logits and their ``[R, H0, W0]`` masks, ``[1, Q, h, w]`` the patch logits of the
    pixels no mask covers -> ``[Q, H0, W0]`` float32: ``sum_r logits[r] * clamp(mask_r, 0, 1)``, the uncovered
    pixels the patch logits resized bilinearly to the photo (the cells those pixels read are the only ones used:
    ``fallback`` may hold anything elsewhere, and None when every pixel is covered). ``rows``: computed so many
    photo rows at a time (the masks in float32 a band at a time; 0: at once)."""
    r, q = region.shape
    height, width = masks.shape[-2:]
    out = torch.empty(q, height, width, device=region.device)
    step, full = rows or height, None
    for y0 in range(0, height, step):
        band = masks[:, y0 : y0 + step].float().clamp(0, 1)
        out[:, y0 : y0 + step] = (region.float().T @ band.flatten(1)).view(q, *band.shape[-2:])
        empty = band.sum(dim=0) == 0
        if bool(empty.any()):
            if full is None:
                full = F.interpolate(fallback.float(), size=(height, width), mode="bilinear", align_corners=False)[0]
            out[:, y0 : y0 + step] = torch.where(empty, full[:, y0 : y0 + step], out[:, y0 : y0 + step])
    return out


def textregion_logits(bb, pixels: torch.Tensor, text: torch.Tensor, masks: torch.Tensor, size: tuple[int, int],
                      cfg: RegionPooling) -> torch.Tensor:
    """One photo's TextRegion logits (module docstring).

    Args:
        bb: a :class:`~vpltool.models.ClipBackbone` whose last block mixes as SCLIP (the method's preset).
        pixels: ``[3, H, W]`` CLIP-normalised, the photo resized (mmseg's keep-ratio resize).
        text: ``[Q, D]`` unit query rows.
        masks: ``[R, H0, W0]`` region masks at the photo's size ``size``, values in [0, 3] (float16 or float32).

    Returns:
        ``[Q, H0, W0]`` float32 logits (sums of region cosines where masks overlap).
    """
    raw = pixels.float() * bb._stats[1][0] + bb._stats[0][0]  # the reference's input / 255
    views, tiles = clip_views(raw, cfg, bb._stats[0][0], bb._stats[1][0])
    views = views.to(pixels.dtype)
    tokens = bb.encode(views, stop=bb.n_blocks - 1).tokens  # [n, 1 + g*g, width]
    g = bb.grid_of(views)[0]
    qkv = _qkv(bb.blocks[-1], tokens)
    values = multi_resolution(_values(qkv), tiles, cfg.halves)  # [1, width, ph, pw]
    grid = tuple(values.shape[-2:])
    rows_t = text.to(values.device)
    masks = masks.to(values.device)
    if tuple(masks.shape[-2:]) != tuple(size) and len(masks):  # a working size below the photo's (--max-side)
        masks = F.interpolate(masks.float()[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    small = feature_masks(masks, grid)
    kept = small.sum(dim=1) > 0
    logits, second = region_logits(bb, values.flatten(2)[0], small[kept], rows_t, cfg)
    masks = masks[kept][second]
    rows = _band_rows(len(masks), size)
    uncovered = torch.cat([masks[:, y : y + rows].float().clamp(0, 1).sum(dim=0) == 0
                           for y in range(0, int(size[0]), rows)]) if len(masks) else None
    if uncovered is not None and not bool(uncovered.any()):
        return photo_logits(logits, masks, None, rows=rows)
    # the pixels no mask covers: SCLIP's patch logits of the views, assembled as the values were, made only for the
    # patch tokens those pixels read
    needed = _sources_2d(uncovered, grid) if uncovered is not None else torch.ones(grid, dtype=torch.bool)
    patch = torch.zeros(len(views), len(rows_t), g * g, device=values.device)
    for view, want in enumerate(_view_rows(needed.to(values.device), tiles, g, cfg.halves)):
        idx = want.nonzero().flatten()
        if len(idx):
            feats = _sclip_rows(bb, tokens[view], qkv[view], idx + 1)  # + the class token
            feats = feats / feats.norm(dim=-1, keepdim=True)
            patch[view][:, idx] = (feats @ rows_t.to(feats.dtype).T).T.float()
    fallback = multi_resolution(patch.reshape(len(views), -1, g, g), tiles, cfg.halves)
    return photo_logits(logits, masks, fallback, rows=rows)


def _band_rows(regions: int, size: tuple[int, int], budget: int = 1 << 28) -> int:
    """Photo rows a band of :func:`photo_logits` holds in ``budget`` bytes of float32 masks (at least 1)."""
    return max(1, budget // max(1, 4 * regions * int(size[1])))


__all__ = ["RegionPooling", "clip_views", "multi_resolution", "feature_masks", "global_patch_filter",
           "region_logits", "photo_logits", "textregion_logits"]

"""Trident (``--dense trident``; YuHengsss/Trident): ProxyCLIP's last block per window, the windows spliced, then
mixed on SAM's grid by SAM's last attention, and an optional SAM prompt refinement.

Its parts: :class:`SamAggregation` (its config), :func:`splice_windows`, :func:`sam_affinity` and
:func:`sam_aggregate` (its kernels), :func:`trident_features`, :func:`trident_logits` (its segmentor:
``get_trident_seg``), :func:`with_knobs` (``--cos-fac``, ``--refine-neg-cos``, ``--sam-halves``) and
:func:`refined_labels` (``--sam-refine``, through :mod:`vpltool.models.dense.sam_refine`), which its hooks
(:class:`Hooks`) call. The backbone needs a proxy DINO and SAM's image encoder (``with_dense("trident", proxy=...,
sam=...)``). Its segmentor settings, proxy model and knob names are the spec table's
(:data:`vpltool.config.dense.DENSE_SPECS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ContractError, VplError
from .hooks import DenseHooks
from .mixing import DenseMixing
from .proxyclip import ProxyAttention, feature_grid, features, proxy_tokens
from .segmentor import slide_windows, stride_multiple_input


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


# Trident trident.py + configs/base_config.py: ProxyCLIP's last block with DINO ViT-B/16 (beta 1.2, gamma 3.0)
# per window, spliced, then SAM ViT-B's last attention (cos_fac 1.2, refine_neg_cos True)
# (its windows batched: the similarity's mean is over all of an image's windows, as its torch.mean)
PRESET = DenseMixing("trident", "proxy", False, False, "bicubic-dino", proxy=ProxyAttention(pooled_mean=True),
                     splice=SamAggregation())
# its aggregation's knobs (SegmentConfig field -> SamAggregation field); --sam-refine, --coarse-threshold and
# --minimal-area are post-processing (DenseSettings)
_SPLICE_KNOBS = {"cos_fac": "cos_fac", "refine_neg_cos": "refine_neg_cos", "sam_halves": "halves"}


def with_knobs(mixing: DenseMixing, knobs: dict) -> DenseMixing:
    """``mixing`` with Trident's per-dataset aggregation knobs given (None left out) in its SAM aggregation."""
    given = {_SPLICE_KNOBS[k]: v for k, v in knobs.items() if k in _SPLICE_KNOBS}
    return replace(mixing, splice=replace(mixing.splice, **given)) if given else mixing


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




def trident_features(bb, windows: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]],
                     grid: tuple[int, int], attn, values) -> torch.Tensor:
    """One image's windows through the proxy-attention last block (:func:`~.proxyclip.proxy_tokens`), spliced over
    the input's patch ``grid`` (``boxes``: per window ``(y0, x0, y1, x1)`` in patches; :func:`splice_windows`),
    aggregated on SAM's grid by SAM's last attention ``attn`` ``[heads, N, N]`` and values ``[heads, h, w, hd]``
    (cut to the patches the image covers; :func:`sam_aggregate`; lists of the two halves' with
    ``SamAggregation.halves``), then ``ln_post`` and ``proj``.

    Returns:
        ``[h w, D]`` joint-space features on SAM's ``h x w`` grid, not normalised.
    """
    if bb.sam is None:
        raise VplError(f"--dense {bb.mixing.method} needs SAM's image encoder: pass --sam-weights FILE "
                       "(e.g. sam_vit_b_01ec64.pth)")
    tokens, proxy_grid = proxy_tokens(bb, windows)
    p = bb.patch_size
    window_grid = (windows.shape[-2] // p, windows.shape[-1] // p)
    spliced = splice_windows(tokens, proxy_grid, window_grid, boxes, grid)
    if isinstance(values, (list, tuple)):  # two halves (SamAggregation.halves)
        attn, values = [a.to(spliced.device) for a in attn], [v.to(spliced.device) for v in values]
    else:
        attn, values = attn.to(spliced.device), values.to(spliced.device)
    return bb.project(sam_aggregate(spliced, attn, values, bb.mixing.splice))


# Trident's ``preprocess_image``: the sides made multiples of the patch size, as RADSeg's (one function for both)
trident_input = stride_multiple_input


def sam_image(image: np.ndarray, stride: int = 16) -> np.ndarray:
    """Trident's SAM input before SAM's own transform: the photo ``[H0, W0, 3]`` uint8 RGB resized (OpenCV,
    bilinear) so that each side is the next multiple of ``stride``."""
    import cv2

    h, w = image.shape[:2]
    th, tw = -(-h // stride) * stride, -(-w // stride) * stride
    return image if (th, tw) == (h, w) else cv2.resize(np.ascontiguousarray(image), (tw, th))


def sam_attention(sam, image: np.ndarray, features: bool = False) -> tuple[torch.Tensor, ...]:
    """SAM's last attention ``[heads, N, N]`` and values ``[heads, h, w, hd]`` of ``image`` (uint8 ``[H, W, 3]``),
    cut to the ``h x w`` patches the image covers in SAM's padded input (Trident's ``get_sam_feat``); with
    ``features`` third the encoder's output ``[1, C, S/16, S/16]`` of the same pass (``--sam-refine``)."""
    sam_pixels, (sh, sw) = sam.prepare(np.ascontiguousarray(image))
    attn, values, *rest = sam.last_attention(sam_pixels, features=features)
    g = sam.img_size // sam.patch_size
    heads = attn.shape[1]
    attn = attn[0].view(heads, g, g, g, g)[:, :sh, :sw, :sh, :sw].reshape(heads, sh * sw, sh * sw)
    return (attn, values[0, :, :sh, :sw], *rest)


def trident_logits(bb, pixels: torch.Tensor, text: torch.Tensor, sizes: Sequence[tuple[int, int]], crop: int,
                   stride: int, sam_images: Sequence[np.ndarray | torch.Tensor], sam_features: list | None = None
                   ) -> list[torch.Tensor]:
    """Trident's ``get_trident_seg`` per image of a batch: per image ``[Q, H0, W0]`` float32 cosine logits.

    The input is made a patch multiple (:func:`trident_input`), cut into mmseg's windows (no padding), the windows'
    proxy-attention outputs spliced and aggregated by SAM on SAM's grid
    (:func:`trident_features`): SAM sees ``sam_images[i]`` (:func:`sam_image` of the
    photo, uint8 ``[h, w, 3]``), its attention and values cut to the patches the image covers; the cosine with each
    text row on that grid is resized bilinearly to the photo. ``sam_features`` (a list: ``--sam-refine``) receives
    per image SAM's encoding of the image it saw and that image's ``(h, w)``
    (:func:`~vpltool.models.dense.sam_refine.refine`'s ``features`` and ``sam_size``): of the same pass, or with the
    halves of the whole image, a pass of its own (as Trident's ``set_image(tmp_img)`` there).
    """
    sam, p = bb.sam, bb.patch_size
    if sam is None:
        raise VplError(f"--dense {bb.mixing.method} needs SAM's image encoder: pass --sam-weights FILE")
    rows_t = text.to(bb.device)
    out = []
    for i, size in enumerate(sizes):
        x = trident_input(pixels[i : i + 1], p, crop)
        height, width = x.shape[-2:]
        boxes = slide_windows(height, width, crop, stride)
        windows = torch.cat([x[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes])
        image = sam_images[i]
        image = image.cpu().numpy() if isinstance(image, torch.Tensor) else image
        if bb.mixing.splice.halves:  # Trident's Cityscapes: SAM on the left and the right half apart
            half = image.shape[1] // 2
            seen = [sam_attention(sam, image[:, :half]), sam_attention(sam, image[:, half:])]
            attn, values = [a for a, _ in seen], [v for _, v in seen]
            sh, sw = values[0].shape[1], values[0].shape[2] + values[1].shape[2]
            if sam_features is not None:
                sam_features.append((sam.features(sam.prepare(np.ascontiguousarray(image))[0]), image.shape[:2]))
        else:
            attn, values, *encoded = sam_attention(sam, image, features=sam_features is not None)
            sh, sw = values.shape[1:3]
            if sam_features is not None:
                sam_features.append((encoded[0], image.shape[:2]))
        feats = trident_features(bb, windows, [(y0 // p, x0 // p, y1 // p, x1 // p) for y0, y1, x0, x1 in boxes],
                                    (height // p, width // p), attn, values).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        logits = (feats @ rows_t.to(feats.dtype).T).T.reshape(1, -1, sh, sw)
        out.append(F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[0])
    return out


def refined_labels(sam, probs: torch.Tensor, labels: torch.Tensor, features: torch.Tensor,
                   sam_size: tuple[int, int], settings) -> tuple[torch.Tensor, torch.Tensor]:
    """``--sam-refine`` on one image (:func:`~vpltool.models.dense.sam_refine.refine` with ``settings``'s thresholds),
    in float32: ``[C, H0, W0]`` probabilities and ``[H0, W0]`` labels -> refined scores, labels."""
    from .sam_refine import refine

    with torch.no_grad(), torch.autocast(probs.device.type, enabled=False):
        return refine(probs.float(), labels, sam, features.float(), tuple(sam_size), settings.coarse_threshold,
                      settings.minimal_area, settings.sam_iou_threshold, settings.sam_mask_coeff)


class Hooks(DenseHooks, method="trident", preset=PRESET):
    """Trident's hooks: its knobs, SAM's input per photo (:func:`sam_image`, made by the loading workers under the
    key ``sam``), its whole segmentor (:func:`trident_logits`), ProxyCLIP's feature forward, and ``--sam-refine``
    after the argmax (:func:`refined_labels`, on SAM's encoding of the same pass, left under ``sam_encoding``)."""

    def with_knobs(self, mixing: DenseMixing, knobs: dict) -> DenseMixing:
        return with_knobs(mixing, knobs)

    def extra_inputs(self, item, image: np.ndarray) -> dict[str, torch.Tensor]:
        """SAM's input: the photo itself at patch multiples (Trident reads the file again)."""
        return {"sam": torch.tensor(sam_image(image))}

    def dense_logits(self, bb, pixels: torch.Tensor, text: torch.Tensor, sizes: Sequence[tuple[int, int]],
                     settings, extras: list[dict]) -> list[torch.Tensor]:
        if any("sam" not in e for e in extras):
            raise ContractError("--dense trident: the segmentor was given no SAM input images")
        encoded: list | None = [] if settings.sam_refine else None
        out = trident_logits(bb, pixels, text, sizes, settings.slide_crop, settings.slide_stride,
                             [e["sam"] for e in extras], encoded)
        for e, enc in zip(extras, encoded or ()):
            e["sam_encoding"] = enc  # (SAM's features of the image it saw, that image's (h, w))
        return out

    def features(self, bb, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        return features(bb, pixels, fp16_pos)

    def feature_grid(self, bb, size: tuple[int, int]) -> tuple[int, int]:
        return feature_grid(bb, size)

    def postprocess(self, bb, probs: torch.Tensor, labels: torch.Tensor, extras: dict, settings
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not settings.sam_refine:
            return probs, labels
        return refined_labels(bb.sam, probs, labels, *extras["sam_encoding"], settings)


__all__ = ["Hooks", "SamAggregation", "PRESET", "with_knobs", "splice_windows", "sam_affinity", "sam_aggregate",
           "trident_features", "trident_input", "sam_image", "sam_attention", "trident_logits", "refined_labels",
           "features", "feature_grid"]

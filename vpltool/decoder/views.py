"""The decoder at test time: views (scales x flips) of an image, their logits, and their mean at image size.

WeCLIP's recipe: the long side at ``LONG_SIDE_RATIO`` x the training crop, scales around it, each view and its
mirror through the frozen blocks and the decoder, logits resized to the image and averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..device import autocast
from .network import SegDecoder, block_features

LONG_SIDE_RATIO = 1.6  # WeCLIP: 320 px training crops, 512 px long side at test


def input_long_side(long_side: int | None, crop_size: int) -> int:
    """The test input's long side: ``long_side`` or 1.6 x the training crop."""
    return int(long_side or round(LONG_SIDE_RATIO * crop_size))


def view_size(bb, height: int, width: int, long_side: int, scale: float) -> tuple[int, int]:
    """``(H, W)`` of one test view: long side ``long_side * scale``, sides rounded up to the patch size."""
    ratio = long_side * scale / max(height, width)
    return bb.input_size(max(1, round(height * ratio)), max(1, round(width * ratio)))


def weclip_views(bb, image, long_side: int, scales: Sequence[float]) -> list[Tensor]:
    """WeCLIP's test views (``test_msc_flip_voc.py:60-90``): the normalised image ``[1, 3, H0, W0]`` resized
    bilinearly (no antialias) to a long side of ``long_side``, each side truncated (``int(h * ratio)``); a scale
    ``s != 1`` resized from that view by ``scale_factor=s`` (sides floored). The views are not cut to whole
    patches here: WeCLIP's stride-16 patch conv drops the last < 16 rows and columns of each view *and of its
    mirror image*, after the flip (:func:`decoder_forward` cuts), and WeCLIP+'s DINO sees the whole view.

    Args:
        bb: the backbone (its normalisation: the decoder's, :meth:`ClipBackbone.with_normalization`).
        image: ``[H0, W0, 3]`` uint8 RGB.

    Returns:
        One ``[1, 3, H_s, W_s]`` float32 view per scale, on ``bb.device``.
    """
    h, w = image.shape[:2]
    x = bb.normalize(torch.from_numpy(np.require(image, requirements=["C", "W"]))[None].to(bb.device))  # [1, 3, H0, W0]
    ratio = long_side / max(h, w)
    base = F.interpolate(x, size=(max(1, int(h * ratio)), max(1, int(w * ratio))), mode="bilinear",
                         align_corners=False)
    out = []
    for s in scales:
        out.append(base if s == 1.0 else F.interpolate(base, scale_factor=s, mode="bilinear", align_corners=False))
    return out


def class_argmax(scores: Tensor) -> Tensor:
    """``[C, H, W]`` scores -> ``[H, W]`` int64: each pixel's class, the first of equal maxima, exactly as
    ``scores.argmax(0)``; taken over a class-last copy, which torch's CPU kernel reduces about 3x faster than across
    the outer dimension (predict's masks: one call per image)."""
    return scores.movedim(0, -1).contiguous().argmax(-1)


def view_logits(forward: Callable[[Tensor], Tensor], pixels: Tensor, flip: bool) -> Tensor:
    """Scores of a batch of views, each averaged with those of its mirror image flipped back.

    Args:
        forward: ``[B', 3, H, W]`` -> ``[B', N, h, w]``.
        pixels: ``[B, 3, H, W]`` normalised pixels (or one view ``[3, H, W]``).

    Returns:
        ``[B, N, h, w]`` float32 (``[N, h, w]`` for one view); the mirrors run in the same forward as the views.
    """
    if pixels.ndim == 3:
        return view_logits(forward, pixels[None], flip)[0]
    return mirrored_mean(forward(torch.cat([pixels, pixels.flip(-1)]) if flip else pixels).float(), flip)


def mirrored_mean(out: Tensor, flip: bool) -> Tensor:
    """``[2B, N, h, w]`` scores of B views then their B mirrors -> ``[B, N, h, w]``, each view's averaged with its
    mirror's flipped back (``flip``; else ``out`` as it is)."""
    n = len(out) // 2
    return (out[:n] + out[n:].flip(-1)) / 2 if flip else out


def multiscale_logits(forward: Callable[[Tensor], Tensor], views: Sequence[Tensor], flip: bool,
                      view: Callable[[Callable[[Tensor], Tensor], Tensor, bool], Tensor] | None = None) -> Tensor:
    """Mean of :func:`view_logits` over views (one per scale, each ``[B, 3, H_s, W_s]`` or ``[3, H_s, W_s]``);
    every view's scores are resized to the first view's grid. ``view``: in place of :func:`view_logits` (predict's
    stored features: each scale's frozen features, ``forward`` the decoder alone).

    Returns:
        ``[B, N, h0, w0]`` float32 on the first view's patch grid (``[N, h0, w0]`` for single views).
    """
    if views and views[0].ndim == 3:
        return multiscale_logits(forward, [v[None] for v in views], flip, view)[0]
    total, grid = None, None
    for pixels in views:
        out = (view or view_logits)(forward, pixels, flip)
        if grid is None:
            grid = out.shape[-2:]
        elif out.shape[-2:] != grid:
            out = F.interpolate(out, size=grid, mode="bilinear", align_corners=False)
        total = out if total is None else total + out
    return total / len(views)


def decoder_forward(bb, model: SegDecoder, blocks: Sequence[int], dtype: torch.dtype,
                    features: Callable[..., Tensor] | None = None) -> Callable[[Tensor], Tensor]:
    """``[B, 3, H, W]`` pixels -> ``[B, C + 1, h, w]`` class scores: the frozen blocks, then the decoder. Sides
    that are no patch multiple lose their last rows / columns before the CLIP (WeCLIP's patch conv; a view's mirror
    image is cut after the flip, as WeCLIP's test script runs it); WeCLIP+'s DINO gets the whole batch.
    ``features``: in place of :func:`block_features`, a function of its arguments that calls it (predict's feature
    store keeps what it returns)."""

    def forward(batch: Tensor) -> Tensor:
        p = bb.patch_size
        h, w = max(p, batch.shape[-2] // p * p), max(p, batch.shape[-1] // p * p)
        feats = (features or block_features)(bb, batch[..., :h, :w], blocks, dtype)
        dino = getattr(model, "dino_backbone", None) if getattr(model, "dino_width", None) else None
        tokens = None if dino is None else dino.patch_tokens(dino.resized(batch))  # WeCLIP+: the DINO's view
        return decoder_head(model, bb.device, dtype)(feats, tokens)

    return forward


def decoder_head(model: SegDecoder, device: torch.device, dtype: torch.dtype) -> Callable[..., Tensor]:
    """``[B, L, h, w, width]`` frozen features (and WeCLIP+'s DINO tokens) -> ``[B, C + 1, h, w]`` class scores:
    the decoder alone, as :func:`decoder_forward` runs it."""

    def head(feats: Tensor, tokens: Tensor | None = None) -> Tensor:
        with torch.no_grad(), autocast(device, dtype):
            return model(feats)[1] if tokens is None else model(feats, tokens)[1]

    return head


def predict_logits(bb, model: SegDecoder, blocks: Sequence[int], image, scales: Sequence[float], flip: bool,
                   long_side: int, dtype: torch.dtype) -> Tensor:
    """Multi-scale (+ flip) class scores of one image at its own resolution (WeCLIP's test protocol).

    Args:
        bb: the frozen :class:`~vpltool.models.ClipBackbone` the decoder was trained on.
        image: ``[H0, W0, 3]`` uint8 RGB.

    Returns:
        ``[C + 1, H0, W0]`` float32 scores (channel 0 = background), on the CPU.
    """
    h0, w0 = image.shape[:2]
    views = [bb.preprocess(image, view_size(bb, h0, w0, long_side, s))[None] for s in scales]
    logits = multiscale_logits(decoder_forward(bb, model, blocks, dtype), [v.to(bb.device) for v in views], flip)
    return F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)[0].cpu()

"""Zero-shot segmentation with a PGSeg / GroupViT model, as the reference's ``PGSegInference.encode_decode``
(``segmentation/evaluation/pgseg_seg.py``; whole image, or mmseg's sliding window as its dataset configs
evaluate): every pixel takes its final group (argmax of both
stages' combined soft maps, bilinearly resized to the image), every group the class its embedding matches among the
image's top-5 classes, background where the pixel's best class affinity is below ``bg_thresh`` (capped at the
image's maximum affinity)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ....ops.sizes import keep_ratio_size
from ...dense.segmentor import slide_windows
from .model import PGSeg

# mmseg's img_norm_cfg of the reference's test pipeline, on 0-255 RGB
IMAGE_MEAN = (123.675, 116.28, 103.53)
IMAGE_STD = (58.395, 57.12, 57.375)
# the reference's class prompt sets (datasets/imagenet_template.py): 'simple' is what its seg evaluation uses
TEMPLATES = {"simple": ("a photo of a {}.",), "identity": ("{}",)}


@torch.no_grad()
def class_text_embeddings(model: PGSeg, tokens: torch.Tensor) -> torch.Tensor:
    """``[N, T, L]`` int64 (N classes x T templates) -> ``[N, D]`` float32: the mean over templates of the
    UNnormalised projected text embeddings, then L2-normalised (``build_text_embedding``)."""
    n, t, length = tokens.shape
    emb = model.text_features(tokens.reshape(n * t, length)).reshape(n, t, -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def class_tokens(names: Sequence[str], tokenize: Callable[[list[str]], torch.Tensor],
                 templates: Sequence[str] = TEMPLATES["simple"]) -> torch.Tensor:
    """``[N, T, L]`` int64 token ids of every class name in every template."""
    return torch.stack([tokenize([t.format(name) for t in templates]) for name in names])


def resized_size(h: int, w: int, short: int, long: int = 2048) -> tuple[int, int]:
    """mmseg ``Resize(img_scale=(long, short), keep_ratio=True)`` = mmcv's ``rescale_size``: the factor
    ``min(long / max(h, w), short / min(h, w))``, each side ``int(side * factor + 0.5)``, at least 32 pixels
    (:func:`vpltool.ops.sizes.keep_ratio_size`: a 100,000 x 16 photo had a side of 0)."""
    return keep_ratio_size(h, w, short, long)


def image_tensor(image, short_side: int, long_side: int = 2048) -> torch.Tensor:
    """``[H0, W0, 3]`` uint8 RGB numpy -> ``[1, 3, h, w]`` float32: the reference's test pipeline (mmseg's
    ``Resize(keep_ratio=True)`` then ``Normalize``, as mmcv computes them): the uint8 image resized by
    ``cv2.resize(INTER_LINEAR)`` (bilinear, no antialiasing, fixed-point on uint8) to :func:`resized_size`, then
    ``cv2.subtract`` the 0-255 mean and ``cv2.multiply`` by ``1 / std`` in float32 (mmcv's ``imnormalize_``).
    ``segment --pgseg`` and ``cam --pgseg`` both read images through it."""
    import cv2
    import numpy as np

    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = resized_size(image.shape[0], image.shape[1], short_side, long_side)
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    x = image.astype(np.float32)
    cv2.subtract(x, np.float64(np.array(IMAGE_MEAN).reshape(1, -1)), x)
    cv2.multiply(x, 1 / np.float64(np.array(IMAGE_STD).reshape(1, -1)), x)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def _resize_maps(maps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, G, h', w']`` -> ``[B, G, h, w]`` bilinear, align_corners False (``resize_attn_map``)."""
    return F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def zero_shot_logits(model: PGSeg, images: torch.Tensor, text_embeddings: torch.Tensor,
                     bg_thresh: float = 0.95, with_bg: bool = True, mode: str = "whole", crop: int = 448,
                     stride: int = 224) -> torch.Tensor:
    """``[B, 3, H, W]`` normalised, ``[N, D]`` normalised class embeddings -> ``[B, N (+1), H, W]`` float32: the
    reference's ``pred_logits`` (channel 0 = background when ``with_bg``; foreground channels in [0, 1]).

    ``mode``: ``whole`` (one pass) or ``slide`` (mmseg's sliding window, as the reference's VOC / COCO / Context
    configs evaluate: ``crop`` 448, ``stride`` 224; each window's logits are those of a whole pass on the window,
    averaged where windows overlap)."""
    if mode == "whole":
        return _whole_logits(model, images, text_embeddings, bg_thresh, with_bg)
    if mode != "slide":
        raise ValueError(f"zero-shot mode {mode!r}: whole or slide")
    b, _, h, w = images.shape
    out = torch.zeros(b, text_embeddings.shape[0] + (1 if with_bg else 0), h, w, dtype=images.dtype,
                      device=images.device)
    count = torch.zeros(b, 1, h, w, dtype=images.dtype, device=images.device)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        window = _whole_logits(model, images[:, :, y1:y2, x1:x2], text_embeddings, bg_thresh, with_bg)
        out += F.pad(window, (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return out / count


def _whole_logits(model: PGSeg, images: torch.Tensor, text_embeddings: torch.Tensor, bg_thresh: float,
                  with_bg: bool) -> torch.Tensor:
    feats = model.image_features(images)
    b, _, h, w = images.shape
    p = model.cfg.patch_size
    combined = model.combine_maps(feats["stages"])  # [B, h'*w', G]
    maps = _resize_maps(combined.transpose(1, 2).reshape(b, combined.shape[-1], h // p, w // p), h, w)
    groups = F.normalize(feats["groups"], dim=-1)
    pooled = F.normalize(feats["pooled"], dim=-1)
    scale = torch.clamp(model.logit_scale.exp(), max=100)
    n = text_embeddings.shape[0]
    offset = 1 if with_bg else 0
    out = torch.zeros(b, n + offset, h, w, dtype=images.dtype, device=images.device)
    for i in range(b):
        affinity = (groups[i] @ text_embeddings.T) * scale  # [G, N]
        prior = F.softmax(affinity, dim=-1)
        avg = F.softmax((pooled[i:i + 1] @ text_embeddings.T) * scale, dim=-1)  # [1, N]
        keep = torch.zeros_like(avg)
        top = avg.topk(dim=-1, k=min(5, n))
        keep.scatter_add_(dim=-1, index=top.indices, src=torch.ones_like(top.values))
        affinity = F.softmax(affinity.masked_fill(~keep.bool(), float("-inf")), dim=-1) * prior
        onehot = F.one_hot(maps[i].argmax(dim=0), num_classes=maps.shape[1]).to(maps.dtype)  # [H, W, G]
        fg = (onehot @ affinity).permute(2, 0, 1)  # [N, H, W]
        out[i, offset:] = fg
        if with_bg:
            thresh = min(bg_thresh, affinity.max().item())
            out[i, 0][fg.max(dim=0).values < thresh] = 1
    return out


@torch.no_grad()
def zero_shot_labels(model: PGSeg, images: torch.Tensor, text_embeddings: torch.Tensor,
                     bg_thresh: float = 0.95, with_bg: bool = True, mode: str = "whole", crop: int = 448,
                     stride: int = 224) -> torch.Tensor:
    """``[B, H, W]`` int64 labels (0 = background when ``with_bg``, class ``k`` of ``text_embeddings`` = ``k +
    1``): the argmax of :func:`zero_shot_logits` (the reference's softmax before it changes no argmax)."""
    return zero_shot_logits(model, images, text_embeddings, bg_thresh, with_bg, mode, crop, stride).argmax(dim=1)

"""Talk2DINO's zero-shot segmentation as its evaluation runs it (lorebianchi98/Talk2DINO at 4918c2d:
``DINOText.generate_masks`` per crop, ``DINOTextSegInference.encode_decode`` and mmseg's ``slide_inference``, which
the pinned mmseg 0.30.0 cannot run: it reads ``out_channels``, which that segmentor never sets).

Per image (:func:`zero_shot_logits`): the file read as mmseg's test pipeline reads it (:func:`image_tensor`: the
short side to 448 by cv2's bilinear keep-ratio resize, 0-255 floats, no normalisation), then per sliding window
(448 crops, stride 224) :func:`crop_masks`:

1. the crop resized to a ``resize_dim`` square (torchvision's antialiased bilinear ``Resize``), ``/ 255``, ImageNet
   normalisation; the DINO's final patch tokens and its last block's per-head CLS logits (``q * 0.125 @ kᵀ``);
2. the soft mask ``sigmoid(cos(patch, class))`` per class, the class embeddings being the projected mean over the
   templates of the CLIP text embeddings, normalised (:func:`class_text_embeddings`);
3. with ``bg_clean`` (the reference sets it for VOC21 and COCO-Object only): per head an embedding weighted by its
   raw logits, each class its heads' logits mixed by a softmax over the heads of its similarity to them, softmaxed
   over the patches, rescaled to the mask's range, and ``(mask + 0.2 * that) / 1.2`` (:func:`clean_background`);
4. bilinearly resized (align_corners True) to the crop, and with ``pamr`` PAMR on the crop's 0-255 RGB pixels
   (10 steps, dilations 1, 2, 4, 8, 12, 24; 30 classes at a time);
5. with a background class, a constant ``bg_thresh`` channel first.

The windows are averaged where they overlap; the caller resizes to the original size (bilinear, align_corners
False) and takes the argmax (the reference's softmax before it changes none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ....ops.sizes import keep_ratio_size
from ...dense.segmentor import pamr, slide_windows
from .net import Talk2DINO, interpolate_square

# datasets/templates.py sub_imagenet_template: the evaluation's prompts (evaluate.template)
TEMPLATES = {"sub_imagenet": ("itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
                              "a {} in a video game.", "art of the {}.", "a photo of the small {}."),
             "simple": ("a photo of a {}.",)}
PAMR_STEPS = 10  # dinotext.py apply_pamr
PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)
PAMR_CHUNK = 30  # classes refined at a time
LAMBDA_BG = 0.2  # generate_masks' lambda_bg
CHUNK = 32  # build_text_embedding's chunk of prompts


def class_tokens(names: Sequence[str], tokenize: Callable[[list[str]], Tensor],
                 templates: Sequence[str] = TEMPLATES["sub_imagenet"]) -> Tensor:
    """``[N, T, L]`` int64 token ids of every class name in every template (``build_dataset_class_tokens``)."""
    return torch.stack([tokenize([t.format(name) for t in templates]) for name in names])


@torch.no_grad()
def class_text_embeddings(model: Talk2DINO, tokens: Tensor) -> Tensor:
    """``[N, T, L]`` -> ``[N, dino_dim]`` float32: the CLIP text embeddings (32 prompts at a time), their mean over
    the templates (not normalised first), projected, L2-normalised with eps 1e-6 (``build_text_embedding``)."""
    n, t, length = tokens.shape
    flat = tokens.reshape(n * t, length)
    emb = torch.cat([model.text_features(flat[i:i + CHUNK]) for i in range(0, n * t, CHUNK)])
    emb = emb.reshape(n, t, -1).mean(dim=1).float()
    return F.normalize(model.project_text(emb), dim=-1, eps=1e-6)


def resized_size(h: int, w: int, short: int, long: int = 2048) -> tuple[int, int]:
    """mmseg ``Resize(img_scale=(long, short), keep_ratio=True)`` (mmcv ``rescale_size``), each side at least 32
    pixels (:func:`vpltool.ops.sizes.keep_ratio_size`)."""
    return keep_ratio_size(h, w, short, long)


def image_tensor(image: np.ndarray, short_side: int = 448, long_side: int = 2048) -> Tensor:
    """``[H0, W0, 3]`` uint8 RGB -> ``[1, 3, h, w]`` float32 RGB in 0-255: mmseg's test pipeline of the reference
    (``Resize(keep_ratio)`` by ``cv2.resize`` bilinear on the uint8 image, then ``FloatImage``: no normalisation;
    the reference holds BGR and flips it to RGB first thing in ``generate_masks``)."""
    import cv2

    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = resized_size(image.shape[0], image.shape[1], short_side, long_side)
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None].contiguous()


def clean_background(mask: Tensor, feats: Tensor, logits: Tensor, text: Tensor, lambda_bg: float = LAMBDA_BG
                     ) -> Tensor:
    """``similarity_assignment_weighted``: ``[1, N, h, w]`` soft masks, ``[1, C, h, w]`` patch tokens, ``[1, H,
    hw]`` CLS logits, ``[N, C]`` class embeddings -> ``[1, N, h, w]``. Batch 1 only (as the reference's reshape)."""
    b, c, h, w = feats.shape
    n = text.shape[0]
    hw = h * w
    heads = (logits.unsqueeze(2) * feats.reshape(b, c, hw).unsqueeze(1)).mean(dim=-1)  # [B, H, C], raw weights
    heads = heads / heads.norm(dim=-1, keepdim=True)
    weight = (text.unsqueeze(0) @ heads.permute(0, 2, 1)).softmax(dim=-1)  # [B, N, H]
    total = weight.sum(dim=-1)
    per_class = (logits.unsqueeze(1).repeat(1, n, 1, 1) * weight.unsqueeze(-1).repeat(1, 1, 1, hw)).sum(dim=2)
    per_class = (per_class / total.unsqueeze(-1).repeat(1, 1, hw)).softmax(dim=-1)  # [B, N, hw]
    low, high = per_class.min().item(), per_class.max().item()
    high = max(high, high - low)  # the reference's: divides by the maximum, not the range
    per_class = (per_class - low) / high * (mask.max() - mask.min()) + mask.min()
    return (mask.reshape(n, hw) + lambda_bg * per_class).reshape(b, n, h, w) / (1 + lambda_bg)


@torch.no_grad()
def crop_masks(model: Talk2DINO, crop: Tensor, text: Tensor, bg_clean: bool = False, use_pamr: bool = True
               ) -> Tensor:
    """One crop ``[1, 3, H, W]`` RGB 0-255 float32, ``[N, C]`` class embeddings -> ``[1, N, H, W]`` soft masks
    (module doc, steps 1-4; ``generate_masks``)."""
    height, width = crop.shape[-2:]
    pixels = model.normalise(interpolate_square(crop, model.cfg.resize_dim) / 255.0)
    tokens, logits = model.dino_features(pixels)
    b, p, c = tokens.shape
    side = int(p ** 0.5)
    feats = tokens.reshape(b, side, side, c).permute(0, 3, 1, 2)
    mask = torch.sigmoid(torch.einsum("bchw,nc->bnhw", F.normalize(feats, dim=1, eps=1e-6), text))
    if bg_clean:
        mask = clean_background(mask, feats, logits, text)
    mask = F.interpolate(mask, (height, width), mode="bilinear", align_corners=True)
    if use_pamr:
        guide = F.interpolate(crop, (height, width), mode="bilinear", align_corners=True)
        for c0 in range(0, mask.shape[1], PAMR_CHUNK):
            mask[:, c0:c0 + PAMR_CHUNK] = pamr(guide, mask[:, c0:c0 + PAMR_CHUNK], PAMR_STEPS, PAMR_DILATIONS)
    return mask


@torch.no_grad()
def zero_shot_logits(model: Talk2DINO, image: Tensor, text: Tensor, with_bg: bool = True, bg_thresh: float = 0.55,
                     bg_clean: bool = False, use_pamr: bool = True, crop: int = 448, stride: int = 224) -> Tensor:
    """``[1, 3, h, w]`` RGB 0-255 (:func:`image_tensor`), ``[N, C]`` class embeddings -> ``[1, N (+1), h, w]``
    float32: the windows' masks averaged (channel 0 the constant ``bg_thresh`` when ``with_bg``); ``crop`` 0 = the
    whole image as one window."""
    _, _, h, w = image.shape
    windows = slide_windows(h, w, crop, stride) if crop else [(0, h, 0, w)]
    n = text.shape[0] + (1 if with_bg else 0)
    out = image.new_zeros(1, n, h, w)
    count = image.new_zeros(1, 1, h, w)
    for y1, y2, x1, x2 in windows:
        masks = crop_masks(model, image[:, :, y1:y2, x1:x2], text, bg_clean, use_pamr)
        if with_bg:
            masks = torch.cat([masks.new_full((1, 1, *masks.shape[-2:]), bg_thresh), masks], dim=1)
        out += F.pad(masks, (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return out / count


def zero_shot_labels(model: Talk2DINO, image: np.ndarray, text: Tensor, short_side: int = 448, **options
                     ) -> tuple[Tensor, Tensor]:
    """One ``[H0, W0, 3]`` uint8 RGB image -> (``[N (+1), H0, W0]`` float32 logits at its size, ``[H0, W0]`` int64
    labels): :func:`zero_shot_logits` on :func:`image_tensor`, resized bilinearly (align_corners False), argmax."""
    h0, w0 = image.shape[:2]
    x = image_tensor(image, short_side).to(text.device)
    logits = zero_shot_logits(model, x, text, **options)
    logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)[0]
    return logits, logits.argmax(0)


__all__ = ["TEMPLATES", "class_tokens", "class_text_embeddings", "image_tensor", "resized_size", "clean_background",
           "crop_masks", "slide_windows", "zero_shot_logits", "zero_shot_labels"]

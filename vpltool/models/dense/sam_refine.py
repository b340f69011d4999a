"""Trident's SAM prompt refinement (YuHengsss/Trident ``seg_utils/utils.py`` ``sam_refinement``, run by
``postprocess_result`` under ``eval.py --sam_refine``, the setting of its published figures): the coarse labels of
``--dense trident`` prompt SAM's mask decoder region by region, and SAM's masks replace the labels where SAM is
confident.

Per image, on the class probabilities ``P`` ``[C, H, W]`` and labels ``L`` ``[H, W]`` after the threshold:

1. ``P`` and ``L`` are halved (``H // 2, W // 2``: bilinear and nearest); a pixel whose top probability is below
   ``coarse_threshold`` leaves every class;
2. each class whose halved probability reaches ``coarse_threshold`` somewhere (background included) is cut into
   8-connected regions; a region of at least ``minimal_area`` halved pixels gives one prompt: a positive point at
   its highest probability, its bounding box, and the class's halved probability map as the mask prompt
   (resized to SAM's low-resolution frame, ``coarse_threshold`` applied, times ``mask_coeff``);
3. SAM answers one mask per prompt; one whose predicted IoU is at most ``iou_threshold`` fails;
4. per class, its kept masks' union, holding the max over them of ``sigmoid(SAM logit) * P[c]``; the labels are
   the argmax of these; pixels no kept mask covers keep their coarse label; a failed region's pixels take
   ``max(P, refined)`` as their scores (their labels are left: Trident's ``map_failed_regions`` compares the
   scores after that update, so its label swap never fires).

The output's scores are those refined maps (zero outside every kept mask), not probabilities, as the reference
hands them to mmseg. SAM sees the image of Trident's aggregation (:func:`~vpltool.models.dense.trident.sam_image`),
so one encoder pass serves both (:meth:`~vpltool.models.backbones.sam.SamEncoder.last_attention` with ``features``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SamPrompts:
    """One class's prompts at the halved resolution: ``regions`` ``[N, h, w]`` bool, ``points`` ``[N, 2]`` int64
    ``(x, y)``, ``boxes`` ``[N, 4]`` float32 ``x0, y0, x1, y1`` (inclusive, ``masks_to_boxes``)."""

    regions: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """SAM's ``ResizeLongestSide.get_preprocess_shape``: the long side to ``long_side``, the other in proportion,
    rounded half up."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def to_sam_frame(xy: torch.Tensor, size: tuple[int, int], long_side: int) -> torch.Tensor:
    """``apply_coords_torch``: ``[..., 2]`` ``(x, y)`` in an image of ``size`` ``(h, w)`` -> float32 in that image
    resized so its long side is ``long_side``."""
    new_h, new_w = preprocess_shape(size[0], size[1], long_side)
    out = xy.to(torch.float32).clone()
    out[..., 0] = out[..., 0] * (new_w / size[1])
    out[..., 1] = out[..., 1] * (new_h / size[0])
    return out


def class_prompts(probs: torch.Tensor, labels: torch.Tensor, c: int, minimal_area: int) -> SamPrompts | None:
    """Class ``c``'s prompts (step 2) from halved ``probs`` ``[C, h, w]`` and ``labels`` ``[h, w]`` (uncertain
    pixels already relabelled ``C``); None when no region is large enough. Regions in raster order of their first
    pixel (the refinement's result does not depend on the order)."""
    from scipy import ndimage

    mask = (labels == c).cpu().numpy()
    regions_np, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))  # 8-connectivity, as skimage's 2
    class_p = probs[c]
    regions, points = [], []
    for k in range(1, n + 1):
        region = torch.from_numpy(regions_np == k).to(probs.device)
        if int(region.sum()) < minimal_area:
            continue
        top = int(torch.argmax(class_p * region))  # the first highest pixel, row-major
        points.append((top % class_p.shape[1], top // class_p.shape[1]))
        regions.append(region)
    if not regions:
        return None
    stack = torch.stack(regions)
    from torchvision.ops import masks_to_boxes

    return SamPrompts(stack, torch.tensor(points, dtype=torch.long, device=probs.device),
                      masks_to_boxes(stack).to(torch.float32))


def mask_prompt(class_probs: torch.Tensor, image_size: tuple[int, int], side: int, coarse_threshold: float,
                coeff: float) -> torch.Tensor:
    """Step 2's mask prompt: halved ``[h, w]`` probabilities resized bilinearly so the long side is ``side`` (SAM's
    low-resolution frame, 256) in the proportions of the image ``image_size``, zero-padded to ``side x side``,
    ``coeff * p`` where ``p > coarse_threshold``, else 0 -> ``[1, side, side]`` float32.

    Three-dimensional, as Trident passes it: SAM's prompt encoder then reads it as one unbatched image (its
    LayerNorm2d normalising over rows, not channels) and broadcasts its embedding over the class's prompts; a
    ``[1, 1, side, side]`` mask would give other numbers.
    """
    new_h, new_w = preprocess_shape(image_size[0], image_size[1], side)
    r = F.interpolate(class_probs[None, None], [new_h, new_w], mode="bilinear", align_corners=False)[0]
    r = F.pad(r, (0, side - new_w, 0, side - new_h), mode="constant", value=0)
    return torch.where(r > coarse_threshold, coeff * r, torch.zeros_like(r)).float()


def refine(probs: torch.Tensor, labels: torch.Tensor, sam, features: torch.Tensor, sam_size: tuple[int, int],
           coarse_threshold: float = 0.2, minimal_area: int = 225, iou_threshold: float = 0.8,
           mask_coeff: float = 0.005, stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Trident's ``sam_refinement`` on one image (module docstring, steps 1-4).

    Args:
        probs: ``[C, H, W]`` float32 class probabilities (class 0 background) at the photo's size.
        labels: ``[H, W]`` int64 labels after the probability threshold.
        sam: a :class:`~vpltool.models.backbones.sam.SamEncoder` loaded with its prompt encoder and mask decoder.
        features: ``[1, out_chans, S/16, S/16]`` SAM's encoding of the image SAM saw, of size ``sam_size`` ``(h, w)``.
        coarse_threshold, minimal_area, iou_threshold, mask_coeff: Trident's ``coarse_thresh``, ``minimal_area``,
            ``sam_iou_thresh`` and ``sam_mask_coff``.

    Returns:
        ``[C, H, W]`` float32 refined scores and ``[H, W]`` int64 labels; the inputs as they are when no mask is
        kept.
    """
    n_classes, height, width = probs.shape
    dh, dw = height // 2, width // 2
    # nearest resizing of exact small integers: float32 here, fp16 in the code, the same picks
    small = F.interpolate(labels[None, None].float(), [dh, dw], mode="nearest")[0, 0].long()
    small_p = F.interpolate(probs[None], [dh, dw], mode="bilinear", align_corners=False)[0]
    if coarse_threshold > 0:
        small = torch.where(small_p.max(0).values < coarse_threshold, torch.full_like(small, n_classes), small)
    side = 4 * (sam.img_size // sam.patch_size)  # SAM's low-resolution mask frame (256)
    input_size = preprocess_shape(sam_size[0], sam_size[1], sam.img_size)
    kept_logits, owners, failed, ious = [], [], [], []
    for c in range(n_classes):
        if small_p[c].max() < coarse_threshold:
            continue
        prompts = class_prompts(small_p, small, c, minimal_area)
        if prompts is None:
            continue
        mask = mask_prompt(small_p[c], (height, width), side, coarse_threshold, mask_coeff)
        points = to_sam_frame(prompts.points, (dh, dw), sam.img_size)[:, None]
        boxes = to_sam_frame(prompts.boxes.long().view(-1, 2, 2), (dh, dw), sam.img_size).view(-1, 4)
        _, iou, low = sam.predict(features, points, boxes, mask, input_size, tuple(sam_size))
        valid = (iou > iou_threshold)[:, 0].cpu()
        ious += iou[:, 0].tolist() if stats is not None else []
        if not bool(valid.all()):
            failed.append(prompts.regions[~valid.to(prompts.regions.device)])
        if valid.any():
            kept_logits.append(low[valid.to(low.device)])
            owners += [c] * int(valid.sum())
    if stats is not None:
        stats.update(prompts=len(ious), kept=len(owners), iou_min=min(ious, default=None),
                     iou_max=max(ious, default=None))
    if not kept_logits:
        return probs, labels
    low = torch.cat(kept_logits)
    logits = _postprocess(low, sam.img_size, input_size, tuple(sam_size))
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
    masks, scores = logits[:, 0] > 0, logits[:, 0].sigmoid()
    owner = torch.tensor(owners, device=masks.device)
    refined = probs.new_zeros(n_classes, height, width)
    for c in sorted(set(owners)):
        mine = owner == c
        union = masks[mine].sum(0).bool()
        refined[c] = (scores[mine] * probs[c]).max(0).values * union
    out_labels = torch.where(refined.sum(0) == 0, labels, refined.argmax(0))
    if failed:
        regions = torch.cat(failed).float()
        area = F.interpolate(regions[None], (height, width), mode="nearest")[0].sum(0, keepdim=True) != 0
        failed_p = area * probs
        refined = torch.where(failed_p > refined, failed_p, refined)
        # Trident's label swap compares with the scores just raised to failed_p: it never fires; kept for fidelity
        swap = failed_p.max(0).values > refined.max(0).values
        out_labels = torch.where(swap, labels, out_labels)
    return refined, out_labels


def _postprocess(low: torch.Tensor, img_size: int, input_size: tuple[int, int], original: tuple[int, int]
                 ) -> torch.Tensor:
    """``Sam.postprocess_masks``: ``[N, 1, s, s]`` low-resolution logits -> ``[N, 1, h0, w0]`` (bilinear to SAM's
    input, the padding cut, bilinear to ``original``)."""
    up = F.interpolate(low, (img_size, img_size), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    return F.interpolate(up, original, mode="bilinear", align_corners=False)


__all__ = ["SamPrompts", "class_prompts", "mask_prompt", "preprocess_shape", "refine", "to_sam_frame"]

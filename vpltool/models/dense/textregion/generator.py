"""SAM 2's automatic mask generator as TextRegion runs it (its ``sam2/custom_automatic_mask_generator.py``,
``CustomAutomaticMaskGenerator.generate_for_batch`` with ``configs/base_config.py``'s ``sam2_cfg``), restated from a
reading of its code over the ``sam2`` package's model (:class:`Sam2Model`), or segment-anything's
(:class:`SamModel`: the demo world's toy SAM, with its own input transform and mask post-processing).

For one photo (``H0 x W0``, resized first as the method's input is: mmseg's keep-ratio resize):

1. SAM 2's image features of the resized photo, itself resized bilinearly to ``1024 x 1024`` and normalised with
   ImageNet's mean and std (its ``CustomSAM2Transforms``);
2. a ``points_per_side``-square grid of point prompts over the photo (each point at its cell's centre, taken in the
   photo's own coordinates and mapped to 1024), all in one decoder call with three masks a point; the ``256 x 256``
   mask logits clamped to [-32, 32] and kept as float16, ordered whole masks (the decoder's third), parts, sub-parts;
3. masks whose predicted IoU is at most ``pred_iou_thresh`` or whose stability score (the IoU of the logits above
   +1 and above -1) is below ``stability_score_thresh`` dropped; the boxes of the rest (on the 256 grid) deduplicated
   by non-maximum suppression at ``box_nms_thresh``, best predicted IoU first;
4. a mask of at most ``min_size`` positive low-resolution pixels dropped; the others' logits clamped to [0, 3] and
   resized bilinearly to the photo (float16): whole masks, then parts, then sub-parts, each by predicted IoU;
5. fused greedily in that order: each mask not yet taken takes the later ones whose boxes overlap its own by an IoU
   above 0.2 and whose containment (the sum of the smaller of the two masks over the smaller mask's sum) exceeds
   ``fuse_mask_threshold``, and becomes their maximum.

Returns ``[R, H0, W0]`` float16 soft masks in [0, 3], as its ``segmentations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....errors import VplError, install_extra

DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"  # base_config.py's model_cfg
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SAM2Transforms'
FEATURE_SIZES = ((256, 256), (128, 128), (64, 64))  # SAM2ImagePredictor's _bb_feat_sizes
# prompts a decoder call runs at once here: the decoder repeats the image's features for each (2048 points of the
# reference's batch hold ~10 GB on a CPU); a batch's masks are the same, put in the batch's order
DECODE_CHUNK = 16


@dataclass(frozen=True)
class MaskGenerator:
    """The generator's settings (``configs/base_config.py`` ``sam2_cfg`` and ``load_sam2``'s arguments).

    Attributes:
        points_per_side: the point grid's side (16; its Cityscapes config 36).
        points_per_batch: points a decoder call (2048).
        pred_iou_thresh: a mask is kept when its predicted IoU exceeds this (0.6).
        stability_score_thresh: ... and its stability score reaches this (0.6; offset 1, mask threshold 0).
        box_nms_thresh: the box IoU above which non-maximum suppression drops a mask (0.9).
        fuse_mask_threshold: masks whose containment exceeds this are fused into one (0.8; ``fuse_mask`` True).
        min_size: a mask of at most this many low-resolution pixels is dropped (100, the generator's default).
    """

    points_per_side: int = 16
    points_per_batch: int = 2048
    pred_iou_thresh: float = 0.6
    stability_score_thresh: float = 0.6
    box_nms_thresh: float = 0.9
    fuse_mask_threshold: float = 0.8
    min_size: int = 100


def import_sam2():
    """The ``sam2`` package's builder, or one line naming the fix."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError:
        raise VplError(f"--region-masks sam2: the sam2 package is not installed; {install_extra('sam2')} "
                       "(SAM2_BUILD_CUDA=0 on a machine without CUDA), or give --region-masks a folder of .npz region "
                       "masks") from None
    return build_sam2


def point_grid(n: int) -> np.ndarray:
    """``[n * n, 2]`` float64 ``(x, y)`` in [0, 1]: the cells' centres, row by row (``build_point_grid``)."""
    side = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    return np.stack([np.tile(side[None, :], (n, 1)), np.tile(side[:, None], (1, n))], axis=-1).reshape(-1, 2)


def mask_boxes(masks):
    """``[N, h, w]`` bool -> ``[N, 4]`` int64 ``(x0, y0, x1, y1)`` inclusive, ``(0, 0, 0, 0)`` for an empty mask."""
    import torch

    if masks.numel() == 0:
        return torch.zeros(len(masks), 4, dtype=torch.int64, device=masks.device)
    h, w = masks.shape[-2:]
    out = []
    for axis, size in ((-2, w), (-1, h)):  # columns' extent (x), then rows' (y)
        seen = masks.any(dim=axis)  # [N, size]
        coords = seen * torch.arange(size, device=masks.device)[None]
        out.append(((coords + size * ~seen).min(dim=-1).values, coords.max(dim=-1).values))
    (x0, x1), (y0, y1) = out
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    return boxes * (masks.flatten(1).any(dim=1))[:, None]


def stability(masks, offset: float = 1.0):
    """The IoU of a mask's logits above ``+offset`` and above ``-offset`` (mask threshold 0)."""
    import torch

    inter = (masks > offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (masks > -offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def fuse(masks, boxes, threshold: float):
    """Step 5: ``[R, H0, W0]`` masks in ranking order, their ``[R, 4]`` xyxy boxes -> the fused masks, float32."""
    import torch

    masks = masks.float()
    nonzero = masks.abs().sum(dim=(1, 2)) > 0
    masks, boxes = masks[nonzero], boxes[nonzero]
    b1, b2 = boxes[:, None], boxes[None]
    inter = ((torch.min(b1[..., 2], b2[..., 2]) - torch.max(b1[..., 0], b2[..., 0])).clamp(min=0)
             * (torch.min(b1[..., 3], b2[..., 3]) - torch.max(b1[..., 1], b2[..., 1])).clamp(min=0))
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    box_iou = inter / (area[:, None] + area[None] - inter + 1e-8)
    free = torch.ones(len(masks), dtype=torch.bool)
    out = []
    for i in range(len(masks)):
        if not free[i]:
            continue
        free[i] = False
        group = [i]
        for j in ((box_iou[i] > 0.2) & free).nonzero().flatten().tolist():
            smaller = torch.minimum(masks[i].sum(), masks[j].sum())
            contained = torch.minimum(masks[i], masks[j]).sum() / smaller if smaller >= 1e-8 else 0.0
            if contained > threshold:
                group.append(j)
        free[group] = False
        out.append(masks[group].amax(dim=0) if len(group) > 1 else masks[i])
    return torch.stack(out) if out else masks.new_zeros(0, *masks.shape[1:])


class Sam2Model:
    """SAM 2 (the ``sam2`` package: ``config`` and its ``checkpoint``) as the generator's steps 1 and 2 use it."""

    def __init__(self, config: str, checkpoint: Path, device: str = "cpu"):
        from ...registry import certify

        build_sam2 = import_sam2()
        self.model = build_sam2(config, str(checkpoint), device=str(device), apply_postprocessing=False)
        # the sam2 package reads its checkpoint itself: the registry's weights rule, as for every family's model
        certify(self.model, str(checkpoint), "pass SAM 2's released checkpoint (re-download it) to --sam-weights")
        self.device = next(self.model.parameters()).device

    def embed(self, resized: np.ndarray) -> None:
        """Step 1 on ``[H, W, 3]`` uint8 RGB: the image's features, kept as SAM 2's predictor keeps them."""
        import torch
        import torch.nn.functional as F

        m = self.model
        x = torch.from_numpy(resized).to(self.device).float()[None].permute(0, 3, 1, 2) / 255.0
        x = F.interpolate(x, size=(1024, 1024), mode="bilinear", align_corners=False)
        x = (x - torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)) / torch.tensor(
            IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        _, feats, _, _ = m._prepare_backbone_features(m.forward_image(x))
        if m.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + m.no_mem_embed
        maps = [f.permute(1, 2, 0).view(1, -1, *size) for f, size in zip(feats[::-1], FEATURE_SIZES[::-1])][::-1]
        self.embedding, self.high = maps[-1], maps[:-1]

    def decode(self, points, size: tuple[int, int]):
        """``[N, 2]`` float32 prompts in the photo's ``(x, y)`` pixels -> (``[N, 3, 256, 256]`` logits clamped to
        [-32, 32], ``[N, 3]`` predicted IoU): the photo's coordinates normalised, times 1024."""
        import torch

        m = self.model
        scaled = points.clone()
        scaled[:, 0], scaled[:, 1] = scaled[:, 0] / size[1], scaled[:, 1] / size[0]
        labels = torch.ones(len(points), 1, dtype=torch.int, device=points.device)
        sparse, dense = m.sam_prompt_encoder(points=(scaled[:, None] * 1024, labels), boxes=None, masks=None)
        low, iou, _, _ = m.sam_mask_decoder(image_embeddings=self.embedding,
                                            image_pe=m.sam_prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                            multimask_output=True, repeat_image=len(points) > 1,
                                            high_res_features=self.high)
        return low.clamp(-32.0, 32.0), iou

    def upsample(self, low, size: tuple[int, int]):
        """``[R, 256, 256]`` float32 -> ``[R, H0, W0]``: bilinear to the photo (SAM2Transforms.postprocess_masks)."""
        import torch.nn.functional as F

        return F.interpolate(low[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


class SamModel:
    """segment-anything's whole SAM (``load_sam`` with its prompt encoder and mask decoder: the demo world's toy SAM)
    in SAM 2's place: its own input transform (the long side to 1024, padded) and mask post-processing (the padding
    cut, then to the photo). The steps after the decoder are the reference's."""

    def __init__(self, sam):
        from segment_anything import SamPredictor
        from segment_anything.modeling import Sam

        from ...backbones.sam import PIXEL_MEAN, PIXEL_STD

        model = Sam(sam.model, sam.prompt_encoder, sam.mask_decoder, list(PIXEL_MEAN), list(PIXEL_STD))
        self.predictor = SamPredictor(model.eval().to(sam.device))
        self.device = sam.device

    def embed(self, resized: np.ndarray) -> None:
        self.predictor.set_image(np.ascontiguousarray(resized))

    def decode(self, points, size: tuple[int, int]):
        import torch

        p = self.predictor
        h, w = p.original_size  # the resized photo's; the prompts are the photo's, scaled onto it
        scaled = points * torch.tensor([w / size[1], h / size[0]], device=points.device)
        coords = p.transform.apply_coords_torch(scaled, p.original_size)[:, None]
        labels = torch.ones(len(points), 1, dtype=torch.int, device=points.device)
        sparse, dense = p.model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low, iou = p.model.mask_decoder(image_embeddings=p.features, image_pe=p.model.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=True)
        return low.clamp(-32.0, 32.0), iou

    def upsample(self, low, size: tuple[int, int]):
        p = self.predictor
        return p.model.postprocess_masks(low[:, None], p.input_size, tuple(size))[:, 0]


class TextRegionGenerator:
    """TextRegion's generator (module docstring) on SAM 2 (:class:`Sam2Model`) or segment-anything's SAM
    (:class:`SamModel`)."""

    def __init__(self, model, settings: MaskGenerator | None = None):
        self.model = model
        self.settings = settings or MaskGenerator()

    def generate(self, resized: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB, the photo resized; ``size`` the photo's ``(H0, W0)`` -> ``[R, H0, W0]`` float16.

        The model runs at the caller's autocast (``--precision bf16 / fp16``), the reference's steps after it as
        written (its fp16 masks, fp32 IoU) outside it: a CPU bf16 autocast has no rule for those fp16 tensors."""
        import torch

        self.model.embed(resized)
        kind = self.model.device.type
        half = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        with torch.autocast(kind, enabled=False):
            return self._masks(size, half)

    def _masks(self, size: tuple[int, int], half) -> np.ndarray:
        """:meth:`generate` after the embedding: the decoder at ``half`` (None: fp32), the rest in fp32 / fp16."""
        import torch
        from torchvision.ops import batched_nms

        s = self.settings
        h0, w0 = size
        device = self.model.device
        grid = torch.as_tensor(point_grid(s.points_per_side) * np.array([w0, h0])[None], dtype=torch.float32,
                               device=device)
        masks, ious, kinds, boxes = [], [], [], []
        for start in range(0, len(grid), s.points_per_batch):
            points = grid[start : start + s.points_per_batch]
            with torch.autocast(device.type, dtype=half, enabled=half is not None):
                parts = [self.model.decode(c, size) for c in points.split(DECODE_CHUNK)]
            low, iou = torch.cat([p[0] for p in parts]).half(), torch.cat([p[1] for p in parts]).float()
            m = torch.cat([low[:, 2], low[:, 1], low[:, 0]])  # whole, parts, sub-parts
            q = torch.cat([iou[:, 2], iou[:, 1], iou[:, 0]])
            k = torch.tensor([2, 1, 0], device=device).repeat_interleave(len(points))
            keep = q > s.pred_iou_thresh
            m, q, k = m[keep], q[keep], k[keep]
            keep = stability(m) >= s.stability_score_thresh
            masks.append(m[keep]), ious.append(q[keep]), kinds.append(k[keep]), boxes.append(mask_boxes(m[keep] > 0))
        m, q, k, b = (torch.cat(t) for t in (masks, ious, kinds, boxes))
        order = batched_nms(b.float(), q, torch.zeros_like(b[:, 0]), iou_threshold=s.box_nms_thresh)
        m, q, k, b = m[order], q[order], k[order], b[order]
        big = (m > 0).sum(dim=(1, 2)) > s.min_size
        m, q, k, b = m[big], q[big], k[big], b[big]
        rank = sorted(range(len(q)), key=lambda i: (-int(k[i]), -float(q[i])))  # stable: NMS order on ties
        m, b = m[rank], b[rank]
        if not len(m):
            return np.zeros((0, h0, w0), np.float16)
        full = self.model.upsample(m.clamp(0, 3).float(), size).half()
        return fuse(full, b, s.fuse_mask_threshold).half().cpu().numpy()

    def masks(self, image_path, image: np.ndarray, cfg=None) -> np.ndarray:
        """One photo's masks (``cfg``: the run's :class:`~vpltool.config.SegmentConfig`, whose resize the image
        takes first, as the reference's SAM 2 sees the method's input)."""
        import cv2
        import torch

        from ..segmentor import short_side_size

        h0, w0 = image.shape[:2]
        settings = cfg.resolved() if cfg is not None else None
        size = short_side_size(h0, w0, settings.short_side, settings.long_side) if settings else (h0, w0)
        resized = cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        with torch.no_grad():
            return self.generate(resized, (h0, w0))


__all__ = ["DEFAULT_CONFIG", "MaskGenerator", "import_sam2", "point_grid", "mask_boxes", "stability", "fuse",
           "Sam2Model", "SamModel", "TextRegionGenerator"]

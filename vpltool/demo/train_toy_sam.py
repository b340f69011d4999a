"""`vpltool train-toy-sam`: a toy SAM, trained as SAM trains on the demo world's train masks (class-agnostic).

Trident's SAM (`segment --dense trident`, and its `--sam-refine`) for the demo world: segment-anything's own
``ImageEncoderViT``, ``PromptEncoder`` and ``MaskDecoder`` at the ``sam`` family's ``toy`` size
(:data:`vpltool.models.backbones.sam.SAM_ARCHS`), trained from scratch on a CPU and saved as one safetensors file with a
whole Sam checkpoint's tensor names, so that the existing path loads it unchanged: ``--sam-model toy --sam-weights
vpltool/assets/toy-sam/model.safetensors``.

The data: every object instance of the world's train scenes (a connected component of one class in the exact
masks; a class appears at most once per scene, so a component is one object or a part of one that another object
cuts off), as a class-agnostic mask; the class labels, captions and the val split are never read. The ignore band
(255) around each object's outline counts in no loss.

SAM's recipe (Kirillov et al., ICCV 2023, appendix A "Training algorithm"), at toy size:

* **Simulated interactive prompts.** Per mask, with equal probability a foreground point sampled uniformly in the
  mask, or the mask's box with noise on each corner (std 10 % of the box's side, at most 20 px of SAM's 1024).
  Then ``point_rounds`` rounds each add one point sampled uniformly from the error region of the previous
  prediction (foreground where the prediction missed the mask, background where it spilled over), and
  ``mask_rounds`` rounds add none; every round after the first also gets the previous round's unthresholded
  low-resolution logits as the mask prompt (of its three masks, the one with the highest predicted IoU). SAM runs
  11 rounds (8 point, 2 mask-only: one among the points, one last); the toy fewer (its config).
* **Ambiguity-aware output.** A single prompt (the first round) gets the decoder's three masks and only the lowest
  loss of the three backpropagates; more prompts get the fourth, single-mask token (``multimask_output=False``,
  what Trident's refinement asks for).
* **Losses.** The mask loss is focal + dice 20:1 (sigmoid focal loss, alpha 0.25, gamma 2), on the logits resized to
  the image as ``postprocess_masks`` resizes them; the IoU head regresses (MSE, weight 1) the IoU of each of its
  masks with the ground truth. The image encoder, the prompt encoder and the mask decoder all train.
* **Optimiser.** AdamW (beta 0.9, 0.999), SAM's lr 8e-4 and weight decay 0.1, linear warmup, the lr divided by 10
  twice late (at SAM's 60k and 86.7k of 90k). SAM's MAE pre-training of the encoder, its drop path and layer-wise
  lr decay are not reproduced (the toy starts from scratch, as the toy CLIP and the toy DINO do).

Everything is seeded, runs on the CPU with a fixed thread count and reads the images in a fixed order, so the same
settings rebuild the same weights bit for bit (`make toy-sam`; checked at test size by tests/test_toy_sam.py, the
shipped weights' 30-minute rebuild not repeated).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError
from .config import ToySamConfig
from .toy_weights import write_toy

WEIGHTS_FILE = "model.safetensors"
IGNORE = 255  # the world's ignore band around each outline
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # sigmoid focal loss as SAM's (DETR's / RetinaNet's) defaults


# ---------------------------------------------------------------------------------------------- model
class ToySam(torch.nn.Module):
    """segment-anything's three modules under a whole Sam checkpoint's names (``image_encoder.``,
    ``prompt_encoder.``, ``mask_decoder.``), built exactly as :mod:`vpltool.models.backbones.sam` builds them."""

    def __init__(self, model: str):
        from ..models.backbones.sam import SAM_ARCHS, _build, _build_prompt, import_sam

        import_sam()
        if model not in SAM_ARCHS:
            raise VplError(f"--model {model!r} is not a SAM architecture; choose one of {', '.join(SAM_ARCHS)}")
        super().__init__()
        self.arch = SAM_ARCHS[model]
        self.image_encoder = _build(self.arch)
        self.prompt_encoder, self.mask_decoder = _build_prompt(self.arch)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class WorldMasks:
    """The train split as SAM sees it.

    Attributes:
        pixels: ``[N, 3, S, S]`` float32, each image as :meth:`vpltool.models.backbones.sam.SamEncoder.prepare` makes
        it. masks: per image ``[K, H, W]`` bool, its instances (K may be 0). valid: ``[N, H, W]`` bool, not the
            ignore band. scale: SAM's input pixels per image pixel (``S / max(H, W)``). size: the images' ``(H,
            W)``; input_size: theirs in SAM's input, before its padding.
    """

    pixels: torch.Tensor
    masks: list[torch.Tensor]
    valid: torch.Tensor
    scale: float
    size: tuple[int, int]
    input_size: tuple[int, int]


def instances(gt: np.ndarray, min_area: int, background: bool = False) -> np.ndarray:
    """``[H, W]`` uint8 class map -> ``[K, H, W]`` bool: each 8-connected component of each class (not 0 and not
    255) with at least ``min_area`` pixels, classes in increasing order; with ``background`` also the background's
    (class 0's) components first: the scene's "stuff" region, as SAM's data holds sky, grass and walls beside
    objects (its class is never read: a mask is class-agnostic)."""
    from scipy import ndimage

    out = []
    for c in np.unique(gt):
        if c == IGNORE or (c == 0 and not background):
            continue
        comps, n = ndimage.label(gt == c, structure=np.ones((3, 3), bool))
        for k in range(1, n + 1):
            region = comps == k
            if region.sum() >= min_area:
                out.append(region)
    return np.stack(out) if out else np.zeros((0, *gt.shape), bool)


def world_masks(data_dir: str | Path, model: str, min_area: int, background: bool = False) -> WorldMasks:
    """The train split of a `make-world` folder: its images in SAM's input and its instance masks (with
    ``background``, the background region's too: :func:`instances`; the class labels, the captions and the val
    split unread)."""
    from ..data import open_dataset
    from ..io import load_image, read_mask
    from ..models.backbones.sam import SAM_ARCHS, sam_input

    if not (Path(data_dir) / "images").is_dir():  # before open_dataset, whose line would name a --split it lacks
        raise VplError(f"{data_dir}: no images/ folder; pass a folder written by make-world")
    items = [it for it in open_dataset(Path(data_dir), "train").items if it.gt is not None]
    if not items:
        raise VplError(f"{data_dir}: no train images with masks; pass a folder written by make-world")
    images = [load_image(it.image) for it in items]
    if len({im.shape for im in images}) != 1:
        raise VplError(f"{data_dir}: train images of different sizes; the toy SAM needs one size (make-world)")
    side = SAM_ARCHS[model].img_size
    pixels = torch.cat([sam_input(im, side)[0] for im in images])
    gts = [read_mask(it.gt) for it in items]
    h, w = images[0].shape[:2]
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide.get_preprocess_shape(h, w, side)
    return WorldMasks(pixels, [torch.from_numpy(instances(g, min_area, background)) for g in gts],
                      torch.from_numpy(np.stack([g != IGNORE for g in gts])), side / max(h, w), (h, w), resized)


def world_of(data_dir: str | Path) -> dict[str, Any] | None:
    """Which world trained the model, for its record: the `make-world` folder's seed and scene counts and the
    digest of its ``_stage.json`` (None for a folder without one), so that a reader can tell it from the world it is
    used on (a toy SAM for pseudo masks must never have seen that world's scenes)."""
    from ..io import read_record, sha256_file, stage_record_path

    path = stage_record_path(Path(data_dir))
    if not path.is_file():
        return None
    params = read_record(path).get("params", {})
    return {"seed": params.get("seed"), "train": params.get("n_train"), "val": params.get("n_val"),
            "record_sha256": sha256_file(path)}


# ---------------------------------------------------------------------------------------------- prompts
def sample_points(region: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One pixel drawn uniformly from each ``[K, H, W]`` bool region -> ``[K, 2]`` float32 ``(x, y)`` in image
    pixels; an empty region gives ``(-1, -1)``."""
    out = torch.full((len(region), 2), -1.0)
    for k, r in enumerate(region):
        ys, xs = torch.nonzero(r, as_tuple=True)
        if len(ys):
            i = int(torch.randint(len(ys), (1,), generator=gen))
            out[k] = torch.tensor([float(xs[i]), float(ys[i])])
    return out


def noisy_boxes(masks: torch.Tensor, gen: torch.Generator, noise: float, noise_max: float,
                size: tuple[int, int]) -> torch.Tensor:
    """Each ``[K, H, W]`` mask's box ``[K, 4]`` ``x0, y0, x1, y1`` (image pixels, inclusive as segment-anything's
    ``batched_mask_to_box``), each corner moved by normal noise of std ``noise`` x the box's side, at most
    ``noise_max`` x the image's long side, clipped to the image."""
    boxes = torch.zeros(len(masks), 4)
    for k, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes[k] = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    cap = noise_max * max(size)
    jitter = (torch.randn(boxes.shape, generator=gen) * noise * side).clamp(-cap, cap)
    h, w = size
    upper = torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=torch.float32)
    return torch.minimum(torch.maximum(boxes + jitter, torch.zeros(4)), upper)


def round_kinds(cfg: ToySamConfig, gen: torch.Generator) -> list[str]:
    """The rounds after the first: ``point`` or ``mask``; with mask-only rounds, one always last and the others
    at random places among the point rounds (SAM's 8 + 2)."""
    kinds = ["point"] * cfg.point_rounds
    for _ in range(max(cfg.mask_rounds - 1, 0)):
        kinds.insert(int(torch.randint(len(kinds) + 1, (1,), generator=gen)), "mask")
    return kinds + (["mask"] if cfg.mask_rounds else [])


# ---------------------------------------------------------------------------------------------- losses
def focal_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, cfg: ToySamConfig
               ) -> torch.Tensor:
    """SAM's mask loss per mask: ``focal_weight`` x sigmoid focal loss (mean over valid pixels) + ``dice_weight``
    x dice loss, over ``valid`` pixels.

    Args:
        logits: ``[K, M, H, W]`` float32; target ``[K, 1, H, W]`` bool; valid ``[1, 1, H, W]`` bool.

    Returns:
        ``[K, M]`` float32.
    """
    t = target.float().expand_as(logits)
    v = valid.float().expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ce * (1 - p_t) ** FOCAL_GAMMA * (FOCAL_ALPHA * t + (1 - FOCAL_ALPHA) * (1 - t))
    focal = (focal * v).sum((-2, -1)) / v.sum((-2, -1)).clamp_min(1)
    dice = 1 - (2 * (p * t * v).sum((-2, -1)) + 1) / ((p * v).sum((-2, -1)) + (t * v).sum((-2, -1)) + 1)
    return cfg.focal_weight * focal + cfg.dice_weight * dice


def mask_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """IoU over ``valid`` pixels of ``logits > 0`` with ``target``: ``[K, M, H, W]`` -> ``[K, M]`` in [0, 1]."""
    pred = (logits > 0) & valid
    t = target & valid
    inter = (pred & t).sum((-2, -1)).float()
    union = (pred | t).sum((-2, -1)).float()
    return inter / union.clamp_min(1)


# ---------------------------------------------------------------------------------------------- one image
def _decode(sam: ToySam, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
            mask_prompt: torch.Tensor | None, first_is_box: torch.Tensor, multimask: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt encoder and mask decoder on one image's K prompts.

    ``points`` ``[K, P, 2]`` (SAM's input frame) and ``labels`` ``[K, P]``: slot 0 is a point-first mask's first
    point and unused by a box-first mask, which passes its box ``boxes`` ``[K, 4]`` instead; the slots after are
    the point rounds'. Either kind then carries P + 1 sparse tokens (a point-first mask's P points and
    segment-anything's padding point, a box-first mask's 2 corners and P - 1 points), so the two groups are encoded
    apart (as SamPredictor encodes each) and decoded together. Returns low-resolution logits ``[K, M, 4g, 4g]``
    and IoU predictions ``[K, M]`` (M = 3 with ``multimask``, else 1).
    """
    k = len(first_is_box)
    sparse, dense = [None] * k, [None] * k
    for box_first in (False, True):
        group = (first_is_box == box_first).nonzero()[:, 0]
        if not len(group):
            continue
        masks = None if mask_prompt is None else mask_prompt[group]
        if box_first:
            pts = (points[group, 1:], labels[group, 1:]) if points.shape[1] > 1 else None
            s, d = sam.prompt_encoder(points=pts, boxes=boxes[group], masks=masks)
        else:
            s, d = sam.prompt_encoder(points=(points[group], labels[group]), boxes=None, masks=masks)
        for j, i in enumerate(group.tolist()):
            sparse[i], dense[i] = s[j], d[j]
    return sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=torch.stack(sparse), dense_prompt_embeddings=torch.stack(dense),
                            multimask_output=multimask)


def _upsampled(low: torch.Tensor, data: WorldMasks, img_size: int) -> torch.Tensor:
    """``postprocess_masks``: low-resolution logits to SAM's input side, cut to the image's part, to the image."""
    up = F.interpolate(low, (img_size, img_size), mode="bilinear", align_corners=False)
    up = up[..., : data.input_size[0], : data.input_size[1]]
    return F.interpolate(up, data.size, mode="bilinear", align_corners=False)


def _correction(prev: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per mask drawn uniformly from the error region of ``prev`` (``[K, H, W]`` bool prediction):
    foreground (1) where the mask was missed, background (0) where the prediction spilled over; a mask predicted
    without error gets a foreground point inside it. Returns ``[K, 2]`` ``(x, y)`` image pixels and ``[K]``."""
    new = sample_points((prev ^ masks) & valid, gen)
    exact = new[:, 0] < 0
    if exact.any():
        new[exact] = sample_points(masks[exact], gen)
    xi, yi = new[:, 0].long(), new[:, 1].long()
    return new, masks[torch.arange(len(masks)), yi, xi].float()


def image_loss(sam: ToySam, embedding: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, data: WorldMasks,
               cfg: ToySamConfig, kinds: list[str], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's simulated interactive session on one image's K masks (``[K, H, W]`` bool; ``valid`` ``[H, W]``;
    ``embedding`` ``[1, C, g, g]``): the mean over its rounds of the mask loss (mean over the masks) plus the IoU
    head's MSE. Returns the loss and the first and the last rounds' mean IoU of the mask SAM would return."""
    k, s = len(masks), data.scale
    target, ok = masks[:, None], valid[None, None]
    first_is_box = torch.rand(k, generator=gen) < 0.5
    boxes = noisy_boxes(masks, gen, cfg.box_noise, cfg.box_noise_max, data.size) * s
    points = sample_points(masks, gen)[:, None] * s  # slot 0: the first point (unused by box-first masks)
    labels = torch.ones(k, 1)
    rows = torch.arange(k)
    total, stats = torch.zeros(()), {}
    mask_prompt, prev = None, None
    for r, kind in enumerate(["first", *kinds]):
        if kind == "point":
            new, lab = _correction(prev, masks, valid, gen)
            points, labels = torch.cat([points, new[:, None] * s], 1), torch.cat([labels, lab[:, None]], 1)
        low, iou_pred = _decode(sam, embedding, points, labels, boxes, mask_prompt, first_is_box, multimask=r == 0)
        logits = _upsampled(low, data, sam.arch.img_size)
        loss = focal_dice(logits, target, ok, cfg)
        iou = mask_iou(logits.detach(), target, ok)
        best = loss.detach().argmin(1)  # of the three masks, only the lowest loss backpropagates
        total = total + loss[rows, best].mean() + cfg.iou_weight * F.mse_loss(iou_pred, iou)
        chosen = iou_pred.detach().argmax(1)  # the next round sees the mask SAM itself would return
        mask_prompt = low.detach()[rows, chosen][:, None]  # unthresholded logits, as SAM passes them
        prev = logits.detach()[rows, chosen] > 0
        stats.setdefault("first_iou", float(iou[rows, chosen].mean()))
        stats["last_iou"] = float(iou[rows, chosen].mean())
    return total / (1 + len(kinds)), stats


# ---------------------------------------------------------------------------------------------- training
def _lr(cfg: ToySamConfig, step: int, total: int) -> float:
    """Linear warmup, then SAM's step decay: / 10 at 2/3 and again at 26/27 of the steps (60k, 86.7k of 90k)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.1 if step >= total * 2 / 3 else 1.0) * (0.1 if step >= total * 26 / 27 else 1.0)


def train_toy_sam(out: str | Path, data_dir: str | Path, cfg: ToySamConfig = ToySamConfig(),
                  on_start: Callable[[int], None] | None = None,
                  on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train the toy SAM on ``data_dir``'s train masks and write it to ``out`` (safetensors, float32, a whole Sam
    checkpoint's tensor names) with ``out``'s ``.json`` record beside it.

    Returns:
        the record: recipe, data, ``images``, ``masks`` (instances), ``steps``, ``final_loss`` (mean of the last
        10 steps), ``first_iou`` / ``last_iou`` (the train masks' mean IoU of the first prompt's and the last
        round's predicted-best mask over the last epoch), ``seconds``, ``path``.
    """
    out = Path(out)
    if out.exists() and not out.is_file():
        raise VplError(f"{out}: exists and is not a file; choose a weights file path")
    data = world_masks(data_dir, cfg.model, cfg.min_area, cfg.background_masks)
    per_epoch = -(-len(data.masks) // cfg.batch_size)
    if on_start is not None:
        on_start(cfg.epochs * per_epoch)
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _train(out, data, cfg, on_step, str(Path(data_dir)))
    finally:
        torch.set_num_threads(previous)


def _train(out: Path, data: WorldMasks, cfg: ToySamConfig, on_step, source: str) -> dict[str, Any]:
    sam = ToySam(cfg.model).train()
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr,
                            betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.masks)
    per_epoch = -(-n // cfg.batch_size)
    total = cfg.epochs * per_epoch
    losses, first, last, step = [], [], [], 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for b in range(per_epoch):
            batch = [i for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size] if len(data.masks[i])]
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step, total)
            loss = torch.zeros(())
            if batch:
                embeddings = sam.image_encoder(data.pixels[batch])
                kinds = round_kinds(cfg, gen)
                for j, i in enumerate(batch):
                    li, stats = image_loss(sam, embeddings[j:j + 1], data.masks[i], data.valid[i], data, cfg, kinds,
                                           gen)
                    loss = loss + li / len(batch)
                    if epoch == cfg.epochs - 1:
                        first.append(stats["first_iou"])
                        last.append(stats["last_iou"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            losses.append(loss.item())
            step += 1
            if on_step is not None:
                on_step(step, losses[-1])
    seconds = time.perf_counter() - start
    record = {"model": cfg.model, "recipe": asdict(cfg), "data": source, "world": world_of(source),
              "split": "train", "images": n,
              "masks": int(sum(len(m) for m in data.masks)), "steps": total,
              "final_loss": round(float(np.mean(losses[-10:])), 4),
              "first_iou": round(float(np.mean(first)), 4) if first else None,
              "last_iou": round(float(np.mean(last)), 4) if last else None, "seconds": round(seconds, 1)}
    write_toy(out, sam, record, KIND, RECORD_KIND)
    return {**record, "path": str(out)}


KIND, RECORD_KIND = "toy-sam", "toy-sam-record"  # the file kinds of its weights and their record (io.marks)


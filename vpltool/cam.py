"""`vpltool cam`: CLIP-ES softmax-GradCAM + class-aware attention affinity (CAA), from any prototypes file.

Per image (research notes §1.5-1.6; ``h x w`` patch grid, K present classes, M background rows):

1. Re-run only the last block from the cached ``last_block_input`` with autograd; image embedding = mean of the
   projected patch tokens; ``p = softmax(cos(img, [W_present; W_background]) / temperature)`` over K + M rows.
2. GradCAM at the last block's ``ln_1`` output A ``[hw, width]``: ``w_k = mean_patches dp_k/dA``,
   ``cam_k = minmax(ReLU(A @ w_k))``. **All K classes in one batched backward** (``is_grads_batched``), in fp32
   (fp16 gradients underflow, research §8).
3. CAA: ``Att`` = mean of the head-averaged attention of the last ``attention_blocks`` blocks without CLS (the
   cached mean of the earlier ones + the last block's own map); three column/row normalisations, symmetrise,
   square: ``T``. Box mask ``B_k`` from ``cam_k`` (all contours of ``cam > thr * max``);
   ``refined_k = minmax((T * B_k[None, :]) @ cam_k)``, bilinearly resized to the image.
4. Optional ``caa+sgc``: the refined map is averaged inside SLIC superpixels of the image (see docs/pipeline.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import io
from .backbone import ClipBackbone, ModelSpec, load_backbone
from .config import CamConfig, ExtractConfig, RuntimeConfig, to_params
from .device import resolve_device
from .errors import ContractError, VplError

STAGE = "cam"


# --------------------------------------------------------------------------------------------- kernels
def gradcam(bb: ClipBackbone, last_block_input: torch.Tensor, grid: tuple[int, int], rows: torch.Tensor,
            n_classes: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax-GradCAM for the first ``n_classes`` of ``rows`` in one batched backward.

    Args:
        last_block_input: ``[1 + hw, width]`` tokens entering the last block.
        rows: ``[K + M, D]`` unit prototypes: the K present classes first, then every background row.
        n_classes: K.

    Returns:
        cams ``[K, h, w]`` float32 in [0, 1] (min-max per map, twice as CLIP-ES), the last block's head-mean attention
        ``[1 + hw, 1 + hw]``, and the probabilities ``[K + M]``.
    """
    x = last_block_input.to(bb.device, torch.float32)[None].requires_grad_(True)
    with torch.enable_grad():
        out, attn, act = bb.block(bb.n_blocks - 1, x, grid, need_weights=True, keep_ln1=True)
        img = F.normalize(bb.dense(out).mean(1), dim=-1)  # [1, D]: CLIP-ES's patch-mean image embedding
        probs = (img @ rows.to(img).T / temperature).softmax(-1)[0]  # [K + M]
        if n_classes == 0:
            return torch.zeros(0, *grid), attn[0].detach(), probs.detach()
        grads = torch.autograd.grad(probs[:n_classes], act, grad_outputs=torch.eye(n_classes, device=x.device),
                                    is_grads_batched=True)[0]  # [K, 1, 1+hw, width]
    act, grads = act[0, 1:].detach(), grads[:, 0, 1:]  # patch tokens only
    weights = grads.mean(1)  # [K, width]: GradCAM channel weights
    cams = torch.relu(weights @ act.T).view(n_classes, *grid)  # [K, h, w]
    return gradcam_scale(cams), attn[0].detach(), probs.detach()


def minmax(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-map ``(m - min) / (max - min + eps)`` over the last two dims (CLIP-ES ``scale_cam_image``)."""
    flat = maps.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    flat = flat - lo
    return (flat / (flat.max(-1, keepdim=True).values + eps)).view_as(maps)


def gradcam_scale(maps: torch.Tensor) -> torch.Tensor:
    """CLIP-ES's GradCAM scaling: :func:`minmax` twice.

    pytorch_grad_cam (``base_cam.py``) scales once per target layer and again after the mean over layers. With one
    layer the second pass only matters when the raw maximum is tiny: at a raw range of 1.4e-6 the first pass's
    1e-7 leaves the maximum at 0.93, the second brings it to 1.
    """
    return minmax(minmax(maps))


def affinity(attention: torch.Tensor) -> torch.Tensor:
    """CAA transition matrix from a mean attention map ``[hw, hw]`` (CLS removed): symmetric, non-negative.

    Column then row normalisation three times (Sinkhorn-style), ``(T + T^T) / 2``, then one squaring.
    """
    t = attention.double()
    for _ in range(3):
        t = t / t.sum(0, keepdim=True).clamp_min(1e-12)
        t = t / t.sum(1, keepdim=True).clamp_min(1e-12)
    t = (t + t.T) / 2
    return (t @ t).float()


def box_coords(cam: np.ndarray, threshold: float, parity: bool = False) -> list[tuple[int, int, int, int]]:
    """Bounding boxes ``(x0, y0, x1, y1)`` (exclusive ends, patch grid) of all contours of
    ``uint8(cam*255) > int(threshold * max)`` (CLIP-ES ``utils.py:scoremap2bbox`` with ``multi_contour_eval``).

    Args:
        cam: ``[h, w]`` float in [0, 1].
        parity: CLIP-ES clips the exclusive end to ``W-1``/``H-1``, so a box touching the right/bottom border loses
            its last column/row; the default keeps it.

    Returns:
        One box per contour; none when nothing exceeds the threshold.
    """
    h, w = cam.shape
    u8 = (cam * 255).astype(np.uint8)
    binary = (u8 > int(threshold * u8.max())).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        x1, y1 = (min(x + bw, w - 1), min(y + bh, h - 1)) if parity else (x + bw, y + bh)
        boxes.append((x, y, x1, y1))
    return boxes


def box_mask(cam: np.ndarray, threshold: float, parity: bool = False) -> np.ndarray:
    """Union of :func:`box_coords`: ``[h, w]`` float32 in {0, 1}; empty when nothing exceeds the threshold."""
    mask = np.zeros(cam.shape, np.float32)
    for x0, y0, x1, y1 in box_coords(cam, threshold, parity):
        mask[y0:y1, x0:x1] = 1
    return mask


@dataclass
class Refined:
    """What CAA made of ``[K, h, w]`` GradCAM maps."""

    maps: torch.Tensor  # [K, h, w] float32 in [0, 1]: min-maxed, what is stored
    before_minmax: torch.Tensor  # [K, h, w] float32 >= 0: (T * box[None, :]) @ cam
    boxes: list[list[tuple[int, int, int, int]]]  # per class, (x0, y0, x1, y1) on the patch grid, exclusive ends


def refine(cams: torch.Tensor, trans: torch.Tensor, threshold: float, parity: bool = False) -> Refined:
    """CAA: ``minmax((T * box_k[None, :]) @ cam_k)`` for each of ``cams`` ``[K, h, w]``."""
    before, boxes = [], []
    for cam in cams:
        found = box_coords(cam.cpu().numpy(), threshold, parity)
        mask = torch.zeros(cam.shape)
        for x0, y0, x1, y1 in found:
            mask[y0:y1, x0:x1] = 1
        before.append(((trans * mask.flatten().to(trans)[None, :]) @ cam.flatten().to(trans)).view_as(cam))
        boxes.append(found)
    if not before:
        return Refined(cams, cams, [])
    before = torch.stack(before)
    return Refined(minmax(before), before, boxes)


def superpixel_smooth(cams: torch.Tensor, image: np.ndarray, n_segments: int, compactness: float) -> torch.Tensor:
    """Average each map inside SLIC superpixels of the image, so boundaries follow image edges.

    Args:
        cams: ``[K, H, W]`` at image resolution. image: ``[H, W, 3]`` uint8.
    """
    from skimage.segmentation import slic

    segments = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
    seg = torch.from_numpy(segments.astype(np.int64)).flatten()
    n = int(seg.max()) + 1
    flat = cams.flatten(1)
    sums = torch.zeros(len(cams), n).index_add_(1, seg, flat)
    counts = torch.bincount(seg, minlength=n).clamp_min(1)
    return (sums / counts)[:, seg].view_as(cams)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[K, h, w]`` -> ``[K, H, W]`` bilinear (half-pixel centres, like cv2.resize), clamped to [0, 1]."""
    if len(maps) == 0:
        return torch.zeros(0, *size)
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)


@dataclass
class CamResult:
    cams: torch.Tensor  # [K, H0, W0] float32 in [0, 1]
    labels: tuple[int, ...]
    raw: torch.Tensor  # [K, h, w] unrefined GradCAM in [0, 1]
    probs: torch.Tensor  # [K + M] softmax over the image's rows
    refined: Refined | None = None  # CAA's intermediate maps and boxes (None with --refine none)


def cams_for_image(bb: ClipBackbone, feats: io.Features, protos: io.Prototypes, cfg: CamConfig,
                   temperature: float, image: np.ndarray | None = None) -> CamResult:
    """Everything of steps 1-4 for one image whose features (with tokens) are cached."""
    labels = tuple(int(c) for c in feats.labels)
    rows = protos.image_rows(labels)
    grid = feats.grid
    raw, attn_last, probs = gradcam(bb, feats.last_block_input, grid, rows, len(labels), temperature)
    cams, refined = raw, None
    if cfg.refine != "none" and len(labels):
        n_prev = int(feats.file.meta("attention_blocks", 0))
        wanted = min(cfg.attention_blocks, bb.n_blocks)
        if wanted == 1:  # the last block's own map alone: no cache needed
            n_prev = 0
        elif wanted != n_prev + 1:
            raise ContractError(f"{feats.file.path}: extract averaged {n_prev + 1} attention blocks, cam asks for "
                                f"{wanted}; re-run extract with --attention-blocks {wanted} (or use 1: the last "
                                "block alone)")
        att = attn_last[1:, 1:] if n_prev == 0 else (feats.attention.to(attn_last) * n_prev + attn_last[1:, 1:]) / (
            n_prev + 1)
        refined = refine(raw, affinity(att), cfg.box_threshold, parity=cfg.parity == "clip-es")
        cams = refined.maps
    full = upsample(cams.cpu(), feats.image_size)
    if cfg.refine == "caa+sgc" and len(labels):
        if image is None:
            raise VplError("--refine caa+sgc needs the images; the dataset recorded by extract must be readable")
        full = minmax(superpixel_smooth(full, image, cfg.sgc_segments, cfg.sgc_compactness))
    return CamResult(full, labels, raw.cpu(), probs.cpu(), refined)


# --------------------------------------------------------------------------------------------- the stage
CamSummary = io.StageSummary



def prototypes_identity(protos: io.Prototypes) -> dict:
    return {"path": str(protos.path), "sha256": io.sha256_file(protos.path), "source": protos.source}


def run_cam(
    features: str | Path,
    prototypes: str | Path,
    out: str | Path,
    cfg: CamConfig = CamConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    overlays: str | Path | None = None,
    debug: str | Path | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
) -> CamSummary:
    """CAMs for every image of an `extract` folder, with the classes of its image-level labels.

    ``overlays``: a folder for heat-map PNGs. ``debug``: a folder for each image's intermediate maps (kind
    ``cam-debug``, docs/file-formats.md). ``backbone`` reuses an already loaded model; it must be the one recorded
    by `extract`.
    """
    from .data import open_dataset

    features, out = Path(features), Path(out)
    record = io.read_stage_record(features, "extract")
    classes = record["classes"]
    protos = io.read_prototypes(prototypes, classes=classes)
    if cfg.refine not in ("caa", "caa+sgc", "none"):
        raise VplError(f"--refine {cfg.refine!r}: choose caa, caa+sgc or none")
    if cfg.parity == "clip-es" and record["params"].get("parity", "none") != "clip-es":
        raise VplError(f"{features}: extracted without --parity clip-es, so `cam --parity clip-es` cannot match "
                       "CLIP-ES; re-run extract with --parity clip-es")
    temperature = cfg.temperature or protos.temperature
    params = {**to_params(cfg), "temperature": temperature, "prototypes": prototypes_identity(protos)}
    ident = record["inputs"]["dataset"]
    ids = sorted(p.stem for p in features.glob("*.safetensors"))
    has_tokens = record["params"].get("store_tokens", True)
    need_images = cfg.refine == "caa+sgc" or overlays is not None or not has_tokens
    start = time.perf_counter()
    with io.output_lock(out):  # before prepare_stage_dir: a refused run must not touch the folder
        io.prepare_stage_dir(out, STAGE, params, runtime.overwrite)
        todo = [i for i in ids if not io.item_done(io.cam_path(out, i), runtime.overwrite)]
        if on_start:
            on_start(len(todo))
        if todo:
            device = resolve_device(runtime.device)
            spec = ModelSpec.from_identity(record["params"]["model"])
            bb = backbone or load_backbone(spec, device)
            if bb.embed_dim != protos.dim:
                raise ContractError(f"{prototypes}: prototypes are {protos.dim}-d but the model's features are "
                                    f"{bb.embed_dim}-d; make prototypes with the same CLIP model")
            items = open_dataset(ident["root"], ident.get("split")).by_id() if need_images else {}
            extract_cfg = ExtractConfig(**{k: v for k, v in record["params"].items() if k != "model"})
            for item_id in todo:
                _cam_one(bb, features, out, item_id, items, protos, cfg, temperature, classes, params,
                         extract_cfg, overlays, debug)
                if on_item:
                    on_item(1)
        io.write_stage_record(out, STAGE, params=params, count=len(ids),
                              inputs={"features": io.sha256_file(io.stage_record_path(features)), "dataset": ident})
    return CamSummary(done=len(todo), skipped=len(ids) - len(todo), seconds=time.perf_counter() - start)


def _cam_one(bb, features, out, item_id, items, protos, cfg, temperature, classes, params, extract_cfg, overlays,
             debug):
    from .data import load_image

    feats = io.read_features(io.feature_path(features, item_id), classes=classes)
    image = load_image(items[item_id].image) if items else None
    if feats.last_block_input is None:  # extracted with --no-tokens: run the frozen blocks here
        feats = _recompute_tokens(bb, feats, items, item_id, extract_cfg)
    if feats.attention is not None and feats.attention.shape[0] != feats.grid[0] * feats.grid[1]:
        raise ContractError(f"{feats.file.path}: attention does not match the patch grid; re-run extract")
    result = cams_for_image(bb, feats, protos, cfg, temperature, image)
    io.write_cam(io.cam_path(out, item_id), result.cams, result.labels, classes=classes, params=params, id=item_id,
                 image_size=list(feats.image_size))
    if overlays is not None and image is not None:
        write_overlay(Path(overlays) / f"{item_id}.png", image, result.cams, result.labels, classes)
    if debug is not None:
        io.write_cam_debug(io.cam_path(debug, item_id), result.raw, result.probs, result.labels,
                           None if result.refined is None else result.refined.before_minmax,
                           None if result.refined is None else result.refined.boxes,
                           classes=classes, params=params, id=item_id, row_names=_row_names(protos, result.labels))


def _row_names(protos: io.Prototypes, labels) -> list[str]:
    """Display names of an image's softmax rows, in :meth:`io.Prototypes.image_rows` order."""
    rows = [int(protos.class_rows()[c - 1]) for c in labels] + protos.background_rows().tolist()
    return [protos.row_names[r] for r in rows]


def _recompute_tokens(bb, feats, items, item_id, extract_cfg):
    from .data import load_image
    from .extract import cache_dtype, encode_batch

    if item_id not in items:
        raise VplError(f"{feats.file.path}: no cached tokens and image '{item_id}' not found; re-run extract "
                       "with --tokens")
    pixels = bb.preprocess(load_image(items[item_id].image), feats.input_size)[None]
    cfg = ExtractConfig(**{**to_params(extract_cfg), "store_tokens": True})
    enc = encode_batch(bb, pixels, cfg, torch.float32)
    params = to_params(cfg)
    # rounded like the cache, so a cam run with and without cached tokens gives the same maps
    for name in ("last_block_input", "attention"):
        setattr(feats, name, enc[name][0].cpu().to(cache_dtype(params, name)).float())
    return feats


def write_overlay(path: Path, image: np.ndarray, cams: torch.Tensor, labels, classes) -> None:
    """One PNG: the image, then a JET heat map over the image per class, side by side."""
    from PIL import Image, ImageDraw

    panels = [image]
    for cam in cams:
        heat = cv2.applyColorMap((cam.numpy() * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        panels.append((0.5 * image + 0.5 * heat).astype(np.uint8))
    sheet = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(sheet)
    for i, c in enumerate(labels):
        draw.text(((i + 1) * image.shape[1] + 3, 2), classes[c], fill=(255, 255, 255))
    with io.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")

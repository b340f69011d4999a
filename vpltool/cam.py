"""`vpltool cam`: CLIP-ES softmax-GradCAM + class-aware attention affinity (CAA), from any prototypes file.

Per image (CLIP-ES ``generate_cams_voc12.py:perform``; ``h x w`` patch grid, K present classes, M background rows):

1. Re-run only the last block from the cached ``last_block_input`` with autograd; image embedding = mean of the
   projected patch tokens; ``p = softmax(cos(img, [W_present; W_background]) / temperature)`` over K + M rows.
2. GradCAM (:meth:`vpltool.backbone.ClipBackbone.gradcam`) at the last block's ``ln_1`` output A ``[hw, width]``
   (``--layer input``, CLIP-ES and VPL; ``--layer output``: the block's output tokens): ``w_k = mean_patches
   dp_k/dA``, ``cam_k = ReLU(A @ w_k)``, min-max twice as pytorch_grad_cam. **All K classes in one batched
   backward**, in fp32 (fp16 gradients underflow).
3. CAA: ``Att`` = mean of the head-averaged attention of the last ``attention_blocks`` blocks without CLS (the
   cached mean of the earlier ones + the last block's own map); three column/row normalisations, symmetrise,
   square: ``T``. Box mask ``B_k`` from ``cam_k`` (all contours of ``cam > thr * max``, ``utils.py:
   scoremap2bbox``); ``refined_k = minmax((T * B_k[None, :]) @ cam_k)``.
4. The maps are stored on the patch grid (float32, ~100x smaller than at image size); readers resize them to the
   image (:func:`vpltool.io.read_cam`, bilinear as CLIP-ES's ``cv2.resize``). Optional ``caa+sgc``: the resized
   map is averaged inside SLIC superpixels of the image and stored at image size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from . import io
from .backbone import GRADCAM_LAYERS, ClipBackbone, ModelSpec, load_backbone
from .config import CamConfig, ExtractConfig, RuntimeConfig, check_tokens, from_params, to_params
from .data import open_recorded
from .device import resolve_device
from .errors import ContractError, VplError
from .kernels import minmax, upsample

STAGE = "cam"


# --------------------------------------------------------------------------------------------- CAA
def affinity(attention: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """CAA transition matrix from a mean attention map ``[hw, hw]`` (CLS removed): symmetric, non-negative.

    Column then row normalisation three times (Sinkhorn-style), ``(T + T^T) / 2``, then one squaring. By default in
    float64 with a floor on the sums; ``exact`` repeats CLIP-ES's float32 arithmetic (``--parity clip-es``).
    """
    t = attention.float() if exact else attention.double()
    floor = 0.0 if exact else 1e-12
    for _ in range(3):
        t = t / t.sum(0, keepdim=True).clamp_min(floor)
        t = t / t.sum(1, keepdim=True).clamp_min(floor)
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


@dataclass
class CamResult:
    maps: torch.Tensor  # [K, h, w] float32 in [0, 1] on the patch grid ([K, H0, W0] with caa+sgc): what is stored
    labels: tuple[int, ...]
    raw: torch.Tensor  # [K, h, w] unrefined GradCAM in [0, 1]
    probs: torch.Tensor  # [K + M] softmax over the image's rows
    refined: Refined | None = None  # CAA's intermediate maps and boxes (None with --refine none)


def caa_attention(feats: io.Features, attn_last: torch.Tensor, wanted: int, n_blocks: int) -> torch.Tensor:
    """``[hw, hw]``: the mean over the last ``wanted`` blocks of the head-mean attention without CLS (cached mean
    of the earlier blocks + the last block's own ``attn_last`` ``[1+hw, 1+hw]``)."""
    n_prev = int(feats.file.meta("attention_blocks", 0))
    wanted = min(wanted, n_blocks)
    if wanted == 1:  # the last block's own map alone: no cache needed
        return attn_last[1:, 1:]
    if wanted != n_prev + 1:
        raise ContractError(f"{feats.file.path}: extract averaged {n_prev + 1} attention blocks, cam asks for "
                            f"{wanted}; re-run extract with --attention-blocks {wanted} (or use 1: the last block "
                            "alone)")
    return (feats.attention.to(attn_last) * n_prev + attn_last[1:, 1:]) / (n_prev + 1)


def cams_for_image(bb: ClipBackbone, feats: io.Features, protos: io.Prototypes, cfg: CamConfig,
                   temperature: float, image: np.ndarray | None = None) -> CamResult:
    """Everything of steps 1-4 for one image whose tokens are known (``feats.last_block_input``)."""
    labels = tuple(int(c) for c in feats.labels)
    cam = bb.gradcam(feats.last_block_input, feats.grid, protos.image_rows(labels), len(labels), temperature,
                     layer=cfg.layer)
    maps, refined = cam.maps, None
    if cfg.refine != "none" and len(labels):
        parity = cfg.parity == "clip-es"
        trans = affinity(caa_attention(feats, cam.attention, cfg.attention_blocks, bb.n_blocks), exact=parity)
        refined = refine(cam.maps, trans, cfg.box_threshold, parity=parity)
        maps = refined.maps
    maps = maps.cpu()
    if cfg.refine == "caa+sgc" and len(labels):
        if image is None:
            raise VplError("--refine caa+sgc needs the images; the dataset recorded by extract must be readable")
        maps = minmax(superpixel_smooth(upsample(maps, feats.image_size), image, cfg.sgc_segments,
                                        cfg.sgc_compactness))
    return CamResult(maps, labels, cam.maps.cpu(), cam.probs.cpu(), refined)


# --------------------------------------------------------------------------------------------- the stage
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
) -> io.StageSummary:
    """CAMs for every image of an `extract` folder, with the classes of its image-level labels.

    ``overlays``: a folder for heat-map PNGs. ``debug``: a folder for each image's intermediate maps (kind
    ``cam-debug``, docs/file-formats.md). ``backbone`` reuses an already loaded model; it must be the one recorded
    by `extract`.
    """
    features, out = Path(features), Path(out)
    for extra in (overlays, debug):  # the main output is checked by StageFolder, these here: before the model
        if extra is not None:
            io.check_folder_target(extra)
    record = io.read_stage_record(features, "extract")
    classes = record["classes"]
    protos = io.read_prototypes(prototypes, classes=classes, model=record["params"]["model"])
    extract_cfg = from_params(ExtractConfig, record["params"])
    if cfg.parity == "clip-es" and extract_cfg.parity != "clip-es":
        raise VplError(f"{features}: extracted without --parity clip-es, so `cam --parity clip-es` cannot match "
                       "CLIP-ES; re-run extract with --parity clip-es")
    if cfg.layer not in GRADCAM_LAYERS:
        raise VplError(f"--layer {cfg.layer!r}: choose {' or '.join(GRADCAM_LAYERS)}")
    temperature = cfg.temperature or protos.temperature
    params = {**to_params(cfg), "temperature": temperature, "prototypes": io.file_identity(protos.path,
                                                                                          source=protos.source)}
    ids = io.item_ids(features)
    need_images = cfg.refine == "caa+sgc" or overlays is not None or not extract_cfg.store_tokens
    items = open_recorded(features).by_id() if need_images else {}
    start = time.perf_counter()
    with io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite) as folder:
        todo = folder.todo(ids, io.cam_path)
        if on_start:
            on_start(len(todo))
        if todo:
            bb = backbone or load_backbone(ModelSpec.from_identity(record["params"]["model"]),
                                           resolve_device(runtime.device))
            if bb.embed_dim != protos.dim:
                raise ContractError(f"{prototypes}: prototypes are {protos.dim}-d but the model's features are "
                                    f"{bb.embed_dim}-d; make prototypes with the same CLIP model")
            for item_id in todo:
                _cam_one(bb, features, out, item_id, items, protos, cfg, temperature, classes, params,
                         extract_cfg, overlays, debug)
                if on_item:
                    on_item(1)
        folder.complete(count=len(ids), inputs={"features": io.sha256_file(io.stage_record_path(features)),
                                                "dataset": record["inputs"]["dataset"]})
    return io.StageSummary(done=len(todo), skipped=len(ids) - len(todo), seconds=time.perf_counter() - start)


def _cam_one(bb, features, out, item_id, items, protos, cfg, temperature, classes, params, extract_cfg, overlays,
             debug):
    feats = io.read_features(io.feature_path(features, item_id), classes=classes)
    check_tokens(feats.file.path, feats.image_size, feats.grid, bb.patch_size, extract_cfg.max_tokens, stage="cam")
    image = io.load_image(items[item_id].image) if items else None
    if feats.last_block_input is None:  # a light cache: run the frozen blocks here
        if image is None:
            raise VplError(f"{feats.file.path}: no cached tokens and image '{item_id}' not found; restore the "
                           "dataset or re-run extract --tokens")
        _recompute_tokens(bb, feats, image, extract_cfg)
    if feats.attention is not None and feats.attention.shape[0] != feats.grid[0] * feats.grid[1]:
        raise ContractError(f"{feats.file.path}: attention does not match the patch grid; re-run extract")
    result = cams_for_image(bb, feats, protos, cfg, temperature, image)
    io.write_cam(io.cam_path(out, item_id), result.maps, result.labels, image_size=feats.image_size,
                 classes=classes, params=params, id=item_id)
    if overlays is not None and image is not None:
        io.write_png(io.mask_path(overlays, item_id), overlay(image, io.read_cam(io.cam_path(out, item_id)).cams,
                                                             result.labels, classes))
    if debug is not None:
        io.write_cam_debug(io.cam_path(debug, item_id), result.raw, result.probs, result.labels,
                           None if result.refined is None else result.refined.before_minmax,
                           None if result.refined is None else result.refined.boxes,
                           classes=classes, params=params, id=item_id, row_names=_row_names(protos, result.labels))


def _row_names(protos: io.Prototypes, labels) -> list[str]:
    """Display names of an image's softmax rows, in :meth:`io.Prototypes.image_rows` order."""
    rows = [int(protos.class_rows()[c - 1]) for c in labels] + protos.background_rows().tolist()
    return [protos.row_names[r] for r in rows]


@torch.no_grad()
def _recompute_tokens(bb: ClipBackbone, feats: io.Features, image: np.ndarray, extract_cfg: ExtractConfig) -> None:
    """Fill ``feats``' tokens and attention from the image, rounded like `extract`'s cache would have stored them
    (:func:`vpltool.io.token_dtype`), so a run with and without cached tokens gives the same maps."""
    pixels = bb.preprocess(image, feats.input_size)[None]
    tokens, attention, _ = bb.frozen_pass(pixels, extract_cfg.attention_blocks,
                                          fp16_pos=extract_cfg.parity == "clip-es")
    dtype = io.token_dtype(extract_cfg.parity)
    feats.last_block_input = tokens[0].cpu().to(dtype).float()
    feats.attention = attention[0].cpu().to(dtype).float()


def overlay(image: np.ndarray, cams: np.ndarray, labels, classes) -> np.ndarray:
    """``[H, (K + 1) W, 3]`` uint8: the image, then a JET heat map over the image per class, each named."""
    from PIL import Image, ImageDraw

    panels = [image]
    for cam in cams:
        heat = cv2.applyColorMap((cam.astype(np.float32) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        panels.append((0.5 * image + 0.5 * heat).astype(np.uint8))
    sheet = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(sheet)
    for i, c in enumerate(labels):
        draw.text(((i + 1) * image.shape[1] + 3, 2), classes[c], fill=(255, 255, 255))
    return np.asarray(sheet)


__all__ = ["STAGE", "affinity", "box_coords", "box_mask", "Refined", "refine", "superpixel_smooth", "CamResult",
           "cams_for_image", "run_cam", "overlay"]

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
   image (:func:`vpltool.io.read_cam`, bilinear as CLIP-ES's ``cv2.resize``).

Options from SSR (Semantic and Spatial Rectification, AAAI 2026; no code published, see docs/pipeline.md):

* ``--refine caa+sgc`` (superpixel-guided correction): SLIC superpixels of the image, grouped by K-means over their
  mean Lab colour and centroid (:func:`superpixel_groups`); ``M[i, j] = 1`` when patches i and j fall in the same
  group (:func:`group_mask`), and ``refined_k = minmax((T * M * B_k[None, :]) @ cam_k)``: activation does not
  propagate across groups.
* ``--affinity dino|clip+dino``: ``T`` is built from a timm ViT's attention on the same patch grid
  (:mod:`vpltool.backbone.dino`), or from ``w * Att_clip + (1 - w) * Att_dino``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from . import io
from .backbone import ClipBackbone, DinoBackbone, DinoSpec, ModelSpec, check_dino, load_backbone, load_dino
from .batches import (
    BackgroundWriter,
    BatchRunner,
    header_sizes,
    load_batches,
    plan_batches,
    resolve_batch_size,
    shard_from_env,
)
from .config import (
    CAM_ATTENTION_BLOCKS,
    CamConfig,
    ExtractConfig,
    RuntimeConfig,
    check_tokens,
    from_params,
    to_params,
)
from .data import open_recorded, recorded_folders
from .device import autocast, resolve_device, resolve_precision
from .errors import ContractError, VplError
from .kernels import minmax

STAGE = "cam"


# --------------------------------------------------------------------------------------------- CAA
def affinity(attention: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """CAA transition matrix from a mean attention map ``[hw, hw]`` or a batch ``[B, hw, hw]`` (CLS removed):
    symmetric, non-negative.

    Column then row normalisation three times (Sinkhorn-style), ``(T + T^T) / 2``, then one squaring, in float32 as
    CLIP-ES. By default the sums have a floor (a patch nobody attends to would divide by zero); ``exact`` leaves it
    out, as CLIP-ES (``--parity clip-es``).
    """
    t = attention.float()
    floor = 0.0 if exact else 1e-12
    for _ in range(3):  # [..., hw, hw]: a batch of maps is normalised map by map
        t = t / t.sum(-2, keepdim=True).clamp_min(floor)
        t = t / t.sum(-1, keepdim=True).clamp_min(floor)
    t = (t + t.transpose(-2, -1)) / 2
    if t.ndim == 3:  # map by map: a batched matmul may round differently from the single one
        return torch.stack([m @ m for m in t])
    return t @ t


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
        # [hw, 1] column, as CLIP-ES: a matrix-vector product can round differently from this matrix product
        before.append(((trans * mask.flatten().to(trans)[None, :]) @ cam.reshape(-1, 1).to(trans)).view_as(cam))
        boxes.append(found)
    if not before:
        return Refined(cams, cams, [])
    before = torch.stack(before)
    return Refined(minmax(before), before, boxes)


def box_masks(cams: torch.Tensor, threshold: float, parity: bool = False) -> torch.Tensor:
    """:func:`box_mask` for a batch of maps ``[N, h, w]`` in [0, 1], on their device: ``[N, h, w]`` float32 in {0, 1}.

    The boxes of :func:`box_coords` are the bounding boxes of the 8-connected components of the thresholded map
    (an outer contour bounds its component; hole contours lie inside it), so the union is built from labelled
    components: every foreground patch starts with its own label and takes the largest label among its 8
    neighbours until nothing changes; each label's row and column range is a box. No per-map loop and no copy to
    the host: a handful of synchronisations per batch, to test convergence.
    """
    n, h, w = cams.shape
    if n == 0:
        return torch.zeros_like(cams)
    u8 = (cams.float() * 255).to(torch.uint8)  # as numpy's astype: truncation
    peak = u8.flatten(1).amax(1).double()
    binary = u8 > (threshold * peak).floor()[:, None, None]  # int(threshold * max), as scoremap2bbox
    labels = torch.where(binary, torch.arange(1, h * w + 1, device=cams.device, dtype=torch.float32).view(h, w),
                         torch.zeros((), device=cams.device))
    keep = binary.float()
    while True:
        before = labels
        for _ in range(4):  # test convergence every 4 steps: each test is a synchronisation
            labels = torch.nn.functional.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * keep
        if torch.equal(labels, before):
            break
    return _union_of_boxes(labels.long(), parity)


def _union_of_boxes(labels: torch.Tensor, parity: bool) -> torch.Tensor:
    """``[N, h, w]`` component labels (0 = none, else 1..hw) -> the union of the components' bounding boxes
    ``[N, h, w]`` float32, with CLIP-ES's clipped box ends under ``parity`` (see :func:`box_coords`)."""
    n, h, w = labels.shape
    slots = h * w + 1
    dev = labels.device
    index = (torch.arange(n, device=dev)[:, None] * slots + labels.flatten(1)).flatten()
    rows = torch.arange(h, device=dev).repeat_interleave(w).repeat(n)
    cols = torch.arange(w, device=dev).repeat(h).repeat(n)

    def reduce(values: torch.Tensor, how: str, start: int) -> torch.Tensor:
        return torch.full((n * slots,), start, device=dev).scatter_reduce(0, index, values, how)

    y0, y1 = reduce(rows, "amin", h), reduce(rows, "amax", -1) + 1
    x0, x1 = reduce(cols, "amin", w), reduce(cols, "amax", -1) + 1
    if parity:
        y1, x1 = y1.clamp_max(h - 1), x1.clamp_max(w - 1)
    real = (y1 > 0).view(n, slots)
    real[:, 0] = False  # label 0 is the background, not a component
    in_y = (torch.arange(h, device=dev) >= y0[:, None]) & (torch.arange(h, device=dev) < y1[:, None])
    in_x = (torch.arange(w, device=dev) >= x0[:, None]) & (torch.arange(w, device=dev) < x1[:, None])
    in_y = (in_y.view(n, slots, h) & real[..., None]).float()
    in_x = in_x.view(n, slots, w).float()
    return ((in_y.transpose(1, 2) @ in_x) > 0).float()  # [N, h, w]: inside some component's box


def refine_batch(cams: torch.Tensor, trans: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`refine` for a batch: ``cams`` ``[B, K, h, w]`` (padded maps are zeros), ``trans`` ``[B, hw, hw]``.

    ``(T * box[None, :]) @ cam`` is computed as ``sum_j T[:, j] * (box * cam)[j]`` (the box is 0 or 1, so every
    product term is the same), a product and a sum rather than a batched matmul, whose rounding depends on the batch
    (measured on a CPU): a batch gives the maps of its images run alone.

    Returns:
        ``(maps, before_minmax)``, both ``[B, K, h, w]`` float32.
    """
    b, k, h, w = cams.shape
    boxes = box_masks(cams.flatten(0, 1), threshold).view(b, k, h * w, 1)
    masked = boxes * cams.reshape(b, k, h * w, 1).to(trans)
    before = torch.stack([(trans * masked[:, i, None, :, 0]).sum(-1) for i in range(k)], 1).view(b, k, h, w)
    return minmax(before), before


# --------------------------------------------------------------------------------------------- SGC (SSR)
def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """``[n]`` int64 cluster of each row of ``x`` ``[n, d]`` float: Lloyd's K-means from a seeded k-means++ start
    (deterministic for a given ``seed``); fewer than ``k`` clusters when ``x`` has fewer distinct rows."""
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, min(k, len(x))):
        d2 = ((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(1)
        if d2.sum() <= 0:  # every row already sits on a centre
            break
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    c = np.asarray(centres)
    labels = np.full(len(x), -1)
    for _ in range(iters):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.stack([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(len(c))])
    return labels.astype(np.int64)


def patch_majority(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``[h*w]`` int64: the most frequent value of ``labels`` ``[H, W]`` (non-negative ints) inside each patch of an
    ``h x w`` grid laid over the whole image (pixel row ``y`` falls in patch row ``y * h // H``); ties go to the
    smaller value. A patch no pixel falls in (a grid finer than the image) takes the pixel at its centre."""
    (big_h, big_w), (h, w) = labels.shape, grid
    patch = ((np.arange(big_h) * h) // big_h)[:, None] * w + ((np.arange(big_w) * w) // big_w)[None, :]
    n = int(labels.max()) + 1
    counts = np.bincount((patch * n + labels).ravel(), minlength=h * w * n).reshape(h * w, n)
    out = counts.argmax(1)
    empty = counts.sum(1) == 0
    if empty.any():
        ys = ((np.arange(h) + 0.5) * big_h / h).astype(int).clip(0, big_h - 1)
        xs = ((np.arange(w) + 0.5) * big_w / w).astype(int).clip(0, big_w - 1)
        out[empty] = labels[ys[:, None], xs[None, :]].ravel()[empty]
    return out.astype(np.int64)


def superpixel_features(image: np.ndarray, segments: np.ndarray, position: float) -> np.ndarray:
    """``[S, 5]`` float64 per superpixel: mean CIE-Lab colour (L in [0, 100]) and ``position * 100 *`` centroid
    ``(y, x)`` divided by the image's longer side, so ``position`` 1 weighs one image side like the full L range."""
    from skimage.color import rgb2lab

    seg = segments.ravel()
    n = int(seg.max()) + 1
    counts = np.bincount(seg, minlength=n).clip(1)[:, None]
    lab = rgb2lab(image).reshape(-1, 3)
    colour = np.stack([np.bincount(seg, lab[:, c], n) for c in range(3)], 1) / counts
    ys, xs = np.indices(segments.shape)
    centre = np.stack([np.bincount(seg, ys.ravel(), n), np.bincount(seg, xs.ravel(), n)], 1) / counts
    return np.concatenate([colour, centre * (position * 100.0 / max(segments.shape))], 1)


def superpixel_groups(image: np.ndarray, grid: tuple[int, int], n_segments: int, n_clusters: int,
                      compactness: float = 10.0, position: float = 0.5, seed: int = 0) -> np.ndarray:
    """SSR's spatial prior: ``[h*w]`` int64 group of each patch.

    SLIC superpixels of ``image`` ``[H, W, 3]`` uint8 (scikit-image, ``n_segments``, ``compactness``), K-means
    (``n_clusters``, seeded) over :func:`superpixel_features`, then each patch of the ``grid`` takes the group most
    of its pixels belong to (:func:`patch_majority`).
    """
    from skimage.segmentation import slic

    segments = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
    groups = kmeans(superpixel_features(image, segments, position), n_clusters, seed=seed)
    return patch_majority(groups[segments], grid)


def group_mask(groups: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[n, n]`` float32 in {0, 1}: ``M[i, j] = 1`` when ``groups[i] == groups[j]`` (``groups`` ``[n]`` ints)."""
    g = torch.as_tensor(groups)
    return (g[:, None] == g[None, :]).float()


def needs_image(cfg: CamConfig) -> bool:
    """Whether ``cfg``'s refinement reads the image itself (superpixels, the DINO pass)."""
    return cfg.refine == "caa+sgc" or cfg.affinity != "clip"


def check_affinity(cfg: CamConfig) -> None:
    """Before any model is loaded: refuse (one line) a DINO affinity whose weights cannot be had."""
    if cfg.affinity != "clip":
        check_dino(DinoSpec(cfg.dino_model, cfg.dino_weights))


_DINO: dict[tuple[str, str, str], DinoBackbone] = {}


def dino_backbone(cfg: CamConfig, device: torch.device) -> DinoBackbone:
    """The DINO model of ``cfg`` on ``device``, built once per process."""
    key = (cfg.dino_model, cfg.dino_weights, str(device))
    if key not in _DINO:
        _DINO.clear()  # one at a time: a second model would only hold memory
        _DINO[key] = load_dino(DinoSpec(cfg.dino_model, cfg.dino_weights), device)
    return _DINO[key]


def caa_transition(bb: ClipBackbone, tokens: ImageTokens, attn_last: torch.Tensor, cfg: CamConfig,
                   image: np.ndarray | None, dino: DinoBackbone | None = None) -> torch.Tensor:
    """CAA's ``[hw, hw]`` float32 transition matrix from the attention ``cfg.affinity`` names, times SSR's group
    mask with ``--refine caa+sgc``. The default (clip, caa) is CLIP-ES's matrix, bit for bit."""
    blocks = cfg.attention_blocks or tokens.n_prev + 1  # a library call may leave it to the tokens' own count
    att = caa_attention(tokens, attn_last, blocks, bb.n_blocks)
    if cfg.affinity != "clip":
        if image is None:
            raise VplError(f"--affinity {cfg.affinity} needs the images; the dataset recorded by extract must be "
                           "readable")
        dino = dino or dino_backbone(cfg, bb.device)
        att_dino = dino.attention(image, tokens.grid, blocks).to(att)
        att = att_dino if cfg.affinity == "dino" else cfg.affinity_weight * att + (1 - cfg.affinity_weight) * att_dino
    trans = affinity(att, exact=cfg.parity == "clip-es")
    if cfg.refine == "caa+sgc":
        if image is None:
            raise VplError("--refine caa+sgc needs the images; the dataset recorded by extract must be readable")
        groups = superpixel_groups(image, tokens.grid, cfg.sgc_segments, cfg.sgc_clusters, cfg.sgc_compactness,
                                   cfg.sgc_position)
        trans = trans * group_mask(groups).to(trans)
    return trans


@dataclass
class CamResult:
    maps: torch.Tensor  # [K, h, w] float32 in [0, 1] on the patch grid: what is stored
    labels: tuple[int, ...]
    raw: torch.Tensor  # [K, h, w] unrefined GradCAM in [0, 1]
    probs: torch.Tensor  # [K + M] softmax over the image's rows
    refined: Refined | None = None  # CAA's intermediate maps and boxes (None with --refine none)


@dataclass
class ImageTokens:
    """What `cam` needs of one image's frozen pass (from an `extract` cache, or computed from the image).

    Attributes:
        last_block_input: ``[1 + hw, width]`` float32 tokens entering the last block.
        attention: ``[hw, hw]`` mean head-averaged attention (CLS removed) of the ``n_prev`` blocks before the last;
            None when ``n_prev`` is 0.
    """

    id: str
    labels: tuple[int, ...]
    image_size: tuple[int, int]
    grid: tuple[int, int]
    last_block_input: torch.Tensor
    attention: torch.Tensor | None
    n_prev: int
    source: str  # the file or image the tokens came from, for messages


def caa_attention(tokens: ImageTokens, attn_last: torch.Tensor, wanted: int, n_blocks: int) -> torch.Tensor:
    """``[hw, hw]``: the mean over the last ``wanted`` blocks of the head-mean attention without CLS (the earlier
    blocks' mean + the last block's own ``attn_last`` ``[1+hw, 1+hw]``); CLIP-ES averages the last 8."""
    if tokens.attention is not None and tokens.attention.ndim == 3:
        # the maps themselves (--parity clip-es): one mean of all, CLIP-ES's rounding
        if _blocks_averaged(tokens.n_prev, wanted, n_blocks, tokens.source) == 1:
            return attn_last[1:, 1:]
        return torch.cat([tokens.attention.to(attn_last), attn_last[None, 1:, 1:]]).mean(0)
    return mean_attention(tokens.attention, tokens.n_prev, attn_last, wanted, n_blocks, tokens.source)


def mean_attention(prev: torch.Tensor | None, n_prev: int, attn_last: torch.Tensor, wanted: int | None,
                   n_blocks: int, source: str = "the extract folder") -> torch.Tensor:
    """CAA's attention ``[..., hw, hw]`` (one image or a batch): ``prev`` ``[..., hw, hw]`` is the mean of the
    ``n_prev`` blocks before the last, ``attn_last`` ``[..., 1+hw, 1+hw]`` the last block's map. Elementwise, so a
    batch gives the values of its images alone."""
    if _blocks_averaged(n_prev, wanted, n_blocks, source) == 1:  # the last block's own map: no cache needed
        return attn_last[..., 1:, 1:]
    return (prev.to(attn_last) * n_prev + attn_last[..., 1:, 1:]) / (n_prev + 1)


def _blocks_averaged(n_prev: int, wanted: int | None, n_blocks: int, source: str) -> int:
    """How many blocks CAA averages: ``wanted`` (None: what extract averaged, ``n_prev + 1``), capped at the
    model's depth; 1, or exactly what extract cached, else a one-line error with the fix."""
    wanted = n_prev + 1 if wanted is None else min(wanted, n_blocks)
    if wanted not in (1, n_prev + 1):
        raise ContractError(f"{source}: extract averaged {n_prev + 1} attention blocks, cam asks for {wanted}; re-run "
                            f"extract with --attention-blocks {wanted}, or drop cam's --attention-blocks (or pass 1: "
                            "the last block alone)")
    return wanted


def cams_for_image(bb: ClipBackbone, tokens: ImageTokens, protos: io.Prototypes, cfg: CamConfig,
                   temperature: float, image: np.ndarray | None = None) -> CamResult:
    """Steps 1-4 of the module docstring for one image."""
    labels = tokens.labels
    cam = bb.gradcam(tokens.last_block_input, tokens.grid, protos.image_rows(labels), len(labels), temperature,
                     layer=cfg.layer, exact=cfg.parity == "clip-es")
    maps, refined = cam.maps, None
    if cfg.refine != "none" and len(labels):
        trans = caa_transition(bb, tokens, cam.attention, cfg, image)
        refined = refine(cam.maps, trans, cfg.box_threshold, parity=cfg.parity == "clip-es")
        maps = refined.maps
    maps = maps.cpu()
    return CamResult(maps, labels, cam.maps.cpu(), cam.probs.cpu(), refined)


def cached_tokens(bb: ClipBackbone, path: Path, classes, image: np.ndarray | None,
                  extract_cfg: ExtractConfig) -> ImageTokens:
    """One image's tokens from its `extract` file; a light cache is completed from the image."""
    feats = io.read_features(path, classes=classes)
    check_tokens(path, feats.image_size, feats.grid, bb.patch_size, extract_cfg.max_tokens, stage="cam")
    if feats.last_block_input is None:  # a light cache: run the frozen blocks here
        if image is None:
            raise VplError(f"{path}: no cached tokens and image '{feats.id}' not found; restore the dataset or "
                           "re-run extract with --cache full")
        bb.fill_tokens(feats, image, extract_cfg.attention_blocks, extract_cfg.parity)
    n_prev = int(feats.file.meta("attention_blocks", 0))
    if feats.attention is not None and feats.attention.shape[-1] != feats.grid[0] * feats.grid[1]:
        raise ContractError(f"{path}: attention does not match the patch grid; re-run extract")
    return ImageTokens(feats.id, tuple(int(c) for c in feats.labels), feats.image_size, feats.grid,
                       feats.last_block_input, feats.attention, n_prev, str(path))


@torch.no_grad()
def image_tokens(bb: ClipBackbone, item, image: np.ndarray, cfg: CamConfig, dtype: torch.dtype) -> ImageTokens:
    """One image's tokens by running the frozen blocks now (a dataset given to `cam` directly; nothing cached).

    Sizes follow CLIP-ES (each side rounded up to the patch size); fp32, or ``dtype`` autocast (bf16 where it pays).
    """
    size = bb.input_size(*image.shape[:2])
    check_tokens(item.image, image.shape[:2], (size[0] // bb.patch_size, size[1] // bb.patch_size), bb.patch_size,
                 ExtractConfig.max_tokens, stage="cam")
    with autocast(bb.device, dtype):
        exact = cfg.parity == "clip-es"
        blocks = cfg.attention_blocks or CAM_ATTENTION_BLOCKS
        tokens, attention, grid = bb.frozen_pass(bb.preprocess(image, size)[None], blocks, fp16_pos=exact,
                                                 keep_maps=exact)
    n_prev = min(blocks, bb.n_blocks) - 1
    return ImageTokens(item.id, tuple(item.labels), tuple(image.shape[:2]), grid, tokens[0].float(),
                       attention[0].float() if n_prev else None, n_prev, str(item.image))


# --------------------------------------------------------------------------------------------- the stage
def run_cam(
    source: str | Path,
    prototypes: str | Path,
    out: str | Path,
    cfg: CamConfig = CamConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    split: str | None = None,
    overlays: str | Path | None = None,
    debug: str | Path | None = None,
    shard: tuple[int, int] = (0, 1),
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
) -> io.StageSummary:
    """CAMs for every image of an `extract` folder, or of a dataset given directly, with its image-level labels.

    Args:
        source: an `extract` folder (its cache, its model), or a dataset (VOC/COCO root, folder, manifest) with
            ``split``: the frozen blocks then run here, in this one process, and nothing is cached; the CLIP model
            is the one the prototypes were made with.
        overlays: a folder for heat-map PNGs. debug: a folder for each image's intermediate maps (kind
            ``cam-debug``, docs/file-formats.md). backbone: reuse an already loaded model of the same identity.
        shard: ``(i, n)``: every n-th image from the i-th (``--shard i/n``; under torchrun the rank, see
            :func:`vpltool.batches.shard_from_env`); the folder completes when every shard's images are there.
    """
    source, out = Path(source), Path(out)
    check_affinity(cfg)
    if _is_extract_folder(source):
        if split is not None:
            raise VplError(f"{source}: an extract folder holds one split; drop --split (or extract the other one)")
        src = _FromFeatures(source, prototypes, cfg)
        cfg = replace(cfg, attention_blocks=attention_blocks_for(cfg, src.extract_cfg, source))
    else:
        cfg = replace(cfg, attention_blocks=cfg.attention_blocks or CAM_ATTENTION_BLOCKS)
        src = _FromDataset(source, split, prototypes, cfg)
    io.check_outputs(STAGE, {"--out": (out, "stage"), "--save-overlays": (overlays, "side"),
                             "--save-debug": (debug, "side")},
                     inputs={"the source": source, "--prototypes": prototypes}, protected=src.folders(),
                     overwrite=runtime.overwrite)  # every output, before the model loads
    return _run_on(src, out, cfg, runtime, overlays, debug, shard_from_env(shard), on_item, on_start, backbone)


def attention_blocks_for(cfg: CamConfig, extract_cfg: ExtractConfig, features: Path) -> int:
    """The blocks CAA averages on an `extract` folder: the folder's own (``--attention-blocks`` of extract, in its
    record) unless cam asks for 1 (the last block's map alone, which needs no cache); any other value cannot be
    served from the cache, so it is refused with the fix before the model loads."""
    made = extract_cfg.attention_blocks
    wanted = cfg.attention_blocks
    if wanted is None or wanted in (1, made):
        return made if wanted is None else wanted
    raise VplError(f"cam --attention-blocks {wanted}: {features} was extracted with --attention-blocks {made}, so CAA "
                   f"can average {made} blocks (drop the option) or 1 (the last block alone); for {wanted}, re-run "
                   f"extract with --attention-blocks {wanted}")


def _is_extract_folder(path: Path) -> bool:
    """An `extract` output folder, finished or not (its completion record, the record of a run under way, or a
    finished shard's record), rather than a dataset: a half-made one then gets `extract`'s own message."""
    if io.record_stage(path) == "extract":
        return True
    return bool(io.finished_shards(path)) if path.is_dir() else False


class _FromFeatures:
    """`cam` on an `extract` folder: labels, tokens (or the light cache's dense only) and model come from it."""

    def __init__(self, features: Path, prototypes, cfg: CamConfig):
        self.record = io.read_stage_record(features, "extract")
        self.features, self.classes = features, self.record["classes"]
        self.model = self.record["params"]["model"]
        self.protos = io.read_prototypes(prototypes, classes=self.classes, model=self.model)
        self.extract_cfg = from_params(ExtractConfig, self.record["params"])
        if cfg.parity == "clip-es" and self.extract_cfg.parity != "clip-es":
            raise VplError(f"{features}: extracted without --parity clip-es, so `cam --parity clip-es` cannot match "
                           "CLIP-ES; re-run extract with --parity clip-es")
        self.ids = io.item_ids(features)
        self.need_images = needs_image(cfg) or not self.extract_cfg.store_tokens
        self.inputs = {"features": io.sha256_file(io.stage_record_path(features)),
                       "dataset": self.record["inputs"]["dataset"]}

    def dataset(self):
        return open_recorded(self.features)

    def folders(self):
        return recorded_folders(self.features)

    def tokens(self, bb, item_id, item, image, dtype) -> ImageTokens:
        return cached_tokens(bb, io.feature_path(self.features, item_id), self.classes, image, self.extract_cfg)

    def plan(self, bb: ClipBackbone, ids: list[str], items: dict, workers: int) -> list[dict]:
        """Per image, from its file's header alone: the grid (the batch key), sizes and labels."""
        out = []
        for item_id in ids:
            path = io.feature_path(self.features, item_id)
            head = io.features_meta(path)
            check_tokens(path, head["image_size"], head["grid"], bb.patch_size, self.extract_cfg.max_tokens,
                         stage="cam")
            out.append({**head, "id": item_id, "path": path, "item": items.get(item_id)})
        return out

    def load(self, entry: dict, pre, need_image: bool, batched: bool) -> dict:
        """What the batched pass needs of one image: the cached tokens, or (light cache) the pixels to recompute
        them; and the image itself where the refinement or the overlays need it. Runs in a loading worker."""
        image = _image_of(entry, need_image or (batched and not self.extract_cfg.store_tokens))
        out = {"image": image}
        if not batched:
            return out
        if self.extract_cfg.store_tokens:
            feats = io.read_features(entry["path"], classes=self.classes, need_tokens=True)
            out.update(tokens=feats.last_block_input, attention=feats.attention)
        else:
            out["pixels"] = pre(image, entry["input_size"])
        return out


class _FromDataset:
    """`cam` straight from a dataset: one process, one frozen pass per image, no cache written."""

    def __init__(self, root: Path, split: str | None, prototypes, cfg: CamConfig):
        from .data import open_dataset

        self.data = open_dataset(root, split)
        self.classes = list(self.data.classes)
        self.protos = io.read_prototypes(prototypes, classes=self.classes)
        self.model = self.protos.model
        self.ids = [it.id for it in self.data.items]
        self.need_images, self.cfg = True, cfg
        self.inputs = {"dataset": self.data.identity(), "items": self.data.items_sha()}

    def dataset(self):
        return self.data

    def folders(self):
        return self.data.folders()

    def tokens(self, bb, item_id, item, image, dtype) -> ImageTokens:
        return image_tokens(bb, item, image, self.cfg, dtype)

    def plan(self, bb: ClipBackbone, ids: list[str], items: dict, workers: int) -> list[dict]:
        """Per image, from its header alone (every image checked before the first forward): sizes and labels."""
        out = []
        sizes = header_sizes([items[i].image for i in ids], workers)
        for item_id, size in zip(ids, sizes):
            item = items[item_id]
            input_size = bb.input_size(*size)
            grid = (input_size[0] // bb.patch_size, input_size[1] // bb.patch_size)
            check_tokens(item.image, size, grid, bb.patch_size, ExtractConfig.max_tokens, stage="cam")
            out.append({"id": item_id, "item": item, "labels": tuple(item.labels), "image_size": size,
                        "input_size": input_size, "grid": grid, "n_prev": min(self.cfg.attention_blocks,
                                                                               bb.n_blocks) - 1})
        return out

    def load(self, entry: dict, pre, need_image: bool, batched: bool) -> dict:
        image = _image_of(entry, True)
        return {"image": image, **({"pixels": pre(image, entry["input_size"])} if batched else {})}


def _image_of(entry: dict, need: bool) -> np.ndarray | None:
    if not need:
        return None
    if entry["item"] is None:
        raise VplError(f"{entry.get('path', entry['id'])}: no cached tokens and image '{entry['id']}' not found; "
                       "restore the dataset or re-run extract with --cache full")
    image = io.load_image(entry["item"].image)
    if tuple(image.shape[:2]) != tuple(entry["image_size"]):
        raise ContractError(f"{entry['item'].image}: is {image.shape[0]}x{image.shape[1]}, but its features were "
                            f"made from a {entry['image_size'][0]}x{entry['image_size'][1]} image; the dataset "
                            "changed since extract: re-run extract")
    return image


def batched_mode(cfg: CamConfig) -> bool:
    """Whether `cam` runs whole batches through :func:`cams_for_batch`; the rest (``--parity clip-es``, whose
    operation order is CLIP-ES's, one image at a time; SSR's superpixel groups and DINO attention, computed per image
    on the host) runs :func:`cams_for_image`."""
    return cfg.parity == "none" and cfg.refine in ("none", "caa") and cfg.affinity == "clip"


def _run_on(src, out: Path, cfg: CamConfig, runtime: RuntimeConfig, overlays, debug, shard: tuple[int, int],
            on_item, on_start, backbone) -> io.StageSummary:
    """The stage on either source, through the shared pipeline of :mod:`vpltool.batches` (plan, load ahead, run
    batched, write behind) inside the skeleton of :class:`vpltool.io.StageFolder`."""
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    temperature = cfg.temperature or src.protos.temperature
    params = {**to_params(cfg), "temperature": temperature,
              "prototypes": io.file_identity(src.protos.path, source=src.protos.source)}
    need_images = src.need_images or overlays is not None
    items = src.dataset().by_id() if need_images else {}
    index, count = shard
    start = time.perf_counter()
    with io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, inputs=src.inputs, reset=index == 0,
                        lock_name=io.shard_lock(index, count),
                        sides={"--save-overlays": overlays, "--save-debug": debug}) as folder:
        todo = folder.todo(src.ids[index::count], io.cam_path)
        if on_start:
            on_start(len(todo))
        if todo:
            bb = backbone or load_backbone(ModelSpec.from_identity(src.model), device)
            if bb.embed_dim != src.protos.dim:
                raise ContractError(f"{src.protos.path}: prototypes are {src.protos.dim}-d but the model's features "
                                    f"are {bb.embed_dim}-d; make prototypes with the same CLIP model")
            plan = src.plan(bb, todo, items, runtime.worker_count)
            _run_batches(bb, src, plan, out, cfg, runtime, temperature, dtype, params, overlays, debug, on_item)
        folder.finish(src.ids, io.cam_path, index, count, inputs=src.inputs)
    return io.StageSummary(done=len(todo), skipped=len(src.ids[index::count]) - len(todo),
                           seconds=time.perf_counter() - start)


def _run_batches(bb: ClipBackbone, src, plan: list[dict], out: Path, cfg: CamConfig, runtime: RuntimeConfig,
                 temperature: float, dtype: torch.dtype, params: dict, overlays, debug, on_item) -> None:
    """Plan same-grid batches, load them ahead, run each batched (halving on out-of-memory), write behind."""
    batched = batched_mode(cfg)
    size = resolve_batch_size(runtime.batch_size, bb.device, cpu_default=1) if batched else 1
    need_image = overlays is not None or (src.need_images and not batched)
    pre = bb.preprocessor
    runner = BatchRunner(size, describe=lambda i: _describe(plan[i]))
    with BackgroundWriter(on_item) as writer:
        batches = load_batches(len(plan), plan_batches([e["grid"] for e in plan], size),
                               lambda i: src.load(plan[i], pre, need_image, batched), runtime.worker_count, bb.device)
        for batch in batches:
            entries = [plan[i] for i in batch["index"]]
            if not batched:
                for entry, image in zip(entries, batch["image"]):
                    tokens = src.tokens(bb, entry["id"], entry["item"], image, dtype)
                    result = cams_for_image(bb, tokens, src.protos, cfg, temperature, image)
                    writer.submit(_result_tensors(result), _writer(out, entry, image, src, params, overlays, debug))
                continue
            for chunk in runner(len(entries), lambda s: _chunk(bb, batch, s, entries, src, cfg, temperature, dtype)):
                for b, entry in enumerate(entries[chunk["slice"]]):
                    k = len(entry["labels"])
                    tensors = {"maps": chunk["maps"][b, :k], "raw": chunk["raw"][b, :k], "probs": chunk["probs"][b],
                               "before": chunk["before"][b, :k] if chunk["before"] is not None else None}
                    image = batch["image"][chunk["slice"].start + b]
                    writer.submit(tensors, _writer(out, entry, image, src, params, overlays, debug, cfg))


def _describe(entry: dict) -> str:
    h, w = entry["image_size"]
    where = entry["item"].image if entry.get("item") is not None else entry.get("path", entry["id"])
    return f"{where} ({h}x{w}, {entry['grid'][0] * entry['grid'][1]} patch tokens)"


def _chunk(bb: ClipBackbone, batch: dict, part: slice, entries: list[dict], src, cfg: CamConfig, temperature: float,
           dtype: torch.dtype) -> dict:
    """:func:`cams_for_batch` on ``batch[part]``: the frozen pass first where the cache holds no tokens."""
    grid = tuple(entries[part.start]["grid"])
    labels = [tuple(e["labels"]) for e in entries[part]]
    if "tokens" in batch:
        tokens, prev = batch["tokens"][part].to(bb.device), batch["attention"][part].to(bb.device)
        n_prev = int(entries[part.start]["n_prev"])
    else:
        pixels = batch["pixels"][part].to(bb.device, non_blocking=True)
        tokens, prev, n_prev = _frozen_tokens(bb, pixels, src, cfg, dtype)
    maps, raw, probs, before = cams_for_batch(bb, tokens, prev, n_prev, grid, labels, src.protos, cfg, temperature)
    return {"slice": part, "maps": maps, "raw": raw, "probs": probs, "before": before}


@torch.no_grad()
def _frozen_tokens(bb: ClipBackbone, pixels: torch.Tensor, src, cfg: CamConfig, dtype: torch.dtype):
    """``(last_block_input [B, 1+hw, width], attention [B, hw, hw], n_prev)`` for a batch of pixels: from a light
    cache rounded as `extract`'s full cache stores them (the same maps with and without cached tokens)."""
    cached = isinstance(src, _FromFeatures)
    blocks = src.extract_cfg.attention_blocks if cached else cfg.attention_blocks
    with autocast(bb.device, dtype):
        tokens, attention, _ = bb.frozen_pass(pixels, blocks)
    tokens, attention = tokens.float(), attention.float()
    if cached:
        kind = io.token_dtype(src.extract_cfg.parity)
        tokens, attention = tokens.to(kind).float(), attention.to(kind).float()
    return tokens, attention, min(blocks, bb.n_blocks) - 1


def cams_for_batch(bb: ClipBackbone, tokens: torch.Tensor, prev: torch.Tensor, n_prev: int, grid: tuple[int, int],
                   labels: list[tuple[int, ...]], protos: io.Prototypes, cfg: CamConfig, temperature: float):
    """Steps 1-3 of the module docstring for B images of one grid, on the model's device, with no per-image loop
    over the network and no copy to the host.

    Args:
        tokens: ``[B, 1 + hw, width]`` entering the last block. prev: ``[B, hw, hw]`` mean attention of the
            ``n_prev`` blocks before it. labels: each image's K_b classes.

    Returns:
        ``(maps, raw, probs, before)``: ``[B, Kmax, h, w]`` refined maps in [0, 1] (image b's first K_b), the raw
        GradCAM alike, B softmax vectors, and the maps before CAA's min-max (None with ``--refine none``).
    """
    rows = [protos.image_rows(lab) for lab in labels]
    cam = bb.gradcam_batch(tokens, grid, rows, [len(lab) for lab in labels], temperature, layer=cfg.layer)
    if cfg.refine == "none" or cam.maps.shape[1] == 0:
        return cam.maps, cam.maps, cam.probs, None
    attention = mean_attention(prev, n_prev, cam.attention, cfg.attention_blocks, bb.n_blocks)
    maps, before = refine_batch(cam.maps, affinity(attention), cfg.box_threshold)
    return maps, cam.maps, cam.probs, before


def _result_tensors(result: CamResult) -> dict:
    refined = result.refined
    return {"maps": result.maps, "raw": result.raw, "probs": result.probs,
            "before": None if refined is None else refined.before_minmax,
            "boxes": None if refined is None else refined.boxes}


def _writer(out: Path, entry: dict, image: np.ndarray | None, src, params: dict, overlays, debug,
            cfg: CamConfig | None = None) -> Callable[[dict], None]:
    """The write of one image's results, run on the writer thread (``cfg``: compute the debug boxes there)."""

    def write(t: dict) -> None:
        item_id, maps = entry["id"], t["maps"].cpu()
        io.write_cam(io.cam_path(out, item_id), maps, entry["labels"], image_size=entry["image_size"],
                     classes=src.classes, params=params, id=item_id)
        if overlays is not None and image is not None:
            io.write_png(io.mask_path(overlays, item_id),
                         overlay(image, io.read_cam(io.cam_path(out, item_id)).cams, entry["labels"], src.classes))
        if debug is not None:
            boxes = t.get("boxes")
            if boxes is None and t["before"] is not None:
                boxes = [box_coords(m.numpy(), cfg.box_threshold) for m in t["raw"].cpu()]
            io.write_cam_debug(io.cam_path(debug, item_id), t["raw"].cpu(), t["probs"].cpu(), entry["labels"],
                               None if t["before"] is None else t["before"].cpu(), boxes,
                               classes=src.classes, params=params, id=item_id,
                               row_names=_row_names(src.protos, entry["labels"]))

    return write


def _row_names(protos: io.Prototypes, labels) -> list[str]:
    """Display names of an image's softmax rows, in :meth:`io.Prototypes.image_rows` order."""
    rows = [int(protos.class_rows()[c - 1]) for c in labels] + protos.background_rows().tolist()
    return [protos.row_names[r] for r in rows]


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


__all__ = ["STAGE", "affinity", "box_coords", "box_mask", "Refined", "refine", "kmeans",
           "patch_majority", "superpixel_features", "superpixel_groups", "group_mask", "caa_transition", "CamResult",
           "cams_for_image", "run_cam", "overlay"]

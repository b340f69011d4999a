"""Step 3 of `cam`: class-aware attention affinity (CAA, CLIP-ES ``generate_cams_voc12.py:perform``).

For each class map ``cam_k`` ``[h, w]`` of an image:

1. ``Att``: the mean head-averaged attention (CLS removed) of the last ``attention_blocks`` blocks
   (:func:`mean_attention`, :func:`caa_attention`); optionally a DINO ViT's attention instead or mixed in (SSR,
   ``--affinity``), and SSR's superpixel-group mask (``--refine caa+sgc``, :mod:`vpltool.stages.cam.sgc`):
   :func:`caa_transition`.
2. ``T`` = three column/row normalisations of ``Att``, symmetrised, squared (:func:`affinity`).
3. The box mask ``B_k``: the union of the bounding boxes of every contour of ``cam_k > thr * max``
   (``utils.py:scoremap2bbox``).
4. ``refined_k = minmax((T * B_k[None, :]) @ cam_k)``.

Steps 3-4 come in two forms, side by side so that their equivalence is easy to check:

* per image, CLIP-ES's own arithmetic (OpenCV contours, one matrix product per class): :func:`box_coords`,
  :func:`box_mask`, :func:`refine`; ``--parity clip-es``, SSR's refinements and `cam --save-debug` use it;
* batched on the device (labelled 8-connected components in a fixed number of steps, a product and a sum per
  map): :func:`box_masks`, :func:`components`, :func:`refine_batch`; the default path. tests/test_cam.py checks
  the box masks equal OpenCV's on random, ring, spiral and edge cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ...config import CamConfig
from ...errors import ContractError, VplError
from ...models import ClipBackbone, DinoBackbone, DinoSpec, check_model, load_model
from ...ops.affinity import affinity, box_masks, component_rounds, components  # noqa: F401 (the cam package's API)
from ...ops.kernels import minmax
from .gradcam import ImageTokens
from .sgc import group_mask, superpixel_groups


def affinity_share(trans: torch.Tensor, regions: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of each patch's CAA affinity stays inside its own ground-truth region (the toy study's figure).

    Args:
        trans: ``[hw, hw]`` non-negative transition matrix (:func:`affinity`'s output).
        regions: ``[hw]`` int region id of each patch (e.g. :func:`vpltool.stages.cam.sgc.patch_majority` of the GT
        mask: one region per class present, background included).

    Returns:
        ``(own, chance)``, both ``[hw]`` float32 in [0, 1]: row ``i``'s mass on patches of ``i``'s region over its
        whole mass, and that region's share of the patches (what an affinity blind to regions gives).
    """
    r = torch.as_tensor(np.asarray(regions), device=trans.device).long().view(-1)
    same = (r[:, None] == r[None, :]).float()  # [hw, hw]
    t = trans.float()
    own = (t * same).sum(1) / t.sum(1).clamp_min(1e-12)
    return own.cpu(), (same.sum(1) / len(r)).cpu()


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


def refine_batch(cams: torch.Tensor, trans: torch.Tensor, image_of: torch.Tensor, threshold: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`refine` for a batch of maps: ``cams`` ``[P, h, w]``, one per (image, class) pair, ``trans``
    ``[B, hw, hw]`` the images' transition matrices and ``image_of`` ``[P]`` (on the device) the image of each map.

    ``(T * box[None, :]) @ cam`` is computed as ``sum_j T[:, j] * (box * cam)[j]`` (the box is 0 or 1, so every
    product term is the same), a product and a sum rather than a batched matmul, whose rounding depends on the batch
    (measured on a CPU): a batch gives the maps of its images run alone.

    Returns:
        ``(maps, before_minmax)``, both ``[P, h, w]`` float32.
    """
    p, h, w = cams.shape
    boxes = box_masks(cams, threshold).view(p, h * w)
    masked = boxes * cams.reshape(p, h * w).to(trans)
    before = (trans.index_select(0, image_of) * masked[:, None, :]).sum(-1).view(p, h, w)
    return minmax(before), before


def needs_image(cfg: CamConfig) -> bool:
    """Whether ``cfg``'s refinement reads the image itself (superpixels, the DINO pass)."""
    return cfg.refine == "caa+sgc" or cfg.affinity != "clip"


def check_affinity(cfg: CamConfig) -> None:
    """Before any model is loaded: refuse (one line) a DINO affinity whose weights cannot be had."""
    if cfg.affinity != "clip":
        check_model("dino", DinoSpec(cfg.dino_model, cfg.dino_weights))


_DINO: dict[tuple[str, str, str], DinoBackbone] = {}


def dino_backbone(cfg: CamConfig, device: torch.device) -> DinoBackbone:
    """The DINO model of ``cfg`` on ``device``, built once per process."""
    key = (cfg.dino_model, cfg.dino_weights, str(device))
    if key not in _DINO:
        _DINO.clear()  # one at a time: a second model would only hold memory
        _DINO[key] = load_model("dino", DinoSpec(cfg.dino_model, cfg.dino_weights), device)
    return _DINO[key]


def caa_transition(bb: ClipBackbone, tokens: ImageTokens, attn_last: torch.Tensor, cfg: CamConfig,
                   image: np.ndarray | None, dino: DinoBackbone | None = None) -> torch.Tensor:
    """CAA's ``[hw, hw]`` float32 transition matrix from the attention ``cfg.affinity`` names, times SSR's group
    mask with ``--refine caa+sgc``. The default (clip, caa) is CLIP-ES's matrix, bit for bit."""
    blocks = cfg.attention_blocks or tokens.n_prev + 1  # a library call may leave it to the tokens' own count
    att = caa_attention(tokens, attn_last, blocks, bb.n_blocks, bb.n_prefix)
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



def caa_attention(tokens: ImageTokens, attn_last: torch.Tensor, wanted: int, n_blocks: int,
                  n_prefix: int = 1) -> torch.Tensor:
    """``[hw, hw]``: the mean over the last ``wanted`` blocks of the head-mean attention without CLS (the earlier
    blocks' mean + the last block's own ``attn_last`` ``[n_prefix + hw, n_prefix + hw]``, ``n_prefix`` the tokens
    before the patches: the class token, none for SigLIP 2); CLIP-ES averages the last 8."""
    n = n_prefix
    if tokens.attention is not None and tokens.attention.ndim == 3:
        # the maps themselves (--parity clip-es): one mean of all, CLIP-ES's rounding
        if _blocks_averaged(tokens.n_prev, wanted, n_blocks, tokens.source) == 1:
            return attn_last[n:, n:]
        return torch.cat([tokens.attention.to(attn_last), attn_last[None, n:, n:]]).mean(0)
    return mean_attention(tokens.attention, tokens.n_prev, attn_last, wanted, n_blocks, tokens.source, n)


def mean_attention(prev: torch.Tensor | None, n_prev: int, attn_last: torch.Tensor, wanted: int | None,
                   n_blocks: int, source: str = "the extract folder", n_prefix: int = 1) -> torch.Tensor:
    """CAA's attention ``[..., hw, hw]`` (one image or a batch): ``prev`` ``[..., hw, hw]`` is the mean of the
    ``n_prev`` blocks before the last, ``attn_last`` ``[..., n_prefix + hw, n_prefix + hw]`` the last block's map
    (``n_prefix`` rows and columns before the patches: the class token). Elementwise, so a batch gives the values of
    its images alone."""
    n = n_prefix
    if _blocks_averaged(n_prev, wanted, n_blocks, source) == 1:  # the last block's own map: no cache needed
        return attn_last[..., n:, n:]
    return (prev.to(attn_last) * n_prev + attn_last[..., n:, n:]) / (n_prev + 1)


def _blocks_averaged(n_prev: int, wanted: int | None, n_blocks: int, source: str) -> int:
    """How many blocks CAA averages: ``wanted`` (None: what extract averaged, ``n_prev + 1``), capped at the
    model's depth; 1, or exactly what extract cached, else a one-line error with the fix."""
    wanted = n_prev + 1 if wanted is None else min(wanted, n_blocks)
    if wanted not in (1, n_prev + 1):
        raise ContractError(f"{source}: extract averaged {n_prev + 1} attention blocks, cam asks for {wanted}; re-run "
                            f"extract with --attention-blocks {wanted}, or drop cam's --attention-blocks (or pass 1: "
                            "the last block alone)")
    return wanted



"""The training-free segmentor around a dense backbone (:mod:`vpltool.models.dense`): slide inference, per-query
cosine logits at image size, probabilities with synonyms and a background threshold, and PAMR.

What MaskCLIP / SCLIP / ClearCLIP / NACLIP's segmentors do (``clip_segmentor.py``, ``clearclip_segmentor.py``,
``naclip.py``), as pure functions shared by `segment`, `cam`'s dense seeds and `predict --classes --dense`:

1. :func:`short_side_size`: mmseg's ``Resize(scale=(L, S), keep_ratio=True)`` (``L`` 2048, TextRegion's 1008): the
   image scaled by ``min(L / long, S / short)``, each side ``int(side * f + 0.5)``.
2. :func:`dense_logits`: windows of ``crop x crop`` every ``stride`` pixels (mmseg's slide: the last window flush with
   the border; ``crop`` 0: the whole image). Per window the patch features are L2-normalised and their cosine with
   each unit text row is resized bilinearly (align_corners False) to the window, summed into the image and divided
   by the window count, then resized bilinearly to the image's own size. A window that is no multiple of the patch
   size is padded with zeros to the next multiple (ClearCLIP's ``compute_padsize``, ``pad=True``), or its remainder
   is dropped by the patch convolution and the grid stretched over the whole window (SCLIP, NACLIP).
3. :func:`pamr` (NACLIP; SCLIP's option): Pixel-Adaptive Mask Refinement on the logits, with the normalised input
   resized back to the image as guide.
4. :func:`dense_probabilities`: ``softmax(logit_scale * cos)`` over the queries, a class's probability the max over its
   queries (synonyms; background words are queries of class 0), SCLIP's area filter, argmax, and pixels whose top
   probability is below ``prob_threshold`` go to class 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ...config.dense import SAM_REFINE_FIELDS
from ...device import autocast
from ...ops.sizes import keep_ratio_size
from ...runtime.heap import KEEP_FREED, keep_freed_memory
from .bands import (
    WHOLE_BUDGET,
    banded_probabilities,
    class_probabilities,
    enlarge,
    logit_bands,
    whole_bytes,
    working_size,
)

MMSEG_LONG_EDGE = 2048  # the methods' configs: Resize(scale=(2048, short), keep_ratio=True)


def short_side_size(height: int, width: int, short: int, long: int = MMSEG_LONG_EDGE) -> tuple[int, int]:
    """``(H, W)`` after mmseg's keep-ratio resize to short side ``short`` (long side at most ``long``), each side at
    least 32 pixels (:func:`vpltool.ops.sizes.keep_ratio_size`)."""
    return keep_ratio_size(height, width, short, long)


def window_starts(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's slide windows along one axis: ``(start, end)`` pairs, the last flush with the border; one window
    ``(0, size)`` when the image is no larger than ``crop``."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        end = min(i * stride + crop, size)
        out.append((max(end - crop, 0), end))
    return out


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's slide windows over a ``height x width`` image: ``(y1, y2, x1, x2)`` row by row, each axis's as
    :func:`window_starts` (the last flush with the border, one where the side is no larger than ``crop``)."""
    return [(y1, y2, x1, x2) for y1, y2 in window_starts(height, crop, stride)
            for x1, x2 in window_starts(width, crop, stride)]


def pad_size(height: int, width: int, patch: int) -> tuple[int, int, int, int]:
    """ClearCLIP's ``compute_padsize``: ``(left, right, top, bottom)`` zeros up to the next multiple of ``patch``,
    the odd pixel at the right / bottom."""
    lr = (patch - width % patch) % patch
    tb = (patch - height % patch) % patch
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


def stride_multiple_input(pixels: torch.Tensor, stride: int, crop: int) -> torch.Tensor:
    """Trident's ``preprocess_image`` and RADSeg's ``_preprocess_image`` (the same arithmetic): ``[B, 3, H, W]``
    pixels whose sides are not both multiples of ``stride`` resized bilinearly (align_corners False) so that the
    long side is the next multiple, the short one in proportion (truncated), each then rounded up to a multiple
    and to at least ``crop``; others pass as they are."""
    h, w = pixels.shape[-2:]
    if h % stride == 0 and w % stride == 0:
        return pixels
    longer = max(h, w)
    target = longer if longer % stride == 0 else (longer // stride + 1) * stride
    nh, nw = int(h * target / longer), int(w * target / longer)
    nh, nw = [s if s % stride == 0 else (s // stride + 1) * stride for s in (nh, nw)]
    return F.interpolate(pixels, (max(nh, crop), max(nw, crop)), mode="bilinear", align_corners=False)


def grid_logits(bb, pixels: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 3, H, W]`` normalised pixels -> ``[B, Q, h, w]`` cosine of each patch with each unit row of ``text``
    ``[Q, D]`` (the remainder of a side that is no patch multiple dropped, as the patch convolution does).

    The method's ``grid_logits`` hook (:class:`~vpltool.models.dense.DenseHooks`; CASS's object presence, with
    ``image`` ``[B, D]`` the whole input's embedding of each window, or (None) each window's own)."""
    p = bb.patch_size
    h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
    logits = bb.hooks.grid_logits(bb, pixels, text, image)  # [B, hw, Q]
    h, w = bb.feature_grid((h * p, w * p))  # ProxyCLIP: the proxy model's grid
    return logits.transpose(1, 2).reshape(len(pixels), -1, h, w)


def window_logits(bb, pixels: torch.Tensor, text: torch.Tensor, pad: bool, multiple: int = 0,
                  image: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 3, H, W]`` windows -> ``[B, Q, H, W]`` cosine logits resized to the window (see module docstring);
    ``pad`` to a multiple of ``multiple`` pixels (0: the patch size; ProxyCLIP 56). ``image``: CASS's
    whole-input embedding per window (:func:`grid_logits`)."""
    height, width = pixels.shape[-2:]
    if pad:
        left, right, top, bottom = pad_size(height, width, multiple or bb.patch_size)
        if left or right or top or bottom:
            padded = F.pad(pixels, (left, right, top, bottom))
            logits = F.interpolate(grid_logits(bb, padded, text, image), size=padded.shape[-2:], mode="bilinear",
                                   align_corners=False)
            return logits[..., top : top + height, left : left + width]
    return F.interpolate(grid_logits(bb, pixels, text, image), size=(height, width), mode="bilinear",
                         align_corners=False)


def input_embedding(bb, pixels: torch.Tensor) -> torch.Tensor | None:
    """The whole input's embedding a method gives its windows (its ``input_embedding`` hook: CASS's) ``[B, D]``;
    None for the other methods."""
    return bb.hooks.input_embedding(bb, pixels)


def dense_logits(bb, pixels: torch.Tensor, text: torch.Tensor, sizes: Sequence[tuple[int, int]], crop: int,
                 stride: int, pad: bool = False, whole: str = "input", pad_multiple: int = 0) -> list[torch.Tensor]:
    """Slide inference of a batch: per image ``[Q, H0, W0]`` float32 cosine logits at its own size.

    Args:
        bb: a :class:`~vpltool.models.ClipBackbone` (its ``--dense`` method mixes the last block).
        pixels: ``[B, 3, H, W]`` float32 CLIP-normalised, the images resized (:func:`short_side_size`).
        text: ``[Q, D]`` unit query rows.
        sizes: each image's ``(H0, W0)``.
        crop, stride: the window; ``crop`` 0: the whole image in one forward.
        pad: zero-pad a window to a patch multiple (ClearCLIP; ``pad_multiple`` pixels when not 0: ProxyCLIP's 56)
            instead of dropping the remainder.
        whole: with ``crop`` 0, ``input``: the logits resized to the input, then to the image (NACLIP);
            ``direct``: the patch grid's logits resized to the image at once (SCLIP's and ClearCLIP's
            ``forward_feature(img, ori_shape)``).

    All windows of a batch have one size, so they run as one forward; nothing waits for the device. This is the
    default of the ``dense_logits`` hook (:class:`~vpltool.models.dense.DenseHooks`), which :func:`segment_logits`
    calls: a method with a segmentor of its own (Trident) replaces it there. The last resize, per image, is
    :func:`source_logits`'s output resized bilinearly to its size (what :mod:`vpltool.models.dense.bands` does a band of
    columns at a time).
    """
    return [F.interpolate(s[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
            for s, size in zip(source_logits(bb, pixels, text, crop, stride, pad, whole, pad_multiple), sizes)]


def source_logits(bb, pixels: torch.Tensor, text: torch.Tensor, crop: int, stride: int, pad: bool = False,
                  whole: str = "input", pad_multiple: int = 0) -> list[torch.Tensor]:
    """:func:`dense_logits` before its last resize: per image ``[Q, h, w]`` float32, the logits at the input's
    size (slide windows averaged, or NACLIP's whole input) or at the patch grid (``whole`` ``direct``)."""
    b, _, height, width = pixels.shape
    if crop <= 0:
        if whole == "direct":
            return list(grid_logits(bb, pixels, text))
        return list(window_logits(bb, pixels, text, pad=False))
    rows, cols = window_starts(height, crop, stride), window_starts(width, crop, stride)
    boxes = [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
    windows = torch.cat([pixels[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes])  # [n * B, 3, ch, cw]
    # CASS: one window covering the input has the input's embedding as its own (no second forward of it)
    image = input_embedding(bb, pixels) if len(boxes) > 1 else None
    logits = window_logits(bb, windows, text, pad, pad_multiple,
                           None if image is None else image.repeat(len(boxes), 1))
    full = logits.new_zeros(b, logits.shape[1], height, width)
    count = logits.new_zeros(1, 1, height, width)
    for n, (y0, y1, x0, x1) in enumerate(boxes):
        full[:, :, y0:y1, x0:x1] += logits[n * b : (n + 1) * b]
        count[:, :, y0:y1, x0:x1] += 1
    return list(full / count)


def guide_image(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PAMR's guide: one image's normalised input ``[3, H, W]`` resized bilinearly to ``size`` -> ``[1, 3, H0, W0]``
    (as NACLIP's ``predict``)."""
    return F.interpolate(pixels[None].float(), size=tuple(size), mode="bilinear", align_corners=False)


def _shifted(x: torch.Tensor, d: int, centre: bool) -> torch.Tensor:
    """``[B, K, H, W]`` -> ``[B, K, P, H, W]``: the values at the 8 neighbours (and the centre when ``centre``) at
    dilation ``d``, borders replicated."""
    height, width = x.shape[-2:]
    xp = F.pad(x, (d, d, d, d), mode="replicate")
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if centre or (dy, dx) != (0, 0)]
    return torch.stack([xp[..., d + dy * d : d + dy * d + height, d + dx * d : d + dx * d + width]
                        for dy, dx in offsets], dim=2)


def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16)
         ) -> torch.Tensor:
    """Pixel-Adaptive Mask Refinement (Araslanov & Roth, CVPR 2020; the ``pamr.py`` NACLIP and SCLIP ship).

    Args:
        image: ``[B, 3, H, W]`` the guide (normalised pixels).
        logits: ``[B, C, h, w]`` scores, resized bilinearly (align_corners True) to ``H x W`` first.
        steps: propagation steps. dilations: the neighbourhood rings (8 neighbours each).

    The affinity of a pixel to each of its ``8 * len(dilations)`` neighbours is
    ``softmax_n(mean_channels(-|x - x_n| / (1e-8 + 0.1 * std)))``, ``std`` the unbiased standard deviation of the
    pixel's value over its ``9 * len(dilations)`` neighbourhood (centre included once per ring); each step replaces
    the scores by the affinity-weighted sum of the neighbours' scores. Returns ``[B, C, H, W]``.
    """
    mask = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)
    std = torch.cat([_shifted(image, d, True) for d in dilations], dim=2).std(2, keepdim=True)
    diff = torch.cat([(image[:, :, None] - _shifted(image, d, False)).abs() for d in dilations], dim=2)
    affinity = F.softmax((-diff / (1e-8 + 0.1 * std)).mean(1, keepdim=True), dim=2)  # [B, 1, P, H, W]
    for _ in range(steps):
        mask = _propagate(mask, affinity, dilations)
    return mask


def _propagate(mask: torch.Tensor, affinity: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """One PAMR step: ``sum_n affinity_n * mask(neighbour n)``, neighbour by neighbour in :func:`_shifted`'s order,
    so that no ``[B, C, P, H, W]`` tensor is made (81 COCO classes at VOC size would need ~1 GB)."""
    height, width = mask.shape[-2:]
    out, n = None, 0
    for d in dilations:
        xp = F.pad(mask, (d, d, d, d), mode="replicate")
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) == (0, 0):
                    continue
                term = xp[..., d + dy * d : d + dy * d + height, d + dx * d : d + dx * d + width] * affinity[:, :, n]
                out = term if out is None else out + term
                n += 1
    return out


def dense_probabilities(logits: torch.Tensor, query_class: torch.Tensor, n_classes: int, logit_scale: float,
                        prob_threshold: float, area_threshold: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's ``[Q, H, W]`` cosine logits -> (``[C, H, W]`` class probabilities, ``[H, W]`` int64 labels).

    ``area_threshold`` (SCLIP): a foreground class whose argmax area is at most that share of all foreground
    argmax pixels has its probability set to 0 before the final argmax. Pixels whose top probability is below
    ``prob_threshold`` are labelled 0 (background).
    """
    probs = class_probabilities(logits, query_class, n_classes, logit_scale)
    if area_threshold is not None:
        # the argmax area of each class, by comparison (F.one_hot checks its input's range: a wait for the device)
        top = probs.argmax(0)
        area = (top[None] == torch.arange(n_classes, device=top.device)[:, None, None]).flatten(1).sum(1)
        area = area[1:].to(probs.dtype)  # [C - 1]
        keep = (area > area_threshold * area.sum()).to(probs.dtype)
        probs = torch.cat([probs[:1], probs[1:] * keep[:, None, None]])
    top, labels = probs.max(0)
    labels = torch.where(top < prob_threshold, torch.zeros_like(labels), labels)
    return probs, labels




def query_rows(bb, classes: Sequence[Sequence[str]], templates: Sequence[str], background: Sequence[str]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The segmentor's text queries: one row per name (each synonym of a class its own query, as the methods'
    class files), then one per background word (class 0), each the normalised mean of its normalised prompts.

    Args:
        classes: per foreground class 1..C, its names (the first is the class's name, the rest synonyms).
        templates: prompt templates with ``{}``. background: background words.

    Returns:
        ``[Q, D]`` float32 unit rows (on the host; a method's ``query_text`` hook may give its own form) and ``[Q]``
        int64 their classes (0 = background).
    """
    names = [n for syn in classes for n in syn] + list(background)
    owner = [c for c, syn in enumerate(classes, start=1) for _ in syn] + [0] * len(background)
    return bb.hooks.query_text(bb, names, templates), torch.tensor(owner, dtype=torch.long)


def segment_logits(bb, pixels: torch.Tensor, text: torch.Tensor, settings, sizes: Sequence[tuple[int, int]],
                   extras: list[dict] | None = None) -> list[torch.Tensor]:
    """The method's ``dense_logits`` hook (by default :func:`dense_logits`) with its
    :class:`~vpltool.config.DenseSettings`, then its PAMR (when ``pamr_steps``) guided by each image's input resized
    back to it. Per image ``[Q, H0, W0]`` float32. ``extras``: per image its ``extra_inputs`` by key (Trident:
    ``{"sam": ...}``, :func:`~vpltool.models.dense.trident.sam_image`), which the hook may add to."""
    if extras is None:
        extras = [{} for _ in sizes]
    logits = bb.hooks.dense_logits(bb, pixels, text, sizes, settings, extras)
    if not settings.pamr_steps:
        return logits
    return [pamr(guide_image(pixels[i], size), lg[None], settings.pamr_steps, settings.pamr_dilations)[0]
            for i, (lg, size) in enumerate(zip(logits, sizes))]



def photo_logits(bb, pixels: torch.Tensor, text: torch.Tensor, settings, sizes: Sequence[tuple[int, int]],
                 extras: list[dict] | None = None, budget: int | None = None) -> list:
    """:func:`segment_logits` in bounded memory: per image, its ``[Q, H0, W0]`` logits when the whole computation
    needs at most ``budget`` bytes (:data:`~vpltool.models.dense.bands.WHOLE_BUDGET`; a method with a ``dense_logits``
    hook of its own always, ``extras`` given to it), else a function that starts a pass over them in column bands
    (``(x0, x1, [Q, x1 - x0, H0])``, :func:`~vpltool.models.dense.bands.logit_bands`: the same arithmetic)."""
    budget = WHOLE_BUDGET if budget is None else budget
    steps = settings.pamr_steps
    if bb.hooks.own_segmentor or all(whole_bytes(len(text), h, w, steps) <= budget for h, w in sizes):
        return segment_logits(bb, pixels, text, settings, sizes, extras)
    sources = source_logits(bb, pixels, text, settings.slide_crop, settings.slide_stride,
                            pad=settings.crop_mode == "pad", whole=settings.whole, pad_multiple=settings.pad_multiple)
    out = []
    for i, (src, size) in enumerate(zip(sources, sizes)):
        # a photo smaller than the model's input is computed whole: torch's kernel shrinking rows is not separable
        if whole_bytes(len(text), *size, steps) <= budget or src.shape[-2] > size[0] or src.shape[-1] > size[1]:
            lg = F.interpolate(src[None], size=tuple(size), mode="bilinear", align_corners=False)
            out.append(pamr(guide_image(pixels[i], size), lg, steps, settings.pamr_dilations)[0] if steps else lg[0])
        else:
            keep_freed_memory(KEEP_FREED, KEEP_FREED)  # a band's tensors reuse the last band's pages
            out.append(partial(logit_bands, src.float(), tuple(size), pixels[i].float() if steps else None, steps,
                               settings.pamr_dilations))
    return out


def scores_batch(bb, pixels: torch.Tensor, text: torch.Tensor, query_class: torch.Tensor,
                 n_classes: int, settings, sizes: Sequence[tuple[int, int]], dtype: torch.dtype,
                 extras: Sequence[dict] | None = None, scores: bool = True, budget: int | None = None
                 ) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
    """B images of one input size (``[B, 3, H, W]`` normalised, :func:`dense_input` then ``bb.pixels``) -> per
    image ``([C, H0, W0]`` float32 class probabilities in [0, 1] (without ``scores``: those the method made anyway, at
    the photo's size, else None), ``[H0, W0]`` int64
    labels, 0 = background``)`` on the device, at each image's size ``sizes[i]``, after the method's
    ``postprocess`` hook (Trident's ``--sam-refine``). ``extras``: per image its ``extra_inputs`` (copied: the hooks
    may add to them). The per-image work of `segment` (:func:`vpltool.stages._masks.dense_masks`, which checks
    and writes it) and of :class:`vpltool.api.Segmenter`:
    one function, so a photo segmented from Python gets the CLI's mask. A photo too large to compute whole in
    ``budget`` bytes is computed in column bands (:func:`photo_logits`). Under ``settings.max_side`` a larger photo
    is computed at its :func:`~vpltool.models.dense.bands.working_size`, and its labels (and scores) enlarged,
    nearest."""
    extras = [dict(e) for e in extras] if extras is not None else [{} for _ in sizes]
    post = bb.hooks.own_postprocess
    work = [working_size(h, w, settings.max_side) for h, w in sizes]
    with torch.no_grad(), autocast(bb.device, dtype):
        logits = photo_logits(bb, pixels, text, settings, work, extras, budget)
    out = []
    for i, lg in enumerate(logits):
        if isinstance(lg, torch.Tensor):
            probs, labels = bb.hooks.probabilities(bb, lg.float(), query_class, n_classes, settings)
        else:
            with torch.no_grad(), autocast(bb.device, dtype):
                probs, labels = banded_probabilities(lg, work[i], query_class, n_classes, settings.logit_scale,
                                                     settings.prob_threshold, settings.area_threshold,
                                                     scores or post)
        if post:
            probs, labels = bb.hooks.postprocess(bb, probs, labels, extras[i], settings)
        if work[i] != tuple(sizes[i]):
            labels = enlarge(labels, sizes[i])
            probs = enlarge(probs, sizes[i]) if scores else None
        out.append((probs, labels))  # without ``scores``, what the method made anyway (the writer checks them)
    return out


def dense_input(pre, image: np.ndarray, size: tuple[int, int], extras: dict | None = None) -> dict:
    """What one decoded ``[H0, W0, 3]`` uint8 image sends to the device for an input of ``size`` ``(H, W)``
    (:meth:`~vpltool.models.backbones.preprocess.Preprocess.loaded`), with what the method adds per image (``extras``:
    its ``extra_inputs`` hook's, by key; Trident: ``sam``). Collated into a batch, ``bb.pixels(batch["pixels"], size)``;
    :func:`batch_extras` gives each image's back."""
    return {"pixels": pre.loaded(image, size), **(extras or {})}


def batch_extras(batch: dict, n: int) -> list[dict]:
    """A collated batch of :func:`dense_input` dicts -> per image (``n``) its extras by key (all but ``pixels`` and
    the loader's ``index``)."""
    keys = [k for k in batch if k not in ("pixels", "index")]
    return [{k: batch[k][i] for k in keys} for i in range(n)]


def settings_params(settings) -> dict:
    """A :class:`~vpltool.config.DenseSettings` as recorded (JSON: tuples as lists, so a resume compares equal)."""
    refine = getattr(settings, "sam_refine", False)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()
            if not (k in ("pad_multiple", "max_side") and not v)  # 0 (the default) recorded as before the field
            and not (k == "long_side" and v == MMSEG_LONG_EDGE)  # likewise mmseg's 2048, the older methods' own
            and not (k in SAM_REFINE_FIELDS and not refine)}  # likewise the refinement's, when it is off


__all__ = ["short_side_size", "window_starts", "slide_windows", "pad_size", "stride_multiple_input", "grid_logits",
           "window_logits",
           "dense_logits", "guide_image", "pamr", "class_probabilities", "dense_probabilities", "MMSEG_LONG_EDGE",
           "query_rows", "segment_logits", "source_logits", "photo_logits", "scores_batch", "dense_input",
           "batch_extras", "settings_params"]

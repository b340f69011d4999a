"""Numeric rules that several stages share, each written once (numpy at import: the CRF workers never load torch).

* Maps: :func:`minmax`, :func:`gradcam_scale` (CLIP-ES's GradCAM scaling), :func:`upsample` (torch tensors).
* CLIP-ES's background rule ``(1 - max_k cam_k)^a`` (:func:`background_score`), used by `eval`, `crf` and
  `learn-prototypes`, and the label maps built from it (:func:`cams_to_labels`).
* The dense CRF's inputs and outputs in CLIP-ES's ``eval_cam_with_crf.py`` (:func:`crf_probabilities`,
  :func:`clip_es_image`, :func:`pseudo_labels`); the CRF itself is :mod:`vpltool.ops.densecrf`.
* The VOC/COCO confusion matrix and mIoU (`eval`, `train-decoder`'s validation, the demo report, `diagnose`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import IGNORE_INDEX, CrfConfig
from ..errors import ContractError, VplError

CLIP_ES_BGR_MEAN = (104.008, 116.669, 122.675)  # deeplab-pytorch's Caffe means, B, G, R


# --------------------------------------------------------------------------------------------- maps (torch)
def minmax(maps: Any, eps: float = 1e-7) -> Any:
    """Per-map ``(m - min) / (max - min + eps)`` over the last two dims of a torch tensor (CLIP-ES
    ``scale_cam_image``); an all-zero map stays zero."""
    flat = maps.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    flat = flat - lo
    return (flat / (flat.max(-1, keepdim=True).values + eps)).view_as(maps)


def gradcam_scale(maps: Any) -> Any:
    """CLIP-ES's GradCAM scaling: :func:`minmax` twice.

    pytorch_grad_cam (``base_cam.py``) scales once per target layer and again after the mean over layers. With one
    layer the second pass only matters when the raw maximum is tiny: at a raw range of 1.4e-6 the first pass's
    1e-7 leaves the maximum at 0.93, the second brings it to 1.
    """
    return minmax(minmax(maps))


def upsample(maps: Any, size: tuple[int, int]) -> Any:
    """``[K, h, w]`` -> ``[K, H, W]`` torch, bilinear with half-pixel centres (like cv2.resize), clamped to [0, 1]."""
    import torch
    import torch.nn.functional as F

    if len(maps) == 0:
        return torch.zeros(0, *size)
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)


# --------------------------------------------------------------------------------------------- background rule
def background_score(fg: Any, exponent: float) -> Any:
    """CLIP-ES's background score ``(1 - max_k cam_k)^a`` from the per-pixel foreground maximum ``fg``.

    Args:
        fg: the max over an image's CAMs, numpy or torch, values in [0, 1].
        exponent: ``a`` > 0; larger values shrink the background score (CLIP-ES tries 1 and 2 in eval, 1 in crf).

    Returns:
        Same type and shape. A numpy float16 ``fg`` is computed in float16 without clipping, CLIP-ES's own
        arithmetic on its float16 files (``--parity clip-es``); otherwise ``1 - fg`` is clipped to [0, 1] first
        (float16 rounding just above 1 would give NaN for ``a < 1``).
    """
    if isinstance(fg, np.ndarray) and fg.dtype == np.float16:
        return np.power(1 - fg, exponent)
    return (1 - fg).clip(0, 1) ** exponent


def cams_to_labels(cams: np.ndarray, labels: Sequence[int], bg_exponent: float, fp16: bool = False) -> np.ndarray:
    """Label map from CAMs with the CLIP-ES background score ``(1 - max_k cams)^a``.

    Args:
        cams: [K, H, W] float in [0, 1], one map per image-level label.
        labels: K class ids (1..C) of the maps, in the order of ``cams``.
        bg_exponent: ``a``; larger values shrink the background score and so grow the foreground.
        fp16: CLIP-ES's ``eval_cam.py`` arithmetic (float16, as its CAM files); default float32.

    Returns:
        [H, W] uint8, 0 = background else a value of ``labels``; ties go to background (CLIP-ES argmax order).
    """
    fg_score, fg_label = best_foreground(np.asarray(cams), labels, fp16)
    return with_background(fg_score, fg_label, bg_exponent)


def best_foreground(cams: np.ndarray, labels: Sequence[int], fp16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] max CAM score (float32, or float16 with ``fp16``) and [H, W] uint8 class id of that max; computed
    once per image for all exponents."""
    if cams.ndim != 3 or cams.shape[0] != len(labels):
        raise ContractError(f"CAMs must be [K, H, W] with K = {len(labels)} labels, got {tuple(cams.shape)}")
    dtype = np.float16 if fp16 else np.float32  # float16 files are upcast unless CLIP-ES's own arithmetic is asked
    if cams.shape[0] == 0:  # no image-level label: everything is background
        return np.zeros(cams.shape[1:], dtype), np.zeros(cams.shape[1:], np.uint8)
    ids = np.asarray(labels, dtype=np.int64)
    if ids.min() < 1 or ids.max() > 254:  # 0 is background, 255 ignore, and the result is uint8
        raise ContractError(f"CAM labels must be class ids in 1..254, got {ids.tolist()}")
    cams = cams.astype(dtype, copy=False)
    return cams.max(0), ids.astype(np.uint8)[cams.argmax(0)]


def with_background(fg_score: np.ndarray, fg_label: np.ndarray, bg_exponent: float) -> np.ndarray:
    """Argmax over ``[bg, cams]`` reduced to one comparison: foreground wins only if strictly above background."""
    return np.where(fg_score > background_score(fg_score, bg_exponent), fg_label, 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------- dense-CRF inputs
def crf_probabilities(cams: np.ndarray, bg_exponent: float = CrfConfig.bg_exponent, fp16: bool = False
                      ) -> np.ndarray:
    """CLIP-ES's class scores: a background row ``(1 - max_k cams)^a`` stacked on the CAMs.

    Args:
        cams: ``[K, H, W]`` float in [0, 1], one map per image-level label (K may be 0).
        bg_exponent: ``a`` > 0; larger values shrink the background score.
        fp16: compute in float16 as CLIP-ES does on its fp16 CAM files (``--parity clip-es``); the default computes
            in float32, so the background row is not rounded to 11 bits.

    Returns:
        ``[K + 1, H, W]`` in [0, 1] (float32, or float16 with ``fp16``), row 0 = background; rows are *not*
        normalised to sum to 1.
    """
    dtype = np.float16 if fp16 else np.float32  # CLIP-ES: eval_cam_with_crf.py:crf, on its float16 files
    cams = np.asarray(cams, dtype=dtype)
    if cams.ndim != 3:
        raise ValueError(f"cams must be [K, H, W], got shape {cams.shape}")
    fg = cams.max(0) if len(cams) else np.zeros(cams.shape[1:], dtype)
    bg = background_score(fg, bg_exponent if fp16 else np.float32(bg_exponent))
    return np.concatenate([bg[None], cams]).astype(dtype, copy=False)


def clip_es_image(rgb: np.ndarray) -> np.ndarray:
    """The image CLIP-ES's CRF sees: ``uint8(BGR - (104.008, 116.669, 122.675))``, negative values wrapped.

    CLIP-ES casts float32 to uint8, which on x86 numpy truncates toward zero and wraps modulo 256
    (-104.008 -> 152, -1.5 -> 255). Done explicitly here so the result does not depend on the platform's
    undefined float-to-unsigned cast.

    Args:
        rgb: ``[H, W, 3]`` uint8 RGB.

    Returns:
        ``[H, W, 3]`` uint8, channels B, G, R.
    """
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CLIP_ES_BGR_MEAN, np.float32)
    return np.ascontiguousarray((np.trunc(bgr).astype(np.int16) % 256).astype(np.uint8))


def pseudo_labels(scores: np.ndarray, labels: Sequence[int], confidence: float | None) -> np.ndarray:
    """Label map from per-class scores whose row 0 is background.

    Args:
        scores: ``[K + 1, H, W]`` float (CRF marginals Q, or :func:`crf_probabilities`).
        labels: K class ids in 1..254 of rows 1..K.
        confidence: pixels whose winning score is below it become 255; None or 0 = no ignore pixel.

    Returns:
        ``[H, W]`` uint8: 0 background, a value of ``labels``, or 255. Ties go to the first row (background first,
        like CLIP-ES's argmax and ``vpltool eval``).
    """
    if scores.ndim != 3 or scores.shape[0] != len(labels) + 1:
        raise ValueError(f"scores must be [K + 1, H, W] with K = {len(labels)}, got {scores.shape}")
    ids = np.asarray([0, *labels], dtype=np.int64)
    if ids[1:].size and (ids[1:].min() < 1 or ids[1:].max() > 254):
        raise ValueError(f"labels must be class ids in 1..254, got {list(labels)}")
    out = ids.astype(np.uint8)[scores.argmax(0)]
    if confidence:
        out[scores.max(0) < confidence] = IGNORE_INDEX
    return out


def refine_image(image: np.ndarray, cams: np.ndarray, labels: Sequence[int], cfg: CrfConfig = CrfConfig()
                 ) -> np.ndarray:
    """One pseudo mask as `crf` makes it with pydensecrf (CLIP-ES ``eval_cam_with_crf.py``), or its ``no_crf``
    argmax: ``P = [(1 - max_k cam_k)^a ; cams]``, the CRF's marginals, ``[0, labels...][argmax]``, 255 below
    ``cfg.confidence`` (:mod:`vpltool.stages.crf`; ``sam-pseudo`` starts from the same masks).

    Args:
        image: ``[H, W, 3]`` uint8 RGB photo.
        cams: ``[K, H, W]`` float in [0, 1] at image resolution.
        labels: K class ids of the maps.

    Returns:
        ``[H, W]`` uint8 mask (0 background, class ids, 255 ignore).
    """
    return refine_images(image, [cams], labels, cfg)[0]


def refine_images(image: np.ndarray, cams: Sequence[np.ndarray], labels: Sequence[int],
                  cfg: CrfConfig = CrfConfig()) -> list[np.ndarray]:
    """:func:`refine_image` of several CAM sets of one image and its K labels (``[K, H, W]`` each: e.g. two
    refinements' CAMs), the CRF's pairwise terms built once for all (:func:`vpltool.ops.densecrf.dense_crfs`): each
    mask is bit for bit the one :func:`refine_image` makes alone."""
    return [pseudo_labels(q, labels, None if cfg.no_crf else cfg.confidence) for q in crf_scores(image, cams, cfg)]


def crf_scores(image: np.ndarray, cams: Sequence[np.ndarray], cfg: CrfConfig = CrfConfig()) -> list[np.ndarray]:
    """The scores :func:`refine_images` labels, one ``[K + 1, H, W]`` float array per CAM set: the CRF's marginals
    Q, or with ``cfg.no_crf`` the probabilities P (:func:`crf_probabilities`). Labelled at two confidences
    (:func:`pseudo_labels`), one Q gives `crf`'s masks and `crf --confidence 0`'s (``crf --start-out``)."""
    from .densecrf import dense_crfs

    parity = cfg.parity == "clip-es"
    probs = [crf_probabilities(c, cfg.bg_exponent, fp16=parity) for c in cams]
    if cfg.no_crf:
        return probs
    return dense_crfs(clip_es_image(image) if parity else image, probs, cfg)


# --------------------------------------------------------------------------------------------- mIoU
def class_name_map(pred_classes: Sequence[str] | None, classes: Sequence[str], where: object) -> np.ndarray | None:
    """``[256]`` uint8 lookup from the predictions' class indices to the dataset's, by name (255 stays 255); None
    when they are the same list (an open-vocabulary `predict` records its own classes). VplError naming the
    predicted classes the dataset lacks."""
    if pred_classes is None or list(pred_classes) == list(classes):
        return None
    missing = [c for c in pred_classes if c not in classes]
    if missing:
        raise VplError(f"{where}: predicted classes {missing} are not classes of the dataset ({', '.join(classes)}); "
                       "score against a dataset that has them")
    lut = np.full(256, 255, np.uint8)
    lut[: len(pred_classes)] = [list(classes).index(c) for c in pred_classes]
    return lut


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, *, item: str | None = None) -> np.ndarray:
    """Pixel counts of (GT class, predicted class) for one image.

    Args:
        gt: [H, W] integer class ids; values outside ``[0, num_classes)`` (255) are ignored.
        pred: [H, W] integer class ids; values outside ``[0, num_classes)`` (255) are counted as wrong.
        num_classes: N, classes including background.
        item: image id, only to name the image in errors.

    Returns:
        [N, N + 1] int64; rows = GT, columns = prediction, column N = invalid predictions (no class's diagonal).
    """
    if gt.shape != pred.shape:
        name = f"image '{item}'" if item is not None else "mask"
        raise ContractError(
            f"{name}: prediction is {tuple(pred.shape)} but ground truth is {tuple(gt.shape)}; "
            "predictions must be at the resolution of the GT mask"
        )
    n = int(num_classes)
    gt = np.asarray(gt).ravel().astype(np.int64)  # int64 first: uint8 * (n + 1) would overflow
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = (gt >= 0) & (gt < n)
    gt, pred = gt[keep], pred[keep]
    pred = np.where((pred >= 0) & (pred < n), pred, n)  # never let 255 land in another class's bin
    return np.bincount(gt * (n + 1) + pred, minlength=n * (n + 1)).reshape(n, n + 1)


def scores(hist: np.ndarray) -> dict[str, Any]:
    """IoU and accuracies from a confusion matrix.

    Args:
        hist: [N, N + 1] from :func:`confusion_matrix` (last column = invalid predictions), or a plain [N, N].

    Returns:
        ``miou`` (mean IoU over classes present in GT), ``iou`` (list of N, None for classes absent from GT),
        ``pixel_accuracy`` (correct / all GT-labelled pixels), ``mean_accuracy`` (mean per-class recall over
        present classes), ``recall`` (list of N: TP / GT pixels of the class, None where absent from GT) and
        ``precision`` (list of N: TP / pixels predicted as the class, None where never predicted); fractions in
        [0, 1], None when GT holds no labelled pixel at all. Precision is what IoU hides when a class is both
        under- and over-segmented: masks that paint a same-coloured decoy as the class keep their recall and lose
        precision, and a decoder trained on them learns to paint decoys.
    """
    hist = np.asarray(hist, dtype=np.int64)
    n = hist.shape[0]
    if hist.ndim != 2 or hist.shape[1] not in (n, n + 1):
        raise ValueError(f"confusion matrix must be [N, N] or [N, N + 1], got {hist.shape}")
    tp = np.diag(hist[:, :n]).astype(np.float64)
    rows = hist.sum(1).astype(np.float64)  # includes invalid predictions: they are errors on that GT class
    cols = hist[:, :n].sum(0).astype(np.float64)
    present = rows > 0
    union = rows + cols - tp  # >= rowsum, so > 0 wherever the class is present
    iou = np.divide(tp, union, out=np.zeros(n), where=present)
    recall = np.divide(tp, rows, out=np.zeros(n), where=present)
    predicted = cols > 0
    precision = np.divide(tp, cols, out=np.zeros(n), where=predicted)
    total = rows.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else None,
        "iou": [float(v) if p else None for v, p in zip(iou, present)],
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "mean_accuracy": float(recall[present].mean()) if present.any() else None,
        "recall": [float(v) if p else None for v, p in zip(recall, present)],
        "precision": [float(v) if p else None for v, p in zip(precision, predicted)],
    }


# --------------------------------------------------------------------------------------------- accumulation
def image_scores(hist: np.ndarray) -> dict[str, Any]:
    """One image's figures from its own confusion matrix (:func:`confusion_matrix`): ``miou`` (mean IoU over the
    classes in its GT; a class predicted but absent from GT lowers the IoU of the GT classes it covers) and ``iou``
    (list of N, None for classes absent from its GT). The rule of :func:`scores`, applied to one image."""
    result = scores(hist)
    return {"miou": result["miou"], "iou": result["iou"]}


class MiouAccumulator:
    """Streaming confusion matrix over many images; memory is one [N, N + 1] matrix, whatever the dataset size.

    With ``per_image``, each image's own figures (:func:`image_scores`) are kept too, by ``item`` id, in
    ``images``: what `eval --per-image` writes and `vpltool report` shows per row.
    """

    def __init__(self, num_classes: int, per_image: bool = False):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.hist = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)
        self.n_images = 0
        self.images: dict[str, dict[str, Any]] | None = {} if per_image else None

    def add(self, gt: np.ndarray, pred: np.ndarray, *, item: str | None = None) -> None:
        """Count one [H, W] GT / prediction pair (see :func:`confusion_matrix`)."""
        hist = confusion_matrix(gt, pred, self.num_classes, item=item)
        self.hist += hist
        self.n_images += 1
        if self.images is not None:
            self.images[str(item if item is not None else self.n_images - 1)] = image_scores(hist)

    def result(self) -> dict[str, Any]:
        """:func:`scores` plus ``n_images`` and ``confusion`` ([N][N + 1] nested lists, JSON-able)."""
        return {**scores(self.hist), "n_images": self.n_images, "confusion": self.hist.tolist()}

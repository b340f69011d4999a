"""Confusion matrix and mIoU for masks and CAMs, in the VOC/COCO convention of CLIP-ES and WeCLIP.

* GT pixels outside ``[0, n)`` (255 = ignore) are dropped.
* Predicted values outside ``[0, n)`` (255 in CRF pseudo masks) are counted **wrong**: they go to an extra column
  ``n`` of the confusion matrix, which adds to the GT row's total but to no class's diagonal. CLIP-ES's
  ``_fast_hist`` would instead index a neighbouring bin, and dropping them would reward abstaining.
* ``IoU_c = TP / (rowsum + colsum - TP)``; ``mIoU`` = mean over classes present in GT (``rowsum > 0``).

CAM folders are scored like CLIP-ES's ``eval_cam.py``: background = ``(1 - max_k cam)^a``, argmax over
``[bg, cams]``, every ``a`` of ``EvalConfig.bg_exponents`` scored in one pass and the best reported.

All IoU and accuracy values are fractions in [0, 1] (``format_table`` shows percent). Numpy only at import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import EvalConfig
from .errors import ContractError, VplError
from .io import read_mask, read_tensors

if TYPE_CHECKING:
    from rich.table import Table


# --------------------------------------------------------------------------------------------- kernels
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
        ``pixel_accuracy`` (correct / all GT-labelled pixels) and ``mean_accuracy`` (mean per-class recall over
        present classes); fractions in [0, 1], None when GT holds no labelled pixel at all.
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
    total = rows.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else None,
        "iou": [float(v) if p else None for v, p in zip(iou, present)],
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "mean_accuracy": float(recall[present].mean()) if present.any() else None,
    }


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
    fg_score, fg_label = _best_foreground(np.asarray(cams), labels, fp16)
    return _with_background(fg_score, fg_label, bg_exponent)


def _best_foreground(cams: np.ndarray, labels: Sequence[int], fp16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """[H, W] max CAM score (float32, or float16 with ``fp16``) and [H, W] uint8 class id of that max; computed
    once per image for all ``a``."""
    if cams.ndim != 3 or cams.shape[0] != len(labels):
        raise ContractError(f"CAMs must be [K, H, W] with K = {len(labels)} labels, got {tuple(cams.shape)}")
    if cams.shape[0] == 0:  # no image-level label: everything is background
        return np.zeros(cams.shape[1:], np.float32), np.zeros(cams.shape[1:], np.uint8)
    ids = np.asarray(labels, dtype=np.int64)
    if ids.min() < 1 or ids.max() > 254:  # 0 is background, 255 ignore, and the result is uint8
        raise ContractError(f"CAM labels must be class ids in 1..254, got {ids.tolist()}")
    # float16 CAMs are upcast (no half arithmetic in the power below), unless CLIP-ES's own fp16 arithmetic is asked for
    cams = cams.astype(np.float16 if fp16 else np.float32, copy=False)
    ids = ids.astype(np.uint8)
    return cams.max(0), ids[cams.argmax(0)]


def _with_background(fg_score: np.ndarray, fg_label: np.ndarray, bg_exponent: float) -> np.ndarray:
    """Argmax over ``[bg, cams]`` reduced to one comparison: foreground wins only if strictly above background.

    A float16 ``fg_score`` is CLIP-ES's ``eval_cam.py`` arithmetic: ``np.power(1 - max, a)`` in float16.
    """
    if fg_score.dtype == np.float16:
        bg = np.power(1 - fg_score, bg_exponent)
        return np.where(fg_score > bg, fg_label, 0).astype(np.uint8)
    bg = np.clip(1.0 - fg_score, 0.0, 1.0) ** bg_exponent  # clip: fp16 rounding above 1 would give NaN for a < 1
    return np.where(fg_score > bg, fg_label, 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------- accumulation
class MiouAccumulator:
    """Streaming confusion matrix over many images; memory is one [N, N + 1] matrix, whatever the dataset size."""

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.hist = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)
        self.n_images = 0

    def add(self, gt: np.ndarray, pred: np.ndarray, *, item: str | None = None) -> None:
        """Count one [H, W] GT / prediction pair (see :func:`confusion_matrix`)."""
        self.hist += confusion_matrix(gt, pred, self.num_classes, item=item)
        self.n_images += 1

    def result(self) -> dict[str, Any]:
        """:func:`scores` plus ``n_images`` and ``confusion`` ([N][N + 1] nested lists, JSON-able)."""
        return {**scores(self.hist), "n_images": self.n_images, "confusion": self.hist.tolist()}


# --------------------------------------------------------------------------------------------- folders
def evaluate_masks(
    pred_dir: str | os.PathLike, gt_by_id: Mapping[str, Path], classes: Sequence[str], ids: Iterable[str]
) -> dict[str, Any]:
    """mIoU of a folder of label PNGs (``<pred_dir>/<id>.png``: pseudo masks or decoder predictions).

    Args:
        pred_dir: folder of [H, W] uint8 palette/grayscale PNGs; 255 counts as wrong.
        gt_by_id: image id -> GT mask PNG (255 = ignore).
        classes: class names, index 0 = background.
        ids: the images to score.

    Returns:
        ``miou``, ``iou`` {class name: value or None}, ``pixel_accuracy``, ``mean_accuracy``, ``n_images``,
        ``confusion`` (see :meth:`MiouAccumulator.result`).

    Raises:
        VplError: an id without GT or without a prediction file (checked for all ids before any pixel is read).
    """
    pred_dir = Path(pred_dir)
    ids = _check_inputs(pred_dir, ".png", gt_by_id, ids)
    acc = MiouAccumulator(len(classes))
    for item in ids:
        acc.add(read_mask(gt_by_id[item]), read_mask(pred_dir / f"{item}.png"), item=item)
    return _name_classes(acc.result(), classes)


def evaluate_cams(
    cam_dir: str | os.PathLike,
    gt_by_id: Mapping[str, Path],
    classes: Sequence[str],
    ids: Iterable[str],
    bg_exponents: Sequence[float] = EvalConfig.bg_exponents,
    parity: str = "none",
) -> dict[str, Any]:
    """mIoU of a CAM folder (``<cam_dir>/<id>.safetensors``) for each background exponent, best one reported.

    Each file is read once; one confusion matrix per exponent is filled from the same per-image max/argmax.

    Args:
        cam_dir: folder of ``cam`` files: ``cams`` [K, H, W] float in [0, 1] at GT resolution, ``labels`` [K] int64.
        gt_by_id: image id -> GT mask PNG (255 = ignore).
        classes: class names, index 0 = background; must match the files' ``vpltool.classes``.
        ids: the images to score.
        bg_exponents: values of ``a`` in ``bg = (1 - max cam)^a`` (CLIP-ES searches {1, 2}).
        parity: 'clip-es' computes the background score in float16 like CLIP-ES's ``eval_cam.py``; 'none' in
            float32.

    Returns:
        The :func:`evaluate_masks` keys for the best exponent, plus ``bg_exponent`` (the best ``a``; the first of
        equal ones) and ``by_exponent`` {a: miou}.
    """
    if not bg_exponents:
        raise VplError("no background exponent given; pass at least one value of --bg-exponents (e.g. 1,2)")
    cam_dir = Path(cam_dir)
    ids = _check_inputs(cam_dir, ".safetensors", gt_by_id, ids)
    accs = {float(a): MiouAccumulator(len(classes)) for a in bg_exponents}
    for item in ids:
        gt = read_mask(gt_by_id[item])
        fg_score, fg_label = _read_cam(cam_dir / f"{item}.safetensors", classes, item, gt.shape,
                                       fp16=parity == "clip-es")
        for a, acc in accs.items():
            acc.add(gt, _with_background(fg_score, fg_label, a), item=item)
    results = {a: acc.result() for a, acc in accs.items()}
    best = max(results, key=lambda a: -1.0 if results[a]["miou"] is None else results[a]["miou"])
    by_exponent = {a: r["miou"] for a, r in results.items()}
    return {**_name_classes(results[best], classes), "bg_exponent": best, "by_exponent": by_exponent}


def _read_cam(
    path: Path, classes: Sequence[str], item: str, gt_shape: tuple[int, ...], fp16: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Validated best foreground score/label of one CAM file (see :func:`_best_foreground`)."""
    f = read_tensors(path, kind="cam", classes=classes, keys=("cams", "labels"))
    cams = f["cams"].numpy()  # [K, H, W] as stored (float16)
    labels = [int(v) for v in f["labels"].reshape(-1).tolist()]
    if cams.ndim != 3 or cams.shape[0] != len(labels):
        raise ContractError(f"{path}: 'cams' {tuple(cams.shape)} does not match {len(labels)} labels; re-run `cam`")
    if any(not 1 <= c < len(classes) for c in labels):
        raise ContractError(f"{path}: labels {labels} outside 1..{len(classes) - 1}; re-run `cam` for this dataset")
    if cams.shape[1:] != tuple(gt_shape):
        raise ContractError(
            f"{path}: CAMs of image '{item}' are {cams.shape[1]}x{cams.shape[2]} but its GT is "
            f"{gt_shape[0]}x{gt_shape[1]}; CAMs must be saved at image resolution"
        )
    return _best_foreground(cams, labels, fp16)


def _check_inputs(folder: Path, suffix: str, gt_by_id: Mapping[str, Path], ids: Iterable[str]) -> list[str]:
    """The ids as a list, after checking every GT and prediction exists (fail before a long pass, not during)."""
    ids = list(ids)
    if not ids:
        raise VplError(f"{folder}: no images to evaluate; the id list is empty")
    no_gt = [i for i in ids if i not in gt_by_id or not Path(gt_by_id[i]).is_file()]
    if no_gt:
        raise VplError(f"no ground-truth mask for image '{no_gt[0]}'{_more(no_gt)}; add 'gt' to its manifest item")
    if not folder.is_dir():
        raise VplError(f"{folder}: folder not found; run the stage that writes it first")
    missing = [i for i in ids if not (folder / f"{i}{suffix}").is_file()]
    if missing:
        raise VplError(
            f"{folder}: no prediction for image '{missing[0]}' ({missing[0]}{suffix}){_more(missing)}; "
            "re-run the stage that writes this folder on the same manifest"
        )
    return ids


def _more(missing: list[str]) -> str:
    return f" and {len(missing) - 1} more" if len(missing) > 1 else ""


def _name_classes(result: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """Replace the per-class IoU list by {class name: IoU or None}."""
    return {**result, "iou": dict(zip(classes, result["iou"]))}


# --------------------------------------------------------------------------------------------- display
def format_table(result: Mapping[str, Any], classes: Sequence[str]) -> Table:
    """Per-class IoU table (percent, one decimal) with mIoU, accuracies and the chosen exponent as a caption."""
    from rich.table import Table  # lazy: metrics is imported by the CLI, which keeps `--help` light

    table = Table(title=f"mIoU {_pct(result.get('miou'))} over {result.get('n_images', '?')} images")
    table.add_column("id", justify="right", style="dim")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    iou = result.get("iou", {})
    for idx, name in enumerate(classes):
        value = iou.get(name) if isinstance(iou, Mapping) else iou[idx]
        table.add_row(str(idx), name, _pct(value) if value is not None else "[dim]absent[/]")
    caption = f"pixel acc {_pct(result.get('pixel_accuracy'))} · mean acc {_pct(result.get('mean_accuracy'))}"
    if "bg_exponent" in result:
        # float(): keys are strings once the result went through JSON
        tried = ", ".join(f"a={float(a):g}: {_pct(m)}" for a, m in result.get("by_exponent", {}).items())
        caption += f" · best bg exponent a={float(result['bg_exponent']):g} ({tried})"
    table.caption = caption
    return table


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


__all__ = [
    "confusion_matrix", "scores", "cams_to_labels", "MiouAccumulator", "evaluate_masks", "evaluate_cams",
    "format_table",
]


# --------------------------------------------------------------------------------------------- driver
def recorded_dataset(folder: Path) -> dict[str, Any] | None:
    """The dataset identity a stage recorded in ``folder/_stage.json`` (None if absent)."""
    from .io import read_json, stage_record_path

    path = stage_record_path(folder)
    if not path.is_file():
        return None
    return read_json(path).get("inputs", {}).get("dataset")


def run_eval(predictions: str | os.PathLike, *, data: str | os.PathLike | None = None, split: str | None = None,
             cfg: EvalConfig = EvalConfig(), json_out: str | os.PathLike | None = None,
             ids: Sequence[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Score a folder of masks (PNG) or CAMs (``cam`` stage output) against the dataset's ground truth.

    The dataset defaults to the one recorded by the stage that wrote ``predictions``; ``split`` overrides the
    recorded split. Returns ``(result, classes)`` and writes ``json_out`` atomically when given.
    """
    from .data import open_dataset
    from .io import read_json, stage_record_path, write_json

    folder = Path(predictions)
    if not folder.is_dir():
        raise VplError(f"{folder}: predictions folder not found")
    recorded = recorded_dataset(folder)
    if data is None:
        if recorded is None:
            raise VplError(f"{folder}: no _stage.json naming its dataset; pass --data ROOT (and --split)")
        data, split = recorded["root"], split or recorded.get("split")
    dataset = open_dataset(data, split)
    with_gt = {it.id: it.gt for it in dataset.items if it.gt is not None}
    if not with_gt:
        raise VplError(f"{data}: no ground-truth masks in split {split!r}; eval needs masks")
    ids = list(ids) if ids is not None else [it.id for it in dataset.items if it.gt is not None]
    record = read_json(stage_record_path(folder)) if stage_record_path(folder).is_file() else {}
    is_cam = record.get("stage") == "cam"
    if is_cam:
        parity = cfg.parity or record.get("params", {}).get("parity", "none")
        result = evaluate_cams(folder, with_gt, dataset.classes, ids, cfg.bg_exponents, parity)
        result["parity"] = parity
    else:
        result = evaluate_masks(folder, with_gt, dataset.classes, ids)
    result["kind"] = "cam" if is_cam else "mask"
    result["classes"] = list(dataset.classes)
    if json_out:
        write_json(json_out, result)
    return result, list(dataset.classes)

"""One row of the report per image: its thumbnails, its IoU at each stage, the data of its detail view.

Runs in worker processes (spawned, torch-free), one chunk of images per task; every file goes through
:mod:`vpltool.io`. An image's IoU follows `eval` exactly (the same readers, background rule and confusion matrix:
:func:`vpltool.ops.kernels.image_scores`), so a row's figure is the one ``eval --per-image`` writes.

Files per image (``<s>`` the split's index, ``<r>`` the row's):

* ``t/<s>/<r>.webp``: the table's thumbnails side by side (image, GT, then one per column), one request per row.
* ``d/<s>/<r>.webp``: the detail view's photo (none when the image is no larger than its thumbnail: the page then
  shows the thumbnail's); ``d/<s>/<r>.png``: its masks side by side (GT, then the mask columns), palette PNG (exact
  colours); ``d/<s>/<r>.js``: per-class IoU, per-class CAMs on a small grid (uint8, base64; the page upsamples them
  bilinearly and colours them), the CAA boxes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import io
from ...config import ReportConfig
from ...errors import ContractError
from ...ops.kernels import best_foreground, confusion_matrix, image_scores, with_background

MISSING_GREY = 200  # a thumbnail slot whose file is missing (the row says "—" over it)


@dataclass(frozen=True)
class ColumnSpec:
    """What a worker needs of a :class:`vpltool.stages.report.runs.Column` (picklable)."""

    name: str
    kind: str  # cam | mask
    folder: str
    bg_exponent: float | None
    fp16: bool
    n_values: int  # classes the mask's values index (an open-vocabulary predict records its own)
    lut: Any  # [256] uint8 or None
    debug: str | None


@dataclass(frozen=True)
class Task:
    """A chunk of one split's images: ``items`` are ``(row, id, image path, GT path or None, labels)``."""

    split: int
    out: str
    classes: tuple[str, ...]
    columns: tuple[ColumnSpec, ...]
    gt_slot: bool
    items: tuple[tuple[int, str, str, str | None, tuple[int, ...]], ...]
    cfg: ReportConfig


def fit(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """``(h, w)`` of an ``shape`` image shrunk (never grown) to ``long_side`` on its longer side."""
    h, w = shape
    scale = min(1.0, long_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    import cv2

    if array.shape[:2] == size:
        return array
    how = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(array, (size[1], size[0]), interpolation=how)


_JET: np.ndarray | None = None


def jet() -> np.ndarray:
    """``[256, 3]`` uint8 RGB: OpenCV's JET colour map (the contact sheets' and `cam --save-overlays`' colours);
    the page colours its per-class CAMs with the same table."""
    global _JET
    if _JET is None:
        import cv2

        _JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1].copy()
    return _JET


def heat_tile(photo: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """``[h, w, 3]`` uint8: ``photo`` under a JET map of the per-pixel maximum over classes of ``maps`` ``[K, h, w]``
    (0.45 photo + 0.55 heat, as the contact sheets)."""
    peak = maps.max(0) if len(maps) else np.zeros(photo.shape[:2], np.float32)
    heat = jet()[(np.clip(peak, 0, 1) * 255).astype(np.uint8)]
    return (0.45 * photo + 0.55 * heat).astype(np.uint8)


def _shrink_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[K, H, W]`` -> ``[K, h, w]`` float32 (area average)."""
    if not len(maps):
        return np.zeros((0, *size), np.float32)
    return np.stack([_resize(m.astype(np.float32), size) for m in maps])


def _b64(grid: np.ndarray) -> str:
    return base64.b64encode((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8).tobytes()).decode("ascii")


DIGITS = 6  # figures in the page's data: a millionth is far below the one decimal of a percentage it shows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


def _named(scores: dict[str, Any]) -> dict[str, Any]:
    """Per-class IoU keyed by class index, only the classes in the image's GT (the others are None)."""
    return {"miou": _round(scores["miou"]),
            "iou": {str(c): _round(v) for c, v in enumerate(scores["iou"]) if v is not None}}


def _boxes(debug: str | None, item_id: str, classes) -> dict[str, Any] | None:
    """CAA's boxes of one image from its `cam --save-debug` file: ``grid`` (h, w) and rows ``(k, x0, y0, x1,
    y1)`` (map index, exclusive ends on the patch grid); None when no file or no boxes (``--refine none``)."""
    if debug is None:
        return None
    path = io.cam_path(debug, item_id)
    if not path.is_file():
        return None
    f = io.read_cam_debug(path, classes)
    if "boxes" not in f.tensors:
        return None
    return {"grid": list(f["raw"].shape[1:]), "rows": f["boxes"].tolist()}


class _Image:
    """One image's pictures and figures while its row is made."""

    def __init__(self, task: Task, image: str, gt: str | None, item_id: str = ""):
        cfg = task.cfg
        self.id, self.image_path, self.gt_path = item_id, image, gt
        self.photo = io.load_image(image)
        self.gt = io.read_mask(gt, num_classes=len(task.classes)) if gt is not None else None
        self.size = self.photo.shape[:2]
        self.thumb, self.detail = fit(self.size, cfg.thumb_size), fit(self.size, cfg.detail_size)
        self.grid = fit(self.size, cfg.cam_grid)
        self.small = _resize(self.photo, self.thumb)
        self.tiles = [self.small]
        self.masks: list[np.ndarray] = []  # the detail view's mask strip
        if task.gt_slot:
            blank = np.full(self.size, 255, np.uint8)
            self.tiles.append(palette_rgb(_resize(self.gt if self.gt is not None else blank, self.thumb,
                                                  nearest=True)))
            self.masks.append(_resize(self.gt if self.gt is not None else blank, self.detail, nearest=True))

    def score(self, pred: np.ndarray, n: int, path: Path) -> tuple[dict[str, Any] | None, np.ndarray | None]:
        """``pred`` (read from ``path``) scored against the ground truth; a size that is not the GT's is one line
        naming the odd file, as `eval` words it: the prediction, unless the GT is not its image's size."""
        if self.gt is None:
            return None, None
        h, w = pred.shape[:2]
        if (h, w) != self.gt.shape:
            gh, gw = self.gt.shape
            if self.gt.shape == tuple(self.size):
                raise ContractError(f"{path}: is {h}x{w} but image '{self.id}' ({self.image_path}) and its ground "
                                    f"truth are {gh}x{gw}; it was made from another image: re-run the stage that "
                                    "wrote it")
            raise ContractError(f"{self.gt_path}: ground truth of image '{self.id}' is {gh}x{gw} but the image is "
                                f"{self.size[0]}x{self.size[1]}; a GT mask must have its image's size")
        hist = confusion_matrix(self.gt, pred, n)
        return image_scores(hist), hist

    def blank_tile(self) -> np.ndarray:
        return np.full((*self.thumb, 3), MISSING_GREY, np.uint8)


def _cam_column(img: _Image, col: ColumnSpec, item_id: str, classes, detail: dict) -> tuple[Any, Any]:
    path = io.cam_path(col.folder, item_id)
    if not path.is_file():
        img.tiles.append(img.blank_tile())
        return None, None
    maps = io.read_cam(path, classes)
    img.tiles.append(heat_tile(img.small, _shrink_maps(maps.cams, img.thumb)))
    fg, label = best_foreground(maps.cams, maps.labels, fp16=col.fp16)
    scores, hist = img.score(with_background(fg, label, col.bg_exponent), len(classes), path)
    stored = maps.file["cams"]  # [K, h, w] as `cam` wrote it: the patch grid, unless it is larger than wanted
    grids = stored if max(stored.shape[1:], default=0) <= max(img.grid) else _shrink_maps(maps.cams, img.grid)
    detail["cams"][col.name] = {"labels": list(maps.labels), "grid": list(grids.shape[1:]),
                                "maps": [_b64(g) for g in grids], "boxes": _boxes(col.debug, item_id, classes)}
    return scores, hist


def _mask_column(img: _Image, col: ColumnSpec, item_id: str, classes) -> tuple[Any, Any]:
    path = io.mask_path(col.folder, item_id)
    if not path.is_file():
        img.tiles.append(img.blank_tile())
        img.masks.append(np.full(img.detail, 255, np.uint8))
        return None, None
    pred = io.read_mask(path, num_classes=col.n_values)
    pred = pred if col.lut is None else col.lut[pred]
    img.tiles.append(palette_rgb(_resize(pred, img.thumb, nearest=True)))
    img.masks.append(_resize(pred, img.detail, nearest=True))
    return img.score(pred, len(classes), path)


_PALETTE = np.asarray(io.voc_palette(), np.uint8).reshape(256, 3)


def palette_rgb(mask: np.ndarray) -> np.ndarray:
    """``[h, w]`` class indices -> ``[h, w, 3]`` RGB in the VOC palette (the masks' colours everywhere)."""
    return _PALETTE[mask]


def make_row(task: Task, row: int, item_id: str, image: str, gt: str | None, labels: tuple[int, ...]
             ) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Write one image's files; return its table row and its confusion matrix per column (for the column mIoU).

    The row: ``[row, id, labels, [thumb h, w], [detail h, w], has GT, present per column (0/1), mIoU per column
    (None: no GT or no file)]``.
    """
    img = _Image(task, image, gt, item_id)
    detail: dict[str, Any] = {"id": item_id, "labels": list(labels), "size": list(img.size),
                              "detail": list(img.detail), "gt": img.gt is not None, "iou": {}, "cams": {}}
    hists, mious, present = {}, [], []
    for col in task.columns:
        if col.kind == "cam":
            scores, hist = _cam_column(img, col, item_id, task.classes, detail)
        else:
            scores, hist = _mask_column(img, col, item_id, task.classes)
        exists = (io.cam_path if col.kind == "cam" else io.mask_path)(col.folder, item_id).is_file()
        present.append(int(exists))
        mious.append(None if scores is None else _round(scores["miou"]))
        if scores is not None:
            detail["iou"][col.name] = _named(scores)
            hists[col.name] = hist
    base = Path(task.out)
    io.write_picture(base / "t" / str(task.split) / f"{row}.webp", np.concatenate(img.tiles, axis=1),
                     task.cfg.quality)
    # an image no larger than a thumbnail is shown from its thumbnail strip (the demo world's 96 px scenes)
    detail["photo"] = "t" if img.detail == img.thumb else "d"
    if img.detail != img.thumb:
        io.write_picture(base / "d" / str(task.split) / f"{row}.webp", _resize(img.photo, img.detail),
                         min(100, task.cfg.quality + 10))
    if img.masks:
        io.write_picture(base / "d" / str(task.split) / f"{row}.png", np.concatenate(img.masks, axis=1))
    detail["present"] = present
    script = f"VPL.detailLoaded({task.split},{row},{json.dumps(detail, separators=(',', ':'))});\n"
    io.write_text(base / "d" / str(task.split) / f"{row}.js", script)
    return [row, item_id, list(labels), list(img.thumb), list(img.detail), img.gt is not None, present, mious], hists


def run_task(task: Task) -> tuple[int, list[list[Any]], dict[str, np.ndarray]]:
    """One chunk: ``(split, rows, summed confusion matrix per column)``."""
    rows, sums = [], {}
    for row, item_id, image, gt, labels in task.items:
        result, hists = make_row(task, row, item_id, image, gt, labels)
        rows.append(result)
        for name, hist in hists.items():
            sums[name] = hist if name not in sums else sums[name] + hist
    return task.split, rows, sums


__all__ = ["ColumnSpec", "Task", "fit", "heat_tile", "jet", "make_row", "run_task"]

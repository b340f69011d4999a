"""`vpltool eval`: score a folder of masks (`crf`, `predict`) or CAMs (`cam`) against ground truth.

The convention of CLIP-ES and WeCLIP (``eval_cam.py:scores``; the kernels are in :mod:`vpltool.ops.kernels`):

* GT pixels outside ``[0, n)`` (255 = ignore) are dropped.
* Predicted values outside ``[0, n)`` (255 in CRF pseudo masks) are counted **wrong**: they go to an extra column
  ``n`` of the confusion matrix, which adds to the GT row's total but to no class's diagonal. CLIP-ES's
  ``_fast_hist`` would instead index a neighbouring bin, and dropping them would reward abstaining. To score
  pseudo masks the way CLIP-ES's ``eval_cam_with_crf.py --eval_only`` does (no confidence threshold), make them
  with ``crf --confidence 0``: they then hold no 255.
* ``IoU_c = TP / (rowsum + colsum - TP)``; ``mIoU`` = mean over classes present in GT (``rowsum > 0``).

CAM folders are scored like CLIP-ES's ``eval_cam.py``: background = ``(1 - max_k cam)^a``, argmax over
``[bg, cams]``, every ``a`` of ``EvalConfig.bg_exponents`` scored in one pass and the best reported; a CAM folder
made with ``--parity clip-es`` is scored with CLIP-ES's float16 arithmetic.

All IoU and accuracy values are fractions in [0, 1] (``format_table`` shows percent).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import io
from ..config import PSEUDO_STAGES, EvalConfig, from_params, ignored_option
from ..errors import ContractError, VplError, VplWarning
from ..io.protocols import of_scores, protocol_lines
from ..ops.kernels import MiouAccumulator, best_foreground, class_name_map, with_background

if TYPE_CHECKING:
    from rich.console import Group


# --------------------------------------------------------------------------------------------- folders
def evaluate_masks(
    pred_dir: str | os.PathLike, gt_by_id: Mapping[str, Path], classes: Sequence[str], ids: Iterable[str],
    pred_classes: Sequence[str] | None = None, images: Mapping[str, Path] | None = None, per_image: bool = False,
    gt_map: Sequence[int] | None = None,
) -> dict[str, Any]:
    """mIoU of a folder of label PNGs (``<pred_dir>/<id>.png``: pseudo masks or decoder predictions).

    Args:
        pred_dir: folder of [H, W] uint8 palette/grayscale PNGs; 255 counts as wrong.
        gt_by_id: image id -> GT mask PNG (255 = ignore).
        classes: class names, index 0 = background.
        ids: the images to score.
        pred_classes: the classes the masks' values index (an open-vocabulary `predict` records its own), mapped
            to ``classes`` by name; None = ``classes``. Dataset classes outside them are never predicted: a warning
            says they score 0 where present.
        images: image id -> image, to tell which of a mask and its ground truth has the wrong size.
        per_image: also return each image's own figures (``per_image``).
        gt_map: a benchmark's stored GT value -> label (:attr:`vpltool.data.Dataset.gt_map`); None = as stored.

    Returns:
        ``miou``, ``iou``, ``precision``, ``recall`` (each {class name: value or None}), ``pixel_accuracy``,
        ``mean_accuracy``, ``n_images``, ``confusion`` ([N][N + 1] pixel counts, row = GT class, column = predicted
        class, last column = 255 / invalid; see :meth:`MiouAccumulator.result`); with ``per_image``,
        ``per_image`` {id: {``miou``, ``iou`` {class name: value or None}}} (:func:`vpltool.ops.kernels.image_scores`).

    Raises:
        VplError: an id without GT or without a prediction file (checked for all ids before any pixel is read), or
            a predicted class name the dataset does not have.
    """
    pred_dir = Path(pred_dir)
    lut = class_name_map(pred_classes, classes, pred_dir)
    _warn_vocabulary(pred_classes, classes, pred_dir)
    ids = _check_inputs(pred_dir, ".png", gt_by_id, ids)
    acc = MiouAccumulator(len(classes), per_image)
    n_pred = len(classes) if pred_classes is None else len(pred_classes)
    for item in ids:
        gt = _read_gt(gt_by_id[item], len(classes), gt_map)
        pred = io.read_mask(io.mask_path(pred_dir, item), num_classes=n_pred)
        pred = pred if lut is None else lut[pred]
        _same_size(pred.shape, gt, item, gt_by_id[item], io.mask_path(pred_dir, item), images)
        acc.add(gt, pred, item=item)
    return _with_images(_name_classes(acc.result(), classes), acc, classes)


def evaluate_cams(
    cam_dir: str | os.PathLike,
    gt_by_id: Mapping[str, Path],
    classes: Sequence[str],
    ids: Iterable[str],
    bg_exponents: Sequence[float] = EvalConfig.bg_exponents,
    parity: str = "none",
    images: Mapping[str, Path] | None = None,
    per_image: bool = False,
    gt_map: Sequence[int] | None = None,
    labels_by_id: Mapping[str, Sequence[int]] | None = None,
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
        per_image: also return each image's own figures at the best exponent (``per_image``).
        labels_by_id: image id -> its image-level labels (the dataset's); each file's recorded labels must be
            them (:func:`vpltool.io.read_cam`).

    Returns:
        The :func:`evaluate_masks` keys for the best exponent, plus ``bg_exponent`` (the best ``a``; the first of
        equal ones) and ``by_exponent`` {a: miou}.
    """
    if not bg_exponents:
        raise VplError("no background exponent given; pass at least one value of --bg-exponents (e.g. 1,2)")
    cam_dir = Path(cam_dir)
    ids = _check_inputs(cam_dir, ".safetensors", gt_by_id, ids)
    accs = {float(a): MiouAccumulator(len(classes), per_image) for a in bg_exponents}
    for item in ids:
        gt = _read_gt(gt_by_id[item], len(classes), gt_map)
        maps = io.read_cam(io.cam_path(cam_dir, item), classes, None if labels_by_id is None else labels_by_id[item])
        _same_size(maps.cams.shape[1:], gt, item, gt_by_id[item], maps.file.path, images)
        fg_score, fg_label = best_foreground(maps.cams, maps.labels, fp16=parity == "clip-es")
        for a, acc in accs.items():
            acc.add(gt, with_background(fg_score, fg_label, a), item=item)
    results = {a: acc.result() for a, acc in accs.items()}
    best = max(results, key=lambda a: -1.0 if results[a]["miou"] is None else results[a]["miou"])
    by_exponent = {a: r["miou"] for a, r in results.items()}
    return {**_with_images(_name_classes(results[best], classes), accs[best], classes), "bg_exponent": best,
            "by_exponent": by_exponent}


def _read_gt(path: Path, n_classes: int, gt_map: Sequence[int] | None):
    """A ground-truth mask as ``[H, W]`` uint8 labels (255 = ignore): as stored, or through a benchmark's
    ``gt_map`` (mmseg's ``reduce_zero_label``, train ids shifted past vpltool's class 0); a stored value the map
    does not know is one line naming the file."""
    if gt_map is None:
        return io.read_mask(path, num_classes=n_classes)
    import numpy as np

    raw = io.read_mask(path)
    lut = np.asarray(gt_map, dtype=np.int16)
    mapped = lut[raw]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(raw[mapped < 0]).tolist()))[:5]
        raise ContractError(f"{path}: ground-truth values {bad} are not this benchmark's (a mask of another "
                            "dataset, or an unconverted one); re-run its conversion")
    return mapped.astype(np.uint8)


def _same_size(shape: Sequence[int], gt, item: str, gt_path: Path, pred: Path,
               images: Mapping[str, Path] | None = None) -> None:
    """A prediction's ``(H, W)`` must be the GT's; the message names the odd one: the prediction when the ground
    truth has its image's size (read from the image's header), else the ground truth."""
    if tuple(shape) == tuple(gt.shape):
        return
    image = images.get(item) if images else None
    if image is not None and tuple(io.image_size(image)) == tuple(gt.shape):
        raise ContractError(f"{pred}: is {shape[0]}x{shape[1]} but image '{item}' ({image}) and its ground truth are "
                            f"{gt.shape[0]}x{gt.shape[1]}; it was made from another image: wrong --data or --split, "
                            "or re-run the stage that wrote it")
    what = "its mask" if Path(pred).suffix == ".png" else "the image of its CAMs"
    raise ContractError(f"{gt_path}: ground truth of image '{item}' is {gt.shape[0]}x{gt.shape[1]} but {what} {pred} "
                        f"is {shape[0]}x{shape[1]}; a GT mask must have its image's size")


def _warn_vocabulary(pred_classes: Sequence[str] | None, classes: Sequence[str], where: Path) -> None:
    """Open-vocabulary masks (``predict --classes``) never predict a dataset class outside their vocabulary: say
    that each such class scores 0 where it is present, and counts in the mIoU."""
    if pred_classes is None:
        return
    outside = [c for c in classes[1:] if c not in pred_classes]
    if outside:
        warnings.warn(VplWarning(f"{where}: masks over the classes {_names(pred_classes[1:])} (predict --classes); "
                                 f"the dataset's {_names(outside)} are never predicted: IoU 0 where present, "
                                 "counted in the mIoU"), stacklevel=3)


def _names(names: Sequence[str], n: int = 8) -> str:
    """At most ``n`` names and how many more, so that a line stays a line with 254 classes."""
    shown = ", ".join(names[:n])
    return f"{shown} and {len(names) - n} more" if len(names) > n else shown


def _check_inputs(folder: Path, suffix: str, gt_by_id: Mapping[str, Path], ids: Iterable[str]) -> list[str]:
    """The ids as a list, after checking every GT and prediction exists (fail before a long pass, not during)."""
    ids = list(ids)
    if not ids:
        raise VplError(f"{folder}: no images to evaluate; the id list is empty")
    no_gt = [i for i in ids if i not in gt_by_id]
    if no_gt:
        raise VplError(f"no ground-truth mask for image '{no_gt[0]}'{_more(no_gt)}; add 'gt' to its manifest item")
    gone = [i for i in ids if not Path(gt_by_id[i]).is_file()]
    if gone:
        raise VplError(f"{gt_by_id[gone[0]]}: ground-truth mask of image '{gone[0]}' not found{_more(gone)}; restore "
                       "it, or fix the item's 'gt' in the manifest")
    if not folder.is_dir():
        raise VplError(f"{folder}: folder not found; run the stage that writes it first")
    missing = [i for i in ids if not (folder / f"{i}{suffix}").is_file()]
    if missing:
        raise VplError(
            f"{folder}: no prediction for image '{missing[0]}' ({missing[0]}{suffix}){_more(missing)}; score it on "
            "the dataset and split it was made from (--data, --split), or re-run the stage that writes it"
        )
    return ids


def _more(missing: list[str]) -> str:
    return f" and {len(missing) - 1} more" if len(missing) > 1 else ""


PER_CLASS = ("iou", "precision", "recall")  # the per-class figures of a result, lists until named


def _name_classes(result: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """Replace each per-class list (IoU, precision, recall) by {class name: value or None}."""
    return {**result, **{key: dict(zip(classes, result[key])) for key in PER_CLASS if key in result}}


def _with_images(result: dict[str, Any], acc: MiouAccumulator, classes: Sequence[str]) -> dict[str, Any]:
    """``result`` plus ``per_image`` (classes named) when ``acc`` kept each image's figures."""
    if acc.images is None:
        return result
    return {**result, "per_image": {i: _name_classes(r, classes) for i, r in acc.images.items()}}


# --------------------------------------------------------------------------------------------- display
def format_table(result: Mapping[str, Any], classes: Sequence[str]) -> Group:
    """The mIoU line, the per-class IoU table (percent, one decimal), then accuracies and the chosen exponent.

    The first and last lines are printed around the table, not as its title and caption: those wrap to the
    table's width, which broke them over several lines in a log or a pipe.
    """
    from rich.console import Group
    from rich.table import Table  # lazy: metrics is imported by the CLI, which keeps `--help` light
    from rich.text import Text

    title = f"mIoU {_pct(result.get('miou'))} over {result.get('n_images', '?')} images"
    table = Table()
    table.add_column("id", justify="right", style="dim")
    table.add_column("class")
    shown = [key for key in PER_CLASS if key in result]  # a result from an older JSON may lack precision, recall
    for key in shown:
        table.add_column(f"{'IoU' if key == 'iou' else key} %", justify="right")
    for idx, name in enumerate(classes):
        cells = [_class_value(result[key], idx, name) for key in shown]
        absent = cells[0] is None
        table.add_row(str(idx), name, *("[dim]absent[/]" if absent and i == 0 else
                                        "[dim]-[/]" if v is None else _pct(v) for i, v in enumerate(cells)))
    caption = f"pixel acc {_pct(result.get('pixel_accuracy'))} · mean acc {_pct(result.get('mean_accuracy'))}"
    if "bg_exponent" in result:
        # float(): keys are strings once the result went through JSON
        tried = ", ".join(f"a={float(a):g}: {_pct(m)}" for a, m in result.get("by_exponent", {}).items())
        caption += f" · best bg exponent a={float(result['bg_exponent']):g} ({tried})"
    lines = [Text(title), *map(Text, protocol_lines(result.get("protocol"))), table, Text(caption)]
    pairs = confused_pairs(result.get("confusion"), classes)
    if pairs:
        lines.append(Text("most confused (GT → predicted, share of the GT class's pixels): " + ", ".join(
            f"{p['gt']} → {p['predicted']} {_pct(p['share'])}" for p in pairs)))
    return Group(*lines)


def _class_value(values: Mapping[str, Any] | Sequence[Any], idx: int, name: str) -> Any:
    return values.get(name) if isinstance(values, Mapping) else values[idx]


def confused_pairs(confusion: Sequence[Sequence[int]] | None, classes: Sequence[str], top: int = 5,
                   ) -> list[dict[str, Any]]:
    """The ``top`` largest off-diagonal cells of a confusion matrix ([N][N + 1], row = GT, last column = 255), as
    ``{"gt", "predicted", "pixels", "share"}`` (share: of the GT class's pixels, in [0, 1]), largest share first;
    ``predicted`` is ``"255"`` for pixels left unlabelled. Empty for a matrix of another shape."""
    import numpy as np

    hist = np.asarray(confusion if confusion is not None else [], dtype=np.float64)
    n = len(classes)
    if hist.shape != (n, n + 1):
        return []
    rows = hist.sum(1, keepdims=True)
    share = np.divide(hist, rows, out=np.zeros_like(hist), where=rows > 0)
    share[np.arange(n), np.arange(n)] = 0.0
    order = np.argsort(-share, axis=None, kind="stable")[:top]
    names = [*classes, "255"]
    return [{"gt": classes[i], "predicted": names[j], "pixels": int(hist[i, j]), "share": float(share[i, j])}
            for i, j in (np.unravel_index(k, share.shape) for k in order) if share[i, j] > 0]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"



# --------------------------------------------------------------------------------------------- driver
# the stage folders eval scores (or a bare folder of masks with --data)
SCORED_STAGES = ("cam", *PSEUDO_STAGES, "predict", "segment")


def _scored_stage(folder: Path) -> str | None:
    """The stage that made ``folder`` (None: a bare mask folder); the one line for a folder of another kind."""
    stage = io.record_stage(folder)
    if stage is not None and stage not in SCORED_STAGES:
        expected = ", ".join(f"`{s}`" for s in SCORED_STAGES[:-1])
        raise VplError(f"{folder}: holds `{stage}` output, expected {expected} or `{SCORED_STAGES[-1]}` output (or a "
                       "folder of mask PNGs with --data)")
    return stage


def _check_split(folder: Path, recorded: Mapping[str, Any], split: str | None) -> None:
    """``--split`` other than the one the folder was made from, with no prediction for that split: say so."""
    made = recorded.get("split")
    if split is None or made is None or split == made:
        return
    from ..data import open_dataset

    asked = [it.id for it in open_dataset(recorded["root"], split).items if it.gt is not None]
    if asked and not any((folder / f"{i}{suffix}").is_file() for i in asked for suffix in (".png", ".safetensors")):
        raise VplError(f"{folder}: made from split {made!r} (its {io.STAGE_RECORD}) and holds no prediction for "
                       f"split {split!r}; wrong --split? drop it to score {made!r}")


def _warn_cam_options(cfg: EvalConfig, folder: Path) -> None:
    """``--bg-exponents`` and ``--parity`` turn CAMs into masks: given for a folder of masks, each is warned about
    as an option without effect (:func:`vpltool.config.ignored_option`)."""
    default = EvalConfig()
    why = f"on a folder of masks ({folder}: only CAMs have a background score)"
    if cfg.bg_exponents != default.bg_exponents:
        warnings.warn(VplWarning(ignored_option("--bg-exponents", ",".join(f"{a:g}" for a in cfg.bg_exponents),
                                                why)), stacklevel=3)
    if cfg.parity != default.parity:
        warnings.warn(VplWarning(ignored_option("--parity", cfg.parity, why)), stacklevel=3)


def scored_what(folder: Path, stage: str | None, split: str | None) -> dict[str, Any]:
    """What a score is of, recorded in eval's JSON so that a reader (`choose-pseudo`) can tell a stale or misplaced
    score: ``folder`` (absolute), ``stage`` (its maker, None for a bare mask folder), ``record`` (the sha256 of its
    ``_stage.json`` when it has one: a folder re-made since has another), ``masks`` (of a mask folder, the digest
    of its masks' content, :func:`vpltool.io.masks_digest`: a mask edited since has another; None for CAMs) and
    ``split`` (of the dataset scored)."""
    record = io.stage_record_path(folder)
    return {"folder": str(folder.resolve()), "stage": stage,
            "record": io.sha256_file(record) if record.is_file() else None,
            "masks": io.masks_digest(folder) if stage != "cam" else None, "split": split}


def run_eval(predictions: str | os.PathLike, *, data: str | os.PathLike | None = None, split: str | None = None,
             cfg: EvalConfig = EvalConfig(), json_out: str | os.PathLike | None = None,
             ids: Sequence[str] | None = None, per_image_out: str | os.PathLike | None = None,
             overwrite: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Score a folder of masks (PNG) or CAMs (``cam`` stage output) against the dataset's ground truth.

    The dataset defaults to the one recorded by the stage that wrote ``predictions``; ``split`` overrides the
    recorded split. Returns ``(result, classes)`` and writes ``json_out`` atomically when given; ``per_image_out``
    (``--per-image``): each image's mIoU and per-class IoU as JSON (``folder``, ``kind``, ``classes``,
    ``bg_exponent`` for CAMs, ``images`` {id: {``miou``, ``iou``}}), the result itself unchanged. The result
    (and the JSON) also says what was scored: ``folder``, ``stage``, ``record``, ``masks``, ``split``
    (:func:`scored_what`).
    ``overwrite``: replace files of another kind there (:func:`vpltool.io.check_outputs`).
    """
    from ..data import check_recorded, is_plain, open_dataset, reopen

    folder, given = Path(predictions), data is not None
    if not folder.is_dir():
        raise VplError(f"{folder}: predictions folder not found")
    if json_out is not None:
        io.check_writable_target(json_out, ".json", "--json")  # before minutes of scoring, not after
    if per_image_out is not None:
        io.check_writable_target(per_image_out, ".json", "--per-image")
    if io.being_written(folder):  # its masks and record are being made or replaced: nothing to score yet
        raise VplError(f"{folder}: another vpltool run is writing it now; wait for it to finish, then score it")
    stage = _scored_stage(folder)
    if not io.stage_record_path(folder).is_file() and io.finished_shards(folder):
        io.read_stage_record(folder, stage or "segment")  # the one line naming the pending shards
    recorded = io.recorded_dataset_identity(folder)
    if data is None:
        if recorded is None:
            raise VplError(f"{folder}: no _stage.json naming its dataset; pass --data ROOT (and --split)")
        if not Path(recorded["root"]).exists():
            raise VplError(f"{io.stage_record_path(folder)}: its dataset {recorded['root']} is gone (moved or "
                           "deleted); pass --data with its new place")
        _check_split(folder, recorded, split)
        data, split = recorded["root"], split or recorded.get("split")
    elif split is None and recorded is not None and not Path(data).is_file():
        split = recorded.get("split")  # --data alone (a moved or copied dataset): the split it was made from
    opened = open_dataset(data, split) if given else reopen(recorded, split)  # its --labels-file, if any
    if is_plain(opened):  # photos alone (vpltool.data.images): nothing to score against
        raise VplError(f"{folder}: made from plain photos ({opened.root}), which have no ground truth: it cannot be "
                       f"scored; look at its masks with `vpltool report {folder}`, or pass --data a dataset with masks")
    dataset = check_recorded(folder, opened, "--data" if given else None)
    io.check_outputs("eval", {"--json": (json_out, "file", "scores"),
                              "--per-image": (per_image_out, "file", "per-image-scores")},
                     inputs={"the folder scored": folder, "--data": data},
                     protected=dataset.folders(), overwrite=overwrite)
    with_gt = {it.id: it.gt for it in dataset.items if it.gt is not None}
    images = {it.id: it.image for it in dataset.items}
    if not with_gt:
        where = f"split {dataset.split!r} of {data}" if dataset.split else f"{data}"
        raise VplError(f"{where}: no ground-truth masks; eval needs a split with masks (VOC: SegmentationClassAug, "
                       "a folder dataset: masks/)")
    ids = list(ids) if ids is not None else [it.id for it in dataset.items if it.gt is not None]
    is_cam = stage == "cam"
    if is_cam:
        record_path = io.stage_record_path(folder)
        recorded_parity = io.read_record(record_path)["params"].get("parity", "none")
        parity = cfg.parity or from_params(EvalConfig, {"parity": recorded_parity}, record_path).parity
        result = evaluate_cams(folder, with_gt, dataset.classes, ids, cfg.bg_exponents, parity, images,
                               per_image=per_image_out is not None, gt_map=dataset.gt_map,
                               labels_by_id={it.id: it.labels for it in dataset.items})
        result["parity"] = parity
    else:
        _warn_cam_options(cfg, folder)
        record_path = io.stage_record_path(folder)
        pred_classes = io.read_record(record_path).get("classes") if record_path.is_file() else None
        result = evaluate_masks(folder, with_gt, dataset.classes, ids, pred_classes, images,
                                per_image=per_image_out is not None, gt_map=dataset.gt_map)
    if result.get("miou") is None:  # every ground-truth pixel is 255: there is nothing to score (never a null mIoU)
        where = f"split {dataset.split!r} of {data}" if dataset.split else f"{data}"
        raise VplError(f"{where}: its ground truth of the {len(ids)} images scored holds no labelled pixel (all 255 "
                       "= ignore), so there is no mIoU; check the masks (class indices, not colours) or score another "
                       "split")
    result["kind"] = "cam" if is_cam else "mask"
    result["classes"] = list(dataset.classes)
    result["protocol"] = of_scores(folder, result.get("bg_exponent"))  # what made it, from the folder's records
    result.update(scored_what(folder, stage, dataset.split))
    record_path = io.stage_record_path(folder)
    made = io.read_record(record_path).get(io.NUMERICS) if record_path.is_file() else None
    if made is not None:  # the dtype and numeric mode that made what was scored (vpltool.runtime.numerics)
        result[io.NUMERICS] = made
    each = result.pop("per_image", None)
    if per_image_out is not None:
        io.write_json(per_image_out, {"folder": str(folder), "kind": result["kind"], "classes": result["classes"],
                                      **({"bg_exponent": result["bg_exponent"]} if is_cam else {}),
                                      "images": each}, kind="per-image-scores")
    if json_out:
        io.write_json(json_out, result, kind="scores")
    return result, list(dataset.classes)


__all__ = ["confused_pairs", "evaluate_masks", "evaluate_cams", "format_table", "run_eval", "scored_what"]

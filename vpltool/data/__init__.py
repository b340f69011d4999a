"""Datasets as one currency: :class:`Dataset` (classes + items) read from VOC, COCO, a plain folder or a manifest.

Every stage consumes a :class:`Dataset`; ``open_dataset`` detects the on-disk layout, so users point vpltool at the
folder they downloaded. Layouts are described in docs/datasets.md. Torch-free.
"""


import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import MIN_IMAGE_SIDE
from ..errors import ContractError, VplError, VplWarning
from ..io import image_orientation, mask_size, recorded_dataset_identity, stage_record_path
from .coco import is_coco_root, open_coco
from .common import IMAGE_EXTS, LAYOUTS, MANIFEST_FORMAT, Dataset, Item, layout_folders
from .folder import open_folder
from .manifest import open_manifest, write_manifest
from .voc import find_voc_root, open_voc

__all__ = ["IMAGE_EXTS", "LAYOUTS", "MANIFEST_FORMAT", "Dataset", "Item", "check_sizes", "open_dataset",
           "open_recorded", "recorded_folders", "write_manifest"]


# --------------------------------------------------------------------------------------------- entry points
def open_dataset(
    path: str | os.PathLike, split: str | None = None, *, labels_file: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> Dataset:  # fmt: skip
    """Open a manifest JSON, a VOC root, a COCO WSSS root or a generic folder, detected from what is on disk.

    Args:
        path: the manifest file or the dataset folder.
        split: split name ('train', 'val', 'train_aug', ...); VOC and COCO default to 'train', a folder to all ids.
        labels_file: image-level labels from elsewhere: IRN ``cls_labels.npy`` (VOC), ``<split>.txt`` (COCO),
            ``.csv`` / ``.json`` (folder).
        allow_pickle: allow reading ``cls_labels.npy``, a pickle (loading one can run code).

    Raises:
        VplError: one line naming the file and the fix (unknown layout, missing image, unknown label, ...).
    """
    path = Path(path).expanduser()
    labels_file = Path(labels_file).expanduser() if labels_file is not None else None
    if not path.exists():
        raise VplError(f"{path}: not found; pass a dataset folder or a manifest .json")
    if path.is_file() and path.suffix.lower() == ".json":
        if split is not None or labels_file is not None:
            raise VplError(f"{path}: a manifest holds one split and its labels; drop --split / --labels-file")
        dataset = open_manifest(path)
    elif (voc := find_voc_root(path)) is not None:
        dataset = open_voc(voc, split or "train", labels_file, allow_pickle)
    elif is_coco_root(path, labels_file):
        dataset = open_coco(path, split or "train", labels_file)
    elif (path / "images").is_dir():
        dataset = open_folder(path, split, labels_file)
    else:
        raise VplError(f"{path}: unknown dataset layout; expected a manifest .json, " + "; ".join(LAYOUTS))
    _check_items(dataset)
    if labels_file is not None:
        dataset.sources = (labels_file,)
    return dataset


def open_recorded(folder: str | os.PathLike, split: str | None = None) -> Dataset:
    """The dataset a stage folder was made from (``inputs.dataset`` of its ``_stage.json``).

    Args:
        folder: a finished stage folder.
        split: another split of the same dataset (e.g. ``val`` next to the recorded ``train``); None = recorded.

    Raises:
        VplError: no record, or the recorded dataset is gone (moved or deleted): one line saying which.
    """
    ident = recorded_dataset_identity(folder)
    record = stage_record_path(folder)
    if ident is None:
        if record.is_file():
            raise ContractError(f"{record}: names no dataset; re-run the stage that wrote {folder}")
        raise VplError(f"{folder}: no {record.name} naming its dataset; finish the stage that writes this folder")
    if not Path(ident["root"]).exists():
        raise VplError(f"{record}: its dataset {ident['root']} is gone (moved or deleted); put it back there, or "
                       "re-run the pipeline from `extract` on its new place")
    return open_dataset(ident["root"], split or ident.get("split"))


def recorded_folders(folder: str | os.PathLike) -> list[Path]:
    """The data folders of the dataset a stage folder records (:meth:`Dataset.folders`), for the output guard;
    from the layout alone (no file read) except for a manifest; empty when nothing is recorded or it is gone."""
    ident = recorded_dataset_identity(folder) if Path(folder).is_dir() else None
    if not isinstance(ident, dict) or not ident.get("root") or not Path(ident["root"]).exists():
        return []
    root = Path(ident["root"])
    if ident.get("kind") != "manifest":
        return [root, *layout_folders(str(ident.get("kind")), root)]
    try:
        return open_manifest(root).folders()
    except VplError:
        return []


def _check_items(dataset: Dataset) -> None:
    where = f"{dataset.root}" + (f" (split {dataset.split!r})" if dataset.split else "")
    if not dataset.items:
        raise VplError(f"{where}: the dataset is empty; check the split / labels file")
    ids = Counter(item.id for item in dataset.items)
    if (dup := next((i for i, n in ids.items() if n > 1), None)) is not None:
        raise VplError(f"{where}: duplicate id {dup!r}; ids (file stems) must be unique, rename or drop one")


def check_sizes(items: Sequence[Item], sizes: Sequence[tuple[int, int]], workers: int = 1) -> None:
    """What a stage checks from the headers before it loads a model (a bad image fails in a second, not mid-run).

    Args:
        items: the images about to be processed.
        sizes: ``(H, W)`` of each item's image, as :func:`vpltool.io.image_size` reads it.
        workers: threads reading the ground-truth masks' headers.

    Raises:
        VplError: an image smaller than ``MIN_IMAGE_SIDE`` on a side (a 1x1 thumbnail: its CAM would say nothing),
            or a ground-truth mask of another size than its image (once caught only by `eval`, the last stage).
    """
    for item, (h, w) in zip(items, sizes):
        if min(h, w) < MIN_IMAGE_SIDE:
            raise VplError(f"{item.image}: {h}x{w} pixels, too small to segment (at least {MIN_IMAGE_SIDE} pixels a "
                           "side, one CLIP patch); remove it from the split or use the full-size image")
    with_gt = [(item, tuple(size)) for item, size in zip(items, sizes) if item.gt is not None and item.gt.is_file()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        gt_sizes = list(pool.map(lambda pair: mask_size(pair[0].gt), with_gt))
        turned = list(pool.map(lambda pair: image_orientation(pair[0].image), with_gt))
    for (item, size), gt, orientation in zip(with_gt, gt_sizes, turned):
        if gt != size and orientation != 1 and gt == size[::-1]:
            raise ContractError(f"{item.image}: its EXIF orientation ({orientation}) turns it to {size[0]}x{size[1]} "
                                f"when decoded, but its ground truth {item.gt} is {gt[0]}x{gt[1]}, the image as "
                                "stored: a mask carries no orientation, so it cannot be turned with it; save the "
                                "image upright (without its orientation tag), or turn the mask")
        if gt != size:
            raise ContractError(f"{item.gt}: ground truth of image {item.id!r} is {gt[0]}x{gt[1]} but the image is "
                                f"{size[0]}x{size[1]}; a GT mask must have its image's size: fix or remove the mask")
    # a mask of a turned non-square image whose size is the image's as shown was drawn on it as shown; otherwise
    # (a square image, a flip or a half turn) the sizes cannot tell
    oriented = [item for (item, size), orientation in zip(with_gt, turned)
                if orientation != 1 and (orientation not in (5, 6, 7, 8) or size[0] == size[1])]
    if oriented:
        more = f" (and {len(oriented) - 1} more)" if len(oriented) > 1 else ""
        warnings.warn(VplWarning(f"{oriented[0].image}{more}: an EXIF orientation flips or turns it when decoded, "
                                 f"while its ground truth {oriented[0].gt} carries none and is used as stored; if the "
                                 "mask was drawn on the image as stored, save the image upright (without its "
                                 "orientation tag)"), stacklevel=2)

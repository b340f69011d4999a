"""PASCAL VOC 2012 (+ SBD ``SegmentationClassAug``): split files, XML or ``cls_labels.npy`` labels."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config.presets import BACKGROUND, VOC_CLASSES, preset_for
from ..errors import ContractError, VplError
from .common import (
    IMAGE_EXTS,
    Dataset,
    Item,
    check_id,
    index_files,
    missing_image,
    names_to_labels,
    read_classes_txt,
    split_ids,
    warn_unlabelled,
)


# --------------------------------------------------------------------------------------------- VOC
def find_voc_root(path: Path) -> Path | None:
    for root in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Segmentation").is_dir():
            return root
    return None


def split_file(folder: Path, split: str) -> Path:
    path = folder / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in folder.glob("*.txt"))
        # no option named: the split may come from --split, train-decoder's --val-split or a record
        raise VplError(f"{path}: no split {split!r} here (found: {', '.join(found) or 'none'}); give one of these "
                       "split names, or add the file")  # fmt: skip
    return path




def open_voc(root: Path, split: str, labels_file: Path | None, allow_pickle: bool) -> Dataset:
    """A VOC root; its classes are the 20 VOC classes, or the lines of ``<root>/classes.txt`` when it has one (a
    VOC-layout dataset of other classes, such as ``make-world --layout voc``)."""
    listing = split_file(root / "ImageSets" / "Segmentation", split)
    ids = split_ids(listing)
    classes_txt = root / "classes.txt"
    classes = read_classes_txt(classes_txt) if classes_txt.is_file() else (BACKGROUND, *VOC_CLASSES)
    fix = (f"fix the name or add it to {classes_txt}" if classes_txt.is_file() else
           f"fix the name, or list this dataset's classes in {classes_txt} (one per line; without it a VOC root "
           "has the 20 VOC classes)")
    images = index_files(root / "JPEGImages", IMAGE_EXTS)
    # SBD-augmented masks win: they exist for all of train_aug, SegmentationClass only for train/val
    masks = index_files(root / "SegmentationClass", (".png",), what="mask")
    masks.update(index_files(root / "SegmentationClassAug", (".png",), what="mask"))
    npy = _read_cls_labels(labels_file, allow_pickle) if labels_file is not None else None
    items = []
    for image_id in ids:
        check_id(image_id, listing)
        if image_id not in images:
            raise missing_image(listing, image_id, root / "JPEGImages")
        if npy is not None:
            labels = _npy_labels(npy, image_id, labels_file, len(classes) - 1)
        else:
            labels = _xml_labels(root / "Annotations" / f"{image_id}.xml", classes[1:], fix)
        items.append(Item(image_id, images[image_id], labels, masks.get(image_id)))
    warn_unlabelled(items, labels_file or root / "Annotations")
    return Dataset("voc", root, split, classes, items, preset_for(classes))


def _xml_labels(xml: Path, fg: Sequence[str], fix: str) -> tuple[int, ...]:
    """Class indices of every <object> (difficult ones included), in order of first appearance."""
    try:
        tree = ET.parse(xml)
    except FileNotFoundError:
        raise VplError(f"{xml}: annotation not found; restore Annotations/ or pass --labels-file cls_labels.npy "
                       "--allow-pickle") from None
    except ET.ParseError as e:
        raise ContractError(f"{xml}: not valid XML ({e}); re-download Annotations/") from None
    names = [(obj.findtext("name") or "").strip() for obj in tree.getroot().findall("object")]
    return names_to_labels(names, fg, xml, fix=fix)


def _read_cls_labels(path: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    """IRN-style ``cls_labels.npy``: a pickled dict id -> [20] multi-hot; keys '2007_000032' or 2007000032."""
    if path.suffix.lower() != ".npy":
        raise VplError(f"{path}: VOC --labels-file takes an IRN-style cls_labels.npy; without it Annotations/*.xml "
                       "are read")
    if not allow_pickle:
        raise VplError(f"{path}: a pickle file (loading it can run code); pass --allow-pickle if you trust it, "
                       "or drop --labels-file to read Annotations/*.xml")  # fmt: skip
    warnings.warn(f"{path}: loading a pickle (allowed by --allow-pickle)", stacklevel=4)
    try:
        obj = np.load(path, allow_pickle=True)
        table = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == () else obj
    except FileNotFoundError:
        raise VplError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as e:
        raise ContractError(f"{path}: unreadable .npy ({e}); regenerate it") from None
    if not isinstance(table, dict):
        raise ContractError(f"{path}: expected a dict id -> multi-hot, found {type(table).__name__}")
    # int keys drop the '_' of the id (IRN's decode_int_filename), so normalise both sides that way
    return {str(k).replace("_", ""): np.asarray(v) for k, v in table.items()}


def _npy_labels(table: dict[str, np.ndarray], image_id: str, path: Path, n_fg: int) -> tuple[int, ...]:
    row = table.get(image_id.replace("_", ""))
    if row is None:
        raise VplError(f"{path}: no labels for id {image_id!r}; use a labels file made for this split")
    if row.shape != (n_fg,):
        raise ContractError(f"{path}: labels of {image_id!r} have shape {row.shape}, expected ({n_fg},), one per "
                            "class")
    return tuple(int(i) + 1 for i in np.flatnonzero(row > 0))

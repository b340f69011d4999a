"""COCO 2014 in the WSSS layout (CLIP-ES's): image folders, ``<split>.txt`` lists and label files."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config.presets import BACKGROUND, COCO_CLASSES
from ..errors import ContractError, VplError
from .common import IMAGE_EXTS, Dataset, Item, check_id, index_files, missing_image, read_lines, warn_unlabelled

# --------------------------------------------------------------------------------------------- COCO
_COCO_IMAGE_DIRS = ("JPEGImages", "train2014", "val2014")
_COCO_LIST_DIRS = ("", "coco14")  # CLIP-ES keeps its lists in coco14/
_COCO_NAME = re.compile(r"^(?:COCO_[a-z]+\d{4}_)?(\d+)$")


def _coco_key(stem: str) -> int | str:
    """'COCO_train2014_000000000009', '000000000009' and '9' all -> 9 (2014 image ids are unique across splits)."""
    m = _COCO_NAME.match(stem)
    return int(m.group(1)) if m else stem


def is_coco_root(path: Path, labels_file: Path | None) -> bool:
    if not any((path / d).is_dir() for d in _COCO_IMAGE_DIRS):
        return False
    lists = [path / d / f"{s}.txt" for d in _COCO_LIST_DIRS for s in ("train", "val")]
    return labels_file is not None or any(p.is_file() for p in lists)


def open_coco(root: Path, split: str, labels_file: Path | None) -> Dataset:
    found = [root / d / f"{split}.txt" for d in _COCO_LIST_DIRS if (root / d / f"{split}.txt").is_file()]
    listing = labels_file or (found + [root / f"{split}.txt"])[0]
    if not listing.is_file():
        raise VplError(f"{listing}: no COCO label list for split {split!r} (looked in {root} and {root / 'coco14'}); "
                       "give another split name, or add the list (extract: --labels-file)")  # fmt: skip
    # the split's own folders first, so a copy of the image elsewhere never shadows it
    dirs = list(dict.fromkeys((f"JPEGImages/{split}", f"{split}2014", *_COCO_IMAGE_DIRS)))
    images: dict[Any, Path] = {}
    for d in reversed(dirs):
        images.update(index_files(root / d, IMAGE_EXTS, _coco_key))
    mask_dir = root / "SegmentationClass"
    masks = {**index_files(mask_dir, (".png",), _coco_key, what="mask"),
             **index_files(mask_dir / split, (".png",), _coco_key, what="mask")}
    items, seen = [], set()
    for line in read_lines(listing):
        name, *ids = line.split()
        key = _coco_key(Path(name).stem)
        if key in seen:
            raise VplError(f"{listing}: image {name!r} is listed twice; keep one line per image")
        seen.add(key)
        if key not in images:
            raise missing_image(listing, Path(name).stem, [root / d for d in dirs])
        labels = _coco_labels(ids, listing, name)
        items.append(Item(check_id(images[key].stem, listing), images[key], labels, masks.get(key)))
    warn_unlabelled(items, listing)
    return Dataset("coco", root, split, (BACKGROUND, *COCO_CLASSES), items, "coco")


def _coco_labels(ids: Sequence[str], listing: Path, name: str) -> tuple[int, ...]:
    """CLIP-ES lists hold 0-based ids in the 80-class order; vpltool's labels are 1-based (0 = background)."""
    bad = next((tok for tok in ids if not tok.isdigit() or int(tok) >= len(COCO_CLASSES)), None)
    if bad is not None:
        raise ContractError(f"{listing}: bad class id {bad!r} for {name}; ids are 0..79 in COCO category order")
    return tuple(dict.fromkeys(int(tok) + 1 for tok in ids))

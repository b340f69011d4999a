"""A generic folder: ``images/``, ``labels.csv`` or ``labels.json``, optional ``masks/`` and ``splits/``."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import ContractError, VplError
from ..io import read_json
from ..presets import BACKGROUND, preset_for
from .common import IMAGE_EXTS, Dataset, Item, check_id, index_files, missing_image, not_utf8, read_lines, split_ids
from .voc import names_to_labels, split_file


# --------------------------------------------------------------------------------------------- generic folder
def open_folder(root: Path, split: str | None, labels_file: Path | None) -> Dataset:
    labels_path = labels_file or _folder_labels_path(root)
    table = _read_label_table(labels_path)
    classes = _folder_classes(root / "classes.txt", table, labels_path)
    listing = _folder_split_file(root, split) or labels_path
    ids = split_ids(listing) if listing != labels_path else list(table)
    images = index_files(root / "images", IMAGE_EXTS, strict=True)
    masks = index_files(root / "masks", (".png",))
    items = []
    for image_id in ids:
        check_id(image_id, listing)
        if image_id not in table:
            raise VplError(f"{labels_path}: no labels for id {image_id!r} (listed in {listing}); add a row")
        if image_id not in images:
            raise missing_image(listing, image_id, root / "images")
        labels = names_to_labels(table[image_id], classes[1:], labels_path, image_id)
        items.append(Item(image_id, images[image_id], labels, masks.get(image_id)))
    return Dataset("folder", root, split, classes, items, preset_for(classes))


def _folder_labels_path(root: Path) -> Path:
    found = [p for p in (root / "labels.csv", root / "labels.json") if p.is_file()]
    if len(found) != 1:
        what = "both labels.csv and labels.json; keep one" if found else "no labels.csv or labels.json; add one"
        raise VplError(f"{root}: {what} (see docs/datasets.md)")
    return found[0]


def _read_label_table(path: Path) -> dict[str, list[str]]:
    """id -> label names, in file order: ``labels.json`` {"id": [names]} or ``labels.csv`` rows ``id,labels``."""
    if path.suffix.lower() == ".json":
        table = read_json(path)
        if not isinstance(table, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                                  for v in table.values()):  # fmt: skip
            raise ContractError(f"{path}: expected {{\"id\": [\"class name\", ...], ...}}")
        return {str(image_id): [n.strip() for n in names if n.strip()] for image_id, names in table.items()}
    if not path.is_file():
        raise VplError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    out = {}
    for row in csv.reader(text.splitlines(keepends=True)):  # keepends: a quoted cell may span lines
        if not row or not row[0].strip() or row[0].strip().startswith("#"):
            continue
        if not out and row[0].strip().lower() == "id":  # optional header
            continue
        image_id = row[0].strip()
        if image_id in out:
            raise VplError(f"{path}: duplicate id {image_id!r}; keep one row per image")
        out[image_id] = [name for cell in row[1:] for name in _split_names(cell)]
    return out


def _split_names(cell: str) -> list[str]:
    """'cat;dog', 'cat|dog' or 'cat dog' -> ['cat', 'dog'] (so multi-word names need ';' or '|' between labels)."""
    sep = ";" if ";" in cell else "|" if "|" in cell else None
    return [name.strip() for name in cell.split(sep) if name.strip()]


def _folder_classes(path: Path, table: dict[str, list[str]], labels_path: Path | None = None
                    ) -> tuple[str, ...]:
    """``classes.txt`` (background prepended when absent), else the sorted label names.

    'background' is class 0: on any line of classes.txt but the first, it is refused (prepending it once more gave
    ``[background, ..., background]``, and moving it would shift every mask value); as an image label it is refused
    too (class 0 is implicit in every image).
    """
    if path.is_file():
        names = read_lines(path)
        if len(set(names)) != len(names):
            raise VplError(f"{path}: a class name is listed twice; keep one line per class")
        if BACKGROUND in names[1:]:
            raise VplError(f"{path}: 'background' is on line {names.index(BACKGROUND) + 1}; it is class 0, so put it "
                           "on the first line (mask value 0) or leave it out (it is then added as class 0)")
    else:
        names = sorted({name for labels in table.values() for name in labels})
        if BACKGROUND in names:
            raise VplError(f"{labels_path or path.parent}: 'background' is used as an image label; drop it (class 0 "
                           "is in every image), or add classes.txt")
    names = names if names and names[0] == BACKGROUND else [BACKGROUND, *names]
    if len(names) < 2:
        raise VplError(f"{path.parent}: no classes; add classes.txt or labels")
    return tuple(names)


def _folder_split_file(root: Path, split: str | None) -> Path | None:
    """``splits/<split>.txt``; None (= every labelled id) without a split or without a splits/ folder.

    With a splits/ folder an unknown split name is an error: silently using every id would mix train into val.
    """
    splits = root / "splits"
    return split_file(splits, split) if split is not None and splits.is_dir() else None

"""A generic folder: ``images/``, ``labels.csv`` or ``labels.json``, optional ``masks/`` and ``splits/``."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from ..config.presets import BACKGROUND, preset_for
from ..errors import ContractError, VplError
from ..io import read_json
from .common import (
    IMAGE_EXTS,
    Dataset,
    Item,
    check_id,
    index_files,
    missing_image,
    names_to_labels,
    not_utf8,
    read_classes_txt,
    split_ids,
    warn_unlabelled,
)
from .voc import split_file


# --------------------------------------------------------------------------------------------- generic folder
def open_folder(root: Path, split: str | None, labels_file: Path | None) -> Dataset:
    labels_path = labels_file or _folder_labels_path(root)
    table, cells = _read_label_table(labels_path)
    classes = _folder_classes(root / "classes.txt", table, labels_path)
    _check_space_split(cells, classes, labels_path)
    listing = _folder_split_file(root, split) or labels_path
    ids = split_ids(listing) if listing != labels_path else list(table)
    images = index_files(root / "images", IMAGE_EXTS, strict=True)
    masks = index_files(root / "masks", (".png",), what="mask")
    items, fix = [], _unknown_class_fix(root, labels_path)
    for image_id in ids:
        check_id(image_id, listing)
        if image_id not in table:
            raise _no_labels(labels_path, listing, image_id, table)
        if image_id not in images:
            raise missing_image(listing, image_id, root / "images")
        labels = () if _only_background(table[image_id]) else names_to_labels(
            table[image_id], classes[1:], labels_path, image_id, fix=fix)
        items.append(Item(image_id, images[image_id], labels, masks.get(image_id)))
    warn_unlabelled([it for it in items if not _only_background(table[it.id])], labels_path)
    return Dataset("folder", root, split, classes, items, preset_for(classes))


def _no_labels(labels_path: Path, listing: Path, image_id: str, table: dict[str, list[str]]) -> VplError:
    stem, ext = os.path.splitext(image_id)
    if ext.lower() in IMAGE_EXTS and stem in table:
        return VplError(f"{listing}: id {image_id!r} is written with its extension; ids are file stems: write "
                        f"{stem!r}")
    return VplError(f"{labels_path}: no labels for id {image_id!r} (listed in {listing}); add a row")


def _only_background(names: list[str]) -> bool:
    """The label 'background' alone declares an image with no objects (an empty labels cell is warned about)."""
    return names == [BACKGROUND]


def _unknown_class_fix(root: Path, labels_path: Path) -> str:
    if (root / "classes.txt").is_file():
        return f"fix the name in {labels_path.name} or add it to {root / 'classes.txt'}"
    return f"fix the name in {labels_path.name}"


def _folder_labels_path(root: Path) -> Path:
    found = [p for p in (root / "labels.csv", root / "labels.json") if p.is_file()]
    if len(found) != 1:
        what = "both labels.csv and labels.json; keep one" if found else "no labels.csv or labels.json; add one"
        raise VplError(f"{root}: {what} (see docs/datasets.md)")
    return found[0]


def _read_label_table(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """id -> label names, in file order: ``labels.json`` {"id": [names]} or ``labels.csv`` rows ``id,labels``.

    Also id -> the CSV's labels cell as written (empty for JSON), for :func:`_check_space_split`.
    """
    if path.suffix.lower() == ".json":
        table = read_json(path)
        if not isinstance(table, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                                  for v in table.values()):  # fmt: skip
            raise ContractError(f"{path}: expected {{\"id\": [\"class name\", ...], ...}}")
        return {str(image_id): [n.strip() for n in names if n.strip()] for image_id, names in table.items()}, {}
    if not path.is_file():
        raise VplError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    return _read_csv(path, text)


# the words a header may use for its columns: a first row holding one of them is a header, not an image
_HEADER_WORDS = {"label", "labels", "class", "classes", "category", "categories", "tags", "name", "names"}
_CSV_COLUMNS = ("id", "labels")


def _read_csv(path: Path, text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Rows ``id,labels`` (one labels cell, names split by :func:`_split_names`), after an optional ``id,labels``
    header. The header is followed, not guessed around: another column is refused by name (it was once read as one
    more label of every image), and so is a row with more cells than the header has columns."""
    lines = text.splitlines(keepends=True)  # keepends: a quoted cell may span lines
    reader = csv.reader(lines)
    rows, start = [], 0
    for row in reader:  # '#' first on a line makes it a comment (every list file's rule); a quoted "#1" is a cell
        if row and row[0].strip() and not lines[start].lstrip().startswith("#"):
            rows.append((reader.line_num, row))
        start = reader.line_num
    _check_delimiter(path, rows)
    if rows and _is_header(path, rows[0][1]):
        rows = rows[1:]
    table, cells = {}, {}
    for line, row in rows:
        image_id = row[0].strip()
        if any(c.strip() for c in row[2:]):
            joined = ";".join(name for c in row[1:] for name in _split_names(c))
            raise VplError(f"{path}: line {line} (id {image_id!r}) has {len(row)} cells, but a row is id,labels; put "
                           f"all its labels in one cell separated by ';' (e.g. {image_id},{joined})")
        if image_id in table:
            raise VplError(f"{path}: duplicate id {image_id!r}; keep one row per image")
        cells[image_id] = row[1].strip() if len(row) > 1 else ""
        table[image_id] = _split_names(cells[image_id])
    return table, cells


def _check_delimiter(path: Path, rows: list[tuple[int, list[str]]]) -> None:
    """A file saved with ';' or tabs between its columns (Excel in many locales) reads as one cell per row."""
    if not rows or any(len(row) > 1 for _, row in rows):
        return
    first = rows[0][1][0]
    for sep, name in (("\t", "tab"), (";", "semicolon")):
        if sep in first:
            raise VplError(f"{path}: {name}-delimited (no row has a ',', line {rows[0][0]} has {name}s); labels.csv "
                           "separates its columns with ',': save it as comma-separated id,labels (labels in one "
                           "cell, separated by ';')")


def _is_header(path: Path, row: list[str]) -> bool:
    """Whether the first row is a header; a header must be ``id,labels`` (one line naming what is wrong)."""
    names = [cell.strip().lower() for cell in row]
    if names[0] != "id":
        if any(name in _HEADER_WORDS for name in names[1:]):
            raise VplError(f"{path}: the header must start with id,labels (found {','.join(c.strip() for c in row)!r}"
                           "); rename its first column to id")
        return False
    while len(names) > 2 and not names[-1]:  # 'id,labels,' (a trailing comma) names no column
        names.pop()
    unknown = next((row[i].strip() for i, n in enumerate(names) if i >= len(_CSV_COLUMNS) or n != _CSV_COLUMNS[i]),
                   None)
    if unknown is not None or len(names) < 2:
        what = f"unknown column {unknown!r}" if unknown is not None else "no labels column"
        raise VplError(f"{path}: {what} in its header; the columns are id,labels (labels in one cell, separated by "
                       "';'): remove or rename it")
    return True


def _split_names(cell: str) -> list[str]:
    """'cat;dog', 'cat|dog' or 'cat dog' -> ['cat', 'dog'] (so multi-word names need ';' or '|' between labels)."""
    sep = ";" if ";" in cell else "|" if "|" in cell else None
    return [name.strip() for name in cell.split(sep) if name.strip()]


def _check_space_split(cells: dict[str, str], classes: Sequence[str], path: Path) -> None:
    """A cell split at spaces that holds a multi-word class ('potted plant') cut it in two: refuse with the fix."""
    multi = [c for c in classes if len(c.split()) > 1]
    for image_id, cell in cells.items() if multi else ():
        if ";" in cell or "|" in cell:
            continue
        words = f" {' '.join(cell.split())} "
        if (name := next((c for c in multi if f" {' '.join(c.split())} " in words), None)) is not None:
            raise VplError(f"{path}: the labels of id {image_id!r} ({cell!r}) are split at spaces, which cuts class "
                           f"{name!r} in two; separate labels with ';' (e.g. {image_id},{name};...)")


def _folder_classes(path: Path, table: dict[str, list[str]], labels_path: Path | None = None
                    ) -> tuple[str, ...]:
    """``classes.txt`` (background prepended when absent), else the sorted label names.

    'background' is class 0 (see :func:`read_classes_txt`); as an image label next to others it is refused too
    (class 0 is implicit in every image); alone it marks an image with no objects. Without classes.txt, two names
    that differ only in case ('Ring', 'ring') are refused: they would silently become two classes.
    """
    if path.is_file():
        return read_classes_txt(path)
    names = sorted({name for labels in table.values() if not _only_background(labels) for name in labels})
    where = labels_path or path.parent
    if BACKGROUND in names:
        raise VplError(f"{where}: 'background' is used as an image label next to others; drop it (class 0 is in "
                       "every image; alone, it marks an image with no objects), or add classes.txt")
    by_lower: dict[str, str] = {}
    for name in names:
        if (other := by_lower.setdefault(name.casefold(), name)) != name:
            raise VplError(f"{where}: labels {other!r} and {name!r} differ only in case and would be two classes; "
                           f"use one spelling (or list both in {path.name} if they are two classes)")
    if not names:
        raise VplError(f"{path.parent}: no classes; add classes.txt or labels")
    return (BACKGROUND, *names)


def _folder_split_file(root: Path, split: str | None) -> Path | None:
    """``splits/<split>.txt``; None (= every labelled id) without a split or without a splits/ folder.

    With a splits/ folder an unknown split name is an error: silently using every id would mix train into val.
    """
    splits = root / "splits"
    return split_file(splits, split) if split is not None and splits.is_dir() else None

"""Datasets as one currency: :class:`Dataset` (classes + items) read from VOC, COCO, a plain folder or a manifest.

Every stage consumes a :class:`Dataset`; ``open_dataset`` detects the on-disk layout, so users point vpltool at the
folder they downloaded. Layouts are described in docs/datasets.md. Torch-free.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import IGNORE_INDEX
from .errors import ContractError, VplError
from .io import files, read_json, recorded_dataset_identity, stage_record_path
from .presets import BACKGROUND, COCO_CLASSES, VOC_CLASSES, preset_for

MANIFEST_FORMAT = "vpltool.manifest/1"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LAYOUTS = (
    "a VOC root (JPEGImages/ + ImageSets/Segmentation/)", "a COCO root (JPEGImages/ or train2014/ + train.txt)",
    "a folder (images/ + labels.csv or labels.json)")  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One image: ``labels`` are class indices 1..C (background never listed) in order of first appearance."""

    id: str  # file stem, unique within a dataset; per-image outputs are <out>/<id>.<ext>
    image: Path
    labels: tuple[int, ...]
    gt: Path | None = None  # ground-truth mask PNG (0 = background, 1..C, 255 = ignore) if known


@dataclass
class Dataset:
    """Classes (index 0 == 'background') and the items of one split."""

    kind: str  # 'voc' | 'coco' | 'folder' | 'manifest'
    root: Path
    split: str | None
    classes: tuple[str, ...]
    items: list[Item]
    preset: str | None  # 'voc' | 'coco' | None: picks CLIP-ES prompt names and background words

    def identity(self) -> dict[str, Any]:
        """What stage records store to tell datasets apart, without listing every item."""
        classes_sha = hashlib.sha256(json.dumps(list(self.classes)).encode()).hexdigest()
        # absolute root so later stages reopen it from any working directory; a manifest is reopened as a whole
        return {"kind": self.kind, "root": str(Path(self.root).resolve()),
                "split": None if self.kind == "manifest" else self.split, "n_items": len(self.items),
                "classes_sha": "sha256:" + classes_sha}  # fmt: skip

    def shard(self, index: int, count: int) -> Dataset:
        """Every ``count``-th item starting at ``index`` (``--shard index/count``); interleaved so shards are even."""
        if count < 1 or not 0 <= index < count:
            raise VplError(f"--shard {index}/{count}: need 0 <= index < count, e.g. --shard 0/4 ... --shard 3/4")
        return replace(self, items=self.items[index::count])

    def by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self.items}


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
        dataset = _open_manifest(path)
    elif (voc := _find_voc_root(path)) is not None:
        dataset = _open_voc(voc, split or "train", labels_file, allow_pickle)
    elif _is_coco_root(path, labels_file):
        dataset = _open_coco(path, split or "train", labels_file)
    elif (path / "images").is_dir():
        dataset = _open_folder(path, split, labels_file)
    else:
        raise VplError(f"{path}: unknown dataset layout; expected a manifest .json, " + "; ".join(LAYOUTS))
    _check_items(dataset)
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


def _check_items(dataset: Dataset) -> None:
    where = f"{dataset.root}" + (f" (split {dataset.split!r})" if dataset.split else "")
    if not dataset.items:
        raise VplError(f"{where}: the dataset is empty; check the split / labels file")
    ids = Counter(item.id for item in dataset.items)
    if (dup := next((i for i, n in ids.items() if n > 1), None)) is not None:
        raise VplError(f"{where}: duplicate id {dup!r}; ids (file stems) must be unique, rename or drop one")


def _index_files(folder: Path, exts: Sequence[str], key=str, *, strict: bool = False) -> dict[Any, Path]:
    """``key(stem) -> path`` for the files of ``folder`` with one of ``exts``: one directory scan, not a stat per id.

    Two files with one key (x.jpg, x.png): with ``strict`` a VplError, else the earlier extension in ``exts`` wins
    (a stray copy in a downloaded dataset should not block it).
    """
    if not folder.is_dir():
        return {}
    index: dict[Any, Path] = {}
    rank = {ext: i for i, ext in enumerate(exts)}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in rank or not _is_file(entry):
                continue
            old = index.get(k := key(stem))
            if old is not None and strict:
                raise VplError(f"{folder}: both {old.name} and {entry.name}; ids (stems) must be unique, remove one")
            if old is None or (rank[ext.lower()], entry.name) < (rank[old.suffix.lower()], old.name):
                index[k] = Path(entry.path)
    return index


def _is_file(entry: os.DirEntry) -> bool:
    """``entry.is_file()``, with a one-line error for an entry that cannot be followed (a symlink loop: ELOOP)."""
    try:
        return entry.is_file()
    except OSError as e:
        raise VplError(f"{entry.path}: cannot be read ({e.strerror}); a broken or looping symlink? remove it or "
                       "point it at the image") from None


def _not_utf8(path: Path, e: UnicodeDecodeError) -> ContractError:
    """The one-line error for a text file in another encoding (Latin-1, UTF-16, ...)."""
    data = path.read_bytes()
    line = data[: e.start].count(b"\n") + 1
    return ContractError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8, "
                         f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}")


def _read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; '#' starts a comment line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise VplError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def _split_ids(listing: Path) -> list[str]:
    """The ids of a split file, each once: an id listed twice is an error naming this file (not the dataset)."""
    ids = [_split_id(line) for line in _read_lines(listing)]
    twice = next((i for i, n in Counter(ids).items() if n > 1), None)
    if twice is not None:
        raise VplError(f"{listing}: id {twice!r} is listed {ids.count(twice)} times; keep one line per image")
    return ids


def _missing_image(listing: Path, image_id: str, where: Path | str) -> VplError:
    return VplError(f"{listing}: image for id {image_id!r} not found in {where}; restore it or drop the id")


# --------------------------------------------------------------------------------------------- VOC
def _find_voc_root(path: Path) -> Path | None:
    for root in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / "ImageSets" / "Segmentation").is_dir():
            return root
    return None


def _split_file(folder: Path, split: str) -> Path:
    path = folder / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in folder.glob("*.txt"))
        raise VplError(f"{path}: no split {split!r} here (found: {', '.join(found) or 'none'}); pass --split or "
                       "add the file")  # fmt: skip
    return path


def _split_id(line: str) -> str:
    """'2007_000032' or the old '/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png' form."""
    return Path(line.split()[0]).stem


def _open_voc(root: Path, split: str, labels_file: Path | None, allow_pickle: bool) -> Dataset:
    listing = _split_file(root / "ImageSets" / "Segmentation", split)
    ids = _split_ids(listing)
    images = _index_files(root / "JPEGImages", IMAGE_EXTS)
    # SBD-augmented masks win: they exist for all of train_aug, SegmentationClass only for train/val
    masks = _index_files(root / "SegmentationClass", (".png",))
    masks.update(_index_files(root / "SegmentationClassAug", (".png",)))
    npy = _read_cls_labels(labels_file, allow_pickle) if labels_file is not None else None
    items = []
    for image_id in ids:
        if image_id not in images:
            raise _missing_image(listing, image_id, root / "JPEGImages")
        if npy is not None:
            labels = _npy_labels(npy, image_id, labels_file)
        else:
            labels = _xml_labels(root / "Annotations" / f"{image_id}.xml")
        items.append(Item(image_id, images[image_id], labels, masks.get(image_id)))
    classes = (BACKGROUND, *VOC_CLASSES)
    return Dataset("voc", root, split, classes, items, "voc")


def _xml_labels(xml: Path) -> tuple[int, ...]:
    """Class indices of every <object> (difficult ones included), in order of first appearance."""
    try:
        tree = ET.parse(xml)
    except FileNotFoundError:
        raise VplError(f"{xml}: annotation not found; restore Annotations/ or pass --labels-file cls_labels.npy "
                       "--allow-pickle") from None
    except ET.ParseError as e:
        raise ContractError(f"{xml}: not valid XML ({e}); re-download Annotations/") from None
    names = [(obj.findtext("name") or "").strip() for obj in tree.getroot().findall("object")]
    return _names_to_labels(names, VOC_CLASSES, xml)


def _names_to_labels(
    names: Iterable[str], fg: Sequence[str], source: Path, image_id: str | None = None
) -> tuple[int, ...]:
    index = {name: i + 1 for i, name in enumerate(fg)}
    labels: list[int] = []
    for name in names:
        if name not in index:
            where = f" (id {image_id!r})" if image_id is not None else ""
            raise VplError(f"{source}: unknown class {name!r}{where}; expected one of {', '.join(fg[:5])}, ...; "
                           "fix the name or add it to classes.txt")  # fmt: skip
        labels.append(index[name])
    return tuple(dict.fromkeys(labels))  # unique, order of first appearance


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


def _npy_labels(table: dict[str, np.ndarray], image_id: str, path: Path) -> tuple[int, ...]:
    row = table.get(image_id.replace("_", ""))
    if row is None:
        raise VplError(f"{path}: no labels for id {image_id!r}; use a labels file made for this split")
    if row.shape != (len(VOC_CLASSES),):
        raise ContractError(f"{path}: labels of {image_id!r} have shape {row.shape}, expected ({len(VOC_CLASSES)},)")
    return tuple(int(i) + 1 for i in np.flatnonzero(row > 0))


# --------------------------------------------------------------------------------------------- COCO
_COCO_IMAGE_DIRS = ("JPEGImages", "train2014", "val2014")
_COCO_LIST_DIRS = ("", "coco14")  # CLIP-ES keeps its lists in coco14/
_COCO_NAME = re.compile(r"^(?:COCO_[a-z]+\d{4}_)?(\d+)$")


def _coco_key(stem: str) -> int | str:
    """'COCO_train2014_000000000009', '000000000009' and '9' all -> 9 (2014 image ids are unique across splits)."""
    m = _COCO_NAME.match(stem)
    return int(m.group(1)) if m else stem


def _is_coco_root(path: Path, labels_file: Path | None) -> bool:
    if not any((path / d).is_dir() for d in _COCO_IMAGE_DIRS):
        return False
    lists = [path / d / f"{s}.txt" for d in _COCO_LIST_DIRS for s in ("train", "val")]
    return labels_file is not None or any(p.is_file() for p in lists)


def _open_coco(root: Path, split: str, labels_file: Path | None) -> Dataset:
    found = [root / d / f"{split}.txt" for d in _COCO_LIST_DIRS if (root / d / f"{split}.txt").is_file()]
    listing = labels_file or (found + [root / f"{split}.txt"])[0]
    if not listing.is_file():
        raise VplError(f"{listing}: no COCO label list for split {split!r} (looked in {root} and {root / 'coco14'}); "
                       "pass --split or --labels-file")  # fmt: skip
    # the split's own folders first, so a copy of the image elsewhere never shadows it
    dirs = list(dict.fromkeys((f"JPEGImages/{split}", f"{split}2014", *_COCO_IMAGE_DIRS)))
    images: dict[Any, Path] = {}
    for d in reversed(dirs):
        images.update(_index_files(root / d, IMAGE_EXTS, _coco_key))
    mask_dir = root / "SegmentationClass"
    masks = {**_index_files(mask_dir, (".png",), _coco_key), **_index_files(mask_dir / split, (".png",), _coco_key)}
    items, seen = [], set()
    for line in _read_lines(listing):
        name, *ids = line.split()
        key = _coco_key(Path(name).stem)
        if key in seen:
            raise VplError(f"{listing}: image {name!r} is listed twice; keep one line per image")
        seen.add(key)
        if key not in images:
            raise _missing_image(listing, Path(name).stem, " or ".join(f"{d}/" for d in dirs))
        labels = _coco_labels(ids, listing, name)
        items.append(Item(images[key].stem, images[key], labels, masks.get(key)))
    return Dataset("coco", root, split, (BACKGROUND, *COCO_CLASSES), items, "coco")


def _coco_labels(ids: Sequence[str], listing: Path, name: str) -> tuple[int, ...]:
    """CLIP-ES lists hold 0-based ids in the 80-class order; vpltool's labels are 1-based (0 = background)."""
    bad = next((tok for tok in ids if not tok.isdigit() or int(tok) >= len(COCO_CLASSES)), None)
    if bad is not None:
        raise ContractError(f"{listing}: bad class id {bad!r} for {name}; ids are 0..79 in COCO category order")
    return tuple(dict.fromkeys(int(tok) + 1 for tok in ids))


# --------------------------------------------------------------------------------------------- generic folder
def _open_folder(root: Path, split: str | None, labels_file: Path | None) -> Dataset:
    labels_path = labels_file or _folder_labels_path(root)
    table = _read_label_table(labels_path)
    classes = _folder_classes(root / "classes.txt", table, labels_path)
    listing = _folder_split_file(root, split) or labels_path
    ids = _split_ids(listing) if listing != labels_path else list(table)
    images = _index_files(root / "images", IMAGE_EXTS, strict=True)
    masks = _index_files(root / "masks", (".png",))
    items = []
    for image_id in ids:
        if image_id not in table:
            raise VplError(f"{labels_path}: no labels for id {image_id!r} (listed in {listing}); add a row")
        if image_id not in images:
            raise _missing_image(listing, image_id, root / "images")
        labels = _names_to_labels(table[image_id], classes[1:], labels_path, image_id)
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
        raise _not_utf8(path, e) from None
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
        names = _read_lines(path)
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
    return _split_file(splits, split) if split is not None and splits.is_dir() else None


# --------------------------------------------------------------------------------------------- manifest
def _open_manifest(path: Path) -> Dataset:
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ContractError(f"{path}: not a vpltool manifest (format {found!r}, expected {MANIFEST_FORMAT!r})")
    classes = data.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or classes[0] != BACKGROUND or \
            not all(isinstance(c, str) for c in classes):
        raise ContractError(f"{path}: 'classes' must list 'background' first, then the classes")
    items = [_manifest_item(path, raw, len(classes)) for raw in data.get("items", [])]
    return Dataset("manifest", path, data.get("split"), tuple(classes), items, preset_for(classes))


def _manifest_item(path: Path, raw: Any, n_classes: int) -> Item:
    try:
        image_id, image, labels = str(raw["id"]), path.parent / raw["image"], tuple(int(i) for i in raw["labels"])
        gt = path.parent / raw["gt"] if raw.get("gt") else None
    except (KeyError, TypeError, ValueError) as e:
        raise ContractError(f"{path}: bad item {str(raw)[:80]} ({e!r}); items need id, image, labels") from None
    if any(not 1 <= i < n_classes for i in labels):
        raise ContractError(f"{path}: item {image_id!r} has labels {list(labels)} outside 1..{n_classes - 1}")
    if not image.is_file():
        raise _missing_image(path, image_id, image.parent)
    return Item(image_id, image, labels, gt)


def write_manifest(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a manifest JSON (paths relative to the manifest's folder), atomically.

    One item per line, so a diff of two manifests shows which images changed.
    """
    path = Path(path)
    base = path.parent.resolve()

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), base)).as_posix()

    head = {"format": MANIFEST_FORMAT, "classes": list(dataset.classes), "ignore_index": IGNORE_INDEX,
            "split": dataset.split}  # fmt: skip
    rows = [{"id": it.id, "image": rel(it.image), "labels": list(it.labels), **({"gt": rel(it.gt)} if it.gt else {})}
            for it in dataset.items]  # fmt: skip
    items = ",\n".join("    " + json.dumps(row) for row in rows)
    text = json.dumps(head, indent=2)[:-2] + f',\n  "items": [\n{items}\n  ]\n}}\n'
    with files.atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


__all__ = ["MANIFEST_FORMAT", "IMAGE_EXTS", "Item", "Dataset", "open_dataset", "open_recorded", "write_manifest"]

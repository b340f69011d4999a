"""What every layout shares: :class:`Item`, :class:`Dataset`, and the file-listing helpers (one-line errors)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ContractError, VplError

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

    def stamp(self) -> list[Any] | None:
        """``[file name, bytes, modification time ns]`` of the image (None if it cannot be read): what tells a
        replaced image from the one an item was made from, without reading a pixel."""
        try:
            st = os.stat(self.image)
        except OSError:
            return None
        return [self.image.name, st.st_size, st.st_mtime_ns]


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

    def items_sha(self) -> str:
        """A digest of every item's id, labels and image file (name, size, modification time): stage records keep
        it (``inputs.items``) so that a resume notices replaced images or changed labels without reading a pixel
        (one ``stat`` per image)."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(json.dumps([item.id, list(item.labels), item.stamp()]).encode() + b"\n")
        return "sha256:" + h.hexdigest()

    def folders(self) -> list[Path]:
        """The folders this dataset's files live in (images, masks, annotations): no output may go there."""
        found = {item.image.parent for item in self.items} | {item.gt.parent for item in self.items if item.gt}
        found |= set(layout_folders(self.kind, Path(self.root)))
        return sorted(found)

    def shard(self, index: int, count: int) -> Dataset:
        """Every ``count``-th item starting at ``index`` (``--shard index/count``); interleaved so shards are even."""
        if count < 1 or not 0 <= index < count:
            raise VplError(f"--shard {index}/{count}: need 0 <= index < count, e.g. --shard 0/4 ... --shard 3/4")
        return replace(self, items=self.items[index::count])

    def by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self.items}


def layout_folders(kind: str, root: Path) -> list[Path]:
    """The data folders of a dataset layout under ``root`` (none for a manifest: its items name theirs)."""
    names = {"folder": ("images", "masks"),
             "voc": ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets"),
             "coco": ("JPEGImages", "train2014", "val2014", "SegmentationClass")}.get(kind, ())
    return [root / name for name in names]


def index_files(folder: Path, exts: Sequence[str], key=str, *, strict: bool = False) -> dict[Any, Path]:
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
            if ext.lower() not in rank or not is_file(entry):
                continue
            old = index.get(k := key(stem))
            if old is not None and strict:
                raise VplError(f"{folder}: both {old.name} and {entry.name}; ids (stems) must be unique, remove one")
            if old is None or (rank[ext.lower()], entry.name) < (rank[old.suffix.lower()], old.name):
                index[k] = Path(entry.path)
    return index


def is_file(entry: os.DirEntry) -> bool:
    """``entry.is_file()``, with a one-line error for an entry that cannot be followed (a symlink loop: ELOOP)."""
    try:
        return entry.is_file()
    except OSError as e:
        raise VplError(f"{entry.path}: cannot be read ({e.strerror}); a broken or looping symlink? remove it or "
                       "point it at the image") from None


def not_utf8(path: Path, e: UnicodeDecodeError) -> ContractError:
    """The one-line error for a text file in another encoding (Latin-1, UTF-16, ...)."""
    data = path.read_bytes()
    line = data[: e.start].count(b"\n") + 1
    return ContractError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8, "
                         f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}")


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; '#' starts a comment line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise VplError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def split_ids(listing: Path) -> list[str]:
    """The ids of a split file, each once: an id listed twice is an error naming this file (not the dataset)."""
    ids = [split_id(line) for line in read_lines(listing)]
    twice = next((i for i, n in Counter(ids).items() if n > 1), None)
    if twice is not None:
        raise VplError(f"{listing}: id {twice!r} is listed {ids.count(twice)} times; keep one line per image")
    return ids


def check_id(image_id: str, source: Path | str) -> str:
    """``image_id`` unchanged if it is a plain file name; a VplError naming ``source`` (the file that lists it)
    otherwise.

    Ids are data, not paths: every per-image output is ``<out>/<id>.<ext>``, so an id holding a path separator or
    ``..`` would write outside the output folder, a leading dot would hide the file (and ``..``), and a control
    character (a newline, a NUL) makes a name no tool shows faithfully. Every dataset reader calls this before
    anything is written.
    """
    why = ("is empty" if not image_id else
           "holds a path separator" if "/" in image_id or "\\" in image_id or (os.altsep or "/") in image_id else
           "starts with a dot" if image_id.startswith(".") else
           "holds a control character" if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in image_id) else None)
    if why is not None:
        raise VplError(f"{source}: id {image_id!r} {why}; ids name the output files (<out>/<id>.<ext>), so they must "
                       "be plain file names: rename the image (and its label row)")
    return image_id


def missing_image(listing: Path, image_id: str, where: Path | str) -> VplError:
    return VplError(f"{listing}: image for id {image_id!r} not found in {where}; restore it or drop the id")

def split_id(line: str) -> str:
    """'2007_000032' or the old '/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png' form."""
    return Path(line.split()[0]).stem

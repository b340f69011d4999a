"""What every layout shares: :class:`Item`, :class:`Dataset`, and the file-listing helpers (one-line errors)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config.presets import BACKGROUND
from ..errors import VplError, VplWarning
from ..io.digests import note_digest
from ..io.files import check_id, comment_problem, not_utf8, sha256_file, text_lines  # noqa: F401 (check_id, not_utf8: the readers import them here)

MANIFEST_FORMAT = "vpltool.manifest/1"
# every still-photo format Pillow decodes by itself (vpltool.io.images reads them all alike); the earlier of two
# files of one stem wins where a layout allows it
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga")
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

    def content(self) -> str | None:
        """The sha256 of the image file's bytes (None if it cannot be read): what tells an image from another of the
        same name and byte size (a flipped or re-encoded copy). :func:`content_sha` caches it per process."""
        return content_sha(self.image)


# (real path, size, mtime ns, inode) -> sha256 of the bytes: a stage asks for a dataset's digests more than once
# (its own record, each folder it reads), and hashes every image only the first time.
_CONTENT_CACHE: dict[tuple[str, int, int, int], str] = {}


def content_sha(path: Path) -> str | None:
    """``sha256:<hex>`` of the file's bytes, cached per process by its real path, size, modification time and inode
    (a replaced file changes at least one of them); None if it cannot be read."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        key = (real, st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in _CONTENT_CACHE:
            with open(real, "rb") as fh:
                _CONTENT_CACHE[key] = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
            # the image is read later by vpltool.io.read_as_named, which holds it to these bytes
            note_digest(real, [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev], _CONTENT_CACHE[key])
        return _CONTENT_CACHE[key]
    except OSError:
        return None


@dataclass
class Dataset:
    """Classes (index 0 == 'background') and the items of one split."""

    kind: str  # 'voc' | 'coco' | 'folder' | 'manifest' | a benchmark's | 'image' / 'images' (plain photos)
    root: Path
    split: str | None
    classes: tuple[str, ...]
    items: list[Item]
    preset: str | None  # 'voc' | 'coco' | None: picks CLIP-ES prompt names and background words
    sources: tuple[Path, ...] = ()  # files read from outside the root (a --labels-file): protected like the root
    # a benchmark's stored ground-truth value -> label (256 entries, -1 = never stored; vpltool.data.benchmarks)
    gt_map: tuple[int, ...] | None = None

    def identity(self) -> dict[str, Any]:
        """What stage records store to tell datasets apart, without listing every item; with ``labels_file`` (path
        and sha256) when the labels came from a file given from elsewhere (``--labels-file``), so that later stages
        read them again from it (:func:`vpltool.data.reopen`)."""
        classes_sha = hashlib.sha256(json.dumps(list(self.classes)).encode()).hexdigest()
        # absolute root so later stages reopen it from any working directory; a manifest is reopened as a whole
        ident = {"kind": self.kind, "root": str(Path(self.root).resolve()),
                 "split": None if self.kind == "manifest" else self.split, "n_items": len(self.items),
                 "classes_sha": "sha256:" + classes_sha}  # fmt: skip
        if self.sources:
            source = Path(self.sources[0])
            ident["labels_file"] = {"path": str(source.resolve()), "sha256": sha256_file(source)}
        return ident

    def items_sha(self) -> str:
        """A digest of every item's id, labels and image file (name, size, modification time): stage records keep
        it (``inputs.items``) so that a resume notices replaced images or changed labels without reading a pixel
        (one ``stat`` per image)."""
        return self._digests()[0]

    def files_sha(self) -> str:
        """A digest of every item's id, labels and image file (name and size, no time): what a copy of the dataset
        elsewhere (a moved dataset, ``eval --data``) must match, and what tells another dataset with the same ids
        apart (one ``stat`` per image). The ground-truth masks are not in it: they are what `eval` scores against,
        never what a folder is made from (corrected masks are scored as they are)."""
        return self._digests()[1]

    def content_sha(self) -> str:
        """A digest of every item's id, labels and image bytes (:meth:`Item.content`): what tells a dataset from
        another with the same ids, names and byte sizes (every image flipped, or re-encoded to the same size), and
        what a moved copy keeps. Reads every image once per process (bench/bench_dataset_check.py times it)."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(json.dumps([item.id, list(item.labels), item.content()]).encode() + b"\n")
        return "sha256:" + h.hexdigest()

    def masks_sha(self) -> str:
        """A digest of every item's id and ground-truth mask bytes (None for an item without one): what `eval`
        scores against, so that a copy of the dataset given in its place (``eval --data``) must hold the same
        masks as well as the same images. Reads every mask once per process."""
        h = hashlib.sha256()
        for item in self.items:
            h.update(json.dumps([item.id, None if item.gt is None else content_sha(item.gt)]).encode() + b"\n")
        return "sha256:" + h.hexdigest()

    def inputs(self) -> dict[str, Any]:
        """What a stage records of the dataset it read (its record's ``inputs``): ``dataset`` (:meth:`identity`),
        ``items`` (:meth:`items_sha`), ``files`` (:meth:`files_sha`), ``content`` (:meth:`content_sha`) and
        ``masks`` (:meth:`masks_sha`); :func:`vpltool.data.check_recorded` compares them with the dataset a later
        stage reads."""
        items, files = self._digests()
        return {"dataset": self.identity(), "items": items, "files": files, "content": self.content_sha(),
                "masks": self.masks_sha()}

    def _digests(self) -> tuple[str, str]:
        """``(items_sha, files_sha)`` from one pass, one ``stat`` per image (a network file system pays per call)."""
        with_time, without = hashlib.sha256(), hashlib.sha256()
        for item in self.items:
            stamp = item.stamp()
            head = [item.id, list(item.labels)]
            with_time.update(json.dumps([*head, stamp]).encode() + b"\n")
            without.update(json.dumps([*head, None if stamp is None else stamp[:2]]).encode() + b"\n")
        return "sha256:" + with_time.hexdigest(), "sha256:" + without.hexdigest()

    def folders(self) -> list[Path]:
        """This dataset's own paths, where no output may go (:func:`vpltool.io.check_outputs`): its root (a
        layout's folder with its label table, split files and class list; a manifest file), the folders its images,
        masks and annotations live in, and a label file given from elsewhere (``--labels-file``)."""
        if self.kind == "image":  # one photo (vpltool.data.images): the file alone; outputs may lie beside it
            return [Path(self.root)]
        found = {item.image.parent for item in self.items} | {item.gt.parent for item in self.items if item.gt}
        found |= set(layout_folders(self.kind, Path(self.root))) | {Path(self.root), *self.sources}
        return sorted(found)

    def shard(self, index: int, count: int) -> Dataset:
        """Every ``count``-th item starting at ``index`` (``--shard index/count``); interleaved so shards are even."""
        if count < 1 or not 0 <= index < count:
            raise VplError(f"--shard {index}/{count}: need 0 <= index < count, e.g. --shard 0/4 ... --shard 3/4")
        return replace(self, items=self.items[index::count])

    def by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self.items}


# layouts defined in their own modules (the eight benchmarks) register their data folders here, so that this module
# never imports them (they import it)
LAYOUT_FOLDERS: dict[str, Any] = {}


def layout_folders(kind: str, root: Path) -> list[Path]:
    """The data folders of a dataset layout under ``root`` (none for a manifest: its items name theirs)."""
    if kind in LAYOUT_FOLDERS:
        return LAYOUT_FOLDERS[kind](root)
    names = {"folder": ("images", "masks"),
             "voc": ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets"),
             "coco": ("JPEGImages", "train2014", "val2014", "SegmentationClass")}.get(kind, ())
    return [root / name for name in names]


def index_files(folder: Path, exts: Sequence[str], key=str, *, strict: bool = False,
                what: str = "image") -> dict[Any, Path]:
    """``key(stem) -> path`` for the files of ``folder`` with one of ``exts``: one directory scan, not a stat per id.

    Two files with one key (x.jpg, x.png): with ``strict`` a VplError, else the earlier extension in ``exts`` wins
    (a stray copy in a downloaded dataset should not block it). An entry named like one (``what``: an image, a
    mask) that is no regular file is one line (:func:`refuse_special`).
    """
    if not folder.is_dir():
        return {}
    index: dict[Any, Path] = {}
    rank = {ext: i for i, ext in enumerate(exts)}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in rank or not is_file(entry, what):
                if ext.lower() in rank:  # a pipe, a device, a link to nothing, a folder: never skipped unsaid
                    refuse_special(entry, what)
                continue
            old = index.get(k := key(stem))
            if old is not None and strict:
                raise VplError(f"{folder}: both {old.name} and {entry.name}; ids (stems) must be unique, remove one")
            if old is None or (rank[ext.lower()], entry.name) < (rank[old.suffix.lower()], old.name):
                index[k] = Path(entry.path)
    return index


def is_file(entry: os.DirEntry, what: str = "image") -> bool:
    """``entry.is_file()``, with a one-line error for an entry that cannot be followed (a symlink loop: ELOOP)."""
    try:
        return entry.is_file()
    except OSError as e:
        raise VplError(f"{entry.path}: cannot be read ({e.strerror}); a broken or looping symlink? remove it or "
                       f"point it at the {what}") from None


def refuse_special(entry: os.DirEntry, what: str = "image") -> None:
    """One line for a folder entry named like an input file (``what``: an image, a mask) that is no regular file: a
    FIFO, a link to a device (``/dev/zero``), a socket, a link to nothing, a folder; each was skipped silently (one
    image fewer than the folder shows) or hung the reader (a FIFO, /dev/zero never end)."""
    import stat

    try:
        mode = os.stat(entry.path).st_mode
    except FileNotFoundError:
        kind = f"a link to {os.readlink(entry.path)}, which is not there" if entry.is_symlink() else "gone"
    except OSError as e:
        kind = f"unreadable ({e.strerror})"
    else:
        kind = ("a pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file")
        if entry.is_symlink():
            kind = f"a link to {os.readlink(entry.path)}, {kind}"
    raise VplError(f"{entry.path}: {kind}, not {'an' if what[0] in 'aeiou' else 'a'} {what} file; remove it, or put "
                   f"the {what} itself there")


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines; '#' starts a comment line (the rule of every list file: :func:`text_lines`)."""
    return text_lines(path)


def read_classes_txt(path: Path) -> tuple[str, ...]:
    """``classes.txt``: one class name per line, 'background' (class 0) first or left out (then prepended).

    On any other line 'background' is refused (prepending it once more gave ``[background, ..., background]``, and
    moving it would shift every mask value), and so is a name listed twice.
    """
    names = read_lines(path)
    if len(set(names)) != len(names):
        raise VplError(f"{path}: a class name is listed twice; keep one line per class")
    if BACKGROUND in names[1:]:
        raise VplError(f"{path}: 'background' is on line {names.index(BACKGROUND) + 1}; it is class 0, so put it "
                       "on the first line (mask value 0) or leave it out (it is then added as class 0)")
    names = names if names and names[0] == BACKGROUND else [BACKGROUND, *names]
    if len(names) < 2:
        raise VplError(f"{path}: no classes; list one class name per line")
    return tuple(names)


def names_to_labels(
    names: Iterable[str], fg: Sequence[str], source: Path, image_id: str | None = None, *,
    fix: str = "fix the name",
) -> tuple[int, ...]:  # fmt: skip
    """Class names -> indices 1..C (``fg`` = the classes without background), unique, in order of first appearance.

    ``fix`` ends the message for an unknown name (what the user edits for this layout); a name that matches a class
    but for its case says which.
    """
    index = {name: i + 1 for i, name in enumerate(fg)}
    labels: list[int] = []
    for name in names:
        if name not in index:
            where = f" (id {image_id!r})" if image_id is not None else ""
            if comment_problem(name):
                raise VplError(f"{source}: class {name!r}{where} {comment_problem(name)}, so it cannot be a class "
                               "name; rename the class")
            near = next((c for c in fg if c.casefold() == name.casefold()), None)
            hint = f"; did you mean {near!r}? (names are case-sensitive)" if near is not None else ""
            raise VplError(f"{source}: unknown class {name!r}{where}{hint}; expected one of {', '.join(fg[:5])}"
                           f"{', ...' if len(fg) > 5 else ''}; {fix}")
        labels.append(index[name])
    return tuple(dict.fromkeys(labels))  # unique, order of first appearance


def split_ids(listing: Path) -> list[str]:
    """The ids of a split file, each once: an id listed twice is an error naming this file (not the dataset)."""
    ids = [split_id(line) for line in read_lines(listing)]
    twice = next((i for i, n in Counter(ids).items() if n > 1), None)
    if twice is not None:
        raise VplError(f"{listing}: id {twice!r} is listed {ids.count(twice)} times; keep one line per image")
    return ids


def missing_image(listing: Path, image_id: str, where: Path | str | Sequence[Path]) -> VplError:
    """The one-line error for an id whose image is not in ``where`` (a folder, or the folders searched in order).

    When a file of that id is there with an extension vpltool does not decode (``.gif``, ``.tif``), or the id was
    written with its extension (``a.png``), the message says so instead of "not found".
    """
    folders = [where] if isinstance(where, (str, Path)) else list(where)
    for folder in (Path(f) for f in folders):
        if (hint := _image_hint(folder, image_id)) is not None:
            return VplError(f"{listing}: {hint}")
    shown = " or ".join(f"{f}/" for f in folders) if len(folders) > 1 else f"{folders[0]}"
    return VplError(f"{listing}: image for id {image_id!r} not found in {shown}; restore it or drop the id")


def _image_hint(folder: Path, image_id: str) -> str | None:
    """Why ``image_id`` has no image in ``folder`` although something close is there; None if nothing is."""
    stem, ext = os.path.splitext(image_id)
    if ext.lower() in IMAGE_EXTS and stem and any((folder / f"{stem}{e}").is_file() for e in _EXT_VARIANTS):
        return (f"id {image_id!r} is written with its extension; ids are file stems: write {stem!r} "
                f"(the image is {folder / stem}.*)")
    try:
        others = sorted(p for p in folder.glob(glob.escape(image_id) + ".*") if p.stem == image_id and p.is_file())
    except OSError:
        return None
    if others:
        found = others[0]
        return (f"image for id {image_id!r} is {found}, and {found.suffix or 'that'} images are not supported; "
                f"convert it to one of {', '.join(IMAGE_EXTS)}")
    return None


_EXT_VARIANTS = tuple(dict.fromkeys(e for ext in IMAGE_EXTS for e in (ext, ext.upper())))


def split_id(line: str) -> str:
    """The id a split-file line names, kept whole: '2007_000032', 'img.v2', 'chat noir' (dots and spaces are part
    of an id). A line with a '/' is the old VOC form '/JPEGImages/2007_000032.jpg /SegmentationClassAug/....png':
    its id is the image's file name without an image extension (paths may hold spaces too)."""
    if "/" not in line:
        return line
    image = re.split(r"\s+(?=\S*/)", line, maxsplit=1)[0]  # the mask path starts at the next word with a '/'
    name = image.rstrip("/").rsplit("/", 1)[-1]
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTS and stem else name


def warn_unlabelled(items: Sequence[Item], source: Path | str) -> None:
    """A :class:`VplWarning` naming the images without any label (read as background only: often a typo, or
    an annotation whose objects were lost)."""
    empty = [it.id for it in items if not it.labels]
    if not empty:
        return
    n = len(empty)
    shown = ", ".join(empty[:5]) + (f" (+{n - 5} more)" if n > 5 else "")
    warnings.warn(VplWarning(f"{n} image{'s have' if n > 1 else ' has'} no labels: {shown} ({source}); "
                             f"{'they are' if n > 1 else 'it is'} read as background only, check "
                             f"{'their' if n > 1 else 'its'} labels"), stacklevel=3)

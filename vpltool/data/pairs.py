"""Image–text pairs, what `train-pgseg` learns from: webdataset tar shards or a folder of images with captions.

Two layouts (docs/pgseg.md):

* **Shards** as img2dataset writes them: ``NNNNN.tar`` files holding ``KEY.jpg`` (or ``.png``/``.jpeg``) and
  ``KEY.txt`` (or ``.text``) per sample; PAIRS is a folder of them, one ``.tar``, or a brace pattern as
  webdataset expands it (``cc3m/{00000..00331}.tar``, ``{00000,00007}.tar``). Keys follow webdataset's rule
  (:func:`webdataset.tariterators.base_plus_ext`: the name up to the first dot of its last part), so a shard reads
  here as webdataset reads it; a member that rule would misread (a key with a dot: ``a.b.jpg`` is key ``a``,
  extension ``b.jpg``), a sample with two images (``.jpg`` and ``.png``) or two captions (``.txt`` and ``.text``)
  and a caption that is not UTF-8 are refused, never dropped or picked silently. Each shard's
  members are indexed once (offsets), so a sample is read by position: an epoch's order, a rank's share and a
  resumed run's batches are exact, as the reference's streaming shuffle buffer is not.
* **A folder** with ``captions.json`` (``{id: caption}``) or ``captions.tsv`` (``id<TAB>caption``) and the images
  ``<id>.<ext>`` in ``images/``, ``JPEGImages/`` or the folder itself. A split listing (``splits/<split>.txt`` or
  ``ImageSets/Segmentation/<split>.txt``) keeps that split only, read by the rule of every dataset's split files
  (:func:`vpltool.data.common.split_ids`: ``#`` comment lines, an id listed twice refused) and named by the rule
  of every ``--split`` (:func:`vpltool.data.voc.split_file`: an unknown split is refused, listing those found):
  the demo world (`make-world`) is such a folder, and its ``train`` split is what the toy CLIP learned from. Where
  there is nothing to split (shards, a folder without listings) a split given is refused. An id twice in
  ``captions.tsv``, two images of one id, and a ``captions.json`` beside a ``captions.tsv`` that says otherwise
  are refused too.

Every sample is checked before a model loads (:func:`check_pairs`): a missing or empty caption, an image that does
not decode, a caption longer than the text context: one line naming the shard and key (or the file) and the fix.
"""

from __future__ import annotations

import io as _io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VplError
from .common import IMAGE_EXTS

SHARD_IMAGE_EXTS = ("jpg", "png", "jpeg")  # the reference's rename(image='jpg;png;jpeg')
SHARD_TEXT_EXTS = ("text", "txt")  # rename(text='text;txt'): a sample holding both is refused
CAPTION_FILES = ("captions.json", "captions.tsv")
SPLIT_FOLDERS = ("splits", "ImageSets/Segmentation")  # where a folder's split listings live
DEFAULT_SPLIT = "train"  # a folder with split listings trains on this one unless told
IMAGE_DIRS = ("images", "JPEGImages", ".")


@dataclass(frozen=True)
class Pair:
    """One sample: ``key`` (the image id, or ``shard.tar:key``), the image's ``source`` (a file, or the shard with
    the member's ``(offset, size)`` in ``span``) and its caption (stripped)."""

    key: str
    source: str
    span: tuple[int, int] | None
    caption: str

    def image_bytes(self) -> bytes:
        if self.span is None:
            return Path(self.source).read_bytes()
        with open(self.source, "rb") as f:
            f.seek(self.span[0])
            return f.read(self.span[1])

    def where(self) -> str:
        return self.key if self.span is not None else self.source


@dataclass
class PairSet:
    """The pairs of PAIRS in a fixed order (shards by name then members in tar order; a folder by id)."""

    root: Path
    kind: str  # "shards" | "folder"
    pairs: list[Pair]
    files: list[Path]  # the shards, or the caption file: the run's inputs
    split: str | None = None  # the split listing read (a folder with listings); None: every pair

    def identity(self) -> dict:
        """What a run records of its pairs, by content (:mod:`vpltool.io.inputs`): ``files`` (each shard, or the
        caption file, as ``{path, sha256}``) and ``sha256``, one digest over every pair's key, caption and image
        bytes (a shard's through its file's digest, a folder's images each read once per process). The paths are
        absolute and never compared: the same data by another path is the same input, a file replaced under the
        same name and size is not."""
        from ..io import file_identity, files_digest
        from .common import content_sha

        files = [file_identity(Path(p).resolve()) for p in self.files]
        images = ([None] * len(self.pairs) if self.kind == "shards"
                  else [content_sha(Path(p.source)) for p in self.pairs])
        digest = files_digest([*(f["sha256"] for f in files),
                               *([p.key, p.caption, p.span, sha] for p, sha in zip(self.pairs, images))])
        return {"path": str(Path(self.root).resolve()), "kind": self.kind, "split": self.split,
                "count": len(self.pairs), "files": files, "sha256": digest}


def open_pairs(path: str | os.PathLike, split: str | None = None) -> PairSet:
    """The pairs of ``path`` (module doc). ``split``: the split listing of a folder that has them (None:
    :data:`DEFAULT_SPLIT` there); refused where there is nothing to split (shards, a folder without listings).
    One-line VplError for a path that is neither layout, a shard that is no tar, a sample without caption or
    image, an unknown split."""
    text = str(path)
    if "{" in text and "}" in text:  # webdataset's shard pattern (braceexpand: ranges and comma lists)
        from braceexpand import braceexpand

        _no_split(split, text, "a shard pattern")
        shards = [Path(p) for p in braceexpand(text)]
        missing = [p for p in shards if not p.is_file()]
        if missing:
            raise VplError(f"{missing[0]}: no such shard ({len(missing)} of the pattern's {len(shards)} are missing); "
                           "fix the pattern or download the shards")
        return _open_shards(Path(text).parent, shards)
    root = Path(path)
    if root.is_file() and root.suffix == ".tar":
        _no_split(split, root, "a shard")
        return _open_shards(root.parent, [root])
    if not root.is_dir():
        raise VplError(f"{root}: no such folder or .tar shard; pass img2dataset's output folder (webdataset .tar "
                       "shards) or a folder of images with captions.json")
    shards = sorted(root.glob("*.tar"))
    if shards:
        _no_split(split, root, "a folder of shards")
        return _open_shards(root, shards)
    return _open_folder(root, split)


def _no_split(split: str | None, where: object, what: str) -> None:
    """A split given where there is nothing to split is refused: the run would train on every pair."""
    if split is not None:
        raise VplError(f"--split {split}: {where} is {what}: nothing to split, so every pair would be trained on; "
                       "drop --split (or pass the split's own shards or folder)")


def _open_shards(root: Path, shards: Sequence[Path]) -> PairSet:
    pairs: list[Pair] = []
    for shard in shards:
        pairs.extend(_shard_pairs(shard))
    if not pairs:
        raise VplError(f"{root}: its {len(shards)} shard(s) hold no sample; check the img2dataset run")
    return PairSet(root, "shards", pairs, list(shards))


def _shard_pairs(shard: Path) -> Iterator[Pair]:
    """The samples of one shard, in tar order, the caption read now (a few bytes), the image located."""
    from webdataset.tariterators import base_plus_ext

    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    known = (*SHARD_IMAGE_EXTS, *SHARD_TEXT_EXTS)
    try:
        with tarfile.open(shard, "r:") as tar:
            _check_end(shard, tar.getmembers())
            members = [m for m in tar.getmembers() if m.isfile()]
            for m in members:
                prefix, ext = base_plus_ext(m.name)
                if prefix is None or Path(m.name).name.startswith("."):
                    continue
                ext = ext.lower()
                if ext not in known and ext.rpartition(".")[2] in known:  # 'a.b.jpg': key 'a', extension 'b.jpg'
                    raise VplError(f"{shard}:{m.name}: a key with a dot ({m.name.rpartition('.')[0]!r}); webdataset "
                                   f"cuts a key at its first dot (key {prefix!r}, extension {ext!r}), so the "
                                   "sample would be lost; rename its files without a dot in the key")
                samples.setdefault(prefix, {})[ext] = m
            for key, parts in samples.items():
                name = f"{shard.name}:{key}"
                images = [e for e in SHARD_IMAGE_EXTS if e in parts]
                texts = [e for e in SHARD_TEXT_EXTS if e in parts]
                for found, what in ((images, "images"), (texts, "captions")):
                    if len(found) > 1:
                        raise VplError(f"{name}: two {what} ({', '.join('.' + e for e in found)}) for one key; "
                                       "keep one (which one the sample means, nothing says)")
                if not images and not texts:
                    continue  # img2dataset's per-sample .json alone (a failed download) is not a sample
                if not texts:
                    raise VplError(f"{name}: no caption (.txt) beside the image; re-run img2dataset with "
                                   "caption_col set, or drop the sample from the shard")
                if not images:
                    raise VplError(f"{name}: a caption with no image (.jpg/.png); drop the sample from the shard")
                data = tar.extractfile(parts[texts[0]]).read()
                try:  # webdataset's text decoder: UTF-8, strict
                    caption = data.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise VplError(f"{name}.{texts[0]}: the caption is not UTF-8 text (byte 0x{data[e.start]:02x}); "
                                   "re-encode it as UTF-8 (iconv -f latin1 -t utf-8) or drop the sample") from None
                image = parts[images[0]]
                yield Pair(name, str(shard), (image.offset_data, image.size), caption)
    except tarfile.TarError as e:
        raise VplError(f"{shard}: not a readable tar shard ({e}); re-download it or leave it out") from None


def _check_end(shard: Path, members: list[tarfile.TarInfo]) -> None:
    """Refuse a shard without a zero block after its last member: Python's tarfile (and webdataset over it) reads a
    tar cut short at a block boundary, or whose next header is garbage, as one that ends there, so a broken download
    would lose its last samples without a word. Every tar writer ends the archive with zero blocks."""
    if not members:
        return
    last = max(members, key=lambda m: m.offset_data)
    end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    with open(shard, "rb") as f:
        f.seek(end)
        tail = f.read(tarfile.BLOCKSIZE)
    if len(tail) < tarfile.BLOCKSIZE or tail.count(0) != len(tail):
        why = "the file ends" if len(tail) < tarfile.BLOCKSIZE else "what follows is no tar header"
        raise VplError(f"{shard}: cut short after member {last.name} ({why} without the archive's end blocks): a "
                       "broken download or copy, whose later samples would be lost; re-download it or leave it out")


def _caption_text(path: Path) -> str:
    from ..io.files import not_utf8

    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def _caption_table(path: Path) -> dict[str, str]:
    """``{id: caption}`` of ``captions.json`` or ``captions.tsv`` (one ``id<TAB>caption`` a line; an id twice is
    refused)."""
    text = _caption_text(path)
    if path.suffix == ".json":
        try:
            table = json.loads(text)
        except ValueError as e:
            raise VplError(f"{path}: not valid JSON ({e}); write {{\"image id\": \"caption\", ...}}") from None
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise VplError(f"{path}: not an object of id -> caption text; write {{\"image id\": \"caption\"}}")
        return {str(k): v for k, v in table.items()}
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        if not tab:
            raise VplError(f"{path}: line {n} has no tab; write one `id<TAB>caption` per line")
        key = key.strip()
        if key in out:
            raise VplError(f"{path}: id {key!r} on lines {first[key]} and {n}; keep one caption per image")
        out[key], first[key] = caption, n
    return out


def _read_captions(root: Path) -> tuple[dict[str, str], Path]:
    found = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if not found:
        raise VplError(f"{root}: no .tar shards and no {' or '.join(CAPTION_FILES)}; pass img2dataset's output "
                       "folder or a folder of images with captions.json ({\"image id\": \"caption\"})")
    tables = [_caption_table(path) for path in found]
    if len(tables) > 1 and {k: v.strip() for k, v in tables[0].items()} != \
            {k: v.strip() for k, v in tables[1].items()}:
        raise VplError(f"{found[1]}: disagrees with {found[0].name} beside it (which captions the run means, "
                       "nothing says); remove one of them")
    return tables[0], found[0]


def _split_listing(root: Path, split: str | None) -> Path | None:
    """The listing of ``split`` (None: :data:`DEFAULT_SPLIT`) in the folder's split folder, by the rule of every
    ``--split`` (:func:`vpltool.data.voc.split_file`); None for a folder without listings, where a split given is
    refused."""
    from .voc import split_file

    folder = next((root / d for d in SPLIT_FOLDERS if (root / d).is_dir() and any((root / d).glob("*.txt"))), None)
    if folder is None:
        _no_split(split, root, "a caption folder without split listings (splits/<split>.txt)")
        return None
    return split_file(folder, split or DEFAULT_SPLIT)


def _open_folder(root: Path, split: str | None) -> PairSet:
    from .common import split_ids

    captions, caption_file = _read_captions(root)
    ids = sorted(captions)
    listing = _split_listing(root, split)
    if listing is not None:
        split = split or DEFAULT_SPLIT
        ids = split_ids(listing)
        lost = [i for i in ids if i not in captions]
        if lost:
            raise VplError(f"{caption_file}: no caption for {lost[0]} of split {split!r} ({len(lost)} missing); "
                           "add it, or pass another --split")
    images = _index_images(root)
    pairs = []
    for key in ids:
        path = images.get(key)
        if path is None:
            raise VplError(f"{caption_file}: caption of {key!r} but no image {key}.jpg/.png in "
                           f"{', '.join(str(root / d) for d in IMAGE_DIRS)}; add it or drop its caption")
        pairs.append(Pair(key, str(path), None, captions[key].strip()))
    if not pairs:
        raise VplError(f"{caption_file}: no captions; write {{\"image id\": \"caption\", ...}}")
    return PairSet(root, "folder", pairs, [caption_file], split if listing is not None else None)


def _index_images(root: Path) -> dict[str, Path]:
    """id -> its image, in the first of :data:`IMAGE_DIRS` that has one; two images of one id in one folder
    (``a.jpg`` beside ``a.png``) are refused."""
    found: dict[str, Path] = {}
    for sub in IMAGE_DIRS:
        folder = root / sub
        if not folder.is_dir():
            continue
        here: dict[str, Path] = {}
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTS and entry.is_file():
                if stem in here:
                    raise VplError(f"{entry.path}: a second image of id {stem!r} beside {here[stem].name}; keep one "
                                   "(which one the caption means, nothing says)")
                here[stem] = Path(entry.path)
        for stem, path in here.items():
            found.setdefault(stem, path)
    return found


def _image_problem(pair: Pair) -> str | None:
    from PIL import Image

    from ..io.images import _check_still

    try:
        with Image.open(_io.BytesIO(pair.image_bytes())) as im:
            try:  # the rule of every stage's images: one still frame of a format vpltool reads
                _check_still(im, Path(pair.where()))
            except VplError as e:
                return str(e).split(": ", 1)[1].split(";")[0]
            im.load()  # a full decode: a truncated JPEG passes Image.verify()
            if "A" in im.getbands() and im.getchannel("A").getextrema()[1] == 0:
                return "every pixel is fully transparent"
            im.convert("RGB").load()
    except Exception as e:  # PIL raises many kinds for a bad file
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        # PIL names the in-memory file by its repr ("<_io.BytesIO object at 0x...>"), which says nothing to a user
        return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", text) or type(e).__name__
    return None


def check_pairs(pairs: PairSet, length: Callable[[str], int], context: int, *, truncate: bool = False,
                workers: int = 1) -> None:
    """Refuse, in one line naming the sample, an empty caption, a caption of more than ``context`` tokens
    (``length``: its token count with start and end; unless ``truncate``, which cuts it as the reference's
    ``Tokenize(truncate=True)`` does) and an image that does not decode (every image is decoded once, in
    ``workers`` threads)."""
    for p in pairs.pairs:
        if not p.caption:
            raise VplError(f"{p.where()}: empty caption; write one, or drop the sample")
        if not truncate:
            n = length(p.caption)
            if n > context:
                raise VplError(f"{p.where()}: caption of {n} tokens is longer than the text context ({context}): "
                               f"{p.caption[:60]!r}; shorten it, or pass --truncate (the reference cuts it)")
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decodes without the GIL
        for p, problem in zip(pairs.pairs, pool.map(_image_problem, pairs.pairs)):
            if problem is not None:
                raise VplError(f"{p.where()}: the image does not decode ({problem}); re-download it or drop the "
                               "sample")


def decode_rgb(pair: Pair):
    """The pair's image as a PIL RGB image."""
    from PIL import Image

    with Image.open(_io.BytesIO(pair.image_bytes())) as im:
        return im.convert("RGB")


class whole_view:  # noqa: N801 (a transform, named as torchvision's functions)
    """PIL image -> the ``side`` square RandomResizedCrop(scale=(1, 1)) falls back to when its tries fail: the whole
    image when its aspect is within 3/4 .. 4/3, else its centre cut to that bound; bilinear, antialiased. Drawn from
    no RNG (a try could land a pixel off the box by rounding): a function of the image alone."""

    def __init__(self, side: int):
        self.side = side

    def __call__(self, img):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        w, h = img.size
        cw, ch = (w, int(round(w / (3 / 4)))) if w / h < 3 / 4 else \
            (int(round(h * (4 / 3))), h) if w / h > 4 / 3 else (w, h)
        return F.resized_crop(img, (h - ch) // 2, (w - cw) // 2, ch, cw, [self.side, self.side],
                              InterpolationMode.BILINEAR, antialias=True)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` samples in ``epoch``: the same for any number of ranks (a global batch is a
    contiguous run of it, cut into the ranks' shares)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


__all__ = ["Pair", "PairSet", "DEFAULT_SPLIT", "open_pairs", "check_pairs", "decode_rgb", "whole_view", "epoch_order",
           "CAPTION_FILES"]

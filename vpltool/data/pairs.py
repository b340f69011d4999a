"""Image–text pairs, what `train-pgseg` learns from: webdataset tar shards or a folder of images with captions.

Two layouts (docs/pgseg.md):

* **Shards** as img2dataset writes them: ``NNNNN.tar`` files holding ``KEY.jpg`` (or ``.png``/``.jpeg``) and
  ``KEY.txt`` (or ``.text``) per sample; PAIRS is a folder of them, one ``.tar``, or a brace pattern
  (``cc3m/{00000..00331}.tar``). Keys follow webdataset's rule (:func:`webdataset.tariterators.base_plus_ext`:
  the name up to the first dot of its last part), so a shard reads here as webdataset reads it. Each shard's
  members are indexed once (offsets), so a sample is read by position: an epoch's order, a rank's share and a
  resumed run's batches are exact, as the reference's streaming shuffle buffer is not.
* **A folder** with ``captions.json`` (``{id: caption}``) or ``captions.tsv`` (``id<TAB>caption``) and the images
  ``<id>.<ext>`` in ``images/``, ``JPEGImages/`` or the folder itself. A split listing (``splits/<split>.txt`` or
  ``ImageSets/Segmentation/<split>.txt``) keeps that split only: the demo world (`make-world`) is such a folder,
  and its ``train`` split is what the toy CLIP learned from.

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
SHARD_TEXT_EXTS = ("txt", "text")  # rename(text='text;txt')
CAPTION_FILES = ("captions.json", "captions.tsv")
SPLIT_LISTINGS = ("splits/{}.txt", "ImageSets/Segmentation/{}.txt")
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
        return {"path": str(Path(self.root).resolve()), "kind": self.kind, "count": len(self.pairs),
                "files": files, "sha256": digest}


def open_pairs(path: str | os.PathLike, split: str | None = "train") -> PairSet:
    """The pairs of ``path`` (module doc); ``split`` applies to a folder with a split listing (None: every
    captioned image). One-line VplError for a path that is neither layout, a shard that is no tar, a sample
    without caption or image."""
    text = str(path)
    if "{" in text and ".." in text:
        from braceexpand import braceexpand

        shards = [Path(p) for p in braceexpand(text)]
        missing = [p for p in shards if not p.is_file()]
        if missing:
            raise VplError(f"{missing[0]}: no such shard ({len(missing)} of the pattern's {len(shards)} are missing); "
                           "fix the pattern or download the shards")
        return _open_shards(Path(text).parent, shards)
    root = Path(path)
    if root.is_file() and root.suffix == ".tar":
        return _open_shards(root.parent, [root])
    if not root.is_dir():
        raise VplError(f"{root}: no such folder or .tar shard; pass img2dataset's output folder (webdataset .tar "
                       "shards) or a folder of images with captions.json")
    shards = sorted(root.glob("*.tar"))
    if shards:
        return _open_shards(root, shards)
    return _open_folder(root, split)


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
    try:
        with tarfile.open(shard, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for m in members:
                prefix, ext = base_plus_ext(m.name)
                if prefix is None or Path(m.name).name.startswith("."):
                    continue
                samples.setdefault(prefix, {})[ext.lower()] = m
            for key, parts in samples.items():
                name = f"{shard.name}:{key}"
                image = next((parts[e] for e in SHARD_IMAGE_EXTS if e in parts), None)
                text = next((parts[e] for e in SHARD_TEXT_EXTS if e in parts), None)
                if image is None and text is None:
                    continue  # img2dataset's per-sample .json alone (a failed download) is not a sample
                if text is None:
                    raise VplError(f"{name}: no caption (.txt) beside the image; re-run img2dataset with "
                                   "caption_col set, or drop the sample from the shard")
                if image is None:
                    raise VplError(f"{name}: a caption with no image (.jpg/.png); drop the sample from the shard")
                caption = tar.extractfile(text).read().decode("utf-8", errors="replace").strip()
                yield Pair(name, str(shard), (image.offset_data, image.size), caption)
    except tarfile.TarError as e:
        raise VplError(f"{shard}: not a readable tar shard ({e}); re-download it or leave it out") from None


def _read_captions(root: Path) -> tuple[dict[str, str], Path]:
    for name in CAPTION_FILES:
        path = root / name
        if not path.is_file():
            continue
        if name.endswith(".json"):
            try:
                table = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise VplError(f"{path}: not valid JSON ({e}); write {{\"image id\": \"caption\", ...}}") from None
            if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
                raise VplError(f"{path}: not an object of id -> caption text; write {{\"image id\": \"caption\"}}")
            return {str(k): v for k, v in table.items()}, path
        table = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            key, tab, caption = line.partition("\t")
            if not tab:
                raise VplError(f"{path}: line {n} has no tab; write one `id<TAB>caption` per line")
            table[key.strip()] = caption
        return table, path
    raise VplError(f"{root}: no .tar shards and no {' or '.join(CAPTION_FILES)}; pass img2dataset's output folder "
                   "or a folder of images with captions.json ({\"image id\": \"caption\"})")


def _open_folder(root: Path, split: str | None) -> PairSet:
    captions, caption_file = _read_captions(root)
    ids = sorted(captions)
    if split is not None:
        listing = next((root / p.format(split) for p in SPLIT_LISTINGS if (root / p.format(split)).is_file()), None)
        if listing is not None:
            ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
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
    return PairSet(root, "folder", pairs, [caption_file])


def _index_images(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for sub in IMAGE_DIRS:
        folder = root / sub
        if not folder.is_dir():
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTS and stem not in found and entry.is_file():
                found[stem] = Path(entry.path)
    return found


def _image_problem(pair: Pair) -> str | None:
    from PIL import Image

    try:
        with Image.open(_io.BytesIO(pair.image_bytes())) as im:
            im.convert("RGB").load()  # a full decode: a truncated JPEG passes Image.verify()
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


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` samples in ``epoch``: the same for any number of ranks (a global batch is a
    contiguous run of it, cut into the ranks' shares)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


__all__ = ["Pair", "PairSet", "open_pairs", "check_pairs", "decode_rgb", "epoch_order", "CAPTION_FILES"]

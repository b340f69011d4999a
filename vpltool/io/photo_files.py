"""A photo's file before it is decoded: whether it is whole, and how a message tells the user to leave it out.

* :func:`cut_short` finds a file cut short (a broken download or copy) from its structure alone, without decoding a
  pixel, so that the header pass every stage makes before its model loads (:func:`vpltool.io.image_size`) refuses
  it in a second, not after the model has loaded. A JPEG's marker segments are walked to its first scan, whose
  end-of-image marker must follow (its entropy-coded data never holds one); a PNG's chunks must each fit the file up
  to ``IEND``; a WebP's RIFF size and a BMP's file size must fit it. Data after the image (a motion photo's video,
  a camera's trailer) is allowed.
* :func:`leave_out` words the second half of a fix ("re-download it, or ..."): an image of a dataset is removed
  from its split, one of a folder of photos moved out of the folder, a single photo replaced by another. The data
  layer notes each photo source when it opens one (:func:`note_source`); any other path is a dataset's image.
"""

from __future__ import annotations

import os
from pathlib import Path

SPLIT = "remove it from the split"
_SOURCES: dict[str, str] = {}  # an absolute photo or folder of photos -> how one of its images is left out


def note_source(path: str | os.PathLike, how: str) -> None:
    """Messages about ``path`` (a photo) or the images in it (a folder of photos) end with ``how`` to leave one out
    (e.g. "pass another photo") instead of :data:`SPLIT`."""
    _SOURCES[os.path.abspath(path)] = how


def leave_out(path: str | os.PathLike) -> str:
    """How to leave the image at ``path`` out of the run, for a fix (:func:`note_source`; :data:`SPLIT` when no
    photo source holds it)."""
    here = os.path.abspath(path)
    while True:
        if here in _SOURCES:
            return _SOURCES[here]
        parent = os.path.dirname(here)
        if parent == here:
            return SPLIT
        here = parent


def cut_short(path: Path, image_format: str | None) -> str | None:
    """Why the image file at ``path`` (of Pillow's ``image_format``) is cut short, or None when it is whole or of a
    format not checked here. Reads the file's header and its last 64 KiB (all of it only for a JPEG whose tail holds
    no end-of-image marker: a small file, data after the image, or one cut short); a PNG's chunk headers alone."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
        if image_format in ("JPEG", "MPO"):
            fh.seek(max(0, size - _TAIL))
            if size > _TAIL and b"\xff\xd9" in fh.read():
                return None  # the common case: the image ends in the tail
            fh.seek(0)
            return _jpeg_cut(fh.read())
        if image_format == "PNG":
            return _png_cut(fh, size)
    if image_format == "WEBP" and head[:4] == b"RIFF":
        want = 8 + int.from_bytes(head[4:8], "little")
        return f"{size:,} of the {want:,} bytes its RIFF header gives" if size < want else None
    if image_format == "BMP" and len(head) >= 6:
        want = int.from_bytes(head[2:6], "little")  # 0 in some writers' files: nothing to compare
        return f"{size:,} of the {want:,} bytes its header gives" if size < want else None
    return None


_TAIL = 1 << 16


def _jpeg_cut(data: bytes) -> str | None:
    """A JPEG's segments from SOI to its first scan (SOS), then the end-of-image marker (EOI) after the scan."""
    at = 2  # after SOI
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None  # not a marker where one belongs: damaged otherwise, left to the decoder
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:
            return None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            at += 2
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        end = at + 2 + length
        if end > len(data):
            return f"its {_MARKERS.get(marker, 'header')} segment runs past the end of the file"
        if marker == 0xDA:  # the first scan: its entropy-coded data (and any later scan) ends at EOI
            return None if data.find(b"\xff\xd9", end) >= 0 else "no end-of-image marker after its image data"
        at = end
    return "it ends inside its header"


_MARKERS = {0xC0: "frame", 0xC2: "frame", 0xC4: "Huffman table", 0xDB: "quantisation table", 0xDA: "scan",
            0xE1: "EXIF"}


def _png_cut(fh, size: int) -> str | None:
    """A PNG's chunks, each of its declared length (and a CRC) inside the file, up to ``IEND`` (headers only)."""
    at = 8  # the signature
    while at + 8 <= size:
        fh.seek(at)
        head = fh.read(8)
        length, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind == b"IEND":
            return None
        at += 12 + length
        if at > size:
            return f"its {kind.decode('latin-1')} chunk runs past the end of the file"
    return "no IEND chunk at its end"


__all__ = ["SPLIT", "cut_short", "leave_out", "note_source"]

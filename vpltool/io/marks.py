"""Which kind of vpltool file a path holds, read from the file itself, so that no run replaces a file by mistake.

Every file a command writes under a name the user gives (or at a fixed place of a run folder) records its kind:

* a safetensors file: its ``vpltool.kind`` metadata (``prototypes`` with its ``vpltool.source``: ``prototypes:text``,
  ``prototypes:vision``; ``decoder``, ``decoder-checkpoint``, ``features``, ``cam`` ...);
* a JSON file: the field ``"vpltool_file"`` of its object (:func:`marked`): ``scores`` (``eval --json``) ...;
* a PNG picture: its text chunk ``vpltool`` (:func:`png_info`): ``loss-curve``, ``contact-sheet`` ...

:func:`vpltool.io.check_outputs` reads it (:func:`file_kind`) for every ``file`` output that exists: a file of the
kind the run writes is replaced (the same command run again), anything else (a user's notes, the learned
prototypes under ``eval --json``, a contact sheet under ``--plot``) only with ``--overwrite``. An empty file holds
nothing to lose and is replaced too.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

MARK = "vpltool_file"  # the JSON field and the PNG text chunk that name a file's kind
PNG_MARK = "vpltool"

# kind -> what it is, for messages (the text-supervised families' kinds come from their configurations, and kinds
# outside both are named as they are)
FILE_KINDS = {
    "prototypes:text": "text prototypes (`text-prototypes`)",
    "prototypes:vision": "vision prototypes (`learn-prototypes`)",
    "features": "an image's features (`extract`)",
    "cam": "an image's CAMs (`cam`)",
    "cam-debug": "an image's CAM steps (`cam --save-debug`)",
    "decoder": "a trained decoder (`train-decoder`)",
    "decoder-checkpoint": "a decoder checkpoint (`train-decoder`)",
    "scores": "scores (`eval --json`)",
    "per-image-scores": "per-image scores (`eval --per-image`)",
    "diagnosis": "a diagnosis (`diagnose --json`)",
    "loss-curve": "a loss curve (`learn-prototypes --plot`)",
    "run-metrics": "a run's metrics (`demo-report`)",
    "contact-sheet": "a contact sheet (`demo-report`)",
    "pseudo-choice": "a pseudo-mask choice (`choose-pseudo`)",
    "segmentation": "a photo's mask (`Segmentation.save`)",
    "record": "a vpltool folder record",
    "toy-dino": "a toy DINO's weights (`train-toy-dino`)",
    "toy-dino-record": "a toy DINO's record (`train-toy-dino`)",
    "toy-sam": "a toy SAM's weights (`train-toy-sam`)",
    "toy-sam-record": "a toy SAM's record (`train-toy-sam`)",
    "toy-sam3": "a toy SAM 3's weights (`train-toy-sam3`)",
    "toy-sam3-record": "a toy SAM 3's record (`train-toy-sam3`)",
    "toy-radio-record": "a toy RADIO's record (`train-toy-radio`)",
}


def describe_kind(kind: str) -> str:
    """What a file of ``kind`` is, for messages: this table's kinds, then the text-supervised families' (each
    family's configuration names the files its training writes: :func:`vpltool.models.registry.text_file_kinds`)."""
    if kind in FILE_KINDS:
        return FILE_KINDS[kind]
    from ..models.registry import text_file_kinds

    return text_file_kinds().get(kind, f"a vpltool `{kind}` file")


def marked(obj: dict, kind: str) -> dict:
    """``obj`` with its kind first (``"vpltool_file": kind``), as a JSON file output is written."""
    return {MARK: kind, **{k: v for k, v in obj.items() if k != MARK}}


def png_info(kind: str):
    """The PNG text chunk that records a picture's kind (PIL ``pnginfo``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_MARK, kind)
    return info


def file_kind(path: str | os.PathLike) -> str | None:
    """The kind of vpltool file at ``path`` (see the module doc), or None: a file vpltool did not write (or wrote
    before files recorded their kind), or one that cannot be read as the format its content starts with."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head.startswith(b"\x89PNG"):
                return _png_kind(path)
            if len(head) == 8 and (n := struct.unpack("<Q", head)[0]) < 100_000_000:
                kind = _safetensors_kind(fh.read(n))
                if kind is not None:
                    return kind
            return _json_kind(path) if head.lstrip()[:1] == b"{" else None
    except OSError:
        return None


def item_marks(path: str | os.PathLike) -> dict[str, str] | None:
    """What a per-item file records about itself (``vpltool.id``, ``vpltool.run``, ``vpltool.kind``: see
    :mod:`vpltool.io.provenance`), from its header alone (a PNG's text chunks, which vpltool writes before the
    pixels; a safetensors file's metadata): no pixel or tensor is read. ``{}`` for a file that records nothing,
    None for one that cannot be read as a PNG or a safetensors file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if not head.startswith(b"\x89PNG") and len(head) == 8 and (n := struct.unpack("<Q", head)[0]) < 100_000_000:
                meta = json.loads(fh.read(n)).get("__metadata__") or {}
                return {k: v for k, v in meta.items() if isinstance(v, str)}
        if not head.startswith(b"\x89PNG"):
            return None
        from PIL import Image

        with Image.open(path) as img:
            return {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
    except (OSError, SyntaxError, ValueError, AttributeError):
        return None


def _safetensors_kind(header: bytes) -> str | None:
    """``vpltool.kind`` of a safetensors header (and ``:source`` of a prototypes file: both stored as plain
    strings, :func:`vpltool.io.write_tensors`)."""
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return None
    kind, source = meta.get("vpltool.kind"), meta.get("vpltool.source")
    if not isinstance(kind, str):
        return None
    return f"{kind}:{source}" if kind == "prototypes" and isinstance(source, str) else kind


def _json_kind(path: Path) -> str | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get(MARK), str):
        return obj[MARK]
    return "record" if isinstance(obj.get("stage"), str) and "vpltool" in obj else None


def _png_kind(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            kind = img.info.get(PNG_MARK)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return kind if isinstance(kind, str) else None


__all__ = ["FILE_KINDS", "MARK", "describe_kind", "file_kind", "item_marks", "marked", "png_info"]

"""What a run depends on, identified by content: how a record names its inputs, and which one changed since.

Every file a run reads (a dataset's images, labels and masks; shards and caption files; ``--init``, ``--nouns``,
prototypes; the weights of every model it loads) is recorded as ``{"path", "sha256", ...}``
(:func:`vpltool.io.file_identity`, :func:`weights_identity`), a collection of files as one digest over theirs. A
resume, the next shard, the next stage and ``predict`` compare records with :func:`vpltool.io.by_content` (the paths
dropped: the same bytes by another path are the same input; other bytes under the same name are not) and refuse, in
one line naming the input that changed (:func:`changed_inputs`), to go on from a record of other inputs: a run is
never finished on data it did not start with.

Cost: each file is read once per run (its sha256; a dataset's images through the per-process cache of
:func:`vpltool.data.common.content_sha`); a file of 1 MiB or more (model weights) once at all, its digest kept by
:mod:`vpltool.io.digests` under its size, modification *and change* times, inode and device. Name, size and
modification time alone would not do: a copy made with ``cp -p`` or ``rsync -t`` keeps all three over other bytes,
which is the change this module exists to notice; no copy keeps the change time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .files import by_content, file_identity, jsonable

# values of a weights option that name no file (timm's hub weights, random weights)
NOT_FILES = ("hub", "none", "")


def weights_identity(value: str | os.PathLike | None, **extra: Any) -> Any:
    """A weights option as a record keeps it: ``{"path", "sha256"}`` of the file it names (its path absolute, so
    that a later stage finds it from any folder), else the value itself (``hub``, ``none``, None)."""
    if value is None or str(value) in NOT_FILES or not Path(value).expanduser().is_file():
        return None if value is None else str(value)
    return file_identity(Path(value).expanduser().resolve(), **extra)


def files_digest(parts: Iterable[Any]) -> str:
    """``sha256:<hex>`` over ``parts`` (JSON values: ids, captions, each file's digest), in order."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def _short(sha: Any) -> str:
    return str(sha).removeprefix("sha256:")[:12] + "…" if isinstance(sha, str) else json.dumps(sha)


def _describe(option: str, before: Any, now: Any) -> str:
    """One input's change in words: the file, its digest there and here; for a collection (``files``), the first
    file whose content differs."""
    if isinstance(now, dict) and isinstance(before, dict):
        old_files, new_files = before.get("files"), now.get("files")
        if isinstance(old_files, list) and isinstance(new_files, list):
            if len(old_files) != len(new_files):
                return f"{option} {now.get('path', '')}: {len(new_files)} files where the record has {len(old_files)}"
            for old, new in zip(old_files, new_files):
                if by_content(old) != by_content(new):
                    name = new.get("path") if isinstance(new, dict) else new
                    return f"{option}: {name} changed (sha256 {_short(_sha(old))} there, {_short(_sha(new))} here)"
        if "count" in now and before.get("count") != now.get("count"):
            return f"{option} {now.get('path', '')}: {now['count']} items where the record has {before.get('count')}"
        if "sha256" in now:
            return (f"{option} {now.get('path', '')}: its content changed (sha256 {_short(before.get('sha256'))} "
                    f"there, {_short(now['sha256'])} here)")
    if isinstance(now, dict) and "sha256" in now:
        return f"{option} {now.get('path')}: other content than the record's {_shown(before)}"
    if isinstance(now, str) and isinstance(before, str) and now.startswith("sha256:"):
        return f"{option} changed (sha256 {_short(before)} there, {_short(now)} here)"
    return f"{option}: {_shown(before)} there, {_shown(now)} here"


def _sha(value: Any) -> Any:
    return value.get("sha256") if isinstance(value, dict) else value


def _shown(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"(sha256 {_short(value['sha256'])})"
    return "none" if value is None else json.dumps(value)[:60]


def changed_inputs(before: Mapping[str, Any] | None, now: Mapping[str, Any],
                   options: Mapping[str, str] = {}) -> list[str]:
    """Each input of ``now`` whose content differs from ``before``'s (a record's ``inputs``), in words naming it:
    ``options`` maps a key to the option that gave it (``init`` -> ``--init``). Paths alone never differ
    (:func:`vpltool.io.by_content`); a key only one side has is a change (an input added or dropped)."""
    old, new = jsonable(dict(before or {})), jsonable(dict(now))
    said = []
    for key in dict.fromkeys([*old, *new]):
        if by_content(_placed(key, old)) != by_content(_placed(key, new)):
            said.append(_describe(options.get(key, key), old.get(key), new.get(key)))
    return said


def _placed(key: str, inputs: Mapping[str, Any]) -> Any:
    """``inputs[key]``, less the dataset's ``root`` where ``inputs`` also records every image's bytes and labels
    (``content``): then the data is compared by content, and a dataset moved with the same bytes is the same."""
    value = inputs.get(key)
    if key == "dataset" and "content" in inputs and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "root"}
    return value


__all__ = ["NOT_FILES", "changed_inputs", "files_digest", "weights_identity"]

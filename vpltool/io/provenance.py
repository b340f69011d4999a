"""Which image and which run a per-item file was made by, recorded in the file and checked on every read.

A stage folder's items (``extract``'s features, ``cam``'s CAMs, the masks of ``crf``, ``predict`` and ``segment``)
each record two things besides their content:

* the id of the image they were made from (``vpltool.id``: safetensors metadata, or a mask's PNG text chunk): a file
  copied or renamed over another item's name is refused;
* the *run digest* of the run that wrote them (``vpltool.run``, the same places): a digest of the stage, its
  parameters and the identity of its inputs (:func:`run_digest`), computed once when the run starts and kept in
  the folder's ``_run.json`` and then ``_stage.json`` (``run_digest``). A writer takes it from the ``_run.json`` of
  the folder it writes into (:func:`writing_digest`), so that every writer records it, threads and spawned worker
  processes alike, without a stage passing it along.

Every reader of an item kind (:func:`vpltool.io.read_tensors`, :func:`vpltool.io.read_mask`) calls
:func:`check_item`: an item whose run is not its folder's is refused in one line, for every stage that reads the
folder. That closes the class "a finished folder holding an item of another run": a CAM of another ``cam`` run
(other prototypes, ``--refine none``) copied over one of the folder's own is no longer scored by ``eval`` or
refined by ``crf``. Equal parameters and inputs give the same digest, so shards of one run, a resume and a copy of
the whole folder all agree.

Folders written before run digests: their records name none and their items carry none, and they are read as
before (nothing to compare); a resumed run of such a folder keeps writing none, so the folder stays whole. An item
that carries a digest in a folder whose record has none (or the reverse) is another run's, and refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ContractError
from .files import by_content, jsonable
from .marks import item_marks
from .records import NUMERICS, RUN_DIGEST, RUN_RECORD, STAGE_RECORD, read_record

RUN_META = "run"  # the item's metadata key (``vpltool.run``) and, prefixed, its PNG text chunk (``vpltool.run``)

# The stage that writes each per-item kind (one file per image, ``<folder>/<id><suffix>``), for messages.
ITEM_WRITERS = {"features": "extract", "cam": "cam", "cam-debug": "cam --save-debug", "mask": "crf, predict, segment"}


def run_digest(stage: str, params: Mapping[str, Any], inputs: Mapping[str, Any] | None,
               not_compared: Sequence[str] = ()) -> str:
    """16 hex digits of a sha256 over what makes two runs' items interchangeable: the stage, its parameters (but
    ``not_compared``: limits that never change an item) and its inputs, as a resume compares them (JSON, files by
    content: :func:`vpltool.io.by_content`). Computed once per run."""
    what = {"stage": stage, "params": {k: v for k, v in by_content(jsonable(params)).items() if k not in not_compared},
            "inputs": by_content(jsonable(inputs or {}))}
    text = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# record (path, stat) -> (stage, run digest, numerics)
_SEEN: dict[tuple[str, int, int, int], tuple[str, str | None, Any]] = {}


def _record_run(folder: Path, names: Sequence[str]) -> tuple[str, str, str | None, Any] | None:
    """``(record name, stage, run digest or None, numerics or None)`` of the first record of ``names`` in
    ``folder``; None when there is none. Each record is read once per change (cached by path, modification time,
    size and inode)."""
    for name in names:
        path = folder / name
        try:
            st = os.stat(path)
        except OSError:
            continue
        key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
        if key not in _SEEN:
            if len(_SEEN) > 4096:
                _SEEN.clear()
            record = read_record(path, run=name == RUN_RECORD)
            _SEEN[key] = (record["stage"], record.get(RUN_DIGEST), record.get(NUMERICS))
        return (name, *_SEEN[key])
    return None


def writing_digest(folder: str | os.PathLike) -> str | None:
    """The run digest an item written into ``folder`` now records: its ``_run.json``'s (the run under way); None
    outside a run (or in a folder begun before run digests)."""
    found = _record_run(Path(folder), (RUN_RECORD,))
    return None if found is None else found[2]


def writing_numerics(folder: str | os.PathLike) -> Any:
    """The numerics (:func:`runtime.numerics.run_numerics`) of the run under way in ``folder`` (its ``_run.json``),
    which every item it writes records; None outside a run or for a run that records none."""
    found = _record_run(Path(folder), (RUN_RECORD,))
    return None if found is None else found[3]


def check_item(path: Path, recorded_id: object, recorded_run: object, kind: str | None) -> None:
    """Refuse a per-item file (``kind`` of :data:`ITEM_WRITERS`) that is not what its name and folder say.

    * Its recorded id is not the item it is read for (its name, ``<id><suffix>``): a file copied or renamed over
      another item's. Files without an id (a user's own masks) have nothing to compare.
    * Its recorded run digest is not its folder's (``_stage.json``, else ``_run.json``): a file of another run
      (other options or inputs) copied into a finished folder. A folder without a record (a user's folder of masks)
      has nothing to compare; a folder whose record predates run digests takes only items that carry none.

    Raises:
        ContractError: one line naming the file and the fix.
    """
    if kind not in ITEM_WRITERS:
        return
    suffix = ".safetensors" if path.name.endswith(".safetensors") else path.suffix
    name = path.name[:-len(suffix)] if suffix else path.name
    if isinstance(recorded_id, str) and recorded_id != name:
        fix = "re-run the stage that wrote it" if kind == "mask" else f"re-run `vpltool {ITEM_WRITERS[kind]}`"
        raise ContractError(f"{path}: holds item {recorded_id!r}'s {kind} (its recorded id), not {name!r}'s: a file "
                            f"copied or renamed over another item's; {fix} with --overwrite, or restore the file")
    found = _record_run(path.parent, (STAGE_RECORD, RUN_RECORD))
    if found is None:
        return
    record, stage, want, _ = found
    got = recorded_run if isinstance(recorded_run, str) else None
    if got == want:
        return
    if got is None:
        why = f"it records no run, its folder's {record} names run {want[:12]}…"
    elif want is None:
        why = f"it records run {got[:12]}…, its folder's {record} (of an older vpltool) none"
    else:
        why = f"it records run {got[:12]}…, its folder's {record} run {want[:12]}…"
    raise ContractError(f"{path}: made by another run than its folder's ({why}: other options or inputs, or a file "
                        f"copied in); remove it and re-run `vpltool {stage}` with the folder's options to remake it, "
                        "or pass --overwrite to redo the folder")


def check_present(folder: Path, names: Sequence[str]) -> None:
    """:func:`check_item` on each of ``names`` (files of ``folder`` that a resume would keep as done), from their
    headers (:func:`vpltool.io.marks.item_marks`: a mask's text chunks, a safetensors header; no pixel read): a
    resume, or the same command on a finished folder, must not certify an item of another run copied in (the
    folder's record would vouch for it). Raises :func:`check_item`'s one line for the first such file."""
    for name in names:
        path = folder / name
        marks = item_marks(path)
        if marks is None and (found := _record_run(folder, (STAGE_RECORD, RUN_RECORD))) is not None:
            raise ContractError(f"{path}: not a file `vpltool {found[1]}` wrote (its header does not read); remove it "
                                f"and re-run `vpltool {found[1]}` with the folder's options to remake it, or pass "
                                "--overwrite to redo the folder")
        kind = (marks or {}).get("vpltool.kind") or ("mask" if path.suffix == ".png" else None)
        check_item(path, (marks or {}).get("vpltool.id"), (marks or {}).get(f"vpltool.{RUN_META}"), kind)


__all__ = ["ITEM_WRITERS", "RUN_META", "check_item", "check_present", "run_digest", "writing_digest",
           "writing_numerics"]

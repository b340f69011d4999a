"""The output guard: every path a stage writes is checked alike, once, before any model loads.

A stage names what it writes (``--out``, ``--save-overlays``, ``--save-debug``, ``--plot``, ``--json``, the
decoder's checkpoints) and what it reads (the dataset, the ``-p``/``-t``/``-c`` files and folders), and
:func:`check_outputs` refuses, in one line naming the option:

* an output that *is* one of the run's inputs (``-o T.safetensors -t T.safetensors``), or that lies inside the
  dataset's own folders (its images, masks, annotations): no stage writes into a dataset;
* two outputs that are one path (``--save-overlays`` = ``--out``: their files would mix);
* a dangling symbolic link (``mkdir`` would only say "File exists");
* a stage folder (``--out`` of a per-image stage, of train-decoder) that holds another stage's output, with or
  without ``--overwrite`` (``--overwrite`` redoes a folder of the same stage, it never adopts another one), or that
  is not empty and holds no vpltool record (``_stage.json`` / ``_run.json``): it is the user's, never resumed;
* a side folder (``--save-overlays``, ``--save-debug``) that is not empty and holds no ``_side.json`` naming this
  stage and option (written by :class:`vpltool.io.StageFolder` when it makes the folder);
* a file output that exists and is not a regular file (:func:`vpltool.io.check_writable_target`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import VplError
from .files import check_folder_target, check_writable_target, read_json
from .records import DECODER_FILES, LOCK_FILE, RUN_RECORD, SHARD_RECORD, SIDE_RECORD, STAGE_RECORD, read_record

KINDS = ("stage", "side", "file")

PathLike = str | os.PathLike


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _hidden_ours(name: str) -> bool:
    """A lock file or a temporary of an atomic write: what a refused or killed run may leave in a folder."""
    return name.startswith(LOCK_FILE) or (name.startswith(".") and name.endswith(".tmp"))


def folder_owner(folder: PathLike) -> str | None:
    """The vpltool stage that made ``folder`` (from its records), None when it is empty (lock and temporary files
    aside), ``""`` when it holds files but no vpltool record (the user's folder)."""
    folder = Path(folder)
    shards = sorted(folder.glob(SHARD_RECORD.format(index="*", count="*")))
    for path in [folder / STAGE_RECORD, folder / RUN_RECORD, *shards]:
        if path.is_file():
            record = read_json(path)
            if not isinstance(record, dict) and path.name in (STAGE_RECORD, RUN_RECORD):
                read_record(path, run=path.name == RUN_RECORD)  # a damaged record is named, not taken as a user's
            stage = record.get("stage") if isinstance(record, dict) else None
            return stage if isinstance(stage, str) and stage else ""
    if any((folder / name).exists() for name in DECODER_FILES):
        return "train-decoder"
    with os.scandir(folder) as entries:
        return "" if any(not _hidden_ours(e.name) for e in entries) else None


def _side_owner(folder: Path) -> dict[str, Any] | None:
    path = folder / SIDE_RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    return record if isinstance(record, dict) else None


def _check_stage_folder(path: Path, option: str, stage: str, overwrite: bool) -> None:
    check_folder_target(path)
    if not path.is_dir():
        return
    owner = folder_owner(path)
    if owner is None or owner == stage:
        return
    if owner:
        again = f"; --overwrite only redoes a `{stage}` folder, never another stage's" if overwrite else ""
        raise VplError(f"{path}: holds `{owner}` output{again}; choose another {option}")
    raise VplError(f"{path}: not empty and made by no vpltool stage (no {STAGE_RECORD} or {RUN_RECORD}), so it is "
                   f"never written into or resumed; choose a new or empty folder for {option}")


def _check_side_folder(path: Path, option: str, stage: str) -> None:
    check_folder_target(path)
    if not path.is_dir():
        return
    record = _side_owner(path)
    if record is not None and (record.get("stage"), record.get("option")) == (stage, option):
        return
    with os.scandir(path) as entries:
        if not any(not _hidden_ours(e.name) for e in entries):
            return
    made = f"holds `{record.get('stage')} {record.get('option')}` output" if record else \
        f"not empty and holds no {SIDE_RECORD} of `{stage} {option}`"
    raise VplError(f"{path}: {made}, so it is never written into; choose a new or empty folder for {option}")


def check_outputs(stage: str, outputs: Mapping[str, tuple[PathLike | None, str]], *,
                  inputs: Mapping[str, PathLike | None] = {}, protected: Iterable[PathLike] = (),
                  overwrite: bool = False) -> None:
    """Refuse, in one line, any output of a run that would destroy an input or another's data (see the module doc).

    Args:
        stage: the command (recorded in the folders it makes).
        outputs: option -> ``(path or None, kind)``; kind ``stage`` (a stage folder), ``side`` (a folder of extra
            files: overlays, debug maps) or ``file``.
        inputs: what the run reads, described -> path (a file or a folder; None = not given).
        protected: the dataset's folders (images, masks, annotations): no output may be in them.
        overwrite: ``--overwrite`` was given (only changes the wording: it never lifts a refusal here).

    Raises:
        VplError: one line naming the path, why, and the option to change.
    """
    seen: dict[Path, str] = {}
    real_inputs = {_real(Path(p)): what for what, p in inputs.items() if p is not None}
    real_protected = [_real(Path(p)) for p in protected]
    for option, (path, kind) in outputs.items():
        if path is None:
            continue
        assert kind in KINDS, kind
        path = Path(path)
        if path.is_symlink() and not path.exists():
            raise VplError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; create the target "
                           f"or choose another {option}")
        real = _real(path)
        if real in real_inputs:
            raise VplError(f"{path}: is also this run's input ({real_inputs[real]}); writing there would destroy it: "
                           f"choose another {option}")
        folder = next((d for d in real_protected if _inside(real, d)), None)
        if folder is not None:
            where = "is" if real == folder else "lies inside"
            raise VplError(f"{path}: {where} the dataset's folder {folder}; no stage writes into a dataset: "
                           f"choose another {option}")
        if real in seen:
            raise VplError(f"{path}: given as both {seen[real]} and {option}; their files would mix: choose another "
                           f"{option}")
        seen[real] = option
        if kind == "stage":
            _check_stage_folder(path, option, stage, overwrite)
        elif kind == "side":
            _check_side_folder(path, option, stage)
        else:
            check_writable_target(path, path.suffix or ".safetensors")


__all__ = ["SIDE_RECORD", "check_outputs", "folder_owner"]

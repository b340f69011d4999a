"""The records a vpltool folder holds, with one owner: their names, and the reader that checks their shape.

* ``_stage.json``: a stage folder is complete (written last, :func:`write_stage_record`).
* ``_run.json``: the parameters of the run under way in a stage folder.
* ``_side.json``: a side folder (``--save-overlays``, ``--save-debug``) and the stage and option that made it.
* ``_shard.{i}-of-{n}.json``: shard i of n finished (``--shard i/n``, torchrun ranks).
* ``.vpltool.lock``: the ``flock`` a writer holds on the folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ContractError
from .files import read_json, write_json
from .tensors import FORMAT_VERSION

STAGE_RECORD = "_stage.json"
RUN_RECORD = "_run.json"
LOCK_FILE = ".vpltool.lock"
SHARD_RECORD = "_shard.{index}-of-{count}.json"  # a shard (--shard i/n) finished; removed with the others' records
SIDE_RECORD = "_side.json"  # a side folder's record: {"stage": ..., "option": ...}
DECODER_FILES = ("decoder.safetensors", "checkpoints", "log.jsonl")  # what marks a train-decoder folder


def stage_record_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / STAGE_RECORD


def write_stage_record(
    folder: str | os.PathLike, stage: str, *, params: Mapping[str, Any], inputs: Mapping[str, Any] | None, count: int,
    **extra: Any,
) -> Path:
    """Write ``_stage.json`` last, atomically: the proof that every item of the folder is complete."""
    record = {"stage": stage, "vpltool": __version__, "format": FORMAT_VERSION, "params": dict(params),
              "inputs": dict(inputs or {}), "count": count, **extra}
    return write_json(stage_record_path(folder), record)


# what a record must hold, key -> (type, how the message says it); a record of another shape (valid JSON, but a list,
# or keys missing) is refused in one line instead of failing later as an AttributeError / KeyError
_RUN_KEYS = {"stage": (str, "a string"), "params": (dict, "an object")}
_STAGE_KEYS = {**_RUN_KEYS, "inputs": (dict, "an object"), "count": (int, "an integer")}


def _record_problem(record: Any, keys: Mapping[str, tuple[type, str]]) -> str | None:
    """Why ``record`` is not a record with ``keys``, or None when it is."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key, (kind, what) in keys.items():
        if key not in record:
            return f"no '{key}'"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"'{key}' is not {what}"
    dataset = record.get("inputs", {}).get("dataset") if isinstance(record.get("inputs"), dict) else None
    if dataset is not None and not (isinstance(dataset, dict) and isinstance(dataset.get("root"), str)):
        return "'inputs.dataset' does not name a dataset root"
    classes = record.get("classes")
    if classes is not None and not (isinstance(classes, list) and len(classes) >= 2
                                    and all(isinstance(c, str) for c in classes)):
        return "'classes' is not a list of class names"
    return None


def read_record(path: str | os.PathLike, run: bool = False) -> dict[str, Any]:
    """A folder's ``_stage.json`` (or, ``run``, its ``_run.json``), checked for shape: an object with ``stage``,
    ``params`` (and ``inputs``, ``count``); ContractError in one line naming the file otherwise."""
    path = Path(path)
    record = read_json(path)
    problem = _record_problem(record, _RUN_KEYS if run else _STAGE_KEYS)
    if problem is not None:
        stage = record.get("stage") if isinstance(record, dict) and isinstance(record.get("stage"), str) else None
        fix = f"re-run `vpltool {stage}` there with --overwrite" if stage else "delete the folder and re-run its stage"
        raise ContractError(f"{path}: not a vpltool {'run' if run else 'stage'} record ({problem}); the folder is "
                            f"damaged: {fix}, or choose another folder")
    return record


def record_stage(folder: str | os.PathLike) -> str | None:
    """The stage named by a folder's ``_stage.json``, else by its ``_run.json``; None when it has neither. A record
    that is there but damaged is an error (:func:`read_record`), not a folder of another kind."""
    for name in (STAGE_RECORD, RUN_RECORD):
        path = Path(folder) / name
        if path.is_file():
            return read_record(path, run=name == RUN_RECORD)["stage"]
    return None

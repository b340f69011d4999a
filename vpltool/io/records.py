"""The records a vpltool folder holds, with one owner: their names, and the reader that checks their shape.

* ``_stage.json``: a stage folder is complete (written last, :func:`write_stage_record`), sealed with its own digest
  (``record_digest``, :func:`record_digest`): every read checks it, so a hand edit is refused (see below).
* ``_run.json``: the parameters of the run under way in a stage folder (and its ``run_digest``, which every item it
  writes records: :mod:`vpltool.io.provenance`).
* ``_side.json``: a side folder (``--save-overlays``, ``--save-debug``) and the stage and option that made it.
* ``_shard.{i}-of-{n}.json``: shard i of n finished (``--shard i/n``, torchrun ranks).
* ``.vpltool.lock``: the ``flock`` a writer holds on the folder.

Why a stage record is sealed: a later stage believes what it says (the dtype and mode its items were made in, the
inputs, the ids), and a PNG mask cannot say it itself as a safetensors item does. The seal is a sha256 over the whole
record but the seal (canonical JSON: sorted keys, no spaces, ASCII), so whatever a record holds (fields added later
included) is covered. It is no signature (whoever edits the record can recompute it); it makes an edit a deliberate
act instead of a silent one, and a damaged record one line.

A record without a seal is what every vpltool before it wrote: it is read as before (resumed, listed, its run digest
compared), but where the record alone vouches for how a folder was made (a mask folder's dtype and mode, which its
PNG items cannot record: :func:`vpltool.io.folder_made` with ``items=False``), it is refused with the fix, since an
unsealed record there cannot tell a folder of an older vpltool from an edited one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ContractError, VplWarning
from ..runtime import numerics
from .files import id_problem, read_json, write_json

FORMAT_VERSION = "1"  # of files (`vpltool.format`) and records (`format`)
STAGE_RECORD = "_stage.json"
RUN_RECORD = "_run.json"
LOCK_FILE = ".vpltool.lock"
SHARD_RECORD = "_shard.{index}-of-{count}.json"  # a shard (--shard i/n) finished; removed with the others' records
SIDE_RECORD = "_side.json"  # a side folder's record: {"stage": ..., "option": ...}
RUN_DIGEST = "run_digest"  # the run that writes the items (vpltool.io.provenance), in _run.json and _stage.json
DECODER_FILES = ("decoder.safetensors", "checkpoints", "log.jsonl")  # what marks a train-decoder folder
# the dtype and numeric mode of the run that made a folder or file (runtime.numerics.run_numerics), in records and,
# as ``vpltool.numerics``, in safetensors metadata; records of a vpltool before it hold none (read as before)
NUMERICS = "numerics"
RECORD_DIGEST = "record_digest"  # a stage record's seal: sha256 of the record without it (record_digest)


def check_format(path: Path, found: object, version: object) -> None:
    """Refuse a file or record of a newer format than this vpltool reads (``vpltool.format``, a record's
    ``format``): its fields may mean something else now, and reading it silently could certify a wrong result.
    Older formats, and files that record none, are read as they always were."""
    if isinstance(found, int) and not isinstance(found, bool):
        found = str(found)
    if isinstance(found, str) and found.isdigit() and int(found) > int(FORMAT_VERSION):
        by = f" by vpltool {version}" if isinstance(version, str) else ""
        raise ContractError(f"{path}: written in format {found}{by}, newer than the format {FORMAT_VERSION} this "
                            f"vpltool ({__version__}) reads; upgrade vpltool (pip install -U vpltool) to read it")


def stage_record_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / STAGE_RECORD


def write_stage_record(
    folder: str | os.PathLike, stage: str, *, params: Mapping[str, Any], inputs: Mapping[str, Any] | None, count: int,
    **extra: Any,
) -> Path:
    """Write ``_stage.json`` last, atomically: the proof that every item of the folder is complete."""
    record = {"stage": stage, "vpltool": __version__, "format": FORMAT_VERSION, "params": dict(params),
              "inputs": dict(inputs or {}), "count": count, **extra}
    return write_json(stage_record_path(folder), seal(record))


def record_digest(record: Mapping[str, Any]) -> str:
    """The seal of a record: 64 hex digits of sha256 over its canonical JSON (sorted keys, no spaces, ASCII), every
    field but :data:`RECORD_DIGEST` itself, as the record reads back from JSON (tuples as lists)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != RECORD_DIGEST}, default=str))
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with its seal (:func:`record_digest`) last: what :func:`write_stage_record` writes. Every field a
    record should hold goes in before it is sealed; changing a sealed record means sealing it again."""
    return {**{k: v for k, v in record.items() if k != RECORD_DIGEST}, RECORD_DIGEST: record_digest(record)}


def seal_problem(record: Mapping[str, Any]) -> str | None:
    """Why a stage record's seal does not vouch for it (it was edited, or the seal damaged), or None when it
    does; None too for a record without a seal (an older vpltool's: see the module doc)."""
    found = record.get(RECORD_DIGEST)
    if found is None:
        return None
    if found != record_digest(record):
        return f"its '{RECORD_DIGEST}' no longer matches what it holds"
    return None


def sealed_fix(stage: str | None) -> str:
    """The fix for a stage record that was edited or never sealed: make the folder again."""
    if stage is None:
        return "delete the folder and re-run the stage that made it, or choose another folder"
    # the options inside the command's backticks: a line printed by another command (eval) names them as that
    # stage's, not its own (eval has no --out)
    return f"re-make it with `vpltool {stage} --overwrite` (or into another folder); a record is never edited by hand"


# what a record must hold, key -> (type, how the message says it); a record of another shape (valid JSON, but a list,
# or keys missing) is refused in one line instead of failing later as an AttributeError / KeyError
_RUN_KEYS = {"stage": (str, "a string"), "params": (dict, "an object")}
_STAGE_KEYS = {**_RUN_KEYS, "inputs": (dict, "an object"), "count": (int, "an integer")}


def _record_problem(record: Any, keys: Mapping[str, tuple[type, str]]) -> str | None:
    """Why ``record`` is not a record with ``keys``, or None when it is. Every field a reader uses is checked here
    like input, once: a hand-edited or damaged record is one line naming the field, never a traceback or, worse,
    a path (an id ``../x`` wrote outside the output folder)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key, (kind, what) in keys.items():
        if key not in record:
            return f"no '{key}'"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"'{key}' is not {what}"
    digest = record.get(RUN_DIGEST)
    if digest is not None and not (isinstance(digest, str) and len(digest) == 16
                                   and all(c in "0123456789abcdef" for c in digest)):
        return f"'{RUN_DIGEST}' is {json.dumps(digest)[:40]}, not 16 hex digits"
    for problem in (_dataset_problem(record), _classes_problem(record.get("classes")), _ids_problem(record),
                    _params_problem(record), numerics_problem(record.get(NUMERICS))):
        if problem is not None:
            return problem
    return None


def _dataset_problem(record: dict[str, Any]) -> str | None:
    dataset = record.get("inputs", {}).get("dataset") if isinstance(record.get("inputs"), dict) else None
    if dataset is None:
        return None
    if not (isinstance(dataset, dict) and isinstance(dataset.get("root"), str) and dataset["root"]):
        return "'inputs.dataset' does not name a dataset root"
    if not isinstance(dataset.get("split"), (str, type(None))):
        return f"'inputs.dataset.split' is {json.dumps(dataset.get('split'))}, not a split name"
    return None


def _classes_problem(classes: Any) -> str | None:
    if classes is None:
        return None
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)):
        return "'classes' is not a list of class names"
    if classes[0] != "background" or "background" in classes[1:] or len(set(classes)) != len(classes):
        return "'classes' does not list 'background' first and each class once"
    return None


def _ids_problem(record: dict[str, Any]) -> str | None:
    """The item ids, through the rule every dataset reader applies (:func:`vpltool.io.id_problem`)."""
    ids = record.get("ids")
    if ids is None:
        return None
    if not isinstance(ids, list):
        return "'ids' is not a list of ids"
    seen: set[str] = set()
    for item_id in ids:
        why = id_problem(item_id)
        if why is not None:
            return f"'ids' lists {json.dumps(item_id)}, which {why} (ids name the item files: <id>.<ext>)"
        if item_id in seen:
            return f"'ids' lists {json.dumps(item_id)} twice"
        seen.add(item_id)
    if isinstance(record.get("count"), int) and record["count"] != len(ids):
        return f"'count' is {record['count']} but 'ids' lists {len(ids)}"
    return None


# parameters other stages rebuild objects from: what each must be
_OBJECT_PARAMS = {"model": ("model", "pretrained"), "prototypes": ("sha256",), "decoder": ("sha256",)}


def _params_problem(record: dict[str, Any]) -> str | None:
    params = record.get("params")
    if not isinstance(params, dict):
        return None
    for key, fields in _OBJECT_PARAMS.items():
        if key in params and not (isinstance(params[key], dict)
                                  and all(isinstance(params[key].get(f), str) for f in fields)):
            return (f"'params.{key}' is {json.dumps(params[key])[:60]}, not an object with "
                    + ", ".join(f"'{f}'" for f in fields))
    return None


def numerics_problem(found: Any) -> str | None:
    """Why a recorded ``numerics`` (a record's, a file's ``vpltool.numerics``) is not one, or None: absent (an older
    vpltool's), or an object with a known ``mode`` and a ``dtype`` name or null."""
    if found is None:
        return None
    if not (isinstance(found, dict) and found.get("mode") in numerics.MODES
            and (found.get("dtype") is None or found.get("dtype") in numerics.DTYPES)):
        return (f"'{NUMERICS}' is {json.dumps(found)[:60]}, not an object with a 'mode' (fast or reproducible) "
                "and a 'dtype'")
    return None


def check_numerics(own: Mapping[str, Any], *made: tuple[str | os.PathLike, Any, str], weights: bool = False) -> None:
    """Refuse to compute with ``own`` numerics (this run's, :func:`vpltool.runtime.numerics.run_numerics`) from an input
    made in another dtype or numeric mode, before any model loads: one line naming the file and the fix.

    Args:
        made: ``(path, its numerics, the command that made it)`` per input read; numerics None (a file of a vpltool
            before numerics were recorded) is not compared.
        weights: the inputs are trained weights (a decoder, a text family's checkpoint), which a run may compute
            with at another dtype or mode, as a CLIP's fp32 weights run at bf16: the difference is said in one
            warning line (:class:`~vpltool.errors.VplWarning`) instead of refused. Derived data (features, CAMs,
            masks) is refused: its figures would follow the other run's arithmetic.
    """
    for path, found, stage in made:
        problem = numerics_problem(found)
        if problem is not None:
            raise ContractError(f"{path}: {problem}; the file is damaged: re-run `vpltool {stage}` to remake it")
        why = numerics.mismatch(found, own)
        if why is None:
            continue
        if why in ("dtype", "both"):
            from ..config.stages import PRECISION_FROM

            # crf's and sam-pseudo's dtype is the CAMs', set by `cam --precision` (sam-pseudo's auto follows it)
            source, then = PRECISION_FROM.get(stage, stage), ""
            if source != stage:
                then = f", then `vpltool {stage}` on it"
        if why == "dtype":
            fix = (f"pass --precision {found['dtype']} to this command, or re-run `vpltool {source}` (and what it was "
                   f"made from) with --precision {own['dtype']}{then}")
        elif why == "both":
            mode = "in reproducible mode" if found.get("mode") == "reproducible" else "in fast mode"
            fix = (f"run this command {mode} with --precision {found['dtype']}, or re-run `vpltool {source}` (and "
                   f"what it was made from) as this run is{then}")
        elif own.get("mode") == "fast":
            fix = (f"run this command in reproducible mode too (vpltool --reproducible ..., or "
                   f"{numerics.MODE_ENV}=1), or re-run `vpltool {stage}` without it")
        else:
            fix = f"re-run `vpltool {stage}` in reproducible mode too, or run this command without it"
        line = f"{path}: made {numerics.describe(found, why)}; this run is {numerics.describe(own, why)}"
        if weights:
            warnings.warn(VplWarning(f"{line}: its weights are used as they are (for the same figures as that run, "
                                     f"{fix})"), stacklevel=2)
            continue
        raise ContractError(f"{line}: {fix}")


def read_record(path: str | os.PathLike, run: bool = False) -> dict[str, Any]:
    """A folder's ``_stage.json`` (or, ``run``, its ``_run.json``), checked for shape: an object with ``stage``,
    ``params`` (and ``inputs``, ``count``), and for its seal (both records are sealed: an interrupted run's record,
    edited, would let a resume take other parameters); ContractError in one line naming the file otherwise."""
    path = Path(path)
    record = read_json(path)
    if isinstance(record, dict):
        check_format(path, record.get("format"), record.get("vpltool"))
    problem = _record_problem(record, _RUN_KEYS if run else _STAGE_KEYS)
    if problem is not None:
        stage = record.get("stage") if isinstance(record, dict) and isinstance(record.get("stage"), str) else None
        fix = f"re-run `vpltool {stage}` there with --overwrite" if stage else "delete the folder and re-run its stage"
        raise ContractError(f"{path}: not a vpltool {'run' if run else 'stage'} record ({problem}); the folder is "
                            f"damaged: {fix}, or choose another folder")
    if (problem := seal_problem(record)) is not None:  # the shape first: its messages are more precise
        raise ContractError(f"{path.parent}: its {path.name} was edited after `vpltool {record['stage']}` wrote it "
                            f"({problem}), so it no longer vouches for the folder; {sealed_fix(record['stage'])}")
    return record


def read_side_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A side folder's ``_side.json`` (``{"stage", "option", ...}``; :func:`vpltool.io.write_side_record`), None when
    it is not an object; sealed as the stage records are, so that one edited by hand (the stage or option it names:
    what lets a run write into the folder) is refused in one line."""
    path = Path(path)
    record = read_json(path)
    if not isinstance(record, dict):
        return None
    if (problem := seal_problem(record)) is not None:
        stage, option = record.get("stage"), record.get("option")
        made = f"`vpltool {stage} {option}`" if isinstance(stage, str) and isinstance(option, str) else "vpltool"
        raise ContractError(f"{path.parent}: its {path.name} was edited after {made} wrote it ({problem}), so it no "
                            "longer vouches for the folder; delete the folder (the run writes it again) or choose "
                            "another; a record is never edited by hand")
    return record


def recorded_model(record: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """The CLIP identity an `extract` folder's record names (``params.model``, checked by :func:`read_record`);
    one line when it names none."""
    model = record["params"].get("model")
    if model is None:
        raise ContractError(f"{Path(folder) / STAGE_RECORD}: not a vpltool stage record (no 'params.model'); the "
                            "folder is damaged: re-run `vpltool extract` there with --overwrite, or choose another "
                            "folder")
    return model


def record_stage(folder: str | os.PathLike) -> str | None:
    """The stage named by a folder's ``_stage.json``, else by its ``_run.json``; None when it has neither. A record
    that is there but damaged is an error (:func:`read_record`), not a folder of another kind."""
    for name in (STAGE_RECORD, RUN_RECORD):
        path = Path(folder) / name
        if path.is_file():
            return read_record(path, run=name == RUN_RECORD)["stage"]
    return None


def recorded_dataset_identity(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``inputs.dataset`` of a folder's ``_stage.json`` (kind, absolute root, split, ...), or None when there is no
    record. :func:`vpltool.data.open_recorded` reopens it."""
    path = stage_record_path(folder)
    if not path.is_file():
        return None
    return read_record(path)["inputs"].get("dataset")


# what a record keeps of its dataset (vpltool.data.Dataset.inputs)
DATASET_INPUTS = ("dataset", "items", "files", "content", "masks")


def dataset_inputs(record: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset part of a record's ``inputs`` (identity, item and file digests: :data:`DATASET_INPUTS`), which
    a stage reading a folder records in its own folder: every later stage compares it with the dataset it reads
    (:func:`vpltool.data.check_recorded`)."""
    inputs = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
    return {k: inputs[k] for k in DATASET_INPUTS if k in inputs}

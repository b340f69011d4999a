"""How a finished stage folder says it was made: its record's ``numerics`` and each item file's own (the dtype and
numeric mode of the run, :mod:`vpltool.runtime.numerics`), for :func:`vpltool.io.check_numerics`.

A folder's ``_stage.json`` is one file a user may edit; every safetensors item carries the same record in its header
(``vpltool.numerics``, written by the run that made it). A later stage compares both with its own run: a record whose
dtype was edited to another, or whose ``numerics`` was deleted, no longer lets items of another dtype in. Every
vpltool stage records its numerics, so a record or an item without them is damaged, and refused in one line.

Every read of a record checks its seal (:func:`vpltool.io.records.read_record`), so an edited record is refused. A
mask folder's PNG items record no dtype: there the record alone vouches for it, and a record without a seal (an older
vpltool's, or one whose seal was deleted with the edit) is refused as well (``items=False``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ContractError
from ..runtime import numerics
from .records import NUMERICS, RECORD_DIGEST, STAGE_RECORD, numerics_problem, sealed_fix
from .stage import recorded_ids
from .tensors import header_numerics, read_header

ITEM_SUFFIX = ".safetensors"


def folder_made(folder: str | os.PathLike, record: dict[str, Any], stage: str, items: bool = True
                ) -> list[tuple[Path, Any, str]]:
    """``(path, numerics, stage)`` of ``folder``'s record and (``items``: a folder of safetensors items, not masks)
    of each item its record lists, read from the item's header alone; one line for a record or an item that
    records none (``stage``: the command that made the folder, named in the fix). A folder without items
    (``items=False``) needs a sealed record (:data:`RECORD_DIGEST`): nothing else says how its masks were made."""
    folder = Path(folder)
    fix = f"re-run `vpltool {stage}` there with --overwrite"
    if not items and RECORD_DIGEST not in record:
        raise ContractError(f"{folder}: its {STAGE_RECORD} is not sealed (no '{RECORD_DIGEST}': written by an older "
                            "vpltool, or removed by hand), and its masks cannot say which dtype and mode made them; "
                            f"{sealed_fix(stage)}")
    made = record.get(NUMERICS)
    if made is None:
        raise ContractError(f"{folder / STAGE_RECORD}: records no '{NUMERICS}' (the dtype and mode its items were "
                            f"made in, which every stage records), so the record is damaged: {fix}")
    if (problem := numerics_problem(made)) is not None:
        raise ContractError(f"{folder / STAGE_RECORD}: {problem}; the record is damaged: {fix}")
    out = [(folder, made, stage)]
    if items:
        for item_id in recorded_ids(folder, ITEM_SUFFIX):
            path = folder / f"{item_id}{ITEM_SUFFIX}"
            own = header_numerics(read_header(path))
            if own is None:
                raise ContractError(f"{path}: records no 'vpltool.{NUMERICS}' (the dtype and mode it was made in), so "
                                    f"it is damaged or not this folder's: {fix}")
            if (problem := numerics_problem(own)) is not None:
                raise ContractError(f"{path}: {problem}; the file is damaged: {fix}")
            if (differ := numerics.mismatch(own, made)) is not None or own.get("dtype") != made.get("dtype"):
                said = differ or "dtype"
                raise ContractError(f"{path}: made {numerics.describe(own, said) or 'at no dtype'}, but its folder's "
                                    f"{STAGE_RECORD} says {numerics.describe(made, said) or 'at no dtype'}: the record "
                                    f"was edited or the file is another run's; {fix}")
            out.append((path, own, stage))
    return out


def recorded_dtype(*made: tuple[Any, Any, str]) -> str | None:
    """The one dtype the inputs ``made`` (``(path, numerics, stage)``, :func:`folder_made`'s and a file's ``made()``)
    record, where they record one (a file of no ``--precision``, text prototypes, records none); None when none
    does, or when they differ (then the run's own check names them): what ``--precision auto`` follows
    (:func:`vpltool.device.resolve_precision`)."""
    dtypes = {found.get("dtype") for _, found, _ in made if isinstance(found, dict) and found.get("dtype")}
    return dtypes.pop() if len(dtypes) == 1 else None


__all__ = ["folder_made", "recorded_dtype"]

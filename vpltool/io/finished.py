"""Reading a stage folder's completion: its ``_stage.json`` (:func:`read_stage_record`), or why there is none yet
(an interrupted run, shards still pending), named by the stage that left it. Writing is :mod:`.stage`'s."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ContractError, VplError
from .locks import SHARD_NAME
from .records import RUN_RECORD, SHARD_RECORD, STAGE_RECORD, read_record, stage_record_path


def read_stage_record(folder: str | os.PathLike, stage: str | Sequence[str]) -> dict[str, Any]:
    """The completion record of a stage folder; a VplError if the stage never finished there."""
    folder = Path(folder)
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    if not folder.is_dir():
        raise VplError(f"{folder}: folder not found; run `vpltool {stages[0]}` first")
    path = stage_record_path(folder)
    if not path.is_file():
        made = _pending_stage(folder)
        if made is not None and made not in stages:
            raise ContractError(f"{folder}: holds an unfinished `{made}` run, expected `{stages[0]}` output")
        made = made or stages[0]  # the stage whose run left the folder, named in the fix (a sam-pseudo run's)
        shards = finished_shards(folder)
        if shards:
            count = shards[0][1]
            done, todo = [i for i, _ in shards], [i for i in range(count) if (i, count) not in shards]
            listed = ", ".join(f"--shard {i}/{count}" for i in todo)
            raise ContractError(f"{folder}: no {STAGE_RECORD} yet: `vpltool {made}` runs in {count} shards and "
                                f"only shard(s) {', '.join(map(str, done))} finished; run `vpltool {made}` with "
                                f"the pending {listed} (or wait for them) to complete it")
        why = "was interrupted or is still running" if (folder / RUN_RECORD).is_file() else "did not finish there"
        raise ContractError(f"{folder}: no {STAGE_RECORD}; `vpltool {made}` {why} (re-run it)")
    record = read_record(path)
    if record["stage"] not in stages:
        raise ContractError(f"{folder}: holds `{record['stage']}` output, expected `{stages[0]}` output")
    return record


def _pending_stage(folder: Path) -> str | None:
    """The stage an unfinished run in ``folder`` records in its ``_run.json``; None when there is none or it is
    unreadable (then the expected stage is named, as before)."""
    try:
        return read_record(folder / RUN_RECORD, run=True)["stage"] if (folder / RUN_RECORD).is_file() else None
    except (VplError, OSError):
        return None


def finished_shards(folder: str | os.PathLike) -> list[tuple[int, int]]:
    """``(index, count)`` of the shards that recorded their end in ``folder`` (:meth:`StageFolder.shard_done`);
    names of any other form (other digits than 0-9, an index outside its count) are no shard record."""
    found = []
    for path in Path(folder).glob(SHARD_RECORD.format(index="*", count="*")):
        match = SHARD_NAME.fullmatch(path.stem.removeprefix("_shard."))
        if match and 0 <= int(match.group(1)) < int(match.group(2)):
            found.append((int(match.group(1)), int(match.group(2))))
    return sorted(found)

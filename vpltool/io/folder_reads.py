"""A stage folder's record of the model files its run read, by content (:mod:`vpltool.io.reads`' ledger): what
``_run.json`` and ``_stage.json`` keep as ``inputs.reads``, compared with the run a shard or a resume continues."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ContractError
from .files import read_json, write_json
from .reads import READS, FileReplaced, ledger, short, watching


def changed_read(recorded: Any, now: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, str] | None:
    """``(path, recorded digest, digest now)`` of the first file that a record's ``inputs.reads`` (``recorded``)
    and this run's ledger (``now``) both name, with other bytes; None when none differs (a record of a vpltool
    before the ledger, or of another shape, compares nothing)."""
    if not isinstance(recorded, Mapping):
        return None
    for path, entry in sorted(now.items()):
        old = recorded.get(path)
        if isinstance(old, Mapping) and isinstance(old.get("sha256"), str) and old["sha256"] != entry["sha256"]:
            return path, old["sha256"], entry["sha256"]
    return None


def recorded_reads(record: Any) -> dict[str, Any]:
    """``inputs.reads`` of a stage or run record, ``{}`` for none (a vpltool's before the ledger)."""
    inputs = record.get("inputs") if isinstance(record, Mapping) else None
    read = inputs.get(READS) if isinstance(inputs, Mapping) else None
    return dict(read) if isinstance(read, Mapping) else {}


def merged_reads(records: Iterable[Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """The model files of ``records`` (the run a folder's run continues) and of this run (``now``), by path,
    sorted: what the folder's records keep."""
    out: dict[str, Any] = {}
    for record in records:
        out.update(recorded_reads(record))
    return {path: dict(entry) for path, entry in sorted({**out, **now}.items())}


def refusal(folder: str | os.PathLike, what: str, path: str, old: str, new: str) -> FileReplaced:
    """The one line for a folder whose run read ``path`` as ``old`` where this run reads ``new``."""
    return FileReplaced(f"{folder}: {what} from {path} as sha256 {short(old)}; that file is sha256 {short(new)} now "
                        "(replaced since), so its items would come from two different models; put the file back, "
                        "pass --overwrite to redo every item, or choose another --out")


def check_reads(folder: str | os.PathLike, what: str, record: Any, reads: Mapping[str, Any] | None) -> None:
    """Refuse (:func:`refusal`) a run whose ledger ``reads`` names a file of ``record`` (the run it continues) with
    other bytes; nothing when ``reads`` is None (a caller that records no ledger)."""
    if reads is not None and (changed := changed_read(recorded_reads(record), reads)) is not None:
        raise refusal(folder, what, *changed)


def with_reads(run: dict[str, Any], kept: Iterable[Any], reads: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run record with ``inputs.reads``: the ledger of the run it continues (``kept``, its records) and this run's
    (``reads``); unchanged when there are none."""
    read = {} if reads is None else merged_reads(kept, reads)
    return {**run, "inputs": {**run.get("inputs", {}), READS: read}} if read else run


class FolderReads:
    """A stage folder's model files, by content: read from its run record as the folder opens, and told of every
    file a model loads from while it is open (:meth:`open`, before the model is built from it)."""

    def __init__(self, folder: Path, run_record: str):
        self.folder, self.path, self.reads = Path(folder), Path(folder) / run_record, {}

    def open(self) -> contextlib.AbstractContextManager[None]:
        """Watch the run's reads, from what its run record (just written) holds."""
        self.reads = recorded_reads(read_json(self.path))
        return watching(self._read)

    def _read(self, path: str, entry: dict[str, Any]) -> None:
        """Refused when the run this one continues read other bytes under ``path``; else recorded in the run record
        at once (a kill after this load leaves it there, for the resume to compare)."""
        if (changed := changed_read(self.reads, {path: entry})) is not None:
            raise refusal(self.folder, "an earlier run made", *changed)
        if path not in self.reads:
            self.reads = merged_reads([], {**self.reads, path: entry})
            record = read_json(self.path)
            from .records import seal

            write_json(self.path, seal({**record, "inputs": {**record.get("inputs", {}), READS: self.reads}}))

    def into(self, inputs: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """A completion record's ``inputs`` with the folder's reads (unchanged when there are none)."""
        return {**(inputs or {}), READS: self.reads} if self.reads else inputs


def check_folder_reads(folder: str | os.PathLike, overwrite: bool = False) -> None:
    """For a stage that loads a model before it opens its folder (predict's decoder): refuse, in the line a
    :class:`~vpltool.io.StageFolder` would say, a folder whose run read a file of this run's ledger with other
    bytes, before the model loads (``overwrite``: nothing to compare, the folder is redone)."""
    from .records import RUN_RECORD, STAGE_RECORD

    for name, what in ((STAGE_RECORD, "made"), (RUN_RECORD, "an interrupted run made")):
        path = Path(folder) / name
        if overwrite or not path.is_file():
            continue
        try:
            record = read_json(path)
        except ContractError:  # a damaged record: the folder says so as it opens
            continue
        if (changed := changed_read(recorded_reads(record), ledger())) is not None:
            raise refusal(folder, what, *changed)


__all__ = ["FolderReads", "changed_read", "check_folder_reads", "check_reads", "ledger", "merged_reads",
           "recorded_reads", "refusal", "with_reads"]

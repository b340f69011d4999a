"""One ledger of every model file a run reads, by content: the registry's door fills it, the stage folder records it.

Every family's weights come through one door, :func:`vpltool.models.registry.check_model` and
:func:`~vpltool.models.registry.load_model`, and that door hands this module the files it reads (:func:`note`):
each is named by its sha256 and size, so that no method or family keeps a list of its own, and a plugin's family is
recorded as a built-in's is.

* What a run reads is kept while the run is open (:func:`vpltool.io.naming_scope`, which the CLI opens around each
  command and the Python door around each stage) or while a stage folder is open; outside both, nothing is kept (a
  long-lived process, a notebook, may change a file between two runs: the next run names it anew). So a folder
  opened outside a run records only what loads while it is open.
* A file read twice in one run (checked, then loaded) must be the same bytes both times: another digest is refused
  before the load reads it (:class:`FileReplaced`). The load's own reads are held to the digest by the registry
  (:func:`vpltool.io.check_loaded_files`: the file's ``stat`` did not move while it was loaded).
* A stage folder (:class:`vpltool.io.StageFolder`) stores the ledger as ``inputs.reads`` (``{path: {"sha256",
  "size"}}``, the path absolute, as the family named it) and compares it with the run it continues (a shard, a
  resume after a kill): a file of the record whose bytes changed is refused before any model loads
  (:func:`changed_read`), and a file first read while the folder is open is compared as it is read
  (:func:`watching`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import VplError
from . import digests
from .files import read_json, write_json

READS = "reads"  # the key of a record's ``inputs`` that holds the ledger
# path -> {"sha256", "size"}: what this run has read (kept while a run or a folder is open)
_LEDGER: dict[str, dict[str, Any]] = {}
# the open stage folders' callbacks, each told of every file read while it is open (innermost last)
_WATCHERS: list[Callable[[str, dict[str, Any]], None]] = []


class FileReplaced(VplError):
    """A model file whose bytes are not those this run (or the run it continues) read it as."""


def short(digest: str) -> str:
    """A digest as messages show it: its first 12 hex digits."""
    return digest.removeprefix("sha256:")[:12] + "…"


def _open() -> bool:
    return bool(digests._SCOPE[0] or _WATCHERS)


def forget() -> None:
    """Drop the ledger unless a run or a folder is still open (:func:`vpltool.io.naming_scope` calls it at a run's
    edges, :func:`watching` at a folder's)."""
    if not _open():
        _LEDGER.clear()


def ledger() -> dict[str, dict[str, Any]]:
    """What this run has read so far, ``{path: {"sha256", "size"}}``, sorted by path (a copy)."""
    return {path: dict(entry) for path, entry in sorted(_LEDGER.items())}


def _entry(path: Path) -> dict[str, Any] | None:
    """``{"sha256", "size"}`` of a regular file; None for anything else (a missing file, a folder, a FIFO: the
    family's own check says what is wrong with it, and hashing a FIFO would never end)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return {"sha256": digests.sha256_file(path), "size": st.st_size}


def note(paths: Iterable[str | os.PathLike], fix: str = "put the file back, and run the command again") -> None:
    """Record that this run reads ``paths`` (a model's files, as the registry's door gives them), by content.

    Raises:
        FileReplaced: a file this run already read (at its check) holds other bytes now; or (from an open folder,
            :func:`watching`) the run the folder continues read other bytes under that name. Either way before the
            model is built from it.
    """
    for path in paths:
        key = os.path.abspath(os.path.expanduser(path))
        entry = _entry(Path(key))
        if entry is None:
            continue
        seen = _LEDGER.get(key) if _open() else None
        if seen is not None and seen["sha256"] != entry["sha256"]:
            raise FileReplaced(f"{path}: replaced after this run read it (sha256 {short(seen['sha256'])} at its "
                               f"check, {short(entry['sha256'])} now), so the model would not be the one the run "
                               f"records; {fix}")
        for watcher in list(_WATCHERS):
            watcher(key, entry)
        if _open():
            _LEDGER[key] = entry


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
            write_json(self.path, {**record, "inputs": {**record.get("inputs", {}), READS: self.reads}})

    def into(self, inputs: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """A completion record's ``inputs`` with the folder's reads (unchanged when there are none)."""
        return {**(inputs or {}), READS: self.reads} if self.reads else inputs


@contextlib.contextmanager
def watching(on_read: Callable[[str, dict[str, Any]], None]) -> Iterator[None]:
    """While a stage folder is open: keep the ledger, and call ``on_read(path, entry)`` for every file read (before
    the model is built from it: the folder compares it with the run it continues, and records it)."""
    _WATCHERS.append(on_read)
    try:
        yield
    finally:
        _WATCHERS.remove(on_read)
        forget()


__all__ = ["READS", "FileReplaced", "FolderReads", "changed_read", "check_reads", "forget", "ledger", "merged_reads",
           "note", "recorded_reads", "refusal", "short", "watching", "with_reads"]

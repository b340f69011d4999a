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
  resume after a kill): a file of the record whose bytes changed is refused before any model loads, and a file
  first read while the folder is open is compared as it is read (:func:`watching`; :mod:`vpltool.io.folder_reads`).

A leaf beside :mod:`vpltool.io.digests` (it imports nothing else of vpltool but its errors), so that the registry's
door imports no reader of folders.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import VplError
from . import digests

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
        # what this run named the file by before (its check; a record's parameters, vpltool.io.file_identity), taken
        # before the hash below names it anew
        named = digests._SEEN.get(os.path.realpath(key)) if digests._SCOPE[0] else None
        entry = _entry(Path(key))
        if entry is None:
            continue
        seen = _LEDGER.get(key) if _open() else None
        for then, when in ((seen and seen["sha256"], "at its check"), (named and named[1], "when it named it")):
            if then and then != entry["sha256"]:
                raise FileReplaced(f"{path}: replaced after this run read it (sha256 {short(then)} {when}, "
                                   f"{short(entry['sha256'])} now), so the model would not be the one the run "
                                   f"records; {fix}")
        for watcher in list(_WATCHERS):
            watcher(key, entry)
        if _open():
            _LEDGER[key] = entry


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


digests.AT_RUN_EDGES.append(forget)  # a run's span (naming_scope) is the ledger's too

__all__ = ["READS", "FileReplaced", "forget", "ledger", "note", "short", "watching"]

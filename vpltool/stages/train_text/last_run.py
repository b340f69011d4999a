"""The last run's result in a folder that ``train-text --overwrite`` trains again: kept until this run has one of its
own.

``--overwrite`` once deleted the finished model, its checkpoint, ``_stage.json`` and the log before the first step,
so a run refused a moment later (a feature cache it could not use) or one that failed before its first checkpoint
left the folder with neither result. Now those files stay, whole, until this run writes its first checkpoint: then
they go, and the log lines this run made so far (held in memory) start the new log.

A run in one process builds the new result beside the last one instead (:func:`vpltool.io.beside.built_beside`:
the folder it trains in is empty, so nothing is held here, and the last result comes back whole unless the run
finishes); this is what is left where nothing can be made beside the folder, and for torchrun's ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ... import io


class LastRun:
    """``paths`` (the last run's final model, checkpoint, log and record) in a fresh run's folder. ``active``: this
    process replaces them (rank 0 of an ``--overwrite`` run that does not resume); otherwise the log is the run's
    own from the start (:func:`vpltool.io.trim_log`) and nothing is held."""

    def __init__(self, paths: Sequence[Path], log: Path, active: bool):
        self.log_path = Path(log)
        self.paths = [Path(p) for p in paths if active and os.path.lexists(p)]
        self._held: list[Mapping[str, Any]] = []

    def start(self, first: int) -> None:
        """Before the first iteration (``first``: the iteration it resumes after)."""
        if not self.paths:
            io.trim_log(self.log_path, first)

    def log(self, record: Mapping[str, Any]) -> None:
        """A log record of this run: appended, or held while the last run's files stay."""
        if self.paths:
            self._held.append(dict(record))
        else:
            io.append_log(self.log_path, record)

    def replace(self) -> None:
        """Before this run's first checkpoint: the last run's files go, and the held log lines start the log."""
        if not self.paths:
            return
        for path in self.paths:
            Path(path).unlink(missing_ok=True)
        self.paths = []
        io.trim_log(self.log_path, 0)
        for record in self._held:
            io.append_log(self.log_path, record)
        self._held.clear()


__all__ = ["LastRun"]

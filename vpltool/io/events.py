"""TensorBoard event files (the optional ``tensorboard`` extra: ``pip install -e '.[tensorboard]'`` in vpltool's
checkout).

Written by ``torch.utils.tensorboard.SummaryWriter`` (its own background thread appends to
``events.out.tfevents.*``); read back by TensorBoard or ``tensorboard``'s ``EventAccumulator``. The folder is a side
folder of the stage (:func:`vpltool.io.write_side_record`), so a resumed or repeated run may write there again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import VplError, install_extra

EXTRA = install_extra("tensorboard")


def check_tensorboard(option: str = "--tensorboard") -> None:
    """One line (VplError, exit 2) when ``option`` asks for event files and the ``tensorboard`` package is missing;
    called before any model loads."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports tensorboard itself)
    except ImportError:
        raise VplError(f"{option} needs the tensorboard package, which is not installed: {EXTRA}") from None


EVENT_FILES = "events.out.tfevents.*"


def _events_owner(folder: Path) -> str | None:
    """The run folder whose events ``folder`` holds (its side record's ``run``), None when it does not say."""
    from .records import SIDE_RECORD, read_side_record

    side = folder / SIDE_RECORD
    record = read_side_record(side) if side.is_file() else None
    return record.get("run") if isinstance(record, dict) and isinstance(record.get("run"), str) else None


def check_events_folder(folder: str | Path, run: str | Path, resuming: bool, option: str = "--tensorboard") -> None:
    """Refuse, before anything is written, a folder holding event files of another run: TensorBoard would show both
    as one run with overlapping steps. Events of ``run`` itself (its side record names it) are continued by a
    resume and replaced by a fresh start (:func:`open_events`); events no record names only a resume may follow."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob(EVENT_FILES)):
        return
    owner, here = _events_owner(folder), str(Path(run).resolve())
    if owner is not None and owner != here:
        raise VplError(f"{option} {folder}: holds the TensorBoard events of another run ({owner}), which TensorBoard "
                       f"would show as one run with this one; choose another {option} folder")
    if owner is None and not resuming:
        raise VplError(f"{option} {folder}: holds TensorBoard events that no vpltool record names, which "
                       f"TensorBoard would show as one run with this one; choose another {option} folder (or remove "
                       f"its {EVENT_FILES} files)")


def open_events(folder: str | Path, stage: str, option: str = "--tensorboard", purge_step: int | None = None,
                run: str | Path | None = None) -> Any:
    """A ``SummaryWriter`` on ``folder`` (created and marked as ``stage``'s side folder, naming ``run``, the run
    folder whose events these are: :func:`check_events_folder`).

    ``purge_step``: the iteration a resumed run restarts from; TensorBoard hides the earlier files' events from
    that step on, so the curves show the resumed run once. A fresh start (no ``purge_step``) of the run the folder
    names removes that run's earlier event files, which it replaces.
    """
    from .files import write_json
    from .records import SIDE_RECORD
    from .stage import write_side_record

    check_tensorboard(option)
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(folder)
    write_side_record(folder, stage, option)
    if run is not None:
        here = str(Path(run).resolve())
        if purge_step is None and _events_owner(folder) == here:
            for old in folder.glob(EVENT_FILES):
                old.unlink(missing_ok=True)
        from .records import read_side_record, seal

        write_json(folder / SIDE_RECORD, seal({**(read_side_record(folder / SIDE_RECORD) or {}), "run": here}))
    return SummaryWriter(str(folder), purge_step=purge_step)


__all__ = ["EVENT_FILES", "check_events_folder", "check_tensorboard", "open_events"]

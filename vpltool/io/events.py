"""TensorBoard event files (the optional ``tensorboard`` extra: ``pip install 'vpltool[tensorboard]'``).

Written by ``torch.utils.tensorboard.SummaryWriter`` (its own background thread appends to
``events.out.tfevents.*``); read back by TensorBoard or ``tensorboard``'s ``EventAccumulator``. The folder is a side
folder of the stage (:func:`vpltool.io.write_side_record`), so a resumed or repeated run may write there again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import VplError

EXTRA = "pip install 'vpltool[tensorboard]'"


def check_tensorboard(option: str = "--tensorboard") -> None:
    """One line (VplError, exit 2) when ``option`` asks for event files and the ``tensorboard`` package is missing;
    called before any model loads."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports tensorboard itself)
    except ImportError:
        raise VplError(f"{option} needs the tensorboard package, which is not installed: {EXTRA}") from None


def open_events(folder: str | Path, stage: str, option: str = "--tensorboard", purge_step: int | None = None) -> Any:
    """A ``SummaryWriter`` on ``folder`` (created and marked as ``stage``'s side folder).

    ``purge_step``: the iteration a resumed run restarts from; TensorBoard hides the earlier files' events from
    that step on, so the curves show the resumed run once.
    """
    from .stage import write_side_record

    check_tensorboard(option)
    from torch.utils.tensorboard import SummaryWriter

    write_side_record(Path(folder), stage, option)
    return SummaryWriter(str(folder), purge_step=purge_step)


__all__ = ["check_tensorboard", "open_events"]

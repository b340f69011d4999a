"""The `vpltool` command line: a thin typer layer over the library, one command per stage.

Commands are defined in :mod:`.pipeline` (extract, text-prototypes, cam, learn-prototypes, crf), :mod:`.training`
(train-decoder, predict, eval), :mod:`.report` and :mod:`.demo`, each registering on the app of :mod:`.root`;
:mod:`.common` holds what they share (option types, one-line errors, progress). Heavy imports happen inside the
commands, so ``vpltool --help`` stays fast.
"""

from __future__ import annotations

import os

from .root import app, help_cmd

# the commands register themselves on `app`, in this order: the stages in pipeline order, then the demo world's
# isort: off
from . import pipeline, segment, training, report, demo  # noqa: E402,F401
from . import benchmark  # noqa: E402,F401
from . import pgseg  # noqa: E402,F401  (train-pgseg)
# isort: on
app.command("help")(help_cmd)  # last in the list: `vpltool help` and `vpltool help COMMAND`


COMPLETE_VAR = "_VPLTOOL_COMPLETE"
_SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _click_style_completion() -> None:
    """Accept click's spelling of the completion variable (``bash_source``, as click's docs write it) as well as
    typer's (``source_bash``): typer answered the former with "Shell source not supported"."""
    shell, _, instruction = os.environ.get(COMPLETE_VAR, "").partition("_")
    if shell in _SHELLS and instruction in ("source", "complete"):
        os.environ[COMPLETE_VAR] = f"{instruction}_{shell}"


def main() -> None:
    _click_style_completion()
    app()


__all__ = ["app", "main"]

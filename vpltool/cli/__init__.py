"""The `vpltool` command line: a thin typer layer over the library, one command per stage.

Commands are defined in :mod:`.pipeline` (extract, text-prototypes, cam, learn-prototypes, crf), :mod:`.training`
(train-decoder, predict, eval) and :mod:`.demo`; :mod:`.common` holds what they share (option types, one-line
errors, progress). Heavy imports happen inside the commands, so ``vpltool --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__

# Plain click help (rich_markup_mode=None): typer's rich panels cut long option names at 80 columns
# ("--rsc-temperat…"), showed flags as "<bool>" and ate "[default: ...]" as markup; plain help wraps instead, and
# docs/cli.md is the same text (benchmarks/cli_docs.py)
app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_show_locals=False, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    help="Weakly-supervised semantic segmentation with CLIP (CLIP-ES + VPL). One stage per command; stages "
    "exchange safetensors and palette PNGs on disk, so any stage can be swapped or re-run alone.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vpltool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """Weakly-supervised semantic segmentation with CLIP: one stage per command, files in between."""


# the commands register themselves on `app`, in this order: the stages in pipeline order, then the demo world's
# isort: off
from . import pipeline, training, demo  # noqa: E402,F401
# isort: on


def main() -> None:
    app()


__all__ = ["app", "main"]

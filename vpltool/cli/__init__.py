"""The `vpltool` command line: a thin typer layer over the library, one command per stage.

Commands are defined in :mod:`.pipeline` (extract, text-prototypes, cam, learn-prototypes, crf), :mod:`.training`
(train-decoder, predict, eval), :mod:`.report` and :mod:`.demo`; :mod:`.common` holds what they share (option types,
one-line errors, progress). Heavy imports happen inside the commands, so ``vpltool --help`` stays fast.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from .. import __version__

# Plain click help (rich_markup_mode=None): typer's rich panels cut long option names at 80 columns
# ("--rsc-temperat…"), showed flags as "<bool>" and ate "[default: ...]" as markup; plain help wraps instead, and
# docs/cli.md is the same text (docgen/cli_docs.py)
app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_show_locals=False, add_completion=True,
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
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """Weakly-supervised semantic segmentation with CLIP: one stage per command, files in between."""


def help_cmd(
    ctx: typer.Context,
    command: Annotated[Optional[str], typer.Argument(help="The command to explain; none: the list of commands.")] =
        None,
) -> None:
    """Show the help of vpltool or of one command (the same as COMMAND --help)."""
    import click

    root = ctx.parent
    group = root.command
    if command is None:
        typer.echo(group.get_help(root))
        return
    sub = group.get_command(root, command)
    if sub is None:
        typer.echo(f"error: no command {command!r}; commands: {', '.join(group.list_commands(root))}", err=True)
        raise typer.Exit(code=2)
    with click.Context(sub, info_name=command, parent=root) as sub_ctx:
        typer.echo(sub.get_help(sub_ctx))


# the commands register themselves on `app`, in this order: the stages in pipeline order, then the demo world's
# isort: off
from . import pipeline, segment, training, report, demo  # noqa: E402,F401
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

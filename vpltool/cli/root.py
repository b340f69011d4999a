"""The root of the `vpltool` command line: the typer app every command registers on, ``--version`` and ``help``.

Its own module, so that the command modules (:mod:`.pipeline`, :mod:`.training`, ...) import the app from here and
the package's ``__init__`` imports them: no import circle between the package and its commands.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from .. import __version__


def _warn_broken_plugins() -> None:
    """Each broken plugin's line (:func:`vpltool.plugins.problems`) as one ``warning:`` line on stderr, once per
    process, before a help text: `segment --help` runs no command, whose start would show them."""
    if _SHOWN:
        return
    _SHOWN.append(True)
    from ..plugins.entry_points import problems

    for line in problems():
        typer.echo(f"warning: {line}", err=True)


_SHOWN: list[bool] = []


class Group(TyperGroup):
    """`vpltool`: its help says which plugins are broken first (:func:`_warn_broken_plugins`) and ends with the
    methods `segment` takes, the plugins' among them (read when the help is shown)."""

    def get_help(self, ctx):
        _warn_broken_plugins()
        return super().get_help(ctx)

    def invoke(self, ctx):
        """``--reproducible`` (vpltool's own option) given after a command (``vpltool cam --reproducible``) is
        refused, as click refuses any unknown option, with where it goes."""
        try:
            return super().invoke(ctx)
        except Exception as e:  # click's NoSuchOption (typer's vendored click or click itself: by its name)
            if type(e).__name__ == "NoSuchOption" and getattr(e, "option_name", None) == "--reproducible":
                e.message = ("No such option: --reproducible; it is vpltool's own, so it goes before the command: "
                             f"vpltool --reproducible {ctx.invoked_subcommand or 'COMMAND'} ... (or "
                             "VPLTOOL_REPRODUCIBLE=1 before it)")
            raise

    def format_epilog(self, ctx, formatter) -> None:
        from ..api.methods import method_families

        table = method_families(listed=True)  # the plugins' methods too, each listed in a child: none loaded here
        dense = [name for name, fam in table.items() if fam == "clip"]
        text = [name for name, fam in table.items() if fam != "clip"]
        import textwrap

        width = max((formatter.width or 80) - 2, 40)
        lines = [f"segment --dense METHOD: {', '.join(dense)}.",
                 f"segment --model NAME:FILE (a text-supervised checkpoint): {', '.join(text)}.",
                 "vpltool list-methods --details says what each is, --licences what each lets you ship; "
                 "docs/open-vocabulary.md compares them."]
        formatter.write_paragraph()
        formatter.write_text("Methods:")
        for line in lines:  # whole names: a method's name is never cut at its hyphen
            formatter.write("".join(f"{row}\n" for row in textwrap.wrap(line, width, initial_indent="  ",
                                                                         subsequent_indent="    ",
                                                                         break_on_hyphens=False)))
        super().format_epilog(ctx, formatter)


class Command(TyperCommand):
    """A command: its help says which plugins are broken first (:func:`_warn_broken_plugins`)."""

    def get_help(self, ctx):
        _warn_broken_plugins()
        return super().get_help(ctx)

# Plain click help (rich_markup_mode=None): typer's rich panels cut long option names at 80 columns
# ("--rsc-temperat…"), showed flags as "<bool>" and ate "[default: ...]" as markup; plain help wraps instead, and
# docs/cli.md is the same text (docgen/cli_docs.py)
app = typer.Typer(
    cls=Group, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_show_locals=False, add_completion=True,
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
    reproducible: Annotated[bool, typer.Option(
        "--reproducible", help="Reproducible mode (the same as VPLTOOL_REPRODUCIBLE=1): the same bits on every "
        "x86-64 CPU. --precision auto is fp32, every library is capped at AVX2, one thread; slower. Its files say "
        "so, and a later stage refuses to mix them with fast-mode files (docs/reproduce.md)")] = False,
) -> None:
    """Weakly-supervised semantic segmentation with CLIP: one stage per command, files in between."""
    if reproducible:  # before any command loads torch, numpy or OpenCV (this package imports none of them)
        from ..runtime.numerics import ask_reproducible

        ask_reproducible()


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


__all__ = ["app", "help_cmd", "Command", "Group"]

"""vpltool's command line in this process, its click command tree built once: typer's ``CliRunner.invoke(app)``
builds it from the app on every call (~0.04 CPU-s for its ~30 commands; the method matrix and the ledger's rows
invoke it hundreds of times, the robustness table ~700). The app registers no command after import."""

from __future__ import annotations

import functools
from unittest import mock


@functools.cache
def click_command():
    from typer.main import get_command

    from vpltool.cli import app

    return get_command(app)


def invoke(args: list[object]):
    """``vpltool ARGS`` through typer's CliRunner (stdout and stderr together in ``result.output``)."""
    import typer.testing

    from vpltool.cli import app

    with mock.patch.object(typer.testing, "_get_command", lambda typer_app: click_command()):
        return typer.testing.CliRunner().invoke(app, [str(a) for a in args])

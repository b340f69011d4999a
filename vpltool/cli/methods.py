"""The `list-methods` command: the methods `segment` and :func:`vpltool.segmenter` take, as
:func:`vpltool.list_methods` lists them; with ``--licences``, each one's licences and the model families'."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def list_methods_cmd(
    patterns: Annotated[Optional[list[str]], typer.Argument(
        help="Wildcard patterns ('*clip*'); the names matching any. None: every method.", show_default=False)] = None,
    licences: Annotated[bool, typer.Option(
        "--licences", help="Print each method's licences (the code it follows, read at its reference repository's "
        "root at a named commit, and the weights it loads by default), then every model family's; [read first] "
        "marks no licence file, unknown, non-commercial or the owner's own terms. docs/licences.md is the same "
        "table.")] = False,
    details: Annotated[bool, typer.Option("--details", help="One line saying what each method is.")] = False,
) -> None:
    """List the methods (segment --dense METHOD, --model NAME:FILE), as vpltool.list_methods() does.

    \b
    Example:
      vpltool list-methods '*clip*' --details
      vpltool list-methods --licences
    """
    from ..api.methods import family_licences, list_methods
    from ..config.licences import licence_lines

    _check(patterns or [], licences, details)
    if licences:
        rows = list_methods(patterns or "", licences=True)
        lines = [line for name, lic in rows.items() for line in licence_lines(name, lic)]
        if not patterns:  # the model families the methods load their weights through
            lines += ["", "model families:"] + [f"  {line}" for name, lic in family_licences().items()
                                                 for line in licence_lines(name, lic)]
        typer.echo("\n".join(lines))
        return
    if details:
        typer.echo("\n".join(f"{name}: {what}" for name, what in list_methods(patterns or "", details=True).items()))
        return
    typer.echo("\n".join(list_methods(patterns or "")))


def _check(patterns: list[str], licences: bool, details: bool) -> None:
    """One line for ``--details`` with ``--licences`` (two listings, one asked for) and for a pattern that names no
    method (a typo would otherwise print nothing), with the closest name."""
    from ..api.methods import list_methods
    from ..config.checks import did_you_mean
    from ..errors import VplError

    if licences and details:
        raise VplError("--details and --licences are two listings; give one of them")
    names = list_methods()
    for pattern in patterns:
        if not list_methods(pattern):
            raise VplError(f"list-methods {pattern!r}: no method matches it;{did_you_mean(pattern, names) or ''} the "
                           f"methods: {', '.join(names)}")

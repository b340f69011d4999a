"""Bad input to the licence listing (`list-methods`, vpltool.plugins.Licence), as rows of the table of
``robustness_cases.py`` (which imports this module after the tenth round's): each row fails with its fix reverted."""

from __future__ import annotations

from collections.abc import Iterator

from robustness_cases import Workspace, case


@case("list-methods with a mistyped method (no pattern matches it)", "list-methods 'naclp': no method matches it;",
      "did you mean 'naclip'?")
def _list_methods_typo(ws: Workspace) -> Iterator[list[object]]:
    yield ["list-methods", "naclp", "--licences"]


@case("list-methods --details --licences (two listings at once)", "--details and --licences are two listings; give "
      "one of them")
def _list_methods_two_listings(ws: Workspace) -> Iterator[list[object]]:
    yield ["list-methods", "--details", "--licences"]


@case("Python: a plugin's Licence that names a branch, not the commit read",
      "Licence of 'openai/CLIP': give the repository as owner/name and the commit read (7 to 40 hex digits)",
      python=True)
def _licence_branch(ws: Workspace) -> Iterator[list[object]]:
    yield ["from vpltool.plugins import Licence", "Licence('MIT', 'unknown', 'openai/CLIP', 'main')"]


@case("Python: a plugin's --dense row whose licence is a string",
      "--dense plugin-lic: licence= takes a vpltool.plugins.Licence, not a str", python=True)
def _licence_string(ws: Workspace) -> Iterator[list[object]]:
    yield ["from vpltool.config.licences import checked", "checked('MIT', '--dense plugin-lic')"]

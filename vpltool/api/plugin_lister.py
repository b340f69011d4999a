"""The child process that lists the plugins (:func:`vpltool.plugins.survey.survey` starts it): it calls each entry
point named on its command line, reads vpltool's tables as the parent would (each plugin row checked), and says, for
each, what it registered and what a listing shows of it, or how it failed.

A plugin's register function runs here, not in the program that lists them, so that one that ends its process
(``os._exit``), hangs or crashes costs only itself: the parent sees where the answers stop (:data:`BEGIN` without
its answer) and lists that plugin as one line. The parent never loads a plugin to list it: each answer carries what
its listings print (:func:`_shown`). Its answers go to a copy of the standard output made before any plugin runs;
the plugins' own output (Python's or C's, on file descriptors 1 and 2) goes nowhere.

It answers in :mod:`vpltool.plugins.lister`'s protocol (the parent reads it without importing this module, which
sits with the front doors because it reads vpltool's tables and command line as the listings do).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any

from ..plugins.lister import BEGIN, FAILED, MARK, OK, PROBLEMS


def _added(rows: int, names: int) -> list[str]:
    """``kind:name`` of what was registered since: the rows past ``rows``, the other names past ``names`` (a CLIP
    alias, a tokenizer: :func:`vpltool.plugins.entry_points.undoable`)."""
    from ..plugins import entry_points

    return sorted({f"{r.kind}:{r.name}" for r in entry_points._ROWS[rows:]} | set(entry_points._NAMES[names:]))


def _shown(dist: str, names: list[str], problems: int) -> dict[str, Any]:
    """What the listings show of the plugin ``dist`` once its rows are checked (each table read: a malformed or
    clashing row is its problem line and is left out): ``names`` (all it registered), ``methods`` (method -> its
    family, ``clip`` for a ``--dense`` method), ``summaries`` and ``licences`` by method
    (``list_methods(details=True)``, ``(licences=True)``), ``families``, ``models`` (its CLIP aliases), ``presets``
    (``benchmark --presets``' rows) and ``problems`` (its rows' lines, past the first ``problems``)."""
    from ..config.benchmarks import presets_table
    from ..config.dense import DENSE_SPECS
    from ..models.registry import BACKBONES, SEGMENTERS, TEXT_FAMILIES
    from ..plugins import entry_points
    from .methods import method_families, method_licence, method_summary

    for table in (DENSE_SPECS, BACKBONES, TEXT_FAMILIES):
        len(table)  # read: each table checks the new rows
    methods = {name: fam for name, fam in method_families().items()
               if (DENSE_SPECS.plugin(name) if fam == "clip" else TEXT_FAMILIES.plugin(SEGMENTERS[name])) == dist}
    licences = {name: method_licence(name) for name in methods}
    return {"names": names, "methods": methods, "summaries": {name: method_summary(name) for name in methods},
            "licences": {name: None if lic is None else asdict(lic) for name, lic in licences.items()},
            "families": [name for table in (BACKBONES, TEXT_FAMILIES) for name in table if table.plugin(name) == dist],
            "models": [name.partition(":")[2] for name in names if name.startswith("model:")],
            "presets": [row for name in methods if name in DENSE_SPECS for row in presets_table(name)],
            "problems": entry_points.problems()[problems:]}


def main(keys: list[str]) -> None:
    """Call the entry points of ``keys`` (in the group's order), answering on the standard output as it was."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    from importlib.metadata import entry_points as group

    from ..plugins import entry_points

    entry_points.hold_warnings()  # the lines are answered, not warned
    entry_points._STATE["survey"] = []  # this process is the listing: a name it looks up starts no other child
    entry_points.load()  # vpltool's own (the demo world's): their names are not the plugins'
    wanted = set(keys)
    for ep in group(group=entry_points.GROUP):
        key = entry_points.key_of(ep)
        if key not in wanted:
            continue
        out.write(f"{MARK}{BEGIN}\t{key}\n")
        before, problems = (len(entry_points._ROWS), len(entry_points._NAMES)), len(entry_points.problems())
        dist = entry_points._dist_of(ep)
        failure = entry_points.call(ep, dist)
        if failure is None:
            try:  # its rows checked: a text family's check imports its configuration, the plugin's own code
                with entry_points.plugin_code() as said:
                    shown = _shown(dist, _added(*before), problems)
            except entry_points.PluginFailure as e:
                failure = e.cause + said.tail()
        if failure is not None:
            out.write(f"{MARK}{FAILED}\t{key}\t{json.dumps(failure)}\n")
            continue
        out.write(f"{MARK}{OK}\t{key}\t{json.dumps(shown, default=str)}\n")
    problems = len(entry_points.problems())
    try:  # the command line's options made with the plugins' knobs: a knob whose option a command has is a line
        from .. import cli  # noqa: F401
    except Exception:  # noqa: BLE001  (vpltool's own options: the parent's own import says what is wrong)
        pass
    out.write(f"{MARK}{PROBLEMS}\t-\t{json.dumps(entry_points.problems()[problems:])}\n")
    out.close()


def read_family_licences(names: list[str]) -> dict[str, dict | None]:
    """:func:`vpltool.plugins.survey.family_licences`' child: each family's plugin loaded, its module imported, its
    licence as a dict."""
    from ..errors import VplError
    from ..models.registry import family

    out: dict[str, dict | None] = {}
    for name in names:
        try:
            lic = family(name).licence
        except VplError:
            continue
        out[name] = None if lic is None else asdict(lic)
    return out


if __name__ == "__main__":  # python -m vpltool.api.plugin_lister KEY...
    main(sys.argv[1:])

"""The child process that lists the plugins (:func:`vpltool.plugins.entry_points.survey` starts it): it calls each
entry point named on its command line and says, for each, the names it registered or how it failed.

A plugin's register function runs here, not in the program that lists them, so that one that ends its process
(``os._exit``), hangs or crashes costs only itself: the parent sees where the answers stop (:data:`BEGIN` without
its answer) and lists that plugin as one line. Its answers go to a copy of the standard output made before any
plugin runs; the plugins' own output (Python's or C's, on file descriptors 1 and 2) goes nowhere.

Protocol, one line each, every line starting with :data:`MARK`: ``begin KEY``, then ``ok KEY NAMES_JSON`` or
``failed KEY CAUSE_JSON``; ``KEY`` is an entry point's ``name = value``.
"""

from __future__ import annotations

import json
import os
import sys

MARK = "\x1evpltool-lister\t"  # a record separator first: no plugin's line starts so by chance
BEGIN, OK, FAILED = "begin", "ok", "failed"


def _added(rows: int, names: int) -> list[str]:
    """``kind:name`` of what was registered since: the rows past ``rows``, the other names past ``names`` (a CLIP
    alias, a tokenizer: :func:`vpltool.plugins.entry_points.undoable`)."""
    from . import entry_points

    return sorted({f"{r.kind}:{r.name}" for r in entry_points._ROWS[rows:]} | set(entry_points._NAMES[names:]))


def main(keys: list[str]) -> None:
    """Call the entry points of ``keys`` (in the group's order), answering on the standard output as it was."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    from importlib.metadata import entry_points as group

    from . import entry_points

    entry_points.load()  # vpltool's own (the demo world's): their names are not the plugins'
    wanted = set(keys)
    for ep in group(group=entry_points.GROUP):
        key = entry_points.key_of(ep)
        if key not in wanted:
            continue
        out.write(f"{MARK}{BEGIN}\t{key}\n")
        before = len(entry_points._ROWS), len(entry_points._NAMES)
        entry_points._CURRENT.append(key)
        try:
            with entry_points.plugin_code() as said:
                ep.load()()
        except entry_points.PluginFailure as e:
            out.write(f"{MARK}{FAILED}\t{key}\t{json.dumps(e.cause + said.tail())}\n")
            continue
        finally:
            entry_points._CURRENT.pop()
        out.write(f"{MARK}{OK}\t{key}\t{json.dumps(_added(*before))}\n")
    out.close()


if __name__ == "__main__":  # python -m vpltool.plugins.lister KEY...
    main(sys.argv[1:])

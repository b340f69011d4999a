"""The protocol of the child process that lists the plugins (:func:`vpltool.plugins.survey.survey` starts it; the child
is :mod:`vpltool.api.plugin_lister`, which reads vpltool's tables as the listings do, so it sits with the front doors).

Protocol, one line each, every line starting with :data:`MARK`: ``begin KEY``, then ``ok KEY SHOWN_JSON`` or
``failed KEY CAUSE_JSON``; last, ``problems - LINES_JSON``: the lines of the plugins' knobs whose options a command
already has (found by making the command line's options, as the parent's ``vpltool.cli`` does). ``KEY`` is an entry
point's ``name = value``.
"""

from __future__ import annotations

MARK = "\x1evpltool-lister\t"  # a record separator first: no plugin's line starts so by chance
BEGIN, OK, FAILED, PROBLEMS = "begin", "ok", "failed", "problems"

"""Which plugin registers what, found without running any plugin in this process: every other distribution's entry
point is called in a child process (:mod:`vpltool.plugins.lister`) once per process, and only the plugin a command
or program needs is then loaded here (:func:`want`: a name that is none of vpltool's own; :func:`load_listed`: a
listing, ``--help``, ``benchmark``, :func:`vpltool.list_methods`). :mod:`vpltool.plugins` installs :func:`want` and
:func:`load_listed` as :mod:`vpltool.plugins.entry_points`' own (the tables' module imports nothing above it).

A plugin that ends the child (``sys.exit``, ``os._exit``), dies of a signal, or takes longer than the plugins'
timeout (:func:`vpltool.config.dense_plugins.plugin_timeout`) costs only itself: one problem line, never loaded here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from . import entry_points as ep_
from .entry_points import _STATE, _WANTED, _dist_of, _failed_line, _group, _load_one, _own, key_of, problem


@dataclass(frozen=True)
class Listed:
    """What listing a plugin's entry point in a child process (:func:`survey`) found: its ``key`` (``name =
    value``), its distribution, the ``kind:name`` of each thing it registered (``dense:example-smooth``,
    ``family:example-mean``, ``model:ALIAS``, ``tokenizer:KIND``), or how it failed (None: it did not)."""

    key: str
    dist: str
    names: tuple[str, ...]
    failure: str | None

    def registers(self, name: str) -> bool:
        return self.failure is None and any(n.partition(":")[2] == name for n in self.names)


def survey() -> list[Listed]:
    """Every other distribution's entry point, called in a child process (:mod:`vpltool.plugins.lister`) once per
    process, never in this one: what each registers, or how it failed. One that raises, exits (``sys.exit``,
    ``os._exit``), crashes or takes longer than the plugins' timeout
    (:func:`vpltool.config.dense_plugins.plugin_timeout`) costs only itself: it is a problem line
    (:func:`problem`) and is never loaded here; the child goes on with the others."""
    if _STATE.get("survey") is None:
        foreign = [ep for ep in _group() if not _own(ep)]
        _STATE["survey"] = _list_in_child(foreign) if foreign else []
        for item in sorted(_STATE["survey"], key=lambda i: (i.dist, i.key)):  # not the file system's order
            if item.failure is not None:
                problem(_failed_line(item.dist, item.key, item.failure))
    return list(_STATE["survey"])


def _list_in_child(eps: list[Any]) -> list[Listed]:
    """:func:`survey`'s children: one lists the entry points in order; where it stops (an exit, a crash, a hang
    killed at the timeout) the entry point it had begun is that one's failure, and a new child lists the rest."""
    from ..config.dense_plugins import plugin_timeout

    timeout = plugin_timeout()
    dists = {key_of(ep): _dist_of(ep) for ep in eps}
    found: dict[str, tuple[tuple[str, ...], str | None]] = {}
    left = list(dists)
    while left:
        answers, running, ended = _one_child(left, timeout)
        found.update(answers)
        if running is not None:
            found[running] = ((), ended)
        elif len(found) < len(dists) and not answers:  # it stopped before reaching any: the child itself failed
            found.update({key: ((), f"the plugins' lister stopped before reaching it: {ended}") for key in left})
        left = [key for key in left if key not in found]
    return [Listed(key, dists[key], *found[key]) for key in dists]


def _one_child(keys: list[str], timeout: float) -> tuple[dict, str | None, str]:
    """Run one lister child on ``keys``: its answers by key, the key it had begun but not answered (None), and how
    it ended (a sentence: "it did not return within 30 s", "it ended the process with exit code 0")."""
    import json
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    from .lister import BEGIN, FAILED, MARK, OK

    code = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); from vpltool.plugins.lister import main; "
            "main(sys.argv[2:])")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(sys.path), *keys], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    answers: dict[str, tuple[tuple[str, ...], str | None]] = {}
    running, buffer, ended = None, b"", ""
    hang = f"it did not return within {timeout:g} s, the plugins' timeout, set by {_timeout_name()}"
    deadline = time.monotonic() + timeout  # the child's start (Python, vpltool.plugins) has one timeout too
    try:
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                ended = hang
                break
            if not select.select([proc.stdout], [], [], wait)[0]:
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                try:
                    code_ = proc.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:  # its output closed, the process still running: a hang
                    ended = hang
                    break
                ended = (f"it crashed with {signal.Signals(-code_).name}" if code_ < 0 and -code_ in
                         signal.valid_signals() else f"it ended the process with exit code {code_}")
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                if not text.startswith(MARK):
                    continue
                what, key, *rest = text[len(MARK):].split("\t")
                if what == BEGIN:
                    running, deadline = key, time.monotonic() + timeout
                elif what in (OK, FAILED) and key == running:
                    value = json.loads(rest[0]) if rest else None
                    answers[key] = (tuple(value), None) if what == OK else ((), str(value))
                    running = None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    return answers, running, ended


def _timeout_name() -> str:
    from ..config.dense_plugins import TIMEOUT_VARIABLE

    return TIMEOUT_VARIABLE


def want(name: Any) -> bool:
    """Load in this process the plugins whose entry points register ``name`` (a ``--dense`` method, a family, a
    tokenizer kind), found by listing them in a child (:func:`survey`); vpltool's own names never reach here
    (:func:`maybe_plugin`). True if one was loaded now. Each name is looked for once."""
    if not maybe_plugin(name) or name in _WANTED:
        return False
    _WANTED.add(name)
    if not any(not _own(ep) for ep in _group()):
        return False
    keys = {item.key for item in survey() if item.registers(name)}
    return any([_load_one(ep) for ep in _group() if key_of(ep) in keys])


def load_listed() -> None:
    """Load in this process every plugin that listed cleanly in a child (:func:`survey`): what lists the plugins
    (``--help``, ``benchmark``, :func:`vpltool.list_methods`) shows their rows; one that failed there is its line and
    is never loaded here."""
    keys = {item.key for item in survey() if item.failure is None}
    for ep in _group():
        if key_of(ep) in keys:
            _load_one(ep)


def maybe_plugin(name: Any) -> bool:
    """Whether looking ``name`` up may need a plugin: a non-empty string that is none of vpltool's own names in any
    of its tables (a lookup of ``naclip`` among the text families, say, never starts a listing)."""
    if not isinstance(name, str) or not name:
        return False
    from ..config import dense  # noqa: F401  (their tables: vpltool's own names, made when imported)
    from ..models import registry  # noqa: F401

    return name not in ep_._BUILTIN_NAMES


__all__ = ["Listed", "load_listed", "maybe_plugin", "survey", "want"]

"""Which plugin registers what, found without running any plugin in this process: every other distribution's entry
point is called in a child process (:mod:`vpltool.api.plugin_lister`) once per process, and only the plugin a command
or program runs is then loaded here (:func:`want`: a name that is none of vpltool's own; :func:`load_all`: a program's
own :func:`vpltool.plugins.load`). A listing (``--help``, ``benchmark --presets``, :func:`vpltool.list_methods`)
shows what the child answered (:func:`shown`) and loads nothing here. :mod:`vpltool.plugins` installs :func:`want`,
:func:`load_all` and :func:`survey` as :mod:`vpltool.plugins.entry_points`' own (the tables' module imports nothing
above it).

A plugin that ends the child (``sys.exit``, ``os._exit``), dies of a signal, or takes longer than the plugins'
timeout (:func:`vpltool.config.dense_plugins.plugin_timeout`) costs only itself: one problem line, never loaded here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
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
    shown: dict = field(default_factory=dict, compare=False)  # what a listing shows of it (plugin_lister._shown)

    def registers(self, name: str) -> bool:
        return self.failure is None and any(n.partition(":")[2] == name for n in self.names)


def survey() -> list[Listed]:
    """Every other distribution's entry point, called in a child process (:mod:`vpltool.api.plugin_lister`) once per
    process, never in this one: what each registers, or how it failed. One that raises, exits (``sys.exit``,
    ``os._exit``), crashes or takes longer than the plugins' timeout
    (:func:`vpltool.config.dense_plugins.plugin_timeout`) costs only itself: it is a problem line
    (:func:`problem`) and is never loaded here; the child goes on with the others."""
    if _STATE.get("survey") is None:
        foreign = [ep for ep in _group() if not _own(ep)]
        _STATE["survey"], lines = _list_in_child(foreign) if foreign else ([], [])
        for item in sorted(_STATE["survey"], key=lambda i: (i.dist, i.key)):  # not the file system's order
            if item.failure is not None:
                problem(_failed_line(item.dist, item.key, item.failure))
            for line in item.shown.get("problems", ()):
                problem(line)
        for line in lines:
            problem(line)
    return list(_STATE["survey"])


def _list_in_child(eps: list[Any]) -> tuple[list[Listed], list[str]]:
    """:func:`survey`'s children: one lists the entry points in order; where it stops (an exit, a crash, a hang
    killed at the timeout) the entry point it had begun is that one's failure, and a new child lists the rest. With
    the problem lines of the plugins' knobs (:data:`~vpltool.plugins.lister.PROBLEMS`), of every plugin that listed
    cleanly: from one more child listing those alone where a child had stopped before saying them."""
    from ..config.dense_plugins import plugin_timeout

    timeout = plugin_timeout()
    dists = {key_of(ep): _dist_of(ep) for ep in eps}
    found: dict[str, tuple[dict, str | None]] = {}
    left, lines, stopped = list(dists), None, False
    while left:
        answers, running, ended, said = _one_child(left, timeout)
        found.update(answers)
        stopped = stopped or said is None
        lines = said if lines is None else lines
        if running is not None:
            found[running] = ({}, ended)
        elif len(found) < len(dists) and not answers:  # it stopped before reaching any: the child itself failed
            found.update({key: ({}, f"the plugins' lister stopped before reaching it: {ended}") for key in left})
        left = [key for key in left if key not in found]
    clean = [key for key in dists if found[key][1] is None]
    if stopped and clean:  # the knobs' lines of the plugins a stopped child had listed
        lines = _one_child(clean, timeout)[3]
    items = [Listed(key, dists[key], tuple(found[key][0].get("names", ())), found[key][1], found[key][0])
             for key in dists]
    return items, list(lines or [])


def _one_child(keys: list[str], timeout: float) -> tuple[dict, str | None, str, list[str] | None]:
    """Run one lister child on ``keys``: its answers by key (``(shown, None)`` or ``({}, cause)``), the key it had
    begun but not answered (None), how it ended (a sentence: "it did not return within 30 s", "it ended the process
    with exit code 0"), and its knobs' problem lines (None: it stopped before saying them)."""
    import json
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    from .lister import BEGIN, FAILED, MARK, OK, PROBLEMS

    code = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); from vpltool.api.plugin_lister import main; "
            "main(sys.argv[2:])")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(sys.path), *keys], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    answers: dict[str, tuple[dict, str | None]] = {}
    running, buffer, ended, knob_lines = None, b"", "", None
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
                    answers[key] = (dict(value), None) if what == OK else ({}, str(value))
                    running = None
                elif what == PROBLEMS:
                    knob_lines = [str(line) for line in json.loads(rest[0])] if rest else []
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    return answers, running, ended, knob_lines


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


def load_all() -> None:
    """Load in this process every plugin that listed cleanly in a child (:func:`survey`): a program's own
    :func:`vpltool.plugins.load` with no name (its options for the CLI's app); one that failed there is its line and
    is never loaded here. No listing of vpltool's calls it (:func:`shown`)."""
    keys = {item.key for item in survey() if item.failure is None}
    for ep in _group():
        if key_of(ep) in keys:
            _load_one(ep)


def shown(what: str) -> dict[str, Any]:
    """What the listings show of the plugins that listed cleanly, each in a child (:func:`survey`), none loaded
    here: ``what`` is ``methods`` (method -> family), ``summaries``, ``licences`` (by method), ``families``,
    ``models`` (name -> the distribution), or ``presets`` (each plugin's rows of ``benchmark --presets``, by
    distribution), in the group's order."""
    out: dict[str, Any] = {}
    for item in survey():
        if item.failure is not None:
            continue
        value = item.shown.get(what, {} if what in ("methods", "summaries", "licences") else [])
        if what == "presets":
            out[item.dist] = value
        elif isinstance(value, dict):
            out.update({name: v for name, v in value.items() if name not in out})
        else:
            out.update({name: item.dist for name in value if name not in out})
    return out


def family_licences(names: list[str]) -> dict[str, dict | None]:
    """The licences (as dicts; None: undeclared) that the plugins' model families ``names`` declare where they
    register (:func:`vpltool.models.register_family`, in each family's module), read in a child process that loads
    their plugins and imports the modules: a listing loads no plugin here. A family the child could not read (its
    plugin ended the child, hung past the plugins' timeout or failed) is left out, with one problem line."""
    import json
    import subprocess
    import sys

    from ..config.dense_plugins import plugin_timeout

    code = ("import json, sys; sys.path[:] = json.loads(sys.argv[1])\n"
            "from vpltool.api.plugin_lister import read_family_licences\n"
            "print(json.dumps(read_family_licences(sys.argv[2:])))")
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(sys.path), *names], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=plugin_timeout() * (len(names) + 1))
        got = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        got = {}
    for name in names:
        if name not in got:
            problem(f"model family {name!r} (a plugin's): its licence could not be read in a child process; run "
                    f"vpltool.models.family({name!r}) to see why")
    return {name: got[name] for name in names if name in got}


def surveyed() -> bool:
    """Whether this process has listed the plugins already (a help's options then show their methods)."""
    return _STATE.get("survey") is not None


def shown_so_far(what: str) -> dict[str, Any]:
    """:func:`shown` if this process has listed the plugins already, else nothing (no child is started: the
    command line's options of a run that names only vpltool's own methods list no plugin)."""
    return shown(what) if surveyed() else {}


def maybe_plugin(name: Any) -> bool:
    """Whether looking ``name`` up may need a plugin: a non-empty string that is none of vpltool's own names in any
    of its tables (a lookup of ``naclip`` among the text families, say, never starts a listing)."""
    if not isinstance(name, str) or not name:
        return False
    from ..config import dense  # noqa: F401  (their tables: vpltool's own names, made when imported)
    from ..models import registry  # noqa: F401

    return name not in ep_._BUILTIN_NAMES


__all__ = ["Listed", "family_licences", "load_all", "maybe_plugin", "shown", "shown_so_far",
           "survey", "surveyed", "want"]

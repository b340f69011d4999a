"""The ``vpltool.plugins`` entry-point group, read once: what other distributions add to vpltool without forking it.

Each entry point names a function of a plugin's light module (``vpltool_example:register``), which vpltool calls
once, with no argument, when the plugin is needed: vpltool's own entry point (the demo world's) the first time one
of its tables is read; another distribution's only when a name that is none of vpltool's own is looked up
(:func:`want`: ``--dense example-smooth``) or the plugins are listed (:func:`load_listed`: ``--help``,
``benchmark``, :func:`vpltool.list_methods`). Both first list every plugin in a child process (:func:`survey`,
:mod:`vpltool.plugins.lister`), so that a plugin whose function ends the process (``os._exit``), hangs or crashes
costs only itself, one line, and is never called in this one; a program that uses vpltool's own methods calls no
plugin at all. The function calls the register functions of :mod:`vpltool.plugins`; they add a row here by kind
(``dense``: a ``--dense`` method's spec row; ``family``: a model family's module; ``text``: a text-supervised
family's registry row), with the distribution that added it.

The tables read their rows through :class:`PluginTable`: vpltool's own rows, then the plugins' rows of its kind, each
checked by the table's owner. A plugin that fails (its entry point raises, a row is malformed, a name is vpltool's
own or another plugin's) is one line naming its distribution and the fix (:func:`problems`, warned once), and is
left out; the other commands and plugins go on. This module is the ground under the registries: it imports nothing
of vpltool but its errors, so :mod:`vpltool.config.dense` and :mod:`vpltool.models.registry` read their plugin rows
here without an import circle.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import VplError, VplWarning

GROUP = "vpltool.plugins"
IN_PROCESS = "this process"  # the distribution of a row registered by a direct call, not from an entry point


@dataclass(frozen=True)
class Registration:
    """One row a plugin added: its ``kind`` (``dense``, ``family``, ``text``), ``name``, the ``row`` itself and the
    distribution that added it (``"vpltool-example 0.1.0"``; :data:`IN_PROCESS` for a direct call)."""

    kind: str
    name: str
    row: Any
    dist: str


_ROWS: list[Registration] = []
_PROBLEMS: list[str] = []
_STATE: dict[str, Any] = {"loaded": False, "quiet": False, "group": None, "survey": None}
_LOADED: set[str] = set()  # the entry points called in this process (by key_of)
_WANTED: set[str] = set()  # the names looked for among the plugins (want)
_BUILTIN_NAMES: set[str] = set()  # vpltool's own rows' names, of every table
_CURRENT: list[str] = []  # the distribution whose entry point runs now (a stack: an entry point may read a table)
_UNDO: list[Callable[[], Any]] = []  # what the running entry point's register calls outside _ROWS would take back


def _dist_of(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else f"the entry point {ep.name} = {ep.value}"


def _own(ep: Any) -> bool:
    """An entry point of vpltool's own package (the demo world's toy CLIP): loaded in this process on first use,
    as vpltool's own rows are."""
    return ep.value.split(":")[0].split(".")[0].strip() == "vpltool"


def _group() -> list[Any]:
    """The entry points of :data:`GROUP`, read from the installed distributions' metadata once (no plugin code
    runs: ``importlib.metadata`` reads their ``entry_points.txt``)."""
    if _STATE.get("group") is None:
        from importlib.metadata import entry_points

        _STATE["group"] = list(entry_points(group=GROUP))
    return _STATE["group"]


def load() -> None:
    """Call vpltool's own entry points once (later calls return at once): the demo world's toy CLIP. Another
    distribution's plugin is loaded only when named (:func:`want`) or listed (:func:`load_listed`), so that a command
    or a program that uses vpltool's own methods runs none of a plugin's code."""
    if _STATE["loaded"]:
        return
    _STATE["loaded"] = True
    for ep in _group():
        if _own(ep):
            _load_one(ep)


def _load_one(ep: Any) -> bool:
    """Call one entry point in this process, once. One that fails is a problem line (:func:`problem`), never an
    exception: a broken plugin must not stop the commands that do not use it. It runs under :func:`plugin_code`
    (its ``sys.exit``, a Ctrl-C, its prints and its reading of ``sys.argv`` kept inside), and one that fails is left
    out whole: the rows it added before failing are dropped. True if it ran now and did not fail."""
    from .lister import key_of

    key = key_of(ep)
    if key in _LOADED:
        return False
    _LOADED.add(key)
    dist = _dist_of(ep)
    _CURRENT.append(dist)
    rows, undo = len(_ROWS), len(_UNDO)
    try:
        with plugin_code() as said:
            ep.load()()
    except PluginFailure as e:
        del _ROWS[rows:]
        while len(_UNDO) > undo:
            _UNDO.pop()()
        problem(_failed_line(dist, key, e.cause + said.tail()))
        return False
    finally:
        del _UNDO[undo:]
        _CURRENT.pop()
    return True


def _failed_line(dist: str, key: str, cause: str) -> str:
    return (f"plugin {dist}: its entry point {key} failed ({cause}); it is not loaded: fix or reinstall it"
            f"{uninstall_hint(dist)}")


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
    from .lister import key_of

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
    deadline = time.monotonic() + timeout  # the child's start (Python, vpltool.plugins) has one timeout too
    try:
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                ended = f"it did not return within {timeout:g} s, the plugins' timeout, set by {_timeout_name()}"
                break
            if not select.select([proc.stdout], [], [], wait)[0]:
                continue
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                code_ = proc.wait()
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
    return any([_load_one(ep) for ep in _group() if _key(ep) in keys])


def load_listed() -> None:
    """Load in this process every plugin that listed cleanly in a child (:func:`survey`): what lists the plugins
    (``--help``, ``benchmark``, :func:`vpltool.list_methods`) shows their rows; one that failed there is its line and
    is never loaded here."""
    load()
    keys = {item.key for item in survey() if item.failure is None}
    for ep in _group():
        if _key(ep) in keys:
            _load_one(ep)


def _key(ep: Any) -> str:
    from .lister import key_of

    return key_of(ep)


def maybe_plugin(name: Any) -> bool:
    """Whether looking ``name`` up may need a plugin: a non-empty string that is none of vpltool's own names in any
    of its tables (a lookup of ``naclip`` among the text families, say, never starts a listing)."""
    if not isinstance(name, str) or not name:
        return False
    import importlib

    for module in ("vpltool.config.dense", "vpltool.models.registry"):  # their tables: vpltool's own names
        importlib.import_module(module)
    return name not in _BUILTIN_NAMES


class PluginFailure(Exception):
    """A plugin's code failed under :func:`plugin_code`; ``cause`` says how, in brackets after "failed":
    ``ValueError: ...``, ``it called sys.exit(0)``, ``KeyboardInterrupt in it``."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class _Said:
    """What a plugin's code printed while :func:`plugin_code` held it (stdout and stderr together)."""

    def __init__(self) -> None:
        import io

        self.buffer = io.StringIO()

    def tail(self) -> str:
        """``, after printing '<its last line>'`` (what argparse's usage error says), or ``""``."""
        lines = [line.strip() for line in self.buffer.getvalue().splitlines() if line.strip()]
        return f", after printing {lines[-1][:160]!r}" if lines else ""


@contextlib.contextmanager
def plugin_code() -> Iterator[_Said]:
    """Run a plugin's own code (its entry point, the module its row names) inside this block:

    * what it prints goes to the block's buffer, not to the command's output (`vpltool -V` prints the version
      alone); a failure quotes its last line;
    * it sees ``sys.argv`` as ``[program]``: a plugin that parses the command line when imported (argparse) never
      reads, nor answers, vpltool's own arguments (`vpltool segment --help` is vpltool's help);
    * what it raises, ``sys.exit`` and ``KeyboardInterrupt`` included, leaves as one :class:`PluginFailure`, never
      ending the process: the caller reports it in one line and leaves the plugin out.
    """
    import sys

    said, argv = _Said(), sys.argv
    sys.argv = argv[:1]
    try:
        with contextlib.redirect_stdout(said.buffer), contextlib.redirect_stderr(said.buffer):
            yield said
    except SystemExit as e:
        code = e.code if e.code is None or isinstance(e.code, int) else repr(str(e.code)[:80])
        raise PluginFailure(f"it called sys.exit({'' if code is None else code})") from None
    except KeyboardInterrupt as e:
        raise PluginFailure(f"{type(e).__name__} in it") from None
    except Exception as e:  # the plugin's own code: any failure is its, reported in one line
        text = (str(e).strip().splitlines() or [""])[0]
        raise PluginFailure(f"{type(e).__name__}: {text}" if text else type(e).__name__) from None
    finally:
        sys.argv = argv


def undoable(undo: Callable[[], Any]) -> None:
    """What a register call that keeps its row outside :data:`_ROWS` (a CLIP alias, a tokenizer) does to take it
    back, run if the entry point that made the call then fails (the plugin is left out whole)."""
    if _CURRENT:
        _UNDO.append(undo)


def add(kind: str, name: str, row: Any) -> None:
    """Add a plugin's row of ``kind`` (called by :mod:`vpltool.plugins`' register functions); it reaches its table
    on the table's next read, with the distribution whose entry point runs now."""
    _ROWS.append(Registration(kind, name, row, _CURRENT[-1] if _CURRENT else IN_PROCESS))


def problem(line: str) -> None:
    """A broken plugin's one line: kept for :func:`problems`, and warned (:class:`~vpltool.errors.VplWarning`)
    unless the command line holds it for its own display (:func:`hold_warnings`)."""
    if line in _PROBLEMS:
        return
    _PROBLEMS.append(line)
    if not _STATE["quiet"]:
        warnings.warn(VplWarning(line), stacklevel=3)


def problems() -> list[str]:
    """Every broken plugin's line so far."""
    return list(_PROBLEMS)


def hold_warnings(hold: bool = True) -> None:
    """The command line shows :func:`problems` itself, as one ``warning:`` line each per command; while it holds
    them (its options are made at import, before its warning display is set), :func:`problem` only keeps them."""
    _STATE["quiet"] = hold


def uninstall_hint(dist: str) -> str:
    return "" if dist == IN_PROCESS else f", or remove it (pip uninstall {dist.split()[0]})"


class PluginTable(Mapping):
    """vpltool's own rows of one kind, then the plugins' (read on first use: :func:`load`), as one mapping.

    Args:
        kind: the plugins' kind of row (:class:`Registration`).
        builtin: vpltool's own rows, by name, in order.
        check: ``check(name, row, dist) -> row`` for a plugin's row: the row as the table keeps it; raises
            :class:`~vpltool.errors.VplError` (or ``TypeError`` / ``ValueError``) with what is wrong and the fix.
        what: how messages name a row (``"--dense method"``).
    """

    def __init__(self, kind: str, builtin: Mapping[str, Any], check: Callable[[str, Any, str], Any] | None = None,
                 what: str = "name"):
        self.kind, self.what, self._check = kind, what, check
        self._builtin = dict(builtin)
        _BUILTIN_NAMES.update(self._builtin)
        self._rows = dict(builtin)
        self._dists: dict[str, str] = {}
        self._seen = 0
        self._changes = 0

    def _table(self) -> dict[str, Any]:
        load()
        while self._seen < len(_ROWS):
            reg = _ROWS[self._seen]
            self._seen += 1
            if reg.kind == self.kind:
                self._take(reg)
        return self._rows

    def _take(self, reg: Registration) -> None:
        fix = f"rename it in the plugin{uninstall_hint(reg.dist)}"
        if reg.name in self._builtin:
            problem(f"plugin {reg.dist}: {self.what} {reg.name!r} is vpltool's own; the plugin's is not loaded: {fix}")
            return
        if reg.name in self._rows:
            problem(f"plugin {reg.dist}: {self.what} {reg.name!r} is already the plugin {self._dists[reg.name]}'s; "
                    f"the second is not loaded: {fix}")
            return
        try:
            row = reg.row if self._check is None else self._check(reg.name, reg.row, reg.dist)
        except (VplError, TypeError, ValueError) as e:
            problem(f"plugin {reg.dist}: {self.what} {reg.name!r}: {e}; it is not loaded: fix the plugin"
                    f"{uninstall_hint(reg.dist)}")
            return
        self._rows[reg.name] = row
        self._dists[reg.name] = reg.dist
        self._changes += 1

    def rows_so_far(self) -> dict[str, Any]:
        """The rows taken so far, without reading the plugins (a row's check reads the others' so)."""
        return dict(self._rows)

    @property
    def generation(self) -> int:
        """Changes whenever a row is added or removed (what is derived from the table is recomputed then)."""
        self._table()
        return self._changes

    def __setitem__(self, name: str, row: Any) -> None:
        """A row added in this process (a test's stand-in, as ``monkeypatch.setitem`` adds it), checked as a
        plugin's; one line for a malformed row or a name that is vpltool's own."""
        self._table()
        if name in self._builtin:
            raise VplError(f"{self.what} {name!r} is vpltool's own")
        self._rows[name] = row if self._check is None else self._check(name, row, IN_PROCESS)
        self._dists[name] = IN_PROCESS
        self._changes += 1

    def __delitem__(self, name: str) -> None:
        """Remove a row added in this process or by a plugin (vpltool's own stay)."""
        if name in self._builtin or name not in self._table():
            raise KeyError(name)
        del self._rows[name], self._dists[name]
        self._changes += 1

    def plugin(self, name: str) -> str | None:
        """The distribution that added ``name`` (``"vpltool-example 0.1.0"``), or None for vpltool's own."""
        self._table()
        return self._dists.get(name)

    def _has(self, name: object) -> dict[str, Any]:
        """The rows, with the plugin that registers ``name`` loaded first if it is no row yet (:func:`want`)."""
        rows = self._table()
        if name not in rows and want(name):
            rows = self._table()
        return rows

    def __getitem__(self, name: str) -> Any:
        return self._has(name)[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table()))

    def __len__(self) -> int:
        return len(self._table())

    def __contains__(self, name: object) -> bool:
        return name in self._has(name)

    def __repr__(self) -> str:
        return f"PluginTable({self.kind!r}, {list(self)!r})"


class Derived:
    """A value derived from plugin tables (a tuple of names, a dict by name), computed on first use and again when
    a table grows: ``DENSE_CHOICES`` reads as the tuple it was, with the plugins' methods in it, and importing it
    loads no plugin. ``names=True``: its items are method or family names, and looking up one that is none yet
    loads the plugin that registers it (:func:`want`)."""

    def __init__(self, make: Callable[[], Any], *tables: PluginTable, names: bool = False):
        self._make, self._tables, self._names = make, tables, names
        self._key: tuple | None = None
        self._value: Any = None

    def value(self) -> Any:
        """The derived value, up to date with the tables."""
        key = tuple(t.generation for t in self._tables)
        if key != self._key:
            self._value, self._key = self._make(), key
        return self._value


class DerivedTuple(Derived):
    """A :class:`Derived` tuple (``in``, iteration, ``len``, indexing and slicing as a tuple's)."""

    def __iter__(self):
        return iter(self.value())

    def __len__(self) -> int:
        return len(self.value())

    def __getitem__(self, index):
        return self.value()[index]

    def __contains__(self, value: object) -> bool:
        return value in self.value() or (self._names and want(value) and value in self.value())

    def __eq__(self, other: object) -> bool:
        return tuple(self.value()) == (tuple(other) if isinstance(other, (tuple, list, DerivedTuple)) else other)

    def __hash__(self) -> int:
        return hash(tuple(self.value()))

    def __add__(self, other):
        return tuple(self.value()) + tuple(other)

    def __repr__(self) -> str:
        return repr(self.value())


class DerivedMap(Derived, Mapping):
    """A :class:`Derived` dict."""

    def __getitem__(self, key):
        value = self.value()
        if key not in value and self._names and want(key):
            value = self.value()
        return value[key]

    def __iter__(self):
        return iter(self.value())

    def __len__(self) -> int:
        return len(self.value())

    def __repr__(self) -> str:
        return repr(self.value())


__all__ = ["GROUP", "IN_PROCESS", "Registration", "PluginTable", "Derived", "DerivedTuple", "DerivedMap", "load",
           "want", "load_listed", "survey", "Listed", "maybe_plugin", "add", "problem", "problems", "hold_warnings",
           "uninstall_hint", "plugin_code", "PluginFailure", "undoable"]

"""The ``vpltool.plugins`` entry-point group, read once: what other distributions add to vpltool without forking it.

Each entry point names a function of a plugin's light module (``vpltool_example:register``), which vpltool calls
once, with no argument: vpltool's own entry point (the demo world's) the first time one of its tables is read;
another distribution's in this process only when a command or program runs one of its methods or families (a name
that is none of vpltool's own is looked up, :func:`want`: ``--dense example-smooth``) or asks for it
(:func:`vpltool.plugins.load`). A listing (``--help``, ``benchmark --presets``, :func:`vpltool.list_methods`) reads
what each plugin registers from a child process (:func:`listed`, :mod:`vpltool.plugins.survey`,
:mod:`vpltool.api.plugin_lister`) and loads none here, so that a plugin whose function ends the process
(``os._exit``), hangs or crashes costs only itself, one line; a program that uses vpltool's own methods calls no
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
_NAMES: list[str] = []  # ``kind:name`` of what register calls outside _ROWS registered (an alias, a tokenizer)
_HOOKS: dict[str, Callable[..., Any]] = {}  # want, load_all and listed's workers (install)
_CURRENT: list[str] = []  # the distribution whose entry point runs now (a stack: an entry point may read a table)
_UNDO: list[Callable[[], Any]] = []  # what the running entry point's register calls outside _ROWS would take back


def _dist_of(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else f"the entry point {ep.name} = {ep.value}"


def key_of(ep: Any) -> str:
    """An entry point's key, one line: ``name = value`` (the listing's protocol names it so, and
    :data:`_LOADED` holds it)."""
    return f"{ep.name} = {ep.value}".replace("\n", " ").replace("\t", " ")


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
    distribution's plugin is loaded only when named (:func:`want`) or asked for (:func:`load_all`), never to be
    listed (:func:`listed`), so that a command or a program that uses vpltool's own methods runs none of a plugin's
    code."""
    if _STATE["loaded"]:
        return
    _STATE["loaded"] = True
    for ep in _group():
        if _own(ep):
            _load_one(ep)


def _load_one(ep: Any) -> bool:
    """Call one entry point in this process, once. One that fails is a problem line (:func:`problem`), never an
    exception: a broken plugin must not stop the commands that do not use it. True if it ran now and did not
    fail."""
    key = key_of(ep)
    if key in _LOADED:
        return False
    _LOADED.add(key)
    dist = _dist_of(ep)
    failure = call(ep, dist)
    if failure is not None:
        problem(_failed_line(dist, key, failure))
        return False
    return True


def call(ep: Any, dist: str) -> str | None:
    """Call one entry point as distribution ``dist``: under :func:`plugin_code` (its ``sys.exit``, a Ctrl-C, its
    prints and its reading of ``sys.argv`` kept inside); one that fails is left out whole (the rows it added before
    failing are dropped, its other registrations taken back). None, or how it failed (``ValueError: ...``, ``it
    called sys.exit(0)``, with its last printed line)."""
    _CURRENT.append(dist)
    rows, undo = len(_ROWS), len(_UNDO)
    try:
        with plugin_code() as said:
            ep.load()()
    except PluginFailure as e:
        del _ROWS[rows:]
        while len(_UNDO) > undo:
            _UNDO.pop()()
        return e.cause + said.tail()
    finally:
        del _UNDO[undo:]
        _CURRENT.pop()
    return None


def _failed_line(dist: str, key: str, cause: str) -> str:
    return (f"plugin {dist}: its entry point {key} failed ({cause}); it is not loaded: fix or reinstall it"
            f"{uninstall_hint(dist)}")


def want(name: Any) -> bool:
    """Load in this process the plugin that registers ``name`` (a ``--dense`` method, a family, a tokenizer kind),
    if one does: :func:`vpltool.plugins.survey.want`, installed here by :mod:`vpltool.plugins` (this module imports
    nothing of vpltool's above it). True if one was loaded now."""
    hook = _HOOKS.get("want")
    return bool(hook(name)) if hook is not None else False


def load_all() -> None:
    """Load in this process every plugin that lists cleanly (:func:`vpltool.plugins.load` with no name, a program's
    own request: :func:`vpltool.plugins.survey.load_all`, installed as :func:`want` is); vpltool's own entry points in
    any case. Nothing of vpltool's calls it: a listing reads the child's answers (:func:`listed`)."""
    load()
    hook = _HOOKS.get("load_all")
    if hook is not None:
        hook()


def listed() -> list[Any]:
    """The plugins listed, each in a child process, never loaded in this one (:func:`vpltool.plugins.survey.survey`:
    ``--help``, ``benchmark --presets``, :func:`vpltool.list_methods`); vpltool's own entry points are loaded."""
    load()
    hook = _HOOKS.get("survey")
    return hook() if hook is not None else []


def install(**hooks: Callable[..., Any]) -> None:
    """Set :func:`want`, :func:`load_all` and :func:`listed`'s workers (``want=``, ``load_all=``, ``survey=``): the
    listing in a child process lives above this module (:mod:`vpltool.plugins.survey`), which imports it."""
    _HOOKS.update(hooks)


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


def undoable(undo: Callable[[], Any], name: str | None = None) -> None:
    """What a register call that keeps its row outside :data:`_ROWS` (a CLIP alias, a tokenizer) does to take it
    back, run if the entry point that made the call then fails (the plugin is left out whole); ``name``: what it
    registered, ``kind:name`` (``model:ALIAS``), for the listing."""
    if name is not None:
        _NAMES.append(name)
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
           "want", "load_all", "listed", "install", "call", "key_of", "add", "problem", "problems", "hold_warnings",
           "uninstall_hint", "plugin_code", "PluginFailure", "undoable"]

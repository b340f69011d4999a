"""How a command ends: user mistakes as one line and exit 2, signals as one line and the resume hint.

User mistakes (:class:`vpltool.errors.VplError`, and writes that fail for lack of space or permission) print one red
line on stderr and exit with code 2; anything else is a bug and keeps its traceback. Ctrl-C (SIGINT) exits 130 and
SIGTERM (Slurm's preemption, ``kill``) 143, both after one line saying how to resume. Warnings, vpltool's and its
libraries' (timm, torch), are one yellow ``warning:`` line each. Every command is wrapped in
:func:`friendly_errors`, which also checks the options given (:mod:`vpltool.cli.applies`) before anything runs and
runs the command on its rank of a torchrun launch.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer

from ..errors import VplError, VplWarning, write_error
from ..runtime.numerics import check_switches
from .options import _FILE_OPTIONS, _EmptySpelling, _FolderSpelling
from .output import _LOG, err, say


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm's preemption, ``kill``, a container stopping): handled like Ctrl-C, so the same clean-up runs
    (temporaries removed, finished items kept) and one line says how to resume; the exit code is 143 (128 + 15)."""


EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def friendly_errors(fn: Callable) -> Callable:
    """Turn a VplError, or a write that failed for lack of space or permission, into one red line + exit 2; keep
    tracebacks for real bugs. SIGINT and SIGTERM: one line with the resume hint, exit 130 / 143. Also opens the
    ``--log`` file for :func:`say` and :func:`progress` (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .. import io

        verbose = kwargs.get("verbose", False)
        # force: a handler from an earlier call in this process may hold a stderr that is closed by now (typer's
        # test runner swaps sys.stderr per call), which logging reports as a "--- Logging error ---" traceback
        logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[_OneLineLog()],
                            force=True)
        os.environ.setdefault("TQDM_DISABLE", "1")
        log_file = kwargs.get("log_file")
        _LOG.start(log_file)
        try:
            with warnings.catch_warnings(), _sigterm_as_interrupt(), io.naming_scope(), \
                    io.run_outputs({"--log": (log_file, "log")}, on_checked=_LOG.checked):
                warnings.simplefilter("always", VplWarning)  # restored with the filters after the command
                # Python >= 3.12 warns at every fork of a process with threads (torch's own, always there); the data
                # loaders fork by design, as torch's DataLoader does, and the line would follow every run's result
                warnings.filterwarnings("ignore", FORK_WARNING, DeprecationWarning)
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning, verbose)
                _plugin_lines()
                check_switches()  # VPLTOOL_REPRODUCIBLE=2 or =garbage: one line, never read as fast mode silently
                _check_file_options(kwargs)
                _check_given_options(fn, kwargs)
                if log_file is not None:
                    try:  # alone; check_outputs checks it again in the run's context
                        io.check_log_target(log_file)
                    except VplError:
                        _LOG.checked(False)  # refused: nothing, not even this error, goes there
                        raise
                return _on_ranks(fn, args, kwargs)
        except VplError as e:
            _error_line(e)
        except OSError as e:  # one that escaped the library's own handling (its writes name their files)
            user_error = write_error(e.filename, e, action="accessing")  # it may have been a read
            if user_error is None:
                raise
            _error_line(user_error)
        except RuntimeError as e:
            if not _terminated_loader(e):
                raise
            _quiet_loader_checks()
            say(f"[yellow]interrupted (SIGTERM)[/]: {interrupted_hint(kwargs)}")
            raise typer.Exit(code=EXIT_TERMINATED) from None
        except KeyboardInterrupt as e:
            how = " (SIGTERM)" if isinstance(e, Terminated) else ""
            _release_frames(e)
            say(f"[yellow]interrupted{how}[/]: {interrupted_hint(kwargs)}")
            raise typer.Exit(code=EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED) from None
        finally:
            _LOG.finish()

    return wrapper


def _plugin_lines() -> None:
    """The line of each broken plugin this command read (:func:`vpltool.plugins.entry_points.problems`: the plugins
    its command line named, or all of them for a listing) as one warning line of this command; those that arise later
    in it are warned as they come. A command that names only vpltool's own methods reads no plugin: no line."""
    from ..config.dense import DENSE_SPECS
    from ..models.registry import BACKBONES, TEXT_FAMILIES
    from ..plugins import entry_points

    for table in (DENSE_SPECS, BACKBONES, TEXT_FAMILIES):
        len(table)  # read: each table checks the rows of the plugins loaded so far
    for line in entry_points.problems():
        warnings.warn(VplWarning(line), stacklevel=2)
    entry_points.hold_warnings(False)


def all_ranks(fn: Callable) -> Callable:
    """Marks a command that runs on every rank of a torchrun launch and meets them itself (train-decoder's DDP);
    see :func:`_on_ranks` for the others."""
    fn.vpl_ranks = "all"
    return fn


def _on_ranks(fn: Callable, args: tuple, kwargs: dict):
    """Run a command on this rank of a torchrun launch (:mod:`vpltool.runtime.ranks`): the per-image stages, those with
    ``--shard``, split their items over the ranks; a command marked :func:`all_ranks` meets them itself; every
    other command runs on rank 0 while the others say so in one line and wait. A rank whose peer died mid-command
    ends with one line (exit 2). Without ``RANK``/``WORLD_SIZE`` the command simply runs."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        return fn(*args, **kwargs)
    import inspect

    from ..device import tie_to_parent
    from ..runtime import ranks

    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a torchrun rank dies with its agent: kill -9 of torchrun ends it
        from .. import LAUNCHED_BY
        from ..device import runs_python

        # orphaned while it started (init or a subreaper adopted it), even before vpltool was imported
        adopted = os.getppid() != LAUNCHED_BY
        if adopted or not runs_python(LAUNCHED_BY):
            agent = (f"(pid {LAUNCHED_BY})" if adopted else
                     f"(gone before this rank began; its parent is now pid {LAUNCHED_BY}, which runs no Python)")
            raise VplError(f"torchrun's agent {agent}, which started this rank, has ended; the rank stops without "
                           "running: start the command again")
        tie_to_parent(LAUNCHED_BY, watch=True)

    kind = getattr(fn, "vpl_ranks", None) or (ranks.SPLIT if "shard" in inspect.signature(fn).parameters else
                                               ranks.ONE)
    if kind == ranks.ALL:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:  # a collective whose peer died (gloo: "Connection closed by peer")
            env = ranks.torchrun_rank()
            if env is None or not ranks.peer_gone(e):
                raise
            resume = "" if kwargs.get("resume") else " with --resume"  # train-decoder's checkpoints
            raise VplError(ranks.peer_lost(*env, e, f"re-run the same command{resume} on every node to continue "
                                                    "from the last checkpoint")) from None
    line = ranks.waiting_line(kind, fn.__name__.removesuffix("_cmd").replace("_", "-"))
    with ranks.command_group(kind) as here:
        if not here:
            say(line)
            return None
        if kind == ranks.SPLIT:
            return fn(*args, **kwargs)
        with ranks.alone():  # rank 0 runs the whole command: nothing in it may take itself for a shard
            return fn(*args, **kwargs)


def _check_given_options(fn: Callable, kwargs: dict) -> None:
    """Every command's options checked once, before anything runs: a float that is not finite (nan, inf: every
    comparison with it is False, so a bound check lets it through) is refused, and an option without effect in the
    command's mode is warned about or refused (:mod:`vpltool.cli.applies`). Only under the CLI (a click
    context); a library caller passes values to the configs, whose checks refuse a non-finite number too."""
    from ..config.checks import finite_numbers
    from .applies import check_options

    ctx = _click_context()
    if ctx is None:
        return
    finite_numbers(kwargs, _spelling)

    def given(name: str) -> bool:
        return getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")

    command = ctx.info_name or fn.__name__.removesuffix("_cmd").replace("_", "-")
    check_options(command, kwargs, given, _spelling, lambda line: warnings.warn(VplWarning(line), stacklevel=2))


def _click_context():
    """The running command's click context (typer's own copy of click from typer 0.29, click's before), or None
    (a library call)."""
    import importlib

    for name in ("typer._click.globals", "click.globals"):
        try:
            ctx = importlib.import_module(name).get_current_context(silent=True)
        except ImportError:
            continue
        if ctx is not None:
            return ctx
    return None


def _spelling(name: str) -> str:
    """How the running command spells parameter ``name``: its longest option (``--pairs``) or, an argument, its
    upper-case name (``PAIRS``); ``--name`` outside the CLI."""
    ctx = _click_context()
    for param in ctx.command.params if ctx is not None else ():
        if param.name == name:
            return max(param.opts, key=len) if param.param_type_name == "option" else name.upper()
    return "--" + name.replace("_", "-")


def _check_file_options(kwargs: dict) -> None:
    """A file option spelled as a folder (``-o dir/``) is refused before anything runs, and so is a value holding a
    NUL byte, which no path or name can hold (Python's own "embedded null byte" was a traceback)."""
    for name, value in kwargs.items():
        if any("\x00" in str(v) for v in (value if isinstance(value, (list, tuple)) else [value])):
            option = _spelling(name)
            raise VplError(f"{option}: its value holds a NUL byte (\\x00), which no path or name can hold; remove it")
        url = next((v for v in (value if isinstance(value, (list, tuple)) else [value])
                    if isinstance(v, Path) and str(v).lower().startswith(("file:/", "http:/", "https:/"))), None)
        if url is not None:  # a path parameter given a URL (Path folded its '//': the line said "file:/x: not found")
            _refuse_url(_spelling(name), str(url))
        if isinstance(value, _EmptySpelling) and name in _FILE_OPTIONS:
            option, example = _FILE_OPTIONS[name]
            raise VplError(f"{option} '': an empty file name; give a file name, e.g. {example}"
                           + (", or leave the option out" if name != "out" else ""))
        if isinstance(value, _FolderSpelling) and name in _FILE_OPTIONS:
            option, example = _FILE_OPTIONS[name]
            raise VplError(f"{option} {value}/: ends with '/', so it names a folder, but {option} is a file; give a "
                           f"file name, e.g. {value / example}")


def _refuse_url(option: str, url: str) -> None:
    """One line for a URL given where the command line reads a path: a ``file:`` URL's own path, else where URLs
    are read (the Python segmenter downloads ``http(s)://`` photos)."""
    from urllib.parse import unquote

    scheme, _, rest = url.partition(":")
    if scheme.lower() == "file":
        path = unquote("/" + rest.lstrip("/"))
        raise VplError(f"{option} {scheme}://{rest.lstrip('/') and '/' + rest.lstrip('/')}: a file:// URL; the command "
                       f"line takes the path itself: {path}")
    raise VplError(f"{option} {scheme}://{rest.lstrip('/')}: a URL; the command line reads files: download it "
                   "first, or segment it from Python (vpltool.segmenter(...)(url, names) downloads it)")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs in the main thread, SIGTERM raises :class:`Terminated` as SIGINT raises
    KeyboardInterrupt; the previous handler is restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame) -> None:
        _SIGTERM_SEEN[0] = True
        _quiet_loader_checks()
        raise Terminated()

    _SIGTERM_SEEN[0] = False
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_SIGTERM_SEEN = [False]  # set by the command's SIGTERM handler


def _release_frames(e: BaseException) -> None:
    """Let go of what the interrupted command's frames held, before its last line is printed: a data loader's
    iterator held by a frame of the traceback keeps its workers alive until the interpreter exits, and a worker
    that then reads its closed queue prints a traceback ("EOFError") after the resume line. Freed now, each loader
    shuts its workers down (torch's own ``_shutdown_workers``) before the line."""
    import gc
    import traceback

    traceback.clear_frames(e.__traceback__)
    e.__traceback__ = None
    gc.collect()


def _quiet_loader_checks() -> None:
    """The run is ending on SIGTERM, which the whole process group (Slurm, ``timeout``) also sent to the loading
    workers: torch's SIGCHLD check would report each worker's death as an error, and from a loader's ``__del__``
    during the unwinding Python prints it as a traceback ("Exception ignored in ..."). Their deaths are expected
    now, so the check goes (torch sets it once per process; the process is about to exit 143)."""
    if threading.current_thread() is threading.main_thread():
        # A Python no-op, not SIG_DFL: a SIGCHLD already pending for torch's Python-level handler would otherwise
        # meet SIG_DFL when Python runs it and raise "Signal 17 ignored due to race condition".
        signal.signal(signal.SIGCHLD, _ignore_signal)


def _ignore_signal(signum, frame) -> None:
    """A Python-level handler that does nothing (see :func:`_quiet_loader_checks`)."""


def _terminated_loader(e: RuntimeError) -> bool:
    """Whether ``e`` is a data loader's report of its workers ended by SIGTERM ("DataLoader worker (pid X) is
    killed by signal: Terminated"): SIGTERM sent to the whole process group (Slurm's preemption, ``timeout``)
    reaches the workers too, and the loader's own SIGCHLD check may raise before the command's handler does. It is
    the same preemption, so the same one line and exit 143."""
    return "killed by signal: Terminated" in str(e) or (_SIGTERM_SEEN[0] and "DataLoader worker" in str(e))


FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


def _show_warning(default: Callable, verbose: bool, message, category, filename, lineno, file=None,
                  line=None) -> None:
    """Every warning as one yellow ``warning:`` line on stderr and in ``--log``: vpltool's own, and a library's
    (its first line; with ``--verbose`` also Python's display, with the file and line that warned)."""
    from rich.markup import escape

    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    say(f"[yellow]warning:[/] {escape(text)}")
    if verbose and not issubclass(category, VplWarning):
        default(message, category, filename, lineno, file, line)


class _OneLineLog(logging.Handler):
    """Library log records (timm's "Unexpected keys ...", vpltool's own) at WARNING and above as one ``warning:``
    line, like a warning; DEBUG and INFO (``--verbose``) as ``LEVEL message``."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        try:
            text = record.getMessage().strip()
        except Exception:  # a library's malformed record must not stop the run
            text = str(record.msg)
        if record.levelno >= logging.WARNING:  # a library's ERROR is not vpltool's: the run goes on
            say(f"[yellow]warning:[/] {escape(text.splitlines()[0] if text else record.levelname)}")
        else:
            err.print(f"{record.levelname} {escape(text)}", highlight=False, soft_wrap=True)


def interrupted_hint(kwargs: dict) -> str:
    """How to continue an interrupted command: a stage with ``--resume`` (train-decoder) needs it on the re-run;
    the per-image stages skip their finished items by themselves."""
    if "resume" in kwargs:
        out = kwargs.get("out")
        if out is not None and not (Path(out) / "checkpoints" / "last.safetensors").is_file():
            return ("no checkpoint was written yet (the first comes after --checkpoint-every iterations), so "
                    "nothing is kept; re-running starts again from iteration 0")
        return "the last checkpoint is kept; re-run the same command with --resume to continue from it" \
            if not kwargs["resume"] else "the last checkpoint is kept; re-run the same command to continue from it"
    return "finished items are kept; re-run the same command to resume"


def _error_line(e: VplError) -> NoReturn:
    from rich.markup import escape

    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from ..runtime.ranks import error_said_once

        if error_said_once(str(e)):  # torchrun: the node's first rank says it, once for all (same code here)
            raise typer.Exit(code=2) from None
    # escaped: rich would take "[crf]" in "pip install -e '.[crf]'" for a style tag and drop it
    say(f"[bold red]error:[/] {escape(str(e))}")
    raise typer.Exit(code=2) from None

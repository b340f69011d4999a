"""What every command shares: option types, one-line errors, progress (a bar on a terminal, plain lines elsewhere).

Heavy imports (torch, open_clip) happen inside the commands, so ``vpltool --help`` stays fast. User mistakes
(:class:`vpltool.errors.VplError`, and writes that fail for lack of space or permission) print one red line on
stderr and exit with code 2; anything else is a bug and keeps its traceback. Ctrl-C (SIGINT) exits 130 and SIGTERM
(Slurm's preemption, ``kill``) 143, both after one line saying how to resume. Warnings, vpltool's and its libraries'
(timm, torch), are one yellow ``warning:`` line each.

The ``--log`` file (``VPLTOOL_LOG``) is an output like any other: checked on its own when the command starts (a new
file, or one a vpltool log wrote), then in the run's context by :func:`vpltool.io.check_outputs` (never inside the
dataset, an input or an output folder); its lines wait in memory until then, and are dropped if it is refused.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

from ..config import CPU_WORKERS, GPU_WORKERS, RuntimeConfig
from ..errors import VplError, VplWarning, write_error

err = Console(stderr=True)
log = logging.getLogger("vpltool")
RUNTIME, MODEL = "Runtime", "Model"
# off a terminal (nohup, Slurm, CI), a plain progress line this often even when no item finishes (model loading, a
# slow batch), and at the end; also the period of the --log file's lines
PROGRESS_EVERY_S = 10.0
_R = RuntimeConfig()

# ---- option types, spelled the same on every stage
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; finished items are skipped).")]
class _FolderSpelling(type(Path())):  # type: ignore[misc]
    """A file option's value written with a trailing ``/`` (``-o out/``): a folder, which pathlib would forget."""


class _EmptySpelling(type(Path())):  # type: ignore[misc]
    """A file option given as ``''``: pathlib reads it as ``.``, the current folder, which it is not."""


def file_path(value: str | Path) -> Path:
    """The parser of every option that names a file: keeps the facts ``Path`` drops, a trailing slash and an empty
    value (:func:`friendly_errors` refuses both: ``text-prototypes -o dir/`` wrote a file named ``dir``, and
    ``--plot ''`` was "``.``: is a folder"). A default is already a Path."""
    if isinstance(value, Path):
        return value
    if not value.strip():
        return _EmptySpelling(".")
    return _FolderSpelling(value) if value.endswith(("/", os.sep)) else Path(value)


# examples of a file name per file option, for the message of a value that names a folder
_FILE_OPTIONS = {"out": ("--out", "out.safetensors"), "json_out": ("--json", "result.json"),
                 "plot": ("--plot", "loss.png"), "log_file": ("--log", "vpltool.log")}
OutFile = Annotated[Path, typer.Option("--out", "-o", parser=file_path, metavar="<path>",
                                       help="Output file (written atomically).")]
Device = Annotated[str, typer.Option(envvar="VPLTOOL_DEVICE", help="auto | cpu | cuda | cuda:N",
                                     rich_help_panel=RUNTIME)]
Precision = Annotated[str, typer.Option(help="Frozen blocks: auto (bf16 on CUDA and on CPUs with AMX, else fp32) | "
                                        "fp32 | bf16 | fp16 (CUDA only).", rich_help_panel=RUNTIME)]
BatchSize = Annotated[Optional[int], typer.Option(
    help="Images per batch (equal input sizes are batched) [default: auto: 32 on CUDA, halved on out-of-memory; on "
    "a CPU 8 for extract, 1 for cam and predict].", show_default=False, rich_help_panel=RUNTIME)]
Shard = Annotated[Optional[str], typer.Option(help="Process shard i of n (i/n) so GPUs/machines split one dataset; "
                                              "the folder completes when every shard is done [default: the whole "
                                              "dataset; under torchrun RANK of WORLD_SIZE].", show_default=False,
                                              rich_help_panel=RUNTIME)]
Workers = Annotated[Optional[int], typer.Option(
    help="Parallel image decoders / data-loading processes: 0 = one per CPU core (more are capped at the cores), "
    f"1 = in this process [default: auto: {CPU_WORKERS}; on CUDA one per core up to {GPU_WORKERS} for the loaders of "
    "extract, cam, predict, diagnose and train-decoder].",
    show_default=False, rich_help_panel=RUNTIME)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo finished items instead of skipping them.",
                                         rich_help_panel=RUNTIME)]
OverwriteFile = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file that vpltool did "
                                             "not write, or wrote as another kind (a file of the kind this command "
                                             "writes is replaced anyway).", rich_help_panel=RUNTIME)]
LogFile = Annotated[Optional[Path], typer.Option("--log", envvar="VPLTOOL_LOG", rich_help_panel=RUNTIME,
                                                 parser=file_path, metavar="<path>",
                                                 help="Also append progress and the result line to this file.")]
JsonFile = Annotated[Optional[Path], typer.Option("--json", parser=file_path, metavar="<path>",
                                                  help="Write the full result as JSON here.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=RUNTIME)]
Split = Annotated[Optional[str], typer.Option("--split", "-s", help="Dataset split (VOC: train, train_aug, val; "
                                              "generic: splits/<name>.txt). Default: the layout's default.")]
ModelOpt = Annotated[str, typer.Option("--model", help="open_clip architecture, local-dir:/path, or vpltool-toy "
                                       "(the demo world's toy CLIP).", rich_help_panel=MODEL)]
PretrainedOpt = Annotated[str, typer.Option("--pretrained", help="open_clip tag (openai), a local weights file, "
                                            "or none (random).", rich_help_panel=MODEL)]
ModelConfigDir = Annotated[Optional[Path], typer.Option("--model-config-dir", envvar="VPLTOOL_MODEL_CONFIGS",
                                                        hidden=True, help="Extra open_clip JSON model configs.")]
# the --dense size options that `cam --dense` and `predict --classes --dense` share (segment's own are spelled as the
# methods' configs spell them: --short-side, --slide-crop, --slide-stride)
DenseSide = Annotated[Optional[int], typer.Option(help="--dense: resize to this short side [default: the method's].",
                                                  show_default=False)]
DenseCrop = Annotated[Optional[int], typer.Option(help="--dense: sliding window side (0 = whole image) [default: the "
                                                  "method's].", show_default=False)]
DenseStride = Annotated[Optional[int], typer.Option(help="--dense: sliding window stride [default: the method's].",
                                                    show_default=False)]


class OptionBlock:
    """A run of options that several commands take in the same order, defined once.

    A command takes the block as ONE parameter whose default is the block (``run: dict = BATCHED``) and is decorated
    with :func:`option_blocks`: its ``--help`` lists the block's options at that place, and the body gets them as a
    dict under the parameter's name (``runtime(**run)``).
    """

    def __init__(self, *options: tuple[str, object, object]):
        self.options = tuple(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                                               default=default) for name, kind, default in options)


# the batched stages' runtime options (extract, cam, segment, predict), in the order their --help lists them;
# `runtime(**run)` takes them as they are
BATCHED = OptionBlock(("device", Device, _R.device), ("precision", Precision, _R.precision),
                      ("batch_size", BatchSize, _R.batch_size), ("workers", Workers, _R.workers),
                      ("overwrite", Overwrite, False))


def option_blocks(fn: Callable) -> Callable:
    """Spell out the :class:`OptionBlock` parameters of command ``fn`` as their options (typer reads
    ``__signature__``), and hand each block's values back to ``fn`` as a dict under the block parameter's name."""
    signature = inspect.signature(fn, eval_str=True)
    params, blocks = [], {}
    for param in signature.parameters.values():
        if isinstance(param.default, OptionBlock):
            blocks[param.name] = [option.name for option in param.default.options]
            params.extend(param.default.options)
        else:
            params.append(param)

    @functools.wraps(fn)
    def command(*args, **kwargs):
        for name, options in blocks.items():
            kwargs[name] = {option: kwargs.pop(option) for option in options}
        return fn(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=params)
    return command

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
            with warnings.catch_warnings(), _sigterm_as_interrupt(), \
                    io.run_outputs({"--log": (log_file, "log")}, on_checked=_LOG.checked):
                warnings.simplefilter("always", VplWarning)  # restored with the filters after the command
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning, verbose)
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
            say(f"[yellow]interrupted{how}[/]: {interrupted_hint(kwargs)}")
            raise typer.Exit(code=EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED) from None
        finally:
            _LOG.finish()

    return wrapper


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
        tie_to_parent(os.getppid(), watch=True)

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
    opts = {p.name: max(p.opts, key=len) for p in ctx.command.params if p.name}

    def spelled(name: str) -> str:
        return opts.get(name, "--" + name.replace("_", "-"))

    finite_numbers(kwargs, spelled)

    def given(name: str) -> bool:
        return getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")

    command = ctx.info_name or fn.__name__.removesuffix("_cmd").replace("_", "-")
    check_options(command, kwargs, given, spelled, lambda line: warnings.warn(VplWarning(line), stacklevel=2))


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


def _check_file_options(kwargs: dict) -> None:
    """A file option spelled as a folder (``-o dir/``) is refused before anything runs."""
    for name, value in kwargs.items():
        if isinstance(value, _EmptySpelling) and name in _FILE_OPTIONS:
            option, example = _FILE_OPTIONS[name]
            raise VplError(f"{option} '': an empty file name; give a file name, e.g. {example}"
                           + (", or leave the option out" if name != "out" else ""))
        if isinstance(value, _FolderSpelling) and name in _FILE_OPTIONS:
            option, example = _FILE_OPTIONS[name]
            raise VplError(f"{option} {value}/: ends with '/', so it names a folder, but {option} is a file; give a "
                           f"file name, e.g. {value / example}")


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


class _Log:
    """The ``--log`` file of the command under way: lines wait in memory until :func:`vpltool.io.check_outputs`
    passed it in the run's context (``checked(True)``: written, and every later line at once) or refused it
    (``checked(False)``: dropped); a command that ends before any check writes them (the file passed
    :func:`vpltool.io.check_log_target` alone)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.pending: list[str] | None = None  # None: lines go to the file at once

    def start(self, path: Path | None) -> None:
        self.path, self.pending = path, ([] if path is not None else None)

    def write(self, line: str) -> None:
        if self.path is None:
            return
        from rich.text import Text

        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {Text.from_markup(line).plain}\n"
        if self.pending is not None:
            self.pending.append(stamped)
        else:
            self._append([stamped])

    def checked(self, ok: bool) -> None:
        if not ok:
            self.path, self.pending = None, None
        elif self.pending is not None:
            lines, self.pending = self.pending, None
            self._append(lines)

    def finish(self) -> None:
        self.checked(True)
        self.path, self.pending = None, None

    def _append(self, lines: list[str]) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write("".join(lines))
        except OSError as e:  # a log that cannot be written must not stop the run; say it once on stderr
            self.path, self.pending = None, None
            err.print(f"[yellow]warning:[/] cannot write --log {path} ({e.strerror}); continuing without it")


_LOG = _Log()


def _to_log(line: str) -> None:
    _LOG.write(line)


def say(line: str) -> None:
    """One line on stderr (rich markup) and in the ``--log`` file."""
    err.print(line, highlight=False, soft_wrap=True)
    _to_log(line)


def _error_line(e: VplError) -> NoReturn:
    from rich.markup import escape

    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from ..runtime.ranks import error_said_once

        if error_said_once(str(e)):  # torchrun: the node's first rank says it, once for all (same code here)
            raise typer.Exit(code=2) from None
    # escaped: rich would take "[crf]" in "pip install 'vpltool[crf]'" for a style tag and drop it
    say(f"[bold red]error:[/] {escape(str(e))}")
    raise typer.Exit(code=2) from None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class _Lines:
    """Progress as plain lines, for logs (nohup, Slurm, CI): every ``PROGRESS_EVERY_S`` whether or not an item
    finished (a heartbeat thread), and at the end. ``echo``: on stderr too (off a terminal); always in ``--log``."""

    def __init__(self, description: str, unit: str, echo: bool):
        self.description, self.unit, self.echo = description, unit, echo
        self.total, self.done, self.start, self.last = None, 0, time.monotonic(), time.monotonic()
        self.base = (0, self.start)  # the count and time the rate is measured from: where the work began
        self._lock = threading.Lock()  # the heartbeat thread and the stage's callbacks both emit

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        if self.total is None:
            return f"{self.description}: starting, {_duration(elapsed)} elapsed"
        spent = time.monotonic() - self.base[1]
        rate = (self.done - self.base[0]) / spent if spent > 0 else 0.0
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f", ETA {_duration((self.total - self.done) / rate)}"
        return (f"{self.description}: {self.done}/{self.total} {self.unit}{pct}, {rate:.2f} {self.unit}/s, "
                f"{_duration(elapsed)} elapsed{eta}")

    def start_with(self, total: int, done: int = 0) -> None:
        """The work begins: ``total`` items, ``done`` of them already (a resumed run); the rate counts from here."""
        with self._lock:
            self.total, self.done, self.base = total, done, (done, time.monotonic())
            self.emit()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if time.monotonic() - self.last >= PROGRESS_EVERY_S or (self.total is not None
                                                                    and self.done >= self.total):
                self.emit()

    def emit(self) -> None:
        self.last = time.monotonic()
        text = self.line()
        if self.echo:
            err.print(text, highlight=False, soft_wrap=True)
        _to_log(text)

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """A daemon thread that emits a line whenever ``PROGRESS_EVERY_S`` passed without one."""
        stop, every = threading.Event(), PROGRESS_EVERY_S

        def beat() -> None:
            while not stop.wait(min(every, 1.0)):
                with self._lock:
                    if time.monotonic() - self.last >= every:
                        self.emit()

        thread = threading.Thread(target=beat, name="vpltool-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@contextmanager
def progress(description: str, unit: str = "images") -> Iterator[tuple[Callable, Callable]]:
    """Progress on stderr: a rich bar on a terminal, plain lines elsewhere (every ``PROGRESS_EVERY_S``, even while
    nothing finishes), and the plain lines in ``--log``.

    Yields ``(on_start(total, done=0), on_item(n=1))`` for the library hooks (``done``: items a resumed run
    finished before; the rate counts from the start call).
    """
    live = err.is_terminal and not err.is_dumb_terminal  # TERM=dumb cannot redraw a bar: plain lines there
    lines = _Lines(description, unit, echo=not live)
    if not live:
        with lines.heartbeat():
            yield lines.start_with, lines.advance
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # the bar appears with the first total, once the run passed its checks: a refused run prints its one line only
    with ExitStack() as stack, lines.heartbeat():
        bar: list = []

        def start(total: int, done: int = 0) -> None:
            if not bar:
                progress_bar = stack.enter_context(Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=False))
                bar.extend([progress_bar, progress_bar.add_task(description, total=None)])
            bar[0].update(bar[1], total=total, completed=done)
            lines.start_with(total, done)

        def advance(n: int = 1) -> None:
            if bar:
                bar[0].advance(bar[1], n)
            lines.advance(n)

        yield start, advance


def runtime(device: str = _R.device, precision: str = _R.precision, batch_size: int | None = _R.batch_size,
            workers: int | None = _R.workers, overwrite: bool = False) -> RuntimeConfig:
    """The shared options as a :class:`RuntimeConfig`; ``--workers`` above the CPU cores this process may use is
    capped at them, and said so (one process per batch helps nothing and exhausts memory)."""
    from ..config import worker_count

    cores = worker_count(0)
    if workers is not None and workers > cores:
        warnings.warn(VplWarning(f"--workers {workers}: more than the {cores} CPU core(s) this process may use; "
                                 f"using {cores}"), stacklevel=2)
        workers = cores
    return RuntimeConfig(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         overwrite=overwrite)


def pending(out) -> str:
    """What a per-image stage's ✓ line adds when its folder is not complete after this run (a shard of several,
    the others pending): `` (this shard done; other shards pending)``, else nothing."""
    from .. import io

    return "" if io.stage_record_path(out).is_file() else " (this shard done; other shards pending)"


def warn_inert(cfg, defaults=None):
    """One warning per option given that has no effect in ``cfg``'s combination (never recorded either:
    :func:`vpltool.config.inert_fields`); returns ``cfg``."""
    from ..config import inert_options

    for sentence in inert_options(cfg, defaults):
        warnings.warn(VplWarning(sentence), stacklevel=2)
    return cfg


DenseOpt = Annotated[str, typer.Option("--dense", help="How CLIP's last block mixes its tokens: none (CLIP's own, "
                                       "the CLIP-ES path) | maskclip | sclip | clearclip | naclip | sc-clip | "
                                       "proxyclip | cass | trident (the training-free dense methods, as their "
                                       "public code; "
                                       "docs/open-vocabulary.md).")]
ProxyModelOpt = Annotated[Optional[str], typer.Option(
    "--proxy-model", help="--dense proxyclip's, cass's and trident's proxy vision model: a timm DINO ViT name "
    "[default: the method's: vit_base_patch8_224.dino (the references' dino_vitb8) for proxyclip and cass, "
    "vit_base_patch16_224.dino (dino_vitb16) for trident].", show_default=False)]
ProxyWeightsOpt = Annotated[str, typer.Option("--proxy-weights", help="Its weights: hub (timm's local cache) | a "
                                              "local file (timm or DINO layout) | none (random, seeded: tests).")]



# the references' queries and last-block switches (segment, benchmark): None = the method's / the preset's
ClassFileOpt = Annotated[Optional[str], typer.Option(
    "--class-file", help="Queries as the references write them: a file of one line a class (the dataset's order; "
    "first line the background's words when it has one more line), comma-separated synonyms, or a bundled "
    "SET:BENCHMARK (sclip:voc21, clearclip:voc21, ...); each class is still scored as the dataset's. Queries "
    "separated by ',' (SCLIP's files) or, in a file with a ';', by '; ' (ProxyCLIP's and Trident's). benchmark "
    "also takes a set name alone (sclip: each benchmark's own file).",
    show_default=False)]
AttentionOpt = Annotated[Optional[str], typer.Option(
    "--attention", help="The last block's attention in place of the --dense method's: qk (CLIP's own; ClearCLIP's "
    "model_type vanilla) | identity (MaskCLIP) | qq+kk (SCLIP) | qq (ClearCLIP) | kk (NACLIP).", show_default=False)]
# CASS's per-dataset knobs (segment, benchmark): None = its VOC21 config's / the benchmark preset's
GlobalWeightOpt = Annotated[Optional[float], typer.Option(
    "--global-weight", help="--dense cass: the image embedding's share of each patch's logits (its "
    "global_semantics_weight) [default: 0.1, cfg_voc21.py].", show_default=False)]
ShiftWeightOpt = Annotated[Optional[float], typer.Option(
    "--shift-weight", help="--dense cass: how far the query nearest the image moves toward its 2 most similar "
    "patches, per query cluster (its mean_vector_weight) [default: 0.03].", show_default=False)]
ClusterCutOpt = Annotated[Optional[float], typer.Option(
    "--cluster-cut", help="--dense cass: the Ward distance cutting the queries into clusters (its h_threshold) "
    "[default: 0.10].", show_default=False)]
StretchOpt = Annotated[Optional[bool], typer.Option(
    "--stretch/--no-stretch", help="--dense cass: stretch the DINO graph's singular values (its code does for every "
    "dataset but VOC20 and Cityscapes) [default: stretch].", show_default=False)]
# Trident's SAM encoder and its aggregation (segment, benchmark)
SamModelOpt = Annotated[str, typer.Option("--sam-model", help="--dense trident's SAM image encoder: vit_b (the "
                                          "reference's) | vit_l | vit_h | toy (the demo world's: "
                                          "vpltool/assets/toy-sam, `train-toy-sam`).")]
SamWeightsOpt = Annotated[Optional[str], typer.Option(
    "--sam-weights", help="--dense trident: SAM's weights, a local file (SAM's released checkpoint, e.g. "
    "sam_vit_b_01ec64.pth, or the image encoder's tensors) | none (random, seeded: tests). Required with trident.",
    show_default=False)]
CosFacOpt = Annotated[Optional[float], typer.Option(
    "--cos-fac", help="--dense trident: SAM's attention kept where its value cosine exceeds this times the row's "
    "mean (its cos_fac) [default: 1.2, base_config.py].", show_default=False)]
RefineNegCosOpt = Annotated[Optional[bool], typer.Option(
    "--refine-neg-cos/--no-refine-neg-cos", help="--dense trident: keep a negative cosine threshold (its "
    "refine_neg_cos; off: 0.6 in its place) [default: on].", show_default=False)]
SamHalvesOpt = Annotated[Optional[bool], typer.Option(
    "--sam-halves/--sam-whole", help="--dense trident: SAM sees the photo's left and right halves apart, each half "
    "of the spliced map aggregated by its own (its Cityscapes) [default: whole].", show_default=False)]
SamRefineOpt = Annotated[Optional[bool], typer.Option(
    "--sam-refine/--no-sam-refine", help="--dense trident: its SAM prompt refinement (eval.py --sam_refine, which its "
    "published figures use): each coarse region prompts SAM's mask decoder with a point, a box and its scores, and "
    "confident masks relabel it; needs SAM's whole checkpoint in --sam-weights [default: off for segment; on in "
    "benchmark's trident presets].", show_default=False)]
CoarseThresholdOpt = Annotated[Optional[float], typer.Option(
    "--coarse-threshold", help="--sam-refine: pixels and classes below this probability prompt nothing (its "
    "coarse_thresh) [default: 0.2, cfg_voc21.py; benchmark: each preset's].", show_default=False)]
MinimalAreaOpt = Annotated[Optional[int], typer.Option(
    "--minimal-area", help="--sam-refine: a coarse region smaller than this, in half-resolution pixels, prompts "
    "nothing (its minimal_area, set for photos of short side 448) [default: 225, base_config.py].",
    show_default=False)]
WindowGlobalOpt = Annotated[Optional[bool], typer.Option(
    "--window-global/--input-global", help="--dense cass: each window's own image embedding (its Cityscapes) or the "
    "whole input's [default: input-global].", show_default=False)]
ResidualOpt = Annotated[Optional[bool], typer.Option(
    "--residual/--no-residual", help="Keep (or drop) the last block's residual and FFN, in place of the --dense "
    "method's (ClearCLIP's ignore_residual=True is --no-residual).", show_default=False)]

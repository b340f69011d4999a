"""What every command shares: option types, one-line errors, progress (a bar on a terminal, plain lines elsewhere).

Heavy imports (torch, open_clip) happen inside the commands, so ``vpltool --help`` stays fast. User mistakes
(:class:`vpltool.errors.VplError`, and writes that fail for lack of space or permission) print one red line on
stderr and exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file (written atomically).")]
Device = Annotated[str, typer.Option(envvar="VPLTOOL_DEVICE", help="auto | cpu | cuda | cuda:N",
                                     rich_help_panel=RUNTIME)]
Precision = Annotated[str, typer.Option(help="Frozen blocks: auto (bf16 on CUDA and on CPUs with AMX, else fp32) | "
                                        "fp32 | bf16 | fp16 (CUDA only).", rich_help_panel=RUNTIME)]
BatchSize = Annotated[Optional[int], typer.Option(
    help="Images per batch (equal input sizes are batched) [default: auto: 32 on CUDA, halved on out-of-memory; on "
    "a CPU 8 for extract, 1 for cam and predict].", show_default=False, rich_help_panel=RUNTIME)]
Shard = Annotated[str, typer.Option(help="Process shard i of n (i/n) so GPUs/machines split one dataset; the folder "
                                    "completes when every shard is done. Under torchrun: RANK/WORLD_SIZE.",
                                    rich_help_panel=RUNTIME)]
Workers = Annotated[Optional[int], typer.Option(
    help="Parallel image decoders / data-loading processes: 0 = one per CPU core, 1 = in this process [default: "
    f"auto: {CPU_WORKERS}; extract, cam and predict on CUDA one per core up to {GPU_WORKERS}].", show_default=False,
    rich_help_panel=RUNTIME)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo finished items instead of skipping them.",
                                         rich_help_panel=RUNTIME)]
LogFile = Annotated[Optional[Path], typer.Option("--log", envvar="VPLTOOL_LOG", rich_help_panel=RUNTIME,
                                                 help="Also append progress and the result line to this file.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=RUNTIME)]
Split = Annotated[Optional[str], typer.Option("--split", "-s", help="Dataset split (VOC: train, train_aug, val; "
                                              "generic: splits/<name>.txt). Default: the layout's default.")]
ModelOpt = Annotated[str, typer.Option("--model", help="open_clip architecture, local-dir:/path, or vpltool-toy "
                                       "(the demo world's toy CLIP).", rich_help_panel=MODEL)]
PretrainedOpt = Annotated[str, typer.Option("--pretrained", help="open_clip tag (openai), a local weights file, "
                                            "or none (random).", rich_help_panel=MODEL)]
ModelConfigDir = Annotated[Optional[Path], typer.Option("--model-config-dir", envvar="VPLTOOL_MODEL_CONFIGS",
                                                        hidden=True, help="Extra open_clip JSON model configs.")]

_log_file: Path | None = None


def friendly_errors(fn: Callable) -> Callable:
    """Turn a VplError, or a write that failed for lack of space or permission, into one red line + exit 2; keep
    tracebacks for real bugs. Also opens the ``--log`` file for :func:`say` and :func:`progress`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _log_file
        verbose = kwargs.get("verbose", False)
        # force: a handler from an earlier call in this process may hold a stderr that is closed by now (typer's
        # test runner swaps sys.stderr per call), which logging reports as a "--- Logging error ---" traceback
        logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s",
                            force=True)
        os.environ.setdefault("TQDM_DISABLE", "1")
        _log_file = kwargs.get("log_file")
        try:
            with warnings.catch_warnings():  # restores the filters and showwarning after the command
                warnings.simplefilter("always", VplWarning)
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
                return fn(*args, **kwargs)
        except VplError as e:
            _error_line(e)
        except OSError as e:  # one that escaped the library's own handling (its writes name their files)
            user_error = write_error(e.filename, e, action="accessing")  # it may have been a read
            if user_error is None:
                raise
            _error_line(user_error)
        except KeyboardInterrupt:
            say(f"[yellow]interrupted[/]: {interrupted_hint(kwargs)}")
            raise typer.Exit(code=130) from None

    return wrapper


def _show_warning(default: Callable, message, category, filename, lineno, file=None, line=None) -> None:
    """A :class:`VplWarning` as one yellow ``warning:`` line (on stderr and in ``--log``); others as ``default``
    (Python's own display) shows them."""
    if not issubclass(category, VplWarning):
        return default(message, category, filename, lineno, file, line)
    from rich.markup import escape

    say(f"[yellow]warning:[/] {escape(str(message))}")


def interrupted_hint(kwargs: dict) -> str:
    """How to continue an interrupted command: a stage with ``--resume`` (train-decoder) needs it on the re-run;
    the per-image stages skip their finished items by themselves."""
    if "resume" in kwargs:
        return "the last checkpoint is kept; re-run the same command with --resume to continue from it" \
            if not kwargs["resume"] else "the last checkpoint is kept; re-run the same command to continue from it"
    return "finished items are kept; re-run the same command to resume"


def _to_log(line: str) -> None:
    if _log_file is None:
        return
    from rich.text import Text

    try:
        with open(_log_file, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {Text.from_markup(line).plain}\n")
    except OSError as e:  # a log that cannot be written must not stop the run; say it once on stderr
        err.print(f"[yellow]warning:[/] cannot write --log {_log_file} ({e.strerror}); continuing without it")
        _set_log(None)


def _set_log(path: Path | None) -> None:
    global _log_file
    _log_file = path


def say(line: str) -> None:
    """One line on stderr (rich markup) and in the ``--log`` file."""
    err.print(line, highlight=False, soft_wrap=True)
    _to_log(line)


def _error_line(e: VplError) -> NoReturn:
    from rich.markup import escape

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
        self._lock = threading.Lock()  # the heartbeat thread and the stage's callbacks both emit

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        if self.total is None:
            return f"{self.description}: starting, {_duration(elapsed)} elapsed"
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f", ETA {_duration((self.total - self.done) / rate)}"
        return (f"{self.description}: {self.done}/{self.total} {self.unit}{pct}, {rate:.2f} {self.unit}/s, "
                f"{_duration(elapsed)} elapsed{eta}")

    def start_with(self, total: int) -> None:
        with self._lock:
            self.total = total
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

    Yields ``(on_start(total), on_item(n=1))`` for the library hooks.
    """
    lines = _Lines(description, unit, echo=not err.is_terminal)
    if not err.is_terminal:
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

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=False) as bar, lines.heartbeat():
        task = bar.add_task(description, total=None)

        def start(total: int) -> None:
            bar.update(task, total=total)
            lines.start_with(total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            lines.advance(n)

        yield start, advance


def runtime(device: str = _R.device, precision: str = _R.precision, batch_size: int | None = _R.batch_size,
            workers: int | None = _R.workers, overwrite: bool = False) -> RuntimeConfig:
    return RuntimeConfig(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         overwrite=overwrite)


def parse_floats(value: str, option: str, example: str = "1,2") -> tuple[float, ...]:
    """``"1.0,0.75"`` -> ``(1.0, 0.75)``; a VplError naming the option (and a valid ``example``) for anything else."""
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise VplError(f"{option} {value!r}: give comma-separated numbers, e.g. {example}") from None
    if not values:
        raise VplError(f"{option} is empty: give comma-separated numbers, e.g. {example}")
    return values


def shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise VplError(f"--shard {value!r}: use i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise VplError(f"--shard {value}: need 0 <= i < n")
    return index, count


def model_spec(model: str, pretrained: str, config_dir: Path | None):
    from ..backbone import ModelSpec

    return ModelSpec(model=model, pretrained=pretrained, config_dir=str(config_dir) if config_dir else None)


def floats_text(values: tuple[float, ...]) -> str:
    """A config tuple as the CLI spells it (``(1.0, 0.75)`` -> ``"1,0.75"``): defaults come from config."""
    return ",".join(f"{v:g}" for v in values)

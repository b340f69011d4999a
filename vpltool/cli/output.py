"""What a command prints: one line at a time on stderr (rich markup), progress (a bar on a terminal, plain lines
elsewhere), and the same lines in the ``--log`` file.

The ``--log`` file (``VPLTOOL_LOG``) is an output like any other: checked on its own when the command starts (a new
file, or one a vpltool log wrote), then in the run's context by :func:`vpltool.io.check_outputs` (never inside the
dataset, an input or an output folder); its lines wait in memory until then, and are dropped if it is refused
(:class:`_Log`; :func:`vpltool.cli.errors.friendly_errors` opens and closes it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console

err = Console(stderr=True)
# off a terminal (nohup, Slurm, CI), a plain progress line this often even when no item finishes (model loading, a
# slow batch), and at the end; also the period of the --log file's lines
PROGRESS_EVERY_S = 10.0


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


def pending(out) -> str:
    """What a per-image stage's ✓ line adds when its folder is not complete after this run (a shard of several,
    the others pending): `` (this shard done; other shards pending)``, else nothing."""
    from .. import io

    return "" if io.stage_record_path(out).is_file() else " (this shard done; other shards pending)"

"""The writer threads of the per-image pipeline (:mod:`vpltool.runtime.batches`): a batch's outputs copied to the
host without blocking and written behind the device (:class:`BackgroundWriter`).

How it ends matters as much as how it writes. A writer thread that still frees a batch's tensors while the
interpreter shuts down kills the process: freeing a tensor releases the GIL (``THPVariable_dealloc``), taking it
back during finalization ends the thread with ``pthread_exit``, whose forced unwind crosses a C++ ``noexcept`` frame,
and C++ aborts ("terminate called without an active exception", exit -6, after the run's resume line). So every
thread frees each job's tensors inside its loop and then sets an end :class:`threading.Event` of its own, and
:meth:`BackgroundWriter.close` waits on those events: ``Thread.join`` alone is not enough, because on Python 3.11 a
signal (Ctrl-C, SIGTERM) that interrupts ``join`` marks a thread that is still running as stopped, and any later
``join`` returns at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .host import to_host

# batches waiting for the writer threads besides those being written: bounds the host memory the writer may hold
# (2 batches of 32 extract outputs: ~200 MB with the full cache) while a slow write never stalls the device
WRITE_DEPTH = 2
# writer threads: a batch's files are written by one thread, batches side by side; safetensors' serialisation and
# the file writes release the GIL, so 4 threads keep a VOC-sized extract (~1,000 files/s) off the device's path
WRITE_THREADS = 4


class BackgroundWriter:
    """Writes a stage's outputs on a few threads, behind the device.

    ``submit(tensors, write, n)`` hands over one *batch*: ``tensors`` (a dict of tensors, lists of tensors or
    anything else, on any device) is copied to the host without blocking (:func:`to_host`: pinned buffers, one
    event for the whole batch) and ``write(host_tensors)`` is queued; a writer thread waits on the batch's event,
    runs ``write`` (which writes the batch's n files), then calls ``on_item(n)``. The queue holds at most ``depth``
    batches besides those being written, so the host memory it may hold is bounded in batches. ``threads`` writer
    threads write batches side by side (each file is its own, so the bytes do not depend on their order). A write
    error (a full disk: one line) stops the run at the next ``submit`` or at the end, as the same exception. Used
    as a context manager: leaving it waits for every queued write.

    A Ctrl-C or SIGTERM (KeyboardInterrupt) while :meth:`close` waits drops the queued writes, waits for the writes
    in hand (one batch a thread at most) and only then propagates: every thread has ended by then (see the module
    doc for why it must).
    """

    def __init__(self, on_item: Callable[[int], None] | None = None, depth: int = WRITE_DEPTH,
                 threads: int = WRITE_THREADS):
        self.on_item = on_item
        # unbounded, so that an end marker never waits for room (close may be interrupted half-way through putting
        # them, and puts them again); the bound on waiting batches is the semaphore's
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._room = threading.Semaphore(depth)
        self._error: BaseException | None = None
        self._failed = False  # an error was handed over: drop every later job
        self._dropping = False  # close was interrupted: drop every queued job
        self._lock = threading.Lock()  # on_item (a progress bar) and the first error, from several threads
        self._ended = [threading.Event() for _ in range(max(1, threads))]
        self._threads = [threading.Thread(target=self._loop, args=(ended,), name=f"vpltool-writer-{i}", daemon=True)
                         for i, ended in enumerate(self._ended)]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(raise_error=exc[0] is None)

    def submit(self, tensors: dict[str, Any], write: Callable[[dict[str, Any]], None], n: int = 1) -> None:
        """Queue one batch: ``write(host copies of tensors)`` on a writer thread, then ``on_item(n)``."""
        self._check()
        host, event = to_host(tensors)
        while not self._room.acquire(timeout=0.5):  # wake up now and then to notice a write error while full
            self._check()
        self._queue.put((host, event, write, n))

    def close(self, raise_error: bool = True) -> None:
        """Wait for every queued write and end the threads; then raise a write error the threads met (when
        ``raise_error``). Interrupted (KeyboardInterrupt): the queued writes are dropped, the writes in hand
        finish, every thread ends, and then the interrupt propagates."""
        try:
            self._end()
        except KeyboardInterrupt:
            self._dropping = True
            self._end_despite_interrupts()
            raise
        if raise_error:
            self._check()

    def _end(self) -> None:
        """One end marker per thread (every thread takes jobs until it meets one), then wait until each has ended.
        Markers from an earlier, interrupted call may be in the queue already; a thread ends at its first."""
        for _ in self._threads:
            self._queue.put(None)
        for ended in self._ended:
            ended.wait()
        for thread in self._threads:  # holds no tensor any more: this only lets it return
            thread.join()

    def _end_despite_interrupts(self) -> None:
        """:meth:`_end`, however many more interrupts arrive: a thread left freeing tensors while the interpreter
        finalizes aborts the process, which is worse than waiting for the writes in hand."""
        while True:
            try:
                self._end()
                return
            except KeyboardInterrupt:
                continue

    def _check(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            self._failed = True  # later jobs are still dropped
            raise error

    def _loop(self, ended: threading.Event) -> None:
        """A writer thread: jobs until an end marker; each job's tensors are freed here, inside the loop, before
        ``ended`` is set (see the module doc)."""
        job = None
        try:
            while (job := self._queue.get()) is not None:
                self._room.release()
                if not (self._dropping or self._failed or self._error is not None):  # else the run stops: drop it
                    self._write(*job)
                del job
        finally:
            job = None
            ended.set()

    def _write(self, host: dict[str, Any], event: Any, write: Callable[[dict[str, Any]], None], n: int) -> None:
        try:
            if event is not None:
                event.synchronize()
            write(host)
            if self.on_item:
                with self._lock:
                    self.on_item(n)
        except BaseException as e:  # handed to the main thread at its next submit or at the end
            with self._lock:
                if not self._failed:
                    self._error = self._error or e


__all__ = ["WRITE_DEPTH", "WRITE_THREADS", "BackgroundWriter", "to_host"]

"""The per-image pipeline every image stage shares (extract, cam, predict, diagnose): plan, load ahead, run, write
behind. The device is a parameter; the CPU and CUDA run the same code.

* :func:`plan_batches`: images grouped by network input size (VOC has a handful of shapes), so a batch is one
  tensor; planned from image headers or feature-file headers before anything is decoded.
* :func:`load_batches`: torch's ``DataLoader`` runs the stage's loader (decode, resize, normalise, read a
  features file) in ``workers`` processes off the main thread, collates each planned batch, and pins it on CUDA.
* :class:`BatchRunner`: runs a batch in chunks; on CUDA out-of-memory the chunk halves and the run goes on. One
  image that fits no chunk is a one-line error naming it, its size and ``--max-side``.
* :class:`BackgroundWriter`: outputs copied device-to-host without blocking (pinned memory, one CUDA event per
  batch) and written by a thread, so the device never waits on the disk and nothing synchronises per image.
* :func:`shard_from_env`: a ``torchrun`` rank (``RANK``/``WORLD_SIZE``) is a shard, as ``--shard i/n``.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .device import torchrun_rank
from .errors import VplError

AUTO_BATCH_CUDA = 32  # images per batch on CUDA: ViT-B/16 at VOC size reaches ~3,000 img/s at 32 (issue 19's floor)
WRITE_DEPTH = 4  # batches waiting for the writer; bounds the host memory the writer may hold


# --------------------------------------------------------------------------------------------- planning
def resolve_batch_size(batch_size: int | None, device: torch.device, cpu_default: int) -> int:
    """``--batch-size``: the given number, or (auto, None) :data:`AUTO_BATCH_CUDA` on CUDA and the stage's
    ``cpu_default`` on a CPU (where batching buys little and the per-class GradCAM backward does not batch)."""
    if batch_size is not None:
        return batch_size
    return AUTO_BATCH_CUDA if device.type == "cuda" else cpu_default


def plan_batches(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Indices ``0..len(keys)-1`` grouped by equal key (the network input size), at most ``batch_size`` each.

    Batches come in the order of their first index, and a batch keeps the input order inside it, so ``batch_size``
    1 processes the images in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    open_: dict[Hashable, list[int]] = {}
    batches: list[list[int]] = []
    for i, key in enumerate(keys):
        bucket = open_.get(key)
        if bucket is None or len(bucket) >= batch_size:
            bucket = open_[key] = []
            batches.append(bucket)
        bucket.append(i)
    return batches


def header_sizes(paths: Sequence[os.PathLike], workers: int) -> list[tuple[int, int]]:
    """``(H, W)`` of every image from its header (:func:`vpltool.io.image_size`), read by ``workers`` threads,
    before the model loads: a zero-byte or foreign file fails here, in a second, not after a minute of loading."""
    from concurrent.futures import ThreadPoolExecutor

    from .io import image_size

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(image_size, paths))


# --------------------------------------------------------------------------------------------- loading
class _Loaded(torch.utils.data.Dataset):
    """Index -> ``load(index)``: the stage's per-image loader, run inside the DataLoader's workers."""

    def __init__(self, n: int, load: Callable[[int], dict[str, Any]]):
        self.n, self.load = n, load

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, **self.load(index)}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A planned batch as one dict: tensors of one shape stacked ``[B, ...]``, everything else a list of B."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        same = all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values)
        out[key] = torch.stack(values) if same else values
    return out


def loader_workers(workers: int) -> int:
    """DataLoader worker processes for ``--workers``: 1 loads in this process (no worker), n > 1 in n processes
    (``workers`` 0 was already resolved to one per core)."""
    return 0 if workers <= 1 else workers


def load_batches(n: int, batches: list[list[int]], load: Callable[[int], dict[str, Any]], workers: int,
                 device: torch.device) -> Iterator[dict[str, Any]]:
    """The planned batches, loaded ahead by ``workers`` (see :func:`loader_workers`) and collated
    (:func:`collate`); pinned in page-locked memory on CUDA, so the copy to the GPU runs asynchronously.

    ``load(i)`` must not touch CUDA (it runs in forked workers) and raises :class:`VplError` for a bad image: the
    worker's error reaches the caller as the same one line.
    """
    if not batches:
        return
    n_workers = min(loader_workers(workers), len(batches))
    data = torch.utils.data.DataLoader(
        _Loaded(n, load), batch_sampler=batches, num_workers=n_workers, collate_fn=collate,
        pin_memory=device.type == "cuda", prefetch_factor=4 if n_workers else None,
        persistent_workers=False, worker_init_fn=functools.partial(die_with_parent, os.getpid()),
    )
    try:
        yield from data
    except Exception as e:  # a worker's VplError arrives re-raised as the same type with the worker's traceback
        if isinstance(e, VplError):
            raise type(e)(_one_line(e)) from None
        raise


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """In a loading worker: be killed with the run (Linux ``PR_SET_PDEATHSIG``), so that a run killed with -9 or
    preempted leaves no orphaned workers behind (they lived on for minutes); exit at once if it is gone already.
    The folder's lock is never theirs (:func:`vpltool.io.stage._release_in_child`)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: torch's own watchdog ends orphaned workers, later
        return
    if os.getppid() != parent:  # the run died between our fork and the prctl
        os._exit(1)


def _one_line(e: Exception) -> str:
    """The message of an exception a DataLoader worker re-raised (it appends the worker's traceback)."""
    text = str(e)
    marker = "Original Traceback (most recent call last):"
    if marker in text:
        tail = [line for line in text.split(marker, 1)[1].strip().splitlines() if line.strip()]
        last = tail[-1] if tail else text
        return last.split(": ", 1)[1] if ": " in last else last
    return text


# --------------------------------------------------------------------------------------------- running
@dataclass
class BatchRunner:
    """Runs ``fn`` on a batch in chunks of at most ``limit`` images; on CUDA out-of-memory the limit halves for the
    rest of the run (a warning says so through ``warn``). An image that runs out of memory alone is refused in one
    line by ``describe(index)`` (its path and size) + the ``--max-side`` advice.
    """

    limit: int
    describe: Callable[[int], str]
    warn: Callable[[str], None] | None = None
    advice: str = "pass --max-side (e.g. --max-side 512) or a smaller --batch-size"

    def __call__(self, n: int, fn: Callable[[slice], Any]) -> list[Any]:
        """``[fn(chunk) for chunk in slices of range(n)]``, halving the chunks on out-of-memory."""
        out, start = [], 0
        while start < n:
            stop = min(n, start + self.limit)
            try:
                out.append(fn(slice(start, stop)))
            except torch.OutOfMemoryError:
                if stop - start == 1:
                    raise VplError(f"{self.describe(start)}: does not fit in the device's memory even alone; "
                                   f"{self.advice}") from None
                self.limit = max(1, (stop - start) // 2)
                if self.warn:
                    self.warn(f"out of device memory: batches of {self.limit} from now on")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start = stop
        return out


# --------------------------------------------------------------------------------------------- writing
class BackgroundWriter:
    """Writes a stage's outputs on a thread, behind the device.

    ``submit(tensors, write, n)`` copies ``tensors`` (a dict, on any device) to the host without blocking and
    queues ``write(host_tensors)``; the thread waits on that batch's CUDA event, writes, then calls
    ``on_item(n)``. A write error (a full disk: one line) stops the run at the next ``submit`` or at the end, as the
    same exception. Used as a context manager: leaving it waits for every queued write.
    """

    def __init__(self, on_item: Callable[[int], None] | None = None, depth: int = WRITE_DEPTH):
        self.on_item = on_item
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="vpltool-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(raise_error=exc[0] is None)

    def submit(self, tensors: dict[str, Any], write: Callable[[dict[str, Any]], None], n: int = 1) -> None:
        self._check()
        host, event = _to_host(tensors)
        while True:  # a dead writer never empties the queue: wake up to notice its error
            try:
                self._queue.put((host, event, write, n), timeout=0.5)
                return
            except queue.Full:
                self._check()

    def close(self, raise_error: bool = True) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        if raise_error:
            self._check()

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            host, event, write, n = job
            try:
                if event is not None:
                    event.synchronize()
                write(host)
                if self.on_item:
                    self.on_item(n)
            except BaseException as e:  # handed to the main thread; later jobs are dropped (the run stops)
                self._error = e
                _drain(self._queue)
                return


def _to_host(tensors: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """CPU copies of the CUDA tensors in ``tensors`` (pinned, non-blocking) and the event that marks them done."""
    host, cuda = {}, False
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host[key], cuda = buffer.copy_(value, non_blocking=True), True
        else:
            host[key] = value
    if not cuda:
        return host, None
    event = torch.cuda.Event()
    event.record()
    return host, event


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


# --------------------------------------------------------------------------------------------- sharding
def shard_from_env(shard: tuple[int, int] | None = None) -> tuple[int, int]:
    """The shard this process runs: ``--shard i/n`` when given, else ``torchrun``'s ``RANK`` of ``WORLD_SIZE``
    (single- or multi-node), else the whole dataset. Both given and different is a one-line error (which one did
    the user mean?); Slurm arrays pass ``--shard`` explicitly."""
    env = torchrun_rank()
    if shard is None:
        return env or (0, 1)
    if env is not None and env != tuple(shard):
        raise VplError(f"--shard {shard[0]}/{shard[1]}, but RANK={env[0]} WORLD_SIZE={env[1]} (torchrun or a job "
                       f"script) make this process shard {env[0]}/{env[1]}; drop --shard under torchrun, or unset "
                       "RANK and WORLD_SIZE")
    return tuple(shard)


__all__ = ["AUTO_BATCH_CUDA", "resolve_batch_size", "plan_batches", "header_sizes", "collate", "load_batches",
           "loader_workers", "die_with_parent", "BatchRunner", "BackgroundWriter", "shard_from_env"]

"""The per-image pipeline every image stage shares (extract, cam, crf, segment, predict, diagnose): plan, load
ahead, run, write behind. The device is a parameter; the CPU and CUDA run the same code.

* :func:`plan_batches`: images grouped by network input size (VOC has a handful of shapes), so a batch is one
  tensor; planned from image headers or feature-file headers before anything is decoded.
* :func:`load_batches`: torch's ``DataLoader`` runs the stage's loader (decode, resize to uint8, read a features
  file) in worker processes off the main thread, collates each planned batch in shared memory, and pins it on CUDA;
  the stage normalises the uint8 pixels on the device (a quarter of the bytes of float32 to copy).
* :func:`to_device`: a host tensor to the device without a synchronisation (pinned, non-blocking).
* :class:`BatchRunner`: runs a batch in chunks; on CUDA out-of-memory the chunk halves and the run goes on. One
  image that fits no chunk is a one-line error naming it, its size and ``--max-side``.
* :class:`BackgroundWriter` (:mod:`vpltool.runtime.writer`): a batch's outputs copied device-to-host without
  blocking (pinned memory, one CUDA event per batch) and written by a few threads, so the device never waits on the
  disk and nothing synchronises.
* :func:`run_image_batches`: the four put together, the one per-image loop of every image stage (docs/architecture.md
  lists them): plan, load, run in chunks, write behind, one progress step per image written.

The CUDA-only steps (pinned buffers, events, the GradCAM block in bf16) also run on a CPU when the environment
variable ``VPLTOOL_TEST_CUDA_PATHS=1`` is set (:func:`cuda_paths`): a switch for the tests, so that CI, which has no
GPU, runs them; it is no user option.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..device import tie_to_parent
from ..errors import VplError
from .host import cuda_paths, to_host
from .writer import WRITE_DEPTH, WRITE_THREADS, BackgroundWriter

AUTO_BATCH_CUDA = 32  # images per batch on CUDA: ViT-B/16 at VOC size reaches ~3,000 img/s at 32 (issue 19's floor)


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
    before the model loads: a zero-byte or foreign file fails here, in a second, not after a minute of loading, and
    so does an image less than ``MIN_IMAGE_SIDE`` pixels on a side (a 1x5000 strip: one CLIP patch is 16), for
    every stage that reads images alike."""
    from concurrent.futures import ThreadPoolExecutor

    from ..io import check_image_side, image_size

    with ThreadPoolExecutor(max(1, workers)) as pool:
        sizes = list(pool.map(image_size, paths))
    for path, (h, w) in zip(paths, sizes):
        check_image_side(path, h, w)
    return sizes


def image_stage(folder, dataset, path_of: Callable[[Any, str], Any], loader_workers: int,
                work: Callable[[list, list[tuple[int, int]]], None], on_start: Callable[[int], None] | None = None,
                **finish: Any):
    """The per-image stage body of the stages whose items are a dataset's images (`extract`, `segment`, `predict`,
    `cam --dense`, `cam --pgseg`): :meth:`vpltool.io.StageFolder.run` over the ids of ``dataset`` (outputs
    ``path_of(out, id)``; ``finish``: what the record holds besides, e.g. ``classes=``), whose work is: the
    ``(H, W)`` header sizes of the items to do (:func:`header_sizes`, before any model loads), then ``work(items,
    sizes)``.

    Returns:
        :class:`vpltool.io.StageSummary`: the items done, those already there, the seconds, whether complete.
    """
    def todo_work(todo: list[str]) -> None:
        items = dataset.by_id()
        todo_items = [items[i] for i in todo]
        work(todo_items, header_sizes([it.image for it in todo_items], loader_workers))

    return folder.run([it.id for it in dataset.items], path_of, todo_work, on_start, **finish)


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
    """A planned batch as one dict: tensors of one shape stacked ``[B, ...]`` (inside a loading worker straight
    into shared memory, torch's ``default_collate``: no second copy on the way to the main process), tensors of
    one dtype but several shapes as one :class:`Ragged` block, everything else a list of B."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        tensors = all(isinstance(v, torch.Tensor) for v in values)
        if tensors and all(v.shape == values[0].shape for v in values):
            out[key] = torch.utils.data.default_collate(values)
        elif tensors and all(v.dtype == values[0].dtype for v in values):
            out[key] = Ragged.pack(values)
        else:
            out[key] = values
    return out


class Ragged(Sequence):
    """B tensors of one dtype and several shapes in one flat buffer, a sequence of views into it.

    Why: a loading worker hands each tensor to the main process through its own shared-memory block and file
    descriptor, which the main thread receives over a socket of its own, one per tensor; a batch of
    photos of several sizes (sent as decoded when the device resizes them) is one block this way. Pinned on CUDA
    like a tensor (``DataLoader`` calls :meth:`pin_memory`).
    """

    def __init__(self, flat: torch.Tensor, shapes: Sequence[tuple[int, ...]]):
        self.flat, self.shapes = flat, [tuple(s) for s in shapes]
        self._starts = [0]
        for shape in self.shapes:
            self._starts.append(self._starts[-1] + math.prod(shape))

    @classmethod
    def pack(cls, tensors: Sequence[torch.Tensor]) -> Ragged:
        """One flat copy of ``tensors``; inside a loading worker straight into shared memory, as
        ``default_collate`` does, so that it crosses to the main process without a second copy."""
        numel = sum(t.numel() for t in tensors)
        out = None
        if torch.utils.data.get_worker_info() is not None:
            storage = tensors[0]._typed_storage()._new_shared(numel, device=tensors[0].device)
            out = tensors[0].new(storage).resize_(numel)
        return cls(torch.cat([t.reshape(-1) for t in tensors], out=out), [t.shape for t in tensors])

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index):
        """Tensor ``index`` (a view), or for a slice of consecutive tensors a :class:`Ragged` over their part of the
        buffer (a view too)."""
        if isinstance(index, slice):
            picked = range(len(self))[index]
            if picked.step != 1:
                return [self[i] for i in picked]
            start, stop = (self._starts[picked.start], self._starts[picked.stop]) if picked else (0, 0)
            return Ragged(self.flat[start:stop], self.shapes[index])
        index = range(len(self))[index]
        return self.flat[self._starts[index]:self._starts[index + 1]].view(self.shapes[index])

    def pin_memory(self) -> Ragged:
        return Ragged(self.flat.pin_memory(), self.shapes)

    def to_device(self, device: torch.device) -> Ragged:
        """The same tensors on ``device``: one copy of the buffer (:func:`to_device`), not one per tensor."""
        return Ragged(to_device(self.flat, device), self.shapes)


def loader_workers(workers: int) -> int:
    """DataLoader worker processes for a resolved ``--workers`` count: 1 loads in this process (no worker), n > 1
    in n processes (see :meth:`vpltool.config.RuntimeConfig.loader_workers` for auto and 0)."""
    return 0 if workers <= 1 else workers


def load_batches(n: int, batches: list[list[int]], load: Callable[[int], dict[str, Any]], workers: int,
                 device: torch.device) -> Iterator[dict[str, Any]]:
    """The planned batches, loaded ahead by ``workers`` (see :func:`loader_workers`) and collated
    (:func:`collate`); pinned in page-locked memory on CUDA, so that :func:`to_device` copies them asynchronously.

    ``load(i)`` must not touch CUDA (it runs in forked workers), should return only what the stage uses (every byte
    crosses from a worker to this process), and raises :class:`VplError` for a bad image: the worker's error
    reaches the caller as the same one line. A batch may mix images of different sizes (:class:`Ragged` then).
    """
    if not batches:
        return
    n_workers = min(loader_workers(workers), len(batches))
    data = torch.utils.data.DataLoader(
        _Loaded(n, load), batch_sampler=batches, num_workers=n_workers, collate_fn=collate,
        pin_memory=device.type == "cuda", prefetch_factor=4 if 0 < n_workers < 4 else None,
        persistent_workers=False, worker_init_fn=functools.partial(die_with_parent, os.getpid()),
    )
    batches_ = iter(data)
    try:
        yield from batches_
    except Exception as e:  # a worker's VplError arrives re-raised as the same type with the worker's traceback
        if isinstance(e, VplError):
            raise type(e)(_one_line(e)) from None
        raise
    finally:
        # the workers ended before the stage returns, however it ends: left to the garbage collector (an error's
        # traceback holds this frame), a worker still inside ``load(i)`` went on after the command had returned
        # in a Python program or a test (a model load that a worker had begun, writing its digest cache)
        shutdown = getattr(batches_, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del batches_


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """In a loading worker: be killed with the run (Linux ``PR_SET_PDEATHSIG``), so that a run killed with -9 or
    preempted leaves no orphaned workers behind (they lived on for minutes); exit at once if it is gone already.
    The folder's lock is never theirs (:func:`vpltool.io.locks._release_in_child`).

    SIGTERM gets its default action back: a worker is forked with the command's handler (SIGTERM raises, so that
    the command cleans up and prints its one resume line), and the loader ends its workers with SIGTERM when the
    command stops; with the inherited handler a worker printed a traceback after that line. A worker holds
    nothing to clean up.

    A connection the run hangs up is not reported either: a worker hands each batch's tensors over through
    multiprocessing's resource sharer, whose serving thread prints any error with ``sys.excepthook``; when the run
    is interrupted mid-handover it closes the connection, and the worker printed "ConnectionResetError" after the
    run's one resume line."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.excepthook = functools.partial(_quiet_hangup, sys.excepthook)
    tie_to_parent(parent)  # not Linux: torch's own watchdog ends orphaned workers, later


def _quiet_hangup(default: Callable, kind: type, error: BaseException, tb) -> None:
    """``sys.excepthook`` of a loading worker: the run closing a connection (it is ending) is silent; anything else
    is shown as Python would."""
    if not issubclass(kind, (ConnectionResetError, BrokenPipeError)):
        default(kind, error, tb)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without a synchronisation: a CPU tensor bound for CUDA is pinned first (a batch
    from :func:`load_batches` already is) and copied non-blocking; a pageable copy would wait for the device."""
    if tensor.device == device or device.type != "cuda":
        return tensor.to(device)
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


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


def run_image_batches(keys: Sequence[Hashable], load: Callable[[int], dict[str, Any]],
                      run: Callable[[dict[str, Any]], Callable[[slice], dict]],
                      write: Callable[[list[int], dict[str, Any]], None], device: torch.device, runtime,
                      describe: Callable[[int], str], advice: str = BatchRunner.advice,
                      on_item: Callable[[int], None] | None = None, *, batch_size: int | None = None,
                      cpu_default: int = 1, workers: int | None = None) -> None:
    """The batched per-image loop of every image stage, on ``device``: the images ``0..len(keys)-1`` grouped by ``keys``
    (each one's network input size, or whatever a batch must share: :func:`plan_batches`) in batches of ``batch_size``
    (default ``runtime.batch_size``, :func:`resolve_batch_size` with ``cpu_default`` when auto), loaded ahead by
    ``workers`` loading processes (default ``runtime.loader_workers(device, len(keys))``; :func:`load_batches`,
    ``load(i)`` in a worker), then per batch ``run(batch)`` on the device returns the function of a chunk (a slice of
    the batch) to its outputs, a dict (tensors on the device, lists of them, or anything else: passed as it is), run in
    chunks that halve on out-of-memory (:class:`BatchRunner`; an image that fits alone in no chunk is one line:
    ``describe(i)``, its path and size, and ``advice``). ``write(index, outputs)`` writes a chunk's images (``index``:
    their positions) on a writer thread from host copies (:class:`BackgroundWriter`), then ``on_item(len(index))``."""
    if batch_size is None:
        batch_size = resolve_batch_size(runtime.batch_size, device, cpu_default)
    workers = runtime.loader_workers(device, images=len(keys)) if workers is None else workers
    runner = BatchRunner(batch_size, describe=describe, advice=advice)
    with BackgroundWriter(on_item) as writer:
        for batch in load_batches(len(keys), plan_batches(keys, batch_size), load, workers, device):
            index, chunk = batch["index"], run(batch)
            for part, outputs in runner(len(index), functools.partial(_tagged, chunk)):
                writer.submit(outputs, functools.partial(write, index[part]), n=part.stop - part.start)


def image_names(items: Sequence, sizes: Sequence[tuple[int, int]]) -> Callable[[int], str]:
    """``describe`` of :func:`run_image_batches` for ``items`` with an ``.image`` path and their ``(H, W)``."""
    return lambda i: f"{items[i].image} ({sizes[i][0]}x{sizes[i][1]})"


def _tagged(chunk: Callable[[slice], Any], part: slice) -> tuple[slice, Any]:
    return part, chunk(part)


__all__ = ["AUTO_BATCH_CUDA", "WRITE_DEPTH", "WRITE_THREADS", "cuda_paths", "resolve_batch_size", "plan_batches",
           "header_sizes", "image_stage", "collate", "Ragged", "load_batches", "loader_workers", "to_device",
           "die_with_parent", "BatchRunner", "run_image_batches", "image_names", "BackgroundWriter", "to_host"]

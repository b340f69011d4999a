"""`vpltool crf`: pseudo-mask PNGs from CAM files + images with a dense CRF (CLIP-ES ``eval_cam_with_crf.py``).

Per image (K image-level labels, C = K + 1 rows with background first; the rules are in :mod:`vpltool.ops.kernels`,
the CRF in :mod:`vpltool.ops.densecrf`):

1. ``P = [(1 - max_k cam_k)^a ; cam_1 .. cam_K]`` ``[C, H, W]``, not renormalised (CLIP-ES feeds it as is).
2. Unary ``-log(clip(P, 1e-5, 1))``; ``DenseCRF2D`` with a Gaussian (sxy 1, compat 3) and a bilateral
   (sxy 67, srgb 3, compat 4) Potts term, 10 mean-field iterations -> ``Q`` ``[C, H, W]``.
3. ``label = [0, labels...][argmax Q]``; pixels with ``max Q < 0.95`` -> 255 (ignored by the decoder's loss).

``--parity clip-es`` gives the bilateral term CLIP-ES's image: the BGR photo minus the Caffe means, cast to uint8
so negative values wrap around (:func:`vpltool.ops.kernels.clip_es_image`), and builds step 1 and the unary in float16
like CLIP-ES (its CAM files are float16); the default gives it the RGB photo and computes in float32.
``--no-crf`` skips steps 2-3: ``label = [0, labels...][argmax P]`` with no ignore pixel, i.e. exactly the
masks ``vpltool eval`` scores for the CAM folder at the same exponent (the paper's rows without CRF).

Two backends compute step 2 (``--backend``, :func:`vpltool.ops.densecrf.resolve_backend`; ``_stage.json`` records the
one that ran, since they differ in float rounding):

* ``pydensecrf``: a pool of spawned processes, each reading its CAM file and image and writing its PNG itself,
  one image at a time; the result of an image never depends on the worker that made it. Workers never import
  torch (~0.3 s to start instead of ~2 s). This backend is not on the shared loop of the image stages
  (:func:`vpltool.runtime.batches.run_image_batches`), on purpose: that loop runs the work on one device in the
  main process and only loads and writes beside it, while here the work itself (a CPU-bound CRF per image) is what
  must spread over the cores, in processes without torch; its resume and shards are the shared
  :class:`vpltool.io.StageFolder`'s all the same.
* ``torch``: the shared per-image loop (:func:`vpltool.runtime.batches.run_image_batches`): DataLoader workers read
  the CAM files and images and build the unaries, the device runs batches of images at once
  (:func:`vpltool.ops.densecrf.crf_labels`), threads write the PNGs behind it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..config import IGNORE_INDEX, CrfConfig, RuntimeConfig, ignored_option, to_params, worker_count
from ..data import open_recorded
from ..errors import ContractError, VplError, VplWarning
from ..ops.densecrf import densecrf_module, resolve_backend, unary
from ..ops.kernels import crf_probabilities, crf_scores, pseudo_labels, refine_image
from ..runtime.numerics import run_numerics

STAGE = "crf"
MAX_CHUNK = 8  # images per pool task: amortises the task round trip, small enough to keep workers balanced


def read_item(cams_dir: str | Path, item_id: str, image_path: str, labels: Sequence[int], classes: Sequence[str]
              ) -> tuple[np.ndarray, io.CamMaps]:
    """One image and its CAMs (:func:`vpltool.io.read_cam_item`)."""
    return io.read_cam_item(cams_dir, item_id, image_path, labels, classes)


def write_item(out: str | Path, item_id: str, mask: np.ndarray) -> tuple[int, int]:
    """Write ``<out>/<id>.png`` (atomically); returns ``(ignored, total)`` pixels of the mask (255 = below
    ``cfg.confidence``)."""
    io.write_mask(io.mask_path(out, item_id), mask, item_id)
    return int((mask == IGNORE_INDEX).sum()), mask.size


def crf_item(cams_dir: str, out: str, item_id: str, image_path: str, labels: Sequence[int], classes: Sequence[str],
             cfg: CrfConfig) -> tuple[int, int]:
    """Read one CAM file and its image, write its mask with pydensecrf (:func:`refine_image`, :func:`write_item`)."""
    return crf_items(((cams_dir, out),), item_id, image_path, labels, classes, cfg)[0]


def crf_items(pairs: Sequence[tuple[str, str]], item_id: str, image_path: str, labels: Sequence[int],
              classes: Sequence[str], cfg: CrfConfig, starts: Sequence[str | None] = ()) -> list[tuple[int, int]]:
    """:func:`crf_item` for one image in each ``(cams_dir, out)`` of ``pairs`` (``--with-cams``: CAM folders of the
    same images and labels), the image read once and the CRF's pairwise terms built once
    (:func:`vpltool.ops.kernels.refine_images`: each mask the same bytes as alone). ``starts``: per pair, a folder
    for the same Q's labels at confidence 0 (``--start-out``: `crf --confidence 0`'s mask, sam-pseudo's start
    label), or None."""
    image, first = read_item(pairs[0][0], item_id, image_path, labels, classes)
    maps = [first]
    for cams_dir, _ in pairs[1:]:
        more = io.read_cam(io.cam_path(cams_dir, item_id), classes, labels)
        if more.cams.shape != first.cams.shape:
            raise ContractError(f"{more.file.path}: CAMs of a {more.cams.shape[1]}x{more.cams.shape[2]} image, "
                                f"{first.file.path}'s of {first.cams.shape[1]}x{first.cams.shape[2]}; re-run `vpltool "
                                "cam` for one of them")
        maps.append(more)
    scores = crf_scores(image, [m.cams for m in maps], cfg)
    for start, q in zip(starts, scores):
        if start is not None:
            write_item(start, item_id, pseudo_labels(q, first.labels, None))
    confidence = None if cfg.no_crf else cfg.confidence
    return [write_item(out, item_id, pseudo_labels(q, first.labels, confidence)) for (_, out), q in zip(pairs, scores)]


Todo = list[tuple[str, str, tuple[int, ...]]]  # (id, image path, image-level labels) of the images to refine


@dataclass(frozen=True)
class _Chunk:
    """One pool task: only ids and paths cross the process boundary, never images or maps."""

    pairs: tuple[tuple[str, str], ...]  # (cam folder, mask folder): --out's first, then --with-out's
    classes: tuple[str, ...]
    cfg: CrfConfig
    items: tuple[tuple[str, str, tuple[int, ...]], ...]  # (id, image path, image-level labels)
    starts: tuple[str | None, ...] = ()  # per pair, --start-out's (--with-start-out's) folder or None


def _run_chunk(chunk: _Chunk) -> tuple[int, int, int]:
    """``(images, ignored pixels, pixels)`` of one chunk (the pixels of ``--out``'s masks)."""
    ignored = total = 0
    for item_id, image_path, labels in chunk.items:
        i, t = crf_items(chunk.pairs, item_id, image_path, labels, chunk.classes, chunk.cfg, chunk.starts)[0]
        ignored, total = ignored + i, total + t
    return len(chunk.items), ignored, total


def _chunks(items: Todo, workers: int, **common: Any) -> list[_Chunk]:
    """About 4 tasks per worker so that a slow last task cannot leave the other workers idle for long."""
    size = max(1, min(MAX_CHUNK, len(items) // (4 * workers)))
    return [_Chunk(items=tuple(items[i:i + size]), **common) for i in range(0, len(items), size)]


def _run_chunks(chunks: list[_Chunk], workers: int, on_item: Callable[[int], None] | None
                ) -> tuple[int, int, int]:
    """Run the chunks in this process (1 worker) or in a spawned pool; the first error stops the run. (The
    pydensecrf backend's own loop, not :func:`vpltool.runtime.batches.run_image_batches`: see the module doc.)

    Returns:
        The number of processes that ran them, and the ignored and total pixels of the masks written.
    """
    counts = [0, 0]

    def tick(done: tuple[int, int, int]) -> None:
        counts[0], counts[1] = counts[0] + done[1], counts[1] + done[2]
        if on_item:
            on_item(done[0])

    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            tick(_run_chunk(chunk))
        return 1, *counts
    workers = min(workers, len(chunks))
    # spawn, not fork: the parent may hold torch's thread pools, and forking after they start can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_chunk, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                tick(future.result())
        except BrokenProcessPool:
            raise VplError(f"a CRF worker process died (out of memory?); retry with fewer --workers than {workers}; "
                           "finished masks are kept") from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return workers, *counts


def _run_torch(todo: Todo, cams_dir: Path, out: Path, classes: Sequence[str], cfg: CrfConfig, runtime: RuntimeConfig,
               on_item: Callable[[int], None] | None) -> tuple[int, int, int]:
    """The torch backend over ``todo`` on the shared loop (:func:`vpltool.runtime.batches.run_image_batches`),
    batched by label count (a batch holds images with as many labels and pads none): load ahead (the CAM file, the
    image, the unary), run batches on ``runtime.device``, write behind.

    Returns:
        The number of loader processes, and the ignored and total pixels of the masks written.
    """
    import threading

    import torch

    from ..device import resolve_device
    from ..ops.densecrf import crf_labels, image_tensor
    from ..runtime.batches import loader_workers, run_image_batches

    device = resolve_device(runtime.device)
    counts, lock = [0, 0], threading.Lock()  # added by the writer threads

    def load(i: int) -> dict[str, Any]:
        image, maps = read_item(cams_dir, *todo[i], classes)
        probs = crf_probabilities(maps.cams, cfg.bg_exponent)
        return {"image": image_tensor(image), "unary": torch.from_numpy(unary(probs)).view(probs.shape),
                "rows": (0, *maps.labels)}

    def run(batch: dict[str, Any]) -> Callable[[slice], dict]:  # on the device: a chunk of the batch -> its masks
        images = [batch["image"][b].to(device, non_blocking=True) for b in range(len(batch["index"]))]
        unaries = [batch["unary"][b].to(device, non_blocking=True) for b in range(len(batch["index"]))]
        return lambda part: {"masks": crf_labels(images[part], unaries[part], batch["rows"][part], cfg,
                                                 cfg.confidence)}

    def write(index: list[int], t: dict[str, Any]) -> None:  # on a writer thread
        for i, mask in zip(index, t["masks"]):
            ignored, total = write_item(out, todo[i][0], mask.numpy())
            with lock:
                counts[0], counts[1] = counts[0] + ignored, counts[1] + total

    workers = resolve_workers(runtime.workers, len(todo))  # loaders, on CUDA too (auto: CPU_WORKERS or this process)
    run_image_batches([len(labels) for _, _, labels in todo], load, run, write, device, runtime,
                      lambda i: todo[i][1], "pass a smaller --batch-size", on_item, workers=workers)
    return max(1, loader_workers(workers)), *counts


@dataclass
class CrfSummary(io.StageSummary):
    workers: int = 1  # processes that ran (1 = in this process): CRF workers (pydensecrf) or image loaders (torch)
    ignored: float | None = None  # share of the pixels written this run that are 255 (None when none was written)
    backend: str = "pydensecrf"  # the CRF that ran (torch or pydensecrf)


def resolve_workers(workers: int | None, images: int | None = None) -> int:
    """``workers`` 0 means one per CPU core, auto 1 for a run of a few ``images`` (:func:`.config.worker_count`)."""
    return worker_count(workers, images)


def with_backend(cfg: CrfConfig, device: str) -> CrfConfig:
    """``cfg`` with ``backend`` resolved (auto -> torch on CUDA, else pydensecrf): the one recorded in
    ``_stage.json``. ``--no-crf`` runs no CRF: its backend stays as given."""
    if cfg.no_crf:
        return cfg
    return replace(cfg, backend=resolve_backend(cfg.backend, device, cfg.parity))


def run_crf(
    cams_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: CrfConfig = CrfConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    with_cams: tuple[str | os.PathLike, str | os.PathLike] | None = None,
    start_out: str | os.PathLike | None = None,
    with_start_out: str | os.PathLike | None = None,
) -> CrfSummary:
    """Pseudo masks ``<out>/<id>.png`` for every CAM file of a `cam` folder, then ``<out>/_stage.json``.

    Args:
        cams_dir: output folder of `vpltool cam`; its ``_stage.json`` names the dataset holding the images.
        out: output folder (created); finished masks are kept unless ``runtime.overwrite``.
        cfg: CRF parameters (recorded in ``_stage.json``, with the backend that ran).
        runtime: ``workers`` processes (0 = one per core; 1 = in this process): CRF processes with pydensecrf,
            image loaders with torch; ``device`` and ``batch_size`` (torch); ``overwrite``.
        shard: ``(i, n)``: every n-th mask from the i-th (``--shard i/n``; under torchrun the rank, see
            :func:`vpltool.device.shard_from_env`); the folder completes when every shard's masks are there.
        on_item: called with the number of images just finished. on_start: called once with the number to do.
        with_cams: ``(cams_dir2, out2)``: another `cam` folder of the same images and labels (another refinement's
            CAMs), refined by the same processes into ``out2`` (its own records, as its own run would write them),
            each image's CRF pairwise terms built once for both (pydensecrf, or ``--no-crf``).
        start_out: a folder for the same CRF's labels at confidence 0 (``--start-out``: the masks and records of
            `crf --confidence 0`, the start label `sam-pseudo --start` reads instead of running the CRF again);
            ``with_start_out``: the same for ``with_cams``' CAMs. Written by pydensecrf (``auto`` picks it).

    Raises:
        MissingDependencyError: pydensecrf is not installed (and its backend is asked for).
        ContractError: a CAM file of the wrong kind/classes, or whose size differs from its image.
    """
    from ..device import shard_from_env  # here: the CRF worker processes import this module, never torch

    cams_dir, out = Path(cams_dir), Path(out)
    shard = shard_from_env(shard)
    starts = [None if s is None else Path(s) for s in (start_out, with_start_out)]
    if starts[1] is not None and with_cams is None:
        raise VplError(f"--with-start-out {starts[1]}: the start labels of --with-cams's CAMs; pass --with-cams and "
                       "--with-out too, or use --start-out for the CAMs of this run")
    # sam-pseudo's start label is pydensecrf's: with a start folder, auto picks it on any device
    cfg = with_backend(cfg, "cpu" if any(starts) else runtime.device)
    on_torch = cfg.backend == "torch" and not cfg.no_crf
    if on_torch and any(starts):
        option = "--start-out" if starts[0] is not None else "--with-start-out"
        raise VplError(f"{option} {starts[0] or starts[1]}: written by the pydensecrf backend only (sam-pseudo's start "
                       "label is pydensecrf's CRF); drop --backend torch")
    if runtime.batch_size is not None and not on_torch:  # batches are the torch backend's alone
        why = "with --no-crf" if cfg.no_crf else "with the pydensecrf backend (one image per process)"
        warnings.warn(VplWarning(ignored_option("--batch-size", runtime.batch_size, why)), stacklevel=2)
    if not cfg.no_crf and not on_torch:
        densecrf_module()  # fail in one line before any folder is touched
    io.read_stage_record(cams_dir, "cam")  # a `cam` folder's record, one line otherwise
    dataset = open_recorded(cams_dir)
    io.check_outputs(STAGE, {"--out": (out, "stage"), "--start-out": (starts[0], "stage")},
                     inputs={"the cam folder": cams_dir}, protected=dataset.folders(), overwrite=runtime.overwrite)
    ids, items = io.cam_items(cams_dir, dataset)
    pairs = [(cams_dir, out), *([] if with_cams is None else [_with_cams(with_cams, cams_dir, out, ids, dataset,
                                                                           on_torch, runtime.overwrite, starts[1])])]
    _distinct_outputs([out, *(o for _, o in pairs[1:]), *(s for s in starts if s is not None)])
    start_cfg = replace(cfg, confidence=0.0)  # the records `crf --confidence 0` writes
    start = time.perf_counter()
    # the skeleton written out, not StageFolder.run: the masks a resume kept are counted inside the folder's lock
    # (a run with --overwrite may be removing them otherwise), also when nothing is left to do
    with contextlib.ExitStack() as stack:
        made = {c: _cams_made(c) for c, _ in pairs}  # each CAM folder's files read once, for its start folder too
        folder, *others = [stack.enter_context(_mask_folder(o, cfg, runtime, shard, ids, *made[c])) for c, o in pairs]
        others += [stack.enter_context(_mask_folder(s, start_cfg, runtime, shard, ids, *made[c]))
                   for (c, _), s in zip(pairs, starts) if s is not None]
        todo = [(i, str(items[i].image), tuple(items[i].labels)) for i in folder.todo_with(others, ids, io.mask_path)]
        if on_start:
            on_start(len(todo))
        if on_torch:
            workers, ignored, total = _run_torch(todo, cams_dir, out, dataset.classes, cfg, runtime, on_item)
        else:
            workers = resolve_workers(runtime.workers, len(todo))  # CRF processes (spawned: ~0.3 CPU-s each)
            chunks = _chunks(todo, workers, pairs=tuple((str(c), str(o)) for c, o in pairs),
                             classes=tuple(dataset.classes), cfg=cfg,
                             starts=tuple(None if s is None else str(s) for s in starts[:len(pairs)]))
            workers, ignored, total = _run_chunks(chunks, workers, on_item)
        done, mine = {item[0] for item in todo}, folder.mine(ids)
        ignored_kept, total_kept = _ignored_pixels([io.mask_path(out, i) for i in mine if i not in done],
                                                   resolve_workers(runtime.workers))
        complete = folder.finish(ids, io.mask_path)
        for other in others:
            complete = other.finish(ids, io.mask_path) and complete
    total += total_kept
    return CrfSummary(done=len(todo), skipped=len(mine) - len(todo), seconds=time.perf_counter() - start,
                      complete=complete,
                      workers=workers, ignored=(ignored + ignored_kept) / total if total else None,
                      backend="none" if cfg.no_crf else cfg.backend)


def _cams_made(cams_dir: Path) -> tuple[dict, dict]:
    """``(inputs, numerics)`` a mask folder of ``cams_dir`` records, as a run on that folder alone writes them: the
    CAM folder's record and dataset as inputs, and its numerics (a CAM file of another dtype or mode is refused)."""
    record = io.read_stage_record(cams_dir, "cam")
    made = io.folder_made(cams_dir, record, "cam")  # the record's, then each CAM file's own (its header)
    # crf takes no --precision: its masks carry the CAMs' dtype, in this run's mode (which must be the CAMs')
    numerics = run_numerics(made[0][1].get("dtype") if isinstance(made[0][1], dict) else None)
    io.check_numerics(numerics, *made)
    return {"cams": io.sha256_file(io.stage_record_path(cams_dir)), **io.dataset_inputs(record)}, numerics


def _mask_folder(out: Path, cfg: CrfConfig, runtime: RuntimeConfig, shard: tuple[int, int], ids: list[str],
                 inputs: dict, numerics: dict) -> io.StageFolder:
    """The output folder of masks made at ``cfg`` from the CAM folder that ``inputs`` and ``numerics`` describe
    (:func:`_cams_made`)."""
    return io.StageFolder(out, STAGE, to_params(cfg), overwrite=runtime.overwrite, inputs=dict(inputs),
                          shard=shard, items=(ids, io.mask_path), numerics=numerics)


def _with_cams(with_cams, cams_dir: Path, out: Path, ids: list[str], dataset, on_torch: bool,
               overwrite: bool, start_out: Path | None = None) -> tuple[Path, Path]:
    """``--with-cams DIR --with-out OUT`` checked before any folder is touched: CAMs of the very images of
    ``cams_dir`` (the same dataset, split and ids) into another folder; the pydensecrf backend (or ``--no-crf``)."""
    cams2, out2 = Path(with_cams[0]), Path(with_cams[1])
    if on_torch:
        raise VplError(f"--with-cams {cams2}: refined beside {cams_dir} by the pydensecrf backend only; drop "
                       "--backend torch, or run crf on it alone")
    if out2.resolve() == out.resolve() or cams2.resolve() == cams_dir.resolve():
        raise VplError(f"--with-cams {cams2} --with-out {out2}: another CAM folder and another output than "
                       f"{cams_dir} and --out {out}")
    io.read_stage_record(cams2, "cam")
    other = open_recorded(cams2)
    io.check_outputs(STAGE, {"--with-out": (out2, "stage"), "--with-start-out": (start_out, "stage")},
                     inputs={"the cam folder": cams2}, protected=other.folders(), overwrite=overwrite)
    ids2, _ = io.cam_items(cams2, other)
    if ids2 != ids or (other.root, other.split) != (dataset.root, dataset.split):
        raise VplError(f"--with-cams {cams2}: CAMs of other images than {cams_dir} ({len(ids2)} of {other.root} "
                       f"against {len(ids)} of {dataset.root}); run crf on each alone")
    return cams2, out2


def _distinct_outputs(folders: list[Path]) -> None:
    """The run's mask folders (--out, --with-out, --start-out, --with-start-out) are as many different folders."""
    seen: dict[Path, Path] = {}
    for folder in folders:
        if (real := folder.resolve()) in seen:
            raise VplError(f"{folder}: given as two of this run's outputs (also as {seen[real]}); give each of --out, "
                           "--with-out, --start-out and --with-start-out its own folder")
        seen[real] = folder


def _ignored_pixels(masks: list[Path], workers: int) -> tuple[int, int]:
    """``(255 pixels, pixels)`` of the masks a resumed run kept, so that the share it reports covers the whole
    folder train-decoder reads, not only this run's masks (read by ``workers`` threads)."""
    from concurrent.futures import ThreadPoolExecutor

    def count(path: Path) -> tuple[int, int]:
        mask = io.read_mask(path)
        return int((mask == IGNORE_INDEX).sum()), mask.size

    with ThreadPoolExecutor(max(1, workers)) as pool:
        counts = list(pool.map(count, masks))
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


__all__ = ["STAGE", "refine_image", "read_item", "write_item", "crf_item", "CrfSummary", "resolve_workers",
           "with_backend", "run_crf"]

"""`vpltool report`: a static HTML report of a run folder, to browse every image's CAMs, masks and IoU.

``RUN/report/index.html`` opens from disk, with no server and no network (it can be copied to a laptop or attached
to a paper's supplement):

* the stage table: mIoU per stage, chance and all-background (``RUN/metrics.json``, written by `demo-report`) and
  the per-class IoU of every ``RUN/metrics/<folder>.json`` (written by `eval`): their figures, not recomputed;
* one table per dataset split, one row per image: thumbnails of the image, its GT and every per-image output of the
  run (CAMs as a heat map of the maximum over classes, masks in the VOC palette), its labels, its IoU at each stage
  (`eval`'s rule on this one image) and the change from text to vision CAM; sortable by any column, filterable by
  class, paged;
* a detail view per image: larger pictures, one CAM per present class for each CAM folder side by side, the box
  mask CAA used (when `cam --save-debug` kept it) and the per-class IoU.

Whatever stages the run holds are shown (:mod:`.runs` discovers them from their records); missing ones are absent
columns. The report is built in a staging folder beside ``--out`` and moved into place when complete.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__, io
from ...config import ReportConfig, RuntimeConfig, to_params
from ...errors import VplError
from ...ops.kernels import scores
from .page import write_data, write_page
from .rows import ColumnSpec, Task, jet, run_task
from .runs import Run, Split, discover, stage_table

STAGE = "report"
MAX_CHUNK = 64  # images per task: small enough that the last tasks finish together


@dataclass
class ReportSummary:
    """What `report` wrote: ``index`` (the page), images per split, bytes, seconds, and per split the figures it
    showed (``per_image``: column -> {image id: mIoU or None}; ``miou``: column -> mIoU of the summed per-image
    confusion matrices, None without GT)."""

    index: Path
    images: dict[str, int]
    columns: dict[str, list[str]]
    bytes: int
    seconds: float
    workers: int
    per_image: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    miou: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: Path, run: Run) -> None:
    """Refuse an output folder that lies in one of the folders the report reads (one line naming it), then the
    checks every stage makes (:func:`vpltool.io.check_outputs`: the dataset's folders, another stage's folder, a
    user's non-empty folder)."""
    real = Path(os.path.realpath(out))
    for folder in run.inputs:
        if _inside(real, Path(os.path.realpath(folder))):
            raise VplError(f"{out}: lies inside {folder}, which this report reads; choose another --out (default: "
                           f"{run.root / 'report'})")
    if real == Path(os.path.realpath(run.root)):
        raise VplError(f"{out}: is the run folder this report reads; choose another --out (default: "
                       f"{run.root / 'report'})")
    protected = [p for split in run.splits for p in split.dataset.folders()]
    # the run folder itself is no input here: the report's default folder lies in it (RUN/report), beside the
    # stage folders it reads, which are checked above one by one
    io.check_outputs(STAGE, {"--out": (out, "stage")}, inputs={}, protected=protected)


def _specs(split: Split) -> tuple[ColumnSpec, ...]:
    n = len(split.dataset.classes)
    return tuple(ColumnSpec(c.name, c.kind, str(c.folder), c.bg_exponent, c.fp16,
                            len(c.record.get("classes") or split.dataset.classes) if c.kind == "mask" else n,
                            c.lut, str(c.debug) if c.debug else None) for c in split.columns)


def _tasks(run: Run, staging: Path, cfg: ReportConfig, workers: int) -> list[Task]:
    tasks = []
    for s, split in enumerate(run.splits):
        items = [(r, it.id, str(it.image), str(it.gt) if it.gt is not None else None, tuple(it.labels))
                 for r, it in enumerate(split.dataset.items)]
        size = max(1, min(MAX_CHUNK, len(items) // (4 * workers) or 1))
        specs = _specs(split)
        for k in range(0, len(items), size):
            tasks.append(Task(s, str(staging), tuple(split.dataset.classes), specs, split.has_gt,
                              tuple(items[k:k + size]), cfg))
    return tasks


def _run_tasks(tasks: list[Task], workers: int, on_item: Callable[[int], None] | None) -> list[tuple]:
    """Every task, in this process (1 worker) or in a spawned pool (the caller may hold torch's threads)."""
    results = []
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(run_task(task))
            if on_item:
                on_item(len(task.items))
        return results
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_task, task): task for task in tasks}
        try:
            for future in as_completed(futures):
                results.append(future.result())
                if on_item:
                    on_item(len(futures[future].items))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _meta(run: Run, cfg: ReportConfig, mious: list[dict[str, float | None]]) -> dict[str, Any]:
    """What the page's script needs besides the rows: splits, columns, classes and colours."""
    splits = []
    for s, split in enumerate(run.splits):
        columns = [{**c.describe(), "miou_here": mious[s].get(c.name)} for c in split.columns]
        splits.append({"name": split.name, "root": split.key[0], "n": len(split.dataset.items),
                       "gt": split.has_gt, "columns": columns, "pairs": split.pairs})
    classes = run.splits[0].dataset.classes
    palette = np.asarray(io.voc_palette(), np.uint8).reshape(256, 3)
    return {"run": str(run.root), "classes": list(classes), "palette": palette[: len(classes)].tolist(),
            "jet": jet().tolist(), "splits": splits, "page_size": cfg.page_size, "version": __version__}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _swap(staging: Path, out: Path) -> None:
    """Move the finished report into place; a previous report there goes (it was checked to be one)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_report(run: str | os.PathLike, out: str | os.PathLike | None = None, cfg: ReportConfig = ReportConfig(),
               workers: int = 0, on_start: Callable[[int], None] | None = None,
               on_item: Callable[[int], None] | None = None) -> ReportSummary:
    """Write the HTML report of a run folder into ``out`` (default ``RUN/report``); see the module doc.

    Args:
        run: a run folder (the Makefile's RUN): sub-folders made by `extract`, `cam`, `crf`, `predict`, and
            optionally ``metrics.json`` and ``metrics/``.
        out: the report folder (replaced as a whole when it holds an earlier report).
        workers: processes making thumbnails; 0 = one per CPU core.

    Raises:
        VplError: not a run, its dataset gone, or an output folder inside what the report reads; one line, before
            anything is written.
    """
    start = time.perf_counter()
    workers = RuntimeConfig(workers=workers).worker_count  # crf's rule: a negative count is refused
    found = discover(run)
    out = Path(out) if out is not None else found.root / "report"
    if out.is_symlink():  # a link the user made (RUN/report -> elsewhere) stays: the report replaces its target
        out = Path(os.path.realpath(out))
    check_out(out, found)
    table = stage_table(found)
    total = sum(len(s.dataset.items) for s in found.splits)
    with io.replace_lock(out):  # two reports into one folder: the second is refused, not silently lost
        size, rows, mious = _build(found, out, cfg, workers, table, total, on_start, on_item)
    per_image = {split.name: {c.name: {r[1]: r[7][j] for r in rows[s]} for j, c in enumerate(split.columns)}
                 for s, split in enumerate(found.splits)}
    return ReportSummary(index=out / "index.html", images={s.name: len(s.dataset.items) for s in found.splits},
                         columns={s.name: [c.name for c in s.columns] for s in found.splits}, bytes=size,
                         seconds=time.perf_counter() - start, workers=workers, per_image=per_image,
                         miou={s.name: mious[i] for i, s in enumerate(found.splits)})


def _build(found: Run, out: Path, cfg: ReportConfig, workers: int, table: dict[str, Any], total: int,
           on_start: Callable[[int], None] | None, on_item: Callable[[int], None] | None
           ) -> tuple[int, list[list], list[dict[str, float | None]]]:
    """Make the report in a staging folder beside ``out`` and move it into place; ``(bytes, rows per split, mIoU
    per split and column)``."""
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if on_start:
        on_start(total)
    try:
        io.make_folder(staging)
        results = _run_tasks(_tasks(found, staging, cfg, workers), workers, on_item)
        rows: list[list] = [[] for _ in found.splits]
        sums: list[dict[str, np.ndarray]] = [{} for _ in found.splits]
        for s, chunk, hists in results:
            rows[s] += chunk
            for name, hist in hists.items():
                sums[s][name] = hist if name not in sums[s] else sums[s][name] + hist
        for split_rows in rows:
            split_rows.sort(key=lambda r: r[0])
        mious = [{name: scores(hist)["miou"] for name, hist in split_sums.items()} for split_sums in sums]
        meta = _meta(found, cfg, mious)
        scripts = write_data(staging, meta, rows)
        write_page(staging, f"vpltool report: {found.root}", table, meta, scripts)
        io.write_stage_record(staging, STAGE, params=to_params(cfg), count=total,
                              inputs={"run": str(found.root.resolve()),
                                      "folders": [str(p) for p in found.inputs]})
        size = _folder_bytes(staging)
        _swap(staging, out)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return size, rows, mious


__all__ = ["STAGE", "ReportSummary", "check_out", "run_report"]

"""`vpltool learn-prototypes`: VPL phase 1, vision prototypes learned from what the text prototypes localized.

Xu et al., "Toward Modality Gap: Vision Prototype Learning for WSSS with CLIP" (AAAI 2025), Eq. 3-11, Alg. 1.
One matrix ``W`` ``[N, D]`` for the whole training set, with the rows of the text prototypes ``Z`` (C classes,
then M background words), initialised at ``Z`` and trained by projected gradient descent:

* pixel features ``x`` = the L2-normalised dense patch features of `extract` (the space of ``Z``);
* targets ``T`` (the paper's P') = the text-prototype CAMs pooled to the patch grid, over the image's own rows
  ``[present classes; all M background rows]`` (the softmax `cam` uses); the background mass of a pixel is split
  over the background rows in proportion to ``softmax(x . z_m / tau_T)`` among background words;
* ``L(W) = tau_I**2 * sum_p v_p CE(T_p, softmax(x_p W_rows^T / tau_I)) / sum_p v_p`` (instance level: v = 1;
  class level: every pixel replaced by its class anchor, Theorem 2), so ``grad = tau_I mean_p v_p (P_p - T_p) x_p``
  and ``lr`` is a step in logit units, independent of tau_I (see :func:`loss_and_grad`);
* ``W <- rownorm(W - lr * grad)`` (projection onto the unit sphere), ``iters`` times, full batch.

Modules: :mod:`.targets` (the targets and pixel sampling), :mod:`.descent` (chunks, loss, gradient, descent),
:mod:`.sources` (chunks in memory or streamed from scratch shards); this module reads the files and runs the
stage. Chunks live in memory (CUDA: bf16 on the device; CPU: fp16, fp32 maths) or, above the memory budget, in
scratch safetensors shards that are streamed from disk every iteration. See docs/learn-prototypes.md.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ... import io
from ...config import LearnPrototypesConfig, RuntimeConfig, to_params
from ...data import open_if_present, recorded_folders
from ...device import resolve_device, resolve_precision, seed_everything
from ...errors import ContractError, VplError
from ...runtime.numerics import run_numerics
from .descent import (
    Chunk,
    ChunkBuilder,
    Scan,
    class_level_chunk,
    descend,
    loss_and_grad,
    modality_gap,
    project_rows,
    target_entropy,
)
from .sources import MemorySource, ShardSource, memory_budget
from .targets import hard_labels, make_targets, pool_cams, sample_pixels, sampled_count

_log = logging.getLogger(__name__)
CURVE_POINTS = 101  # loss-curve samples kept in the file metadata (the PNG draws every iteration)
# CPU: an 8 MB fp32 block stays in L3. CUDA: few launches per iteration (over VOC train_aug's 8.1M pixels, 23 chunks
# and 417 ops per iteration against 126 and 2,160 at 1 << 17: bench_learn_prototypes.py --launches); a chunk's
# [n, rows] fp32 temporaries are at most 1M x 45 x 4 B = 180 MB each
CHUNK_PX = {"cpu": 4096, "cuda": 1 << 20}


@dataclass
class Inputs:
    """The validated inputs of one run (nothing but headers and records read yet)."""

    features: Path
    cams: Path
    text: io.Prototypes
    classes: list[str]
    dim: int
    items: list[tuple[str, tuple[int, ...], tuple[int, int]]]  # (id, sorted labels, grid), sorted by label set
    records: dict[str, str]  # sha256 of the features and cam stage records
    made: list[tuple]  # (path, numerics, command) of the features, CAMs and text prototypes (io.check_numerics)


def check_inputs(features_dir: str | Path, cams_dir: str | Path, text_prototypes: str | Path) -> Inputs:
    """Check that features, CAMs and text prototypes belong together; ContractError naming the file if not."""
    features_dir, cams_dir = Path(features_dir), Path(cams_dir)
    record = io.read_stage_record(features_dir, "extract")
    cam_record = io.read_stage_record(cams_dir, "cam")
    feat_sha = io.sha256_file(io.stage_record_path(features_dir))
    if cam_record.get("inputs", {}).get("features") != feat_sha:
        raise ContractError(f"{cams_dir}: these CAMs were made from other features than {features_dir}; "
                            "re-run `vpltool cam` on this features folder")
    open_if_present(features_dir)  # features of a dataset that changed since are refused (its labels, its images)
    classes = record["classes"]
    ids = io.item_ids(features_dir)
    if not ids:
        raise VplError(f"{features_dir}: no features files; re-run `vpltool extract`")
    dim = io.read_features(io.feature_path(features_dir, ids[0]), classes=classes, dense_only=True).dense.shape[-1]
    items = []
    for item_id in ids:  # headers only: labels to sort by, grids for the memory estimate
        cam = io.cam_path(cams_dir, item_id)
        if not cam.is_file():
            raise ContractError(f"{cam}: missing; the cam folder does not cover the features of {features_dir}")
        labels, grid = io.features_header(io.feature_path(features_dir, item_id))
        items.append((item_id, tuple(sorted(labels)), grid))
    text = io.read_prototypes(text_prototypes, classes=classes, dim=dim, model=io.recorded_model(record, features_dir),
                              source="text", option="--text")
    if len(text.background_rows()) == 0:
        raise VplError(f"{text_prototypes}: no background rows; learn-prototypes needs them for the background "
                       "pixels (make text prototypes with --background auto, voc, coco or a word list)")
    if cam_record["params"].get("prototypes", {}).get("sha256") != io.sha256_file(text_prototypes):
        _log.warning("%s: the CAMs were made from other prototypes than %s", cams_dir, text_prototypes)
    items.sort(key=lambda it: (len(it[1]), it[1], it[0]))
    records = {"features": feat_sha, "cams": io.sha256_file(io.stage_record_path(cams_dir))}
    # the folders' records and each item's own (its header): an edited record lets no item of another dtype in
    made = [*io.folder_made(features_dir, record, "extract"), *io.folder_made(cams_dir, cam_record, "cam"),
            text.made()]
    return Inputs(features_dir, cams_dir, text, classes, dim, items, records, made)


def load_item(inp: Inputs, item_id: str, labels: tuple[int, ...], cfg: LearnPrototypesConfig
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: unit features ``[hw, D]``, targets ``[hw, K + M]`` (sorted labels), hard labels ``[hw]``."""
    feats = io.read_features(io.feature_path(inp.features, item_id), classes=inp.classes, dense_only=True)
    if feats.dense.shape[-1] != inp.dim:
        raise ContractError(f"{feats.file.path}: {feats.dense.shape[-1]}-d features, expected {inp.dim}-d")
    maps = io.read_cam(io.cam_path(inp.cams, item_id), classes=inp.classes, labels=labels)
    order = sorted(range(len(maps.labels)), key=lambda k: maps.labels[k])
    cams = pool_cams(torch.from_numpy(maps.cams[order].astype("float32")), feats.grid)  # [K, hw], sorted labels
    x = F.normalize(feats.dense.flatten(0, 1), dim=1)  # [hw, D]
    bg = inp.text.vectors[inp.text.background_rows()]
    targets = make_targets(cams, x, bg, inp.text.temperature, cfg.targets, cfg.threshold, cfg.bg_exponent)
    return x, targets, hard_labels(cams, labels, cfg.threshold)


def _loaded(inp: Inputs, cfg: LearnPrototypesConfig, threads: int
            ) -> Iterator[tuple[int, tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """``(index, labels, (x, targets, hard))`` of every image in order, read by ``threads`` threads (file reads and
    tensor maths release the GIL) at most ``2 * threads`` images ahead."""

    def load(index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        item_id, labels, _ = inp.items[index]
        got = load_item(inp, item_id, labels, cfg)
        return got if cfg.pixel_fraction >= 1.0 else sample_pixels(got, cfg.pixel_fraction, cfg.seed, index)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending: deque = deque()
        for index in range(len(inp.items)):
            pending.append((index, pool.submit(load, index)))
            if len(pending) > 2 * threads:
                i, done = pending.popleft()
                yield i, inp.items[i][1], done.result()
        while pending:
            i, done = pending.popleft()
            yield i, inp.items[i][1], done.result()


def scan(inp: Inputs, cfg: LearnPrototypesConfig, sink: ChunkBuilder | None,
         on_item: Callable[[int], None] | None = None, threads: int = 1) -> Scan:
    """Read every image once (``threads`` readers, in order): feed ``sink`` with pixels and targets, accumulate gap
    / class-level statistics (the same sums in the same order whatever ``threads``)."""
    n_rows, c = len(inp.text.vectors), len(inp.classes) - 1
    class_rows, bg_rows = inp.text.class_rows(), inp.text.background_rows()
    level = cfg.regularization == "class"
    st = Scan(0, 0.0, torch.zeros(c, inp.dim, dtype=torch.float64), torch.zeros(c, dtype=torch.long),
              torch.zeros(n_rows, inp.dim, dtype=torch.float64) if level else None, {} if level else None)
    for _, labels, (x, t, hard) in _loaded(inp, cfg, threads):
        st.n_px += len(x)
        st.entropy += float(-(t * t.clamp_min(1e-30).log()).sum())
        fg = hard > 0
        st.centroid_sum.index_add_(0, hard[fg] - 1, x[fg].double())
        st.counts += torch.bincount(hard[fg] - 1, minlength=c)
        if level:
            rows = torch.cat([class_rows[[k - 1 for k in labels]], bg_rows])
            st.anchor_sum.index_add_(0, rows, (t.T @ x).double())
            st.pairs[labels] = st.pairs.get(labels, 0) + (t.T @ t).double()
        if sink is not None:
            sink.add(x, t, labels)
        if on_item:
            on_item(1)
    if sink is not None:
        sink.flush()
    return st


def pick_storage(compute: torch.dtype, need: Callable[[torch.dtype], int], budget: int) -> torch.dtype:
    """The dtype the pixels are kept in: bf16 with bf16 compute (CUDA); fp32 when it fits the budget, since every
    iteration would otherwise upcast each fp16 chunk again (8 MB per 4096-pixel chunk: ~13 % of an iteration on a
    CPU); fp16 otherwise (3 more mantissa bits than bf16), and above the budget it is streamed."""
    if compute == torch.bfloat16:
        return torch.bfloat16
    return torch.float32 if need(torch.float32) <= budget else torch.float16


def estimate_bytes(inp: Inputs, storage: torch.dtype, pixel_fraction: float = 1.0) -> int:
    """Resident size of all chunks: features in ``storage``, fp32 targets and a bool mask per row in play."""
    m = len(inp.text.background_rows())
    itemsize = torch.empty((), dtype=storage).element_size()
    return int(sum(sampled_count(h * w, pixel_fraction) * (inp.dim * itemsize + 5 * (len(labels) + m))
                   for _, labels, (h, w) in inp.items))


def subsample(curve: Sequence[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """``[[iteration, loss], ...]`` at about ``points`` evenly spaced iterations, first and last included."""
    last = len(curve) - 1
    idx = sorted({round(i * last / max(points - 1, 1)) for i in range(points)}) if last > 0 else [0]
    return [[i, round(curve[i], 6)] for i in idx]


@dataclass
class Learned:
    """What one descent produced, before it is written."""

    w: torch.Tensor  # [N, D] unit rows
    curve: list[float]  # mean CE at W_0 .. W_iters
    kl: float  # final mean KL (CE minus the mean target entropy)
    gap_before: dict[str, float]
    gap_after: dict[str, float]
    n_pixels: int
    descent_s: float


def learn(inp: Inputs, cfg: LearnPrototypesConfig, source: MemorySource | ShardSource, device: torch.device,
          storage: torch.dtype, on_iter: Callable[[int, torch.Tensor], None] | None = None, threads: int = 1
          ) -> Learned:
    """Scan the data (``threads`` readers) into ``source`` (instance level) or the class-level pseudo-pixels, then
    descend from Z."""
    class_rows, bg_rows = inp.text.class_rows(), inp.text.background_rows()
    instance = cfg.regularization == "instance"
    sink = ChunkBuilder(class_rows, bg_rows, CHUNK_PX[device.type], storage, source.add) if instance else None
    st = scan(inp, cfg, sink, threads=threads)
    source.close()
    if cfg.targets == "hard" and int(st.counts.sum()) == 0 and any(labels for _, labels, _ in inp.items):
        raise VplError(f"--threshold {cfg.threshold:g}: no pixel reached it (no CAM score of an image's own classes "
                       "is that high on the patch grid), so every hard target is background and the class "
                       "prototypes would learn nothing but to move away from every pixel; lower --threshold (default "
                       f"{LearnPrototypesConfig.threshold:g})")
    if instance:
        chunks, entropy = source, st.entropy
    else:
        pseudo = class_level_chunk(st, class_rows, bg_rows).to(device)
        chunks, entropy = (lambda: [pseudo]), target_entropy(pseudo)
    z = inp.text.vectors.to(device)
    centroids, counts = F.normalize(st.centroid_sum.float(), dim=1).to(device), st.counts.to(device)
    start = time.perf_counter()
    w, curve = descend(chunks, z, tau=cfg.tau_i, lr=cfg.lr, iters=cfg.iters, total_weight=st.n_px, on_iter=on_iter)
    return Learned(w.cpu(), curve, curve[-1] - entropy / st.n_px, modality_gap(z, z, class_rows, centroids, counts),
                   modality_gap(w, z, class_rows, centroids, counts), st.n_px, time.perf_counter() - start)


def run_learn_prototypes(
    features_dir: str | Path,
    cams_dir: str | Path,
    text_prototypes: str | Path,
    out: str | Path,
    cfg: LearnPrototypesConfig = LearnPrototypesConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    on_iter: Callable[[int, torch.Tensor], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    plot: str | Path | bool | None = None,
    stream: bool | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Learn vision prototypes (VPL phase 1) and write them as a prototypes file (source 'vision').

    Args:
        features_dir: an `extract` folder. cams_dir: a `cam` folder made from it with the text prototypes.
        text_prototypes: the `text-prototypes` file (initialisation, row layout, background-word split).
        out: the prototypes file to write (same rows as ``text_prototypes``, temperature tau_I).
        on_iter: called with ``(iteration, loss)`` before each step (the loss a 0-d tensor on the device: reading
            it waits for the iteration). on_start: called once with ``iters`` (the steps, as many as ``on_iter``
            calls) when the inputs passed their checks.
        plot: the loss-curve PNG; None = ``<out stem>.loss.png`` beside ``out``, False = none.
        stream: force (True) or forbid (False) streaming from scratch shards; None = only above the budget.
        cache_dir: where scratch shards go (default: a hidden folder beside ``out``, removed afterwards).
        overwrite: replace files of another kind at ``out`` / ``plot`` (:func:`vpltool.io.check_outputs`).

    Returns:
        A summary: the metadata written to the file plus ``out``, ``plot``, ``mode``, ``device`` and timings.
    """
    start, out = time.perf_counter(), io.check_writable_target(out, option="--out")
    plot_path = None if plot is False else io.check_writable_target(
        out.with_name(out.stem + ".loss.png") if plot in (None, True) else plot, ".png", "--plot")  # before the descent
    io.check_outputs("learn-prototypes", {"--out": (out, "file", "prototypes:vision"),
                                          "--plot": (plot_path, "file", "loss-curve")}, overwrite=overwrite,
                     inputs={"the extract folder": features_dir, "--cams": cams_dir, "--text": text_prototypes},
                     protected=recorded_folders(features_dir))
    if plot_path is not None and plot_path.suffix.lower() != ".png":  # PNG bytes in a .jpg would mislead
        raise VplError(f"--plot {plot}: the loss curve is a PNG image; give a name ending in .png")
    inp = check_inputs(features_dir, cams_dir, text_prototypes)
    if on_start:
        on_start(cfg.iters)
    seed_everything(cfg.seed)
    device = resolve_device(runtime.device)
    compute = resolve_precision(runtime.precision, device, io.recorded_dtype(*inp.made))  # auto: the inputs' dtype
    numerics = run_numerics(compute, runtime.precision, device)
    io.check_numerics(numerics, *inp.made)
    budget = memory_budget(cfg, device)
    storage = pick_storage(compute, lambda dtype: estimate_bytes(inp, dtype, cfg.pixel_fraction), budget)
    need = estimate_bytes(inp, storage, cfg.pixel_fraction)
    streaming = cfg.regularization == "instance" and (need > budget if stream is None else stream)
    if streaming:
        folder = Path(cache_dir or out.parent)
        folder.mkdir(parents=True, exist_ok=True)
        source: MemorySource | ShardSource = ShardSource(
            Path(tempfile.mkdtemp(prefix=f".{out.name}.shards-", dir=folder)), device, max(1, budget // 4))
    else:
        source = MemorySource(device)
    try:
        got = learn(inp, cfg, source, device, storage, on_iter, threads=runtime.loader_workers(device))
    finally:
        source.cleanup()
    check_descent(got.curve, cfg)
    meta = write_result(out, inp, cfg, got, numerics)
    if plot_path is not None:
        io.write_chart(plot_path, [{"mean CE (nats)": list(enumerate(got.curve))}],
                       title=f"learn-prototypes: tau_I={cfg.tau_i} lr={cfg.lr} {cfg.targets}/{cfg.regularization}",
                       kind="loss-curve")
    return {**meta, "out": str(out), "plot": None if plot_path is None else str(plot_path),
            "mode": "stream" if streaming else "memory", "device": str(device), "precision": str(compute),
            "resident_bytes_estimate": need, "budget_bytes": budget, "chunks": source.n_chunks,
            "shards": len(getattr(source, "paths", [])), "seconds": time.perf_counter() - start,
            "s_per_iter": got.descent_s / (cfg.iters + 1)}


# relative change of the loss below which a descent "did not move": float32 rounding of the loss itself (~6e-8)
STUCK_RTOL = 1e-6


def check_descent(curve: Sequence[float], cfg: LearnPrototypesConfig) -> None:
    """Refuse a degenerate descent before anything is written: a final loss that is not finite, or a loss that did
    not move in ``iters`` >= 1 steps (``--tau-i 1e-30``: the gradient, proportional to tau_I, vanishes in float32,
    and W would be the text prototypes, written as if learnt)."""
    first, last = curve[0], curve[-1]
    if not math.isfinite(last):
        raise VplError(f"learn-prototypes: the loss became {last} after the last iteration; lower --lr "
                       f"(now {cfg.lr:g}) or raise --tau-i (now {cfg.tau_i:g})")
    if cfg.iters >= 1 and abs(last - first) <= STUCK_RTOL * max(abs(first), 1e-12):
        # 4 digits: a stuck loss is float32 rounding of huge logits (x.W / 1e-30), whose 6th digit depends on how the
        # CPU's kernels round (their vector paths change with the CPU and with memory alignment): the same inputs
        # gave 2.98391e+28 on one run of the robustness page and 2.98392e+28 on another
        raise VplError(f"learn-prototypes: the loss did not move in {cfg.iters} iterations ({first:.4g} → {last:.4g} "
                       f"nats), so W stayed the text prototypes; --tau-i {cfg.tau_i:g} or --lr {cfg.lr:g} is too "
                       f"small for a step to change W (defaults: --tau-i {LearnPrototypesConfig.tau_i:g}, --lr "
                       f"{LearnPrototypesConfig.lr:g}); nothing was written")


def write_result(out: Path, inp: Inputs, cfg: LearnPrototypesConfig, got: Learned,
                 numerics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the prototypes file (rows, names and model of the text prototypes; ``numerics``: the run's dtype and
    mode); returns its extra metadata."""
    meta = {
        "text_prototypes": io.file_identity(inp.text.path, source=inp.text.source),
        "tau_i": cfg.tau_i, "iterations": cfg.iters, "lr": cfg.lr, "targets": cfg.targets,
        "threshold": cfg.threshold, "regularization": cfg.regularization,
        "final_loss": got.curve[-1], "final_kl": got.kl, "gap_before": got.gap_before, "gap_after": got.gap_after,
        "loss_curve": subsample(got.curve), "n_pixels": got.n_pixels, "n_images": len(inp.items),
    }
    params = {**to_params(cfg), "inputs": inp.records, "text_prototypes": meta["text_prototypes"]}
    protos = io.Prototypes(got.w, inp.text.row_class, inp.text.row_names, classes=inp.classes,
                           temperature=cfg.tau_i, source="vision", model=inp.text.model, params=params)
    io.write_prototypes(out, protos, **meta, **({} if numerics is None else {"numerics": numerics}))
    return meta


__all__ = [
    "Inputs", "check_inputs", "load_item", "scan", "estimate_bytes", "subsample", "Learned", "learn",
    "run_learn_prototypes", "check_descent", "write_result", "Chunk", "ChunkBuilder", "descend", "loss_and_grad",
    "project_rows",
    "make_targets", "hard_labels", "pool_cams", "sample_pixels", "sampled_count", "memory_budget", "Scan",
    "MemorySource", "ShardSource", "CHUNK_PX", "class_level_chunk", "modality_gap", "target_entropy", "pick_storage",
]  # fmt: skip

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

Chunks of pixels (images sorted by label set, so a chunk mostly shares one row set) are the unit of work. They
live in memory (CUDA: bf16 on the device; CPU: fp16, fp32 maths) or, above the memory budget, in scratch
safetensors shards that are streamed from disk every iteration. See docs/learn-prototypes.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import io
from .config import LearnPrototypesConfig, RuntimeConfig, to_params
from .device import resolve_device, resolve_precision, seed_everything
from .errors import ContractError, VplError

_log = logging.getLogger(__name__)
CURVE_POINTS = 101  # loss-curve samples kept in the file metadata (the PNG draws every iteration)


# --------------------------------------------------------------------------------------------- targets
def pool_cams(cams: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Area-average ``[K, H0, W0]`` CAMs onto the ``(h, w)`` patch grid; returns ``[K, h*w]`` float32 in [0, 1]."""
    if len(cams) == 0:
        return torch.zeros(0, grid[0] * grid[1])
    return F.adaptive_avg_pool2d(cams.float()[None], grid)[0].flatten(1)


def make_targets(cams: torch.Tensor, x: torch.Tensor, bg_prototypes: torch.Tensor, tau_t: float, mode: str = "hard",
                 threshold: float = 0.4, bg_exponent: float = 1.0) -> torch.Tensor:
    """Per-pixel target distributions over ``[K present classes; M background rows]``.

    Args:
        cams: ``[K, hw]`` float in [0, 1], text-prototype CAMs on the patch grid (see :func:`pool_cams`).
        x: ``[hw, D]`` L2-normalised pixel features.
        bg_prototypes: ``[M, D]`` unit background rows of the text prototypes, M >= 1.
        tau_t: the text prototypes' temperature (1 / CLIP logit scale).
        mode: 'hard' (paper: class argmax where ``max cam >= threshold``, else background) or 'soft'
            (``[cams, (1 - max cam) ** bg_exponent]`` normalised per pixel).

    Returns:
        ``[hw, K + M]`` float32, rows sum to 1.
    """
    hw, k = x.shape[0], cams.shape[0]
    peak, arg = cams.max(0) if k else (torch.zeros(hw), torch.zeros(hw, dtype=torch.long))
    if mode == "hard":
        fg = peak >= threshold if k else torch.zeros(hw, dtype=torch.bool)
        cls = torch.zeros(hw, k)
        cls[fg.nonzero().flatten(), arg[fg]] = 1.0
        bg = (~fg).float()
    elif mode == "soft":
        bg = (1.0 - peak).clamp_min(0) ** bg_exponent
        total = (cams.sum(0) + bg).clamp_min(1e-12)
        cls, bg = (cams / total).T, bg / total
    else:
        raise VplError(f"--targets {mode!r}: choose hard or soft")
    # background words keep their meaning: each gets the share the text prototypes give it at this pixel
    split = (x.float() @ bg_prototypes.float().T / tau_t).softmax(1)  # [hw, M]
    return torch.cat([cls, bg[:, None] * split], 1)


def hard_labels(cams: torch.Tensor, labels: Sequence[int], threshold: float) -> torch.Tensor:
    """``[hw]`` int64 class id (0 = background) of the hard target rule, whatever the targets mode."""
    if len(labels) == 0:
        return torch.zeros(cams.shape[1], dtype=torch.long)
    peak, arg = cams.max(0)
    return torch.where(peak >= threshold, torch.as_tensor(list(labels))[arg], 0)


# --------------------------------------------------------------------------------------------- chunks
@dataclass
class Chunk:
    """A block of pixels that share one row set; the unit of work of every iteration.

    Attributes:
        x: ``[n, D]`` unit pixel features (fp16 / bf16 storage, or fp32).
        targets: ``[n, R]`` float32 target distributions over ``rows`` (each row sums to 1).
        rows: ``[R]`` int64 rows of W in play (present classes of the chunk's images, then background rows).
        absent: ``[n, R]`` bool, True where a row is not among the pixel's image rows; None if none is.
        weight: ``[n]`` float32 pixel weights (class level), None for 1.
    """

    x: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    absent: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"x": self.x, "targets": self.targets, "rows": self.rows}
        out.update({k: v for k, v in (("absent", self.absent), ("weight", self.weight)) if v is not None})
        return out

    def to(self, device: torch.device) -> Chunk:
        moved = {k: v.to(device, non_blocking=True) for k, v in self.tensors().items()}
        return Chunk(**moved)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


@dataclass
class ChunkBuilder:
    """Packs consecutive images (sorted by label set) into chunks of about ``chunk_px`` pixels.

    A label-set change starts a new chunk once the current one is a quarter full: large groups give homogeneous
    chunks (no mask), small groups share a chunk under an ``absent`` mask instead of costing one chunk each.
    """

    class_rows: torch.Tensor  # [C] row of each class 1..C
    bg_rows: torch.Tensor  # [M]
    chunk_px: int
    dtype: torch.dtype
    emit: Callable[[Chunk], None]
    _pending: list[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]] = field(default_factory=list)
    _px: int = 0

    def add(self, x: torch.Tensor, targets: torch.Tensor, labels: Sequence[int]) -> None:
        """``x`` ``[n, D]`` unit rows, ``targets`` ``[n, K + M]`` in sorted-label then background order."""
        labels = tuple(labels)
        if self._pending and (self._px + len(x) > self.chunk_px
                              or (labels != self._pending[-1][2] and self._px >= self.chunk_px // 4)):
            self.flush()
        self._pending.append((x, targets, labels))
        self._px += len(x)

    def flush(self) -> None:
        if not self._pending:
            return
        classes = sorted({c for _, _, labels in self._pending for c in labels})
        col = {c: i for i, c in enumerate(classes)}
        kc, m = len(classes), len(self.bg_rows)
        rows = torch.cat([self.class_rows[[c - 1 for c in classes]], self.bg_rows])
        targets = torch.zeros(self._px, kc + m)
        mixed = len({labels for _, _, labels in self._pending}) > 1
        absent = torch.ones(self._px, kc + m, dtype=torch.bool) if mixed else None
        start = 0
        for x, t, labels in self._pending:
            cols = torch.tensor([col[c] for c in labels] + list(range(kc, kc + m)), dtype=torch.long)
            targets[start:start + len(x), cols] = t
            if absent is not None:
                absent[start:start + len(x), cols] = False
            start += len(x)
        xs = torch.cat([x for x, _, _ in self._pending]).to(self.dtype)
        self._pending, self._px = [], 0
        self.emit(Chunk(xs, targets, rows, absent))


# --------------------------------------------------------------------------------------------- kernels
def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of two bf16 matrices with an fp32 result (fp32 accumulate; CUDA writes fp32 directly)."""
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # older torch / GPU without the fp32-output kernel
            pass
    return (a @ b).float()


def chunk_loss_grad(ch: Chunk, w: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of one chunk and its gradient for the chunk's rows, in cosine units.

    Args:
        w: ``[N, D]`` float32 prototypes (unit rows).
        tau: tau_I.

    Returns:
        ``sum_p v_p CE_p`` (float64 scalar, nats) and ``sum_p v_p (P_p - T_p) x_p`` ``[R, D]`` float32, the
        gradient of ``tau * sum_p v_p CE_p`` (cosine units: the 1/tau of the logits cancels the scale).
    """
    wr = w[ch.rows]  # [R, D]
    bf16 = ch.x.dtype == torch.bfloat16
    x = ch.x if bf16 else ch.x.float()  # fp16 storage: upcast a cache-sized block, fp32 maths
    logits = _mm_f32(x, wr.to(x.dtype).T) if bf16 else x @ wr.T  # [n, R] cosines
    logits.mul_(1.0 / tau)
    if ch.absent is not None:
        logits.masked_fill_(ch.absent, float("-inf"))
    logp = torch.log_softmax(logits, 1)
    if ch.absent is not None:  # 0 * -inf would be NaN; absent rows have zero target anyway
        logp.masked_fill_(ch.absent, 0.0)
    ce = -(ch.targets * logp).sum(1)  # [n]
    g = logp.exp_()
    if ch.absent is not None:
        g.masked_fill_(ch.absent, 0.0)
    g.sub_(ch.targets)  # P - T: targets sum to 1 per pixel
    if ch.weight is not None:
        ce, g = ce * ch.weight, g.mul_(ch.weight[:, None])
    grad = _mm_f32(g.to(x.dtype).T, x) if bf16 else g.T @ x  # [R, D]
    return ce.sum(dtype=torch.float64), grad


def _evaluated(chunks: Iterable[Chunk], w: torch.Tensor, tau: float, pool: ThreadPoolExecutor | None, workers: int
               ) -> Iterator[tuple[Chunk, torch.Tensor, torch.Tensor]]:
    """``(chunk, loss, grad)`` in chunk order; with a pool, ``workers`` chunks at a time (streaming stays lazy)."""
    window: list[Chunk] = []
    for ch in itertools.chain(chunks, [None]):
        if ch is not None:
            window.append(ch)
        if window and (ch is None or pool is None or len(window) == workers):
            results = pool.map(lambda c: chunk_loss_grad(c, w, tau), window) if pool else [
                chunk_loss_grad(c, w, tau) for c in window]
            yield from ((c, part, g) for c, (part, g) in zip(window, results))
            window = []


def loss_and_grad(chunks: Iterable[Chunk], w: torch.Tensor, tau: float, total_weight: float,
                  pool: ThreadPoolExecutor | None = None, workers: int = 1) -> tuple[float, torch.Tensor]:
    """Full-batch mean cross-entropy (nats) and the gradient of the objective ``tau**2 * mean CE``.

    The tau**2 scale makes ``lr`` a step in logit units whatever tau_I is: a step ``dw`` moves the logits by
    ``x . dw / tau`` and ``dw = -lr * tau * mean (P - T) x``, so the logit change is ``lr`` times an O(1) term.
    With ``tau * mean CE`` (cosine units) the paper's lr 10 oscillates or diverges on CLIP-like data
    (docs/learn-prototypes.md); ``tau**2`` makes lr 10 at tau_I 0.03 equal to a cosine-unit lr of 0.3.

    Returns:
        ``mean_p v_p CE_p`` and ``tau * mean_p v_p (P_p - T_p) x_p`` ``[N, D]`` float32.
    """
    loss = torch.zeros((), dtype=torch.float64, device=w.device)
    grad = torch.zeros_like(w)
    for ch, part, g in _evaluated(chunks, w, tau, pool, workers):  # chunk order: same sums with or without a pool
        loss += part
        grad.index_add_(0, ch.rows, g)
    return float(loss) / total_weight, grad * (tau / total_weight)


def project_rows(w: torch.Tensor) -> torch.Tensor:
    """Rows back onto the unit sphere (the norm bound eta = 1 of Theorem 2, where CLIP's embeddings live)."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def descend(chunks: Callable[[], Iterable[Chunk]], z: torch.Tensor, *, tau: float, lr: float, iters: int,
            total_weight: float, on_iter: Callable[[int, float], None] | None = None
            ) -> tuple[torch.Tensor, list[float]]:
    """Projected gradient descent from ``z`` ``[N, D]`` (Alg. 1): ``W <- rownorm(W - lr * grad)``.

    Args:
        chunks: called once per iteration, yields the whole training set.
        total_weight: ``sum_p v_p`` (the pixel count at instance level).

    Returns:
        ``W`` ``[N, D]`` float32 unit rows and the losses ``L(W_0) .. L(W_iters)`` (mean CE, nats).
    """
    w, curve = project_rows(z.float()), []
    with _cpu_workers(z.device) as (pool, workers):
        for it in range(iters):
            loss, grad = loss_and_grad(chunks(), w, tau, total_weight, pool, workers)
            if not math.isfinite(loss):
                raise VplError(f"loss became {loss} at iteration {it}; lower --lr or raise --tau-i")
            curve.append(loss)
            if on_iter:
                on_iter(it, loss)
            w = project_rows(w - lr * grad)
        curve.append(loss_and_grad(chunks(), w, tau, total_weight, pool, workers)[0])
    return w, curve


def _init_worker() -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


@contextlib.contextmanager
def _cpu_workers(device: torch.device) -> Iterator[tuple[ThreadPoolExecutor | None, int]]:
    """On CPU: one chunk per core in Python threads, each single-threaded, and denormals flushed to zero.

    Why: the matmuls are skinny (``[n, 512] x [512, ~26]``); OpenMP's barriers between cores cost more than they
    give, and on a busy 2-core host 2 OpenMP threads ran 7x slower than 1. exp() of very negative logits makes
    fp32 denormals (10-100x slower on x86); flushing values below 1e-38 changes nothing. FTZ is per thread, so
    every worker sets it. torch has no getter for it: the default (off) is restored.
    """
    if device.type != "cpu":
        yield None, 1
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    pool = ThreadPoolExecutor(threads, initializer=_init_worker) if threads > 1 else None
    try:
        yield pool, threads
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def modality_gap(w: torch.Tensor, z: torch.Tensor, class_rows: torch.Tensor, centroids: torch.Tensor,
                 counts: torch.Tensor) -> dict[str, float]:
    """The two gap numbers reported before (W = Z) and after learning.

    Args:
        w, z: ``[N, D]`` unit prototypes (learned, text).
        class_rows: ``[C]`` row of each class. centroids: ``[C, D]`` unit mean feature of each class's
            hard-target pixels. counts: ``[C]`` pixels behind each centroid (classes with 0 are skipped).

    Returns:
        ``frobenius`` = ``||Z_cls - W_cls||_F`` (Theorem 1, unsquared) and ``region`` = mean over classes of
        ``||c_n - w_n||_2`` (the paper's "Gap": distance between prototype and its region's features).
    """
    wc, zc = w[class_rows].float(), z[class_rows].float()
    seen = counts > 0
    region = (centroids[seen] - wc[seen]).norm(dim=1).mean() if seen.any() else torch.tensor(float("nan"))
    return {"frobenius": float((zc - wc).norm()), "region": float(region)}


# --------------------------------------------------------------------------------------------- data sources
class MemorySource:
    """Every chunk resident (CUDA: on the device)."""

    def __init__(self, device: torch.device):
        self.device, self.chunks = device, []

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def add(self, ch: Chunk) -> None:
        self.chunks.append(ch.to(self.device))

    def close(self) -> None:
        return None

    def cleanup(self) -> None:
        return None

    def __call__(self) -> Iterable[Chunk]:
        return self.chunks


class ShardSource:
    """Chunks written to scratch safetensors shards of about ``shard_bytes``, streamed back every iteration.

    Private scratch (deleted by :meth:`cleanup`), not a vpltool contract file. The next shard is read by a
    background thread while the current one is being used, so at most two shards are in memory.
    """

    def __init__(self, folder: Path, device: torch.device, shard_bytes: int):
        self.folder, self.device, self.shard_bytes = folder, device, shard_bytes
        self.paths: list[Path] = []
        self.n_chunks = 0
        self._buffer: list[Chunk] = []
        self._bytes = 0
        self._pool = ThreadPoolExecutor(1)

    def add(self, ch: Chunk) -> None:
        self.n_chunks += 1
        self._buffer.append(ch)
        self._bytes += ch.nbytes
        if self._bytes >= self.shard_bytes:
            self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        from safetensors.torch import save_file

        if not self._buffer:
            return
        path = self.folder / f"shard_{len(self.paths):05d}.safetensors"
        tensors = {f"{j}.{k}": v.contiguous() for j, ch in enumerate(self._buffer) for k, v in ch.tensors().items()}
        save_file(tensors, str(path))
        self.paths.append(path)
        self._buffer, self._bytes = [], 0

    def _load(self, path: Path) -> list[Chunk]:
        from safetensors.torch import load_file

        flat = load_file(str(path))
        parts: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            j, name = key.split(".", 1)
            parts.setdefault(int(j), {})[name] = value
        return [Chunk(**parts[j]).to(self.device) for j in sorted(parts)]

    def __call__(self) -> Iterator[Chunk]:
        if not self.paths:
            return
        pending = self._pool.submit(self._load, self.paths[0])
        for nxt in [*self.paths[1:], None]:
            chunks = pending.result()
            if nxt is not None:
                pending = self._pool.submit(self._load, nxt)
            yield from chunks

    def cleanup(self) -> None:
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------- the stage
CHUNK_PX = {"cpu": 4096, "cuda": 1 << 17}  # CPU: an 8 MB fp32 block stays in L3; CUDA: few launches per iteration


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


def check_inputs(features_dir: str | Path, cams_dir: str | Path, text_prototypes: str | Path) -> Inputs:
    """Check that features, CAMs and text prototypes belong together; ContractError naming the file if not."""
    features_dir, cams_dir = Path(features_dir), Path(cams_dir)
    record = io.read_stage_record(features_dir, "extract")
    cam_record = io.read_stage_record(cams_dir, "cam")
    feat_sha = io.sha256_file(io.stage_record_path(features_dir))
    if cam_record.get("inputs", {}).get("features") != feat_sha:
        raise ContractError(f"{cams_dir}: these CAMs were made from other features than {features_dir}; "
                            "re-run `vpltool cam` on this features folder")
    classes = record["classes"]
    ids = sorted(p.stem for p in features_dir.glob("*.safetensors"))
    if not ids:
        raise VplError(f"{features_dir}: no features files; re-run `vpltool extract`")
    dim = io.read_features(io.feature_path(features_dir, ids[0]), classes=classes, dense_only=True).dense.shape[-1]
    items = []
    for item_id in ids:  # headers only: labels to sort by, grids for the memory estimate
        path, cam = io.feature_path(features_dir, item_id), io.cam_path(cams_dir, item_id)
        head = io.read_header(path)
        if not cam.is_file():
            raise ContractError(f"{cam}: missing; the cam folder does not cover the features of {features_dir}")
        if "vpltool.grid" not in head:
            raise ContractError(f"{path}: no 'vpltool.grid' metadata; re-run `vpltool extract`")
        labels = tuple(sorted(int(c) for c in json.loads(head.get("vpltool.labels", "[]"))))
        items.append((item_id, labels, tuple(json.loads(head["vpltool.grid"]))))
    text = io.read_prototypes(text_prototypes, classes=classes, dim=dim)
    if len(text.background_rows()) == 0:
        raise VplError(f"{text_prototypes}: no background rows; learn-prototypes needs them for the background "
                       "pixels (make text prototypes with --background auto, voc, coco or a word list)")
    if cam_record["params"].get("prototypes", {}).get("sha256") != io.sha256_file(text_prototypes):
        _log.warning("%s: the CAMs were made from other prototypes than %s", cams_dir, text_prototypes)
    items.sort(key=lambda it: (len(it[1]), it[1], it[0]))
    records = {"features": feat_sha, "cams": io.sha256_file(io.stage_record_path(cams_dir))}
    return Inputs(features_dir, cams_dir, text, classes, dim, items, records)


def load_item(inp: Inputs, item_id: str, labels: tuple[int, ...], cfg: LearnPrototypesConfig
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: unit features ``[hw, D]``, targets ``[hw, K + M]`` (sorted labels), hard labels ``[hw]``."""
    feats = io.read_features(io.feature_path(inp.features, item_id), classes=inp.classes, dense_only=True)
    if feats.dense.shape[-1] != inp.dim:
        raise ContractError(f"{feats.file.path}: {feats.dense.shape[-1]}-d features, expected {inp.dim}-d")
    cam_file = io.cam_path(inp.cams, item_id)
    cams, cam_labels, _ = io.read_cam(cam_file, classes=inp.classes)
    if tuple(sorted(cam_labels.tolist())) != labels:
        raise ContractError(f"{cam_file}: CAMs for classes {cam_labels.tolist()}, but the image is labelled "
                            f"{list(labels)}; re-run `vpltool cam`")
    cams = pool_cams(cams[cam_labels.argsort()], feats.grid)  # [K, hw] in sorted-label order
    x = F.normalize(feats.dense.flatten(0, 1), dim=1)  # [hw, D]
    bg = inp.text.vectors[inp.text.background_rows()]
    targets = make_targets(cams, x, bg, inp.text.temperature, cfg.targets, cfg.threshold, cfg.bg_exponent)
    return x, targets, hard_labels(cams, labels, cfg.threshold)


def sampled_count(n: int, fraction: float) -> int:
    """Pixels an image of ``n`` keeps under ``--pixel-fraction``: ``round(fraction * n)``, at least one."""
    return max(1, round(fraction * n))


def sample_pixels(tensors: tuple[torch.Tensor, ...], fraction: float, seed: int, index: int
                  ) -> tuple[torch.Tensor, ...]:
    """The same ``round(fraction * n)`` rows (at least one, in order) of each ``[n, ...]`` tensor.

    Drawn from ``(seed, index)`` alone, so a run is reproducible and an image's sample does not depend on which
    other images are in the set.
    """
    n = len(tensors[0])
    keep = sampled_count(n, fraction)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    rows = torch.randperm(n, generator=gen)[:keep].sort().values
    return tuple(tensor[rows] for tensor in tensors)


@dataclass
class Scan:
    """Statistics of one pass over the data (features never kept here)."""

    n_px: int
    entropy: float  # sum over pixels of H(T_p), nats
    centroid_sum: torch.Tensor  # [C, D] sum of unit features of each class's hard-target pixels
    counts: torch.Tensor  # [C]
    anchor_sum: torch.Tensor | None  # [N, D] sum_p T_pr x_p (class level)
    pairs: dict[tuple[int, ...], torch.Tensor] | None  # label set -> [K+M, K+M] sum_p T_p T_p^T (class level)


def scan(inp: Inputs, cfg: LearnPrototypesConfig, sink: ChunkBuilder | None,
         on_item: Callable[[int], None] | None = None) -> Scan:
    """Read every image once: feed ``sink`` with pixels and targets, accumulate gap / class-level statistics."""
    n_rows, c = len(inp.text.vectors), len(inp.classes) - 1
    class_rows, bg_rows = inp.text.class_rows(), inp.text.background_rows()
    level = cfg.regularization == "class"
    st = Scan(0, 0.0, torch.zeros(c, inp.dim, dtype=torch.float64), torch.zeros(c, dtype=torch.long),
              torch.zeros(n_rows, inp.dim, dtype=torch.float64) if level else None, {} if level else None)
    for index, (item_id, labels, _) in enumerate(inp.items):
        x, t, hard = load_item(inp, item_id, labels, cfg)
        if cfg.pixel_fraction < 1.0:
            x, t, hard = sample_pixels((x, t, hard), cfg.pixel_fraction, cfg.seed, index)
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


def class_level_chunk(st: Scan, class_rows: torch.Tensor, bg_rows: torch.Tensor) -> Chunk:
    """Theorem 2's class-level problem as one weighted chunk over all N rows.

    Each pixel is replaced by the anchor ``a_r = normalize(sum_p T_pr x_p)`` of every row r it belongs to, with
    weight ``T_pr``; summing per label set g gives one pseudo-pixel per (g, r): feature ``a_r``, weight
    ``m_gr = sum_{p in g} T_pr``, target ``sum_{p in g} T_pr T_p / m_gr``, softmax over g's rows. Its loss equals
    the instance-level loss with ``x_p`` replaced by its anchors (exactly, by linearity in the targets).
    """
    n_rows = len(st.anchor_sum)
    anchors = F.normalize(st.anchor_sum.float(), dim=1)
    xs, targets, absent, weight = [], [], [], []
    for labels, pair in st.pairs.items():
        rows = torch.cat([class_rows[[k - 1 for k in labels]], bg_rows])
        mass = pair.sum(1)
        for j in (mass > 0).nonzero().flatten().tolist():
            t = torch.zeros(n_rows, dtype=torch.float64)
            t[rows] = pair[j] / mass[j]
            a = torch.ones(n_rows, dtype=torch.bool)
            a[rows] = False
            xs.append(anchors[rows[j]])
            targets.append(t.float())
            absent.append(a)
            weight.append(float(mass[j]))
    return Chunk(torch.stack(xs), torch.stack(targets), torch.arange(n_rows), torch.stack(absent),
                 torch.tensor(weight, dtype=torch.float32))


def target_entropy(ch: Chunk) -> float:
    """``sum_p v_p H(T_p)`` in nats: CE minus this is the KL of Eq. 7."""
    h = -(ch.targets * ch.targets.clamp_min(1e-30).log()).sum(1)
    return float(h.double().sum() if ch.weight is None else (h * ch.weight).double().sum())


def memory_budget(cfg: LearnPrototypesConfig, device: torch.device) -> int:
    """Bytes the resident pixels may take: ``max_memory_gb``, or (None) 60% of free device memory / RAM."""
    if cfg.max_memory_gb is not None:
        return int(cfg.max_memory_gb * 1e9)
    if device.type == "cuda":
        return int(0.6 * torch.cuda.mem_get_info(device)[0])
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = 8 * 10**9
    return int(0.6 * free)


def estimate_bytes(inp: Inputs, storage: torch.dtype, pixel_fraction: float = 1.0) -> int:
    """Resident size of all chunks: features in ``storage``, fp32 targets and a bool mask per row in play."""
    m = len(inp.text.background_rows())
    itemsize = torch.empty((), dtype=storage).element_size()
    return int(sum(sampled_count(h * w, pixel_fraction) * (inp.dim * itemsize + 5 * (len(labels) + m))
                   for _, labels, (h, w) in inp.items))


def plot_curve(curve: Sequence[float], path: str | Path, title: str) -> Path:
    """Draw the loss curve as a PNG (PIL only, no plotting dependency): x = iteration, y = mean CE in nats."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 720, 420, 70, 20, 30, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = min(curve), max(curve)
    span = (hi - lo) or 1.0
    pw, ph = width - left - right, height - top - bottom
    n = max(len(curve) - 1, 1)
    points = [(left + pw * i / n, top + ph * (1 - (v - lo) / span)) for i, v in enumerate(curve)]
    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    for frac in (0.0, 0.5, 1.0):
        y = top + ph * (1 - frac)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"{lo + frac * span:.4g}", fill="black")
    draw.text((left, height - bottom + 8), "0", fill="black")
    draw.text((left + pw - 30, height - bottom + 8), str(len(curve) - 1), fill="black")
    draw.text((left + pw // 2 - 30, height - bottom + 22), "iteration", fill="black")
    draw.text((left, 8), title, fill="black")
    draw.line(points if len(points) > 1 else points * 2, fill=(31, 119, 180), width=2)
    path = Path(path)
    with io.atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def subsample(curve: Sequence[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """``[[iteration, loss], ...]`` at about ``points`` evenly spaced iterations, first and last included."""
    last = len(curve) - 1
    idx = sorted({round(i * last / max(points - 1, 1)) for i in range(points)}) if last > 0 else [0]
    return [[i, round(curve[i], 6)] for i in idx]


def check_config(cfg: LearnPrototypesConfig) -> None:
    if cfg.tau_i <= 0 or cfg.lr <= 0 or cfg.iters < 0:
        raise VplError("--tau-i and --lr must be > 0 and --iters >= 0")
    if not 0.0 <= cfg.threshold <= 1.0:
        raise VplError(f"--threshold {cfg.threshold}: must be in [0, 1]")
    if cfg.targets not in ("hard", "soft"):
        raise VplError(f"--targets {cfg.targets!r}: choose hard or soft")
    if cfg.regularization not in ("instance", "class"):
        raise VplError(f"--regularization {cfg.regularization!r}: choose instance or class")
    if not 0.0 < cfg.pixel_fraction <= 1.0:
        raise VplError(f"--pixel-fraction {cfg.pixel_fraction}: must be in (0, 1]")


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
          storage: torch.dtype, on_iter: Callable[[int, float], None] | None = None) -> Learned:
    """Scan the data into ``source`` (instance level) or the class-level pseudo-pixels, then descend from Z."""
    class_rows, bg_rows = inp.text.class_rows(), inp.text.background_rows()
    instance = cfg.regularization == "instance"
    sink = ChunkBuilder(class_rows, bg_rows, CHUNK_PX[device.type], storage, source.add) if instance else None
    st = scan(inp, cfg, sink)
    source.close()
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
    on_iter: Callable[[int, float], None] | None = None,
    plot: str | Path | bool | None = None,
    stream: bool | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Learn vision prototypes (VPL phase 1) and write them as a prototypes file (source 'vision').

    Args:
        features_dir: an `extract` folder. cams_dir: a `cam` folder made from it with the text prototypes.
        text_prototypes: the `text-prototypes` file (initialisation, row layout, background-word split).
        out: the prototypes file to write (same rows as ``text_prototypes``, temperature tau_I).
        on_iter: called with ``(iteration, loss)`` before each step.
        plot: the loss-curve PNG; None = ``<out stem>.loss.png`` beside ``out``, False = none.
        stream: force (True) or forbid (False) streaming from scratch shards; None = only above the budget.
        cache_dir: where scratch shards go (default: a hidden folder beside ``out``, removed afterwards).

    Returns:
        A summary: the metadata written to the file plus ``out``, ``plot``, ``mode``, ``device`` and timings.
    """
    check_config(cfg)
    start, out = time.perf_counter(), Path(out)
    inp = check_inputs(features_dir, cams_dir, text_prototypes)
    seed_everything(cfg.seed)
    device = resolve_device(runtime.device)
    compute = resolve_precision(runtime.precision, device)
    storage = torch.bfloat16 if compute == torch.bfloat16 else torch.float16  # fp16 keeps 3 more mantissa bits
    budget, need = memory_budget(cfg, device), estimate_bytes(inp, storage, cfg.pixel_fraction)
    streaming = cfg.regularization == "instance" and (need > budget if stream is None else stream)
    if streaming:
        folder = Path(cache_dir or out.parent)
        folder.mkdir(parents=True, exist_ok=True)
        source: MemorySource | ShardSource = ShardSource(
            Path(tempfile.mkdtemp(prefix=f".{out.name}.shards-", dir=folder)), device, max(1, budget // 4))
    else:
        source = MemorySource(device)
    try:
        got = learn(inp, cfg, source, device, storage, on_iter)
    finally:
        source.cleanup()
    meta = write_result(out, inp, cfg, got)
    plot_path = None
    if plot is not False:
        plot_path = plot_curve(got.curve, out.with_name(out.stem + ".loss.png") if plot in (None, True) else plot,
                               f"learn-prototypes: tau_I={cfg.tau_i} lr={cfg.lr} {cfg.targets}/{cfg.regularization}")
    return {**meta, "out": str(out), "plot": None if plot_path is None else str(plot_path),
            "mode": "stream" if streaming else "memory", "device": str(device), "precision": str(compute),
            "resident_bytes_estimate": need, "budget_bytes": budget, "chunks": source.n_chunks,
            "shards": len(getattr(source, "paths", [])), "seconds": time.perf_counter() - start,
            "s_per_iter": got.descent_s / (cfg.iters + 1)}


def write_result(out: Path, inp: Inputs, cfg: LearnPrototypesConfig, got: Learned) -> dict[str, Any]:
    """Write the prototypes file (rows, names and model of the text prototypes); returns its extra metadata."""
    meta = {
        "text_prototypes": {"path": str(inp.text.path), "sha256": io.sha256_file(inp.text.path),
                            "source": inp.text.source},
        "tau_i": cfg.tau_i, "iterations": cfg.iters, "lr": cfg.lr, "targets": cfg.targets,
        "threshold": cfg.threshold, "regularization": cfg.regularization,
        "final_loss": got.curve[-1], "final_kl": got.kl, "gap_before": got.gap_before, "gap_after": got.gap_after,
        "loss_curve": subsample(got.curve), "n_pixels": got.n_pixels, "n_images": len(inp.items),
    }
    params = {**to_params(cfg), "inputs": inp.records, "text_prototypes": meta["text_prototypes"]}
    protos = io.Prototypes(got.w, inp.text.row_class, inp.text.row_names, classes=inp.classes,
                           temperature=cfg.tau_i, source="vision", model=inp.text.model, params=params)
    io.write_prototypes(out, protos, **meta)
    return meta

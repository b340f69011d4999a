"""VPL phase 1 descent: projected gradient descent on the prototypes W over chunks of pixels (Alg. 1).

Chunks of pixels (images sorted by label set, so a chunk mostly shares one row set) are the unit of work: each
iteration is, per chunk, two skinny products ``x W_rows^T`` and ``(P - T)^T x`` (see :func:`chunk_loss_grad`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import VplError


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
    x = ch.x if bf16 or ch.x.dtype == torch.float32 else ch.x.float()  # fp16 storage: upcast a cache-sized block
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


def skinny_products(ch: Chunk, w: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the two products of :func:`chunk_loss_grad`, on the same shapes and storage: ``x W_rows^T`` and
    ``G^T x`` (``G`` the first product itself). The floor of one iteration, which benchmarks compare the stage to."""
    wr = w[ch.rows]
    x = ch.x if ch.x.dtype in (torch.float32, torch.bfloat16) else ch.x.float()
    logits = _mm_f32(x, wr.to(x.dtype).T) if x.dtype == torch.bfloat16 else x @ wr.T
    grad = _mm_f32(logits.to(x.dtype).T, x) if x.dtype == torch.bfloat16 else logits.T @ x
    return torch.zeros((), dtype=torch.float64), grad


Kernel = Callable[[Chunk, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _evaluated(chunks: Iterable[Chunk], w: torch.Tensor, tau: float, pool: ThreadPoolExecutor | None, workers: int,
               kernel: Kernel = chunk_loss_grad) -> Iterator[tuple[Chunk, torch.Tensor, torch.Tensor]]:
    """``(chunk, loss, grad)`` in chunk order; with a pool, ``workers`` chunks at a time (streaming stays lazy)."""
    window: list[Chunk] = []
    for ch in itertools.chain(chunks, [None]):
        if ch is not None:
            window.append(ch)
        if window and (ch is None or pool is None or len(window) == workers):
            results = pool.map(lambda c: kernel(c, w, tau), window) if pool else [kernel(c, w, tau) for c in window]
            yield from ((c, part, g) for c, (part, g) in zip(window, results))
            window = []


def loss_and_grad(chunks: Iterable[Chunk], w: torch.Tensor, tau: float, total_weight: float,
                  pool: ThreadPoolExecutor | None = None, workers: int = 1, kernel: Kernel = chunk_loss_grad
                  ) -> tuple[float, torch.Tensor]:
    """:func:`mean_loss_and_grad` with the loss read as a float (a wait for the device: not in the descent)."""
    loss, grad = mean_loss_and_grad(chunks, w, tau, total_weight, pool, workers, kernel)
    return float(loss), grad


def mean_loss_and_grad(chunks: Iterable[Chunk], w: torch.Tensor, tau: float, total_weight: float,
                       pool: ThreadPoolExecutor | None = None, workers: int = 1, kernel: Kernel = chunk_loss_grad
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch mean cross-entropy (nats) and the gradient of the objective ``tau**2 * mean CE``.

    The tau**2 scale makes ``lr`` a step in logit units whatever tau_I is: a step ``dw`` moves the logits by
    ``x . dw / tau`` and ``dw = -lr * tau * mean (P - T) x``, so the logit change is ``lr`` times an O(1) term.
    With ``tau * mean CE`` (cosine units) the paper's lr 10 oscillates or diverges on CLIP-like data
    (docs/learn-prototypes.md); ``tau**2`` makes lr 10 at tau_I 0.03 equal to a cosine-unit lr of 0.3.

    Returns:
        ``mean_p v_p CE_p`` (a float64 scalar on ``w``'s device, not read) and ``tau * mean_p v_p (P_p - T_p) x_p``
        ``[N, D]`` float32.
    """
    loss = torch.zeros((), dtype=torch.float64, device=w.device)
    grad = torch.zeros_like(w)
    for ch, part, g in _evaluated(chunks, w, tau, pool, workers, kernel):  # chunk order: same sums with or without
        loss += part
        grad.index_add_(0, ch.rows, g)
    return loss / total_weight, grad * (tau / total_weight)


def project_rows(w: torch.Tensor) -> torch.Tensor:
    """Rows back onto the unit sphere (the norm bound eta = 1 of Theorem 2, where CLIP's embeddings live)."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def descend(chunks: Callable[[], Iterable[Chunk]], z: torch.Tensor, *, tau: float, lr: float, iters: int,
            total_weight: float, on_iter: Callable[[int, torch.Tensor], None] | None = None
            ) -> tuple[torch.Tensor, list[float]]:
    """Projected gradient descent from ``z`` ``[N, D]`` (Alg. 1): ``W <- rownorm(W - lr * grad)``.

    The losses stay on the device: they are read every ``READ_EVERY`` iterations and at the end (the descent's only
    waits for the device), and a read names the first iteration whose loss is not finite.

    Args:
        chunks: called once per iteration, yields the whole training set.
        total_weight: ``sum_p v_p`` (the pixel count at instance level).
        on_iter: called before each step with ``(iteration, loss)``, the loss a 0-d tensor on the device (reading
            it would make the host wait for the iteration).

    Returns:
        ``W`` ``[N, D]`` float32 unit rows and the losses ``L(W_0) .. L(W_iters)`` (mean CE, nats).
    """
    w, losses = project_rows(z.float()), []
    with cpu_workers(z.device) as (pool, workers):
        for it in range(iters):
            loss, grad = mean_loss_and_grad(chunks(), w, tau, total_weight, pool, workers)
            losses.append(loss)
            if on_iter:
                on_iter(it, loss)
            w = project_rows(w - lr * grad)
            if (it + 1) % READ_EVERY == 0:
                _check_losses(losses, it + 1 - READ_EVERY)
        losses.append(mean_loss_and_grad(chunks(), w, tau, total_weight, pool, workers)[0])
    _check_losses(losses, iters - iters % READ_EVERY, last=iters)
    return w, torch.stack(losses).tolist()


READ_EVERY = 100  # descent iterations between reads of the losses


def _check_losses(losses: list[torch.Tensor], first: int, last: int | None = None) -> None:
    """One wait for the device: are ``losses[first:]`` finite? Else VplError naming the first bad iteration (below
    ``last``: the loss at W_iters, after the last step, is left to the caller's check of the curve)."""
    window = torch.stack(losses[first:])
    if bool(torch.isfinite(window).all()):
        return
    for it, loss in enumerate(window.tolist(), start=first):
        if not math.isfinite(loss) and (last is None or it < last):
            raise VplError(f"loss became {loss} at iteration {it}; lower --lr or raise --tau-i")


def _init_worker() -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)


@contextlib.contextmanager
def cpu_workers(device: torch.device) -> Iterator[tuple[ThreadPoolExecutor | None, int]]:
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


@dataclass
class Scan:
    """Statistics of one pass over the data (features never kept here)."""

    n_px: int
    entropy: float  # sum over pixels of H(T_p), nats
    centroid_sum: torch.Tensor  # [C, D] sum of unit features of each class's hard-target pixels
    counts: torch.Tensor  # [C]
    anchor_sum: torch.Tensor | None  # [N, D] sum_p T_pr x_p (class level)
    pairs: dict[tuple[int, ...], torch.Tensor] | None  # label set -> [K+M, K+M] sum_p T_p T_p^T (class level)


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

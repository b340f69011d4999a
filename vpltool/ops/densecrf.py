"""The dense CRF (Krähenbühl & Koltun 2011) of `crf` and `predict --crf`, and its two backends; one owner.

The model, as pydensecrf's ``DenseCRF2D`` with ``addPairwiseGaussian`` + ``addPairwiseBilateral`` computes it:

* unary ``U = -log(clip(P, 1e-5, 1))`` (:func:`unary`); ``Q_0 = softmax(-U)`` over the C labels;
* two Potts terms with weights ``w_g`` (Gaussian: features ``(x, y) / sxy``) and ``w_b`` (bilateral: features
  ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``), each filtering with a permutohedral lattice (Adams et al.
  2010) and normalised symmetrically: ``K~ Q = n * K(n * Q)`` with ``n = 1 / sqrt(K 1)`` per pixel;
* ``iterations`` mean-field steps ``Q <- softmax(-U + w_g K~_g Q + w_b K~_b Q)`` (the pixel itself included, as
  pydensecrf: the Potts term rewards agreement, which differs from the paper's penalty by a per-pixel constant).

Backends (``--backend``, :data:`vpltool.config.CRF_BACKENDS`; :func:`resolve_backend`):

* ``pydensecrf`` (:func:`dense_crf`): the C++ library, one image at a time on a CPU core.
* ``torch`` (:func:`mean_field`): the same lattice written in torch: the same elevation, rounding, simplex ranks
  and barycentric weights, the same blur (``v + (v_- + v_+) / 2`` along each of the d + 1 axes, in order, a missing
  neighbour counting 0), the same slice scale ``1 / (1 + 2^-d)``, in float32; several images in one call on any
  device, the image index being part of every lattice key so images never share a vertex. Only a few float
  operations differ (torch's exponential, the order of the slice's sum and of its scale), ~1e-7 per step, so a
  pixel whose two best labels are that close can flip. No atomic adds: a device gives the same result every run.

This module imports no torch at import time: the CRF pool workers (`crf --backend pydensecrf`) load it without
torch (~0.3 s to start instead of ~2 s); the torch functions import it when called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import IGNORE_INDEX, CrfConfig
from ..errors import MissingDependencyError, VplError, install_extra

if TYPE_CHECKING:
    import torch
    from torch import Tensor

UNARY_FLOOR = 1e-5  # pydensecrf.utils.unary_from_softmax's clip: -log(0) would be an infinite unary
KEY_BITS = 62  # lattice keys (image index + d coordinates) are packed into one int64, one bit kept for the sign


# --------------------------------------------------------------------------------------------- choosing a backend
def resolve_backend(backend: str, device: str = "auto", parity: str = "none") -> str:
    """``auto`` -> ``torch`` when the run's device is CUDA, ``pydensecrf`` on a CPU and under ``--parity clip-es``
    (which reproduces CLIP-ES's own pydensecrf); an explicit backend is returned as is.

    ``device`` is ``--device`` (auto | cpu | cuda | cuda:N); torch is imported only to ask whether CUDA is there.
    """
    if backend != "auto":
        return backend
    if parity == "clip-es" or device == "cpu":
        return "pydensecrf"
    from ..device import resolve_device

    return "torch" if resolve_device(device).type == "cuda" else "pydensecrf"


# --------------------------------------------------------------------------------------------- pydensecrf
def densecrf_module() -> Any:
    """The ``pydensecrf.densecrf`` module, imported only when the stage runs (an optional native extra)."""
    try:
        import pydensecrf.densecrf as dcrf  # shipped by the `pydensecrf2` wheel
    except ImportError:
        raise MissingDependencyError(
            f"the pydensecrf CRF backend needs the CRF extra: {install_extra('crf')} (or use --backend torch, "
            "or --no-crf)"
        ) from None
    return dcrf


def unary(probs: np.ndarray) -> np.ndarray:
    """``-log(clip(p, 1e-5, 1))`` ``[C, H*W]`` float32 C-contiguous, computed in the dtype of ``probs``.

    As ``pydensecrf.utils.unary_from_softmax``: float16 probs (CLIP-ES's, from its float16 CAM files) give a float16
    logarithm, which flips a few pixels against a float32 one. Both backends take this unary.
    """
    flat = probs.reshape(len(probs), -1)
    kind = flat.dtype.type
    return np.ascontiguousarray(-np.log(np.clip(flat, kind(UNARY_FLOOR), kind(1.0))), dtype=np.float32)


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CrfConfig = CrfConfig()) -> np.ndarray:
    """Mean-field inference with pydensecrf (the module docstring's model).

    Args:
        image: ``[H, W, 3]`` uint8, what the bilateral term compares (RGB photo or CLIP-ES's wrapped image).
        probs: ``[C, H, W]`` float scores in [0, 1]; unary = :func:`unary`.
        cfg: iterations and the Gaussian / bilateral kernel parameters.

    Returns:
        Q ``[C, H, W]`` float32, per-pixel marginals summing to 1 over C.
    """
    return dense_crfs(image, [probs], cfg)[0]


def dense_crfs(image: np.ndarray, probs: Sequence[np.ndarray], cfg: CrfConfig = CrfConfig()) -> list[np.ndarray]:
    """:func:`dense_crf` of several score maps of one image with the same C (two refinements' CAMs of its labels): one
    Q ``[C, H, W]`` float32 each, bit for bit :func:`dense_crf`'s alone (inference starts from the unary it is given
    and only reads the pairwise terms), the pairwise terms (the bilateral lattice, ~45 % of a CRF's CPU) built once."""
    c, h, w = probs[0].shape
    check_image(image, (h, w))
    if any(p.shape != probs[0].shape for p in probs):
        raise ValueError(f"dense_crfs: score maps of one image must share their shape, got {[p.shape for p in probs]}")
    if c == 1:  # a single label has nothing to decide; pydensecrf would only spend time on it
        return [np.ones((1, h, w), np.float32) for _ in probs]
    crf = densecrf_module().DenseCRF2D(w, h, c)
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    rgbim = np.require(image, requirements="CW")  # pydensecrf wants a writable buffer; PIL's arrays are read-only
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=rgbim, compat=cfg.bilateral_compat)
    out = []
    for p in probs:  # each unary replaces the last; the pairwise terms never read it
        crf.setUnaryEnergy(unary(p))
        out.append(np.asarray(crf.inference(cfg.iterations), dtype=np.float32).reshape(c, h, w))
    return out


def check_image(image: Any, size: tuple[int, int]) -> None:
    """``image`` must be ``[H, W, 3]`` uint8 (numpy or torch) at ``size``; ValueError otherwise."""
    shape, dtype = tuple(image.shape), str(image.dtype).replace("torch.", "")
    if shape != (*size, 3) or dtype != "uint8":
        raise ValueError(f"image must be [{size[0]}, {size[1]}, 3] uint8 to match the scores, got {dtype} {shape}")


# --------------------------------------------------------------------------------------------- torch: the lattice
@dataclass
class Lattice:
    """A permutohedral lattice over the pixels of a batch: the filter ``out = K in`` of Adams et al. (2010).

    Attributes (N pixels of all images, d feature dimensions, E = N (d + 1) pixel-vertex entries, M vertices; row 0
    of the vertex grid is a zero placeholder for "no vertex", so the real vertices are rows 1..M):
        vertex: ``[N, d + 1]`` int64, the vertices of each pixel's enclosing simplex (remainder 0..d).
        slice_weight: ``[N, d + 1]`` float32, their barycentric weights (sum 1 per pixel) times ``alpha x
            2^-(d+1)``: the slice's scale ``alpha = 1 / (1 + 2^-d)`` and the undoing of the blur's factor 2 per
            axis (powers of two: exact in float).
        splat_pixel, splat_weight: ``[E]`` int64 / float32, the entries sorted by vertex (pixel order kept within
            a vertex): the pixel and barycentric weight of each.
        splat_offsets: ``[M + 2]`` int64, where each grid row's entries start in that order (row 0 has none).
        neighbours: ``[d + 1, 2 (M + 1)]`` int32, per axis the first then the second neighbour of every row of the
            grid (0 when absent, and for row 0).
    """

    vertex: Tensor
    slice_weight: Tensor
    splat_pixel: Tensor
    splat_weight: Tensor
    splat_offsets: Tensor
    neighbours: Tensor

    @property
    def vertices(self) -> int:
        return self.neighbours.shape[1] // 2 - 1

    def __call__(self, values: Tensor) -> Tensor:
        """``[N, C]`` float32 -> ``[N, C]``: splat onto the vertices, blur along each axis, slice back.

        The splat sums each vertex's entries in pixel order with a segment sum: pydensecrf's order, and no atomic
        adds, so a device gives the same result every run. The blur step is pydensecrf's ``v + (v_1 + v_2) / 2``
        times 2, i.e. ``(v_1 + v_2) + 2 v``: the same float rounding (scaling by 2 is exact), one multiplication
        less per axis; the slice weights divide it out.
        """
        import torch

        n, d1 = self.vertex.shape
        rows, c = self.vertices + 1, values.shape[1]
        entries = values.index_select(0, self.splat_pixel) * self.splat_weight[:, None]
        # unsafe: skips a check of the offsets that would wait for the device (they are built right, once)
        grid = torch.segment_reduce(entries, "sum", offsets=self.splat_offsets, axis=0, unsafe=True)
        for pairs in self.neighbours:  # each pass reads only the previous one: a fresh tensor per axis
            both = grid.index_select(0, pairs).view(2, rows, c)
            grid = torch.add(both[0], both[1]).add_(grid, alpha=2)
        picked = grid.index_select(0, self.vertex.view(-1)).view(n, d1, c)
        return (picked * self.slice_weight[..., None]).sum(1)


def lattice(features: Tensor, image: Tensor, images: int) -> Lattice:
    """Build the lattice of ``features`` as pydensecrf's ``Permutohedral::init`` does, for many images at once.

    Args:
        features: ``[N, d]`` float32 scaled features (positions / sxy, colours / srgb) of every pixel of a batch.
        image: ``[N]`` int64 index in ``0..images-1`` of each pixel's image: part of every key, so images never
            share a vertex.

    Raises:
        VplError: the keys do not fit in 62 bits (features spread over a range far beyond any photo's at the
            CLIP-ES / WeCLIP parameters: e.g. a --bilateral-srgb far below 1).
    """
    import torch

    n, d = features.shape
    d1 = d + 1
    elevated = _elevate(features)
    inv = torch.tensor(1.0 / d1, dtype=torch.float32)
    nearest = torch.round(elevated * inv)  # the nearest point of the 0-coloured sub-lattice (ties to even, as SSE)
    rem0 = nearest * d1
    rank = _ranks(elevated - rem0)
    rank = rank + nearest.sum(1, keepdim=True).long()  # how far that point is off the plane sum(x) = 0 (exact)
    wrap = (rank < 0).long() - (rank > d).long()
    rank, rem0 = rank + wrap * d1, rem0 + wrap * d1
    weight = _barycentric((elevated - rem0) * inv, rank)
    code, strides = _codes(rem0.long(), rank, image, images)
    table, vertex, counts = torch.unique(code.view(-1), sorted=True, return_inverse=True, return_counts=True)
    order = torch.argsort(vertex, stable=True)
    alpha = 1.0 / (1.0 + 2.0 ** -d)
    return Lattice(vertex=(vertex + 1).view(n, d1),
                   slice_weight=weight * np.float32(alpha) * np.float32(2.0 ** -d1),
                   splat_pixel=order // d1, splat_weight=weight.view(-1)[order],
                   splat_offsets=torch.cat([counts.new_zeros(2), counts.cumsum(0)]),
                   neighbours=_neighbours(table, strides, d))


def _elevate(features: Tensor) -> Tensor:
    """``[N, d]`` -> ``[N, d + 1]``: the features on the plane ``sum = 0`` of R^(d+1), scaled so the lattice's blur
    has unit standard deviation (Adams et al. 2010, p. 5-6), in pydensecrf's float32 order of operations."""
    import torch

    n, d = features.shape
    inv_std = np.float32(math.sqrt(2.0 / 3.0) * (d + 1))  # a float in pydensecrf, then used in double
    scale = [np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
    out = [features.new_zeros(n)] * (d + 1)
    total = features.new_zeros(n)
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * torch.tensor(scale[j - 1])
        out[j] = total - torch.tensor(np.float32(j)) * cf
        total = total + cf
    out[0] = total
    return torch.stack(out, 1)


def _ranks(diff: Tensor) -> Tensor:
    """``[N, d + 1]`` int64: each coordinate's place among the remainders ``diff`` sorted descending (0 = the
    largest), with pydensecrf's tie rule: of a pair ``i < j``, ``i`` moves down when ``diff_i < diff_j``, else ``j``."""
    import torch

    d1 = diff.shape[1]
    less = diff[:, :, None] < diff[:, None, :]  # [N, i, j]: diff_i < diff_j
    upper = torch.ones(d1, d1, dtype=torch.bool, device=diff.device).triu(1)  # the pairs i < j
    return (less & upper).sum(2) + (~less & upper).sum(1)


def _barycentric(v: Tensor, rank: Tensor) -> Tensor:
    """``[N, d + 1]`` barycentric weights of the simplex's vertices (remainder 0..d) from the scaled remainders
    ``v`` and their ranks (Adams et al. 2010, p. 10), each a difference of two ``v`` as pydensecrf sums them."""
    import torch

    n, d1 = v.shape
    bary = v.new_zeros(n, d1 + 1)
    position = (d1 - 1) - rank
    bary.scatter_add_(1, position, v)
    bary.scatter_add_(1, position + 1, -v)
    first = bary[:, 0] + (1.0 + bary[:, d1])  # the weight that wraps around to remainder 0
    return torch.cat([first[:, None], bary[:, 1:d1]], 1)


def _codes(rem0: Tensor, rank: Tensor, image: Tensor, images: int) -> tuple[Tensor, list[int]]:
    """``[N, d + 1]`` int64 key codes of each pixel's d + 1 vertices, and the strides of the d key coordinates.

    Vertex ``r`` of a pixel's simplex is ``rem0 + r``, minus ``d + 1`` on the coordinates whose rank exceeds
    ``d - r``; its key keeps d coordinates (they sum to 0). Key + image index are packed as one mixed-radix int64
    with room for every neighbour (each coordinate +-d), so a neighbour's code is the vertex's plus a constant.
    """
    import torch

    n, d1 = rank.shape
    d = d1 - 1
    r = torch.arange(d1, device=rank.device)

    def coordinate(i: int) -> Tensor:  # [N, d + 1]: coordinate i of the d + 1 vertices, one at a time (memory)
        return rem0[:, i, None] + r - d1 * (rank[:, i, None] > d - r).long()

    bounds = torch.stack([torch.stack([(c := coordinate(i)).min(), c.max()]) for i in range(d)])
    lo, hi = (bounds[:, 0] - d).tolist(), (bounds[:, 1] + d).tolist()  # one host sync, outside the mean field
    spans = [b - a + 1 for a, b in zip(lo, hi)]
    bits = math.log2(images) + sum(math.log2(s) for s in spans)
    if bits > KEY_BITS:
        raise VplError(f"the torch CRF's lattice keys need {bits:.0f} bits (more than {KEY_BITS}): the features "
                       "spread too far (a very small --bilateral-srgb or --*-sxy?); use --backend pydensecrf")
    strides = [math.prod(spans[i + 1:]) for i in range(d)]
    code = (image * math.prod(spans))[:, None].expand(n, d1).clone()
    for i in range(d):
        code += (coordinate(i) - lo[i]) * strides[i]
    return code, strides


def _neighbours(table: Tensor, strides: list[int], d: int) -> Tensor:
    """``[d + 1, 2 (M + 1)]`` int32 grid rows (0 = absent) of the two neighbours of every vertex of the sorted code
    ``table`` along each axis: pydensecrf's ``key - 1 + (d + 1) e_j`` and ``key + 1 - (d + 1) e_j`` (on axis d, the
    coordinate the key leaves out, only the -1 / +1 of the others)."""
    import torch

    m = len(table)
    out = torch.zeros(d + 1, 2, m + 1, dtype=torch.int32, device=table.device)
    all_ones = sum(strides)
    for axis in range(d + 1):
        step = (d + 1) * strides[axis] if axis < d else 0
        for side, delta in enumerate((step - all_ones, all_ones - step)):
            wanted = table + delta
            found = torch.searchsorted(table, wanted).clamp_(max=m - 1)
            out[axis, side, 1:] = torch.where(table[found] == wanted, found + 1, 0)
    return out.view(d + 1, 2 * (m + 1))


# --------------------------------------------------------------------------------------------- torch: inference
def pixel_features(images: Sequence[Tensor], sxy: float, srgb: float | None) -> tuple[Tensor, Tensor]:
    """The scaled features of every pixel of ``images`` (row-major, image after image), as pydensecrf's
    ``addPairwiseGaussian`` (``srgb`` None: ``(x, y) / sxy``) and ``addPairwiseBilateral``
    (``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``) make them: float32 divisions.

    Returns:
        ``[N, 2 or 5]`` float32 and ``[N]`` int64 image index of each pixel.
    """
    import torch

    parts, owner = [], []
    for index, image in enumerate(images):
        h, w = image.shape[:2]
        dev = image.device
        # divisors as device tensors: a CPU scalar would make CUDA multiply by its reciprocal (1 ulp off a division)
        sxy32, srgb32 = (torch.full((), float(np.float32(v or 1.0)), device=dev) for v in (sxy, srgb))
        y, x = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                              torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
        cols = [x.reshape(-1) / sxy32, y.reshape(-1) / sxy32]
        if srgb is not None:
            cols += list((image.reshape(-1, 3).float() / srgb32).unbind(1))
        parts.append(torch.stack(cols, 1))
        owner.append(torch.full((h * w,), index, dtype=torch.int64, device=dev))
    return torch.cat(parts), torch.cat(owner)


def symmetric_norm(filt: Lattice, n: int, device: torch.device) -> Tensor:
    """``[N, 1]`` float32 ``1 / sqrt(K 1 + 1e-20)``, computed in double as pydensecrf does."""
    import torch

    ones = torch.ones(n, 1, dtype=torch.float32, device=device)
    return (1.0 / torch.sqrt(filt(ones).double() + 1e-20)).float()


def mean_field(images: Sequence[Tensor], unaries: Sequence[Tensor], cfg: CrfConfig = CrfConfig()) -> list[Tensor]:
    """Mean-field inference of the module docstring's model for several images at once (torch backend).

    Args:
        images: B ``[H_b, W_b, 3]`` uint8 tensors on one device: what each bilateral term compares.
        unaries: B ``[C_b, H_b, W_b]`` float32 on the same device, ``-log(clip(P, 1e-5, 1))`` (:func:`unary`);
            C_b may differ between images (missing labels are padded with an infinite unary: probability 0).
        cfg: ``iterations`` and the kernel parameters.

    Returns:
        B ``[C_b, H_b, W_b]`` float32 marginals Q (sum 1 over C_b). No host synchronisation inside the iterations.
    """
    import torch

    if len(images) != len(unaries):
        raise ValueError(f"{len(images)} images but {len(unaries)} unaries")
    for image, u in zip(images, unaries):
        check_image(image, tuple(u.shape[1:]))
    q = mean_field_flat(images, _stack_unaries(unaries), cfg)
    sizes = [u.shape[1] * u.shape[2] for u in unaries]
    return [part[:, :u.shape[0]].T.reshape(u.shape) for part, u in zip(torch.split(q, sizes), unaries)]


def image_tensor(image: np.ndarray) -> Tensor:
    """``[H, W, 3]`` uint8 numpy -> torch, copied only when read-only (PIL's arrays are; torch wants them writable)."""
    import torch

    return torch.from_numpy(np.require(image, requirements="CW"))


def torch_unary(probs: Tensor) -> Tensor:
    """:func:`unary` on a device: ``-log(clamp(p, 1e-5, 1))`` float32, any shape (``[B, C, H, W]`` softmax scores
    in `predict`)."""
    return -probs.float().clamp(UNARY_FLOOR, 1.0).log()


def _stack_unaries(unaries: Sequence[Tensor]) -> Tensor:
    """``[N, C_max]`` pixel-major unaries of a batch, missing labels +inf."""
    import torch

    c = max(u.shape[0] for u in unaries)
    rows = []
    for u in unaries:
        flat = u.reshape(u.shape[0], -1).T
        if u.shape[0] < c:
            flat = torch.cat([flat, flat.new_full((flat.shape[0], c - u.shape[0]), math.inf)], 1)
        rows.append(flat)
    return torch.cat(rows).float()


def mean_field_flat(images: Sequence[Tensor], u: Tensor, cfg: CrfConfig) -> Tensor:
    """:func:`mean_field` on the ``[N, C]`` pixel-major unary of all pixels of ``images``; returns ``[N, C]`` Q."""
    return iterate(u, pairwise_terms(images, cfg), cfg.iterations)


def pairwise_terms(images: Sequence[Tensor], cfg: CrfConfig) -> list[tuple[Lattice, Tensor, float]]:
    """The Gaussian and bilateral terms of a batch: (lattice, ``[N, 1]`` symmetric normalisation, Potts weight).
    Building them waits for the device twice per lattice (the key range, the vertex count)."""
    terms = []
    for sxy, srgb, weight in ((cfg.gaussian_sxy, None, cfg.gaussian_compat),
                              (cfg.bilateral_sxy, cfg.bilateral_srgb, cfg.bilateral_compat)):
        filt = lattice(*pixel_features(images, sxy, srgb), len(images))
        terms.append((filt, symmetric_norm(filt, len(filt.vertex), images[0].device), weight))
    return terms


def iterate(u: Tensor, terms: Sequence[tuple[Lattice, Tensor, float]], iterations: int) -> Tensor:
    """``iterations`` mean-field steps from ``Q_0 = softmax(-U)``; ``[N, C]`` Q. Never waits for the device."""
    import torch

    q = torch.softmax(-u, 1)
    for _ in range(iterations):
        energy = -u
        for filt, norm, weight in terms:
            energy = energy + weight * (norm * filt(norm * q))
        q = torch.softmax(energy, 1)
    return q


def crf_labels(images: Sequence[Tensor], unaries: Sequence[Tensor], ids: Sequence[Sequence[int]],
               cfg: CrfConfig, confidence: float | None) -> list[Tensor]:
    """Masks of a batch on its device: ``ids[b][argmax Q]``, 255 where ``max Q < confidence`` (None or 0: never).

    Args:
        ids: per image, the C_b dataset class ids of its rows (0 first for background); ties go to the first row.

    Returns:
        B ``[H_b, W_b]`` uint8 on the device of ``images``; nothing waits for the device.
    """
    import torch

    from ..runtime.batches import to_device

    q = mean_field(images, unaries, cfg)
    width = max(len(rows) for rows in ids)
    table = to_device(torch.tensor([[*rows, *[0] * (width - len(rows))] for rows in ids], dtype=torch.uint8),
                      images[0].device)
    out = []
    for b, qb in enumerate(q):
        best, arg = qb.max(0)
        mask = table[b][arg]
        out.append(mask.masked_fill(best < confidence, IGNORE_INDEX) if confidence else mask)
    return out


__all__ = ["UNARY_FLOOR", "resolve_backend", "densecrf_module", "unary", "dense_crf", "dense_crfs", "check_image",
           "Lattice", "lattice", "pixel_features", "symmetric_norm", "mean_field", "mean_field_flat", "pairwise_terms",
           "iterate", "image_tensor", "torch_unary", "crf_labels"]

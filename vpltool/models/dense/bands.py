"""The segmentor's photo-size work in column bands: a photo of any size in bounded memory, with the whole
photo's arithmetic.

:func:`vpltool.models.dense.segmentor.segment_logits` makes every query's logits at the photo's size, ``[Q, H0, W0]``
float32, and PAMR's neighbourhoods at that size (about 1 KB a photo pixel with 27 queries). Here the same numbers
are made a band of ``band`` columns at a time, left to right, and reduced to what a caller keeps (labels, class
probabilities, CAM maps) before the next band is made:

* **upsampling** (bilinear, ``align_corners`` False, the logits and PAMR's guide): torch's kernel is separable, so
  ``F.interpolate(x, (H0, W0))`` equals ``F.interpolate(F.interpolate(x, (h, W0)), (H0, W0))`` bit for bit; the
  first pass is kept (``[Q, h, W0]``, ``h`` the model's input height), and the second is run on the band's columns
  alone (:class:`ColumnUpsampler`): exact, as each output column of the second pass reads its own column. (A photo
  smaller than the model's input, whose logits shrink, is computed whole; it is small.)
* **PAMR**: its reach is ``steps x max(dilations)`` pixels. Each step is a level of a pipeline that keeps a few
  bands per level (:class:`_Levels`): step ``k`` of a band needs step ``k - 1`` of it and ``max(dilations)``
  columns either side, so no column is computed twice; the photo's left and right borders are replicated as the
  whole computation's padding does, and its top and bottom are whole in every band.
* **softmax, the query->class max, the argmax** per band (the area filter of SCLIP needs the whole photo's argmax
  areas first: the bands are made twice).

Per pixel the operations and their order are the whole computation's; torch's vectorised reductions (the
softmaxes, PAMR's channel mean) may round a pixel at the end of a vector row differently when the rows are
shorter, so a probability can differ in its last bit (labels equal: ``tests/test_bands.py``). A photo whose whole
computation fits :data:`WHOLE_BUDGET` is computed whole, by the unbanded functions, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

WHOLE_BUDGET = 512 * 2**20  # bytes: a photo whose whole computation needs no more is computed in one piece
BAND_COLUMNS = 64  # columns per band: with 27 queries, 10 PAMR steps and 4000 rows about 0.4 GB in flight


def whole_bytes(n_queries: int, height: int, width: int, pamr_steps: int) -> int:
    """What the unbanded computation holds for one ``height x width`` photo at its peak, in bytes (float32): the
    queries' logits twice and PAMR's neighbourhoods (18 shifted copies of the 3-channel guide, its 16 affinities,
    the mask, its padded copy and the step's sum), or the logits, the softmax and the class maximum."""
    per_pixel = n_queries * 4 * 5 + 3 * 4 * (18 + 16 + 16 + 2) + 16 * 4 if pamr_steps else n_queries * 4 * 3
    return per_pixel * height * width


def band_bytes(n_queries: int, height: int, pamr_steps: int, dilations: Sequence[int], band: int = BAND_COLUMNS
               ) -> int:
    """What :func:`logit_bands` holds in flight for a photo of ``height`` rows, in bytes (float32)."""
    reach = max(dilations) if pamr_steps else 0
    width = band + 2 * reach
    levels = (pamr_steps + 1) * width + 6 * width  # a buffer per PAMR step, the step's padded source and sums
    affinity = (pamr_steps * reach + band) * 16 + width * 3 * (18 + 16 + 16 + 2)
    return 4 * height * (n_queries * levels + affinity)


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size a ``height x width`` photo is segmented at under ``--max-side`` (0: its own): the long side
    ``max_side``, the short one scaled with it and rounded (at least 1)."""
    long = max(height, width)
    if not max_side or long <= max_side:
        return height, width
    return max(1, round(height * max_side / long)), max(1, round(width * max_side / long))


def enlarge(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[..., h, w]`` (labels of any dtype, or probabilities) -> ``[..., H0, W0]`` by nearest neighbour: output
    row ``i`` is source row ``floor(i * h / H0)`` (``F.interpolate``'s "nearest" rule, which takes no int64)."""
    h, w = x.shape[-2:]

    def index(n: int, m: int) -> torch.Tensor:
        return (torch.arange(n, device=x.device, dtype=torch.float64) * (m / n)).floor().long().clamp_(max=m - 1)

    return x.index_select(-2, index(size[0], h)).index_select(-1, index(size[1], w))


def photo_bytes(height: int, width: int, n_queries: int, settings, scores: int = 0) -> int:
    """What segmenting one ``height x width`` photo holds beyond the model, in bytes: the decoded photo (and its
    RGB copy), the labels (int64, then the uint8 mask), and the logits' work: whole (:func:`whole_bytes`) when that
    fits :data:`WHOLE_BUDGET`, else the bands' (:func:`band_bytes`) and the kept first pass of the upsampling
    (``[Q + 3, h, W0]``, ``h`` the model's input height). ``settings``: a :class:`~vpltool.config.DenseSettings`.
    ``scores``: the classes whose ``[C, H0, W0]`` float32 probabilities are kept (the Python segmenter's result,
    and its int64 labels' copy; 0: the CLI's masks alone). Under ``settings.max_side`` the logits' work is at the
    :func:`working_size`, the labels (twice: at that size and enlarged) at the photo's."""
    steps = settings.pamr_steps
    h, w = working_size(height, width, settings.max_side)
    whole = whole_bytes(n_queries, h, w, steps)
    if whole > WHOLE_BUDGET:
        rows = min(settings.short_side, h)
        whole = band_bytes(n_queries, h, steps, settings.pamr_dilations) + 4 * (n_queries + 3) * rows * w
    kept = 4 * scores + 8 if scores else 0
    small = (h * w * (8 + 4 * scores)) if (h, w) != (height, width) else 0
    return height * width * (3 + 3 + 8 + 1 + kept) + whole + small


def available_bytes() -> int | None:
    """The memory the system can give without swapping (``MemAvailable`` of /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def fitting_max_side(height: int, width: int, n_queries: int, settings, free: int, scores: int = 0) -> int | None:
    """A ``max_side`` (``MIN_MAX_SIDE`` plus a multiple of 64, below the photo's long side) at which :func:`photo_bytes`
    fits ``free`` bytes, the largest where the bytes grow with the side; None when none fits (the photo and its
    labels alone are too large)."""
    from dataclasses import replace

    from ...config.dense import MIN_MAX_SIDE

    def fits(side: int) -> bool:
        return photo_bytes(height, width, n_queries, replace(settings, max_side=side), scores) <= free

    # photo_bytes grows with the side (but for a step where the whole computation gives way to bands): bisect. The
    # side named is always one that was tried and fits; where the step breaks the order, a larger one might too
    sides = range(MIN_MAX_SIDE, max(height, width), 64)
    lo, hi = 0, len(sides)  # sides[lo - 1] was tried and fits; sides[hi] (when tried) does not
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if fits(sides[mid]) else (lo, mid)
    return sides[lo - 1] if lo else None


def check_photo_memory(photos: Sequence, sizes: Sequence[tuple[int, int]], n_queries: int, settings,
                       available: int | None = None, scores: int = 0, max_side_option: str | None = None) -> None:
    """Refuse, before a model loads (the Python segmenter: before a photo is run), a photo whose segmentation
    (:func:`photo_bytes`, ``scores`` as there) needs more memory than is free (``available``, by default
    :func:`available_bytes`): one line naming the photo, the memory and the fix. ``max_side_option``: how the
    caller spells the working-size cap (``--max-side {}``, ``max_side={}``), whose largest fitting value the line
    then names; None where the command has none (a smaller copy of the photo is the fix)."""
    from ...errors import VplError

    free = available_bytes() if available is None else available
    if free is None:
        return
    for photo, (height, width) in zip(photos, sizes):
        need = photo_bytes(height, width, n_queries, settings, scores)
        if need > free:
            side = fitting_max_side(height, width, n_queries, settings, free, scores) if max_side_option else None
            fix = (f"pass {max_side_option.format(side)} (the photo is segmented at that long side and its mask "
                   "enlarged to the photo), or free memory" if side else
                   "free memory, or segment a copy of the photo with half its width and height (a quarter of the "
                   "memory)")
            raise VplError(f"{photo}: a {width}x{height} photo ({height * width / 1e6:.0f} megapixels) needs about "
                           f"{need / 2**30:.1f} GB to segment ({n_queries} queries) and {free / 2**30:.1f} GB are "
                           f"free; {fix}")


class ColumnUpsampler:
    """``F.interpolate(source[None], size, mode="bilinear", align_corners=False)[0]`` column by column.

    torch's CPU kernel is separable: the whole resize equals the rows resized to the photo's width, then the
    columns to its height, bit for bit. The first pass is kept (``[1, C, h, W0]``); the second is run on a band's
    columns alone, transposed (a column of the photo a row of the band: the kernel's long-row path, which
    ``tests/test_bands.py`` holds equal to the whole resize; a narrow untransposed band takes another path).
    Three channels (PAMR's guide) are resized as four: the kernel torch uses for them on several threads; on one
    thread it takes a channels-last kernel that is not separable, and the whole photo's guide rounds differently.

    Args:
        source: ``[C, h, w]`` float32 (the logits at the model's input or patch grid, or the normalised input),
            no larger than ``size`` (torch's kernel shrinking rows takes another path).
        size: the photo's ``(H0, W0)``.
    """

    def __init__(self, source: torch.Tensor, size: tuple[int, int]):
        self.height, self.width, self.channels = int(size[0]), int(size[1]), len(source)
        source = source[None].float()
        if self.channels == 3:  # torch resizes 3 channels on one thread by another kernel, one that is not
            source = torch.cat([source, source[:, :1]], dim=1)  # separable; on several threads by this one
        self.rows = F.interpolate(source, size=(source.shape[-2], self.width), mode="bilinear", align_corners=False)

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """``[n]`` int64 column indices (any order, repeats allowed) -> ``[C, n, H0]``: those columns of the whole
        upsampled image, each a row (a band's layout here)."""
        picked = self.rows.index_select(3, index.to(self.rows.device)).transpose(2, 3).contiguous()  # [1, C, n, h]
        return F.interpolate(picked, size=(len(index), self.height), mode="bilinear",
                             align_corners=False)[0, : self.channels]


def _clamped(start: int, stop: int, width: int, device) -> torch.Tensor:
    """Column indices ``start..stop-1`` with those outside the photo replaced by its border column (the
    replicate padding of the whole computation)."""
    return torch.arange(start, stop, device=device).clamp_(0, width - 1)


def _rows_padded(x: torch.Tensor, d: int) -> torch.Tensor:
    """A band ``[B, C, n, H]`` -> ``[B, C, n, H + 2d]``: the photo's top and bottom rows replicated ``d`` times."""
    return F.pad(x, (d, d, 0, 0), mode="replicate")


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _shifted(xp: torch.Tensor, d: int, reach: int, n: int, centre: bool) -> torch.Tensor:
    """``xp`` ``[B, C, n + 2 reach, H + 2d]`` (a band with ``reach`` columns either side, rows padded by ``d``)
    -> ``[B, C, P, n, H]`` the values at the 8 neighbours (and the centre) at dilation ``d``, in the order of
    :func:`vpltool.models.dense.segmentor._shifted`."""
    height = xp.shape[-1] - 2 * d
    return torch.stack([xp[..., reach + dx * d : reach + dx * d + n, d + dy * d : d + dy * d + height]
                        for dy, dx in _OFFSETS if centre or (dy, dx) != (0, 0)], dim=2)


def band_affinity(guide: torch.Tensor, reach: int, n: int, dilations: Sequence[int]) -> torch.Tensor:
    """PAMR's affinity of ``n`` columns: ``guide`` ``[1, 3, n + 2 reach, H]`` (the band's columns and ``reach``
    more either side) -> ``[1, 1, P, n, H]``, as :func:`vpltool.models.dense.segmentor.pamr` computes it."""
    image = guide[..., reach : reach + n, :]
    padded = {d: _rows_padded(guide, d) for d in dilations}
    std = torch.cat([_shifted(padded[d], d, reach, n, True) for d in dilations], dim=2).std(2, keepdim=True)
    diff = torch.cat([(image[:, :, None] - _shifted(padded[d], d, reach, n, False)).abs() for d in dilations], dim=2)
    return F.softmax((-diff / (1e-8 + 0.1 * std)).mean(1, keepdim=True), dim=2)


def band_step(mask: torch.Tensor, affinity: torch.Tensor, reach: int, dilations: Sequence[int]) -> torch.Tensor:
    """One PAMR step of a band: ``mask`` ``[1, C, n + 2 reach, H]`` (the previous step, ``reach`` columns either
    side) and ``affinity`` ``[1, 1, P, n, H]`` -> ``[1, C, n, H]``, the sum over the neighbours in
    :func:`vpltool.models.dense.segmentor._propagate`'s order (each product rounded, then added: the same numbers)."""
    n = affinity.shape[-2]
    out, term, k = None, None, 0
    for d in dilations:
        xp = _rows_padded(mask, d)
        height = xp.shape[-1] - 2 * d
        for dy, dx in _OFFSETS:
            if (dy, dx) == (0, 0):
                continue
            shifted = xp[..., reach + dx * d : reach + dx * d + n, d + dy * d : d + dy * d + height]
            if out is None:
                out = shifted * affinity[:, :, k]
                term = torch.empty_like(out)
            else:
                out += torch.mul(shifted, affinity[:, :, k], out=term)
            k += 1
    return out


class _Buffer:
    """Columns ``lo..hi-1`` of one quantity of the photo, a band ``[1, C, n, H0]``, extended to the right and
    trimmed on the left."""

    def __init__(self):
        self.data: torch.Tensor | None = None
        self.lo = self.hi = 0

    def add(self, new: torch.Tensor) -> None:
        self.data = new if self.data is None else torch.cat([self.data, new], dim=-2)
        self.hi += new.shape[-2]

    def trim(self, lo: int) -> None:
        if self.data is not None and lo > self.lo:
            lo = min(lo, self.hi)
            self.data = self.data[..., lo - self.lo :, :].contiguous()
            self.lo = lo

    def take(self, index: torch.Tensor) -> torch.Tensor:
        return self.data.index_select(-2, index - self.lo)


class _Levels:
    """PAMR as a pipeline over column bands: level 0 the upsampled logits, level ``k`` step ``k``; each level
    extends only as far as the next one needs, and forgets what no level will read again."""

    def __init__(self, logits: ColumnUpsampler, guide: ColumnUpsampler, steps: int, dilations: Sequence[int]):
        self.logits, self.guide, self.steps, self.dilations = logits, guide, steps, tuple(dilations)
        self.reach, self.width = max(dilations), logits.width
        self.device = logits.rows.device
        self.levels = [_Buffer() for _ in range(steps + 1)]
        self.affinity = _Buffer()

    def _extend_affinity(self, stop: int) -> None:
        a = self.affinity
        if stop <= a.hi:
            return
        index = _clamped(a.hi - self.reach, stop + self.reach, self.width, self.device)
        a.add(band_affinity(self.guide.columns(index)[None], self.reach, stop - a.hi, self.dilations))

    def extend(self, k: int, stop: int) -> None:
        """Level ``k`` computed up to column ``stop`` (at most the photo's width)."""
        stop = min(stop, self.width)
        level = self.levels[k]
        if stop <= level.hi:
            return
        start = level.hi
        if k == 0:
            level.add(self.logits.columns(torch.arange(start, stop, device=self.device))[None])
            return
        below = self.levels[k - 1]
        self.extend(k - 1, stop + self.reach)
        self._extend_affinity(stop)
        source = below.take(_clamped(start - self.reach, stop + self.reach, self.width, self.device))
        affinity = self.affinity.data[..., start - self.affinity.lo : stop - self.affinity.lo, :]
        level.add(band_step(source, affinity, self.reach, self.dilations))
        below.trim(level.hi - self.reach)  # level k's next band reads level k - 1 from here on

    def band(self, start: int, stop: int) -> torch.Tensor:
        """Columns ``start..stop-1`` of the last step ``[C, n, H0]``; the bands are asked for left to right."""
        top = self.levels[-1]
        self.extend(self.steps, stop)
        out = top.take(torch.arange(start, stop, device=self.device))[0]
        top.trim(stop)
        self.affinity.trim(top.hi)
        return out


def logit_bands(source: torch.Tensor, size: tuple[int, int], guide: torch.Tensor | None = None, steps: int = 0,
                dilations: Sequence[int] = (8, 16), band: int = BAND_COLUMNS
                ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The photo's query logits (after PAMR) a band of columns at a time.

    Args:
        source: ``[Q, h, w]`` float32 logits that :func:`vpltool.models.dense.segmentor.dense_logits` resizes to
            ``size`` (the model's input size, or its patch grid).
        size: the photo's ``(H0, W0)``.
        guide: PAMR's guide, ``[3, h', w']`` the normalised input (resized to ``size`` as
            :func:`vpltool.models.dense.segmentor.guide_image`); needed when ``steps``.
        steps, dilations: PAMR's.
        band: columns per band.

    Yields:
        ``(x0, x1, [Q, x1 - x0, H0])`` float32, left to right, covering ``0..W0``: a band transposed (the
        photo's column ``x0 + i`` is row ``i``), so that its rows are long.
    """
    logits = ColumnUpsampler(source, size)
    width = logits.width
    if steps:
        levels = _Levels(logits, ColumnUpsampler(guide, size), steps, dilations)
    for x0 in range(0, width, band):
        x1 = min(x0 + band, width)
        if steps:
            yield x0, x1, levels.band(x0, x1)
        else:
            yield x0, x1, logits.columns(torch.arange(x0, x1, device=logits.rows.device))


def class_probabilities(logits: torch.Tensor, query_class: torch.Tensor, n_classes: int, logit_scale: float
                        ) -> torch.Tensor:
    """``[Q, H, W]`` cosine logits -> ``[C, H, W]``: ``softmax(logit_scale * logits)`` over the queries, each class
    the max over its queries (``query_class [Q]`` int64 in ``0..C-1``; a class without a query gets 0)."""
    probs = (logits * logit_scale).softmax(0)
    index = query_class.to(probs.device).view(-1, *[1] * (probs.dim() - 1)).expand_as(probs)
    return probs.new_zeros(n_classes, *probs.shape[1:]).scatter_reduce_(0, index, probs, "amax", include_self=True)


def banded_probabilities(bands: Callable[[], Iterator[tuple[int, int, torch.Tensor]]], size: tuple[int, int],
                         query_class: torch.Tensor, n_classes: int, logit_scale: float, prob_threshold: float,
                         area_threshold: float | None = None, scores: bool = True
                         ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """:func:`vpltool.models.dense.segmentor.dense_probabilities` over :func:`logit_bands`: ``bands()`` starts a fresh
    pass over the bands. Returns ``([C, H0, W0]`` float32 class probabilities, or None unless ``scores``; ``[H0, W0]``
    int64 labels``)``. With ``area_threshold`` the bands are made twice: the argmax areas of the whole photo first."""
    height, width = size
    keep = None
    if area_threshold is not None:
        area = None
        for _, _, logits in bands():
            top = class_probabilities(logits.float(), query_class, n_classes, logit_scale).argmax(0)
            counts = (top[None] == torch.arange(n_classes, device=top.device)[:, None, None]).flatten(1).sum(1)
            area = counts if area is None else area + counts
        area = area[1:].float()
        keep = area > area_threshold * area.sum()
    labels = probs = None
    for x0, x1, logits in bands():
        p = class_probabilities(logits.float(), query_class, n_classes, logit_scale)
        if keep is not None:
            p = torch.cat([p[:1], p[1:] * keep.to(p.dtype)[:, None, None]])
        top, lab = p.max(0)
        lab = torch.where(top < prob_threshold, torch.zeros_like(lab), lab)
        if labels is None:
            labels = lab.new_empty(height, width)
            probs = p.new_empty(n_classes, height, width) if scores else None
        labels[:, x0:x1] = lab.T
        if probs is not None:
            probs[:, :, x0:x1] = p.transpose(1, 2)
    return probs, labels


__all__ = ["WHOLE_BUDGET", "BAND_COLUMNS", "whole_bytes",
           "band_bytes", "working_size", "enlarge", "photo_bytes", "available_bytes", "fitting_max_side",
           "check_photo_memory", "ColumnUpsampler", "band_affinity", "band_step", "logit_bands", "class_probabilities",
           "banded_probabilities"]

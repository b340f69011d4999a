"""CLIP's image preprocessing (:class:`Preprocess`), and Pillow's bicubic resize of uint8 images on any torch device
with Pillow's exact bytes (:func:`resize_uint8`).

CLIP's preprocessing resizes every photo with ``PIL.Image.resize(..., BICUBIC)``, in a loading process the largest
share of the host's work per image (500 x 375 -> 512 x 384 costs more than the JPEG decode). :func:`resize_uint8`
moves it to the device, where it is a few gathers, without changing one byte (bench/bench_host.py measures the
loading processes' CPU time per photo both ways):

* the coefficients are Pillow's (``libImaging/Resample.c``: ``precompute_coeffs`` with the bicubic filter,
  ``a = -0.5``, support 2 scaled by the reduction factor; then ``normalize_coeffs_8bpc``, 22-bit fixed point),
  computed here in float64 in the same order of operations (:func:`bicubic_taps`);
* each pass is Pillow's integer arithmetic: ``clip8((2**21 + sum_t in[idx_t] * k_t) >> 22)``, in int32 (the sums
  stay below 2**31 as Pillow's do), the horizontal pass first, its result rounded to uint8, then the vertical one.

Only where no side shrinks (:func:`exact_on_device`): that is every CLIP-ES input (each side rounded *up* to a patch
multiple), and there Pillow always runs the horizontal pass first. Where a side shrinks, the order of the two passes
is Pillow's own choice (with the installed Pillow 13.0, random reductions matched neither fixed order), so such an
image is resized by Pillow itself, in the loading worker (:meth:`Preprocess.loaded`).

tests/test_preprocess.py checks the bytes against the installed Pillow on VOC's sizes, random enlargements, odd sizes
and one-pixel sides.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2
_A = -0.5  # Pillow's bicubic parameter


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's ``bicubic_filter``, elementwise, with its order of operations (float64)."""
    x = np.abs(x)
    near = ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=256)
def bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's coefficients for resizing one axis from ``in_size`` to ``out_size`` pixels.

    Returns:
        ``index [out_size, T]`` int64 source pixels (unused taps point at pixel 0) and ``weight [out_size, T]`` int32
        fixed-point coefficients (``2**22`` = 1; unused taps 0), T the widest filter of the axis.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got {in_size} -> {out_size}")
    scale = float(np.float32(in_size)) / out_size  # Pillow: (double)(in1 - in0) / outSize, the box in C floats
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C's (int) cast truncates
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = int(xmax.max())
    t = np.arange(taps)
    used = t[None, :] < xmax[:, None]  # [out, T]
    w = np.where(used, _bicubic(((t[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * ss), 0.0)
    ww = np.zeros(out_size)
    for j in range(taps):  # Pillow sums tap by tap: a pairwise sum would round differently
        ww = ww + w[:, j]
    k = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    scaled = k * float(1 << PRECISION_BITS)
    fixed = np.where(k < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    index = np.where(used, t[None, :] + xmin[:, None], 0)
    return index.astype(np.int64), np.where(used, fixed, 0).astype(np.int32)


@functools.lru_cache(maxsize=1024)
def _device_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bicubic_taps` on ``device``, made once per size pair (pinned, non-blocking: no wait for the device)."""
    from ...runtime.batches import to_device

    index, weight = bicubic_taps(in_size, out_size)
    return to_device(torch.from_numpy(index), device), to_device(torch.from_numpy(weight), device)


def _pass(x: torch.Tensor, axis: int, out_size: int) -> torch.Tensor:
    """One of Pillow's passes along ``axis`` of ``x`` (int32 ``[B, H, W, 3]``): the result int32 in 0..255."""
    idx, k = _device_taps(x.shape[axis], out_size, x.device)
    taps = idx.shape[1]
    picked = x.index_select(axis, idx.flatten())  # the axis becomes out_size * T
    shape = list(x.shape)
    shape[axis:axis + 1] = [out_size, taps]
    picked = picked.view(shape)
    kshape = [1] * len(shape)
    kshape[axis], kshape[axis + 1] = out_size, taps
    total = (picked * k.view(kshape)).sum(axis + 1, dtype=torch.int32)
    return ((total + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp_(0, 255)


def exact_on_device(source: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether :func:`resize_uint8` gives Pillow's bytes for ``source`` ``(H0, W0)`` -> ``size`` ``(H, W)``: no side
    shrinks (see the module docstring)."""
    return size[0] >= source[0] and size[1] >= source[1]


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``PIL.Image.resize((W, H), BICUBIC)`` of every image, on the images' device: the same bytes as Pillow.

    Args:
        images: ``[B, H0, W0, 3]`` uint8 RGB.
        size: ``(H, W)``, no side smaller than the images' (:func:`exact_on_device`).

    Returns:
        ``[B, H, W, 3]`` uint8 (``images`` itself when it has that size already).

    Raises:
        ValueError: a side would shrink (there Pillow picks the order of its passes: resize with Pillow).
    """
    h, w = size
    if tuple(images.shape[1:3]) == (h, w):
        return images
    if not exact_on_device(tuple(images.shape[1:3]), size):
        raise ValueError(f"resize_uint8 enlarges only: {tuple(images.shape[1:3])} -> {tuple(size)} shrinks a side; "
                         "resize it with Pillow (Preprocess.resize)")
    x = images.to(torch.int32)
    if x.shape[2] != w:  # Pillow: the horizontal pass first, only where the width changes
        x = _pass(x, 2, w)
    if x.shape[1] != h:
        x = _pass(x, 1, h)
    return x.to(torch.uint8)


@dataclass(frozen=True)
class Preprocess:
    """CLIP's image preprocessing in two halves: :meth:`resize` (``[H0, W0, 3]`` uint8 RGB -> ``[H, W, 3]`` uint8,
    bicubic, PIL), which holds no model so data-loading workers run it, and :meth:`normalize` (uint8 -> float32
    normalised with the model's mean and std), which the stages run on the device, once per batch. Calling it does
    both (one image, on the host): ``[3, H, W]`` float32.

    ``on_device``: where the resize runs. False: in the loading workers, with Pillow. True (where the CUDA path
    runs, :func:`vpltool.runtime.batches.cuda_paths`): the workers send the image as decoded (:meth:`loaded`) and the
    device resizes it (:meth:`ClipBackbone.pixels`, :func:`resize_uint8`: Pillow's bytes exactly), which takes the
    largest part of a worker's work per photo off the host's cores; an image that shrinks is still resized by the
    worker."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    on_device: bool = False

    def __call__(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        return self.normalize(self.resize(image, size)[None])[0]

    @staticmethod
    def resize(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """``[H0, W0, 3]`` uint8 -> ``[H, W, 3]`` uint8 at ``size`` (PIL bicubic; the image itself when it has that
        size): what a loading worker sends, a quarter of the bytes of the normalised float32."""
        h, w = size
        if image.shape[:2] != (h, w):
            image = np.array(Image.fromarray(image).resize((w, h), Image.BICUBIC))
        return torch.from_numpy(np.require(image, requirements=["C", "W"]))  # copied only when read-only

    def loaded(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """What a loading worker sends for one image bound for ``size``: ``[H, W, 3]`` uint8 resized here
        (:meth:`resize`), or, when the device resizes (``on_device``) and gives Pillow's bytes there (no side shrinks:
        :func:`exact_on_device`), the image as decoded ``[H0, W0, 3]``."""
        on_device = self.on_device and exact_on_device(image.shape[:2], size)
        return self.resize(image, image.shape[:2] if on_device else size)

    def normalize(self, pixels: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> torch.Tensor:
        """``[B, H, W, 3]`` uint8 (:meth:`resize`) -> ``[B, 3, H, W]`` float32, ``(x / 255 - mean) / std`` on the
        pixels' device (``stats``: the mean and std as ``[1, 3, 1, 1]`` tensors there; made here when None)."""
        if stats is None:
            stats = (torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1))
        # channels first while still uint8: the float arithmetic then runs on contiguous memory (10x faster on a
        # CPU than on the permuted view), and gives the same values
        x = pixels.permute(0, 3, 1, 2).contiguous().float().div_(255)
        return x.sub_(stats[0].to(x.device)).div_(stats[1].to(x.device))

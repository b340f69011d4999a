"""PAR, pixel-adaptive refinement (AFA's, as WeCLIP runs it: ``WeCLIP_model/PAR.py``): class scores propagated
to each pixel's neighbours at several dilations, weighted by colour and position similarity. WeCLIP's online pseudo
masks refine with it (:mod:`.online`); the parity runner compares it with WeCLIP's own code
(parity/weclip_parity.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PAR_DILATIONS = (1, 2, 4, 8, 12, 24)  # WeCLIP model_attn_aff_voc.py:89
PAR_W1, PAR_W2 = 0.3, 0.01  # PAR.py: the colour affinity's scale and the weight of the positional term


NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))  # PAR.py:get_kernel's order


def _neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, 8 * len(dilations), H, W]``: each pixel's 8 neighbours at every dilation
    (replicated border), in PAR.py's order. Slices of the padded tensor: the values of PAR's one-hot dilated
    convolution exactly (a product by 1 and sums of zeros), without its multiply-adds."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        out += [padded[..., i * d:i * d + h, j * d:j * d + w] for i, j in NEIGHBOURS]
    return torch.stack(out, dim=2)


SUM_CHUNK = 16  # torch's CPU sum over a non-innermost dim: sequential runs of 16 rows, the runs' sums in turn
SUM_VECTOR = 64  # ... over the inner elements in whole unrolled vector blocks (AVX-512: 4 x 16); a tail sums otherwise


def par_affinity(image: Tensor, size: tuple[int, int], dilations: Sequence[int] = PAR_DILATIONS) -> Tensor:
    """PAR's neighbour weights of each pixel (``PAR.py:forward`` before its loop), computed once per image.

    Args:
        image: ``[B, 3, H, W]`` float normalised pixels (bilinearly resized, corners aligned, to ``size``).
        size: the masks' ``(h, w)``.

    Returns:
        ``[B, 1, 8 * len(dilations), h, w]`` (float32, or float64 when ``image`` is):
        ``softmax_n(-(|I - I_n| / std_n(I_n) / 0.3)^2 mean over RGB) + 0.01 softmax_n(-(pos_n / std / 0.3)^2)``.
        Image by image (the ``[3, n, h, w]`` intermediates stay in the CPU's cache), the positional term once for
        all: the values of one call per image, which are those of one batched call (tests/test_weclip.py).
    """
    dtype = image.dtype
    if image.shape[-2:] != tuple(size):
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=True)
    h, w = image.shape[-2:]
    ring = torch.ones(8, dtype=dtype)
    ring[[0, 2, 5, 7]] = float(np.sqrt(2))  # the diagonal neighbours are sqrt(2) rings away
    pos = torch.cat([ring * d for d in dilations]).to(image.device).view(1, 1, -1, 1, 1).expand(1, 1, -1, h, w)
    pos_aff = PAR_W2 * F.softmax(-(pos / (pos.std(dim=2, keepdim=True) + 1e-8) / PAR_W1) ** 2, dim=2)
    out = []
    for one in image.split(1):
        near = _neighbours(one, dilations)  # [1, 3, n, h, w]
        diff = (near - one.unsqueeze(2)).abs()
        aff = -(diff / (near.std(dim=2, keepdim=True) + 1e-8) / PAR_W1) ** 2
        out.append(F.softmax(aff.mean(dim=1, keepdim=True), dim=2) + pos_aff)
    return torch.cat(out)


def par_step(masks: Tensor, aff: Tensor, dilations: Sequence[int] = PAR_DILATIONS) -> Tensor:
    """One PAR round, ``sum_n aff_n m_n`` over the neighbours (``PAR.py``'s ``(masks_n * aff).sum(2)``).

    On the CPU, when ``h w`` is a multiple of :data:`SUM_VECTOR` (the demo's 96 x 96 crops, WeCLIP's 320 x 320),
    the products are summed one neighbour at a time into a ``[B, K, h, w]`` buffer, grouped as torch's own sum over
    the stacked ``[B, K, n, h, w]`` groups them (runs of :data:`SUM_CHUNK`, each run's sum added in turn): the same
    float32 values as the stacked sum (tests/test_weclip.py), without writing the ``n``-fold stack (PAR was 84 %
    of a CPU iteration of the demo's weclip). Otherwise (another size, a GPU: other reduction orders) the stacked sum
    itself. ``masks`` ``[B, K, h, w]``; ``aff`` ``[B, 1, n, h, w]`` (:func:`par_affinity`).
    """
    h, w = masks.shape[-2:]
    n = len(dilations) * len(NEIGHBOURS)
    if masks.device.type != "cpu" or (h * w) % SUM_VECTOR or n > SUM_CHUNK * SUM_CHUNK:
        return (_neighbours(masks, dilations) * aff).sum(2)
    product, run, total = torch.empty_like(masks), None, None
    k = 0
    for d in dilations:
        padded = F.pad(masks, [d] * 4, mode="replicate")
        for i, j in NEIGHBOURS:
            torch.mul(padded[..., i * d:i * d + h, j * d:j * d + w], aff[:, :, k], out=product)
            if k % SUM_CHUNK == 0:
                run = product.clone()
            else:
                run.add_(product)
            k += 1
            if k % SUM_CHUNK == 0 or k == n:
                total = run if total is None else total.add_(run)
    return total


def par(image: Tensor, masks: Tensor, dilations: Sequence[int] = PAR_DILATIONS, iters: int = 20) -> Tensor:
    """Pixel-adaptive refinement (AFA's PAR as WeCLIP runs it, ``WeCLIP_model/PAR.py``).

    Args:
        image: ``[B, 3, H, W]`` float normalised pixels (bilinearly resized, corners aligned, to the masks' size).
        masks: ``[B, K, h, w]`` float scores (background first).
        dilations: neighbour rings; iters: propagation rounds.

    Returns:
        ``[B, K, h, w]`` float32 (float64 when ``masks`` is: parity/weclip_parity.py's precision study):
        ``iters`` rounds of ``m <- sum_n aff_n m_n`` (:func:`par_step`) with the weights of :func:`par_affinity`.
        Each image and each map is refined on its own: a batch (maps padded with zeros to one K) gives each crop's
        values of a call of its own.
    """
    dtype = torch.float64 if masks.dtype == torch.float64 else torch.float32
    aff = par_affinity(image.to(dtype), tuple(masks.shape[-2:]), dilations)
    masks = masks.to(dtype)
    for _ in range(iters):
        masks = par_step(masks, aff, dilations)
    return masks


__all__ = ["PAR_DILATIONS", "NEIGHBOURS", "SUM_CHUNK", "SUM_VECTOR", "par_affinity", "par_step", "par"]

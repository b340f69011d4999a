"""CLIP-ES's class-aware attention affinity (CAA), the arithmetic that `cam` and train-decoder's online pseudo masks
(WeCLIP's recipe) share: the transition matrix of an attention map (:func:`affinity`) and the union of the boxes
around a map's peaks (:func:`box_masks`, computed on the device: :func:`components`). Pure torch functions; the
stages keep their own loops around them.
"""

from __future__ import annotations

import math

import torch


def affinity(attention: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """CAA transition matrix from a mean attention map ``[hw, hw]`` or a batch ``[B, hw, hw]`` (CLS removed):
    symmetric, non-negative.

    Column then row normalisation three times (Sinkhorn-style), ``(T + T^T) / 2``, then one squaring, in float32 as
    CLIP-ES. By default the sums have a floor (a patch nobody attends to would divide by zero); ``exact`` leaves it
    out, as CLIP-ES (``--parity clip-es``). A float64 map stays float64 (parity/weclip_parity.py's precision study).
    """
    t = attention if attention.dtype == torch.float64 else attention.float()
    floor = 0.0 if exact else 1e-12
    for _ in range(3):  # [..., hw, hw]: a batch of maps is normalised map by map
        t = t / t.sum(-2, keepdim=True).clamp_min(floor)
        t = t / t.sum(-1, keepdim=True).clamp_min(floor)
    t = (t + t.transpose(-2, -1)) / 2
    if t.ndim == 3:  # map by map: a batched matmul may round differently from the single one
        return torch.stack([m @ m for m in t])
    return t @ t


def box_masks(cams: torch.Tensor, threshold: float, parity: bool = False) -> torch.Tensor:
    """:func:`box_mask` for a batch of maps ``[N, h, w]`` in [0, 1], on their device: ``[N, h, w]`` float32 in {0, 1}.

    The boxes of :func:`box_coords` are the bounding boxes of the 8-connected components of the thresholded map
    (an outer contour bounds its component; hole contours lie inside it), so the union is built from labelled
    components (:func:`components`): each label's row and column range is a box. No per-map loop, no copy to the
    host, and a fixed number of steps: nothing waits for the device.
    """
    n, h, w = cams.shape
    if n == 0:
        return torch.zeros_like(cams)
    u8 = (cams.float() * 255).to(torch.uint8)  # as numpy's astype: truncation
    peak = u8.flatten(1).amax(1).double()
    binary = u8 > (threshold * peak).floor()[:, None, None]  # int(threshold * max), as scoremap2bbox
    return _union_of_boxes(components(binary), parity)


def component_rounds(pixels: int) -> int:
    """How many hook-and-compress rounds :func:`components` runs on maps of ``pixels`` pixels (see there)."""
    return 2 * math.ceil(math.log2(pixels)) if pixels > 1 else 0


def components(binary: torch.Tensor, rounds: int | None = None) -> torch.Tensor:
    """The 8-connected components of ``[N, h, w]`` boolean maps: ``[N, h, w]`` int64 labels, 0 off the maps'
    foreground, and on it one label in 1..hw per component (its largest pixel number, counting from 1 in raster
    order). A fixed number of steps that provably suffices, so that the device is never asked whether it is done.

    Every foreground pixel points to a parent pixel of its component (a forest, kept as *stars*: every pixel
    points to its tree's root). A round (1) *hooks*: each star's root takes as parent the largest root among the
    stars touching it (one 3x3 max and one scatter-max), and (2) *compresses*: ``parent = parent[parent]`` until
    every pixel points to a root again. Why ``2 * ceil(log2(hw))`` rounds suffice: a star hooks exactly when a
    touching star has a larger root, so after a round the stars of a component are its previous local maxima
    (``m`` of ``k``). A local maximum nobody hooked onto (alone) touches only stars that hooked onto larger roots,
    so it hooks in the next round; every other new star holds >= 2 old ones. Two rounds thus at least halve the
    stars of a component that has more than one, and a component starts with at most hw. Compression: a hook
    chain passes distinct, increasing roots, so a pixel is at most hw + 1 steps from its root, and each
    ``parent[parent]`` halves that: ``ceil(log2(hw + 1))`` of them. tests/test_cam.py checks spirals and
    serpentines (the longest paths a grid has) and OpenCV's contours on random maps.
    """
    n, h, w = binary.shape
    hw = h * w
    foreground = binary.reshape(n, hw)
    own = torch.arange(1, hw + 1, device=binary.device).expand(n, hw)
    # parent[:, 0] is a sink that background pixels point to; pixel i is parent[:, i + 1]
    parent = torch.cat([torch.zeros(n, 1, dtype=torch.long, device=binary.device),
                        torch.where(foreground, own, 0)], 1)
    rounds = component_rounds(hw) if rounds is None else rounds  # fewer only to show that the bound is needed
    jumps = math.ceil(math.log2(hw + 1))
    for _ in range(rounds):
        roots = parent[:, 1:]
        touching = torch.nn.functional.max_pool2d(roots.view(n, 1, h, w).float(), 3, stride=1, padding=1)
        touching = touching.view(n, hw).long() * foreground  # the largest root in each pixel's 3x3 neighbourhood
        parent = parent.scatter_reduce(1, roots, touching, "amax")  # each root hooks onto its largest neighbour
        for _ in range(jumps):
            parent = parent.gather(1, parent)
    return parent[:, 1:].view(n, h, w)


def _union_of_boxes(labels: torch.Tensor, parity: bool) -> torch.Tensor:
    """``[N, h, w]`` component labels (0 = none, else 1..hw) -> the union of the components' bounding boxes
    ``[N, h, w]`` float32, with CLIP-ES's clipped box ends under ``parity`` (see :func:`box_coords`)."""
    n, h, w = labels.shape
    slots = h * w + 1
    dev = labels.device
    index = (torch.arange(n, device=dev)[:, None] * slots + labels.flatten(1)).flatten()
    rows = torch.arange(h, device=dev).repeat_interleave(w).repeat(n)
    cols = torch.arange(w, device=dev).repeat(h).repeat(n)

    def reduce(values: torch.Tensor, how: str, start: int) -> torch.Tensor:
        return torch.full((n * slots,), start, device=dev).scatter_reduce(0, index, values, how)

    y0, y1 = reduce(rows, "amin", h), reduce(rows, "amax", -1) + 1
    x0, x1 = reduce(cols, "amin", w), reduce(cols, "amax", -1) + 1
    if parity:
        y1, x1 = y1.clamp_max(h - 1), x1.clamp_max(w - 1)
    real = (y1 > 0).view(n, slots)
    real[:, 0] = False  # label 0 is the background, not a component
    in_y = (torch.arange(h, device=dev) >= y0[:, None]) & (torch.arange(h, device=dev) < y1[:, None])
    in_x = (torch.arange(w, device=dev) >= x0[:, None]) & (torch.arange(w, device=dev) < x1[:, None])
    in_y = (in_y.view(n, slots, h) & real[..., None]).float()
    in_x = in_x.view(n, slots, w).float()
    return ((in_y.transpose(1, 2) @ in_x) > 0).float()  # [N, h, w]: inside some component's box


__all__ = ["affinity", "box_masks", "component_rounds", "components"]

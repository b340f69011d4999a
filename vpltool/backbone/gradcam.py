"""Softmax-GradCAM of CLIP-ES (``generate_cams_voc12.py`` with ``pytorch_grad_cam``), re-running only the last block.

The stages reach it through :meth:`ClipBackbone.gradcam` (one image) and :meth:`ClipBackbone.gradcam_batch` (B images
of one grid): every class map of every image from one forward and one backward of the last block, on one row per
(image, class) pair. ``w_k = mean_patches dp_k/dA`` and ``cam_k = ReLU(A @ w_k)`` at the last block's ``ln_1`` output
(``layer="input"``, CLIP-ES's target layer and VPL's) or at its output tokens, scaled like CLIP-ES
(:func:`vpltool.kernels.gradcam_scale`). ``exact`` repeats CLIP-ES's own order of operations (``--parity clip-es``).
Every function takes the :class:`~vpltool.backbone.ClipBackbone` as ``bb`` (its last block, projection and device).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError
from ..kernels import gradcam_scale

GRADCAM_LAYERS = ("input", "output")  # the last block's ln_1 output (CLIP-ES, VPL) | its output tokens
GRADCAM_PRECISIONS = ("fp32", "tf32", "bf16")  # of the block GradCAM re-runs (gradcam_batch)


@dataclass
class GradCam:
    """One image's softmax-GradCAM (:meth:`ClipBackbone.gradcam`).

    Attributes:
        maps: ``[K, h, w]`` float32 in [0, 1], scaled like CLIP-ES (min-max twice).
        attention: ``[1 + hw, 1 + hw]`` the last block's head-mean attention.
        probs: ``[K + M]`` the softmax over the image's rows.
        dense: ``[hw, D]`` the patch features of the last block's output (joint space, not normalised).
    """

    maps: torch.Tensor
    attention: torch.Tensor
    probs: torch.Tensor
    dense: torch.Tensor


@dataclass
class SoftmaxRows:
    """The rows each image of a batch takes its softmax over, for :meth:`ClipBackbone.gradcam_batch`.

    Attributes:
        vectors: ``[R, D]`` unit rows (e.g. every row of a prototypes file), best already on the model's device.
        classes: per image, the row index of each of its K_b classes (in label order): one map per class.
        background: the row indices of the M background rows every image's softmax also runs over.
    """

    vectors: torch.Tensor
    classes: Sequence[Sequence[int]]
    background: Sequence[int]

    @classmethod
    def of_image(cls, rows: torch.Tensor, n_classes: int) -> SoftmaxRows:
        """One image whose rows are ``rows`` ``[K + M, D]``: its K classes first, then the M background rows."""
        return cls(rows, [range(n_classes)], range(n_classes, len(rows)))


@dataclass
class BatchGradCam:
    """Softmax-GradCAM of a batch of images (:meth:`ClipBackbone.gradcam_batch`), one map per (image, class) pair.

    Attributes:
        maps: ``[P, h, w]`` float32 in [0, 1], P = sum of the K_b; image b's K_b maps (in label order) are
            ``maps[offsets[b] : offsets[b + 1]]`` (:meth:`image_maps`).
        image_of: ``[P]`` int64 on the model's device: the image of each map.
        offsets: B + 1 host ints (see ``maps``).
        attention: ``[B, 1 + hw, 1 + hw]`` the last block's head-mean attention.
        probs: B tensors ``[K_b + M]``, each image's softmax over its rows (its classes, then the background's).
        tokens: ``[B, 1 + hw, width]`` the last block's output.
    """

    maps: torch.Tensor
    image_of: torch.Tensor
    offsets: list[int]
    attention: torch.Tensor
    probs: list[torch.Tensor]
    tokens: torch.Tensor

    def image_maps(self, b: int) -> torch.Tensor:
        """``[K_b, h, w]``: image b's maps (a view)."""
        return self.maps[self.offsets[b] : self.offsets[b + 1]]


def gradcam(bb, last_block_input: torch.Tensor, grid: tuple[int, int], rows: torch.Tensor, n_classes: int,
            temperature: float, layer: str = "input", exact: bool = False, precision: str = "fp32") -> GradCam:
    """Softmax-GradCAM for the first ``n_classes`` of ``rows`` from one forward of the last block.

    Args:
        last_block_input: ``[1 + hw, width]`` tokens entering the last block.
        rows: ``[K + M, D]`` unit prototypes: the K present classes first, then every background row.
        n_classes: K.
        temperature: of the softmax ``p = softmax(cos(img, rows) / temperature)``.
        layer: ``input``: the activations are the last block's ``ln_1`` output (CLIP-ES's target layer
            ``resblocks[-1].ln_1``, what VPL uses); ``output``: the last block's output tokens.
        exact: repeat CLIP-ES's order of floating-point operations (``--parity clip-es``): the same values up to
            rounding, but the final min-max of CAA magnifies rounding by up to ~10^4 on flat maps, so parity
            needs the same rounding. Slower: one backward per class, the weighted sum in numpy.
        precision: the block's (:func:`gradcam_batch`); ignored with ``exact`` (fp32).

    ``w_k = mean_patches dp_k/dA`` and ``cam_k = ReLU(A @ w_k)``, scaled like CLIP-ES (:func:`gradcam_scale`).
    """
    if layer not in GRADCAM_LAYERS:
        raise VplError(f"--layer {layer!r}: choose {' or '.join(GRADCAM_LAYERS)}")
    if exact:
        return _gradcam_clip_es(bb, last_block_input, grid, rows, n_classes, temperature, layer)
    cam = gradcam_batch(bb, last_block_input[None], grid, SoftmaxRows.of_image(rows, n_classes), temperature, layer,
                        precision)
    return GradCam(cam.maps, cam.attention[0], cam.probs[0], bb.dense(cam.tokens)[0].float())


def gradcam_batch(bb, last_block_input: torch.Tensor, grid: tuple[int, int], rows: SoftmaxRows,
                  temperature: float, layer: str = "input", precision: str = "fp32") -> BatchGradCam:
    """:meth:`gradcam` for B images of one grid: one forward and one plain backward of the last block for the
    whole batch, on one row per (image, class) pair.

    Args:
        last_block_input: ``[B, 1 + hw, width]`` tokens entering the last block.
        rows: each image's softmax rows (:class:`SoftmaxRows`).
        precision: ``fp32`` (CLIP-ES's); ``tf32``: the block's matrix products on a GPU's TF32 tensor cores (their
            inputs rounded to 10 mantissa bits, float32 sums; no effect on a CPU); ``bf16``: the block under
            autocast (its matrix products and their outputs in bf16; layer norms, softmax, the GradCAM weights and
            sums in fp32). benchmarks/study_gradcam_precision.py measured which stay within the CAMs' tolerance.

    Class k of image b needs the gradient of its own ``p_k``, and gradients of different rows of a batch are
    independent: so the block runs on one row per pair (image b's tokens K_b times; an image without classes
    once, for its softmax and attention), and one backward of the sum of every row's own ``p_k`` gives every map.
    No class slots padded to the batch's largest K, no batched vector-Jacobian products; the index tensors reach
    the device in one non-blocking copy, and nothing here waits for the device.
    """
    if layer not in GRADCAM_LAYERS:
        raise VplError(f"--layer {layer!r}: choose {' or '.join(GRADCAM_LAYERS)}")
    plan = _pair_plan(rows, bb.device)
    if precision not in GRADCAM_PRECISIONS:
        raise VplError(f"GradCAM precision {precision!r}: choose {', '.join(GRADCAM_PRECISIONS)}")
    x = last_block_input.to(bb.device, torch.float32).index_select(0, plan.image_of_rows).requires_grad_(True)
    bf16 = precision == "bf16"
    with torch.enable_grad(), _tf32(precision == "tf32"), \
            torch.autocast(bb.device.type, dtype=torch.bfloat16 if bf16 else None, enabled=bf16):
        out, attn, ln1 = bb.block(bb.n_blocks - 1, x, grid, need_weights=True, keep_ln1=layer == "input")
        act = ln1 if layer == "input" else out
        img = _image_embedding(bb, out)  # [P', D]
        scores = img @ rows.vectors.to(img).T / temperature  # [P', R]
        scores = torch.cat([scores, scores.new_full((len(scores), 1), float("-inf"))], 1)  # column R: padding
        probs = scores.gather(1, plan.row_index).softmax(-1)  # [P', Kmax + M]: each row's image's rows, padded
        n = plan.pairs
        if n:
            target = probs[:n].gather(1, plan.slot[:, None]).sum()  # every pair's own class probability
            grads = torch.autograd.grad(target, act)[0][:n, 1:].float()  # [P, hw, width], patch tokens only
    h, w = grid
    attention = attn.detach().index_select(0, plan.first).float()
    tokens = out.detach().index_select(0, plan.first)
    image_probs = [probs[i, : k + plan.n_background].detach() for i, k in zip(plan.first_host, plan.counts)]
    if not n:
        return BatchGradCam(x.new_zeros(0, h, w), plan.image_of, plan.offsets, attention, image_probs, tokens)
    act = act.detach()[:n, 1:].float()
    weights = grads.mean(1)  # [P, width]: GradCAM channel weights
    # a product and a sum over channels per map, not a matmul: a batched matmul rounds differently from a
    # single one (measured on a CPU), this does not, so a batch gives the maps of its images run alone
    maps = torch.relu((act * weights[:, None, :]).sum(-1)).view(n, h, w)
    return BatchGradCam(gradcam_scale(maps), plan.image_of, plan.offsets, attention, image_probs, tokens)


@contextlib.contextmanager
def _tf32(on: bool) -> Iterator[None]:
    """CUDA's matrix products in TF32 inside the block (torch's switch is global: set, then restored)."""
    if not on:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _image_embedding(bb, out: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` float32 unit image embeddings of the last block's output ``[N, 1 + hw, width]``: CLIP-ES's mean of
    the projected patch tokens, as ``ln_post``, the patch mean, then ``proj`` (the projection is linear), the
    projection as a product and a sum: a matmul's rounding depends on how many rows it has (measured on a CPU),
    this does not, so an image's softmax is the same in any batch."""
    v = bb.visual
    pooled = v.ln_post(out[:, 1:]).float().mean(1)  # [N, width]
    embedding = pooled if v.proj is None else (pooled[:, :, None] * v.proj.float()).sum(1)
    return F.normalize(embedding, dim=-1)


@dataclass
class _PairPlan:
    """The rows :func:`gradcam_batch` runs the block on: index tensors on the device, from one host tensor."""

    pairs: int  # P: the (image, class) rows come first, then one row per image without classes
    counts: list[int]  # K_b
    offsets: list[int]  # B + 1: image b's pairs are offsets[b]:offsets[b + 1]
    first_host: list[int]  # B: the row whose softmax and attention are image b's
    n_background: int  # M
    image_of_rows: torch.Tensor  # [P'] the image of every row
    image_of: torch.Tensor  # [P] the image of every pair
    slot: torch.Tensor  # [P] each pair's class position among its image's rows
    first: torch.Tensor  # [B] first_host, on the device
    row_index: torch.Tensor  # [P', Kmax + M] score columns per row: its image's classes, the background, padding


def _pair_plan(rows: SoftmaxRows, device: torch.device) -> _PairPlan:
    from ..batches import to_device

    counts = [len(c) for c in rows.classes]
    pairs, kmax, background = sum(counts), max(counts, default=0), list(rows.background)
    pad = len(rows.vectors)  # the -inf column of the scores
    image_of = [b for b, k in enumerate(counts) for _ in range(k)]
    slot = [j for k in counts for j in range(k)]
    empty = [b for b, k in enumerate(counts) if k == 0]
    offsets = [0]
    for k in counts:
        offsets.append(offsets[-1] + k)
    first = [offsets[b] if k else pairs + empty.index(b) for b, k in enumerate(counts)]
    image_rows = image_of + empty
    width = kmax + len(background)
    index = [list(rows.classes[b]) + background + [pad] * (kmax - counts[b]) for b in image_rows]
    flat = image_rows + image_of + slot + first + [r for row in index for r in row]
    packed = to_device(torch.tensor(flat, dtype=torch.long), device)
    parts = packed.split([len(image_rows), pairs, pairs, len(counts), len(image_rows) * width])
    return _PairPlan(pairs, counts, offsets, first, len(background), parts[0], parts[1], parts[2], parts[3],
                     parts[4].view(len(image_rows), width))


def _gradcam_clip_es(bb, last_block_input: torch.Tensor, grid: tuple[int, int], rows: torch.Tensor,
                     n_classes: int, temperature: float, layer: str) -> GradCam:
    """:meth:`gradcam` in CLIP-ES's operation order (``clip/model.py:forward_last_layer``, pytorch_grad_cam's
    ``BaseCAM.forward`` and ``GradCAM.get_cam_weights``): ``ln_post`` then the patch mean then ``proj``; the
    logit scale multiplied in (not a division by the temperature); one backward per class; channel weights and
    the weighted sum in numpy float32 on ``[1, C, h, w]`` arrays laid out as its ``reshape_transform`` leaves
    them (channels fastest)."""
    v = bb.visual
    scale = bb.model.logit_scale.exp().float()
    if abs(1.0 / temperature - float(scale)) > 1e-6 * float(scale):  # vision prototypes: their own temperature
        scale = torch.tensor(1.0 / temperature, dtype=torch.float32)
    x = last_block_input.to(bb.device, torch.float32)[None].requires_grad_(True)
    with torch.enable_grad(), torch.autocast(bb.device.type, enabled=False):
        out, attn, ln1 = bb.block(bb.n_blocks - 1, x, grid, need_weights=True, keep_ln1=layer == "input")
        act = ln1 if layer == "input" else out
        img = torch.mean(v.ln_post(out)[:, 1:, :], dim=1) @ v.proj
        img = img / img.norm(dim=1, keepdim=True)
        text = rows.to(img)
        text = text / text.norm(dim=1, keepdim=True)
        probs = (scale.to(img.device) * img @ text.t()).softmax(dim=-1)  # [1, K + M]
        grads = [torch.autograd.grad(probs[:, k], act, retain_graph=True)[0] for k in range(n_classes)]
    dense = bb.dense(out.detach())[0]
    h, w = grid
    chw = act.detach()[0, 1:].cpu().numpy().reshape(1, h, w, -1).transpose(0, 3, 1, 2)  # [1, C, h, w]
    maps = []
    for g in grads:
        g = g[0, 1:].cpu().numpy().reshape(1, h, w, -1).transpose(0, 3, 1, 2)
        weights = np.mean(g, axis=(2, 3))  # [1, C]
        cam = (weights[:, :, None, None] * chw).sum(axis=1)  # [1, h, w]
        maps.append(np.maximum(cam, 0).astype(np.float32)[0])
    maps = torch.from_numpy(np.stack(maps)) if maps else torch.zeros(0, h, w)
    return GradCam(gradcam_scale(maps), attn[0].detach(), probs[0].detach(), dense)

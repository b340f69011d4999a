"""Softmax-GradCAM of CLIP-ES (``generate_cams_voc12.py`` with ``pytorch_grad_cam``), re-running only the last block.

The stages reach it through :meth:`ClipBackbone.gradcam` (one image) and :meth:`ClipBackbone.gradcam_batch` (B images
of one grid): every class map of every image, the images batched by label count (one forward of the last block per
group, one backward per class). ``w_k = mean_patches dp_k/dA`` and ``cam_k = ReLU(A @ w_k)`` at the last block's
``ln_1`` output (``layer="input"``, CLIP-ES's target layer and VPL's) or at its output tokens, scaled like CLIP-ES
(:func:`vpltool.ops.kernels.gradcam_scale`). ``exact`` repeats CLIP-ES's own order of operations (``--parity clip-es``).
The score is CLIP-ES's softmax over an image's rows, or a SigLIP's own sigmoid (:func:`image_scores`); the image
embedding the tower's patch mean (:mod:`vpltool.models.backbones.towers`).
Every function takes the :class:`~vpltool.models.ClipBackbone` as ``bb`` (its last block, projection and device).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ...errors import VplError
from ...ops.kernels import gradcam_scale

if TYPE_CHECKING:
    from ...io import Prototypes

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
    """

    maps: torch.Tensor
    image_of: torch.Tensor
    offsets: list[int]
    attention: torch.Tensor
    probs: list[torch.Tensor]

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
    outputs = []
    cam = gradcam_batch(bb, last_block_input[None], grid, SoftmaxRows.of_image(rows, n_classes), temperature, layer,
                        precision, outputs)
    return GradCam(cam.maps, cam.attention[0], cam.probs[0], bb.dense(outputs[0])[0].float())


def gradcam_batch(bb, last_block_input: torch.Tensor, grid: tuple[int, int], rows: SoftmaxRows,
                  temperature: float, layer: str = "input", precision: str = "fp32",
                  outputs: list | None = None) -> BatchGradCam:
    """:meth:`gradcam` for B images of one grid, batched by label count: per group of images with the same K, one
    forward of the last block and K plain backward passes (the k-th gives every image of the group its k-th class's
    gradient: images are independent).

    Args:
        last_block_input: ``[B, 1 + hw, width]`` tokens entering the last block.
        rows: each image's softmax rows (:class:`SoftmaxRows`).
        precision: ``fp32`` (CLIP-ES's); ``tf32``: the block's matrix products on a GPU's TF32 tensor cores (their
            inputs rounded to 10 mantissa bits, float32 sums; no effect on a CPU); ``bf16``: the block under
            autocast (its matrix products and their outputs in bf16; layer norms, softmax, the GradCAM weights and
            sums in fp32). studies/study_gradcam_precision.py measured which stay within the CAMs' tolerance.
        outputs: when given, the last block's output ``[B_g, 1 + hw, width]`` of each group is appended (one group:
            the batch's).

    No class slots padded to the batch's largest K (VOC: 1.5 labels per image, 1 to 6), no batched
    vector-Jacobian products, and each image's block runs once: the fewest FLOPs (bench/bench_flops.py). A batch
    of one image (the CPU's default) is CLIP-ES's own schedule, one forward and one backward per class. The index
    tensors reach the device in one non-blocking copy; nothing here waits for the device.
    """
    if layer not in GRADCAM_LAYERS:
        raise VplError(f"--layer {layer!r}: choose {' or '.join(GRADCAM_LAYERS)}")
    if precision not in GRADCAM_PRECISIONS:
        raise VplError(f"GradCAM precision {precision!r}: choose {', '.join(GRADCAM_PRECISIONS)}")
    plan = _group_plan(rows, bb.device)
    x = last_block_input.to(bb.device, torch.float32).detach()
    h, w = grid
    vectors, attention, probs, maps = rows.vectors, [], [None] * len(plan.counts), []
    for group in plan.groups:
        xg = (x if group.whole else x.index_select(0, group.images)).requires_grad_(True)
        bf16 = precision == "bf16"
        with torch.enable_grad(), _tf32(precision == "tf32"), \
                torch.autocast(bb.device.type, dtype=torch.bfloat16 if bf16 else None, enabled=bf16):
            out, attn, ln1 = bb.block(bb.n_blocks - 1, xg, grid, need_weights=True, keep_ln1=layer == "input")
            act = ln1 if layer == "input" else out
            img = bb.tower.pooled(out)  # [n, D]: the mean of the projected patch tokens, unit
            scores = img @ vectors.to(img).T / temperature  # [n, R]
            p = image_scores(bb, scores.gather(1, group.row_index))  # [n, K + M]: its classes, then background
            grads = [torch.autograd.grad(p[:, j].sum(), act, retain_graph=j < group.k - 1)[0]
                     for j in range(group.k)]
        attention.append(attn.detach().float())
        for i, b in enumerate(group.members):
            probs[b] = p[i].detach()
        if outputs is not None:
            outputs.append(out.detach())
        if group.k:
            n = bb.n_prefix  # the class token (if any) carries no map
            patches = act.detach()[:, n:].float()
            # GradCAM's weights (the patch mean of each gradient), then a product and a sum over channels per map,
            # not a matmul: a batched matmul rounds differently from a single one (measured on a CPU), this does not
            cams = torch.stack([(patches * g[:, n:].float().mean(1)[:, None, :]).sum(-1) for g in grads], 1)
            maps.append(torch.relu(cams).flatten(0, 1))  # [n * K, hw]: image by image, class by class
    attention = attention[0] if plan.one_group else torch.cat(attention).index_select(0, plan.image_order)
    if not maps:
        return BatchGradCam(x.new_zeros(0, h, w), plan.image_of, plan.offsets, attention, probs)
    maps = maps[0] if plan.one_group else torch.cat(maps).index_select(0, plan.pair_order)
    return BatchGradCam(gradcam_scale(maps.view(-1, h, w)), plan.image_of, plan.offsets, attention, probs)


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


def image_scores(bb, logits: torch.Tensor) -> torch.Tensor:
    """The image-text score GradCAM differentiates, from ``logits`` ``[n, K + M]`` (``cos / temperature`` of each
    image with its K class rows, then the M background rows):

    * a CLIP trained with the softmax loss (OpenAI's, LAION's, MetaCLIP, PE-Core): CLIP-ES's softmax over the
      image's rows, so that a class's map is pushed away from what the background rows and the other classes
      explain;
    * SigLIP (the model has a ``logit_bias``: trained with the pairwise sigmoid loss, each image-text pair an
      independent yes/no): its own score ``sigmoid(logit + bias)`` per row. The rows no longer compete: class k's
      gradient is its own cosine's times ``sigmoid'(z_k) / temperature``, a positive number that CLIP-ES's min-max
      scaling removes, so its map is the GradCAM of its cosine and the background rows play no part. A softmax over
      SigLIP's logits would be a distribution over prompts its loss never made.
    """
    if bb.logit_bias is None:
        return logits.softmax(-1)
    return (logits + bb.logit_bias).sigmoid()


@dataclass
class _Group:
    """The images of a batch that have K classes each."""

    k: int
    members: list[int]  # their positions in the batch
    whole: bool  # every image of the batch: no gather
    images: torch.Tensor  # [n] members, on the device
    row_index: torch.Tensor  # [n, K + M] each member's score columns: its classes, then the background rows


@dataclass
class _GroupPlan:
    """How :func:`gradcam_batch` runs a batch: its groups, and where their results go (index tensors on the device,
    made from one host tensor in one non-blocking copy)."""

    counts: list[int]  # K_b
    offsets: list[int]  # B + 1: image b's maps are offsets[b]:offsets[b + 1]
    groups: list[_Group]
    one_group: bool
    image_of: torch.Tensor  # [P] the image of every map
    image_order: torch.Tensor  # [B] where image b's row is among the groups' rows, concatenated
    pair_order: torch.Tensor  # [P] where map p is among the groups' maps, concatenated


def _group_plan(rows: SoftmaxRows, device: torch.device) -> _GroupPlan:
    from ...runtime.batches import to_device

    counts = [len(c) for c in rows.classes]
    offsets = [0]
    for k in counts:
        offsets.append(offsets[-1] + k)
    ks = sorted(set(counts))
    members = {k: [b for b, kb in enumerate(counts) if kb == k] for k in ks}
    background = list(rows.background)
    order = [b for k in ks for b in members[k]]  # images in the groups' order
    position = {b: i for i, b in enumerate(order)}
    pair_start = {}
    start = 0
    for b in order:
        pair_start[b] = start
        start += counts[b]
    image_of = [b for b, k in enumerate(counts) for _ in range(k)]
    image_order = [position[b] for b in range(len(counts))]
    pair_order = [pair_start[b] + j for b, k in enumerate(counts) for j in range(k)]
    tables = [[list(rows.classes[b]) + background for b in members[k]] for k in ks]
    flat = image_of + image_order + pair_order + order + [r for table in tables for row in table for r in row]
    packed = to_device(torch.tensor(flat, dtype=torch.long), device)
    sizes = [len(image_of), len(image_order), len(pair_order)] + [len(members[k]) for k in ks] + [
        len(members[k]) * (k + len(background)) for k in ks]
    parts = packed.split(sizes)
    n = len(ks)
    groups = [_Group(k, members[k], len(ks) == 1, parts[3 + i], parts[3 + n + i].view(len(members[k]), -1))
              for i, k in enumerate(ks)]
    return _GroupPlan(counts, offsets, groups, len(ks) == 1, parts[0], parts[1], parts[2])


def _gradcam_clip_es(bb, last_block_input: torch.Tensor, grid: tuple[int, int], rows: torch.Tensor,
                     n_classes: int, temperature: float, layer: str) -> GradCam:
    """:meth:`gradcam` in CLIP-ES's operation order (``clip/model.py:forward_last_layer``, pytorch_grad_cam's
    ``BaseCAM.forward`` and ``GradCAM.get_cam_weights``): ``ln_post`` then the patch mean then ``proj``; the
    logit scale multiplied in (not a division by the temperature); one backward per class; channel weights and
    the weighted sum in numpy float32 on ``[1, C, h, w]`` arrays laid out as its ``reshape_transform`` leaves
    them (channels fastest)."""
    if bb.tower.kind != "open_clip" or bb.logit_bias is not None:
        raise VplError(f"--parity clip-es repeats CLIP-ES's code on an open_clip ViT; {bb.spec.model} is not one")
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


class PrototypeRows:
    """A prototypes file's rows on the model's device, and each class's row: made once per run, so that a batch's
    softmax rows (:meth:`for_labels`) cost no host work on the tensors and no copy."""

    def __init__(self, protos: Prototypes, device: torch.device):
        self.vectors = protos.vectors.to(device, torch.float32)
        self.class_rows = protos.class_rows().tolist()
        self.background = protos.background_rows().tolist()

    def for_labels(self, labels: Sequence[Sequence[int]]) -> SoftmaxRows:
        """The softmax rows of images with these labels (class ids 1..C)."""
        return SoftmaxRows(self.vectors, [[self.class_rows[c - 1] for c in lab] for lab in labels], self.background)

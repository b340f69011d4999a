"""Softmax-GradCAM of CLIP-ES (``generate_cams_voc12.py`` with ``pytorch_grad_cam``), re-running only the last block.

The stages reach it through :meth:`ClipBackbone.gradcam` (one image) and :meth:`ClipBackbone.gradcam_batch` (B images
of one grid): every class map of every image from one forward of the last block, in fp32 (fp16 gradients underflow
on real photos). ``w_k = mean_patches dp_k/dA`` and ``cam_k = ReLU(A @ w_k)`` at the last block's ``ln_1`` output
(``layer="input"``, CLIP-ES's target layer and VPL's) or at its output tokens, scaled like CLIP-ES
(:func:`vpltool.kernels.gradcam_scale`). ``exact`` repeats CLIP-ES's own order of operations (``--parity clip-es``).
Every function takes the :class:`~vpltool.backbone.ClipBackbone` as ``bb`` (its last block, projection and device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError
from ..kernels import gradcam_scale

GRADCAM_LAYERS = ("input", "output")  # the last block's ln_1 output (CLIP-ES, VPL) | its output tokens


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
class BatchGradCam:
    """Softmax-GradCAM of a batch of images (:meth:`ClipBackbone.gradcam_batch`).

    Attributes:
        maps: ``[B, Kmax, h, w]`` float32 in [0, 1]; image b's first ``K_b`` maps are its classes', the rest zeros.
        attention: ``[B, 1 + hw, 1 + hw]`` the last block's head-mean attention.
        probs: B tensors ``[K_b + M]``, each image's softmax over its rows.
        dense: ``[B, hw, D]`` the patch features of the last block's output (joint space, not normalised).
    """

    maps: torch.Tensor
    attention: torch.Tensor
    probs: list[torch.Tensor]
    dense: torch.Tensor



def gradcam(bb, last_block_input: torch.Tensor, grid: tuple[int, int], rows: torch.Tensor, n_classes: int,
            temperature: float, layer: str = "input", exact: bool = False) -> GradCam:
    """Softmax-GradCAM for the first ``n_classes`` of ``rows`` from one forward of the last block, in fp32.

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

    ``w_k = mean_patches dp_k/dA`` and ``cam_k = ReLU(A @ w_k)``, scaled like CLIP-ES (:func:`gradcam_scale`);
    fp32 throughout (fp16 gradients underflow on real photos).
    """
    if layer not in GRADCAM_LAYERS:
        raise VplError(f"--layer {layer!r}: choose {' or '.join(GRADCAM_LAYERS)}")
    if exact:
        return _gradcam_clip_es(bb, last_block_input, grid, rows, n_classes, temperature, layer)
    cam = gradcam_batch(bb, last_block_input[None], grid, [rows], [n_classes], temperature, layer)
    return GradCam(cam.maps[0, :n_classes], cam.attention[0], cam.probs[0], cam.dense[0])

def gradcam_batch(bb, last_block_input: torch.Tensor, grid: tuple[int, int], rows: Sequence[torch.Tensor],
                  n_classes: Sequence[int], temperature: float, layer: str = "input") -> BatchGradCam:
    """:meth:`gradcam` for B images of one grid from one forward of the last block, in fp32.

    Args:
        last_block_input: ``[B, 1 + hw, width]`` tokens entering the last block.
        rows: B tensors ``[K_b + M, D]``: image b's present classes first, then every background row.
        n_classes: the B ``K_b``.

    The images' gradients are independent, so one backward per class *slot* serves every image (slot k = the
    k-th class of each image that has one): ``max_b K_b`` backward passes on a CPU, one batched backward
    (``is_grads_batched``) on CUDA. Each image's softmax is its own (its own rows), so a batch of one gives
    the same maps as the batch it came from.
    """
    if layer not in GRADCAM_LAYERS:
        raise VplError(f"--layer {layer!r}: choose {' or '.join(GRADCAM_LAYERS)}")
    x = last_block_input.to(bb.device, torch.float32).requires_grad_(True)
    n_img, kmax = len(x), max(n_classes, default=0)
    with torch.enable_grad(), torch.autocast(bb.device.type, enabled=False):
        out, attn, ln1 = bb.block(bb.n_blocks - 1, x, grid, need_weights=True, keep_ln1=layer == "input")
        act = ln1 if layer == "input" else out
        dense = bb.dense(out)  # [B, hw, D]
        img = F.normalize(dense.mean(1), dim=-1)  # [B, D]: CLIP-ES's patch-mean image embedding
        probs = [(img[b : b + 1] @ r.to(img).T / temperature).softmax(-1)[0] for b, r in enumerate(rows)]
        if kmax == 0:
            return BatchGradCam(torch.zeros(n_img, 0, *grid, device=x.device), attn.detach(),
                                [p.detach() for p in probs], dense.detach())
        slots = torch.stack([F.pad(p[:k], (0, kmax - k)) for p, k in zip(probs, n_classes)])  # [B, Kmax]
        grads = _slot_gradients(slots, act)  # [Kmax, B, 1+hw, width]
    act, grads = act[:, 1:].detach(), grads[:, :, 1:]  # patch tokens only
    weights = grads.mean(2)  # [Kmax, B, width]: GradCAM channel weights
    # a product and a sum over channels per map, not a matmul: a batched matmul rounds differently from a
    # single one (measured on a CPU), this does not, so a batch gives the maps of its images run alone
    maps = torch.stack([(act * w[:, None, :]).sum(-1) for w in weights], 1)  # [B, Kmax, hw]
    maps = torch.relu(maps).view(n_img, kmax, *grid)
    return BatchGradCam(gradcam_scale(maps), attn.detach(), [p.detach() for p in probs], dense.detach())

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


def _slot_gradients(slots: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``[Kmax, *act.shape]``: the gradient of every image's k-th class probability ``slots[:, k]`` with respect to
    ``act`` ``[B, L, width]`` (images are independent, so one backward of ``slots[:, k].sum()`` gives all B).

    On CUDA one batched backward (``is_grads_batched``: the Kmax vector-Jacobian products run as one batch). On a CPU
    one backward per slot: measured faster there (1.48 s vs 1.61 s for K = 2 on ViT-B/16 at 384x512, one thread),
    and a scalar backward does not import sympy, which an explicit ``grad_outputs`` does (~1 s, once per process).
    """
    k = slots.shape[1]
    if slots.device.type == "cuda":
        eye = torch.eye(k, device=slots.device)[:, None, :].expand(k, *slots.shape)  # [Kmax, B, Kmax]
        return torch.autograd.grad(slots, act, grad_outputs=eye, is_grads_batched=True)[0]
    return torch.stack([torch.autograd.grad(slots[:, i].sum(), act, retain_graph=i < k - 1)[0] for i in range(k)])

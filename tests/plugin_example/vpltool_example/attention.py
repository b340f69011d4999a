"""The example's attention method (imported only when ``--dense example-vv`` runs): the last block's attention
replaced by value-value attention, ``softmax(v vᵀ / sqrt(hd)) v`` per head (the v-v path of CLIP Surgery, shown
here as the form of the commonest training-free method, not as that paper's whole method), without the block's
residual and MLP, as ClearCLIP and NACLIP drop them.

A method of this kind is a preset and one hook: vpltool runs blocks ``0..L-2``, hands the last block's q, k and v
per head to :meth:`Hooks.attention` (as the model computes them: open_clip's packed projection, or a timm tower's
after its norms and RoPE, so the method runs on SigLIP 2 and PE-Core too; its spec row says ``timm_tower=True``),
then applies ``out_proj``, the preset's residual and MLP, ``ln_post`` and the projection, and segments as every
method does (windows, PAMR, the threshold).
"""

from __future__ import annotations

import torch

from vpltool.models.dense import DenseHooks, DenseMixing

# attention "hook": this module's Hooks.attention; residual and MLP dropped; the positions resized as DINO's
PRESET = DenseMixing("example-vv", "hook", residual=False, ffn=False, pos_interpolation="bicubic-dino")


def vv_attention(v: torch.Tensor) -> torch.Tensor:
    """``[B, heads, L, hd]`` values -> ``softmax(v vᵀ / sqrt(hd)) v``, the same shape."""
    weights = torch.softmax((v @ v.transpose(-1, -2)) * v.shape[-1] ** -0.5, dim=-1)
    return weights @ v


class Hooks(DenseHooks, method="example-vv", preset=PRESET):
    """The example's one hook: the last block's attention."""

    def attention(self, q, k, v, grid, lead):
        return vv_attention(v)

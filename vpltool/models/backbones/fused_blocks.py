"""timm's ViT block (``vision_transformer.Block``) for a frozen model's inference with fewer passes over its tokens.

timm's forward runs ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``: each residual is two passes and a
new ``[B, N, C]`` tensor (the layer scale's product, then the sum), and the MLP's GELU writes a third ``[B, N, 4C]``
tensor. :class:`FusedBlock` adds each scaled branch in one pass (``addcmul``: the first into a new tensor, the block's
input left as it was for whoever holds it, a hook or a list of intermediates; the second into that tensor, in place)
and runs the GELU in place; the attention, norms and linear layers are the block's own modules, called as timm calls
them.

``addcmul`` rounds ``x + y * s`` once where timm rounds the product and the sum apiece (one float32 ulp of a token
apart): so the fused forward is taken only outside reproducible mode (:mod:`vpltool.runtime.numerics`), without
gradients, in eval mode and without an attention mask; anything else is timm's own forward, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn


def _fusable(block: nn.Module, x: torch.Tensor, attn_mask, is_causal: bool) -> bool:
    """Whether :class:`FusedBlock`'s forward computes what timm's would, within float rounding (module docstring)."""
    from ...runtime.numerics import reproducible_asked

    if block.training or attn_mask is not None or is_causal or reproducible_asked():
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters())))


def _add_scaled(x: torch.Tensor, y: torch.Tensor, scale: nn.Module, into_x: bool) -> torch.Tensor:
    """``x + scale(y)`` in one pass, into ``x`` where ``into_x`` (else a new tensor): a timm ``LayerScale``'s
    ``gamma`` ``[C]`` in the same pass, an identity none."""
    gamma = getattr(scale, "gamma", None)
    if into_x:
        return x.add_(y) if gamma is None else x.addcmul_(y, gamma)
    return x + y if gamma is None else torch.addcmul(x, y, gamma)


def mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``Mlp`` (``fc1``, ``act``, ``norm``, ``fc2``; dropouts are identities in eval mode), its tanh GELU in
    place (``aten.gelu_``: the same values as ``nn.GELU``'s, into ``fc1``'s output), its exact GELU as
    :func:`.mkl_packed.linear_gelu` runs it (in oneDNN's call where the product is oneDNN's)."""
    from .mkl_packed import linear_gelu

    act = mlp.act
    if type(act) is nn.GELU and act.approximate == "none":
        return mlp.fc2(mlp.norm(linear_gelu(mlp.fc1, x)))
    h = mlp.fc1(x)
    h = torch.ops.aten.gelu_(h, approximate=act.approximate) if type(act) is nn.GELU else act(h)
    return mlp.fc2(mlp.norm(h))


class FusedBlock(nn.Module):
    """A timm ``Block`` (the class is swapped in place by :func:`use_fused_blocks`: parameters, state dict and
    submodules unchanged) whose inference adds each branch in one pass (module docstring). ``x`` ``[B, N, C]`` float
    -> ``[B, N, C]``, ``x`` unchanged."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
                ) -> torch.Tensor:
        if not _fusable(self, x, attn_mask, is_causal):
            return self._timm_class.forward(self, x, attn_mask=attn_mask, is_causal=is_causal)
        x = _add_scaled(x, self.attn(self.norm1(x)), self.ls1, into_x=False)  # the block's input left unchanged
        return _add_scaled(x, mlp_forward(self.mlp, self.norm2(x)), self.ls2, into_x=True)  # the block's own tensor


_CLASSES: dict[type, type] = {}  # timm's block class -> its fused subclass (one class, made once)


def use_fused_blocks(blocks) -> int:
    """Each timm ``vision_transformer.Block`` of ``blocks`` whose MLP is timm's ``Mlp`` made a :class:`FusedBlock`
    in place (idempotent); returns how many. Others (another block class, a gated MLP) are left as they are."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Block

    n = 0
    for block in blocks:
        if isinstance(block, FusedBlock):
            n += 1
        elif type(block) is Block and type(block.mlp) is Mlp:
            if Block not in _CLASSES:
                _CLASSES[Block] = type("FusedTimmBlock", (FusedBlock, Block), {"_timm_class": Block,
                                                                             "__module__": __name__})
            block.__class__ = _CLASSES[Block]
            n += 1
    return n


__all__ = ["FusedBlock", "mlp_forward", "use_fused_blocks"]

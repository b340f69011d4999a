"""How DINO's and DINOv2's blocks mix their tokens on timm's ``Attention`` modules, as their own code does (the
``dino`` family's forward, :mod:`.dino`): the attention written out by blocks of query rows (DINO) or the fused
kernel (DINOv2), the weights recomputed for a method that reads them, and ``LayerScale`` in place at inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_scaled(layer_scale, y: torch.Tensor) -> torch.Tensor:
    """``layer_scale(y)`` for a block's fresh output ``y``: timm's ``LayerScale`` (DINOv2's ``ls1`` / ``ls2``) in
    place where no gradient is recorded (the same product, one activation fewer), ``Identity`` (DINO's) as it is."""
    gamma = getattr(layer_scale, "gamma", None)
    if gamma is None or torch.is_grad_enabled() or gamma.dtype != y.dtype:
        return layer_scale(y)
    return y.mul_(gamma)


def dino_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    """A DINO block's ``mlp(x)``, ``[B, N, C]`` -> ``[B, N, C]``: timm's ``Mlp`` with the exact GELU where no
    dropout is live (``fc1`` and its GELU in one oneDNN call where the product is oneDNN's:
    :func:`.mkl_packed.linear_gelu`; the same values), any other MLP as it is."""
    from torch import nn

    from .fused_blocks import mlp_forward

    act = getattr(mlp, "act", None)
    if type(act) is not nn.GELU or act.approximate != "none" or type(mlp).__name__ != "Mlp" or (
            mlp.training and (mlp.drop1.p or mlp.drop2.p)):
        return mlp(x)
    return mlp_forward(mlp, x)  # its dropouts are identities here


def dino_attention(attn, x: torch.Tensor, qkv: torch.Tensor | None = None, fused: bool = False) -> torch.Tensor:
    """DINO's ``Attention.forward`` on timm's ``Attention`` module, ``proj(softmax((q kᵀ) scale) v)`` on ``x``
    ``[B, N, C]`` -> ``[B, N, C]`` (``qkv``: the module's ``qkv(x)`` when the caller has it already). ``fused``:
    ``F.scaled_dot_product_attention``, as DINOv2's own ``Attention`` calls it; else written out as DINO's own
    code writes it (:func:`written_attention`). Neither keeps the weights: a method that reads them recomputes
    them (:func:`mean_attention_weights`)."""
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = (attn.qkv(x) if qkv is None else qkv).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    if fused:
        mixed = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        mixed = written_attention(q, k, v, attn.scale)
    return attn.proj(mixed.transpose(1, 2).reshape(b, n, c))


# query rows per block of the written-out attention: a [rows, N] block of one head's weights stays in the cache
# (0.9 MB at DINO B/8's 1,765 tokens of a 336-pixel window; 256 rows were as fast)
ROWS = 128


def written_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax((q kᵀ) scale) v`` of ``[B, heads, N, hd]`` q, k, v, in DINO's order (the product, the scale,
    the softmax, the product with v), one head and :data:`ROWS` query rows at a time: each row's sums are the ones
    the whole ``[B, heads, N, N]`` product makes (a random DINO B/8's final tokens equal bit for bit on the
    project's 2-core EPYC), without writing that tensor out: its forward took 1.2x the CPU-seconds at 785 tokens
    and 1.6x at 1,765 that way."""
    n = q.shape[-2]
    rows = [torch.cat([((qh[r:r + ROWS] @ kh.T) * scale).softmax(-1) @ vh for r in range(0, n, ROWS)])
            for qh, kh, vh in zip(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))]
    return torch.stack(rows).unflatten(0, q.shape[:2])


def fused_qkv(qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(q, k, v)``, each ``[B, heads, N, hd]`` -> ``[B, N, 3 * heads * hd]`` in a fused ``qkv`` linear's layout."""
    q, k, v = qkv
    b, heads, n, hd = q.shape
    return torch.stack([q, k, v], 2).permute(0, 3, 2, 1, 4).reshape(b, n, 3 * heads * hd)


def mean_attention_weights(attn, x: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]`` head-mean ``softmax(q k^T * scale)`` of timm ``Attention`` module ``attn`` on its input ``x``
    ``[B, N, C]`` (recomputed: the fused kernel does not return the weights)."""
    b, n, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(-1).mean(1)


__all__ = ["ROWS", "mean_attention_weights", "dino_attention", "dino_mlp", "fused_qkv", "layer_scaled",
           "written_attention"]

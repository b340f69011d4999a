"""The frozen towers' linear layers on a CPU in fp32: oneDNN's matrix product in place of MKL's.

torch runs an fp32 ``nn.Linear`` on a CPU through MKL's ``sgemm``. On this project's AMD EPYC (AVX-512, no AMX)
that takes about twice the time of oneDNN's product (also inside torch): a ``[1768, 768] x [768, 3072]`` product,
one thread, 79 against 37 ms; from 4 rows up oneDNN took 0.45 to 0.71 of MKL's time, at 1 and 2 rows about as long
or longer (``bench/bench_cpu_linear.py``, ``bench/results/cpu_linear.json``). Both are fp32 products with fp32 sums
(on unit-scale rows and outputs, within 6.3e-6 of float64 for oneDNN, 2.3e-6 for MKL); they add in another order,
so their results differ in the last bits.

:func:`linear` is ``F.linear`` through oneDNN where that is the same arithmetic: a CPU tensor and weights in fp32,
at least :data:`MIN_ROWS` rows, no gradient asked for, no autocast, and not reproducible mode (its pins and the
bits it promises are MKL's, with its conditional numerical reproducibility: :mod:`vpltool.numerics`). Elsewhere it
is ``F.linear`` itself. :func:`route` makes a frozen tower's ``nn.Linear`` layers call it (their class swapped for
one that does: the parameters, the state dict and hooks are the same), and :func:`self_attention` is
``nn.MultiheadAttention``'s inference path with its two products through it (the module's own fast path calls MKL
inside one kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_state: dict[str, bool | None] = {"available": None}
ENABLED = True  # False: every product through F.linear (a test's, or a timing's, switch)
# fewer rows than this stay with MKL: two rows took 1.10-1.23 of MKL's time through oneDNN, four 0.65-0.71
# (bench/results/cpu_linear.json, a ViT-B's three shapes)
MIN_ROWS = 4


def _available() -> bool:
    if _state["available"] is None:
        ops = getattr(torch.ops, "mkldnn", None)
        _state["available"] = bool(torch.backends.mkldnn.is_available() and ops is not None
                                   and hasattr(ops, "_linear_pointwise"))
    return bool(_state["available"])


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` takes oneDNN's product for ``x`` and ``weight`` (module docstring)."""
    from ...numerics import reproducible_asked

    if not ENABLED or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if x.dim() < 2 or x.numel() < MIN_ROWS * x.shape[-1] or weight.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # oneDNN's op has no backward
    if torch.is_autocast_enabled("cpu"):
        return False  # autocast would have run F.linear in its own dtype
    return _available() and not reproducible_asked()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``[..., in]`` -> ``[..., out]``, through oneDNN where :func:`applies`."""
    if applies(x, weight) and (bias is None or bias.dtype == torch.float32):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class RoutedLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`linear` (:func:`route` gives a layer this class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RoutedOutProj(nn.modules.linear.NonDynamicallyQuantizableLinear):
    """``nn.MultiheadAttention``'s ``out_proj`` whose forward is :func:`linear` (its own class kept as the base)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# module-level classes, so that a routed model pickles (a worker process, torch.save) and deep-copies as before
_ROUTES = {nn.Linear: RoutedLinear, nn.modules.linear.NonDynamicallyQuantizableLinear: RoutedOutProj}


def route(module: nn.Module) -> nn.Module:
    """Every plain ``nn.Linear`` in ``module`` (and ``nn.MultiheadAttention``'s ``out_proj``) calls :func:`linear`:
    its class becomes :class:`RoutedLinear` (:class:`RoutedOutProj`), a subclass of its own with that forward, in
    place; idempotent. A linear of another class (a LoRA, a quantised layer: its own forward) is left as it is.
    Returns ``module``."""
    for m in module.modules():
        if type(m) in _ROUTES:
            m.__class__ = _ROUTES[type(m)]
    return module


def self_attention(attn: nn.MultiheadAttention, h: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> torch.Tensor | None:
    """``attn(h, h, h, need_weights=False, attn_mask=mask)[0]`` for a batch-first ``[B, L, width]`` ``h`` (``mask``
    additive ``[L, L]`` or None): the packed ``in_proj``, ``softmax(q kᵀ / sqrt(hd) + mask) v`` per head (fused) and
    ``out_proj``, both products through :func:`linear`. None where :func:`applies` does not (the caller runs the
    module) or the module is not a plain packed self-attention."""
    if (not getattr(attn, "batch_first", False) or not getattr(attn, "_qkv_same_embed_dim", False)
            or attn.bias_k is not None or attn.add_zero_attn or attn.dropout and attn.training
            or not applies(h, attn.in_proj_weight)):
        return None
    heads = attn.num_heads
    b, length, width = h.shape
    q, k, v = (t.reshape(b, length, heads, width // heads).transpose(1, 2)
               for t in linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return linear(out.transpose(1, 2).reshape(b, length, width), attn.out_proj.weight, attn.out_proj.bias)


__all__ = ["ENABLED", "RoutedLinear", "RoutedOutProj", "applies", "linear", "route", "self_attention"]

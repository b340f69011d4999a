"""fp32 linear layers through oneDNN's matrix product on the CPU, for a frozen model's inference.

torch's fp32 ``F.linear`` on the CPU calls MKL's sgemm. On an AMD CPU MKL runs narrower kernels than the CPU has, so
the same product through oneDNN (also inside torch: ``torch.ops.mkldnn._linear_pointwise``, the op torch's own
compiler emits for a CPU linear) takes about half the time on an AVX-512 AMD EPYC (``bench/bench_radseg.py`` prints
both rates as ``linear``). The arithmetic is the same, fp32 products summed in fp32, only in another order: the
results differ from MKL's by float rounding.

:func:`use_onednn` turns a module's ``nn.Linear`` layers into :class:`OneDnnLinear` (the same class with another
``forward``: parameters, state dict and ``.to`` unchanged). It calls oneDNN only where that is the same
computation: fp32 input and weights on the CPU, the weights contiguous, and no gradient asked of the layer; anything
else (bf16, CUDA, training) goes through ``F.linear`` as before. In reproducible mode (:mod:`runtime.numerics`) it
changes nothing: that mode pins MKL's code path (``MKL_CBWR``), which has no counterpart in oneDNN.

Where a method calls a layer's weights itself (a packed ``in_proj_weight``, a slice of it), :func:`f_linear` is
``F.linear`` with the same choice; :func:`self_attention` is ``nn.MultiheadAttention``'s inference through it (the
module's own fast path runs MKL's product inside one kernel). Fewer than :data:`MIN_ROWS` rows stay with MKL: on
this project's AMD EPYC, one thread, oneDNN took 0.45 to 0.71 of MKL's time on a ViT-B's layers from 4 to 1,768
rows, 1.10 to 1.23 at 2 rows (``bench/bench_cpu_linear.py``, ``bench/results/cpu_linear.json``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _has_op() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


# probed once, at import: torch.compile's tracer cannot step into the probe (a graph break in every linear layer of a
# compiled frozen forward, train-decoder --compile), while it reads a module's constant and torch's flag
HAS_OP = _has_op()


def available() -> bool:
    """Whether this torch has oneDNN's linear op and it is enabled (``torch.backends.mkldnn``)."""
    return HAS_OP and torch.backends.mkldnn.enabled


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN: ``x`` ``[..., K]`` float32 on the CPU, ``weight`` ``[N, K]``
    contiguous float32, ``bias`` ``[N]`` or None -> ``[..., N]`` float32."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# fewer rows than this stay with MKL's product (module docstring)
MIN_ROWS = 4
ENABLED = True  # False: every product through F.linear (a test's, or a timing's, switch)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`f_linear` takes oneDNN's product for ``x`` and ``weight``: fp32 both, on the CPU, the weight
    contiguous, at least :data:`MIN_ROWS` rows, no gradient asked for, no autocast, not reproducible mode."""
    from ...runtime.numerics import reproducible_asked

    if not ENABLED or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu":
        return False
    if weight.device.type != "cpu" or not weight.is_contiguous() or x.dim() < 2 \
            or x.numel() < MIN_ROWS * x.shape[-1]:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # oneDNN's op has no backward
    if torch.is_autocast_enabled("cpu"):
        return False  # autocast would have run F.linear in its own dtype
    return available() and not reproducible_asked()


def f_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``[..., K]`` -> ``[..., N]``, through oneDNN (:func:`linear`) where
    :func:`applies`, else ``F.linear`` itself."""
    if applies(x, weight) and (bias is None or bias.dtype == torch.float32):
        return linear(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU inference goes through oneDNN (module docstring); made by :func:`use_onednn`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return f_linear(x, self.weight, self.bias)


class OneDnnOutProj(nn.modules.linear.NonDynamicallyQuantizableLinear):
    """``nn.MultiheadAttention``'s ``out_proj`` (its own class kept as the base) through :func:`f_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return f_linear(x, self.weight, self.bias)


def use_onednn(*modules: nn.Module, out_proj: bool = False) -> int:
    """Every plain ``nn.Linear`` inside ``modules`` made an :class:`OneDnnLinear`, in place (idempotent); with
    ``out_proj`` also each ``nn.MultiheadAttention``'s ``out_proj`` an :class:`OneDnnOutProj` (a ``--dense``
    method calls it on its own); returns how many (0 in reproducible mode, or where this torch has no oneDNN).
    The classes are module-level: a converted model pickles (a worker process) and deep-copies as before."""
    from ...runtime.numerics import reproducible_asked

    if reproducible_asked() or not available():
        return 0
    kinds = {nn.Linear: OneDnnLinear}
    if out_proj:
        kinds[nn.modules.linear.NonDynamicallyQuantizableLinear] = OneDnnOutProj
    n = 0
    for module in modules:
        for m in module.modules():
            if type(m) in kinds:
                m.__class__ = kinds[type(m)]
                n += 1
    return n


def self_attention(attn: nn.MultiheadAttention, h: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> torch.Tensor | None:
    """``attn(h, h, h, need_weights=False, attn_mask=mask)[0]`` for a batch-first ``[B, L, width]`` float32 ``h``
    (``mask`` additive ``[L, L]`` or None): the packed ``in_proj``, ``softmax(q kᵀ / sqrt(hd) + mask) v`` per head
    (fused) and ``out_proj``, both products through :func:`f_linear`. None where :func:`applies` does not (the caller
    runs the module) or the module is not a plain packed self-attention."""
    if (not getattr(attn, "batch_first", False) or not getattr(attn, "_qkv_same_embed_dim", False)
            or attn.bias_k is not None or attn.add_zero_attn or (attn.dropout and attn.training)
            or not applies(h, attn.in_proj_weight)):
        return None
    heads = attn.num_heads
    b, length, width = h.shape
    q, k, v = (t.reshape(b, length, heads, width // heads).transpose(1, 2)
               for t in f_linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return f_linear(out.transpose(1, 2).reshape(b, length, width), attn.out_proj.weight, attn.out_proj.bias)


__all__ = ["MIN_ROWS", "available", "applies", "linear", "f_linear", "OneDnnLinear", "OneDnnOutProj", "use_onednn",
           "self_attention"]

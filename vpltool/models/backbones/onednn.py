"""fp32 linear layers through oneDNN's matrix product on the CPU, for a frozen model's inference.

torch's fp32 ``F.linear`` on the CPU calls MKL's sgemm. On an AMD CPU MKL runs narrower kernels than the CPU has, so
the same product through oneDNN (also inside torch: ``torch.ops.mkldnn._linear_pointwise``, the op torch's own
compiler emits for a CPU linear) takes about half the time on an AVX-512 AMD EPYC (``bench/bench_radseg.py`` prints
both rates as ``linear``). The arithmetic is the same, fp32 products summed in fp32, only in another order: the
results differ from MKL's by float rounding.

:func:`use_onednn` turns a module's ``nn.Linear`` layers into :class:`OneDnnLinear` (the same class with another
``forward``: parameters, state dict and ``.to`` unchanged). It calls oneDNN only where that is the same
computation: fp32 input and weights on the CPU, the weights contiguous, and no gradient asked of the layer; anything
else (bf16, CUDA, training) goes through ``F.linear`` as before. In reproducible mode (:mod:`vpltool.numerics`) it
changes nothing: that mode pins MKL's code path (``MKL_CBWR``), which has no counterpart in oneDNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def available() -> bool:
    """Whether this torch has oneDNN's linear op and it is enabled (``torch.backends.mkldnn``)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                    and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN: ``x`` ``[..., K]`` float32 on the CPU, ``weight`` ``[N, K]``
    contiguous float32, ``bias`` ``[N]`` or None -> ``[..., N]`` float32."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU inference goes through oneDNN (module docstring); made by :func:`use_onednn`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype == torch.float32 and w.dtype == torch.float32 and x.device.type == "cpu"
                and w.device.type == "cpu" and w.is_contiguous()
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return linear(x, w, self.bias)
        return F.linear(x, w, self.bias)


def use_onednn(*modules: nn.Module) -> int:
    """Every plain ``nn.Linear`` inside ``modules`` made an :class:`OneDnnLinear`, in place; returns how many (0 in
    reproducible mode, or where this torch has no oneDNN)."""
    from ...numerics import reproducible_asked

    if reproducible_asked() or not available():
        return 0
    n = 0
    for module in modules:
        for m in module.modules():
            if type(m) is nn.Linear:
                m.__class__ = OneDnnLinear
                n += 1
    return n


__all__ = ["available", "linear", "OneDnnLinear", "use_onednn"]

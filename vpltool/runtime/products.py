"""Reproducible mode's matrix products: torch's ``mm``, ``addmm``, ``bmm`` and ``baddbmm`` on the CPU through the
OpenBLAS that numpy ships, instead of MKL's slowest branch.

Why: reproducible mode needs the same bits on every x86-64 CPU. MKL gives them only in its COMPATIBLE branch (SSE2;
its AVX2 branch is Intel's alone: an AMD CPU takes MKL's AUTO branch in its place), where fp32 products run at about a
third of MKL's own AVX2 speed: 27-39 GFLOP/s against 72-100 in fast mode on an AMD Zen 4, one thread
(bench/bench_products.py). numpy's OpenBLAS, pinned by reproducible mode to its Haswell kernels
(``OPENBLAS_CORETYPE``) and one thread, runs the same products at 73-105 GFLOP/s there, and its arithmetic is fixed by
that pin: the kernels, and the blocking of the sums, which OpenBLAS takes from the core type's compile-time
parameters, never from the cache sizes of the CPU it runs on (its ``init_parameter`` for Haswell). numpy's own
functions already ran on it under the same pin.

What changes: each of the four operators, for CPU tensors, gets a kernel (``torch.library``, the CPU dispatch key:
below autograd, so a backward's products go through it too) that multiplies through ``numpy.matmul``; fp32 and fp64
directly, bf16 and fp16 in fp32 rounded once at the end (what torch's own CPU kernels accumulate in), integers and
complex numbers as numpy multiplies them. torch's checks of shapes and dtypes are kept (the same messages, one line
each). The operators torch runs inside its C++ without the dispatcher (SDPA's fused CPU kernel, convolutions' im2col)
keep their own, pinned by the caps of :mod:`.numerics`.

Installed once per process by :func:`pin`, through :func:`.numerics.pin_products`, which :mod:`vpltool.device` calls
when it loads (and :func:`.numerics.run_numerics` when a run records its mode), only in reproducible mode that is in
effect, on an x86 CPU whose numpy is built on OpenBLAS; fast mode never changes. A process that forks (the
fork server, a DataLoader's workers) passes the kernels on.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

OPERATORS = ("mm", "addmm", "bmm", "baddbmm")
_state: dict[str, Any] = {"library": None}
# computed in fp32 and rounded once (torch's CPU kernels for these accumulate in fp32 too)
_HALF = (torch.bfloat16, torch.float16)


def _array(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy sees it (no copy where numpy can read its strides), half precisions widened to fp32."""
    t = t.detach()
    if t.dtype in _HALF:
        t = t.float()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.numpy()


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(a))
    return out.to(dtype) if out.dtype != dtype else out


def _check(name: str, a: torch.Tensor, b: torch.Tensor, dims: int) -> None:
    """torch's own checks of a product's operands (its messages), before numpy, which would broadcast or promote."""
    if a.dim() != dims or b.dim() != dims:
        which = "self" if a.dim() != dims else "mat2"
        raise RuntimeError(f"{which} must be a {'matrix' if dims == 2 else f'{dims}D tensor'}")
    if a.dtype != b.dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {a.dtype} != {b.dtype}")
    if dims == 3 and a.shape[0] != b.shape[0]:
        raise RuntimeError(f"batch1 and batch2 must have same number of batches, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[-1] != b.shape[-2]:
        shape = "x".join
        raise RuntimeError(f"{name}: mat1 and mat2 shapes cannot be multiplied ({shape(map(str, a.shape[-2:]))} and "
                           f"{shape(map(str, b.shape[-2:]))})")


def _product(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """``a @ b`` in numpy; a batched ``b`` that is one matrix repeated (batch stride 0: torch's ``matmul`` of a
    non-contiguous ``[B, m, k]`` by a ``[k, n]`` weight, a sequence-first ViT's linear layers) as one ``[B m, k]``
    product, not ``B`` products of ``m`` rows (OpenBLAS packs each one's operands: 15 GFLOP/s at 2 rows)."""
    x, y = _array(a), _array(b)
    if y.ndim == 3 and y.shape[0] > 1 and y.strides[0] == 0:
        return np.matmul(x.reshape(-1, x.shape[-1]), y[0]).reshape(*x.shape[:-1], y.shape[-1])
    return np.matmul(x, y)


def _added(name: str, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: Any, alpha: Any, dims: int
           ) -> torch.Tensor:
    """``beta * bias + alpha * (a @ b)`` as torch defines it (``beta`` 0: ``bias`` not read, NaN included)."""
    _check(name, a, b, dims)
    if bias.dtype != a.dtype:
        raise RuntimeError(f"self and mat2 must have the same dtype, but got {bias.dtype} and {a.dtype}")
    p = _product(a, b)
    if alpha != 1:
        p = p * alpha
    if beta != 0:
        c = _array(bias)
        p = p + (c if beta == 1 else c * beta)
    return _tensor(p, a.dtype)  # [.., m, n]: the product's shape, which the bias was broadcast to


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``aten::mm``: ``[m, k] @ [k, n] -> [m, n]``."""
    _check("mm", a, b, 2)
    return _tensor(_product(a, b), a.dtype)


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``aten::bmm``: ``[B, m, k] @ [B, k, n] -> [B, m, n]`` (numpy's matmul: one product per batch)."""
    _check("bmm", a, b, 3)
    return _tensor(_product(a, b), a.dtype)


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: Any = 1, alpha: Any = 1) -> torch.Tensor:
    """``aten::addmm``: ``beta * bias + alpha * (a @ b)``, ``bias`` broadcast to ``[m, n]`` (``F.linear``'s)."""
    return _added("addmm", bias, a, b, beta, alpha, 2)


def baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: Any = 1, alpha: Any = 1
            ) -> torch.Tensor:
    """``aten::baddbmm``: ``beta * bias + alpha * (a @ b)`` per batch."""
    return _added("baddbmm", bias, a, b, beta, alpha, 3)


KERNELS = {"mm": mm, "addmm": addmm, "bmm": bmm, "baddbmm": baddbmm}


def pinned() -> bool:
    """Whether this process's CPU products run through :data:`KERNELS`."""
    return _state["library"] is not None


def pin() -> None:
    """Install :data:`KERNELS` for torch's CPU products in this process, once (idempotent). Called through
    :func:`.numerics.pin_products` alone, which decides where they apply: fast mode never changes."""
    if _state["library"] is None:
        library = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():  # "overriding a previously registered kernel": the point of it
            warnings.simplefilter("ignore")
            for name in OPERATORS:
                library.impl(name, KERNELS[name], "CPU")
        _state["library"] = library  # kept alive: the registrations last as long as the Library object


__all__ = ["KERNELS", "OPERATORS", "addmm", "baddbmm", "bmm", "mm", "pin", "pinned"]

"""Reproducible mode's matrix products (vpltool.runtime.products): torch's CPU mm, addmm, bmm and baddbmm through
numpy's pinned OpenBLAS in a reproducible process, gradients included, torch's checks kept; fast mode untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vpltool.runtime import numerics, products

# run in a fresh reproducible process: the kernels are installed when vpltool.device loads
CHILD = r"""
import json
import vpltool, vpltool.device
import numpy as np, torch, torch.nn.functional as F
from vpltool.runtime import numerics, products

g = torch.Generator().manual_seed(0)
a, b, c = torch.randn(37, 29, generator=g), torch.randn(29, 23, generator=g), torch.randn(23, generator=g)
a3, b3 = torch.randn(3, 37, 29, generator=g), torch.randn(3, 29, 23, generator=g)
A, B = a.numpy(), b.numpy()
out = {"pinned": products.pinned(), "record": numerics.run_numerics("fp32"),
       "mm": torch.equal(a @ b, torch.from_numpy(A @ B)),
       # F.linear folds [3, 37, 29] rows into one [111, 29] product (OpenBLAS's edge kernels sum a 37-row block
       # otherwise)
       "linear": torch.equal(F.linear(a3, b.T.contiguous(), c),
                             torch.from_numpy(a3.reshape(-1, 29).numpy() @ B + c.numpy()).reshape(3, 37, 23)),
       "bmm": torch.equal(torch.bmm(a3, b3), torch.from_numpy(a3.numpy() @ b3.numpy())),
       "baddbmm": torch.equal(torch.baddbmm(c, a3, b3, beta=0.5, alpha=2.0),
                              torch.from_numpy((a3.numpy() @ b3.numpy()) * 2.0 + c.numpy() * 0.5)),
       "bf16": str(torch.mm(a.bfloat16(), b.bfloat16()).dtype)}
d = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g, requires_grad=True)
out["gradcheck"] = all([
    torch.autograd.gradcheck(torch.mm, (d(4, 5), d(5, 3))),
    torch.autograd.gradcheck(lambda x, y, z: torch.addmm(z, x, y, beta=0.5, alpha=2), (d(4, 5), d(5, 3), d(3))),
    torch.autograd.gradcheck(torch.bmm, (d(2, 4, 5), d(2, 5, 3))),
    torch.autograd.gradcheck(lambda x, y, z: torch.baddbmm(z, x, y), (d(2, 4, 5), d(2, 5, 3), d(4, 3)))])
errors = []
for bad in (lambda: torch.mm(a, a), lambda: torch.mm(a, b.double()), lambda: torch.bmm(a3, b3[:2])):
    try:
        bad()
    except RuntimeError as e:
        errors.append(str(e))
out["errors"] = errors
print(json.dumps(out))
"""


def _child(env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "VPLTOOL_REPRODUCIBLE"}
    done = subprocess.run([sys.executable, "-c", CHILD], env={**base, **env}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_reproducible_process_multiplies_through_numpy_s_openblas_with_gradients_and_torch_s_checks():
    out = _child({"VPLTOOL_REPRODUCIBLE": "1"})
    assert out["pinned"] and out["record"]["mode"] == "reproducible"
    assert out["record"]["linear"] == "openblas-haswell"
    assert out["mm"] and out["linear"] and out["bmm"] and out["baddbmm"]  # numpy's bits, F.linear's 3-D fold included
    assert out["bf16"] == "torch.bfloat16" and out["gradcheck"]
    assert out["errors"] == ["mm: mat1 and mat2 shapes cannot be multiplied (37x29 and 37x29)",
                             "expected m1 and m2 to have the same dtype, but got: torch.float32 != torch.float64",
                             "batch1 and batch2 must have same number of batches, got 3 and 2"]


def test_a_fast_process_keeps_torch_s_own_products():
    out = _child({"VPLTOOL_REPRODUCIBLE": "0"})
    assert not out["pinned"] and out["record"]["mode"] == "fast" and out["record"].get("linear") != "openblas-haswell"
    assert not products.pinned()  # this suite's process is fast too


def test_the_kernels_follow_torch_s_definitions():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 5, generator=g), torch.randn(5, 4, generator=g)
    nan = torch.full((6, 4), float("nan"))
    assert torch.equal(products.addmm(nan, a, b, beta=0), torch.from_numpy(a.numpy() @ b.numpy()))  # beta 0: unread
    for beta, alpha in ((1, 1), (0.5, 2.0), (2, -1)):
        c = torch.randn(4, generator=g)
        torch.testing.assert_close(products.addmm(c, a, b, beta=beta, alpha=alpha),
                                   torch.addmm(c, a, b, beta=beta, alpha=alpha), rtol=1e-5, atol=1e-5)
    half = products.mm(a.bfloat16(), b.bfloat16())
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, (a.bfloat16().float() @ b.bfloat16().float()).bfloat16())  # fp32 sums, rounded once
    ints = torch.arange(6).view(2, 3)
    assert torch.equal(products.mm(ints, ints.T), ints @ ints.T)
    t = products.mm(a, b)
    assert t.is_contiguous() and t.numpy().flags.writeable


@pytest.mark.parametrize("op", products.OPERATORS)
def test_every_operator_has_its_kernel(op):
    assert callable(products.KERNELS[op]) and hasattr(torch.ops.aten, op)


def test_only_an_x86_process_with_numpy_on_openblas_takes_the_kernels(monkeypatch):
    """numerics.pin_products decides where the kernels apply (this fast process: it must install nothing)."""
    pinned = []
    monkeypatch.setattr(products, "pin", lambda: pinned.append(True))
    monkeypatch.setattr(numerics, "x86", lambda: False)
    assert not numerics.pin_products() and not pinned  # beyond reproducible mode's promise, no Haswell kernels
    monkeypatch.setattr(numerics, "x86", lambda: True)
    monkeypatch.setattr(np.__config__, "CONFIG", {"Build Dependencies": {"blas": {"name": "mkl-sdl"}}})
    assert not numerics.pin_products() and not pinned  # a numpy on MKL: torch's own products, MKL's pinned branch
    monkeypatch.setattr(np.__config__, "CONFIG", {"Build Dependencies": {"blas": {"name": "scipy-openblas"}}})
    numerics.pin_products()
    assert pinned == [True]  # an x86 CPU with numpy on OpenBLAS: installed

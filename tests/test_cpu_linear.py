"""The frozen towers' linear layers through oneDNN on a CPU in fp32 (vpltool.models.backbones.cpu_linear)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vpltool.models.backbones import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear._available(), reason="torch without oneDNN's linear op")


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 37, 64, generator=g), torch.randn(96, 64, generator=g) * 0.1, torch.randn(96, generator=g)


def test_linear_is_f_linear_in_fp32_and_f_linear_itself_where_it_does_not_apply(monkeypatch):
    x, w, b = _data()
    want = F.linear(x.double(), w.double(), b.double())
    assert cpu_linear.applies(x, w) and not cpu_linear.applies(x[0, :1], w)  # one row: MKL's, as fast there
    got = cpu_linear.linear(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (3, 37, 96)
    assert (got.double() - want).abs().max() < 1e-5
    assert (cpu_linear.linear(x, w).double() - (want - b.double())).abs().max() < 1e-5
    # where it does not apply, the very F.linear (bit for bit): a gradient asked for, bf16, autocast, reproducible
    wg = w.clone().requires_grad_(True)
    out = cpu_linear.linear(x, wg, b)
    assert torch.equal(out, F.linear(x, wg, b)) and out.grad_fn is not None
    out.sum().backward()
    assert wg.grad is not None and torch.isfinite(wg.grad).all()
    xb, wb = x.bfloat16(), w.bfloat16()
    assert not cpu_linear.applies(xb, wb) and torch.equal(cpu_linear.linear(xb, wb), F.linear(xb, wb))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_linear.applies(x, w) and cpu_linear.linear(x, w, b).dtype == torch.bfloat16
    monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
    assert not cpu_linear.applies(x, w) and torch.equal(cpu_linear.linear(x, w, b), F.linear(x, w, b))
    monkeypatch.delenv("VPLTOOL_REPRODUCIBLE")
    monkeypatch.setattr(cpu_linear, "ENABLED", False)
    assert not cpu_linear.applies(x, w) and torch.equal(cpu_linear.linear(x, w, b), F.linear(x, w, b))


def test_route_keeps_parameters_and_state_and_trains_as_before(monkeypatch):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64))
    model.add_module("attn", mha)
    keys, x = list(model.state_dict()), _data()[0]
    with torch.no_grad():
        before = model[:3](x)
    assert cpu_linear.route(model) is model and cpu_linear.route(model) is model  # idempotent
    assert list(model.state_dict()) == keys
    assert all(isinstance(m, nn.Linear) for m in (model[0], model[2], mha.out_proj))
    assert isinstance(mha.out_proj, nn.modules.linear.NonDynamicallyQuantizableLinear)  # its own class kept
    copy = pickle.loads(pickle.dumps(model))  # a worker process's copy, torch.save
    assert type(copy[0]) is type(model[0]) and torch.equal(copy[0].weight, model[0].weight)
    calls = []
    real = cpu_linear.linear
    monkeypatch.setattr(cpu_linear, "linear", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        after = model[:3](x)
    assert calls == [(3, 37, 64), (3, 37, 96)]  # both layers through cpu_linear.linear
    assert (after - before).abs().max() < 1e-5
    loss = model[:3](x).square().mean()  # a gradient asked for: F.linear's, which has one
    loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("masked", [False, True])
def test_self_attention_is_the_module_s_own(masked):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    h = _data(1)[0]
    mask = torch.zeros(37, 37).masked_fill(torch.rand(37, 37) > 0.7, float("-inf")).fill_diagonal_(0) if masked \
        else None
    with torch.no_grad():
        want = mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        got = cpu_linear.self_attention(mha, h, mask)
        assert got is not None and got.shape == want.shape
        assert (got - want).abs().max() < 1e-5
        assert cpu_linear.self_attention(mha, h.bfloat16(), mask) is None  # not fp32: the caller runs the module
    assert cpu_linear.self_attention(nn.MultiheadAttention(64, 4), h) is None  # sequence-first: the module's own

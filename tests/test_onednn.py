"""fp32 linear layers through oneDNN (``vpltool.models.backbones.onednn``): the same outputs as ``F.linear`` to float
rounding where oneDNN is called, bit for bit where it is not (bf16, gradients), nothing changed in reproducible
mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vpltool.models.backbones import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear op")


def _mlp(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40, bias=bias), nn.GELU(), nn.Linear(40, 8, bias=bias))


def _counted(monkeypatch) -> list:
    calls = []
    inner = onednn.linear

    def counting(*a):
        calls.append(a[0].shape)
        return inner(*a)

    monkeypatch.setattr(onednn, "linear", counting)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_fp32_cpu_inference_goes_through_onednn_with_the_same_outputs(monkeypatch, bias):
    model, plain = _mlp(bias), _mlp(bias)
    keys = list(model.state_dict())
    assert onednn.use_onednn(model) == 2
    assert all(type(m) is onednn.OneDnnLinear for m in model if isinstance(m, nn.Linear))
    assert list(model.state_dict()) == keys  # the same parameters, as a checkpoint names them
    calls = _counted(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    for x in (torch.randn(5, 24, generator=gen), torch.randn(2, 7, 24, generator=gen),
              torch.randn(2, 24, 7, generator=gen).transpose(1, 2)):  # 2-d, 3-d and a strided view
        with torch.no_grad():
            got, want = model(x), plain(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(calls) == 6  # both layers, every input: the oneDNN path was the one taken


def test_bf16_and_training_keep_f_linear_bit_for_bit(monkeypatch):
    model, plain = _mlp(), _mlp()
    onednn.use_onednn(model)
    calls = _counted(monkeypatch)
    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.to(torch.bfloat16)(x.bfloat16()), plain.to(torch.bfloat16)(x.bfloat16()))
    model.float(), plain.float()
    out, ref = model(x).sum(), plain(x).sum()  # gradients asked of the weights: F.linear, and its backward
    out.backward(), ref.backward()
    assert torch.equal(out, ref) and torch.equal(model[0].weight.grad, plain[0].weight.grad)
    assert calls == []


def test_reproducible_mode_leaves_the_layers_as_they_are(monkeypatch):
    monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
    model = _mlp()
    assert onednn.use_onednn(model) == 0
    assert all(type(m) is nn.Linear for m in model if isinstance(m, nn.Linear))


def test_linear_matches_f_linear_on_a_backbone_sized_product():
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(64, 96, generator=gen), torch.randn(128, 96, generator=gen), torch.randn(128, generator=gen)
    exact = F.linear(x.double(), w.double(), b.double())
    assert float((onednn.linear(x, w, b).double() - exact).abs().max()) < 1e-4  # fp32 sums, not bf16's

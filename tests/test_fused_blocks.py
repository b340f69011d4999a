"""timm's ViT block with its residuals added in place (``vpltool.models.backbones.fused_blocks``): timm's values
within float rounding, timm's own forward bit for bit in reproducible mode, with gradients, in training and with a
mask; the swap idempotent, other blocks left alone."""

from __future__ import annotations

import pytest
import torch

from vpltool.models.backbones import fused_blocks

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _pair(init_values=0.3):
    """Two timm blocks of the same seeded weights: one to fuse, one timm's."""
    torch.manual_seed(3)
    block = timm_vit.Block(32, 4, qkv_bias=True, init_values=init_values).eval()
    twin = timm_vit.Block(32, 4, qkv_bias=True, init_values=init_values).eval()
    twin.load_state_dict(block.state_dict())
    return block, twin


@pytest.mark.parametrize("init_values", [0.3, None])  # with timm's LayerScale, and without (identities)
def test_the_fused_block_gives_timm_s_tokens_within_rounding_and_keeps_its_weights(init_values, monkeypatch):
    block, twin = _pair(init_values)
    added = []
    real = fused_blocks._add_scaled
    monkeypatch.setattr(fused_blocks, "_add_scaled", lambda *a, **k: added.append(k["into_x"]) or real(*a, **k))
    assert fused_blocks.use_fused_blocks([block, block]) == 2 and isinstance(block, fused_blocks.FusedBlock)
    assert list(block.state_dict()) == list(twin.state_dict())
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = twin(x.clone())
        given = x.clone()
        got = block(given)
    assert added == [False, True]  # the fused forward taken: its first sum a new tensor, the second in place
    assert torch.equal(given, x)  # the block's input unchanged (a hook or a list of intermediates may hold it)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(block.mlp(x), torch.zeros_like(x))  # the MLP branch is not empty: the check means something


def test_the_fused_block_is_timm_s_forward_bit_for_bit_in_reproducible_mode_with_gradients_and_masks(monkeypatch):
    block, twin = _pair()
    fused_blocks.use_fused_blocks([block])
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(block(x, attn_mask=torch.zeros(9, 9)), twin(x, attn_mask=torch.zeros(9, 9)))
        monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
        kept = x.clone()
        assert torch.equal(block(x), twin(x)) and torch.equal(x, kept)  # timm's: its input untouched
    monkeypatch.delenv("VPLTOOL_REPRODUCIBLE")
    out = block(x.requires_grad_())  # gradients asked: timm's forward and its backward
    assert torch.equal(out, twin(x))
    out.sum().backward()
    assert block.mlp.fc1.weight.grad is not None


def test_only_timm_s_plain_block_is_fused():
    other = torch.nn.Linear(4, 4)
    assert fused_blocks.use_fused_blocks([other]) == 0 and type(other) is torch.nn.Linear

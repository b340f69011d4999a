"""DINOv3 and C-RADIOv3 in the dino family (tiny models from timm's own constructors, tests/tiny_towers.py): what the
family reads (final tokens, the last block's q, k, v and attention map) is what timm's own forward computes, RoPE
and registers included, and both run as ProxyCLIP's proxy and as cam's --affinity dino."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_towers
import torch
from typer.testing import CliRunner

from vpltool.cli import app
from vpltool.models import DinoSpec, load_model
from vpltool.models.backbones.timm_blocks import attention_output, attention_weights, forward_capturing

MODELS = (tiny_towers.DINOV3, tiny_towers.RADIO)


def _dino(name: str):
    d = load_model("dino", DinoSpec(name, "none"))
    with torch.no_grad():  # a random init's attention is near uniform; larger weights make the maps peaky
        for p in d.model.parameters():
            if p.dim() > 1:
                p.mul_(4)
    return d


@pytest.mark.parametrize("name", MODELS)
def test_what_the_family_reads_is_what_timms_forward_computes(name):
    """A forward hook on timm's own last attention module sees its output: the family's q, k, v of that block
    (RoPE applied for DINOv3) give it back through softmax(q kᵀ · scale) v, the family's attention map is that
    softmax's head mean without the 5 (DINOv3) or 8 (C-RADIOv3) prefix tokens, and its final tokens are timm's."""
    d = _dino(name)
    image = (np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)
    pixels = d.preprocess(image, (5, 6))
    seen = {}
    attn = d.blocks[-1].attn
    hook = attn.register_forward_hook(lambda m, args, kwargs, out: seen.update(out=out, rope=kwargs.get("rope")),
                                      with_kwargs=True)
    try:
        with torch.no_grad():
            timm_tokens = d.model.forward_features(pixels)
            tokens, qkv, grid = d.tokens_and_last_qkv(pixels)
            seen.clear()
            alone, _ = d.last_qkv(pixels)  # the forward stops before the last block: its attention never runs
            keys, _ = d.last_keys(pixels)
            assert not seen
            amap = d.attention(image, grid, 1)
    finally:
        hook.remove()
    n = d.n_prefix
    assert grid == (5, 6) and n == (5 if name == tiny_towers.DINOV3 else 8)
    assert (seen["rope"] is not None) == (name == tiny_towers.DINOV3)
    q, k, v = qkv.reshape(1, n + 30, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    assert (attention_output(attn, weights @ v) - seen["out"]).abs().max() < 1e-4 * seen["out"].abs().max()
    assert torch.allclose(amap, weights.mean(1)[0, n:, n:], atol=1e-6)
    assert torch.equal(keys, k[:, :, n:]) and torch.equal(tokens, timm_tokens[:, n:]) and torch.equal(alone, qkv)
    if name == tiny_towers.DINOV3:  # without its RoPE the map would be another: the checks above would fail
        x = seen_input(d, pixels)
        plain = attention_weights(attn, d.blocks[-1].norm1(x), None).mean(1)[0, n:, n:]
        assert (plain - amap).abs().max() > 1e-3


def seen_input(d, pixels):
    """The last block's input in timm's forward."""
    return forward_capturing(d.model, pixels, [len(d.blocks) - 1])[1][len(d.blocks) - 1][0]


@pytest.mark.parametrize("name", MODELS)
def test_runs_as_proxyclips_proxy_and_as_cams_dino_affinity(world, features_dir, text_protos, tmp_path, name):
    """`segment --dense proxyclip --proxy-model` and `cam --affinity dino --dino-model` with each: masks and CAMs
    for every image."""
    tiny = ["--model", "vpl-test-vit", "--pretrained", "none", "--device", "cpu"]
    seg = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "-o", str(seg), *tiny, "--dense",
                                 "proxyclip", "--proxy-model", name, "--proxy-weights", "none", "--short-side", "64",
                                 "--slide-crop", "64", "--slide-stride", "32"])
    assert r.exit_code == 0, r.output
    assert len(list(seg.glob("*.png"))) == 3
    cams = tmp_path / "cams"
    r = CliRunner().invoke(app, ["cam", str(features_dir), "-p", str(text_protos), "-o", str(cams), "--affinity",
                                 "dino", "--dino-model", name, "--dino-weights", "none", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(list(cams.glob("*.safetensors"))) == 6


@pytest.mark.parametrize("name", [*MODELS, tiny_towers.SIGLIP2, tiny_towers.PE])
def test_run_block_is_timms_own_block(name):
    """timm_blocks.run_block (split at norm1 for GradCAM) gives each block's own output, bit for bit, on the input
    and RoPE timm's forward handed it; its attention rows sum to 1."""
    import timm

    from vpltool.models.backbones.timm_blocks import run_block

    model = timm.create_model(name, num_classes=0).eval()
    outs = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        _, seen = forward_capturing(model, x, range(len(model.blocks)))
        for hook in hooks:
            hook.remove()
        for i, (tokens, rope) in seen.items():
            y, weights, _ = run_block(model.blocks[i], tokens, rope, need_weights=True)
            assert torch.equal(y, outs[i])
            assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)

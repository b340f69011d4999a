"""The pgseg family's speed paths keep its arithmetic: the test images as the reference's mmseg pipeline makes them
(uint8 cv2 resize by mmcv's size rule), the fused attention against the explicit one, `train-pgseg`'s multi-tensor
AdamW and clipping against the per-parameter loop. Tiny, seeded, CPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vpltool.config.pgseg import PGSegTrainConfig
from vpltool.models.text.pgseg import IMAGE_MEAN, IMAGE_STD, build_model, image_tensor, resized_size, tiny_config
from vpltool.models.text.pgseg.groupvit import Attention, AttnBlock
from vpltool.stages.train_text import TrainStep, make_optimizer, train_step


@pytest.mark.parametrize(("h", "w", "short", "want"), [
    (375, 500, 448, (448, 597)),  # 500 * 448 / 375 = 597.33: int(x + 0.5) rounds down
    (500, 375, 448, (597, 448)),
    (333, 500, 448, (448, 673)),  # 672.67 rounds up
    (448, 448, 448, (448, 448)),
    (100, 5000, 448, (41, 2048)),  # the long side's cap (2048) decides: factor 0.4096
    (600, 800, 64, (64, 85)),  # shrinking
])
def test_resized_size_is_mmcvs_rescale_size(h, w, short, want):
    assert resized_size(h, w, short) == want


def test_image_tensor_resizes_the_uint8_image_with_cv2_then_normalises_as_mmcv():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    x = image_tensor(image, 24)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 3, 24, 32)
    resized = cv2.resize(image, (32, 24), interpolation=cv2.INTER_LINEAR)  # uint8 in, uint8 out
    want = (resized.astype(np.float32) - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), want, rtol=0, atol=1e-5)
    levels = x[0].permute(1, 2, 0).numpy() * np.float32(IMAGE_STD) + np.float32(IMAGE_MEAN)
    assert np.abs(levels - np.round(levels)).max() < 1e-3  # resized in uint8: whole grey levels, as the reference
    old = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(24, 32),
                                          mode="bilinear", align_corners=False)  # the float resize it replaced
    assert np.abs(old[0].permute(1, 2, 0).numpy() - np.round(old[0].permute(1, 2, 0).numpy())).max() > 0.1


def test_image_tensor_keeps_an_image_already_at_its_size():
    image = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    x = image_tensor(image, 24)
    want = (image.astype(np.float64) - np.float64(IMAGE_MEAN)) / np.float64(IMAGE_STD)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), want, rtol=0, atol=1e-6)  # no resize, no blur


@pytest.mark.parametrize("cross", [False, True])
def test_fused_attention_matches_the_explicit_one(cross):
    torch.manual_seed(0)
    explicit = Attention(64, 2, qkv_bias=True, qkv_fuse=not cross)
    fused = Attention(64, 2, qkv_bias=True, qkv_fuse=not cross, fused=True)
    fused.load_state_dict(explicit.state_dict())
    q, kv = torch.randn(3, 10, 64), torch.randn(3, 17, 64)
    outs, grads = [], []
    for attn in (explicit, fused):
        x = q.clone().requires_grad_(True)
        y = attn(x, kv if cross else None)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append(x.grad)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-4)
    scale = (64 // 2) ** -0.5  # the explicit path is the reference's formula, bit for bit
    qkv = explicit.qkv(q).reshape(3, 10, 3, 2, 32).permute(2, 0, 3, 1, 4) if not cross else None
    if qkv is not None:
        ref = ((qkv[0] @ qkv[1].transpose(-2, -1)) * scale).softmax(dim=-1) @ qkv[2]
        ref = explicit.proj(ref.permute(0, 2, 1, 3).reshape(3, 10, 64))
        assert torch.equal(explicit(q), ref)


def test_the_family_default_is_the_explicit_attention_and_the_config_switches_it():
    assert tiny_config().fused_attention is False
    model = build_model(tiny_config(fused_attention=True))
    flags = {m.fused for m in model.modules() if isinstance(m, Attention)}
    assert flags == {True}
    block = AttnBlock(64, 1, attn_drop=0.1, fused=True).train()  # dropout on the map: the explicit path runs
    torch.manual_seed(0)
    a = block(torch.ones(1, 4, 64))
    block.attn.fused = False
    torch.manual_seed(0)
    assert torch.equal(a, block(torch.ones(1, 4, 64)))


def test_train_step_optimizer_is_the_per_parameter_adamw_bit_for_bit():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    tokens = torch.zeros(4, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 1:4], tokens[:, 4] = 49406, torch.randint(1, 4000, (4, 3)), 49407
    cfg = PGSegTrainConfig()
    states = []
    for mine in (True, False):
        model = build_model(tiny_config(npr=False), seed=0)
        if mine:
            optimizer = make_optimizer(model, cfg)
        else:  # the reference's utils/optimizer.py groups, torch's per-parameter loop
            decay = [p for n, p in model.named_parameters() if not (p.ndim == 1 or n.endswith(".bias"))]
            plain = [p for n, p in model.named_parameters() if p.ndim == 1 or n.endswith(".bias")]
            optimizer = torch.optim.AdamW([{"params": decay}, {"params": plain, "weight_decay": 0.0}], lr=cfg.lr,
                                          betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                          weight_decay=cfg.weight_decay, foreach=False)
        for it in range(2):
            torch.manual_seed(it)
            if mine:
                train_step(TrainStep(model, None), model, optimizer, images, tokens, 1e-3, 0.01)
            else:
                model.train()
                loss = model.forward_train(images, tokens)["loss"]
                optimizer.zero_grad()
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = 1e-3
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01, foreach=False)
                optimizer.step()
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

"""The toy DINO (`train-toy-dino`): trains on a world's images, rebuilds bit-identically, loads through --dino-model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from vpltool.demo.config import ToyDinoConfig  # noqa: E402
from vpltool.demo.train_toy_dino import DinoHead, dino_loss, train_toy_dino  # noqa: E402
from vpltool.errors import VplError  # noqa: E402
from vpltool.models import DinoSpec, load_dino  # noqa: E402

TINY = ToyDinoConfig(epochs=1, batch_size=3, local_crops=1, out_dim=16)


def test_toy_dino_rebuilds_bit_identically_and_loads_as_dino(world, tmp_path):
    from safetensors.torch import load_file

    a = train_toy_dino(tmp_path / "a" / "model.safetensors", world, TINY)
    train_toy_dino(tmp_path / "b" / "model.safetensors", world, TINY)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["steps"] == 2 and np.isfinite(a["final_loss"])
    dino = load_dino(DinoSpec("test_vit", str(tmp_path / "a" / "model.safetensors")))
    image = np.zeros((96, 96, 3), np.uint8)
    att = dino.attention(image, (12, 12), 2)
    assert att.shape == (144, 144) and torch.all(att >= 0)
    other = train_toy_dino(tmp_path / "c" / "model.safetensors", world, ToyDinoConfig(**{**TINY.__dict__, "seed": 1}))
    wc = load_file(other["path"])
    assert not torch.equal(wa["cls_token"], wc["cls_token"])  # the seed is what fixes the weights


def test_dino_loss_is_low_when_the_student_matches_the_sharpened_teacher():
    torch.manual_seed(0)
    teacher = [torch.randn(4, 8) * 3, torch.randn(4, 8) * 3]
    center = torch.zeros(8)
    matched = [teacher[1] / 0.04 * 0.1, teacher[0] / 0.04 * 0.1]  # view i predicts the other teacher view
    random = [torch.randn(4, 8), torch.randn(4, 8)]
    assert dino_loss(matched, teacher, center, 0.1, 0.04) < dino_loss(random, teacher, center, 0.1, 0.04)
    head = DinoHead(6, 5)
    assert head(torch.randn(3, 6)).abs().max() <= 1 + 1e-6  # cosines to unit prototypes


def test_toy_dino_refuses_too_few_images(world, tmp_path):
    with pytest.raises(VplError, match="fewer than --batch-size"):
        train_toy_dino(tmp_path / "m.safetensors", world, ToyDinoConfig(epochs=1, batch_size=50))


def test_mimetic_init_makes_queries_equal_keys():
    from vpltool.demo.train_toy_dino import build_student

    torch.manual_seed(0)
    model = build_student(ToyDinoConfig(qk_init=1.0))
    w = model.blocks[0].attn.qkv.weight
    width = w.shape[1]
    assert torch.equal(w[:width], w[width:2 * width]) and not torch.equal(w[:width], w[2 * width:])
    torch.manual_seed(0)
    plain = build_student(ToyDinoConfig(qk_init=0.0)).blocks[0].attn.qkv.weight
    assert not torch.equal(plain[:width], plain[width:2 * width])


def test_dino_pos_resize_antialias_is_dinov2_regs_and_timms_own():
    """``pos_resize="bicubic-antialias"`` (DINOv2's *_reg hub models: to the size, antialiased) is what timm's own
    dynamic-size forward does, the toy DINO's (no registers, 10x10 table at 12x12) and a DINOv2-reg4 timm model's
    (class position folded into the token); the +0.1 mode of plain DINOv2 is not; an unknown mode is one line."""
    import timm

    pixels = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    toy = {m: load_dino(DinoSpec("test_vit", "none", m)) for m in ("bicubic-dino", "bicubic-antialias")}
    timms = toy["bicubic-dino"].model.forward_features(pixels)[:, 1:]
    assert (toy["bicubic-antialias"]._dino_forward(pixels)[0] - timms).abs().max() < 1e-5
    assert (toy["bicubic-dino"]._dino_forward(pixels)[0] - timms).abs().max() > 1e-3
    torch.manual_seed(0)
    reg = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=98, depth=1,
                            dynamic_img_size=True)
    from vpltool.models.backbones.dino import DinoBackbone

    bb = DinoBackbone(reg, torch.device("cpu"), DinoSpec("vit_small_patch14_reg4_dinov2", "none", "bicubic-antialias"))
    small = pixels[..., :84, :84]
    assert bb.n_prefix == 5 and (bb._dino_forward(small)[0] - reg.forward_features(small)[:, 5:]).abs().max() < 1e-5
    with pytest.raises(VplError, match="positional resize"):
        load_dino(DinoSpec("test_vit", "none", "nearest"))


def test_tokens_and_last_qkv_are_the_forward_and_what_a_hook_on_the_last_qkv_sees():
    dino = load_dino(DinoSpec("test_vit", "none", "bicubic-antialias"))
    pixels = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    seen = []
    hook = dino.model.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        theirs = dino.model.forward_features(pixels)
    finally:
        hook.remove()
    tokens, qkv, grid = dino.tokens_and_last_qkv(pixels)
    assert grid == (4, 5) and qkv.shape == seen[0].shape == (2, 21, 3 * 64)
    assert (tokens - theirs[:, 1:]).abs().max() < 1e-5 and (qkv - seen[0]).abs().max() < 1e-5


def test_last_block_input_is_what_the_last_block_receives():
    dino = load_dino(DinoSpec("test_vit", "none", "bicubic-antialias"))
    pixels = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    seen = []
    hook = dino.model.blocks[-1].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        dino.model.forward_features(pixels)
    finally:
        hook.remove()
    x, grid = dino.last_block_input(pixels)
    assert grid == (4, 5) and x.shape == seen[0].shape == (2, 21, 64)
    assert (x - seen[0]).abs().max() < 1e-5
    keys, _ = dino.last_keys(pixels)  # the last block's keys of those tokens
    attn = dino.model.blocks[-1].attn
    qkv = attn.qkv(dino.model.blocks[-1].norm1(x)).reshape(2, 21, 3, attn.num_heads, -1)
    assert torch.equal(keys, qkv.permute(2, 0, 3, 1, 4)[1][:, :, 1:])


def test_a_reader_of_the_last_qkv_alone_stops_the_dino_there():
    """last_qkv (CorrCLIP) and last_keys (CASS) give tokens_and_last_qkv's qkv and keys, with the last block's
    attention, MLP and the final norm never run."""
    dino = load_dino(DinoSpec("test_vit", "none", "bicubic-antialias"))
    pixels = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    calls = []
    last = dino.model.blocks[-1]
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in (last.attn.proj, last.mlp.fc2,
                                                                                dino.model.norm)]
    try:
        with torch.no_grad():
            tokens, qkv, grid = dino.tokens_and_last_qkv(pixels)
            assert len(calls) == 3
            alone, grid_alone = dino.last_qkv(pixels)
            keys, _ = dino.last_keys(pixels)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 3 and grid == grid_alone == (3, 4) and torch.equal(alone, qkv)
    q, k, v = qkv.reshape(2, 13, 3, last.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    assert torch.equal(keys, k[:, :, 1:]) and tokens.shape == (2, 12, dino.model.embed_dim)


def test_each_model_mixes_its_tokens_as_its_own_code():
    """DINO writes softmax(q kᵀ · scale) v out (vpltool: by blocks of query rows, the same sums), DINOv2 calls the
    fused kernel (vpltool too, by the model's name); both are that product."""
    from vpltool.models.backbones import dino as family
    from vpltool.models.backbones import dino_attention as da

    model = load_dino(DinoSpec("test_vit", "none")).model
    assert not family.DinoBackbone(model, "cpu", DinoSpec("vit_base_patch8_224.dino", "none")).fused
    assert family.DinoBackbone(model, "cpu", DinoSpec("vit_small_patch14_reg4_dinov2.lvd142m", "none")).fused
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(3, 2, 4, da.ROWS + 37, 16, generator=g)  # more rows than one block
    whole = ((q @ k.transpose(-2, -1)) * 0.25).softmax(-1) @ v
    assert (da.written_attention(q, k, v, 0.25) - whole).abs().max() < 1e-6
    assert (torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25) - whole).abs().max() < 1e-5


def test_the_demo_dino_moves_not_a_bit(monkeypatch):
    """The demo's toy DINO (the dense rows' proxy, Talk2DINO's demo backbone) at the demo's sizes (96-pixel scenes,
    dense short sides up to 192): its tokens and last qkv with the attention written out by blocks of query rows
    equal those of the whole ``[N, N]`` product, as the family computed it before, bit for bit."""
    from vpltool.models.backbones import dino as family
    from vpltool.models.backbones import dino_attention as da

    toy = family.Path(family.__file__).resolve().parents[2] / "assets" / "toy-dino" / "model.safetensors"
    dino = load_dino(DinoSpec("test_vit", str(toy)))
    g = torch.Generator().manual_seed(0)
    pixels = [torch.randn(1, 3, side, side, generator=g) for side in (96, 144, 192, 448)]
    with torch.no_grad():
        now = [dino.tokens_and_last_qkv(p)[:2] for p in pixels]
        monkeypatch.setattr(da, "written_attention", lambda q, k, v, scale: ((q @ k.transpose(-2, -1)) * scale)
                            .softmax(dim=-1) @ v)
        before = [dino.tokens_and_last_qkv(p)[:2] for p in pixels]
    assert not dino.fused and (448 // 16) ** 2 + 1 > 6 * da.ROWS  # 785 tokens at 448: seven row blocks
    assert all(torch.equal(a, b) for x, y in zip(now, before) for a, b in zip(x, y))


def test_a_cpu_batch_runs_in_groups_with_the_whole_batch_s_bits(monkeypatch):
    from vpltool.models.backbones import dino as dino_module

    dino = load_dino(DinoSpec("test_vit", "none", "bicubic-antialias"))
    pixels = torch.randn(5, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = dino.tokens_and_last_qkv(pixels)
        tokens = 1 + (64 // dino.patch_size) * (48 // dino.patch_size)
        hidden = dino.model.blocks[0].mlp.fc1.out_features
        monkeypatch.setattr(dino_module, "CPU_GROUP_BYTES", 2 * tokens * hidden * 4)  # two images a group
        assert dino._cpu_groups(pixels) == 3
        grouped = dino.tokens_and_last_qkv(pixels)
    assert torch.equal(whole[0], grouped[0]) and torch.equal(whole[1], grouped[1]) and whole[2] == grouped[2]


def test_a_failure_while_writing_keeps_the_last_weights_and_their_record_together(tmp_path, monkeypatch):
    """The toy trainers' pair (weights and their ``.json`` record, :func:`vpltool.demo.toy_weights.write_toy`): both
    are written whole before either replaces the last pair, so a full disk at the record leaves the last weights
    with their own record (once the new weights beside the last record)."""
    import errno
    from pathlib import Path

    from vpltool.demo.toy_weights import write_toy

    out = tmp_path / "toy.safetensors"
    torch.manual_seed(0)
    write_toy(out, torch.nn.Linear(3, 2), {"model": "toy", "run": 1}, "toy-kind", "toy-record")
    last = (out.read_bytes(), out.with_suffix(".json").read_bytes())
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.suffix == ".tmp":  # the record's temporary (the weights' is written by safetensors)
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(VplError, match="no space left on device writing .*toy.json"):
        write_toy(out, torch.nn.Linear(3, 2), {"model": "toy", "run": 2}, "toy-kind", "toy-record")
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.json", "toy.safetensors"]  # no temporary left

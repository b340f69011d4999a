"""The ``pgseg`` model family (vpltool.models.text.pgseg): shapes, NPR off = GroupViT, determinism, the losses'
pieces, checkpoints and the reference key map, one-line errors for other files. Tiny config, CPU, seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vpltool.errors import VplError
from vpltool.models import check_model, load_model
from vpltool.models.text.pgseg import (
    PGSeg,
    PGSegConfig,
    build_model,
    class_text_embeddings,
    class_tokens,
    closs,
    from_reference,
    hrs,
    hungarian_match,
    infer_config,
    load_checkpoint,
    save_checkpoint,
    tiny_config,
    tokenizer,
    zero_shot_labels,
    zero_shot_logits,
)

CAPTIONS = ["a photo of a cat", "a dog on a mat", "two red cars", "a boat at sea"]


@pytest.fixture(scope="module")
def tok():
    return tokenizer(tiny_config())


def batch(seed: int = 0, b: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


def test_config_round_trips_and_defaults_are_groupvit_s():
    cfg = PGSegConfig()
    assert (cfg.patch_size, cfg.embed_dim, cfg.depths, cfg.num_heads) == (16, 384, (6, 3, 3), (6, 6, 6))
    assert (cfg.num_group_tokens, cfg.num_output_groups, cfg.npr) == ((64, 8, 0), (64, 8), True)
    assert (cfg.text_width, cfg.text_layers, cfg.output_dim, cfg.contrast_temperature) == (256, 12, 256, 0.07)
    assert PGSegConfig.from_dict(tiny_config().to_dict()) == tiny_config()
    with pytest.raises(ValueError, match="unknown"):
        PGSegConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_tokenizer_is_clip_bpe_at_77(tok):
    ids = tok(["a photo of a cat.", "word " * 100])
    assert ids.shape == (2, 77) and ids.dtype == torch.int64
    assert ids[0, 0] == 49406 and int(ids[0].argmax()) == int((ids[0] > 0).sum()) - 1  # EOT (49407) last
    assert ids[1, -1] == 49407  # truncated with EOT kept last


def test_shapes_of_every_output(tok):
    model = build_model(tiny_config()).eval()
    images, tokens = batch(), tok(CAPTIONS)
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (4, 32)
        assert torch.allclose(model.encode_text(tokens).norm(dim=-1), torch.ones(4))
        groups = model.encode_image(images)
        assert groups.shape == (4, 8, 32) and torch.allclose(groups.norm(dim=-1), torch.ones(4, 8))
        maps = model.group_maps(torch.randn(2, 3, 48, 40))  # any size at eval: the position table is resized
    assert maps.shape == (2, 8, 6, 5)
    assert torch.allclose(maps.sum(dim=1), torch.ones(2, 6, 5), atol=1e-5)  # soft memberships sum to one


def test_forward_train_returns_every_loss_and_gradients_flow(tok):
    model = build_model(tiny_config()).train()
    torch.manual_seed(0)
    out = model.forward_train(batch(), tok(CAPTIONS))
    assert {"loss", "contrastive", "npr", "npr_stage1", "npr_stage2", "npr_text"} <= set(out)
    assert out["match_stage1"].shape == (4 * 16,) and out["match_stage2"].shape == (4 * 8,)
    npr = 0.1 * (out["npr_stage1"] + out["npr_stage2"] + 0.1 * out["npr_text"])
    assert torch.allclose(out["npr"], npr, equal_nan=True)
    assert math.isfinite(out["contrastive"].item())
    out["contrastive"].backward()
    assert model.img_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.text_encoder.token_embedding.weight.grad.abs().sum() > 0


def test_training_needs_the_configured_size(tok):
    model = build_model(tiny_config()).train()
    with pytest.raises(ValueError, match="32x32"):
        model.forward_train(batch(size=40), tok(CAPTIONS))


def test_npr_off_is_groupvit_without_npr_parameters(tok):
    model = build_model(tiny_config(npr=False)).train()
    keys = model.state_dict().keys()
    assert not any("downsample_spatial" in k or "mapping_text" in k or k.endswith("Atten.mu") for k in keys)
    assert "img_encoder.logit_scale" not in keys
    torch.manual_seed(0)
    out = model.forward_train(batch(), tok(CAPTIONS))
    assert set(out) == {"loss", "contrastive"} and torch.equal(out["loss"], out["contrastive"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_npr_changes_the_image_tokens_only_through_its_reconstruction():
    """The NPR model's encoder minus its NPR modules is GroupViT: zeroing mapping_x's output layer removes the
    reconstruction, and the final tokens equal those of the npr=False model with the same weights."""
    with_npr = build_model(tiny_config()).eval()
    plain = build_model(tiny_config(npr=False)).eval()
    state = {k: v for k, v in with_npr.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(state)
    with torch.no_grad():
        for layer in with_npr.img_encoder.layers:
            if layer.downsample_spatial is not None:
                layer.downsample_spatial.mapping_x.linear_out.weight.zero_()
                layer.downsample_spatial.mapping_x.linear_out.bias.zero_()
        x = batch()
        assert torch.allclose(with_npr.encode_image(x), plain.encode_image(x), atol=1e-6)


def test_deterministic_for_a_seed(tok):
    a, b = build_model(tiny_config(), seed=3), build_model(tiny_config(), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model(tiny_config(), seed=4)
    assert not torch.equal(a.img_encoder.pos_embed, c.img_encoder.pos_embed)
    outs = []
    for model in (a, b):
        model.train()
        torch.manual_seed(7)  # gumbel noise and drop path
        outs.append(model.forward_train(batch(), tok(CAPTIONS))["contrastive"])
    assert torch.equal(outs[0], outs[1])


def test_text_prototypes_move_on_every_text_forward_evaluation_included(tok):
    """The reference's text forward runs T-NPR (``Atten``) each time: the buffer moves by momentum towards the
    texts' prototypes in eval (class embeddings) as in training; forward_train moves it exactly once."""
    from vpltool.models.text.pgseg.npr import TextNPR

    model = build_model(tiny_config())
    before = model.text_encoder.Atten.mu.clone()
    tokens = tok(CAPTIONS)
    model.eval()
    with torch.no_grad():
        eot = model.text_encoder(tokens, move_prototypes=False)
        assert torch.equal(model.text_encoder.Atten.mu, before)  # the switch forward_train uses
        plain = TextNPR(8)
        plain.mu = before.clone()
        want_mu = plain(eot)  # the prototypes from the old buffer, then one momentum step
        model.encode_text(tokens)
    moved = model.text_encoder.Atten.mu
    assert not torch.equal(moved, before)
    torch.testing.assert_close(moved, 0.9 * before + 0.1 * want_mu.mean(dim=0, keepdim=True), rtol=0, atol=1e-7)
    torch.testing.assert_close(moved, plain.mu, rtol=0, atol=0)
    model = build_model(tiny_config()).train()
    torch.manual_seed(0)
    model.forward_train(batch(), tokens)
    once = TextNPR(8)
    once.mu = before.clone()
    with torch.no_grad():
        once(model.text_encoder(tokens, move_prototypes=False))  # (no dropout in the text encoder: same EOT)
    torch.testing.assert_close(model.text_encoder.Atten.mu, once.mu, rtol=0, atol=1e-6)
    image_mu = [layer.downsample_spatial.mu for layer in model.img_encoder.layers[:2]]
    assert all(torch.equal(m, build_model(tiny_config()).img_encoder.layers[i].downsample_spatial.mu)
               for i, m in enumerate(image_mu))  # the reference never updates the image prototypes


def test_gather_is_called_on_both_sides_with_gradients():
    model = build_model(tiny_config(npr=False))
    calls = []

    def gather(x):
        calls.append(x.shape)
        return torch.cat([x, x.detach() * 0 + 1], dim=0)  # a second "rank" holding constant rows

    img, txt = torch.randn(3, 32, requires_grad=True), torch.randn(3, 32, requires_grad=True)
    loss = model.contrastive_loss(img, txt, gather=gather, rank=0)
    loss.backward()
    assert calls == [(3, 32), (3, 32)] and img.grad is not None and txt.grad is not None
    assert loss > model.contrastive_loss(img, txt)  # more negatives: a larger loss


def test_hungarian_match_minimises_the_similarity_as_the_reference():
    inp = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    rows, cols = hungarian_match(inp, target)
    assert rows.tolist() == [0, 0] and cols.tolist() == [1, 0]  # the cost is the similarity: anti-diagonal


def test_hrs_reads_each_rows_similarity_to_prototype_zero():
    sim = torch.tensor([[[0.9, 0.0], [0.1, 1.0], [0.5, 0.2]]])
    # column 0 normalised over rows: (0.9-0.1)/0.8 = 1, 0, 0.5
    assert hrs(sim).tolist() == [[True, False, True]]


def test_closs_is_nan_when_hrs_keeps_nothing_as_the_reference():
    group = torch.ones(2, 3, 1)
    proto = torch.ones(2, 3, 1)
    assert torch.isnan(closs(group, proto, torch.tensor(math.log(10.0))))
    g = torch.Generator().manual_seed(0)
    value = closs(torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g), torch.tensor(2.3))
    assert math.isfinite(float(value)) and value > 0


def test_zero_shot_labels_background_threshold(tok):
    model = build_model(tiny_config()).eval()
    emb = class_text_embeddings(model, class_tokens(["cat", "dog", "car"], tok))
    assert emb.shape == (3, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    images = batch(1, 2, 40)
    labels = zero_shot_labels(model, images, emb, bg_thresh=0.95)
    assert labels.shape == (2, 40, 40) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) <= 3
    logits = zero_shot_logits(model, images, emb, bg_thresh=0.0)
    assert float(logits[:, 0].max()) == 0.0  # a zero threshold: no background anywhere
    assert zero_shot_labels(model, images, emb, with_bg=False).max() <= 2


def test_checkpoint_round_trip_and_registry(tmp_path, tok):
    model = build_model(tiny_config(), seed=5).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"step": 3})
    cfg, state = load_checkpoint(path)
    assert cfg == model.cfg and set(state) == set(model.state_dict())
    check_model("pgseg", path)
    loaded = load_model("pgseg", path)
    assert isinstance(loaded, PGSeg) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = batch()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))


def _reference_format(model: PGSeg, prefix: str = "") -> dict:
    """A state dict laid out as the reference saves it ({'model': ...}, DDP's 'module.' prefix optional)."""
    return {"model": {prefix + k: v.clone() for k, v in model.state_dict().items()}, "epoch": 3}


@pytest.mark.parametrize("npr", [True, False])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_key_map_reads_the_reference_layout(tmp_path, npr, prefix):
    model = build_model(tiny_config(npr=npr), seed=2)
    obj = _reference_format(model, prefix)
    if not npr:
        obj["model"][prefix + "multi_label_logit_scale"] = torch.tensor(2.0)  # GroupViT's release has it
    cfg, state = from_reference(obj)
    assert cfg.npr is npr and cfg.depths == (1, 1, 1) and cfg.num_output_groups == (16, 8)
    assert (cfg.embed_dim, cfg.text_width, cfg.proj_inner_dim, cfg.img_size) == (64, 64, 64, 32)
    path = tmp_path / "release.pth"
    torch.save(obj, path)
    loaded = load_model("pgseg", path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_infer_config_of_groupvit_s_shapes():
    with torch.device("meta"):
        model = PGSeg(PGSegConfig())
    assert infer_config(model.state_dict()) == PGSegConfig()


class Opaque:
    """Stands for the OmegaConf config object the releases pickle beside the weights."""

    def __init__(self):
        self.x = 1


def test_a_release_with_pickled_extras_loads_without_running_them(tmp_path):
    import pickle

    model = build_model(tiny_config(), seed=1)
    obj = {**_reference_format(model), "config": Opaque()}
    path = tmp_path / "release.pth"
    with open(path, "wb") as f:
        torch.save(obj, f, pickle_module=pickle)
    cfg, state = load_checkpoint(path)
    assert cfg == infer_config(state)


@pytest.mark.parametrize("content", ["other_arch", "no_dict", "garbage", "missing"])
def test_a_file_of_another_kind_is_one_line(tmp_path, content):
    path = tmp_path / "w.pth"
    if content == "other_arch":
        torch.save({"model": {"visual.conv1.weight": torch.zeros(2, 3, 4, 4)}}, path)
    elif content == "no_dict":
        torch.save([1, 2], path)
    elif content == "garbage":
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(VplError) as e:
        check_model("pgseg", path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_safetensors_of_another_kind_or_shape_is_one_line(tmp_path):
    from vpltool.io.tensors import write_tensors

    other = write_tensors(tmp_path / "f.safetensors", {"x": torch.zeros(2)}, kind="features", classes=[])
    with pytest.raises(VplError, match="not a PGSeg checkpoint"):
        check_model("pgseg", other)
    model = build_model(tiny_config())
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    from safetensors.torch import load_file, save_file

    from vpltool.io.tensors import read_header

    state = load_file(str(path))
    state["img_encoder.pos_embed"] = torch.zeros(1, 5, 64)
    save_file(state, str(path), metadata=read_header(path))
    with pytest.raises(VplError) as e:
        check_model("pgseg", path)
    assert "\n" not in str(e.value) and "img_encoder.pos_embed" in str(e.value)
    with pytest.raises(VplError):
        load_model("pgseg", path)


def test_matched_indices_are_a_permutation(tok):
    model = build_model(tiny_config()).train()
    torch.manual_seed(0)
    out = model.forward_train(batch(), tok(CAPTIONS))
    for key, g in (("match_stage1", 16), ("match_stage2", 8), ("match_text", 8)):
        rows = out[key].numpy().reshape(4, g)
        assert all(np.array_equal(np.sort(r), np.arange(g)) for r in rows)


def test_slide_windows_cover_the_image_as_mmseg():
    from vpltool.models.text.pgseg.zeroshot import slide_windows

    assert slide_windows(448, 597, 448, 224) == [(0, 448, 0, 448), (0, 448, 149, 597)]
    assert slide_windows(300, 200, 448, 224) == [(0, 300, 0, 200)]  # smaller than a crop: one window
    cover = torch.zeros(500, 700)
    for y1, y2, x1, x2 in slide_windows(500, 700, 448, 224):
        assert y2 - y1 == 448 and x2 - x1 == 448
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1


def test_slide_mode_averages_whole_passes_over_the_windows(tok):
    model = build_model(tiny_config()).eval()
    emb = class_text_embeddings(model, class_tokens(["cat", "dog"], tok))
    images = batch(2, 1, 48)
    whole = zero_shot_logits(model, images, emb)
    assert torch.equal(zero_shot_logits(model, images, emb, mode="slide", crop=64, stride=32), whole)
    slide = zero_shot_logits(model, images, emb, mode="slide", crop=32, stride=16)
    left = zero_shot_logits(model, images[:, :, :32, :32], emb)
    assert torch.equal(slide[:, :, :16, :16], left[:, :, :16, :16])  # covered by the first window only
    assert slide.shape == whole.shape and not torch.equal(slide, whole)
    with pytest.raises(ValueError, match="whole or slide"):
        zero_shot_logits(model, images, emb, mode="tiles")


@pytest.mark.parametrize("preset", ["tiny", "tiny-groupvit"])
def test_check_model_reads_shapes_on_the_meta_device(tmp_path, preset):
    """check_model("pgseg") compares the file's tensors with a meta-device model's shapes (PGSeg's NPR buffers
    included): a file of the model passes, a missing tensor is named."""
    import re

    from vpltool.models.text.pgseg import PRESETS, build_model_shapes

    model = build_model(PRESETS[preset](), seed=0)
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    check_model("pgseg", path)
    shapes = build_model_shapes(model.cfg)
    assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    from safetensors.torch import load_file, save_file

    from vpltool.io.tensors import read_header

    state = load_file(str(path))
    dropped = sorted(state)[-1]
    del state[dropped]
    save_file(state, str(path), metadata=read_header(path))
    with pytest.raises(VplError, match=re.escape(dropped)):
        check_model("pgseg", path)

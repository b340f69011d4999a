"""GroupViT's multi-label (noun) loss in the pgseg family and `train-pgseg --multi-label K --nouns FILE`: the loss
against a hand computation, the ranks' label offset, the nouns of a caption and the reference's padding, the
one-line refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vpltool.config.pgseg import pgseg_recipe
from vpltool.config.presets import IMAGENET_TEMPLATES
from vpltool.data.nouns import NltkNouns, VocabularyNouns, noun_prompts, noun_source, read_vocabulary
from vpltool.demo.make_world import write_dataset
from vpltool.errors import VplError
from vpltool.models.text.pgseg import build_model, tiny_config, tokenizer


def _hand_loss(img: np.ndarray, txt: np.ndarray, scale: float) -> float:
    """The reference's definition written out with loops (float64): image ``b`` against every ``(b', k)`` prompt
    with target 1/K on its own K; prompt ``(b, k)`` against every image with target 1 on its own."""
    img = img / np.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    b, k = txt.shape[:2]
    flat = txt.reshape(b * k, -1)
    per_img = []
    for i in range(b):
        logits = scale * flat @ img[i]
        logp = logits - np.log(np.exp(logits).sum())
        per_img.append(-sum(logp[i * k + j] / k for j in range(k)))
    per_text = []
    for i in range(b):
        for j in range(k):
            logits = scale * img @ txt[i, j]
            per_text.append(-(logits[i] - np.log(np.exp(logits).sum())))
    return 0.5 * (np.mean(per_img) + np.mean(per_text))


def test_multi_label_loss_equals_the_hand_computation_on_2_images_3_nouns():
    model = build_model(tiny_config(multi_label=3, npr=False))
    with torch.no_grad():
        model.multi_label_logit_scale.fill_(math.log(5.0))
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(2, 1, 32, generator=g), torch.randn(2, 3, 32, generator=g)
    got = model.multi_label_loss(img, txt).item()
    want = _hand_loss(img[:, 0].double().numpy(), txt.double().numpy(), 5.0)
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(_hand_loss(img[:, 0].double().numpy(), txt[[1, 0]].double().numpy(), 5.0))


def test_multi_label_scale_is_its_own_and_clamped_at_100():
    model = build_model(tiny_config(multi_label=2, npr=False))
    assert model.multi_label_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert "multi_label_logit_scale" not in build_model(tiny_config(npr=False)).state_dict()
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(3, 1, 32, generator=g), torch.randn(3, 2, 32, generator=g)
    with torch.no_grad():
        model.multi_label_logit_scale.fill_(math.log(1000.0))
        at_1000 = model.multi_label_loss(img, txt).item()
        model.logit_scale.fill_(0.0)  # the contrastive loss's scale is not the one read
        assert model.multi_label_loss(img, txt).item() == at_1000
    assert at_1000 == pytest.approx(_hand_loss(img[:, 0].double().numpy(), txt.double().numpy(), 100.0), rel=1e-5)


def test_a_second_rank_offsets_its_positives():
    """Rank 1 seeing [other, own] gives rank 0's value seeing [own, other]: its positives are its own rows."""
    model = build_model(tiny_config(multi_label=3, npr=False))
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(2, 1, 32, generator=g), torch.randn(2, 3, 32, generator=g)
    o_img, o_txt = torch.randn(2, 1, 32, generator=g), torch.randn(2, 3, 32, generator=g)
    others = {1: torch.nn.functional.normalize(o_img, dim=-1).flatten(0, 1),
              3: torch.nn.functional.normalize(o_txt, dim=-1).flatten(0, 1)}

    def gather(first: bool):
        return lambda x: torch.cat([x, others[len(x) // 2]] if first else [others[len(x) // 2], x])

    as_rank0 = model.multi_label_loss(img, txt, gather(True), rank=0)
    as_rank1 = model.multi_label_loss(img, txt, gather(False), rank=1)
    wrong = model.multi_label_loss(img, txt, gather(False), rank=0)
    assert torch.allclose(as_rank0, as_rank1, atol=1e-6)
    assert not torch.allclose(as_rank0, wrong, atol=1e-3)


def test_forward_train_adds_the_weighted_loss_and_trains_its_scale():
    cfg = tiny_config(multi_label=2, multi_label_weight=0.5)
    model = build_model(cfg).train()
    tok = tokenizer(cfg)
    texts = [["a star on grass.", "a photo of a star.", "a photo of the grass."],
             ["a ring.", "art of the ring.", "a ring."]]
    tokens = torch.stack([tok(t) for t in texts])
    torch.manual_seed(0)
    out = model.forward_train(torch.randn(2, 3, 32, 32), tokens)
    assert {"loss", "contrastive", "npr", "multi_label"} <= set(out)
    assert torch.allclose(out["loss"], out["contrastive"] + out["npr"] + out["multi_label"], equal_nan=True)
    out["multi_label"].backward()
    assert model.multi_label_logit_scale.grad.abs() > 0
    assert model.img_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B, 3, L\]"):
        model.forward_train(torch.randn(2, 3, 32, 32), tokens[:, 0])


def test_vocabulary_nouns_are_every_occurrence_in_caption_order():
    nouns = VocabularyNouns(frozenset({"star", "grass", "ring"}))
    assert nouns("A Star, a ring and a star on the grass.") == ["star", "ring", "star", "grass"]
    assert nouns("a photo of water.") == []


def test_prompts_draw_nouns_then_templates_and_pad_with_the_caption():
    caption = "a star and a ring on grass."
    got = noun_prompts(caption, ["star", "ring", "grass"], 2, np.random.RandomState(3))
    rng = np.random.RandomState(3)  # the reference's calls in its order: the nouns, then a template per noun
    chosen = rng.choice(["star", "ring", "grass"], 2, replace=False)
    assert got == [caption, *[str(rng.choice(list(IMAGENET_TEMPLATES))).format(n) for n in chosen]]
    one = noun_prompts("a ring.", ["ring"], 3, np.random.RandomState(0))
    assert one[0] == one[2] == one[3] == "a ring." and one[1] != "a ring." and "ring" in one[1]
    assert noun_prompts("a picture of water.", [], 3, np.random.RandomState(0)) == ["a picture of water."] * 4


def test_noun_vocabulary_file_rules(tmp_path):
    (tmp_path / "v.txt").write_text("# shapes\nStar\n\nring  # a comment\n")
    assert read_vocabulary(tmp_path / "v.txt") == {"star", "ring"}
    with pytest.raises(VplError, match="no such file"):
        read_vocabulary(tmp_path / "missing.txt")
    (tmp_path / "e.txt").write_text("# nothing\n\n")
    with pytest.raises(VplError, match="holds no noun"):
        read_vocabulary(tmp_path / "e.txt")
    (tmp_path / "p.txt").write_text("teddy bear\n")
    with pytest.raises(VplError, match="not one word"):
        read_vocabulary(tmp_path / "p.txt")


def test_without_a_file_nltk_or_one_line(monkeypatch):
    try:
        NltkNouns()("a dog.")
        have_nltk = True
    except Exception:
        have_nltk = False
    if have_nltk:
        assert noun_source(None)[1] == "nltk pos_tag"
    else:
        with pytest.raises(VplError, match="pass --nouns FILE"):
            noun_source(None)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=8, n_val=2, seed=0)


def test_train_pgseg_with_multi_label_writes_a_model_with_its_scale(world, tmp_path):
    from vpltool.config import RuntimeConfig
    from vpltool.models.text.pgseg import load_checkpoint
    from vpltool.stages.train_text import run_train_text

    (tmp_path / "nouns.txt").write_text("circle\nstar\nsquare\ntriangle\nring\ncross\nhexagon\ndiamond\n")
    cfg = pgseg_recipe("cpu", batch_size=4, epochs=1, warmup_epochs=0, crop_size=32, log_every=1, npr=False,
                       multi_label=2)
    s = run_train_text(world, tmp_path / "out", cfg, RuntimeConfig(device="cpu", workers=1),
                        nouns=tmp_path / "nouns.txt")
    model_cfg, state = load_checkpoint(s.model)
    assert model_cfg.multi_label == 2 and "multi_label_logit_scale" in state
    log = (tmp_path / "out" / "log.jsonl").read_text()
    assert '"multi_label"' in log


def test_cli_refuses_nouns_without_multi_label_and_a_missing_file_in_one_line(world, tmp_path):
    from vpltool.cli import app

    base = ["train-pgseg", str(world), "-o", str(tmp_path / "out"), "--recipe", "cpu", "--batch-size", "2",
            "--epochs", "1", "--crop-size", "32", "--device", "cpu"]
    (tmp_path / "n.txt").write_text("star\n")
    r = CliRunner().invoke(app, [*base, "--nouns", str(tmp_path / "n.txt")])
    assert r.exit_code == 2 and "pass --multi-label K" in r.output
    r = CliRunner().invoke(app, [*base, "--multi-label", "3", "--nouns", str(tmp_path / "none.txt")])
    assert r.exit_code == 2 and "no such file" in r.output
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(app, [*base, "--multi-label", "-1"])
    assert r.exit_code == 2 and "--multi-label" in r.output


def test_multi_label_resume_is_bit_exact_and_needs_the_same_nouns(world, tmp_path):
    """The noun draws are seeded by (seed, epoch, sample): stopped after iteration 1 and resumed gives the weights
    of the run that went through; resuming with another noun file is refused in one line."""
    from vpltool.config import RuntimeConfig
    from vpltool.models.text.pgseg import load_checkpoint
    from vpltool.stages.train_text import run_train_text

    (tmp_path / "nouns.txt").write_text("circle\nstar\nsquare\ntriangle\nring\ncross\nhexagon\ndiamond\n")
    (tmp_path / "other.txt").write_text("circle\nstar\n")
    cfg = pgseg_recipe("cpu", batch_size=4, epochs=1, warmup_epochs=0, crop_size=32, log_every=1, npr=False,
                       multi_label=2, checkpoint_every=1)
    rt = RuntimeConfig(device="cpu", workers=1)
    whole = run_train_text(world, tmp_path / "whole", cfg, rt, nouns=tmp_path / "nouns.txt").model
    run_train_text(world, tmp_path / "cut", cfg, rt, nouns=tmp_path / "nouns.txt", stop_after=1)
    with pytest.raises(VplError, match="--nouns"):
        run_train_text(world, tmp_path / "cut", cfg, rt, nouns=tmp_path / "other.txt", resume=True)
    s = run_train_text(world, tmp_path / "cut", cfg, rt, nouns=tmp_path / "nouns.txt", resume=True)
    assert s.start == 1 and s.iterations == 2
    a, b = load_checkpoint(whole)[1], load_checkpoint(s.model)[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

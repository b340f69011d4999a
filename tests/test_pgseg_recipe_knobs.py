"""The pgseg family's demo knobs, each off by default (the reference's arithmetic): multi-positive targets,
the multi-label loss on the best group, the mimetic query-key init, and `train-pgseg`'s options for them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vpltool.config.pgseg import PGSegTrainConfig, pgseg_recipe
from vpltool.errors import VplError
from vpltool.models.text.pgseg import PGSegConfig, build_model, tiny_config
from vpltool.models.text.pgseg.assign import AssignAttention
from vpltool.models.text.pgseg.groupvit import Attention, window_mask
from vpltool.models.text.pgseg.targets import positive_targets


def _model(**kw):
    model = build_model(tiny_config(npr=False, **kw))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(5.0))
        if kw.get("multi_label"):
            model.multi_label_logit_scale.fill_(math.log(5.0))
    return model


def test_positive_targets_spread_over_equal_texts():
    tok = torch.tensor([[1, 2], [3, 4], [1, 2]])[:, None]  # captions 0 and 2 equal
    got = positive_targets(tok, tok)
    assert torch.equal(got, torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))
    prompts = torch.tensor([[[1], [2]], [[2], [3]]])  # sample 0: nouns 1, 2; sample 1: 2, 3
    third = 1 / 3  # sample 0's prompts 1, 2 equal texts (0,0), (0,1), (1,0); sample 1's 2, 3: (0,1), (1,0), (1,1)
    assert torch.allclose(positive_targets(prompts, prompts),
                          torch.tensor([[third, third, third, 0], [0, third, third, third]]))
    per_sample = positive_targets(prompts.flatten(0, 1)[:, None], prompts, per="sample")
    assert torch.equal(per_sample, torch.tensor([[1, 0], [0.5, 0.5], [0.5, 0.5], [0, 1]]))


def test_multi_positive_contrastive_is_the_reference_without_duplicates_and_not_with_them():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(4, 32, generator=g), torch.randn(4, 32, generator=g)
    distinct = torch.arange(4)[:, None].repeat(1, 5)
    ref, multi = _model(), _model(multi_positive=True)
    assert multi.contrastive_loss(img, txt, tokens=distinct).item() == pytest.approx(
        ref.contrastive_loss(img, txt).item(), rel=1e-6)
    dup = distinct.clone()
    dup[1] = dup[0]  # captions 0 and 1 identical: each other's positive now
    want = _hand_multi(img, txt, [0, 0, 2, 3], 5.0)
    assert multi.contrastive_loss(img, txt, tokens=dup).item() == pytest.approx(want, rel=1e-5)
    assert want != pytest.approx(ref.contrastive_loss(img, txt).item(), rel=1e-3)


def _hand_multi(img, txt, keys, scale):
    """The multi-positive InfoNCE written out (float64): target 1/n over the n rows with the same key."""
    a = torch.nn.functional.normalize(img.double(), dim=-1).numpy()
    b = torch.nn.functional.normalize(txt.double(), dim=-1).numpy()
    logits = scale * a @ b.T
    same = np.array([[float(p == q) for q in keys] for p in keys])
    target = same / same.sum(1, keepdims=True)

    def ce(x):
        logp = x - np.log(np.exp(x).sum(1, keepdims=True))
        return -(target * logp).sum(1).mean()

    return 0.5 * (ce(logits) + ce(logits.T))


def test_multi_label_max_pool_reads_the_best_group():
    g = torch.Generator().manual_seed(1)
    groups, txt = torch.randn(2, 4, 32, generator=g), torch.randn(2, 3, 32, generator=g)
    model = _model(multi_label=3, multi_label_pool="max")
    got = model.multi_label_loss(groups, txt).item()
    gn = torch.nn.functional.normalize(groups, dim=-1)
    tn = torch.nn.functional.normalize(txt, dim=-1).flatten(0, 1)
    best = torch.einsum("bgd,nd->bgn", gn, tn).amax(1)  # [2, 6]: each image's best group per prompt
    mean_model = _model(multi_label=3)
    # the reference's loss on these per-image similarities: the pooled path with image_x . text = best
    i2t = mean_model._soft_ce(best * 5.0, 2, 1, 3, 0)
    t2i = mean_model._soft_ce(best.T * 5.0, 2, 3, 1, 0)
    assert got == pytest.approx(0.5 * (i2t + t2i).item(), rel=1e-5)
    best = torch.einsum("gd,nd->gn", gn[0], tn).argmax(0)  # image 0's best group per prompt
    moved = groups.clone()
    moved[0, best[0]] = txt[0, 0]  # the best group of prompt (0, 0) becomes it
    assert model.multi_label_loss(moved, txt).item() != pytest.approx(got, rel=1e-6)


def test_forward_train_with_the_max_pool_trains_through_the_groups():
    model = _model(multi_label=2, multi_label_pool="max").train()
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 100, (2, 3, 77))
    out = model.forward_train(images, tokens)
    out["loss"].backward()
    assert math.isfinite(out["multi_label"].item())
    assert model.multi_label_logit_scale.grad.abs() > 0
    assign = next(m for m in model.img_encoder.modules() if isinstance(m, AssignAttention))
    assert assign.q_proj.weight.grad.abs().sum() > 0  # the groups' assignment learns from the loss


def test_mimetic_init_equal_query_key_and_gain_zero_is_the_reference():
    ref = build_model(tiny_config(npr=False), seed=3)
    same = build_model(tiny_config(npr=False, assign_qk_init=0.0, qk_init=0.0), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), same.state_dict().values()))
    both = build_model(tiny_config(npr=False, assign_qk_init=2.0, qk_init=1.0), seed=3)
    for m in both.img_encoder.modules():
        if isinstance(m, AssignAttention) or (isinstance(m, Attention) and not m.qkv_fuse):
            assert torch.equal(m.q_proj.weight, m.k_proj.weight) and not m.q_proj.bias.any()
        elif isinstance(m, Attention):
            w = m.qkv.weight.shape[1]
            assert torch.equal(m.qkv.weight[:w], m.qkv.weight[w:2 * w])
    assign = next(m for m in both.img_encoder.modules() if isinstance(m, AssignAttention))
    assert assign.q_proj.weight.std().item() == pytest.approx(2.0 / math.sqrt(assign.q_proj.weight.shape[1]),
                                                              rel=0.2)


def test_train_config_knobs_default_to_the_reference_and_refuse_bad_values():
    cfg = PGSegTrainConfig()
    assert (cfg.multi_positive, cfg.multi_label_pool, cfg.noun_templates, cfg.temperature, cfg.hflip,
            cfg.hard_assignment, cfg.assign_qk_init, cfg.qk_init) == (False, "mean", "full", 0.07, True, True, 0.0,
                                                                      0.0)
    assert pgseg_recipe("demo").preset == "demo"
    for bad, words in (({"multi_label_pool": "sum"}, "--multi-label-pool"), ({"temperature": 0.0}, "--temperature"),
                       ({"noun_templates": "some"}, "--noun-templates"), ({"qk_init": -1.0}, "--qk-init"),
                       ({"warmup_epochs": -0.5}, "--warmup-epochs")):
        with pytest.raises(VplError, match=words):
            PGSegTrainConfig(**bad)


def test_the_trainers_knobs_reach_the_model_it_builds():
    """Every family knob of `train-pgseg` lands in the model config it trains and saves (a merge once dropped them:
    the demo recipe then trained the reference's model under the recipe's name)."""
    from vpltool.models.text.family import text_family

    fam = text_family("pgseg")
    cfg = pgseg_recipe("demo", multi_positive=True, temperature=0.05, hard_assignment=False)
    out = fam.model_config(cfg, None)
    assert (out.multi_positive, out.multi_label_pool, out.contrast_temperature, out.hard_assignment,
            out.assign_qk_init, out.qk_init, out.multi_label) == (True, "match", 0.05, False, 6.0, 2.0, 4)
    assert (out.assign_init, out.assign_metric, out.assign_iters, out.center_residual) == ("tokens", "distance", 3,
                                                                                            False)
    assert out.attention_window == cfg.attention_window
    trained = PGSegConfig.from_dict({**out.to_dict(), "assign_qk_init": 1.5})
    again = fam.model_config(cfg, trained)  # an --init's own init gains stay as its file records them
    assert again.assign_qk_init == 1.5


def test_attention_window_keeps_the_first_stages_patch_tokens_local():
    """With ``attention_window`` 3 a patch token after the first stage's blocks depends on its 3x3 patch
    neighbourhood alone (one block: changing a far patch leaves it unchanged), while the group tokens still see
    every patch; 0 is the reference's global attention (the far patch then reaches it)."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 32, 32)  # tiny config: 8 px patches, a 4x4 grid, one block in stage 1
    moved = images.clone()
    moved[:, :, 24:, 24:] += 1.0  # patch (3, 3): far from patch (0, 0)

    def stage1(window: int, x: torch.Tensor):
        enc = build_model(tiny_config(npr=False, attention_window=window), seed=0).img_encoder.eval()
        tokens, hw = enc.patch_embed(x)
        layer = enc.layers[0]
        cat = torch.cat([tokens + enc.pos_embed, layer.group_token.expand(1, -1, -1)], dim=1)
        mask = window_mask(hw, window, layer.num_group_token, cat.device)
        with torch.no_grad():
            out = layer.blocks[0](cat, mask)
        return out[0, 0], out[0, -1]  # patch (0, 0), the last group token

    (p0, g0), (p1, g1) = stage1(3, images), stage1(3, moved)
    assert torch.equal(p0, p1) and not torch.allclose(g0, g1)
    (q0, _), (q1, _) = stage1(0, images), stage1(0, moved)
    assert not torch.allclose(q0, q1)
    with pytest.raises(VplError, match="--attention-window 4: .*pass 5"):
        PGSegTrainConfig(attention_window=4)


def test_same_caption_nouns_keys_captions_by_their_nouns(monkeypatch):
    """``--same-caption nouns``: each view carries its caption's key, the sorted set of its vocabulary nouns, so
    two captions of the same shapes on the same background are one caption to the multi-positive loss, whatever
    else they say; the key needs --multi-positive and the noun loss."""
    from types import SimpleNamespace

    from vpltool.data.nouns import VocabularyNouns
    from vpltool.models.text import pgseg as fam
    from vpltool.stages import train_text as train_pgseg
    from vpltool.stages.train_text import PairViews

    with pytest.raises(VplError, match="--same-caption nouns: needs --multi-positive"):
        pgseg_recipe("cpu", same_caption="nouns")
    cfg = pgseg_recipe("cpu", multi_label=2, multi_positive=True, same_caption="nouns", noun_templates="simple")
    from PIL import Image

    image = Image.new("RGB", (40, 40))
    pairs = SimpleNamespace(pairs=[SimpleNamespace(caption=c, image=image) for c in (
        "a red star and a big circle on grass", "a small circle left of a blue star on grass",
        "a red star and a big circle on sky")])
    tokenize = fam.tokenizer(tiny_config())
    views = PairViews(pairs, tokenize, cfg, VocabularyNouns(["star", "circle", "grass", "sky"]))
    monkeypatch.setattr(train_pgseg, "decode_rgb", lambda pair: pair.image)
    items = [views[(i, 0)] for i in range(3)]
    assert all(len(item) == 3 for item in items)
    keys = [item[2] for item in items]
    assert torch.equal(keys[0], keys[1]) and not torch.equal(keys[0], keys[2])
    assert not torch.equal(items[0][1][0], items[1][1][0])  # the captions themselves differ


def test_groups_set_each_stages_group_tokens_and_refuse_what_cannot_be_built(tmp_path):
    """`--groups 16,8`: the grouping stages' tokens and output groups (the last stage keeps its 0 tokens); the
    preset's when not given, and recorded only when given (a run of before the option resumes); refused in one line
    when increasing, of another stage count, against an --init's own, or below --multi-label match's nouns."""
    from vpltool.config import to_params
    from vpltool.models.text.family import text_family

    fam = text_family("pgseg")
    out = fam.model_config(pgseg_recipe("demo", groups=(16, 8)), None)
    assert (tuple(out.num_group_tokens), tuple(out.num_output_groups)) == ((16, 8, 0), (16, 8))
    model = build_model(out)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert model.image_features(x)["groups"].shape[:2] == (2, 8)
    assert pgseg_recipe("demo").groups == (16, 8)  # the demo recipe's; () is the preset's
    plain = fam.model_config(pgseg_recipe("demo", groups=()), None)
    assert (tuple(plain.num_group_tokens), tuple(plain.num_output_groups)) == ((8, 4, 0), (8, 4))
    assert "groups" not in to_params(pgseg_recipe("cpu")) and to_params(pgseg_recipe("demo"))["groups"] == [16, 8]
    with pytest.raises(VplError, match="largest first, e.g. 16,8"):
        PGSegTrainConfig(groups=(8, 16))
    with pytest.raises(VplError, match="--groups 0: must be >= 1"):
        PGSegTrainConfig(groups=(0,))
    with pytest.raises(VplError, match="2 grouping stage.*give 2 counts"):
        fam.model_config(pgseg_recipe("demo", groups=(8,)), None)
    with pytest.raises(VplError, match="--init checkpoint's model has 8,4 groups"):
        fam.model_config(pgseg_recipe("demo", groups=(16, 8)), plain)
    assert tuple(fam.model_config(pgseg_recipe("demo", groups=(8, 4)), plain).num_output_groups) == (8, 4)
    with pytest.raises(VplError, match="--multi-label-pool match: each of the 4 noun prompts.*model has 2"):
        fam.model_config(pgseg_recipe("demo", groups=(8, 2)), None)


def test_groups_option_reads_whole_numbers_in_one_line():
    from vpltool.cli.values import parse_ints

    assert parse_ints("16, 8", "--groups") == (16, 8) and parse_ints("", "--groups") == ()
    for bad in ("16,x", "1.5", "-4", "١٦"):
        with pytest.raises(VplError, match="--groups .*comma-separated whole numbers"):
            parse_ints(bad, "--groups")

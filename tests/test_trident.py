"""``--dense trident`` (YuHengsss/Trident): its splicing and SAM aggregation against a plain restatement of the
reference's arithmetic (``guidance_attn``, ``get_sam_sim``: batch-first, per head, as its code writes them), its
settings as the reference's configs, and the segment stage end to end with the tiny CLIP, the toy DINO and a tiny
random SAM encoder. The bit-level parity with the reference's own code is parity/ovss_parity.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool.config import SegmentConfig
from vpltool.errors import VplError
from vpltool.models import load_backbone, load_model
from vpltool.models.backbones.sam import SamSpec
from vpltool.models.dense import DENSE_PRESETS
from vpltool.models.dense.trident import (
    SamAggregation,
    sam_affinity,
    sam_aggregate,
    sam_image,
    splice_windows,
    trident_features,
    trident_input,
)

TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


def _ref_sam_sim(sam_v, sam_attn, cos_fac, heads, refine_neg_cos=True):
    """The reference's ``get_sam_sim``: ``sam_v`` ``[1, heads, h, w, hd]``, ``sam_attn`` ``[1, heads, N, N]``."""
    v = F.normalize(sam_v.flatten(2, 3), dim=-1)
    sim = torch.einsum("bhmc,bhnc->bhmn", v, v)
    t = cos_fac * sim.mean(dim=1, keepdim=True).mean(dim=-1, keepdim=True)
    if not refine_neg_cos:
        t = torch.where(t < 0.0, 0.6, t)
    t = torch.where(t > 0.9, 0.9, t)
    kept = torch.where(sim > t, sam_attn, torch.zeros_like(sam_attn)).mean(dim=1)
    return (kept / kept.sum(dim=-1, keepdim=True)).unsqueeze(0).repeat(1, heads, 1, 1)


def _sam_inputs(heads=3, h=4, w=5, hd=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = h * w
    attn = torch.randn(1, heads, n, n, generator=g).softmax(-1)
    v = torch.randn(1, heads, h, w, hd, generator=g)
    return attn, v


@pytest.mark.parametrize("cos_fac,neg", [(1.2, True), (0.0, True), (3.0, False)])
def test_sam_affinity_is_get_sam_sim(cos_fac, neg):
    attn, v = _sam_inputs()
    want = _ref_sam_sim(v, attn, cos_fac, 3, neg)[0, 0]
    got = sam_affinity(attn[0], v[0], SamAggregation(cos_fac=cos_fac, refine_neg_cos=neg))
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(20), atol=1e-5)


def test_splicing_averages_the_overlaps():
    """Three windows of 2x2 CLIP patches over a 2x4 grid (stride 1 patch): every cell holds the mean of the windows
    that cover it; with a proxy grid twice CLIP's, each CLIP patch spans 2x2 cells."""
    boxes = [(0, 0, 2, 2), (0, 1, 2, 3), (0, 2, 2, 4)]
    tokens = torch.stack([torch.full((4, 1), float(k)) for k in range(3)])  # [3, HW=4, width=1]
    out = splice_windows(tokens, (2, 2), (2, 2), boxes, (2, 4))
    assert out.shape == (1, 1, 2, 4)
    assert torch.equal(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))
    tokens2 = torch.stack([torch.full((16, 1), float(k)) for k in range(3)])
    out2 = splice_windows(tokens2, (4, 4), (2, 2), boxes, (2, 4))
    assert out2.shape == (1, 1, 4, 8) and torch.equal(out2[0, 0, 0, ::2], torch.tensor([0.0, 0.5, 1.5, 2.0]))


def test_sam_aggregation_is_guidance_attn():
    """The reference's last step per head: the spliced map resized to SAM's grid, then the same weights per head."""
    attn, v = _sam_inputs(heads=2, h=3, w=4, hd=5)
    width, heads = 8, 2
    spliced = torch.randn(1, width, 5, 7, generator=torch.Generator().manual_seed(1))
    cfg = SamAggregation()
    got = sam_aggregate(spliced, attn[0], v[0], cfg)
    dst = F.interpolate(spliced, size=(3, 4), mode="bilinear", align_corners=False)
    dst = dst.view(1, heads, width // heads, -1).permute(0, 1, 3, 2)
    want = torch.matmul(_ref_sam_sim(v, attn, cfg.cos_fac, heads), dst).permute(2, 0, 1, 3).flatten(2)[:, 0]
    assert got.shape == (12, width) and torch.allclose(got, want, atol=1e-6)


def test_sam_halves_is_guidance_attns_cityscapes_branch():
    """Trident's Cityscapes: each half of the spliced map resized to its own half's SAM grid, mixed by that half's
    weights, the two joined side by side (its ``type(sam_v) is list`` branch)."""
    heads, width = 2, 8
    left, right = _sam_inputs(heads=heads, h=3, w=4, hd=5, seed=0), _sam_inputs(heads=heads, h=3, w=4, hd=5, seed=1)
    spliced = torch.randn(1, width, 5, 9, generator=torch.Generator().manual_seed(2))
    cfg = SamAggregation(cos_fac=3.0, refine_neg_cos=False, halves=True)
    got = sam_aggregate(spliced, [left[0][0], right[0][0]], [left[1][0], right[1][0]], cfg)
    outs = []
    for (attn, v), part in zip((left, right), (spliced[..., :4], spliced[..., 4:])):
        dst = F.interpolate(part, size=(3, 4), mode="bilinear", align_corners=False)
        dst = dst.reshape(1, heads, width // heads, -1).permute(0, 1, 3, 2)
        outs.append(torch.matmul(_ref_sam_sim(v, attn, 3.0, heads, False), dst).view(1, heads, 3, 4, -1))
    want = torch.cat(outs, dim=-2).flatten(2, 3).permute(2, 0, 1, 3).flatten(2)[:, 0]
    assert got.shape == (24, width) and torch.allclose(got, want, atol=1e-6)


def test_trident_input_is_preprocess_image():
    x = torch.randn(1, 3, 100, 150)
    y = trident_input(x, 16, 64)
    # long side 150 -> 160; short 100 * 160 / 150 = 106.67 -> 106 -> 112
    assert y.shape[-2:] == (112, 160)
    assert trident_input(torch.randn(1, 3, 32, 48), 16, 336).shape[-2:] == (32, 48)  # patch multiples pass as is
    assert trident_input(torch.randn(1, 3, 33, 48), 16, 64).shape[-2:] == (64, 64)  # at least the window


def test_sam_image_is_patch_multiples():
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert sam_image(image).shape == (32, 48, 3)
    same = np.zeros((32, 48, 3), np.uint8)
    assert sam_image(same) is same


def test_trident_settings_are_its_voc21_config():
    s = SegmentConfig(dense="trident").resolved()
    assert (s.logit_scale, s.prob_threshold, s.short_side, s.slide_crop, s.slide_stride) == (40.0, 0.2, 448, 336, 224)
    assert SegmentConfig(dense="trident").proxy_model == "vit_base_patch16_224.dino"
    assert SegmentConfig(dense="proxyclip").proxy_model == "vit_base_patch8_224.dino"
    assert DENSE_PRESETS["trident"].splice == SamAggregation(cos_fac=1.2, refine_neg_cos=True)
    from vpltool.stages.benchmark import preset_config
    from vpltool.stages.segment import dense_mixing_of

    voc20 = preset_config("trident", "voc20")
    assert (voc20.knobs.cos_fac, voc20.short_side, voc20.slide_stride) == (0.0, 336, 112)
    assert dense_mixing_of(voc20).splice.cos_fac == 0.0
    city = dense_mixing_of(preset_config("trident", "cityscapes"))
    assert (city.splice.cos_fac, city.splice.refine_neg_cos, city.splice.halves) == (3.0, False, True)
    assert not dense_mixing_of(preset_config("trident", "ade20k")).splice.halves


def test_trident_without_sam_weights_is_one_line():
    from vpltool.stages.segment import sam_spec

    with pytest.raises(VplError, match="--dense trident needs SAM's image encoder: pass --sam-weights"):
        sam_spec(SegmentConfig(dense="trident"))
    assert sam_spec(SegmentConfig(dense="naclip")) is None


def test_trident_on_a_backbone_without_sam_is_one_line(tiny_spec):
    bb = load_backbone(tiny_spec, "cpu").with_dense("trident")
    with pytest.raises(VplError, match="needs SAM's image encoder"):
        trident_features(bb, torch.zeros(1, 3, 32, 32), [(0, 0, 2, 2)], (2, 2), torch.zeros(1, 4, 4),
                         torch.zeros(1, 2, 2, 1))


def test_segment_runs_trident_end_to_end(world, tiny_spec, tmp_path):
    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    cfg = SegmentConfig(dense="trident", templates="a photo of a {}.", background="grass,sky", short_side=64,
                        slide_crop=48, slide_stride=32, proxy_model="test_vit", proxy_weights=str(TOY_DINO),
                        sam_model="test", sam_weights="none")
    out = tmp_path / "trident"
    s = run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == len(ds.items)
    record = io.read_stage_record(out, "segment")
    assert record["params"]["dense"] == "trident" and record["params"]["sam_model"] == "test"
    for item in ds.items:
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=len(ds.classes))
        assert mask.shape == io.load_image(item.image).shape[:2]


def test_trident_logits_follow_sams_grid(tiny_spec):
    """The logits come from SAM's grid: two photos that differ only where SAM looks differ in their logits, and a
    SAM of other weights changes them (the aggregation is used, not bypassed)."""
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.dense.trident import trident_logits
    from vpltool.stages.segment import dense_mixing_of

    bb = load_backbone(tiny_spec, "cpu")
    dino = load_model("dino", DinoSpec("test_vit", str(TOY_DINO)), "cpu")
    sam = load_model("sam", SamSpec("test", "none"), "cpu")
    dense = bb.with_dense("trident", proxy=dino, sam=sam)
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 64, 96)
    text = F.normalize(torch.randn(4, bb.embed_dim), dim=-1)
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    a = trident_logits(dense, pixels, text, [(48, 80)], 48, 32, [image])[0]
    assert a.shape == (4, 48, 80) and torch.isfinite(a).all()
    with torch.no_grad():
        for p in sam.model.blocks[-1].attn.qkv.parameters():
            p.add_(0.5)
    b = trident_logits(dense, pixels, text, [(48, 80)], 48, 32, [image])[0]
    assert (a - b).abs().max() > 1e-4
    halves = bb.with_dense(dense_mixing_of(SegmentConfig.of(dense="trident", sam_halves=True)), proxy=dino, sam=sam)
    c = trident_logits(halves, pixels, text, [(48, 80)], 48, 32, [image])[0]
    assert c.shape == (4, 48, 80) and torch.isfinite(c).all() and (c - b).abs().max() > 1e-4


def _ref_custom_attn(attn_layer, x, ex_feats, beta=1.2, gamma=3.0, token_size=(3, 3)):
    """Trident's ``custom_attn`` (sequence-first ``x`` ``[L, B, D]`` without the class token, all windows at once)."""
    heads = attn_layer.num_heads
    _, bsz, dim = x.size()
    hd = dim // heads
    v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)[2]
    v = v.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    _, _, h, w = ex_feats.shape
    unit = F.normalize(ex_feats.flatten(2, 3), dim=1)
    sim = torch.einsum("bcm,bcn->bmn", unit, unit)
    sim = (sim - torch.mean(sim) * beta) * gamma
    sim[sim < 0.0] = float("-inf")
    weights = F.softmax(sim.unsqueeze(1).repeat(1, heads, 1, 1).reshape(bsz * heads, h * w, h * w), dim=-1)
    v = v.reshape(bsz * heads, *token_size, hd).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(
        bsz * heads, h * w, hd)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, dim)
    return attn_layer.out_proj(out)


def test_trident_proxy_attention_takes_the_mean_over_all_windows(tiny_spec):
    """Trident runs an image's windows as one batch through ProxyCLIP's block, so ``mean S`` is over all of them
    (its ``torch.mean(similarity)``); ProxyCLIP's own is per window."""
    from vpltool.models.dense.proxyclip import proxy_attention_tokens

    bb = load_backbone(tiny_spec, "cpu")
    blk = bb.blocks[-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, bb.width, generator=g)  # 2 windows, class token + 3x3 patches
    proxy = torch.randn(2, 16, 8, generator=g)  # a proxy grid of 4x4
    proxy[1] += 3.0  # the second window's similarities higher: the two means differ
    with torch.no_grad():
        got = proxy_attention_tokens(blk, x, (3, 3), proxy, (4, 4), DENSE_PRESETS["trident"].proxy)
        ex = proxy.transpose(1, 2).reshape(2, 8, 4, 4)
        want = _ref_custom_attn(blk.attn, blk.ln_1(x[:, 1:]).transpose(0, 1), ex).transpose(0, 1)
        per_window = proxy_attention_tokens(blk, x, (3, 3), proxy, (4, 4), DENSE_PRESETS["proxyclip"].proxy)
    assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-5)
    assert (got[0] - per_window[0]).abs().max() > 1e-3  # window 0 sees the higher pooled mean


RESULT = Path(__file__).resolve().parents[1] / "parity" / "results" / "ovss_parity_trident.json"


@pytest.mark.skipif(not RESULT.is_file(), reason="no committed parity/results/ovss_parity_trident.json")
def test_committed_trident_parity_says_what_it_measured():
    """The committed run against Trident's own code: its headline is the worst photo, its verdicts follow the
    figures and the bars (1e-4, 99.9 %), its settings match the reference's, and it names the reference's commit."""
    import json

    result = json.loads(RESULT.read_text())
    method, variant = result["methods"]["trident"], result["variants"]["trident"]
    photos = variant["photos"]
    assert photos and result["photos"]["trident"] == len(photos) and not result.get("quick")
    finite = [p["logits"] for p in photos if p["logits"] == p["logits"]]
    nan = [p["file"] for p in photos if p["logits"] != p["logits"]]
    # a photo whose logits are NaN (on both sides, where equal) makes the headline NaN and the bar unmet
    assert variant["photos_nan_on_both_sides"] == [p["file"] for p in photos if p["nan_where_equal"]
                                                   and p["logits"] != p["logits"]]
    if nan:
        assert method["max_abs_diff"] != method["max_abs_diff"] and not method["bar_met"]
    else:
        assert method["max_abs_diff"] == max(finite)
    assert variant["seg_logits_max_abs_diff_finite_photos"] == max(finite)
    assert method["bar_met"] == (not nan and method["max_abs_diff"] <= 1e-4)
    assert method["labels_equal_min"] == min(p["labels_equal"] for p in photos)
    assert method["labels_bar_met"] == (method["labels_equal_min"] >= 0.999)
    assert all(p["input"] == 0.0 for p in photos) and not variant["settings_mismatched"]
    assert result["reference"]["clones"]["Trident"]["commit"].startswith("a93b346")

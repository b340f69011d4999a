"""The newer training-free ``--dense`` methods (SC-CLIP) against a plain restatement of their public code's
arithmetic (sequence-first, one image at a time, as SuleBai/SC-CLIP ``clip/model.py`` writes it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpltool.backbone import load_backbone
from vpltool.backbone.dense import (
    DENSE_PRESETS,
    SelfCalibration,
    lof_outliers,
    repair_outliers,
    scaled_levels,
)
from vpltool.config import SegmentConfig
from vpltool.errors import VplError


@pytest.fixture(scope="module")
def bb(tiny_spec):
    return load_backbone(tiny_spec, "cpu")


def _ref_lof(x, n_neighbors=30, contamination=0.05):
    distances = torch.norm(x[:, None] - x[None, :], dim=2, p=2) ** 2
    knn_distances, knn_indices = torch.topk(distances, k=n_neighbors + 1, largest=False)
    knn_distances, knn_indices = knn_distances[:, 1:], knn_indices[:, 1:]
    k_distances = knn_distances[:, -1].unsqueeze(1).expand_as(knn_distances)
    reach_distances = torch.max(knn_distances, k_distances)
    lrd = n_neighbors / torch.nan_to_num(reach_distances.mean(dim=1), nan=1e-6)
    lof = (lrd[knn_indices] / lrd.unsqueeze(1)).mean(dim=1)
    return torch.where(lof > torch.quantile(lof.to(torch.float32), 1 - contamination))[0]


def _ref_mean_interpolation(feature_map, top_indices):
    _, c, h, w = feature_map.shape
    kernel = torch.ones(c, 1, 3, 3)
    kernel[:, 0, 1, 1] = 0
    mask = torch.ones((h, w))
    indices = torch.tensor(top_indices, dtype=torch.long)
    mask[indices[:, 0], indices[:, 1]] = 0
    mask = mask[None, None]
    neighbor_sum = F.conv2d(F.pad(feature_map * mask, (1, 1, 1, 1)), kernel, groups=c)
    valid = F.conv2d(F.pad(mask, (1, 1, 1, 1)), kernel[:, :1], groups=1)
    safe = valid.clone()
    safe[safe == 0] = 1
    top = torch.zeros((h, w))
    top[indices[:, 0], indices[:, 1]] = 1
    update = top[None, None] * (valid > 0).float()
    return feature_map * (1 - update) + neighbor_sum / safe * update


def _ref_custom_attn(attn_layer, x, mid_simi):
    heads = attn_layer.num_heads
    _, bsz, dim = x.size()
    hd = dim // heads
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    k = k.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    mid_simi = (mid_simi - torch.mean(mid_simi)) * 3.0
    mid_simi[mid_simi < 0.0] = float("-inf")
    w = F.softmax(mid_simi.repeat(heads, 1, 1), dim=-1)
    w += F.softmax(torch.bmm(k, k.transpose(1, 2)) * hd**-0.5, dim=-1)
    w /= 2
    return attn_layer.out_proj(torch.bmm(w, v).transpose(0, 1).contiguous().view(-1, bsz, dim))


def _ref_aggregate(feats, corrs):
    return torch.matmul(corrs / (corrs.sum(dim=-1, keepdim=True) + 1e-6), feats.permute(1, 0, 2)).permute(1, 0, 2)


def _ref_sc_clip(bb, levels, grid, pre, post, start, stop):
    """SC-CLIP's ``VisionTransformer.forward`` after the blocks, on one image (levels ``[1, 1+hw, width]``)."""
    feats_list = [lv.transpose(0, 1) for lv in levels]  # LND
    gh, gw = grid
    x = feats_list[-1]
    cls_token = x[:1]
    outliers = _ref_lof(x[1:].squeeze(1))
    top = [(torch.div(i, gw, rounding_mode="trunc"), i % gw) for i in outliers]  # row-major (square in the code)
    fmap = x[1:].permute(1, 2, 0).reshape(1, -1, gh, gw)
    x = _ref_mean_interpolation(fmap, top).reshape(1, -1, gh * gw).permute(2, 0, 1)
    feats = feats_list[pre][1:].permute(1, 2, 0).reshape(1, -1, gh, gw)
    feats = _ref_mean_interpolation(feats, top).reshape(1, -1, gh * gw).permute(2, 0, 1)
    feats = feats / feats.norm(dim=2, keepdim=True)
    before = torch.matmul(feats.permute(1, 0, 2), feats.permute(1, 2, 0))
    mid = before.clone()
    before[before < 0.4] = 0.0
    x = _ref_aggregate(x, before)
    blk = bb.blocks[-1]
    x = _ref_custom_attn(blk.attn, blk.ln_1(x), mid.clone()) + 0.3 * cls_token
    feats = feats_list[post][1:].clone()
    feats = feats / feats.norm(dim=2, keepdim=True)
    after = torch.matmul(feats.permute(1, 0, 2), feats.permute(1, 2, 0))
    after[after < 0.4] = 0.0
    x = _ref_aggregate(x, after)
    re = torch.zeros_like(feats_list[0])
    for i in range(start, stop):
        re += feats_list[i]
    re = _ref_custom_attn(blk.attn, blk.ln_1(re[1:]), mid.clone()) + 0.3 * re[:1]
    x += _ref_aggregate(re, after)
    return bb.visual.ln_post(x.permute(1, 0, 2)) @ bb.visual.proj


def test_sc_clip_features_match_the_public_arithmetic(bb):
    """Two images of a 7x8 grid in one batch, each against the code's one-image forward."""
    dense = bb.with_dense("sc-clip")
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 3, 7 * bb.patch_size, 8 * bb.patch_size, generator=g)
    grid = (7, 8)
    with torch.no_grad():
        got = dense.dense_features(pixels)
        x, levels = dense.embed(pixels), []
        for i in range(bb.n_blocks - 1):
            x = dense.block(i, x, grid)[0]
            levels.append(x)
        levels_used = scaled_levels(SelfCalibration(), bb.n_blocks)
        want = torch.cat([_ref_sc_clip(bb, [lv[i : i + 1] for lv in levels], grid, *levels_used) for i in range(2)])
    assert got.shape == (2, 56, bb.embed_dim)
    assert (got - want).abs().max().item() < 1e-5
    with torch.no_grad():  # not another method's features
        assert (got - bb.with_dense("naclip").dense_features(pixels)).abs().max().item() > 1e-3


def test_lof_outliers_match_the_code_and_the_chunks_change_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 24, generator=g)
    x[[5, 50]] += 6.0  # two far tokens
    want = _ref_lof(x)
    got = lof_outliers(x, 30, 0.05)
    assert torch.equal(torch.where(got)[0], want)
    assert got[5] and got[50] and int(got.sum()) == 5  # 5 % of 100
    assert torch.equal(lof_outliers(x, 30, 0.05, chunk=24 * 100 * 7), got)


def test_repair_replaces_only_outliers_by_their_valid_neighbours():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 12, 3, generator=g)  # a 3x4 grid
    outliers = torch.zeros(1, 12, dtype=torch.bool)
    outliers[0, [0, 5]] = True
    got = repair_outliers(tokens, outliers, (3, 4))
    fmap = tokens.transpose(1, 2).reshape(1, 3, 3, 4)
    want = _ref_mean_interpolation(fmap, [(0, 0), (1, 1)]).reshape(1, 3, 12).transpose(1, 2)
    assert torch.allclose(got, want, atol=1e-6)
    keep = ~outliers[0]
    assert torch.equal(got[0, keep], tokens[0, keep])
    # token (0, 0): the mean of its valid neighbours (0, 1), (1, 0) -- (1, 1) is an outlier too
    assert torch.allclose(got[0, 0], (tokens[0, 1] + tokens[0, 4]) / 2, atol=1e-6)


def test_levels_are_the_codes_on_twelve_blocks_and_scaled_elsewhere():
    cal = SelfCalibration()
    assert scaled_levels(cal, 12) == (8, 3, 3, 10)
    pre, post, start, stop = scaled_levels(cal, 4)
    assert 0 <= post <= pre <= 2 and start < stop <= 3
    with pytest.raises(VplError, match="3 blocks or more"):
        scaled_levels(cal, 2)


def test_sc_clip_settings_are_its_voc21_config():
    s = SegmentConfig(dense="sc-clip").resolved()
    assert (s.logit_scale, s.prob_threshold, s.area_threshold) == (50.0, 0.15, 0.1)
    assert (s.short_side, s.slide_crop, s.slide_stride, s.pamr_steps) == (336, 224, 112, 0)
    assert DENSE_PRESETS["sc-clip"].pos_interpolation == "bicubic-dino"
    assert not DENSE_PRESETS["sc-clip"].vanilla

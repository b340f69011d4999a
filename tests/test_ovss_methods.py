"""The newer training-free ``--dense`` methods (SC-CLIP) against a plain restatement of their public code's
arithmetic (sequence-first, one image at a time, as SuleBai/SC-CLIP ``clip/model.py`` writes it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpltool.config import SegmentConfig
from vpltool.errors import VplError
from vpltool.models import load_backbone
from vpltool.models.dense import DENSE_PRESETS
from vpltool.models.dense.sc_clip import SelfCalibration, lof_outliers, repair_outliers, scaled_levels


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


# --------------------------------------------------------------------------------------------- ProxyCLIP
TOY_DINO = "vpltool/assets/toy-dino/model.safetensors"


@pytest.fixture(scope="module")
def dino():
    from pathlib import Path

    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.registry import load_model

    root = Path(__file__).resolve().parents[1]
    return load_model("dino", DinoSpec("test_vit", str(root / TOY_DINO)), "cpu")


def _ref_proxy_attn(attn_layer, x, ex_feats, token_size, beta=1.2, gamma=3.0):
    """ProxyCLIP's ``custom_attn`` (LND ``x``, ``ex_feats`` ``[B, C, H, W]``)."""
    heads = attn_layer.num_heads
    _, bsz, dim = x.size()
    hd = dim // heads
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    v = v.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
    _, _, h, w = ex_feats.shape
    q_k = F.normalize(ex_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.to(q.dtype).unsqueeze(1).repeat(1, heads, 1, 1).reshape(bsz * heads, h * w, h * w)
    weights = F.softmax(mask, dim=-1)
    v = v[:, 1:, :].reshape(bsz * heads, token_size[0], token_size[1], hd).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(bsz * heads, h * w, hd)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, dim)
    return attn_layer.out_proj(out)


def _ref_dino_tokens(model, x):
    """DINO's ``prepare_tokens`` + blocks + ``norm`` (facebookresearch/dino ``vision_transformer.py``) on timm's
    modules: ``get_intermediate_layers(x)[0]`` without the class token."""
    import math

    b, _, w, h = x.shape
    p = model.patch_embed.proj.kernel_size[0]
    t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat((model.cls_token.expand(b, -1, -1), t), dim=1)
    pos = model.pos_embed
    n = pos.shape[1] - 1
    if t.shape[1] - 1 != n or w != h:
        w0, h0 = w // p + 0.1, h // p + 0.1
        patch = F.interpolate(pos[:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), -1).permute(0, 3, 1, 2),
                              scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
        pos = torch.cat((pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])), dim=1)
    t = t + pos
    for blk in model.blocks:
        y = blk.norm1(t)
        bb_, nn_, c = y.shape
        qkv = blk.attn.qkv(y).reshape(bb_, nn_, 3, blk.attn.num_heads, c // blk.attn.num_heads).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * blk.attn.scale).softmax(dim=-1)
        t = t + blk.attn.proj((a @ qkv[2]).transpose(1, 2).reshape(bb_, nn_, c))
        t = t + blk.mlp(blk.norm2(t))
    return model.norm(t)[:, 1:]


def test_dino_final_tokens_are_dinos_own(dino):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6 * dino.patch_size, 7 * dino.patch_size, generator=g)  # not the native grid
    with torch.no_grad():
        got, grid = dino.final_tokens(x)
        want = _ref_dino_tokens(dino.model, x)
    assert grid == (6, 7) and got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


def test_proxyclip_features_match_the_public_arithmetic(bb, dino):
    """One square window: ProxyCLIP's CLIP forward with the DINO tokens of the same pixels, re-normalised."""
    dense = bb.with_dense("proxyclip", proxy=dino)
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(1, 3, 5 * bb.patch_size, 5 * bb.patch_size, generator=g)
    with torch.no_grad():
        got = dense.dense_features(pixels)
        enc = dense.encode(pixels, stop=bb.n_blocks - 1)
        mean, std = torch.tensor(bb.mean).view(3, 1, 1), torch.tensor(bb.std).view(3, 1, 1)
        raw = pixels[0] * std + mean
        dmean, dstd = torch.tensor(dino.mean).view(3, 1, 1), torch.tensor(dino.std).view(3, 1, 1)
        feats = _ref_dino_tokens(dino.model, ((raw - dmean) / dstd)[None])
        gh = 5 * bb.patch_size // dino.patch_size
        ex = feats.reshape(1, gh, gh, -1).permute(0, 3, 1, 2)
        blk = bb.blocks[-1]
        x = _ref_proxy_attn(blk.attn, blk.ln_1(enc.tokens.transpose(0, 1)), ex, (5, 5)).transpose(0, 1)
        want = bb.visual.ln_post(x) @ bb.visual.proj
    assert got.shape == (1, gh * gh, bb.embed_dim) and dense.feature_grid((80, 80)) == (gh, gh)
    assert (got - want).abs().max().item() < 1e-5


def test_proxyclip_s_proxy_takes_mkl_s_products_whatever_the_route(bb, dino, monkeypatch):
    """ProxyCLIP masks its proxy's similarities below 0: the proxy's products are MKL's, the references' library,
    even where oneDNN is asked (onednn.references_library); CLIP's tower takes the route."""
    from vpltool.models.backbones import onednn
    from vpltool.models.dense import proxyclip

    if not onednn.available():
        pytest.skip("this torch has no oneDNN linear op")
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "onednn")
    inside, calls = [], []
    own_linear, own_tokens = onednn.linear, dino.final_tokens
    monkeypatch.setattr(onednn, "linear", lambda *a: (calls.append(bool(inside)), own_linear(*a))[1])
    monkeypatch.setattr(dino, "final_tokens", lambda x: (inside.append(1), own_tokens(x), inside.clear())[1])
    with torch.no_grad():
        proxyclip.proxy_tokens(bb.with_dense("proxyclip", proxy=dino), torch.randn(1, 3, 80, 80))
    assert calls and not any(calls)  # oneDNN's products, none of them the proxy's


def test_proxyclip_without_a_proxy_model_is_one_line(bb):
    with pytest.raises(VplError, match="--dense proxyclip needs a proxy vision model"):
        bb.with_dense("proxyclip").dense_features(torch.zeros(1, 3, 32, 32))


def test_proxyclip_settings_are_its_voc21_config():
    s = SegmentConfig(dense="proxyclip").resolved()
    assert (s.logit_scale, s.prob_threshold, s.area_threshold) == (40.0, 0.2, None)
    assert (s.short_side, s.slide_crop, s.slide_stride, s.crop_mode, s.pad_multiple) == (336, 336, 112, "pad", 56)
    from vpltool.config.checks import to_params

    assert "proxy_model" in to_params(SegmentConfig(dense="proxyclip"))
    assert "proxy_model" not in to_params(SegmentConfig(dense="sc-clip"))  # inert: not recorded


@pytest.mark.parametrize("method", ["sc-clip", "proxyclip"])
def test_segment_runs_each_new_method_end_to_end(world, tiny_spec, tmp_path, method):
    from pathlib import Path

    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    proxy = str(Path(__file__).resolve().parents[1] / TOY_DINO)
    cfg = SegmentConfig(dense=method, templates="a photo of a {}.", background="grass,sky", short_side=64,
                        slide_crop=64, slide_stride=32, proxy_model="test_vit", proxy_weights=proxy)
    out = tmp_path / method
    s = run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == len(ds.items)
    record = io.read_stage_record(out, "segment")
    assert record["params"]["dense"] == method
    assert ("proxy_weights" in record["params"]) == (method == "proxyclip")
    for item in ds.items:
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=len(ds.classes))
        assert mask.shape == io.load_image(item.image).shape[:2]

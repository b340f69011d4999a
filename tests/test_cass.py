"""CASS (``--dense cass``) against a plain restatement of its public code's arithmetic (MICV-yonsei/CASS
``clip/model.py`` ``custom_attn`` 'spectral', ``cass_segmentor.py`` ``hierarchical_prompt``), sequence-first and one
head at a time as it is written, on the tiny random CLIP and the toy DINO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool.config import SegmentConfig, to_params
from vpltool.errors import VplError, VplWarning
from vpltool.models import load_backbone
from vpltool.models.dense import DENSE_PRESETS, neighbourhood_bias
from vpltool.models.dense.cass import (
    TextShift,
    cass_proxy_input,
    object_presence_logits,
    query_clusters,
    spectral_features,
)

TOY_DINO = "vpltool/assets/toy-dino/model.safetensors"


@pytest.fixture(scope="module")
def bb(tiny_spec):
    return load_backbone(tiny_spec, "cpu")


@pytest.fixture(scope="module")
def dino():
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.registry import load_model

    return load_model("dino", DinoSpec("test_vit", str(Path(__file__).resolve().parents[1] / TOY_DINO)), "cpu")


def _ref_keys(model, x):
    """CASS's ``DinoSelfAttention.forward``: the last block's qkv [1] of DINO's ``get_intermediate_feat``."""
    t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.cls_token.expand(1, -1, -1), t], dim=1)
    n = model.pos_embed.shape[1] - 1
    p = model.patch_embed.patch_size[0]
    h0, w0 = x.shape[-2] // p + 0.1, x.shape[-1] // p + 0.1
    s = int(n**0.5)
    pos = F.interpolate(model.pos_embed[:, 1:].reshape(1, s, s, -1).permute(0, 3, 1, 2),
                        scale_factor=(h0 / s, w0 / s), mode="bicubic")
    pos = torch.cat([model.pos_embed[:, :1], pos.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[1])], dim=1)
    t = t + (model.pos_embed if pos.shape == model.pos_embed.shape and x.shape[-1] == x.shape[-2] else pos)
    for i, blk in enumerate(model.blocks):
        y = blk.norm1(t)
        b, nn_, c = y.shape
        qkv = blk.attn.qkv(y).reshape(b, nn_, 3, blk.attn.num_heads, c // blk.attn.num_heads).permute(2, 0, 3, 1, 4)
        if i == len(model.blocks) - 1:
            return qkv
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * blk.attn.scale).softmax(dim=-1)
        t = t + blk.attn.proj((a @ qkv[2]).transpose(1, 2).reshape(b, nn_, c))
        t = t + blk.mlp(blk.norm2(t))


def _ref_custom_attn(attn_layer, x, n_patches, dino_attn, dino_n_patches, omega, stretch=True):
    """``custom_attn`` with ``_apply_spectral_strategy`` as written (x: [L, 1, width], LND)."""
    from scipy.optimize import linear_sum_assignment

    num_heads = attn_layer.num_heads
    num_tokens, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim**-0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)[:, 1:, :]
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)[:, 1:, :]
    dino_key = dino_attn[1, :, :, 1:, :].squeeze(0).permute(0, 2, 1)
    dk = F.interpolate(dino_key.reshape(num_heads, head_dim, *dino_n_patches), size=n_patches, mode="bilinear",
                       align_corners=False).reshape(num_heads, head_dim, -1).permute(0, 2, 1)
    dk = (dk - dk.min()) / (dk.max() - dk.min()) * (k.max() - k.min()) + k.min()
    attn_weights = torch.bmm(k, k.transpose(1, 2)) * scale
    dino_w = torch.bmm(dk, dk.transpose(1, 2)) * scale

    def spectrum(adj):
        vals = [torch.sort(torch.linalg.eigvalsh(a), descending=True)[0][:20] for a in adj]
        return torch.stack(vals)

    de = F.normalize(spectrum(dino_w.double()), p=2, dim=1)
    ce = F.normalize(spectrum(attn_weights.double()), p=2, dim=1)
    cost = torch.zeros(num_heads, num_heads)
    for i in range(num_heads):
        for j in range(num_heads):
            a = torch.sort(F.normalize(de[i][None], p=1, dim=-1))[0]
            b = torch.sort(F.normalize(ce[j][None], p=1, dim=-1))[0]
            cost[i, j] = 1 - torch.sum(torch.abs(a - b))
    rows, cols = linear_sum_assignment(cost.numpy())
    combined = torch.zeros_like(attn_weights)
    for idx in range(num_heads):
        i, j = rows[idx], cols[idx]
        w_d = 1 - cost[i, j]
        u, s, vh = torch.svd_lowrank(dino_w[j].double(), q=10)
        if stretch:
            lo, hi = s.min(), s.max()
            s = (s.clone() - lo) / (hi - lo) * ((1.5 * hi) - (0.5 * lo)) + (0.5 * lo)
        approx = u @ torch.diag(s) @ vh.T
        approx.fill_diagonal_(0)
        t = attn_weights[i]
        adj = (approx - approx.min()) / (approx.max() - approx.min()) * (t.max() - t.min()) + t.min()
        combined[idx] = (w_d * 10.0 * adj + attn_weights[i]) / (w_d * 10.0 + 1)
    weights = F.softmax(combined + omega, dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def test_cass_features_match_the_public_arithmetic(bb, dino):
    """A non-square window: the spectral last block with the toy DINO's keys of CASS's own DINO input."""
    dense = bb.with_dense("cass", proxy=dino)
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(1, 3, 5 * bb.patch_size, 6 * bb.patch_size, generator=g) * 0.5
    with torch.no_grad():
        got, image = spectral_features(dense, pixels)
        enc = dense.encode(pixels, stop=bb.n_blocks - 1)
        dino_in = cass_proxy_input(pixels[0], dino.mean, dino.std, dino.patch_size)
        qkv = _ref_keys(dino.model, dino_in)
        dgrid = (dino_in.shape[-2] // dino.patch_size, dino_in.shape[-1] // dino.patch_size)
        omega = neighbourhood_bias((5, 6), 5.0)[1:, 1:][None]
        blk = bb.blocks[-1]
        torch.manual_seed(0)
        x = _ref_custom_attn(blk.attn, blk.ln_1(enc.tokens).transpose(0, 1), (5, 6), qkv, dgrid, omega)
        want = bb.visual.ln_post(x.transpose(0, 1)) @ bb.visual.proj
        cls = dense.block(bb.n_blocks - 1, enc.tokens, (5, 6))[0][:, 0]
        want_image = bb.visual.ln_post(cls) @ bb.visual.proj
    assert got.shape == (1, 30, bb.embed_dim) and image.shape == (1, bb.embed_dim)
    assert (got - want).abs().max().item() < 1e-5
    assert (image - want_image).abs().max().item() < 1e-6
    # each window is seeded: the same result alone or in a batch
    with torch.no_grad():
        twice = spectral_features(dense, torch.cat([pixels, pixels]))[0]
    assert torch.equal(twice[0], got[0]) and torch.equal(twice[1], got[0])


def test_cass_proxy_input_wraps_as_numpy_does():
    """CASS's DINO input: ImageNet's stats undone from CLIP-normalised pixels, uint8 by numpy, a square PIL resize."""
    x = torch.zeros(3, 24, 40)
    x[0, 0, 0] = 10.0  # 0.229 * 10 + 0.485 = 2.775 -> 707.6 -> uint8 wraps (707 % 256 = 195)
    got = cass_proxy_input(x, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 8)
    assert got.shape == (1, 3, 24, 24)
    raw = (np.array([0.229 * 10 + 0.485], dtype=np.float32) * 255).astype("uint8")[0]
    assert raw == 707 % 256


def _ref_hierarchical_prompt(image_features, sims, text, clusters, alpha):
    out = text.clone()
    for cid in range(len(set(clusters))):
        idx = np.where(clusters == cid)[0]
        ci = int(idx[np.argmax(sims.numpy()[idx])])
        t = F.normalize(text[ci].unsqueeze(0), dim=1)
        s = torch.matmul(F.normalize(image_features, dim=1), t.t()).squeeze(1)
        _, top = torch.topk(s, min(2, image_features.size(0)))
        m = F.normalize(image_features[top].mean(dim=0), dim=0)
        out[ci] = F.normalize((1 - alpha) * t.squeeze(0) + alpha * m, dim=0)
    return out


def test_object_presence_logits_match_the_segmentor():
    g = torch.Generator().manual_seed(1)
    text = F.normalize(torch.randn(9, 16, generator=g), dim=1)
    feats = F.normalize(torch.randn(30, 16, generator=g), dim=1)
    image = F.normalize(torch.randn(16, generator=g), dim=0)
    cfg = TextShift(global_weight=0.25, mean_vector_weight=0.3, h_threshold=0.9)
    clusters = query_clusters(text, cfg.h_threshold)
    assert clusters.min() == 0 and len(set(clusters)) == clusters.max() + 1
    got = object_presence_logits(feats, image, text, clusters, cfg)
    sims = image @ text.T
    adjusted = _ref_hierarchical_prompt(feats, sims, text, clusters, 0.3)
    want = (feats @ adjusted.T) * 0.75 + sims[None] * 0.25
    assert (got - want).abs().max().item() < 1e-6
    assert not torch.allclose(adjusted, text)  # the shift moved some rows


def test_query_clusters_cut_the_ward_tree():
    text = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    assert list(query_clusters(text, 0.1)) != list(query_clusters(text, 5.0))
    assert len(set(query_clusters(text, 5.0))) == 1
    assert query_clusters(text, 0.1)[0] == query_clusters(text, 0.1)[1]
    assert list(query_clusters(text[:1], 0.1)) == [0]


def test_cass_preset_and_settings_are_its_voc21_config():
    m = DENSE_PRESETS["cass"]
    assert (m.attention, m.residual, m.ffn, m.gaussian_std) == ("spectral", False, False, 5.0)
    shift = m.text_shift
    assert (shift.global_weight, shift.mean_vector_weight, shift.h_threshold, shift.top_k) == (0.1, 0.03, 0.10, 2)
    assert (m.spectral.k_eigen, m.spectral.scale_factor, m.spectral.stretch) == (20, 10.0, True)
    s = SegmentConfig(dense="cass").resolved()
    assert (s.logit_scale, s.prob_threshold, s.short_side, s.slide_crop, s.whole, s.pamr_steps) == \
        (40.0, 0.1, 336, 0, "input", 0)


def test_cass_without_a_proxy_model_is_one_line(bb):
    with pytest.raises(VplError, match="--dense cass needs a proxy vision model"):
        bb.with_dense("cass").dense_features(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("crop", [0, 48])
def test_segment_runs_cass_end_to_end(world, tiny_spec, tmp_path, crop):
    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    proxy = str(Path(__file__).resolve().parents[1] / TOY_DINO)
    cfg = SegmentConfig(dense="cass", templates="a photo of a {}.", background="grass,sky", short_side=64,
                        slide_crop=crop, slide_stride=32, proxy_model="test_vit", proxy_weights=proxy)
    s = run_segment(ds, tmp_path / "cass", tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == len(ds.items)
    record = io.read_stage_record(tmp_path / "cass", "segment")
    assert record["params"]["dense"] == "cass" and "proxy_weights" in record["params"]
    for item in ds.items:
        mask = io.read_mask(io.mask_path(tmp_path / "cass", item.id), num_classes=len(ds.classes))
        assert mask.shape == io.load_image(item.image).shape[:2]


def test_cass_knobs_reach_the_mixing_and_the_benchmark_presets_set_them():
    from vpltool.stages.benchmark import preset_config
    from vpltool.stages.segment import dense_mixing_of

    m = dense_mixing_of(SegmentConfig.of(dense="cass", global_weight=0.4, shift_weight=0.02, cluster_cut=0.14,
                                         stretch=False, window_global=True))
    assert (m.text_shift.global_weight, m.text_shift.mean_vector_weight, m.text_shift.h_threshold) == (0.4, 0.02, 0.14)
    assert m.spectral.stretch is False and m.text_shift.window_global is True
    assert dense_mixing_of(SegmentConfig(dense="cass")) == "cass"
    with pytest.warns(VplWarning, match="--global-weight 0.2 has no effect without --dense cass"):
        assert "global_weight" not in to_params(SegmentConfig.of(dense="naclip", global_weight=0.2))
    with pytest.raises(VplError, match="--global-weight"):
        SegmentConfig.of(dense="cass", global_weight=1.5)
    voc20, city = preset_config("cass", "voc20").knobs, preset_config("cass", "cityscapes")
    assert (voc20.global_weight, voc20.shift_weight, voc20.cluster_cut, voc20.stretch) == (0.4, 0.02, 0.10, False)
    assert (city.knobs.cluster_cut, city.knobs.stretch, city.knobs.window_global, city.short_side) == (
        0.14, False, True, 560)
    voc21 = preset_config("cass", "voc21")
    assert (voc21.slide_crop, voc21.prob_threshold, voc21.pamr_steps, voc21.knobs.stretch) == (0, 0.1, 0, True)


def test_one_window_covering_the_input_takes_its_own_embedding(bb, dino, monkeypatch):
    """A slide window as large as the input: its image embedding is the input's, so no second forward of the input
    is made for it; the logits equal the whole-image path's, and the explicit input embedding's to fp32."""
    from vpltool.models.dense import segmentor
    from vpltool.models.dense.segmentor import dense_logits, input_embedding, window_logits

    dense = bb.with_dense("cass", proxy=dino)
    g = torch.Generator().manual_seed(5)
    size = (4 * bb.patch_size, 5 * bb.patch_size)
    pixels = torch.randn(1, 3, *size, generator=g) * 0.5
    text = F.normalize(torch.randn(4, bb.embed_dim, generator=g), dim=-1)
    with torch.no_grad():
        explicit = window_logits(dense, pixels, text, False, 0, input_embedding(dense, pixels))
        whole = dense_logits(dense, pixels, text, [size], 0, 16)[0]
        calls = []
        monkeypatch.setattr(segmentor, "input_embedding", lambda *a: calls.append(a))
        one = dense_logits(dense, pixels, text, [size], max(size), 16)[0]
    assert not calls
    assert torch.equal(one, whole)
    assert (one - explicit[0]).abs().max().item() < 1e-5
    # two windows still take the whole input's embedding
    with torch.no_grad():
        dense_logits(dense, pixels, text, [size], min(size), bb.patch_size)
    assert len(calls) == 1


@pytest.mark.parametrize("d", [24, 8])
def test_spectra_from_the_gram_matrix_equal_the_key_graphs(d):
    """The top eigenvalues CASS takes of each ``N x N`` key graph equal those of the ``d x d`` Gram matrix (zeros
    after rank ``d``), normalised as its cost needs them."""
    from vpltool.models.dense.cass import _spectra

    g = torch.Generator().manual_seed(7)
    keys = torch.randn(3, 50, d, generator=g) + torch.randn(3, 1, d, generator=g)
    graphs = keys.double() @ keys.double().transpose(1, 2) * 0.125
    full = torch.stack([torch.sort(torch.linalg.eigvalsh(x), descending=True)[0][:20] for x in graphs])
    want = F.normalize(F.normalize(full, p=2, dim=1), p=1, dim=-1)
    got = _spectra(keys, 0.125, 20)
    assert got.shape == (3, 20) and got.dtype == torch.float64
    assert (got - want).abs().max().item() < 1e-12


@pytest.mark.parametrize("toy", [False, True])
def test_class_token_of_a_block_equals_the_full_blocks(bb, toy):
    """CASS's image embedding runs the last block for the class token alone: the full block's class row, for the
    tiny CLIP and for the toy CLIP (whose first blocks are windowed: their masks' class row)."""
    from vpltool.models import ModelSpec

    model = load_backbone(ModelSpec("vpltool-toy", "none"), "cpu") if toy else bb
    g = torch.Generator().manual_seed(11)
    pixels = torch.randn(2, 3, 4 * model.patch_size, 6 * model.patch_size, generator=g)
    with torch.no_grad():
        x = model.embed(pixels)
        for i in range(model.n_blocks):
            want = model.block(i, x, (4, 6))[0][:, :1]
            got = model.class_token(i, x, (4, 6))
            assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5, i
            x = model.block(i, x, (4, 6))[0]


def test_cass_dino_sees_the_whole_window_with_the_remainder(bb, dino):
    """CASS squares the whole window for its DINO (``inv_image.resize((min(w, h),) * 2)`` of the uncut input) while
    CLIP's patch convolution drops a side's remainder: a window 3 pixels past whole patches feeds DINO all of it."""
    from vpltool.models.dense.segmentor import grid_logits

    dense = bb.with_dense("cass", proxy=dino)
    g = torch.Generator().manual_seed(13)
    p = bb.patch_size
    pixels = torch.randn(1, 3, 4 * p, 5 * p + 3, generator=g)
    text = F.normalize(torch.randn(3, bb.embed_dim, generator=g), dim=-1)
    cut = pixels[..., : 4 * p, : 5 * p]
    with torch.no_grad():
        got = grid_logits(dense, pixels, text)
        whole = spectral_features(dense, cut, proxy_pixels=pixels)
        cropped = spectral_features(dense, cut)
    assert got.shape == (1, 3, 4, 5)
    assert not torch.equal(whole[0], cropped[0])  # the remainder changes DINO's input
    feats = F.normalize(whole[0][0], dim=-1)
    image = F.normalize(whole[1][0], dim=-1)
    from vpltool.models.dense.cass import object_presence_logits, query_clusters

    want = object_presence_logits(feats, image, text, query_clusters(text, 0.10), DENSE_PRESETS["cass"].text_shift)
    assert (got[0].reshape(3, -1).T - want).abs().max().item() < 1e-6

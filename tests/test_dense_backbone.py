"""The dense CLIP family on the backbone's last block (vpltool.models.dense): each method's arithmetic against a
plain restatement of its public code, Ω, the positional interpolation, and ``none`` unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool.config.dense import PLAIN_METHODS
from vpltool.errors import VplError
from vpltool.models import DENSE_METHODS, dense_mixing, load_backbone
from vpltool.models.dense import neighbourhood_bias, resize_positional


@pytest.fixture(scope="module")
def bb(tiny_spec):
    return load_backbone(tiny_spec, "cpu")


def _pixels(bb, h=3, w=5, b=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, h * bb.patch_size, w * bb.patch_size, generator=g)


def _reference_last_block(blk, x, method, grid, std=5.0):
    """The methods' ``custom_attn`` + block as their repos write it (sequence-first, bmm per head)."""
    x = x.transpose(0, 1)  # LND
    attn = blk.attn
    h = blk.ln_1(x)
    n, bsz, dim = h.shape
    heads = attn.num_heads
    hd = dim // heads
    scale = hd**-0.5
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.contiguous().view(-1, bsz * heads, hd).transpose(0, 1) for t in (q, k, v))
    if method == "maskclip":
        mask = torch.full((n, n), float("-inf"))
        mask.fill_diagonal_(0)
        w = F.softmax(mask, -1)[None].repeat(q.shape[0], 1, 1)
    elif method == "sclip":
        w = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, -1) + F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale,
                                                                               -1)
    elif method == "clearclip":
        w = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, -1)
    else:  # naclip: Ω as get_attention_addition builds it (a convolution of one-hot maps with the window)
        gh, gw = grid
        c = 1 / (std * math.sqrt(2))
        ks = [torch.linspace(-(d - 1) / 2 * c, (d - 1) / 2 * c, d) for d in (2 * gh - 1, 2 * gw - 1)]
        window = torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))
        m = torch.einsum("ij,kl->ijkl", torch.eye(gh), torch.eye(gw)).permute(0, 3, 1, 2).contiguous()
        om = F.conv2d(m.view(-1, gh, gw)[:, None], window[None, None], padding="same").squeeze(1).view(gh * gw, -1)
        om = torch.hstack([torch.zeros(gh * gw + 1, 1), torch.vstack([torch.zeros(1, gh * gw), om])])
        w = F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale + om, -1)
    out = attn.out_proj(torch.bmm(w, v).transpose(0, 1).contiguous().view(-1, bsz, dim))
    if method in ("maskclip", "sclip"):
        x = x + out
        x = x + blk.mlp(blk.ln_2(x))
    else:
        x = out
    return x.transpose(0, 1)


def test_none_is_extracts_path(bb):
    """``--dense none`` gives exactly the features of today's encode + vanilla last block."""
    pixels = _pixels(bb)
    with torch.no_grad():
        enc = bb.encode(pixels)
        expected = bb.dense(enc.tokens)
        got = bb.dense_features(pixels)
    assert bb.dense_method == "none"
    assert torch.equal(got, expected)
    assert bb.with_dense("none") is bb


@pytest.mark.parametrize("method", ["maskclip", "sclip", "clearclip", "naclip"])
def test_last_block_matches_public_arithmetic(bb, method):
    dense = bb.with_dense(method)
    grid = (3, 5)
    x = torch.randn(2, 1 + 15, bb.width)
    with torch.no_grad():
        got = dense.last_block(x, grid)
        want = _reference_last_block(bb.blocks[-1], x, method, grid)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5
    if method in ("clearclip", "naclip"):  # not the vanilla block
        assert (got - bb.last_block(x, grid)).abs().max().item() > 1e-3


def test_dense_features_differ_per_method_and_keep_the_shape(bb):
    pixels = _pixels(bb)
    with torch.no_grad():
        # ProxyCLIP's and CASS's features need a proxy model (tests/test_ovss_methods.py, tests/test_cass.py),
        # TextRegion's each photo's region masks (tests/test_textregion.py): the CLIP-only methods here
        methods = [m for m in DENSE_METHODS if m in PLAIN_METHODS]
        feats = {m: bb.with_dense(m).dense_features(pixels) for m in methods}
    for f in feats.values():
        assert f.shape == (2, 15, bb.embed_dim)
    assert len({round(float(f.abs().sum()), 3) for f in feats.values()}) == len(feats) == len(methods) >= 6


def test_omega_is_an_unnormalised_gaussian_with_a_zero_class_token():
    om = neighbourhood_bias((4, 6), 5.0)
    assert om.shape == (25, 25)
    assert torch.all(om[0] == 0) and torch.all(om[:, 0] == 0)
    assert torch.allclose(om[1:, 1:].diagonal(), torch.ones(24))  # peak 1, not a distribution
    # patches (0, 0) and (1, 2): distance² 5
    assert om[1, 1 + 1 * 6 + 2].item() == pytest.approx(math.exp(-5 / 50), rel=1e-6)
    assert torch.allclose(om, om.T)


def test_positional_interpolation_follows_the_method(bb):
    pos = torch.randn(1 + 16, 8)
    dino = resize_positional(pos, (4, 4), (3, 6), "bicubic-dino")
    want = F.interpolate(pos[1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2), scale_factor=(3.1 / 4, 6.1 / 4),
                         mode="bicubic", align_corners=False, recompute_scale_factor=False)
    assert torch.equal(dino[1:], want.permute(0, 2, 3, 1).reshape(18, 8))
    assert torch.equal(dino[0], pos[0])
    bilinear = resize_positional(pos, (4, 4), (3, 6), "bilinear")
    assert (bilinear - dino).abs().max() > 1e-3  # two different resizes
    assert resize_positional(pos, (4, 4), (4, 4), "bicubic-dino") is pos
    assert bb.with_dense("naclip").mixing.pos_interpolation == "bicubic-dino"
    assert bb.mixing.pos_interpolation == "bilinear"


def test_bad_method_is_one_line(tiny_spec):
    with pytest.raises(VplError, match="--dense 'nope'"):
        load_backbone(tiny_spec, "cpu", dense="nope")
    assert dense_mixing("naclip").gaussian_std == 5.0
    assert not np.isnan(dense_mixing("sclip").gaussian_std)

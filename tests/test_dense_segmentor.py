"""The training-free segmentor (vpltool.models.dense.segmentor): windows, padding, slide averaging, probabilities with
synonyms / threshold / area filter, and PAMR against a convolution restatement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpltool.models import load_backbone
from vpltool.models.dense.segmentor import (
    class_probabilities,
    dense_logits,
    dense_probabilities,
    grid_logits,
    pad_size,
    pamr,
    short_side_size,
    window_starts,
)


def test_short_side_and_windows():
    assert short_side_size(375, 500, 336) == (336, 448)
    assert short_side_size(96, 96, 336) == (336, 336)
    assert short_side_size(100, 10000, 336) == (20, 2048)  # the long edge caps it
    assert short_side_size(300, 451, 672, 1008) == (671, 1008)  # TextRegion's Resize(scale=(1008, 672))
    assert short_side_size(375, 500, 672, 1008) == (672, 896)
    assert window_starts(336, 224, 112) == [(0, 224), (112, 336)]
    assert window_starts(448, 224, 112) == [(0, 224), (112, 336), (224, 448)]
    assert window_starts(100, 224, 112) == [(0, 100)]
    assert window_starts(300, 224, 112) == [(0, 224), (76, 300)]  # the last window flush with the border
    assert pad_size(20, 35, 16) == (6, 7, 6, 6)
    assert pad_size(32, 32, 16) == (0, 0, 0, 0)


@pytest.fixture(scope="module")
def bb(tiny_spec):
    return load_backbone(tiny_spec, "cpu", dense="clearclip")


def test_slide_of_one_window_is_the_whole_image(bb):
    p = bb.patch_size
    pixels = torch.randn(2, 3, 4 * p, 5 * p)
    text = F.normalize(torch.randn(3, bb.embed_dim), dim=-1)
    with torch.no_grad():
        slide = dense_logits(bb, pixels, text, [(50, 60), (40, 40)], crop=10 * p, stride=2 * p)
        whole = dense_logits(bb, pixels, text, [(50, 60), (40, 40)], crop=0, stride=0)
        grid = grid_logits(bb, pixels, text)
    assert slide[0].shape == (3, 50, 60) and slide[1].shape == (3, 40, 40)
    assert torch.allclose(slide[0], whole[0], atol=1e-6)
    assert grid.abs().max() <= 1 + 1e-5  # cosines


def test_slide_averages_overlapping_windows(bb):
    p = bb.patch_size
    pixels = torch.randn(1, 3, 3 * p, 6 * p)
    text = F.normalize(torch.randn(2, bb.embed_dim), dim=-1)
    with torch.no_grad():
        got = dense_logits(bb, pixels, text, [(3 * p, 6 * p)], crop=3 * p, stride=2 * p)[0]
        left = grid_logits(bb, pixels[..., : 3 * p], text)
        mid = grid_logits(bb, pixels[..., 2 * p : 5 * p], text)
        right = grid_logits(bb, pixels[..., 3 * p :], text)
    up = [F.interpolate(x, size=(3 * p, 3 * p), mode="bilinear", align_corners=False)[0] for x in (left, mid, right)]
    # windows at 0, 2p, 3p (the last flush with the border); the column 2.5p by the first two only
    col = 2 * p + p // 2
    want = (up[0][..., col] + up[1][..., col - 2 * p]) / 2
    assert torch.allclose(got[..., col], want, atol=1e-5)


def test_padded_window_cuts_the_padding(bb):
    p = bb.patch_size
    pixels = torch.randn(1, 3, 3 * p + 3, 3 * p + 5)
    text = F.normalize(torch.randn(2, bb.embed_dim), dim=-1)
    with torch.no_grad():
        padded = dense_logits(bb, pixels, text, [tuple(pixels.shape[-2:])], crop=8 * p, stride=4 * p, pad=True)[0]
        dropped = dense_logits(bb, pixels, text, [tuple(pixels.shape[-2:])], crop=8 * p, stride=4 * p)[0]
        left, r, t, b = pad_size(3 * p + 3, 3 * p + 5, p)
        ref = grid_logits(bb, F.pad(pixels, (left, r, t, b)), text)
        ref = F.interpolate(ref, size=(4 * p, 4 * p), mode="bilinear", align_corners=False)[0, :, t:t + 3 * p + 3,
                                                                                             left:left + 3 * p + 5]
    assert torch.allclose(padded, ref, atol=1e-6)
    assert (padded - dropped).abs().max() > 1e-4


def test_probabilities_take_the_max_over_synonyms_and_threshold():
    logits = torch.tensor([[0.30, 0.10], [0.20, 0.25], [0.10, 0.26], [0.0, 0.0]])[:, :, None]  # [Q=4, H=2, W=1]
    query_class = torch.tensor([0, 1, 1, 2])
    probs, labels = dense_probabilities(logits, query_class, 3, logit_scale=10.0, prob_threshold=0.0)
    soft = (logits * 10).softmax(0)
    assert torch.allclose(probs[1], torch.maximum(soft[1], soft[2]))
    assert torch.allclose(probs[0], soft[0]) and torch.allclose(probs[2], soft[3])
    assert labels[:, 0].tolist() == [0, 1]
    _, high = dense_probabilities(logits, query_class, 3, logit_scale=10.0, prob_threshold=0.99)
    assert high.eq(0).all()


def test_area_filter_drops_small_classes():
    logits = torch.zeros(3, 10, 10)
    logits[1] = 1.0
    logits[2, 0, 0] = 2.0  # class 2 wins one pixel of 100
    _, labels = dense_probabilities(logits, torch.arange(3), 3, logit_scale=10.0, prob_threshold=0.0)
    assert labels[0, 0] == 2
    _, labels = dense_probabilities(logits, torch.arange(3), 3, logit_scale=10.0, prob_threshold=0.0,
                                    area_threshold=0.1)
    assert labels[0, 0] == 1 and labels.eq(1).all()


def test_class_without_query_gets_zero():
    probs = class_probabilities(torch.randn(2, 3, 3), torch.tensor([0, 2]), 4, 40.0)
    assert probs[1].eq(0).all() and probs[3].eq(0).all()


def _pamr_by_convolution(image, mask, steps, dilations):
    """PAMR written with 3x3 shift kernels and dilated convolutions (the form of its paper's code)."""
    def shifts(x, centre):
        b, k, h, w = x.shape
        kernels = []
        for pos in range(9):
            if pos == 4 and not centre:
                continue
            ker = torch.zeros(1, 3, 3)
            ker.view(-1)[pos] = 1
            kernels.append(ker)
        weight = torch.stack(kernels)
        out = [F.conv2d(F.pad(x.reshape(b * k, 1, h, w), [d] * 4, mode="replicate"), weight, dilation=d)
               for d in dilations]
        return torch.cat(out, 1).view(b, k, -1, h, w)

    mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    std = shifts(image, True).std(2, keepdim=True)
    aff = -(image[:, :, None] - shifts(image, False)).abs() / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(1, keepdim=True), 2)
    for _ in range(steps):
        mask = (shifts(mask, False) * aff).sum(2)
    return mask


def test_pamr_matches_a_convolution_restatement():
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, 3, 20, 23, generator=g)
    logits = torch.randn(2, 4, 10, 12, generator=g)
    got = pamr(image, logits, steps=3, dilations=(1, 2))
    want = _pamr_by_convolution(image, logits, 3, (1, 2))
    assert got.shape == (2, 4, 20, 23)
    assert torch.allclose(got, want, atol=1e-5)
    # a refinement, not the identity: scores move towards similar neighbours
    up = F.interpolate(logits, size=(20, 23), mode="bilinear", align_corners=True)
    assert (got - up).abs().max() > 1e-2

"""`--parity clip-es`: each CLIP-ES quirk pinned on its own, independently of any weights.

The references below restate CLIP-ES's arithmetic in numpy, line by line (``pytorch_grad_cam/utils/image.py:
scale_cam_image``, ``eval_cam.py``, ``eval_cam_with_crf.py`` with ``pydensecrf.utils.unary_from_softmax``,
``clip/model.py:upsample_pos_emb``); each test also shows that the quirk changes the result, so it cannot pass by
accident.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpltool import io
from vpltool.config import CamConfig, ExtractConfig, RuntimeConfig
from vpltool.data import open_dataset
from vpltool.errors import VplError
from vpltool.ops.densecrf import unary
from vpltool.ops.kernels import cams_to_labels, crf_probabilities, gradcam_scale, minmax
from vpltool.stages.cam import run_cam
from vpltool.stages.extract import run_extract


def _scale_cam_image(cam: np.ndarray) -> np.ndarray:
    """CLIP-ES's ``scale_cam_image`` without a target size, on ``[K, h, w]``."""
    out = []
    for img in cam:
        img = img - np.min(img)
        out.append(img / (1e-7 + np.max(img)))
    return np.float32(out)


def test_gradcam_is_scaled_twice_like_clip_es():
    rng = np.random.default_rng(0)
    raw = (rng.random((2, 4, 5)) * 1.4e-6).astype(np.float32)  # a tiny raw range, as with random ViT-B/16 weights
    once = minmax(torch.from_numpy(raw))
    twice = gradcam_scale(torch.from_numpy(raw))
    expected = _scale_cam_image(_scale_cam_image(raw))
    assert np.allclose(twice.numpy(), expected, atol=1e-6)
    assert once.flatten(1).amax(1).max() < 0.95  # a single pass leaves the map ~7 % short of 1
    assert np.allclose(twice.flatten(1).amax(1).numpy(), 1.0, atol=1e-6)


def test_crf_scores_and_unary_in_float16_like_clip_es():
    pytest.importorskip("pydensecrf")
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(1)
    cams = rng.random((2, 8, 9)).astype(np.float16)
    cams[:, 0, 0] = 0  # background score 1 there; and a value under the 1e-5 floor
    cams[0, 1, 1] = 3e-6
    probs16 = crf_probabilities(cams, 1.0, fp16=True)
    bg = np.power(1 - np.max(cams, axis=0, keepdims=True), 1)  # eval_cam_with_crf.py:crf, on float16 arrays
    reference = np.concatenate((bg, cams), axis=0)
    assert probs16.dtype == np.float16 and np.array_equal(probs16, reference)
    assert np.array_equal(unary(probs16), unary_from_softmax(reference))
    probs32 = crf_probabilities(cams, 1.0)
    assert probs32.dtype == np.float32
    assert not np.array_equal(unary(probs32), unary(probs16))  # the float16 logarithm is a real difference


def test_eval_background_power_in_float16_like_clip_es():
    # cam 0.382 (float16): (1 - 0.382)^2 is 0.38183 in float32, so the class wins; in float16 it rounds to 0.382,
    # a tie, which background wins (first in CLIP-ES's argmax)
    cams = np.array([[[0.382, 0.38], [0.1, 0.9]]], np.float16)
    labels = [3]
    a = 2
    bg = np.power(1 - np.max(cams, axis=0, keepdims=True), a)  # eval_cam.py, float16
    keys = np.pad(np.asarray(labels) + 0, (1, 0))
    reference = keys[np.argmax(np.concatenate((bg, cams)), axis=0)].astype(np.uint8)
    assert np.array_equal(cams_to_labels(cams, labels, a, fp16=True), reference)
    assert not np.array_equal(cams_to_labels(cams, labels, a), reference)


def test_positional_embedding_rounded_to_float16(tiny_spec):
    from vpltool.models import load_backbone

    bb = load_backbone(tiny_spec)
    exact = bb.positional_embedding((3, 5))
    rounded = bb.positional_embedding((3, 5), fp16_round=True)
    assert torch.equal(rounded, exact.half().float())  # upsample_pos_emb: .half() after the resize, CLS included
    assert not torch.equal(rounded, exact)


def test_parity_extract_caches_float32_tokens_and_rounds_the_pos_emb(world, tiny_spec, tmp_path):
    train = open_dataset(world, "train")
    runtime = RuntimeConfig(device="cpu", workers=1)
    run_extract(train, tmp_path / "parity", tiny_spec, ExtractConfig(parity="clip-es", cache="full"), runtime)
    run_extract(train, tmp_path / "plain", tiny_spec, ExtractConfig(cache="full"), runtime)
    item = train.items[0].id
    parity = io.read_tensors(io.feature_path(tmp_path / "parity", item), kind="features")
    plain = io.read_tensors(io.feature_path(tmp_path / "plain", item), kind="features")
    assert parity["last_block_input"].dtype == torch.float32 and parity["attention"].dtype == torch.float32
    assert plain["last_block_input"].dtype == torch.float16
    assert parity["dense"].dtype == torch.float16  # not used by CLIP-ES: stays small
    diff = (parity["last_block_input"] - plain["last_block_input"].float()).abs().max()
    assert diff > 1e-3  # the rounded positional embedding moves the tokens by more than the fp16 cache rounding


def test_cam_parity_needs_a_parity_extract(features_dir, text_protos, tmp_path):
    with pytest.raises(VplError, match="--parity clip-es"):
        run_cam(features_dir, text_protos, tmp_path / "cams", CamConfig(parity="clip-es"),
                RuntimeConfig(device="cpu"))
    assert not (tmp_path / "cams").exists()  # refused before the output folder is made


def test_clip_es_operation_order_gives_the_same_maps_and_text(tiny_spec, features_dir, text_protos):
    """The exact paths (CLIP-ES's order of operations) compute the same values as the fast ones, to rounding."""
    from vpltool.models import load_backbone

    bb = load_backbone(tiny_spec)
    path = next(p for p in sorted(features_dir.glob("*.safetensors")) if len(io.read_features(p).labels) >= 2)
    feats = io.read_features(path)
    rows = io.read_prototypes(text_protos).image_rows(feats.labels)
    for layer in ("input", "output"):
        fast = bb.gradcam(feats.last_block_input, feats.grid, rows, len(feats.labels), 0.07, layer=layer)
        exact = bb.gradcam(feats.last_block_input, feats.grid, rows, len(feats.labels), 0.07, layer=layer,
                           exact=True)
        assert torch.allclose(fast.maps, exact.maps, atol=1e-4) and torch.allclose(fast.probs, exact.probs,
                                                                                   atol=1e-6)
    prompts = ["a photo of a star.", "a photo of a grass.", "x"]
    assert torch.allclose(bb.encode_text(prompts), bb.encode_text(prompts, exact=True), atol=1e-5)


def test_parity_caches_the_attention_maps_and_cam_averages_them_at_once(world, tiny_spec, tmp_path):
    train = open_dataset(world, "train")
    run_extract(train, tmp_path / "f", tiny_spec, ExtractConfig(parity="clip-es", cache="full"),
                RuntimeConfig(device="cpu", workers=1))
    feats = io.read_features(io.feature_path(tmp_path / "f", train.items[0].id))
    n_prev = int(feats.file.meta("attention_blocks"))
    hw = feats.grid[0] * feats.grid[1]
    assert feats.attention.shape == (n_prev, hw, hw) and feats.attention.dtype == torch.float32

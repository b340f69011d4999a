"""The dense CRF's torch backend: the same model as pydensecrf (labels and marginals), batching, the lattice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vpltool.config import CrfConfig, PredictConfig
from vpltool.errors import VplError
from vpltool.ops.densecrf import (
    crf_labels,
    dense_crf,
    iterate,
    lattice,
    mean_field,
    pairwise_terms,
    pixel_features,
    resolve_backend,
    torch_unary,
    unary,
)
from vpltool.ops.kernels import crf_probabilities
from vpltool.stages.predict import crf_config

WECLIP = crf_config(PredictConfig())  # predict's test-time kernels (sxy 3 / 64, srgb 5)
# measured: every label equal and max |dQ| <= 2.5e-5 on these cases (ulp-level differences of exp and of the
# splat's float sums, amplified by ten iterations); the bars leave room for another CPU's vector units
EQUAL_FRACTION, Q_TOLERANCE = 0.999, 1e-3


def _scene(seed: int, h: int = 36, w: int = 52, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A noisy photo of k coloured rectangles and a 1-pixel line, and [k, H, W] CAMs: the blurred objects (spilling
    over their edges) plus smooth noise, as `cam` makes them."""
    rng = np.random.default_rng(seed)
    image = rng.normal(90, 12, (h, w, 3))
    cams = []
    for _ in range(k):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y1, x1 = y0 + rng.integers(6, h // 2), x0 + rng.integers(6, w // 2)
        image[y0:y1, x0:x1] = rng.uniform(0, 255, 3) + rng.normal(0, 6, (y1 - y0, x1 - x0, 3))
        blob = np.zeros((h, w), np.float32)
        blob[y0:y1, x0:x1] = 1
        cam = cv2.GaussianBlur(blob, (0, 0), 4) + 0.3 * rng.uniform(0, 1, (h, w)).astype(np.float32)
        cams.append(cam / cam.max())
    image[h // 3, :] = 250  # a thin structure
    return np.clip(image, 0, 255).astype(np.uint8), np.stack(cams)


def _torch_q(image: np.ndarray, probs: np.ndarray, cfg: CrfConfig) -> np.ndarray:
    u = torch.from_numpy(unary(probs)).view(probs.shape)
    return mean_field([torch.from_numpy(image)], [u], cfg)[0].numpy()


@pytest.mark.parametrize(("seed", "k", "cfg"), [(0, 1, CrfConfig()), (1, 2, CrfConfig()), (2, 3, CrfConfig()),
                                                (3, 2, WECLIP), (4, 1, CrfConfig(iterations=3))])
def test_torch_backend_agrees_with_pydensecrf(seed, k, cfg):
    pytest.importorskip("pydensecrf.densecrf")
    image, cams = _scene(seed, k=k)
    probs = crf_probabilities(cams, 1.0)
    reference = dense_crf(image, probs, cfg)
    q = _torch_q(image, probs, cfg)
    assert q.shape == reference.shape and q.dtype == np.float32
    assert (q.argmax(0) == reference.argmax(0)).mean() >= EQUAL_FRACTION
    assert np.abs(q - reference).max() <= Q_TOLERANCE
    assert np.abs(q - probs / probs.sum(0)).max() > 0.05  # the CRF did change the scores: not a vacuous match


def test_marginals_are_distributions():
    image, cams = _scene(5, k=3)
    q = _torch_q(image, crf_probabilities(cams, 1.0), CrfConfig())
    assert np.isfinite(q).all() and q.min() >= 0 and q.max() <= 1
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)


def test_a_batch_equals_its_images_one_by_one():
    """Images of different sizes and label counts in one call: each image's Q as alone (no shared vertex)."""
    scenes = [_scene(6, 30, 40, k=1), _scene(7, 36, 52, k=3), _scene(8, 24, 24, k=2)]
    images = [torch.from_numpy(image) for image, _ in scenes]
    unaries = [torch.from_numpy(unary(p)).view(p.shape) for p in (crf_probabilities(c, 1.0) for _, c in scenes)]
    together = mean_field(images, unaries, CrfConfig())
    for image, u, q in zip(images, unaries, together):
        alone = mean_field([image], [u], CrfConfig())[0]
        assert q.shape == u.shape
        torch.testing.assert_close(q, alone, rtol=0, atol=1e-6)


def test_labels_map_rows_to_class_ids_and_threshold():
    image, cams = _scene(9, k=2)
    probs = crf_probabilities(cams, 1.0)
    u = torch.from_numpy(unary(probs)).view(probs.shape)
    q = _torch_q(image, probs, CrfConfig())
    mask = crf_labels([torch.from_numpy(image)], [u], [(0, 7, 3)], CrfConfig(), 0.95)[0].numpy()
    expected = np.array([0, 7, 3], np.uint8)[q.argmax(0)]
    expected[q.max(0) < 0.95] = 255
    assert mask.dtype == np.uint8 and (mask == expected).mean() >= EQUAL_FRACTION and (mask == 255).any()


def test_unary_on_the_device_is_the_numpy_one():
    probs = np.random.default_rng(0).uniform(0, 1, (3, 4, 5)).astype(np.float32)
    probs[0, 0, 0] = 0.0  # clipped to 1e-5
    torch.testing.assert_close(torch_unary(torch.from_numpy(probs)).view(3, -1), torch.from_numpy(unary(probs)))


def test_lattice_weights_and_neighbours():
    image, _ = _scene(10)
    features, owner = pixel_features([torch.from_numpy(image)], 5.0, 4.0)
    lat = lattice(features, owner, 1)
    n, d1 = lat.vertex.shape
    weight = lat.slice_weight * (1 + 2.0**-5) * 2**6  # the barycentric weights
    assert d1 == 6 and weight.min() >= -1e-6
    torch.testing.assert_close(weight.sum(1), torch.ones(n))
    assert torch.equal(lat.splat_offsets[-1], torch.tensor(n * d1))  # every entry splats once
    first, second = lat.neighbours.view(d1, 2, -1).unbind(1)
    for axis in range(d1):  # v is u's first neighbour along an axis exactly when u is v's second
        has = first[axis] > 0
        back = second[axis][first[axis][has].long()]
        assert torch.equal(back, torch.nonzero(has).view(-1).to(back.dtype))
    assert (first[:, 1:] > 0).float().mean() > 0.1  # vertices do have neighbours (26 % here): the blur blurs


def test_features_too_spread_for_the_keys_are_one_line():
    image, _ = _scene(11)
    with pytest.raises(VplError, match="--backend pydensecrf") as info:
        lattice(*pixel_features([torch.from_numpy(image)], 1.0, 1e-4), 1)
    assert "\n" not in str(info.value)


def test_auto_backend_is_torch_on_cuda_only():
    assert resolve_backend("auto", "cpu") == "pydensecrf"
    assert resolve_backend("auto", "auto") == "pydensecrf"  # the tests hide CUDA
    assert resolve_backend("torch", "cpu") == "torch" and resolve_backend("pydensecrf", "cuda") == "pydensecrf"
    assert resolve_backend("auto", "cuda", parity="clip-es") == "pydensecrf"
    with pytest.raises(VplError, match="--parity clip-es"):
        CrfConfig(backend="torch", parity="clip-es")
    with pytest.raises(VplError, match="--backend 'gpu'"):
        CrfConfig(backend="gpu")


@pytest.mark.cuda
def test_the_device_computes_what_the_cpu_computes():
    assert resolve_backend("auto", "auto") == "torch"
    scenes = [_scene(12, 60, 80, k=2), _scene(13, 48, 64, k=3)]
    images = [torch.from_numpy(image) for image, _ in scenes]
    unaries = [torch.from_numpy(unary(p)).view(p.shape) for p in (crf_probabilities(c, 1.0) for _, c in scenes)]
    cpu = mean_field(images, unaries, CrfConfig())
    gpu = mean_field([i.cuda() for i in images], [u.cuda() for u in unaries], CrfConfig())
    for a, b in zip(cpu, gpu):
        assert (a.argmax(0) == b.cpu().argmax(0)).float().mean() >= EQUAL_FRACTION
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=Q_TOLERANCE)


@pytest.mark.cuda
def test_the_mean_field_never_waits_for_the_device():
    image, cams = _scene(14, 60, 80, k=2)
    probs = crf_probabilities(cams, 1.0)
    u = torch.from_numpy(unary(probs)).view(len(probs), -1).T.contiguous().cuda()
    terms = pairwise_terms([torch.from_numpy(image).cuda()], CrfConfig())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        q = iterate(u, terms, 10)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert q.shape == u.shape

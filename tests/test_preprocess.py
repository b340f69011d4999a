"""Pillow's bicubic resize on a torch device (vpltool.models.backbones.preprocess): the same bytes as Pillow, so moving
the resize from the loading workers to the device (where the CUDA path runs) changes no output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vpltool import io
from vpltool.config import ExtractConfig, RuntimeConfig
from vpltool.data import open_dataset
from vpltool.models import load_backbone
from vpltool.models.backbones.preprocess import Preprocess, bicubic_taps, resize_uint8

SIZES = [  # (H0, W0) -> (H, W): VOC's up-scaling to patch multiples, odd sizes, one side, one-pixel sides, none
    ((375, 500), (384, 512)), ((500, 333), (512, 336)), ((281, 500), (288, 512)), ((97, 131), (112, 144)),
    ((1, 1), (16, 16)), ((7, 3), (7, 5)), ((16, 16), (16, 32)), ((3, 200), (64, 200)), ((45, 70), (45, 70)),
]


def pillow(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))


@pytest.mark.parametrize(("source", "size"), SIZES)
def test_resize_gives_pillows_bytes(source, size):
    image = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    got = resize_uint8(torch.from_numpy(image)[None], size)[0]
    assert got.dtype == torch.uint8 and tuple(got.shape) == (*size, 3)
    np.testing.assert_array_equal(got.numpy(), pillow(image, size))


def test_random_enlargements_give_pillows_bytes():
    rng = np.random.default_rng(5)
    for _ in range(40):
        source = tuple(int(s) for s in rng.integers(1, 90, 2))
        size = (source[0] + int(rng.integers(0, 30)), source[1] + int(rng.integers(0, 30)))
        image = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
        np.testing.assert_array_equal(resize_uint8(torch.from_numpy(image)[None], size)[0].numpy(),
                                      pillow(image, size), err_msg=f"{source} -> {size}")


def test_resize_of_a_smooth_photo_gives_pillows_bytes():
    """Random noise rings on every tap; a photo's gradients exercise the rounding near each integer instead."""
    import skimage.data

    image = skimage.data.astronaut()[:375, :500]
    for size in ((384, 512), (375, 528), (400, 500)):
        np.testing.assert_array_equal(resize_uint8(torch.from_numpy(image)[None], size)[0].numpy(),
                                      pillow(image, size))


def test_a_shrinking_resize_is_left_to_pillow():
    """Where a side shrinks, Pillow picks the order of its two passes itself: the device refuses, and a
    loading worker resizes the image with Pillow even when the device resizes the others."""
    image = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shrinks"):
        resize_uint8(torch.from_numpy(image)[None], (48, 48))
    pre = Preprocess((0.5,) * 3, (0.5,) * 3, on_device=True)
    np.testing.assert_array_equal(pre.loaded(image, (48, 48)).numpy(), pillow(image, (48, 48)))
    assert tuple(pre.loaded(image, (64, 48)).shape) == (50, 40, 3)  # enlarged: sent as decoded


def test_taps_are_pillows_fixed_point_filters():
    index, weight = bicubic_taps(500, 512)
    assert index.shape == weight.shape and weight.dtype == np.int32
    assert np.all(np.abs(weight.sum(1) - (1 << 22)) <= index.shape[1])  # each filter sums to 1 (22-bit rounding)
    assert index.min() >= 0 and index.max() < 500
    assert bicubic_taps(2000, 512)[0].shape[1] > index.shape[1]  # a reduction widens the filter


def test_pixels_resizes_a_batch_of_mixed_sizes_like_preprocess(tiny_spec):
    """What the loading workers send when the device resizes: images of one network size but several photo sizes."""
    bb = load_backbone(tiny_spec, "cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((60, 90, 3), (58, 91, 3), (64, 96, 3))]
    got = bb.pixels([torch.from_numpy(a) for a in images], (64, 96))
    want = torch.stack([bb.preprocess(a, (64, 96)) for a in images])
    assert torch.equal(got, want)
    resized = torch.stack([bb.preprocessor.resize(a, (64, 96)) for a in images])  # the workers resized: as it is
    assert torch.equal(bb.pixels(resized, (64, 96)), want)


@pytest.fixture(scope="module")
def odd_world(tmp_path_factory):
    """A demo world whose photos have sizes that are no patch multiples (so every stage resizes them)."""
    from vpltool.demo.make_world import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("odd"), n_train=4, n_val=1, seed=2)
    for i, path in enumerate(sorted((root / "images").glob("*.png"))):
        Image.open(path).convert("RGB").resize((70 + 7 * i, 45 + 5 * i), Image.BICUBIC).save(path)
        mask = root / "masks" / path.name
        io.write_mask(mask, np.asarray(Image.open(mask).resize((70 + 7 * i, 45 + 5 * i), Image.NEAREST)))
    return root


def test_extract_and_cam_are_the_same_when_the_device_resizes(odd_world, tiny_spec, text_protos, tmp_path,
                                                              monkeypatch):
    """The CUDA path (the test switch: the workers send the photos as decoded, the device resizes them) writes the
    same features and CAMs as the CPU path (Pillow in the workers)."""
    from vpltool.stages import cam, extract

    data = open_dataset(odd_world, "train")
    run = RuntimeConfig(device="cpu", precision="fp32", batch_size=4, workers=1)
    for where in ("host", "device"):
        if where == "device":
            monkeypatch.setenv("VPLTOOL_TEST_CUDA_PATHS", "1")
        extract.run_extract(data, tmp_path / f"f_{where}", tiny_spec, ExtractConfig(cache="light"), run)
        cam.run_cam(tmp_path / f"f_{where}", text_protos, tmp_path / f"c_{where}", runtime=run)
    assert load_backbone(tiny_spec, "cpu").preprocessor.on_device  # the switch is still set: the device resized
    for item in data.items:
        host = io.read_tensors(io.feature_path(tmp_path / "f_host", item.id), kind=io.FEATURES_KIND)
        device = io.read_tensors(io.feature_path(tmp_path / "f_device", item.id), kind=io.FEATURES_KIND)
        assert host.tensors.keys() == device.tensors.keys()
        for name in host.tensors:
            assert torch.equal(host[name], device[name]), (item.id, name)
    for path in sorted((tmp_path / "c_host").glob("*.safetensors")):
        other = tmp_path / "c_device" / path.name
        host, device = (io.read_tensors(p, kind=io.CAM_KIND) for p in (path, other))
        for name in host.tensors:
            assert torch.allclose(host[name].float(), device[name].float(), atol=1e-6), (path.name, name)


@pytest.mark.cuda
def test_resize_on_a_gpu_gives_pillows_bytes():
    rng = np.random.default_rng(1)
    for source, size in SIZES:
        image = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
        got = resize_uint8(torch.from_numpy(image)[None].cuda(), size)[0].cpu().numpy()
        np.testing.assert_array_equal(got, pillow(image, size), err_msg=f"{source} -> {size}")

"""Demo-world scenes: determinism, mask/label agreement, captions, both dataset layouts, idempotent re-runs."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from vpltool import io
from vpltool.demo import scenes
from vpltool.demo.make_world import write_dataset
from vpltool.demo.scenes import (
    BACKGROUNDS,
    CLASSES,
    Placement,
    SceneConfig,
    caption_vocabulary,
    compose,
    generate_scenes,
    render_scene,
    tokenize_caption,
)
from vpltool.errors import VplError


@pytest.fixture(scope="module")
def many() -> list[scenes.Scene]:
    return list(generate_scenes(300, seed=11, cfg=SceneConfig(distractors=0.3)))


def _same(a: scenes.Scene, b: scenes.Scene) -> bool:
    return (np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
            and (a.labels, a.background, a.caption) == (b.labels, b.background, b.caption))


def test_same_seed_same_scenes_other_seed_differs():
    a, b = list(generate_scenes(6, seed=3)), list(generate_scenes(6, seed=3))
    assert all(_same(x, y) for x, y in zip(a, b))
    c = list(generate_scenes(6, seed=4))
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(a, c))
    assert _same(list(generate_scenes(3, seed=3))[2], a[2])  # scene i depends on (seed, i) only


def test_scene_types_and_mask_label_agreement(many):
    for s in many:
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (96, 96) and s.mask.dtype == np.uint8
        assert s.background in BACKGROUNDS
        assert len(set(s.labels)) == len(s.labels) and all(1 <= c <= 8 for c in s.labels)
        assert set(np.unique(s.mask).tolist()) - {0, 255} == set(s.labels)
        assert 255 not in s.mask  # exact masks unless ignore_border is asked for


def test_ignore_border_band_is_as_wide_as_asked():
    cfg = SceneConfig(ignore_border=4, noise=0.0)
    s = compose(np.random.default_rng(0), cfg, "sky", [Placement(3, 48, 48, 40)])  # axis-aligned square
    row = s.mask[48]
    assert (row == 255).sum() == 2 * 4 and s.labels == (3,)
    for s in generate_scenes(50, seed=1, cfg=SceneConfig(ignore_border=2)):
        assert set(np.unique(s.mask).tolist()) - {0, 255} == set(s.labels)


def test_hidden_and_outside_objects_are_not_labelled():
    cfg = SceneConfig()
    hidden = [Placement(1, 48, 48, 16), Placement(3, 48, 48, 60)]  # a small circle under a big square
    s = compose(np.random.default_rng(0), cfg, "grass", hidden)
    assert s.labels == (3,) and 1 not in s.mask and "circle" not in tokenize_caption(s.caption)
    outside = compose(np.random.default_rng(0), cfg, "wall", [Placement(2, -100, 30, 30)])
    assert outside.labels == () and not outside.mask.any()


def test_decoys_are_painted_but_background():
    s = compose(np.random.default_rng(0), SceneConfig(noise=0.0), "water", [Placement(1, 48, 48, 40, decoy=True)])
    assert s.labels == () and not s.mask.any()
    assert (s.image[48, 48] == s.image[48, 50]).all() and s.image[48, 48, 0] > 150  # red ellipse, not water


def test_empty_fraction_is_roughly_respected(many):
    empty = np.mean([not s.labels for s in many])
    assert 0.03 <= empty <= 0.15, empty
    assert all(s.labels for s in generate_scenes(40, seed=2, cfg=SceneConfig(min_objects=1)))


def test_n_classes_limits_the_classes():
    for s in generate_scenes(60, seed=5, cfg=SceneConfig(n_classes=3, max_objects=3)):
        assert set(s.labels) <= {1, 2, 3}


def test_captions_use_the_vocabulary_and_name_what_is_visible(many):
    vocab = set(caption_vocabulary())
    assert caption_vocabulary() == sorted(vocab) and len(vocab) <= 40
    assert set(CLASSES[1:]) | set(BACKGROUNDS) <= vocab
    crowded = list(generate_scenes(30, seed=9, cfg=SceneConfig(max_objects=8, min_objects=8, max_diameter=20)))
    for s in [*many, *crowded]:
        words = tokenize_caption(s.caption)
        assert set(words) <= vocab and len(words) <= scenes.MAX_CAPTION_WORDS, s.caption
        assert {w for w in words if w in CLASSES} == {CLASSES[c] for c in s.labels}
        assert s.background in words


def test_bad_config_is_a_vpl_error():
    with pytest.raises(VplError, match="n_classes"):
        render_scene(np.random.default_rng(0), SceneConfig(n_classes=9))
    with pytest.raises(VplError, match="layout"):
        write_dataset("/nonexistent", n_train=1, n_val=1, seed=0, layout="coco")


def test_folder_layout(tmp_path):
    out = write_dataset(tmp_path / "w", n_train=4, n_val=2, seed=0)
    assert (out / "splits/train.txt").read_text().split() == [f"train_{i:06d}" for i in range(4)]
    assert (out / "splits/val.txt").read_text().split() == ["val_000000", "val_000001"]
    assert (out / "classes.txt").read_text().split() == list(CLASSES)
    captions = io.read_json(out / "captions.json")
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "id,labels" and len(rows) == 7 and set(captions) == {r.split(",")[0] for r in rows[1:]}
    val0 = next(generate_scenes(1, scenes.split_seed(0, "val")))
    assert np.array_equal(io.read_mask(out / "masks/val_000000.png"), val0.mask)
    assert np.array_equal(np.asarray(Image.open(out / "images/val_000000.png")), val0.image)
    assert rows[5] == "val_000000," + ";".join(CLASSES[c] for c in val0.labels)
    assert captions["val_000000"] == val0.caption
    assert io.read_stage_record(out, "make-world")["count"] == 6


def test_train_and_val_never_share_a_scene():
    train = list(generate_scenes(5, scenes.split_seed(0, "train")))
    val = list(generate_scenes(5, scenes.split_seed(0, "val")))
    assert not any(np.array_equal(a.image, b.image) for a in train for b in val)


def test_voc_layout(tmp_path):
    out = write_dataset(tmp_path / "voc", n_train=3, n_val=2, seed=1, layout="voc",
                        cfg=SceneConfig(empty_fraction=0.0))
    assert (out / "ImageSets/Segmentation/val.txt").read_text().split() == ["val_000000", "val_000001"]
    for sid in ["train_000000", "train_000001", "train_000002", "val_000000", "val_000001"]:
        with Image.open(out / f"JPEGImages/{sid}.jpg") as img:
            assert img.format == "JPEG" and img.size == (96, 96)
        mask = io.read_mask(out / f"SegmentationClassAug/{sid}.png")
        root = ET.parse(out / f"Annotations/{sid}.xml").getroot()
        assert root.findtext("filename") == f"{sid}.jpg" and root.findtext("size/width") == "96"
        names = [o.findtext("name") for o in root.iter("object")]
        assert set(names) == {CLASSES[c] for c in np.unique(mask) if c} and names
        for obj in root.iter("object"):
            c = CLASSES.index(obj.findtext("name"))
            ys, xs = np.nonzero(mask == c)
            assert int(obj.findtext("bndbox/xmin")) == xs.min() + 1 and int(obj.findtext("bndbox/ymax")) == ys.max() + 1
    assert set(io.read_json(out / "captions.json")) == {f"train_{i:06d}" for i in range(3)} | {"val_000000",
                                                                                                "val_000001"}
    assert (out / "classes.txt").is_file() and not (out / "labels.csv").exists()


def test_rerun_is_idempotent_and_files_are_byte_identical(tmp_path, monkeypatch):
    a = write_dataset(tmp_path / "a", n_train=3, n_val=1, seed=2)
    b = write_dataset(tmp_path / "b", n_train=3, n_val=1, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)

    def boom(*args, **kwargs):
        raise AssertionError("a finished run must not render again")

    monkeypatch.setattr(scenes, "render_scene", boom)
    assert write_dataset(tmp_path / "a", n_train=3, n_val=1, seed=2) == a
    with pytest.raises(VplError, match="other parameters"):
        write_dataset(tmp_path / "a", n_train=3, n_val=1, seed=3)


def test_rendering_speed_is_reported():
    start = time.perf_counter()
    n = sum(1 for _ in generate_scenes(100, seed=0, cfg=SceneConfig(distractors=0.3)))
    print(f"\ndemo world: {1e3 * (time.perf_counter() - start) / n:.2f} ms/scene at 96x96")


def test_decoy_masks_are_the_decoys_left_visible_and_background_in_the_mask():
    """Issue 37's study re-draws where the decoys are: background in every mask, visible pixels only."""
    from vpltool.demo.scenes import SceneConfig, decoy_masks, generate_scenes

    cfg = SceneConfig(distractors=1.0)
    pairs = list(zip(generate_scenes(6, 3, cfg), decoy_masks(6, 3, cfg)))
    assert sum(decoy.any() for _, decoy in pairs) >= 4
    for scene, decoy in pairs:
        assert decoy.shape == scene.mask.shape and (scene.mask[decoy] == 0).all()
    assert not any(d.any() for d in decoy_masks(3, 3, SceneConfig()))  # no distractors, no decoys

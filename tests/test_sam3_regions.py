"""SAM 3 as the region source of CorrCLIP, OV-Stitcher and TextRegion (``--region-masks sam3[:CONCEPTS]``,
vpltool.models.dense.concept_regions): the run's words as concepts, every kept instance a region, end to end through
segment on the demo world with a tiny seeded SAM 3; bad values and weights refused in one line before any model
loads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vpltool.errors import VplError
from vpltool.models import load_model
from vpltool.models.backbones.sam3 import Sam3Spec
from vpltool.models.backbones.sam3_files import write_tiny
from vpltool.models.dense.concept_regions import Sam3Regions, concepts_of, fill_regions, is_sam3

TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"
BACKGROUND = "grass,sky"


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("sam3") / "hf", "hf")


def _cfg(dense: str, sam3_folder, **more):
    from vpltool.config import SegmentConfig

    settings = {"short_side": 64, "slide_crop": 64, "slide_stride": 32, **more}
    return SegmentConfig.of(dense=dense, templates="a photo of a {}.", background=BACKGROUND, proxy_model="test_vit",
                            proxy_weights=str(TOY_DINO), sam_weights=str(sam3_folder), prob_threshold=0.0, **settings)


def _photo(item) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(item.image).convert("RGB"))


def test_values():
    assert is_sam3("sam3") and is_sam3("sam3:object,stuff") and not is_sam3("sam2:x.yaml") and not is_sam3("sam")
    assert concepts_of("sam3") is None and concepts_of("sam3: object , stuff") == ("object", "stuff")
    with pytest.raises(VplError, match="no concept after"):
        concepts_of("sam3:,")


def test_instances_are_painted_as_regions_and_soft_masks(sam3_folder, world):
    """Every concept's kept instances (probability above Meta's 0.5): the id map paints them by ascending area
    (each pixel the largest mask over it), the soft masks are their logits clamped to [0, 3] by score."""
    from vpltool.data import open_dataset

    source = Sam3Regions(load_model("sam3", Sam3Spec(str(sam3_folder))))
    photo = _photo(open_dataset(world, "val").items[0])
    names = ["star", "circle", "grass"]
    logits, scores = source.instances(photo, names)
    assert logits.shape[1:] == photo.shape[:2] and logits.shape[0] == scores.numel() > 1
    assert bool((scores > 0.5).all())
    ids = source.region_map(photo, names)
    masks = (logits > 0).numpy()
    order = np.argsort([m.sum() for m in masks], kind="stable")
    painted = np.zeros(photo.shape[:2], np.int64)
    for k, i in enumerate(order, start=1):
        painted[masks[i]] = k
    assert np.array_equal(ids, painted) and len(np.unique(ids)) > 2
    soft = source.soft_masks(photo, names)
    assert soft.dtype == np.float16 and soft.shape == logits.shape
    assert soft.min() >= 0 and soft.max() <= 3
    best = int(torch.argmax(scores))
    assert np.array_equal(soft[0], logits[best].clamp(0, 3).half().numpy())
    assert not np.array_equal(source.region_map(photo, ["sky"]), ids)  # the concepts matter


@pytest.mark.parametrize("dense", ["corrclip", "ov-stitcher"])
def test_corrclip_segments_with_sam3_regions_of_the_runs_words(dense, sam3_folder, world, tiny_spec, tmp_path):
    """End to end through segment (CorrCLIP, and OV-Stitcher on CorrCLIP's regions): the record names SAM 3 by its
    files' digests; each region SAM 3 makes from the run's words (class names, then the background words) carries
    one label (the map correction), so those are the regions the run used."""
    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    out = tmp_path / dense
    windows = {"short_side": 112, "slide_crop": 112, "slide_stride": 56} if dense == "ov-stitcher" else {}
    cfg = _cfg(dense, sam3_folder, region_masks="sam3", **windows)
    s = run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == len(ds.items)
    source = io.read_stage_record(out, "segment")["params"]["region_source"]
    assert source["generator"] == "sam3" and source["concepts"] == "the run's queries"
    assert [n for n, _ in source["weights"]["files"]] == ["config.json", "model.safetensors"]
    words = [*ds.classes[1:], *BACKGROUND.split(",")]
    regions = Sam3Regions(load_model("sam3", Sam3Spec(str(sam3_folder))))
    for item in ds.items:
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=len(ds.classes))
        ids = regions.region_map(_photo(item), words)
        assert len(np.unique(ids)) > 1
        for v in np.unique(ids)[1:]:
            assert len(np.unique(mask[ids == v])) == 1


def test_textregion_takes_sam3_soft_masks(sam3_folder, world, tiny_spec, tmp_path):
    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    out = tmp_path / "textregion"
    cfg = _cfg("textregion", sam3_folder, region_masks="sam3:star,sky", region_crop=64)
    assert run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1)).done == len(ds.items)
    assert io.read_stage_record(out, "segment")["params"]["region_source"]["concepts"] == ["star", "sky"]


def test_fill_regions_prompts_with_the_hooks_words(sam3_folder, world):
    """What a method's dense_logits does first: each image's photo (its extra input) becomes its regions, SAM 3
    prompted with the words the run's query_text gave the hooks."""
    from types import SimpleNamespace

    from vpltool.data import open_dataset

    photo = _photo(open_dataset(world, "val").items[1])
    hooks = SimpleNamespace(cfg=SimpleNamespace(knobs=SimpleNamespace(region_masks="sam3"),
                                                sam_weights=str(sam3_folder)), _names=("circle", "wall"))
    extras = [{"photo": torch.from_numpy(photo.copy())}]
    fill_regions(hooks, extras, "cpu")
    want = Sam3Regions(load_model("sam3", Sam3Spec(str(sam3_folder)))).region_map(photo, ["circle", "wall"])
    assert "photo" not in extras[0] and np.array_equal(extras[0]["regions"].numpy(), want)


@pytest.mark.parametrize("case", ["no weights", "another model", "no concept"])
def test_bad_sam3_regions_are_one_line_before_any_model_loads(case, sam3_folder, world, tiny_spec, tmp_path):
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    value, weights, expect = {"no weights": ("sam3", None, "needs SAM 3's weights"),
                              "another model": ("sam3", TOY_DINO, str(TOY_DINO)),
                              "no concept": ("sam3:", sam3_folder, "no concept after")}[case]
    cfg = _cfg("corrclip", sam3_folder, region_masks=value)
    cfg = replace(cfg, sam_weights=None if weights is None else str(weights))
    out = tmp_path / "out"
    with pytest.raises(VplError) as e:
        run_segment(open_dataset(world, "val"), out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert expect in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() or not any(out.iterdir())


def test_the_confidence_threshold_chooses_the_instances_that_are_regions(sam3_folder, world):
    """--confidence-threshold reaches the generator through the hooks (fill_regions): above the middle of the
    scores Meta's 0.5 keeps, fewer instances are regions, and the map is the generator's at that threshold."""
    from types import SimpleNamespace

    from vpltool.data import open_dataset

    photo = _photo(open_dataset(world, "val").items[1])
    sam, words = load_model("sam3", Sam3Spec(str(sam3_folder))), ["circle", "star", "wall"]
    _, scores = Sam3Regions(sam).instances(photo, words)
    assert scores.numel() > 1 and float(scores.max()) > float(scores.min())
    middle = float(scores.min() + scores.max()) / 2
    _, kept = Sam3Regions(sam, threshold=middle).instances(photo, words)
    assert 0 < kept.numel() < scores.numel() and bool((kept > middle).all())
    knobs = SimpleNamespace(region_masks="sam3", confidence_threshold=middle)
    hooks = SimpleNamespace(cfg=SimpleNamespace(knobs=knobs, sam_weights=str(sam3_folder)), _names=tuple(words))
    extras = [{"photo": torch.from_numpy(photo.copy())}]
    fill_regions(hooks, extras, "cpu")
    want = Sam3Regions(sam, threshold=middle).region_map(photo, words)
    assert np.array_equal(extras[0]["regions"].numpy(), want)
    assert not np.array_equal(want, Sam3Regions(sam).region_map(photo, words))


def test_the_runs_record_names_its_threshold(sam3_folder, world, tiny_spec, tmp_path):
    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    ds = replace(ds, items=ds.items[:1])
    cfg = _cfg("textregion", sam3_folder, region_masks="sam3:star,sky", region_crop=64, confidence_threshold=0.25)
    assert run_segment(ds, tmp_path / "t", tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1)).done == 1
    assert io.read_stage_record(tmp_path / "t", "segment")["params"]["region_source"]["threshold"] == 0.25


@pytest.mark.parametrize("value", ["sam", "sam2", None])
def test_a_confidence_threshold_without_sam3_regions_is_refused(value, sam3_folder):
    """Only SAM 3's instances have a score to keep: with another source the option would do nothing, so it is
    refused in one line, not ignored."""
    with pytest.raises(VplError) as e:
        _cfg("corrclip", sam3_folder, region_masks=value, confidence_threshold=0.2)
    assert "--confidence-threshold 0.2 with --region-masks" in str(e.value) and "\n" not in str(e.value)

"""studies/study_ov_stitcher_demo.py's region folders: each points-per-side count's maps made once, in the format
``--region-masks FOLDER`` reads, with what each cost recorded beside them; the study's own count goes to the
generator while OV-Stitcher's 64 stays its default for real runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

import study_ov_stitcher_demo as study  # noqa: E402

from vpltool.models.dense.corrclip import regions  # noqa: E402
from vpltool.models.dense.ov_stitcher import SAM_SETTINGS  # noqa: E402


@pytest.fixture
def items(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        path = tmp_path / "images" / f"scene_{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(path)
        out.append(SimpleNamespace(id=f"scene_{i}", image=path))
    return out


def test_no_mask_control_is_every_pixel_unsegmented_and_readable_as_a_folder(items, tmp_path):
    folder, stats = study.region_masks(items, tmp_path / "regions", 0)
    assert folder == tmp_path / "regions" / "points0"
    source = regions.FolderRegions(folder)
    source.check([(it.image, (96, 80)) for it in items])  # what --region-masks FOLDER checks before a model loads
    for it in items:
        assert not source.region_map(it.image, np.zeros((96, 80, 3), np.uint8)).any()
    assert stats["regions_per_image"] == 0 and stats["covered_share"] == 0 and stats["images_without_regions"] == 2
    assert set(json.loads((folder / study.SECONDS).read_text())) == {"scene_0", "scene_1"}


def test_the_studys_points_reach_the_generator_once_and_the_maps_are_reused(items, tmp_path, monkeypatch):
    asked = []

    class Fake:
        def region_map(self, _, image):
            ids = np.zeros(image.shape[:2], np.int64)
            ids[:10, :20] = 3  # one region over 200 of 7680 pixels
            return ids

    def fake_source(value, model, weights, settings, method):
        asked.append((value, model, settings, method))
        return Fake()

    monkeypatch.setattr(regions, "region_source", fake_source)
    folder, stats = study.region_masks(items, tmp_path / "regions", 16)
    assert asked == [("sam", "toy", dict(SAM_SETTINGS, points_per_side=16), "ov-stitcher")]
    assert SAM_SETTINGS["points_per_side"] == 64  # a real run keeps OV-Stitcher's own
    assert stats["regions_per_image"] == 1 and stats["covered_share"] == pytest.approx(200 / 7680)
    made = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
    assert len(made) == 2
    # a second setting reads the same folder: nothing generated again, the recorded cost the same
    again = study.region_masks(items, tmp_path / "regions", 16)[1]
    assert len(asked) == 1 and again == stats
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")} == made
    # a map whose cost went unrecorded (a run stopped between the two writes) is made again, not counted as free
    recorded = json.loads((folder / study.SECONDS).read_text())
    del recorded["scene_1"]
    (folder / study.SECONDS).write_text(json.dumps(recorded))
    study.region_masks(items, tmp_path / "regions", 16)
    assert len(asked) == 2 and set(json.loads((folder / study.SECONDS).read_text())) == {"scene_0", "scene_1"}


def test_the_toy_sam_makes_a_map_at_the_photos_size(items, tmp_path):
    folder, stats = study.region_masks(items[:1], tmp_path / "regions", 4)
    ids = regions.read_region_file(folder / "scene_0.npz", (96, 80))
    assert ids.min() >= 0 and stats["regions_per_image"] == len(np.unique(ids[ids > 0]))
    assert json.loads((folder / study.SECONDS).read_text())["scene_0"] > 0

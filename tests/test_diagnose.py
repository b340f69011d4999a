"""`diagnose`: the phase-1 figures, checked against prototypes whose answer is known."""

from __future__ import annotations

import json

import pytest
import torch

from vpltool import io
from vpltool.errors import VplError
from vpltool.io.marks import marked
from vpltool.stages.diagnose import pixel_labels, run_diagnose


def test_pixel_labels_are_the_argmax_row_with_background_rows_as_zero():
    rows = torch.eye(4)  # 2 classes (ids 5 and 2), then 2 background rows
    x = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0.9, 0.1], [0.1, 0, 0, 0.9]])
    assert pixel_labels(x, rows, (5, 2), 0.01).tolist() == [5, 2, 0, 0]


@pytest.fixture(scope="module")
def gt_prototypes(features_dir, text_protos, tmp_path_factory):
    """Prototypes whose rows are the mean features of their ground-truth patches (background rows: of the
    background patches): a nearest-centroid classifier, so it must beat the random model's text prototypes."""
    import cv2

    from vpltool.data import open_recorded
    from vpltool.stages.diagnose import region_centroids

    text = io.read_prototypes(text_protos)
    classes = text.classes
    items = {it.id: it for it in open_recorded(features_dir).items}
    centroids, counts = region_centroids(features_dir, items, classes)
    vectors = text.vectors.clone()
    seen = counts > 0
    vectors[text.class_rows()[seen]] = centroids[seen]
    background = []
    for item_id in io.item_ids(features_dir):
        feats = io.read_features(io.feature_path(features_dir, item_id))
        small = cv2.resize(io.read_mask(items[item_id].gt), feats.grid[::-1], interpolation=cv2.INTER_NEAREST)
        x = torch.nn.functional.normalize(feats.dense.flatten(0, 1), dim=1)
        background.append(x[torch.from_numpy(small.reshape(-1) == 0)])
    vectors[text.background_rows()] = torch.nn.functional.normalize(torch.cat(background).mean(0), dim=0)
    path = tmp_path_factory.mktemp("gt") / "gt.safetensors"
    io.write_prototypes(path, io.Prototypes(vectors, text.row_class, text.row_names, classes=classes,
                                            temperature=0.03, source="vision", model=text.model))
    return path


def test_diagnose_reports_every_figure_and_ranks_an_ideal_classifier_first(features_dir, text_protos, gt_prototypes,
                                                                           tmp_path):
    out = tmp_path / "diag.json"
    result = run_diagnose(features_dir, [gt_prototypes], text_protos, json_out=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(marked(result, "diagnosis")))
    text_row, vision_row = result["rows"]
    assert (text_row["source"], vision_row["source"]) == ("text", "vision")
    for row in result["rows"]:
        for key in ("pixel", "gradcam_input", "gradcam_output"):
            assert 0.0 <= row[key] <= 1.0
        assert -1.0 <= row["image_to_class_cosine"] <= 1.0
    assert text_row["frobenius_to_text"] == pytest.approx(0.0, abs=1e-6)  # Z against itself
    assert text_row["row_to_text_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert vision_row["region_gap"] < text_row["region_gap"]  # its rows are the region centroids
    assert vision_row["pixel"] > text_row["pixel"]
    assert vision_row["gradcam_input"] != vision_row["gradcam_output"]  # two layers, two maps


def test_diagnose_needs_a_prototypes_file(features_dir, tmp_path):
    with pytest.raises(VplError, match="--prototypes"):
        run_diagnose(features_dir, [], None)

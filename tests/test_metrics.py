"""Metrics: a hand-computed confusion matrix, the VOC/COCO mIoU convention, CAM background exponents, folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpltool.errors import ContractError, VplError
from vpltool.io import write_mask, write_tensors
from vpltool.ops.kernels import MiouAccumulator, cams_to_labels, confusion_matrix, scores
from vpltool.stages.eval import evaluate_cams, evaluate_masks, format_table

CLASSES = ["background", "cat", "dog"]
X = 255  # ignore

# Two tiny images, 3 classes, 255 in GT (ignored) and in the prediction (counted wrong).
GT_A = np.array([[0, 0, 1], [1, X, 2]], np.uint8)
PRED_A = np.array([[0, 1, 1], [1, 2, X]], np.uint8)
GT_B = np.array([[0, 2], [2, 2]], np.uint8)
PRED_B = np.array([[0, 2], [0, X]], np.uint8)

# Pixel by pixel (gt -> pred):
#   A: 0->0, 0->1, 1->1, 1->1, (255->2 ignored), 2->255
#   B: 0->0, 2->2, 2->0, 2->255
# rows = GT, columns = pred 0, 1, 2, invalid
#   gt 0: 0->0 twice, 0->1 once              -> [2, 1, 0, 0]   rowsum 3
#   gt 1: 1->1 twice                         -> [0, 2, 0, 0]   rowsum 2
#   gt 2: 2->0 once, 2->2 once, 2->255 twice -> [1, 0, 1, 2]   rowsum 4
EXPECTED_HIST = np.array([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 2]])
# valid column sums: c0 = 2 + 0 + 1 = 3, c1 = 1 + 2 + 0 = 3, c2 = 0 + 0 + 1 = 1
# IoU0 = 2 / (3 + 3 - 2) = 2/4;  IoU1 = 2 / (2 + 3 - 2) = 2/3;  IoU2 = 1 / (4 + 1 - 1) = 1/4
EXPECTED_IOU = [2 / 4, 2 / 3, 1 / 4]
EXPECTED_MIOU = (2 / 4 + 2 / 3 + 1 / 4) / 3  # = 0.4722...
EXPECTED_PIXEL_ACC = (2 + 2 + 1) / (3 + 2 + 4)  # diagonal / all GT-labelled pixels = 5/9
EXPECTED_MEAN_ACC = (2 / 3 + 2 / 2 + 1 / 4) / 3  # per-class recall = diag / rowsum


def test_confusion_matrix_by_hand():
    hist = confusion_matrix(GT_A, PRED_A, 3) + confusion_matrix(GT_B, PRED_B, 3)
    assert hist.dtype == np.int64 and hist.shape == (3, 4)
    np.testing.assert_array_equal(hist, EXPECTED_HIST)


def test_scores_by_hand():
    acc = MiouAccumulator(3)
    acc.add(GT_A, PRED_A)
    acc.add(GT_B, PRED_B)
    r = acc.result()
    assert r["n_images"] == 2 and r["confusion"] == EXPECTED_HIST.tolist()
    assert r["iou"] == pytest.approx(EXPECTED_IOU)
    assert r["miou"] == pytest.approx(EXPECTED_MIOU)
    assert r["pixel_accuracy"] == pytest.approx(EXPECTED_PIXEL_ACC)
    assert r["mean_accuracy"] == pytest.approx(EXPECTED_MEAN_ACC)


def test_gt_against_itself_is_perfect():
    r = scores(confusion_matrix(GT_A, GT_A, 3) + confusion_matrix(GT_B, GT_B, 3))
    assert r["miou"] == 1.0 and r["pixel_accuracy"] == 1.0 and r["mean_accuracy"] == 1.0


def test_class_absent_from_gt_is_excluded_from_the_mean():
    gt = np.array([[0, 1], [1, 1]], np.uint8)
    pred = np.array([[3, 1], [1, 1]], np.uint8)  # class 3 only predicted, class 2 nowhere
    r = scores(confusion_matrix(gt, pred, 4))
    # IoU0 = 0 / (1 + 0 - 0) = 0, IoU1 = 3 / (3 + 3 - 3) = 1; classes 2 and 3 absent from GT -> None
    assert r["iou"] == [0.0, 1.0, None, None]
    assert r["miou"] == pytest.approx(0.5)  # (0 + 1) / 2, not / 4


def test_predicted_ignore_is_wrong_not_skipped_nor_misbinned():
    gt = np.array([[2, 2, 2, 2]], np.uint8)
    pred = np.array([[2, 2, X, X]], np.uint8)
    hist = confusion_matrix(gt, pred, 3)
    np.testing.assert_array_equal(hist, [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 2, 2]])
    # counted wrong: IoU2 = 2 / (4 + 2 - 2) = 0.5; skipping the 255 pixels would have given 1.0
    assert scores(hist)["iou"][2] == pytest.approx(0.5)
    skipped = confusion_matrix(np.where(pred == X, X, gt).astype(np.uint8), pred, 3)
    assert scores(hist)["iou"][2] < scores(skipped)["iou"][2] == 1.0
    # a square [N, N] matrix (no invalid column) is also accepted
    assert scores(hist[:, :3])["iou"][2] == 1.0


def test_shape_mismatch_names_the_image():
    with pytest.raises(ContractError, match="2007_000032"):
        confusion_matrix(GT_A, GT_B, 3, item="2007_000032")


def test_cams_to_labels_exponent_changes_the_result():
    cams = np.array([[[0.45, 0.9, 0.1]]], np.float32)  # K=1, H=1, W=3
    # a=1: bg = 1 - 0.45 = 0.55 > 0.45 -> background;  a=2: bg = 0.55^2 = 0.3025 < 0.45 -> class 2
    np.testing.assert_array_equal(cams_to_labels(cams, [2], 1.0), [[0, 2, 0]])
    np.testing.assert_array_equal(cams_to_labels(cams, [2], 2.0), [[2, 2, 0]])
    assert cams_to_labels(cams, [2], 2.0).dtype == np.uint8


def test_cams_to_labels_maps_to_class_ids_and_ties_go_to_background():
    cams = np.array([[[0.9, 0.2, 0.5]], [[0.1, 0.8, 0.0]]], np.float32)
    # pixel 3: cam 0.5, bg (1 - 0.5)^1 = 0.5 -> tie -> background (CLIP-ES argmax puts bg first)
    np.testing.assert_array_equal(cams_to_labels(cams, [3, 1], 1.0), [[3, 1, 0]])
    empty = cams_to_labels(np.zeros((0, 2, 3), np.float32), [], 1.0)
    assert empty.shape == (2, 3) and not empty.any()


# --------------------------------------------------------------------------------------------- folders
def _gt_folder(tmp_path: Path, masks: dict[str, np.ndarray]) -> dict[str, Path]:
    return {i: write_mask(tmp_path / "gt" / f"{i}.png", m) for i, m in masks.items()}


def _write_cam(folder: Path, item: str, cams: np.ndarray, labels: list[int]) -> None:
    import torch

    tensors = {"cams": torch.from_numpy(cams).half(), "labels": torch.tensor(labels, dtype=torch.int64)}
    write_tensors(folder / f"{item}.safetensors", tensors, kind="cam", classes=CLASSES)


def test_evaluate_masks_gt_vs_gt_and_by_hand(tmp_path):
    gt = _gt_folder(tmp_path, {"a": GT_A, "b": GT_B})
    same = evaluate_masks(tmp_path / "gt", gt, CLASSES, ["a", "b"])
    assert same["miou"] == 1.0 and same["n_images"] == 2
    write_mask(tmp_path / "pred" / "a.png", PRED_A)
    write_mask(tmp_path / "pred" / "b.png", PRED_B)
    r = evaluate_masks(tmp_path / "pred", gt, CLASSES, ["a", "b"])
    assert r["miou"] == pytest.approx(EXPECTED_MIOU)
    assert r["iou"] == pytest.approx(dict(zip(CLASSES, EXPECTED_IOU)))
    assert r["confusion"] == EXPECTED_HIST.tolist()
    format_table(r, CLASSES)  # renders without error


def test_evaluate_masks_missing_prediction_names_id_and_folder(tmp_path):
    gt = _gt_folder(tmp_path, {"a": GT_A, "b": GT_B})
    write_mask(tmp_path / "pred" / "a.png", PRED_A)
    with pytest.raises(VplError, match=r"pred.*'b'"):
        evaluate_masks(tmp_path / "pred", gt, CLASSES, ["a", "b"])


def test_evaluate_masks_missing_gt_names_id(tmp_path):
    gt = _gt_folder(tmp_path, {"a": GT_A})
    with pytest.raises(VplError, match="'b'"):
        evaluate_masks(tmp_path / "gt", gt, CLASSES, ["a", "b"])


def test_evaluate_cams_picks_the_better_exponent(tmp_path):
    # one image, class 1 (cat) on pixels 1..3
    gt = _gt_folder(tmp_path, {"x": np.array([[0, 1, 1, 1]], np.uint8)})
    _write_cam(tmp_path / "cams", "x", np.array([[[0.1, 0.45, 0.9, 0.9]]], np.float32), [1])
    r = evaluate_cams(tmp_path / "cams", gt, CLASSES, ["x"], (1.0, 2.0))
    # a=1 -> [0, 0, 1, 1]: IoU0 = 1/2, IoU1 = 2/3;  a=2 -> [0, 1, 1, 1]: perfect
    assert r["by_exponent"] == pytest.approx({1.0: (1 / 2 + 2 / 3) / 2, 2.0: 1.0})
    assert r["bg_exponent"] == 2.0 and r["miou"] == 1.0
    assert r["iou"] == {"background": 1.0, "cat": 1.0, "dog": None}


def test_evaluate_cams_chooses_on_the_pooled_matrix(tmp_path):
    gt = _gt_folder(tmp_path, {"x": np.array([[0, 1, 1, 1]], np.uint8), "y": np.array([[0, 0, 1, 1]], np.uint8)})
    _write_cam(tmp_path / "cams", "x", np.array([[[0.1, 0.45, 0.9, 0.9]]], np.float32), [1])
    _write_cam(tmp_path / "cams", "y", np.array([[[0.45, 0.45, 0.9, 0.9]]], np.float32), [1])
    r = evaluate_cams(tmp_path / "cams", gt, CLASSES, ["x", "y"], (1.0, 2.0))
    # a=1: x -> [0,0,1,1], y -> [0,0,1,1] (perfect): rows gt0 [3, 0], gt1 [1, 4]
    #      IoU0 = 3 / (3 + 4 - 3) = 3/4, IoU1 = 4 / (5 + 4 - 4) = 4/5
    # a=2: x perfect, y -> [1,1,1,1]: rows gt0 [1, 2], gt1 [0, 5]
    #      IoU0 = 1 / (3 + 1 - 1) = 1/3, IoU1 = 5 / (5 + 7 - 5) = 5/7
    assert r["by_exponent"] == pytest.approx({1.0: (3 / 4 + 4 / 5) / 2, 2.0: (1 / 3 + 5 / 7) / 2})
    assert r["bg_exponent"] == 1.0 and r["n_images"] == 2
    assert r["confusion"] == [[3, 0, 0, 0], [1, 4, 0, 0], [0, 0, 0, 0]]
    format_table(r, CLASSES)


def test_evaluate_cams_rejects_wrong_resolution_and_missing_file(tmp_path):
    gt = _gt_folder(tmp_path, {"x": np.zeros((2, 4), np.uint8)})
    (tmp_path / "cams").mkdir()
    with pytest.raises(VplError, match="'x'"):
        evaluate_cams(tmp_path / "cams", gt, CLASSES, ["x"])
    _write_cam(tmp_path / "cams", "x", np.zeros((1, 1, 4), np.float32), [2])
    with pytest.raises(ContractError, match="'x' is 2x4 but the image of its CAMs"):
        evaluate_cams(tmp_path / "cams", gt, CLASSES, ["x"])


def test_the_table_in_a_pipe_keeps_its_first_and_last_lines_whole():
    """Piped eval tables wrapped their title and caption to the table's width ("pixel acc 59.2 · mean acc" /
    "48.9 · best bg exponent a=1"); they are now lines of their own."""
    import io as stdio

    from rich.console import Console

    result = {"miou": 0.147, "n_images": 4, "iou": dict(zip(CLASSES, [0.6, None, 0.1])), "pixel_accuracy": 0.592,
              "mean_accuracy": 0.489, "bg_exponent": 1.0, "by_exponent": {1.0: 0.147, 2.0: 0.109}}
    out = stdio.StringIO()
    Console(file=out, width=100).print(format_table(result, CLASSES))
    lines = out.getvalue().splitlines()
    assert lines[0] == "mIoU 14.7 over 4 images"
    assert lines[-1] == "pixel acc 59.2 · mean acc 48.9 · best bg exponent a=1 (a=1: 14.7, a=2: 10.9)"
    assert max(map(len, lines)) <= 100


def test_per_image_figures_are_each_images_own():
    """``MiouAccumulator(per_image=True)`` keeps each image's own IoU (what `eval --per-image` and the report show)
    beside the dataset's; worked by hand: class 0 1/2, class 1 2/3."""
    from vpltool.ops.kernels import image_scores

    acc = MiouAccumulator(3, per_image=True)
    gt, pred = np.array([[0, 0], [1, 1]]), np.array([[0, 1], [1, 1]])
    acc.add(gt, pred, item="a")
    acc.add(np.array([[2, 2], [0, 255]]), np.array([[2, 0], [0, 0]]), item="b")
    assert acc.images["a"]["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert acc.images["a"]["iou"] == pytest.approx([1 / 2, 2 / 3, None])
    assert acc.images["b"] == image_scores(confusion_matrix(np.array([[2, 2], [0, 255]]),
                                                             np.array([[2, 0], [0, 0]]), 3))
    assert MiouAccumulator(3).images is None  # off by default: a VOC-sized eval keeps one matrix only


def test_precision_recall_and_the_most_confused_pairs():
    """Issue 37: masks that paint too much lose precision, masks that paint too little lose recall; eval says which
    (IoU alone does not) and names the largest confusions."""
    from rich.console import Console

    from vpltool.stages.eval import confused_pairs

    gt = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 0, 255], [1, 1, 0, 0]], np.uint8)  # half of class 1 found, and two background pixels
    result = scores(confusion_matrix(gt, pred, 2))
    assert result["recall"] == [0.5, 0.5] and result["precision"] == [pytest.approx(2 / 3), 0.5]
    never = scores(confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), 3))
    assert never["precision"][1:] == [None, None] and never["recall"][1:] == [None, None]
    hist = MiouAccumulator(2)
    hist.add(gt, pred)
    pairs = confused_pairs(hist.result()["confusion"], ["background", "circle"])
    assert [(p["gt"], p["predicted"], p["pixels"]) for p in pairs] == [
        ("background", "circle", 2), ("circle", "background", 1), ("circle", "255", 1)]
    assert pairs[0]["share"] == 0.5
    console = Console(width=200, record=True)
    console.print(format_table({**hist.result(), "iou": {"background": 0.4, "circle": 0.4},
                                "precision": {"background": 2 / 3, "circle": 0.5},
                                "recall": {"background": 0.5, "circle": 0.5}}, ["background", "circle"]))
    shown = console.export_text()
    assert "precision %" in shown and "66.7" in shown and "background → circle 50.0" in shown

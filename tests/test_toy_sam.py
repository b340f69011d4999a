"""The toy SAM (`train-toy-sam`): SAM's recipe on the world's train masks, a bit-identical rebuild, loading through
the ``sam`` family (``--sam-model toy``), and the shipped weights segmenting train objects from one point or a box
far better than the trivial answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from vpltool.demo.config import ToySamConfig  # noqa: E402
from vpltool.demo.train_toy_sam import focal_dice, instances, noisy_boxes, round_kinds, train_toy_sam  # noqa: E402
from vpltool.errors import VplError, VplWarning  # noqa: E402
from vpltool.models import check_model, load_model  # noqa: E402
from vpltool.models.backbones.sam import SamSpec  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-sam" / "model.safetensors"
TINY = ToySamConfig(epochs=1, batch_size=3, warmup=1, point_rounds=1, mask_rounds=1)


def test_toy_sam_rebuilds_bit_identically_and_loads_as_sam(world, tmp_path):
    from safetensors.torch import load_file

    a = train_toy_sam(tmp_path / "a" / "model.safetensors", world, TINY)
    train_toy_sam(tmp_path / "b" / "model.safetensors", world, TINY)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert {k.split(".")[0] for k in wa} == {"image_encoder", "prompt_encoder", "mask_decoder"}  # all three trained
    assert a["steps"] == 2 and a["images"] == 6 and a["masks"] >= 6 and np.isfinite(a["final_loss"])
    spec = SamSpec("toy", a["path"], prompt=True)
    check_model("sam", spec)
    sam = load_model("sam", spec, "cpu")
    assert torch.equal(sam.model.pos_embed, wa["image_encoder.pos_embed"])
    assert torch.equal(sam.mask_decoder.iou_token.weight, wa["mask_decoder.iou_token.weight"])
    other = train_toy_sam(tmp_path / "c" / "model.safetensors", world, ToySamConfig(**{**TINY.__dict__, "seed": 1}))
    wc = load_file(other["path"])
    assert not torch.equal(wa["mask_decoder.iou_token.weight"], wc["mask_decoder.iou_token.weight"])


def test_another_sam_size_is_refused_as_the_toy(tmp_path):
    from safetensors.torch import save_file

    test = load_model("sam", SamSpec("test", "none"), "cpu")
    path = tmp_path / "test_sam.safetensors"
    save_file({f"image_encoder.{k}": v.contiguous() for k, v in test.model.state_dict().items()}, str(path))
    with pytest.raises(VplError) as e:
        check_model("sam", SamSpec("toy", str(path)))
    assert str(path) in str(e.value) and "SAM toy" in str(e.value) and "\n" not in str(e.value)


def test_a_proxy_grid_coarser_than_clips_is_spliced_at_clips_grid():
    """The toy DINO (patch 16) against the toy CLIP (patch 8): the reference's ratio round(6 / 12) would be 0."""
    from vpltool.models.dense.trident import splice_windows

    tokens = torch.randn(1, 36, 5)
    out = splice_windows(tokens, (6, 6), (12, 12), [(0, 0, 12, 12)], (12, 12))
    assert out.shape == (1, 5, 12, 12) and torch.isfinite(out).all()
    maps = tokens.transpose(1, 2).reshape(1, 5, 6, 6)
    assert torch.allclose(out, torch.nn.functional.interpolate(maps, (12, 12), mode="bilinear", align_corners=False))


def test_instances_are_each_classes_connected_components():
    gt = np.zeros((20, 20), np.uint8)
    gt[1:6, 1:6] = 3  # class 3: two blobs (an object cut in two)
    gt[12:18, 1:6] = 3
    gt[5:15, 10:18] = 1
    gt[4:16, 9] = 255  # the ignore band is no instance
    gt[0, 19] = 2  # a one-pixel sliver: under min_area
    masks = instances(gt, min_area=4)
    assert masks.shape == (3, 20, 20)
    assert [int(m.sum()) for m in masks] == [80, 25, 30]  # class 1, then class 3's two components
    assert not (masks & (gt == 255)).any()
    # --background-masks: the background region first (here one component), then the objects as before
    with_bg = instances(gt, min_area=4, background=True)
    assert len(with_bg) == 4 and (with_bg[0] == (gt == 0)).all() and (with_bg[1:] == masks).all()


def test_the_record_names_the_world_and_background_masks_add_one_mask_a_scene(world, tmp_path):
    """The record of a toy SAM names the world that trained it (its seed and its record's digest), so that a toy
    used for pseudo masks can be told from the world it is used on."""
    from vpltool import io

    objects = train_toy_sam(tmp_path / "a" / "model.safetensors", world, ToySamConfig(**{**TINY.__dict__,
                                                                                        "epochs": 1}))
    both = train_toy_sam(tmp_path / "b" / "model.safetensors", world,
                         ToySamConfig(**{**TINY.__dict__, "background_masks": True}))
    assert objects["world"] == {"seed": 0, "train": 6, "val": 3,
                                "record_sha256": io.sha256_file(io.stage_record_path(world))}
    # at least one background region a scene (more where an object cuts the background in two)
    assert objects["masks"] + 6 <= both["masks"] <= objects["masks"] + 12
    assert io.read_json(tmp_path / "b" / "model.json")["recipe"]["background_masks"] is True


def test_focal_dice_ranks_the_right_mask_first_and_ignores_the_band():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    target[..., 2:6, 2:6] = True
    valid = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    right = torch.where(target, 8.0, -8.0)
    wrong = -right
    half = right.clone()
    half[..., :, 4:] = -8.0
    loss = focal_dice(torch.cat([wrong, half, right], 1), target, valid, ToySamConfig())
    assert loss[0, 2] < loss[0, 1] < loss[0, 0]
    band = valid.clone()
    band[..., :, 4:] = False  # where the half mask is wrong is all ignored: it scores as the right one
    assert torch.allclose(focal_dice(half, target, band, ToySamConfig()),
                          focal_dice(right, target, band, ToySamConfig()))


def test_noisy_boxes_keep_sams_cap_and_the_image():
    masks = torch.zeros(1, 96, 96, dtype=torch.bool)
    masks[0, 10:60, 20:90] = True
    gen = torch.Generator().manual_seed(0)
    exact = torch.tensor([20.0, 10.0, 89.0, 59.0])
    boxes = torch.cat([noisy_boxes(masks, gen, 0.1, 20 / 1024, (96, 96)) for _ in range(200)])
    moved = (boxes - exact).abs()
    assert moved.max() <= 96 * 20 / 1024 + 1e-5 and moved.mean() > 0.3  # noisy, at most 20 px of 1024
    assert boxes.min() >= 0 and boxes.max() <= 95
    assert torch.equal(noisy_boxes(masks, gen, 0.0, 20 / 1024, (96, 96))[0], exact)


def test_round_kinds_put_one_mask_round_last():
    gen = torch.Generator().manual_seed(0)
    kinds = round_kinds(ToySamConfig(point_rounds=8, mask_rounds=2), gen)
    assert len(kinds) == 10 and kinds.count("mask") == 2 and kinds[-1] == "mask"  # SAM's 1 + 8 + 2
    assert round_kinds(ToySamConfig(point_rounds=2, mask_rounds=0), gen) == ["point", "point"]


def test_training_refuses_a_world_without_train_masks(tmp_path):
    with pytest.raises(VplError):
        train_toy_sam(tmp_path / "m.safetensors", tmp_path, TINY)


def _iou(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    return float((pred & gt & valid).sum() / max(((pred | gt) & valid).sum(), 1))


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped toy SAM is missing")
def test_shipped_toy_sam_segments_train_objects_from_one_point_or_a_box(world):
    """The conftest world's train scenes are the first train scenes of the default world the toy SAM saw
    (`make-world --seed 0`). One point per object (its most interior pixel) or its exact box; SAM's answer to a
    single prompt: of its three masks the one it predicts best."""
    from scipy import ndimage

    from vpltool.data import open_dataset
    from vpltool.io import load_image, read_mask
    from vpltool.models.backbones.sam import sam_input

    sam = load_model("sam", SamSpec("toy", str(SHIPPED), prompt=True), "cpu")
    point_iou, box_iou, whole_iou, box_fill_iou = [], [], [], []
    for item in open_dataset(world, "train").items:
        image, gt = load_image(item.image), read_mask(item.gt)
        valid = gt != 255
        pixels, _ = sam_input(image, sam.img_size)
        features = sam.features(pixels)
        scale = sam.img_size / max(gt.shape)
        for mask in instances(gt, 16):
            dist = ndimage.distance_transform_edt(mask)
            y, x = np.unravel_index(int(dist.argmax()), mask.shape)
            ys, xs = np.nonzero(mask)
            box = torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32) * scale
            for prompt, out in (({"points": torch.tensor([[[x * scale, y * scale]]], dtype=torch.float32),
                                  "boxes": None}, point_iou), ({"points": None, "boxes": box}, box_iou)):
                logits, iou, _ = sam.predict(features, mask=None, input_size=(sam.img_size, sam.img_size),
                                             original_size=gt.shape, multimask=True, **prompt)
                out.append(_iou(logits[0, int(iou[0].argmax())].numpy() > 0, mask, valid))
            whole_iou.append(_iou(np.ones_like(mask), mask, valid))
            fill = np.zeros_like(mask)
            fill[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            box_fill_iou.append(_iou(fill, mask, valid))
    assert len(point_iou) >= 6
    point, box = float(np.mean(point_iou)), float(np.mean(box_iou))
    whole, fill = float(np.mean(whole_iou)), float(np.mean(box_fill_iou))
    # the trivial answers: the whole image for a point, the box itself for a box
    assert point > whole + 0.3, (point, whole)
    assert box > fill, (box, fill)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped toy SAM is missing")
@pytest.mark.parametrize("refine", [False, True])
def test_segment_runs_trident_with_the_demo_worlds_toys(world, tmp_path, refine):
    """`segment --dense trident` on the world with the toy CLIP, the toy DINO and the shipped toy SAM named as the
    toy DINO is (``--sam-model toy --sam-weights FILE``); with ``--sam-refine`` its prompt encoder and mask decoder
    load from the same file."""
    from typer.testing import CliRunner

    from vpltool import io
    from vpltool.cli import app

    toy_dino = SHIPPED.parents[1] / "toy-dino" / "model.safetensors"
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "-o", str(out), "--model", "vpltool-toy",
                                 "--pretrained", "none", "--dense", "trident", "--short-side", "96", "--slide-crop",
                                 "96", "--slide-stride", "96", "--templates", "a photo of a {}.", "--background",
                                 "grass,sky,wall,water", "--proxy-model", "test_vit", "--proxy-weights",
                                 str(toy_dino), "--sam-model", "toy", "--sam-weights", str(SHIPPED),
                                 "--sam-refine" if refine else "--no-sam-refine", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    record = io.read_stage_record(out, "segment")["params"]
    assert record["sam_model"] == "toy" and record["settings"].get("sam_refine", False) is refine
    assert len(list(out.glob("*.png"))) == 3


def test_minimal_area_is_trident_refinements_option():
    from vpltool.config import SegmentConfig

    cfg = SegmentConfig.of(dense="trident", sam_refine=True, minimal_area=10)
    assert cfg.resolved().minimal_area == 10
    assert SegmentConfig(dense="trident").resolved().minimal_area == 225  # Trident's own (base_config.py)
    with pytest.warns(VplWarning, match="--minimal-area 10 has no effect without --dense trident"):
        assert SegmentConfig.of(dense="none", minimal_area=10).resolved().minimal_area == 225
    with pytest.raises(VplError, match="--minimal-area 0"):
        SegmentConfig.of(dense="trident", minimal_area=0)


def test_committed_parity_says_what_it_measured():
    """parity/results/toysam_parity.json: the toy SAM against segment-anything's own SamPredictor; its verdict
    follows its figures and the bar."""
    import json

    result = json.loads((Path(__file__).resolve().parents[1] / "parity" / "results" / "toysam_parity.json")
                        .read_text())
    assert result["photos"] == 12 and len(result["per_photo"]) == 12 and len(result["prompts"]) == 4
    worst = max(result["max_abs_diff"].values())
    per_photo = [v for row in result["per_photo"] for k, d in row.items() if k != "file"
                 for v in (d.values() if isinstance(d, dict) else [d])]
    assert worst == max(per_photo)  # the summary is the worst of the photos
    assert result["met"] == (result["images_decoded_equal"] and worst <= 1e-4 and result["mask_agreement"] >= 0.999)
    assert result["met"], result["max_abs_diff"]

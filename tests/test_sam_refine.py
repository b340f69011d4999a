"""Trident's SAM prompt refinement (``--sam-refine``, vpltool.models.dense.sam_refine) and the ``sam`` family's prompt
encoder and mask decoder: loaded from a whole Sam file (an encoder-only file refused in one line), SamPredictor's
``predict_torch`` reproduced, the refinement's steps on tiny seeded inputs, and the segment stage end to end with a
tiny random SAM. The bit-level parity with Trident's own ``sam_refinement`` is parity/ovss_parity.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vpltool.config import SegmentConfig
from vpltool.config.benchmarks import BENCHMARK_PRESETS
from vpltool.errors import VplError
from vpltool.models import check_model, load_model
from vpltool.models.backbones.sam import SAM_ARCHS, SamSpec, _build, _build_prompt
from vpltool.models.dense.sam_refine import class_prompts, mask_prompt, preprocess_shape, refine, to_sam_frame

TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


@pytest.fixture(scope="module")
def sam():
    return load_model("sam", SamSpec("test", "none", prompt=True), "cpu")


def _whole_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A whole test-size Sam's tensors (``image_encoder.``, ``prompt_encoder.``, ``mask_decoder.``), seeded noise on
    each so that a load is seen."""
    torch.manual_seed(0)
    enc = _build(SAM_ARCHS["test"])
    prompt, decoder = _build_prompt(SAM_ARCHS["test"])
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, module in (("image_encoder.", enc), ("prompt_encoder.", prompt), ("mask_decoder.", decoder)):
        for k, v in module.state_dict().items():
            out[prefix + k] = (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous()
    return out


def _image(h: int = 70, w: int = 110, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_whole_sam_file_loads_its_prompt_encoder_and_mask_decoder(tmp_path):
    state = _whole_state()
    path = tmp_path / "sam_whole.safetensors"
    save_file(state, str(path))
    loaded = load_model("sam", SamSpec("test", str(path), prompt=True), "cpu")
    for prefix, module in (("prompt_encoder.", loaded.prompt_encoder), ("mask_decoder.", loaded.mask_decoder)):
        for k, v in module.state_dict().items():
            assert torch.equal(v, state[prefix + k]), k
    # without --sam-refine the same file gives the encoder alone
    assert load_model("sam", SamSpec("test", str(path)), "cpu").mask_decoder is None


def test_an_encoder_only_file_with_sam_refine_is_one_line(tmp_path):
    state = {k[len("image_encoder."):]: v for k, v in _whole_state().items() if k.startswith("image_encoder.")}
    path = tmp_path / "sam_encoder.safetensors"
    save_file(state, str(path))
    check_model("sam", SamSpec("test", str(path)))  # the encoder alone is fine without --sam-refine
    with pytest.raises(VplError) as e:
        check_model("sam", SamSpec("test", str(path), prompt=True))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "image encoder only" in msg and "--sam-refine" in msg


def test_a_decoder_of_another_size_is_one_line(tmp_path):
    state = _whole_state()
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    path = tmp_path / "sam_bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(VplError, match="of another shape"):
        check_model("sam", SamSpec("test", str(path), prompt=True))


def test_features_come_from_the_same_pass(sam):
    x, _ = sam.prepare(_image())
    attn, values, feats = sam.last_attention(x, features=True)
    a2, v2 = sam.last_attention(x)
    assert torch.equal(attn, a2) and torch.equal(values, v2)
    assert torch.allclose(feats, sam.features(x), atol=1e-5)


def test_predict_is_sampredictors_predict_torch(sam):
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

    image = _image()
    predictor = SamPredictor(Sam(sam.model, sam.prompt_encoder, sam.mask_decoder))
    predictor.set_image(image)
    g = torch.Generator().manual_seed(0)
    points = torch.rand(3, 1, 2, generator=g) * 200
    boxes = torch.cat([points[:, 0], points[:, 0] + 40], dim=1)
    mask = torch.rand(1, 64, 64, generator=g) * 0.01  # 3-D, as Trident passes it
    ref_masks, ref_iou, ref_low = predictor.predict_torch(points, torch.ones(3, 1), boxes, mask,
                                                          multimask_output=False, return_logits=True)
    logits, iou, low = sam.predict(predictor.features, points, boxes, mask, predictor.input_size,
                                   predictor.original_size)
    assert torch.equal(iou, ref_iou) and torch.equal(low, ref_low) and torch.allclose(logits, ref_masks, atol=1e-6)


def test_class_prompts_keep_large_regions_with_their_peak_and_box():
    labels = torch.zeros(20, 30, dtype=torch.long)
    labels[2:12, 3:18] = 1  # 150 px
    labels[15:17, 25:27] = 1  # 4 px: below the area
    probs = torch.zeros(2, 20, 30)
    probs[1, 5, 9] = 0.9
    out = class_prompts(probs, labels, 1, minimal_area=10)
    assert out.regions.shape == (1, 20, 30) and int(out.regions.sum()) == 150
    assert out.points.tolist() == [[9, 5]]  # (x, y) of the peak
    assert out.boxes.tolist() == [[3.0, 2.0, 17.0, 11.0]]
    assert class_prompts(probs, labels, 1, minimal_area=151) is None


def test_diagonal_neighbours_are_one_region():
    labels = torch.zeros(6, 6, dtype=torch.long)
    labels[0, 0] = labels[1, 1] = labels[2, 2] = 1
    assert class_prompts(torch.ones(2, 6, 6), labels, 1, 1).regions.shape[0] == 1  # 8-connectivity


def test_frames_are_resize_longest_sides():
    from segment_anything.utils.transforms import ResizeLongestSide

    t = ResizeLongestSide(1024)
    assert preprocess_shape(166, 250, 1024) == t.get_preprocess_shape(166, 250, 1024)
    xy = torch.tensor([[[10, 20], [100, 150]]])
    assert torch.equal(to_sam_frame(xy, (166, 250), 1024), t.apply_coords_torch(xy, (166, 250)))
    r = mask_prompt(torch.full((40, 60), 0.5), (80, 120), 256, 0.2, 0.005)
    assert r.shape == (1, 256, 256) and r[0, 0, 0] == 0.0025 and r[0, -1, 0] == 0  # padded below


def _coarse(seed: int = 0, h: int = 70, w: int = 110, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(classes, 5, 8, generator=g) * 6
    probs = torch.nn.functional.interpolate(low[None], (h, w), mode="bilinear")[0].softmax(0)
    return probs, probs.argmax(0)


def test_refine_keeps_the_coarse_labels_when_sam_is_never_confident(sam):
    probs, labels = _coarse()
    feats = sam.last_attention(sam.prepare(_image())[0], features=True)[2]
    scores, out = refine(probs, labels, sam, feats, (70, 110), 0.2, 20, iou_threshold=1e9)
    assert torch.equal(out, labels) and torch.equal(scores, probs)


def test_refine_relabels_where_sam_is_confident(sam):
    probs, labels = _coarse()
    feats = sam.last_attention(sam.prepare(_image())[0], features=True)[2]
    scores, out = refine(probs, labels, sam, feats, (70, 110), 0.2, 20, iou_threshold=-1e9)
    assert out.shape == labels.shape and out.dtype == torch.int64
    assert not torch.equal(out, labels)
    assert bool((scores <= probs + 1e-7).all())  # sigmoid x probability, zero outside the kept masks
    again = refine(probs, labels, sam, feats, (70, 110), 0.2, 20, iou_threshold=-1e9)[1]
    assert torch.equal(out, again)


def test_sam_refine_is_off_for_segment_and_on_in_the_benchmark_presets():
    assert SegmentConfig(dense="trident").resolved().sam_refine is False
    resolved = SegmentConfig.of(dense="trident", sam_refine=True, coarse_threshold=0.05).resolved()
    assert resolved.sam_refine is True and resolved.coarse_threshold == 0.05
    p = BENCHMARK_PRESETS["trident"]
    assert p.settings("voc21")["sam_refine"] is True
    assert {b: p.settings(b)["coarse_threshold"] for b in ("voc21", "context60", "coco-object", "ade20k")} == {
        "voc21": 0.2, "context60": 0.15, "coco-object": 0.25, "ade20k": 0.05}
    with pytest.raises(VplError, match="--coarse-threshold"):
        SegmentConfig.of(dense="trident", coarse_threshold=1.5)


def test_segment_runs_trident_with_sam_refine(world, tiny_spec, tmp_path):
    from vpltool import io
    from vpltool.config import RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    cfg = SegmentConfig.of(dense="trident", templates="a photo of a {}.", background="grass,sky", short_side=64,
                           slide_crop=48, slide_stride=32, proxy_model="test_vit", proxy_weights=str(TOY_DINO),
                           sam_model="test", sam_weights="none", sam_refine=True, coarse_threshold=0.05)
    out = tmp_path / "trident_refined"
    s = run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == len(ds.items)
    settings = io.read_stage_record(out, "segment")["params"]["settings"]
    assert settings["sam_refine"] is True and settings["coarse_threshold"] == 0.05
    for item in ds.items:
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=len(ds.classes))
        assert mask.shape == io.load_image(item.image).shape[:2]


def test_committed_refinement_parity_says_what_it_measured():
    """The committed run against Trident's own ``sam_refinement``: each variant's summary is the worst of its photos,
    its verdict follows the 99.9 % bar, and it says how many photos the reference's refinement changed."""
    import json

    result = json.loads((Path(__file__).resolve().parents[1] / "parity" / "results" /
                         "ovss_parity_trident.json").read_text())
    refinement = result["variants"]["trident"]["refinement"]
    assert refinement["scales"], "no refinement variant was compared"
    for spec, summary in refinement["scales"].items():
        key = "scale_" + spec.replace(":", "_iou_")
        rows = [p[key] for p in refinement["photos"] if key in p]
        assert summary["photos"] == len(rows) > 0
        assert summary["refined_labels_equal_min"] == min(r["refined_labels_equal"] for r in rows)
        assert summary["refined_labels_bar_met"] == (summary["refined_labels_equal_min"] >= 0.999)
        assert summary["refined_scores_max_abs_diff"] == max(r["refined_scores"] for r in rows)
        assert summary["photos_the_reference_refined"] == sum(r["reference_changed"] > 0 for r in rows)


def test_failed_regions_take_their_probabilities_beside_kept_masks(sam):
    """Some prompts kept, others failed (the threshold between their IoUs): the failed regions' pixels carry their
    probabilities as scores (Trident's map_failed_regions), which no kept mask alone gives (sigmoid < 1)."""
    probs, labels = _coarse(seed=1)
    feats = sam.last_attention(sam.prepare(_image())[0], features=True)[2]
    seen: dict = {}
    refine(probs, labels, sam, feats, (70, 110), 0.2, 20, iou_threshold=-1e9, stats=seen)
    assert seen["prompts"] >= 2 and seen["iou_min"] < seen["iou_max"]
    middle = (seen["iou_min"] + seen["iou_max"]) / 2
    mixed: dict = {}
    scores, _ = refine(probs, labels, sam, feats, (70, 110), 0.2, 20, iou_threshold=middle, stats=mixed)
    assert 0 < mixed["kept"] < mixed["prompts"]
    kept_only, _ = refine(probs, labels, sam, feats, (70, 110), 0.2, 20, iou_threshold=-1e9)
    assert bool(((scores == probs) & (probs > 0)).any()) and not bool(((kept_only == probs) & (probs > 0)).any())

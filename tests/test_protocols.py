"""Every score names its protocol and the post-processing that made it, read from the scored folder's own records
(vpltool.io.protocols): `eval` of a decoder's predictions names their CRF, scales and flip, a `segment` folder reads
zero-shot, and the JSON, `benchmark`'s table and the demo report carry them."""

from __future__ import annotations

import json

import pytest
from conftest import TEMPLATES
from typer.testing import CliRunner

from vpltool import io
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig, SegmentConfig
from vpltool.data import open_dataset
from vpltool.io.protocols import PROTOCOLS, from_row, of_folder
from vpltool.stages.eval import run_eval

CPU = RuntimeConfig(device="cpu", workers=1, precision="fp32")


@pytest.fixture(scope="module")
def decoder(gt_pseudo, text_protos, tmp_path_factory):
    """A tiny decoder trained one step on the world's GT masks (a finished `crf` folder)."""
    from vpltool.stages.train_decoder import run_train_decoder

    out = tmp_path_factory.mktemp("decoder")
    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(gt_pseudo, text_protos, out, cfg, CPU)
    return out / "decoder.safetensors"


def test_eval_of_predictions_names_their_scales_flip_and_crf(decoder, world, tmp_path):
    from vpltool.cli import app
    from vpltool.stages.predict import run_predict

    run_predict(decoder, world, "val", tmp_path / "p", PredictConfig(scales=(1.0,), flip=False), CPU)
    out = CliRunner().invoke(app, ["eval", str(tmp_path / "p"), "--json", str(tmp_path / "p.json")],
                             prog_name="vpltool", terminal_width=200)
    assert out.exit_code == 0, out.output
    made = json.loads((tmp_path / "p.json").read_text())["protocol"]
    assert made["protocol"] == "weak labels" and made["stage"] == "predict"
    assert made["scales"] == [1.0] and made["flip"] is False and made["crf"] is False
    # which labels: the decoder's own record of its training split and pseudo masks (a crf folder here)
    assert made["labels"].startswith("image-level labels of split 'train' of ") and "pseudo masks of crf (" in (
        made["labels"])
    assert made["presets"] == "predict's defaults (WeCLIP's test script), given scales=1, flip=False"
    assert "post-processing: CRF off, scale 1, no flip, window whole image" in out.output
    # the defaults (scales 1, 0.75 and the flip) read as such: the label follows the record, not a constant
    run_predict(decoder, world, "val", tmp_path / "q", PredictConfig(), CPU)
    other = of_folder(tmp_path / "q")
    assert other.scales == (1.0, 0.75) and other.flip is True and other.presets.endswith("(WeCLIP's test script)")


def test_a_segment_folder_reads_zero_shot_with_its_window_and_threshold(world, tiny_spec, tmp_path):
    from vpltool.stages.segment import run_segment

    cfg = SegmentConfig.of(dense="naclip", templates=TEMPLATES, slide_crop=64, slide_stride=32, pamr_steps=0)
    run_segment(open_dataset(world, "val"), tmp_path / "s", tiny_spec, cfg, CPU)
    result, _ = run_eval(tmp_path / "s", json_out=tmp_path / "s.json")
    made = json.loads((tmp_path / "s.json").read_text())["protocol"]
    assert made == result["protocol"]
    assert made["protocol"] == "zero-shot" and made["labels"] is None and made["window"] == "64/32"
    assert made["background"].startswith("probability below 0.1") and made["refinement"] is None
    assert made["presets"] == ("--dense naclip's own (its reference's VOC21 config), given slide_crop=64, "
                               "slide_stride=32, pamr_steps=0")
    # a bare folder of the same masks says nothing of what made them
    bare = tmp_path / "bare"
    bare.mkdir()
    for png in (tmp_path / "s").glob("*.png"):
        (bare / png.name).write_bytes(png.read_bytes())
    plain, _ = run_eval(bare, data=world, split="val")
    assert plain["protocol"]["protocol"] == "unrecorded" and plain["protocol"]["post_processing"] == "not recorded"


def test_a_cam_folder_names_its_labels_and_the_exponent_eval_chose(features_dir, text_protos, tmp_path):
    from vpltool.stages.cam import run_cam

    run_cam(features_dir, text_protos, tmp_path / "c", runtime=RuntimeConfig(device="cpu"))
    result, _ = run_eval(tmp_path / "c")
    made = result["protocol"]
    assert made["protocol"] == "weak labels" and made["labels"].startswith("image-level labels of split 'train'")
    assert made["background"] == f"(1 - max CAM)^a, a={result['bg_exponent']:g} chosen by eval"
    assert made["refinement"] == "cam --refine caa" and made["presets"] == "cam's defaults (CLIP-ES)"


def _record(folder, stage, params):
    folder.mkdir()
    io.write_stage_record(folder, stage, params=params, inputs={}, count=0)
    return folder


def test_records_of_other_kinds_and_a_method_that_names_its_own_protocol(tmp_path):
    crf = of_folder(_record(tmp_path / "crf", "crf", {"no_crf": True, "bg_exponent": 2.0, "confidence": 0.95}))
    assert crf.protocol == "weak labels" and crf.crf is False and crf.background.startswith("(1 - max CAM)^2")
    assert crf.presets == "crf's defaults (CLIP-ES), given bg_exponent=2, no_crf=True"
    settings = {"prob_threshold": 0.2, "slide_crop": 0, "slide_stride": 112, "pamr_steps": 0}
    # a plugin method whose hooks record "protocol" (a bank of labelled supports) is read as it says
    own = of_folder(_record(tmp_path / "seg", "segment", {"dense": "plugin-x", "settings": settings,
                                                          "protocol": "support-assisted"}))
    assert own.protocol == "support-assisted" and own.window == "whole image"
    assert own.presets == "--dense plugin-x's, as recorded (the method is not installed here)"
    assert from_row(own.row()) == own and set(PROTOCOLS) >= {"unlabelled bank", "target-adapted"}
    assert of_folder(_record(tmp_path / "x", "extract", {})).protocol == "unrecorded"
    # a hand-edited field (settings as a string) leaves the score unlabelled, never a traceback in eval
    edited = of_folder(_record(tmp_path / "e", "segment", {"dense": "naclip", "settings": "whole"}))
    assert edited.protocol == "unrecorded" and edited.stage == "segment"
    # a text-supervised checkpoint's folder (segment --model pgseg:FILE): zero-shot, its family's window
    text = of_folder(_record(tmp_path / "t", "segment", {"method": "pgseg", "bg_thresh": 0.95, "slide_crop": 448,
                                                          "slide_stride": 224}))
    assert text.protocol == "zero-shot" and text.window == "448/224" and text.background == "score below 0.95"
    assert text.presets == "pgseg's zero-shot defaults (its configuration)"


def test_the_demo_report_prints_protocol_and_post_processing_columns(tmp_path):
    from rich.console import Console

    from vpltool.demo.report import format_report

    crf = of_folder(_record(tmp_path / "crf", "crf", {"bg_exponent": 1.0, "confidence": 0.95})).row()
    seg = of_folder(_record(tmp_path / "seg", "segment", {"dense": "naclip", "settings": {
        "prob_threshold": 0.1, "slide_crop": 224, "slide_stride": 112, "pamr_steps": 10}})).row()
    report = {"run": "r", "stages": [{"stage": "CRF pseudo masks (from vision CAMs)", "refine": "caa",
                                      "train": {"miou": 0.4, "protocol": crf}, "val": None}],
              "dense": [{"stage": "zero-shot segmentation, no labels (segment --dense)", "dense": "naclip",
                         "train": None, "val": {"miou": 0.3, "protocol": seg}}],
              "chance": {"train": {"random CAMs": 0.1, "all background": 0.1, "images": 3}}, "other_layers": []}
    console = Console(width=80, record=True)
    console.print(format_report(report))
    lines = console.export_text().splitlines()
    # each row on one line of a terminal's 80 columns: its figure and a key; the caption gives each key's protocol
    assert max(map(len, lines)) <= 80
    assert any("40.0" in ln and ln.split("│")[-2].strip() == "a" for ln in lines)
    assert any("30.0" in ln and ln.split("│")[-2].strip() == "b" for ln in lines)
    caption = " ".join(ln.strip() for ln in lines if not ln.startswith(("┏", "┃", "┡", "│", "├", "└", "╷", "╵")))
    assert "protocol a: weak labels: CRF on · scale 1 · no flip" in caption
    assert "protocol b: zero-shot: CRF off · scale 1 · no flip · 224/112 · PAMR 10" in caption

"""`demo-report`: the per-split table, the baselines and the contact sheets, on a partly built run folder."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image
from pseudo_runs import candidate  # tests/ is on sys.path

from vpltool import io
from vpltool.config import RuntimeConfig
from vpltool.demo.report import format_report, run_demo_report
from vpltool.io.marks import marked
from vpltool.stages.cam import run_cam
from vpltool.stages.eval import run_eval


@pytest.fixture(scope="module")
def run(features_dir, text_protos, tmp_path_factory):
    """RUN/features, RUN/cams_text and its metrics: the first stages only."""
    root = tmp_path_factory.mktemp("run")
    shutil.copytree(features_dir, root / "features")
    run_cam(root / "features", text_protos, root / "cams_text", runtime=RuntimeConfig(device="cpu"))
    run_eval(root / "cams_text", json_out=root / "metrics" / "cams_text.json")
    return root


def test_report_rows_baselines_and_sheet(run):
    report = run_demo_report(run)
    text, vision = report["stages"][0], report["stages"][1]
    assert text["train"]["miou"] == io.read_json(run / "metrics" / "cams_text.json")["miou"]
    assert text["val"] is None and vision["train"] is None  # not run: shown as —, never invented
    assert set(report["chance"]) == {"train"}  # no held-out features in this run
    chance = report["chance"]["train"]
    assert 0 < chance["all background"] < 1 and 0 < chance["random CAMs"] < 1
    assert report["sheets"] == [str(run / "contact_sheet.png")]
    with Image.open(run / "contact_sheet.png") as img:
        assert img.mode == "RGB" and img.height > 16 * 2  # tiles plus the class legend
    assert io.read_json(run / "metrics.json") == marked(report, "run-metrics")  # its kind first
    format_report(report)  # renders without the held-out columns' data


def test_compared_refinements_get_their_own_rows_and_the_choice_is_shown(run, tmp_path):
    """RUN/metrics/R/ (the Makefile's REFINES) adds rows named by refinement; the caption gives the decoder's masks."""
    from vpltool.demo.choose_pseudo import choose_pseudo

    compared = tmp_path / "run"
    shutil.copytree(run, compared)
    for refine, miou in (("caa+sgc", 0.5), ("none", 0.4)):
        io.write_json(compared / "metrics" / refine / "cams_text.json", {"miou": miou, "n_images": 3})
        candidate(compared, refine, miou, own="caa")  # the masks' records and their scores
    candidate(compared, "caa", 0.1, own="caa")  # the fixture's CAMs are caa
    choice = choose_pseudo(compared, ["caa", "caa+sgc", "none"], by="masks")
    report = run_demo_report(compared)
    text = [(r["refine"], r["train"]["miou"]) for r in report["stages"] if r["stage"] == "CAM, text prototypes"]
    assert text[0][0] == "caa" and text[1:] == [("caa+sgc", 0.5), ("none", 0.4)]
    assert not any(r["stage"].startswith("CRF masks from text") for r in report["stages"])  # none scored
    assert report["pseudo_choice"] == marked(choice, "pseudo-choice") and choice["chosen"] == "caa+sgc"
    decoder = next(r for r in report["stages"] if r["stage"] == "decoder prediction")
    assert decoder["refine"] == "caa+sgc"  # trained on the chosen masks
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(format_report(report))
    shown = console.export_text()
    assert "caa+sgc → decoder" in shown and "pseudo masks for the decoder: caa+sgc" in shown


def test_dense_rows_follow_the_pipeline_and_are_no_refinement(run, tmp_path):
    """RUN/metrics/dense/<method>/ (issue 35) adds the dense methods' rows; it is not a compared refinement."""
    dense = tmp_path / "run"
    shutil.copytree(run, dense)
    iou = {"background": 0.8, "circle": 0.2, "star": None, "square": 0.4}
    io.write_json(dense / "metrics" / "dense" / "naclip" / "segment_val.json", {"miou": 0.3, "n_images": 2,
                                                                               "iou": iou})
    io.write_json(dense / "metrics" / "dense" / "naclip" / "cams.json", {"miou": 0.25, "n_images": 3})
    report = run_demo_report(dense)
    assert not any(r["refine"] == "dense" for r in report["stages"])
    rows = {r["stage"]: r for r in report["dense"]}
    zero = rows["zero-shot segmentation, no labels (segment --dense)"]
    assert zero["val"]["miou"] == 0.3 and zero["train"] is None and zero["held_out"] == pytest.approx(0.3)
    assert rows["CAM, dense (cam --dense)"]["train"]["miou"] == 0.25
    assert "CRF masks from dense CAMs" not in rows  # not scored: no row
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(format_report(report))
    assert "--dense naclip" in console.export_text()


def test_each_sam_pseudo_rule_has_its_rows_and_can_be_the_decoders(run, tmp_path):
    """RUN/metrics[/R]/K/ (sam-pseudo's rule K: sam, sam3) adds K's row, one per refinement; K/ is no refinement;
    the row of the chosen R+K carries the arrow, and the caption what each rule's first folder was made with."""
    from rich.console import Console

    from vpltool.demo.choose_pseudo import choose_pseudo
    from vpltool.demo.report import RULE_STAGES

    rules = run / ".." / "rules"
    shutil.copytree(run, rules)
    for name, miou in (("caa", 0.30), ("caa+sam", 0.40), ("none", 0.20), ("none+sam3", 0.50)):
        candidate(rules, name, miou, own="caa")
    choice = choose_pseudo(rules, ["caa", "caa+sam", "none", "none+sam3"], by="masks")
    report = run_demo_report(rules)
    titles = {k: t for t, k in RULE_STAGES.items()}
    rows = [(r["stage"], r["refine"], r["train"]["miou"]) for r in report["stages"] if r["stage"] in RULE_STAGES]
    assert rows == [(titles["sam"], "caa", 0.40), (titles["sam3"], "none", 0.50)]
    refines = {r["refine"] for r in report["stages"] if r["stage"] != "decoder prediction"}
    assert refines == {"caa", "none"} and choice["chosen"] == "none+sam3"  # sam/, sam3/: no refinement's rows
    console = Console(width=240, record=True)
    console.print(format_report(report))
    shown = console.export_text()
    assert "none → decoder" in shown and "pseudo masks for the decoder: none+sam3" in shown
    assert report["sam"] == "+sam: --masks sam; +sam3: --masks sam3"  # the stand-ins record --masks alone
    # a real record: the merge, the start and a toy SAM whose record names the world it was trained on
    toy = tmp_path / "toy" / "model.safetensors"
    io.write_json(toy.with_suffix(".json"), {"world": {"seed": 20}})
    record = io.read_record(rules / "sam" / "pseudo" / "_stage.json")
    io.write_stage_record(rules / "sam" / "pseudo", "sam-pseudo", count=0, inputs=record["inputs"], params={
        "masks": "sam", "merge": "max-iou-imp2", "start": "crf", "sam_model": "toy", "sam_weights": str(toy)})
    note = run_demo_report(rules, overwrite=True)["sam"]
    assert note.startswith("+sam: --masks sam --merge max-iou-imp2 --start crf --sam-model toy (a toy trained on "
                           "world seed 20") and note.endswith("; +sam3: --masks sam3")


def test_sam3_rows_name_their_region_masks_and_the_toy_sam3s_world(run, tmp_path):
    """`make sam3-regions`' rows (RUN/metrics/dense/M@sam3/) are shown as the options that made them, and a toy
    SAM 3 of Hugging Face's layout (a folder, its model.json inside) names the world it was trained on."""
    from rich.console import Console

    from vpltool.demo.report import dense_options

    assert dense_options("corrclip") == "--dense corrclip"
    assert dense_options("ov-stitcher@sam3") == "--dense ov-stitcher --region-masks sam3"
    rows = tmp_path / "run"
    shutil.copytree(run, rows)
    io.write_json(rows / "metrics" / "dense" / "corrclip@sam3" / "segment_val.json",
                  {"miou": 0.3, "n_images": 2, "iou": {"background": 0.5, "circle": 0.1}})
    candidate(rows, "caa", 0.3, own="caa")
    candidate(rows, "caa+sam3", 0.4, own="caa")
    toy = tmp_path / "toy-sam3"
    toy.mkdir()
    io.write_json(toy / "model.json", {"world": {"seed": 20}})
    record = io.read_record(rows / "sam3" / "pseudo" / "_stage.json")
    io.write_stage_record(rows / "sam3" / "pseudo", "sam-pseudo", count=0, inputs=record["inputs"],
                          params={"masks": "sam3", "sam3_gate": 0.5, "sam_weights": str(toy)})
    report = run_demo_report(rows)
    assert report["sam"].startswith("+sam3: --masks sam3 --sam3-gate 0.5 (a toy trained on world seed 20")
    console = Console(width=240, record=True)
    console.print(format_report(report))
    assert "--dense corrclip --region-masks sam3" in console.export_text()


def test_a_sam3_pseudo_records_protocol_names_its_threshold_and_gate():
    """sam-pseudo --masks sam3 records no merge: its protocol names SAM 3's threshold and the CAM gate (it said
    "merged by None"); the automatic rule's still names its merge."""
    from vpltool.io.protocols import _sam_pseudo

    sam3 = _sam_pseudo({"masks": "sam3", "start": "crf", "sam3_threshold": 0.02, "sam3_gate": 0.0}, {})
    assert sam3.refinement == "sam3 instances of the labels above 0.02, CAM gate 0"
    assert _sam_pseudo({"masks": "sam", "merge": "max-iou-imp2"}, {}).refinement == "sam masks merged by max-iou-imp2"

"""What derives from the --dense spec table (vpltool.config.dense.DENSE_SPECS): --dense's help and the knob options,
each method's class-file set (the references' own files, bundled), and what a benchmark row names beside its number."""

from __future__ import annotations

import hashlib

import pytest
import typer

from vpltool.config.dense import DENSE_CHOICES, DENSE_SPECS, KNOB_METHODS, KNOBS
from vpltool.data.class_files import ASSETS, REFERENCE_SETS, read_class_file

# md5 of mc-lan/ProxyCLIP@e7b767f configs/cls_*.txt (copied byte for byte)
PROXYCLIP_MD5 = {"voc21": "ea6e671fbb6d61ac6ac45667ff030f69"}


def _command(name: str):
    from vpltool.cli import app

    return typer.main.get_command(app).commands[name]


def test_dense_help_names_every_method_of_the_spec_table():
    (dense,) = [p for p in _command("segment").params if p.name == "dense"]
    assert " | ".join(DENSE_CHOICES) in dense.help


@pytest.mark.parametrize("command", ["segment", "benchmark"])
def test_every_method_knob_is_an_option_made_from_its_spec_row(command):
    params = {p.name: p for p in _command(command).params}
    for field, knob in KNOBS.items():
        assert field in params, field
        assert knob.option.split("/")[0] in params[field].opts
        names = KNOB_METHODS[field]  # a knob two methods declare alike (--region-masks) names both
        shown = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        assert params[field].help.startswith(f"--dense {shown}: ")
        assert params[field].default is None  # the method's (or the preset's) value


def test_each_method_names_its_reference_s_class_file_set():
    from vpltool.config.benchmarks import BENCHMARK_PRESETS

    expected = {"naclip": "sclip", "sc-clip": "sclip", "cass": "sclip", "sclip": "sclip", "clearclip": "clearclip",
                "proxyclip": "proxyclip", "trident": "proxyclip", "corrclip": "corrclip", "ov-stitcher": "corrclip",
                "textregion": "proxyclip",
                "radseg": "proxyclip",  # RADSeg's five cls_*.txt are ProxyCLIP's bytes (radseg_parity.py checks)
                "sam3": "activesam", "activesam": "activesam"}  # ActiveSAM's cls_*.txt, its SAM 3 row's too
    assert {m: REFERENCE_SETS[m] for m in expected} == expected
    for spec in DENSE_SPECS.values():  # a named set is a folder of files
        assert spec.class_files is None or (ASSETS / spec.class_files / "voc21.txt").is_file()
    for m, p in BENCHMARK_PRESETS.items():  # each preset asks its reference's queries by default
        assert p.settings("coco-object")["class_file"] == f"{expected.get(m, 'clearclip')}:coco-object", m


def test_a_knob_value_that_reads_a_shared_option_makes_it_live():
    from vpltool.config import SegmentConfig

    knob, merge, threshold = DENSE_SPECS["corrclip"].knobs  # --region-masks sam reads --sam-model / --sam-weights
    assert knob.uses == ("sam_model", "sam_weights") and merge.field == "query_merge" and not merge.uses
    assert threshold.field == "confidence_threshold" and not threshold.uses  # SAM 3's regions' (and sam3's)
    assert "sam_weights" not in SegmentConfig.of(dense="corrclip", region_masks="sam").inert()
    assert SegmentConfig.of(dense="corrclip", region_masks="masks/").inert()["sam_weights"] == (
        "without --region-masks sam or sam2 or sam3")
    assert "sam_weights" in SegmentConfig(dense="naclip").inert()  # SAM's options without a method that reads them


def test_a_knob_two_methods_read_is_one_option_naming_both():
    from vpltool.config import SegmentConfig
    from vpltool.config.dense import KNOB_METHODS
    from vpltool.errors import VplWarning

    assert DENSE_SPECS["corrclip"].knobs == DENSE_SPECS["ov-stitcher"].knobs  # declared alike: one option
    assert KNOB_METHODS["region_masks"] == ("corrclip", "ov-stitcher", "textregion")
    with pytest.warns(VplWarning, match="without --dense corrclip or ov-stitcher or textregion"):
        SegmentConfig.of(dense="naclip", region_masks="masks/")
    cfg = SegmentConfig.of(dense="ov-stitcher", region_masks="masks/")
    assert cfg.knobs.region_masks == "masks/" and "region_masks" not in cfg.inert()
    assert cfg.inert()["sam_model"] == "without --region-masks sam or sam2 or sam3"
    params = {p.name: p for p in _command("segment").params}
    assert params["region_masks"].help.startswith("--dense corrclip, ov-stitcher and textregion: ")


def test_the_proxyclip_set_is_the_references_files():
    folder = ASSETS / "proxyclip"
    names = sorted(p.stem for p in folder.glob("*.txt"))
    assert names == sorted(["voc21", "voc20", "context60", "context59", "coco-object", "coco-stuff", "cityscapes",
                            "ade20k", "ade847", "context459"])
    assert hashlib.md5((folder / "voc21.txt").read_bytes()).hexdigest() == PROXYCLIP_MD5["voc21"]
    voc21 = read_class_file("proxyclip:voc21")
    assert len(voc21) == 21 and len(voc21[0]) == 26 and voc21[15] == ["person"]  # one query, the '; ' reading
    assert len(read_class_file("proxyclip:ade847")) == 847 and len(read_class_file("proxyclip:context459")) == 459
    # the same class counts as the SCLIP set on the eight benchmarks
    for b in ("voc21", "voc20", "context60", "context59", "coco-object", "coco-stuff", "cityscapes", "ade20k"):
        assert len(read_class_file(f"proxyclip:{b}")) == len(read_class_file(f"sclip:{b}")), b


def test_a_benchmark_row_names_what_makes_its_number():
    from vpltool.stages.benchmark import format_row, made_with, preset_config

    made = made_with(preset_config("trident", "voc21"))
    assert made == {"class_file": "proxyclip:voc21", "short_side": 448, "window": "336/224", "threshold": 0.2,
                    "logit_scale": 40.0}
    assert made_with(preset_config("proxyclip", "ade20k"))["class_file"] == "proxyclip:ade20k"
    assert made_with(preset_config("naclip", "voc21", {"logit_scale": 50.0}))["window"] == "whole image"
    table = {"method": "trident", "columns": ["voc21"], "titles": ["VOC21"], "miou": {"voc21": 0.5}, "mean": 0.5,
             "made_with": {"voc21": made}}
    assert format_row(table)[2] == ("  VOC21: class file proxyclip:voc21, short side 448, window 336/224, "
                                    "threshold 0.2, logit scale 40")


def test_a_runner_renders_its_own_parity_section_with_no_code_in_the_page_generator(tmp_path):
    """docs/parity.md's section of a method's runner comes from its JSON's ``page`` or its runner's ``page(d)``:
    docgen/parity_page.py names no method added since (a new method touches its runner, not the generator)."""
    import shutil
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "docgen"))
    import parity_page

    source = (root / "docgen" / "parity_page.py").read_text().lower()
    assert "talk2dino" not in source and "corrclip" not in source
    for name in ("talk2dino_parity.json", "corrclip_parity.json"):
        shutil.copy(root / "parity" / "results" / name, tmp_path / name)
    page = parity_page.render(tmp_path)
    import json

    loss = json.loads((tmp_path / "talk2dino_parity.json").read_text())["train"]["loss_abs_diff"]  # its recorded value
    assert "## Talk2DINO (the `talk2dino` family)" in page
    assert f"| training: loss_abs_diff | {parity_page.num(loss)} |" in page
    assert "## CorrCLIP" in page and page.count("Every bar met: yes.") == 2


def test_a_method_that_needs_a_per_image_input_is_refused_by_cam_and_predict_naming_it():
    # TextRegion's region masks come per photo through segment's --region-masks; cam and predict take none, so
    # their line names the input and segment (it once said "pass --region-masks", an option they do not have)
    from vpltool.config.decoder import PredictConfig
    from vpltool.config.dense import PLAIN_METHODS, segment_only
    from vpltool.errors import VplError

    assert "textregion" not in PLAIN_METHODS and "naclip" in PLAIN_METHODS
    assert segment_only("naclip", "cam") is None
    why = segment_only("textregion", "cam")
    assert why.startswith("cam --dense textregion: the method needs region masks per photo (segment --region-masks), "
                          "which "
                          "only `vpltool segment` takes") and "--dense textregion" not in why.split("(")[-1]
    with pytest.raises(VplError, match=r"^predict --dense textregion: the method needs region masks"):
        PredictConfig(dense="textregion", classes="a,b")

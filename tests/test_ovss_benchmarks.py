"""The eight open-vocabulary benchmarks: layouts, label maps, the references' class files, presets, and the table
command on the miniature layouts (tiny random CLIP, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vpltool.config.benchmarks import BENCHMARK_NAMES, BENCHMARK_PRESETS
from vpltool.data import open_dataset
from vpltool.data.benchmarks import BENCHMARK_ORDER, BENCHMARKS
from vpltool.data.class_files import class_file_queries, read_class_file
from vpltool.data.miniature import make_miniature, make_miniatures
from vpltool.errors import VplError

# classes each benchmark scores (the papers' counts), and vpltool's class list length (a 'background' 0 added
# where the benchmark has none)
COUNTS = {"voc21": (21, 21), "context60": (60, 60), "coco-object": (81, 81), "voc20": (20, 21),
          "context59": (59, 60), "coco-stuff": (171, 172), "cityscapes": (19, 20), "ade20k": (150, 151)}


@pytest.fixture(scope="module")
def minis(tmp_path_factory):
    return make_miniatures(tmp_path_factory.mktemp("benchmarks"))


def mmseg_labels(name: str, stored: np.ndarray) -> np.ndarray:
    """What mmseg's LoadAnnotations gives the references (reduce_zero_label as their configs set it), written
    out here independently of vpltool: 0 -> 255, v -> v - 1, 255 stays."""
    out = stored.astype(np.int64)
    if BENCHMARKS[name].reduce_zero_label:
        out = out - 1
        out[stored == 0] = 255
        out[stored == 255] = 255
    return out


@pytest.mark.parametrize("name", BENCHMARK_ORDER)
def test_each_miniature_opens_with_the_benchmarks_classes_and_label_map(minis, name):
    ds = open_dataset(f"{name}={minis[name]}")
    n_scored, n_vpl = COUNTS[name]
    assert len(BENCHMARKS[name].classes) == n_scored and len(ds.classes) == n_vpl
    assert ds.classes[0] == "background" and ds.kind == name and len(ds.items) == 3
    lut = np.asarray(ds.gt_map)
    for item in ds.items:
        stored = np.asarray(Image.open(item.gt))
        mine = lut[stored]
        ref = mmseg_labels(name, stored)
        # vpltool's label = mmseg's label + 1 where the benchmark has no background of its own; 255 = ignore in both
        shift = 0 if BENCHMARKS[name].has_background else 1
        assert ((mine == 255) == (ref == 255)).all()
        assert (mine[ref != 255] == ref[ref != 255] + shift).all()
        assert (mine >= 0).all()


def test_a_root_of_another_layout_is_one_line_naming_what_is_missing(minis):
    with pytest.raises(VplError, match=r"not a ade20k root .*no images/validation, annotations/validation"):
        open_dataset(f"ade20k={minis['voc21']}")
    with pytest.raises(VplError, match="unknown benchmark 'voc99'"):
        open_dataset(f"voc99={minis['voc21']}")


def test_eval_scores_a_benchmark_through_its_label_map(minis, tmp_path):
    from vpltool.stages.eval import evaluate_masks

    ds = open_dataset(f"cityscapes={minis['cityscapes']}")
    for item in ds.items:  # predictions = the ground truth as vpltool reads it: mIoU 1
        labels = np.asarray(ds.gt_map)[np.asarray(Image.open(item.gt))].astype(np.uint8)
        Image.fromarray(np.where(labels == 255, 1, labels).astype(np.uint8)).save(tmp_path / f"{item.id}.png")
    gt = {it.id: it.gt for it in ds.items}
    mapped = evaluate_masks(tmp_path, gt, ds.classes, gt, gt_map=ds.gt_map)
    assert mapped["miou"] == pytest.approx(1.0)
    assert mapped["iou"]["background"] is None  # Cityscapes has no background: never in its GT
    raw = evaluate_masks(tmp_path, gt, ds.classes, gt)  # train ids read as labels: off by one class
    assert raw["miou"] < 0.5


def test_bundled_class_files_query_voc_as_the_references_do():
    fg, bg = class_file_queries("sclip:voc21", 20)
    assert len(bg) == 26 and bg[0] == "sky" and fg[3] == ["ship"] and fg[10] == ["table"]
    assert len(fg[14]) == 7 and fg[19][0] == "television monitor"
    fg, bg = class_file_queries("clearclip:voc21", 20)
    assert bg == ["background"] and fg[14] == ["person"]
    fg, bg = class_file_queries("naclip:voc20", 20, background_line=False)  # SCLIP's files
    assert bg == [] and fg[3] == ["ship"]
    for name in BENCHMARK_NAMES:  # every bundled file has a line per class (plus the background's)
        lines = read_class_file(f"sclip:{name}")
        assert len(lines) in (len(BENCHMARKS[name].classes), len(BENCHMARKS[name].classes) - 1)


@pytest.mark.parametrize("text, message", [
    ("a\n\nb\n", "line 2 is empty"), ("a\nb,\n", "line 2 has an empty query"), ("a\n\n\nb\n\n", "line 2 is empty"),
])
def test_a_class_file_with_an_empty_line_or_query_is_refused(tmp_path, text, message):
    path = tmp_path / "cls.txt"
    path.write_text(text)
    with pytest.raises(VplError, match=message):
        read_class_file(path)


def test_a_class_file_of_another_length_is_refused(tmp_path):
    path = tmp_path / "cls.txt"
    path.write_text("a\nb\nc\n")
    with pytest.raises(VplError, match="3 lines for 5 classes"):
        class_file_queries(path, 5)


def test_presets_name_their_source_and_options_override_them():
    from vpltool.stages.benchmark import preset_config

    cfg = preset_config("sclip", "voc21")
    assert (cfg.logit_scale, cfg.prob_threshold, cfg.area_threshold, cfg.short_side) == (65.0, 0.1, 0.1, 336)
    assert preset_config("sclip", "coco-stuff").short_side == 448
    assert preset_config("clearclip", "cityscapes").slide_crop == 224
    assert preset_config("naclip", "voc21", {"prob_threshold": 0.3}).prob_threshold == 0.3
    assert BENCHMARK_PRESETS["sclip"].sources("voc21")["logit_scale"] == "configs/cfg_voc21.py:6"
    from vpltool.config.dense import DENSE_CHOICES

    if "trident" not in DENSE_CHOICES:  # a method another branch adds: listed, refused in one line until then
        with pytest.raises(VplError, match="not in this vpltool"):
            preset_config("trident", "voc21")


def test_clearclip_shipped_mixing_is_an_option():
    from vpltool.config import SegmentConfig
    from vpltool.stages.segment import dense_mixing_of

    m = dense_mixing_of(SegmentConfig(dense="clearclip", attention="qk"))  # model_type vanilla, ignore_residual
    assert (m.attention, m.residual, m.ffn, m.pos_interpolation) == ("qk", False, False, "bicubic-dino")
    m = dense_mixing_of(SegmentConfig(dense="maskclip", residual=False))
    assert (m.attention, m.residual, m.ffn) == ("identity", False, False)
    assert dense_mixing_of(SegmentConfig(dense="naclip")) == "naclip"


def test_segment_with_a_class_file_writes_the_datasets_classes(minis, tiny_spec, tmp_path):
    from vpltool.config import RuntimeConfig, SegmentConfig
    from vpltool.stages.segment import run_segment

    ds = open_dataset(f"voc21={minis['voc21']}")
    cfg = SegmentConfig(dense="sclip", class_file="sclip:voc21", short_side=32, slide_crop=0)
    run_segment(ds, tmp_path / "seg", tiny_spec, cfg, RuntimeConfig(device="cpu"))
    record = json.loads((tmp_path / "seg" / "_stage.json").read_text())
    assert record["classes"] == list(ds.classes)  # scored as VOC's classes ('boat'), queried as 'ship'
    assert record["params"]["class_queries"][3] == ["ship"] and len(record["params"]["background_words"]) == 26


@pytest.mark.slow  # ~40 s on two shared cores: `make test` runs it, `make test-fast` not
def test_the_table_command_prints_eight_columns_and_a_mean(tmp_path):
    """`make test`'s check: `vpltool benchmark` on the eight miniature layouts, tiny random CLIP, CPU."""
    from typer.testing import CliRunner

    from vpltool.cli import app

    roots = {n: make_miniature(n, tmp_path / "mini") for n in BENCHMARK_ORDER}
    args = ["benchmark", "naclip", *[a for n, r in roots.items() for a in ("--root", f"{n}={r}")], "-o",
            str(tmp_path / "out"), "--model", "vpl-test-vit", "--pretrained", "none", "--device", "cpu",
            "--short-side", "32", "--slide-crop", "0", "--pamr-steps", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    head, row = [ln for ln in r.output.splitlines() if ln.startswith(("method", "naclip"))][-2:]
    assert head.split()[1:] == ["VOC21", "Context60", "Object", "VOC20", "Context59", "Stuff", "City", "ADE", "Avg",
                                "protocol"]
    assert row.split()[-1] == "zero-shot"  # each figure's protocol, read from its folder's records
    cells = [float(c) for c in row.split()[1:-1]]
    assert len(cells) == 9 and all(0 <= c <= 100 for c in cells)
    assert cells[-1] == pytest.approx(sum(cells[:-1]) / 8, abs=0.06)
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["columns"] == list(BENCHMARK_ORDER) and all(v is not None for v in table["miou"].values())
    assert all((tmp_path / "out" / f"{n}.json").is_file() for n in BENCHMARK_ORDER)
    # each benchmark's number with what made it: NACLIP's reference's class file, the options given over its preset
    assert table["made_with"]["voc21"] == {"class_file": "sclip:voc21", "short_side": 32, "window": "whole image",
                                           "threshold": 0.1, "logit_scale": 40.0}
    assert "  VOC21: class file sclip:voc21, short side 32, window whole image, threshold 0.1, logit scale 40" in (
        r.output)
    # and its protocol and post-processing, the settings' source its reference's config for that benchmark
    made = table["protocol"]["voc21"]
    assert made["protocol"] == "zero-shot" and made["crf"] is False and made["scales"] == [1.0]
    assert made["presets"] == "benchmark presets: sinahmr/NACLIP configs/cfg_voc21.py"
    assert ("    zero-shot; post-processing: CRF off, scale 1, no flip, window whole image, background probability "
            "below 0.1 or a background word") in r.output
    assert json.loads((tmp_path / "out" / "voc21.json").read_text())["protocol"]["window"] == "whole image"
    # resumable: a second run segments nothing and prints the same row
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0 and row in r2.output


def test_the_docs_presets_table_is_the_presets():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("benchmark_presets", root / "docgen" / "benchmark_presets.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    page = (root / "docs" / "benchmarks.md").read_text()
    assert gen.render(page) == page, "docs/benchmarks.md is out of date: run docgen/benchmark_presets.py"


def test_a_bad_class_file_for_any_benchmark_fails_before_the_first_is_segmented(minis, tiny_spec, tmp_path):
    from vpltool.stages.benchmark import run_benchmark

    bad = tmp_path / "cls.txt"
    bad.write_text("".join(f"class {i}\n" for i in range(21)))  # right for VOC21, 21 lines for ADE20K's 150
    with pytest.raises(VplError, match="21 lines for 150 classes"):
        run_benchmark("naclip", {"ade20k": minis["ade20k"]}, tmp_path / "out", tiny_spec, {"class_file": str(bad)})
    # one file for several benchmarks is refused (VOC20 would get VOC21's background line); a set name is not
    with pytest.raises(VplError, match="one file for 2 benchmarks"):
        run_benchmark("naclip", {"voc21": minis["voc21"], "voc20": minis["voc20"]}, tmp_path / "out", tiny_spec,
                      {"class_file": "sclip:voc21"})
    assert not (tmp_path / "out").exists()
    from vpltool.stages.benchmark import preset_config

    assert preset_config("naclip", "voc20", {"class_file": "sclip"}).class_file == "sclip:voc20"
    assert preset_config("naclip", "voc21", {"class_file": "clearclip"}).class_file == "clearclip:voc21"


def test_background_words_stay_out_of_a_benchmark_without_background(minis):
    from vpltool.config import SegmentConfig
    from vpltool.stages.segment import resolve_queries, scored_background

    ade, voc = open_dataset(f"ade20k={minis['ade20k']}"), open_dataset(f"voc21={minis['voc21']}")
    assert not scored_background(ade) and scored_background(voc)
    _, _, words = resolve_queries(list(ade.classes[1:]), SegmentConfig(), scored_background(ade))
    assert words == []
    _, _, words = resolve_queries(list(voc.classes[1:]), SegmentConfig(), scored_background(voc))
    assert len(words) > 0  # VOC21 scores its background: CLIP-ES's words


@pytest.mark.slow  # ~40 s on two shared cores: `make test` runs it, `make test-fast` not
def test_several_methods_print_one_row_each(minis, tmp_path):
    from typer.testing import CliRunner

    from vpltool.cli import app

    args = ["benchmark", "sclip,clearclip", "--root", f"voc20={minis['voc20']}", "--root",
            f"coco-object={minis['coco-object']}", "-o", str(tmp_path / "out"), "--model", "vpl-test-vit",
            "--pretrained", "none", "--device", "cpu", "--short-side", "32", "--slide-crop", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.output.splitlines() if ln.startswith(("method", "sclip", "clearclip"))]
    assert [row[0] for row in rows] == ["method", "sclip", "clearclip"]
    assert rows[0][1:] == ["Object", "VOC20", "Avg", "protocol"]
    for m in ("sclip", "clearclip"):
        table = json.loads((tmp_path / "out" / m / "table.json").read_text())
        assert table["settings"]["voc20"]["class_file"] == f"{m}:voc20"


@pytest.mark.slow  # ~40 s on two shared cores: `make test` runs it, `make test-fast` not
def test_two_shards_complete_the_table(minis, tmp_path):
    """--shard 0/2 leaves each benchmark half done (not scored: '-'); --shard 1/2 completes and scores them."""
    from typer.testing import CliRunner

    from vpltool.cli import app

    base = ["benchmark", "naclip", "--root", f"voc21={minis['voc21']}", "--root", f"ade20k={minis['ade20k']}",
            "-o", str(tmp_path / "out"), "--model", "vpl-test-vit", "--pretrained", "none", "--device", "cpu",
            "--short-side", "32", "--slide-crop", "0", "--pamr-steps", "0"]
    first = CliRunner().invoke(app, [*base, "--shard", "0/2"])
    assert first.exit_code == 0, first.output
    row = next(ln for ln in first.output.splitlines() if ln.startswith("naclip")).split()
    assert row[1:] == ["-", "-", "-", "-"] and not (tmp_path / "out" / "table.json").exists()
    second = CliRunner().invoke(app, [*base, "--shard", "1/2"])
    assert second.exit_code == 0, second.output
    row = next(ln for ln in second.output.splitlines() if ln.startswith("naclip")).split()
    assert "-" not in row and (tmp_path / "out" / "table.json").is_file()

"""`vpltool report`: the HTML report of a tiny run folder, its figures against `eval`'s, bad input, and the page
itself in headless Chromium (skipped, with the reason, where no browser can be had)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from chromium import chromium, wait_for
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.config import (
    CamConfig,
    CrfConfig,
    DecoderConfig,
    LearnPrototypesConfig,
    PredictConfig,
    ReportConfig,
    RuntimeConfig,
)
from vpltool.data import open_recorded
from vpltool.demo.report import run_demo_report
from vpltool.stages.cam import run_cam
from vpltool.stages.crf import run_crf
from vpltool.stages.eval import run_eval
from vpltool.stages.learn_prototypes import run_learn_prototypes
from vpltool.stages.predict import run_predict
from vpltool.stages.report import run_report
from vpltool.stages.train_decoder import run_train_decoder

CPU = RuntimeConfig(device="cpu", workers=1)
TINY_DECODER = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=4, checkpoint_every=2,
                             log_every=1, warmup_iters=2, lr=0.05)
SCORED = ("cams_text", "cams_vision", "pseudo", "pred_val")


@pytest.fixture(scope="module")
def tiny_run(features_dir, text_protos, tmp_path_factory) -> Path:
    """A whole run of the 6+3-scene world, as `make demo` lays it out: CAMs (text, with CAA and --save-debug;
    vision), CRF masks, a 4-iteration decoder, its val predictions, eval's metrics and demo-report's table."""
    root = tmp_path_factory.mktemp("run")
    shutil.copytree(features_dir, root / "features")
    caa = CamConfig(refine="caa")
    run_cam(root / "features", text_protos, root / "cams_text", caa, CPU, debug=root / "cams_text_debug")
    vision = root / "vision_prototypes.safetensors"
    run_learn_prototypes(root / "features", root / "cams_text", text_protos, vision, LearnPrototypesConfig(iters=2),
                         CPU)
    run_cam(root / "features", vision, root / "cams_vision", caa, CPU)
    run_crf(root / "cams_vision", root / "pseudo", CrfConfig(), CPU)
    run_train_decoder(root / "pseudo", vision, root / "decoder", TINY_DECODER, CPU)
    run_predict(root / "decoder" / "decoder.safetensors", None, "val", root / "pred_val",
                PredictConfig(scales=(1.0,), flip=False), CPU)
    for name in SCORED:
        run_eval(root / name, json_out=root / "metrics" / f"{name}.json")
    run_demo_report(root)
    return root


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    """The report of the tiny run (in a folder of its own: the run stays read-only)."""
    out = tmp_path_factory.mktemp("report") / "report"
    return run_report(tiny_run, out, ReportConfig(page_size=4), workers=1)


def page_rows(index: Path) -> list[list]:
    """The rows as the page gets them: the arguments of every ``VPL.addRows(split, rows)`` in its data files."""
    rows: list[list] = []
    for script in sorted((index.parent / "data").glob("rows-*.js")):
        split, data = re.fullmatch(r"VPL\.addRows\((\d+),(.*)\);\n", script.read_text(), re.S).groups()
        while len(rows) <= int(split):
            rows.append([])
        rows[int(split)] += json.loads(data)
    return rows


def page_meta(index: Path) -> dict:
    text = (index.parent / "data" / "meta.js").read_text()
    return json.loads(re.match(r"window\.VPL = \{meta: (.*), rows: ", text, re.S).group(1))


# --------------------------------------------------------------------------------------------- figures
def test_per_image_iou_agrees_with_eval(tiny_run, report, tmp_path):
    """Each row's IoU per stage is eval's own per-image figure (`eval --per-image`), and each column's mIoU over
    the rows is eval's mIoU (metrics/<folder>.json): for the decoder, the masks and the CAMs."""
    meta, rows = page_meta(report.index), page_rows(report.index)
    for s, split in enumerate(meta["splits"]):
        for j, column in enumerate(split["columns"]):
            per_image = tmp_path / f"{column['name']}.json"
            result = CliRunner().invoke(app, ["eval", str(tiny_run / column["name"]), "--per-image", str(per_image)])
            assert result.exit_code == 0, result.output
            images = io.read_json(per_image)["images"]
            shown = {row[1]: row[7][j] for row in rows[s]}
            assert set(shown) == set(images)
            for item, figures in images.items():
                assert shown[item] == pytest.approx(figures["miou"], abs=1e-6), (column["name"], item)
            metrics = io.read_json(tiny_run / "metrics" / f"{column['name']}.json")
            assert column["miou_here"] == pytest.approx(metrics["miou"], abs=1e-12)
            assert column["metrics_miou"] == metrics["miou"]
    assert {c["name"] for sp in meta["splits"] for c in sp["columns"]} == set(SCORED)


def test_layout_and_stage_table(tiny_run, report):
    """Splits, columns, pairs and the debug folder discovered from the records; the stage table is metrics.json's."""
    meta = page_meta(report.index)
    train, val = meta["splits"]
    assert (train["name"], train["n"], val["name"], val["n"]) == ("train", 6, "val", 3)
    assert [c["name"] for c in train["columns"]] == ["cams_text", "cams_vision", "pseudo"]
    assert [c["name"] for c in val["columns"]] == ["pred_val"]
    assert train["pairs"] == [["cams_text", "cams_vision"]]
    text, vision, pseudo = train["columns"]
    assert (text["boxes"], text["debug"], vision["boxes"]) == ("saved", "cams_text_debug", "not saved")
    assert pseudo["made_from"] == "cams_vision"
    html = report.index.read_text()
    summary = io.read_json(tiny_run / "metrics.json")
    decoder = next(r for r in summary["stages"] if r["stage"] == "decoder prediction")
    assert f"{100 * decoder['val']['miou']:.1f}" in html
    assert f"{100 * summary['chance']['train']['all background']:.1f}" in html
    # each stage's protocol and post-processing beside its figure: the predictions were made at one scale, no flip
    assert "<th>protocol · post-processing</th>" in html
    assert "<td>weak labels · CRF off · scale 1 · no flip · whole image</td>" in html
    assert "<td>weak labels · CRF on · scale 1 · no flip</td>" in html  # the CRF masks
    masks = io.read_json(tiny_run / "metrics" / "pseudo.json")  # per-class precision / recall under each IoU
    shown = re.findall(r'<small class="pr"[^>]*>([^<]*)</small>', html)
    assert [f"{100 * masks['precision'][c]:.1f} / {100 * masks['recall'][c]:.1f}" for c in masks["classes"]
            if masks["precision"][c] is not None and masks["recall"][c] is not None][0] in shown
    assert io.read_record(report.index.parent / io.STAGE_RECORD)["stage"] == "report"
    detail = report.index.parent / "d" / "0" / "0.js"
    data = json.loads(re.fullmatch(r"VPL\.detailLoaded\(0,0,(.*)\);\n", detail.read_text(), re.S).group(1))
    boxes = data["cams"]["cams_text"]["boxes"]
    assert boxes["rows"] and all(len(b) == 5 for b in boxes["rows"])  # CAA's boxes, read from the debug folder


def test_an_eval_json_without_precision_and_recall_still_renders(tiny_run, tmp_path):
    """eval JSONs written before issue 37 have no precision or recall: their row shows IoU alone."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    scored = run / "metrics" / "cams_text.json"
    io.write_json(scored, {k: v for k, v in io.read_json(scored).items() if k not in ("precision", "recall")})
    html = run_report(run, tmp_path / "report", ReportConfig(page_size=4), workers=1).index.read_text()
    assert "IoU % per class" in html and 'class="pr"' in html  # the other rows keep theirs


def test_any_run_folder_and_rerun(tiny_run, tmp_path):
    """A run of the first stages only, with an extra CAM folder under a new name: every folder becomes a column,
    nothing is required; a second report replaces the first."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("features", "cams_text"):
        shutil.copytree(tiny_run / name, run / name)
    shutil.copytree(tiny_run / "cams_text", run / "cams_text_sgc")  # e.g. SSR's caa+sgc CAMs, whatever the name
    first = run_report(run, workers=1)
    assert first.index == run / "report" / "index.html" and first.columns == {"train": ["cams_text",
                                                                                       "cams_text_sgc"]}
    assert "No <code>metrics.json</code>" in first.index.read_text()
    (run / "report" / "stale.txt").write_text("from before")
    again = run_report(run, workers=1)
    assert again.index.is_file() and not (run / "report" / "stale.txt").exists()
    assert not list(run.glob(".report.*"))  # no staging folder left behind


def test_bad_input_one_line_exit_2(tiny_run, world, tmp_path):
    """Not a run, a run whose world is gone, an output inside what the report reads: one line, exit 2, nothing
    written."""
    gone = tmp_path / "gone"
    shutil.copytree(tiny_run / "features", gone / "features")
    record = io.read_json(gone / "features" / io.STAGE_RECORD)
    record["inputs"]["dataset"]["root"] = str(tmp_path / "moved-world")
    io.write_json(gone / "features" / io.STAGE_RECORD, io.seal(record))  # as its world moved: sealed again
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    cases = [
        ([str(tmp_path / "nothing")], "not a folder"),
        ([str(world)], "not a vpltool run"),
        ([str(gone)], "is gone"),
        ([str(tiny_run), "-o", str(tiny_run / "cams_text" / "report")], "which this report reads"),
        ([str(tiny_run), "-o", str(tiny_run / "metrics")], "which this report reads"),
        ([str(tiny_run), "-o", str(tiny_run)], "is the run folder this report reads"),
        ([str(tiny_run), "-o", str(Path(open_recorded(tiny_run / "features").items[0].image).parent / "r")],
         "the dataset's folder"),
        ([str(tiny_run), "-o", str(user)], "made by no vpltool stage"),
    ]
    for args, words in cases:
        result = CliRunner().invoke(app, ["report", *args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and words in result.output.replace("\n", ""), (args, result.output)
    assert not (tiny_run / "cams_text" / "report").exists() and not (gone / "report").exists()
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]


def test_cli_writes_the_report(tiny_run, tmp_path):
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["report", str(tiny_run), "-o", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "9 images (train 6, val 3)" in result.output and (out / "index.html").is_file()
    assert len(list((out / "t").rglob("*.webp"))) == 9


def test_the_default_output_is_the_run_s_report_folder(tiny_run, tmp_path):
    """Without -o the report goes to RUN/report: inside the run, beside the stage folders it reads (not in them)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(app, ["report", str(run), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (run / "report" / "index.html").is_file()


# --------------------------------------------------------------------------------------------- the page, in Chromium
browser = pytest.fixture(chromium)
_wait = wait_for


def _shown(chrome) -> list[tuple[str, str]]:
    return chrome.execute_script("return Array.from(document.querySelectorAll('#rows tbody tr')).map(tr => "
                                 "[tr.dataset.id, tr.dataset.row]);")


def test_page_in_chromium(tiny_run, report, browser, tmp_path):
    """The page loads with no console error and the right rows; sorting by the decoder's IoU puts eval's worst
    image first; filtering by a class shows only its images; a detail view opens and its images load."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(report.index.as_uri())
    _wait(browser, "return document.getElementById('count').dataset.total")
    train = open_recorded(tiny_run / "features")
    count = browser.find_element(By.ID, "count")
    assert count.get_attribute("data-total") == str(len(train.items)) == count.get_attribute("data-shown")
    assert len(_shown(browser)) == 4  # page size 4 of 6 rows
    assert browser.find_element(By.ID, "page-info").text == "page 1 of 2"
    # every thumbnail in view decodes (file:// paths, WebP)
    _wait(browser, "return Array.from(document.querySelectorAll('#rows img')).slice(0, 4).every(i => i.complete && "
                   "i.naturalWidth > 0)")
    browser.save_screenshot(str(tmp_path / "table.png"))

    # the change from text to vision CAM: most improved by VPL first (eval's figures for both folders)
    per_cam = {}
    for name in ("cams_text", "cams_vision"):
        run_eval(tiny_run / name, per_image_out=tmp_path / f"{name}.json")
        per_cam[name] = {i: r["miou"] for i, r in io.read_json(tmp_path / f"{name}.json")["images"].items()}
    change = {i: per_cam["cams_vision"][i] - per_cam["cams_text"][i] for i in per_cam["cams_text"]}
    browser.find_element(By.CSS_SELECTOR, "th[data-sort='pair:0']").click()
    assert change[_shown(browser)[0][0]] == pytest.approx(max(change.values()), abs=1e-5)

    # sort by the decoder's IoU on val: eval's worst image first, then descending: its best first
    browser.find_element(By.CSS_SELECTOR, "#split-tabs button[data-split='1']").click()
    per_image = tmp_path / "pred_val.json"
    run_eval(tiny_run / "pred_val", per_image_out=per_image)
    figures = {i: r["miou"] for i, r in io.read_json(per_image)["images"].items()}
    browser.find_element(By.CSS_SELECTOR, "th[data-sort='col:0']").click()
    first = _shown(browser)[0][0]
    assert figures[first] == min(figures.values())
    browser.find_element(By.CSS_SELECTOR, "th[data-sort='col:0']").click()
    assert figures[_shown(browser)[0][0]] == max(figures.values())
    shown_iou = browser.find_element(By.CSS_SELECTOR, "#rows tbody tr .iou[data-col='pred_val']").text
    assert shown_iou == f"{100 * max(figures.values()):.1f}"

    # filter the training split by a class that some images have and others lack
    browser.find_element(By.CSS_SELECTOR, "#split-tabs button[data-split='0']").click()
    counts = {c: sum(c in it.labels for it in train.items) for c in range(1, len(train.classes))}
    cls = next(c for c, n in counts.items() if 0 < n < len(train.items))
    Select(browser.find_element(By.ID, "class-filter")).select_by_value(str(cls))
    with_class = {it.id for it in train.items if cls in it.labels}
    page = {i for i, _ in _shown(browser)}
    assert page <= with_class and len(page) == min(4, len(with_class))
    assert browser.find_element(By.ID, "count").get_attribute("data-shown") == str(len(with_class))
    Select(browser.find_element(By.ID, "page-size")).select_by_value("25")
    assert {i for i, _ in _shown(browser)} == with_class

    # the detail view of the first image shown: its images load, one CAM per label and CAM folder, CAA's boxes
    item, row = _shown(browser)[0]
    browser.find_element(By.CSS_SELECTOR, f"#rows tr[data-row='{row}'] a.open").click()
    _wait(browser, f"return document.getElementById('detail').dataset.id === {json.dumps(item)}")
    _wait(browser, "const imgs = document.querySelectorAll('#detail img'); return imgs.length > 0 && "
                   "Array.from(imgs).every(i => i.complete && i.naturalWidth > 0)")
    labels = next(it.labels for it in train.items if it.id == item)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#detail canvas.heat")) == 2 * len(labels)  # text, vision
    assert len(browser.find_elements(By.CSS_SELECTOR, "#detail canvas.boxes")) == len(labels)  # saved: text only
    browser.save_screenshot(str(tmp_path / "detail.png"))
    browser.find_element(By.CSS_SELECTOR, "#detail .close").click()  # clears the hash: hashchange closes it, later
    _wait(browser, "return document.getElementById('detail').hidden")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    browser.execute_script("console.error('vpltool-test: the log is read')")  # the check above can fail
    assert any("vpltool-test" in e["message"] for e in browser.get_log("browser"))
    assert (tmp_path / "table.png").stat().st_size > 0 and (tmp_path / "detail.png").stat().st_size > 0

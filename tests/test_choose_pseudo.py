"""`choose-pseudo`: the decoder's pseudo masks are chosen among refinements by their train-split mIoU, never val."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.demo.choose_pseudo import CHOICE_FILE, choose_pseudo
from vpltool.errors import VplError
from vpltool.io.marks import marked


def scored_run(root: Path, train: dict[str, float], val: dict[str, float] | None = None, own: str = "none") -> Path:
    """A run folder with only the eval JSONs of each refinement's pseudo masks, laid out as the Makefile does."""
    for refine, miou in train.items():
        where = root / "metrics" if refine == own else root / "metrics" / refine
        io.write_json(where / "pseudo.json", {"miou": miou})
        if val:
            io.write_json(where / "pseudo_val.json", {"miou": val[refine]})
    return root


def test_the_highest_train_miou_wins_and_val_is_not_read(tmp_path):
    # val would pick caa; the choice must not look at it
    run = scored_run(tmp_path, {"none": 0.35, "caa": 0.36, "caa+sgc": 0.39}, val={"none": 0.4, "caa": 0.9,
                                                                                 "caa+sgc": 0.3})
    choice = choose_pseudo(run, ["none", "caa", "caa+sgc"], run_refine="none")
    assert choice["chosen"] == "caa+sgc" and choice["folder"] == str(run / "caa+sgc" / "pseudo")
    assert [c["train_miou"] for c in choice["candidates"]] == [0.35, 0.36, 0.39]
    assert io.read_json(run / "metrics" / CHOICE_FILE) == marked(choice, "pseudo-choice")  # its kind first


def test_the_runs_own_refinement_is_at_the_top_level_and_ties_keep_the_first(tmp_path):
    run = scored_run(tmp_path, {"none": 0.4, "caa": 0.4})
    choice = choose_pseudo(run, ["none", "caa"], run_refine="none")
    assert choice["chosen"] == "none" and choice["folder"] == str(run / "pseudo")


def test_a_pick_by_hand_is_kept_and_said_so(tmp_path):
    run = scored_run(tmp_path, {"none": 0.5, "caa": 0.3})
    choice = choose_pseudo(run, ["none", "caa"], run_refine="none", pick="caa")
    assert choice["chosen"] == "caa" and "by hand" in choice["rule"]


@pytest.mark.parametrize("among, pick, message", [
    (["none", "caa"], "auto", "metrics/caa/pseudo.json: no train-split score"),  # caa's masks not scored
    (["none", "bogus"], "auto", "unknown refinement 'bogus'"),
    (["none"], "caa", "--pick 'caa' is not among none"),
])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, among, pick, message):
    run = scored_run(tmp_path, {"none": 0.4})
    with pytest.raises(VplError, match=re.escape(message)):
        choose_pseudo(run, among, run_refine="none", pick=pick)
    assert not (run / "metrics" / CHOICE_FILE).exists()  # nothing written on a refusal


def test_cli_prints_the_folder_on_stdout_and_exits_2_on_bad_input(tmp_path):
    run = scored_run(tmp_path, {"none": 0.3, "caa+sgc": 0.4})
    ok = CliRunner().invoke(app, ["choose-pseudo", str(run), "none", "caa+sgc", "--refine", "none"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().splitlines()[-1] == str(run / "caa+sgc" / "pseudo")
    bad = CliRunner().invoke(app, ["choose-pseudo", str(run), "none", "caa", "--refine", "none"])
    assert bad.exit_code == 2 and "no train-split score of caa" in bad.output

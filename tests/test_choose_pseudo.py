"""`choose-pseudo`: the decoder's pseudo masks are chosen among refinements on the training split, never val, from
scores it checks (the folder, its record, the split) and refinements read from the records."""

from __future__ import annotations

import re

import pytest
from pseudo_runs import candidate, decoder_candidate, scored_run  # tests/ is on sys.path
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.demo.choose_pseudo import CHOICE_FILE, choose_pseudo
from vpltool.errors import VplError
from vpltool.io.marks import marked


def test_the_highest_train_miou_wins_and_val_is_not_read(tmp_path):
    run = scored_run(tmp_path, {"none": 0.35, "caa": 0.36, "caa+sgc": 0.39})
    for refine, miou in (("none", 0.4), ("caa", 0.9), ("caa+sgc", 0.3)):  # val would pick caa; never read
        where = run / "metrics" if refine == "none" else run / "metrics" / refine
        io.write_json(where / "pseudo_val.json", {"miou": miou})
    choice = choose_pseudo(run, ["none", "caa", "caa+sgc"], by="masks")
    assert choice["chosen"] == "caa+sgc" and choice["folder"] == str(run / "caa+sgc" / "pseudo")
    assert [c["train_miou"] for c in choice["candidates"]] == [0.35, 0.36, 0.39] and choice["split"] == "train"
    assert io.read_json(run / "metrics" / CHOICE_FILE) == marked(choice, "pseudo-choice")  # its kind first


def test_the_runs_own_refinement_is_read_from_the_records_and_ties_keep_the_first(tmp_path):
    run = scored_run(tmp_path, {"none": 0.4, "caa": 0.4})
    choice = choose_pseudo(run, ["none", "caa"], by="masks")
    assert choice["chosen"] == "none" and choice["folder"] == str(run / "pseudo")
    # the top-level folder is none's, whatever --refine says (issue 38, item 11)
    with pytest.raises(VplError, match=re.escape("made from CAMs of --refine none (its cams_vision record), not caa")):
        choose_pseudo(run, ["none", "caa"], run_refine="caa", by="masks")


def test_a_pick_by_hand_is_kept_and_said_so(tmp_path):
    run = scored_run(tmp_path, {"none": 0.5, "caa": 0.3})
    choice = choose_pseudo(run, ["none", "caa"], pick="caa", by="masks")
    assert choice["chosen"] == "caa" and "by hand" in choice["rule"]


def _stale(run):
    io.write_stage_record(run / "caa" / "pseudo", "crf", params={"confidence": 0.99}, count=0,
                          inputs=io.read_record(run / "caa" / "pseudo" / "_stage.json")["inputs"])


def _val_split(run):
    candidate(run, "caa", 0.9, split="val")


def _deleted(run):
    import shutil

    shutil.rmtree(run / "caa" / "pseudo")


def _cams_as_candidate(run):
    io.write_stage_record(run / "caa" / "pseudo", "cam", params={"refine": "caa"}, inputs={}, count=0)
    candidate_json = run / "metrics" / "caa" / "pseudo.json"
    from vpltool.stages.eval import scored_what

    io.write_json(candidate_json, {"miou": 0.5, **scored_what(run / "caa" / "pseudo", "cam", "train")})


def _field(key, value):
    def edit(run):
        scored = run / "metrics" / "caa" / "pseudo.json"
        result = io.read_json(scored)
        if value is KeyError:
            del result[key]
        else:
            result[key] = value
        io.write_json(scored, result)
    return edit


def _as_list(run):
    io.write_json(run / "metrics" / "caa" / "pseudo.json", [0.4])


def _other_cams(run):
    io.write_stage_record(run / "caa" / "cams_vision", "cam", params={"refine": "caa"}, inputs={"x": 1}, count=0)


def _wrong_refinement(run):
    import shutil

    from vpltool.stages.eval import scored_what

    candidate(run, "caa+sgc", 0.6)
    shutil.rmtree(run / "caa")
    shutil.copytree(run / "caa+sgc", run / "caa")  # caa+sgc's folders where caa's belong
    io.write_json(run / "metrics" / "caa" / "pseudo.json", {"miou": 0.5, **scored_what(run / "caa" / "pseudo", "crf",
                                                                                      "train")})


@pytest.mark.parametrize("spoil, message", [
    (_stale, "caa/pseudo.json: stale: "),
    (_val_split, "caa/pseudo.json: scored on split 'val', not 'train'"),
    (_deleted, "caa/pseudo: no finished pseudo masks there"),
    (_cams_as_candidate, "caa/pseudo: holds `cam` output, expected `crf` or `sam-pseudo` pseudo masks"),
    (_field("miou", "0.7"), "'miou' is '0.7', not a number in [0, 1]"),
    (_field("miou", 7.5), "'miou' is 7.5, not a number in [0, 1]"),
    (_field("miou", KeyError), "caa/pseudo.json: no 'miou'"),
    (_field("record", KeyError), "does not say which folder it scored"),
    (_field("folder", "/elsewhere/pseudo"), "scores /elsewhere/pseudo, not "),
    (_as_list, "caa/pseudo.json: a JSON list, not an eval result"),
    (_other_cams, "caa/pseudo: its record names CAMs other than"),
    (_wrong_refinement, "caa/pseudo: made from CAMs of --refine caa+sgc (its cams_vision record), not caa"),
])
def test_a_score_that_is_not_of_the_candidate_as_it_is_now_is_refused(tmp_path, spoil, message):
    run = scored_run(tmp_path, {"none": 0.4, "caa": 0.5})
    spoil(run)
    with pytest.raises(VplError, match=re.escape(message)):
        choose_pseudo(run, ["none", "caa"], by="masks")
    assert not (run / "metrics" / CHOICE_FILE).exists()  # nothing written on a refusal


@pytest.mark.parametrize("among, pick, message", [
    (["none", "caa"], "auto", "caa/pseudo: no finished pseudo masks there"),  # caa's masks not made
    (["none", "bogus"], "auto", "unknown refinement 'bogus'"),
    (["none"], "caa", "--pick 'caa' is not among none"),
])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, among, pick, message):
    run = scored_run(tmp_path, {"none": 0.4})
    with pytest.raises(VplError, match=re.escape(message)):
        choose_pseudo(run, among, pick=pick)
    assert not (run / "metrics" / CHOICE_FILE).exists()


def test_cli_prints_the_folder_on_stdout_and_exits_2_on_bad_input(tmp_path):
    run = scored_run(tmp_path, {"none": 0.3, "caa+sgc": 0.4})
    ok = CliRunner().invoke(app, ["choose-pseudo", str(run), "none", "caa+sgc", "--by", "masks"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().splitlines()[-1] == str(run / "caa+sgc" / "pseudo")
    bad = CliRunner().invoke(app, ["choose-pseudo", str(run), "none", "caa", "--by", "masks"])
    assert bad.exit_code == 2 and "caa/pseudo: no finished pseudo masks there" in bad.output
    (run / "metrics" / "caa+sgc" / "pseudo.json").unlink()
    unscored = CliRunner().invoke(app, ["choose-pseudo", str(run), "none", "caa+sgc", "--by", "masks"])
    assert unscored.exit_code == 2 and "caa+sgc/pseudo.json: no train-split score" in unscored.output


def test_by_decoder_the_best_decoder_on_train_wins_whatever_its_masks_score(tmp_path):
    run = scored_run(tmp_path, {"none": 0.35, "caa": 0.36, "caa+sgc": 0.39})
    for refine, miou in (("none", 0.70), ("caa", 0.66), ("caa+sgc", 0.64)):
        decoder_candidate(run, refine, miou)
    choice = choose_pseudo(run, ["none", "caa", "caa+sgc"])
    assert choice["chosen"] == "none" and choice["by"] == "decoder"
    assert choice["decoder"] == str(run / "decoder" / "decoder.safetensors")
    assert [c["decoder_train_miou"] for c in choice["candidates"]] == [0.70, 0.66, 0.64]
    # a decoder re-trained on other masks since its prediction was scored, and masks re-made after the decoder
    decoder_candidate(run, "caa", 0.9)
    (run / "caa" / "decoder" / "decoder.safetensors").write_bytes(b"not the decoder that predicted")
    with pytest.raises(VplError, match=re.escape("caa/pred_train: not predicted by")):
        choose_pseudo(run, ["none", "caa"])
    decoder_candidate(run, "caa", 0.9)
    candidate(run, "caa", 0.36)  # caa's masks re-made (and re-scored): the decoder was trained on the old ones
    io.write_stage_record(run / "caa" / "pseudo", "crf", params={"confidence": 0.5}, count=0,
                          inputs=io.read_record(run / "caa" / "pseudo" / "_stage.json")["inputs"])
    candidate_score = run / "metrics" / "caa" / "pseudo.json"
    from vpltool.stages.eval import scored_what

    io.write_json(candidate_score, {"miou": 0.36, **scored_what(run / "caa" / "pseudo", "crf", "train")})
    with pytest.raises(VplError, match=re.escape("caa/decoder/decoder.safetensors: not trained on")):
        choose_pseudo(run, ["none", "caa"])
    import shutil

    shutil.rmtree(run / "caa" / "decoder")
    with pytest.raises(VplError, match=re.escape("caa/decoder/decoder.safetensors: not found: the decoder trained on")):
        choose_pseudo(run, ["none", "caa"])


def test_sam_pseudo_masks_are_candidates_beside_the_crf_masks_of_their_refinement(tmp_path):
    """``R+sam``: refinement R's sam-pseudo masks (RUN[/R]/sam/pseudo, its decoder RUN[/R]/sam/decoder, scores under
    RUN/metrics[/R]/sam/), chosen by the same rule; the records say which it is."""
    run = scored_run(tmp_path, {"none": 0.35, "none+sam": 0.45, "caa": 0.36, "caa+sam": 0.30})
    for refine, miou in (("none", 0.60), ("none+sam", 0.58), ("caa", 0.62), ("caa+sam", 0.70)):
        decoder_candidate(run, refine, miou)
    choice = choose_pseudo(run, ["none", "none+sam", "caa", "caa+sam"])
    assert choice["chosen"] == "caa+sam" and choice["folder"] == str(run / "caa" / "sam" / "pseudo")
    assert choice["decoder"] == str(run / "caa" / "sam" / "decoder" / "decoder.safetensors")
    by_masks = choose_pseudo(run, ["none", "none+sam", "caa", "caa+sam"], by="masks", overwrite=True)
    assert by_masks["chosen"] == "none+sam" and by_masks["folder"] == str(run / "sam" / "pseudo")
    # a crf folder where the sam-pseudo one should be is named, not chosen as SAM's
    io.write_stage_record(run / "caa" / "sam" / "pseudo", "crf", params={}, count=0,
                          inputs=io.read_record(run / "caa" / "sam" / "pseudo" / "_stage.json")["inputs"])
    with pytest.raises(VplError, match=re.escape("sam/pseudo: holds `crf` output where caa+sam's `sam-pseudo` masks")):
        choose_pseudo(run, ["caa", "caa+sam"], by="masks", overwrite=True)
    with pytest.raises(VplError, match=re.escape("unknown refinement 'caa+sgc+sam+sam'")):
        choose_pseudo(run, ["caa+sgc+sam+sam"], by="masks")


def test_every_sam_pseudo_rule_is_a_candidate_by_the_same_path(tmp_path):
    """Each rule K of config.SAM_PSEUDO_RULES (sam, sam3) gives candidates R+K, in RUN[/R]/K/, told apart by their
    records (sam-pseudo's recorded --masks), not their folders: a sam folder whose record says sam3 is named."""
    from vpltool.config import SAM_PSEUDO_RULES
    from vpltool.demo.choose_pseudo import make_fix, recorded_refinement, split_candidate

    assert SAM_PSEUDO_RULES == ("sam", "sam3")
    names = ["none", "none+sam", "none+sam3", "caa+sgc", "caa+sgc+sam", "caa+sgc+sam3"]
    run = scored_run(tmp_path, dict(zip(names, (0.30, 0.31, 0.32, 0.33, 0.34, 0.35))))
    for name, miou in zip(names, (0.60, 0.61, 0.66, 0.62, 0.63, 0.64)):
        decoder_candidate(run, name, miou)
    assert [split_candidate(n) for n in names[3:]] == [("caa+sgc", None), ("caa+sgc", "sam"), ("caa+sgc", "sam3")]
    assert recorded_refinement(run / "caa+sgc" / "sam3" / "pseudo") == "caa+sgc+sam3"
    choice = choose_pseudo(run, names)
    assert choice["chosen"] == "none+sam3"
    assert choice["decoder"] == str(run / "sam3" / "decoder" / "decoder.safetensors")
    assert choose_pseudo(run, names, by="masks", overwrite=True)["folder"] == str(run / "caa+sgc" / "sam3" / "pseudo")
    assert "PSEUDO='crf sam sam3'" in make_fix("pseudo", run, names)
    record = io.read_record(run / "sam" / "pseudo" / "_stage.json")
    io.write_stage_record(run / "sam" / "pseudo", "sam-pseudo", params={"masks": "sam3"}, count=0,
                          inputs=record["inputs"])
    with pytest.raises(VplError, match=re.escape("sam/pseudo: made by `sam-pseudo --masks sam3` (its record), not "
                                                 "none+sam; re-make none+sam's masks there")):
        choose_pseudo(run, names, by="masks", overwrite=True)


def test_the_makefiles_sam_rules_are_configs():
    """The Makefile's SAM_RULES (one pattern rule each, candidates R+K) are config.SAM_PSEUDO_RULES, in order."""
    from pathlib import Path

    from vpltool.config import SAM_PSEUDO_RULES

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    rules = re.search(r"^SAM_RULES = (.*)$", makefile, re.M)
    assert rules is not None and tuple(rules.group(1).split()) == SAM_PSEUDO_RULES


def test_a_score_is_of_the_masks_content_and_an_edited_mask_makes_it_stale(tmp_path):
    """The score names its masks by content (eval's ``masks`` digest): a mask edited in place after it was scored
    (the folder's record, and a mask's vpltool chunks, untouched) is a stale score, refused in one line naming the
    eval that re-scores it; that re-score is accepted. A score that names no masks (an older eval) is refused."""
    import numpy as np

    from vpltool.stages.eval import scored_what

    run = scored_run(tmp_path, {"none": 0.4, "caa": 0.5})
    pseudo, scored = run / "caa" / "pseudo", run / "metrics" / "caa" / "pseudo.json"
    io.write_mask(pseudo / "a.png", np.zeros((4, 4), np.uint8))
    io.write_json(scored, {"miou": 0.5, **scored_what(pseudo, "crf", "train")})
    assert choose_pseudo(run, ["none", "caa"], by="masks")["chosen"] == "caa"
    io.write_mask(pseudo / "a.png", np.ones((4, 4), np.uint8))  # edited to another class: the score is not of it
    with pytest.raises(VplError) as e:
        choose_pseudo(run, ["none", "caa"], by="masks", overwrite=True)
    assert str(e.value).startswith(f"{scored}: stale: {pseudo}'s masks changed after it was scored; re-run "
                                   f"`vpltool eval {pseudo} --json {scored} --overwrite`") and "\n" not in str(e.value)
    io.write_json(scored, {"miou": 0.3, **scored_what(pseudo, "crf", "train")})  # re-scored: accepted, 0.3 now
    assert choose_pseudo(run, ["none", "caa"], by="masks", overwrite=True)["chosen"] == "none"
    result = io.read_json(scored)
    del result["masks"]
    io.write_json(scored, result)
    with pytest.raises(VplError, match=re.escape("pseudo.json: does not say which masks it scored")):
        choose_pseudo(run, ["none", "caa"], by="masks", overwrite=True)

"""Issue 20 (branch `options`): what the bad-input table cannot show by itself.

cam follows the extract folder's --attention-blocks; learn-prototypes refuses a descent that did not move before
writing; headers and records are validated like tensors; templates and class names are checked; the progress line
comes after the input checks; `vpltool help`, `-V` and click-style shell completion work.
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.config import CamConfig, DecoderConfig, ExtractConfig, PredictConfig, RuntimeConfig
from vpltool.demo.config import ToyClipConfig, WorldConfig
from vpltool.errors import ContractError, VplError

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds

CPU = RuntimeConfig(device="cpu", workers=1)


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------------------------- attention blocks
@pytest.mark.parametrize("blocks, cache", [(2, "full"), (1, "light")])
def test_cam_takes_the_attention_blocks_of_its_extract_folder(world, tiny_spec, text_protos, tmp_path, blocks,
                                                              cache):
    from vpltool.data import open_dataset
    from vpltool.stages.cam import run_cam
    from vpltool.stages.extract import run_extract

    features = tmp_path / "features"
    run_extract(open_dataset(world, "train"), features, tiny_spec, ExtractConfig(attention_blocks=blocks, cache=cache),
                CPU)
    run_cam(features, text_protos, tmp_path / "cams", CamConfig(), CPU)
    assert io.read_stage_record(tmp_path / "cams", "cam")["params"]["attention_blocks"] == blocks
    # 1 (the last block alone) is always served; another count than extract's is refused before the model loads
    run_cam(features, text_protos, tmp_path / "cams1", CamConfig(attention_blocks=1), CPU)
    if blocks != 1:
        with pytest.raises(VplError, match=rf"extracted with --attention-blocks {blocks}"):
            run_cam(features, text_protos, tmp_path / "cams3", CamConfig(attention_blocks=3), CPU)
        assert not (tmp_path / "cams3").exists()


def test_cam_on_a_dataset_averages_clip_es_8_blocks_by_default(world, text_protos, tmp_path):
    from vpltool.stages.cam import run_cam

    run_cam(world, text_protos, tmp_path / "cams", CamConfig(refine="caa"), CPU, split="train")
    assert io.read_stage_record(tmp_path / "cams", "cam")["params"]["attention_blocks"] == 8


def test_cam_help_shows_attention_blocks():
    r = _invoke("cam", "--help")
    assert r.exit_code == 0 and "--attention-blocks" in r.output and "extract folder's own" in r.output


# --------------------------------------------------------------------------------------------- learn-prototypes
def test_a_descent_that_does_not_move_is_refused_and_writes_nothing(features_dir, text_protos, tmp_path):
    from vpltool.config import LearnPrototypesConfig
    from vpltool.stages.cam import run_cam
    from vpltool.stages.learn_prototypes import run_learn_prototypes

    cams = tmp_path / "cams"
    run_cam(features_dir, text_protos, cams, CamConfig(refine="none"), CPU)
    out = tmp_path / "v.safetensors"
    with pytest.raises(VplError, match="the loss did not move in 2 iterations"):
        run_learn_prototypes(features_dir, cams, text_protos, out, LearnPrototypesConfig(tau_i=1e-30, iters=2),
                             RuntimeConfig(device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cams"]  # no prototypes, no curve
    started = []
    summary = run_learn_prototypes(features_dir, cams, text_protos, out, LearnPrototypesConfig(iters=2),
                                   RuntimeConfig(device="cpu"), on_start=started.append)
    assert started == [2] and summary["loss_curve"][0][1] != summary["final_loss"]


def test_check_descent_refuses_a_non_finite_last_loss():
    from vpltool.config import LearnPrototypesConfig
    from vpltool.stages.learn_prototypes import check_descent

    with pytest.raises(VplError, match="the loss became nan after the last iteration"):
        check_descent([1.0, 0.5, math.nan], LearnPrototypesConfig(iters=2))
    check_descent([1.0], LearnPrototypesConfig(iters=0))  # nothing asked to move


def test_the_progress_line_comes_after_the_input_checks(features_dir, text_protos, tmp_path, monkeypatch):
    r = _invoke("learn-prototypes", features_dir, "-c", features_dir, "-t", tmp_path / "nope.safetensors", "-o",
                tmp_path / "v.safetensors", "--iters", "3", "--device", "cpu")
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output


# --------------------------------------------------------------------------------------------- headers and records
def _resave(path, out, **meta):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors, header = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    for key, value in meta.items():
        header.pop(f"vpltool.{key}", None)
        if value is not None:
            header[f"vpltool.{key}"] = value
    save_file(tensors, str(out), metadata=header)
    return out


@pytest.mark.parametrize("key, value, words", [
    ("temperature", "nan", "'vpltool.temperature' is 'nan', not a finite number > 0"),
    ("temperature", "-1", "'vpltool.temperature' is '-1', not a finite number > 0"),
    ("temperature", "true", "not a finite number > 0"),
    ("source", '"audio"', "'vpltool.source' is '\"audio\"', not one of text, vision"),
    ("model", '{"pretrained": "openai"}', "not a JSON object naming the CLIP"),
    ("row_names", '["a"]', "not a list of one name per prototype row"),
    ("classes", '["background", "star", "star"]', "not a list of unique class names"),
    ("classes", '["star", "background"]', "'background' first and nowhere else"),
    ("classes", "not json", "not a list of unique class names"),
    ("params", "[]", "'vpltool.params' is not a JSON object"),
])
def test_prototypes_metadata_is_validated_like_tensors(text_protos, tmp_path, key, value, words):
    bad = _resave(text_protos, tmp_path / "bad.safetensors", **{key: value})
    with pytest.raises(ContractError, match=None) as e:
        io.read_prototypes(bad)
    assert str(e.value).startswith(f"{bad}: ") and words in str(e.value), str(e.value)


def test_a_prototypes_file_of_the_wrong_source_is_named(text_protos):
    assert io.read_prototypes(text_protos, source="text").source == "text"
    with pytest.raises(ContractError, match="holds text prototypes .* -p expects vision prototypes"):
        io.read_prototypes(text_protos, source="vision", option="-p")


@pytest.mark.parametrize("record, words", [
    ([], "a JSON list, not an object"),
    ({"stage": "extract"}, "no 'params'"),
    ({"stage": "extract", "params": {}, "inputs": {}, "count": "8"}, "'count' is not an integer"),
    ({"stage": "extract", "params": {}, "inputs": {"dataset": "W"}, "count": 8}, "'inputs.dataset' does not name"),
    ({"stage": "extract", "params": {}, "inputs": {}, "count": 8, "classes": "a,b"}, "'classes' is not a list"),
])
def test_a_record_of_the_wrong_shape_is_one_line(features_dir, tmp_path, record, words):
    import shutil

    folder = tmp_path / "features"
    shutil.copytree(features_dir, folder)
    (folder / io.STAGE_RECORD).write_text(json.dumps(record))
    with pytest.raises(ContractError, match="not a vpltool stage record") as e:
        io.read_stage_record(folder, "extract")
    assert words in str(e.value)
    with pytest.raises(ContractError, match="not a vpltool stage record"):
        io.record_stage(folder)


def test_a_run_record_of_the_wrong_shape_is_one_line_unless_overwritten(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / io.RUN_RECORD).write_text("[1, 2]")
    with pytest.raises(ContractError, match=r"_run.json: not a vpltool run record \(a JSON list"):
        io.prepare_stage_dir(folder, "cam", {"a": 1}, overwrite=False)
    io.prepare_stage_dir(folder, "cam", {"a": 1}, overwrite=True)  # --overwrite forgets it
    assert io.read_record(folder / io.RUN_RECORD, run=True)["params"] == {"a": 1}


# --------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("make, words", [
    (lambda: WorldConfig(seed=-1), "--seed -1: must be an integer from 0"),
    (lambda: WorldConfig(size=100_000), "--size 100000: must be at most 2048 pixels"),
    (lambda: ToyClipConfig(seed=-1), "--seed -1"),
    (lambda: DecoderConfig(seed=2**40), "--seed 1099511627776"),
    (lambda: DecoderConfig(lambda_rsc=math.nan), "--lambda-rsc nan: not a finite number"),
    (lambda: DecoderConfig(lambda_rsc=-1.0), "--lambda-rsc -1.0: must be >= 0"),
    (lambda: DecoderConfig(lambda_ce=math.inf), "lambda_ce inf: not a finite number"),
    (lambda: CamConfig(temperature=1e-4), "--temperature 0.0001: must be >= 0.001"),
    (lambda: CamConfig(attention_blocks=0), "--attention-blocks 0: must be >= 1"),
    (lambda: PredictConfig(scales=(1.0, 0.05)), "--scales 0.05: each scale must be at least 0.1"),
])
def test_option_bounds(make, words):
    with pytest.raises(VplError) as e:
        make()
    assert words in str(e.value)


def test_make_world_with_a_negative_seed_leaves_nothing(tmp_path):
    r = _invoke("make-world", tmp_path / "w", "--train", "1", "--val", "0", "--seed", "-1")
    assert r.exit_code == 2 and not (tmp_path / "w").exists()


@pytest.mark.parametrize("template, words", [
    ("a {} and {}", "has 2 '{}' fields"),
    ("a {name}", "has the field '{name}'"),
    ("a {0}", "has the field '{0}'"),
    ("a {} }", "not a valid format string"),
])
def test_templates_hold_exactly_one_plain_field(template, words):
    from vpltool.stages.text_prototypes import resolve_templates

    with pytest.raises(VplError, match="--templates") as e:
        resolve_templates(template)
    assert words in str(e.value)
    assert resolve_templates("a {{braced}} {}") == ["a {{braced}} {}"]  # escaped braces are text


def test_a_bad_template_in_a_file_is_named_with_its_line(tmp_path):
    from vpltool.stages.text_prototypes import resolve_templates

    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\n\na {} and a {}.\n")
    with pytest.raises(VplError, match=r"t.txt: line 3 'a \{\} and a \{\}.' has 2"):
        resolve_templates(str(path))


@pytest.mark.parametrize("classes, words", [
    (["background", "cat", "background"], "'background' is class 0 already"),
    (["background", "cat", "CAT"], "'cat' and 'CAT' are named twice"),
    (["cat"], "must start with 'background'"),
])
def test_class_names_are_unique_and_background_only_first(classes, words):
    from vpltool.stages.text_prototypes import check_class_names

    with pytest.raises(VplError) as e:
        check_class_names(classes)
    assert words in str(e.value)


def test_background_words_that_are_classes_are_refused_but_presets_drop_them():
    from vpltool.config.presets import VOC_CLASSES
    from vpltool.stages.text_prototypes import resolve_background

    with pytest.raises(VplError, match="'Sky' is also a class"):
        resolve_background("grass,Sky", None, ["background", "sky", "tree"])
    assert "sky" not in resolve_background("voc", None, ["background", "sky", "tree"])
    assert resolve_background("auto", "voc", VOC_CLASSES)  # the preset's own words pass


def test_a_device_from_the_environment_is_named_as_such(monkeypatch):
    from vpltool.device import resolve_device

    monkeypatch.setenv("VPLTOOL_DEVICE", "gpu0")
    with pytest.raises(VplError, match=r"--device \(from VPLTOOL_DEVICE\) 'gpu0'"):
        resolve_device("gpu0")
    monkeypatch.delenv("VPLTOOL_DEVICE")
    with pytest.raises(VplError, match=r"^--device 'gpu0' not understood"):
        resolve_device("gpu0")


def test_train_decoder_reads_every_mask_with_the_class_count(tmp_path):
    import numpy as np

    from vpltool.stages.train_decoder.data import check_supervision

    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    io.write_mask(good, np.ones((8, 8), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[7, 7] = 9
    io.write_mask(bad, mask)
    pairs = [("a", good, good), ("b", good, bad)]
    check_supervision(pairs, tmp_path)  # without a class count: stops at the first labelled mask
    with pytest.raises(ContractError, match=r"b.png: mask values \[9\] outside 0..8"):
        check_supervision(pairs, tmp_path, num_classes=9)


# --------------------------------------------------------------------------------------------- CLI niceties
def test_help_command_and_short_version():
    from vpltool import __version__

    assert _invoke("-V").output.strip() == f"vpltool {__version__}"
    r = _invoke("help")
    assert r.exit_code == 0 and "text-prototypes" in r.output and "--install-completion" in r.output
    r = _invoke("help", "cam")
    assert r.exit_code == 0 and "--attention-blocks" in r.output
    r = _invoke("help", "nope")
    assert r.exit_code == 2 and "no command 'nope'" in r.output


def test_interrupted_hint_names_resume_where_a_stage_needs_it():
    from vpltool.cli.errors import interrupted_hint

    assert "--resume" in interrupted_hint({"resume": False})
    assert "--resume" not in interrupted_hint({"resume": True})
    assert interrupted_hint({"out": "x"}) == "finished items are kept; re-run the same command to resume"


@pytest.mark.parametrize("value", ["bash_source", "source_bash"])
def test_shell_completion_accepts_click_and_typer_spellings(value):
    env = {**os.environ, "_VPLTOOL_COMPLETE": value}
    code = "import sys; sys.argv = ['vpltool']; from vpltool.cli import main; main()"
    r = pace.run([sys.executable, "-c", code], 120, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "_vpltool_completion()" in r.stdout and "complete -o" in r.stdout, r.stderr
    env = {**os.environ, "_VPLTOOL_COMPLETE": "complete_bash", "COMP_WORDS": "vpltool learn-p", "COMP_CWORD": "1"}
    r = pace.run([sys.executable, "-c", code], 120, env=env, capture_output=True, text=True)
    assert r.stdout.split() == ["learn-prototypes"]



def test_library_write_dataset_checks_seed_and_size_before_the_folder(tmp_path):
    from vpltool.demo.make_world import write_dataset
    from vpltool.demo.scenes import SceneConfig

    with pytest.raises(VplError, match="--seed -1"):
        write_dataset(tmp_path / "w", n_train=1, n_val=0, seed=-1)
    with pytest.raises(VplError, match="--size 4096: must be at most 2048"):
        write_dataset(tmp_path / "w", n_train=1, n_val=0, seed=0, cfg=SceneConfig(size=4096))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("classes", [["background", "cat", "cat"], ["background", "cat", "background"]])
def test_a_manifest_naming_a_class_twice_is_refused(tmp_path, classes):
    from vpltool.data import open_dataset

    path = tmp_path / "m.json"
    path.write_text(json.dumps({"format": "vpltool.manifest/1", "classes": classes, "items": []}))
    with pytest.raises(ContractError, match="names a class twice or 'background' after the first entry"):
        open_dataset(path)

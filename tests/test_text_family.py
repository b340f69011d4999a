"""The text-supervised family interface: one typed Protocol (:class:`vpltool.models.text.family.TextSegFamily`),
checked at registration, and a family that is only its module plus its registry row (``toytext``, tests/
text_family_stand_in.py) segments through `segment --model toytext:FILE`, `cam` and ``vpltool.segmenter`` as PGSeg
does, with its own defaults and records."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import text_family_stand_in as toy
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.models.text.family import HOOKS, register_text_family, text_family

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=2, n_val=2, seed=3)


@pytest.fixture
def family(monkeypatch):
    toy.install_row(monkeypatch)
    return text_family(toy.NAME)


@pytest.fixture
def checkpoint(family, tmp_path) -> Path:
    model = family.build_model(family.model_config(toy.ToyTextTrainConfig(crop_size=32)), seed=0)
    return family.save_checkpoint(tmp_path / "toy.safetensors", model)


def test_the_hooks_are_the_protocols_and_pgseg_has_each():
    assert set(HOOKS) == {"name", "TrainConfig", "TEMPLATES", "tokenizer", "caption_length", "class_tokens",
                          "class_text_embeddings", "image_tensor", "zero_shot_logits", "check_checkpoint",
                          "load_checkpoint", "load_model", "save_checkpoint", "model_config", "build_model",
                          "forward_train", "for_ranks"}
    pgseg = text_family("pgseg")
    assert {n for n in dir(pgseg) if not n.startswith("_")} == set(HOOKS)
    assert pgseg.TrainConfig.FINAL == "pgseg.safetensors" and pgseg.TrainConfig.CHECKPOINT_KIND == "pgseg-checkpoint"


def test_registration_refuses_a_missing_or_unknown_hook_a_family_without_a_row_or_another_config(monkeypatch):
    toy.install_row(monkeypatch)

    class Lacking:
        name, TrainConfig, TEMPLATES = toy.NAME, toy.ToyTextTrainConfig, {}

    class Misspelt(toy.ToyTextFamily):
        def zero_shot_logit(self, *args):  # a typo: would never be called
            return None

    class NoRow(toy.ToyTextFamily):
        name = "nowhere"

    class OtherConfig(toy.ToyTextFamily):
        TrainConfig = text_family("pgseg").TrainConfig

    with pytest.raises(TypeError, match=r"hook\(s\) build_model, caption_length, .*zero_shot_logits missing"):
        register_text_family(Lacking())
    with pytest.raises(TypeError, match="zero_shot_logit is not a hook of TextSegFamily"):
        register_text_family(Misspelt())
    with pytest.raises(TypeError, match="no row in vpltool.models.registry.TEXT_FAMILIES"):
        register_text_family(NoRow())
    with pytest.raises(TypeError, match="not the class its registry row names"):
        register_text_family(OtherConfig())
    assert isinstance(text_family(toy.NAME), toy.ToyTextFamily)


def test_segment_model_family_file_runs_a_new_family_with_its_own_defaults_and_records(family, checkpoint, world,
                                                                                        tmp_path):
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "--model", f"toytext:{checkpoint}", "-o",
                                 str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    params = io.read_record(io.stage_record_path(out))["params"]
    assert params["method"] == "toytext" and params["model"] == {"model": "toytext", "pretrained": str(checkpoint)}
    assert params["short_side"] == 32 and params["bg_thresh"] == 0.3 and params["slide_crop"] == 0  # its ZERO_SHOT
    masks = sorted(out.glob("*.png"))
    assert len(masks) == 2
    # the Python front door segments with the same code: the same label map
    import vpltool

    seg = vpltool.segmenter("toytext", checkpoint=checkpoint, device="cpu")
    from vpltool.data import open_dataset

    item = open_dataset(world, "val").items[0]
    got = seg(item.image, list(open_dataset(world, "val").classes[1:]))
    assert np.array_equal(got.labels, io.read_mask(io.mask_path(out, item.id)).astype(np.int64))
    assert got.scores.shape[0] == len(got.classes)


def test_cam_and_benchmark_take_the_new_family(family, checkpoint, world, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["cam", str(world), "--split", "train", "--model", f"toytext:{checkpoint}", "-o",
                            str(tmp_path / "cams"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert io.read_record(io.stage_record_path(tmp_path / "cams"))["params"]["source"] == "toytext"
    r = runner.invoke(app, ["benchmark", "--presets", "toytext"])
    assert r.exit_code == 0 and "tests/text_family_stand_in.py" in r.output, r.output
    r = runner.invoke(app, ["benchmark", "naclip", "--model", f"toytext:{checkpoint}", "--root", f"voc21={world}",
                            "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "runs as method toytext" in r.output, r.output


def test_file_kinds_come_from_the_families_configs():
    from vpltool.io.marks import FILE_KINDS, describe_kind

    assert not any(k.startswith("pgseg") for k in FILE_KINDS)  # not in io's own table
    assert describe_kind("pgseg-checkpoint") == "a PGSeg training checkpoint (`train-pgseg`)"


def test_pgseg_is_named_in_few_modules_outside_its_package():
    """A quoted "pgseg" is a branch key; outside the family's package it stays in its row, its config, the
    --pgseg alias and train-pgseg (the bar: at most 5 modules)."""
    out = subprocess.run(["grep", "-rl", '"pgseg"', "--include=*.py", "vpltool"], capture_output=True, text=True,
                         cwd=ROOT).stdout.split()
    outside = sorted(p for p in out if not p.startswith("vpltool/models/text/pgseg/"))
    assert len(outside) <= 5, outside
    assert not [p for p in outside if re.match(r"vpltool/(stages|api|io)/", p)], outside


def test_train_text_trains_a_family_that_is_its_module_and_row(family, world, tmp_path):
    """The shared trainer takes a family by name (`train-text --family toytext`): its recipe, its own setting by
    --set, its file names and kinds; `segment --model toytext:FILE` takes the result; a foreign key is one line."""
    runner = CliRunner()
    args = ["train-text", str(world), "--family", "toytext", "--recipe", "tiny", "--device", "cpu", "--workers", "1"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "run"), "--set", "npr=true", "--epochs", "1"])
    assert r.exit_code == 0 and "train-text (toytext): 2 pairs" in r.output, r.output
    record = io.read_record(io.stage_record_path(tmp_path / "run"))
    assert record["stage"] == "train-text" and record["params"]["npr"] is True and record["params"]["epochs"] == 1
    assert record["params"]["family"] == "toytext" and record["params"]["batch_size"] == 2  # its recipe's
    _, _, ckpt = io.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors", kind="toytext-checkpoint")
    assert ckpt.meta("iteration") == 1
    model = tmp_path / "run" / "toytext.safetensors"
    seg = runner.invoke(app, ["segment", str(world), "--split", "val", "--model", f"toytext:{model}", "-o",
                              str(tmp_path / "seg"), "--device", "cpu"])
    assert seg.exit_code == 0, seg.output
    bad = runner.invoke(app, [*args, "-o", str(tmp_path / "bad"), "--set", "multi_label=3"])
    assert bad.exit_code == 2 and "--set multi_label: not a setting of this family" in bad.output, bad.output
    assert not (tmp_path / "bad").exists()
    knobs = runner.invoke(app, ["train-text", "--family", "toytext", "--knobs"])
    assert knobs.exit_code == 0 and "npr" in knobs.output and "--set npr=..." in knobs.output, knobs.output


def test_a_family_on_the_base_writes_five_hooks_and_segments_and_trains(monkeypatch, world, tmp_path):
    """TextFamilyBase gives twelve hooks their defaults: tests/text_family_base_stand_in.py writes tokenizer,
    model_config, build_model, forward_train and class_scores, and its checkpoint round-trips, `segment --model
    basetoy:FILE` and the Python door give the same labels, and `train-text --family basetoy` trains it. A base
    subclass that lacks one is refused naming it."""
    import text_family_base_stand_in as based
    import torch

    from vpltool.models.text.base import TextFamilyBase

    based.install_row(monkeypatch)
    fam = text_family(based.NAME)
    assert isinstance(fam, TextFamilyBase) and fam.missing() == []
    own = {n for n, v in vars(type(fam)).items() if callable(v) and not isinstance(v, type) and n[0] != "_"}
    assert own == {"tokenizer", "model_config", "build_model", "forward_train", "class_scores"}

    class Lacking(based.BaseToyFamily):
        class_scores = TextFamilyBase.class_scores

    with pytest.raises(TypeError, match=r"hook\(s\) class_scores missing \(TextFamilyBase's subclass writes"):
        register_text_family(Lacking())

    model = fam.build_model(fam.model_config(based.BaseToyTrainConfig(crop_size=32)), seed=0)
    ckpt = fam.save_checkpoint(tmp_path / "basetoy.safetensors", model)
    assert fam.check_checkpoint(ckpt) == model.cfg
    loaded = fam.load_model(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    x = fam.image_tensor(image, 32)
    text = fam.class_text_embeddings(loaded, fam.class_tokens(["circle", "star"], fam.tokenizer(model.cfg),
                                                              ["a photo of a {}.", "a {}."]))
    whole = fam.zero_shot_logits(loaded, x, text, bg_thresh=0.2)
    assert x.shape == (1, 3, 32, 45) and whole.shape == (1, 3, 32, 45) and torch.all(whole[:, 0] == 0.2)
    slide = fam.zero_shot_logits(loaded, x, text, with_bg=False, mode="slide", crop=32, stride=16)
    one = fam.zero_shot_logits(loaded, x, text, with_bg=False, mode="slide", crop=64, stride=32)  # one window
    assert slide.shape == (1, 2, 32, 45) and torch.equal(one, whole[:, 1:]) and not torch.equal(slide, one)

    runner = CliRunner()
    out = tmp_path / "seg"
    r = runner.invoke(app, ["segment", str(world), "--split", "val", "--model", f"basetoy:{ckpt}", "-o", str(out),
                            "--classes", "circle,star", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    import vpltool
    from vpltool.data import open_dataset

    item = open_dataset(world, "val").items[0]
    got = vpltool.segmenter("basetoy", checkpoint=ckpt, device="cpu")(item.image, ["circle", "star"])
    assert np.array_equal(got.labels, io.read_mask(io.mask_path(out, item.id)).astype(np.int64))
    r = runner.invoke(app, ["train-text", str(world), "--family", "basetoy", "--recipe", "tiny", "--device", "cpu",
                            "--workers", "1", "-o", str(tmp_path / "run")])
    assert r.exit_code == 0 and (tmp_path / "run" / "basetoy.safetensors").is_file(), r.output


def test_a_text_family_module_that_registers_nothing_names_the_call_it_lacks(monkeypatch, tmp_path):
    """A row whose module registers no family is one line naming register_text_family (the call a text family
    makes), not the backbone families' register_family."""
    from vpltool.errors import VplError
    from vpltool.models import registry
    from vpltool.models.registry import TextFamilyRow

    (tmp_path / "empty_family_module.py").write_text('"""Registers nothing."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.TEXT_FAMILIES, "emptyfam", TextFamilyRow(
        "empty_family_module", "text_family_stand_in:ToyTextTrainConfig", ("emptyfam",), "an empty family", "a file"))
    with pytest.raises(VplError, match=r"registers no text-supervised family 'emptyfam' \(it calls vpltool\.models\."
                                       r"text\.family\.register_text_family\(family\) once"):
        text_family("emptyfam")

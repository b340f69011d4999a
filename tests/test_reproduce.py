"""`make voc` / `make coco` (docs/reproduce.md): the paper's pipeline with the paper's settings, checked by dry run.

``make -n`` still runs the recursive ``$(MAKE) report ...`` line (with -n passed on), so the printed commands are
exactly the ones a real run would execute, in order. Nothing is computed; each test takes well under a second.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str) -> subprocess.CompletedProcess:
    """``make ARGS`` in the repository root, outside any calling make (its MAKEFLAGS would leak in)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return pace.run(["make", *args], 60, cwd=ROOT, env=env, capture_output=True, text=True)


def commands(dry: str) -> list[str]:
    """The vpltool command lines of a dry run, continuation lines joined, in execution order."""
    joined = re.sub(r"\\\n\s*", "", dry)
    return [line.strip() for line in joined.splitlines() if "bin/vpltool " in line]


def makes_crf(cmds: list[str], cams: str, masks: str) -> bool:
    """Whether a command makes CRF masks ``masks`` from ``cams``: its own `crf`, or another refinement's run that
    refines them too (`crf ... --with-cams CAMS --with-out MASKS`, the demo's none beside caa)."""
    return any(f"crf {cams} -o {masks} " in c or f"--with-cams {cams} --with-out {masks} " in c for c in cmds)


def stage(cmds: list[str], name: str, *, nth: int = 0) -> str:
    found = [c for c in cmds if c.split("bin/vpltool ")[1].startswith(name + " ")]
    assert len(found) > nth, f"no `{name}` command (#{nth}) in:\n" + "\n".join(cmds)
    return found[nth]


def test_make_voc_runs_every_stage_with_the_paper_settings():
    result = make("-n", "voc", "VOC_ROOT=/data/VOC2012")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    order = [c.split("bin/vpltool ")[1].split()[0] for c in cmds]
    assert order == ["extract", "text-prototypes", "cam", "eval", "learn-prototypes", "cam", "eval", "crf", "eval",
                     "train-decoder", "predict", "eval", "demo-report", "report"]
    assert "extract /data/VOC2012 --split train_aug -o runs/voc/features --model ViT-B-16 --pretrained openai" in \
        stage(cmds, "extract")
    assert '--templates "clip-es" --background "voc"' in stage(cmds, "text-prototypes")
    for nth in (0, 1):
        assert "--box-threshold 0.4 --refine caa" in stage(cmds, "cam", nth=nth)
    assert "--tau-i 0.03 --iters 3000 --lr 10" in stage(cmds, "learn-prototypes")
    # seeds and masks are reported on VOC train (1,464), a subset of train_aug (CLIP-ES issue #30, the VOC convention)
    for nth, folder in enumerate(("cams_text", "cams_vision", "pseudo")):
        assert f"eval runs/voc/{folder} --split train --json" in stage(cmds, "eval", nth=nth)
    assert "--iters 30000 --recipe vpl" in stage(cmds, "train-decoder")
    assert "--split val -o runs/voc/pred_val --crf" in stage(cmds, "predict")
    assert "--split" not in stage(cmds, "eval", nth=3)  # the val predictions are scored on their own split
    assert stage(cmds, "demo-report").endswith("demo-report runs/voc --overwrite")


def test_make_coco_uses_coco_background_and_box_threshold():
    result = make("-n", "coco", "COCO_ROOT=/data/coco")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert "extract /data/coco --split train -o runs/coco/features" in stage(cmds, "extract")
    assert '--background "coco"' in stage(cmds, "text-prototypes")
    assert "--box-threshold 0.7" in stage(cmds, "cam")
    assert "--split" not in stage(cmds, "eval")
    assert "--iters 30000 --recipe vpl" in stage(cmds, "train-decoder")
    assert "--split val -o runs/coco/pred_val --crf" in stage(cmds, "predict")


def test_command_line_settings_override_the_recipe():
    result = make("-n", "voc", "VOC_ROOT=/v", "RUN=runs/x", "ITERS=1000", "TEMPLATES=imagenet", "PRED_ARGS=")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert "--iters 1000" in stage(cmds, "learn-prototypes") and "-o runs/x/features" in stage(cmds, "extract")
    assert '--templates "imagenet"' in stage(cmds, "text-prototypes")
    assert "--crf" not in stage(cmds, "predict")


@pytest.mark.parametrize(("target", "var"), [("voc", "VOC_ROOT"), ("coco", "COCO_ROOT")])
def test_missing_dataset_root_is_refused_in_one_line(target, var):
    result = make(target)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"make {target} needs {var}=" in lines[0] and "docs/reproduce.md" in lines[0]


def test_report_chance_floor_reads_at_most_its_image_limit(world):
    """`demo-report` on a full VOC/COCO run computes its chance floor on the first images only."""
    from vpltool.data import open_dataset
    from vpltool.demo.report import CHANCE_IMAGES, chance_baselines

    train = open_dataset(world, "train")
    assert chance_baselines(train, limit=4)["images"] == 4
    full = chance_baselines(train)
    assert full["images"] == len(train.items) <= CHANCE_IMAGES  # the demo world is below the limit: all of it
    assert 0 <= full["random CAMs"] <= 1 and 0 <= full["all background"] <= 1


def test_make_passes_ssrs_cam_options_to_every_cam():
    result = make("-n", "voc", "VOC_ROOT=/data/VOC2012", "REFINE=caa+sgc", "SGC_CLUSTERS=5", "AFFINITY=clip+dino",
                  "AFFINITY_WEIGHT=0.3", "DINO_WEIGHTS=/w/dino.safetensors")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    for nth in (0, 1):
        cam = stage(cmds, "cam", nth=nth)
        assert "--refine caa+sgc --affinity clip+dino --sgc-segments" in cam and "--sgc-clusters 5" in cam
        assert "--affinity-weight 0.3 --dino-model vit_small_patch16_224.dino --dino-weights /w/dino.safetensors" in cam
    plain = stage(commands(make("-n", "voc", "VOC_ROOT=/data/VOC2012").stdout), "cam")
    assert "--affinity clip --device" in plain and "--sgc" not in plain and "--dino" not in plain


def test_make_report_compares_refinements_and_chooses_the_decoders_masks_on_train():
    """The demo's defaults (REFINES none caa caa+sgc): text and vision CAMs and their CRF masks of every refinement
    on both splits, a decoder on each refinement's masks, and val predicted by the one `choose-pseudo` picks by its
    train mIoU."""
    result = make("-n", "report", "RUN=runs/x")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    for split in ("", "_val"):
        for protos in ("text", "vision"):
            cam = next(c for c in cmds if f"-o runs/x/caa+sgc/cams_{protos}{split} " in c)
            assert cam.split("bin/vpltool ")[1].startswith("cam ")
            assert f"-p runs/x/{protos}_prototypes.safetensors" in cam
            assert "--refine caa+sgc --affinity clip --sgc-segments 256 --sgc-clusters 32 --sgc-position 0" in cam
            assert any(f"-o runs/x/caa/cams_{protos}{split} " in c and "--box-threshold 0.95 --refine caa --affinity "
                       "clip " in c for c in cmds)
        for refine in ("", "caa/", "caa+sgc/"):
            for masks, cams in (("pseudo_text", "cams_text"), ("pseudo", "cams_vision")):
                assert makes_crf(cmds, f"runs/x/{refine}{cams}{split}", f"runs/x/{refine}{masks}{split}")
                assert any(f"eval runs/x/{refine}{masks}{split} " in c and
                           f"--json runs/x/metrics/{refine}{masks}{split}.json" in c for c in cmds)
    # W's seeds: none's text CAMs, GradCAM's maps as caa's run meets them (its --raw-out: one GradCAM for both)
    none_cams = next(c for c in cmds if "-o runs/x/cams_text " in c or "--raw-out runs/x/cams_text " in c)
    assert "--refine none --device" in none_cams or "--raw-out runs/x/cams_text --box-threshold 0.95 --refine caa " \
        "--affinity clip " in none_cams
    for refine in ("", "caa/", "caa+sgc/"):  # issue 37: a decoder per refinement, each scored on train
        assert any(f"train-decoder runs/x/{refine}pseudo -p runs/x/vision_prototypes.safetensors -o "
                   f"runs/x/{refine}decoder " in c for c in cmds)
        assert any(f"predict runs/x/{refine}decoder/decoder.safetensors --split train -o runs/x/{refine}pred_train "
                   "--scales 1 --no-flip" in c for c in cmds)
        assert any(f"eval runs/x/{refine}pred_train " in c and f"--json runs/x/metrics/{refine}pred_train.json" in c
                   for c in cmds)
    predict = next(c for c in cmds if "--split val -o runs/x/pred_val" in c)
    assert predict.startswith("pseudo=$(")  # the recipe stops if the choice fails
    assert "choose-pseudo runs/x none caa caa+sgc --pick auto --by decoder --overwrite) && " in predict
    assert 'predict "${pseudo%/pseudo}/decoder/decoder.safetensors" --split val' in predict


def test_make_voc_runs_one_refinement_only():
    cmds = commands(make("-n", "voc", "VOC_ROOT=/data/VOC2012").stdout)
    assert not any("choose-pseudo" in c or "runs/voc/caa" in c for c in cmds)
    assert "train-decoder runs/voc/pseudo " in stage(cmds, "train-decoder")


@pytest.mark.parametrize("target, dense, affinity, sgc", [("demo", False, False, False), ("dense", True, False, False),
                                                          ("affinity", False, True, False),
                                                          ("sgc", False, False, True)])
def test_make_demo_leaves_the_dense_affinity_and_sgc_rows_to_their_own_targets(target, dense, affinity, sgc):
    """`make demo` stays within its CPU budget: the open-vocabulary rows are `make dense`'s, the DINO affinity rows
    `make affinity`'s, SSR's caa+sgc rows (and its decoder, a third candidate of the choice) `make sgc`'s; each of
    them runs the demo's own rows (none and caa, a decoder on each, the table)."""
    result = make("-n", target, "RUN=runs/x")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    for r in ("", "caa/"):
        assert makes_crf(cmds, f"runs/x/{r}cams_vision", f"runs/x/{r}pseudo")
        assert any(f"train-decoder runs/x/{r}pseudo " in c for c in cmds)
    assert any("demo-report runs/x" in c for c in cmds)
    assert any("--dense" in c for c in cmds) == dense
    assert any("segment runs/x/world --split val -o runs/x/dense/naclip/segment_val" in c for c in cmds) == dense
    cass = [c for c in cmds if "segment runs/x/world --split val -o runs/x/dense/cass/segment_val" in c]
    assert bool(cass) == dense  # CASS's row: the whole image at the chosen side, the toy DINO as its proxy
    assert all("--dense cass" in c and "--short-side 144" in c and "--prob-threshold 0.9" in c
               and "--proxy-model test_vit --proxy-weights vpltool/assets/toy-dino/model.safetensors" in c
               for c in cass)
    assert any("eval runs/x/dense/cass/segment_val --json runs/x/metrics/dense/cass/segment_val.json" in c
               for c in cmds) == dense
    assert any("--affinity dino" in c for c in cmds) == affinity
    assert any("-o runs/x/caa@clip+dino/cams_vision " in c for c in cmds) == affinity
    # SSR's rows: every CAM and CRF folder of caa+sgc on both splits, and its decoder among the choice's candidates
    for folder in ("cams_text", "cams_vision", "cams_text_val", "cams_vision_val"):
        assert any(f"-o runs/x/caa+sgc/{folder} " in c and "--refine caa+sgc" in c for c in cmds) == sgc
    for folder in ("pseudo_text", "pseudo", "pseudo_text_val", "pseudo_val"):
        assert any(f"eval runs/x/caa+sgc/{folder} " in c for c in cmds) == sgc
    assert any("train-decoder runs/x/caa+sgc/pseudo " in c for c in cmds) == sgc
    choice = next(c for c in cmds if "choose-pseudo" in c)
    assert ("choose-pseudo runs/x none caa caa+sgc " if sgc else "choose-pseudo runs/x none caa --pick") in choice


def test_make_demo_keeps_refines_given_on_the_command_line():
    """`make demo REFINES=...` compares what the user named, not the demo's own two."""
    cmds = commands(make("-n", "demo", "RUN=runs/x", "REFINES=none caa+sgc").stdout)
    assert "choose-pseudo runs/x none caa+sgc --pick" in next(c for c in cmds if "choose-pseudo" in c)


@pytest.mark.parametrize("target,made", [("pseudo", "pseudo"), ("decoders", "pred_train")])
def test_choose_pseudo_quotes_a_make_command_that_makes_this_runs_missing_folders(target, made):
    """The fix choose-pseudo quotes names the run and its refinements (the Makefile's own RUN and REFINES are the
    demo's): run as quoted, it makes every candidate's folder of that run, and the candidate it was missing."""
    import shlex

    from vpltool.demo.choose_pseudo import make_fix

    fix = make_fix(target, Path("runs/mine"), ["none", "caa+sgc"])
    words = shlex.split(fix.strip("`"))
    assert words[:2] == ["make", target]
    result = make("-n", *words[1:])
    assert result.returncode == 0, result.stderr
    outs = {c.split(" -o ")[1].split()[0] for c in commands(result.stdout) if " -o " in c}
    assert f"runs/mine/caa+sgc/{made}" in outs, sorted(outs)
    assert not any(o.startswith("runs/demo") for o in outs), sorted(outs)

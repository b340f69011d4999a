"""The demo world's quality bars, measured on the held-out split by running the real Makefile pipeline end to end
(its commands through vpltool/runtime/forkserver.py: each a fork of one process that imported the libraries once).

Marked slow: a few minutes on 2 cores. CI runs it (`make test`); `make test-fast` skips it. The bars are the
project's yardstick: text-prototype CAMs must clearly beat chance, vision prototypes must beat text prototypes,
CRF must not lose what the CAMs found. Nothing here is tuned on the val split.

On which world: the demo's (seed 0, the toy CLIP shipped, `make demo`'s targets) with its
training side made smaller (TEST_WORLD: the first 160 of its 500 train scenes, the decoder 60 iterations instead
of 600, the chosen decoder's val masks from one view instead of four) and its held-out split whole (its 200 val
scenes, the README's). The bars are relations (vision beats text, CRF >= CAMs, caa >= none, beats chance), measured
on the same held-out scenes as the README's table: the text CAMs' rows on val and their CRF masks' are the README's
figures (no training behind them); the vision rows, the train rows and the decoder's are not (W and the decoders
learn from fewer scenes). The README's table is checked on the demo world itself by bench/bench_demo.py (its JSON's
``readme``: every README row `make demo` makes, to the printed 0.1). Why smaller: on the whole demo world this test
cost 529 CPU-s of the suite's 1,200 budget. On a Cascade Lake Xeon its 42 commands as processes cost 409.8 CPU-s
with 150 decoder iterations, the two train-decoder runs 76.6 of them, and those two 41.4 with 60 (bench/vpl_timed.py's
log). The decoder's iterations and views are the part no bar here measures (its val row is a strict xfail's, its
train rows only pick the candidate, whichever they pick). Half the val scenes is not an option: the text CAMs' bar
over chance holds by 2.6 points on the 200 (24.9 against 22.3) and fails on the first 100 (22.2 against 22.4).

In which numeric mode: fast, in fp32 on every CPU (the suite's VPLTOOL_ASSUME_AMX=0), not `make demo`'s reproducible
mode. Chosen when reproducible mode's products ran MKL's COMPATIBLE code path: on a Cascade Lake Xeon they ran the
decoder's and learn-prototypes' shapes 7 to 13 times slower than fast mode, and this test's pipeline, each command a
process, cost 319.1 CPU-s against 261.2 (medians of 3 alternating pairs; with the fork server this test went from
274.5 to 192.9 CPU-s), its 17 figures at most 8.9e-6 of mIoU apart (`python bench/bench_mode_cost.py --pairs 3`,
bench/results/mode_cost_intel_cascade_lake.json). Since the mode's products run numpy's pinned OpenBLAS
(vpltool/runtime/products.py) the pipeline costs the same in both modes on an AMD Zen 4 (147.1 CPU-s against 146.1,
figures within 5.9e-6: bench/results/mode_cost_amd_zen_4.json). The smallest margin of a bar here is 2.6 points,
over 2,900 times those differences.
That reproducible mode gives the same bytes on every CPU is tests/test_reproducible_run.py's to show, and the
README's table to the printed 0.1 bench/bench_demo.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpltool.runtime import forkserver  # the CLI as a fork server

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "vpltool" / "assets" / "toy-clip"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (TOY / "open_clip_model.safetensors").is_file(), reason="toy CLIP not shipped"),
]


# the demo world with a smaller training side (the module's docstring): the first 160 train scenes (a prefix: scene i
# depends on (seed, split, i) alone), each candidate's decoder trained 60 iterations, the chosen one's val masks from
# one view (`--scales 1 --no-flip`, as the choice's train masks; `make demo`'s: scales 1 and 0.75, each flipped); the
# val split whole, so the held-out bars are measured on the README's 200 val scenes
TEST_WORLD = ("WORLD_TRAIN=160", "WORLD_VAL=200", "DEC_ITERS=60", "PRED_ARGS=--scales 1 --no-flip")


@pytest.fixture(scope="module")
def demo_metrics(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("demo")
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if k != "VPLTOOL_MODEL_CONFIGS"}
    env.pop("OMP_NUM_THREADS", None)  # the pipeline should use every core, as `make demo` does ...
    if os.environ.get("PYTEST_XDIST_WORKER"):  # ... unless another test process shares them (`make test`): then
        env["OMP_NUM_THREADS"] = "1"  # one thread a stage, as OpenMP's barriers spin on an oversubscribed core
    # -j2 as `make demo` runs it: two independent stages at a time
    # `make demo`'s rows (its DEMO_ROWS): the open-vocabulary (DENSE), DINO-affinity and SSR (caa+sgc) rows are
    # `make dense`'s, `make affinity`'s and `make sgc`'s. One caa+sgc row is made first, the one a bar below reads
    # (its text CRF masks on val), so that the table lists it; the table is metrics.json (the HTML report, which no
    # test here reads, is tests/test_html_report.py's)
    # in fast mode and fp32 (the suite's VPLTOOL_ASSUME_AMX=0: --precision auto is fp32 on every CPU), not `make
    # demo`'s reproducible mode, whose MKL products are several times slower and whose figures here were within 1e-5
    # of these (the module's docstring); without `vpltool diagnose` (DIAGNOSE=), whose rows (metrics.json's
    # other_layers) no bar here reads
    make = ["make", "-C", str(ROOT), "-j2", f"RUN={run}", f"VENV={venv}", "DEVICE=cpu", "DENSE=", "DENSE_SEEDS=",
            "AFFINITY_ROWS=", "REFINES=none caa", "REPRODUCIBLE=0", "DIAGNOSE=", *TEST_WORLD]
    # each command a fork of one process that imported torch and the stages once (vpltool/runtime/forkserver.py:
    # 42 commands, ~2.5 CPU-s of imports each), with the environment the Makefile exports to its commands
    commands_env = {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"), "VPLTOOL_REPRODUCIBLE": "0",
                    "VPLTOOL_ASSUME_AMX": "0",
                    "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1")}
    with forkserver.Server(tmp_path_factory.mktemp("forkserver") / "sock", commands_env) as server:
        for target in (f"{run}/metrics/caa+sgc/pseudo_text_val.json", f"{run}/metrics.json"):
            pace.run([*make, f"VPL={server.client_command()}", target], 1800, check=True, env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads((run / "metrics.json").read_text())


def _miou(metrics: dict, stage_prefix: str, split: str = "val", refine: str | None = None) -> float:
    """The first row of that stage (the pipeline's own refinement), or the row of ``refine``."""
    row = next(r for r in metrics["stages"] if r["stage"].startswith(stage_prefix) and refine in (None, r["refine"]))
    assert row[split] is not None, f"{stage_prefix}: stage did not run on {split}"
    return row[split]["miou"]


def test_text_prototype_cams_beat_chance(demo_metrics):
    assert _miou(demo_metrics, "CAM, text") > demo_metrics["chance"]["val"]["random CAMs"] + 0.15


# The bars, on the held-out split (W learned on train; nothing chosen on val). A bar the shipped toy CLIP
# does not meet is a strict xfail that states the measured figure: the day it is met, the test fails until the
# marker goes (docs/learn-prototypes.md#vpl-on-the-demo-world has the study).
@pytest.mark.xfail(strict=True, reason="not met: text-prototype CAMs 24.9 on val with the shipped toy CLIP (bar 45); "
                   "no toy tried reached it (best 36.9, an earlier toy, on which vision CAMs lost)")
def test_text_prototype_cams_reach_the_bar(demo_metrics):
    assert _miou(demo_metrics, "CAM, text") >= 0.45


def test_vision_prototypes_beat_text_prototypes(demo_metrics):
    assert _miou(demo_metrics, "CAM, vision") >= _miou(demo_metrics, "CAM, text") + 0.05


def test_vision_prototypes_beat_text_prototypes_on_the_scenes_they_were_learned_on(demo_metrics):
    """The paper's seed figure is on the training set (VOC train): the effect must show there too."""
    assert _miou(demo_metrics, "CAM, vision", "train") >= _miou(demo_metrics, "CAM, text", "train") + 0.05


def test_crf_pseudo_masks_at_least_as_good_as_vision_cams(demo_metrics):
    assert _miou(demo_metrics, "CRF pseudo") >= _miou(demo_metrics, "CAM, vision")


def test_every_refinement_is_in_the_table(demo_metrics):
    """Issue 27: the demo compares none and caa, text and vision CAMs and their CRF masks (caa+sgc's rows are `make
    sgc`'s: tests/test_reproduce.py checks that it makes every one of them)."""
    for stage in ("CAM, text", "CAM, vision", "CRF masks from text", "CRF pseudo"):
        for refine in ("none", "caa"):
            for split in ("train", "val"):
                assert 0 < _miou(demo_metrics, stage, split, refine) < 1
    choice = demo_metrics["pseudo_choice"]  # issue 37's rule: the decoder that scores best on train
    best = max(choice["candidates"], key=lambda c: c["decoder_train_miou"])
    assert choice["chosen"] == best["refine"] == next(r for r in demo_metrics["stages"]
                                                      if r["stage"].startswith("decoder"))["refine"]


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("stage", ["CAM, text", "CAM, vision"])
def test_caa_at_least_none(demo_metrics, stage, split):
    """Issue 36's bar: CLIP-ES's class-aware attention affinity does not lower the toy CLIP's CAMs (its box threshold
    chosen on train, studies/study_box_threshold.py)."""
    assert _miou(demo_metrics, stage, split, "caa") >= _miou(demo_metrics, stage, split, "none")


@pytest.mark.xfail(strict=True, reason="not met since issue 36's toy CLIP and box threshold 0.95: caa+sgc's text CRF "
                   "masks 28.4 on val against caa's 38.1 (SGC's groups cut short CAA's spread from the peaks; with the "
                   "previous toy at box threshold 0.4: 41.4 against 26.2)")
def test_sgc_text_crf_masks_at_least_caas_on_val(demo_metrics):
    """Issue 27's bar: SSR's superpixel-guided correction does not lower the text-prototype CRF masks (val)."""
    assert _miou(demo_metrics, "CRF masks from text", refine="caa+sgc") >= \
        _miou(demo_metrics, "CRF masks from text", refine="caa")


@pytest.mark.xfail(strict=True, reason="not met: decoder 56.8 on val on this test's world (TEST_WORLD), the caa one "
                   "chosen on train by issue 37's rule (58.6 on train against none's 57.9); on the demo world 69.9, "
                   "the caa one (bar 75; 71.9 with the previous toy; 73.4 with an earlier one, on which vision CAMs "
                   "lost to text CAMs); `make sam`'s decoder on SAM's masks gives 77.7")
def test_decoder_prediction_on_val(demo_metrics):
    assert _miou(demo_metrics, "decoder") >= 0.75

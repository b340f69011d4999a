"""studies/weclip_demo.py's reference rows: all-background and uniform chance from a confusion matrix."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

import weclip_demo  # noqa: E402


def test_references_all_background_and_chance():
    # rows = GT (background 100 px, class 1 10 px, class 2 absent), last column = invalid predictions
    ref = weclip_demo.references([[90, 10, 0, 0], [5, 5, 0, 0], [0, 0, 0, 0]])
    assert ref["classes_present"] == 2
    assert ref["all_background"] == pytest.approx((100 / 110) / 2)
    # uniform over N = 3 classes, per pixel: simulate it and compare with the closed form
    rng = np.random.default_rng(0)
    gt = np.repeat([0, 1], [100_000, 10_000])
    pred = rng.integers(0, 3, gt.size)
    ious = [((gt == c) & (pred == c)).sum() / ((gt == c) | (pred == c)).sum() for c in (0, 1)]
    assert ref["chance_uniform"] == pytest.approx(float(np.mean(ious)), abs=2e-3)


def test_make_weclip_runs_each_recipes_iterations_and_the_train_split_check():
    """`make weclip`: WeCLIP 100 and WeCLIP+ 500 iterations (chosen on the training split), each seed's val
    prediction, and the check seed's prediction of the training split (what the choice read)."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # outside `make test`
    dry = subprocess.run(["make", "-n", "weclip", "RUN=runs/x", "WECLIP_SEEDS=0 1", "DEVICE=cpu"], cwd=root,
                         capture_output=True, text=True, check=True, env=env).stdout
    cmds = re.sub(r"\\\n\s*", "", dry).splitlines()
    train = [c for c in cmds if " train-decoder " in c]
    assert len(train) == 4
    assert all("--iters 100" in c for c in train if "--recipe weclip " in c)
    assert all("--iters 500" in c and "--dino-weights" in c for c in train if "--recipe weclip+ " in c)
    predicts = [c for c in cmds if " predict " in c]
    assert sum("--split val" in c for c in predicts) == 4
    assert sorted(c.split()[2] for c in predicts if "--split train" in c) == [
        "runs/x/weclip_seed0/decoder.safetensors", "runs/x/weclipplus_seed0/decoder.safetensors"]
    assert cmds[-1].endswith("studies/weclip_demo.py runs/x --seeds 0 1")


def test_summary_reports_the_train_split_check_beside_its_all_background(tmp_path, capsys, monkeypatch):
    import json

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    val = {"miou": 0.3, "confusion": [[90, 10, 0], [5, 5, 0]]}
    train = {"miou": 0.45, "confusion": [[80, 0, 0], [0, 20, 0]]}
    for stem in ("weclip_seed0", "weclipplus_seed0"):
        (metrics / f"{stem}.json").write_text(json.dumps(val))
    (metrics / "train_weclipplus_seed0.json").write_text(json.dumps(train))
    monkeypatch.setattr(sys, "argv", ["weclip_demo.py", str(tmp_path), "--seeds", "0", "1"])
    weclip_demo.main()
    out = json.loads(capsys.readouterr().out)
    assert out["weclip+"]["val_miou"] == {"0": 0.3, "1": None} and out["weclip+"]["seeds_run"] == 1
    assert out["train_check"]["weclip+"] == {"0": 0.45} and out["train_check"]["weclip"] == {}
    assert out["train_check"]["references"]["all_background"] == pytest.approx(0.8 / 2)

"""studies/weclip_demo.py's reference rows: all-background and uniform chance from a confusion matrix."""

from __future__ import annotations

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

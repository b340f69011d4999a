"""parity/pgseg_trainer_parity.py without the clones: ``--quick`` (run_train_text against the reference's loop
restated with timm's scheduler, plus a negative control), the drop path the references' timm draws, and the committed
JSON's figures against the bars."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity"), str(ROOT / "bench")]

import pgseg_trainer_quick  # noqa: E402

RESULT = ROOT / "parity" / "results" / "pgseg_trainer_parity.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return pgseg_trainer_quick.quick(tmp_path_factory.mktemp("pgseg_trainer_quick"))


def test_trainer_follows_the_restated_reference_loop(quick):
    assert quick["steps"] == 12
    assert quick["restated"]["same_keys"]
    assert quick["restated"]["max_abs_state"] <= 1e-5
    assert quick["restated"]["lr_max_abs"] == 0.0
    assert 0 < quick["clipped_steps"] < quick["steps"]  # the clip binds, but not always
    assert quick["bar_met"]


def test_a_schedule_one_step_off_is_seen(quick):
    assert quick["schedule_one_step_ahead"]["lr_max_abs"] > 0
    assert quick["schedule_one_step_ahead"]["max_abs_state"] > 1e-5


def test_drop_path_draws_as_timm_0412():
    """``keep + rand`` floored, ``x / keep * mask`` (timm 0.4.12's ``drop_path``): masks from the same generator
    call as the references', so a seeded step drops the same samples."""
    from vpltool.models.text.pgseg.groupvit import DropPath

    x = torch.randn(64, 3, 5)
    layer = DropPath(0.3).train()
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    mask = (0.7 + torch.rand(64, 1, 1)).floor_()
    assert torch.equal(got, x.div(0.7) * mask)
    assert 0 < int(mask.sum()) < 64
    assert torch.equal(layer.eval()(x), x)


def test_committed_result_meets_the_bars():
    if not RESULT.is_file():
        pytest.skip("no committed trainer parity")
    result = json.loads(RESULT.read_text())
    cases = result["cases"]
    assert {"pgseg-w1", "pgseg-w2", "groupvit-w1", "groupvit-w2"} <= set(cases)
    for case in cases.values():
        assert case["steps"] >= 20 and case["steps"] == case["steps_reference"]
        assert case["max_abs_all"] <= 1e-5 and case["max_abs_adamw_moments"] <= 1e-5
        assert not case["only_reference"] and not case["only_vpltool"]
        assert case["weight_decay_groups_equal"]
        assert 0 < case["warmup_steps"] < case["steps"]
        assert 0 < case["clipped_steps"] < case["steps"]
        assert case["bar_met"]
    assert result["bar_met"]

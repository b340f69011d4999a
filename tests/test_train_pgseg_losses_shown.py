"""train-pgseg logs and prints the finite loss terms: T-NPR's term is NaN when HRS keeps no row (the reference's
arithmetic, kept in the model's losses for parity), and the run says so in one line."""

from __future__ import annotations

import math
from types import SimpleNamespace

from vpltool.stages.train_text import shown_losses


def test_a_nan_t_npr_term_is_left_out_of_the_logged_losses():
    nan, cfg = float("nan"), SimpleNamespace(npr_weight=0.1)
    got = {"loss": nan, "contrastive": 2.0, "npr": nan, "npr_stage1": 1.0, "npr_stage2": 3.0, "npr_text": nan,
           "multi_label": 0.5}
    shown, empty = shown_losses(got, cfg)
    assert empty and "npr_text" not in shown
    assert math.isclose(shown["npr"], 0.4) and math.isclose(shown["loss"], 2.9)
    finite = {**got, "npr_text": 4.0, "npr": 0.44, "loss": 2.94}
    assert shown_losses(finite, cfg) == (finite, False)
    broken = {**got, "contrastive": nan}  # a diverged step stays NaN: `diverged` must still see it
    assert shown_losses(broken, cfg) == (broken, False)

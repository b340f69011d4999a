"""bench/bench_mode_cost.py's pure parts (its runs cost minutes: the script itself is run by hand, its JSON in
bench/results): the environment of each mode, and how two tables are compared."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_mode_cost as bmc  # noqa: E402

from vpltool.runtime import numerics  # noqa: E402


def test_each_mode_runs_fp32_on_one_thread_without_the_shells_pins(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX2")  # a pin of the shell's own: neither mode inherits it
    monkeypatch.setenv(numerics.ASSUME_AMX_ENV, "1")
    fast, reproducible = bmc.mode_env("fast"), bmc.mode_env("reproducible")
    assert fast[numerics.MODE_ENV] == "0" and reproducible[numerics.MODE_ENV] == "1"
    for env in (fast, reproducible):
        assert env[numerics.ASSUME_AMX_ENV] == "0" and env["OMP_NUM_THREADS"] == "1" and "MKL_CBWR" not in env


def test_two_tables_are_compared_cell_by_cell_and_at_the_printed_tenth():
    a = {"CAM, text [none] val": 0.24886, "CAM, text [caa] val": 0.37449, "decoder [caa] val": 0.5}
    b = {"CAM, text [none] val": 0.24889, "CAM, text [caa] val": 0.37451, "CRF [none] val": 0.3}
    got = bmc.compare(a, b)
    assert got["figures"] == 2 and got["only_in_one"] == ["CRF [none] val", "decoder [caa] val"]
    assert abs(got["max_abs_diff_miou"] - 3e-5) < 1e-9 and got["max_diff_at"] == "CAM, text [none] val"
    assert got["cells_differ_at_0_1"] == ["CAM, text [caa] val"]  # printed 37.4 and 37.5

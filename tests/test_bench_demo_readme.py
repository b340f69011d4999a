"""bench/bench_demo.py's check of the README's demo table against a run's metrics.json (the README's figures are
checked there, on the demo world itself; tests/test_demo_quality.py checks the bars on a smaller world)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_demo  # noqa: E402

README = (ROOT / "README.md").read_text()


def _metrics_of(rows: list[dict]) -> dict:
    """A metrics.json whose stages print exactly ``rows``' figures (demo-report's stage names: the prefixes)."""
    def split(figure: str):
        return None if figure == "—" else {"miou": float(figure) / 100}
    return {"stages": [{"stage": r["stage"] + " (as demo-report names it)", "refine": r["refine"],
                        "train": split(r["train"]), "val": split(r["val"])} for r in rows]}


def test_the_readme_table_is_read_with_every_stage_the_demo_makes():
    rows = bench_demo.readme_rows(README)
    for stage in ("CAM, text", "CAM, vision", "CRF masks from text", "CRF pseudo"):
        assert {"none", "caa"} <= {r["refine"] for r in rows if r["stage"] == stage}, stage
    assert [r["refine"] for r in rows if r["stage"] == "decoder"] == ["caa"]
    assert all(r["train"] == "—" or 0 < float(r["train"]) < 100 for r in rows)


def test_a_run_that_prints_the_readme_s_figures_matches_and_one_that_differs_is_named():
    rows = bench_demo.readme_rows(README)
    metrics = _metrics_of(rows)
    same = bench_demo.check_readme(metrics, README)
    assert same == {"rows_compared": len(rows), "mismatches": [], "not_made": []}
    moved = next(r for r in metrics["stages"] if r["stage"].startswith("CRF pseudo") and r["refine"] == "caa")
    moved["val"]["miou"] += 0.001  # 0.1 point: the README's printed precision
    got = bench_demo.check_readme(metrics, README)
    assert [(m["row"], m["split"]) for m in got["mismatches"]] == [("CRF pseudo [caa]", "val")]


def test_rows_and_splits_the_run_did_not_make_are_listed_not_compared():
    rows = bench_demo.readme_rows(README)
    metrics = _metrics_of([r for r in rows if r["refine"] in ("none", "caa")])
    sgc = next(r for r in rows if r["stage"] == "CRF masks from text" and r["refine"] == "caa+sgc")
    metrics["stages"].append({**_metrics_of([sgc])["stages"][0], "train": None})  # val alone, as the demo test's
    got = bench_demo.check_readme(metrics, README)
    assert got["mismatches"] == []
    assert "CRF masks from text [caa+sgc] train" in got["not_made"]
    assert "CAM, text [caa+sgc]" in got["not_made"]
    assert got["rows_compared"] == len(metrics["stages"])

"""bench/sidebyside.py, the harness of bench_vs_reference.py: two worker processes timed in alternation, their
own prints kept off the protocol, the order swapped every pair, each side's last output saved; and the page's
table of the recorded run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import sidebyside  # noqa: E402

WORKER = """
import sys, time
sys.path.insert(0, {bench!r})
import sidebyside
sidebyside.claim_stdout()
print("a clone's module prints as it is imported")
calls = []

def unit():
    calls.append(time.process_time())
    print("a print inside the unit", flush=True)
    sum(i * i for i in range({work}))  # CPU work the process's clock sees
    return {{"side": {name!r}, "calls": len(calls)}}

sidebyside.serve(unit)
"""


def _side(tmp_path: Path, name: str, work: int) -> sidebyside.Side:
    code = WORKER.format(bench=str(ROOT / "bench"), name=name, work=work)
    return sidebyside.Side(name, [sys.executable, "-c", code], tmp_path / f"{name}.log",
                           {**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_workers_alternate_and_their_prints_stay_off_the_protocol(tmp_path):
    first, second = _side(tmp_path, "first", 200_000), _side(tmp_path, "second", 20_000)
    try:
        rows = sidebyside.alternate(first, second, 3)
        first.save(tmp_path / "first.pt")
        second.save(tmp_path / "second.pt")
    finally:
        first.close()
        second.close()
    assert [list(r) for r in rows] == [["first", "second"], ["second", "first"], ["first", "second"]]
    assert all(r[s]["cpu"] > 0 and r[s]["wall"] > 0 for r in rows for s in r)
    assert torch.load(tmp_path / "first.pt") == {"side": "first", "calls": 4}  # the warm-up, then 3 pairs
    assert torch.load(tmp_path / "second.pt") == {"side": "second", "calls": 4}
    log = (tmp_path / "first.log").read_text()
    assert "a print inside the unit" in log and "prints as it is imported" in log
    assert first.proc.returncode == 0 and second.proc.returncode == 0


def test_the_page_shows_each_recorded_ratio_and_its_bar():
    sys.path.insert(0, str(ROOT / "docgen"))
    import make_table

    recorded = json.loads((ROOT / "bench" / "results" / "vs_reference.json").read_text())
    lines = "\n".join(make_table.vs_reference_section(recorded))
    for method, m in recorded["methods"].items():
        row = next(line for line in lines.splitlines() if line.startswith(f"| {method} |"))
        assert make_table.num(m["ratio_median"]) in row and ("**not met**" in row) != m["bar_met"]

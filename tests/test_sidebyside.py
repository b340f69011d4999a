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


COUNTED = """
import sys
sys.path.insert(0, {bench!r})
import sidebyside, torch
sidebyside.claim_stdout()
x, w, calls = torch.ones(4, 8), torch.ones(8, 3), []

def unit():
    calls.append(1)
    return {{"out": x @ w, "calls": len(calls)}}

sidebyside.serve(unit)
"""


def test_a_worker_counts_one_more_unit_untimed_and_the_floor_is_its_flops_at_the_fastest_rate(tmp_path):
    """``flops``: one more unit under torch's FLOP counter (2 x 4 x 8 x 3 multiply-adds), answered as a count, the
    unit run (the saved output after it is that unit's); bench_vs_reference's floor: those FLOPs at the fastest
    probe (or the roofline's shape where faster), over the reference's median CPU-seconds."""
    side = sidebyside.Side("ref", [sys.executable, "-c", COUNTED.format(bench=str(ROOT / "bench"))],
                           tmp_path / "ref.log", {**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        side.run()
        counted = side.ask("flops")
        side.save(tmp_path / "out.pt")
    finally:
        side.close()
    assert counted["gflop"] * 1e9 == 2 * 4 * 8 * 3 and counted["by_op_gflop"] == {"aten.mm": 0.0}
    assert torch.load(tmp_path / "out.pt")["calls"] == 1  # save gives the last timed unit's output, not the count's
    sys.path.insert(0, str(ROOT / "parity"))
    import bench_vs_reference as bv

    result = {"reference_flops": {"gflop": 30.0}, "cpu_seconds_median": {"reference": 2.0, "vpltool": 1.5}}
    probes = {"shape": "914x768x3072", "mkl_gflops": 50.0, "onednn_gflops": 60.0}
    floor = bv.floor_of(result, probes)
    assert floor["peak_gflops_per_s"] == 60.0 and floor["floor_seconds"] == 0.5
    assert floor["floor_over_reference"] == 0.25
    assert bv.floor_of(result, probes, roofline_peak=100.0)["floor_over_reference"] == 0.15
    # with torch's attention: the counted fused attention (10 of the 30 GFLOP) at that kernel's fastest rate (20 here),
    # the rest at the fastest GEMM rate (60): 1/3 + 1/2 s, over the reference's 2 s
    result["reference_flops"]["by_op_gflop"] = {bv.SDPA_OP: 10.0, "aten.addmm": 20.0}
    kernel = bv.floor_of(result, probes, attention={"1x12x1029x64": 20.0, "6x12x1029x64": 10.0})
    assert kernel["floor_seconds"] == 0.5 and kernel["with_torch_attention"]["floor_seconds"] == 0.833
    assert kernel["with_torch_attention"]["floor_over_reference"] == 0.417
    assert bv.attention_shapes("talk2dino") == [(1, 12, 1029, 64), (6, 12, 1029, 64)]
    assert bv.attention_shapes("corrclip") == []
    rates = __import__("benchlib").attention_rates([(1, 2, 16, 8)], repeats=1)
    assert list(rates) == ["1x2x16x8"] and rates["1x2x16x8"] > 0


def test_the_page_shows_each_recorded_ratio_and_its_bar():
    sys.path.insert(0, str(ROOT / "docgen"))
    import make_table

    recorded = json.loads((ROOT / "bench" / "results" / "vs_reference.json").read_text())
    lines = "\n".join(make_table.vs_reference_section(recorded))
    for method, m in recorded["methods"].items():
        row = next(line for line in lines.splitlines() if line.startswith(f"| {method} |"))
        assert make_table.num(m["ratio_median"]) in row and ("**not met**" in row) != m["bar_met"]


def _result(tmp_path: Path, name: str, cpu_model: int, **fields) -> Path:
    identity = {"vendor": "AuthenticAMD", "family": 25, "model": cpu_model, "stepping": 1, "generation": "Zen 4"}
    path = tmp_path / name
    path.write_text(json.dumps({"machine": {"cpu_identity": identity}, **fields}))
    return path


def test_one_cpu_s_units_merge_with_their_floors_and_goals_and_another_cpu_is_refused(tmp_path):
    """units_vs_reference.py: each bench's units with ratio, floor, outputs and both sides' memory; the goal is 0.8
    where the floor is at most 0.8, else the floor + 0.1; a file of another CPU, or naming none, is refused."""
    import pytest
    import units_vs_reference as uv

    vs = _result(tmp_path, "vs.json", 17, benchmark="vs-reference", command="python bench/bench_vs_reference.py",
                 methods={"corrclip": {"unit": "one photo", "ratio_median": 0.7, "outputs": {"labels_equal": 1.0},
                                       "rss_peak_mib": {"vpltool": 2000.0, "reference": 2400.0},
                                       "floor": {"floor_over_reference": 0.85}}})
    sam = _result(tmp_path, "sam.json", 17, benchmark="sam3-vs-reference", model="full-size SAM 3", unit="a photo",
                  ratio_median=0.82, outputs={"labels_equal": 1.0}, floor={"floor_over_reference_median": 0.6},
                  unit_rss_peak_mib_max={"vpltool": 5000.0, "reference": 6000.0})
    merged = uv.merge([vs, sam])
    corr, full = merged["units"]["corrclip"], merged["units"]["sam3 (full)"]
    assert (corr["floor"], corr["goal"], corr["goal_met"]) == (0.85, 0.95, True)  # the floor is above 0.8
    assert (full["floor"], full["goal"], full["goal_met"]) == (0.6, 0.8, False)
    assert full["rss_peak_mib"] == {"vpltool": 5000.0, "reference": 6000.0} and full["file"] == "sam.json"
    # a run whose probes caught a slow stretch: its floor at the CPU's fastest rate that any run measured
    kernel = {"attention_gflop": 216.0, "attention_gflops_per_s": {"1x12x1029x64": 80.0, "6x12x1029x64": 72.0},
              "floor_over_reference": 0.844}  # (1080 / 100 + 216 / 80) / 16
    slow = _result(tmp_path, "slow.json", 17, benchmark="vs-reference", methods={"talk2dino": {
        "unit": "a step", "ratio_median": 0.83, "outputs": {}, "cpu_seconds_median": {"reference": 16.0},
        "floor": {"floor_over_reference": 0.81, "reference_gflop": 1296.0, "peak_gflops_per_s": 100.0,
                  "with_torch_attention": kernel}}})
    fast = _result(tmp_path, "fast.json", 17, benchmark="vs-reference", methods={"talk2dino_run": {
        "unit": "a run", "ratio_median": 0.84, "outputs": {}, "cpu_seconds_median": {"reference": 20.0},
        "floor": {"floor_over_reference": 0.59, "reference_gflop": 1296.0, "peak_gflops_per_s": 108.0}}})
    units = uv.merge([slow, fast])["units"]
    step = units["talk2dino"]
    assert (step["floor"], step["floor_as_run"], step["floor_rate_from"]) == (0.75, 0.81, "fast.json")
    assert (step["goal"], step["goal_met"]) == (0.8, False)  # at its own run's floor the goal would read 0.91, met
    # the floor with torch's attention beside it, its products at the fastest rate too: (1080 / 108 + 216 / 80) / 16;
    # it does not set the goal
    assert (step["floor_with_torch_attention"], step["floor_with_torch_attention_as_run"]) == (0.794, 0.844)
    assert "floor_with_torch_attention" not in units["talk2dino_run"]
    assert units["talk2dino_run"]["floor"] == 0.59 and "floor_as_run" not in units["talk2dino_run"]
    # RADSeg: its floor at that rate too, and held to 0.8 whatever its floor (a floor + 0.1 would read 0.906, met)
    radseg = _result(tmp_path, "radseg.json", 17, benchmark="radseg-vs-reference", ratio_median=0.85, outputs={},
                     cpu_seconds_median={"reference": 6.0}, floor={"gflop": 540.0, "peak_gflops_per_s": 100.0,
                                                                   "floor_over_reference": 0.9})
    seg = uv.merge([slow, fast, radseg])["units"]["radseg"]
    assert (seg["floor"], seg["floor_as_run"], seg["goal"], seg["goal_met"]) == (0.833, 0.9, 0.8, False)
    other = _result(tmp_path, "other.json", 1, benchmark="radseg-vs-reference", ratio_median=0.9, outputs={})
    with pytest.raises(SystemExit, match="other.json: another CPU.*model 1 vs 17"):
        uv.merge([vs, other])
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"benchmark": "vs-reference", "machine": {"cpu": "AMD EPYC"}, "methods": {}}))
    with pytest.raises(SystemExit, match="bare.json: records no CPU family"):
        uv.merge([bare])


def test_a_merged_result_merged_again_keeps_each_method_s_own_run(tmp_path):
    """bench_vs_reference.py --merge: each method keeps the command and commit of the run that measured it, also
    when the file it comes from is itself a merge; later files' methods replace earlier ones; the head is the
    first's."""
    import bench_vs_reference as bv

    def run(name, commit, methods):
        path = tmp_path / name
        path.write_text(json.dumps({"benchmark": "vs-reference", "command": f"run {commit}",
                                    "vpltool_commit": commit, "methods": {m: {"ratio_median": r}
                                                                          for m, r in methods.items()}}))
        return path

    old = run("old.json", "aaa", {"corrclip": 0.6, "talk2dino": 0.84})
    step = run("step.json", "bbb", {"talk2dino_step": 0.76})
    first = tmp_path / "first.json"
    first.write_text(json.dumps(bv.merge([old, step])))
    new = run("new.json", "ccc", {"talk2dino": 0.83})
    merged = bv.merge([first, new])
    methods = merged["methods"]
    assert merged["vpltool_commit"] == "aaa" and methods["talk2dino"]["ratio_median"] == 0.83
    assert {m: v["run"]["vpltool_commit"] for m, v in methods.items()} == {
        "corrclip": "aaa", "talk2dino": "ccc", "talk2dino_step": "bbb"}

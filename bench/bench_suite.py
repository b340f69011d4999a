"""`make test`'s CPU time: both of its pytest passes (all tests, then the numeric ones as a CPU with AMX), each test's
CPU-seconds and each file's, against the 20-CPU-minute budget; prints ONE JSON object.

    python bench/bench_suite.py > bench/results/suite_timing_<cpu>.json         # runs both passes (~30 CPU-min)
    python bench/bench_suite.py --from PASS1.json PASS2.json                  # or reads two passes already run

A pass is ``python -m pytest -q -n WORKERS --dist loadfile`` (all tests) or ``python -m pytest -q -p no:xdist -m
numeric`` (the numeric ones, in one process) as the Makefile's ``test`` target runs them,
with ``VPLTOOL_TEST_CPU_JSON`` set: tests/conftest.py then writes the pass's CPU time (user + system of pytest, its
workers and every command they ran) and each test's (its fixtures' setup included: a shared fixture counts for the
first test that uses it). ``--from`` reads such files (e.g. from ``VPLTOOL_TEST_CPU_JSON=F make test``, which writes
the second pass over the first: give each pass its own file). The budget is tests/conftest.py's ``CPU_BAR_MIN``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the Makefile's `test`: (name, pytest arguments, environment, whether it runs in --workers processes)
PASSES = (("all", [], {}, True), ("numeric", ["-m", "numeric"], {"VPLTOOL_ASSUME_AMX": "1"}, False))


def budget_min() -> float:
    """tests/conftest.py's CPU_BAR_MIN (read, not imported: importing conftest would set the suite's environment)."""
    for line in (ROOT / "tests" / "conftest.py").read_text().splitlines():
        if line.startswith("CPU_BAR_MIN"):
            return float(line.split("=")[1].split("#")[0])
    raise SystemExit("tests/conftest.py names no CPU_BAR_MIN")


def run_pass(args: list[str], env: dict, out: Path, workers: int) -> float:
    """One pytest pass writing its CPU JSON to ``out``; its wall seconds (its exit status is not ours: a failing
    test still costs what it cost)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *(["-n", str(workers), "--dist", "loadfile"] if workers else ["-p", "no:xdist"]), *args]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env={**env, "VPLTOOL_TEST_CPU_JSON": str(out)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def summarise(name: str, data: dict, top: int, wall_s: float | None = None) -> dict:
    """One pass: its CPU-seconds, its costliest tests and every file's sum, costliest first."""
    tests = data["tests"]
    files: dict[str, float] = defaultdict(float)
    for node, cpu in tests.items():
        files[node.split("::")[0]] += cpu
    return {"pass": name, "cpu_s": round(data["user_s"] + data["sys_s"], 1), "user_s": round(data["user_s"], 1),
            "sys_s": round(data["sys_s"], 1), "wall_s": wall_s, "tests": len(tests),
            "in_tests_cpu_s": round(sum(tests.values()), 1),
            "top_tests": [[k, round(v, 1)] for k, v in sorted(tests.items(), key=lambda kv: -kv[1])[:top]],
            "files": [[k, round(v, 1)] for k, v in sorted(files.items(), key=lambda kv: -kv[1])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="given", nargs="+", type=Path, metavar="PASS",
                    help="CPU JSON files of tests/conftest.py, in make test's order (the full pass, the numeric "
                         "pass; --passes names them where not both): no run")
    ap.add_argument("--passes", nargs="+", choices=[p[0] for p in PASSES], default=None,
                    help="with --from: which passes the files are (default: all, numeric)")
    ap.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (the Makefile's TEST_WORKERS)")
    ap.add_argument("--top", type=int, default=40, help="how many of the costliest tests to list per pass")
    ap.add_argument("--command", default=None, help="with --from: the command that made the files, recorded")
    benchlib.add_common_args(ap, "unused (the suite is the measurement)", "cpu (the suite's)")
    args = ap.parse_args()
    passes, walls = [], [None, None]
    if args.given:
        passes = [json.loads(p.read_text()) for p in args.given]
        names = args.passes or [p[0] for p in PASSES][:len(passes)]
        if len(names) != len(passes):
            raise SystemExit("--passes names one pass for each --from file")
        how = args.command or "tests/conftest.py's VPLTOOL_TEST_CPU_JSON files " + ", ".join(map(str, args.given))
    else:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, extra, more, in_workers) in enumerate(PASSES):
                walls[i] = run_pass(extra, {**env, **more}, Path(tmp) / f"{name}.json",
                                    args.workers if in_workers else 0)
                passes.append(json.loads((Path(tmp) / f"{name}.json").read_text()))
        how = f"python bench/bench_suite.py --workers {args.workers} (make test's two pytest passes)"
        names = [p[0] for p in PASSES]
    rows = [summarise(name, data, args.top, wall) for name, data, wall in zip(names, passes, walls)]
    total_min = sum(r["cpu_s"] for r in rows) / 60
    print(json.dumps({"benchmark": "suite", "machine": benchlib.machine("cpu"), "how": how,
                      "cpu_minutes": round(total_min, 1), "budget_cpu_minutes": budget_min(),
                      "within_budget": total_min <= budget_min() if len(rows) == len(PASSES) else None,
                      "passes_measured": [r["pass"] for r in rows], "passes": rows}, indent=1))


if __name__ == "__main__":
    main()

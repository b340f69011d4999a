"""What each benchmark's ``--quick`` costs `make test`: CPU-seconds per script, its child processes included; prints
ONE JSON object.

    python bench/quick_costs.py                      # every script tests/test_benchmarks.py runs
    python bench/quick_costs.py bench_memory.py      # the ones named (as tests/test_benchmarks.py's SCRIPTS keys)

The test module starts the scripts together; here they run one at a time, each as tests/test_benchmarks.py starts
it (same arguments and environment: one torch thread, offline, no GPU), and its CPU time is user + sys of it and
every process it waited for (``RUSAGE_CHILDREN`` before and after). CPU time, not wall time: the machine's load
changes it little. A failing script is reported with its exit code and the tail of its stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_benchmarks import BENCH, SCRIPTS, _env  # noqa: E402 (the scripts and environment the test uses)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cost(name: str) -> dict:
    """One SCRIPTS entry's ``--quick``, alone: its CPU-s (children included), wall seconds and exit code."""
    script, *args = name.split()
    cpu, start = children_cpu_s(), time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--quick"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True)
    out = {"cpu_s": round(children_cpu_s() - cpu, 1), "wall_s": round(time.perf_counter() - start, 1),
           "exit_code": done.returncode}
    if done.returncode:
        out["stderr_tail"] = done.stderr[-2000:]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scripts", nargs="*", help="SCRIPTS keys (default: all of them)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.scripts) - set(SCRIPTS))
    if unknown:
        ap.error(f"not a script of tests/test_benchmarks.py: {', '.join(unknown)} (one of: {', '.join(SCRIPTS)})")
    costs = {name: cost(name) for name in args.scripts or SCRIPTS}
    print(json.dumps({"benchmark": "quick-costs", "machine": benchlib.machine("cpu"), "scripts": costs,
                      "total_cpu_s": round(sum(c["cpu_s"] for c in costs.values()), 1)}))


if __name__ == "__main__":
    main()

"""What reproducible mode costs on this CPU, and what it changes: one JSON object
(bench/results/mode_cost_<cpu>.json).

    python bench/bench_mode_cost.py [--pairs 1] [--work /tmp/bench-mode-cost] [--quick]

Two measurements, each in fast mode (fp32 on every CPU: ``VPLTOOL_ASSUME_AMX=0``, so a CPU with AMX does not turn
``--precision auto`` into bf16) and in reproducible mode (``VPLTOOL_REPRODUCIBLE=1``, `make demo`'s):

* ``products``: the fp32 matrix products of the demo's heaviest stages (:data:`SHAPES`: the decoder's layers and its
  upsampling, learn-prototypes' pixels against W), one thread, in a new process per mode (each library reads its
  pins when it loads), CPU-seconds per product and GFLOP/s, each taken as the stages take it (the probe imports
  ``vpltool.device``): reproducible mode runs them through numpy's OpenBLAS pinned to its Haswell kernels
  (:mod:`vpltool.runtime.products`; before, MKL's COMPATIBLE code path, the one branch of MKL every x86-64 CPU runs
  alike, about a third of OpenBLAS's rate);
* ``pipeline``: tests/test_demo_quality.py's world and targets (the demo world with 160 train scenes, each decoder
  60 iterations, one view), ``make RUN/metrics.json``, each command a process of its own, in alternating pairs of
  the two modes; the CPU-seconds of each run, and every mIoU figure of the two tables compared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_demo import timed_make  # noqa: E402
from bench_reproducible import variant_env  # noqa: E402

import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vpltool.runtime import numerics  # noqa: E402

# (rows, inner, outputs): the decoder's layers at its crop (16 crops of 12 x 12 tokens: 2,304 rows), its upsampling
# by products (13,824 rows of 12 columns to 96), and learn-prototypes' pixels against the rows of W in play
SHAPES = ((2304, 256, 64), (2304, 64, 64), (6912, 128, 64), (13824, 12, 96), (13824, 96, 12), (100000, 512, 26))
QUICK_SHAPES = ((2304, 64, 64),)
# tests/test_demo_quality.py's world and targets (its TEST_WORLD and make arguments)
PIPELINE = ("WORLD_TRAIN=160", "WORLD_VAL=200", "DEC_ITERS=60", "PRED_ARGS=--scales 1 --no-flip", "DEVICE=cpu",
            "DENSE=", "DENSE_SEEDS=", "AFFINITY_ROWS=", "REFINES=none caa", "DIAGNOSE=")
QUICK_PIPELINE = ("WORLD_TRAIN=16", "WORLD_VAL=8", "ITERS=10", "DEC_ITERS=4", "DEVICE=cpu", "DENSE=", "DENSE_SEEDS=",
                  "AFFINITY_ROWS=", "REFINES=none", "DIAGNOSE=")
MODES = {"fast": "0", "reproducible": "1"}

# run in a new process per mode: vpltool first (it pins the libraries in reproducible mode), then torch
_PROBE = """
import json, sys, time
import vpltool.runtime.numerics as numerics
if numerics.reproducible_asked():
    numerics.ask_reproducible()
import torch
import vpltool.device  # the mode's products as every stage runs them (vpltool.runtime.products, when in effect)
torch.set_num_threads(1)
out = []
for m, k, n in json.loads(sys.argv[1]):
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(2):
        a @ b
    repeats = max(3, int(2e9 // (2 * m * k * n)))
    start = time.process_time()
    for _ in range(repeats):
        a @ b
    seconds = (time.process_time() - start) / repeats
    rate = round(2 * m * k * n / seconds / 1e9, 1)
    out.append({"shape": [m, k, n], "ms": round(seconds * 1e3, 3), "gflop_per_s": rate})
print(json.dumps(out))
"""


def mode_env(mode: str) -> dict[str, str]:
    """bench_reproducible.py's environment of the variant ``mode`` (this shell's without its mode's variables, one
    thread), with the mode asked (the products' probe runs no make) and fp32 on every CPU."""
    return {**variant_env(mode), numerics.MODE_ENV: MODES[mode], numerics.ASSUME_AMX_ENV: "0"}


def products(mode: str, shapes) -> list[dict]:
    """Each product's CPU time in a new process of ``mode``."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(shapes)], env=mode_env(mode), cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pipeline(mode: str, run: Path, settings: tuple[str, ...]) -> dict:
    """``make RUN/metrics.json`` from nothing in ``mode``: wall and CPU seconds of the run, and its table."""
    shutil.rmtree(run, ignore_errors=True)
    timing = timed_make(f"{run}/metrics.json", ROOT, ("--no-print-directory", "-j2", f"RUN={run}",
                                                      f"VENV={Path(sys.executable).parent.parent}",
                                                      f"REPRODUCIBLE={MODES[mode]}", *settings), mode_env(mode))
    return {**timing, "figures": figures(json.loads((run / "metrics.json").read_text()))}


def figures(table: dict) -> dict[str, float]:
    """Every mIoU of a metrics.json, keyed ``stage [refine] split``."""
    return {f"{row['stage']} [{row['refine']}] {split}": row[split]["miou"] for row in table["stages"]
            for split in ("train", "val") if row.get(split)}


def compare(a: dict[str, float], b: dict[str, float]) -> dict:
    """How far the two tables are apart: the largest difference, and the cells that differ at the printed 0.1."""
    keys = sorted(a.keys() & b.keys())
    diffs = {k: abs(a[k] - b[k]) for k in keys}
    printed = [k for k in keys if f"{100 * a[k]:.1f}" != f"{100 * b[k]:.1f}"]
    return {"figures": len(keys), "only_in_one": sorted(a.keys() ^ b.keys()),
            "max_abs_diff_miou": max(diffs.values(), default=None),
            "max_diff_at": max(diffs, key=diffs.get) if diffs else None, "cells_differ_at_0_1": printed}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1, help="alternating pairs of pipeline runs (default 1)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-mode-cost"), help="scratch folder")
    ap.add_argument("--quick", action="store_true", help="a tiny world and one product: checks the script")
    args = ap.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    settings = QUICK_PIPELINE if args.quick else PIPELINE
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    probes = {mode: products(mode, shapes) for mode in MODES}
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for pair in range(args.pairs):
        order = list(MODES) if pair % 2 == 0 else list(reversed(MODES))
        for mode in order:
            runs[mode].append(pipeline(mode, args.work / mode, settings))
    shutil.rmtree(args.work, ignore_errors=True)
    cpu = {mode: round(statistics.median(r["cpu_s"] for r in rs), 1) for mode, rs in runs.items()}
    print(json.dumps({
        "benchmark": "mode-cost", "quick": args.quick, "machine": benchlib.machine("cpu"),
        "command": "python bench/bench_mode_cost.py" + (f" --pairs {args.pairs}" if args.pairs != 1 else "")
                   + (" --quick" if args.quick else ""),
        "products": [{"shape": f["shape"], "fast_ms": f["ms"], "reproducible_ms": r["ms"],
                      "fast_gflop_per_s": f["gflop_per_s"], "reproducible_gflop_per_s": r["gflop_per_s"],
                      "reproducible_over_fast": round(r["ms"] / f["ms"], 2)}
                     for f, r in zip(probes["fast"], probes["reproducible"])],
        "pipeline": {"what": "the world and targets of tests/test_demo_quality.py, make RUN/metrics.json, each "
                             "command a process, -j2, one thread a command", "settings": list(settings),
                     "cpu_s": {mode: [r["cpu_s"] for r in rs] for mode, rs in runs.items()},
                     "wall_s": {mode: [r["wall_s"] for r in rs] for mode, rs in runs.items()},
                     "cpu_s_median": cpu, "reproducible_over_fast": round(cpu["reproducible"] / cpu["fast"], 2),
                     "tables": compare(runs["fast"][0]["figures"], runs["reproducible"][0]["figures"])},
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - started, 1),
        "peak_memory": [{"stage": "the product probes and make's commands (largest child)",
                         "rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                         "cuda_mib": None, "scope": "max over child processes"}],
    }))


if __name__ == "__main__":
    main()

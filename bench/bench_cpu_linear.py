"""An fp32 linear layer on this CPU: MKL's product (``F.linear``) against oneDNN's (``onednn.linear``, which
``onednn.f_linear`` calls); prints ONE JSON object.

    python bench/bench_cpu_linear.py [--pairs 5]

The shapes of a ViT-B's layers (width 768, MLP 3072) at 1 to 1,768 rows (four 336-pixel views of 442 tokens), one
thread, random inputs (seed 0). Per shape, ``--pairs`` alternating pairs (MKL then oneDNN, the order swapped every
other pair), each side the CPU-seconds (``time.process_time``) of enough calls for about 50 ms; the verdict per
shape is the median of the pairs' ratios oneDNN / MKL, each side's largest difference from a float64 product, and
whether ``onednn.f_linear`` takes oneDNN's product for that shape (``routed``: from ``onednn.MIN_ROWS`` rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = [(rows, i, o) for rows in (1, 2, 4, 16, 256, 1768) for i, o in ((768, 2304), (768, 3072), (3072, 768))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from vpltool.models.backbones import onednn

    import benchlib

    torch.set_num_threads(1)
    if not onednn.available():
        raise SystemExit("this torch has no oneDNN linear op (torch.ops.mkldnn._linear_pointwise)")
    g = torch.Generator().manual_seed(0)
    rows_out = []
    for rows, i, o in SHAPES:
        x, b = torch.randn(rows, i, generator=g), torch.randn(o, generator=g)
        w = torch.randn(o, i, generator=g) * i**-0.5
        exact = F.linear(x.double(), w.double(), b.double())
        sides = {"mkl": lambda: F.linear(x, w, b),
                 "onednn": lambda: onednn.linear(x, w, b)}
        calls = max(1, int(0.05 / (2 * rows * i * o / 50e9)))
        ratios, ms = [], {"mkl": [], "onednn": []}
        for p in range(args.pairs):
            order = ("mkl", "onednn") if p % 2 == 0 else ("onednn", "mkl")
            for side in order:
                sides[side]()
                start = time.process_time()
                for _ in range(calls):
                    sides[side]()
                ms[side].append((time.process_time() - start) / calls * 1e3)
            ratios.append(ms["onednn"][-1] / ms["mkl"][-1])
        error = {k: float((f().double() - exact).abs().max()) for k, f in sides.items()}
        rows_out.append({"rows": rows, "in": i, "out": o, "calls": calls,
                         "ms_median": {k: round(statistics.median(v), 4) for k, v in ms.items()},
                         "ratio_median": round(statistics.median(ratios), 3), "max_abs_vs_float64": error,
                         "routed": onednn.applies(x, w)})
    rates = {f"{side}_gflops": round(max(2 * r["rows"] * r["in"] * r["out"] / r["ms_median"][side] / 1e6
                                         for r in rows_out), 1) for side in ("mkl", "onednn")}
    print(json.dumps({"benchmark": "cpu_linear", "machine": benchlib.machine("cpu", {"what": "the fastest shape",
                                                                                     **rates}),
                      "threads": 1, "precision": "fp32",
                      "pairs": args.pairs, "shapes": rows_out}, indent=1))


if __name__ == "__main__":
    main()

"""Reproducible mode's fp32 matrix products on this CPU: MKL's COMPATIBLE branch (torch's own kernel under the mode's
pins) against the pinned OpenBLAS that reproducible mode takes (``vpltool.runtime.products``), with fast mode's MKL
beside them; prints ONE JSON object.

    python bench/bench_products.py [--pairs 5]

Two child processes, one thread each: one in reproducible mode (``VPLTOOL_REPRODUCIBLE=1`` before torch loads), which
times torch's ``mm`` / ``bmm`` (MKL, COMPATIBLE) and ``products.mm`` / ``products.bmm`` (the kernels reproducible mode
installs) in alternating pairs, and one in fast mode, which times torch's (MKL at this CPU's widest branch). Each
side's CPU-seconds (``time.process_time``) of enough calls for about 50 ms, medians over the pairs, as GFLOP/s; per
shape the ratio of the two reproducible sides' times (OpenBLAS / COMPATIBLE) and each side's largest difference from a
float64 product. The shapes: a ViT-B's layers at 1,024 rows, the toy CLIP's at 4,096, a decoder's at 8,192, a head's
attention products.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (batch, rows, k, n): batch 0 is a plain [rows, k] @ [k, n]
SHAPES = [(0, 1024, 768, 2304), (0, 1024, 768, 3072), (0, 1024, 3072, 768), (0, 4096, 512, 512),
          (0, 8192, 256, 64), (12, 197, 64, 197), (12, 197, 197, 64)]


def _child(mode: str, pairs: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from vpltool.runtime import numerics, products

    assert (mode == "reproducible") == numerics.reproducible_in_effect(), "the child's mode did not take"
    g = torch.Generator().manual_seed(0)
    out = {}
    for batch, rows, k, n in SHAPES:
        a = torch.randn(*([batch] if batch else []), rows, k, generator=g)
        b = torch.randn(*([batch] if batch else []), k, n, generator=g) * k**-0.5
        exact = (a.double() @ b.double())
        own = products.bmm if batch else products.mm
        sides = {"torch": lambda: a @ b} if mode == "fast" else {"torch": lambda: a @ b, "openblas": lambda: own(a, b)}
        flop = 2 * max(batch, 1) * rows * k * n
        calls = max(1, int(0.05 / (flop / 50e9)))
        s = {name: [] for name in sides}
        for p in range(pairs):
            for name in (list(sides) if p % 2 == 0 else list(sides)[::-1]):
                sides[name]()
                start = time.process_time()
                for _ in range(calls):
                    sides[name]()
                s[name].append((time.process_time() - start) / calls)
        row = {f"{name}_gflops": round(flop / statistics.median(t) / 1e9, 1) for name, t in s.items()}
        row.update({f"{name}_max_error": float((f().double() - exact).abs().max()) for name, f in sides.items()})
        if "openblas" in sides:
            row["openblas_over_torch"] = round(statistics.median(x / y for x, y in zip(s["openblas"], s["torch"])), 3)
            row["openblas_equals_numpy"] = bool(torch.equal(own(a, b), torch.from_numpy(a.numpy() @ b.numpy())))
        out[f"{batch}x{rows}x{k}x{n}" if batch else f"{rows}x{k}x{n}"] = row
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--child", choices=("fast", "reproducible"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.child == "reproducible":
            import vpltool  # noqa: F401  (the mode's pins, before torch loads)
        print(json.dumps(_child(args.child, args.pairs)))
        return
    import benchlib

    base = {k: v for k, v in os.environ.items() if k != "VPLTOOL_REPRODUCIBLE"}
    runs = {}
    for mode, extra in (("reproducible", {"VPLTOOL_REPRODUCIBLE": "1"}), ("fast", {"OMP_NUM_THREADS": "1"})):
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--pairs", str(args.pairs)],
                              env={**base, **extra}, capture_output=True, text=True, check=True)
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    shapes = {}
    for shape, rep in runs["reproducible"].items():
        fast = runs["fast"][shape]
        shapes[shape] = {"mkl_compatible_gflops": rep["torch_gflops"],
                         "openblas_haswell_gflops": rep["openblas_gflops"], "mkl_fast_gflops": fast["torch_gflops"],
                         "openblas_over_mkl_compatible": rep["openblas_over_torch"],
                         "openblas_equals_numpy": rep["openblas_equals_numpy"],
                         "max_error": {"mkl_compatible": rep["torch_max_error"],
                                       "openblas_haswell": rep["openblas_max_error"],
                                       "mkl_fast": fast["torch_max_error"]}}
    ratios = [s["openblas_over_mkl_compatible"] for s in shapes.values()]
    command = " ".join(["python bench/bench_products.py", *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps({"benchmark": "reproducible-products", "machine": benchlib.machine(), "threads": 1,
                      "pairs": args.pairs, "command": command,
                      "what": "fp32 products in reproducible mode: MKL COMPATIBLE (torch's kernel under the pins) "
                              "against the pinned OpenBLAS reproducible mode takes; fast mode's MKL beside them",
                      "openblas_over_mkl_compatible_median": round(statistics.median(ratios), 3),
                      "shapes": shapes}, indent=1))


if __name__ == "__main__":
    main()

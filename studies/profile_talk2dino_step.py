"""Where Talk2DINO's unit (a) spends its CPU-seconds on each side: one training step of the 6 photos at 448 px with
its DINOv2 ViT-B/14 reg4 (the DINO's forward, the loss, backward, Adam), built as ``bench/bench_vs_reference.py``'s
workers build it (vpltool's ``_t2d_setup``; the reference's own code through ``vs_reference_ref._t2d_setup``), one
thread, fp32. Each side runs in its own process: one unit to warm up, one timed, one under ``torch.profiler``. The
profiler's self times (wall time inside each op) are scaled to the profiled unit's CPU-seconds, so both sides read
in CPU-seconds on a shared machine.

Beside it, the two products that bound the unit, timed alone (best of 4, CPU-seconds, one thread): the DINO's linear
layers at the row counts either side feeds them (vpltool's per-image groups: 1,029 rows; the reference's batch:
6,174), into preallocated outputs (no page faults), and the fused attention kernel both sides call, per image and
batched (the same bits).

    python studies/profile_talk2dino_step.py --refs DIR [--work DIR] > studies/results/talk2dino_step_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": "",
       "XFORMERS_DISABLED": "1"}
TOP = 15


def _side(side: str, work: Path, refs: Path) -> dict:
    """One side's profile, in this process (``--side``): ``{unit_cpu_s, loss, ops: [{op, shapes, cpu_s, calls}]}``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "parity")]
    if side == "vpltool":
        import bench_vs_reference as bench

        from vpltool.models.text.talk2dino.training import make_optimizer

        tp, files, _, model, tokens = bench._t2d_setup(work, refs)
        optimizer = make_optimizer(model, tp.LR)

        def unit():  # bench_vs_reference.talk2dino's unit
            pixels = torch.stack([tp.train_view(p, bench.T2D_SIDE) for p in files])
            model.train()
            out = model.forward_train(pixels, tokens)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            return float(out["loss"])
    else:
        import vs_reference_ref as ref

        extract, encode, fit, samples = ref._t2d_setup(json.loads((work / "inputs.json").read_text()))

        def unit():  # vs_reference_ref.talk2dino's unit
            return float(fit(samples(extract(), encode())))

    unit()
    start = time.process_time()
    unit()
    timed = time.process_time() - start
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.process_time()
        loss = unit()
        profiled = time.process_time() - start
    rows = prof.key_averages(group_by_input_shape=True)
    scale = profiled / max(sum(e.self_cpu_time_total for e in rows) / 1e6, 1e-9)
    ops = sorted(rows, key=lambda e: -e.self_cpu_time_total)
    by_op: dict[str, float] = {}
    for e in rows:
        by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total / 1e6 * scale
    return {"unit_cpu_s": round(timed, 3), "profiled_unit_cpu_s": round(profiled, 3), "loss": loss,
            "by_op": [{"op": k, "cpu_s": round(v, 3)} for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])][:TOP],
            "by_op_and_shape": [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
                                 "cpu_s": round(e.self_cpu_time_total / 1e6 * scale, 3)} for e in ops[:TOP]]}


def _products() -> dict:
    """The DINO's linear layers and its fused attention, timed alone (module docstring)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    shapes = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}
    rows, best = (1029, 2058, 6174), {}
    for _ in range(4):
        for name, (k, n) in shapes.items():
            w, b = torch.randn(n, k), torch.randn(n)
            for m in rows:
                x, out = torch.randn(m, k), torch.empty(m, n)
                start = time.process_time()
                for _ in range(6174 // m):
                    torch.addmm(b, x, w.t(), out=out)
                seconds = time.process_time() - start
                best[name, m] = min(best.get((name, m), 1e9), seconds)
    linear = {f"{name} ({k}x{n})": {f"rows {m}": round(2 * 6174 * k * n / best[name, m] / 1e9, 1) for m in rows}
              for name, (k, n) in shapes.items()}
    qkv = torch.randn(6, 1029, 3, 12, 64)
    attention = {}
    for _ in range(4):
        for group in (1, 6):
            start = time.process_time()
            for part in qkv.split(group):
                q, k, v = part.permute(2, 0, 3, 1, 4)
                F.scaled_dot_product_attention(q, k, v, scale=0.125)
            attention[group] = min(attention.get(group, 1e9), time.process_time() - start)
    flop = 2 * 2 * 6 * 12 * 1029 * 1029 * 64
    return {"linear_gflops_per_s": linear,
            "linear_12_blocks_cpu_s": {f"rows {m}": round(12 * sum(best[nm, m] for nm in shapes), 2) for m in rows},
            "attention_12_blocks_cpu_s": {f"{'per image' if g == 1 else 'batched'}": round(12 * s, 2)
                                          for g, s in attention.items()},
            "attention_gflops_per_s": {f"{'per image' if g == 1 else 'batched'}": round(flop / s / 1e9, 1)
                                       for g, s in attention.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=Path, help="the references' clones (bench/bench_vs_reference.py's --refs)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/talk2dino_step_profile"))
    ap.add_argument("--side", choices=("vpltool", "reference", "products"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        out = _products() if args.side == "products" else _side(args.side, args.work.resolve(), args.refs.resolve())
        print(json.dumps(out))
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from benchlib import machine

    env = {**os.environ, **ENV}
    load = round(os.getloadavg()[0], 2)
    sides = {}
    for side in ("vpltool", "reference", "products"):  # vpltool's set-up writes the reference's inputs
        cmd = [sys.executable, __file__, "--side", side, "--work", str(args.work), "--refs", str(args.refs)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{side}: {proc.stderr.strip().splitlines()[-1]}")
        sides[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({"study": "talk2dino-step-profile", "what": __doc__.split("\n\n")[0],
                      "command": "python studies/profile_talk2dino_step.py --refs DIR", "threads": 1,
                      "machine": {**machine(), "torch_threads": 1},
                      "load_average_1min": {"before": load, "after": round(os.getloadavg()[0], 2)},
                      "vpltool": sides["vpltool"], "reference": sides["reference"],
                      "products": sides["products"]}, indent=1))


if __name__ == "__main__":
    main()

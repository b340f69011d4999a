"""Where a DINOv2 ViT-B forward's CPU-seconds go on this CPU, and what other routes of its products and attention
would give: Talk2DINO's unit (a) of ``bench_vs_reference.py`` (6 photos at 448 px, 1,029 tokens each, random
weights in the reference's layout), one thread, fp32; prints ONE JSON object.

    python bench/bench_dino_forward.py [--pairs 3] [--work DIR]

The DINO is held as Talk2DINO holds it: its blocks' layers in oneDNN's packing where the route takes oneDNN and
the contest inside the forwards kept it (``mkl_packed.pack_blocks(model, mkl=False)``); forwards run first until no
contest is open (``packings``: the verdicts, the packed calls' time over the plain ones').

* ``by_op``: one forward on the ``auto`` route under torch's profiler, the costliest ops' self CPU-seconds and, for
  the products and the fused attention, their GFLOP/s.
* ``routes``: the forward's CPU-seconds on each route of its linear layers, alternated in one process
  (``VPLTOOL_CPU_LINEAR`` is read per call): ``mkl``, ``onednn`` (both forced: the plain calls, no packing) and
  ``auto`` (this machine's verdicts, and the packing where they kept it). Medians of the pairs, each route's ratio to
  ``mkl`` (the median of the per-pair ratios), its tokens' largest difference from ``mkl``'s and from the plain
  oneDNN call's.
* ``attention``: one photo's ``[1, 12, 1029, 64]`` heads, SDPA's fused CPU kernel (what DINOv2's own code calls)
  against ``softmax((q kᵀ) s) v`` written out by blocks of query rows (:func:`..dino_attention.written_attention`'s
  way, 128 and 256 rows) and against oneDNN Graph's fused attention (:func:`onednn_graph_attention`, measured
  only): GFLOP/s, medians of alternating rounds, and each one's largest difference from SDPA's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "parity"))

from bench_radseg import op_flop  # noqa: E402  (a product's or the attention's FLOPs from its profiled shapes)
from bench_vs_reference import T2D_SIDE as SIDE  # noqa: E402  (Talk2DINO's train view)
from bench_vs_reference import t2d_dino  # noqa: E402

ROUTES = ("mkl", "onednn", "auto")
SETTLE = 12  # forwards at most before the profile, until no packing contest is open (3 settle a ViT-B at 6 photos)
PHOTOS = 6  # the parity photos' count


def _forward(dino, x):
    import torch

    with torch.no_grad():
        return dino.tokens_and_last_qkv(x)[0]


def by_op(dino, x) -> dict:
    """One forward under torch's profiler: the costliest ops by name and input shapes (self CPU-seconds, calls,
    GFLOP/s of the products and the attention)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _forward(dino, x)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    ops = []
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        row = {"op": e.key, "shapes": [list(s) for s in e.input_shapes if s], "calls": e.count,
               "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3)}
        flop = op_flop(e.key, [list(s) for s in e.input_shapes]) * e.count
        if flop and e.self_cpu_time_total:
            row["gflops_per_s"] = round(flop / e.self_cpu_time_total / 1e3, 1)
        ops.append(row)
    return {"total_cpu_s": round(total, 3), "ops": ops}


def routes(dino, x, pairs: int) -> dict:
    """The forward on each route of :data:`ROUTES`, alternated in one process (module docstring)."""
    def run(route: str):
        os.environ["VPLTOOL_CPU_LINEAR"] = route
        start = time.process_time()
        out = _forward(dino, x)
        return time.process_time() - start, out

    outs = {r: run(r)[1] for r in ROUTES}  # each route's first call (oneDNN's kernels, auto's calibrations)
    times: dict[str, list[float]] = {r: [] for r in ROUTES}
    for p in range(pairs):
        for r in (ROUTES if p % 2 == 0 else ROUTES[::-1]):
            times[r].append(run(r)[0])
    os.environ.pop("VPLTOOL_CPU_LINEAR", None)
    return {"cpu_s": {r: [round(t, 2) for t in ts] for r, ts in times.items()},
            "cpu_s_median": {r: round(statistics.median(ts), 2) for r, ts in times.items()},
            "over_mkl": {r: round(statistics.median(a / b for a, b in zip(times[r], times["mkl"])), 3)
                         for r in ROUTES},
            "tokens_max_abs_diff_from_mkl": {r: float((outs[r] - outs["mkl"]).abs().max()) for r in ROUTES},
            "tokens_max_abs_diff_from_onednn": {r: float((outs[r] - outs["onednn"]).abs().max()) for r in ROUTES}}


def settle(dino, x) -> dict:
    """Forwards on the ``auto`` route until no packing contest is open (at most :data:`SETTLE`): the layers that
    hold oneDNN's packing and the verdicts of this forward's shapes (``onednn``: kept; ``ratio``: the packed calls'
    time over the plain ones', the median of the pairs)."""
    from vpltool.models.backbones import mkl_packed, onednn

    os.environ["VPLTOOL_CPU_LINEAR"] = "auto"
    for forwards in range(1, SETTLE + 1):
        _forward(dino, x)
        if not mkl_packed._CONTESTS:
            break
    kept = onednn.kept_verdicts(1)["products"]  # this machine's, of this process's shapes (not another model's)
    names = [mkl_packed.verdict_name(k, n, rows, kind) for kinds, kind in
             ((mkl_packed._ONEDNN_PACKED, mkl_packed.ONEDNN_PACKED), (mkl_packed._PACKED_OVER_MKL,
                                                                      mkl_packed.PACKED_OVER_MKL))
             for k, n, rows, _ in kinds]
    verdicts = {name: kept.get(name) for name in names}
    return {"forwards": forwards, "layers": len(dino.packed),
            "packed_layers": sum(m.packed(1, "onednn") is not None for m in dino.packed), "verdicts": verdicts}


def onednn_graph_attention(q, k, v, scale: float):
    """``softmax(q kᵀ scale) v`` as oneDNN Graph's fused partition (TorchScript's oneDNN fuser: a traced function,
    its first calls profiled, then the matmuls and softmax one oneDNN kernel), its inputs made contiguous in the
    call as a model's would be; None where this torch has no such fuser. Measured, not used by vpltool: TorchScript
    is deprecated (``torch.jit.trace`` warns so)."""
    import warnings

    import torch

    if not hasattr(torch.jit, "enable_onednn_fusion"):
        return None

    def attend(q, k, v):
        return torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul(scale).softmax(-1), v)

    torch.jit.enable_onednn_fusion(True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the deprecation of torch.jit.trace
        traced = torch.jit.trace(attend, (q.contiguous(), k.contiguous(), v.contiguous()))
        for _ in range(3):  # profiled, then fused
            traced(q.contiguous(), k.contiguous(), v.contiguous())

    def run():
        with torch.no_grad():
            return traced(q.contiguous(), k.contiguous(), v.contiguous())
    return run


def attention(rounds: int) -> dict:
    """One photo's heads through SDPA and written out by query blocks (module docstring)."""
    import torch
    import torch.nn.functional as F

    from vpltool.models.backbones import dino_attention as da

    n, heads, hd = (SIDE // 14) ** 2 + 5, 12, 64  # 1,024 patches, the class token, 4 registers
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, n, 3, heads, hd, generator=g).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    s = hd ** -0.5

    def written(rows: int):
        def run():
            own, da.ROWS = da.ROWS, rows
            try:
                return da.written_attention(q, k, v, s)
            finally:
                da.ROWS = own
        return run

    sides = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, scale=s), "written_128": written(128),
             "written_256": written(256)}
    graph = onednn_graph_attention(q, k, v, s)
    if graph is not None:
        sides["onednn_graph"] = graph
    ref = sides["sdpa"]()
    times: dict[str, list[float]] = {name: [] for name in sides}
    try:  # the fuser stays on for the timed calls and the differences, and off afterwards whatever happens
        for r in range(rounds):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                start = time.process_time()
                for _ in range(4):
                    sides[name]()
                times[name].append((time.process_time() - start) / 4)
        diffs = {name: float((f() - ref).abs().max()) for name, f in sides.items()}
    finally:
        if graph is not None:
            torch.jit.enable_onednn_fusion(False)
    flop = 4 * heads * n * n * hd
    return {"shape": [1, heads, n, hd],
            "gflops_per_s": {name: round(flop / statistics.median(t) / 1e9, 1) for name, t in times.items()},
            "max_abs_diff_from_sdpa": diffs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds of the three routes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_dino_forward"), help="the random weights' file")
    args = ap.parse_args(argv)
    import torch

    import benchlib

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    from vpltool.models.backbones.mkl_packed import pack_blocks

    dino = t2d_dino(args.work)[2]  # bench_vs_reference's DINO of unit (a)
    dino.packed = pack_blocks(dino.model, mkl=False)  # as Talk2DINO holds it (vpltool.models.text.talk2dino.net)
    x = torch.randn(PHOTOS, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    packings = settle(dino, x)  # auto's calibrations, its packing contests, each library's first call: unprofiled
    result = {"benchmark": "dino-forward",
              "what": f"a DINOv2 ViT-B/14 reg4 forward of {PHOTOS} photos at {SIDE} px (Talk2DINO's unit (a)), "
                      "one thread, fp32: by op, by route of its linear layers, and its attention by kernel",
              "command": " ".join(["python", "bench/bench_dino_forward.py", *(argv or sys.argv[1:])]),
              "vpltool_commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
              "machine": benchlib.machine("cpu"), "packings": packings, "by_op": by_op(dino, x),
              "routes": routes(dino, x, args.pairs),
              "attention": attention(9)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

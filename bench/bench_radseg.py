"""``--dense radseg`` against RADSeg's own segmentor, side by side; prints ONE JSON object.

    python bench/bench_radseg.py --ref RADSeg --radio-ref RADIO [--work DIR] [--images 3] [--pairs 6]

The set-up of ``parity/radseg_parity.py`` (made in ``--work`` when missing, reused when there): its seeded random
C-RADIOv3-B as NVlabs/RADIO's hub checkpoint with the SigLIP 2 adaptor, its random SigLIP 2 g/16 text tower of
``--text-layers`` blocks, the parity photos, RADSeg's mid-resolution VOC20 config (short side 336, windows
336 / 112, its own class file and 80 templates). Two processes stay up (``sidebyside.py``), one thread each, fp32
on the CPU, each built once (its model loaded, the 20 classes' text rows encoded; not timed):

* the reference (this file with ``--worker reference``; it imports nothing from vpltool):
  ``radseg_ref_runner.segmentor``, the clone's ``RADSegSegmentation`` built by NVlabs/RADIO's hub code; a unit is
  its ``predict`` on one photo's normalised input (mmseg's test pipeline restated once per photo, as the runner
  does), its windows, SCRA, SCGA, the adaptor head, the query probabilities and the prompt denoising;
* vpltool (``--worker vpltool``): ``--dense radseg`` resolved and loaded as `segment` does
  (``radseg_parity.radseg_method``), the same class names and templates as query rows; a unit is `segment`'s path
  from the same input tensor to the labels: ``segment_logits`` (the method's ``dense_logits``) and its
  ``probabilities`` hook (the prompt denoising).

A unit is one photo, the photos taken in turn (unit k: photo k mod ``--images``) on both sides. One warm-up unit
each, then ``--pairs`` pairs, the order swapped every pair; per unit the process's CPU-seconds (user + sys). The
figure is the median over the pairs of vpltool's CPU-seconds over the reference's, against the goal 0.8. The last
unit's outputs of the two sides are compared, so that the figure is of the same arithmetic: the query probabilities
before the denoising (the reference's on the patch grid, resized to the photo here as its ``predict`` resizes
them), after it, and the labels. The machine's load average is recorded before and after; ``linear`` times one of
the backbone's fp32 matrix products through each of torch's two CPU libraries (MKL's, which ``F.linear`` calls,
and oneDNN's, which vpltool's RADSeg calls: :mod:`vpltool.models.backbones.onednn`) and MKL's packed product
(:mod:`vpltool.models.backbones.mkl_packed`, which its blocks' qkv and first MLP layers take where the route is MKL's).

``--profile`` adds each side's ops (one worker more a side, alone, after the pairs: three units under
``torch.profiler``, :func:`profile_unit`) side by side (:func:`op_table`), and the **floor** (:func:`floor_of`): the
reference's GEMM and attention FLOPs at the fastest fp32 rate measured in the run, over its median CPU-seconds, the
least ratio the same arithmetic allows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "parity")]
from sidebyside import claim_stdout, peak_rss_mib, race, serve  # noqa: E402

GOAL = 0.8
SHORT_SIDE = 336  # cfg_voc20.py of mid_res_configs, as the parity runs it
# the (B, H, N, d) of the units' fused attention calls: C-RADIOv3-B's 12 heads of 64 over a 336-pixel window's 441
# patches and 8 prefix tokens; vpltool's two windows a forward (radseg.WINDOWS_A_FORWARD), the reference's six (the
# first photo's windows in one forward)
ATTENTION_SHAPES = ((2, 12, 449, 64), (6, 12, 449, 64))
PRE = {"mean": [122.771, 116.746, 104.094], "std": [68.501, 66.632, 70.323], "bgr_to_rgb": True}  # its mmseg one


def photo_inputs(work: Path, images: int) -> list:
    """The first ``images`` parity photos as mmseg's test pipeline makes them: ``([1, 3, H, W] float32, (H0, W0))``."""
    from dense_ref_runner import mmseg_input

    photos = sorted((work / "voc" / "JPEGImages").glob("*.jpg"))[:images]
    return [mmseg_input(p, (2048, SHORT_SIDE), PRE) for p in photos]


def cycle(inputs: list):
    """A function of no argument returning the next photo's input, in turn."""
    state = {"k": 0}

    def take():
        x, ori = inputs[state["k"] % len(inputs)]
        state["k"] += 1
        return x, ori

    return take


def reference_worker(args, run) -> None:
    """RADSeg's own segmentor, built once; a unit is its ``predict`` on the next photo, handed to ``run``
    (:func:`sidebyside.serve`, or :func:`profile_unit`)."""
    import radseg_ref_runner as rr
    import torch
    from dense_ref_runner import Sample

    torch.set_grad_enabled(False)
    work = args.work
    opts = argparse.Namespace(clone=args.ref, radio_clone=args.radio_ref, checkpoint=work / "c-radio_v3-b.pth.tar",
                              text_folder=work / f"siglip2_text_{args.text_layers}", classes=None, overrides="{}",
                              config="configs/mid_res_configs/cfg_voc20.py", short_side=SHORT_SIDE)
    with rr.segmentor(opts, work / "bench_reference") as (seg, _):
        take = cycle(photo_inputs(work, args.images))

        def unit():
            x, ori = take()
            sample, seen = Sample({"ori_shape": ori, "img_shape": tuple(x.shape[-2:])}), {}
            with rr.outputs_seen(seg.model, seen):  # a copy of two small outputs kept for the comparison
                seg.predict(x, [sample])
            return {"input": x, "grid_probs": seen["grid_probs"], "probs": sample.data["seg_logits"].data,
                    "pred": sample.data["pred_sem_seg"].data}

        run(unit)


def vpltool_worker(args, run) -> None:
    """``--dense radseg`` as `segment` loads it, built once; a unit is its path from the next photo's input to the
    labels, handed to ``run``."""
    import radseg_parity as rp
    import torch

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models.dense.segmentor import query_rows, segment_logits

    torch.set_grad_enabled(False)
    work = args.work
    s = {"ckpt": work / "c-radio_v3-b.pth.tar", "text": work / f"siglip2_text_{args.text_layers}"}
    method = rp.radseg_method(argparse.Namespace(short_side=SHORT_SIDE), s)
    settings = method.settings
    bb = method.load(None, "cpu")
    names = [c for c in (args.ref / "evaluation/2d/configs/cls_voc20.txt").read_text().split("\n") if c]
    text, idx = query_rows(bb, [[c] for c in names], list(IMAGENET_TEMPLATES), [])
    take = cycle(photo_inputs(work, args.images))

    def unit():
        x, ori = take()
        probs = segment_logits(bb, x, text, settings, [ori])[0]
        _, labels = bb.hooks.probabilities(bb, probs, idx, len(names) + 1, settings)
        return {"input": x, "probs_plain": probs, "pred": labels}

    run(unit)


GEMM_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise", "mkl::_mkl_linear")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")


def op_flop(name: str, shapes: list) -> float:
    """The multiply-adds (x2) of one call of a product or attention op from its recorded input shapes (0 for
    any other op): ``addmm`` (bias, a, b), ``mm`` / ``bmm`` / ``baddbmm``, oneDNN's linear (x, w), MKL's packed
    linear (x, packed, w), SDPA (q, k, v:
    ``q kᵀ`` and ``· v``)."""
    try:
        if name == "aten::addmm":
            (m, k), n = shapes[1], shapes[2][1]
            return 2.0 * m * k * n
        if name == "aten::mm":
            (m, k), n = shapes[0], shapes[1][1]
            return 2.0 * m * k * n
        if name in ("aten::bmm", "aten::baddbmm"):
            a, b = (shapes[0], shapes[1]) if name == "aten::bmm" else (shapes[1], shapes[2])
            return 2.0 * a[0] * a[1] * a[2] * b[2]
        if name in ("mkldnn::_linear_pointwise", "mkl::_mkl_linear"):  # MKL's packed: (x, packed, weight, ...)
            x, w = shapes[0], shapes[1 if name.startswith("mkldnn") else 2]
            return 2.0 * math.prod(x[:-1]) * x[-1] * w[0]
        if name in ATTENTION_OPS:
            q, k = shapes[0], shapes[1]
            return 4.0 * math.prod(q[:-2]) * q[-2] * k[-2] * q[-1]
    except (IndexError, TypeError, ValueError):
        return 0.0
    return 0.0


def profile_unit(out: Path, repeats: int = 3):
    """A ``run`` for the workers: one warm-up unit, then ``repeats`` units each under ``torch.profiler`` (CPU,
    shapes recorded); writes to ``out`` ``{"ops": {name: {"self_s", "cpu_s", "calls", "gflop"}}, "unit_s"}``. The
    profiler's clock is the wall's: on a shared CPU another process's work lands in whichever op it interrupts, so
    per unit each op's self time is also scaled to the unit's CPU-seconds (``cpu_s``: its share of the profiled
    self time, times the unit's CPU-seconds), and per op the median over the repeats is kept; ``gflop``: the
    products' and attention's FLOPs from their shapes (:func:`op_flop`); ``unit_s``: the median CPU-seconds of a
    profiled unit."""
    def run(unit) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        unit()
        seen: list = []
        spent = []
        for _ in range(repeats):
            start = time.process_time()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                unit()
            spent.append(time.process_time() - start)
            ops: dict = {}
            for e in prof.key_averages(group_by_input_shape=True):
                row = ops.setdefault(e.key, {"self_s": 0.0, "calls": 0, "gflop": 0.0})
                row["self_s"] += e.self_cpu_time_total / 1e6
                row["calls"] += e.count
                row["gflop"] += op_flop(e.key, e.input_shapes) * e.count / 1e9
            wall = sum(o["self_s"] for o in ops.values()) or 1.0
            for o in ops.values():
                o["cpu_s"] = o["self_s"] * spent[-1] / wall
            seen.append(ops)
        merged = {}
        for name in set().union(*seen):
            rows = [ops[name] for ops in seen if name in ops]
            merged[name] = {**rows[0], **{k: statistics.median(r[k] for r in rows) for k in ("self_s", "cpu_s")}}
        out.write_text(json.dumps({"ops": merged, "unit_s": statistics.median(spent), "repeats": repeats,
                                   "torch": torch.__version__}))
    return run


def op_table(sides: dict, top: int = 25) -> dict:
    """The two profiles side by side: per op (the ``top`` by the larger CPU-seconds), each side's estimated
    CPU-seconds (:func:`profile_unit`), wall self seconds, calls and GFLOP (products and attention), and per side
    the totals of the products, the attention and the rest, with the products' and attention's rates."""
    names = sorted(set().union(*(p["ops"] for p in sides.values())),
                   key=lambda n: -max(p["ops"].get(n, {}).get("cpu_s", 0.0) for p in sides.values()))
    rows = []
    for name in names[:top]:
        row = {"op": name}
        for side, p in sides.items():
            o = p["ops"].get(name)
            row[side] = None if o is None else {"cpu_s": round(o["cpu_s"], 4), "wall_self_s": round(o["self_s"], 4),
                                                "calls": o["calls"], **({"gflop": round(o["gflop"], 3)}
                                                                        if o["gflop"] else {})}
        rows.append(row)
    totals = {}
    for side, p in sides.items():
        def part(names_):
            picked = [o for n, o in p["ops"].items() if n in names_]
            s, f = sum(o["cpu_s"] for o in picked), sum(o["gflop"] for o in picked)
            return {"cpu_s": round(s, 4), "gflop": round(f, 3), "gflops_per_s": round(f / s, 1) if s else None}
        every = sum(o["cpu_s"] for o in p["ops"].values())
        gemm, attn = part(GEMM_OPS), part(ATTENTION_OPS)
        totals[side] = {"unit_cpu_s": round(p["unit_s"], 4), "gemm": gemm, "attention": attn,
                        "rest_cpu_s": round(every - gemm["cpu_s"] - attn["cpu_s"], 4)}
    return {"what": "one photo per side under torch.profiler, the median of 3 profiled units; cpu_s: each op's "
                    "share of the wall self time times the unit's CPU-seconds (an estimate on a shared CPU)",
            "ops": rows, "totals": totals}


def floor_of(table: dict, linear: dict, attention: dict[str, float] | None = None) -> dict:
    """The floor under a unit on this CPU: the reference's product and attention FLOPs (from its profile) at the
    fastest fp32 rate measured in this run (the GEMM probe through either library, or any side's product total in
    its profile), over the reference's CPU-seconds; the rest of the unit (softmax, norms, resizes) counts 0. With
    ``attention`` (torch's fused attention on :data:`ATTENTION_SHAPES`, :func:`benchlib.attention_rates`),
    ``with_torch_attention``: the same with the reference's fused attention at that kernel's fastest rate instead,
    or at the rate a side's attention ran in its profile where that was faster (:func:`benchlib.attention_floor`)."""
    import benchlib

    ref = table["totals"]["reference"]
    flop = (ref["gemm"]["gflop"] + ref["attention"]["gflop"]) * 1e9
    rates = benchlib.probe_rates(linear, "{library}_probe")
    profiled = {f"{side}_{part}": t[part]["gflops_per_s"] for side, t in table["totals"].items()
                for part in ("gemm", "attention")}
    peak, seconds = benchlib.at_fastest(flop / 1e9, {**rates, **{k: v for k, v in profiled.items() if v}})
    out = {"what": "the reference's GEMM and attention FLOPs at the fastest fp32 rate measured here (the probes "
                   "of benchlib.gemm_rates, or a side's products or attention in its profile), all else 0",
           "gflop": round(flop / 1e9, 3), "rates_gflops_per_s": {**rates, **profiled},
           "peak_gflops_per_s": round(peak, 1), "floor_s": round(seconds, 4)}
    if attention and ref["attention"]["gflop"]:
        fastest = max(*attention.values(), *(t["attention"]["gflops_per_s"] or 0 for t in table["totals"].values()))
        least = benchlib.attention_floor(flop / 1e9, ref["attention"]["gflop"], peak, fastest)
        out["with_torch_attention"] = {
            "what": "the reference's fused attention at the fastest rate torch's own kernel (the one both sides "
                    "call) reached, on the units' shapes or inside a profiled unit, the rest as above",
            "attention_gflop": ref["attention"]["gflop"], "attention_gflops_per_s": attention,
            "attention_peak_gflops_per_s": round(fastest, 1), "floor_s": round(least, 4)}
    return out


def compare(ours: dict, ref: dict) -> dict:
    """The last unit's outputs: max |Δ| of the query probabilities before and after the prompt denoising (the
    reference's before it: its patch-grid probabilities resized as its ``predict`` resizes them), equal labels
    (the reference's prompts are 0-based, vpltool's class 0 the background)."""
    import torch.nn.functional as F

    plain = ours["probs_plain"]
    ref_plain = F.interpolate(ref["grid_probs"], size=plain.shape[-2:], mode="bilinear", align_corners=False)[0]
    kept = plain * (plain.flatten(1).amax(1) >= 0.5)[:, None, None]
    same = ours["pred"] == ref["pred"][0] + 1
    return {"input_max_abs_diff": float((ours["input"] - ref["input"]).abs().max()),
            "query_probs_max_abs_diff": float((plain - ref_plain).abs().max()),
            "denoised_probs_max_abs_diff": float((kept - ref["probs"].float()).abs().max()),
            "labels_equal": float(same.float().mean()),
            "queries_kept": int((ref["probs"].flatten(1).amax(1) > 0).sum()), "shape": list(plain.shape)}


def profiles(common: list, work: Path, env: dict) -> dict:
    """Each side's worker run once more, alone, in profile mode (:func:`profile_unit`): ``{side: its profile}``."""
    out = {}
    for side in ("reference", "vpltool"):
        path = work / f"profile_{side}.json"
        subprocess.run([sys.executable, __file__, "--worker", side, *map(str, common), "--profile-to", str(path)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        out[side] = json.loads(path.read_text())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of RADSeg-OVSS/RADSeg (05ec86f)")
    ap.add_argument("--radio-ref", type=Path, required=True, help="a clone of NVlabs/RADIO (c0f3701)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_radseg"), help="the parity's weights and photos")
    ap.add_argument("--images", type=int, default=3, help="photos taken in turn, one a unit")
    ap.add_argument("--pairs", type=int, default=6, help="alternating pairs after the warm-up (median over them)")
    ap.add_argument("--text-layers", type=int, default=2, help="as radseg_parity.py's")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one unit of each side by op (torch.profiler, after the timed pairs) and "
                         "give the floor: the reference's GEMM and attention FLOPs at the fastest rate measured")
    ap.add_argument("--worker", choices=("reference", "vpltool"), help=argparse.SUPPRESS)
    ap.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work, args.ref, args.radio_ref = args.work.resolve(), args.ref.resolve(), args.radio_ref.resolve()
    if args.setup_only:
        import radseg_parity as rp

        rp.setup(args.work, 12, args.text_layers, args.ref)
        return
    if args.worker:
        claim_stdout()
        import torch

        torch.set_num_threads(1)
        run = profile_unit(args.profile_to) if args.profile_to else serve
        (reference_worker if args.worker == "reference" else vpltool_worker)(args, run)
        return
    import radseg_parity as rp
    import torch
    from bench_vs_reference import cpu_linear

    import benchlib

    torch.set_num_threads(1)  # as both timed processes run (benchlib.machine records it)
    if not all((args.work / f).exists() for f in ("c-radio_v3-b.pth.tar", f"siglip2_text_{args.text_layers}")):
        # the parity's random files made in a process of their own: their 1.3 GB of tensors leave with it, before
        # the two workers start (the whole bench fits a laptop of 8 GB)
        subprocess.run([sys.executable, __file__, *map(str, argv or sys.argv[1:]), "--setup-only"], check=True)
    rp.setup(args.work, 12, args.text_layers, args.ref)  # the parity's photos (its 12), made when missing
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    common = ["--ref", args.ref, "--radio-ref", args.radio_ref, "--work", args.work, "--images", args.images,
              "--text-layers", args.text_layers]
    load_before, start = round(os.getloadavg()[0], 2), time.perf_counter()
    rows, ours, ref = race(__file__, common, args.work, env, args.pairs)
    outputs = compare(ours, ref)
    linear = benchlib.gemm_rates()  # the backbone's MLP on two 336-pixel windows, each library's fp32 GEMM rate
    attention = benchlib.attention_rates(ATTENTION_SHAPES)  # torch's fused attention on the units' heads
    ratios = [r["vpltool"]["cpu"] / r["reference"]["cpu"] for r in rows]
    ratio = statistics.median(ratios)
    ref_cpu = statistics.median(r["reference"]["cpu"] for r in rows)
    profiled = {}
    if args.profile:
        table = op_table(profiles(common, args.work, env))
        floor = floor_of(table, linear, attention)
        if "with_torch_attention" in floor:
            kernel = floor["with_torch_attention"]
            kernel["floor_over_reference"] = round(kernel["floor_s"] / ref_cpu, 3)
        profiled = {"profile": table, "floor": {**floor, "floor_over_reference": round(floor["floor_s"] / ref_cpu, 3)}}
    print(json.dumps({
        "benchmark": "radseg-vs-reference", "machine": benchlib.machine("cpu", linear), "threads": 1,
        "precision": "fp32",
        "command": " ".join(["python", "bench/bench_radseg.py", *map(str, argv or sys.argv[1:])]),
        "vpltool_commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
        "reference": {"repo": "RADSeg-OVSS/RADSeg", "commit": rp.commit_of(args.ref), "radio": "NVlabs/RADIO",
                      "radio_commit": rp.commit_of(args.radio_ref)},
        "model": f"{rp.RADIO} (random, seeded) + SigLIP 2 g/16 text tower of {args.text_layers} blocks",
        "config": f"evaluation/2d/{rp.CONFIG} (short side {SHORT_SIDE}, windows 336/112)",
        "unit": f"one photo, the first {args.images} parity photos in turn (both sides the same photo)",
        "pairs": [{side: {k: round(v, 3) for k, v in r[side].items()} for side in r} for r in rows],
        "ratios": [round(r, 3) for r in ratios], "ratio_median": round(ratio, 3),
        "cpu_seconds_median": {side: round(statistics.median(r[side]["cpu"] for r in rows), 3)
                               for side in ("vpltool", "reference")},
        "rss_peak_mib": {**{side: max(r[side]["rss_peak_mib"] or 0 for r in rows)
                            for side in ("vpltool", "reference")}, "driver": peak_rss_mib()},
        "goal": GOAL, "goal_met": bool(ratio <= GOAL), "outputs": outputs, "linear": linear,
        "cpu_linear": cpu_linear(1), **profiled,
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        **({"beside": os.environ["VSREF_BESIDE"]} if os.environ.get("VSREF_BESIDE") else {}),
        "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()

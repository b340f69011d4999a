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
and oneDNN's, which vpltool's RADSeg calls: :mod:`vpltool.models.backbones.onednn`).
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "parity")]
from sidebyside import claim_stdout, peak_rss_mib, race, serve  # noqa: E402

GOAL = 0.8
SHORT_SIDE = 336  # cfg_voc20.py of mid_res_configs, as the parity runs it
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


def reference_worker(args) -> None:
    """RADSeg's own segmentor, built once; a unit is its ``predict`` on the next photo."""
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

        serve(unit)


def vpltool_worker(args) -> None:
    """``--dense radseg`` as `segment` loads it, built once; a unit is its path from the next photo's input to the
    labels."""
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

    serve(unit)


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of RADSeg-OVSS/RADSeg (05ec86f)")
    ap.add_argument("--radio-ref", type=Path, required=True, help="a clone of NVlabs/RADIO (c0f3701)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_radseg"), help="the parity's weights and photos")
    ap.add_argument("--images", type=int, default=3, help="photos taken in turn, one a unit")
    ap.add_argument("--pairs", type=int, default=6, help="alternating pairs after the warm-up (median over them)")
    ap.add_argument("--text-layers", type=int, default=2, help="as radseg_parity.py's")
    ap.add_argument("--worker", choices=("reference", "vpltool"), help=argparse.SUPPRESS)
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
        (reference_worker if args.worker == "reference" else vpltool_worker)(args)
        return
    import radseg_parity as rp
    import torch

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
    ratios = [r["vpltool"]["cpu"] / r["reference"]["cpu"] for r in rows]
    ratio = statistics.median(ratios)
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
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        **({"beside": os.environ["VSREF_BESIDE"]} if os.environ.get("VSREF_BESIDE") else {}),
        "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()

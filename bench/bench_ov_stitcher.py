"""Speed of ``--dense ov-stitcher`` against OV-Stitcher's own code, side by side; prints ONE JSON object.

    python bench/bench_ov_stitcher.py --ref OV-Stitcher --dino-ref DINO --work DIR [--images 12] [--rounds 3]
        [--short-side 224] [--slide-crop 224] [--slide-stride 112]

The same set-up as ``parity/ov_stitcher_parity.py`` (its random ViT-B/16 and DINO ViT-B/8 weights, the parity
photos and region-mask files, in ``--work``). Each round runs the reference (``ov_stitcher_ref_runner.py``, its
own process) and then vpltool (this file with ``--worker``, its own process) on the same photos, one thread each,
fp32; each side times every photo's whole ``predict`` in CPU-seconds (``time.process_time``): the reference's
``OVStitcherSegmentation.predict`` (its region file read, its windows, both models, the map correction) and
vpltool's `segment` path (:func:`corrclip_parity.vpltool_outputs`: the method's hooks, the shared probabilities,
its ``postprocess``, the region map read from the same file). Loading the models and encoding the text are not
timed on either side. The rounds alternate the two sides; the verdict is the median over the rounds of
``vpltool / reference`` (the sums over the photos), against the goal 0.8.
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
sys.path[:0] = [str(ROOT / "parity"), str(HERE)]

GOAL = 0.8


def worker(args) -> None:
    """vpltool's side of one round: every photo's `segment` path timed, printed as JSON."""
    import numpy as np
    import ov_stitcher_parity as op
    import torch
    from corrclip_parity import setup, vpltool_outputs

    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names, resolve_templates

    torch.set_num_threads(1)
    s = setup(args.work, args.images, 1)
    meta = json.loads((args.ref_out / "meta.json").read_text())
    method = op.ov_stitcher_method(args, s)
    bb = method.load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = meta["query_words"], torch.tensor(meta["query_idx"])
    with torch.no_grad():
        text = encode_names(bb, words, resolve_templates(method.cfg.templates))
    seconds = []
    for i, mask_path in enumerate(s["masks"][: args.images]):
        r = torch.load(args.ref_out / f"photo_{i:03d}.pt")
        start = time.process_time()
        ids = torch.from_numpy(np.load(mask_path)["instance_mask"])
        vpltool_outputs(bb, r["input"], text, idx, int(idx.max()) + 1, ids, tuple(meta["photos"][i]["ori_shape"]),
                        method.settings)
        seconds.append(round(time.process_time() - start, 3))
    print(json.dumps({"cpu_seconds": seconds}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="the OV-Stitcher clone (parity/ov_stitcher_parity.py's docstring)")
    ap.add_argument("--dino-ref", type=Path, help="a clone of facebookresearch/dino")
    ap.add_argument("--work", type=Path, required=True, help="the parity's work folder (made here when missing)")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--short-side", type=int, default=224)
    ap.add_argument("--slide-crop", type=int, default=224)
    ap.add_argument("--slide-stride", type=int, default=112)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ref-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    if args.worker:
        worker(args)
        return
    import ov_stitcher_parity as op
    from corrclip_parity import setup

    import benchlib

    args.ref, args.dino_ref, args.threads, args.dino_commit = args.ref.resolve(), args.dino_ref.resolve(), 1, "7c446df"
    s = setup(args.work, args.images, 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": ""}
    rounds = []
    for r in range(args.rounds):
        out = args.work / f"bench_ref_{args.short_side}_{args.slide_crop}_{args.slide_stride}_{r}"
        (out / "stamp.json").unlink(missing_ok=True)  # a fresh run each round: its own timing
        op.run_reference(args, s, out)
        theirs = json.loads((out / "meta.json").read_text())["cpu_seconds"]
        cmd = [sys.executable, __file__, "--worker", "--work", str(args.work), "--ref-out", str(out),
               "--images", str(args.images), "--short-side", str(args.short_side), "--slide-crop",
               str(args.slide_crop), "--slide-stride", str(args.slide_stride)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"vpltool's worker failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        ours = json.loads(proc.stdout.strip().splitlines()[-1])["cpu_seconds"]
        rounds.append({"reference": theirs, "vpltool": ours, "ratio": round(sum(ours) / sum(theirs), 3)})
    ratio = statistics.median(r["ratio"] for r in rounds)
    result = {"benchmark": "ov_stitcher", "machine": benchlib.machine("cpu"), "threads": 1, "precision": "fp32",
              "reference": {"repo": op.REPO, "commit": op.COMMIT, "config_commit": op.CONFIG_COMMIT},
              "model": s["name"], "proxy": op.PROXY_MODEL, "images": args.images,
              "run": {"short_side": args.short_side, "slide_crop": args.slide_crop,
                      "slide_stride": args.slide_stride},
              "rounds": rounds,
              "median_cpu_seconds_per_photo": {
                  "reference": round(statistics.median(sum(r["reference"]) for r in rounds) / args.images, 2),
                  "vpltool": round(statistics.median(sum(r["vpltool"]) for r in rounds) / args.images, 2)},
              "ratio_median": ratio, "goal": GOAL, "goal_met": bool(ratio <= GOAL)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

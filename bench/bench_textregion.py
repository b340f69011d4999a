"""``--dense textregion`` against TextRegion's own ``predict``, side by side; prints ONE JSON object.

    python bench/bench_textregion.py --ref TextRegion [--work DIR] [--images 3] [--rounds 3]

Both sides run what ``parity/textregion_parity.py`` compares, on its set-up (random ViT-B/16 weights, the parity
photos through ``configs/cfg_ds/cfg_voc21.py``'s Resize (1008, 672), the same soft region masks handed over at
once), each in its own process with one thread, fp32 on the CPU. Timed per photo, in CPU-seconds
(``time.process_time``): the reference's ``predict`` (``parity/textregion_ref_runner.py``: its views, CLIP, the
pooling, its ``postprocess_result``) and vpltool's ``segment`` path from the same input tensor to the labels (the
method's ``dense_logits`` hook and the shared probabilities). The rounds alternate (reference, then vpltool, per
round); the ratio is vpltool's CPU-seconds over the reference's, per round over the same photos, and the verdict the
median over the rounds. The goal: at most 0.8. Per round each process's peak resident memory (its whole life,
the model's building included: Linux's ``VmHWM``, each side's own) and the load average; the last round's outputs
of the two sides compared (vpltool's logits, probabilities and labels against those the reference saved, untimed).
The **floor** beside the ratio (issue 79's rule): in the last round the reference runs each photo's ``predict`` once
more after its timed one, untimed, under torch's FLOP counter (its runner's ``--count-flops``); after the rounds this
CPU's fp32 GEMM rate is probed (``benchlib.gemm_rates``); the floor is those FLOPs at the fastest rate, all other work
free, over the reference's CPU-seconds on the same photos in each round, the median over the rounds.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity"), str(Path(__file__).resolve().parent)]
GOAL = 0.8


def vpltool_side(work: Path, images: int) -> dict:
    """vpltool's CPU-seconds per photo on the reference run's inputs (``work/ref``), one thread."""
    import numpy as np
    import textregion_parity as tp
    import torch
    from sidebyside import peak_rss_mib

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names
    from vpltool.models.dense.segmentor import dense_probabilities, segment_logits

    torch.set_num_threads(1)
    s = tp.setup(work, images, 1)
    meta = json.loads((work / "ref" / "meta.json").read_text())
    method = tp.textregion_method(s["masks"][0].parent, tuple(meta["resize_scale"]))
    bb = method.load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    idx = torch.tensor(meta["query_idx"])
    with torch.no_grad():
        text = encode_names(bb, meta["query_words"], list(IMAGENET_TEMPLATES))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.mean, bb.std))
    out, outputs = [], {"seg_logits_max_abs_diff": 0.0, "probs_max_abs_diff": 0.0, "labels_equal": []}
    for i, mask_path in enumerate(s["masks"]):
        r = torch.load(work / "ref" / f"photo_{i:03d}.pt")
        pixels = (r["input"] / 255.0 - mean) / std
        masks = torch.from_numpy(np.load(mask_path)["masks"])
        ori = tuple(meta["photos"][i]["ori_shape"])
        cpu = time.process_time()
        with torch.no_grad():
            logits = segment_logits(bb, pixels, text, method.settings, [ori], [{"masks": masks}])[0]
            dense_probabilities(logits, idx, int(idx.max()) + 1, method.settings.logit_scale,
                                method.settings.prob_threshold)
        out.append(round(time.process_time() - cpu, 3))
        with torch.no_grad():  # the outputs against the reference's saved ones, untimed
            probs, labels = dense_probabilities(logits, idx, int(idx.max()) + 1, method.settings.logit_scale,
                                                method.settings.prob_threshold)
        outputs["seg_logits_max_abs_diff"] = max(outputs["seg_logits_max_abs_diff"],
                                                 tp.max_abs(logits, r["logits"][0]))
        outputs["probs_max_abs_diff"] = max(outputs["probs_max_abs_diff"], tp.max_abs(probs, r["probs"]))
        outputs["labels_equal"].append(float((labels == r["pred"][0]).float().mean()))
    return {"cpu_seconds": out, "outputs": outputs, "rss_peak_mib": peak_rss_mib()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="a clone of avaxiao/TextRegion (e392cd2)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_textregion"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--side", choices=("vpltool",), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    if args.side:
        print(json.dumps(vpltool_side(work, args.images)))
        return
    import textregion_parity as tp
    import torch

    import benchlib

    torch.set_num_threads(1)  # as both timed processes run (benchlib.machine records it)
    s = tp.setup(work, args.images, 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": ""}
    rounds = []
    for i in range(args.rounds):
        import shutil

        shutil.rmtree(work / "ref", ignore_errors=True)
        cmd = [sys.executable, str(ROOT / "parity" / "textregion_ref_runner.py"), "--clone", str(args.ref),
               "--clip-weights", str(s["pt"]), "--masks", str(s["masks"][0].parent), "--out", str(work / "ref"),
               *(["--count-flops"] if i == args.rounds - 1 else []), *map(str, s["photos"])]
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"the reference failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        ref_meta = json.loads((work / "ref" / "meta.json").read_text())
        ref, ref_peak = [p["predict_cpu_seconds"] for p in ref_meta["photos"]], ref_meta.get("rss_peak_mib")
        proc = subprocess.run([sys.executable, __file__, "--side", "vpltool", "--work", str(work), "--images",
                               str(args.images)], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"vpltool's side failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        side = json.loads(proc.stdout.strip().splitlines()[-1])
        ours, outputs, our_peak = side["cpu_seconds"], side["outputs"], side["rss_peak_mib"]
        rounds.append({"reference": ref, "vpltool": ours, "ratio": round(sum(ours) / sum(ref), 3),
                       "rss_peak_mib": {"vpltool": our_peak, "reference": ref_peak},
                       "load_average_1min": {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)}})
    ratio = statistics.median(r["ratio"] for r in rounds)
    gflop = [p.get("predict_gflop") for p in ref_meta["photos"]]  # the last round's count
    probes = benchlib.gemm_rates()
    peak = max(benchlib.probe_rates(probes).values())
    floor = None if None in gflop else {
        "what": "the reference's GEMM, convolution and attention FLOPs on the photos (torch's FlopCounterMode over "
                "each photo's predict once more, untimed) at the fastest fp32 rate measured here (benchlib.gemm_rates"
                "' probes, one thread), all else free, over the reference's CPU-seconds on them (median of rounds)",
        "reference_gflop": [round(g, 3) for g in gflop], "probes": probes, "peak_gflops_per_s": peak,
        "floor_seconds": round(sum(gflop) / peak, 3),
        "floor_over_reference": round(statistics.median(sum(gflop) / peak / sum(r["reference"]) for r in rounds), 3)}
    print(json.dumps({"benchmark": "textregion-vs-reference", "machine": benchlib.machine("cpu", probes),
                      "reference": {"repo": "avaxiao/TextRegion", "commit": tp.commit_of(args.ref)},
                      "model": s["name"] + " (random, seed 0)", "config": tp.CONFIG, "images": args.images,
                      "photos": [p.name for p in s["photos"]], "threads": 1, "precision": "fp32",
                      "rounds": rounds, "ratio_median": ratio, "floor": floor, "goal": GOAL,
                      "goal_met": ratio <= GOAL,
                      "rss_peak_mib": {k: max((r["rss_peak_mib"][k] for r in rounds if r["rss_peak_mib"][k]),
                                              default=None) for k in ("vpltool", "reference")},
                      "outputs": outputs, "command": " ".join(["python", "bench/bench_textregion.py",
                                                               *(argv or sys.argv[1:])]),
                      **({"beside": os.environ["VSREF_BESIDE"]} if os.environ.get("VSREF_BESIDE") else {})},
                     indent=1))


if __name__ == "__main__":
    main()

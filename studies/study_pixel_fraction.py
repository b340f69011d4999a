"""Is `learn-prototypes --pixel-fraction f` a valid shortcut? W from a sample of each image's patches vs every patch.

    python studies/study_pixel_fraction.py [--run runs/demo] [--fractions 0.5,0.25,0.1] [--work DIR]

On a finished demo run (`make report`: features of train and val, text CAMs, text prototypes, and the full-batch
vision prototypes W learned with the run's own settings) it learns W_f for each fraction f with the same settings
(read from the full W's recorded parameters), then reports per f:

* ``cos_min`` / ``cos_mean``: cosine between each class row of W_f and of W (the issue's bar: >= 0.99);
* ``cam_miou`` on train and val: `cam` with W_f (the run's box threshold and refinement), scored by `eval`; the
  difference to W's CAMs (bar: within 0.5 mIoU points);
* ``seconds``: the learn-prototypes wall time.

Then, from ``bench/results/learn_prototypes.json`` (seconds per iteration at 1M pixels on this machine), the
3000-iteration time at VOC train_aug (~8.0M patch features at ViT-B/16, 500x375 photos) and COCO train (~60M)
scale, extrapolated linearly in the pixel count, for f = 1 and the recommended fraction. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch.nn.functional as F

from vpltool import io

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

VPL = str(Path(sys.executable).parent / "vpltool")
RESULTS = Path(__file__).parent / "results" / "learn_prototypes.json"
SCALE_PX = {"VOC train_aug": 10_582 * 768, "COCO train": 82_081 * 740}  # images x patches of a ~500x375 photo


def _run(*args: object) -> None:
    subprocess.run([VPL, *map(str, args)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cam_miou(run: Path, protos: Path, work: Path, split: str, params: dict) -> float:
    """mIoU of `cam` with ``protos`` on the run's features of ``split``, scored by `eval`."""
    features = run / ("features" if split == "train" else "features_val")
    out = work / f"cams_{protos.stem}_{split}"
    _run("cam", features, "-p", protos, "-o", out, "--box-threshold", params["box_threshold"], "--refine",
         params["refine"], "--device", "cpu", "--overwrite")
    _run("eval", out, "--json", out.with_suffix(".json"))
    return json.loads(out.with_suffix(".json").read_text())["miou"]


def learn(run: Path, out: Path, params: dict, fraction: float) -> float:
    """learn-prototypes with the full run's settings and ``--pixel-fraction``; returns the wall seconds."""
    start = time.perf_counter()
    settings = ["--tau-i", params["tau_i"], "--iters", params["iters"], "--lr", params["lr"]]
    _run("learn-prototypes", run / "features", "--cams", run / "cams_text", "--text",
         run / "text_prototypes.safetensors", "-o", out, *settings, "--pixel-fraction", fraction, "--device", "cpu")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--fractions", default="0.5,0.25,0.1")
    ap.add_argument("--recommended", type=float, default=0.25, help="the fraction the time estimate is given for")
    ap.add_argument("--work", type=Path, help="scratch folder (default RUN/pixel_fraction)")
    args = ap.parse_args()
    run, work = args.run, args.work or args.run / "pixel_fraction"
    work.mkdir(parents=True, exist_ok=True)
    full_path = run / "vision_prototypes.safetensors"
    full = io.read_prototypes(full_path)
    params = full.params
    cam_params = io.read_stage_record(run / "cams_vision", "cam")["params"]
    rows = full.class_rows()
    base = {split: cam_miou(run, full_path, work, split, cam_params) for split in ("train", "val")}
    entries = []
    for f in (float(v) for v in args.fractions.split(",")):
        out = work / f"vision_f{f:g}.safetensors"
        seconds = learn(run, out, params, f)
        w = io.read_prototypes(out)
        cos = F.cosine_similarity(w.vectors[rows].float(), full.vectors[rows].float(), dim=1)
        miou = {split: cam_miou(run, out, work, split, cam_params) for split in ("train", "val")}
        entries.append({"fraction": f, "cos_min": round(float(cos.min()), 4), "cos_mean": round(float(cos.mean()), 4),
                        "cam_miou": {s: round(100 * m, 2) for s, m in miou.items()},
                        "cam_miou_change": {s: round(100 * (miou[s] - base[s]), 2) for s in miou},
                        "seconds": round(seconds, 1)})
        print(json.dumps(entries[-1]), file=sys.stderr)
    bench = json.loads(RESULTS.read_text()) if RESULTS.is_file() else None
    estimate = None
    if bench:
        per_px = bench["s_per_iter_median"] / bench["n_features"]
        where = f"{bench['machine']['cpu']} {bench['machine']['cores']} cores"
        estimate = {"source": f"{RESULTS.name}: {bench['s_per_iter_median']} s per iteration at "
                              f"{bench['n_features']:,} pixels x {bench['dim']}, {where}",
                    "hours_for_3000_iters": {name: {f"f={f:g}": round(per_px * px * f * 3000 / 3600, 2)
                                                    for f in (1.0, args.recommended)}
                                             for name, px in SCALE_PX.items()}}
    result = {"benchmark": "pixel_fraction_study", "machine": machine("cpu"), "run": str(run),
              "settings": {k: params.get(k) for k in ("tau_i", "iters", "lr")},
              "full_cam_miou": {s: round(100 * m, 2) for s, m in base.items()},
              "bars": {"cos_min": 0.99, "cam_miou_change_abs": 0.5}, "fractions": entries,
              "recommended": args.recommended, "cpu_time_estimate": estimate}
    print(json.dumps(result, indent=1))
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    """The study as a markdown table (docs/learn-prototypes.md quotes it)."""
    full = result["full_cam_miou"]
    lines = ["| pixel fraction | cos(W_f, W) min / mean | vision CAM mIoU train (change) | val (change) | seconds |",
             "|---|---|---|---|---|",
             f"| 1 (every patch) | 1 / 1 | {full['train']:.2f} | {full['val']:.2f} | |"]
    for e in result["fractions"]:
        m, d = e["cam_miou"], e["cam_miou_change"]
        lines.append(f"| {e['fraction']:g} | {e['cos_min']:.4f} / {e['cos_mean']:.4f} | {m['train']:.2f} "
                     f"({d['train']:+.2f}) | {m['val']:.2f} ({d['val']:+.2f}) | {e['seconds']:.0f} |")
    est = result["cpu_time_estimate"]
    if est:
        lines += ["", f"3000 iterations on this CPU, extrapolated from {est['source']}:", ""]
        for name, hours in est["hours_for_3000_iters"].items():
            lines.append(f"* {name}: " + ", ".join(f"{k}: {v:g} h" for k, v in hours.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()

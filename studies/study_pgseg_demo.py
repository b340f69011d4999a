"""PGSeg against plain GroupViT on the demo world, with the same recipe and budget, as the reference trains PGSeg:
fine-tuned with NPR from a trained GroupViT (default_pgseg.yml ``checkpoint.resume``: GroupViT's release).

Per training seed: (A) GroupViT from scratch (`train-pgseg --recipe cpu --no-npr`, the pgseg family's tiny model:
75 epochs, 900 steps on the 400 train pairs), then from A's weights, for the same extra epochs (10: 120 steps, 2
of them warm-up), (B) GroupViT continued (`--no-npr --init A`) and (C) PGSeg (`--npr --init A`): 1,020 steps per
seed and method (each run's seconds in ``train_s``: train-pgseg's own log, so also for a model reused from the run
folder). Trained on the world's train pairs (image + caption: no mask, no label); each model then segments val
zero-shot by the class names (`segment --pgseg`), scored by `eval` (a score file newer than its model is reused):
val mIoU and class IoU (mean, standard deviation, min, max over the seeds), PGSeg - GroupViT per seed (C - B), next
to all-background and uniform random labels. ``--multi-label K``: every run with GroupViT's multi-label (noun) loss,
the world's shape and background words as the noun vocabulary (`train-pgseg --nouns`).
With ``--scratch-pgseg`` PGSeg from scratch is tried too (its T-NPR gradient at a fresh initialisation:
docs/pgseg.md). ``--jobs``: seeds trained side by side (each in its own processes).

    python studies/study_pgseg_demo.py --run runs/pgseg [--seeds 0,1,2] [--jobs 3] [--train 400 --val 100]
        [--epochs 0] [--finetune-epochs 10] [--finetune-warmup 2] [--short-side 96] [--multi-label 0]
        > studies/results/pgseg_demo.json

(A)'s length is the longest that the session's CPU budget allowed for three seeds; how the train-split proxies move
along one such run: studies/study_pgseg_groups.py on its checkpoints (studies/results/pgseg_length.json). Val is
only scored. A finished model found in the run folder is reused. A run that fails or diverges is recorded with its
error line (and no score), never dropped. Prints one JSON object.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vpltool import io
from vpltool.config.pgseg import PGSEG_RECIPES
from vpltool.data import open_dataset
from vpltool.ops.kernels import MiouAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

CPU = PGSEG_RECIPES["cpu"]
# segment's flags per scoring: '' the reference's rule (pgseg_seg.py: bg_thresh only), '_background' the demo's
# background words (the Makefile's BACKGROUND, which its toy-CLIP rows query too) beside the classes; chosen on the
# train split (docs/pgseg.md)
DEMO_BACKGROUND = "grass,sky,wall,water"
NOUNS = "nouns.txt"  # written in --run by write_nouns
INFERENCE = {"": [], "_background": ["--background", DEMO_BACKGROUND]}
# name -> (train-pgseg flags, the run it starts from: None = from scratch)
METHODS = {"groupvit_scratch": (["--no-npr"], None), "groupvit": (["--no-npr"], "groupvit_scratch"),
           "pgseg": (["--npr"], "groupvit_scratch")}
SCRATCH_PGSEG = {"pgseg_scratch": (["--npr"], None)}


def vpl(*args: str) -> subprocess.CompletedProcess:
    """One vpltool command in a fresh process (as `make` runs it); its output kept for the record."""
    return subprocess.run([sys.executable, "-m", "vpltool", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def last_error(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "no output")


def baselines(world: Path, seed: int = 0) -> dict[str, float]:
    """val mIoU of all-background and of uniform random labels (each pixel any of the C + 1 classes)."""
    data = open_dataset(world, "val")
    n = len(data.classes)
    rng = np.random.default_rng(seed)
    bg, uniform = MiouAccumulator(n), MiouAccumulator(n)
    for item in data.items:
        gt = io.read_mask(item.gt)
        bg.add(gt, np.zeros_like(gt))
        uniform.add(gt, rng.integers(0, n, gt.shape).astype(np.uint8))
    return {"all background": bg.result()["miou"], "uniform random labels": uniform.result()["miou"]}


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def write_nouns(world: Path, path: Path) -> None:
    """The demo's noun vocabulary for --multi-label (`train-pgseg --nouns`): the world's class names (background
    excluded) and its background words, the nouns its captions use (nltk is not installed here)."""
    names = [c for c in (world / "classes.txt").read_text().split() if c != "background"]
    path.write_text("\n".join([*names, *DEMO_BACKGROUND.split(",")]) + "\n")


def trained_with(model: Path) -> int:
    """The multi-label K a finished model was trained with (its header's config; 0 for files older than it)."""
    from vpltool.io.tensors import read_header

    return int(json.loads(read_header(model).get("vpltool.config", "{}")).get("multi_label", 0))


def run_seed(args: argparse.Namespace, methods: dict, world: Path, seed: int) -> dict[str, dict]:
    """Train and score every method of one seed, in order ((B) and (C) start from (A)); one record per method."""
    runs: dict[str, dict] = {}
    for method, (flags, start) in methods.items():
        out = args.run / method / f"seed{seed}"
        if start is not None:
            init = args.run / start / f"seed{seed}" / "pgseg.safetensors"
            if not init.is_file():
                runs[method] = {"error": f"no {start} model to start from"}
                continue
            flags = [*flags, "--init", str(init), "--epochs", str(args.finetune_epochs), "--warmup-epochs",
                     str(args.finetune_warmup)]
        elif args.epochs:
            flags = [*flags, "--epochs", str(args.epochs)]
        if args.multi_label:
            flags = [*flags, "--multi-label", str(args.multi_label), "--nouns", str(args.run / NOUNS)]
        t0 = time.perf_counter()
        if (out / "pgseg.safetensors").is_file() and trained_with(out / "pgseg.safetensors") != args.multi_label:
            (out / "pgseg.safetensors").unlink()  # a model of another setting is not reused: trained again
        if not (out / "pgseg.safetensors").is_file():
            crop = ["--crop-size", str(args.crop_size)] if args.crop_size else []
            done = vpl("train-pgseg", str(world), "-o", str(out / "train"), "--recipe", "cpu", *flags, "--seed",
                       str(seed), *crop, "--device", "cpu", "--workers", "1", "--overwrite")
            if done.returncode:
                runs[method] = {"error": last_error(done), "train_s": round(time.perf_counter() - t0, 1)}
                print(f"{method} seed {seed}: {last_error(done)}", file=sys.stderr)
                continue
            os.replace(out / "train" / "pgseg.safetensors", out / "pgseg.safetensors")
        log = io.read_log(out / "train" / "log.jsonl") if (out / "train" / "log.jsonl").is_file() else []
        train_s = log[-1]["sec"] if log else time.perf_counter() - t0  # the training's own clock, reused or not
        scores, error = {}, None
        for suffix, flags in INFERENCE.items():  # the reference's zero-shot rule, then with background words
            seg, scored = out / f"segment_val{suffix}", out / f"segment_val{suffix}.json"
            if scored.is_file() and scored.stat().st_mtime >= (out / "pgseg.safetensors").stat().st_mtime:
                found = io.read_json(scored)  # this model's scores, from an earlier run of the study
                scores[f"miou{suffix}"], scores[f"iou{suffix}"] = found["miou"], found["iou"]
                continue
            done = vpl("segment", str(world), "--split", "val", "--pgseg", str(out / "pgseg.safetensors"),
                       "--short-side", str(args.short_side), "-o", str(seg), "--device", "cpu", "--overwrite", *flags)
            if done.returncode:
                error = last_error(done)
                break
            done = vpl("eval", str(seg), "--json", str(out / f"segment_val{suffix}.json"), "--overwrite")
            found = io.read_json(out / f"segment_val{suffix}.json")
            scores[f"miou{suffix}"], scores[f"iou{suffix}"] = found["miou"], found["iou"]
        if error:
            runs[method] = {"error": error}
            continue
        finite = [r["loss"] for r in log if math.isfinite(r["loss"])]
        runs[method] = {**scores, "train_s": round(train_s, 1),
                        "first_loss": finite[0] if finite else None, "last_loss": finite[-1] if finite else None,
                        # logged steps whose total loss was NaN: T-NPR's closs when HRS kept no row (no gradient)
                        "nan_loss_records": len(log) - len(finite),
                        "iterations": log[-1]["iter"] if log else None}
        print(f"{method} seed {seed}: val mIoU {100 * scores['miou']:.2f}, with background words "
              f"{100 * scores['miou_background']:.2f}", file=sys.stderr)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/pgseg"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=0, help="(A)'s epochs (0: the cpu recipe's)")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="(B) and (C)'s epochs, from (A)")
    ap.add_argument("--finetune-warmup", type=int, default=2, help="(B) and (C)'s warm-up epochs")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained side by side")
    ap.add_argument("--crop-size", type=int, default=0, help="0: the cpu recipe's")
    ap.add_argument("--short-side", type=int, default=CPU["crop_size"], help="segment's; default: the recipe's crop")
    ap.add_argument("--scratch-pgseg", action="store_true", help="also PGSeg from scratch, (A)'s epochs")
    ap.add_argument("--multi-label", type=int, default=0, help="GroupViT's multi-label (noun) loss with K noun "
                    "prompts per caption in every run (--nouns: the world's shape and background words); 0: off")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = {**METHODS, **(SCRATCH_PGSEG if args.scratch_pgseg else {})}
    world = args.run / "world"
    if not io.stage_record_path(world).is_file():
        done = vpl("make-world", str(world), "--train", str(args.train), "--val", str(args.val))
        if done.returncode:
            sys.exit(last_error(done))
    if args.multi_label:
        write_nouns(world, args.run / NOUNS)
    runs: dict[str, dict[int, dict]] = {m: {} for m in methods}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # seeds side by side, each its own processes
        for seed, per_seed in zip(seeds, pool.map(lambda s: run_seed(args, methods, world, s), seeds)):
            for method, record in per_seed.items():
                runs[method][seed] = record
    summary, paired, class_iou = {}, {}, {}
    for suffix in INFERENCE:
        key, iou = f"miou{suffix}", f"iou{suffix}"
        summary[key] = {m: spread([r[key] for r in runs[m].values() if key in r]) for m in methods}
        paired[key] = spread([runs["pgseg"][s][key] - runs["groupvit"][s][key] for s in seeds
                              if key in runs["pgseg"].get(s, {}) and key in runs["groupvit"].get(s, {})])
        classes = sorted({c for m in methods for r in runs[m].values() for c in r.get(iou, {})})
        class_iou[iou] = {m: {c: spread([r[iou][c] for r in runs[m].values() if c in r.get(iou, {})])
                              for c in classes} for m in methods}
    print(json.dumps({
        "what": "val mIoU of zero-shot `segment --pgseg` after `train-pgseg --recipe cpu` on the demo world's train "
                "pairs; groupvit_scratch = (A) --no-npr from scratch; groupvit / pgseg = (A) continued for "
                "--finetune-epochs with --no-npr / --npr (the reference fine-tunes PGSeg from GroupViT)",
        "epochs": args.epochs, "multi_label": args.multi_label,
        "nouns": (args.run / NOUNS).read_text().split() if args.multi_label else None,
        "finetune_epochs": args.finetune_epochs, "finetune_warmup": args.finetune_warmup,
        "command": " ".join(["python", "studies/study_pgseg_demo.py", *sys.argv[1:]]),
        "world": {"train": args.train, "val": args.val}, "seeds": seeds,
        "crop_size": args.crop_size or CPU["crop_size"], "min_scale": CPU["min_scale"],
        "short_side": args.short_side, "baselines": baselines(world),
        "inference": {f"miou{k}": ["segment --pgseg", *v] for k, v in INFERENCE.items()}, "miou": summary,
        "pgseg_minus_groupvit": paired, "class_iou": class_iou, "runs": runs, "machine": machine("cpu"),
    }, indent=1))


if __name__ == "__main__":
    main()

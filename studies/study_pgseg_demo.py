"""GroupViT and PGSeg on the demo world, trained from `make-pairs` shards with the demo recipe, as the reference
trains PGSeg: fine-tuned with NPR from a trained GroupViT (default_pgseg.yml ``checkpoint.resume``: GroupViT's
release).

Data: ``make-pairs RUN/pairs --scenes N`` (fresh scenes fed as the toy CLIP is fed: detailed captions, half of them
re-captioned crops; never a scene of the world) and the README's world (``make-world --train 500 --val 200``, seed
0), whose val split alone is scored and whose train split gives the proxies. Per training seed: (A) GroupViT from
scratch (`train-pgseg RUN/pairs --recipe demo --no-npr`: one pass over the N pairs), then from A's weights, on the
first ``--finetune-shards`` shards for ``--finetune-epochs`` at ``--finetune-lr``, (B) GroupViT continued (`--no-npr
--init A`) and (C) PGSeg (`--npr --init A`): the same recipe, budget and start (each run's seconds in ``train_s``,
CPU-seconds in ``cpu_s``). Each model segments val zero-shot by the class names (`segment --pgseg`) by the
reference's rule and with the background words, scored by `eval`, next to all-background, uniform random labels and
the toy CLIP's MaskCLIP row (`segment --dense maskclip`, the Makefile's settings) for the shipped toy CLIP and for
one trained on the same shards (`train-toy-clip --pairs`, ``--toy-steps`` x 64 pairs). Then, on the first
``--proxy-images`` TRAIN scenes, NPR's mechanism for B and C (:func:`study_pgseg_groups.group_stats`): groups per
object (compactness), the largest share of an object in one group and the group oracle (completeness). ``--jobs``:
seeds trained side by side.

    python studies/study_pgseg_demo.py --run runs/pgseg [--seeds 0,1,2] [--jobs 2] [--scenes 32000]
        > studies/results/pgseg_demo.json

A finished model found in the run folder is reused (train-pgseg's own log gives its seconds). A run that fails or
diverges is recorded with its error line (and no score), never dropped. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# this checkout's vpltool, as the `-m vpltool` commands it runs from here take it (not another one installed)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vpltool import io  # noqa: E402
from vpltool.config.pgseg import PGSEG_RECIPES  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.ops.kernels import MiouAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

RECIPE = "demo"
DEMO = PGSEG_RECIPES[RECIPE]
FINETUNE_LR = 2e-4
# segment's flags per scoring: '' the reference's rule (pgseg_seg.py: bg_thresh only), '_background' the demo's
# background words (the Makefile's BACKGROUND, which its toy-CLIP rows query too) beside the classes
DEMO_BACKGROUND = "grass,sky,wall,water"
NOUNS = "nouns.txt"  # written in --run by write_nouns
INFERENCE = {"": [], "_background": ["--background", DEMO_BACKGROUND]}
# name -> (train-pgseg flags, the run it starts from: None = from scratch)
METHODS = {"groupvit_scratch": (["--no-npr"], None), "groupvit": (["--no-npr"], "groupvit_scratch"),
           "pgseg": (["--npr"], "groupvit_scratch")}
# the toy CLIP's MaskCLIP row: the Makefile's settings for it (DENSE_SIZE_maskclip, DENSE_THR_maskclip, TEMPLATES)
MASKCLIP = ["--dense", "maskclip", "--pretrained", "none", "--templates", "a photo of a {}.", "--background",
            DEMO_BACKGROUND, "--short-side", "192", "--slide-crop", "192", "--slide-stride", "96",
            "--prob-threshold", "0.5"]


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
    """The demo's noun vocabulary for the multi-label loss (`train-pgseg --nouns`): the world's class names
    (background excluded) and its background words, the nouns its captions use (nltk is not installed here)."""
    names = [c for c in (world / "classes.txt").read_text().split() if c != "background"]
    path.write_text("\n".join([*names, *DEMO_BACKGROUND.split(",")]) + "\n")


def scored(out: Path, model: Path, world: Path, flags: list[str], suffix: str) -> dict | str:
    """`segment` val into ``out/segment_val{suffix}`` with ``flags``, `eval` it; a score newer than the model is
    reused. Returns the eval JSON, or the error line."""
    seg, score = out / f"segment_val{suffix}", out / f"segment_val{suffix}.json"
    if score.is_file() and score.stat().st_mtime >= model.stat().st_mtime:
        return io.read_json(score)
    done = vpl("segment", str(world), "--split", "val", *flags, "-o", str(seg), "--device", "cpu", "--overwrite")
    if done.returncode:
        return last_error(done)
    done = vpl("eval", str(seg), "--json", str(score), "--overwrite")
    return io.read_json(score) if not done.returncode else last_error(done)


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_seed(args: argparse.Namespace, world: Path, seed: int) -> dict[str, dict]:
    """Train and score every method of one seed, in order ((B) and (C) start from (A)); one record per method."""
    runs: dict[str, dict] = {}
    pairs = str(args.run / "pairs")
    finetune = f"{pairs}/{{00000..{args.finetune_shards - 1:05d}}}.tar"
    for method, (flags, start) in METHODS.items():
        out = args.run / method / f"seed{seed}"
        data = pairs
        if start is not None:
            init = args.run / start / f"seed{seed}" / "pgseg.safetensors"
            if not init.is_file():
                runs[method] = {"error": f"no {start} model to start from"}
                continue
            flags = [*flags, "--init", str(init), "--epochs", str(args.finetune_epochs), "--warmup-epochs",
                     str(args.finetune_warmup), "--lr", f"{args.finetune_lr:g}"]
            data = finetune
        t0 = time.perf_counter()
        if not (out / "pgseg.safetensors").is_file():
            done = vpl("train-pgseg", data, "-o", str(out / "train"), "--recipe", RECIPE, *flags, "--nouns",
                       str(args.run / NOUNS), "--seed", str(seed), "--device", "cpu", "--workers", "1",
                       "--overwrite")
            if done.returncode:
                runs[method] = {"error": last_error(done), "train_s": round(time.perf_counter() - t0, 1)}
                print(f"{method} seed {seed}: {last_error(done)}", file=sys.stderr)
                continue
            os.replace(out / "train" / "pgseg.safetensors", out / "pgseg.safetensors")
        log = io.read_log(out / "train" / "log.jsonl") if (out / "train" / "log.jsonl").is_file() else []
        train_s = log[-1]["sec"] if log else time.perf_counter() - t0  # the training's own clock, reused or not
        scores, error = {}, None
        for suffix, extra in INFERENCE.items():  # the reference's zero-shot rule, then with background words
            found = scored(out, out / "pgseg.safetensors", world,
                           ["--pgseg", str(out / "pgseg.safetensors"), "--short-side", str(args.short_side), *extra],
                           suffix)
            if isinstance(found, str):
                error = found
                break
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


def toy_clip_rows(args: argparse.Namespace, world: Path) -> dict[str, dict]:
    """MaskCLIP (the Makefile's settings) with the shipped toy CLIP and with one trained on the same shards."""
    toy = args.run / "toy_clip_pairs"
    rows: dict[str, dict] = {}
    if not (toy / "open_clip_config.json").is_file():
        t0 = time.perf_counter()
        done = vpl("train-toy-clip", str(toy), "--pairs", str(args.run / "pairs"), "--steps", str(args.toy_steps))
        if done.returncode:
            return {"toy CLIP on the shards": {"error": last_error(done)}}
        print(f"toy CLIP on the shards: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for name, model in (("shipped toy CLIP", "vpltool-toy"), ("toy CLIP on the shards", f"local-dir:{toy}")):
        out = args.run / "maskclip" / ("shipped" if model == "vpltool-toy" else "pairs")
        anchor = toy / "open_clip_model.safetensors" if model != "vpltool-toy" else world / "_stage.json"
        out.mkdir(parents=True, exist_ok=True)
        found = scored(out, anchor, world, ["--model", model, *MASKCLIP], "")
        rows[name] = {"error": found} if isinstance(found, str) else {"miou": found["miou"], "iou": found["iou"]}
    training = json.loads((toy / "vpltool.json").read_text())["training"]
    rows["toy CLIP on the shards"]["training"] = {k: training.get(k) for k in (
        "steps", "batch_size", "data", "seconds", "final_loss", "label_set_accuracy", "gradcam_miou")}
    return rows


def npr_mechanism(args: argparse.Namespace, world: Path, seeds: list[int]) -> dict:
    """On the first --proxy-images TRAIN scenes, per seed, B and C: groups per object, an object's largest share in
    one group, the group oracle, and the train proxies of study_pgseg_groups.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_pgseg_groups import group_stats, load_any

    data = open_dataset(world, "train")
    out: dict[str, dict] = {}
    for method in ("groupvit", "pgseg"):
        out[method] = {}
        for seed in seeds:
            model = args.run / method / f"seed{seed}" / "pgseg.safetensors"
            if model.is_file():
                out[method][seed] = group_stats(load_any(model), data, args.proxy_images, args.short_side,
                                                DEMO_BACKGROUND.split(","))
    keys = ("groups_per_object", "object_in_one_group", "group_oracle_miou", "largest_final_group_share",
            "final_groups_used", "zero_shot_miou", "zero_shot_miou_background")
    paired = {k: spread([out["pgseg"][s][k] - out["groupvit"][s][k] for s in seeds
                         if s in out["pgseg"] and s in out["groupvit"]]) for k in keys}
    return {"images": args.proxy_images, "split": "train", "per_seed": out, "pgseg_minus_groupvit": paired}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/pgseg"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=500, help="the world's train scenes (the proxies read them)")
    ap.add_argument("--val", type=int, default=200, help="the world's val scenes (scored)")
    ap.add_argument("--scenes", type=int, default=32000, help="make-pairs samples (A: one pass)")
    ap.add_argument("--finetune-shards", type=int, default=4, help="(B) and (C) train on the first shards")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="(B) and (C)'s epochs, from (A)")
    ap.add_argument("--finetune-warmup", type=float, default=0.1, help="(B) and (C)'s warm-up epochs")
    # a fifth of (A)'s, as the reference fine-tunes PGSeg from GroupViT at a lower rate than GroupViT trained at
    # (1e-4 against 1.6e-3); chosen on train (docs/pgseg.md: a probe on seed 0 against the recipe's 1e-3)
    ap.add_argument("--finetune-lr", type=float, default=FINETUNE_LR, help="(B) and (C)'s learning rate")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained side by side")
    # the reference tests at twice its training side (448 against 224 crops); the demo likewise (chosen on train:
    # docs/pgseg.md, studies/results/pgseg_token_seed_probes.json)
    ap.add_argument("--short-side", type=int, default=2 * DEMO["crop_size"],
                    help="segment's and the proxies' short side; default: twice the recipe's crop, as the reference")
    ap.add_argument("--proxy-images", type=int, default=100, help="train scenes for NPR's mechanism")
    ap.add_argument("--toy-steps", type=int, default=400, help="the equal-data toy CLIP's steps (x 64 pairs)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    world = args.run / "world"
    for command in (["make-world", str(world), "--train", str(args.train), "--val", str(args.val)],
                    ["make-pairs", str(args.run / "pairs"), "--scenes", str(args.scenes)]):
        done = vpl(*command)
        if done.returncode:
            sys.exit(last_error(done))
    write_nouns(world, args.run / NOUNS)
    runs: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # seeds side by side, each its own processes
        for seed, per_seed in zip(seeds, pool.map(lambda s: run_seed(args, world, s), seeds)):
            for method, record in per_seed.items():
                runs[method][seed] = record
    summary, paired, class_iou = {}, {}, {}
    for suffix in INFERENCE:
        key, iou = f"miou{suffix}", f"iou{suffix}"
        summary[key] = {m: spread([r[key] for r in runs[m].values() if key in r]) for m in METHODS}
        paired[key] = spread([runs["pgseg"][s][key] - runs["groupvit"][s][key] for s in seeds
                              if key in runs["pgseg"].get(s, {}) and key in runs["groupvit"].get(s, {})])
        classes = sorted({c for m in METHODS for r in runs[m].values() for c in r.get(iou, {})})
        class_iou[iou] = {m: {c: spread([r[iou][c] for r in runs[m].values() if c in r.get(iou, {})])
                              for c in classes} for m in METHODS}
    print(json.dumps({
        "what": "val mIoU of zero-shot `segment --pgseg` after `train-pgseg --recipe demo` on make-pairs shards; "
                "groupvit_scratch = (A) --no-npr from scratch; groupvit / pgseg = (A) continued on the first "
                "--finetune-shards for --finetune-epochs with --no-npr / --npr (the reference fine-tunes PGSeg from "
                "GroupViT)",
        "recipe": {RECIPE: DEMO}, "scenes": args.scenes, "finetune_shards": args.finetune_shards,
        "finetune_epochs": args.finetune_epochs, "finetune_warmup": args.finetune_warmup,
        "finetune_lr": args.finetune_lr,
        "nouns": (args.run / NOUNS).read_text().split(),
        "command": " ".join(["python", "studies/study_pgseg_demo.py", *sys.argv[1:]]),
        "world": {"train": args.train, "val": args.val}, "seeds": seeds, "short_side": args.short_side,
        "baselines": baselines(world), "toy_clip_maskclip": toy_clip_rows(args, world),
        "inference": {f"miou{k}": ["segment --pgseg", *v] for k, v in INFERENCE.items()}, "miou": summary,
        "pgseg_minus_groupvit": paired, "npr_mechanism": npr_mechanism(args, world, seeds),
        "class_iou": class_iou, "runs": runs, "cpu_s_children": round(child_cpu_s(), 1), "machine": machine("cpu"),
    }, indent=1))


if __name__ == "__main__":
    main()

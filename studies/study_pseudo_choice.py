"""Which refinement's pseudo masks train the better decoder, and which rule made on TRAIN predicts it (issue 37).

    python studies/study_pseudo_choice.py --run0 runs/demo --worlds 1:0.5,2:0.5 --seeds 0,1 \
        > studies/results/pseudo_choice.json 2> studies/results/pseudo_choice.md

1. Worlds. ``--run0`` takes a finished `make demo` (the demo world, seed 0, no distractors); each ``SEED:D`` of
   ``--worlds`` renders a harder world (``make-world --seed SEED --distractors D``, 500 + 200 scenes) under
   ``--root`` and makes its pseudo masks the Makefile's way (``make pseudo REFINE=none REFINES="none caa caa+sgc"``:
   features, text prototypes, W learned from the text CAMs, vision CAMs and CRF masks of every refinement on the
   training split, scored on it).
2. Masks, on the training split (what a rule may read): mIoU, mean precision and recall over the classes, the share
   of decoy pixels labelled as a class (decoys: ellipses in a class's colours that are background in the ground
   truth; :func:`vpltool.demo.scenes.decoy_masks` re-draws where they are), the share of object pixels given
   another object class (class swaps) and of background pixels given a class (spill).
3. Decoders: for every refinement and decoder seed (``--seeds``), ``train-decoder`` on its masks with the Makefile's
   demo settings (``DEC_ARGS``, ``DEC_ITERS``: ``--dec-args`` and ``--dec-iters`` to change them), then ``predict``
   on train (one scale, no flip: the Makefile's ``CHOICE_PRED_ARGS``) and on val (predict's defaults, as the demo
   reports it), scored by ``eval``; the same figures as 2 for each prediction.
4. Rules. Each rule scores the refinements of one world from the training split only and picks the highest (ties:
   the first of none, caa, caa+sgc). Val is read only to judge the picks: per world and seed, the pick's val mIoU
   against the best refinement's (its shortfall, 0 when the pick is the best), and per world, the mean over the
   seeds of the decoder on the pick's masks against each refinement's mean. ``pseudo_miou`` is the old rule;
   ``decoder_train`` trains a decoder on each refinement's masks and keeps the one whose prediction scores the
   highest mIoU on the training split (the ground truth `eval` on train already reads).

Every folder is kept (under each run's ``choice_study/``) and re-used when the script runs again, so an interrupted
study resumes and a new toy CLIP is measured by pointing ``--root``, ``--run0`` at fresh folders. Prints one JSON
object (stdout) and markdown tables (stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

REFINES = ("none", "caa", "caa+sgc")  # the order ties are broken in (the Makefile's REFINES)
DEC_ITERS = "600"  # the Makefile's DEC_ITERS and DEC_ARGS for the demo world
DEC_ARGS = "--dim 64 --layers 1 --heads 4 --crop-size 96 --batch-size 16 --cache-features"
SPLITS = ("train", "val")
# the rule's prediction on train: one scale, no flip (the Makefile's CHOICE_PRED_ARGS: a ranking, at a third of the
# cost of predict's defaults); val is predicted with predict's defaults, as the demo reports it
CHOICE_PRED_ARGS = ("--scales", "1", "--no-flip")


def _run(*cmd: object) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{done.stderr[-3000:]}")


def _vpl(*args: object) -> None:
    _run(sys.executable, "-m", "vpltool", *args)


# --------------------------------------------------------------------------------------------- worlds
def make_world(root: Path, seed: int, distractors: float, make: str, jobs: int) -> Path:
    """A harder world's run folder with every refinement's pseudo masks on train (the Makefile's targets)."""
    run = root / f"seed{seed}_d{distractors:g}"
    if not (run / "world" / "_stage.json").is_file():
        _vpl("make-world", run / "world", "--seed", seed, "--distractors", distractors, "--train", 500, "--val", 200)
    _run(make, "-s", f"-j{jobs}", "pseudo", f"RUN={run}", f"SEED={seed}", "REFINE=none", "REFINES=none caa caa+sgc",
         "HELDOUT=", "DEVICE=cpu")
    return run


def pseudo_dir(run: Path, refine: str) -> Path:
    return run / "pseudo" if refine == "none" else run / refine / "pseudo"


# --------------------------------------------------------------------------------------------- figures
def eval_json(folder: Path, out: Path) -> dict:
    """``eval``'s JSON of ``folder`` (kept at ``out``, re-used when there)."""
    if not out.is_file():
        _vpl("eval", folder, "--json", out)
    return json.loads(out.read_text())


def world_decoys(run: Path, split: str, n: int) -> list[np.ndarray] | None:
    """The decoy pixels of each scene of ``split`` (None for a world without decoys)."""
    from vpltool.demo.scenes import SceneConfig, decoy_masks, split_seed

    params = json.loads((run / "world" / "_stage.json").read_text())["params"]
    if not params.get("distractors"):
        return None
    fields = SceneConfig.__dataclass_fields__
    cfg = SceneConfig(**{k: v for k, v in params.items() if k in fields})
    return list(decoy_masks(n, split_seed(params["seed"], split), cfg))


def mask_figures(folder: Path, scored: dict, decoys: list[np.ndarray] | None) -> dict:
    """mIoU, mean precision and recall over classes present, class swaps, spill and the decoy share, in %."""
    from vpltool import io

    conf = np.asarray(scored["confusion"], dtype=np.float64)  # [N, N + 1]: row = GT, column = predicted (255 last)
    n = conf.shape[0]
    objects = conf[1:].sum()
    mean = lambda d: statistics.fmean(v for v in d.values() if v is not None)  # noqa: E731
    fig = {"miou": 100 * scored["miou"], "precision": 100 * mean(scored["precision"]),
           "recall": 100 * mean(scored["recall"]),
           "swap": 100 * (conf[1:, 1:n].sum() - np.trace(conf[1:, 1:n])) / max(objects, 1),
           "spill": 100 * conf[0, 1:n].sum() / max(conf[0].sum(), 1),
           "ignored": 100 * conf[:, n].sum() / max(conf.sum(), 1)}
    if decoys is not None:
        painted = total = 0
        for i, decoy in enumerate(decoys):
            if decoy.any():
                split = scored["split"]
                mask = io.read_mask(folder / f"{split}_{i:06d}.png")
                painted += int(((mask[decoy] > 0) & (mask[decoy] != 255)).sum())
                total += int(decoy.sum())
        fig["decoy_painted"] = 100 * painted / max(total, 1)
    return {k: round(float(v), 2) for k, v in fig.items()}


def measured(run: Path, refine: str, seed: int) -> bool:
    """Whether :func:`decoder_row`'s decoder and its scored predictions are all there."""
    work = run / "choice_study" / f"{refine.replace('+', '-')}_seed{seed}"
    return all((work / f"pred_{split}.json").is_file() for split in SPLITS)


def decoder_row(run: Path, refine: str, seed: int, dec_iters: str, dec_args: list[str]) -> dict:
    """Train one decoder on ``refine``'s masks (re-used if there), predict both splits, score them."""
    work = run / "choice_study" / f"{refine.replace('+', '-')}_seed{seed}"
    decoder = work / "decoder" / "decoder.safetensors"
    if not decoder.is_file():
        _vpl("train-decoder", pseudo_dir(run, refine), "-p", run / "vision_prototypes.safetensors", "-o",
             decoder.parent, "--iters", dec_iters, *dec_args, "--seed", seed, "--device", "cpu", "--overwrite")
    row = {}
    for split in SPLITS:
        pred = work / f"pred_{split}"
        if not (pred / "_stage.json").is_file():
            _vpl("predict", decoder, "--split", split, "-o", pred, *(CHOICE_PRED_ARGS if split == "train" else ()),
                 "--device", "cpu", "--overwrite")
        scored = eval_json(pred, work / f"pred_{split}.json")
        row[split] = mask_figures(pred, scored, world_decoys(run, split, scored["n_images"]))
    return row


# --------------------------------------------------------------------------------------------- rules
def rule_scores(masks: dict, decoders: dict, seed: int) -> dict[str, dict[str, float]]:
    """Each rule's score of every refinement of one world that has decoders, from the training split only."""
    refines = list(decoders)
    return {
        "pseudo_miou": {r: masks[r]["miou"] for r in refines},
        "pseudo_precision": {r: masks[r]["precision"] for r in refines},
        "pseudo_f1": {r: 2 * masks[r]["precision"] * masks[r]["recall"] / (masks[r]["precision"]
                                                                          + masks[r]["recall"]) for r in refines},
        "decoder_train": {r: decoders[r][seed]["train"]["miou"] for r in refines},
    }


def judge(worlds: dict, seeds: list[int]) -> dict:
    """Each rule's picks against the decoders' val mIoU: per world and seed, and per world over the seeds."""
    out: dict = {}
    for name in rule_scores(*next(iter(worlds.values())).values(), seeds[0]):
        per, means = [], []
        for world, w in worlds.items():
            first = len(per)
            refines = list(w["decoders"])  # REFINES' order; with --available, those measured
            val = {r: {s: w["decoders"][r][s]["val"]["miou"] for s in seeds} for r in refines}
            for s in seeds:
                scores = rule_scores(w["masks"], w["decoders"], s)[name]
                pick = max(refines, key=lambda r: scores[r])
                best = max(val[r][s] for r in refines)
                per.append({"world": world, "seed": s, "pick": pick, "val": val[pick][s],
                            "shortfall": round(best - val[pick][s], 2)})
            # the rule with its scores averaged over the seeds, judged on the val means
            mean_scores = {r: statistics.fmean(rule_scores(w["masks"], w["decoders"], s)[name][r] for s in seeds)
                           for r in refines}
            pick = max(refines, key=lambda r: mean_scores[r])
            val_mean = {r: round(statistics.fmean(val[r].values()), 2) for r in refines}
            # as `make` runs it: each seed's own pick (one decoder per refinement, the best on train kept)
            run_picks = round(statistics.fmean(p["val"] for p in per[first:]), 2)
            means.append({"world": world, "refines": refines, "per_seed_picks_val_mean": run_picks,
                          "per_seed_picks_shortfall": round(max(val_mean.values()) - run_picks, 2),
                          "pick": pick, "val_mean": val_mean[pick],
                          "best_mean": max(val_mean.values()), "shortfall": round(max(val_mean.values())
                                                                                  - val_mean[pick], 2)})
        out[name] = {"per_seed": per, "per_world": means,
                     "mean_shortfall_per_seed": round(statistics.fmean(p["shortfall"] for p in per), 2),
                     "picks_within_0.5_per_world": sum(m["shortfall"] <= 0.5 for m in means),
                     "worlds": len(means)}
    return out


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 2),
            "sd": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run0", type=Path, default=None, help="a finished `make demo` run (the demo world)")
    ap.add_argument("--worlds", default="1:0.5,2:0.5", help="harder worlds SEED:DISTRACTORS, comma-separated")
    ap.add_argument("--root", type=Path, default=Path("runs/choice_study"))
    ap.add_argument("--seeds", default="0,1", help="decoder seeds (train-decoder --seed)")
    ap.add_argument("--dec-iters", default=DEC_ITERS)
    ap.add_argument("--dec-args", default=DEC_ARGS)
    ap.add_argument("--make", default="make")
    ap.add_argument("--jobs", type=int, default=1, help="decoders trained at once (and make -j)")
    ap.add_argument("--available", action="store_true", help="train nothing: judge the refinements whose decoders "
                    "(every seed) are already measured, and say which were left out")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    runs = {"demo": args.run0} if args.run0 else {}
    for spec in filter(None, args.worlds.split(",")):
        seed, distractors = spec.split(":")
        runs[f"seed{seed}_d{float(distractors):g}"] = make_world(args.root, int(seed), float(distractors),
                                                                 args.make, args.jobs)
    worlds: dict = {}
    for name, run in runs.items():
        masks = {}
        for r in REFINES:
            scored = eval_json(pseudo_dir(run, r), run / "choice_study" / f"pseudo_{r.replace('+', '-')}.json")
            masks[r] = mask_figures(pseudo_dir(run, r), scored, world_decoys(run, "train", scored["n_images"]))
        keys = [(r, s) for r in REFINES for s in seeds]
        if args.available:  # only the refinements whose every decoder is measured
            keys = [(r, s) for r, s in keys if all(measured(run, r, t) for t in seeds)]

        def one(key: tuple[str, int], run: Path = run, name: str = name) -> dict:
            row = decoder_row(run, *key, args.dec_iters, args.dec_args.split())
            print(json.dumps({"world": name, "refine": key[0], "seed": key[1], **row}), file=sys.stderr)
            return row

        with ThreadPoolExecutor(args.jobs) as pool:  # each decoder is its own process; threads only wait on them
            rows = dict(zip(keys, pool.map(one, keys)))
        decoders = {r: {s: rows[(r, s)] for s in seeds} for r in REFINES if (r, seeds[0]) in rows}
        worlds[name] = {"masks": masks, "decoders": decoders}
    summary = {name: {r: {split: spread([w["decoders"][r][s][split]["miou"] for s in seeds]) for split in SPLITS}
                      for r in w["decoders"]} for name, w in worlds.items()}
    result = {"benchmark": "pseudo_choice_study", "machine": machine("cpu"),
              "runs": {k: str(v) for k, v in runs.items()}, "seeds": seeds,
              "decoder": {"iters": args.dec_iters, "args": args.dec_args},
              "worlds": {name: {"masks": w["masks"],
                                "decoders": {r: {str(s): d for s, d in w["decoders"][r].items()}
                                             for r in w["decoders"]}}
                         for name, w in worlds.items()},
              "decoder_summary": summary, "rules": judge(worlds, seeds),
              "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result, indent=1))
    print(markdown(result), file=sys.stderr)


def _decoys(figures: dict) -> str:
    return f"{figures['decoy_painted']:.1f}" if "decoy_painted" in figures else "- (no decoys)"


def _among(refines: list[str]) -> str:
    return "" if len(refines) == len(REFINES) else f" (of {', '.join(refines)})"


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    lines = []
    for name, w in result["worlds"].items():
        lines += [f"### {name}", "", "| refinement | masks (train): mIoU | precision | recall | swap | spill | "
                  "decoy painted | decoder train mIoU | decoder val mIoU | decoder val: decoy painted |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in REFINES:
            m, d = w["masks"][r], result["decoder_summary"][name].get(r)
            if d is None:
                lines.append(f"| {r} | {m['miou']:.1f} | {m['precision']:.1f} | {m['recall']:.1f} | {m['swap']:.1f} | "
                             f"{m['spill']:.1f} | {_decoys(m)} | not measured | "
                             "not measured | - |")
                continue
            decoy = [w["decoders"][r][str(s)]["val"].get("decoy_painted") for s in seeds]
            lines.append(f"| {r} | {m['miou']:.1f} | {m['precision']:.1f} | {m['recall']:.1f} | {m['swap']:.1f} | "
                         f"{m['spill']:.1f} | {_decoys(m)} | "
                         f"{d['train']['mean']:.1f} ± {d['train']['sd']:.1f} | "
                         f"{d['val']['mean']:.1f} ± {d['val']['sd']:.1f} | "
                         + (f"{statistics.fmean(decoy):.1f}" if None not in decoy else "-") + " |")
        lines.append("")
    lines += ["### Rules (scores from train only; val judges the pick)", "",
              "| rule | per world: pick (scores averaged over seeds) and its val mean, the best refinement's val mean, "
              "the val mean of each seed's own pick | worlds within 0.5 | mean shortfall "
              "per seed |", "|---|---|---|---|"]
    for name, rule in result["rules"].items():
        picks = "; ".join(f"{m['world']}{_among(m['refines'])}: {m['pick']} {m['val_mean']:.1f}, best "
                          f"{m['best_mean']:.1f}, per-seed picks {m['per_seed_picks_val_mean']:.1f}"
                          for m in rule["per_world"])
        lines.append(f"| {name} | {picks} | {rule['picks_within_0.5_per_world']}/{rule['worlds']} | "
                     f"{rule['mean_shortfall_per_seed']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

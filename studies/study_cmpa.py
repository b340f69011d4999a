"""CMPA (SSR's cross-modal prototype alignment, `train-decoder --lambda-proto`) on the full demo run, over decoder
seeds: mean and spread of the decoder's mIoU with and without it.

    python studies/study_cmpa.py --run runs/demo --seeds 0,1,2 \
        > studies/results/cmpa_full.json 2> studies/results/cmpa_full.md

RUN is a finished `make demo` (500 train + 200 val scenes): the decoder is trained, as the Makefile trains it, on the
pseudo masks `choose-pseudo` chose on train (``RUN/metrics/pseudo_choice.json``; ``RUN/pseudo`` without one) with
the vision prototypes and the Makefile's demo decoder settings (``--dim 64 --layers 1 --heads 4 --crop-size 96
--batch-size 16 --cache-features``, 600 iterations), once per ``--lambda-proto`` (0 = off, 0.1 = SSR's weight; the
other CMPA settings at their defaults) and ``--seed`` (the decoder's: initial weights, batch order, augmentation).
Each decoder predicts train and val (predict's defaults: multi-scale + flip), scored by `eval`. Reported: mIoU per
run, mean, sample standard deviation, min and max per weight, and the per-seed difference (same seed, same masks)
0.1 - 0; the weight with the higher mean train mIoU is the one chosen (val only reported). The decoder with weight
0 and seed 0 is `make demo`'s own, so its val figure is the demo table's. Folders are kept under
``RUN/cmpa_study`` and re-used, so an interrupted study resumes. Prints one JSON object (stdout) and a markdown
table (stderr).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

DEC_ARGS = ("--iters", "600", "--dim", "64", "--layers", "1", "--heads", "4", "--crop-size", "96", "--batch-size",
            "16", "--cache-features")  # the Makefile's DEC_ITERS and DEC_ARGS for the demo world
SPLITS = ("train", "val")


def _vpl(*args: object) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vpltool", *map(str, args)]
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")


def pseudo_masks(run: Path) -> Path:
    """The masks `make demo`'s decoder trains on: the train-chosen refinement's, else ``RUN/pseudo``."""
    choice = run / "metrics" / "pseudo_choice.json"
    return Path(json.loads(choice.read_text())["folder"]) if choice.is_file() else run / "pseudo"


def decoder_miou(run: Path, pseudo: Path, work: Path, lam: float, seed: int, device: str) -> dict:
    """Train one decoder (re-used if there), predict both splits, score them: mIoU % per split."""
    tag = work / f"lambda{lam:g}_seed{seed}".replace(".", "p")
    decoder = tag / "decoder" / "decoder.safetensors"
    if not decoder.is_file():
        _vpl("train-decoder", pseudo, "-p", run / "vision_prototypes.safetensors", "-o", decoder.parent, *DEC_ARGS,
             "--lambda-proto", lam, "--seed", seed, "--device", device, "--overwrite")
    row = {}
    for split in SPLITS:
        scored = tag / f"pred_{split}.json"
        if not scored.is_file():
            _vpl("predict", decoder, "--split", split, "-o", tag / f"pred_{split}", "--device", device, "--overwrite")
            _vpl("eval", tag / f"pred_{split}", "--json", scored)
        row[split] = round(100 * json.loads(scored.read_text())["miou"], 2)
    return row


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 2),
            "sd": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--seeds", default="0,1,2", help="decoder seeds (train-decoder --seed)")
    ap.add_argument("--lambdas", default="0,0.1", help="--lambda-proto values; the first is the baseline")
    ap.add_argument("--work", type=Path, help="default RUN/cmpa_study")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="decoders trained at once")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    lambdas = [float(x) for x in args.lambdas.split(",")]
    work = args.work or args.run / "cmpa_study"
    pseudo = pseudo_masks(args.run)
    start = time.perf_counter()

    def one(key: tuple[float, int]) -> dict:
        row = decoder_miou(args.run, pseudo, work, *key, args.device)
        print(json.dumps({"lambda_proto": key[0], "seed": key[1], **row}), file=sys.stderr)
        return row

    keys = [(lam, seed) for lam in lambdas for seed in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:  # each decoder is its own process; threads only wait on them
        runs = dict(zip(keys, pool.map(one, keys)))
    summary = {f"{lam:g}": {split: spread([runs[(lam, s)][split] for s in seeds]) for split in SPLITS}
               for lam in lambdas}
    base = lambdas[0]
    deltas = {f"{lam:g} - {base:g}": {split: spread([round(runs[(lam, s)][split] - runs[(base, s)][split], 2)
                                                     for s in seeds]) for split in SPLITS} for lam in lambdas[1:]}
    chosen = max(lambdas, key=lambda lam: summary[f"{lam:g}"]["train"]["mean"])  # ties: the first (the baseline)
    result = {"benchmark": "cmpa_study_full", "machine": machine(args.device), "run": str(args.run),
              "pseudo_masks": str(pseudo), "decoder_args": list(DEC_ARGS), "seeds": seeds,
              "runs": [{"lambda_proto": lam, "seed": s, **row} for (lam, s), row in runs.items()],
              "summary": summary, "paired_differences": deltas, "chosen_on_train": chosen,
              "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result, indent=1))
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    cell = lambda s: f"{s['mean']:.1f} ± {s['sd']:.1f} ({s['min']:.1f} to {s['max']:.1f})"  # noqa: E731
    lines = [f"Decoder mIoU %, mean ± sd (min to max) over decoder seeds {result['seeds']}; masks "
             f"{result['pseudo_masks']}:", "", "| `--lambda-proto` | train | val |", "|---|---|---|"]
    lines += [f"| {lam} | {cell(row['train'])} | {cell(row['val'])} |" for lam, row in result["summary"].items()]
    lines += [f"| {name} (same seed) | {cell(row['train'])} | {cell(row['val'])} |"
              for name, row in result["paired_differences"].items()]
    lines += ["", "Per seed: " + "; ".join(f"λ {r['lambda_proto']:g} seed {r['seed']}: train {r['train']:.1f}, "
                                          f"val {r['val']:.1f}" for r in result["runs"]),
              "", f"Chosen on train: --lambda-proto {result['chosen_on_train']:g}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

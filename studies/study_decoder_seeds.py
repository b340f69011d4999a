"""The demo decoder's val mIoU over decoder seeds: the spread the README gives beside `make demo`'s one run.

    python studies/study_decoder_seeds.py --run runs/demo --seeds 0,1,2 \
        > studies/results/decoder_seeds.json 2> studies/results/decoder_seeds.md
    (or: make decoder-seeds)

RUN is a finished `make demo` (reproducible mode, as `make demo` runs it; this study's commands run in it too, and
a stage refuses to mix modes). The decoder is trained as the Makefile trains the chosen one: on the pseudo masks
`choose-pseudo` chose on train (``RUN/metrics/pseudo_choice.json``), with the vision prototypes and the Makefile's
demo decoder settings (600 iterations, ``--dim 64 --layers 1 --heads 4 --crop-size 96 --batch-size 16
--cache-features``, ``--lambda-proto 0``), once per ``--seed`` (the decoder's initial weights, batch order and
augmentation); each predicts val (predict's defaults) and `eval` scores it. Seed 0 is `make demo`'s own decoder,
whose val figure is the README's (``RUN/metrics/pred_val.json``; its folder is re-used, not re-trained). Only seeds
move here: the masks, prototypes and world are the run's. Folders are kept under ``RUN/decoder_seeds`` and re-used,
so an interrupted study resumes. Prints one JSON object (stdout) and a markdown table (stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

DEC_ARGS = ("--iters", "600", "--dim", "64", "--layers", "1", "--heads", "4", "--crop-size", "96", "--batch-size",
            "16", "--cache-features", "--lambda-proto", "0")  # the Makefile's DEC_ITERS, DEC_ARGS, LAMBDA_PROTO


def _vpl(*args: object) -> None:
    """A vpltool command in reproducible mode, `make demo`'s (its inputs were made in it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VPLTOOL_REPRODUCIBLE": "1"}
    cmd = [sys.executable, "-m", "vpltool", *map(str, args)]
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")


def val_miou(run: Path, pseudo: Path, seed: int) -> float:
    """mIoU % on val of the decoder of ``seed`` (seed 0: the run's own, scored by `make demo`)."""
    if seed == 0 and (run / "metrics" / "pred_val.json").is_file():
        return 100 * json.loads((run / "metrics" / "pred_val.json").read_text())["miou"]
    tag = run / "decoder_seeds" / f"seed{seed}"
    decoder = tag / "decoder" / "decoder.safetensors"
    if not decoder.is_file():
        _vpl("train-decoder", pseudo, "-p", run / "vision_prototypes.safetensors", "-o", decoder.parent, *DEC_ARGS,
             "--seed", seed, "--device", "cpu", "--overwrite")
    scored = tag / "pred_val.json"
    if not scored.is_file():
        _vpl("predict", decoder, "--split", "val", "-o", tag / "pred_val", "--device", "cpu", "--overwrite")
        _vpl("eval", tag / "pred_val", "--json", scored)
    return 100 * json.loads(scored.read_text())["miou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--seeds", default="0,1,2", help="decoder seeds (train-decoder --seed)")
    args = ap.parse_args()
    run = args.run.resolve()
    choice = json.loads((run / "metrics" / "pseudo_choice.json").read_text())
    pseudo = Path(choice["folder"]).resolve()  # as choose-pseudo recorded it (relative to where make ran)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {seed: val_miou(run, pseudo, seed) for seed in seeds}  # unrounded: each figure is rounded once, shown
    values = list(rows.values())
    summary = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
               "min": min(values), "max": max(values), "n": len(values)}
    print(json.dumps({"study": "decoder_seeds", "machine": machine("cpu"), "run": str(args.run),
                      "pseudo": str(pseudo.relative_to(run)), "chosen": choice.get("chosen"),
                      "val_miou_by_seed": {str(k): round(v, 4) for k, v in rows.items()},
                      "val_miou": {k: v if k == "n" else round(v, 4) for k, v in summary.items()}}, indent=1))
    lines = ["| decoder seed | val mIoU % |", "|---|---|", *(f"| {k} | {v:.1f} |" for k, v in rows.items()),
             f"| mean ± sd (n={summary['n']}) | {summary['mean']:.1f} ± {summary['sd']:.1f} "
             f"(min {summary['min']:.1f}, max {summary['max']:.1f}) |"]
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()

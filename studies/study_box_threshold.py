"""CAA's box threshold on the demo world, chosen on TRAIN (issue 36): `cam --box-threshold T` for each refinement
and prototype source of a finished `make demo` run, scored on the split the CAMs are made on.

    python studies/study_box_threshold.py [--run runs/demo] [--split train] [--thresholds 0.4,0.5,...]
        [--refines caa caa+sgc] [--out DIR] [--data WORLD]
        > studies/results/box_threshold.json 2> studies/results/box_threshold.md

CLIP-ES sets the threshold per dataset (``--box-threshold``: 0.4 on VOC, 0.7 on COCO): CAA's sources are the patches
inside the bounding boxes of the map's contours above ``T x max``, so T decides whether CAA spreads a map's peaks
(high T) or everything the map already covers (low T). On the demo world the toy CLIP's GradCAM maps cover their
objects (patch recall 81 %) but also scattered background (70 % of the patches above 0.5 lie away from any object),
so spreading all of it lowers the maps; spreading the peaks does not (the study's figures).

Per threshold, refinement and source (text prototypes, vision prototypes W, both the run's own files; the
features of the run's ``--split``): the CAMs (``OUT/R/T/cams_SOURCE``, kept and re-used), their mIoU (eval's best
background exponent of {1, 2}) and the ``none`` row for reference. One threshold serves every CAA refinement of the
demo, so the chosen one maximises the mean CAM mIoU over the refinements and both sources on ``--split`` (train:
never val); ties go to the lower threshold. The JSON also names each refinement's own best (``best_of``).
The CAM settings other than the threshold are the Makefile's (AFFINITY clip, SGC defaults). Prints one JSON object
(stdout) and a markdown table (stderr).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
SOURCES = {"text": "text_prototypes.safetensors", "vision": "vision_prototypes.safetensors"}


def features_of(run: Path, split: str) -> Path:
    return run / ("features" if split == "train" else f"features_{split}")


def cam_and_eval(run: Path, split: str, out: Path, data: Path | None, refine: str, threshold: float | None,
                 source: str) -> float:
    """CAM mIoU (0..1) of one setting; the folders and the eval JSON are kept, so a second call only reads."""
    folder = out / refine / ("-" if threshold is None else f"{threshold:g}") / f"cams_{source}"
    score = folder.parent / f"eval_{source}.json"
    if not score.is_file():
        args = [str(VENV_BIN / "vpltool"), "cam", str(features_of(run, split)), "-p", str(run / SOURCES[source]),
                "-o", str(folder), "--refine", refine, "--device", "cpu", "--overwrite"]
        if threshold is not None:
            args += ["--box-threshold", f"{threshold:g}"]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        where = ["--data", str(data)] if data is not None else []
        subprocess.run([str(VENV_BIN / "vpltool"), "eval", str(folder), *where, "--json", str(score), "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(score.read_text())["miou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished `make demo` run folder")
    ap.add_argument("--split", default="train")
    ap.add_argument("--thresholds", default="0.4,0.5,0.6,0.7,0.8,0.9,0.95")
    ap.add_argument("--refines", nargs="+", default=["caa", "caa+sgc"])
    ap.add_argument("--out", type=Path, default=None, help="study folder (default RUN/study_box_threshold)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, help="the dataset, where it is now (default: the one extract recorded)")
    args = ap.parse_args()
    out = args.out or args.run / f"study_box_threshold_{args.split}"
    thresholds = [float(t) for t in args.thresholds.split(",")]
    jobs = [("none", None, s) for s in SOURCES] + [(r, t, s) for r in args.refines for t in thresholds for s in SOURCES]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        scores = list(pool.map(lambda job: cam_and_eval(args.run, args.split, out, args.data, *job), jobs))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for (refine, threshold, source), miou in zip(jobs, scores):
        key = "-" if threshold is None else f"{threshold:g}"
        table.setdefault(refine, {}).setdefault(key, {})[source] = round(100 * miou, 2)
    def mean(t: float, refines: list[str]) -> float:
        return sum(sum(table[r][f"{t:g}"].values()) for r in refines) / (2 * len(refines))

    chosen = max(thresholds, key=lambda t: (mean(t, args.refines), -t))
    result = {"run": str(args.run), "split": args.split, "thresholds": thresholds, "miou": table,
              "mean": {f"{t:g}": round(mean(t, args.refines), 2) for t in thresholds},
              "chosen": chosen,
              "chosen_by": f"mean text and vision CAM mIoU of {', '.join(args.refines)} on {args.split}",
              "best_of": {r: max(thresholds, key=lambda t, r=r: (mean(t, [r]), -t)) for r in args.refines},
              "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    best = ", ".join(f"{r} {t:g}" for r, t in result["best_of"].items())
    lines = [f"CAM mIoU (%) on {args.split}, `{args.run}`; box threshold chosen: **{chosen:g}** "
             f"({result['chosen_by']}; each refinement's own best: {best})",
             "", "| refinement | box threshold | text CAMs | vision CAMs |", "|---|---|---|---|"]
    for refine, rows in table.items():
        for key, row in rows.items():
            lines.append(f"| {refine} | {key} | {row['text']:.1f} | {row['vision']:.1f} |")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()

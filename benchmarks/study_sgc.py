"""SSR's spatial rectification on a demo run: `cam --refine` none vs caa vs caa+sgc (SSR); CAM and CRF mIoU.

    python benchmarks/study_sgc.py --run RUN [--text T] [--vision V] [--work DIR] > benchmarks/studies/sgc_demo.json

RUN holds a demo-world run: ``features`` (train) and ``features_val`` (`extract`), the text prototypes and the vision
prototypes (`learn-prototypes`; default file names those of the Makefile). The prototypes are fixed; only `cam`'s
refinement changes, so every difference below is the refinement's.

1. Choice on train: vision-prototype CAM mIoU on train for a grid of ``caa+sgc`` settings (SLIC segments x K-means
   clusters x position weight); the best is kept (ties: the first listed).
2. Report: for none, caa and the chosen caa+sgc, text- and vision-prototype CAM mIoU and the mIoU of `crf` pseudo
   masks made from the vision CAMs (crf's defaults), on train and on val.

benchmarks/studies/sgc_demo.json also holds ``caa+spmean`` (CAA, then each map averaged inside SLIC superpixels:
vpltool's earlier ``caa+sgc`` rule), measured by this script at commit f862704 (grid: segments 32, 64, 128, 256) and
removed afterwards because it measured worse on train than caa+sgc (and than caa).

Prints one JSON object (stdout) and a markdown table (stderr). DINO affinity is not measured: the demo world has no
DINO model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

from benchlib import machine

SGC_GRID = {"segments": (32, 64, 128, 256), "clusters": (4, 8, 16, 32), "position": (0.0, 0.5)}


def _vpl(*args: object) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "vpltool", *map(str, args)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _miou(folder: Path) -> float:
    _vpl("eval", folder, "--json", folder.with_suffix(".json"))
    return round(100 * json.loads(folder.with_suffix(".json").read_text())["miou"], 2)


def _options(setting: dict) -> list[object]:
    opts: list[object] = ["--refine", setting["refine"]]
    for key in ("segments", "clusters", "position"):
        if key in setting:
            opts += [f"--sgc-{key}", setting[key]]
    return opts


def _name(setting: dict) -> str:
    return "_".join(f"{v}" for v in setting.values()).replace("+", "-")


def cams(run: Path, protos: Path, split: str, setting: dict, work: Path) -> Path:
    features = run / ("features" if split == "train" else "features_val")
    out = work / f"cams_{protos.stem}_{split}_{_name(setting)}"
    _vpl("cam", features, "-p", protos, "-o", out, *_options(setting), "--device", "cpu", "--overwrite")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--text", type=Path, help="default RUN/text_prototypes.safetensors")
    ap.add_argument("--vision", type=Path, help="default RUN/vision_prototypes.safetensors")
    ap.add_argument("--work", type=Path, help="scratch folder (default RUN/sgc_study)")
    args = ap.parse_args()
    run = args.run
    text = args.text or run / "text_prototypes.safetensors"
    vision = args.vision or run / "vision_prototypes.safetensors"
    work = args.work or run / "sgc_study"
    work.mkdir(parents=True, exist_ok=True)

    def train_score(setting: dict) -> float:
        score = _miou(cams(run, vision, "train", setting, work))
        print(json.dumps({"choice_on_train": setting, "vision_cam_miou": score}), file=sys.stderr)
        return score

    sgc = [{"refine": "caa+sgc", **dict(zip(SGC_GRID, values))} for values in itertools.product(*SGC_GRID.values())]
    grid = {"caa+sgc": [(s, train_score(s)) for s in sgc]}
    chosen = {name: max(scores, key=lambda e: e[1])[0] for name, scores in grid.items()}

    report = []
    for setting in ({"refine": "none"}, {"refine": "caa"}, chosen["caa+sgc"]):
        row = {"setting": setting}
        for split in ("train", "val"):
            row[f"text_cam_{split}"] = _miou(cams(run, text, split, setting, work))
            vision_cams = cams(run, vision, split, setting, work)
            row[f"vision_cam_{split}"] = _miou(vision_cams)
            pseudo = work / f"pseudo_{split}_{_name(setting)}"
            _vpl("crf", vision_cams, "-o", pseudo, "--workers", "2", "--overwrite")
            row[f"crf_{split}"] = _miou(pseudo)
        print(json.dumps(row), file=sys.stderr)
        report.append(row)
    result = {"benchmark": "sgc_study", "machine": machine("cpu"), "run": str(run),
              "choice_on_train": {name: [{"setting": s, "vision_cam_miou_train": m} for s, m in scores]
                                  for name, scores in grid.items()},
              "chosen": chosen, "report": report,
              "dino_affinity": "not measured: the demo world has no DINO model"}
    print(json.dumps(result, indent=1))
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    """The report as a markdown table (docs/pipeline.md quotes it)."""
    lines = ["| `cam --refine` | text CAM train | val | vision CAM train | val | CRF (vision) train | val |",
             "|---|---|---|---|---|---|---|"]
    for row in result["report"]:
        s = row["setting"]
        name = s["refine"] + "".join(f" {k} {v}" for k, v in s.items() if k != "refine")
        lines.append(f"| {name} | {row['text_cam_train']:.2f} | {row['text_cam_val']:.2f} | "
                     f"{row['vision_cam_train']:.2f} | {row['vision_cam_val']:.2f} | {row['crf_train']:.2f} | "
                     f"{row['crf_val']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The instance score above which the toy SAM 3's instances are CorrCLIP's, OV-Stitcher's and TextRegion's regions
(`segment --region-masks sam3 --confidence-threshold T`), chosen on the demo world's TRAIN split: what `make
sam3-regions` runs with (the Makefile's SAM3_REGION_CONF_<method>).

    python studies/study_sam3_regions_demo.py --run runs/demo [--choose-images 40] \\
        > studies/results/sam3_regions_demo.json

Each (method, threshold) is the Makefile's own rule for that row (`make RUN=... <metrics>/dense/M@sam3/
segment_val.json`, its windows and background threshold those of the row with the toy SAM's regions), run on a
split of the first ``--choose-images`` train images (a copy of RUN's world of hard links with one more split
listing, ``splits/choose.txt``) and scored by `vpltool eval` on it; the best train mIoU is chosen per method, Meta's
0.5 winning ties. Val is never read. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

METHODS = ("corrclip", "ov-stitcher", "textregion")
THRESHOLDS = (0.02, 0.1, 0.3, 0.5)  # sam-pseudo's train choice, `make sam3`'s, between, and Meta's default
SPLIT = "choose"


def choose_world(world: Path, dest: Path, count: int) -> Path:
    """A copy of ``world`` (hard links) whose ``splits/choose.txt`` lists its first ``count`` train ids."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(world, dest, copy_function=os.link)
    ids = (world / "splits" / "train.txt").read_text().split()[:count]
    (dest / "splits" / f"{SPLIT}.txt").write_text("\n".join(ids) + "\n")
    return dest


def train_miou(work: Path, data: Path, method: str, threshold: float, venv: Path) -> tuple[float, float]:
    """The row's train mIoU at ``threshold`` (the Makefile's rule) and its CPU-seconds (user + sys of make's
    children)."""
    run = work / f"{method}@{threshold:g}"
    target = run / "metrics" / "dense" / f"{method}@sam3" / "segment_val.json"
    before = os.times()
    subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", str(target), f"RUN={run}", f"DATA={data}",
                    "DATA_DEP=", f"VAL_SPLIT={SPLIT}", f"SAM3_REGION_CONF_{method}={threshold:g}", f"VENV={venv}",
                    "DEVICE=cpu", "REPRODUCIBLE=1"], check=True, stdout=subprocess.DEVNULL)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return json.loads(target.read_text())["miou"], round(cpu, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a demo run folder with its world (RUN/world)")
    ap.add_argument("--choose-images", type=int, default=40, help="the first N train images choose [default: 40]")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--thresholds", nargs="+", type=float, default=list(THRESHOLDS))
    args = ap.parse_args()
    work = args.run / "sam3_regions_choose"
    data = choose_world(args.run / "world", work / "world", args.choose_images)
    venv = Path(sys.executable).parent.parent
    rows, chosen, start = {}, {}, time.perf_counter()
    for method in args.methods:
        rows[method] = {}
        for t in args.thresholds:
            miou, cpu = train_miou(work, data, method, t, venv)
            rows[method][f"{t:g}"] = {"train_miou": round(miou, 4), "cpu_s": cpu}
            print(f"{method} @ {t:g}: train mIoU {100 * miou:.1f} ({cpu} CPU-s)", file=sys.stderr)
        best = max(rows[method].items(), key=lambda kv: (kv[1]["train_miou"], kv[0] == "0.5"))
        chosen[method] = float(best[0])
    print(json.dumps({"study": "sam3_regions_demo", "machine": machine(), "split": f"first {args.choose_images} train "
                      "images", "thresholds": args.thresholds, "rows": rows, "chosen": chosen,
                      "wall_s": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()

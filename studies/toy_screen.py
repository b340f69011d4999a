"""Screen toy CLIPs on the demo world's TRAIN split for what CAA needs (issue 36), before a full `make demo`.

    python studies/toy_screen.py NAME=TOY_DIR [NAME=TOY_DIR ...] [--world runs/demo/world] [--runs runs/screen]
        [--refines none caa] [--affinity-images 100] [--out FILE.json]

For each toy CLIP (a `train-toy-clip` folder) it runs the demo's own Makefile on the world's train split alone
(``make RUN=RUNS/NAME DATA=WORLD MODEL=local-dir:TOY_DIR``: extract, text prototypes, text CAMs, W learned on train,
vision CAMs, each refinement of ``--refines``) and reports, all on train:

* text and vision CAM mIoU per refinement, and each one's precision and recall of the objects (CAA can only fill
  CAMs that under-cover: precise and incomplete);
* the attention affinity of the toy (``studies/attention_affinity.py``'s ``own, objects`` over its chance);
* the trainer's held-out label-set accuracy.

Nothing here reads val. mIoU in %; the JSON of every toy goes to stdout (and to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_affinity import measure  # noqa: E402

from vpltool.models import ModelSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def metrics_file(run: Path, refine: str, what: str) -> Path:
    """Where the Makefile's eval of ``what`` (cams_text, cams_vision) under refinement ``refine`` goes."""
    return run / "metrics" / (f"{what}.json" if refine == "none" else f"{refine}/{what}.json")


def run_make(toy: Path, run: Path, world: Path, refines: list[str]) -> None:
    """The train-split CAM rows of `make demo` for one toy (make skips what is up to date)."""
    targets = [str(metrics_file(run, r, w)) for r in refines for w in ("cams_text", "cams_vision")]
    subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", "-j2", *targets, f"RUN={run}", f"DATA={world}",
                    f"DATA_DEP={world / '_stage.json'}", f"VENV={VENV}", "DEVICE=cpu", f"MODEL=local-dir:{toy}",
                    f"MODEL_DEP={toy / 'open_clip_model.safetensors'}", "REFINE=none", f"REFINES={' '.join(refines)}"],
                   check=True, stdout=subprocess.DEVNULL)


def objects_precision_recall(result: dict) -> tuple[float, float]:
    """Mean precision and recall over the object classes (background left out) of an eval JSON."""
    prec = [v for k, v in result["precision"].items() if k != "background" and v is not None]
    rec = [v for k, v in result["recall"].items() if k != "background" and v is not None]
    return round(100 * float(np.mean(prec)), 1), round(100 * float(np.mean(rec)), 1)


def screen(name: str, toy: Path, runs: Path, world: Path, refines: list[str], affinity_images: int) -> dict:
    run = (runs / name).resolve()
    run_make(toy.resolve(), run, world.resolve(), refines)
    rows = {}
    for refine in refines:
        for what in ("cams_text", "cams_vision"):
            result = json.loads(metrics_file(run, refine, what).read_text())
            precision, recall = objects_precision_recall(result)
            rows[f"{what}/{refine}"] = {"miou": round(100 * result["miou"], 1), "precision": precision,
                                        "recall": recall}
    aff = measure(world, "train", ModelSpec(model=f"local-dir:{toy.resolve()}"), [8, 1], None, affinity_images, 0.4)
    record = json.loads((toy / "vpltool.json").read_text())["training"]
    return {"name": name, "toy": str(toy), "rows": rows,
            "affinity": {k: {"own_object": round(100 * v["own_object"], 1),
                             "chance_object": round(100 * v["chance_object"], 1)}
                         for k, v in aff["affinities"].items()},
            "label_set_accuracy": record.get("label_set_accuracy"), "train_seconds": record.get("seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("toys", nargs="+", help="NAME=TOY_DIR")
    ap.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    ap.add_argument("--runs", type=Path, default=Path("runs/screen"))
    ap.add_argument("--refines", nargs="+", default=["none", "caa"])
    ap.add_argument("--affinity-images", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = []
    for spec in args.toys:
        name, _, folder = spec.partition("=")
        results.append(screen(name, Path(folder), args.runs, args.world, args.refines, args.affinity_images))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Open-vocabulary prediction and CMPA on the demo world (issue 21): does a decoder segment a class it never
trained on, given only its name; and does SSR's prototype alignment (CMPA) change the decoder's mIoU?

    python studies/study_open_vocab.py --run RUN [--hold-out star,ring] [--prototypes text,vision]
        [--iters 600] [--work DIR] [--skip-cmpa] [--skip-open-vocab] > studies/results/open_vocab_demo.json

On a demo run that has its pseudo masks (`make pseudo RUN=...`: world, features, text and vision prototypes, CRF
masks), every command through the CLI with the Makefile's demo decoder settings (``--dim 64 --layers 1 --heads 4
--crop-size 96 --batch-size 16 --cache-features``, ``--iters`` 600, predict's default multi-scale + flip):

* **Open vocabulary**, per prototypes file W (text / vision) and held-out class H: `train-decoder --ignore-classes H`
  (H's pixels ignored, its row dropped), `predict --classes` with every class name (in reversed order, so that
  eval's mapping by name is exercised) on train and val, `eval`. Reported per split: H's IoU, the trained classes'
  mean IoU, the mIoU, and H's chance IoU (``everywhere``: H predicted on every pixel, i.e. its pixel share;
  ``in_its_images``: H predicted on every pixel of the images whose GT holds H, a trivial predictor given the
  image label), plus H's IoU from a decoder trained on all classes with the same W (``trained_reference``).
  The choice between text and vision W is made on train (held-out IoU), reported on val.
* **CMPA**: the Makefile's decoder (vision W) with ``--lambda-proto`` 0 and 0.1 (SSR's weight), mIoU on train and
  val of predict's masks.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vpltool import io
from vpltool.data import open_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

DEC_ARGS = ["--dim", "64", "--layers", "1", "--heads", "4", "--crop-size", "96", "--batch-size", "16",
            "--cache-features"]


def _run(*args: object) -> None:
    """The CLI of this interpreter (``python -m vpltool``, so PYTHONPATH picks the checkout)."""
    cmd = [sys.executable, "-m", "vpltool", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}{done.stdout[-1000:]}")


def train(run: Path, protos: Path, out: Path, iters: int, *extra: object) -> Path:
    if not (out / "decoder.safetensors").is_file():
        _run("train-decoder", run / "pseudo", "-p", protos, "-o", out, "--iters", iters, *DEC_ARGS, *extra,
             "--device", "cpu", "--overwrite")
    return out / "decoder.safetensors"


def predict_eval(decoder: Path, out: Path, split: str, *extra: object) -> dict:
    """`predict` then `eval` on ``split``; the eval JSON."""
    metrics = out.parent / f"{out.name}.json"
    if not metrics.is_file():
        _run("predict", decoder, "--split", split, "-o", out, *extra, "--device", "cpu", "--overwrite")
        _run("eval", out, "--json", metrics)
    return json.loads(metrics.read_text())


def chance(world: Path, split: str, name: str) -> dict:
    """IoU of trivial predictors of class ``name`` on ``split``'s GT: everywhere; everywhere in its images."""
    dataset = open_dataset(world, split)
    c = list(dataset.classes).index(name)
    n_c = n_valid = n_in_images = 0
    for item in dataset.items:
        gt = io.read_mask(item.gt)
        valid = gt != 255
        k = int((gt == c).sum())
        n_c, n_valid = n_c + k, n_valid + int(valid.sum())
        n_in_images += int(valid.sum()) if k else 0
    return {"everywhere": round(n_c / n_valid, 4), "in_its_images": round(n_c / max(n_in_images, 1), 4)}


def _fg_mean(iou: dict, names: list[str]) -> float | None:
    vals = [iou[n] for n in names if iou.get(n) is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def open_vocab(run: Path, work: Path, held: list[str], which: list[str], iters: int) -> dict:
    classes = list(open_dataset(run / "world", "train").classes)
    names = ",".join(reversed(classes[1:]))
    rows = []
    for w in which:
        protos = run / f"{w}_prototypes.safetensors"
        full = train(run, protos, work / f"full_{w}", iters)
        full_eval = {s: predict_eval(full, work / f"full_{w}_pred_{s}", s) for s in ("train", "val")}
        for h in held:
            dec = train(run, protos, work / f"ov_{w}_{h}", iters, "--ignore-classes", h)
            row = {"prototypes": w, "held_out": h}
            for split in ("train", "val"):
                r = predict_eval(dec, work / f"ov_{w}_{h}_pred_{split}", split, "--classes", names)
                trained = [c for c in classes[1:] if c != h]
                row[split] = {"held_out_iou": round(r["iou"][h], 4), "trained_mean_iou": _fg_mean(r["iou"], trained),
                              "miou": round(r["miou"], 4), "chance": chance(run / "world", split, h),
                              "trained_reference": round(full_eval[split]["iou"][h], 4)}
            rows.append(row)
    summary = {}
    for w in which:
        mine = [r for r in rows if r["prototypes"] == w]
        summary[w] = {s: {k: round(float(np.mean([r[s][k] for r in mine])), 4)
                          for k in ("held_out_iou", "trained_mean_iou", "miou", "trained_reference")}
                      | {"chance_in_its_images": round(float(np.mean([r[s]["chance"]["in_its_images"]
                                                                       for r in mine])), 4)}
                      for s in ("train", "val")}
    chosen = max(which, key=lambda w: summary[w]["train"]["held_out_iou"])  # chosen on train
    return {"rows": rows, "mean_over_held_out": summary, "chosen_on_train": chosen}


def cmpa(run: Path, work: Path, iters: int, lambdas: list[float], seeds: list[int]) -> list[dict]:
    rows = []
    for lam in lambdas:
        for seed in seeds:
            tag = f"cmpa_{lam:g}_s{seed}".replace(".", "p")
            dec = train(run, run / "vision_prototypes.safetensors", work / tag, iters, "--lambda-proto", lam,
                        "--seed", seed)
            row = {"lambda_proto": lam, "seed": seed}
            for split in ("train", "val"):
                scored = predict_eval(dec, work / f"{tag}_pred_{split}", split)
                row[f"{split}_miou"] = round(scored["miou"], 4)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder [default: RUN/open_vocab_study]")
    ap.add_argument("--hold-out", default=None, help="comma-separated classes [default: every class in turn]")
    ap.add_argument("--prototypes", default="text,vision")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--lambdas", default="0,0.1")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--skip-cmpa", action="store_true")
    ap.add_argument("--skip-open-vocab", action="store_true")
    args = ap.parse_args()
    work = args.work or args.run / "open_vocab_study"
    work.mkdir(parents=True, exist_ok=True)
    classes = list(open_dataset(args.run / "world", "train").classes)
    held = args.hold_out.split(",") if args.hold_out else classes[1:]
    start = time.perf_counter()
    result = {"benchmark": "open_vocab_cmpa_study", "machine": machine("cpu"), "run": str(args.run),
              "decoder_args": DEC_ARGS, "iters": args.iters}
    if not args.skip_open_vocab:
        result["open_vocab"] = open_vocab(args.run, work, held, args.prototypes.split(","), args.iters)
    if not args.skip_cmpa:
        result["cmpa"] = cmpa(args.run, work, args.iters, [float(x) for x in args.lambdas.split(",")],
                              [int(s) for s in args.seeds.split(",")])
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Why vision prototypes do not beat text prototypes on the demo world: one JSON object of measurements.

    python benchmarks/study_vision_prototypes.py [--run runs/demo] [--images 200] [--iters 30,100,300,1000,3000]

Needs a finished demo run (``make demo``): its train features, text prototypes and text CAMs. For each setting it
learns vision prototypes on the whole train split with the library (`run_learn_prototypes`, the paper's objective)
and scores on the first ``--images`` train images (train GT, as the paper scores seeds on VOC train):

* ``gradcam``: the `cam` stage's map (softmax-GradCAM, no refinement) with those prototypes;
* ``pixel``: the prototypes used directly as a pixel classifier, ``softmax_r(x_p . w_r / tau)`` over the image's
  rows, min-max per class: what phase 1 actually fits;
* ``gap_region`` (docs/learn-prototypes.md) and ``cos_image``: mean cosine between an image's embedding (mean of
  its patch features) and the rows of its present classes: the score GradCAM differentiates.

Both maps are turned into labels like `eval` does (bg = (1 - max)^a, best a in {1, 2}).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from vpltool import io  # noqa: E402
from vpltool.backbone import ModelSpec, load_backbone  # noqa: E402
from vpltool.config import EvalConfig, LearnPrototypesConfig, RuntimeConfig  # noqa: E402
from vpltool.kernels import MiouAccumulator, cams_to_labels, minmax, upsample  # noqa: E402  # noqa: E402
from vpltool.learn_prototypes import run_learn_prototypes  # noqa: E402

import benchlib  # noqa: E402


def score(bb, items, protos: io.Prototypes, n_classes: int) -> dict:
    """mIoU (%) of the GradCAM maps and of the direct pixel maps, and the mean image-row cosine."""
    exponents = EvalConfig().bg_exponents
    acc = {(kind, a): MiouAccumulator(n_classes) for kind in ("gradcam", "pixel") for a in exponents}
    cosines = []
    for feats, gt in items:
        labels = list(feats.labels)
        if not labels:
            continue
        rows = protos.image_rows(labels)
        raw = bb.gradcam(feats.last_block_input, feats.grid, rows, len(labels), protos.temperature).maps
        x = F.normalize(feats.dense.flatten(0, 1), dim=-1)
        pixel = (x @ rows.T / protos.temperature).softmax(-1)[:, :len(labels)].T.reshape(len(labels), *feats.grid)
        cosines.append(float((F.normalize(feats.dense.flatten(0, 1).mean(0), dim=-1) @ rows[:len(labels)].T).mean()))
        for kind, maps in (("gradcam", raw), ("pixel", minmax(pixel))):
            full = upsample(maps, feats.image_size).numpy()
            for a in exponents:
                acc[kind, a].add(gt, cams_to_labels(full, labels, a))
    best = {kind: max(100 * acc[kind, a].result()["miou"] for a in exponents) for kind in ("gradcam", "pixel")}
    return {"gradcam_miou": round(best["gradcam"], 2), "pixel_miou": round(best["pixel"], 2),
            "cos_image": round(float(np.mean(cosines)), 3)}


def feature_stats(items) -> dict:
    """How alike the patch features are: mean cosine pixel-to-image-embedding and pixel-to-pixel."""
    to_image, pairwise = [], []
    for feats, _ in items:
        d = feats.dense.flatten(0, 1)
        x = F.normalize(d, dim=-1)
        to_image.append(float((x @ F.normalize(d.mean(0), dim=-1)).mean()))
        pairwise.append(float((x @ x.T).mean()))
    return {"cos_pixel_image": round(float(np.mean(to_image)), 3),
            "cos_pixel_pixel": round(float(np.mean(pairwise)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--images", type=int, default=200, help="train images scored (the first ones by id)")
    ap.add_argument("--iters", default="30,100,300,1000,3000")
    ap.add_argument("--lr", type=float, default=LearnPrototypesConfig().lr)
    ap.add_argument("--targets", default="hard,soft")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the CAM folder/text file pairing warning is expected here

    run = args.run
    record = io.read_stage_record(run / "features", "extract")
    classes = record["classes"]
    world = Path(record["inputs"]["dataset"]["root"])
    bb = load_backbone(ModelSpec.from_identity(record["params"]["model"]), torch.device("cpu"))
    ids = sorted(p.stem for p in (run / "features").glob("*.safetensors"))[:args.images]
    items = [(io.read_features(io.feature_path(run / "features", i), classes=classes),
              io.read_mask(world / "masks" / f"{i}.png")) for i in ids]
    text = io.read_prototypes(run / "text_prototypes.safetensors", classes=classes)

    start = time.perf_counter()
    result = {"benchmark": "vision_prototypes_study", "machine": benchlib.machine("cpu"), "run": str(run),
              "n_images_scored": len(items), "features": feature_stats(items),
              "text": score(bb, items, text, len(classes)), "vision": []}
    with tempfile.TemporaryDirectory() as tmp:
        for targets in args.targets.split(","):
            for iters in (int(v) for v in args.iters.split(",")):
                cfg = LearnPrototypesConfig(iters=iters, lr=args.lr, targets=targets)
                out = Path(tmp) / f"w_{targets}_{iters}.safetensors"
                summary = run_learn_prototypes(run / "features", run / "cams_text", run / "text_prototypes.safetensors",
                                               out, cfg, RuntimeConfig(device="cpu"), plot=False)
                vision = io.read_prototypes(out, classes=classes)
                result["vision"].append({"targets": targets, "iters": iters, "lr": args.lr,
                                         "gap_region": round(summary["gap_after"]["region"], 3),
                                         **score(bb, items, vision, len(classes))})
                print(json.dumps(result["vision"][-1]), file=sys.stderr, flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

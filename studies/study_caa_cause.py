"""Why CLIP-ES's CAA lowered the demo's CAMs (issue 36): the affinity, or the CAMs it propagates?

    python studies/study_caa_cause.py [--run runs/demo] [--images 150] [--box-thresholds 0.4,0.9]
        > studies/results/caa_cause.json 2> studies/results/caa_cause.md

On the first ``--images`` train images of a finished `make demo` run (nothing here reads val), CAA
(:func:`vpltool.stages.cam.caa.refine`, CLIP-ES's arithmetic) is applied to two kinds of class maps with several
transition matrices, each built by :func:`vpltool.stages.cam.caa.affinity` from an attention-like matrix:

* maps: ``toy text`` / ``toy vision`` (the run's own GradCAM maps, ``cams_text`` / ``cams_vision`` made with
  ``--refine none``), and ``ideal`` (what CLIP-like CAMs look like: each present class's map is the core of its
  ground-truth object, a distance transform peaking at the object's centre, squared, on the patch grid; exact
  maps of under-covered objects);
* affinities: ``toy CLIP`` (the toy's attention over its blocks, as the demo's CAA), ``toy DINO``
  (``--affinity dino``), ``blur 3x3`` (no model), ``oracle`` (1 between patches of the same ground-truth region, the
  best grouping there is) and ``oracle x blur`` (the same, within a 3x3 neighbourhood).

Every map set is scored like `eval` scores CAMs (best background exponent of {1, 2}). It also reports where the toy
maps' hot patches (> 0.5) lie: on their own object, in a one-patch halo around it, on another object, or in the
background away from any object, and the patch-level recall of the object. Prints one JSON object (stdout) and
markdown (stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_affinity import blur_attention, clip_attention  # noqa: E402

from vpltool.data import open_dataset  # noqa: E402
from vpltool.io import load_image, read_json, read_mask, read_tensors  # noqa: E402
from vpltool.io.kinds import upsample_maps  # noqa: E402
from vpltool.models import DinoSpec, ModelSpec, load_backbone, load_dino  # noqa: E402
from vpltool.ops.kernels import MiouAccumulator, cams_to_labels  # noqa: E402
from vpltool.stages.cam import affinity, patch_majority  # noqa: E402
from vpltool.stages.cam.caa import refine  # noqa: E402

EXPONENTS = (1.0, 2.0)


def ideal_maps(gt: np.ndarray, labels: list[int], grid: tuple[int, int]) -> torch.Tensor:
    """``[K, h, w]``: each class's object core (distance to its edge, peak 1, squared) on the patch grid."""
    maps = []
    for c in labels:
        d = cv2.distanceTransform((gt == c).astype(np.uint8), cv2.DIST_L2, 3)
        d = cv2.resize(d, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        maps.append((d / max(float(d.max()), 1e-6)) ** 2)
    return torch.tensor(np.stack(maps)).float()


def where_hot(maps: np.ndarray, labels: list[int], regions: np.ndarray, tally: dict) -> None:
    """Count the patches above 0.5 of each map by where they lie (see the module docstring)."""
    for k, c in enumerate(labels):
        hot, own = maps[k] > 0.5, regions == c
        near = cv2.dilate(own.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~own
        other = (regions > 0) & ~own
        for key, where in (("own object", hot & own), ("halo", hot & near & ~other), ("other object", hot & other),
                           ("background away", hot & ~own & ~near & ~other)):
            tally[key] = tally.get(key, 0) + int(where.sum())
        tally["object patches"] = tally.get("object patches", 0) + int(own.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--box-thresholds", default="0.4,0.9")
    ap.add_argument("--dino-weights", default="vpltool/assets/toy-dino/model.safetensors")
    args = ap.parse_args()
    thresholds = [float(t) for t in args.box_thresholds.split(",")]
    model = read_json(args.run / "features" / "_stage.json")["params"]["model"]
    bb = load_backbone(ModelSpec(model=model["model"], pretrained=model["pretrained"]))
    dino = load_dino(DinoSpec("test_vit", args.dino_weights))
    dataset = open_dataset(args.run / "world", "train")
    sources = ("toy text", "toy vision", "ideal")
    affinities = ("none", "toy CLIP", "toy DINO", "blur 3x3", "oracle", "oracle x blur")
    accs = {(s, a, t, e): MiouAccumulator(len(dataset.classes)) for s in sources for a in affinities
            for t in thresholds for e in EXPONENTS}
    hot: dict[str, dict] = {"toy text": {}, "toy vision": {}}
    items = [it for it in dataset.items if it.gt is not None][: args.images]
    for item in items:
        image, gt = load_image(item.image), read_mask(item.gt)
        att, grid = clip_attention(bb, image, 8)
        regions = patch_majority(np.where(gt == 255, 0, gt), grid)
        r = torch.as_tensor(regions)
        same = (r[:, None] == r[None, :]).float()
        blur = blur_attention(grid)
        trans = {"toy CLIP": affinity(att), "toy DINO": affinity(dino.attention(image, grid, 8).float()),
                 "blur 3x3": affinity(blur), "oracle": affinity(same), "oracle x blur": affinity(same * blur)}
        labels = sorted(int(c) for c in np.unique(gt) if 0 < c < 255)
        maps = {}
        for source, folder in (("toy text", "cams_text"), ("toy vision", "cams_vision")):
            f = read_tensors(args.run / folder / f"{item.id}.safetensors", kind="cam", keys=("cams", "labels"))
            labels_s = [int(v) for v in f["labels"]]
            maps[source] = (f["cams"].float(), labels_s)  # the stored patch-grid maps, as cam's CAA sees them
            where_hot(f["cams"].float().numpy(), labels_s, regions.reshape(grid), hot[source])
        maps["ideal"] = (ideal_maps(gt, labels, grid) if labels else torch.zeros(0, *grid), labels)
        for source, (m, labs) in maps.items():
            for a in affinities:
                for t in thresholds:
                    out = m if a == "none" or not len(labs) else refine(m, trans[a], t).maps
                    full = upsample_maps(out.numpy(), gt.shape).astype(np.float32)
                    for e in EXPONENTS:
                        accs[(source, a, t, e)].add(gt, cams_to_labels(full, labs, e))
                    if a == "none":  # no threshold: score once, copy
                        for t2 in thresholds[1:]:
                            for e in EXPONENTS:
                                accs[(source, a, t2, e)] = accs[(source, a, t, e)]
                        break
    miou = {s: {a: {f"{t:g}": round(100 * max(accs[(s, a, t, e)].result()["miou"] for e in EXPONENTS), 1)
                    for t in thresholds} for a in affinities} for s in sources}
    shares = {s: {k: round(v / max(sum(x for kk, x in h.items() if kk != "object patches"), 1), 3)
                  for k, v in h.items() if k != "object patches"} for s, h in hot.items()}
    recall = {s: round(h["own object"] / max(h["object patches"], 1), 3) for s, h in hot.items()}
    result = {"run": str(args.run), "split": "train", "images": len(items), "model": model,
              "box_thresholds": thresholds, "miou": miou, "hot_patches": shares, "patch_recall": recall}
    print(json.dumps(result))
    lines = [f"{len(items)} train images of `{args.run}`; CAM mIoU (%) after CAA with each affinity, per box threshold",
             "", "| maps | affinity | " + " | ".join(f"box {t:g}" for t in thresholds) + " |",
             "|---|---|" + "---|" * len(thresholds)]
    for s in sources:
        for a in affinities:
            name = "none (no CAA)" if a == "none" else a
            lines.append(f"| {s} | {name} | " + " | ".join(f"{miou[s][a][f'{t:g}']:.1f}" for t in thresholds) + " |")
    lines += ["", "Where the toy maps' patches above 0.5 lie (share of all hot patches), and the objects' patch "
              "recall:",
              "", "| maps | own object | halo (1 patch) | other object | background away | patch recall |",
              "|---|---|---|---|---|---|"]
    for s, h in shares.items():
        lines.append(f"| {s} | " + " | ".join(f"{100 * h.get(k, 0):.1f}" for k in
                                                ("own object", "halo", "other object", "background away"))
                     + f" | {100 * recall[s]:.1f} |")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()

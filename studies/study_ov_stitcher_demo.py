"""``--dense ov-stitcher`` on the demo world: zero-shot segmentation (no labels), its settings chosen on the TRAIN
split, reported on val; prints ONE JSON object.

    python studies/study_ov_stitcher_demo.py --run RUN [--choose-images 100] [--points 8,16,32] \
        [--compare-points 64 --compare-images 25] > studies/results/dense_demo_ov_stitcher.json

RUN is a demo run with its world (``RUN/world``, `make world`). The models are the demo's: the toy CLIP
(``--model vpltool-toy``, patch 8, 4 blocks: the depth rule makes its spatial branch block 1), the toy DINO
(``vpltool/assets/toy-dino``, timm's ``test_vit``, patch 16) as the proxy, and the toy SAM (``vpltool/assets/toy-sam``)
through segment-anything's automatic mask generator for the region masks. The queries are the demo's
(:data:`study_dense_demo.TEMPLATES` and ``BACKGROUND``).

**Points per side, a setting of this study.** OV-Stitcher's SAM2 settings are 64 points a side with predicted-IoU and
stability thresholds 0.7 (:data:`vpltool.models.dense.ov_stitcher.SAM_SETTINGS`, untouched: a real run takes them). Its
64 points are set for photos of ~500 px; the demo's scenes are 96 px, where 64 a side is a prompt every 1.5 pixels, and
they cost ~5.7 CPU-seconds a scene through the toy SAM here (one thread). So the study keeps the thresholds and chooses
the points per side (``--points``) on train like any other setting. Each count's region maps are made once into
``RUN/ov_stitcher_regions/points<N>/<id>.npz`` (the reference's format, with the CPU-seconds of each in
``_cpu_seconds.json``) and read from there by every other setting (``--region-masks FOLDER``). ``--compare-points``
(OV-Stitcher's own 64) and a control without any mask (``points0``: every pixel the unsegmented region) are scored at
the chosen windows and threshold on the first ``--compare-images`` train images only, beside the tried counts.

Its windows must be multiples of 112 here (its 56-pixel windows and the two patches, 8 and 16) and no larger than the
short side, so its own 336/112 scaled by 96/224 (144/48) cannot run; its own VOC21 numbers (short side 448, windows
336/112) can, on a scene blown up from 96 px. Chosen on the first ``--choose-images`` train images, one setting at a
time (a full grid would score every window setting once per count): ``--settings`` (short side / window / stride) times
:data:`study_dense_demo.THRESHOLDS` at the first (cheapest) of ``--points``; then every other count at the windows
chosen there, over every threshold. The best mIoU of all those (the first on a tie: fewer points) is scored on every
val image, once. No seed enters (the generator's point grid is fixed, DBSCAN deterministic, one toy model of each
kind): one run. Baselines (all background, random smooth CAMs given the labels) are `demo-report`'s, on the same
images. CPU-seconds are the process's (one thread: run it with ``OMP_NUM_THREADS=1``); the log (stderr) is
timestamped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "bench")]

from study_dense_demo import BACKGROUND, TEMPLATES, THRESHOLDS, _score  # noqa: E402

from benchlib import machine  # noqa: E402

TOY_DINO = ROOT / "vpltool" / "assets" / "toy-dino" / "model.safetensors"
TOY_SAM = ROOT / "vpltool" / "assets" / "toy-sam" / "model.safetensors"
SECONDS = "_cpu_seconds.json"  # beside the maps: what each cost when it was made, so a reused folder still says


def log(line: str) -> None:
    print(time.strftime("%H:%M:%S"), line, file=sys.stderr, flush=True)


def region_masks(items, root: Path, points: int) -> tuple[Path, dict]:
    """The toy SAM's region map of each item at ``points`` a side (OV-Stitcher's thresholds; 0: no mask, every
    pixel the unsegmented id 0), one ``<id>.npz`` each (``instance_mask``: ``[96, 96]`` int32 ids) in
    ``root/points<N>``, made once. Returns the folder and, over ``items``: CPU-seconds per photo (as made), regions
    per photo and the share of pixels they cover."""
    from vpltool import io
    from vpltool.models.dense.corrclip.regions import read_region_file, region_source
    from vpltool.models.dense.ov_stitcher import METHOD, SAM_SETTINGS

    folder = root / f"points{points}"
    folder.mkdir(parents=True, exist_ok=True)
    seconds = json.loads((folder / SECONDS).read_text()) if (folder / SECONDS).is_file() else {}
    source, made = None, 0
    regions, covered = [], []
    for item in items:
        path = folder / f"{Path(item.image).stem}.npz"
        if not path.is_file() or item.id not in seconds:  # a map whose cost went unrecorded (interrupted) anew
            image = io.load_image(item.image)
            if points and source is None:
                source = region_source("sam", "toy", str(TOY_SAM), settings=dict(SAM_SETTINGS, points_per_side=points),
                                       method=METHOD)
            start = time.process_time()
            ids = source.region_map(None, image) if points else np.zeros(image.shape[:2], np.int64)
            seconds[item.id] = time.process_time() - start
            with io.atomic_path(path) as tmp, open(tmp, "wb") as fh:  # an interrupted run leaves no half map
                np.savez_compressed(fh, instance_mask=ids.astype(np.int32))
            io.write_json(folder / SECONDS, seconds)  # after its map: a map on disk has its cost recorded or none
            made += 1
            if made % 20 == 0:
                log(f"regions points {points}: {made} made")
        ids = read_region_file(path)
        regions.append(len(np.unique(ids[ids > 0])))
        covered.append(float((ids > 0).mean()))
    return folder, {"points_per_side": points, "images": len(items),
                    "cpu_seconds_per_image": float(np.mean([seconds[it.id] for it in items])),
                    "regions_per_image": float(np.mean(regions)), "images_without_regions": int(sum(
                        r == 0 for r in regions)), "covered_share": float(np.mean(covered))}


def scored(spec, bb, folder: Path, triple: str, items, text, query_class, n: int, thresholds) -> tuple:
    """``--dense ov-stitcher`` at ``triple`` (short side / window / stride) reading ``folder``'s region maps:
    (the backbone, its settings, zero-shot mIoU per threshold over ``items``, CPU-seconds per image)."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method

    side, crop, stride = (int(v) for v in triple.split("/"))
    cfg = SegmentConfig.of(dense="ov-stitcher", templates=TEMPLATES[0], background=",".join(BACKGROUND),
                           short_side=side, slide_crop=crop, slide_stride=stride, proxy_model="test_vit",
                           proxy_weights=str(TOY_DINO), region_masks=str(folder))
    method = resolve_method(cfg)
    bb = method.load(spec, "cpu", bb)
    start = time.process_time()
    r = _score(bb, method.settings, items, text, query_class, n, thresholds, False)
    cpu = (time.process_time() - start) / max(len(items), 1)
    return bb, method.settings, {t: v["miou"] for t, v in r["zero_shot"].items()}, cpu, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--choose-images", type=int, default=100)
    ap.add_argument("--val-images", type=int, default=None, help="score only the first N val images (a smoke test)")
    ap.add_argument("--points", default="8,16,32", help="the generator's points per side tried on train (the first "
                    "with every --settings, the others at the windows chosen there)")
    ap.add_argument("--compare-points", default="64", help="points per side scored only on --compare-images "
                    "(OV-Stitcher's own 64), beside --points and no mask at all, at the chosen setting")
    ap.add_argument("--compare-images", type=int, default=25)
    ap.add_argument("--settings", default="112/112/56,224/112/56,224/224/112,336/224/112,336/336/112,448/224/112,"
                    "448/336/112,448/448/224", help="short side / window / stride, each tried on train at the first "
                    "of --points")
    args = ap.parse_args()
    import vpltool.demo  # noqa: F401  (registers --model vpltool-toy)
    from vpltool.data import open_dataset
    from vpltool.demo.report import chance_baselines
    from vpltool.models import ModelSpec, load_backbone
    from vpltool.models.dense.segmentor import query_rows

    train, val = open_dataset(args.run / "world", "train"), open_dataset(args.run / "world", "val")
    n = len(train.classes)
    choose = [it for it in train.items if it.gt is not None][: args.choose_images]
    val_items = [it for it in val.items if it.gt is not None][: args.val_images]
    compare = choose[: args.compare_images]
    root = args.run / "ov_stitcher_regions"
    spec = ModelSpec("vpltool-toy", "none")
    bb = load_backbone(spec, "cpu")
    text, query_class = query_rows(bb, [[c] for c in train.classes[1:]], TEMPLATES, BACKGROUND)
    points = [int(p) for p in args.points.split(",")]
    triples = args.settings.split(",")
    tried, masks = {}, {}

    def best(keys) -> tuple:
        return max(((k, t) for k in keys for t in tried[k]["zero_shot_miou"]),
                   key=lambda kt: tried[kt[0]]["zero_shot_miou"][kt[1]])

    # one setting at a time: the windows at the first (cheapest) count, then every count at those windows
    for p in points:
        folder, masks[p] = region_masks(choose, root, p)
        log(f"regions points {p}: {masks[p]}")
        for triple in triples if p == points[0] else [best([k for k in tried if k[0] == points[0]])[0][1]]:
            bb, _, miou, cpu, r = scored(spec, bb, folder, triple, choose, text, query_class, n, THRESHOLDS)
            tried[(p, triple)] = {"zero_shot_miou": miou, "cpu_seconds_per_image": cpu,
                                  "seconds_per_image": r["seconds_per_image"]}
            log(f"ov-stitcher points {p} {triple}: best {100 * max(miou.values()):.2f}, {cpu:.2f} CPU-s/image")
    (best_p, best_triple), best_t = best(tried)
    chosen_t = (float(best_t),)

    # the own 64 points and no mask at all, at the chosen windows and threshold, on a handful of train photos
    comparison = {}
    for p in [0, *points, *(int(v) for v in args.compare_points.split(",") if v)]:
        folder, stats = region_masks(compare, root, p)
        bb, _, miou, cpu, _ = scored(spec, bb, folder, best_triple, compare, text, query_class, n, chosen_t)
        comparison[f"points{p}"] = {**stats, "zero_shot_miou": miou[best_t], "segment_cpu_seconds_per_image": cpu}
        log(f"compare points {p}: {100 * miou[best_t]:.2f}")

    folder, val_masks = region_masks(val_items, root, best_p)
    bb, settings, miou, cpu, on_val = scored(spec, bb, folder, best_triple, val_items, text, query_class, n, chosen_t)
    result = on_val["zero_shot"][best_t]
    report = {"machine": machine(), "choose_images": len(choose), "val_images": len(val_items),
              "compare_images": len(compare), "templates": TEMPLATES, "background": BACKGROUND,
              "models": {"clip": "vpltool-toy", "proxy": "test_vit (vpltool/assets/toy-dino)",
                         "regions": "toy SAM (vpltool/assets/toy-sam), segment-anything's automatic mask generator, "
                                    "OV-Stitcher's thresholds (0.7, 0.7), the points per side chosen on train"},
              "baselines": {"train": chance_baselines(train, limit=len(choose)),
                            "val": chance_baselines(val, limit=len(val_items))},
              "regions_train": {f"points{p}": s for p, s in masks.items()},
              "train": {f"points{p} {tr}": r for (p, tr), r in tried.items()},
              "chosen": {"points_per_side": best_p, "short_side": settings.short_side,
                         "slide_crop": settings.slide_crop, "slide_stride": settings.slide_stride,
                         "prob_threshold": float(best_t),
                         "train_zero_shot_miou": tried[(best_p, best_triple)]["zero_shot_miou"][best_t]},
              "compare_on_train": comparison,
              "val": {"zero_shot_miou": result["miou"], "iou": dict(zip(train.classes, result["iou"])),
                      "held_out_mean_iou": float(np.nanmean([np.nan if v is None else v for v in result["iou"][1:]])),
                      "regions": val_masks, "cpu_seconds_per_image": cpu,
                      "seconds_per_image": on_val["seconds_per_image"]}}
    print(f"ov-stitcher: val {100 * result['miou']:.1f}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

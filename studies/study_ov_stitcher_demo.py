"""``--dense ov-stitcher`` on the demo world: zero-shot segmentation (no labels), its settings chosen on the TRAIN
split, reported on val; prints ONE JSON object.

    python studies/study_ov_stitcher_demo.py --run RUN [--choose-images 100] \
        > studies/results/dense_demo_ov_stitcher.json

RUN is a demo run with its world (``RUN/world``, `make world`). The models are the demo's: the toy CLIP
(``--model vpltool-toy``, patch 8, 4 blocks: the depth rule makes its spatial branch block 1), the toy DINO
(``vpltool/assets/toy-dino``, timm's ``test_vit``, patch 16) as the proxy, and the toy SAM (``vpltool/assets/toy-sam``)
through segment-anything's automatic mask generator with OV-Stitcher's own SAM2 settings (64 points a side,
predicted-IoU and stability thresholds 0.7) for the region masks, made once per image into ``RUN/ov_stitcher_regions``
(``<id>.npz``, the reference's format) and read from there by every setting (``--region-masks FOLDER``). The
queries are the demo's (:data:`study_dense_demo.TEMPLATES` and ``BACKGROUND``).

Its windows must be multiples of 112 here (its 56-pixel windows and the two patches, 8 and 16) and no larger than the
short side, so its own 336/112 scaled by 96/224 (144/48) cannot run; tried on the first ``--choose-images`` train
images: ``--settings`` (short side / window / stride) times :data:`study_dense_demo.THRESHOLDS`; the best mIoU there
is scored on every val image. Deterministic (no sampling; one toy model of each kind): one run. Baselines (all
background, random smooth CAMs given the labels) are `demo-report`'s, on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "bench")]

from study_dense_demo import BACKGROUND, TEMPLATES, THRESHOLDS, _score  # noqa: E402

from benchlib import machine  # noqa: E402

TOY_DINO = ROOT / "vpltool" / "assets" / "toy-dino" / "model.safetensors"
TOY_SAM = ROOT / "vpltool" / "assets" / "toy-sam" / "model.safetensors"


def region_masks(items, folder: Path) -> Path:
    """The toy SAM's region map of each item (OV-Stitcher's SAM2 settings), one ``<id>.npz`` each, made once."""
    from vpltool import io
    from vpltool.models.dense.corrclip.regions import region_source
    from vpltool.models.dense.ov_stitcher import METHOD, SAM_SETTINGS

    folder.mkdir(parents=True, exist_ok=True)
    source = None
    for item in items:
        path = folder / f"{item.id}.npz"
        if path.is_file():
            continue
        if source is None:
            source = region_source("sam", "toy", str(TOY_SAM), settings=SAM_SETTINGS, method=METHOD)
        np.savez_compressed(path, instance_mask=source.region_map(None, io.load_image(item.image)).astype(np.int32))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--choose-images", type=int, default=100)
    ap.add_argument("--val-images", type=int, default=None, help="score only the first N val images (a smoke test)")
    ap.add_argument("--settings", default="112/112/56,224/112/56,224/224/112",
                    help="short side / window / stride, each tried on train")
    args = ap.parse_args()
    import vpltool.demo  # noqa: F401  (registers --model vpltool-toy)
    from vpltool.config import SegmentConfig
    from vpltool.data import open_dataset
    from vpltool.demo.report import chance_baselines
    from vpltool.models import ModelSpec
    from vpltool.models.dense.method import resolve_method
    from vpltool.models.dense.segmentor import query_rows

    train, val = open_dataset(args.run / "world", "train"), open_dataset(args.run / "world", "val")
    n = len(train.classes)
    choose = [it for it in train.items if it.gt is not None][: args.choose_images]
    val_items = [it for it in val.items if it.gt is not None][: args.val_images]
    start = time.perf_counter()
    folder = region_masks(choose + val_items, args.run / "ov_stitcher_regions")
    regions_seconds = time.perf_counter() - start
    spec = ModelSpec("vpltool-toy", "none")
    tried, configs, bb = {}, {}, None
    for triple in args.settings.split(","):
        side, crop, stride = (int(v) for v in triple.split("/"))
        cfg = SegmentConfig.of(dense="ov-stitcher", templates=TEMPLATES[0], background=",".join(BACKGROUND),
                               short_side=side, slide_crop=crop, slide_stride=stride, proxy_model="test_vit",
                               proxy_weights=str(TOY_DINO), region_masks=str(folder))
        method = resolve_method(cfg)
        bb = method.load(spec, "cpu", bb)
        text, query_class = query_rows(bb, [[c] for c in train.classes[1:]], TEMPLATES, BACKGROUND)
        configs[triple] = (bb, method.settings, text, query_class)
        tried[triple] = _score(bb, method.settings, choose, text, query_class, n, THRESHOLDS, False)
        print(f"ov-stitcher {triple}: done", file=sys.stderr, flush=True)
    best, best_t = max(((s, t) for s, r in tried.items() for t in r["zero_shot"]),
                       key=lambda st: tried[st[0]]["zero_shot"][st[1]]["miou"])
    bb, settings, text, query_class = configs[best]
    settings = replace(settings, prob_threshold=float(best_t))
    on_val = _score(bb, settings, val_items, text, query_class, n, (float(best_t),), False)
    result = on_val["zero_shot"][str(float(best_t))]
    report = {"machine": machine(), "choose_images": len(choose), "val_images": len(val_items),
              "templates": TEMPLATES, "background": BACKGROUND,
              "models": {"clip": "vpltool-toy", "proxy": "test_vit (vpltool/assets/toy-dino)",
                         "regions": "toy SAM (vpltool/assets/toy-sam), segment-anything's automatic mask generator, "
                                    "OV-Stitcher's SAM2 settings"},
              "regions_seconds": round(regions_seconds, 1),
              "baselines": {"train": chance_baselines(train, limit=len(choose)),
                            "val": chance_baselines(val, limit=len(val_items))},
              "train": {s: {"zero_shot_miou": {t: r["zero_shot"][t]["miou"] for t in r["zero_shot"]},
                            "seconds_per_image": r["seconds_per_image"]} for s, r in tried.items()},
              "chosen": {"short_side": settings.short_side, "slide_crop": settings.slide_crop,
                         "slide_stride": settings.slide_stride, "prob_threshold": float(best_t),
                         "train_zero_shot_miou": tried[best]["zero_shot"][best_t]["miou"]},
              "val": {"zero_shot_miou": result["miou"], "iou": dict(zip(train.classes, result["iou"])),
                      "held_out_mean_iou": float(np.nanmean([np.nan if v is None else v for v in result["iou"][1:]])),
                      "seconds_per_image": on_val["seconds_per_image"]}}
    print(f"ov-stitcher: val {100 * result['miou']:.1f}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""``--region-masks sam3`` for CorrCLIP, OV-Stitcher and TextRegion on the demo world: each method's probability
threshold chosen on the TRAIN split with the toy SAM 3's regions (val is not read; `make sam3-regions` scores val).

    python studies/study_sam3_regions_demo.py --run RUN [--weights vpltool/assets/toy-sam3] [--choose-images 100] \\
        > studies/results/sam3_regions_demo.json

RUN is a demo run with its world (``RUN/world``). The toy CLIP with the demo's queries (``study_dense_demo.py``'s
template and background words), the toy DINO as CorrCLIP's and OV-Stitcher's proxy, and the regions from the toy
SAM 3 (``--weights``) prompted with those queries (:mod:`vpltool.models.dense.concept_regions`). Each method keeps
the windows chosen on train for its row with the toy SAM's regions (:data:`SIZES`, docs/open-vocabulary.md); only
the threshold is chosen here, on the first ``--choose-images`` training images, by zero-shot mIoU (the first of
equal ones). Recorded too: SAM 3's regions per image on those images and the share of pixels they cover (CorrCLIP's
and OV-Stitcher's id map: the rest is the unsegmented region). No sampling (one toy model of each kind, SAM 3's
prompts fixed): one run. Prints one JSON object; the Makefile's ``DENSE_THR_<method>@sam3`` take its choice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_dense_demo as sd  # noqa: E402  (its scoring, queries, thresholds and machine record)

TOY_DINO = {"proxy_model": "test_vit", "proxy_weights": str(ROOT / "vpltool" / "assets" / "toy-dino"
                                                                 / "model.safetensors")}
# each method's windows as its row with the toy SAM's regions chose them on train (docs/open-vocabulary.md:
# CorrCLIP's own 336/112 scaled by 96/224; OV-Stitcher's study; TextRegion's study, its sides scaled to the toy)
SIZES = {"corrclip": {"short_side": 144, "slide_crop": 144, "slide_stride": 48, **TOY_DINO},
         "ov-stitcher": {"short_side": 448, "slide_crop": 448, "slide_stride": 224, **TOY_DINO},
         "textregion": {"short_side": 288, "long_side": 432, "region_crop": 144}}


def region_stats(source, items, names) -> dict:
    """SAM 3's regions per image (CorrCLIP's id map) and the share of pixels they cover, mean over ``items``."""
    from vpltool import io

    counts, covered, start = [], [], time.process_time()
    for item in items:
        ids = source.region_map(io.load_image(item.image), names)
        counts.append(len(np.unique(ids[ids > 0])))
        covered.append(float((ids > 0).mean()))
    return {"regions_per_image": float(np.mean(counts)), "images_without_regions": int(sum(c == 0 for c in counts)),
            "covered_share": float(np.mean(covered)),
            "cpu_seconds_per_image": (time.process_time() - start) / max(len(items), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--weights", default=str(ROOT / "vpltool" / "assets" / "toy-sam3"), help="SAM 3's weights")
    ap.add_argument("--choose-images", type=int, default=100)
    ap.add_argument("--methods", default=",".join(SIZES))
    args = ap.parse_args()
    import torch

    import vpltool.demo  # noqa: F401  (registers --model vpltool-toy)
    from vpltool.config import SegmentConfig
    from vpltool.data import open_dataset
    from vpltool.demo.report import chance_baselines
    from vpltool.models import ModelSpec, load_backbone
    from vpltool.models.dense.concept_regions import sam3_source
    from vpltool.models.dense.method import resolve_method
    from vpltool.models.dense.segmentor import query_rows

    torch.set_num_threads(1)
    train = open_dataset(args.run / "world", "train")
    n = len(train.classes)
    choose = [it for it in train.items if it.gt is not None][: args.choose_images]
    spec = ModelSpec("vpltool-toy", "none")
    base = load_backbone(spec, "cpu")
    methods, names = {}, None
    for method in args.methods.split(","):
        cfg = SegmentConfig.of(dense=method, templates=sd.TEMPLATES[0], background=",".join(sd.BACKGROUND),
                               region_masks="sam3", sam_weights=args.weights, **SIZES[method])
        resolved = resolve_method(cfg)  # as segment resolves it: its proxy loaded with the CLIP
        bb = resolved.load(spec, "cpu", base)
        text, query_class = query_rows(bb, [[c] for c in train.classes[1:]], sd.TEMPLATES, sd.BACKGROUND)
        names = bb.hooks._names  # SAM 3's prompts: the run's query words
        tried = sd._score(bb, resolved.settings, choose, text, query_class, n, sd.THRESHOLDS, False)
        miou = {t: r["miou"] for t, r in tried["zero_shot"].items()}
        best = max(miou, key=miou.get)
        methods[method] = {"sizes": {k: v for k, v in SIZES[method].items() if k != "proxy_weights"},
                           "zero_shot_miou": miou, "chosen_threshold": float(best), "train_miou": miou[best],
                           "seconds_per_image": tried["seconds_per_image"]}
        print(f"{method} @sam3: threshold {best}, train {100 * miou[best]:.1f}", file=sys.stderr, flush=True)
    report = {"machine": sd.machine(), "choose_images": len(choose), "templates": sd.TEMPLATES,
              "background": sd.BACKGROUND, "sam3": {"weights": str(args.weights), "prompts": list(names or ())},
              "baselines": {"train": chance_baselines(train, limit=len(choose))},
              "regions_train": region_stats(sam3_source("sam3", args.weights), choose, names),
              "methods": methods}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

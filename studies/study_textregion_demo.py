"""``--dense textregion`` on the demo world: its region masks from the toy SAM through TextRegion's own generator
(``--region-masks sam --sam-model toy``), its settings chosen on the TRAIN split, reported on val.

    python studies/study_textregion_demo.py --run RUN [--choose-images 100] > studies/results/textregion_demo.json

RUN is a demo run with its world (``RUN/world``, `make world`). The toy CLIP (``--model vpltool-toy``) with the
demo's queries (``study_dense_demo.py``'s templates and background words); the toy SAM (``vpltool/assets/toy-sam``)
in SAM 2's place, through the generator with TextRegion's settings (16 points a side, predicted IoU and stability
0.6, masks over 100 low-resolution pixels). Chosen on the first ``--choose-images`` training images, by zero-shot
mIoU: the sides (``scaled``: TextRegion's short side 672, long side 1008 and views of 336 x 96/224, i.e. 288, 432
and 144; ``native``: the toy's 96, one view of 96) and the probability threshold. The chosen setting is scored on
every val image. Recorded too, per split: how many masks the generator kept per image and the share of pixels they
cover (the rest take the SCLIP fallback). No sampling anywhere (the toy models are fixed, the generator
deterministic): one run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_dense_demo as sd  # noqa: E402  (its scoring, queries and baselines)

SIDES = {"scaled": {"short_side": 288, "long_side": 432, "region_crop": 144},
         "native": {"short_side": 96, "long_side": 144, "region_crop": 96}}


def coverage(bb, items) -> dict:
    """Masks kept per image and the share of pixels they cover (mean over ``items``)."""
    from vpltool import io

    counts, covered = [], []
    for item in items:
        masks = bb.hooks.extra_inputs(item, io.load_image(item.image))["masks"].float()
        counts.append(len(masks))
        covered.append(float((masks.clamp(0, 1).sum(0) > 0).float().mean()) if len(masks) else 0.0)
    return {"masks_per_image": float(np.mean(counts)), "images_without_masks": int(sum(c == 0 for c in counts)),
            "covered_share": float(np.mean(covered))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--choose-images", type=int, default=100)
    ap.add_argument("--val-images", type=int, default=None, help="score only the first N val images (a smoke test)")
    ap.add_argument("--sam-weights", default=str(ROOT / "vpltool" / "assets" / "toy-sam" / "model.safetensors"))
    args = ap.parse_args()
    import vpltool.demo  # noqa: F401  (registers --model vpltool-toy)
    from vpltool.config import SegmentConfig
    from vpltool.data import open_dataset
    from vpltool.demo.report import chance_baselines
    from vpltool.models import ModelSpec, load_backbone
    from vpltool.models.dense import dense_hooks
    from vpltool.models.dense.segmentor import query_rows

    train, val = open_dataset(args.run / "world", "train"), open_dataset(args.run / "world", "val")
    n = len(train.classes)
    choose = [it for it in train.items if it.gt is not None][: args.choose_images]
    val_items = [it for it in val.items if it.gt is not None][: args.val_images]
    base = load_backbone(ModelSpec("vpltool-toy", "none"), "cpu")
    text, query_class = query_rows(base, [[c] for c in train.classes[1:]], sd.TEMPLATES, sd.BACKGROUND)
    tried, configs, models = {}, {}, {}
    for side, sizes in SIDES.items():
        cfg = SegmentConfig.of(dense="textregion", region_masks="sam", sam_model="toy", sam_weights=args.sam_weights,
                               **sizes)
        bb = base.with_dense("textregion", hooks=dense_hooks("textregion", cfg))
        configs[side], models[side] = cfg.resolved(), bb
        tried[side] = sd._score(bb, configs[side], choose, text, query_class, n, sd.THRESHOLDS, False)
        tried[side]["masks"] = coverage(bb, choose)
        print(f"textregion {side}: done", file=sys.stderr, flush=True)
    side, t = max(((s, t) for s, r in tried.items() for t in r["zero_shot"]),
                  key=lambda st: tried[st[0]]["zero_shot"][st[1]]["miou"])
    settings = replace(configs[side], prob_threshold=float(t))
    on_val = sd._score(models[side], settings, val_items, text, query_class, n, (float(t),), False)
    result = on_val["zero_shot"][str(float(t))]
    report = {"machine": sd.machine(), "choose_images": len(choose), "val_images": len(val_items),
              "templates": sd.TEMPLATES, "background": sd.BACKGROUND, "sam": {"model": "toy", "weights":
                                                                              args.sam_weights},
              "baselines": {"train": chance_baselines(train, limit=len(choose)),
                            "val": chance_baselines(val, limit=len(val_items))},
              "train": {s: {"sizes": SIDES[s], "zero_shot_miou": {k: r["zero_shot"][k]["miou"] for k in r["zero_shot"]},
                            "masks": r["masks"], "seconds_per_image": r["seconds_per_image"]}
                        for s, r in tried.items()},
              "chosen": {"sides": side, **SIDES[side], "prob_threshold": float(t),
                         "train_zero_shot_miou": tried[side]["zero_shot"][t]["miou"]},
              "val": {"zero_shot_miou": result["miou"], "iou": dict(zip(train.classes, result["iou"])),
                      "held_out_mean_iou": float(np.nanmean([np.nan if v is None else v for v in result["iou"][1:]])),
                      "masks": coverage(models[side], val_items), "seconds_per_image": on_val["seconds_per_image"]}}
    print(f"textregion: val {100 * result['miou']:.1f}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""The training-free dense CLIP family on the demo world (issue 35): zero-shot segmentation (no labels) and dense
seeds (labels known), each method's settings chosen on the TRAIN split, reported on val.

    python studies/study_dense_demo.py --run RUN [--choose-images 100] [--sides 96,default]
        [--methods none,maskclip,sclip,clearclip,naclip] > studies/results/dense_demo.json
    python studies/study_dense_demo.py --run RUN --methods sc-clip,proxyclip > studies/results/dense_demo_ovss.json
    python studies/study_dense_demo.py --run RUN --methods cass > studies/results/dense_demo_cass.json
    python studies/study_dense_demo.py --run RUN --sides 96,144,192,scaled --methods none,trident,trident+refine \
        > studies/results/dense_demo_trident.json

``--dense proxyclip``, ``--dense cass`` and ``--dense trident`` take the toy DINO (``vpltool/assets/toy-dino``) as
their proxy model by default, and Trident the toy SAM (``vpltool/assets/toy-sam``, ``--sam-model toy``) as its SAM;
``trident+refine`` is Trident with its SAM prompt refinement (``--sam-refine``), whose ``minimal_area`` (225
half-resolution pixels, set for 448-px photos) is chosen on train too, between its own and that area scaled to the
toy's 96 px (``--refine-areas``). A numeric short side gives Trident a window of at most that side (its input is
made at least the window: a 336-px window would blow a 96-px scene up to 336).

RUN is a demo run with its world (``RUN/world``, `make world`). The queries are the demo's text prototypes' (the
Makefile's ``TEMPLATES`` and ``BACKGROUND``), encoded by the toy CLIP (``--model vpltool-toy``).

* **Zero-shot** (`vpltool segment`'s arithmetic, :mod:`vpltool.models.dense.segmentor`): per method, the short side
  (the toy's native 96 px, or the method's own scaled by 96/224 with its windows: ``--sides``) and the probability
  threshold are chosen by the mIoU of the first
  ``--choose-images`` training images; the method's other settings (logit scale, windows, PAMR) are its own. The
  chosen settings are then scored on every val image, with each class's IoU (every class is "held out" for a
  training-free method: this is what `predict --classes NAMES --dense M` gives, with the decoder's templates and
  background words, the demo's).
* **Seeds** (`cam --dense`'s maps): the softmax over each image's class rows and the background rows, scored as CAMs
  (background ``(1 - max)^a``, the best ``a`` of eval's), on the same training images; the short side chosen there.

Baselines (all background, random smooth CAMs given the labels) are `demo-report`'s, on the same images.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vpltool import io
from vpltool.config import EvalConfig, SegmentConfig
from vpltool.config.dense import PROXY_METHODS, SAM_METHODS
from vpltool.data import open_dataset
from vpltool.demo.report import chance_baselines
from vpltool.models import ModelSpec, load_backbone
from vpltool.models.backbones.dino import DinoSpec
from vpltool.models.backbones.sam import SamSpec
from vpltool.models.dense.segmentor import dense_probabilities, query_rows, segment_logits, short_side_size
from vpltool.models.registry import load_model
from vpltool.ops.kernels import MiouAccumulator, cams_to_labels
from vpltool.stages.cam.dense import dense_maps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

TEMPLATES = ["a photo of a {}."]  # the Makefile's TEMPLATES
BACKGROUND = ["grass", "sky", "wall", "water"]  # the Makefile's BACKGROUND
THRESHOLDS = (*(round(0.1 * i, 1) for i in range(10)), 0.95, 0.99)


TOY_NATIVE, CLIP_NATIVE = 96, 224  # the toy's input side, ViT-B/16's


def _sized(method: str, side: str) -> SegmentConfig:
    """The method's settings at short side ``side`` (a number: windows unchanged, at most the side), ``default``
    (its VOC settings) or ``scaled`` (short side, window and stride x 96/224, multiples of the toy's patch 8)."""
    base = SegmentConfig(dense=method).resolved()
    if side == "default":
        return SegmentConfig(dense=method)
    if side == "scaled":
        def scale(v: int) -> int:
            return max(8, round(v * TOY_NATIVE / CLIP_NATIVE / 8) * 8)
        return SegmentConfig(dense=method, short_side=scale(base.short_side),
                             slide_crop=scale(base.slide_crop) if base.slide_crop else 0,
                             slide_stride=scale(base.slide_stride))
    if method in SAM_METHODS:  # its input is made at least the window: a window of at most the side
        crop = min(base.slide_crop, int(side))
        return SegmentConfig(dense=method, short_side=int(side), slide_crop=crop,
                             slide_stride=min(base.slide_stride, crop))
    return SegmentConfig(dense=method, short_side=int(side))


def _logits(bb, settings, item, image: np.ndarray, text: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``[Q, H, W]`` logits and the image's extras: the method's extra inputs (its ``extra_inputs`` hook: Trident's
    SAM input) with what its segmentor left beside them (Trident's SAM encoding, with ``--sam-refine``)."""
    size = short_side_size(*image.shape[:2], settings.short_side)
    extras = [bb.hooks.extra_inputs(item, image)]
    with torch.no_grad():
        logits = segment_logits(bb, bb.preprocess(image, size)[None], text, settings, [image.shape[:2]], extras)[0]
    return logits, extras[0]


def _score(bb, settings, items, text, query_class, n_classes, thresholds, seeds: bool) -> dict:
    """Zero-shot mIoU per threshold (and, with ``seeds``, the dense seeds' mIoU per background exponent); the
    labels after the method's ``postprocess`` hook at each threshold (Trident's refined ones with
    ``settings.sam_refine``)."""
    zero = {t: MiouAccumulator(n_classes) for t in thresholds}
    seed = {a: MiouAccumulator(n_classes) for a in EvalConfig.bg_exponents}
    class_rows = {int(c): i for i, c in enumerate(query_class.tolist()) if c > 0}
    background = [i for i, c in enumerate(query_class.tolist()) if c == 0]
    start = time.perf_counter()
    for item in items:
        image, gt = io.load_image(item.image), io.read_mask(item.gt)
        logits, extras = _logits(bb, settings, item, image, text)
        for t, acc in zero.items():
            probs, labels = dense_probabilities(logits, query_class, n_classes, settings.logit_scale, t,
                                                settings.area_threshold)
            labels = bb.hooks.postprocess(bb, probs, labels, extras, replace(settings, prob_threshold=t))[1]
            acc.add(gt, labels.numpy().astype(np.uint8))
        if seeds:
            rows = torch.tensor([class_rows[c] for c in item.labels] + background)
            maps = dense_maps(logits, rows, len(item.labels), settings.logit_scale).numpy()
            for a, acc in seed.items():
                acc.add(gt, cams_to_labels(maps, item.labels, a))
    out = {"zero_shot": {str(t): acc.result() for t, acc in zero.items()},
           "seconds_per_image": (time.perf_counter() - start) / max(len(items), 1)}
    if seeds:
        out["seeds"] = {str(a): acc.result()["miou"] for a, acc in seed.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--choose-images", type=int, default=100)
    parser.add_argument("--val-images", type=int, default=None, help="score only the first N val images (a smoke "
                        "test; default: all)")
    parser.add_argument("--sides", default="96,scaled", help="short sides tried: numbers, 'default' (the method's "
                        "VOC setting) or 'scaled' (the method's short side, window and stride x 96/224: its setting "
                        "relative to CLIP's native 224, at the toy's native 96)")
    parser.add_argument("--methods", default="none,maskclip,sclip,clearclip,naclip")
    parser.add_argument("--svd-seeds", default="0,1,2", help="--dense cass: the seeds of its randomised SVD the "
                        "chosen setting is scored on val with (its train choice uses seed 0)")
    parser.add_argument("--proxy-model", default="test_vit", help="the proxy vision model of --dense proxyclip "
                        "(default: the toy DINO shipped in vpltool/assets/toy-dino)")
    parser.add_argument("--proxy-weights", default=str(Path(__file__).resolve().parents[1] / "vpltool" / "assets"
                                                       / "toy-dino" / "model.safetensors"))
    parser.add_argument("--sam-model", default="toy", help="--dense trident's SAM (default: the toy SAM)")
    parser.add_argument("--sam-weights", default=str(Path(__file__).resolve().parents[1] / "vpltool" / "assets"
                                                     / "toy-sam" / "model.safetensors"))
    parser.add_argument("--refine-areas", default="225,10", help="trident+refine: the minimal_area values tried on "
                        "train (half-resolution pixels; 225 is Trident's, 10 is 225 x (48/224)^2: the same share "
                        "of a 96-px scene's half as of a 448-px photo's)")
    args = parser.parse_args()
    import vpltool.demo  # noqa: F401  (registers --model vpltool-toy)

    train, val = open_dataset(args.run / "world", "train"), open_dataset(args.run / "world", "val")
    n = len(train.classes)
    choose = [it for it in train.items if it.gt is not None][: args.choose_images]
    val_items = [it for it in val.items if it.gt is not None][: args.val_images]
    base = load_backbone(ModelSpec("vpltool-toy", "none"), "cpu")
    text, query_class = query_rows(base, [[c] for c in train.classes[1:]], TEMPLATES, BACKGROUND)
    report = {"machine": machine(), "choose_images": len(choose), "val_images": len(val_items),
              "templates": TEMPLATES, "background": BACKGROUND,
              "baselines": {"train": chance_baselines(train, limit=len(choose)),
                            "val": chance_baselines(val, limit=len(val_items))},
              "methods": {}}
    for name in args.methods.split(","):
        method, refine = name.removesuffix("+refine"), name.endswith("+refine")
        proxy = sam = None
        if method in PROXY_METHODS:
            proxy = load_model("dino", DinoSpec(args.proxy_model, args.proxy_weights), "cpu")
            report["proxy"] = {"model": args.proxy_model, "weights": args.proxy_weights}
        if method in SAM_METHODS:
            sam = load_model("sam", SamSpec(args.sam_model, args.sam_weights, prompt=refine), "cpu")
            report["sam"] = {"model": args.sam_model, "weights": args.sam_weights}
        bb = base.with_dense(method, proxy=proxy, sam=sam)
        tried = {}
        configs = {}
        for side in args.sides.split(","):
            cfg = _sized(method, side)
            resolved = cfg.resolved()
            variants = {str(resolved.short_side): resolved}
            if refine:
                variants = {f"{resolved.short_side}:area{a}": replace(resolved, sam_refine=True, minimal_area=int(a))
                            for a in args.refine_areas.split(",")}
            for key, settings in variants.items():
                configs[key] = settings
                tried[key] = _score(bb, settings, choose, text, query_class, n, THRESHOLDS, not refine)
                print(f"{name} {key}: done", file=sys.stderr, flush=True)
        best_side, best_t = max(((s, t) for s, r in tried.items() for t in r["zero_shot"]),
                                key=lambda st: tried[st[0]]["zero_shot"][st[1]]["miou"])
        seed_side = max(tried, key=lambda s: max(tried[s].get("seeds", {"-": float("nan")}).values()))
        settings = replace(configs[best_side], prob_threshold=float(best_t))
        on_val = _score(bb, settings, val_items, text, query_class, n, (float(best_t),), False)
        result = on_val["zero_shot"][str(float(best_t))]
        by_seed = {}
        if bb.mixing.spectral is not None:  # CASS: its randomised SVD's seed moves the figure; the others' do not
            for seed in (int(x) for x in args.svd_seeds.split(",")):
                seeded = base.with_dense(replace(bb.mixing, spectral=replace(bb.mixing.spectral, seed=seed)),
                                         proxy=proxy)
                r = _score(seeded, settings, val_items, text, query_class, n, (float(best_t),), False)
                by_seed[str(seed)] = r["zero_shot"][str(float(best_t))]["miou"]
                print(f"{method} svd seed {seed}: val {100 * by_seed[str(seed)]:.2f}", file=sys.stderr, flush=True)
        report["methods"][name] = {
            "train": {s: {"zero_shot_miou": {t: r["zero_shot"][t]["miou"] for t in r["zero_shot"]},
                          **({"seeds_miou": r["seeds"]} if "seeds" in r else {}),
                          "seconds_per_image": r["seconds_per_image"]}
                      for s, r in tried.items()},
            "chosen": {"short_side": settings.short_side, "prob_threshold": float(best_t),
                       "slide_crop": settings.slide_crop, "slide_stride": settings.slide_stride,
                       **({"minimal_area": settings.minimal_area, "coarse_threshold": settings.coarse_threshold,
                           "sam_iou_threshold": settings.sam_iou_threshold} if refine else {}),
                       "train_zero_shot_miou": tried[best_side]["zero_shot"][best_t]["miou"],
                       **({"seed_short_side": int(seed_side),
                           "train_seeds_miou": max(tried[seed_side]["seeds"].values())} if not refine else {})},
            "val": {"zero_shot_miou": result["miou"], "iou": dict(zip(train.classes, result["iou"])),
                    "held_out_mean_iou": float(np.nanmean([np.nan if v is None else v for v in result["iou"][1:]])),
                    "seconds_per_image": on_val["seconds_per_image"],
                    **({"zero_shot_miou_by_svd_seed": by_seed,
                        "zero_shot_miou_mean": float(np.mean(list(by_seed.values()))),
                        "zero_shot_miou_spread": float(np.ptp(list(by_seed.values())))} if by_seed else {})},
        }
        print(f"{name}: val {100 * result['miou']:.1f}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

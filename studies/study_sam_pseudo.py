"""sam-pseudo on the demo world: its settings chosen on train, and its pseudo masks and their decoders beside the
CRF's over decoder seeds, next to chance and all-background.

    python studies/study_sam_pseudo.py choose --run runs/demo --refine caa \\
        > studies/results/sam_pseudo_settings.json
    python studies/study_sam_pseudo.py seeds --run runs/demo --seeds 0,1,2 \\
        > studies/results/sam_pseudo_seeds.json 2> studies/results/sam_pseudo_seeds.md

``choose``: SAM's automatic-mask settings, the rule and its start label, scored by the pseudo masks' mIoU on the
training split alone (``RUN/cams_vision`` or ``RUN/R/cams_vision`` of ``--refine``), as the Makefile's BOX_THR was
chosen: every setting of :data:`GRID` (the generator's points a side and thresholds; the toy SAM's masks are
computed once per setting and kept under ``RUN/sam_study/``) with every rule and start. Val is not read. Also the
masks' coverage of the object and background pixels, which is what the toy SAM's training was changed for.
``--weights`` compares another toy SAM the same way (e.g. the shipped objects-only one, on a world it never saw);
``--images``: the first N train images (100: the CPU cost of SAM's 32 points a side on 500).

``seeds``: after ``make sam RUN=RUN`` (its choice in ``RUN/metrics/pseudo_choice.json``): the pseudo masks of the
chosen refinement's CRF and SAM candidates on train and val, and a decoder on each over ``--seeds`` (seed 0 is the
Makefile's own; the others trained as the Makefile trains it, with ``--seed``), each scored on train (the choice's
figure: predict's ``--scales 1 --no-flip``) and val (predict's defaults), with chance and all-background from
``RUN/metrics.json``. Only decoder seeds move: the world, the CAMs and the toy SAM are one each. Prints one JSON
object (stdout) and a markdown table (stderr).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from study_decoder_seeds import _vpl  # noqa: E402  (a vpltool command in make demo's reproducible mode)

from benchlib import machine  # noqa: E402

TOY = ROOT / "vpltool" / "assets" / "toy-sam-world20" / "model.safetensors"
# (points a side, predicted-IoU threshold, stability threshold): segment-anything's defaults, CorrCLIP's 0.4, between
GRID = ((8, 0.4, 0.4), (16, 0.4, 0.4), (8, 0.7, 0.7), (16, 0.7, 0.7), (32, 0.88, 0.95))
MERGES = ("max-iou-imp2", "max-iou-imp", "max-iou")
STARTS = ("crf", "argmax")
DEC_ARGS = ("--iters", "600", "--dim", "64", "--layers", "1", "--heads", "4", "--crop-size", "96", "--batch-size",
            "16", "--cache-features", "--lambda-proto", "0")  # the Makefile's DEC_ITERS, DEC_ARGS, LAMBDA_PROTO


# --------------------------------------------------------------------------------------------- choose
def _starts(cams: Path, cache: Path, ids: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """Each image's start label of each --start, computed once (``cache/start_<how>.npz``)."""
    from vpltool import io
    from vpltool.config import SamPseudoConfig
    from vpltool.data import open_recorded
    from vpltool.stages.sam_pseudo import start_label

    data, out = open_recorded(cams), {}
    items = data.by_id()
    for how in STARTS:
        path = cache / f"start_{how}.npz"
        if not path.is_file():
            labels = {}
            for i in ids:
                image, maps = io.read_cam_item(cams, i, items[i].image, items[i].labels, data.classes)
                labels[i] = start_label(image, maps.cams, maps.labels, SamPseudoConfig(start=how))
            np.savez_compressed(path, **labels)
        with np.load(path) as z:
            out.update({(how, i): z[i] for i in z.files})
    return out


def _masks(cams: Path, weights: Path, setting: tuple, cache: Path, ids: list[str]
           ) -> tuple[dict[str, np.ndarray], float | None]:
    """Each image's automatic masks of ``setting`` (``cache/masks_<weights>_<setting>.npz``) and the CPU-seconds
    an image they took (None when read from the cache)."""
    import time

    from vpltool import io
    from vpltool.config import SamPseudoConfig
    from vpltool.data import open_recorded
    from vpltool.stages.sam_pseudo.sources import mask_source

    points, iou, stability = setting
    path = cache / f"masks_{weights.parent.name}_{points}_{iou}_{stability}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {i: z[i] for i in z.files}, None
    data = open_recorded(cams)
    source = mask_source(SamPseudoConfig(sam_model="toy", sam_weights=str(weights), points_per_side=points,
                                         pred_iou_thresh=iou, stability_score_thresh=stability), data.classes)
    source.load("cpu")
    items, out = data.by_id(), {}
    start = time.process_time()
    for i in ids:
        out[i] = source.masks(io.load_image(items[i].image), items[i].labels)
    seconds = (time.process_time() - start) / max(len(out), 1)
    np.savez_compressed(path, **out)
    return out, seconds


def _miou(gts: dict, preds: dict, classes: int) -> float:
    from vpltool.ops.kernels import MiouAccumulator

    acc = MiouAccumulator(classes)
    for i, gt in gts.items():
        acc.add(gt, preds[i])
    return 100 * acc.result()["miou"]


def choose(args) -> dict:
    from vpltool import io
    from vpltool.data import open_recorded
    from vpltool.stages.sam_pseudo import merge_masks

    base = args.run if args.refine is None else args.run / args.refine
    cams = base / "cams_vision"
    cache = args.run / "sam_study" / (args.refine or "own") / f"first{args.images}"
    cache.mkdir(parents=True, exist_ok=True)
    data = open_recorded(cams)
    items = data.by_id()
    ids = io.item_ids(cams)[: args.images]
    gts = {i: io.read_mask(items[i].gt) for i in ids}
    if data.split != "train":
        raise SystemExit(f"{cams}: CAMs of split {data.split!r}; the settings are chosen on train")
    starts = _starts(cams, cache, ids)
    n = len(data.classes)
    objects = {i: (g > 0) & (g < 255) for i, g in gts.items()}
    rows = [{"start": how, "merge": None, "setting": None, "miou": _miou(gts, {i: starts[how, i] for i in gts}, n)}
            for how in STARTS]
    coverage = []
    for setting in GRID:
        masks, seconds = _masks(cams, args.weights, setting, cache, ids)
        union = {i: m.any(0) if len(m) else np.zeros(gts[i].shape, bool) for i, m in masks.items()}
        coverage.append({"setting": list(setting), "masks_per_image": float(np.mean([len(m) for m in masks.values()])),
                         "objects_covered": float(sum((union[i] & objects[i]).sum() for i in gts)
                                                  / sum(o.sum() for o in objects.values())),
                         "background_covered": float(sum((union[i] & (gts[i] == 0)).sum() for i in gts)
                                                     / sum((g == 0).sum() for g in gts.values())),
                         "cpu_seconds_per_image": seconds})
        for how in STARTS:
            for merge in MERGES:
                preds = {i: merge_masks(starts[how, i], masks[i], merge) for i in gts}
                rows.append({"start": how, "merge": merge, "setting": list(setting), "miou": _miou(gts, preds, n)})
        print(f"{setting}: {coverage[-1]}", file=sys.stderr, flush=True)
    best = max((r for r in rows if r["merge"]), key=lambda r: r["miou"])
    return {"machine": machine(), "run": str(args.run), "refine": args.refine, "split": "train",
            "images": len(gts), "weights": str(args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT)
                                                else args.weights),
            "rule": "the highest pseudo-mask mIoU on train; val not read", "chosen": best,
            "coverage": coverage, "rows": rows}


# --------------------------------------------------------------------------------------------- seeds
def _score(folder: Path, split: str | None = None) -> float:
    """mIoU % of a mask folder (eval, once: its JSON beside it)."""
    scored = folder.parent / f"{folder.name}.score.json"
    if not scored.is_file():
        _vpl("eval", folder, *(("--split", split) if split else ()), "--json", scored)
    return 100 * json.loads(scored.read_text())["miou"]


def decoder_scores(run: Path, base: Path, seed: int) -> dict[str, float]:
    """Train and val mIoU % of the decoder of ``seed`` on ``base/pseudo`` (seed 0: the Makefile's, ``base/decoder``
    and its ``base/pred_train``; the others under ``base/seeds/``)."""
    tag = base if seed == 0 else base / "seeds" / f"seed{seed}"
    decoder = tag / "decoder" / "decoder.safetensors"
    if not decoder.is_file():
        _vpl("train-decoder", base / "pseudo", "-p", run / "vision_prototypes.safetensors", "-o", decoder.parent,
             *DEC_ARGS, "--seed", seed, "--device", "cpu", "--overwrite")
    if not (tag / "pred_train" / "_stage.json").is_file():
        _vpl("predict", decoder, "--split", "train", "-o", tag / "pred_train", "--scales", "1", "--no-flip",
             "--device", "cpu", "--overwrite")
    if not (tag / "pred_val_seed" / "_stage.json").is_file():
        _vpl("predict", decoder, "--split", "val", "-o", tag / "pred_val_seed", "--device", "cpu", "--overwrite")
    return {"train": _score(tag / "pred_train"), "val": _score(tag / "pred_val_seed")}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def seeds(args) -> dict:
    from vpltool.demo.choose_pseudo import split_candidate

    choice = json.loads((args.run / "metrics" / "pseudo_choice.json").read_text())
    metrics = json.loads((args.run / "metrics.json").read_text())
    refine = split_candidate(choice["chosen"])[0]
    out = {"machine": machine(), "run": str(args.run), "choice": {c["refine"]: {
        "masks_train": 100 * c["train_miou"], "decoder_train": 100 * c.get("decoder_train_miou", float("nan"))}
        for c in choice["candidates"]}, "chosen": choice["chosen"], "refine": refine,
        "chance": {s: {k: 100 * v for k, v in c.items() if k != "images"} for s, c in metrics["chance"].items()},
        "candidates": {}}
    for c in (c for c in choice["candidates"] if split_candidate(c["refine"])[0] == refine  # R, R+sam, R+sam3
              and (not args.candidates or c["refine"] in args.candidates)):
        name, base = c["refine"], Path(c["folder"]).parent
        rows = [decoder_scores(args.run, base, s) for s in args.seeds]
        out["candidates"][name] = {
            "folder": str(base), "masks": {"train": _score(base / "pseudo"), "val": _score(base / "pseudo_val")},
            "decoder_train": _spread([r["train"] for r in rows]), "decoder_val": _spread([r["val"] for r in rows]),
            "seeds": args.seeds}
    return out


def table(result: dict) -> str:
    lines = ["| pseudo masks | masks train | masks val | decoder train (mean ± sd) | decoder val (mean ± sd) |",
             "|---|---|---|---|---|"]
    for name, c in result["candidates"].items():
        t, v = c["decoder_train"], c["decoder_val"]
        lines.append(f"| {name} | {c['masks']['train']:.1f} | {c['masks']['val']:.1f} | {t['mean']:.1f} ± "
                     f"{t['sd']:.1f} | {v['mean']:.1f} ± {v['sd']:.1f} (min {v['min']:.1f}, max {v['max']:.1f}) |")
    ch = result["chance"]
    lines.append(f"| chance (random smooth CAMs) | {ch['train']['random CAMs']:.1f} | {ch['val']['random CAMs']:.1f} "
                 "| | |")
    lines.append(f"| all background | {ch['train']['all background']:.1f} | {ch['val']['all background']:.1f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("choose", "seeds"))
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--refine", default=None, help="choose: the refinement whose CAMs (RUN/R; default RUN's own)")
    parser.add_argument("--weights", type=Path, default=TOY, help="choose: the toy SAM")
    parser.add_argument("--images", type=int, default=100, help="choose: the first N train images")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--candidates", type=lambda s: s.split(","), default=None, help="seeds: only these of the "
                        "chosen refinement's candidates (e.g. caa+sam3; default: every one)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    result = choose(args) if args.what == "choose" else seeds(args)
    print(json.dumps(result, indent=1))
    if args.what == "seeds":
        print(table(result), file=sys.stderr)


if __name__ == "__main__":
    main()

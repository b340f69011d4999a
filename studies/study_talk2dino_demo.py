"""Talk2DINO on the demo world: trained with the shared trainer (`train-text --family talk2dino --recipe demo`) on the
same `make-pairs` shards as `make pgseg`, with the toy CLIP's text tower and the toy DINO; zero-shot val mIoU by the
reference's rule, every setting chosen on the train split.

Data: ``make-pairs RUN/pairs --scenes N`` and the README's world (``make-world --train 500 --val 200``), as
study_pgseg_demo.py makes them (an existing folder is reused). Per seed: one training run (``--epochs``). Then, on
the first ``--probe-images`` TRAIN scenes and seed 0's model alone, the zero-shot settings: the prompt templates
(the reference's 7 ``sub_imagenet`` ones, most of whose words the toy CLIP does not know, or ``a photo of a {}.``),
PAMR on or off, background cleaning on or off, and ``bg_thresh`` on a grid; the best train mIoU is kept. Every seed
is then scored on val with those settings by the reference's rule (a constant ``bg_thresh`` background channel, the
class masks averaged over mmseg's sliding windows, resized, argmax: :mod:`vpltool.models.talk2dino.zeroshot`), next
to the baselines of ``studies/results/pgseg_demo.json`` (GroupViT, PGSeg, the toy CLIP's MaskCLIP, all-background,
uniform random labels: that study's figures, on the same world and pairs).

    python studies/study_talk2dino_demo.py --run runs/talk2dino [--seeds 0,1,2] > studies/results/talk2dino_demo.json

Prints one JSON object; the training commands' CPU-seconds are their own (``cpu_s``: user + system of the child).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vpltool import io  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.ops.kernels import MiouAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from benchlib import machine  # noqa: E402

RECIPE = "demo"
SHORT_SIDE, SLIDE = 192, (192, 96)  # the demo's scale of the reference's 448 / (448, 224): the toy CLIP rows' own
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.30, 0.91, 0.05))
TEMPLATE_KEYS = ("sub_imagenet", "simple")


def vpl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpltool", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def last_error(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "no output")


def spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train(args, seed: int) -> dict:
    out = args.run / f"seed{seed}"
    model = out / "talk2dino.safetensors"
    t0, c0 = time.perf_counter(), children_cpu()
    if not model.is_file():
        done = vpl("train-text", str(args.run / "pairs"), "--family", "talk2dino", "--recipe", RECIPE, "-o",
                   str(out), "--seed", str(seed), "--epochs", str(args.epochs), "--device", "cpu", "--workers", "1",
                   "--overwrite")
        if done.returncode:
            return {"error": last_error(done)}
    log = io.read_log(out / "log.jsonl") if (out / "log.jsonl").is_file() else []
    return {"model": str(model), "train_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(children_cpu() - c0, 1), "iterations": log[-1]["iter"] if log else None,
            "first_loss": log[0]["loss"] if log else None, "last_loss": log[-1]["loss"] if log else None}


def foreground(fam, model, images, names, templates: str, pamr: bool, bg_clean: bool) -> list:
    """Per image ``[N, H0, W0]`` the class scores at the image's size (channel 0's constant left out: any
    ``bg_thresh`` is then a threshold on their maximum, the reference's argmax with background first)."""
    import torch
    import torch.nn.functional as F

    from vpltool.models.text_family import class_embeddings

    model.cfg = replace(model.cfg, pamr=pamr, bg_clean=bg_clean)
    text = class_embeddings(fam, model, names, fam.TEMPLATES[templates], "cpu")
    out = []
    for image in images:
        x = fam.image_tensor(image, SHORT_SIDE)
        with torch.no_grad():
            logits = fam.zero_shot_logits(model, x, text, 0.0, with_bg=False, mode="slide", crop=SLIDE[0],
                                          stride=SLIDE[1])
            out.append(F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0])
    return out


def miou(scores: list, gts: list, n_classes: int, thresh: float) -> dict:
    acc = MiouAccumulator(n_classes)
    for s, gt in zip(scores, gts):
        top, arg = s.max(dim=0)
        labels = np.where(top.numpy() > thresh, arg.numpy() + 1, 0).astype(np.uint8)
        acc.add(gt, labels)
    return acc.result()


def load(data, n: int | None):
    items = data.items[:n] if n else data.items
    return [io.load_image(it.image) for it in items], [io.read_mask(it.gt) for it in items]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/talk2dino"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the pairs (the recipe's unless given)")
    ap.add_argument("--scenes", type=int, default=32000)
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--probe-images", type=int, default=100, help="train scenes the settings are chosen on")
    ap.add_argument("--baselines", type=Path, default=Path("studies/results/pgseg_demo.json"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    world = args.run / "world"
    for command in (["make-world", str(world), "--train", str(args.train), "--val", str(args.val)],
                    ["make-pairs", str(args.run / "pairs"), "--scenes", str(args.scenes)]):
        done = vpl(*command)
        if done.returncode and "exists" not in last_error(done):
            sys.exit(last_error(done))
    runs = {s: train(args, s) for s in seeds}
    from vpltool.models.text_family import text_family

    fam = text_family("talk2dino")
    train_data, val_data = open_dataset(world, "train"), open_dataset(world, "val")
    names = [c for c in train_data.classes if c != "background"]
    n = len(train_data.classes)
    first = next(s for s in seeds if "model" in runs[s])
    model = fam.load_model(runs[first]["model"])
    images, gts = load(train_data, args.probe_images)
    probe = []
    for templates, pamr, bg_clean in itertools.product(TEMPLATE_KEYS, (True, False), (False, True)):
        scores = foreground(fam, model, images, names, templates, pamr, bg_clean)
        for t in THRESHOLDS:
            probe.append({"templates": templates, "pamr": pamr, "bg_clean": bg_clean, "bg_thresh": t,
                          "train_miou": miou(scores, gts, n, t)["miou"]})
    best = max(probe, key=lambda r: r["train_miou"])
    val_images, val_gts = load(val_data, None)
    for s in seeds:
        if "model" not in runs[s]:
            continue
        model = fam.load_model(runs[s]["model"])
        scores = foreground(fam, model, val_images, names, best["templates"], best["pamr"], best["bg_clean"])
        got = miou(scores, val_gts, n, best["bg_thresh"])
        runs[s].update({"val_miou": got["miou"], "val_iou": got["iou"]})
        print(f"seed {s}: val mIoU {100 * got['miou']:.2f}", file=sys.stderr)
    base = json.loads(args.baselines.read_text()) if args.baselines.is_file() else {}
    print(json.dumps({
        "what": "val mIoU of Talk2DINO's zero-shot segmentation (the reference's rule) after `train-text --family "
                "talk2dino --recipe demo` on make-pairs shards, settings chosen on the train split",
        "command": " ".join(["python", "studies/study_talk2dino_demo.py", *sys.argv[1:]]),
        "scenes": args.scenes, "epochs": args.epochs, "seeds": seeds, "short_side": SHORT_SIDE, "slide": SLIDE,
        "chosen_on_train": {**best, "images": args.probe_images, "split": "train", "seed": first},
        "probe": probe,
        "val_miou": spread([r["val_miou"] for r in runs.values() if "val_miou" in r]),
        "baselines": {"from": str(args.baselines), **({
            "all background": base["baselines"]["all background"],
            "uniform random labels": base["baselines"]["uniform random labels"],
            "groupvit_scratch (A)": base["miou"]["miou"]["groupvit_scratch"],
            "groupvit (B)": base["miou"]["miou"]["groupvit"], "pgseg (C)": base["miou"]["miou"]["pgseg"],
            "toy CLIP MaskCLIP": base["toy_clip_maskclip"]["shipped toy CLIP"]["miou"]} if base else {})},
        "runs": runs, "cpu_s_children": round(children_cpu(), 1), "machine": machine("cpu"),
    }, indent=1))


if __name__ == "__main__":
    main()

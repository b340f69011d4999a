"""Talk2DINO on the demo world: trained with the shared trainer (`train-text --family talk2dino --recipe demo`) on the
same `make-pairs` shards as `make pgseg`, with the toy CLIP's text tower and the toy DINO; zero-shot val mIoU by the
reference's rule, every setting chosen on the train split.

Data: ``make-pairs RUN/pairs --scenes N`` and the README's world (``make-world --train 500 --val 200``), as
study_pgseg_demo.py makes them (an existing folder is reused); ``--shards`` trains on a brace pattern of those shards
(the recipe's pairs, chosen on train by probe_talk2dino_recipe.py). Per seed: one training run (``--jobs`` seeds side by
side). Then, on the first ``--probe-images`` TRAIN scenes and seed 0's model alone, the zero-shot settings: the prompt
templates (the reference's 7 ``sub_imagenet`` ones, most of whose words the toy CLIP does not know, or ``a photo of a
{}.``), PAMR on or off, background cleaning on or off, the square the DINO sees (``--sides``), and ``bg_thresh`` on a
0.0025 grid; the best train mIoU is kept. Each seed then chooses its own ``bg_thresh`` on the same train scenes with
those settings (the place of sigmoid(cos)'s narrow range differs from model to model), and is scored on val by the
reference's rule (a constant ``bg_thresh`` background channel, the class masks averaged over mmseg's sliding windows,
resized, argmax: :mod:`vpltool.models.text.talk2dino.zeroshot`), next to all-background and uniform random labels
(computed here, on the same val) and the baselines of ``studies/results/pgseg_demo.json`` (GroupViT, PGSeg, the toy
CLIP's MaskCLIP: that study's figures, on the same world and the same 32,000 pairs).

    python studies/study_talk2dino_demo.py --run runs/talk2dino [--seeds 0,1,2] [--jobs 3] \\
        [--shards 'runs/talk2dino/pairs/{00000..00007}.tar'] > studies/results/talk2dino_demo.json

Prints one JSON object. CPU-seconds per seed: ``train_cpu_s`` (user + system of its `train-text` process, from wait4)
and ``val_cpu_s`` (this process's, choosing its bg_thresh on train and scoring val with the chosen settings); the
settings' choice on train is counted once (``choice_cpu_s``).
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
from concurrent.futures import ThreadPoolExecutor
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
SHORT_SIDE = 192  # the demo's scale of the reference's 448: the toy CLIP rows' own
# mmseg's sliding windows on the 192-px image, (crop, stride): the demo's scale of the reference's (448, 224), one
# window; or half the image a window, each resized to the DINO's square (the toy DINO sees the shapes larger)
WINDOWS = ((192, 96), (96, 48))
# sigmoid(cos) lies in (0.27, 0.73): a 0.05 step there is a step of about 0.2 in cosine, too coarse to choose on
THRESHOLDS = tuple(round(float(t), 4) for t in np.arange(0.50, 0.7501, 0.0025))
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
    t0 = time.perf_counter()
    cpu = None
    if not model.is_file():
        command = [sys.executable, "-m", "vpltool", "train-text", args.shards or str(args.run / "pairs"), "--family",
                   "talk2dino", "--recipe", RECIPE, "-o", str(out), "--seed", str(seed), "--device", "cpu",
                   "--workers", "1", "--overwrite", *(["--epochs", str(args.epochs)] if args.epochs else [])]
        log = out.parent / f"seed{seed}.train.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as sink:
            child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            _, status, usage = os.wait4(child.pid, 0)  # this child's own CPU, whatever runs beside it
        cpu = round(usage.ru_utime + usage.ru_stime, 1)
        if os.waitstatus_to_exitcode(status):
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            return {"error": lines[-1] if lines else "no output"}
    log = io.read_log(out / "log.jsonl") if (out / "log.jsonl").is_file() else []
    return {"model": str(model), "train_s": round(time.perf_counter() - t0, 1), "train_cpu_s": cpu,
            "iterations": log[-1]["iter"] if log else None,
            "first_loss": log[0]["loss"] if log else None, "last_loss": log[-1]["loss"] if log else None}


def foreground(fam, model, images, names, templates: str, pamr: bool, bg_clean: bool, side: int,
               window: tuple[int, int]) -> list:
    """Per image ``[N, H0, W0]`` the class scores at the image's size (channel 0's constant left out: any
    ``bg_thresh`` is then a threshold on their maximum, the reference's argmax with background first)."""
    import torch
    import torch.nn.functional as F

    from vpltool.models.text.family import class_embeddings

    model.cfg = replace(model.cfg, pamr=pamr, bg_clean=bg_clean, resize_dim=side)
    text = class_embeddings(fam, model, names, fam.TEMPLATES[templates], "cpu")
    out = []
    for image in images:
        x = fam.image_tensor(image, SHORT_SIDE)
        with torch.no_grad():
            logits = fam.zero_shot_logits(model, x, text, 0.0, with_bg=False, mode="slide", crop=window[0],
                                          stride=window[1])
            out.append(F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0])
    return out


def top_classes(scores: list) -> tuple[np.ndarray, np.ndarray]:
    """Every image's pixels in one row: the best class score and its label (1-based: 0 is the background)."""
    tops = [s.max(dim=0) for s in scores]
    return (np.concatenate([t.numpy().ravel() for t, _ in tops])[None],
            np.concatenate([a.numpy().ravel() + 1 for _, a in tops])[None])


def miou(tops: tuple[np.ndarray, np.ndarray], gt: np.ndarray, n_classes: int, thresh: float) -> dict:
    """mIoU over all images at once (one confusion matrix: the same as image by image); ``gt`` [1, pixels]."""
    acc = MiouAccumulator(n_classes)
    top, arg = tops
    acc.add(gt, np.where(top > thresh, arg, 0).astype(np.uint8))
    return acc.result()


def best_threshold(fam, model, names, setting: tuple, n_classes: int, images: list, gt: np.ndarray
                   ) -> tuple[float, float]:
    """``(train mIoU, bg_thresh)``: the best of :data:`THRESHOLDS` for ``model`` on ``images`` with ``setting``
    (:func:`foreground`'s templates, pamr, bg_clean, side, window)."""
    tops = top_classes(foreground(fam, model, images, names, *setting))
    return max((miou(tops, gt, n_classes, t)["miou"], t) for t in THRESHOLDS)


def score_own_threshold(fam, model, names, setting: tuple, n_classes: int, train: tuple, val: tuple
                        ) -> tuple[float, float, dict]:
    """A model's ``bg_thresh`` chosen on ``train`` = (images, gt) and its val score with it, by the reference's rule:
    ``(train mIoU, bg_thresh, val miou())``. ``setting``: :func:`foreground`'s (templates, pamr, bg_clean, side,
    window). Each model its own threshold: sigmoid(cos) spans a narrow range whose place differs from model to model
    (a threshold carried over from seed 0 left seeds 1 and 2 at 16.2, most of the background labelled as a class)."""
    train_miou, thresh = best_threshold(fam, model, names, setting, n_classes, *train)
    return train_miou, thresh, miou(top_classes(foreground(fam, model, val[0], names, *setting)), val[1], n_classes,
                                    thresh)


def load(data, n: int | None):
    items = data.items[:n] if n else data.items
    return [io.load_image(it.image) for it in items], [io.read_mask(it.gt) for it in items]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/talk2dino"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained side by side")
    ap.add_argument("--epochs", type=int, default=0, help="passes over the pairs (0: the recipe's)")
    ap.add_argument("--shards", default=None, help="a brace pattern of RUN/pairs' shards to train on (default all)")
    ap.add_argument("--scenes", type=int, default=32000)
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--sides", default="384", help="squares the DINO may see at zero-shot time (chosen on train)")
    ap.add_argument("--probe-images", type=int, default=60, help="train scenes the settings are chosen on")
    ap.add_argument("--baselines", type=Path, default=Path("studies/results/pgseg_demo.json"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    world = args.run / "world"
    for command in (["make-world", str(world), "--train", str(args.train), "--val", str(args.val)],
                    ["make-pairs", str(args.run / "pairs"), "--scenes", str(args.scenes)]):
        done = vpl(*command)
        if done.returncode and "exists" not in last_error(done):
            sys.exit(last_error(done))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = dict(zip(seeds, pool.map(lambda s: train(args, s), seeds)))
    train_wall = round(time.perf_counter() - t0, 1)
    from vpltool.models.text.family import text_family

    fam = text_family("talk2dino")
    train_data, val_data = open_dataset(world, "train"), open_dataset(world, "val")
    names = [c for c in train_data.classes if c != "background"]
    n = len(train_data.classes)
    first = next((s for s in seeds if "model" in runs[s]), None)
    if first is None:
        sys.exit(f"no seed trained: {runs}")
    fam.load_model(runs[first]["model"])  # every import done here, once: a first import in two threads breaks
    images, gts = load(train_data, args.probe_images)
    gt = np.concatenate([g.ravel() for g in gts])[None]

    def choose(setting: tuple) -> dict:
        """One zero-shot setting's best train mIoU over ``bg_thresh`` (seed ``first``'s model, its own copy)."""
        side, window, templates, pamr, bg_clean = setting
        c0 = time.thread_time()
        model = fam.load_model(runs[first]["model"])
        score, thresh = best_threshold(fam, model, names, (templates, pamr, bg_clean, side, window), n, images, gt)
        row = {"side": side, "window": list(window), "templates": templates, "pamr": pamr, "bg_clean": bg_clean,
               "bg_thresh": thresh, "train_miou": score, "cpu_s": round(time.thread_time() - c0, 1)}
        print(json.dumps(row), file=sys.stderr)
        return row

    settings = [(side, window, templates, pamr, bg_clean)
                for side, window, templates, pamr, bg_clean in itertools.product(
                    [int(x) for x in args.sides.split(",")], WINDOWS, TEMPLATE_KEYS, (False, True), (False, True))
                if not (pamr and window != WINDOWS[0])]  # PAMR per small window: too slow for the demo
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # torch frees the GIL: side by side
        probe = list(pool.map(choose, settings))
    best = max(probe, key=lambda r: r["train_miou"])
    choice_cpu = round(sum(r["cpu_s"] for r in probe), 1)
    val_images, val_gts = load(val_data, None)
    val_gt = np.concatenate([g.ravel() for g in val_gts])[None]

    def score_val(s: int) -> None:
        """Seed ``s`` on val with the chosen settings and its own ``bg_thresh``, chosen on the same train scenes."""
        c0 = time.thread_time()
        model = fam.load_model(runs[s]["model"])
        setting = (best["templates"], best["pamr"], best["bg_clean"], best["side"], tuple(best["window"]))
        train_score, thresh, got = score_own_threshold(fam, model, names, setting, n, (images, gt),
                                                       (val_images, val_gt))
        runs[s].update({"bg_thresh": thresh, "train_miou": train_score, "val_miou": got["miou"],
                        "val_iou": got["iou"], "val_cpu_s": round(time.thread_time() - c0, 1)})
        print(f"seed {s}: bg_thresh {thresh} (train {100 * train_score:.2f}), val mIoU {100 * got['miou']:.2f}",
              file=sys.stderr)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(score_val, [s for s in seeds if "model" in runs[s]]))
    for r in runs.values():
        if "val_cpu_s" in r:
            r["cpu_s"] = round((r["train_cpu_s"] or 0) + r["val_cpu_s"], 1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_pgseg_demo import baselines

    base = json.loads(args.baselines.read_text()) if args.baselines.is_file() else {}
    print(json.dumps({
        "what": "val mIoU of Talk2DINO's zero-shot segmentation (the reference's rule) after `train-text --family "
                "talk2dino --recipe demo` on make-pairs shards, settings chosen on the train split",
        "command": " ".join(["python", "studies/study_talk2dino_demo.py", *sys.argv[1:]]),
        "scenes": args.scenes, "shards": args.shards, "epochs": args.epochs or "the recipe's", "seeds": seeds,
        "short_side": SHORT_SIDE, "windows": WINDOWS,
        "chosen_on_train": {**best, "images": args.probe_images, "split": "train", "seed": first},
        "choice_cpu_s": choice_cpu, "probe": probe,
        "val_miou": spread([r["val_miou"] for r in runs.values() if "val_miou" in r]),
        "val_baselines": baselines(world),
        "comparison": {"from": str(args.baselines), **({
            "all background": base["baselines"]["all background"],
            "uniform random labels": base["baselines"]["uniform random labels"],
            "groupvit_scratch (A)": base["miou"]["miou"]["groupvit_scratch"],
            "groupvit (B)": base["miou"]["miou"]["groupvit"], "pgseg (C)": base["miou"]["miou"]["pgseg"],
            "toy CLIP MaskCLIP": base["toy_clip_maskclip"]["shipped toy CLIP"]["miou"]} if base else {})},
        "runs": runs, "train_wall_s": train_wall, "jobs": args.jobs, "machine": machine("cpu"),
    }, indent=1))


if __name__ == "__main__":
    main()

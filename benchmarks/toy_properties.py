"""Property table of a toy CLIP on the demo world: what VPL relies on, measured on train and val.

    python benchmarks/toy_properties.py TOY_DIR [--name NAME] [--seed S] [--recipe JSON] [--work DIR]
        [--results benchmarks/studies/toy_clip_candidates.json]
    python benchmarks/toy_properties.py --table [--results ...]       # re-render the markdown table only

For one toy CLIP (an open_clip ``local-dir`` folder) on the demo world (``make-world``: 500 train + 200 val scenes,
seed 0, rendered once into ``WORK/world``) it runs the library's own stages (extract on both splits,
text-prototypes with the demo's prompt and background words, cam with ``--refine none`` on train,
learn-prototypes on train: tau_I 0.03, 3000 iterations, lr 10, as `make demo`) and then measures, per split:

* ``label_set_acc``: top-1 retrieval of each image's label set among every label-set x background caption
  (:func:`vpltool.demo.toyclip.candidate_captions`), image embedding = mean of the cached dense features,
  background ignored;
* ``cos_own``: mean cosine between an image embedding and the text rows of its own classes;
* ``dense_text``: dense text-to-patch matching mIoU: every pixel labelled by the nearest of the image's rows
  (present classes' text rows + the background-word rows) by cosine, bilinearly upsampled scores, no temperature;
* for text prototypes (Z, at 1 / logit scale) and vision prototypes (W, at tau_I), three maps:
  ``pixel`` (``softmax(x . rows / tau)`` over the image's rows used directly as the map, what phase 1 fits),
  ``outgrad`` (GradCAM's image-level direction dp_k/df, projected orthogonal to the unit embedding f, read
  linearly on the output patch features) and ``gradcam`` (the `cam` stage's map: softmax-GradCAM at the last
  block's ln_1, no refinement).

All maps are min-max normalised per class, bilinearly upsampled and labelled like `eval` (bg = (1 - max)^a, argmax)
with a = 1 (the headline; ``_a2`` keys give a = 2). W is always learned on train; nothing is chosen on val.
The figures are appended (replacing an entry of the same name and seed) to ``--results`` (JSON) and the markdown
table beside it is regenerated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vpltool import io
from vpltool.backbone import ModelSpec, load_backbone
from vpltool.cam import gradcam, minmax, run_cam, upsample
from vpltool.config import CamConfig, ExtractConfig, LearnPrototypesConfig, RuntimeConfig, TextPrototypesConfig
from vpltool.data import open_dataset
from vpltool.demo.report import chance_baselines
from vpltool.demo.scenes import SceneConfig, write_dataset
from vpltool.demo.toyclip import _BACKGROUND_WORDS, caption_key, candidate_captions
from vpltool.extract import run_extract
from vpltool.metrics import MiouAccumulator, cams_to_labels
from vpltool.prototypes import run_learn_prototypes
from vpltool.text_prototypes import run_text_prototypes

TEMPLATES = "a photo of a {}."
BACKGROUND = "grass,sky,wall,water"
EXPONENTS = (1.0, 2.0)
LIMIT = None  # --limit: score only the first images of each split (smoke test)
DEFAULT_RESULTS = Path(__file__).parent / "studies" / "toy_clip_candidates.json"


def world(work: Path) -> Path:
    """The demo world of `make demo` (500 train + 200 val, seed 0), rendered once."""
    return write_dataset(work / "world", n_train=500, n_val=200, seed=0, cfg=SceneConfig())


def output_gradcam(dense: torch.Tensor, rows: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """``[K, hw]``: dp_k/df (f the unit patch-mean embedding), projected orthogonal to f, dotted with each patch."""
    f = F.normalize(dense.mean(0), dim=-1).requires_grad_(True)
    with torch.enable_grad():
        p = (f @ rows.T / tau).softmax(-1)
        grads = torch.stack([torch.autograd.grad(p[i], f, retain_graph=True)[0] for i in range(k)])  # [K, D]
    f = f.detach()
    grads = grads - (grads @ f)[:, None] * f[None]
    return torch.relu(grads @ dense.T)


class Scorer:
    """mIoU accumulators for every (map, exponent)."""

    def __init__(self, n_classes: int):
        self.n = n_classes
        self.acc: dict[tuple[str, float], MiouAccumulator] = {}

    def add(self, key: str, gt: np.ndarray, maps: torch.Tensor, labels: list[int], size) -> None:
        full = upsample(maps.float(), size).numpy()
        for a in EXPONENTS:
            self.acc.setdefault((key, a), MiouAccumulator(self.n)).add(gt, cams_to_labels(full, labels, a))

    def add_labels(self, key: str, gt: np.ndarray, pred: np.ndarray) -> None:
        self.acc.setdefault((key, 1.0), MiouAccumulator(self.n)).add(gt, pred)

    def result(self) -> dict[str, float]:
        out = {}
        for (key, a), acc in self.acc.items():
            out[key if a == 1.0 else f"{key}_a{a:g}"] = round(100 * float(acc.result()["miou"]), 2)
        return out


def score_split(bb, features: Path, data: Path, split: str, text: io.Prototypes, vision: io.Prototypes,
                classes: list[str]) -> dict:
    """Every figure of one split (see the module docstring)."""
    ds = open_dataset(data, split)
    gts = {it.id: it.gt for it in ds.items}
    captions, keys = candidate_captions(SceneConfig())
    cand = bb.encode_text(captions).cpu()
    cand_keys = [k - _BACKGROUND_WORDS for k in keys]
    scorer = Scorer(len(classes))
    hits, total, cosines = 0, 0, []
    for path in sorted(features.glob("*.safetensors"))[:LIMIT]:
        feats = io.read_features(path, classes=classes)
        gt = io.read_mask(gts[path.stem])
        labels = [int(c) for c in feats.labels]
        dense = feats.dense.flatten(0, 1).float()  # [hw, D]
        img = F.normalize(dense.mean(0), dim=-1)
        truth = frozenset(classes[c] for c in labels)
        hits += cand_keys[int((img @ cand.T).argmax())] == truth
        total += 1
        if not labels:
            continue
        x = F.normalize(dense, dim=-1)
        trows = text.image_rows(labels).float()
        cosines.append(float((img @ trows[: len(labels)].T).mean()))
        sims = (x @ trows.T).T.reshape(len(trows), *feats.grid)  # [K + M, h, w]
        up = upsample((sims + 1) / 2, feats.image_size)  # cosine in [0, 1] for the bilinear resize
        best = up.argmax(0).numpy()
        pred = np.where(best < len(labels), np.asarray(labels)[np.minimum(best, len(labels) - 1)], 0)
        scorer.add_labels("dense_text", gt, pred.astype(np.uint8))
        for name, protos in (("text", text), ("vision", vision)):
            rows = protos.image_rows(labels).float()
            tau = protos.temperature
            pixel = (x @ rows.T / tau).softmax(-1)[:, : len(labels)].T.reshape(len(labels), *feats.grid)
            scorer.add(f"{name}_pixel", gt, minmax(pixel), labels, feats.image_size)
            out = output_gradcam(dense, rows, len(labels), tau).reshape(len(labels), *feats.grid)
            scorer.add(f"{name}_outgrad", gt, minmax(out), labels, feats.image_size)
            raw, _, _ = gradcam(bb, feats.last_block_input, feats.grid, rows, len(labels), tau)
            scorer.add(f"{name}_gradcam", gt, raw.cpu(), labels, feats.image_size)
    return {"n_images": total, "label_set_acc": round(hits / max(total, 1), 3),
            "cos_own": round(float(np.mean(cosines)), 3), **scorer.result()}


def measure(toy: Path, work: Path, data: Path, tau_i: float, iters: int, lr: float) -> dict:
    spec = ModelSpec(model=f"local-dir:{toy.resolve()}")
    rt = RuntimeConfig(device="cpu", overwrite=True)
    bb = load_backbone(spec, "cpu")
    feats = {}
    for split in ("train", "val"):
        feats[split] = work / f"features_{split}"
        run_extract(open_dataset(data, split), feats[split], spec, ExtractConfig(), rt, backbone=bb)
    classes = io.read_stage_record(feats["train"], "extract")["classes"]
    text_path = work / "text_prototypes.safetensors"
    run_text_prototypes(classes, text_path, spec, TextPrototypesConfig(templates=TEMPLATES, background=BACKGROUND),
                        device="cpu")
    run_cam(feats["train"], text_path, work / "cams_text_train", CamConfig(refine="none"), rt, backbone=bb)
    vision_path = work / "vision_prototypes.safetensors"
    summary = run_learn_prototypes(feats["train"], work / "cams_text_train", text_path, vision_path,
                                   LearnPrototypesConfig(tau_i=tau_i, iters=iters, lr=lr), rt, plot=False)
    text = io.read_prototypes(text_path, classes=classes)
    vision = io.read_prototypes(vision_path, classes=classes)
    cos_text = F.cosine_similarity(vision.vectors[vision.class_rows()], text.vectors[text.class_rows()], dim=-1)
    result = {"logit_scale": round(bb.logit_scale, 2), "tau_i": tau_i, "iters": iters, "lr": lr,
              "cos_vision_text_rows": round(float(cos_text.mean()), 3),
              "learn_final_loss": summary.get("final_loss") if isinstance(summary, dict) else None}
    for split in ("train", "val"):
        result[split] = score_split(bb, feats[split], data, split, text, vision, classes)
    result["chance"] = {k: round(100 * v, 2) if k != "images" else v
                        for k, v in chance_baselines(open_dataset(data, "val")).items()}
    return result


# --------------------------------------------------------------------------------------------- table
COLUMNS = (("label_set_acc", "label-set acc"), ("cos_own", "cos(img, own text)"), ("dense_text", "dense text"),
           ("text_pixel", "text pixel"), ("text_outgrad", "text out-GradCAM"), ("text_gradcam", "**text GradCAM**"),
           ("vision_pixel", "vision pixel"), ("vision_outgrad", "vision out-GradCAM"),
           ("vision_gradcam", "**vision GradCAM**"))


def render(entries: list[dict]) -> str:
    head = ["toy", "seed", "logit scale", *[c[1] for c in COLUMNS], "vision − text GradCAM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        for split in ("train", "val"):
            s = e[split]
            cells = [f"{e['name']} ({split})", str(e["seed"]), f"{e['logit_scale']:g}"]
            cells += [f"{s[k]:g}" if k in s else "" for k, _ in COLUMNS]
            cells.append(f"{s['vision_gradcam'] - s['text_gradcam']:+.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    recipes = ["", "Recipes (train_toy_clip keyword arguments besides the defaults of the time):", ""]
    seen = set()
    for e in entries:
        if e["name"] not in seen:
            seen.add(e["name"])
            extra = f"; trained in {e['train_seconds']:.0f} s wall" if e.get("train_seconds") else ""
            recipes.append(f"* `{e['name']}`: `{json.dumps(e['recipe'])}`{extra}")
    chance = entries[0]["chance"] if entries else {}
    foot = ["", f"mIoU % with bg exponent 1 (train = 500 train scenes, val = 200 val scenes; W learned on train). "
            f"Chance on val: random CAMs with the true labels {chance.get('random CAMs')}, all background "
            f"{chance.get('all background')}."]
    return "\n".join(lines + foot + recipes) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("toy", type=Path, nargs="?")
    ap.add_argument("--name")
    ap.add_argument("--seed", type=int, default=0, help="the toy's training seed (recorded)")
    ap.add_argument("--recipe", default="{}", help="JSON of the toy's training recipe (recorded)")
    ap.add_argument("--work", type=Path, default=Path("/work/scratch/toy16/props"))
    ap.add_argument("--tau-i", type=float, default=0.03)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=10.0)
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--table", action="store_true", help="only re-render the markdown table")
    ap.add_argument("--limit", type=int, help="score only the first N images of each split (smoke test)")
    args = ap.parse_args()
    global LIMIT
    LIMIT = args.limit
    logging.disable(logging.WARNING)
    entries = json.loads(args.results.read_text()) if args.results.is_file() else []
    if not args.table:
        name = args.name or args.toy.name
        train_json = args.toy.parent / f"{args.toy.name}.train.json"
        train = json.loads(train_json.read_text()) if train_json.is_file() else {}
        start = time.perf_counter()
        work = args.work / f"{name}-s{args.seed}"
        work.mkdir(parents=True, exist_ok=True)
        data = world(args.work)
        entry = {"name": name, "seed": args.seed, "recipe": json.loads(args.recipe) or train.get("recipe", {}),
                 "toy": str(args.toy), "train_seconds": train.get("wall_seconds"),
                 "train_cpu_seconds": train.get("cpu_seconds"), "train_final_loss": train.get("final_loss"),
                 **measure(args.toy, work, data, args.tau_i, args.iters, args.lr)}
        entry["seconds"] = round(time.perf_counter() - start, 1)
        entries = [e for e in entries if (e["name"], e["seed"]) != (name, args.seed)] + [entry]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(entries, indent=1) + "\n")
        print(json.dumps(entry, indent=1))
    table = render(entries)
    args.results.with_suffix(".md").write_text(table)
    print(table, file=sys.stderr)


if __name__ == "__main__":
    main()

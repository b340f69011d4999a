"""RADSeg on the demo world with the shipped toy RADIO (vpltool/assets/toy-radio: a toy SigLIP and a toy C-RADIOv3
distilled from it and the toy DINO, on fresh scenes, never these): its settings chosen on the demo world's TRAIN
split, the chosen ones scored on val. What `make radseg` runs with (the Makefile's RADSEG_DEMO_ARGS).

    python studies/study_radseg_demo.py --run runs/demo [--choose-images 100] > studies/results/radseg_demo.json

Zero-shot, as `vpltool segment --dense radseg` computes it: the model ``vpltool.segmenter('radseg', ...)`` loads
(the CLI's loader), its photos resized and normalised by the segmenter's own functions (``short_side_size``,
``dense_input``, the backbone's ``pixels``), then the method's own steps (:mod:`vpltool.models.dense.radseg`:
``window_features`` with the last block's SCRA, ``scga``, ``query_probabilities``, the bilinear resize,
``denoised_labels`` with its prompt denoising). The queries are the world's class names and the demo's background
words (grass, sky, wall, water: class 0), each through one template. Chosen on the first ``--choose-images`` train
images by mIoU, among what `segment` lets a user set: the input and its windows (``--short-side``, ``--slide-crop``,
``--slide-stride``), ``--scra-scale`` and ``--scga-scale`` (RADSeg's 10 among them), the template and
``--prob-threshold`` (RADSeg's 0 among them).

Beside the choice, on the same train images (diagnosis, not choice): each of SCRA and SCGA switched off at the
chosen settings ("plain": the last block's own attention; no global aggregation), which shows whether the paper's
two mechanisms help on this toy; and where the chain from the teacher to RADSeg's patches loses the classes
(:func:`_where_it_breaks`): top-1 among the eight class prompts of the toy SigLIP's own image embedding and of the
student's summary token through its ``siglip2`` head (the scenes with one object), and of each foreground patch
token through that same head (RADSeg's use of it), at the 192-pixel input both trained at.

Baselines on the same images (the demo report's): all background, and chance (random smooth CAMs given the true
labels). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import vpltool
from vpltool import io
from vpltool.data import open_dataset
from vpltool.demo.report import chance_baselines
from vpltool.models.dense.radseg import denoised_labels, query_probabilities, scga, window_features
from vpltool.models.dense.segmentor import dense_input, query_rows, short_side_size
from vpltool.ops.kernels import MiouAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-radio"
BACKGROUND = ("grass", "sky", "wall", "water")  # the Makefile's BACKGROUND
# (short side, window, stride): the scene at the toy's training size whole, and larger, in windows of that size
WINDOWS = ((192, 192, 96), (288, 192, 96), (384, 192, 128), (480, 192, 144), (576, 192, 192))
SCRA_SCALES = (None, 5.0, 10.0, 20.0, 40.0)  # None: plain (the last block's own attention)
SCGA_SCALES = (None, 5.0, 10.0, 20.0, 40.0)  # None: no global aggregation
TEMPLATES = ("a photo of a {}.", "{}")
PROB_THRESHOLDS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
DENOISE = 0.5  # RADSeg's prompt denoising threshold (RadsegSettings: no option of segment)


def _load(weights: Path, template: str):
    return vpltool.segmenter("radseg", proxy_weights=str(weights / "radio.pth.tar"),
                             language_model=str(weights / "siglip"), templates=template,
                             background=",".join(BACKGROUND), device="cpu")


def _pixels(bb, item, short: int) -> tuple[torch.Tensor, tuple[int, int]]:
    rgb = io.load_image(item.image)
    h, w = rgb.shape[:2]
    size = short_side_size(h, w, short)
    return bb.pixels([dense_input(bb.preprocessor, rgb, size)["pixels"]], size), (h, w)


def _features(bb, items, window: tuple[int, int, int], scra: float | None) -> list:
    """Each image's ``[C, h, w]`` window features with the last block's SCRA at ``scra`` (None: plain)."""
    short, crop, stride = window
    last = bb.model.blocks[-1]
    wrapper = last.attn
    if scra is None:
        last.attn = wrapper.inner
    else:
        wrapper.scale = scra
    try:
        with torch.no_grad():
            return [(window_features(bb, px, crop, stride), size) for px, size in
                    (_pixels(bb, item, short) for item in items)]
    finally:
        last.attn = wrapper


def _miou(bb, feats, items, text, query_class, n: int, scga_scale: float | None, thresholds) -> dict:
    accs = {t: MiouAccumulator(n) for t in thresholds}
    with torch.no_grad():
        for (f, size), item in zip(feats, items):
            c, h, w = f.shape
            if scga_scale is not None:
                f = scga(f.reshape(c, -1).T, scga_scale).T.reshape(c, h, w)
            probs = query_probabilities(bb, f, text, 100.0)
            probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
            gt = io.read_mask(item.gt)
            for t in thresholds:
                _, labels = denoised_labels(probs, query_class, n, DENOISE, t)
                accs[t].add(gt, labels.numpy().astype(np.uint8))
    return {t: acc.result()["miou"] for t, acc in accs.items()}


def _where_it_breaks(weights: Path, bb, items, classes: list[str]) -> dict:
    """Top-1 accuracy among the class prompts (module docstring) of the teacher's pooled embedding, the student's
    summary through the ``siglip2`` head (both on the one-object scenes) and each foreground patch through the
    same head (the patch grid's nearest-neighbour labels; every scene)."""
    from PIL import Image
    from transformers import SiglipModel

    from vpltool.demo.train_toy_radio import pixels_at
    from vpltool.models.backbones.radio import read_checkpoint, summary_head

    teacher = SiglipModel.from_pretrained(weights / "siglip", dtype=torch.float32).eval()
    head = summary_head(read_checkpoint(weights / "radio.pth.tar"), "siglip2").float()
    rows = F.normalize(bb.text.encode([f"a photo of a {c}." for c in classes]), dim=-1)
    model, n_prefix = bb.model, bb.dino.n_prefix
    counts = {"teacher_pooled": 0, "student_summary": 0, "student_patches": 0, "scenes": 0, "patches": 0}
    last = model.blocks[-1]
    wrapper, last.attn = last.attn, last.attn.inner  # the student as it trained: its own last attention
    try:
        with torch.no_grad():
            for item in items:
                x = pixels_at(io.load_image(item.image)[None], 192)
                tokens = model.forward_features(x).float()
                grid = x.shape[-1] // 16
                gt = np.asarray(Image.fromarray(io.read_mask(item.gt)).resize((grid, grid), Image.NEAREST))
                gt = torch.from_numpy(gt.astype(np.int64)).flatten()
                fg = (gt > 0) & (gt < 255)
                guess = (F.normalize(head(tokens[0, n_prefix:]), dim=-1) @ rows.T).argmax(1) + 1
                counts["student_patches"] += int((guess[fg] == gt[fg]).sum())
                counts["patches"] += int(fg.sum())
                present = [c for c in item.labels if c > 0]
                if len(present) != 1:
                    continue
                counts["scenes"] += 1
                pooled = teacher.vision_model(pixel_values=x).pooler_output
                counts["teacher_pooled"] += int((pooled @ rows.T).argmax() + 1 == present[0])
                counts["student_summary"] += int((head(tokens[:, 0]) @ rows.T).argmax() + 1 == present[0])
    finally:
        last.attn = wrapper
    return {"one_object_scenes": counts["scenes"], "foreground_patches": counts["patches"],
            "top1_teacher_pooled": counts["teacher_pooled"] / max(counts["scenes"], 1),
            "top1_student_summary_head": counts["student_summary"] / max(counts["scenes"], 1),
            "top1_student_patches_through_summary_head": counts["student_patches"] / max(counts["patches"], 1),
            "chance": 1 / len(classes)}


def _texts(segs: dict, classes: list[str]) -> dict:
    out = {}
    for template, seg in segs.items():
        text, query_class = query_rows(seg.backbone, [[c] for c in classes], [template], list(BACKGROUND))
        out[template] = (text, query_class)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=SHIPPED)
    parser.add_argument("--choose-images", type=int, default=100)
    parser.add_argument("--val-images", type=int, default=None, help="the first N val images (a smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    train, val = open_dataset(args.run / "world", "train"), open_dataset(args.run / "world", "val")
    n, classes = len(train.classes), list(train.classes[1:])
    choose = [it for it in train.items if it.gt is not None][: args.choose_images]
    val_items = [it for it in val.items if it.gt is not None][: args.val_images]
    segs = {t: _load(args.weights, t) for t in TEMPLATES}
    bb = segs[TEMPLATES[0]].backbone  # the image side is the same model whatever the template
    texts = _texts(segs, classes)
    record = json.loads((args.weights / "model.json").read_text())
    tried = {}
    for window, scra in itertools.product(WINDOWS, SCRA_SCALES):
        feats = _features(bb, choose, window, scra)
        for scga_scale, template in itertools.product(SCGA_SCALES, TEMPLATES):
            scores = _miou(bb, feats, choose, *texts[template], n, scga_scale, PROB_THRESHOLDS)
            for t, m in scores.items():
                tried[json.dumps([list(window), scra, scga_scale, template, t])] = m
        print(f"window {window} scra {scra}: best train mIoU so far {max(tried.values()):.4f}", file=sys.stderr,
              flush=True)
    best = max(tried, key=tried.get)
    window, scra, scga_scale, template, threshold = json.loads(best)
    window = tuple(window)
    if scra is None or scga_scale is None:  # `segment` always runs both: the choice is among its own settings
        best = max((k for k in tried if None not in json.loads(k)[1:3]), key=tried.get)
        window, scra, scga_scale, template, threshold = json.loads(best)
        window = tuple(window)

    def at(items, scra_at, scga_at):
        feats = _features(bb, items, window, scra_at)
        return _miou(bb, feats, items, *texts[template], n, scga_at, (threshold,))[threshold]

    chosen = {"short_side": window[0], "slide_crop": window[1], "slide_stride": window[2], "scra_scale": scra,
              "scga_scale": scga_scale, "template": template, "prob_threshold": threshold,
              "train_miou": tried[best]}
    key = lambda s, g: json.dumps([list(window), s, g, template, threshold])  # noqa: E731
    report = {
        "machine": machine(), "weights": str(args.weights), "toy": {k: record.get(k) for k in ("recipe", "data")},
        "classes": classes, "background": list(BACKGROUND), "choose_images": len(choose),
        "val_images": len(val_items),
        "baselines": {"train": chance_baselines(train, limit=len(choose)),
                      "val": chance_baselines(val, limit=len(val_items))},
        "train_miou": tried, "chosen": chosen,
        "train_ablation_at_chosen": {"scra+scga": tried[key(scra, scga_scale)],
                                     "scga only": tried[key(None, scga_scale)],
                                     "scra only": tried[key(scra, None)], "plain": tried[key(None, None)]},
        "val_miou_at_chosen": {"scra+scga": at(val_items, scra, scga_scale), "plain": at(val_items, None, None)},
        "train_where_it_breaks": _where_it_breaks(args.weights, bb, choose, classes),
        "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

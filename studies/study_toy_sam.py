"""The shipped toy SAM's masks from one prompt, on train and on held-out val scenes, beside the trivial answers.

    python studies/study_toy_sam.py --run RUN > studies/results/toy_sam_prompts.json

RUN is a demo run with its world (``RUN/world``, `make world`: the world the toy SAM was trained on, whose val
split it never saw). Per object instance (a connected component of one class in the exact masks, at least 16
pixels, as `train-toy-sam` takes them): one foreground point at its most interior pixel, or its exact box; SAM's
answer to a single prompt, of its three masks the one it predicts best (SamPredictor's ``multimask_output=True``).
IoU over the pixels outside the ignore band, mean over the instances. The trivial answers: the whole image (for a
point), the box itself filled (for a box). And the background (its largest 8-connected region, the scene's
"stuff", which `train-toy-sam --background-masks` trains on) from one point at its most interior pixel.
``--weights`` scores another toy SAM (e.g. one trained on another world). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from vpltool.data import open_dataset
from vpltool.demo.train_toy_sam import IGNORE, instances
from vpltool.io import load_image, read_mask
from vpltool.models.backbones.sam import SamSpec, sam_input
from vpltool.models.registry import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-sam" / "model.safetensors"


def _iou(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    return float((pred & gt & valid).sum() / max(((pred | gt) & valid).sum(), 1))


def score(sam, items) -> dict:
    """Mean IoU per prompt and baseline over every instance of ``items``."""
    rows = {"point": [], "box": [], "whole image": [], "box filled": [], "background, point": []}
    start = time.perf_counter()
    for item in items:
        image, gt = load_image(item.image), read_mask(item.gt)
        valid = gt != IGNORE
        features = sam.features(sam_input(image, sam.img_size)[0])
        scale = sam.img_size / max(gt.shape)
        for mask in instances(gt, 16):
            y, x = np.unravel_index(int(ndimage.distance_transform_edt(mask).argmax()), mask.shape)
            ys, xs = np.nonzero(mask)
            box = torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32)
            prompts = {"point": {"points": torch.tensor([[[x, y]]], dtype=torch.float32) * scale, "boxes": None},
                       "box": {"points": None, "boxes": box * scale}}
            for name, prompt in prompts.items():
                logits, iou, _ = sam.predict(features, mask=None, input_size=(sam.img_size, sam.img_size),
                                             original_size=gt.shape, multimask=True, **prompt)
                rows[name].append(_iou(logits[0, int(iou[0].argmax())].numpy() > 0, mask, valid))
            rows["whole image"].append(_iou(np.ones_like(mask), mask, valid))
            filled = np.zeros_like(mask)
            filled[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            rows["box filled"].append(_iou(filled, mask, valid))
        parts, n = ndimage.label(gt == 0, structure=np.ones((3, 3), bool))  # the background's largest region
        if n:
            mask = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
            y, x = np.unravel_index(int(ndimage.distance_transform_edt(mask).argmax()), mask.shape)
            logits, iou, _ = sam.predict(features, torch.tensor([[[x, y]]], dtype=torch.float32) * scale, None, None,
                                         (sam.img_size, sam.img_size), gt.shape, multimask=True)
            rows["background, point"].append(_iou(logits[0, int(iou[0].argmax())].numpy() > 0, mask, valid))
    return {"images": len(items), "instances": len(rows["point"]), "backgrounds": len(rows["background, point"]),
            "mean_iou": {k: float(np.mean(v)) for k, v in rows.items()},
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--weights", default=str(SHIPPED))
    parser.add_argument("--train-images", type=int, default=100, help="the first N train images (default 100)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sam = load_model("sam", SamSpec("toy", args.weights, prompt=True), "cpu")
    world = args.run / "world"
    train = [it for it in open_dataset(world, "train").items if it.gt is not None][: args.train_images]
    val = [it for it in open_dataset(world, "val").items if it.gt is not None]
    print(json.dumps({"machine": machine(), "weights": args.weights, "train": score(sam, train),
                      "val": score(sam, val)}, indent=1))


if __name__ == "__main__":
    main()

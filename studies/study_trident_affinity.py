"""Why Trident's demo row is what it is: how much of the toy SAM's aggregation weight stays on the patch's own object.

    python studies/study_trident_affinity.py --run RUN > studies/results/trident_affinity_demo.json

Trident mixes the proxy block's output on SAM's patch grid by SAM's last attention, kept where SAM's values agree
(:func:`vpltool.models.dense.trident.sam_affinity`, its own settings). Per train image of RUN's world (the first
``--images``; labels read only for this diagnosis, after every choice), each patch of SAM's 12x12 grid takes the
majority label of its 8x8 pixels (a patch whose majority is the ignore band is left out); per patch, the share of
its row's weight on patches of its own label. Means over object patches and over background patches, for the
shipped toy SAM, the same architecture with seeded random weights, and the uniform row (the label's share of the
grid: what a mixing blind to the image keeps). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vpltool.data import open_dataset
from vpltool.io import load_image, read_mask
from vpltool.models.backbones.sam import SamSpec
from vpltool.models.dense.trident import SamAggregation, sam_affinity, sam_attention, sam_image
from vpltool.models.registry import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-sam" / "model.safetensors"
IGNORE = 255


def patch_labels(gt: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` labels -> ``[h w]`` the majority label of each patch (``IGNORE`` where that is the band)."""
    h, w = grid
    ph, pw = gt.shape[0] // h, gt.shape[1] // w
    cells = gt[: h * ph, : w * pw].reshape(h, ph, w, pw).transpose(0, 2, 1, 3).reshape(h * w, -1)
    return np.array([np.bincount(c, minlength=256).argmax() for c in cells])


def own_share(affinity: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    """Per kept patch, its row's weight on patches of its own label: (object patches, background patches)."""
    keep = labels != IGNORE
    same = (labels[:, None] == labels[None, :]) & keep[None, :]
    share = (affinity * same).sum(1) / np.maximum((affinity * keep[None, :]).sum(1), 1e-12)
    return share[keep & (labels > 0)].tolist(), share[keep & (labels == 0)].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--weights", default=str(SHIPPED))
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"toy SAM (shipped)": load_model("sam", SamSpec("toy", args.weights), "cpu"),
              "toy SAM (random, seeded)": load_model("sam", SamSpec("toy", "none"), "cpu")}
    items = [it for it in open_dataset(args.run / "world", "train").items if it.gt is not None][: args.images]
    shares = {name: ([], []) for name in [*models, "uniform"]}
    for item in items:
        image, gt = load_image(item.image), read_mask(item.gt)
        for name, sam in models.items():
            attn, values = sam_attention(sam, sam_image(image))
            grid = tuple(values.shape[1:3])
            labels = patch_labels(gt, grid)
            affinity = sam_affinity(attn, values, SamAggregation()).numpy()
            obj, bg = own_share(affinity, labels)
            shares[name][0].extend(obj)
            shares[name][1].extend(bg)
        n = len(labels)
        obj, bg = own_share(np.full((n, n), 1.0 / n), labels)
        shares["uniform"][0].extend(obj)
        shares["uniform"][1].extend(bg)
    print(json.dumps({"machine": machine(), "images": len(items), "split": "train", "grid": list(grid),
                      "settings": "SamAggregation() (cos_fac 1.2, refine_neg_cos, cap 0.9)",
                      "own_label_share": {name: {"object patches": float(np.mean(o)), "background patches":
                                                 float(np.mean(b)), "object patch count": len(o)}
                                          for name, (o, b) in shares.items()}}, indent=1))


if __name__ == "__main__":
    main()

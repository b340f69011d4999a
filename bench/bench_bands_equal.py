"""Do photos segmented in column bands get the labels of the whole-photo computation? Real photos, both paths.

    python bench/bench_bands_equal.py [--long-side 1024] [--quick]

Four of scikit-image's photos (astronaut, chelsea, coffee, rocket), resized with Pillow (bicubic) to ``--long-side``,
segmented by `segment`'s per-image function (:func:`vpltool.models.dense.segmentor.scores_batch`, NACLIP's defaults with
PAMR) on the toy CLIP twice: whole (today's unbanded code) and in bands of 64 columns. The queries are 27 seeded
random unit rows over 4 classes (the toy CLIP knows only the demo world's words; random rows give varied labels).
Prints one JSON object: per photo the pixels whose label differs, the largest probability difference, CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchlib import machine


def main() -> None:
    from PIL import Image
    from skimage import data

    from vpltool.config import SegmentConfig
    from vpltool.models import ModelSpec, load_backbone
    from vpltool.models.dense.segmentor import dense_input, scores_batch, short_side_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long-side", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="one photo at long side 400")
    args = ap.parse_args()
    long_side = 400 if args.quick else args.long_side
    settings = SegmentConfig().resolved()
    bb = load_backbone(ModelSpec("vpltool-toy", "none"), "cpu", dense="naclip")
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(27, bb.embed_dim, generator=g), dim=-1)
    query_class = torch.tensor([1, 1, 2, 2, 3] + [0] * 22)
    rows = []
    for name in ["astronaut", "chelsea", "coffee", "rocket"][: 1 if args.quick else 4]:
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        f = long_side / max(photo.size)
        photo = photo.resize((round(photo.width * f), round(photo.height * f)), Image.BICUBIC)
        rgb = np.asarray(photo)
        h, w = rgb.shape[:2]
        size = short_side_size(h, w, settings.short_side)
        pixels = bb.pixels(dense_input(bb.preprocessor, rgb, size)["pixels"][None], size)
        out = {}
        for path, budget in (("whole", 2**40), ("bands", 0)):
            start = time.process_time()
            out[path] = scores_batch(bb, pixels, text, query_class, 4, settings, [(h, w)], torch.float32,
                                     budget=budget)[0]
            out[f"{path}_cpu_s"] = round(time.process_time() - start, 1)
        (pw, lw), (pb, lb) = out["whole"], out["bands"]
        rows.append({"photo": name, "height": h, "width": w, "labels_differ": int((lw != lb).sum()),
                     "classes_seen": int(len(lw.unique())), "max_prob_diff": float((pw - pb).abs().max()),
                     "whole_cpu_s": out["whole_cpu_s"], "bands_cpu_s": out["bands_cpu_s"]})
    print(json.dumps({"machine": machine(), "long_side": long_side, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

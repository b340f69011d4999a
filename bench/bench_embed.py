"""What does ``seg.embed(photo)`` save when one photo is queried with several class lists? Prints ONE JSON object.

    python bench/bench_embed.py [--rounds 3] [--quick]

scikit-image's astronaut (512x512) and a seeded random ViT-B/16 of open_clip's architecture (no weights can be had
offline; the arithmetic is the real model's), for SCLIP (slide windows 224/112 at short side 336) and NACLIP (the
whole image, then 10 PAMR steps). Per round: ``embed`` once, three class lists from the embedding, then the same three
lists as fresh calls; the labels must be equal (checked). CPU seconds (this process's user + sys), medians of the
rounds. ``--quick``: the toy CLIP, one round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch

from benchlib import machine

LISTS = (["person", "rocket"], ["flag", "helmet", "face"], ["suit", "glove"])


def main() -> None:
    import skimage.data

    import vpltool

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the toy CLIP, one round")
    args = ap.parse_args()
    model, rounds = ("vpltool-toy", 1) if args.quick else ("ViT-B-16", args.rounds)
    warnings.simplefilter("ignore")  # the toy does not know these words: said once, not measured
    torch.manual_seed(0)
    photo = skimage.data.astronaut()
    rows = {}
    for method in ("sclip", "naclip"):
        seg = vpltool.segmenter(method, model=model, pretrained="none", device="cpu", templates="a photo of a {}.",
                                background="sky,wall")
        for names in LISTS:  # the text side's queries made once, outside the timing
            seg(photo, names)
        embed, kept, fresh = [], [], []
        for _ in range(rounds):
            t = time.process_time()
            emb = seg.embed(photo)
            embed.append(time.process_time() - t)
            t = time.process_time()
            a = [seg(emb, names).labels for names in LISTS]
            kept.append(time.process_time() - t)
            t = time.process_time()
            b = [seg(photo, names).labels for names in LISTS]
            fresh.append(time.process_time() - t)
            assert all(np.array_equal(x, y) for x, y in zip(a, b)), f"{method}: labels differ"
        e, k, f = (statistics.median(v) for v in (embed, kept, fresh))
        rows[method] = {"embed_cpu_s": round(e, 2), "lists_from_embedding_cpu_s": round(k, 2),
                        "fresh_calls_cpu_s": round(f, 2), "embed_and_lists_over_fresh": round((e + k) / f, 3),
                        "labels_equal": True}
    print(json.dumps({"benchmark": "embed", "machine": machine("cpu"), "model": model, "photo": "astronaut 512x512",
                      "lists": len(LISTS), "rounds": rounds, "methods": rows}, indent=1))


if __name__ == "__main__":
    main()

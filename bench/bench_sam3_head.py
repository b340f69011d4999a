"""SAM 3's segmentation head on this CPU, each of its fp32 fast-mode convolutions (``Sam3.head_conv``,
:data:`vpltool.models.backbones.sam3_fast.HEAD_CONVS`): CPU time a prompt and distance from a float64 head; prints
ONE JSON object.

    python bench/bench_sam3_head.py [--pairs 5] [--out JSON]
    python bench/bench_sam3_head.py --weights sam3.pt --photos DIR --words FILE [--out JSON]

Transformers' ``Sam3MaskDecoder`` with vpltool's layers at Meta's sizes (256 channels, FPN levels 288, 144 and 72
px, 200 queries, a 33-token prompt; random weights and inputs, seed 0), one image read by every prompt, one prompt
a call (``MASK_PROMPTS``), fp32, one thread. Per ``--pairs`` alternating pairs (the order swapped every other
pair), each side is a fresh image's first prompt (with ``"phases"``: the image's level convolutions, made once per
image) and its next two prompts, CPU-seconds (``time.process_time``); the verdict per side is the medians of the
first and of the later prompts, and of a photo of K prompts, ``first + (K - 1) later``. Each side's mask logits
against transformers' head in float64 on the same inputs (one prompt) say how much each rounds.

``--weights``: a whole SAM 3 (the sam3 family's) on each photo of ``--photos`` (``*.jpg``), the words of ``--words``
(one a line) grounded as ``--dense sam3`` grounds them (:func:`vpltool.models.dense.sam3.sam3_scores`: its buckets,
the head run for the prompts with a query above ``--confidence-threshold``): per photo and head, the CPU-seconds of
its groundings (the photo encoded once, not timed; the heads in turn, the order swapped every other photo), how many
prompts ran the head, and the two heads' mask logits' largest difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIDES, QUERIES, PROMPT, WIDTH = (288, 144, 72), 200, 33, 256


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--weights", type=Path, default=None, help="a whole SAM 3's weights (Meta's sam3.pt or a folder)")
    ap.add_argument("--photos", type=Path, default=None, help="with --weights: a folder of .jpg photos")
    ap.add_argument("--words", type=Path, default=None, help="with --weights: the prompts, one a line")
    ap.add_argument("--confidence-threshold", type=float, default=0.15,
                    help="with --weights: a prompt runs the head when a query scores above it")
    args = ap.parse_args(argv)
    if args.weights:
        return whole_model(args)
    import torch
    from transformers.models.sam3 import modeling_sam3 as hf

    from vpltool.models.backbones import sam3_fast
    from vpltool.models.backbones.sam3_states import Sam3Image

    import benchlib

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = hf.Sam3MaskDecoderConfig(hidden_size=WIDTH)
    config._attn_implementation = "sdpa"
    head = hf.Sam3MaskDecoder(config).eval()
    plain64 = copy.deepcopy(head).double()
    sam3_fast.speed_up(head)
    g = torch.Generator().manual_seed(0)
    levels = tuple(torch.randn(1, WIDTH, s, s, generator=g) for s in SIDES)
    prompt = {"decoder_queries": torch.randn(1, QUERIES, WIDTH, generator=g),
              "encoder_hidden_states": torch.randn(1, SIDES[-1] ** 2, WIDTH, generator=g),
              "prompt_features": torch.randn(1, PROMPT, WIDTH, generator=g),
              "prompt_mask": torch.ones(1, PROMPT, dtype=torch.bool)}

    def call(image: Sam3Image, conv: str) -> torch.Tensor:
        with sam3_fast.pixel_decoder_set(head.pixel_decoder, conv, image, "fp32", True):
            return head(backbone_features=list(image.features), **prompt).pred_masks

    def side(conv: str) -> tuple[float, float, torch.Tensor]:
        image = Sam3Image(levels, levels, 1008)  # a fresh image: "phases" convolves its levels again
        start = time.process_time()
        masks = call(image, conv)
        first = time.process_time() - start
        start = time.process_time()
        for _ in range(2):
            call(image, conv)
        return first, (time.process_time() - start) / 2, masks

    with torch.no_grad():
        exact = plain64(backbone_features=[t.double() for t in levels],
                        **{k: v.double() if v.is_floating_point() else v for k, v in prompt.items()}).pred_masks
        times = {conv: {"first": [], "later": []} for conv in sam3_fast.HEAD_CONVS}
        masks = {}
        for p in range(args.pairs):
            for conv in sam3_fast.HEAD_CONVS[::1 if p % 2 == 0 else -1]:
                first, later, masks[conv] = side(conv)
                times[conv]["first"].append(first)
                times[conv]["later"].append(later)
    out = {}
    for conv, t in times.items():
        first, later = statistics.median(t["first"]), statistics.median(t["later"])
        out[conv] = {"first_prompt_ms": round(first * 1e3, 1), "later_prompt_ms": round(later * 1e3, 1),
                     "photo_ms": {k: round((first + (k - 1) * later) * 1e3) for k in (1, 3, 8)},
                     "max_abs_diff_from_float64": float((masks[conv].double() - exact).abs().max())}
    a, b = sam3_fast.HEAD_CONVS
    result = json.dumps({"benchmark": "sam3_head_convs", "machine": benchlib.machine("cpu"), "threads": 1,
                         "precision": "fp32", "pairs": args.pairs, "sides": list(SIDES), "queries": QUERIES,
                         "max_abs_logit": float(exact.abs().max()),
                         "max_abs_diff_between": float((masks[a] - masks[b]).abs().max()), "head_convs": out},
                        indent=1)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


def whole_model(args) -> None:
    """``--weights``: the heads on a whole SAM 3, photo by photo (module docstring)."""
    import numpy as np
    import torch
    from PIL import Image

    from vpltool.models import load_model
    from vpltool.models.backbones import sam3_fast
    from vpltool.models.backbones.sam3 import Sam3Spec
    from vpltool.models.backbones.sam3_states import Sam3Image
    from vpltool.models.dense.sam3 import bucket

    import benchlib

    torch.set_num_threads(1)
    sam = load_model("sam3", Sam3Spec(str(args.weights)))
    words = [w.strip() for w in args.words.read_text().splitlines() if w.strip()]
    text, size = sam.encode_text(words), bucket(sam)
    rows = []
    with torch.no_grad():
        for i, photo in enumerate(sorted(args.photos.glob("*.jpg"))):
            encoded = sam.encode_image(sam.prepare(np.asarray(Image.open(photo).convert("RGB"))))
            row, masks = {"photo": photo.name}, {}
            for conv in sam3_fast.HEAD_CONVS[::1 if i % 2 == 0 else -1]:
                sam.head_conv = conv
                image = Sam3Image(encoded.features, encoded.positions, encoded.size)  # nothing of the other head's
                start, ran, kept = time.process_time(), 0, []
                for first in range(0, len(words), size):
                    g = sam.ground(image, text.select(range(first, min(first + size, len(words)))),
                                   masks=args.confidence_threshold)
                    ran += len(g.mask_prompts or [])
                    kept += [] if g.pred_masks is None else [g.pred_masks]
                row[f"{conv}_cpu_s"] = round(time.process_time() - start, 2)
                row["prompts_with_the_head"], masks[conv] = ran, torch.cat(kept) if kept else None
            a, b = (masks[c] for c in sam3_fast.HEAD_CONVS)
            row["max_abs_diff_between"] = None if a is None else float((a - b).abs().max())
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    result = json.dumps({"benchmark": "sam3_head_convs_whole_model", "machine": benchlib.machine("cpu"),
                         "threads": 1, "precision": "fp32", "weights": str(args.weights), "words": len(words),
                         "bucket": size, "confidence_threshold": args.confidence_threshold,
                         "cpu_s_total": {c: round(sum(r[f"{c}_cpu_s"] for r in rows), 2)
                                         for c in sam3_fast.HEAD_CONVS}, "photos": rows}, indent=1)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()

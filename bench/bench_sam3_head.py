"""SAM 3's segmentation head on this CPU, each of its fp32 fast-mode convolutions (``Sam3.head_conv``,
:data:`vpltool.models.backbones.sam3_fast.HEAD_CONVS`): CPU time a prompt and distance from a float64 head; prints
ONE JSON object.

    python bench/bench_sam3_head.py [--pairs 5] [--out JSON]

Transformers' ``Sam3MaskDecoder`` with vpltool's layers at Meta's sizes (256 channels, FPN levels 288, 144 and 72
px, 200 queries, a 33-token prompt; random weights and inputs, seed 0), one image read by every prompt, one prompt
a call (``MASK_PROMPTS``), fp32, one thread. Per ``--pairs`` alternating pairs (the order swapped every other
pair), each side is a fresh image's first prompt (with ``"phases"``: the image's level convolutions, made once per
image) and its next two prompts, CPU-seconds (``time.process_time``); the verdict per side is the medians of the
first and of the later prompts, and of a photo of K prompts, ``first + (K - 1) later``. Each side's mask logits
against transformers' head in float64 on the same inputs (one prompt) say how much each rounds.
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
    args = ap.parse_args(argv)
    import torch
    from transformers.models.sam3 import modeling_sam3 as hf

    from vpltool.models.backbones import sam3, sam3_fast
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
        with sam3._pixel_decoder_set(head.pixel_decoder, conv, image, "fp32", True):
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


if __name__ == "__main__":
    main()

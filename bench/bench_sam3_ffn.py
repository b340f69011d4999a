"""SAM 3's DETR feed-forward on this CPU: the whole hidden map at once against ``sam3_fast.FFN_ROWS`` rows at a time
(:class:`vpltool.models.backbones.sam3_fast.FusedReluMLP`); prints ONE JSON object.

    python bench/bench_sam3_ffn.py [--pairs 7] [--out JSON]

The DETR encoder's feed-forward at Meta's sizes (256 -> 2048 -> 256, ReLU; random weights, seed 0) on a bucket of 4
prompts at ActiveSAM's 672-pixel preview (``[4, 2304, 256]``) and at 1008 pixels (``[4, 5184, 256]``), fp32, one
thread. Per shape, ``--pairs`` alternating pairs (whole, then in rows; the order swapped every other pair), each side
the CPU-seconds (``time.process_time``) of 3 calls; the verdict per shape is the median of the pairs' ratios rows /
whole and the two outputs' largest difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {"preview_672": (4, 2304, 256), "full_1008": (4, 5184, 256)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    import torch
    from transformers.models.sam3 import modeling_sam3 as hf
    from transformers.models.sam3.configuration_sam3 import Sam3DETREncoderConfig

    from vpltool.models.backbones import sam3_fast

    import benchlib

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ffn = hf.Sam3MLP(Sam3DETREncoderConfig(hidden_size=256, intermediate_size=2048, hidden_act="relu")).eval()
    sam3_fast.speed_up(ffn)
    rows_at_a_time = sam3_fast.FFN_ROWS
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for name, shape in SHAPES.items():
            x = torch.randn(*shape, generator=g)

            def side(rows: int) -> tuple[float, torch.Tensor]:
                sam3_fast.FFN_ROWS = rows
                y = ffn(x)
                start = time.process_time()
                for _ in range(3):
                    ffn(x)
                return (time.process_time() - start) / 3, y

            times, ratios, outputs = {"whole": [], "rows": []}, [], {}
            for p in range(args.pairs):
                order = ("whole", "rows") if p % 2 == 0 else ("rows", "whole")
                for which in order:
                    t, y = side(x.numel() if which == "whole" else rows_at_a_time)
                    times[which].append(t)
                    outputs[which] = y
                ratios.append(times["rows"][-1] / times["whole"][-1])
            out[name] = {"shape": list(shape), "ms_median": {k: round(statistics.median(v) * 1e3, 2)
                                                             for k, v in times.items()},
                         "ratio_median": round(statistics.median(ratios), 3),
                         "max_abs_diff": float((outputs["rows"] - outputs["whole"]).abs().max())}
    sam3_fast.FFN_ROWS = rows_at_a_time
    result = json.dumps({"benchmark": "sam3_ffn_rows", "machine": benchlib.machine("cpu"), "threads": 1,
                         "precision": "fp32", "ffn_rows": rows_at_a_time, "pairs": args.pairs, "shapes": out},
                        indent=1)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()

"""Where PGSeg's gradient comes from at a fresh initialisation: the gradient norm of each loss part alone.

    python studies/study_pgseg_tnpr_gradient.py [--preset tiny] [--pairs 8] [--seeds 0 1 2]

T-NPR L2-normalises the channel mean of each stage-2 group token over an axis of size one (the reference's
arithmetic, kept by vpltool). At a fresh init (LayerNorm weights 1, biases 0) those means are close to zero, and
the normalisation's gradient (analytically zero) is dominated by rounding divided by a tiny norm. Prints ONE JSON
object: per seed (model and data), each part's value and the gradient norm over all parameters of that part alone.
Random images and captions: the figure is about the arithmetic, not about data.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("contrastive", "npr_stage1", "npr_stage2", "npr_text")
CAPTIONS = ["a photo of a cat", "a dog on a mat", "two red cars", "a boat at sea"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    import torch

    from vpltool.models.text.pgseg import PRESETS, build_model, tokenizer

    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        model = build_model(PRESETS[args.preset](), seed=seed).train()
        tokens = tokenizer(model.cfg)([CAPTIONS[i % len(CAPTIONS)] for i in range(args.pairs)])
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(args.pairs, 3, model.cfg.img_size, model.cfg.img_size, generator=g)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        row = {"seed": seed}
        for part in PARTS:
            model.load_state_dict(state)
            model.zero_grad()
            torch.manual_seed(seed)
            value = model.forward_train(images, tokens)[part]
            if torch.isnan(value):
                row[part] = {"value": None, "grad_norm": 0.0}
                continue
            value.backward()
            norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()
                                 if p.grad is not None))
            row[part] = {"value": round(float(value.detach()), 4), "grad_norm": float(f"{norm:.3g}")}
        runs.append(row)
    print(json.dumps({"study": "pgseg-tnpr-gradient", "preset": args.preset, "pairs": args.pairs, "runs": runs},
                     indent=1))


if __name__ == "__main__":
    main()

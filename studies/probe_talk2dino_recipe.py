"""Talk2DINO's demo recipe, chosen on the TRAIN split: the projection trained in process on features extracted once
(the reference's own design: ``dino_extraction_v2.py`` then ``train.py`` on the saved features; the loss and the
optimiser are the family's, :func:`vpltool.models.talk2dino.talk2dino_loss` and Adam), for several learning rates,
batch sizes and epochs, each scored by zero-shot mIoU on the first ``--images`` TRAIN scenes of the world (no val
scene is read). What it picks is the `--recipe demo` of `train-text --family talk2dino`.

    python studies/probe_talk2dino_recipe.py --pairs runs/talk2dino/pairs --world runs/talk2dino/world \\
        [--limit 8000] > studies/results/talk2dino_recipe_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=8000, help="the first pairs (features extracted once)")
    ap.add_argument("--images", type=int, default=60, help="train scenes scored")
    ap.add_argument("--lrs", default="1e-4,1e-3,3e-3")
    ap.add_argument("--batches", default="128,32")
    ap.add_argument("--epochs", default="1,4,16")
    ap.add_argument("--train-side", type=int, default=192, help="the square the DINO sees in training")
    ap.add_argument("--test-side", type=int, default=192, help="... and in zero-shot (resize_dim)")
    args = ap.parse_args()
    import torch

    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.data.pairs import decode_rgb, open_pairs
    from vpltool.models.dino import DinoSpec
    from vpltool.models.loading import ModelSpec
    from vpltool.models.registry import load_model
    from vpltool.models.talk2dino import (
        TEMPLATES,
        build_model,
        class_text_embeddings,
        class_tokens,
        config_for,
        image_tensor,
        talk2dino_loss,
        zero_shot_logits,
    )
    from vpltool.models.talk2dino.training import train_view
    from vpltool.ops.kernels import MiouAccumulator

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dino = load_model("dino", DinoSpec("test_vit", "vpltool/assets/toy-dino/model.safetensors", "bicubic-antialias"))
    clip = load_model("clip", ModelSpec("vpltool-toy"))
    cfg = config_for(dino, clip, resize_dim=args.test_side, pamr=False)
    base = build_model(cfg, 0, backbones=(dino, clip))
    pairs = open_pairs(args.pairs).pairs[: args.limit]
    view = train_view(args.train_side)
    feats, texts = [], []
    tok = clip.tokenizer
    with torch.no_grad():
        for i in range(0, len(pairs), 256):
            chunk = pairs[i:i + 256]
            feats.append(base.train_features(torch.stack([view(decode_rgb(p)) for p in chunk])))
            texts.append(base.text_features(tok([p.caption for p in chunk])))
    feats, texts = torch.cat(feats), torch.cat(texts)
    extract_s = time.perf_counter() - t0
    data = open_dataset(args.world, "train")
    names = [c for c in data.classes if c != "background"]
    items = data.items[: args.images]
    images = [io.load_image(it.image) for it in items]
    gts = [io.read_mask(it.gt) for it in items]

    def score(model) -> dict:
        out = {}
        for key in ("simple", "sub_imagenet"):
            text = class_text_embeddings(model, class_tokens(names, tok, TEMPLATES[key]))
            fg = []
            for im in images:
                lg = zero_shot_logits(model, image_tensor(im, 192), text, with_bg=False, use_pamr=False, crop=192,
                                      stride=96)  # the image at the demo's 192; the DINO sees --test-side
                fg.append(torch.nn.functional.interpolate(lg, size=im.shape[:2], mode="bilinear")[0])
            best = 0.0
            for t in np.arange(0.3, 0.91, 0.05):
                acc = MiouAccumulator(len(data.classes))
                for s, gt in zip(fg, gts):
                    top, arg = s.max(0)
                    acc.add(gt, np.where(top.numpy() > t, arg.numpy() + 1, 0).astype(np.uint8))
                best = max(best, acc.result()["miou"])
            out[key] = best
        return out

    rows = [{"lr": None, "batch": None, "epochs": 0, "train_miou": score(base)}]
    print(json.dumps(rows[-1]), file=sys.stderr)
    for lr in [float(x) for x in args.lrs.split(",")]:
        for batch in [int(x) for x in args.batches.split(",")]:
            model = build_model(cfg, 0, backbones=(dino, clip))
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            done = 0
            for epochs in sorted(int(x) for x in args.epochs.split(",")):
                for epoch in range(done, epochs):
                    order = np.random.default_rng([0, epoch]).permutation(len(feats))
                    for b in range(len(order) // batch):
                        idx = torch.from_numpy(order[b * batch:(b + 1) * batch])
                        loss = talk2dino_loss(model.project_text(texts[idx]), feats[idx])["loss"]
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                done = epochs
                rows.append({"lr": lr, "batch": batch, "epochs": epochs, "steps": epochs * (len(feats) // batch),
                             "last_loss": float(loss), "train_miou": score(model.eval())})
                print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"what": "zero-shot train mIoU (best bg_thresh on a 0.05 grid, no PAMR, no cleaning) of the "
                              "projection trained in process on extracted features",
                      "pairs": len(feats), "images": args.images, "train_side": args.train_side,
                      "test_side": args.test_side, "split": "train", "extract_s": round(extract_s, 1),
                      "seconds": round(time.perf_counter() - t0, 1), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

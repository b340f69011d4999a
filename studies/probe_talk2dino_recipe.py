"""Talk2DINO's demo recipe, chosen on the TRAIN split: the projection trained in process on features extracted once
(the reference's own design: ``dino_extraction_v2.py`` then ``train.py`` on the saved features; the loss and the
optimiser are the family's, :func:`vpltool.models.text.talk2dino.talk2dino_loss` and Adam), for several squares the DINO
sees in training and at zero-shot time, learning rates, batch sizes and epochs, each scored by zero-shot mIoU on the
first ``--images`` TRAIN scenes of the world (no val scene is read). What it picks is the `--recipe demo` of
`train-text --family talk2dino` and the zero-shot side of studies/study_talk2dino_demo.py.

Each row's ``loss_x_b2`` is the last batch's loss times the batch size squared (the family's loss is InfoNCE / B²,
the reference's normalisation): the InfoNCE itself, against ``ln_b`` = ln B for a projection that knows nothing.
Each ``train_miou`` is the best over a 0.0025 grid of ``bg_thresh`` (no PAMR, no cleaning), the image at short side
192 as one window.

    python studies/probe_talk2dino_recipe.py --pairs runs/talk2dino/pairs --world runs/talk2dino/world \\
        [--limit 8000] > studies/results/talk2dino_recipe_probe.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLDS = np.arange(0.50, 0.7501, 0.0025)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=8000, help="the first pairs (features extracted once)")
    ap.add_argument("--images", type=int, default=100, help="train scenes scored")
    ap.add_argument("--lrs", default="1e-4,1e-3")
    ap.add_argument("--batches", default="128,32")
    ap.add_argument("--epochs", default="1,4,16")
    ap.add_argument("--train-sides", default="192", help="squares the DINO sees in training")
    ap.add_argument("--test-sides", default="192,384", help="... and in zero-shot (resize_dim)")
    ap.add_argument("--templates", default="simple,sub_imagenet")
    ap.add_argument("--hidden-layers", default="1", help="the projection's hidden layers (the reference's 1)")
    ap.add_argument("--cache", type=Path, default=None, help="a folder to keep the extracted features in")
    args = ap.parse_args()
    import torch

    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.data.pairs import decode_rgb, open_pairs
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.backbones.loading import ModelSpec
    from vpltool.models.registry import load_model
    from vpltool.models.text.talk2dino import (
        TEMPLATES,
        build_model,
        class_text_embeddings,
        class_tokens,
        config_for,
        image_tensor,
        talk2dino_loss,
        zero_shot_logits,
    )
    from vpltool.models.text.talk2dino.training import train_view
    from vpltool.ops.kernels import MiouAccumulator

    torch.set_num_threads(1)
    t0 = time.process_time()
    dino = load_model("dino", DinoSpec("test_vit", "vpltool/assets/toy-dino/model.safetensors", "bicubic-antialias"))
    clip = load_model("clip", ModelSpec("vpltool-toy"))
    tok = clip.tokenizer
    pairs = open_pairs(args.pairs).pairs[: args.limit]
    raw = [decode_rgb(p) for p in pairs]
    backgrounds = {w: i for i, w in enumerate(("grass", "sky", "wall", "water"))}  # make-pairs' backgrounds
    bg_of = np.array([next((i for w, i in backgrounds.items() if w in p.caption), -1) for p in pairs])
    with torch.no_grad():
        texts = torch.cat([clip.model.encode_text(tok([p.caption for p in pairs[i:i + 256]])).float()
                           for i in range(0, len(pairs), 256)])
    data = open_dataset(args.world, "train")
    names = [c for c in data.classes if c != "background"]
    items = data.items[: args.images]
    images = [io.load_image(it.image) for it in items]
    gts = [io.read_mask(it.gt) for it in items]
    test_sides = [int(s) for s in args.test_sides.split(",")]
    keys = args.templates.split(",")

    import torch.nn.functional as F

    from vpltool.models.text.talk2dino.net import interpolate_square

    n_cls = len(data.classes)
    gt_all = np.concatenate(gts)  # every scene is the world's size: one confusion over all of them
    probe_model = build_model(config_for(dino, clip, pamr=False), 0, backbones=(dino, clip))
    windows = [image_tensor(im, 192) for im in images]  # the image at the demo's 192, one window
    test_tokens = {}
    for side in test_sides:  # the frozen DINO's normalised patch tokens, once per side: [N, C, g, g]
        with torch.no_grad():
            tokens = torch.cat([probe_model.dino_features(probe_model.normalise(
                interpolate_square(w, side) / 255.0))[0] for w in windows])
        g = int(tokens.shape[1] ** 0.5)
        test_tokens[side] = F.normalize(tokens.reshape(-1, g, g, tokens.shape[-1]).permute(0, 3, 1, 2), dim=1,
                                        eps=1e-6)

    def masks(text, side: int):
        """[N, classes, H0, W0]: crop_masks' sigmoid(cos) without PAMR, resized as zero_shot_labels resizes."""
        m = torch.sigmoid(torch.einsum("bchw,nc->bnhw", test_tokens[side], text))
        m = F.interpolate(m, windows[0].shape[-2:], mode="bilinear", align_corners=True)
        return F.interpolate(m, size=images[0].shape[:2], mode="bilinear", align_corners=False)

    def score(model) -> dict:
        out = {}
        for key in keys:
            text = class_text_embeddings(model, class_tokens(names, tok, TEMPLATES[key]))
            for side in test_sides:
                with torch.no_grad():
                    top, arg = masks(text, side).max(1)
                top, arg = top.reshape(-1, top.shape[-1]).numpy(), arg.reshape(-1, arg.shape[-1]).numpy() + 1
                best = (0.0, 0.0)
                for t in THRESHOLDS:
                    acc = MiouAccumulator(n_cls)
                    acc.add(gt_all, np.where(top > t, arg, 0).astype(np.uint8))
                    best = max(best, (float(acc.result()["miou"]), round(float(t), 4)))
                out[f"{side}/{key}"] = {"miou": round(best[0], 4), "bg_thresh": best[1]}
        return out

    # the shortcut is the family's zero-shot on one scene (one window, no PAMR): checked, not assumed
    check_text = class_text_embeddings(probe_model, class_tokens(names, tok, TEMPLATES[keys[0]]))
    for side in test_sides:
        probe_model.cfg = probe_model.cfg.__class__(**{**probe_model.cfg.to_dict(), "resize_dim": side})
        ref = zero_shot_logits(probe_model, windows[0], check_text, with_bg=False, use_pamr=False, crop=0)
        ref = F.interpolate(ref, size=images[0].shape[:2], mode="bilinear", align_corners=False)
        assert torch.allclose(ref, masks(check_text, side)[:1], atol=1e-5), "the probe's shortcut drifted"

    def background_only(batch: int) -> float:
        """The InfoNCE (mean over one epoch's batches) of a projection that knows each caption's background word
        and nothing else (perfect scores within a background, none across): mean ln(same-background count)."""
        order = np.random.default_rng(0).permutation(len(bg_of))
        vals = []
        for b in range(len(order) // batch):
            g = bg_of[order[b * batch:(b + 1) * batch]]
            vals.append(float(np.mean(np.log((g[:, None] == g[None, :]).sum(1)))))
        return round(float(np.mean(vals)), 4)

    rows = []
    extract = {}
    for train_side in [int(s) for s in args.train_sides.split(",")]:
        c0 = time.process_time()
        cfg = config_for(dino, clip, resize_dim=train_side, pamr=False)
        base = build_model(cfg, 0, backbones=(dino, clip))
        view = train_view(train_side)
        cached = args.cache / f"feats_{train_side}_{len(raw)}.pt" if args.cache else None
        if cached is not None and cached.is_file():
            feats = torch.load(cached)
        else:
            with torch.no_grad():
                feats = torch.cat([base.train_features(torch.stack([view(r) for r in raw[i:i + 256]]))
                                   for i in range(0, len(raw), 256)])
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(feats, cached)
        extract[train_side] = round(time.process_time() - c0, 1)
        rows.append({"train_side": train_side, "lr": None, "batch": None, "epochs": 0, "train_miou": score(base)})
        print(json.dumps(rows[-1]), file=sys.stderr)
        for hidden, lr, batch in itertools.product([int(x) for x in args.hidden_layers.split(",")],
                                                   [float(x) for x in args.lrs.split(",")],
                                                   [int(x) for x in args.batches.split(",")]):
            model = build_model(replace(cfg, hidden_layers=hidden), 0, backbones=(dino, clip))
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            done = 0
            for epochs in sorted(int(x) for x in args.epochs.split(",")):
                model.train()
                for epoch in range(done, epochs):
                    order = np.random.default_rng([0, epoch]).permutation(len(feats))
                    for b in range(len(order) // batch):
                        idx = torch.from_numpy(order[b * batch:(b + 1) * batch])
                        loss = talk2dino_loss(model.project_text(texts[idx]), feats[idx])["loss"]
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                done = epochs
                rows.append({"train_side": train_side, "hidden_layers": hidden, "lr": lr, "batch": batch,
                             "epochs": epochs, "steps": epochs * (len(feats) // batch),
                             "loss_x_b2": round(float(loss) * batch ** 2, 4), "ln_b": round(math.log(batch), 4),
                             "background_only_loss": background_only(batch),
                             "train_miou": score(model.eval())})
                print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"what": "zero-shot train mIoU (best bg_thresh on a 0.0025 grid, no PAMR, no background "
                              "cleaning, the image at short side 192 as one window, the DINO at the test side) of the "
                              "projection trained in process on features extracted once",
                      "command": " ".join(["python", *sys.argv]), "pairs": len(feats), "images": args.images,
                      "split": "train", "extract_cpu_s": extract, "cpu_s": round(time.process_time() - t0, 1),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

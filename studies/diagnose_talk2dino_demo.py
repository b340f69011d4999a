"""Why Talk2DINO's demo was weak: what the toy DINO's patch tokens and the toy CLIP's text embeddings allow, measured
on the first ``--images`` TRAIN scenes of the world (no val scene is read), at several squares the DINO sees.

Per DINO side: the patch tokens of each scene (the family's :meth:`Talk2DINO.dino_features`), each patch labelled by
the ground truth at its centre (nearest); the scenes split in two halves. Printed:

* ``common``: the norm of the mean L2-normalised patch token (1 = every token the same direction);
* ``prototype_miou``: the zero-shot rule with an ORACLE class embedding, each class's mean normalised token over the
  first half, scored on the second half's patches (``sigmoid(cos) > t`` else background, the best ``t`` on a
  0.0025 grid): the most the rule can give with these tokens and one direction per class, before any text;
* ``cls_attention``: the last block's CLS-to-patch attention that makes each training target
  (:func:`~vpltool.models.text.talk2dino.head_embeddings`), per head: its entropy over the patches divided by
  ln(patches) (1 = uniform: the target is the mean patch token) and its mass on foreground patches, beside their share
  of the patches (``fg_area``);
* ``pixel_prototype_miou``: the same oracle embeddings through the family's zero-shot
  (:func:`~vpltool.models.text.talk2dino.zero_shot_logits`, no PAMR) on the first half's scenes at pixel level, per
  window of the 192-px image (``192``: one window; ``96``: half-image windows, stride 48, each resized to the
  DINO's square), the first ``--pixel-images`` scenes;
* ``linear_probe_miou``: a logistic regression on the first half's tokens, scored on the second half's patches
  (what the tokens hold at all);
* the toy CLIP's class-prompt embeddings: their mean and largest pairwise cosine (``simple`` and the reference's
  ``sub_imagenet`` templates).

    python studies/diagnose_talk2dino_demo.py --world runs/talk2dino/world > studies/results/talk2dino_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLDS = np.arange(0.50, 0.7501, 0.0025)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--images", type=int, default=200, help="train scenes")
    ap.add_argument("--sides", default="192,288,384", help="squares the DINO sees")
    ap.add_argument("--pixel-images", type=int, default=60, help="scenes scored at pixel level")
    ap.add_argument("--dino-weights", default="vpltool/assets/toy-dino/model.safetensors")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression

    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.backbones.loading import ModelSpec
    from vpltool.models.registry import load_model
    from vpltool.models.text.talk2dino import (
        TEMPLATES,
        build_model,
        class_tokens,
        config_for,
        image_tensor,
        zero_shot_logits,
    )
    from vpltool.models.text.talk2dino.net import interpolate_square
    from vpltool.ops.kernels import MiouAccumulator

    torch.set_num_threads(1)
    dino = load_model("dino", DinoSpec("test_vit", args.dino_weights, "bicubic-antialias"))
    clip = load_model("clip", ModelSpec("vpltool-toy"))
    data = open_dataset(args.world, "train")
    n_cls = len(data.classes)
    names = [c for c in data.classes if c != "background"]
    items = data.items[: args.images]
    images = [io.load_image(it.image) for it in items]
    gts = [io.read_mask(it.gt) for it in items]

    def miou(y: np.ndarray, pred: np.ndarray) -> float:
        acc = MiouAccumulator(n_cls)
        acc.add(y.astype(np.uint8), pred.astype(np.uint8))
        return float(acc.result()["miou"])

    out: dict = {"what": __doc__.splitlines()[0], "command": " ".join(["python", *sys.argv]), "split": "train",
                 "images": len(images), "dino_pos_embed_grid": int((dino.model.pos_embed.shape[1] - 1) ** 0.5),
                 "dino_width": int(dino.model.embed_dim), "dino_heads": int(dino.model.blocks[-1].attn.num_heads),
                 "text": {}, "sides": []}
    for key in ("simple", "sub_imagenet"):
        t = class_tokens(names, clip.tokenizer, TEMPLATES[key])
        n, k, length = t.shape
        with torch.no_grad():
            e = clip.model.encode_text(t.reshape(n * k, length)).float().reshape(n, k, -1).mean(1)
        c = F.normalize(e, dim=-1) @ F.normalize(e, dim=-1).T
        off = c[~torch.eye(n, dtype=torch.bool)]
        out["text"][key] = {"class_cos_mean": round(float(off.mean()), 3), "class_cos_max": round(float(off.max()), 3)}
    for side in [int(s) for s in args.sides.split(",")]:
        model = build_model(config_for(dino, clip, resize_dim=side, pamr=False), 0, backbones=(dino, clip))
        t0 = time.process_time()
        xs, ys, mass, ent, area = [], [], [], [], []
        for image, gt in zip(images, gts):
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            tokens, logits = model.dino_features(model.normalise(interpolate_square(pixels, side) / 255.0))
            grid = int(tokens.shape[1] ** 0.5)
            lab = F.interpolate(torch.from_numpy(gt.astype(np.float32))[None, None], size=(grid, grid),
                                mode="nearest")
            att = logits[0].softmax(-1)  # [heads, P]
            fg = (lab.reshape(-1) > 0).float()
            mass.append((att * fg).sum(-1))
            ent.append(-(att * att.clamp_min(1e-12).log()).sum(-1) / np.log(att.shape[-1]))
            area.append(fg.mean())
            xs.append(tokens[0])
            ys.append(lab.reshape(-1).long())
        cpu = time.process_time() - t0
        x, y = torch.cat(xs), torch.cat(ys)
        xn = F.normalize(x, dim=-1)
        half = len(y) // 2
        protos = torch.stack([F.normalize(xn[:half][y[:half] == c].mean(0), dim=0) for c in range(1, n_cls)])
        score = torch.sigmoid(xn[half:] @ protos.T)
        top, arg = score.max(1)
        rows = [(miou(y[half:].numpy(), torch.where(top > t, arg + 1, 0).numpy()), float(t)) for t in THRESHOLDS]
        best = max(rows)
        pixel = {}
        some = min(args.pixel_images, len(images) // 2)
        gt_all = np.concatenate([g.ravel() for g in gts[:some]])[None]
        for crop, stride in ((192, 96), (96, 48)):
            tops, args_ = [], []
            for image in images[:some]:
                with torch.no_grad():
                    lg = zero_shot_logits(model, image_tensor(image, 192), protos, with_bg=False, use_pamr=False,
                                          crop=crop, stride=stride)
                top, arg = F.interpolate(lg, size=image.shape[:2], mode="bilinear", align_corners=False)[0].max(0)
                tops.append(top.numpy().ravel())
                args_.append(arg.numpy().ravel() + 1)
            top, arg = np.concatenate(tops)[None], np.concatenate(args_)[None]
            pixel[str(crop)] = round(max(miou(gt_all, np.where(top > t, arg, 0)) for t in THRESHOLDS), 4)
        clf = LogisticRegression(max_iter=300).fit(x[:half].numpy(), y[:half].numpy())
        out["sides"].append({"side": side, "grid": grid, "dino_cpu_s_per_image": round(cpu / len(images), 4),
                             "common": round(float(xn.mean(0).norm()), 3),
                             "cls_attention": {"entropy": [round(float(v), 3) for v in torch.stack(ent).mean(0)],
                                               "fg_mass": [round(float(v), 3) for v in torch.stack(mass).mean(0)],
                                               "fg_area": round(float(torch.stack(area).mean()), 3)},
                             "prototype_miou": round(best[0], 4), "prototype_thresh": round(best[1], 4),
                             "pixel_prototype_miou": pixel,
                             "linear_probe_miou": round(miou(y[half:].numpy(), clf.predict(x[half:].numpy())), 4)})
        print(json.dumps(out["sides"][-1]), file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

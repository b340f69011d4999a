"""What holds Talk2DINO back on the demo: its training target. The same projection, loss, optimiser, pairs and zero-shot
rule, trained twice per seed: once on the family's own target (per head, the toy DINO's class-token attention over the
patch tokens, :func:`vpltool.models.text.talk2dino.model.head_embeddings`), once on the mean of the patches the rendered
scene's mask calls foreground (what a DINO whose class token attends to the shapes would give; a view with no shape
falls back to the mean of all patches). A paired comparison: only the target differs.

Each pair's mask is re-rendered from its index (:func:`vpltool.demo.make_pairs.pair_sample`'s draws, with the mask
kept); the script checks that every re-rendered image equals the shard's. The DINO sees the recipe's 192-px view
(patch tokens and attention extracted once); the projection trains in process as `train-text --recipe demo` trains it
(Adam at the recipe's rate, one pass, its batch; the family's loss). Zero-shot: the settings that
studies/study_talk2dino_demo.py chose on train (``--settings``, its ``chosen_on_train``), then per model its own
``bg_thresh`` on the first ``--images`` TRAIN scenes, and val by the reference's rule.

    python studies/ceiling_talk2dino_attention.py --pairs runs/t2d/pairs --world runs/t2d/world \\
        [--limit 8000] [--seeds 0,1,2] > studies/results/talk2dino_attention_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "studies"))
sys.path.insert(0, str(ROOT / "bench"))
from study_talk2dino_demo import load, score_own_threshold, spread  # noqa: E402

from benchlib import machine  # noqa: E402


def view_and_mask(cfg, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair ``i``'s image and its foreground mask ``[S, S]`` bool: :func:`pair_sample`'s draws, in its order."""
    from vpltool.demo.make_pairs import VIEW_STREAM
    from vpltool.demo.scenes import SceneConfig, render_scene
    from vpltool.demo.toyclip import scene_seed
    from vpltool.demo.train_toy_clip import crop_with_mask

    seed = scene_seed(cfg.seed, "pairs")
    scene = render_scene(np.random.default_rng([seed, i]), SceneConfig(size=cfg.size))
    rng = np.random.default_rng([seed, i, VIEW_STREAM])
    image, mask = crop_with_mask(scene, rng) if rng.random() < cfg.crop_prob else (scene.image, scene.mask)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return image, (mask > 0) & (mask < 255)


def extract(model, clip, pairs, side: int, patch: int):
    """Per pair: the DINO's patch tokens ``[N, P, C]``, its CLS logits ``[N, H, P]``, the foreground fraction of
    each patch ``[N, P]`` and the caption's CLIP text features ``[N, D]``; and how many images differ from the
    shard's (must be 0)."""
    import torch
    import torch.nn.functional as F

    from vpltool.data.pairs import decode_rgb
    from vpltool.demo.make_pairs import PairsConfig
    from vpltool.models.text.talk2dino.training import train_view

    cfg, view = PairsConfig(), train_view(side)
    tokens, logits, fg, texts, differ = [], [], [], [], 0
    for start in range(0, len(pairs), 256):
        batch, pixels, fractions = pairs[start:start + 256], [], []
        for k, pair in enumerate(batch):
            image, mask = view_and_mask(cfg, start + k)
            shard = decode_rgb(pair)
            differ += not np.array_equal(np.asarray(shard), image)
            pixels.append(view(shard))
            m = torch.from_numpy(mask.astype(np.float32))[None, None]
            m = F.interpolate(m, size=(side, side), mode="nearest")  # the square views: the view's resize
            fractions.append(F.avg_pool2d(m, patch).flatten())
        with torch.no_grad():
            t, lg = model.dino_features(torch.stack(pixels))
            texts.append(clip.model.encode_text(clip.tokenizer([p.caption for p in batch])).float())
        tokens.append(t)
        logits.append(lg)
        fg.append(torch.stack(fractions))
    return torch.cat(tokens), torch.cat(logits), torch.cat(fg), torch.cat(texts), differ


def targets(kind: str, tokens, logits, fg):
    """``[N, H, C]`` training targets: the family's head embeddings, or the foreground patches' mean (one head)."""
    from vpltool.models.text.talk2dino.model import head_embeddings

    if kind == "own":
        return head_embeddings(tokens, logits)
    weight = fg.where(fg.sum(1, keepdim=True) > 0, 1.0)  # no shape in the view: every patch
    return ((tokens * weight[..., None]).sum(1) / weight.sum(1, keepdim=True))[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=8000, help="the first pairs (the recipe's 8 shards)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--images", type=int, default=60, help="train scenes each model's bg_thresh is chosen on")
    ap.add_argument("--settings", type=Path, default=ROOT / "studies/results/talk2dino_demo.json")
    ap.add_argument("--dino-weights", type=Path, default=None, help="another toy DINO (default: the recipe's)")
    args = ap.parse_args()
    import torch

    from vpltool.data import open_dataset
    from vpltool.data.pairs import open_pairs
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.backbones.loading import ModelSpec
    from vpltool.models.registry import load_model
    from vpltool.models.text.family import text_family
    from vpltool.models.text.talk2dino import build_model, config_for, talk2dino_loss
    from vpltool.models.text.talk2dino.config import RECIPES, Talk2DINOTrainConfig

    torch.set_num_threads(1)
    c0 = time.process_time()
    recipe = Talk2DINOTrainConfig(**RECIPES["demo"])
    chosen = json.loads(args.settings.read_text())["chosen_on_train"]
    setting = (chosen["templates"], chosen["pamr"], chosen["bg_clean"], chosen["side"], tuple(chosen["window"]))
    weights = args.dino_weights or ROOT / recipe.dino_weights
    dino = load_model("dino", DinoSpec(recipe.dino_model, str(weights), recipe.dino_pos_resize))
    clip = load_model("clip", ModelSpec(recipe.clip_model))
    cfg = config_for(dino, clip, resize_dim=recipe.crop_size, pamr=False)
    probe = build_model(cfg, 0, backbones=(dino, clip))
    pairs = open_pairs(args.pairs).pairs[: args.limit]
    tokens, logits, fg, texts, differ = extract(probe, clip, pairs, recipe.crop_size, dino.patch_size)
    if differ:
        sys.exit(f"{differ} re-rendered pairs differ from the shards: not the make-pairs defaults")
    extract_cpu = round(time.process_time() - c0, 1)

    fam = text_family("talk2dino")
    train, val = open_dataset(args.world, "train"), open_dataset(args.world, "val")
    names, n = [c for c in train.classes if c != "background"], len(train.classes)
    images, gts = load(train, args.images)
    val_images, val_gts = load(val, None)
    gt, val_gt = (np.concatenate([g.ravel() for g in x])[None] for x in (gts, val_gts))
    rows = []
    for kind in ("own", "foreground"):
        feats = targets(kind, tokens, logits, fg)
        for seed in [int(s) for s in args.seeds.split(",")]:
            m0 = time.process_time()
            model = build_model(cfg, seed, backbones=(dino, clip))
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=recipe.lr)
            order = np.random.default_rng(seed).permutation(len(feats))
            for b in range(len(order) // recipe.batch_size):
                idx = torch.from_numpy(order[b * recipe.batch_size:(b + 1) * recipe.batch_size])
                loss = talk2dino_loss(model.project_text(texts[idx]), feats[idx])["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            train_miou, thresh, got = score_own_threshold(fam, model, names, setting, n, (images, gt),
                                                          (val_images, val_gt))
            rows.append({"target": kind, "seed": seed, "bg_thresh": thresh, "train_miou": train_miou,
                         "val_miou": got["miou"], "val_iou": got["iou"],
                         "cpu_s": round(time.process_time() - m0, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {kind: {split: spread([r[f"{split}_miou"] for r in rows if r["target"] == kind])
                      for split in ("train", "val")} for kind in ("own", "foreground")}
    gains = [f["val_miou"] - o["val_miou"] for o, f in zip([r for r in rows if r["target"] == "own"],
                                                           [r for r in rows if r["target"] == "foreground"])]
    print(json.dumps({
        "what": "Talk2DINO on the demo trained on its own target (the toy DINO's class-token attention) and on the "
                "foreground patches' mean (a class token that attends to the shapes), all else equal; val mIoU by "
                "the reference's rule, each model's bg_thresh chosen on train",
        "command": " ".join(["python", "studies/ceiling_talk2dino_attention.py", *sys.argv[1:]]),
        "dino_weights": str(args.dino_weights or recipe.dino_weights),
        "pairs": len(pairs), "re_rendered_pairs_differing": differ, "zero_shot": dict(zip(
            ("templates", "pamr", "bg_clean", "side", "window"), setting)), "train_images": args.images,
        "summary": summary, "val_gain_foreground_over_own": {"mean": statistics.fmean(gains), "per_seed": gains},
        "rows": rows, "extract_cpu_s": extract_cpu, "cpu_s": round(time.process_time() - c0, 1),
        "machine": machine("cpu")}, indent=1))


if __name__ == "__main__":
    main()

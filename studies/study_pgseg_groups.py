"""Why the demo's GroupViT / PGSeg segment no better than all-background: how many groups its zero-shot maps use.

    python studies/study_pgseg_groups.py --world runs/pgseg/world --models A.safetensors B.safetensors ...
        [--untrained] [--images 30] [--short-side 96] > studies/results/pgseg_groups.json

On the first ``--images`` scenes of the world's TRAIN split (a diagnosis; val is not read), per model, the maps
`segment --pgseg` reads (:meth:`PGSeg.combine_maps`: both stages' soft assignments chained, each pixel its argmax
group): the mean share of the patches in the image's largest final group, the mean number of final groups that own
a patch, the largest stage-1 group's share, and the group-oracle mIoU (every final group given the ground-truth
class most of its pixels have): the best any group-to-class assignment could score with these groups, so an upper
bound of the text side; and whether the model recognises the shapes at all: on the scenes with an object, how often
the class whose 'a photo of a {}.' embedding best matches the pooled image embedding is one of the scene's classes
(``pooled_top1_in_scene``; chance, a class drawn at random, is ``chance_top1_in_scene``); and whether its groups
are named: of the final groups more than half of whose pixels are one object (``object_groups_per_image`` of them),
the share whose best-matching class name is that object's (``object_group_named_right``) and their mean top
probability at the model's ``logit_scale`` (``object_group_top_probability``: the reference's rule calls a group
background below 0.95 unless it is the image's most confident one). ``--untrained``: a freshly
initialised tiny GroupViT at the cpu recipe's crop too (seed 0). And `segment --pgseg`'s own labels on these train
scenes (whole image at ``--short-side``): ``zero_shot_miou`` by the reference's rule, ``zero_shot_miou_background``
with ``--background`` words queried too: the train-split proxy the demo's recipe and inference were chosen by;
``largest_group_background_miou``: those labels with the pixels of the image's largest final group made background
(a diagnosis of the collapse, not an inference rule: how much the one big group's class name costs).
``stage{i}_assignment_max``: a patch's largest soft assignment at stage i, averaged (1 / groups when every
assignment is uniform: no grouping at all, and the argmax then follows a group's small bias everywhere).
NPR's claims per object (each class present in a scene): ``groups_per_object``, the final groups holding at least 10 %
of the object's pixels (compactness: 1 is one group per object, more are redundant groups), and
``object_in_one_group``, the largest share of the object's pixels in one group (completeness; the group oracle is
the image-level one).
Where the reference's rule errs, at its threshold (0.95): ``false_object_pixels_per_object_pixel``, the background
pixels it names a class per object pixel of the scenes; ``false_object_share_in_background_groups``,
the share of those in final groups most of whose pixels are background (an object named with the background it
shares a group with); ``object_pixels_missed``, the object pixels it calls background.
``--kmeans K``: could these features be grouped at all? The group oracle of K-means clusters (K groups, 20 Lloyd
steps from K tokens drawn with seed 0) of each image's first-stage tokens as the first grouping block receives them
(``kmeans_oracle_features``) and of its patches' mean colours (``kmeans_oracle_colours``), next to the model's
own ``group_oracle_miou``: a features figure far above the model's says the tokens separate the objects and its
assignment does not.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpltool import io  # noqa: E402
from vpltool.config.pgseg import PGSEG_RECIPES  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.models.text import pgseg as fam  # noqa: E402
from vpltool.ops.kernels import MiouAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from benchlib import machine  # noqa: E402

OBJECT_SHARE = 0.1  # a group "covers" an object when it holds at least this share of the object's pixels


@torch.no_grad()
def group_stats(model: fam.PGSeg, data, n_images: int, short: int, background: list[str],
                thresholds: tuple[float, ...] = (fam.DEFAULT_BG_THRESH,)) -> dict[str, float]:
    largest, used, stage1, oracle = [], [], [], MiouAccumulator(len(data.classes))
    per_object, completeness, sharp = [], [], {}
    names = list(data.classes[1:])
    queries = fam.class_text_embeddings(model, fam.class_tokens([*names, *background], fam.tokenizer(model.cfg)))
    text = queries[:len(names)]  # [C, D]: the class names alone (the reference's queries)
    # '' / '_background' at the reference's threshold; '..._t0.5' at another --bg-thresh (chosen on train)
    tags = {t: "" if t == fam.DEFAULT_BG_THRESH else f"_t{t:g}" for t in thresholds}
    zero_shot = {f"{s}{tag}": MiouAccumulator(len(data.classes)) for tag in tags.values() for s in ("", "_background")}
    largest_bg = {"": MiouAccumulator(len(data.classes)), "_background": MiouAccumulator(len(data.classes))}
    top1, group_right, group_prob = [], [], []
    false_object = {"in_background_groups": 0, "in_object_groups": 0}
    object_pixels, object_missed = 0, 0
    scale = float(model.logit_scale.exp().clamp(max=100))
    for item in data.items[:n_images]:
        image, gt = io.load_image(item.image), io.read_mask(item.gt)
        h0, w0 = image.shape[:2]
        x = fam.image_tensor(image, short)
        feats = model.image_features(x)
        present = set(np.unique(gt).tolist()) - {0, 255}
        if present:  # the class of the best-matching name is in the scene
            top1.append(int((F.normalize(feats["pooled"], dim=-1)[0] @ text.T).argmax()) + 1 in present)
        combined = model.combine_maps(feats["stages"])[0]  # [h*w, G]
        groups = combined.argmax(-1)
        counts = torch.bincount(groups, minlength=combined.shape[-1])
        largest.append(counts.max().item() / groups.numel())
        used.append(int((counts > 0).sum()))
        for i, stage in enumerate(s for s in feats["stages"] if s["maps"] is not None):
            sharp.setdefault(i, []).append(stage["maps"]["soft"][0, 0].max(0).values.mean().item())
        first = feats["stages"][0]["maps"]["soft"][0, 0].argmax(0)  # [G1, L] -> each patch's stage-1 group
        stage1.append(torch.bincount(first).max().item() / first.numel())
        p = model.cfg.patch_size
        maps = combined.T.reshape(1, -1, x.shape[-2] // p, x.shape[-1] // p)
        pixel_group = F.interpolate(maps, size=(h0, w0), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        pred = np.zeros_like(gt)
        background_share = np.zeros(combined.shape[-1])  # per final group: its pixels' share of background
        group_text = F.normalize(feats["groups"][0], dim=-1) @ text.T  # [G, C]: each final group's class cosines
        for g in np.unique(pixel_group):
            holds = np.bincount(gt[pixel_group == g], minlength=len(names) + 1) / (pixel_group == g).sum()
            pred[pixel_group == g] = holds.argmax()
            background_share[g] = holds[0]
            if holds.argmax() not in (0, 255) and holds.max() > 0.5:  # an object's group: is it named right?
                group_right.append(int(group_text[g].argmax()) + 1 == holds.argmax())
                group_prob.append(float((group_text[g] * scale).softmax(-1).max()))
        oracle.add(gt, pred)
        for c in present:  # NPR's claims, per object: compact (few groups share it), complete (one group holds it)
            shares = np.bincount(pixel_group[gt == c]) / (gt == c).sum()
            per_object.append(int((shares >= OBJECT_SHARE).sum()))
            completeness.append(float(shares.max()))
        for (suffix, emb), (t, tag) in itertools.product((("", text), ("_background", queries)), tags.items()):
            logits = F.interpolate(fam.zero_shot_logits(model, x, emb, t), size=(h0, w0), mode="bilinear",
                                   align_corners=False)[0].argmax(0)  # `segment --pgseg`'s labels, whole image
            logits[logits > len(names)] = 0  # a background word's pixels
            zero_shot[suffix + tag].add(gt, logits.to(torch.uint8).numpy())
            if suffix == "" and tag == "":  # where the reference's rule calls background an object
                labels = logits.numpy()
                wrong = (gt == 0) & (labels > 0) & (labels <= len(names))
                in_bg = int((wrong & (background_share > 0.5)[pixel_group]).sum())
                false_object["in_background_groups"] += in_bg
                false_object["in_object_groups"] += int(wrong.sum()) - in_bg
                objects = (gt > 0) & (gt != 255)
                object_pixels += int(objects.sum())
                object_missed += int((objects & (labels == 0)).sum())
            if tag == "":  # a diagnosis, no inference rule: the same labels with the largest group's pixels background
                logits[torch.from_numpy(pixel_group == int(counts.argmax()))] = 0
                largest_bg[suffix].add(gt, logits.to(torch.uint8).numpy())
    return {"largest_final_group_share": statistics.fmean(largest), "final_groups_used": statistics.fmean(used),
            "largest_stage1_group_share": statistics.fmean(stage1), "group_oracle_miou": oracle.result()["miou"],
            "pooled_top1_in_scene": statistics.fmean(top1), "logit_scale": scale,
            "object_groups_per_image": len(group_right) / n_images,
            "object_group_named_right": statistics.fmean(group_right) if group_right else None,
            "object_group_top_probability": statistics.fmean(group_prob) if group_prob else None,
            "groups_per_object": statistics.fmean(per_object), "object_in_one_group": statistics.fmean(completeness),
            **{f"stage{i + 1}_assignment_max": statistics.fmean(v) for i, v in sharp.items()},
            # the reference's rule's false objects: background pixels named a class, per object pixel, and the
            # share of them in groups most of whose pixels are background; the object pixels it calls background
            "false_object_pixels_per_object_pixel": sum(false_object.values()) / max(object_pixels, 1),
            "false_object_share_in_background_groups":
                false_object["in_background_groups"] / max(sum(false_object.values()), 1),
            "object_pixels_missed": object_missed / max(object_pixels, 1),
            **{f"zero_shot_miou{k}": acc.result()["miou"] for k, acc in zero_shot.items()},
            **{f"largest_group_background_miou{k}": acc.result()["miou"] for k, acc in largest_bg.items()}}


def kmeans(x: torch.Tensor, k: int, steps: int = 20, seed: int = 0) -> torch.Tensor:
    """``[N, C]`` float -> ``[N]`` int64 cluster of each row (Lloyd's steps from ``k`` rows drawn at ``seed``)."""
    centres = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]].clone()
    for _ in range(steps):
        near = torch.cdist(x, centres).argmin(1)
        for j in range(len(centres)):
            if (near == j).any():
                centres[j] = x[near == j].mean(0)
    return torch.cdist(x, centres).argmin(1)


@torch.no_grad()
def kmeans_oracles(model: fam.PGSeg, data, n_images: int, short: int, k: int) -> dict[str, float]:
    """The group oracle of ``k``-means on the first grouping block's input tokens and on the patch colours."""
    seen: dict[str, torch.Tensor] = {}
    hook = model.img_encoder.layers[0].downsample.register_forward_hook(
        lambda module, inputs, output: seen.__setitem__("tokens", inputs[0]))
    acc = {name: MiouAccumulator(len(data.classes)) for name in ("features", "colours")}
    p = model.cfg.patch_size
    try:
        for item in data.items[:n_images]:
            image, gt = io.load_image(item.image), io.read_mask(item.gt)
            x = fam.image_tensor(image, short)
            model.image_features(x)
            h, w = x.shape[-2] // p, x.shape[-1] // p
            colours = F.avg_pool2d(x, p)[0].flatten(1).T  # [h*w, 3]
            for name, tokens in (("features", seen["tokens"][0]), ("colours", colours)):
                groups = F.one_hot(kmeans(tokens, k), k).T.float().reshape(1, k, h, w)
                pixel = F.interpolate(groups, size=gt.shape, mode="nearest")[0].argmax(0).numpy()
                pred = np.zeros_like(gt)
                for g in np.unique(pixel):
                    pred[pixel == g] = np.bincount(gt[pixel == g], minlength=len(data.classes) + 1)[:256].argmax()
                acc[name].add(gt, pred)
    finally:
        hook.remove()
    return {f"kmeans_oracle_{name}": a.result()["miou"] for name, a in acc.items()}


def load_any(path: Path) -> fam.PGSeg:
    """A `train-pgseg` model file, or one of its run's checkpoints (``checkpoints/last.safetensors``, kind
    ``pgseg-checkpoint``, copied as training goes: the proxies along one run)."""
    try:
        return fam.load_pgseg(path)
    except Exception:  # not the family's file: a training checkpoint (its model config in the header)
        state, _, f = io.read_checkpoint(path, kind="pgseg-checkpoint")
        return fam.model_from_state(fam.PGSegConfig.from_dict(f.meta("model_config")), state, str(path)).frozen()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--models", type=Path, nargs="*", default=[])
    ap.add_argument("--untrained", action="store_true")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--background", default="grass,sky,wall,water", help="background words (zero_shot_miou_background)")
    ap.add_argument("--bg-thresh", default=str(fam.DEFAULT_BG_THRESH),
                    help="segment --pgseg's background thresholds, comma-separated (each scored)")
    ap.add_argument("--kmeans", type=int, default=0, help="K: the group oracle of K-means on the first grouping "
                    "block's tokens and on the patch colours (0: not measured)")
    ap.add_argument("--short-side", type=int, default=PGSEG_RECIPES["cpu"]["crop_size"])
    args = ap.parse_args()
    torch.manual_seed(0)
    data = open_dataset(args.world, "train")
    all_bg = MiouAccumulator(len(data.classes))
    in_scene = []
    for item in data.items[:args.images]:
        gt = io.read_mask(item.gt)
        all_bg.add(gt, np.zeros_like(gt))
        present = set(np.unique(gt).tolist()) - {0, 255}
        if present:
            in_scene.append(len(present) / (len(data.classes) - 1))
    thresholds = tuple(float(t) for t in args.bg_thresh.split(","))
    words = [w.strip() for w in args.background.split(",") if w.strip()]
    rows = {}
    if args.untrained:
        crop = PGSEG_RECIPES["cpu"]["crop_size"]
        model = fam.build_model(fam.tiny_config(img_size=crop, npr=False), seed=0).frozen()
        rows["untrained (seed 0)"] = group_stats(model, data, args.images, args.short_side, words, thresholds)
        if args.kmeans:
            rows["untrained (seed 0)"].update(kmeans_oracles(model, data, args.images, args.short_side, args.kmeans))
    for path in args.models:
        model = load_any(path)
        rows[str(path)] = group_stats(model, data, args.images, args.short_side, words, thresholds)
        if args.kmeans:
            rows[str(path)].update(kmeans_oracles(model, data, args.images, args.short_side, args.kmeans))
    print(json.dumps({"command": " ".join(["python", "studies/study_pgseg_groups.py", *sys.argv[1:]]),
                      "split": "train", "images": args.images, "short_side": args.short_side,
                      "background": words, "bg_thresh": thresholds,
                      "all_background_miou": all_bg.result()["miou"],
                      "chance_top1_in_scene": statistics.fmean(in_scene), "models": rows, "machine": machine("cpu")},
                     indent=1))


if __name__ == "__main__":
    main()

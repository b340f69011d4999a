"""Attention affinity of the toy study: does CAA's affinity keep a patch's mass inside its own object?

    python studies/attention_affinity.py DATA [--split train] [--model vpltool-toy] [--blocks 8 1]
        [--dino-model test_vit --dino-weights FILE] [--images N] [--json OUT]

For every image of ``DATA``'s split (a `make-world` folder, or any dataset with ground-truth masks) and each
affinity asked for, CAA's transition matrix ``T`` (:func:`vpltool.stages.cam.caa.affinity`: the head-mean attention
averaged over the last ``blocks`` blocks, CLS removed, then CLIP-ES's three Sinkhorn normalisations, symmetrisation and
square) is compared with the ground truth on the patch grid (each patch labelled by its majority GT class,
:func:`vpltool.stages.cam.sgc.patch_majority`; a region = one class present, or the background):

* ``own``: the share of a patch's affinity mass on patches of its own region
  (:func:`vpltool.stages.cam.caa.affinity_share`);
* ``chance``: that region's share of the image's patches, what an affinity blind to regions gives;
* both averaged over all patches, over object patches only (the ones CAA must keep from leaking into the
  background) and over background patches, and ``lift = own / chance`` over object patches.

Affinities: ``clip-B`` (the CLIP model's own attention over its last B blocks, as `extract --attention-blocks B`
records it) and, with ``--dino-model``, ``dino-B`` (:class:`vpltool.models.DinoBackbone`'s attention on the same
grid, as `cam --affinity dino` builds it) and ``clip+dino-B`` (mixed 0.4 : 0.6, `--affinity clip+dino`'s default).
``blur-3x3`` is no model: each patch attends evenly to its 3x3 neighbourhood, a pure spatial blur for contrast.
Nothing is learned or chosen here; run it on the TRAIN split to choose toys.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vpltool.config import CamConfig
from vpltool.data import open_dataset
from vpltool.io import load_image, read_mask
from vpltool.models import DinoSpec, ModelSpec, load_backbone, load_dino
from vpltool.stages.cam import affinity, affinity_share, mean_attention, patch_majority


class _Tally:
    """Per-patch own shares and chances of one affinity, split into object and background patches."""

    def __init__(self) -> None:
        self.own: dict[str, list[np.ndarray]] = {"all": [], "object": [], "background": []}
        self.chance: dict[str, list[np.ndarray]] = {"all": [], "object": [], "background": []}

    def add(self, own: torch.Tensor, chance: torch.Tensor, regions: np.ndarray) -> None:
        obj = regions > 0
        for key, keep in (("all", np.ones_like(obj)), ("object", obj), ("background", ~obj)):
            self.own[key].append(own.numpy()[keep])
            self.chance[key].append(chance.numpy()[keep])

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in self.own:
            own, chance = np.concatenate(self.own[key]), np.concatenate(self.chance[key])
            out[f"own_{key}"] = round(float(own.mean()), 4) if len(own) else float("nan")
            out[f"chance_{key}"] = round(float(chance.mean()), 4) if len(chance) else float("nan")
        out["lift_object"] = round(out["own_object"] / out["chance_object"], 3)
        return out


@torch.no_grad()
def clip_attention(bb, image: np.ndarray, blocks: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[hw, hw]`` head-mean attention of the last ``blocks`` blocks (CLS removed), as `cam` averages it."""
    size = bb.input_size(*image.shape[:2])
    tokens, prev, grid = bb.frozen_pass(bb.preprocess(image, size)[None], blocks)
    _, attn_last, _ = bb.block(bb.n_blocks - 1, tokens, grid, need_weights=True)
    n_prev = min(blocks, bb.n_blocks) - 1
    return mean_attention(prev[0], n_prev, attn_last[0].float(), blocks, bb.n_blocks), grid


def blur_attention(grid: tuple[int, int], size: int = 3) -> torch.Tensor:
    """``[hw, hw]``: every patch attends evenly to its ``size x size`` neighbourhood (a pure spatial blur)."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None, :]).abs() <= size // 2) & ((xs[:, None] - xs[None, :]).abs() <= size // 2)
    return near.float() / near.sum(1, keepdim=True)


def measure(data: Path, split: str, model: ModelSpec, blocks: list[int], dino: DinoSpec | None,
            n_images: int | None, weight: float) -> dict:
    """Every affinity's figures over the split's labelled images (see the module docstring)."""
    bb = load_backbone(model)
    db = load_dino(dino) if dino is not None else None
    items = [it for it in open_dataset(data, split).items if it.gt is not None][:n_images]
    tallies: dict[str, _Tally] = {}
    for item in items:
        image = load_image(item.image)
        gt = read_mask(item.gt)
        for b in blocks:
            att, grid = clip_attention(bb, image, b)
            regions = patch_majority(np.where(gt == 255, 0, gt), grid)
            named = {f"clip-{b}": att}
            if db is not None:
                att_dino = db.attention(image, grid, b).to(att)
                named[f"dino-{b}"] = att_dino
                named[f"clip+dino-{b}"] = weight * att + (1 - weight) * att_dino
            if b == blocks[0]:  # no model: a 3x3 box blur, what windowed attention alone would give
                named["blur-3x3"] = blur_attention(grid)
            for name, a in named.items():
                tallies.setdefault(name, _Tally()).add(*affinity_share(affinity(a), regions), regions)
    return {"data": str(data), "split": split, "model": f"{model.model}/{model.pretrained}",
            "dino": None if dino is None else f"{dino.model}/{dino.weights}", "images": len(items),
            "affinities": {name: t.result() for name, t in tallies.items()}}


def render(result: dict) -> str:
    head = ("affinity", "own, objects", "chance, objects", "lift", "own, background", "chance, background",
            "own, all", "chance, all")
    lines = [f"{result['images']} {result['split']} images; model {result['model']}; DINO {result['dino']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["affinities"].items():
        cells = [name, *(f"{100 * r[k]:.1f}" for k in ("own_object", "chance_object")), f"{r['lift_object']:.2f}",
                 *(f"{100 * r[k]:.1f}" for k in ("own_background", "chance_background", "own_all", "chance_all"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a dataset with ground-truth masks (a make-world folder)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--model", default="vpltool-toy")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--blocks", type=int, nargs="+", default=[8, 1], help="attention blocks averaged (extract's)")
    ap.add_argument("--dino-model", help="a timm ViT name (--affinity dino); none: CLIP's attention only")
    ap.add_argument("--dino-weights", default="hub")
    ap.add_argument("--weight", type=float, default=CamConfig.affinity_weight, help="clip+dino: CLIP's share")
    ap.add_argument("--images", type=int, help="only the first N images")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dino = DinoSpec(args.dino_model, args.dino_weights) if args.dino_model else None
    result = measure(args.data, args.split, ModelSpec(model=args.model, pretrained=args.pretrained), args.blocks,
                     dino, args.images, args.weight)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    print(render(result), file=sys.stderr)


if __name__ == "__main__":
    main()

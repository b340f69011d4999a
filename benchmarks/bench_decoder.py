"""Decoder training throughput on CPU: frozen CLIP on the fly vs ``--cache-features``.

Builds a small demo world, uses its GT masks as pseudo masks and text prototypes of the model, then times the
same number of iterations twice (one process, no validation). Model loading is excluded; the cache's one-off
build time is reported on its own. Prints one JSON object.

    python benchmarks/bench_decoder.py [--model vpltool-toy|vpl-test-vit|ViT-B-16] [--iters 60] [--images 24]
                                       [--crop-size 96] [--dim 64 --layers 1 --heads 4]

The speed-up is (CLIP forward + image decoding + decoder step) / decoder step, so it depends on the ratio of
backbone to decoder: docs/decoder.md lists runs with the toy CLIP and with a (random) ViT-B/16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "model_configs"
os.environ.setdefault("VPLTOOL_MODEL_CONFIGS", str(ASSETS))

import torch  # noqa: E402

from vpltool import io  # noqa: E402
from vpltool.backbone import TOY_DIR, TOY_MODEL, ModelSpec, load_backbone  # noqa: E402
from vpltool.config import DecoderConfig, RuntimeConfig, TextPrototypesConfig  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.demo.scenes import BACKGROUNDS, write_dataset  # noqa: E402
from vpltool.text_prototypes import build_text_prototypes  # noqa: E402
from vpltool.train import run_train_decoder  # noqa: E402


def default_model() -> str:
    """The toy CLIP when its weights are shipped, else the random tiny test ViT."""
    return TOY_MODEL if (TOY_DIR / "open_clip_config.json").is_file() else "vpl-test-vit"


def make_inputs(tmp: Path, n: int, spec: ModelSpec, bb) -> tuple[Path, Path]:
    """A world's train split with GT masks as a `crf` folder, and text prototypes of its classes."""
    world = write_dataset(tmp / "world", n_train=n, n_val=1, seed=0)
    dataset = open_dataset(world, "train")
    pseudo = tmp / "pseudo"
    pseudo.mkdir()
    for item in dataset.items:
        shutil.copy(item.gt, pseudo / f"{item.id}.png")
    io.write_stage_record(pseudo, "crf", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items))
    cfg = TextPrototypesConfig(templates="a photo of a {}.", background=",".join(BACKGROUNDS))
    io.write_prototypes(tmp / "protos.safetensors", build_text_prototypes(bb, dataset.classes, cfg))
    return pseudo, tmp / "protos.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=DecoderConfig.batch_size)
    ap.add_argument("--crop-size", type=int, default=None, help="default: the demo world's 96 px (a patch multiple)")
    # a decoder sized for the toy CLIP (width 128); the paper's WeCLIP decoder is --dim 256 --layers 3 --heads 8
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()

    spec = ModelSpec(args.model, "none", config_dir=str(ASSETS))
    bb = load_backbone(spec, "cpu")
    crop = args.crop_size or bb.input_size(96, 96)[0]  # the demo world's 96 px, rounded up to the patch size
    cfg = DecoderConfig(dim=args.dim, layers=args.layers, heads=args.heads, crop_size=crop, batch_size=args.batch_size,
                        iters=args.iters, log_every=args.iters, checkpoint_every=args.iters)
    runtime = RuntimeConfig(device="cpu", workers=args.workers)
    result = {"benchmark": "decoder", "model": args.model, "weights": "random" if args.model != TOY_MODEL else "toy",
              "device": "cpu", "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or "unknown",
              "images": args.images, "config": {k: asdict(cfg)[k] for k in ("dim", "layers", "heads", "crop_size",
                                                                           "batch_size", "iters")}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pseudo, protos = make_inputs(tmp, args.images, spec, bb)
        runs = {}
        for name, cache in (("on_the_fly", False), ("cached", True)):
            cfg_run = DecoderConfig(**{**asdict(cfg), "cache_features": cache})
            runs[name] = run_train_decoder(pseudo, protos, tmp / name, cfg_run, runtime, backbone=bb)
    fly, cached = runs["on_the_fly"], runs["cached"]
    result.update({
        "on_the_fly_iters_per_s": round(fly.iters_per_s, 2),
        "cached_iters_per_s": round(cached.iters_per_s, 2),
        "speedup": round(cached.iters_per_s / fly.iters_per_s, 2),
        "cache_build_s": round(cached.cache_seconds, 2),
        "note": "iterations/s of the training loop only; cache_build_s is paid once per run",
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()

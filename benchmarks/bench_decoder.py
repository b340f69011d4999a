"""Decoder training throughput: frozen CLIP on the fly vs ``--cache-features``.

Builds a small demo world, uses its GT masks as pseudo masks and text prototypes of the model, then times the
same number of iterations twice (one process, no validation). Model loading is excluded; the cache's one-off
build time is reported on its own. Prints one JSON object, with the machine and the peak memory of each of the two
runs (host RSS; on CUDA also the allocator's peak; the cached run's includes its cache).

    python benchmarks/bench_decoder.py [--model vpltool-toy|vpl-test-vit|ViT-B-16] [--iters 60] [--images 24]
                                       [--crop-size 96] [--dim 64 --layers 1 --heads 4] [--device cpu|cuda] [--quick]

The speed-up is (CLIP forward + image decoding + decoder step) / decoder step, so it depends on the ratio of
backbone to decoder: docs/decoder.md lists runs with the toy CLIP and with a (random) ViT-B/16.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "model_configs"
os.environ.setdefault("VPLTOOL_MODEL_CONFIGS", str(ASSETS))

from vpltool import io  # noqa: E402
from vpltool.backbone import ModelSpec, load_backbone  # noqa: E402
from vpltool.config import DecoderConfig, RuntimeConfig, TextPrototypesConfig  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.demo import TOY_DIR, TOY_MODEL  # noqa: E402
from vpltool.demo.make_world import write_dataset  # noqa: E402
from vpltool.demo.scenes import BACKGROUNDS  # noqa: E402
from vpltool.text_prototypes import build_text_prototypes  # noqa: E402
from vpltool.train_decoder import run_train_decoder  # noqa: E402

import benchlib  # noqa: E402
from benchlib import PeakMemory, machine  # noqa: E402

# --quick: a smoke test of the script, not a measurement
QUICK = {"model": "vpl-test-vit", "images": 4, "iters": 3, "batch_size": 2}


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    benchlib.add_common_args(ap, f"{QUICK['images']} images, {QUICK['iters']} iterations, batch "
                                 f"{QUICK['batch_size']}, the tiny random {QUICK['model']} (seconds)")
    return benchlib.apply_quick(ap.parse_args(argv), QUICK)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spec = ModelSpec(args.model, "none", config_dir=str(ASSETS))
    bb = load_backbone(spec, args.device)
    crop = args.crop_size or bb.input_size(96, 96)[0]  # the demo world's 96 px, rounded up to the patch size
    cfg = DecoderConfig(dim=args.dim, layers=args.layers, heads=args.heads, crop_size=crop, batch_size=args.batch_size,
                        iters=args.iters, log_every=args.iters, checkpoint_every=args.iters)
    runtime = RuntimeConfig(device=args.device, workers=args.workers)
    result = {"benchmark": "decoder", "quick": args.quick, "model": args.model,
              "weights": "random" if args.model != TOY_MODEL else "toy", "device": args.device,
              "machine": machine(args.device), "images": args.images,
              "config": {k: asdict(cfg)[k] for k in ("dim", "layers", "heads", "crop_size", "batch_size", "iters")}}
    peaks = PeakMemory(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pseudo, protos = make_inputs(tmp, args.images, spec, bb)
        runs = {}
        for name, cache in (("on_the_fly", False), ("cached", True)):
            cfg_run = DecoderConfig(**{**asdict(cfg), "cache_features": cache})
            with peaks.stage(f"train-decoder, {name.replace('_', ' ')}"):
                runs[name] = run_train_decoder(pseudo, protos, tmp / name, cfg_run, runtime, backbone=bb)
    fly, cached = runs["on_the_fly"], runs["cached"]
    result.update({
        "on_the_fly_iters_per_s": round(fly.iters_per_s, 2),
        "cached_iters_per_s": round(cached.iters_per_s, 2),
        "speedup": round(cached.iters_per_s / fly.iters_per_s, 2),
        "cache_build_s": round(cached.cache_seconds, 2),
        "note": "iterations/s of the training loop only; cache_build_s is paid once per run",
        "peak_memory": peaks.as_list(),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()

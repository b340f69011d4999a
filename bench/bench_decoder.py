"""Decoder training throughput; prints ONE JSON object. Three modes:

``--mode demo`` (default): frozen CLIP on the fly vs ``--cache-features`` on a small demo world (GT masks as pseudo
masks, text prototypes of the model), the same number of iterations twice (one process, no validation). Model
loading is excluded; the cache's one-off build time is reported on its own. The speed-up is (CLIP forward + image
decoding + decoder step) / decoder step, so it depends on the ratio of backbone to decoder: docs/decoder.md lists
runs with the toy CLIP and with a (random) ViT-B/16.

``--mode paper``: the paper's recipe (crop 320, batch 6, the 3-layer 256-d decoder, SGD) on ``--images`` VOC-sized
photos (bench_cam.py's 12 scikit-image photos, cycled, with synthetic pseudo masks of their VOC labels) and a
random ``--model`` (default ViT-B-16-quickgelu), ``--workers`` auto; the steady-state iterations/s come from the
run's own log lines (each written after a read of the device) from ``--warmup`` on. Issue 28's bar: >= 100 it/s on
one H100.

``--mode host``: the host's work per iteration (:func:`host_cost`), with a stand-in that costs nothing: the paper's
op graph (a 12-block ViT with patch 16, the 3-layer decoder with 8 heads, VOC's 20 classes) at width 16 on 64-px
crops: CPU-ms of the training loop's thread per iteration (loading in worker processes), and CPU-ms of one augmented
320-px view in a loading worker. Also the CE's upsampling at the paper's shapes (``[6, 21, 20, 20]`` scores to
320 x 320), forward and backward, ``F.interpolate`` against the two matrix products train-decoder uses
(:func:`upsample_cost`, alternating pairs, 1 thread).

    python bench/bench_decoder.py [--model vpltool-toy|vpl-test-vit|ViT-B-16] [--iters 60] [--images 24]
                                       [--crop-size 96] [--dim 64 --layers 1 --heads 4] [--device cpu|cuda] [--quick]
    python bench/bench_decoder.py --mode paper --device cuda --iters 600        # ~2 min on one GPU
    python bench/bench_decoder.py --mode host [--iters 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "model_configs"
os.environ.setdefault("VPLTOOL_MODEL_CONFIGS", str(ASSETS))

from vpltool import io  # noqa: E402
from vpltool.config import DecoderConfig, RuntimeConfig, TextPrototypesConfig  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.demo import TOY_DIR, TOY_MODEL  # noqa: E402
from vpltool.demo.make_world import write_dataset  # noqa: E402
from vpltool.demo.scenes import BACKGROUNDS  # noqa: E402
from vpltool.models import ModelSpec, load_backbone  # noqa: E402
from vpltool.runtime.numerics import run_numerics  # noqa: E402
from vpltool.stages.text_prototypes import build_text_prototypes  # noqa: E402
from vpltool.stages.train_decoder import run_train_decoder  # noqa: E402

import benchlib  # noqa: E402
from benchlib import PeakMemory, machine  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_cam import make_voc  # noqa: E402

# --quick: a smoke test of the script, not a measurement
QUICK = {"model": "vpl-test-vit", "images": 4, "iters": 3, "batch_size": 2}
QUICK_PAPER = {"model": "vpl-test-vit", "images": 6, "iters": 4, "warmup": 1, "crop_size": 64}
PAPER_MODEL = "ViT-B-16-quickgelu"
# the stand-in of --mode host: ViT-B/16's depth and patch, nothing else (its forward costs next to nothing)
STAND_IN = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "layers": 12, "width": 16, "head_width": 8,
                                            "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


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
    io.write_stage_record(pseudo, "crf", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=run_numerics())
    cfg = TextPrototypesConfig(templates="a photo of a {}.", background=",".join(BACKGROUNDS))
    io.write_prototypes(tmp / "protos.safetensors", build_text_prototypes(bb, dataset.classes, cfg))
    return pseudo, tmp / "protos.safetensors"


def make_voc_inputs(tmp: Path, n: int, spec: ModelSpec, bb, scale: float = 1.0) -> tuple[Path, Path]:
    """A VOC root of ``n`` photos (:func:`bench_cam.make_voc`) with a `crf` folder of synthetic pseudo masks (each
    label an ellipse, a ring of 255 around it, background elsewhere), and text prototypes of VOC's classes."""
    voc = make_voc(tmp / "voc", n, scale)
    dataset = open_dataset(voc, "train")
    pseudo = tmp / "pseudo"
    pseudo.mkdir()
    for k, item in enumerate(dataset.items):
        h, w = io.image_size(item.image)
        mask = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[:h, :w]
        for j, label in enumerate(item.labels):
            cy, cx = h * (0.35 + 0.3 * j), w * (0.3 + 0.4 * ((k + j) % 2))
            r = ((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.25 * w)) ** 2
            mask[(r < 1.2) & (r >= 1)] = 255
            mask[r < 1] = label
        io.write_mask(pseudo / f"{item.id}.png", mask)
    io.write_stage_record(pseudo, "crf", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=run_numerics())
    cfg = TextPrototypesConfig(templates="clip-es", background="voc")
    io.write_prototypes(tmp / "protos.safetensors", build_text_prototypes(bb, dataset.classes, cfg))
    return pseudo, tmp / "protos.safetensors"


def paper_config(iters: int, crop: int | None = None) -> DecoderConfig:
    """The paper's recipe (DecoderConfig's defaults) for ``iters`` iterations: a log line every 20, one checkpoint."""
    return DecoderConfig(iters=iters, checkpoint_every=iters, crop_size=crop or DecoderConfig.crop_size)


def steady_iters_per_s(log_path: Path, warmup: int) -> float | None:
    """Iterations/s between the first log line at or after ``warmup`` and the last one (each line is written after
    the loop read the device, so the interval holds the device's work)."""
    lines = [r for r in io.read_log(log_path) if "sec" in r]
    after = [r for r in lines if r["iter"] >= warmup]
    if len(after) < 2:
        return None
    first, last = after[0], after[-1]
    return round((last["iter"] - first["iter"]) / (last["sec"] - first["sec"]), 2)


def run_paper(args) -> dict:
    """One run of the paper's recipe per ``--compile`` mode, on the same inputs and backbone."""
    spec = ModelSpec(args.model, "none", config_dir=str(ASSETS))
    bb = load_backbone(spec, args.device)
    cfg = paper_config(args.iters, args.crop_size)
    runtime = RuntimeConfig(device=args.device, workers=args.workers)
    peaks, runs = PeakMemory(args.device), {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pseudo, protos = make_voc_inputs(tmp, args.images, spec, bb, 0.25 if args.quick else 1.0)
        for mode in args.compile.split(","):
            with peaks.stage(f"train-decoder, paper recipe, --compile {mode}"):
                summary = run_train_decoder(pseudo, protos, tmp / mode, replace(cfg, compile=mode), runtime,
                                            backbone=bb)
            steady = steady_iters_per_s(tmp / mode / "log.jsonl", args.warmup)
            runs[mode] = {"steady_iters_per_s": steady, "loop_iters_per_s": round(summary.iters_per_s, 2),
                          "loop_seconds": round(summary.seconds, 1),
                          "minutes_for_30000_iters": round(30000 / steady / 60, 1) if steady else None}
    return {"benchmark": "decoder-paper", "quick": args.quick, "model": args.model, "weights": "random",
            "device": args.device, "machine": machine(args.device), "images": args.images,
            "workers": runtime.loader_workers(torch.device(args.device)),
            "config": {k: asdict(cfg)[k] for k in ("dim", "layers", "heads", "crop_size", "batch_size", "iters",
                                                   "optimizer")},
            "warmup_iters": args.warmup, "bar_iters_per_s": 100, "compile": runs,
            "note": "steady state from the run's log lines (from --warmup on: compiling, the loader's start-up left "
                    "out); loop_iters_per_s is the whole loop",
            "peak_memory": peaks.as_list()}


class OpCounter(TorchDispatchMode):
    """Counts every op the calling thread dispatches (``n``): on a GPU each costs the host a few microseconds
    (most launch a kernel), whatever the tensors' size."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _op_parts(bb, protos: Path, cfg: DecoderConfig) -> dict:
    """Ops dispatched by the two parts of a step, on one stand-in batch: the frozen tower's forward and the
    decoder's forward, losses and backward."""
    from vpltool.decoder import SegDecoder, block_features, feature_blocks
    from vpltool.stages.train_decoder import compute_losses

    w = io.read_prototypes(protos)
    blocks = feature_blocks(bb.n_blocks, cfg.include_last_block)
    model = SegDecoder(cfg, in_width=bb.width, n_inputs=len(blocks), prototypes=w.vectors, row_class=w.row_class,
                       temperature=w.temperature)
    pixels = torch.randn(cfg.batch_size, 3, cfg.crop_size, cfg.crop_size)
    target = torch.randint(0, model.n_classes, (cfg.batch_size, cfg.crop_size, cfg.crop_size))
    with OpCounter() as frozen:
        feats = block_features(bb, pixels, blocks)
    with OpCounter() as step:
        compute_losses(model, feats, target, cfg)["loss"].backward()
    return {"ops_frozen_forward": frozen.n, "ops_decoder_forward_losses_backward": step.n}


def host_cost(iters: int = 60, images: int = 24, warmup: int = 10, quick: bool = False) -> dict:
    """The host's work of train-decoder's paper recipe with a model that costs nothing, on this CPU.

    Returns ``ops_per_iter`` (ops the loop's thread dispatches per iteration: the host cost on a GPU, in units
    independent of this CPU's speed and load), ``main_ms_per_iter`` (CPU-ms of the training loop's thread per
    iteration from ``warmup`` on: taking the batch, normalising, dispatching the stand-in CLIP, the decoder's
    forward and backward and the optimizer step, its reads every 20 iterations; the paper's op graph on tensors too
    small to cost anything, the views from 2 loading processes) and ``augment_ms_per_view`` (CPU-ms of one
    augmented view at the paper's 320-px crop in a loading process: decode, crop-first rescale, flip, pad) with what
    they imply:
    ``loading_cores_for_100_its`` = cores the augmentation needs to feed 100 it/s.
    """
    from vpltool.stages.train_decoder import PseudoMaskSet

    torch.set_num_threads(1)  # the tiny model's ops on the loop's own thread: what thread_time measures
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        configs = tmp / "configs"
        configs.mkdir()
        (configs / "vpl-stand-in.json").write_text(json.dumps(STAND_IN))
        spec = ModelSpec("vpl-stand-in", "none", config_dir=str(configs))
        bb = load_backbone(spec, "cpu")
        pseudo, protos = make_voc_inputs(tmp, images, spec, bb, 0.25 if quick else 1.0)
        cfg = replace(paper_config(iters, 64), dim=16)  # 8 heads of width 2 on 4x4 patches: the op graph alone
        runtime = RuntimeConfig(device="cpu", workers=2, precision="fp32")
        marks: dict[int, float] = {}
        run_train_decoder(pseudo, protos, tmp / "run", cfg, runtime,
                          on_iter=lambda n, record: marks.__setitem__(n, time.thread_time()))
        first = min(warmup, iters - 1)
        main_ms = (marks[iters] - marks[first]) / (iters - first) * 1e3
        counts: dict[int, int] = {}
        with OpCounter() as ops:  # a second, shorter run: the counting itself costs time
            run_train_decoder(pseudo, protos, tmp / "count", replace(cfg, iters=min(iters, 24)), runtime,
                              on_iter=lambda n, record: counts.__setitem__(n, ops.n))
        last = max(counts)
        ops_per_iter = (counts[last] - counts[first]) / (last - first) if last > first else None
        parts = _op_parts(bb, protos, cfg)
        items = open_dataset(pseudo.parent / "voc", "train").items
        data = PseudoMaskSet([(it.id, it.image, io.mask_path(pseudo, it.id)) for it in items], paper_config(iters))
        start, views = time.process_time(), max(12, 2 * images)
        for i in range(views):
            data[(i % len(data), i // len(data))]
        augment_ms = (time.process_time() - start) / views * 1e3
    return {"main_ms_per_iter": round(main_ms, 2), "augment_ms_per_view": round(augment_ms, 2),
            "ops_per_iter": ops_per_iter and round(ops_per_iter), **parts,
            "batch_size": cfg.batch_size, "crop_size_loop": cfg.crop_size,
            "crop_size_views": DecoderConfig.crop_size, "iters": iters, "warmup": first,
            "main_thread_bound_iters_per_s": round(1e3 / main_ms, 1),
            "loading_cores_for_100_its": round(100 * cfg.batch_size * augment_ms / 1e3, 2)}


def upsample_cost(pairs: int = 7, reps: int = 5, quick: bool = False) -> dict:
    """CPU-ms of the CE's upsampling, forward and backward, at the paper's shapes (batch 6, VOC's 21 scores on a
    20 x 20 grid to the 320-px crop): ``F.interpolate`` (bilinear, half-pixel centres) against
    :func:`vpltool.decoder.upsample_logits` (two matrix products), in alternating pairs on one thread; the medians
    and the median of the per-pair ratios."""
    import statistics

    import torch.nn.functional as F

    from vpltool.decoder import upsample_logits

    torch.set_num_threads(1)
    grid, crop = (5, 80) if quick else (20, 320)
    logits = torch.randn(6, 21, grid, grid, requires_grad=True)
    grad = torch.randn(6, 21, crop, crop)
    ways = {"interpolate": lambda: F.interpolate(logits, size=(crop, crop), mode="bilinear", align_corners=False),
            "products": lambda: upsample_logits(logits, (crop, crop))}

    def timed(fn) -> float:
        start = time.thread_time()
        for _ in range(reps):
            fn().backward(grad)
        return (time.thread_time() - start) / reps * 1e3

    for fn in ways.values():  # warm-up (and the products' cached weights)
        timed(fn)
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(1 if quick else pairs):
        for name, fn in ways.items():
            times[name].append(timed(fn))
    ratios = [p / i for p, i in zip(times["products"], times["interpolate"])]
    return {"upsample_fwd_bwd_ms": {k: round(statistics.median(v), 2) for k, v in times.items()},
            "upsample_products_vs_interpolate": round(statistics.median(ratios), 3),
            "upsample_shapes": f"[6, 21, {grid}, {grid}] -> {crop} x {crop}", "upsample_pairs": len(ratios)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("demo", "paper", "host"), default="demo")
    ap.add_argument("--model", default=None, help=f"default: the toy CLIP (demo), {PAPER_MODEL} (paper)")
    ap.add_argument("--images", type=int, default=None, help="default: 24 (demo, host), 120 (paper)")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=100, help="paper: iterations left out of the steady state")
    ap.add_argument("--batch-size", type=int, default=DecoderConfig.batch_size)
    ap.add_argument("--crop-size", type=int, default=None, help="default: the demo world's 96 px (a patch multiple); "
                    "paper: 320")
    # a decoder sized for the toy CLIP (width 128); the paper's WeCLIP decoder is --dim 256 --layers 3 --heads 8
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--workers", type=int, default=None, help="default: demo 0 (one per core), paper auto")
    ap.add_argument("--compile", default="none", help="paper: comma-separated --compile modes, one run each "
                    "(none, default, reduce-overhead)")
    benchlib.add_common_args(ap, f"{QUICK['images']} images, {QUICK['iters']} iterations, batch "
                                 f"{QUICK['batch_size']}, the tiny random {QUICK['model']} (seconds)")
    args = ap.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK if args.mode == "demo" else QUICK_PAPER)
        torch.set_num_threads(1)
    if args.model is None:
        args.model = PAPER_MODEL if args.mode == "paper" else default_model()
    if args.images is None:
        args.images = 120 if args.mode == "paper" else 24
    if args.workers is None and args.mode == "demo":
        args.workers = 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.mode == "paper":
        print(json.dumps(run_paper(args)))
        return
    if args.mode == "host":
        peaks = PeakMemory("cpu")
        with peaks.stage("the training loop with the stand-in, and the upsampling at the paper's shapes"):
            result = {**host_cost(args.iters, args.images, quick=args.quick), **upsample_cost(quick=args.quick)}
        print(json.dumps({"benchmark": "decoder-host", "quick": args.quick, "machine": machine("cpu"),
                          "model": "stand-in (ViT-B/16 depth and patch, width 16)", **result,
                          "peak_memory": peaks.as_list()}))
        return
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

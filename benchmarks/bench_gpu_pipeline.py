"""Every stage of a VOC-scale run, as the whole commands `make voc` runs, timed one by one; prints ONE JSON object.

    python benchmarks/bench_gpu_pipeline.py --device cuda                 # 10,582 VOC-sized photos, random ViT-B/16
    python benchmarks/bench_gpu_pipeline.py --device cuda --images 3000   # a shorter dry run
    python benchmarks/bench_gpu_pipeline.py --quick                       # a smoke test: tiny ViT, 6 small images

Set-up (not timed): ``--images`` photos cycling through bench_cam.py's 12 scikit-image photos (VOC sizes, 1-2 VOC
labels each) laid out as a VOC root, and random ``ViT-B-16-quickgelu`` weights (seed 0). Timed, each as its own
process: extract (light cache) -> text-prototypes -> cam (text) -> learn-prototypes (3000 iterations) -> cam
(vision) -> crf (``--backend auto``: the torch CRF on a GPU) -> train-decoder (``--decoder-iters``, the paper's
recipe) -> predict (the paper's views, no CRF, on ``--predict-images`` of them). Reported: seconds and img/s per
stage, the total, and the bars of issue 19 beside them. A GPU figure in the docs comes from this script's output on
a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_cam import ASSETS, make_voc, make_weights  # noqa: E402

import benchlib  # noqa: E402

QUICK = {"images": 6, "model": "vpl-test-vit", "decoder_iters": 2, "predict_images": 3}
BARS = {"extract_img_per_s": ">= 500 (steady state)", "cam_text_img_per_s": ">= 1000 (steady state, 3000 images)",
        "predict_img_per_s": ">= 100", "learn_prototypes_s": "<= 10 (1 M x 512)", "total_s": "<= 900 (with 300 "
        "decoder iterations, 10,582 images)"}


def vpltool(*args: object) -> list[str]:
    return [sys.executable, "-m", "vpltool", *map(str, args)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10582, help="VOC train_aug has 10,582")
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    ap.add_argument("--decoder-iters", type=int, default=300)
    ap.add_argument("--predict-images", type=int, default=1449, help="VOC val has 1,449")
    ap.add_argument("--workers", type=int, default=0, help="loading workers / CRF processes (0 = one per core)")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    benchlib.add_common_args(ap, f"{QUICK['images']} small images, the tiny random test ViT, 2 decoder iterations")
    args = benchlib.apply_quick(ap.parse_args(argv), QUICK)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run(args.keep, args)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_gpu_pipeline_") as tmp:
            result = run(Path(tmp), args)
    json.dump(result, sys.stdout)
    print()


def run(tmp: Path, args) -> dict:
    scale = 0.25 if args.quick else 1.0
    voc = make_voc(tmp / "voc", args.images, scale)
    _write_split(voc, "predict", args.predict_images)
    _, weights = make_weights(tmp, args.model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VPLTOOL_MODEL_CONFIGS": str(ASSETS), "PYTHONWARNINGS": "ignore"}
    run_on = ["--device", args.device, "--workers", args.workers]
    decoder = (["--iters", args.decoder_iters, "--batch-size", 2, "--dim", 16, "--layers", 1, "--heads", 2,
                "--crop-size", 64] if args.quick else ["--recipe", "vpl", "--iters", args.decoder_iters])
    stages = [
        ("extract", args.images, vpltool("extract", voc, "--split", "train", "-o", tmp / "features", "--model",
                                         args.model, "--pretrained", weights, *run_on)),
        ("text_prototypes", 0, vpltool("text-prototypes", tmp / "features", "-o", tmp / "text.safetensors",
                                       "--templates", "clip-es", "--background", "voc", "--device", args.device)),
        ("cam_text", args.images, vpltool("cam", tmp / "features", "-p", tmp / "text.safetensors", "-o",
                                          tmp / "cams_text", *run_on)),
        ("learn_prototypes", 0, vpltool("learn-prototypes", tmp / "features", "-c", tmp / "cams_text", "-t",
                                        tmp / "text.safetensors", "-o", tmp / "vision.safetensors", "--device",
                                        args.device)),
        ("cam_vision", args.images, vpltool("cam", tmp / "features", "-p", tmp / "vision.safetensors", "-o",
                                            tmp / "cams_vision", *run_on)),
        ("crf", args.images, vpltool("crf", tmp / "cams_vision", "-o", tmp / "pseudo", "--workers", args.workers)),
        ("train_decoder", 0, vpltool("train-decoder", tmp / "pseudo", "-p", tmp / "vision.safetensors", "-o",
                                     tmp / "decoder", "--device", args.device, *decoder)),
        ("predict", args.predict_images, vpltool("predict", tmp / "decoder" / "decoder.safetensors", "--split",
                                                 "predict", "-o", tmp / "pred", *run_on)),
    ]
    seconds, peaks = {}, {}
    for name, _, cmd in stages:
        seconds[name], peaks[name] = benchlib.run_child(cmd, env)
    rates = {f"{name}_img_per_s": round(n / seconds[name], 1) for name, n, _ in stages if n}
    return {
        "benchmark": "gpu-pipeline", "quick": args.quick, "machine": benchlib.machine(args.device),
        "model": args.model, "weights": "random (seed 0)", "images": args.images,
        "decoder_iters": args.decoder_iters, "predict_images": args.predict_images,
        "seconds": {k: round(v, 2) for k, v in seconds.items()}, **rates,
        "learn_prototypes_s": round(seconds["learn_prototypes"], 2), "total_s": round(sum(seconds.values()), 1),
        "note": "whole commands (start-up and model loading included): img/s here is below the steady state",
        "bars": BARS,
        "peak_memory": [{"stage": k, "rss_mib": round(v, 1), "cuda_mib": None, "scope": "process"}
                        for k, v in peaks.items()],
    }


def _write_split(voc: Path, name: str, n: int) -> None:
    """A split of the first ``n`` train ids (what predict runs on)."""
    split = voc / "ImageSets" / "Segmentation"
    ids = (split / "train.txt").read_text().split()[:n]
    (split / f"{name}.txt").write_text("\n".join(ids) + "\n")


if __name__ == "__main__":
    main()

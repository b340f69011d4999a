"""`train-decoder --recipe weclip` throughput on the demo world; prints ONE JSON object.

Each iteration runs the frozen CLIP, GradCAM of every image class, CAA / RFM propagation and PAR (20 rounds over
48 neighbours at full crop resolution) per crop, then the decoder step: far more work per iteration than the VPL
recipe's cached-feature decoder (`make demo`). Reports the training loop's iterations/s (model loading excluded:
TrainSummary.seconds), the process's CPU seconds per iteration, and PAR alone on one crop, with the machine's
load average (the numbers on a shared machine are pessimistic).

    python bench/bench_weclip.py [--iters 10] [--batch-size 16] [--crop-size 96] [--images 32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchlib import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()

    from vpltool.config import RuntimeConfig, TextPrototypesConfig, decoder_recipe
    from vpltool.data import open_dataset
    from vpltool.demo.make_world import write_dataset
    from vpltool.models import ModelSpec
    from vpltool.stages.text_prototypes import run_text_prototypes
    from vpltool.stages.train_decoder import run_train_decoder
    from vpltool.stages.train_decoder.online import par

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = write_dataset(root / "world", n_train=args.images, n_val=1, seed=0)
        spec = ModelSpec("vpltool-toy", "none")
        protos = root / "text.safetensors"
        classes = open_dataset(world, "train").classes
        run_text_prototypes(classes, protos, spec, TextPrototypesConfig(templates="a photo of a {}.",
                                                                        background="grass,sky,wall,water"),
                            device="cpu")
        cfg = replace(decoder_recipe("weclip", iters=args.iters, batch_size=args.batch_size,
                                     crop_size=args.crop_size, dim=64, layers=1, heads=4),
                      checkpoint_every=args.iters, log_every=args.iters)
        cpu0 = time.process_time()
        summary = run_train_decoder(world, protos, root / "decoder", cfg, RuntimeConfig(device="cpu", workers=1))
        cpu = time.process_time() - cpu0
    image, masks = torch.randn(1, 3, args.crop_size, args.crop_size), torch.rand(1, 3, args.crop_size,
                                                                                  args.crop_size)
    t0 = time.process_time()
    par(image, masks)
    par_cpu = time.process_time() - t0
    # a batch's PAR as online_masks runs it (one call), and the same crops one call each (the code before batching)
    images, batch = image.expand(args.batch_size, -1, -1, -1), masks.expand(args.batch_size, -1, -1, -1)
    t0 = time.process_time()
    par(images, batch)
    par_batch = time.process_time() - t0
    t0 = time.process_time()
    for b in range(args.batch_size):
        par(images[b:b + 1], batch[b:b + 1])
    par_crops = time.process_time() - t0
    print(json.dumps({
        "recipe": "weclip", "machine": machine("cpu"), "model": "vpltool-toy", "iters": args.iters,
        "batch_size": args.batch_size,
        "crop_size": args.crop_size, "decoder": "dim 64, 1 layer, 4 heads", "device": "cpu",
        "threads": torch.get_num_threads(), "iters_per_s": round(summary.iters_per_s, 4),
        "cpu_s_per_iter_incl_setup": round(cpu / args.iters, 3),
        "par_cpu_s_one_crop_3_maps": round(par_cpu, 3), "par_cpu_s_batch_one_call": round(par_batch, 3),
        "par_cpu_s_batch_crop_by_crop": round(par_crops, 3), "load_average": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()

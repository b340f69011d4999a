"""SAM 3's footprint in fp32 and with its weights held in bf16 (``--precision bf16``,
vpltool/models/backbones/sam3_half.py), on the CPU; prints ONE JSON object (and writes it with ``--out``).

    python bench/bench_sam3_footprint.py [--work DIR] [--classes 20] [--repeats 2] [--out FILE]

The model is the parity's reduced SAM 3 (``parity/activesam_parity.reduced_config``: a 4-block ViT of width 128 on
336 pixels, 2 text layers, the 256-wide DETR at 2 + 2 layers and 200 queries) with seeded random weights in Hugging
Face's layout, written in ``--work`` when missing. Not the full-size model: that needs about 9 GB and a few
CPU-minutes a photo.

Each precision runs in a process of its own (its peak RSS its own), one thread: the model loaded through the
registry, then under the precision's autocast the ``--classes`` VOC words encoded and one seeded 500 x 375 photo
segmented by ``--dense sam3``'s path (``sam3_scores``: the image encoded once, the prompts in buckets, both heads
run). Per process: the weights' MiB after the run (parameters and buffers), the peak RSS, and the CPU-seconds of the
photo (text and load not counted). ``--repeats`` rounds, the order of the precisions swapped each round; the JSON
keeps every round and the medians, and the machine (its CPU by name).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "parity"), str(ROOT)]

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
       "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]
PRECISIONS = ("fp32", "bf16")


def model_folder(work: Path) -> Path:
    """The reduced SAM 3's folder (written once)."""
    folder = work / "sam3_reduced"
    if not (folder / "model.safetensors").is_file():
        from activesam_parity import reduced_config

        from vpltool.models.backbones.sam3_files import tiny_state, write_hf

        config = reduced_config()
        write_hf(folder, config, tiny_state(config, 0))
    return folder


def worker(args) -> None:
    """One precision's process: prints its figures as one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from vpltool.device import autocast
    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec
    from vpltool.models.backbones.sam3_half import weights_bytes
    from vpltool.models.dense.sam3 import Sam3Settings, sam3_scores

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.worker]
    sam = load_model("sam3", Sam3Spec(str(model_folder(args.work))), "cpu")
    photo = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    settings = Sam3Settings(confidence_threshold=0.0, heads="both")  # every query kept: both heads, every mask
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        text = sam.encode_text(VOC[:args.classes])
        start = time.process_time()
        scores = sam3_scores(sam, photo, text, (375, 500), settings)
        cpu = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"precision": args.worker, "weights_mib": round(weights_bytes(sam.model) / 2**20, 2),
                      "peak_rss_mib": round(peak, 1), "cpu_s": round(cpu, 3), "held": str(sam.held),
                      "scores_shape": list(scores.shape)}))


def cpu_family_model() -> dict:
    """The CPU's family and model numbers (/proc/cpuinfo), which name its generation where its name does not."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[:30])}
    return {"cpu_family": fields.get("cpu family"), "cpu_model_number": fields.get("model"),
            "cpu_flags_bf16": [f for f in fields.get("flags", "").split() if "bf16" in f or f.startswith("amx")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vpltool_sam3_footprint"))
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=PRECISIONS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.resolve()
    if args.worker:
        worker(args)
        return
    from benchlib import machine

    model_folder(args.work)
    rounds = []
    for r in range(args.repeats):
        for precision in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            cmd = [sys.executable, __file__, "--worker", precision, "--work", str(args.work), "--classes",
                   str(args.classes)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rounds.append(json.loads(out.strip().splitlines()[-1]))
    medians = {p: {k: statistics.median(r[k] for r in rounds if r["precision"] == p)
                   for k in ("weights_mib", "peak_rss_mib", "cpu_s")} for p in PRECISIONS}
    result = {
        "what": "SAM 3's footprint, fp32 against its weights held in bf16 (--precision bf16), one 500x375 photo, "
                f"{args.classes} classes, --dense sam3's path, one thread",
        "model": "the parity's reduced SAM 3 (activesam_parity.reduced_config), seeded random weights",
        "machine": {**machine("cpu"), **cpu_family_model()},
        "rounds": rounds,
        "median": medians,
        "bf16_over_fp32": {k: round(medians["bf16"][k] / medians["fp32"][k], 3)
                           for k in ("weights_mib", "peak_rss_mib", "cpu_s")},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

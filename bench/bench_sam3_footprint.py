"""SAM 3's footprint in fp32 and with its weights held in bf16 (``--precision bf16``,
vpltool/models/backbones/sam3_half.py), on the CPU; prints ONE JSON object (and writes it with ``--out``).

    python bench/bench_sam3_footprint.py [--work DIR] [--classes 20] [--repeats 2] [--out FILE]
        [--methods sam3,activesam] [--weights sam3.pt --preview 672 --confidence-threshold 0.15]

The model is ``--weights`` (e.g. ``bench_activesam.py --arch full``'s full-size ``sam3.pt``), or the parity's
reduced SAM 3 (``parity/activesam_parity.reduced_config``: a 4-block ViT of width 128 on
336 pixels, 2 text layers, the 256-wide DETR at 2 + 2 layers and 200 queries) with seeded random weights in Hugging
Face's layout, written in ``--work`` when missing.

Each precision runs in a process of its own (its peak RSS its own), one thread: the model loaded through the
registry, then under the precision's autocast the ``--classes`` VOC words encoded and one seeded 500 x 375 photo
segmented by ``--dense sam3``'s path (``sam3_scores``: the image encoded once, the prompts in buckets, both heads
run). Per process: the weights' MiB after the run (parameters and buffers), the peak RSS, and the CPU-seconds of the
photo (text and load not counted). ``--repeats`` rounds, the order of the precisions swapped each round; the JSON
keeps every round and the medians, and the machine (its CPU by name).

With ``--methods``, each precision's process also runs each method as `segment` runs it (``resolve_method``, the
hooks ``query_text``, ``dense_logits``, ``probabilities``: ``activesam_parity.vpltool_method`` at the parity's
settings; ``--preview`` and ``--confidence-threshold`` over them) on the same photo and the 21-word class file, under
the precision's autocast, and saves its scores and labels: ``parity`` gives, per method, bf16's max abs difference
from fp32 of the per-word scores and the share of labels equal (the first round's processes), and each method's
CPU-seconds per precision.
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
    weights = str(args.weights or model_folder(args.work))
    sam = load_model("sam3", Sam3Spec(weights), "cpu")
    photo = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    settings = Sam3Settings(confidence_threshold=0.0, heads="both")  # every query kept: both heads, every mask
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        text = sam.encode_text(VOC[:args.classes])
        start = time.process_time()
        scores = sam3_scores(sam, photo, text, (375, 500), settings)
        cpu = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"precision": args.worker, "weights_mib": round(weights_bytes(sam.model) / 2**20, 2),
           "peak_rss_mib": round(peak, 1), "cpu_s": round(cpu, 3), "held": str(sam.held),
           "scores_shape": list(scores.shape)}
    del sam
    for method in [m for m in (args.methods or "").split(",") if m]:
        row[f"{method}_cpu_s"] = method_run(args, method, dtype, photo.numpy())
    print(json.dumps(row))


def method_run(args, method: str, dtype, photo) -> float:
    """``method`` on ``photo`` as `segment` runs it under ``dtype``'s autocast; its scores and labels saved in
    ``--work``; returns the photo's CPU-seconds (the words' text and ActiveSAM's bank made first, not counted)."""
    import activesam_parity as ap
    import torch
    import wordnet_fixture

    from vpltool.data.class_files import read_class_file
    from vpltool.device import autocast

    wordnet_fixture.write(args.work / "nltk_data")  # ActiveSAM's hypernyms: the parity's small WordNet
    os.environ["NLTK_DATA"] = str(args.work / "nltk_data")

    knobs = {"preview_resolution": args.preview} if method == "activesam" and args.preview else {}
    if args.confidence_threshold is not None:
        knobs["confidence_threshold"] = args.confidence_threshold
    dense, bb = ap.vpltool_method(method, Path(args.weights or model_folder(args.work)), **knobs)
    lines = read_class_file("activesam:voc21")
    words, idx = [w for line in lines for w in line], [i for i, line in enumerate(lines) for _ in line]
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        text = dense.hooks.query_text(bb, words, ["{}"])
        extras = [dense.hooks.extra_inputs(None, photo)]
        dense.hooks.dense_logits(bb, None, text, [photo.shape[:2]], dense.settings, extras)  # warm: bank, text
        start = time.process_time()
        scores = dense.hooks.dense_logits(bb, None, text, [photo.shape[:2]], dense.settings, extras)[0]
        _, labels = dense.hooks.probabilities(bb, scores, torch.tensor(idx), len(lines), dense.settings)
        cpu = time.process_time() - start
    torch.save({"scores": scores.float(), "labels": labels}, args.work / f"{method}_{args.worker}.pt")
    return round(cpu, 3)


def parity(work: Path, methods: list[str]) -> dict:
    """bf16's scores and labels against fp32's, per method (the files the workers saved)."""
    import torch

    out = {}
    for method in methods:
        a, b = (torch.load(work / f"{method}_{p}.pt") for p in PRECISIONS)
        out[method] = {"scores_max_abs_diff": float((a["scores"] - b["scores"]).abs().max()),
                       "labels_equal": float((a["labels"] == b["labels"]).float().mean()),
                       "fp32_score_max": float(a["scores"].max())}
    return out


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
    ap.add_argument("--weights", type=Path, default=None, help="SAM 3's weights [default: the reduced, made]")
    ap.add_argument("--methods", default="", help="also sam3,activesam as segment runs them: bf16's parity")
    ap.add_argument("--preview", type=int, default=None, help="ActiveSAM's preview side [default: the parity's]")
    ap.add_argument("--confidence-threshold", type=float, default=None)
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
                   str(args.classes), "--methods", args.methods,
                   *(["--weights", str(args.weights)] if args.weights else []),
                   *(["--preview", str(args.preview)] if args.preview else []),
                   *(["--confidence-threshold", str(args.confidence_threshold)]
                     if args.confidence_threshold is not None else [])]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rounds.append(json.loads(out.strip().splitlines()[-1]))
        if r == 0 and args.methods:
            compared = parity(args.work, args.methods.split(","))
    medians = {p: {k: statistics.median(r[k] for r in rounds if r["precision"] == p)
                   for k in ("weights_mib", "peak_rss_mib", "cpu_s")} for p in PRECISIONS}
    result = {
        "benchmark": "sam3-footprint",
        "what": "SAM 3's footprint, fp32 against its weights held in bf16 (--precision bf16), one 500x375 photo, "
                f"{args.classes} classes, --dense sam3's path, one thread",
        "command": " ".join(["python", "bench/bench_sam3_footprint.py", *sys.argv[1:]]),
        "model": (f"SAM 3 of {args.weights}" if args.weights else
                  "the parity's reduced SAM 3 (activesam_parity.reduced_config), seeded random weights"),
        "machine": {**machine("cpu"), **cpu_family_model()},
        "rounds": rounds,
        "median": medians,
        "bf16_over_fp32": {k: round(medians["bf16"][k] / medians["fp32"][k], 3)
                           for k in ("weights_mib", "peak_rss_mib", "cpu_s")},
    }
    if args.methods:
        result["parity"] = compared
        result["method_cpu_s_median"] = {p: {m: statistics.median(r[f"{m}_cpu_s"] for r in rounds
                                                                   if r["precision"] == p)
                                             for m in args.methods.split(",")} for p in PRECISIONS}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

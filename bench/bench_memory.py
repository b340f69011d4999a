"""Does host memory stay flat in the number of images? Peak RSS of extract, cam, crf and predict at two sizes.

    python bench/bench_memory.py [--small 16] [--large 128] [--quick]

Renders a demo world of ``--small`` and one of ``--large`` images per split and runs each stage as its own process
on both (the shipped toy CLIP, CPU): extract and cam on train, crf on the text CAMs, predict on val with a decoder
trained for a few iterations. The text prototypes and that decoder are made once, on the smaller world, and serve
both (they are inputs, not measured, and the image count changes neither). The peak resident set of each process
comes from ``os.wait4`` (Linux ``ru_maxrss``).
A stage whose memory grows with the image count shows it as ``growth_mib_per_100_images``; model and library
memory are the same at both sizes. Prints one JSON object.
``--quick`` (a smoke test of the script) runs every command in one process instead (``run_in_one.py``): its figures
include the earlier commands' memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import machine, run_child, run_children_in_one

VPL = str(Path(sys.executable).parent / "vpltool")
CPU = ["--device", "cpu"]


def peak_mib(*args: object) -> float:
    """Run ``vpltool ARGS`` as a child process; its peak RSS in MiB."""
    return round(run_child([VPL, *args])[1], 1)


def quiet(*args: object) -> None:
    """Run ``vpltool ARGS`` as a child process that must succeed (a set-up step, not measured). Not in this process:
    a child started from a process that holds torch and a model reports that process's RSS as its own peak (every
    stage at 8 images read 792 MiB, this process's size after an in-process train-decoder)."""
    subprocess.run([VPL, *map(str, args)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def steps(work: Path, n: int, shared: Path, first: bool) -> list[tuple[str | None, list[object]]]:
    """The commands for a world of ``n`` train and ``n`` val scenes, in order: ``(stage, args)`` for a measured
    stage, ``(None, args)`` for a set-up step; the text prototypes and the decoder in ``shared`` are made on the
    ``first`` world measured and reused for the others."""
    world, feats = work / "world", work / "features"
    text, decoder = shared / "text.safetensors", shared / "decoder" / "decoder.safetensors"
    out: list[tuple[str | None, list[object]]] = [
        (None, ["make-world", world, "--train", n, "--val", n]),
        ("extract", ["extract", world, "--split", "train", "-o", feats, "--model", "vpltool-toy", "--pretrained",
                     "none", *CPU])]
    if first:
        out.append((None, ["text-prototypes", feats, "-o", text, "--templates", "a photo of a {}.", "--background",
                           "grass,sky,wall,water", *CPU]))
    out += [("cam", ["cam", feats, "-p", text, "-o", work / "cams", "--refine", "none", *CPU]),
            ("crf", ["crf", work / "cams", "-o", work / "pseudo", "--workers", "1"])]
    if first:
        out.append((None, ["train-decoder", work / "pseudo", "-p", text, "-o", decoder.parent, "--recipe", "cpu",
                           "--iters", 5, "--crop-size", 96, "--batch-size", 2, *CPU]))
    out.append(("predict", ["predict", decoder, "-d", world, "--split", "val", "-o", work / "pred", *CPU]))
    return out


def measure(plan: list[tuple[str | None, list[object]]]) -> dict[str, float]:
    """Peak RSS per stage of ``plan`` (:func:`steps`), each command its own process."""
    out = {}
    for stage, args in plan:
        if stage is None:
            quiet(*args)
        else:
            out[stage] = peak_mib(*args)
    return out


def measure_in_one(plans: dict[int, list[tuple[str | None, list[object]]]]) -> dict[int, dict[str, float]]:
    """``--quick``: every command of ``plans`` in one process (benchlib.run_children_in_one), so its figures are
    that process's, model memory of the earlier commands included: a check of the script, not a measurement."""
    flat = [(n, stage, args) for n, plan in plans.items() for stage, args in plan]
    peaks = run_children_in_one([args for _, _, args in flat])
    out: dict[int, dict[str, float]] = {n: {} for n in plans}
    for (n, stage, _), (_, peak) in zip(flat, peaks):
        if stage is not None:
            out[n][stage] = round(peak, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=16)
    ap.add_argument("--large", type=int, default=128)
    ap.add_argument("--device", default="cpu", choices=["cpu"])
    ap.add_argument("--quick", action="store_true", help="4 and 8 images, every command in one "
                    "process: checks the script, not memory")
    args = ap.parse_args()
    small, large = (4, 8) if args.quick else (args.small, args.large)
    with tempfile.TemporaryDirectory() as tmp:
        plans = {n: steps(Path(tmp) / str(n), n, Path(tmp), n == small) for n in (small, large)}
        runs = measure_in_one(plans) if args.quick else {n: measure(plan) for n, plan in plans.items()}
    stages = {stage: {"rss_mib": {str(n): runs[n][stage] for n in runs},
                      "growth_mib_per_100_images": round(100 * (runs[large][stage] - runs[small][stage])
                                                         / (large - small), 1)}
              for stage in runs[small]}
    print(json.dumps({"benchmark": "memory", "quick": args.quick, "machine": machine("cpu"), "images": [small, large],
                      "model": "vpltool-toy", "stages": stages,
                      "peak_memory": [{"stage": f"{stage} ({n} images)", "rss_mib": runs[n][stage], "cuda_mib": None,
                                       "scope": "process"} for stage in runs[small] for n in runs]}))


if __name__ == "__main__":
    main()

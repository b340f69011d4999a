"""What a loading process costs on a CPU: `vpltool segment` of a folder of photos with ``--workers 2`` against
``--workers 1`` (in the command's own process), and the start of a DataLoader's two workers by the size of the
process that forks them; prints ONE JSON object.

    python bench/bench_loader_start.py [--pairs 3] [--images 4,16,31,64] [--quick]

* ``segment``: for each count of ``--images`` (the demo world's val photos as JPEGs, rendered once), the README's
  toy command (``--dense maskclip``, the toy CLIP) as its own process, the two settings alternating pair by pair,
  the order swapped every pair; per run the process's CPU-seconds (user + sys of it and its children, from
  ``wait4``) and wall seconds; the medians, and the CPU-seconds of ``--workers 2`` over ``--workers 1``.
* ``fork``: in this process, holding ``--held`` MiB of touched memory (a model's weights and activations), the
  CPU-seconds (this process and its waited children) of one pass of ``runtime.batches.load_batches`` over 4 tiny
  items with 2 workers, less the same pass in this process; medians over ``--pairs``.

Why: the auto ``--workers`` loads a run of fewer than ``config.WORKERS_MIN_IMAGES`` images in the command's own
process (a loading process is a fork of the process that holds the model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"pairs": 1, "images": "2,4", "held": "64"}


def photos(folder: Path, count: int, world: Path) -> Path:
    """``count`` JPEG photos (the demo world's val images, cycled) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((world / "images").glob("val_*.png"))
    for i in range(count):
        Image.open(sources[i % len(sources)]).convert("RGB").save(folder / f"photo_{i:04d}.jpg", quality=90)
    return folder


def run_cpu(cmd: list, env: dict) -> tuple[float, float]:
    """``cmd`` as its own process: (its CPU-seconds, user + sys of it and its children, from ``wait4``; wall)."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{stderr.decode()[-3000:]}")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - start


def segment_runs(tmp: Path, counts: list[int], pairs: int) -> dict:
    from vpltool.demo.make_world import write_dataset

    world = tmp / "world"
    write_dataset(world, n_train=0, n_val=max(counts), seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    out = {}
    for count in counts:
        folder = photos(tmp / f"photos_{count}", count, world)
        runs: dict[str, list[tuple[float, float]]] = {"1": [], "2": []}
        for pair in range(pairs):
            for workers in (("1", "2") if pair % 2 == 0 else ("2", "1")):
                cmd = [sys.executable, "-m", "vpltool", "segment", str(folder), "--classes", "triangle,star", "-o",
                       str(tmp / f"out_{count}_{workers}_{pair}"), "--model", "vpltool-toy", "--pretrained", "none",
                       "--dense", "maskclip", "--device", "cpu", "--workers", workers]
                runs[workers].append(run_cpu(cmd, env))
        cpu = {w: statistics.median(c for c, _ in r) for w, r in runs.items()}
        wall = {w: statistics.median(s for _, s in r) for w, r in runs.items()}
        out[str(count)] = {"cpu_s": {"workers_1": round(cpu["1"], 3), "workers_2": round(cpu["2"], 3)},
                           "wall_s": {"workers_1": round(wall["1"], 3), "workers_2": round(wall["2"], 3)},
                           "cpu_2_over_1": round(cpu["2"] / cpu["1"], 3)}
    return out


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def fork_costs(held_mib: list[int], pairs: int) -> dict:
    import torch

    from vpltool.runtime.batches import load_batches

    def one(workers: int) -> float:
        start = _cpu()
        for _ in load_batches(4, [[0], [1], [2], [3]], lambda i: {"x": torch.zeros(3, 8, 8)}, workers,
                              torch.device("cpu")):
            pass
        return _cpu() - start

    out = {}
    for mib in held_mib:
        held = torch.ones(mib << 18)  # float32: mib MiB, every page touched
        costs = []
        for _ in range(pairs + 1):  # the first pair warms up, dropped
            costs.append(one(2) - one(1))
        out[str(mib)] = {"two_workers_cpu_s": round(statistics.median(costs[1:]), 3)}
        del held
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_common_args(ap, "2 and 4 photos, one pair, 64 MiB held: a smoke test of the script")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--images", default="4,16,31,64", help="photo counts of the segment runs, comma-separated")
    ap.add_argument("--held", default="700,3000", help="MiB the forking process holds, comma-separated")
    args = benchlib.apply_quick(ap.parse_args(argv), QUICK)
    from vpltool.config import WORKERS_MIN_IMAGES

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        segment = segment_runs(Path(tmp), [int(c) for c in args.images.split(",")], args.pairs)
    fork = fork_costs([int(m) for m in args.held.split(",")], args.pairs)
    print(json.dumps({"benchmark": "loader-start", "quick": args.quick, "machine": benchlib.machine(),
                      "command": "python bench/bench_loader_start.py " + " ".join(argv or sys.argv[1:]),
                      "pairs": args.pairs, "workers_min_images": WORKERS_MIN_IMAGES, "segment": segment,
                      "fork": fork, "seconds": round(time.time() - start, 1),
                      "peak_memory": [{"stage": "bench process", "rss_mib": benchlib._rss_peak_mib(),
                                       "cuda_mib": None}]}))


if __name__ == "__main__":
    main()

"""Benchmark `vpltool crf`: throughput with 1 and N worker processes on VOC-sized images; prints ONE JSON object.

Default mode: ``--images`` synthetic 500x375 photos (smooth colour fields + noise) with K=2 random smooth CAMs
over the 21 VOC classes, written as a real dataset + `cam` folder, then ``run_crf`` with workers=1 (in process) and
workers=N (spawned pool) on the same images. Reports seconds, images/s, the scaling ratio (target >= 0.8 * N),
whether the PNGs are byte-identical, CPU seconds per image, and the largest peak RSS of a pool worker (its
``VmHWM``, polled; not ``RUSAGE_CHILDREN``'s maxrss, which on Linux also counts the parent's RSS at fork time).

On a shared machine the wall-clock scaling measures the scheduler: with autogroup (Linux's default for sessions)
all our workers share one group's CPU share against other sessions' busy processes. ``cpu_bound_scaling`` is the
scaling had every worker a core to itself: N x (CPU s/image with 1 worker) / (CPU s/image with N workers).

``--quality``: instead, mIoU on the demo world with CAM-like maps made from its GT (blurred objects that spill over
their edges plus smooth noise), for --no-crf, the CRF on the RGB photo and ``--parity clip-es``.

The result records the machine and the peak resident memory of each run (the in-process run, the parallel run's
parent, its largest worker).

    python bench/bench_crf.py [--workers 2] [--images 16] [--quick]
    python bench/bench_crf.py --quality [--scenes 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import benchlib
from benchlib import Peak, PeakMemory, machine

VOC_SIZE = (375, 500)  # H, W of a typical VOC photo
# --quick: a smoke test of the script, not a measurement (quarter-area images)
QUICK = {"images": 2, "workers": 2, "scenes": 4, "size": (188, 250)}


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], channels: int, cells: int = 6) -> np.ndarray:
    """[channels, H, W] float32 in [0, 1]: bicubic upsampling of a coarse random grid (blob-like, CAM-like)."""
    from PIL import Image

    h, w = shape
    coarse = rng.uniform(0, 1, (channels, cells, cells * w // h + 1)).astype(np.float32)
    up = np.stack([np.asarray(Image.fromarray(c).resize((w, h), Image.BICUBIC)) for c in coarse])
    up -= up.min(axis=(1, 2), keepdims=True)
    return up / np.maximum(up.max(axis=(1, 2), keepdims=True), 1e-6)


def write_voc_like(root: Path, n: int, seed: int = 0, size: tuple[int, int] = VOC_SIZE):
    """A folder dataset of ``n`` PNGs (``size`` = H, W; VOC's 500x375 by default) labelled with 2 of the 20 VOC
    classes; returns the opened Dataset."""
    from PIL import Image

    from vpltool.config.presets import VOC_CLASSES
    from vpltool.data import open_dataset

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["id,labels"]
    for i in range(n):
        image = smooth_field(rng, size, 3) * 230 + rng.normal(0, 8, (3, *size))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(root / f"images/{i:04d}.png")
        rows.append(f"{i:04d}," + ";".join(VOC_CLASSES[c] for c in rng.choice(20, 2, replace=False)))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(["background", *VOC_CLASSES]) + "\n")
    return open_dataset(root)


def write_cam_folder(folder: Path, dataset, make_cams) -> Path:
    """One `cam` file per item (``make_cams(item) -> [K, H, W]``) + the `_stage.json` that names the dataset."""
    import torch

    from vpltool import io
    from vpltool.runtime.numerics import run_numerics

    for item in dataset.items:
        cams = make_cams(item)
        io.write_cam(io.cam_path(folder, item.id), torch.from_numpy(cams), item.labels, classes=dataset.classes,
                     params={}, id=item.id, image_size=list(cams.shape[1:]),
                     numerics=run_numerics())
    io.write_stage_record(folder, "cam", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=run_numerics())
    return folder


class ChildPeakRss:
    """Largest ``VmHWM`` (peak resident set) of this process's children, polled every 0.25 s (Linux only)."""

    def __init__(self):
        self.peak_kib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ChildPeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(0.25):
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    if stat.read_text().rsplit(")", 1)[1].split()[1] != me:  # field 4 = parent pid
                        continue
                    hwm = next(line for line in (stat.parent / "status").read_text().splitlines()
                               if line.startswith("VmHWM:"))
                    self.peak_kib = max(self.peak_kib, int(hwm.split()[1]))
                except (OSError, IndexError, StopIteration):
                    continue  # the process ended while being read


def timed_run(cams: Path, out: Path, workers: int, peaks: PeakMemory) -> dict:
    from vpltool.config import CrfConfig, RuntimeConfig
    from vpltool.stages.crf import run_crf

    name = "crf, 1 worker (in process)" if workers == 1 else f"crf, {workers} workers: the parent process"
    with ChildPeakRss() as rss, peaks.stage(name):
        start, cpu = time.perf_counter(), cpu_seconds()
        summary = run_crf(cams, out, CrfConfig(), RuntimeConfig(workers=workers))
        seconds = time.perf_counter() - start  # wall time including the pool's start-up, as a user sees it
    # CPU time (this process + finished workers) vs wall time shows how much of the cores other processes took
    cpu = cpu_seconds() - cpu
    result = {"workers": workers, "seconds": round(seconds, 3), "images_per_s": round(summary.done / seconds, 3),
              "cpu_seconds_per_image": round(cpu / max(summary.done, 1), 3), "cores_used": round(cpu / seconds, 2)}
    if workers > 1:
        result["peak_rss_mib_per_worker"] = round(rss.peak_kib / 1024, 1) if rss.peak_kib else None
        # a worker's VmHWM is its own lifetime peak: the pool is fresh for this run, so it is this stage's
        peaks.records.append(Peak(f"crf, {workers} workers: largest worker", rss_mib=result["peak_rss_mib_per_worker"],
                                  scope="stage" if rss.peak_kib else "unmeasured (worker ended before a poll)"))
    return result


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_throughput(tmp: Path, n_images: int, workers: int, quick: bool = False, size=VOC_SIZE) -> dict:
    host = machine("cpu")  # before our own work raises the load average
    load = host["load_average_1min"]
    rng = np.random.default_rng(1)
    dataset = write_voc_like(tmp / "data", n_images, size=size)
    cams = write_cam_folder(tmp / "cams", dataset, lambda item: smooth_field(rng, size, len(item.labels)))
    peaks = PeakMemory("cpu")
    one = timed_run(cams, tmp / "pseudo1", 1, peaks)
    many = timed_run(cams, tmp / f"pseudo{workers}", workers, peaks)
    identical = all((tmp / f"pseudo{workers}" / p.name).read_bytes() == p.read_bytes()
                    for p in (tmp / "pseudo1").glob("*.png"))
    ratio = many["images_per_s"] / one["images_per_s"]
    cpu_ratio = one["cpu_seconds_per_image"] / many["cpu_seconds_per_image"]
    return {
        "benchmark": "crf", "quick": quick, "device": "cpu", "machine": host, "images": n_images,
        "size": f"{size[1]}x{size[0]}", "classes": 21, "k": 2,
        "cpu_count": os.cpu_count(), "single": one, "parallel": many, "scaling": round(ratio, 3),
        "target": round(0.8 * workers, 2), "meets_target": ratio >= 0.8 * workers, "identical_pngs": identical,
        # scaling if every worker had a core to itself (differs from "scaling" only when other processes compete)
        "cpu_bound_scaling": round(workers * cpu_ratio, 3),
        "load_average_1min": round(load, 2),  # > cpu_count: other processes shared the cores
        "nice": os.nice(0),  # workers inherit it; at 19 any busy neighbour starves them
        "peak_memory": peaks.as_list(),
    }


# --------------------------------------------------------------------------------------------- quality
def gt_like_cams(item, rng: np.random.Generator) -> np.ndarray:
    """[K, H, W] CAM-like maps from the GT: blurred object (spills ~6 px over its edge) + smooth noise, minmaxed."""
    import cv2

    from vpltool import io

    gt = io.read_mask(item.gt)
    maps = []
    for c in item.labels:
        blob = cv2.GaussianBlur((gt == c).astype(np.float32), (0, 0), sigmaX=6.0)
        noisy = blob + 0.35 * smooth_field(rng, gt.shape, 1, cells=4)[0]
        noisy -= noisy.min()
        maps.append(noisy / max(float(noisy.max()), 1e-6))
    return np.stack(maps) if maps else np.zeros((0, *gt.shape), np.float32)


def score(folder: Path, dataset) -> dict:
    """mIoU (255 counted wrong, as `vpltool eval`), labelled fraction, and mIoU restricted to labelled pixels."""
    from vpltool import io
    from vpltool.ops.kernels import MiouAccumulator
    from vpltool.stages.eval import run_eval

    result, _ = run_eval(folder)
    n = len(dataset.classes)
    kept, total, labelled = MiouAccumulator(n), 0, 0
    for item in dataset.items:
        gt, pred = io.read_mask(item.gt), io.read_mask(folder / f"{item.id}.png")
        keep = pred != 255
        kept.add(np.where(keep, gt, 255), pred)  # GT 255 is ignored: scores only the labelled pixels
        total, labelled = total + gt.size, labelled + int(keep.sum())
    return {"miou": round(result["miou"], 4), "labelled_fraction": round(labelled / total, 4),
            "miou_on_labelled": round(kept.result()["miou"], 4)}


def bench_quality(tmp: Path, n_scenes: int, workers: int, cams_dir: Path | None) -> dict:
    from vpltool import io
    from vpltool.config import CrfConfig, RuntimeConfig
    from vpltool.data import open_dataset
    from vpltool.demo.make_world import write_dataset
    from vpltool.demo.scenes import SceneConfig
    from vpltool.stages.crf import run_crf

    if cams_dir is None:
        root = write_dataset(tmp / "world", n_train=n_scenes, n_val=0, seed=0,
                             cfg=SceneConfig(size=192, min_diameter=32, max_diameter=96))
        dataset = open_dataset(root, "train")
        rng = np.random.default_rng(0)
        cams_dir = write_cam_folder(tmp / "cams", dataset, lambda item: gt_like_cams(item, rng))
    else:
        ident = io.read_stage_record(cams_dir, "cam")["inputs"]["dataset"]
        dataset = open_dataset(ident["root"], ident.get("split"))
    variants = {"no_crf": CrfConfig(no_crf=True), "crf_rgb": CrfConfig(), "crf_clip_es": CrfConfig(parity="clip-es"),
                "crf_rgb_no_ignore": CrfConfig(confidence=0.0), "crf_clip_es_no_ignore": CrfConfig(parity="clip-es",
                                                                                              confidence=0.0)}
    out = {"benchmark": "crf-quality", "machine": machine("cpu"), "cams": str(cams_dir), "images": len(dataset.items)}
    for name, cfg in variants.items():
        run_crf(cams_dir, tmp / name, cfg, RuntimeConfig(workers=workers))
        out[name] = score(tmp / name, dataset)
    out["no_crf_normalised_0.95"] = score_normalised_rule(cams_dir, dataset, tmp / "no_crf_norm")
    return out


def score_normalised_rule(cams_dir: Path, dataset, folder: Path) -> dict:
    """The rejected --no-crf rule: 255 where ``max(P / sum P) < 0.95``; scored like the stage outputs."""
    from vpltool import io
    from vpltool.ops.kernels import crf_probabilities, pseudo_labels
    from vpltool.runtime.numerics import run_numerics

    for item in dataset.items:
        maps = io.read_cam(io.cam_path(cams_dir, item.id), dataset.classes)
        cams, labels = maps.cams, maps.labels
        probs = crf_probabilities(cams, 1.0)
        probs /= np.maximum(probs.sum(0, keepdims=True), 1e-6)
        io.write_mask(folder / f"{item.id}.png", pseudo_labels(probs, labels, 0.95))
    io.write_stage_record(folder, "crf", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=run_numerics())
    return score(folder, dataset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel run (default 2)")
    parser.add_argument("--images", type=int, default=16, help="VOC-sized images (default 16)")
    parser.set_defaults(size=VOC_SIZE)
    parser.add_argument("--quality", action="store_true", help="mIoU of --no-crf / CRF RGB / CRF clip-es instead")
    parser.add_argument("--scenes", type=int, default=60, help="--quality: demo-world scenes (192 px)")
    parser.add_argument("--cams", type=Path, help="--quality: score this `cam` folder instead of GT-made CAMs")
    # the dense CRF (pydensecrf) runs on the CPU only; the option exists so every benchmark takes the same flags
    benchlib.add_common_args(parser, f"{QUICK['images']} images, {QUICK['workers']} workers (seconds)",
                             device_help="accepted for a uniform interface; the CRF is CPU-only")
    args = benchlib.apply_quick(parser.parse_args(argv), QUICK, single_thread=False)
    with tempfile.TemporaryDirectory(prefix="bench_crf_") as tmp:
        if args.quality:
            result = bench_quality(Path(tmp), args.scenes, args.workers, args.cams)
        else:
            result = bench_throughput(Path(tmp), args.images, args.workers, args.quick, args.size)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # the guard matters: spawned CRF workers re-import this file as __mp_main__
    sys.exit(main())

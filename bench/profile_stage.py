"""Where a stage's time goes on a device, from torch's profiler; prints ONE JSON object.

    python bench/profile_stage.py --device cuda                     # extract and cam, 512 VOC-like photos
    python bench/profile_stage.py --device cuda --stages cam --images 1024 --trace /tmp/cam_trace.json
    python bench/profile_stage.py --quick                           # a smoke test: tiny ViT, 8 small photos

Issue 28 measured cam and extract at a few hundred img/s on an H100 against a goal of 1,000, with a host that feeds
~2,000 (bench_host.py): this says why. Set-up (not profiled): ``--images`` photos at VOC-like sizes and label counts
(bench_cam.py's ``make_voc_like``), random ``--model`` weights, text prototypes; each stage runs once on 32 photos to
warm up (kernels loaded, allocator grown), then as its library call on all the photos under
``torch.profiler.profile`` (the CPU, and CUDA where the device is one), the stages' own defaults otherwise
(``--batch-size`` and ``--workers`` auto).

Reported per stage: wall seconds and img/s under the profiler (it slows the host a little); on CUDA the device's
busy time (the union of its kernels' intervals) and its share of the wall time: a share well under 1 means the
device waits for the host (loading, the main thread's launches, a synchronisation); the kernels that took most of
the device's time, the main thread's costliest ops by their own CPU time, and the calls that make the host wait
for the device (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, pageable
``cudaMemcpy``) with their counts. ``--trace`` also writes the whole timeline for chrome://tracing or Perfetto.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_cam import ASSETS, make_voc_like  # noqa: E402
from bench_host import write_split  # noqa: E402

import benchlib  # noqa: E402

QUICK = {"images": 8, "model": "vpl-test-vit", "warmup": 4, "top": 5}
STAGES = ("extract", "cam")
# CUDA runtime calls after which the host waits for the device (an event's wait is the writer threads', not the loop's)
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=32, help="photos of each stage's warm-up run (not profiled)")
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    ap.add_argument("--top", type=int, default=15, help="kernels and ops listed per stage")
    ap.add_argument("--trace", type=Path, help="also write the last stage's timeline (Chrome trace JSON) here")
    benchlib.add_common_args(ap, f"{QUICK['images']} small photos, the tiny random test ViT")
    args = benchlib.apply_quick(ap.parse_args(argv), QUICK)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        ap.error(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    with tempfile.TemporaryDirectory(prefix="profile_stage_") as tmp:
        result = run(Path(tmp), args, stages)
    json.dump(result, sys.stdout)
    print()


def run(tmp: Path, args, stages: list[str]) -> dict:
    from vpltool.config import ExtractConfig, RuntimeConfig, TextPrototypesConfig
    from vpltool.data import open_dataset
    from vpltool.models import ModelSpec, load_backbone
    from vpltool.stages.cam import run_cam
    from vpltool.stages.extract import run_extract
    from vpltool.stages.text_prototypes import run_text_prototypes

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VPLTOOL_MODEL_CONFIGS", str(ASSETS))
    voc = make_voc_like(tmp / "voc", args.images, 0.25 if args.quick else 1.0)
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    write_split(voc, "warm", ids[: args.warmup])
    spec = ModelSpec(args.model, "none", config_dir=str(ASSETS))
    torch.manual_seed(0)
    bb = load_backbone(spec, args.device)
    runtime = RuntimeConfig(device=args.device, overwrite=True)
    data, warm = open_dataset(voc, "train"), open_dataset(voc, "warm")
    protos = tmp / "text.safetensors"
    run_text_prototypes(data.classes, protos, spec, TextPrototypesConfig(background="voc"), device=args.device)

    def extract(dataset, name: str) -> None:
        run_extract(dataset, tmp / name, spec, ExtractConfig(), runtime, backbone=bb)

    def cam(name: str) -> None:  # from extract's folder NAME
        run_cam(tmp / name, protos, tmp / f"{name}_cams", runtime=runtime, backbone=bb)

    extract(warm, "warm")
    peaks = benchlib.PeakMemory(args.device)
    out: dict[str, dict] = {}
    for stage in stages:
        if stage == "extract":
            work = functools.partial(extract, data, "features")
        else:
            if not (tmp / "features").is_dir():  # cam alone: extract's folder made first, not profiled
                extract(data, "features")
            cam("warm")
            work = functools.partial(cam, "features")
        with peaks.stage(f"{stage}, profiled"):
            out[stage] = profiled(work, len(ids), args, trace=args.trace if stage == stages[-1] else None)
    return {"benchmark": "profile", "quick": args.quick, "machine": benchlib.machine(args.device),
            "model": f"{args.model} (random weights)", "images": len(ids), "stages": out,
            "note": "under torch's profiler (the host a little slower than without); device_busy_share = the union "
                    "of the device's kernel intervals / wall time: the rest of the time the device waited",
            "peak_memory": peaks.as_list()}


def profiled(work, n: int, args, trace: Path | None = None) -> dict:
    """``work()`` (a stage on ``n`` images) under the profiler: the summary described in the module docstring."""
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    events = prof.key_averages()
    out = {"wall_s": round(wall, 3), "img_per_s": round(n / wall, 1),
           "top_cpu_ops": [{"name": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1)}
                           for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]],
           "host_waits": {e.key: {"calls": e.count, "cpu_ms": round(e.cpu_time_total / 1e3, 1)}
                          for e in events if e.key in WAITS}}
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = _union_ms((k.time_range.start, k.time_range.end) for k in kernels)
        timed = sorted(events, key=lambda e: -_device_us(e))
        total = sum(_device_us(e) for e in events) or 1
        out.update(device_busy_s=round(busy / 1e3, 3), device_busy_share=round(busy / 1e3 / wall, 3),
                   top_kernels=[{"name": e.key[:120], "calls": e.count, "device_ms": round(_device_us(e) / 1e3, 1),
                                 "share": round(_device_us(e) / total, 3)}
                                for e in timed[: args.top] if _device_us(e) > 0])
    return out


def _device_us(event) -> float:
    """An averaged event's own device time in microseconds (``self_cuda_time_total`` in torch before 2.4)."""
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0) or 0


def _union_ms(spans) -> float:
    """Milliseconds covered by the ``(start, end)`` microsecond intervals ``spans`` (kernels on several streams that
    overlap counted once)."""
    spans = sorted(spans)
    busy, end = 0.0, float("-inf")
    for lo, hi in spans:
        if hi > end:
            busy += hi - max(lo, end)
            end = hi
    return busy / 1e3  # microseconds -> ms


if __name__ == "__main__":
    main()

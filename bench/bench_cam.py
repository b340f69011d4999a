"""`cam` against the original CLIP-ES, as whole commands a user runs (start-up included); prints ONE JSON object.

    python bench/bench_cam.py --clip-es /path/to/CLIP-ES --clip-es-python /path/to/python [--images 12]
    python bench/bench_cam.py --quick           # a smoke test: tiny random ViT, no clone (fallback)
    python bench/bench_cam.py --device cuda --images 300 --clip-es ...   # on a GPU: both sides on CUDA

On ``--device cuda`` both sides run on the GPU as their users run them (CLIP-ES unpatched with its fp16 model,
vpltool with auto precision, bf16 blocks), and the JSON adds the steady first-pass img/s and the batched bare
forward's floor (bf16, batch 1 / 8 / 32, :func:`batched_floor`) measured in the same run.

Set-up (not timed): ``--images`` real photos bundled with scikit-image (500x375-class sizes, odd sizes included,
1-2 VOC labels each) laid out as a PASCAL VOC root, and a one-image root; random ``ViT-B-16-quickgelu`` weights
(OpenAI layout, QuickGELU, seed 0, values exact in fp16 so that CLIP-ES's fp16 round trip on load changes nothing)
saved as ``.pt`` for CLIP-ES and ``.safetensors`` for vpltool; the text prototypes (CLIP-ES's prompt and background
words); a ``--cache full`` extract folder for the second pass. Every timed command runs as its own process with
``--threads`` torch threads (``OMP_NUM_THREADS``), fp32, on the CPU, in alternating pairs (``--pairs``), and the
medians are reported (``--quick``, a smoke test of the script: vpltool's commands in one process and the clone-less
stand-in in this one, start-up left out):

* ``clip_es``: the original ``generate_cams_voc12.py`` through ``clip_es_runner.py`` (``--clip-es``); without a
  clone the in-repo formulation of its structure runs instead (per image the frozen blocks, then per class one
  last-block forward and backward, CAA per class) and ``clip_es_source`` says ``fallback``;
* ``first_pass``: ``vpltool cam VOC --split train`` (one process, nothing cached);
* ``second_pass``: ``vpltool cam FEATURES`` from the full cache with other prototypes;
* the same two first-pass commands on the one-image root (the single-image bar).

``per_image_s`` = (whole run of N images - whole run of 1) / (N - 1); ``bare_forward_s`` = the median per image of
the frozen model's plain forward (every block, no attention weights kept, no gradient) at the same sizes and
threads, timed in this process; ``startup_s`` = one-image run - per image. Ratios come pair by pair.
``one_image_startup``: the one-image command phase by phase (imports, the device's start, the model's load, the
stage's first and a second call), from ``startup_phases.py`` in one fresh process after the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets" / "model_configs"
PARITY = ROOT / "parity"  # the runners of CLIP-ES's own code (and its stand-in) that the benchmark times
STAND_IN = PARITY / "clip_es_formulation.py"  # CLIP-ES's loop from vpltool's parts, without a clone
sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

QUICK = {"images": 3, "pairs": 1, "model": "vpl-test-vit"}
VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
       "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# scikit-image's bundled photos: (file, crop box or None, output (W, H), VOC labels)
PHOTOS = (
    ("astronaut.png", (0, 64, 512, 448), (500, 375), ("person", "aeroplane")),
    ("chelsea.png", None, (451, 300), ("cat",)),
    ("coffee.png", None, (500, 333), ("diningtable", "bottle")),
    ("rocket.jpg", (160, 0, 480, 427), (375, 500), ("aeroplane",)),
    ("motorcycle_left.png", (0, 0, 667, 500), (500, 375), ("motorbike",)),
    ("motorcycle_right.png", (40, 10, 700, 504), (487, 365), ("motorbike", "car")),
    ("hubble_deep_field.jpg", (0, 0, 1000, 750), (500, 375), ("tvmonitor",)),
    ("ihc.png", (0, 64, 512, 448), (500, 375), ("pottedplant",)),
    ("retina.jpg", (100, 100, 1311, 1311), (400, 400), ("bottle",)),
    ("camera.png", (0, 64, 512, 448), (500, 375), ("person", "tvmonitor")),
    ("astronaut.png", (100, 20, 467, 303), (367, 283), ("person",)),
    ("coffee.png", (40, 0, 573, 400), (500, 375), ("diningtable", "chair")),
)


# VOC-like statistics for the benchmarks of a whole VOC run (bench_gpu_pipeline.py, bench_host.py, bench_flops.py).
# Assumed, not measured (VOC is not bundled): VOC2012's photos have a long side of 500 px, most in 4:3 or 3:2, either
# orientation; weights (W, H): share of the photos
VOC_SIZES = (((500, 375), 0.40), ((375, 500), 0.12), ((500, 333), 0.18), ((333, 500), 0.05), ((500, 400), 0.04),
             ((500, 366), 0.04), ((500, 281), 0.03), ((500, 500), 0.03), ((480, 360), 0.03), ((500, 353), 0.03),
             ((500, 335), 0.03), ((400, 500), 0.02))
# labels per image (1 to 6, mean 1.52; issue 28 gives VOC train_aug's as 1 to 6 with mean 1.5)
VOC_LABEL_COUNTS = ((1, 0.63), (2, 0.26), (3, 0.08), (4, 0.02), (5, 0.007), (6, 0.003))


# --------------------------------------------------------------------------------------------- set-up
def make_voc_like(root: Path, n: int, scale: float = 1.0, seed: int = 0) -> Path:
    """A VOC root of ``n`` photos at VOC-like sizes with VOC-like label counts (:data:`VOC_SIZES`,
    :data:`VOC_LABEL_COUNTS`), drawn with ``seed``: each is one of ``PHOTOS`` cropped to the drawn aspect, resized,
    with its own labels first and random other VOC classes up to the drawn count."""
    import random

    rng = random.Random(seed)
    sizes = [rng.choices([s for s, _ in VOC_SIZES], [w for _, w in VOC_SIZES])[0] for _ in range(n)]
    counts = [rng.choices([k for k, _ in VOC_LABEL_COUNTS], [w for _, w in VOC_LABEL_COUNTS])[0] for _ in range(n)]
    labels = []
    for i, k in enumerate(counts):
        own = list(PHOTOS[i % len(PHOTOS)][3])[:k]
        labels.append(tuple(own + rng.sample([c for c in VOC if c not in own], k - len(own))))
    return make_voc(root, n, scale, sizes=sizes, labels_of=labels)


def make_voc(root: Path, n: int, scale: float = 1.0, sizes: list[tuple[int, int]] | None = None,
             labels_of: list[tuple[str, ...]] | None = None) -> Path:
    """A VOC root of ``n`` photos (cycling through ``PHOTOS``), each side times ``scale``; ``sizes`` ``(W, H)`` and
    ``labels_of`` per photo replace the photos' own (a photo is then cropped to the size's aspect around its centre)."""
    import skimage.data
    from PIL import Image

    folder = Path(os.path.dirname(skimage.data.__file__))
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids, decoded = [], {}
    for i in range(n):
        name, box, size, own = PHOTOS[i % len(PHOTOS)]
        if (name, box) not in decoded:
            img = Image.open(folder / name).convert("RGB")
            decoded[name, box] = img.crop(box) if box else img
        img = decoded[name, box]
        if sizes is not None:
            size = sizes[i]
            img = _crop_to_aspect(img, size[0] / size[1])
        labels = own if labels_of is None else labels_of[i]
        w, h = (max(32, round(s * scale)) for s in size)
        image_id = f"img_{i:03d}"
        img.resize((w, h), Image.BICUBIC).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        objects = "".join(f"<object><name>{c}</name></object>" for c in labels)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>")
        ids.append(image_id)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def voc_photos(root: Path, n: int) -> list[Path]:
    """The ``n`` photos of the VOC root :func:`make_voc` writes at ``root``, written (again) unless there are
    ``n`` there already."""
    photos = sorted((root / "JPEGImages").glob("*.jpg"))
    if len(photos) != n:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        make_voc(root, n)
        photos = sorted((root / "JPEGImages").glob("*.jpg"))
    return photos


def _crop_to_aspect(img, aspect: float):
    """The largest centred crop of a PIL image with width / height = ``aspect``."""
    w, h = img.size
    if w / h > aspect:
        cw, ch = round(h * aspect), h
    else:
        cw, ch = w, round(w / aspect)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def make_weights(folder: Path, model: str, config_dir: Path = ASSETS) -> tuple[Path, Path]:
    """Random weights (seed 0) rounded to fp16 values, as ``.pt`` (a state dict clip.load accepts) and
    ``.safetensors`` (what vpltool users keep); ``config_dir``: where a model config that open_clip lacks is."""
    import torch
    from safetensors.torch import save_file

    from vpltool.models import ModelSpec, create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model_, _ = create_model(ModelSpec(model, "none", config_dir=str(config_dir)))
    state = {k: (v if k == "logit_scale" else v.half().float()).contiguous() for k, v in model_.state_dict().items()}
    pt, st = folder / "weights.pt", folder / "weights.safetensors"
    torch.save(state, pt)
    save_file(state, str(st))
    return pt, st


def bare_forward_s(model: str, weights: Path, voc: Path, threads: int, device: str = "cpu") -> float:
    """Median seconds of the frozen model's plain forward (no attention kept, no grad) per image, this process
    (on CUDA in bf16, as `cam`'s auto precision runs the frozen blocks)."""
    import torch

    from vpltool.data import open_dataset
    from vpltool.device import autocast
    from vpltool.io import load_image
    from vpltool.models import ModelSpec, load_backbone

    torch.set_num_threads(threads)
    bb = load_backbone(ModelSpec(model, str(weights), config_dir=str(ASSETS)), device)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    times = []
    for item in open_dataset(voc, "train").items[:24]:
        image = load_image(item.image)
        pixels = bb.preprocess(image, bb.input_size(*image.shape[:2]))[None].to(bb.device)
        with torch.no_grad(), autocast(bb.device, dtype):
            bb.encode(pixels)  # warm: allocator, kernels
            benchlib.synchronize(device)
            start = time.perf_counter()
            bb.dense(bb.encode(pixels).tokens)
            benchlib.synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def batched_floor(model: str, weights: Path, device: str, size: tuple[int, int] = (368, 496),
                  batches: tuple[int, ...] = (1, 8, 32), iters: int = 20) -> dict[str, float]:
    """img/s of the frozen blocks' plain forward in bf16 at batch 1, 8 and 32 on a ``size`` view (368x496: 714
    tokens, a VOC photo), timed in this process on ``device``: the floor `cam`'s first pass is measured against."""
    import torch

    from vpltool.device import autocast
    from vpltool.models import ModelSpec, load_backbone

    bb = load_backbone(ModelSpec(model, str(weights), config_dir=str(ASSETS)), device)
    out = {}
    for b in batches:
        pixels = torch.randn(b, 3, *size, device=bb.device)
        with torch.no_grad(), autocast(bb.device, torch.bfloat16):
            for _ in range(3):
                bb.encode(pixels)
            benchlib.synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                bb.encode(pixels)
            benchlib.synchronize(device)
        out[f"batch_{b}"] = round(b * iters / (time.perf_counter() - start), 1)
    return out


# --------------------------------------------------------------------------------------------- timed commands
def child_env(threads: int) -> dict[str, str]:
    """The environment of a timed child process: ``threads`` torch threads, offline, the test model configs."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "VPLTOOL_MODEL_CONFIGS": str(ASSETS), "PYTHONWARNINGS": "ignore"}


def timed(cmd: list[str], threads: int, cwd: Path | None = None) -> tuple[float, float]:
    """Run ``cmd`` as its own process with ``threads`` torch threads: (wall seconds, peak RSS in MiB)."""
    return benchlib.run_child(cmd, child_env(threads), cwd)


def vpltool(*args: object) -> list[str]:
    return [sys.executable, "-m", "vpltool", *map(str, args)]


def timed_all(cmds: list[list[str]], threads: int, quick: bool) -> list[tuple[float, float]]:
    """:func:`timed` for each of the vpltool commands ``cmds``, in order; with ``quick`` (a smoke test of the
    script) all in one process instead (benchlib.run_children_in_one: start-up paid once, and left out)."""
    if quick:
        return benchlib.run_children_in_one([cmd[len(vpltool()):] for cmd in cmds], child_env(threads))
    return [timed(cmd, threads) for cmd in cmds]


def pair_runs(order: tuple[tuple[str, list[str]], ...], scratch: Path, threads: int,
              quick: bool) -> dict[str, tuple[float, float]]:
    """``(seconds, peak MiB)`` per name of ``order``'s ``(name, command)``: each command its own process, in order,
    ``scratch`` removed after each; with ``quick``, vpltool's commands together in one (:func:`timed_all`), the
    others' each in its own."""
    ours = [(name, cmd) for name, cmd in order if quick and cmd[:len(vpltool())] == vpltool()]
    out = dict(zip([name for name, _ in ours], timed_all([cmd for _, cmd in ours], threads, quick)))
    for name, cmd in order:
        if name not in out:
            out[name] = timed_here(cmd) if quick and cmd[1:2] == [str(STAND_IN)] else timed(cmd, threads)
            shutil.rmtree(scratch, ignore_errors=True)
    return {name: out[name] for name, _ in order}


def timed_here(cmd: list[str]) -> tuple[float, float]:
    """``--quick``: the in-repo CLIP-ES stand-in's command ``cmd`` run in this process (its ``main``), as
    :func:`timed_all` runs vpltool's, for a smoke test's start-up's sake: (wall seconds, peak RSS MiB since)."""
    from sidebyside import peak_rss_mib, reset_peak

    sys.path.insert(0, str(PARITY))
    import clip_es_formulation

    reset_peak()
    start = time.perf_counter()
    clip_es_formulation.main(cmd[2:])
    return time.perf_counter() - start, peak_rss_mib() or 0.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip-es", type=Path, help="a clone of linyq2117/CLIP-ES (without it: the in-repo fallback)")
    ap.add_argument("--clip-es-python", default=sys.executable, help="a Python with CLIP-ES's requirements")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=3, help="alternating timed pairs; medians are reported")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    benchlib.add_common_args(ap, f"{QUICK['images']} small images, the tiny random test ViT, 1 pair")
    args = benchlib.apply_quick(ap.parse_args(argv), QUICK)
    scale = 0.25 if args.quick else 1.0
    with tempfile.TemporaryDirectory(prefix="bench_cam_") as tmp:
        result = run(Path(tmp), args, scale)
    json.dump(result, sys.stdout)
    print()


def run(tmp: Path, args, scale: float) -> dict:
    voc, voc1 = make_voc(tmp / "voc", args.images, scale), make_voc(tmp / "voc1", 1, scale)
    pt, st = make_weights(tmp, args.model)
    # CPU: fp32 on both sides. CUDA: each side as its users run it (CLIP-ES's fp16 model, vpltool's auto = bf16)
    run_on = ["--device", args.device] + (["--precision", "fp32"] if args.device == "cpu" else [])
    model = ["--model", args.model, "--pretrained", st, *run_on]
    timed_all([vpltool("extract", voc, "--split", "train", "-o", tmp / "features", "--cache", "full", *model),
               vpltool("text-prototypes", tmp / "features", "-o", tmp / "text.safetensors", "--templates", "clip-es",
                       "--background", "voc", "--device", "cpu")], args.threads, args.quick)
    other = tmp / "other.safetensors"
    _other_prototypes(tmp / "text.safetensors", other)
    clip_es_ok = bool(args.clip_es and (args.clip_es / "generate_cams_voc12.py").is_file())

    def clip_es(root: Path, out: Path) -> list[str]:
        if clip_es_ok:
            return [args.clip_es_python, str(PARITY / "clip_es_runner.py"), "--clip-es",
                    str(args.clip_es), "--voc", str(root), "--model", str(pt), "--out", str(out), "--threads",
                    str(args.threads), "--device", "cpu" if args.device == "cpu" else "cuda"]
        return [sys.executable, str(STAND_IN), str(root), args.model,
                str(st), str(tmp / "text.safetensors"), str(args.threads)]

    def first_pass(root: Path, out: Path) -> list[str]:
        return vpltool("cam", root, "--split", "train", "-p", tmp / "text.safetensors", "-o", out, *run_on,
                       "--overwrite")

    runs: dict[str, list[float]] = {k: [] for k in ("clip_es", "first_pass", "second_pass", "clip_es_1",
                                                    "first_pass_1")}
    peaks: dict[str, float] = {}
    # pair 0 warms the disk cache and is dropped; a --quick run (a smoke test of the script, no figure) skips it
    for pair in range(1 if args.quick else 0, args.pairs + 1):
        order = (("clip_es", clip_es(voc, tmp / "ce")), ("first_pass", first_pass(voc, tmp / "c1")),
                 ("clip_es_1", clip_es(voc1, tmp / "ce1")), ("first_pass_1", first_pass(voc1, tmp / "c2")),
                 ("second_pass", vpltool("cam", tmp / "features", "-p", other, "-o", tmp / "c3", *run_on,
                                         "--overwrite")))
        for name, (seconds, rss) in pair_runs(order, tmp / "ce", args.threads, args.quick).items():
            if pair:
                runs[name].append(seconds)
                peaks[name] = max(peaks.get(name, 0.0), rss)
    bare = bare_forward_s(args.model, st, voc, args.threads, args.device)
    floor = batched_floor(args.model, st, args.device) if args.device != "cpu" else None
    phases = startup_phases(voc1, tmp / "text.safetensors", tmp / "c4", args, run_on)
    return {**summarise(runs, peaks, bare, args, clip_es_ok, floor), "one_image_startup": phases}


def startup_phases(voc1: Path, protos: Path, out: Path, args, run_on: list[str]) -> dict:
    """``startup_phases.py`` on the one-image root, in a fresh process with ``--threads`` torch threads: where the
    one-image command's seconds go (``python_start`` = the process's wall time less the phases it measured)."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).parent / "startup_phases.py"), str(voc1), str(protos), str(out),
           *run_on]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.splitlines()[-1])
    result["phases_s"] = {"python_start": round(wall - result["total_s"], 3), **result["phases_s"]}
    result["one_image_s"] = round(wall - result["phases_s"]["second_call"], 3)
    result["note"] = ("one_image_s: what the one-image command costs, start to end (the process less its second, "
                      "warm call); first_call - second_call (once_in_first_call_s): what the stage's first call pays "
                      "once; measured once, after the timed pairs")
    return result


def _other_prototypes(text: Path, out: Path) -> None:
    """Other prototypes for the second pass: the text rows reversed along the embedding, renormalised."""
    import torch

    from vpltool import io

    t = io.read_prototypes(text)
    io.write_prototypes(out, io.Prototypes(torch.nn.functional.normalize(t.vectors.flip(1), dim=1), t.row_class,
                                           t.row_names, classes=t.classes, temperature=t.temperature,
                                           source="vision", model=t.model))


def summarise(runs: dict[str, list[float]], peaks: dict[str, float], bare: float, args, clip_es_ok: bool,
              floor: dict[str, float] | None = None) -> dict:
    med = {k: statistics.median(v) for k, v in runs.items()}
    n = args.images
    per_image = [(a - b) / (n - 1) for a, b in zip(runs["first_pass"], runs["first_pass_1"])]
    pairs = lambda a, b: [round(x / y, 3) for x, y in zip(runs[a], runs[b])]  # noqa: E731
    steady = (n - 1) / max(1e-9, statistics.median(per_image) * (n - 1))
    gpu = {} if floor is None else {
        "first_pass_img_per_s_steady": round(steady, 1), "batched_forward_floor_img_per_s": floor,
        "first_pass_over_batched_floor": round(steady / floor["batch_32"], 3),
        "gpu_bars": {"first_pass_img_per_s_steady": ">= 1000 (on 3000 images)",
                     "first_pass_speedup_vs_clip_es": ">= 8 (300 images)", "one_image_first_pass_s": "<= 5"},
        "one_image_first_pass_s": round(med["first_pass_1"], 2),
    }
    return {
        "benchmark": "cam", "quick": args.quick, "machine": benchlib.machine(args.device), "model": args.model,
        "weights": "random (seed 0, fp16-exact values)", "threads": args.threads,
        "precision": "fp32" if args.device == "cpu" else "auto (bf16 blocks; CLIP-ES: its fp16 model)",
        **gpu,
        "images": n, "pairs": args.pairs,
        "clip_es_source": "the original code (clip_es_runner.py)" if clip_es_ok else
                          "fallback: the in-repo formulation of its structure (no clone given)",
        "seconds_median": {k: round(v, 2) for k, v in med.items()},
        "seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "first_pass_speedup_vs_clip_es": round(statistics.median(pairs("clip_es", "first_pass")), 3),
        "first_pass_speedup_per_pair": pairs("clip_es", "first_pass"),
        "second_pass_over_clip_es": round(statistics.median(pairs("second_pass", "clip_es")), 3),
        "one_image_over_clip_es": round(statistics.median(pairs("first_pass_1", "clip_es_1")), 3),
        "per_image_s": round(statistics.median(per_image), 3),
        "bare_forward_s": round(bare, 3),
        "per_image_over_bare_forward": round(statistics.median(per_image) / bare, 3),
        "startup_s": round(med["first_pass_1"] - statistics.median(per_image), 2),
        "peak_memory": [{"stage": name, "rss_mib": round(mib, 1), "cuda_mib": None, "scope": "process"}
                        for name, mib in peaks.items()],
        "bars": {"first_pass_speedup_vs_clip_es": ">= 1.5", "per_image_over_bare_forward": "<= 1.2",
                 "second_pass_over_clip_es": "<= 0.4", "one_image_over_clip_es": "<= 0.6", "startup_s": "<= 5"},
    }


if __name__ == "__main__":
    main()

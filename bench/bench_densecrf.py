"""Benchmark the dense CRF's two backends (vpltool.ops.densecrf): does torch make pydensecrf's masks, and how fast;
prints ONE JSON object.

    python bench/bench_densecrf.py                                   # this machine's CPU (minutes)
    python bench/bench_densecrf.py --device cuda --images 1000       # a GPU (about 2 minutes)
    python bench/bench_densecrf.py --quick                           # a smoke test of the script

Agreement (``agreement``): per image, the fraction of pixels whose pseudo mask (``[0, labels][argmax Q]``, 255
where ``max Q < 0.95``: what `crf` writes) is the same with both backends; the worst image and the mean, per set:

* ``photos``: bench_cam.py's 12 scikit-image photos (the CLIP-ES parity set) at VOC size with CAM-like maps: per
  label a map on the 16-pixel patch grid (a blob times the patches' colour similarity to the blob's centre, plus
  noise), upsampled and rounded as `cam` files are read;
* ``demo_toy_cams``: the demo world (``make-world``, 96 px) with the toy CLIP's text-prototype CAMs (extract ->
  text-prototypes -> cam, as `make demo` makes them); ``demo_gt_cams``: 192 px scenes with CAM-like maps made from
  the ground truth (bench_crf.py's blur + smooth noise);
* ``thin``: 1-3 px lines, low-contrast lines, a fence, 1 and 4 px checkerboards and text strokes, with patch-grid
  CAMs of the structures;
* ``voc_stage``: the masks `crf` wrote with each backend in the throughput run (the whole stage, both ways).

For the pixels that differ, ``largest_margin`` is the largest pydensecrf Q margin that decided one of them (top-1
minus top-2, or ``|max Q - 0.95|`` for the ignore threshold): rounding-level differences have margins ~1e-6.

Demo mIoU (``demo_miou``): `crf` with each backend on the demo CAMs, scored by `eval`, and the difference in points
(target: within 0.2). Throughput (``throughput``): ``--images`` VOC-sized photos as a dataset + cam folder;
``crf --backend torch`` on ``--device`` end to end (loading, CRF, writing); the device alone on batches already on
it (lattice construction and the mean field timed apart); ``crf --backend pydensecrf`` with one process per core
on ``--reference-images`` of them. ``iteration_cost``: bytes moved and float operations of one mean-field iteration
for the lattices of a 500x375 photo at C = 2, 3 and 21 labels (21: VOC's classes, as `predict --crf` has them,
though with its own kernel sizes), counted kernel by kernel as vpltool.ops.densecrf runs them.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_cam import PHOTOS, make_voc  # noqa: E402
from bench_crf import gt_like_cams, write_cam_folder  # noqa: E402

import benchlib  # noqa: E402

CONFIDENCE = 0.95  # CrfConfig's default: the masks compared are the ones `crf` writes
TARGET_EQUAL, TARGET_MIOU_POINTS = 0.995, 0.2
PATCH = 16  # ViT-B/16: `cam` files hold maps on this grid, upsampled when read
QUICK = {"images": 2, "reference_images": 1, "scenes": 3, "photos": 2, "scale": 0.2, "batch_size": 2,
         "device_batches": 1, "workers": 1}


# --------------------------------------------------------------------------------------------- inputs
def patch_maps(image: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[k, h, w]`` float32 CAM-like maps on the patch grid of ``image``: per label a blob times the patches' colour
    similarity to the blob's centre (CAA propagates along appearance), plus noise, min-maxed."""
    import cv2

    h, w = image.shape[:2]
    gh, gw = max(1, math.ceil(h / PATCH)), max(1, math.ceil(w / PATCH))
    small = cv2.resize(image, (gw, gh), interpolation=cv2.INTER_AREA).astype(np.float32)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    maps = []
    for _ in range(k):
        cy, cx = rng.uniform(0.2, 0.8) * gh, rng.uniform(0.2, 0.8) * gw
        blob = np.exp(-((yy - cy) ** 2 / (2 * (gh / 4) ** 2) + (xx - cx) ** 2 / (2 * (gw / 4) ** 2)))
        seed = small[min(int(cy), gh - 1), min(int(cx), gw - 1)]
        similar = np.exp(-((small - seed) ** 2).sum(-1) / (2 * 40.0**2))
        m = blob * (0.3 + 0.7 * similar) + 0.05 * rng.uniform(size=(gh, gw))
        maps.append((m - m.min()) / max(float(np.ptp(m)), 1e-6))
    return np.stack(maps).astype(np.float32)


def at_image_size(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Patch-grid maps as `crf` reads them from a cam file: bilinear to the image, rounded to float16."""
    from vpltool.io import upsample_maps

    return upsample_maps(maps, size)


def photo_set(n: int, scale: float, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, CAMs at image size) for the first ``n`` of bench_cam.py's photos, sides times ``scale``."""
    from vpltool.io import load_image

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="bench_densecrf_photos_") as tmp:
        root = make_voc(Path(tmp), n, scale)
        out = []
        for i in range(n):
            image = load_image(root / "JPEGImages" / f"img_{i:03d}.jpg")
            cams = at_image_size(patch_maps(image, len(PHOTOS[i][3]), rng), image.shape[:2])
            out.append((f"{i:02d}_{PHOTOS[i][0]}", image, cams))
    return out


def thin_set(size: tuple[int, int], seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Images with thin structures on a textured background, each with the patch-grid CAMs of its structures."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size

    def background() -> np.ndarray:
        coarse = rng.uniform(60, 160, (4, 5, 3)).astype(np.float32)
        return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (h, w, 3))

    def lines(widths, contrast) -> tuple[np.ndarray, np.ndarray]:
        image, mask = background(), np.zeros((h, w), np.uint8)
        for i, width in enumerate(widths):
            x0, x1 = rng.integers(0, w, 2)
            cv2.line(mask, (int(x0), 0), (int(x1), h - 1), 1, int(width))
            cv2.line(mask, (0, (i + 1) * h // (len(widths) + 1)), (w - 1, (i + 1) * h // (len(widths) + 2)), 1,
                     int(width))
        image[mask > 0] += contrast
        return image, mask

    def fence() -> tuple[np.ndarray, np.ndarray]:
        image, mask = background(), np.zeros((h, w), np.uint8)
        mask[h // 4:3 * h // 4:6, w // 4:3 * w // 4] = 1
        mask[h // 4:3 * h // 4, w // 4:3 * w // 4:6] = 1
        image[mask > 0] = (200, 200, 210)
        return image, mask

    def checker(cell: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = background(), np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        region = (yy > h // 5) & (yy < 4 * h // 5) & (xx > w // 5) & (xx < 4 * w // 5)
        dark = ((yy // cell + xx // cell) % 2 == 0) & region
        image[region], image[dark] = (230, 230, 230), (20, 20, 20)
        mask[region] = 1
        return image, mask

    def text() -> tuple[np.ndarray, np.ndarray]:
        image, mask = background(), np.zeros((h, w), np.uint8)
        for row, (scale, thickness) in enumerate(((0.5, 1), (0.8, 1), (1.2, 2), (1.6, 3))):
            y = int((row + 1) * h / 5)
            cv2.putText(mask, "Thin strokes: WSSS 2025", (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale * w / 500, 1,
                        thickness)
        image[mask > 0] = (245, 240, 60)
        return image, mask

    scenes = {"lines_1_2_3px": lines((1, 2, 3), 90.0), "lines_low_contrast": lines((1, 2), 18.0), "fence": fence(),
              "checker_1px": checker(1), "checker_4px": checker(4), "text": text()}
    out = []
    for name, (image, mask) in scenes.items():
        image = np.clip(image, 0, 255).astype(np.uint8)
        gh, gw = max(1, math.ceil(h / PATCH)), max(1, math.ceil(w / PATCH))
        grid = cv2.resize(mask.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
        grid = np.clip(grid * 3 + 0.15 * rng.uniform(size=grid.shape), 0, None)
        out.append((name, image, at_image_size((grid / grid.max())[None].astype(np.float32), (h, w))))
    return out


# --------------------------------------------------------------------------------------------- agreement
def _pydensecrf_q(job: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    from vpltool.ops.densecrf import dense_crf

    return dense_crf(*job)


def reference_qs(items, probs, workers: int) -> list[np.ndarray]:
    """pydensecrf's Q of every item (one process per core: it is the slow side)."""
    jobs = [(image, p) for (_, image, _), p in zip(items, probs)]
    if workers <= 1 or len(jobs) <= 1:
        return [_pydensecrf_q(job) for job in jobs]
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_pydensecrf_q, jobs))


def torch_qs(items, probs, device: str, batch_size: int) -> list[np.ndarray]:
    """The torch backend's Q of every item, ``batch_size`` images per call on ``device``."""
    import torch

    from vpltool.ops.densecrf import image_tensor, mean_field, unary

    out = []
    for start in range(0, len(items), batch_size):
        chunk = range(start, min(len(items), start + batch_size))
        images = [image_tensor(items[i][1]).to(device) for i in chunk]
        unaries = [torch.from_numpy(unary(probs[i])).view(probs[i].shape).to(device) for i in chunk]
        out += [q.cpu().numpy() for q in mean_field(images, unaries)]
    return out


def compare(reference: np.ndarray, q: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Equal fraction of the masks (argmax + 255 below ``confidence``) and of the argmax; the largest pydensecrf
    margin among the pixels that differ; the largest |dQ|."""
    from vpltool.ops.kernels import pseudo_labels

    ids = tuple(range(1, len(q)))
    a, b = pseudo_labels(reference, ids, confidence), pseudo_labels(q, ids, confidence)
    differ = a != b
    ordered = np.sort(reference, 0)
    top2 = ordered[-1] - ordered[-2] if len(q) > 1 else np.full(q.shape[1:], np.inf, np.float32)
    margin = np.minimum(top2, np.abs(reference.max(0) - confidence))
    return {"equal": float(1 - differ.mean()), "argmax_equal": float((reference.argmax(0) == q.argmax(0)).mean()),
            "differing": int(differ.sum()), "largest_margin": float(margin[differ].max()) if differ.any() else None,
            "max_abs_dq": float(np.abs(reference - q).max())}


def summarise(names: list[str], results: list[dict]) -> dict:
    worst = int(np.argmin([r["equal"] for r in results]))
    margins = [r["largest_margin"] for r in results if r["largest_margin"] is not None]
    return {"images": len(results), "worst": round(results[worst]["equal"], 6), "worst_image": names[worst],
            "mean": round(float(np.mean([r["equal"] for r in results])), 6),
            "argmax_worst": round(min(r["argmax_equal"] for r in results), 6),
            "differing_pixels": sum(r["differing"] for r in results),
            "largest_margin": max(margins) if margins else None,
            "max_abs_dq": max(r["max_abs_dq"] for r in results),
            # per image for the small named sets (photos, thin structures); the worst image says enough for the rest
            **({"per_image": {n: round(r["equal"], 6) for n, r in zip(names, results)}} if len(names) <= 12 else {})}


def agreement(items, device: str, batch_size: int, workers: int) -> dict:
    from vpltool.ops.kernels import crf_probabilities

    probs = [crf_probabilities(cams, 1.0) for _, _, cams in items]
    results = [compare(r, q) for r, q in zip(reference_qs(items, probs, workers),
                                                torch_qs(items, probs, device, batch_size))]
    pixels = int(sum(image.shape[0] * image.shape[1] for _, image, _ in items))
    return {**summarise([name for name, _, _ in items], results), "pixels": pixels}


def stage_agreement(a: Path, b: Path) -> dict:
    """The same comparison on two `crf` output folders (masks only: no Q on disk)."""
    from vpltool import io

    names = sorted(p.stem for p in a.glob("*.png"))
    equal = [float((io.read_mask(a / f"{n}.png") == io.read_mask(b / f"{n}.png")).mean()) for n in names]
    worst = int(np.argmin(equal))
    return {"images": len(names), "worst": round(equal[worst], 6), "worst_image": names[worst],
            "mean": round(float(np.mean(equal)), 6)}


# --------------------------------------------------------------------------------------------- the demo world
def toy_cams(tmp: Path, scenes: int, device: str) -> Path:
    """The demo world's text-prototype CAMs from the toy CLIP, as `make demo` makes them (REFINE=none)."""
    from vpltool.config import CamConfig, ExtractConfig, RuntimeConfig, TextPrototypesConfig
    from vpltool.data import open_dataset
    from vpltool.demo import TOY_MODEL
    from vpltool.demo.make_world import write_dataset
    from vpltool.models import ModelSpec
    from vpltool.stages.cam import run_cam
    from vpltool.stages.extract import run_extract
    from vpltool.stages.text_prototypes import run_text_prototypes

    dataset = open_dataset(write_dataset(tmp / "world", n_train=scenes, n_val=0, seed=0), "train")
    spec, runtime = ModelSpec(TOY_MODEL, "none"), RuntimeConfig(device=device, workers=1)
    run_extract(dataset, tmp / "features", spec, ExtractConfig(), runtime)
    run_text_prototypes(dataset.classes, tmp / "text.safetensors", spec,
                        TextPrototypesConfig(templates="a photo of a {}.", background="grass,sky,wall,water"),
                        device=device, source=tmp / "features")
    run_cam(tmp / "features", tmp / "text.safetensors", tmp / "cams", CamConfig(refine="none"), runtime)
    return tmp / "cams"


def gt_cams(tmp: Path, scenes: int, size: int) -> Path:
    """192 px demo scenes with CAM-like maps from their ground truth (bench_crf.py --quality's)."""
    from vpltool.data import open_dataset
    from vpltool.demo.make_world import write_dataset
    from vpltool.demo.scenes import SceneConfig

    root = write_dataset(tmp / "world", n_train=scenes, n_val=0, seed=0,
                         cfg=SceneConfig(size=size, min_diameter=size // 6, max_diameter=size // 2))
    dataset = open_dataset(root, "train")
    rng = np.random.default_rng(0)
    return write_cam_folder(tmp / "cams", dataset, lambda item: gt_like_cams(item, rng))


def cam_items(cams: Path, limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, image, CAMs at image size) of the first ``limit`` items of a `cam` folder (None: all)."""
    from vpltool import io
    from vpltool.data import open_recorded

    dataset = open_recorded(cams)
    return [(item.id, io.load_image(item.image), io.read_cam(io.cam_path(cams, item.id), dataset.classes).cams)
            for item in dataset.items[:limit]]


def demo_miou(cams: Path, out: Path, device: str, batch_size: int | None, processes: int) -> dict:
    """`crf` with each backend on ``cams``, scored by `eval`; the difference in mIoU points."""
    from vpltool.config import CrfConfig, RuntimeConfig
    from vpltool.stages.crf import run_crf
    from vpltool.stages.eval import run_eval

    miou = {}
    for backend in ("pydensecrf", "torch"):
        runtime = RuntimeConfig(device=device, workers=processes if backend == "pydensecrf" else 1,
                                batch_size=batch_size)
        run_crf(cams, out / backend, CrfConfig(backend=backend), runtime)
        miou[backend] = 100 * run_eval(out / backend)[0]["miou"]
    diff = miou["torch"] - miou["pydensecrf"]
    return {"pydensecrf": round(miou["pydensecrf"], 3), "torch": round(miou["torch"], 3),
            "difference_points": round(diff, 3), "target_points": TARGET_MIOU_POINTS,
            "meets_target": abs(diff) <= TARGET_MIOU_POINTS,
            "masks": stage_agreement(out / "pydensecrf", out / "torch")}


# --------------------------------------------------------------------------------------------- throughput
def voc_like(tmp: Path, n: int, scale: float) -> Path:
    """A cam folder over ``n`` photos laid out as a VOC root, with :func:`patch_maps` CAMs stored on the patch grid
    as `cam` stores them (`crf` upsamples them when it reads them)."""
    import torch

    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.runtime.numerics import run_numerics

    dataset = open_dataset(make_voc(tmp / "voc", n, scale), "train")
    rng, photos = np.random.default_rng(1), {}
    for item in dataset.items:  # img_<i> is PHOTOS[i % 12] (make_voc): decode each photo once
        photo = int(item.id.split("_")[1]) % len(PHOTOS)
        if photo not in photos:
            photos[photo] = io.load_image(item.image)
        image = photos[photo]
        maps = torch.from_numpy(patch_maps(image, len(item.labels), rng))
        io.write_cam(io.cam_path(tmp / "cams", item.id), maps, item.labels, classes=dataset.classes, params={},
                     id=item.id, image_size=list(image.shape[:2]),
                     numerics=run_numerics())
    io.write_stage_record(tmp / "cams", "cam", params={}, inputs={"dataset": dataset.identity()},
                          count=len(dataset.items), numerics=run_numerics())
    return tmp / "cams"


def subset_folder(cams: Path, out: Path, n: int) -> Path:
    """A cam folder with the first ``n`` CAM files of ``cams`` (same dataset)."""
    import shutil

    from vpltool import io
    from vpltool.runtime.numerics import run_numerics

    out.mkdir(parents=True)
    ids = io.item_ids(cams)[:n]
    for i in ids:
        shutil.copy(io.cam_path(cams, i), io.cam_path(out, i))
    record = io.read_stage_record(cams, "cam")
    io.write_stage_record(out, "cam", params=record["params"], inputs=record["inputs"], count=len(ids),
                          numerics=run_numerics())
    return out


def device_rate(cams: Path, device: str, batch_size: int, batches: int) -> dict:
    """img/s of the device alone: ``batches`` batches of the folder's images already on ``device``; lattice
    construction timed on its own, then the whole CRF (lattices + mean field + masks)."""
    import torch

    from vpltool.config import CrfConfig
    from vpltool.ops.densecrf import crf_labels, image_tensor, pairwise_terms, unary
    from vpltool.ops.kernels import crf_probabilities

    items = cam_items(cams, batch_size * batches)
    cfg = CrfConfig()
    loaded = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        probs = [crf_probabilities(c, 1.0) for _, _, c in chunk]
        loaded.append(([image_tensor(image).to(device) for _, image, _ in chunk],
                       [torch.from_numpy(unary(p)).view(p.shape).to(device) for p in probs],
                       [tuple(range(len(p))) for p in probs]))

    def lattices(images, unaries, rows):
        pairwise_terms(images, cfg)

    def whole(images, unaries, rows):
        crf_labels(images, unaries, rows, cfg, CONFIDENCE)

    def timed(fn) -> float:
        fn(*loaded[0])  # warm-up: CUDA loads its kernels on first use
        benchlib.synchronize(device)
        start = time.perf_counter()
        for batch in loaded:
            fn(*batch)
        benchlib.synchronize(device)
        return time.perf_counter() - start

    n = len(items)
    build, total = timed(lattices), timed(whole)
    return {"images": n, "batch_size": batch_size, "img_per_s": round(n / total, 2),
            "ms_per_image": round(1000 * total / n, 3), "lattice_ms_per_image": round(1000 * build / n, 3),
            "mean_field_ms_per_image": round(1000 * (total - build) / n, 3)}


def throughput(tmp: Path, args, peaks) -> tuple[dict, dict]:
    """The stage with each backend and the device alone; also the agreement of the two stages' masks."""
    from vpltool.config import CrfConfig, RuntimeConfig
    from vpltool.stages.crf import run_crf

    cams = voc_like(tmp, args.images, args.scale)
    reference = subset_folder(cams, tmp / "cams_reference", args.reference_images)
    out = {"images": args.images, "size": "VOC photos" if args.scale == 1 else f"VOC photos x {args.scale}"}
    with peaks.stage(f"crf --backend torch on {args.device}"):
        s = run_crf(cams, tmp / "torch", CrfConfig(backend="torch"),
                    RuntimeConfig(device=args.device, batch_size=args.batch_size, workers=args.workers))
    out["torch_stage"] = {"device": args.device, "img_per_s": round(s.images_per_s, 2), "seconds": round(s.seconds, 2),
                          "loader_workers": s.workers, "batch_size": args.batch_size or "auto"}
    with peaks.stage("crf --backend pydensecrf"):
        s = run_crf(reference, tmp / "pydensecrf", CrfConfig(backend="pydensecrf"),
                    RuntimeConfig(workers=1 if args.quick else 0))
    out["pydensecrf_stage"] = {"img_per_s": round(s.images_per_s, 2), "seconds": round(s.seconds, 2),
                               "processes": s.workers, "images": args.reference_images}
    with peaks.stage(f"torch CRF alone on {args.device}"):
        out["torch_device_only"] = device_rate(cams, args.device, args.batch_size or default_batch(args.device),
                                               args.device_batches)
    return out, stage_agreement(tmp / "pydensecrf", tmp / "torch")


def default_batch(device: str) -> int:
    import torch

    from vpltool.runtime.batches import resolve_batch_size

    return resolve_batch_size(None, torch.device(device), cpu_default=1)


# --------------------------------------------------------------------------------------------- cost model
def iteration_cost(labels: tuple[int, ...] = (2, 3, 21)) -> dict:
    """Bytes moved and float operations of one mean-field iteration on bench_cam.py's first photo (500x375) for each
    label count C of ``labels``, kernel by kernel as :class:`vpltool.ops.densecrf.Lattice` and
    :func:`~vpltool.ops.densecrf.iterate` run them (float32 values, int64 pixel-vertex indices, int32 neighbour
    indices)."""
    from vpltool.config import CrfConfig
    from vpltool.ops.densecrf import image_tensor, lattice, pixel_features

    image = photo_set(1, 1.0)[0][1]
    n, cfg = image.shape[0] * image.shape[1], CrfConfig()
    sizes = {}
    for name, sxy, srgb in (("gaussian", cfg.gaussian_sxy, None), ("bilateral", cfg.bilateral_sxy, cfg.bilateral_srgb)):
        lat = lattice(*pixel_features([image_tensor(image)], sxy, srgb), 1)
        sizes[name] = (lat.vertex.shape[1], lat.vertices)
    out = {"image": f"{image.shape[1]}x{image.shape[0]}", "pixels": n,
           "vertices": {name: m for name, (_, m) in sizes.items()}}
    for c in labels:
        total_bytes, total_flops, parts = 0, 0, {}
        for name, (d1, m) in sizes.items():
            e, rows = n * d1, m + 1
            moved = {
                "normalise_in_out": 2 * 4 * (2 * n * c + n),
                # gather the entries' values (index, rows, out), times their weights, segment sum (offsets, in, out)
                "splat": (8 * e + 8 * e * c) + (4 * e + 8 * e * c) + (8 * rows + 4 * e * c + 4 * rows * c),
                # per axis: both neighbours gathered (index, rows, out), their sum, plus 2 v
                "blur": d1 * rows * (4 * 2 + 4 * c * (2 + 2 + 2 + 1 + 2 + 1)),
                # gather the vertices' values (index, rows, out), times the weights, the sum over the d + 1
                "slice": (8 * e + 8 * e * c) + (4 * e + 8 * e * c) + (4 * e * c + 4 * n * c),
                "weight_and_add": 4 * (2 * n * c) + 4 * (3 * n * c),
            }
            flops = 2 * 2 * n * c + 2 * e * c + d1 * rows * c * 3 + 2 * e * c + 2 * n * c
            parts[name] = {"mbytes": {k: round(v / 1e6, 2) for k, v in moved.items()}, "mflop": round(flops / 1e6, 2)}
            total_bytes, total_flops = total_bytes + sum(moved.values()), total_flops + flops
        total_bytes += 4 * 2 * n * c + 4 * 3 * n * c  # -U, then the softmax (read, its sums, write)
        total_flops += 4 * n * c
        out[f"labels_{c}"] = {"kernels": parts, "mbytes_per_iteration": round(total_bytes / 1e6, 1),
                              "mflop_per_iteration": round(total_flops / 1e6, 1),
                              "flop_per_byte": round(total_flops / total_bytes, 3),
                              "gbytes_per_image_10_iterations": round(10 * total_bytes / 1e9, 2)}
    return out


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="VOC-sized photos for the throughput run (default 16; "
                        "1000 on a GPU)")
    parser.add_argument("--reference-images", type=int, default=None,
                        help="of them, how many pydensecrf also runs (default: all up to 64)")
    parser.add_argument("--batch-size", type=int, default=None, help="torch: images per batch (default: auto)")
    parser.add_argument("--device-batches", type=int, default=4, help="batches timed on the device alone")
    parser.add_argument("--workers", type=int, default=0, help="torch stage: loader processes (0 = one per core)")
    parser.add_argument("--scenes", type=int, default=60, help="demo-world scenes per demo set (default 60)")
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help="CLIP-ES photos (default all 12)")
    parser.set_defaults(scale=1.0)
    benchlib.add_common_args(parser, "2 photos and 2 throughput images at 1/5 size, 3 scenes (seconds)")
    args = benchlib.apply_quick(parser.parse_args(argv), QUICK)
    args.reference_images = min(args.images, args.reference_images or 64)
    cores = 1 if args.quick else os.cpu_count() or 1  # pydensecrf processes (--quick: no spawned pool)
    batch = args.batch_size or default_batch(args.device)
    host = benchlib.machine(args.device)
    peaks = benchlib.PeakMemory(args.device)
    thin_size = (max(32, round(375 * args.scale)), max(32, round(500 * args.scale)))
    result = {"benchmark": "densecrf", "quick": args.quick, "machine": host, "device": args.device,
              "targets": {"worst_image_equal": TARGET_EQUAL, "demo_miou_points": TARGET_MIOU_POINTS}}
    with tempfile.TemporaryDirectory(prefix="bench_densecrf_") as tmp:
        tmp = Path(tmp)
        with peaks.stage("agreement: photos, thin structures"):
            sets = {"photos": agreement(photo_set(args.photos, args.scale), args.device, batch, cores),
                    "thin": agreement(thin_set(thin_size), args.device, batch, cores)}
        with peaks.stage("demo world: toy-CLIP CAMs, GT-made CAMs"):
            toy = toy_cams(tmp / "toy", args.scenes, args.device)
            gt = gt_cams(tmp / "gt", args.scenes, 192 if not args.quick else 96)
            sets["demo_toy_cams"] = agreement(cam_items(toy), args.device, batch, cores)
            sets["demo_gt_cams"] = agreement(cam_items(gt), args.device, batch, cores)
            result["demo_miou"] = {name: demo_miou(cams, tmp / f"{name}_masks", args.device, args.batch_size, cores)
                                   for name, cams in (("toy_cams", toy), ("gt_cams", gt))}
        result["throughput"], sets["voc_stage"] = throughput(tmp, args, peaks)
    worst = min(s["worst"] for s in sets.values())
    result["agreement"] = sets
    result["worst_image_equal"] = worst
    result["meets_agreement_target"] = worst >= TARGET_EQUAL
    result["iteration_cost"] = iteration_cost()
    result["peak_memory"] = peaks.as_list()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # the guard matters: spawned pydensecrf workers re-import this file as __mp_main__
    sys.exit(main())

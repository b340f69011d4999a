"""Disk and compute per pipeline stage, measured on a few synthetic images, scaled to VOC train_aug and COCO train.

Runs the real stages (extract, text-prototypes, cam, learn-prototypes, crf, train-decoder, predict) on a handful of
synthetic photos of a typical VOC size (500x375) and COCO size (640x480) with a random ViT-B/16
(``--pretrained none``: file sizes and FLOPs do not depend on the weights), then reports per stage:

* **bytes** of what the stage writes, from the files on disk: per image where the output is per image, fitted as
  ``overhead + K x per-label-map`` for CAM files (K = labels of the image), whole files otherwise; scaled to the
  dataset with the image counts and the mean labels per image given below (assumptions, see ``DATASETS``);
* **FLOPs** per image (or per iteration) of the stage, counted by ``torch.utils.flop_counter.FlopCounterMode``
  on the actual calls (matmuls, attention, convolutions; elementwise work is not counted). learn-prototypes runs
  its chunks in worker threads the counter does not see, so its FLOPs are the stage's two matmuls, counted by
  formula (``2 x 2 x pixels x D x rows in play``);
* **seconds** per image on this machine: CPU time with ``--device cpu``, synchronised wall time with
  ``--device cuda`` (the dense CRF is CPU-only, so its cost is always measured, not estimated);
* an **ESTIMATE** of GPU seconds (no GPU measurement): the larger of a compute floor, FLOPs / ``--gpu-tflops``, and
  an I/O floor, bytes read + written / ``--disk-gbs``; for learn-prototypes the feature traffic per iteration from
  GPU memory (``--gpu-bandwidth-gbs``) or, when the features do not fit ``--gpu-memory-gb``, from disk. All four
  rates are assumptions recorded in the result. Real runs are slower than these floors wherever image decoding,
  Python overhead or small kernels dominate (batch-1 GradCAM, the decoder's data loading).

Prints one JSON object.

    python bench/stage_costs.py [--voc-images 6] [--coco-images 3] [--gpu-tflops 50] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "model_configs"  # the tiny vpl-test-vit

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils import flop_counter  # noqa: E402

from vpltool import io  # noqa: E402
from vpltool.config import (  # noqa: E402
    CamConfig,
    CrfConfig,
    DecoderConfig,
    ExtractConfig,
    LearnPrototypesConfig,
    PredictConfig,
    RuntimeConfig,
    presets,  # noqa: E402
)
from vpltool.data import open_dataset  # noqa: E402
from vpltool.models import ModelSpec, load_backbone  # noqa: E402
from vpltool.stages.cam import run_cam  # noqa: E402
from vpltool.stages.crf import run_crf  # noqa: E402
from vpltool.stages.extract import run_extract  # noqa: E402
from vpltool.stages.learn_prototypes import run_learn_prototypes  # noqa: E402
from vpltool.stages.predict import run_predict  # noqa: E402
from vpltool.stages.text_prototypes import build_text_prototypes  # noqa: E402
from vpltool.stages.train_decoder import run_train_decoder  # noqa: E402

import benchlib  # noqa: E402
from benchlib import PeakMemory, machine, synchronize  # noqa: E402

# Dataset figures the measurements are scaled to. Image counts: CLIP-ES's split lists (linyq2117/CLIP-ES
# voc12/*.txt, coco14/*.txt).
# Labels per image are ASSUMPTIONS (they set the size of the CAM folders): VOC from the label-count shares used by
# bench_learn_prototypes.py (62 % / 28 % / 10 % of images with 1 / 2 / 3 classes), COCO the COCO paper's
# "3.5 categories per image" (Lin et al. 2014). Override them with --voc-labels / --coco-labels.
DATASETS = {
    "voc": {"train": 10_582, "train_split": "train_aug", "val": 1_449, "size": (375, 500), "classes": "voc",
            "labels_per_image": 1.48, "box_threshold": 0.4},
    "coco": {"train": 82_081, "train_split": "train", "val": 40_137, "size": (480, 640), "classes": "coco",
             "labels_per_image": 3.5, "box_threshold": 0.7},
}
# The paper's schedules: 3000 projected-gradient iterations (phase 1), 30,000 decoder iterations of batch 6.
PAPER = {"learn_iters": 3000, "decoder_iters": 30_000, "batch_size": 6, "crop_size": 320}
# --quick: a smoke test of the script (tiny random ViT, small images, tiny decoder), not a measurement
QUICK = {"model": "vpl-test-vit", "voc_images": 6, "coco_images": 3, "scale": 0.25,
         "decoder": {"dim": 32, "layers": 1, "heads": 2, "crop_size": 64}}


# --------------------------------------------------------------------------------------------- inputs
def write_images(root: Path, n: int, size: tuple[int, int], classes: tuple[str, ...], seed: int = 0) -> Path:
    """A generic-folder dataset of ``n`` smooth random JPEG 'photos' of ``size`` (H, W); image i has
    ``1 + i % 3`` labels, so the CAM file sizes can be fitted against the label count."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    h, w = size
    for i in range(n):
        small = rng.integers(0, 255, (max(h // 25, 2), max(w // 25, 2), 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / "images" / f"img_{i:03d}.jpg", quality=90)
        labels = rng.choice(classes, size=1 + i % 3, replace=False)
        rows.append(f"img_{i:03d},{';'.join(labels)}")
    (root / "labels.csv").write_text("id,labels\n" + "\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(("background", *classes)) + "\n")
    return root


def item_bytes(folder: Path, suffix: str) -> dict[str, int]:
    """Size of each per-image output file ``<id><suffix>`` of a stage folder (the stage record excluded)."""
    return {p.name[: -len(suffix)]: p.stat().st_size for p in folder.glob(f"*{suffix}")}


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fit_per_label(sizes: dict[str, int], labels: dict[str, int]) -> tuple[float, float]:
    """Least-squares ``bytes = overhead + per_label x K`` over the CAM files (K = 1..3 in the synthetic set)."""
    k = np.array([labels[i] for i in sizes], dtype=float)
    b = np.array(list(sizes.values()), dtype=float)
    per_label, overhead = np.polyfit(k, b, 1)
    return float(overhead), float(per_label)


def _cpu_attention_flops() -> dict:
    """FLOP formulas for CPU's fused attention ops, which torch's counter lacks (it has the CUDA ones)."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v))
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_backward_flop_count(g, q, k, v))
    return mapping


class Counted:
    """FLOPs and seconds of one block of calls (``with Counted(device) as c: ...; c.flops, c.seconds``).

    Seconds are this process's CPU time on CPU (its own work, whatever the neighbours do) and synchronised wall
    time on CUDA. nn.MultiheadAttention's inference fast path is one fused op the counter cannot see (it would miss
    the attention projections), so it is switched off inside the block; the seconds are taken on the same,
    slightly slower, unfused path.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __enter__(self) -> Counted:
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        self._mode = flop_counter.FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops())
        self._mode.__enter__()
        self._clock = time.process_time if self.device == "cpu" else time.perf_counter
        self._start = self._clock()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = self._clock() - self._start
        self._mode.__exit__(*exc)
        torch.backends.mha.set_fastpath_enabled(self._fastpath)
        self.flops = int(self._mode.get_total_flops())


# --------------------------------------------------------------------------------------------- one dataset
def measure_dataset(name: str, tmp: Path, bb, spec: ModelSpec, n: int, scale: float, device: str,
                    peaks: PeakMemory) -> dict:
    """extract -> text-prototypes -> cam -> learn-prototypes -> crf on ``n`` synthetic images of ``name``'s size."""
    ds = DATASETS[name]
    size = tuple(max(16, round(s * scale)) for s in ds["size"])
    classes = presets.PRESETS[ds["classes"]]
    dataset = open_dataset(write_images(tmp / f"{name}_data", n, size, classes))
    labels = {it.id: len(it.labels) for it in dataset.items}
    runtime = RuntimeConfig(device=device, workers=1)
    out: dict = {"image_size": f"{size[1]}x{size[0]}", "images_measured": n}

    with peaks.stage(f"{name}: extract"), Counted(device) as c:
        run_extract(dataset, tmp / f"{name}_features", spec, ExtractConfig(), runtime, backbone=bb)
    feats = item_bytes(tmp / f"{name}_features", ".safetensors")
    first = io.read_tensors(next((tmp / f"{name}_features").glob("img_*.safetensors")), kind="features")
    out["patch_grid"] = first.meta("grid")
    out["extract"] = {"bytes_per_image": float(np.mean(list(feats.values()))), "flops_per_image": c.flops / n,
                      "s_per_image": c.seconds / n,
                      "cache": ExtractConfig().cache,  # the default: dense features only
                      "tensor_bytes": {k: t.numel() * t.element_size() for k, t in first.tensors.items()}}

    text = build_text_prototypes(bb, dataset.classes)
    io.write_prototypes(tmp / f"{name}_text.safetensors", text)
    out["text_prototypes"] = {"bytes": tree_bytes(tmp / f"{name}_text.safetensors")}

    cam_cfg = CamConfig(box_threshold=ds["box_threshold"])
    with peaks.stage(f"{name}: cam"), Counted(device) as c:
        run_cam(tmp / f"{name}_features", tmp / f"{name}_text.safetensors", tmp / f"{name}_cams", cam_cfg, runtime,
                backbone=bb)
    overhead, per_label = fit_per_label(item_bytes(tmp / f"{name}_cams", ".safetensors"), labels)
    out["cam"] = {"bytes_overhead": overhead, "bytes_per_label_map": per_label, "flops_per_image": c.flops / n,
                  "s_per_image": c.seconds / n, "labels_measured": sorted(set(labels.values()))}

    lp = tmp / f"{name}_vision.safetensors"
    summary = run_learn_prototypes(tmp / f"{name}_features", tmp / f"{name}_cams", tmp / f"{name}_text.safetensors",
                                   lp, replace(LearnPrototypesConfig(), iters=2), runtime)
    plot = Path(summary["plot"]) if summary.get("plot") else None  # the loss-curve PNG beside the file
    out["learn_prototypes"] = {"bytes": tree_bytes(lp) + (tree_bytes(plot) if plot else 0),
                               "dim": int(text.vectors.shape[1]), "background_rows": len(text.background_rows())}

    with peaks.stage(f"{name}: crf (1 process)"), Counted(device) as c:
        run_crf(tmp / f"{name}_cams", tmp / f"{name}_pseudo", CrfConfig(), RuntimeConfig(workers=1))
    out["crf"] = {"bytes_per_image": float(np.mean(list(item_bytes(tmp / f"{name}_pseudo", ".png").values()))),
                  "s_per_image": c.seconds / n}
    return out


def measure_decoder(tmp: Path, bb, spec: ModelSpec, device: str, decoder_cfg: dict, peaks: PeakMemory) -> dict:
    """One train-decoder iteration at the paper's batch and crop on the VOC-sized pseudo masks, then predict on
    two images with predict's defaults (scales 1.0 + 0.75, flip): file sizes and FLOPs."""
    runtime = RuntimeConfig(device=device, workers=0)
    cfg = replace(DecoderConfig(), iters=1, checkpoint_every=1, log_every=1, **decoder_cfg)
    with peaks.stage("train-decoder (1 iteration)"), Counted(device) as c:
        run_train_decoder(tmp / "voc_pseudo", tmp / "voc_vision.safetensors", tmp / "decoder", cfg, runtime,
                          backbone=bb)
    files = {"decoder.safetensors": tree_bytes(tmp / "decoder" / "decoder.safetensors"),
             "checkpoints/": tree_bytes(tmp / "decoder" / "checkpoints")}
    out = {"bytes": sum(files.values()), "files": files, "flops_per_iteration": c.flops,
           "s_per_iteration": c.seconds, "batch_size": cfg.batch_size, "crop_size": cfg.crop_size}
    val = open_dataset(tmp / "voc_data")
    n = 2
    (tmp / "voc_data" / "splits").mkdir(exist_ok=True)
    (tmp / "voc_data" / "splits" / "val.txt").write_text("\n".join(it.id for it in val.items[:n]) + "\n")
    with peaks.stage("predict"), Counted(device) as c:
        run_predict(tmp / "decoder" / "decoder.safetensors", tmp / "voc_data", "val", tmp / "pred", PredictConfig(),
                    runtime, backbone=bb)
    predict = {"bytes_per_image": float(np.mean(list(item_bytes(tmp / "pred", ".png").values()))),
               "flops_per_image": c.flops / n, "s_per_image": c.seconds / n}
    return {"train_decoder": out, "predict": predict}


# --------------------------------------------------------------------------------------------- scaling
def scale_to_dataset(name: str, m: dict, dec: dict, labels_per_image: float, hw: dict) -> dict:
    """Per-stage totals for the whole dataset: GB written, TFLOPs, seconds at this machine's measured rate, and the
    GPU-seconds ESTIMATE: the larger of a compute floor (FLOPs / ``hw["gpu_tflops"]``) and an I/O floor
    (bytes read + written / ``hw["disk_gbs"]``), every rate an assumption recorded in the result."""
    ds = DATASETS[name]
    n, n_val = ds["train"], ds["val"]
    h, w = m["patch_grid"]
    feat = m["extract"]["bytes_per_image"]
    cam_per_image = m["cam"]["bytes_overhead"] + labels_per_image * m["cam"]["bytes_per_label_map"]
    lp = learn_prototypes_cost(n * h * w, m["learn_prototypes"], labels_per_image, hw)

    def row(stage, count, written, flops=None, read=0.0, measured_s=None, note="", floor=None):
        compute_s = None if flops is None else flops / (hw["gpu_tflops"] * 1e12)
        io_s = (read + written) / (hw["disk_gbs"] * 1e9)
        if floor is not None:  # a stage-specific floor (learn-prototypes' memory traffic)
            compute_s, io_s = max(compute_s, floor[0]), floor[1]
        gpu_s = None if compute_s is None else max(compute_s, io_s)
        return {"stage": stage, "count": count, "disk_gb": sig(written / 1e9), "tflop": sig(flops and flops / 1e12),
                "gpu_seconds_estimate": sig(gpu_s),
                "bound": None if gpu_s is None else ("compute" if compute_s >= io_s else "I/O"),
                "measured_rate_seconds": sig(measured_s), "note": note}

    rows = [
        row("extract", n, n * feat, n * m["extract"]["flops_per_image"], measured_s=n * m["extract"]["s_per_image"],
            note=f"{h}x{w} patches, --cache {m['extract'].get('cache', 'full')}: "
                 f"{'dense features' if m['extract'].get('cache') == 'light' else 'dense + tokens + attention'}, "
                 "fp16; JPEG decoding not counted"),
        row("text-prototypes", 1, m["text_prototypes"]["bytes"], note="one small file; seconds on any device"),
        row("cam (text prototypes)", n, n * cam_per_image, n * m["cam"]["flops_per_image"], read=n * feat,
            measured_s=n * m["cam"]["s_per_image"],
            note=f"{labels_per_image:g} label maps per image (assumed), float32 on the patch grid; with a light "
                 "cache the frozen blocks run again here"),
        row(f"learn-prototypes ({PAPER['learn_iters']} iterations)", PAPER["learn_iters"],
            m["learn_prototypes"]["bytes"], lp["flops"], floor=(lp["memory_s"], lp["disk_s"]), note=lp["note"]),
        row("cam (vision prototypes)", n, n * cam_per_image, n * m["cam"]["flops_per_image"], read=n * feat,
            measured_s=n * m["cam"]["s_per_image"], note="as cam (text)"),
        row("crf (pseudo masks)", n, n * m["crf"]["bytes_per_image"], read=n * cam_per_image,
            measured_s=n * m["crf"]["s_per_image"],
            note="CPU only (pydensecrf): core time measured here, divide by --workers; PNGs of synthetic CAMs"),
        row(f"train-decoder ({PAPER['decoder_iters']:,} iterations)", PAPER["decoder_iters"],
            dec["train_decoder"]["bytes"], PAPER["decoder_iters"] * dec["train_decoder"]["flops_per_iteration"],
            measured_s=PAPER["decoder_iters"] * dec["train_decoder"]["s_per_iteration"],
            note=f"batch {dec['train_decoder']['batch_size']}, crop {dec['train_decoder']['crop_size']}; "
                 "decoder + last checkpoint; image decoding and augmentation not counted"),
        row("predict (val)", n_val, n_val * dec["predict"]["bytes_per_image"],
            n_val * dec["predict"]["flops_per_image"], measured_s=n_val * dec["predict"]["s_per_image"],
            note="scales 1.0 + 0.75, flip; the test-time CRF (--crf) adds CPU time like crf"),
    ]
    return {"train_images": n, "train_split": ds["train_split"], "val_images": n_val,
            "labels_per_image_assumed": labels_per_image, "stages": rows,
            "total_disk_gb": sig(sum(r["disk_gb"] or 0 for r in rows)), "learn_prototypes": lp}


def learn_prototypes_cost(pixels: int, m: dict, labels_per_image: float, hw: dict) -> dict:
    """FLOPs and floors of ``PAPER["learn_iters"]`` full-batch iterations over ``pixels`` features.

    Each iteration is two matmuls over the rows in play (the image's classes + the background rows) and reads every
    feature once: from GPU memory when the stage's resident estimate (``prototypes.estimate_bytes``: bf16 features
    + 5 bytes per row in play) fits its budget (60 % of free GPU memory), else from scratch shards on disk.
    """
    dim, iters = m["dim"], PAPER["learn_iters"]
    rows_in_play = labels_per_image + m["background_rows"]
    resident = pixels * (dim * 2 + 5 * rows_in_play)
    fits = resident <= 0.6 * hw["gpu_memory_gb"] * 1e9
    memory_s = iters * pixels * dim * 2 / (hw["gpu_bandwidth_gbs"] * 1e9)
    disk_s = 0.0 if fits else iters * resident / (hw["disk_gbs"] * 1e9)
    where = ("resident on the GPU" if fits else
             f"more than 60 % of {hw['gpu_memory_gb']:g} GB: streamed from disk every iteration")
    return {"pixels": pixels, "flops": 2 * 2 * pixels * dim * rows_in_play * iters, "resident_gb": sig(resident / 1e9),
            "fits_gpu": fits, "memory_s": memory_s, "disk_s": disk_s,
            "note": f"{pixels / 1e6:.0f} M pixel features, {resident / 1e9:.1f} GB with targets, {where}"}


def sig(x: float | None, digits: int = 3) -> float | None:
    """``x`` rounded to ``digits`` significant digits (None and 0 pass through)."""
    if not x:
        return x
    return float(f"{x:.{digits}g}")


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--voc-images", type=int, default=6, help="synthetic VOC-sized images (>= the decoder batch 6)")
    ap.add_argument("--coco-images", type=int, default=3)
    ap.add_argument("--voc-labels", type=float, default=DATASETS["voc"]["labels_per_image"])
    ap.add_argument("--coco-labels", type=float, default=DATASETS["coco"]["labels_per_image"])
    # the GPU-time ESTIMATE's rates: assumptions, recorded in the result; rescale the estimate for your machine
    ap.add_argument("--gpu-tflops", type=float, default=50.0, help="ASSUMED sustained bf16 matmul rate, TFLOP/s")
    ap.add_argument("--gpu-bandwidth-gbs", type=float, default=1000.0, help="ASSUMED GPU memory bandwidth, GB/s")
    ap.add_argument("--gpu-memory-gb", type=float, default=80.0, help="ASSUMED GPU memory, GB")
    ap.add_argument("--disk-gbs", type=float, default=1.0, help="ASSUMED disk read/write bandwidth, GB/s")
    benchlib.add_common_args(ap, "tiny random ViT, half-size images (seconds)",
                             device_help="cpu | cuda (FLOPs and sizes do not depend on it)")
    args = ap.parse_args(argv)
    args.scale, args.decoder = 1.0, {}
    return benchlib.apply_quick(args, QUICK)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spec = ModelSpec(args.model, "none", config_dir=str(ASSETS))
    bb = load_backbone(spec, args.device)
    peaks = PeakMemory(args.device)
    measured = {}
    with tempfile.TemporaryDirectory(prefix="stage_costs_") as tmp:
        tmp = Path(tmp)
        measured["voc"] = measure_dataset("voc", tmp, bb, spec, args.voc_images, args.scale, args.device, peaks)
        decoder = measure_decoder(tmp, bb, spec, args.device, args.decoder, peaks)
        measured["coco"] = measure_dataset("coco", tmp, bb, spec, args.coco_images, args.scale, args.device, peaks)
    hw = {k: getattr(args, k) for k in ("gpu_tflops", "gpu_bandwidth_gbs", "gpu_memory_gb", "disk_gbs")}
    result = {
        "benchmark": "stage-costs",
        "quick": args.quick,
        "model": args.model,
        "weights": "random",  # file sizes and FLOPs do not depend on the weights, only on shapes
        "device": args.device,
        "machine": machine(args.device),
        # what the measured seconds per item are: the last column of the tables, scaled to the dataset
        "rate": "CPU core time" if args.device == "cpu" else "GPU wall time (synchronised)",
        "assumptions": {**hw, "voc_labels_per_image": args.voc_labels, "coco_labels_per_image": args.coco_labels},
        "measured": {**measured, **decoder},
        "voc": scale_to_dataset("voc", measured["voc"], decoder, args.voc_labels, hw),
        "coco": scale_to_dataset("coco", measured["coco"], decoder, args.coco_labels, hw),
        "peak_memory": peaks.as_list(),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()

"""CAM throughput: vpltool (batched classes, cached frozen blocks) vs the CLIP-ES per-class, batch-1 formulation.

Both run on the same random ViT-B/16 weights and the same VOC-sized synthetic images (~500x375, 1-3 labels of 20
VOC classes + 25 background words). The CLIP-ES formulation is rebuilt from the same primitives, structured as
`generate_cams_voc12.py:perform` is: frozen blocks once per image with every attention map kept, then for each
present class one forward of the last block + one backward + CAA.

Prints one JSON object: images/s of the CLIP-ES formulation, of vpltool's first full pass (extract + cam), of a
second cam pass from the cache with other prototypes, the speed-ups, the machine, and the peak memory of each of
the three (host RSS; on CUDA also the allocator's peak).

    python benchmarks/bench_cam.py [--images 20] [--device cpu|cuda] [--model ViT-B-16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "model_configs"  # the tiny vpl-test-vit
QUICK = {"images": 3, "model": "vpl-test-vit"}  # --quick: a smoke test of the script, not a measurement

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vpltool import io, presets  # noqa: E402
from vpltool.backbone import ModelSpec, load_backbone  # noqa: E402
from vpltool.cam import affinity, refine, run_cam  # noqa: E402
from vpltool.config import CamConfig, ExtractConfig, RuntimeConfig  # noqa: E402
from vpltool.data import open_dataset  # noqa: E402
from vpltool.extract import run_extract  # noqa: E402
from vpltool.io import load_image  # noqa: E402
from vpltool.kernels import upsample  # noqa: E402
from vpltool.text_prototypes import build_text_prototypes  # noqa: E402

import benchlib  # noqa: E402
from benchlib import PeakMemory, machine, synchronize  # noqa: E402


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """A generic-folder dataset of n smooth random 'photos' with 1-3 VOC labels each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        h, w = (375, 500) if i % 3 else (500, 375)  # VOC's two common orientations
        small = rng.integers(0, 255, (h // 25, w // 25, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / "images" / f"img_{i:03d}.jpg", quality=90)
        labels = rng.choice(presets.VOC_CLASSES, size=int(rng.integers(1, 4)), replace=False)
        rows.append(f"img_{i:03d},{';'.join(labels)}")
    (root / "labels.csv").write_text("id,labels\n" + "\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(("background", *presets.VOC_CLASSES)) + "\n")
    return root


def clip_es_formulation(bb, dataset, protos, cfg: CamConfig) -> float:
    """Seconds for CLIP-ES's structure: per image, frozen blocks once (all attention maps), then per class one
    last-block forward + backward, CAA per class."""
    rows_of = protos.class_rows()
    bg = protos.vectors[protos.background_rows()]
    start = time.perf_counter()
    for item in dataset.items:
        image = load_image(item.image)
        size = bb.input_size(*image.shape[:2])
        grid = (size[0] // bb.patch_size, size[1] // bb.patch_size)
        with torch.no_grad():  # CLIP-ES keeps all maps
            enc = bb.encode(bb.preprocess(image, size)[None], stop=bb.n_blocks - 1, attention_from=0)
        x, attns = enc.tokens, enc.attentions
        prev = torch.stack([a[0, 1:, 1:] for a in attns[-(cfg.attention_blocks - 1):]]).mean(0)
        labels = list(item.labels)
        trans = None
        for j, c in enumerate(labels):
            order = [c] + [o for o in labels if o != c]  # class j first, then the other present classes
            rows = torch.cat([protos.vectors[rows_of[[o - 1 for o in order]]], bg])
            out = bb.gradcam(x[0], grid, rows, 1, protos.temperature)
            cam, attn_last = out.maps, out.attention
            if trans is None:  # CLIP-ES builds the affinity once per image, at the first class
                trans = affinity((prev * (cfg.attention_blocks - 1) + attn_last[1:, 1:]) / cfg.attention_blocks)
            upsample(refine(cam, trans, cfg.box_threshold).maps, image.shape[:2])
    synchronize(str(bb.device))
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--model", default="ViT-B-16")
    benchlib.add_common_args(ap, f"{QUICK['images']} images, the tiny random {QUICK['model']} (seconds)")
    return benchlib.apply_quick(ap.parse_args(argv), QUICK)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    spec = ModelSpec(args.model, "none", config_dir=str(ASSETS))
    runtime = RuntimeConfig(device=args.device, batch_size=8)
    cfg = CamConfig()
    peaks = PeakMemory(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = open_dataset(make_images(tmp / "data", args.images))
        bb = load_backbone(spec, args.device)
        text = build_text_prototypes(bb, dataset.classes)
        io.write_prototypes(tmp / "text.safetensors", text)
        other = io.Prototypes(torch.nn.functional.normalize(text.vectors.flip(1), dim=1), text.row_class,
                              text.row_names, classes=text.classes, temperature=text.temperature, source="vision",
                              model=text.model)
        io.write_prototypes(tmp / "other.safetensors", other)

        with peaks.stage("clip_es_formulation") as base:
            clip_es_formulation(bb, dataset, text, cfg)
        with peaks.stage("vpltool_first_pass (extract + cam)") as first:
            t0 = time.perf_counter()
            run_extract(dataset, tmp / "features", spec, ExtractConfig(), runtime, backbone=bb)
            synchronize(args.device)
            extract_s = time.perf_counter() - t0
            run_cam(tmp / "features", tmp / "text.safetensors", tmp / "cams_a", cfg, runtime, backbone=bb)
        with peaks.stage("vpltool_second_pass (cam from the cache)") as second:
            run_cam(tmp / "features", tmp / "other.safetensors", tmp / "cams_b", cfg, runtime, backbone=bb)

    n = args.images
    result = {
        "benchmark": "cam",
        "quick": args.quick,
        "model": args.model,
        "weights": "random",
        "device": args.device,
        "machine": machine(args.device),
        "note": "model loading excluded from every figure (the same loaded backbone is reused)",
        "images": n,
        "labels_per_image": round(float(np.mean([len(it.labels) for it in dataset.items])), 2),
        "clip_es_formulation_images_per_s": round(n / base.seconds, 3),
        "vpltool_first_pass_images_per_s": round(n / first.seconds, 3),
        "vpltool_extract_s": round(extract_s, 2),
        "vpltool_cam_s": round(first.seconds - extract_s, 2),
        "vpltool_second_pass_images_per_s": round(n / second.seconds, 3),
        "first_pass_speedup": round(base.seconds / first.seconds, 2),
        "second_pass_speedup_vs_first": round(first.seconds / second.seconds, 2),
        "second_pass_speedup_vs_clip_es": round(base.seconds / second.seconds, 2),
        "peak_memory": peaks.as_list(),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()

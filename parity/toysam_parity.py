"""Does vpltool's ``sam`` family, on the shipped toy SAM, compute what segment-anything's own ``SamPredictor`` does?

    python parity/toysam_parity.py --ref /path/to/segment-anything --work W [--images 12] [--threads 1] \\
        > parity/results/toysam_parity.json

``--ref`` is a clone of facebookresearch/segment-anything (compared at dca509f). ``toysam_ref_runner.py`` builds the
clone's own ``Sam`` at the toy's shapes, loads ``vpltool/assets/toy-sam/model.safetensors`` into it strictly and runs
``SamPredictor`` (``set_image``, ``predict(..., return_logits=True)``) on the 12 parity photos (``bench_cam.PHOTOS``)
with four prompts each (a point; a box; a point and a box, one mask; a foreground and a background point, one
mask). vpltool loads the same file through the registry (``load_model("sam", SamSpec("toy", FILE, prompt=True))``)
and answers the same prompts with :meth:`vpltool.models.backbones.sam.SamEncoder.features` and ``predict``. fp32, CPU.

What is compared: the decoded photo; the image embedding; per prompt the mask logits at the photo's size, the
predicted IoUs, the low-resolution logits, and the masks (logits > 0). What is not: the training
(`train-toy-sam`), since segment-anything releases no training code; its recipe follows the SAM paper's appendix.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from toysam_ref_runner import prompts  # noqa: E402  (the prompts, defined once; it imports nothing from vpltool)

from benchlib import machine  # noqa: E402

SHIPPED = ROOT / "vpltool" / "assets" / "toy-sam" / "model.safetensors"
COMMIT = "dca509fe793f601edb92606367a655c15ac00fdf"


def _git_head(clone: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def vpltool_answer(sam, image: np.ndarray, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prompt in SAM's input frame (ResizeLongestSide's ``apply_coords`` / ``apply_boxes``), then
    :meth:`SamEncoder.predict`: ``[M, H, W]`` logits, ``[M]`` IoUs, ``[M, 4g, 4g]`` low-resolution logits."""
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = image.shape[:2]
    nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, sam.img_size)
    scale = torch.tensor([nw / w, nh / h])
    points = labels = boxes = None
    if "point_coords" in kwargs:
        points = torch.as_tensor(kwargs["point_coords"], dtype=torch.float32)[None] * scale
        labels = torch.as_tensor(kwargs["point_labels"], dtype=torch.float32)[None]
    if "box" in kwargs:
        boxes = (torch.as_tensor(kwargs["box"], dtype=torch.float32).view(2, 2) * scale).view(1, 4)
    features = sam.features(sam.prepare(image)[0])
    logits, iou, low = sam.predict(features, points, boxes, None, (nh, nw), (h, w), labels=labels,
                                   multimask=kwargs["multimask_output"])
    return logits[0], iou[0], low[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="a clone of facebookresearch/segment-anything")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=SHIPPED)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import bench_cam

    from vpltool.io import load_image
    from vpltool.models.backbones.sam import SamSpec
    from vpltool.models.registry import load_model

    torch.set_num_threads(args.threads)
    voc = args.work / "voc"
    photos = voc / "JPEGImages"
    if len(list(photos.glob("*.jpg"))) != args.images:
        bench_cam.make_voc(voc, args.images)
    ref_out = args.work / "ref"
    start = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "toysam_ref_runner.py"), "--clone",
                    str(args.ref), "--weights", str(args.weights), "--photos", str(photos), "--out", str(ref_out),
                    "--threads", str(args.threads)], check=True)
    ref_seconds = time.perf_counter() - start
    sam = load_model("sam", SamSpec("toy", str(args.weights), prompt=True), "cpu")
    worst = {"features": 0.0, "mask_logits": 0.0, "iou": 0.0, "low_res_logits": 0.0}
    masks_equal, masks_total, per_photo, images_equal = 0, 0, [], True
    for i, path in enumerate(sorted(photos.glob("*.jpg"))[: args.images]):
        ref = torch.load(ref_out / f"photo_{i:03d}.pt", weights_only=True)
        image = load_image(path)
        images_equal &= bool(np.array_equal(image, ref["image"].numpy()))
        feats = sam.features(sam.prepare(image)[0])
        row = {"file": path.name, "features": float((feats - ref["features"]).abs().max())}
        worst["features"] = max(worst["features"], row["features"])
        for name, kwargs in prompts(*image.shape[:2]).items():
            logits, iou, low = vpltool_answer(sam, image, kwargs)
            r = ref["prompts"][name]
            d = {"mask_logits": float((logits - r["masks"]).abs().max()), "iou": float((iou - r["iou"]).abs().max()),
                 "low_res_logits": float((low - r["low"]).abs().max())}
            for k, v in d.items():
                worst[k] = max(worst[k], v)
            masks_equal += int(((logits > 0) == (r["masks"] > 0)).sum())
            masks_total += logits.numel()
            row[name] = d
        per_photo.append(row)
    print(json.dumps({
        "machine": machine(), "reference": {"repo": "facebookresearch/segment-anything", "commit": _git_head(args.ref)
                                            or f"{COMMIT} (the clone has no .git; compared at this commit)"},
        "weights": str(args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights),
        "photos": len(per_photo), "prompts": list(prompts(2, 2)), "images_decoded_equal": images_equal,
        "max_abs_diff": worst, "mask_agreement": masks_equal / max(masks_total, 1),
        "bar": "max |diff| <= 1e-4 and >= 99.9 % equal mask pixels",
        "met": bool(images_equal and max(worst.values()) <= 1e-4 and masks_equal / max(masks_total, 1) >= 0.999),
        "ref_seconds": round(ref_seconds, 1), "per_photo": per_photo}, indent=1))


if __name__ == "__main__":
    main()

"""vpltool's ``train-decoder --recipe weclip`` / ``weclip+`` against WeCLIP's OWN code (zbf1991/WeCLIP); prints ONE
JSON object (``parity/results/weclip_parity.json``).

    python parity/weclip_parity.py --ref DIR [--work DIR] [--images 12] [--crops 4] [--steps 3] [--threads 1]
    python parity/weclip_parity.py --quick      # plumbing only: no clone (the reference is not run)

``--ref DIR`` is a clone of zbf1991/WeCLIP (the folder holding ``WeCLIP/`` and ``WeCLIP+/``). Its code never enters
this repository: it runs in its own process through ``weclip_ref_runner.py`` (its module docstring says what is put
around it: stubs of unused imports, ``.cuda()`` / ``.half()`` as the identity, fp32 on the CPU, Dropout2d off).

Set-up: random ``ViT-B-16-quickgelu`` weights (seed 0, fp16-exact values, OpenAI's layout, as ``bench_cam.py`` makes
them) and the 12 parity photos (``bench_cam.PHOTOS``) as a VOC root: ``JPEGImages``, ``SegmentationClassAug`` (one
PNG per photo holding its VOC labels, which is where WeCLIP reads an image's labels from), ``train.txt`` /
``val.txt`` and ``cls_labels_onehot.npy``.

The figures, each with its bar (:data:`BARS`), for each recipe:

* ``pseudo_labels`` (share of equal labels, >= 0.999) and ``refined_cams`` (max |Δ|, <= 1e-4): the online pseudo
  mask of each crop of the fixed batch, before RFM and after it (given the same decoder affinity);
* ``logits`` and ``affinity`` (max |Δ|, <= 1e-5): the decoder's output and ``sigmoid(FᵀF)`` on the same features;
* ``loss``, ``grads``, ``steps`` (max |Δ|, <= 1e-5): the total loss, the gradients and the parameters after each of
  three AdamW steps, and the learning rates, on the fixed batch;
* ``test_logits`` (max |Δ|, <= 1e-4) and ``crf_labels`` (share equal, >= 0.999): the test script's multi-scale +
  flip logits and its CRF'd prediction on the photos.

A piece vpltool does not have yet is reported ``"compared": false`` with the reason, never as met.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "bench")]
import benchlib  # noqa: E402

VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
       "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# figure -> (kind, bar): "max" = max |Δ| <= bar, "share" = share of equal labels >= bar
BARS: dict[str, tuple[str, float]] = {
    "pseudo_labels": ("share", 0.999), "refined_cams": ("max", 1e-4),
    "pseudo_labels_rfm": ("share", 0.999), "refined_cams_rfm": ("max", 1e-4),
    "logits": ("max", 1e-5), "affinity": ("max", 1e-5),
    "loss": ("max", 1e-5), "grads": ("max", 1e-5), "steps": ("max", 1e-5), "lr": ("max", 1e-12),
    "test_logits": ("max", 1e-4), "crf_labels": ("share", 0.999),
}
RECIPES = ("weclip", "weclip+")


# --------------------------------------------------------------------------------------------- set-up
def make_voc(root: Path, images: int) -> Path:
    """The parity photos as a VOC root WeCLIP's datasets read (see the module docstring); returns ``root``.

    The label PNG of a photo is background with one horizontal band per label (value ``class index + 1``): WeCLIP
    takes an image's labels from the PNG's unique values, and the test script only reads its size."""
    import bench_cam
    import numpy as np
    from PIL import Image

    bench_cam.make_voc(root, images)
    (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    names, onehot = [], {}
    for i in range(images):
        name = f"img_{i:03d}"
        w, h = Image.open(root / "JPEGImages" / f"{name}.jpg").size
        labels = bench_cam.PHOTOS[i % len(bench_cam.PHOTOS)][3]
        mask = np.zeros((h, w), np.uint8)
        for k, c in enumerate(labels):
            band = h // (len(labels) + 1)
            mask[(k + 1) * band - band // 2:(k + 1) * band + band // 2] = VOC.index(c) + 1
        Image.fromarray(mask).save(root / "SegmentationClassAug" / f"{name}.png")
        vec = np.zeros(20, np.uint8)
        vec[[VOC.index(c) for c in labels]] = 1
        onehot[name] = vec
        names.append(name)
    lists = root / "ImageSets" / "Segmentation"
    for split in ("train", "val"):
        (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    np.save(lists / "cls_labels_onehot.npy", onehot)
    return root


def setup(work: Path, images: int, model: str = "ViT-B-16-quickgelu") -> tuple[Path, Path, Path]:
    """Weights (.pt, .safetensors) and the VOC root in ``work``, made once."""
    import bench_cam

    pt, st, marker = work / "weights.pt", work / "weights.safetensors", work / "weights.json"
    if not (pt.is_file() and st.is_file() and marker.is_file() and json.loads(marker.read_text()) == {"model": model}):
        bench_cam.make_weights(work, model)
        marker.write_text(json.dumps({"model": model}))
    voc = work / "voc"
    if not (voc / "ImageSets" / "Segmentation" / "cls_labels_onehot.npy").is_file() or \
            len(list((voc / "JPEGImages").glob("*.jpg"))) != images:
        import shutil

        shutil.rmtree(voc, ignore_errors=True)
        make_voc(voc, images)
    return pt, st, voc


def run_reference(clone: Path, work: Path, pt: Path, voc: Path, args) -> tuple[Path, dict]:
    """``weclip_ref_runner.py`` in its own process; its output folder and what ran."""
    out = work / "ref" / "weclip"
    cmd = [args.python, str(Path(__file__).parent / "weclip_ref_runner.py"), "--clone", str(clone), "--weights",
           str(pt), "--voc", str(voc), "--out", str(out), "--crops", str(args.crops), "--steps", str(args.steps),
           "--images", str(args.images), "--threads", str(args.threads)]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return out, {"seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="a clone of zbf1991/WeCLIP")
    ap.add_argument("--work", type=Path, help="keeps the weights, photos and the clone's outputs")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--setup-only", action="store_true")
    args = ap.parse_args(argv)
    work = args.work or Path("/tmp/weclip_parity")
    work.mkdir(parents=True, exist_ok=True)
    pt, st, voc = setup(work, args.images)
    if args.setup_only:
        print(json.dumps({"weights": str(pt), "voc": str(voc), "machine": benchlib.machine("cpu")}))
        return


if __name__ == "__main__":
    main()

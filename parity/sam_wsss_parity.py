"""Does `vpltool sam-pseudo` write the labels SAM_WSSS's own merge writes from the same CAM labels and SAM masks?

    python parity/sam_wsss_parity.py --ref /path/to/SAM_WSSS --work W [--run runs/demo] [--images 12] \\
        [--scenes 200] > parity/results/sam_wsss_parity.json

``--ref`` is a clone of cskyl/SAM_WSSS (compared at 4885dde; no licence: run from the clone, nothing copied).
Two sets of inputs, each a `cam` folder that `sam-pseudo` reads as it reads any:

* **photos**: the 12 parity photos (``bench_cam.PHOTOS``, as a VOC root) with CAM-like maps per image-level label
  (seeded smooth random blobs: the photos have no CAMs of a real CLIP here);
* **demo** (``--run``): the demo world's val scenes and the vision CAMs of its run (``RUN/cams_vision_val``).

Run it in the mode the demo run was made in (``VPLTOOL_REPRODUCIBLE=1`` for `make demo`'s), as every stage
refuses CAMs of another. On each: the runner writes, from the library functions the stage runs, each image's start
label (`crf --confidence 0`'s mask) and SAM's masks (the toy SAM's automatic masks, ``--sam-weights``) in the
clone's formats (``<id>.png``; ``<id>/<k>.png``, 255 inside, as segment-anything's ``scripts/amg.py`` writes them);
the clone's
``Processor.generate_merged_masks`` merges them with each released rule (``max_iou_imp2``, its default,
``max_iou_imp``, ``max_iou``; ``sam_wsss_ref_runner.py``). vpltool runs the whole stage, ``run_sam_pseudo`` from the
CAMs, with ``--masks sam`` (SAM run by the stage itself; the default rule) and with ``--masks FOLDER`` on those mask
folders (each rule). Compared: every pixel of the clone's labels against vpltool's. The bar: every pixel equal.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import vpltool  # noqa: F401  (before numpy and torch: VPLTOOL_REPRODUCIBLE=1, the demo's mode, takes effect)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import clone_commit, machine  # noqa: E402

COMMIT = "4885dde"
METHODS = {"max_iou_imp2": "max-iou-imp2", "max_iou_imp": "max-iou-imp", "max_iou": "max-iou"}
TOY_SAM = ROOT / "vpltool" / "assets" / "toy-sam-world20" / "model.safetensors"


def photo_cams(work: Path, n: int) -> Path:
    """The parity photos as a VOC root and a `cam` folder of seeded CAM-like maps over them: per label a few
    Gaussian blobs at random places, min-max to [0, 1]."""
    import bench_cam
    import numpy as np
    import torch

    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.runtime.numerics import run_numerics

    voc = work / "voc"
    if len(list((voc / "JPEGImages").glob("*.jpg"))) != n:
        bench_cam.make_voc(voc, n)
    data = open_dataset(voc, "train")
    cams = work / "photo_cams"
    rng = np.random.default_rng(0)
    for item in data.items:
        h, w = io.image_size(item.image)
        yy, xx = np.mgrid[0:h, 0:w]
        maps = []
        for _ in item.labels:
            m = np.zeros((h, w), np.float32)
            for _ in range(3):
                cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.3) * max(h, w)
                m += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).astype(np.float32)
            maps.append((m - m.min()) / max(float(m.max() - m.min()), 1e-6))
        io.write_cam(io.cam_path(cams, item.id), torch.from_numpy(np.stack(maps)), item.labels,
                     classes=data.classes, params={}, id=item.id, image_size=[h, w], numerics=run_numerics("fp32"))
    io.write_stage_record(cams, "cam", params={}, inputs={"dataset": data.identity()}, count=len(data.items),
                          numerics=run_numerics("fp32"))  # what a `cam` run records (the stage compares it)
    return cams


def reference_inputs(cams: Path, cfg, folder: Path) -> list[str]:
    """Each image's start label (``folder/start/<id>.png``, mode L) and SAM masks (``folder/masks/<id>/<k>.png``)
    from the library functions the stage runs; returns the ids."""
    import numpy as np
    from PIL import Image

    from vpltool import io
    from vpltool.data import open_recorded
    from vpltool.stages.sam_pseudo import start_label
    from vpltool.stages.sam_pseudo.sources import mask_source

    data = open_recorded(cams)
    generator = mask_source(cfg, data.classes)
    generator.load("cpu")
    ids = io.item_ids(cams)
    items = data.by_id()
    (folder / "start").mkdir(parents=True, exist_ok=True)
    for i in ids:
        image, maps = io.read_cam_item(cams, i, items[i].image, items[i].labels, data.classes)
        Image.fromarray(start_label(image, maps.cams, maps.labels, cfg), mode="L").save(folder / "start" / f"{i}.png")
        sub = folder / "masks" / i
        sub.mkdir(parents=True, exist_ok=True)
        for k, m in enumerate(generator.masks(image, maps.labels)):
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(sub / f"{k}.png")
    return ids


def compare(ids: list[str], ref: Path, ours: Path) -> dict:
    """Pixels (and images) of equal labels between the clone's PNGs and vpltool's."""
    import numpy as np

    from vpltool import io

    equal = total = images = 0
    worst = None
    for i in ids:
        a = np.asarray(io.read_mask(ref / f"{i}.png"))
        b = io.read_mask(io.mask_path(ours, i))
        same = int((a == b).sum())
        equal, total, images = equal + same, total + a.size, images + int(same == a.size)
        if same < a.size and (worst is None or same / a.size < worst[1]):
            worst = (i, same / a.size)
    return {"pixels_equal": equal / total, "images_equal": images, "images": len(ids),
            "worst": None if worst is None else {"id": worst[0], "pixels_equal": worst[1]}}


def run_set(name: str, cams: Path, args, work: Path) -> dict:
    import numpy as np

    from vpltool.config import RuntimeConfig, SamPseudoConfig
    from vpltool.stages.sam_pseudo import run_sam_pseudo

    base = SamPseudoConfig(masks="sam", sam_model="toy", sam_weights=str(args.sam_weights),
                           points_per_side=args.points, pred_iou_thresh=args.iou, stability_score_thresh=args.stability)
    inputs = work / name / "ref_inputs"
    ids = reference_inputs(cams, base, inputs)
    ref_out = work / name / "ref_out"
    subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "sam_wsss_ref_runner.py"), "--clone",
                    str(args.ref), "--pseudo", str(inputs / "start"), "--sam", str(inputs / "masks"), "--out",
                    str(ref_out), "--methods", ",".join(METHODS), "--classes", str(args.classes)], check=True,
                   stdout=sys.stderr)  # the clone prints its progress: this stdout is the JSON
    ref_seconds = json.loads((ref_out / "seconds.json").read_text())
    rows = {}
    masks = [len(list((inputs / "masks" / i).glob("*.png"))) for i in ids]
    for method, merge in METHODS.items():
        row = {}
        # SAM itself once (the released default's rule): the folders carry the same masks to every rule
        for source in ("sam", "folder") if method == "max_iou_imp2" else ("folder",):
            cfg = SamPseudoConfig(**{**base.__dict__, "merge": merge,
                                     "masks": "sam" if source == "sam" else str(inputs / "masks")})
            out = work / name / f"ours_{source}_{method}"
            start = time.perf_counter()
            run_sam_pseudo(cams, out, cfg, RuntimeConfig(device="cpu", workers=1, overwrite=True))
            row[source] = {**compare(ids, ref_out / method, out), "seconds": round(time.perf_counter() - start, 2)}
        row["ref_seconds"] = round(ref_seconds[method], 2)
        rows[method] = row
    return {"images": len(ids), "masks_per_image": float(np.mean(masks)), "max_masks": int(max(masks)),
            "methods": rows}


def page(r: dict) -> dict:
    """docs/parity.md's section of a result (docgen/parity_page.py reads it)."""
    rows = []
    for name, found in r["sets"].items():
        for rule, sides in found["methods"].items():
            for side, v in sides.items():
                if isinstance(v, dict) and "pixels_equal" in v:
                    how = "SAM run by the stage" if side == "sam" else "amg.py's mask folders"
                    rows.append([f"{name} ({found['images']} images, {found['masks_per_image']:.1f} masks each): "
                                 f"{rule}, {how}: pixels equal", v["pixels_equal"]])
    return {"title": "SAM-enhanced pseudo labels (`vpltool sam-pseudo --masks sam`)",
            "command": "`python parity/sam_wsss_parity.py --ref SAM_WSSS --work W --run runs/demo` "
                       "(`parity/sam_wsss_ref_runner.py` runs the clone's `Processor.generate_merged_masks`). Clone: "
                       f"cskyl/SAM_WSSS `{COMMIT}` (no licence: run from the clone, nothing copied); the toy SAM of "
                       "world seed 20's automatic masks; the 12 parity photos with seeded CAM-like maps, and the "
                       "demo's 200 val scenes with its run's vision CAMs (reproducible mode).",
            "bar": r["bar"], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="a clone of cskyl/SAM_WSSS")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--run", type=Path, default=None, help="a `make demo` run folder (its cams_vision_val)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--sam-weights", type=Path, default=TOY_SAM)
    # more masks than the demo's settings make, so that the rule meets overlaps and ties (the photos: a toy SAM)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--iou", type=float, default=0.0)
    parser.add_argument("--stability", type=float, default=0.0)
    parser.add_argument("--classes", type=int, default=21, help="the clone's --number_class (VOC's 21)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    sets = {"photos": run_set("photos", photo_cams(args.work, args.images), args, args.work)}
    if args.run is not None:
        sets["demo"] = run_set("demo", args.run / "cams_vision_val", args, args.work)
    met = all(r[s]["pixels_equal"] == 1.0 for v in sets.values() for r in v["methods"].values()
              for s in ("sam", "folder") if s in r)
    print(json.dumps({
        "machine": machine(),
        "reference": {"repo": "cskyl/SAM_WSSS", "commit": clone_commit(args.ref) or f"{COMMIT} (the clone has no .git)",
                      "licence": "none: run from the clone, nothing copied"},
        "sam_weights": str(args.sam_weights.relative_to(ROOT) if args.sam_weights.is_relative_to(ROOT)
                           else args.sam_weights),
        "generator": {"points_per_side": args.points, "pred_iou_thresh": args.iou,
                      "stability_score_thresh": args.stability},
        "start": "crf --confidence 0 (sam-pseudo --start crf)",
        "bar": "every pixel of every image equal, each rule, masks from the model and from amg.py folders",
        "bar_met": met, "sets": sets}, indent=1))


if __name__ == "__main__":
    main()

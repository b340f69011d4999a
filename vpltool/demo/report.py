"""`vpltool demo-report`: one table of mIoU per pipeline stage next to chance, ``metrics.json`` and a contact sheet.

Chance baselines, computed on the same images and labels as the stages (never tuned on val):

* ``all background``: every pixel predicted background.
* ``random CAMs``: for each labelled class a smooth random map (bilinear-upsampled 4x4 uniform noise), scored with
  the same background-exponent rule and exponent search as real CAMs. It knows the image-level labels, as every
  stage does, so it is the floor a localisation method must beat.

Both are computed on the first ``CHANCE_IMAGES`` training images with ground truth (all of the demo world's 500), so
the report of a full VOC or COCO run (``make voc`` / ``make coco``) does not re-read every mask for a floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..config import EvalConfig
from ..data import open_recorded
from ..kernels import MiouAccumulator, cams_to_labels

CHANCE_IMAGES = 500  # a floor needs no more; the demo world's default train split has exactly 500

# (metrics file under RUN/metrics, display name, folder holding the stage output) in pipeline order
STAGES = (
    ("cams_text.json", "CAM, text prototypes (train)", "cams_text"),
    ("cams_vision.json", "CAM, vision prototypes (train)", "cams_vision"),
    ("pseudo.json", "CRF pseudo masks (train)", "pseudo"),
    ("pred_val.json", "decoder prediction (val)", "pred_val"),
)


def chance_baselines(dataset, seed: int = 0, exponents=EvalConfig.bg_exponents,
                     limit: int = CHANCE_IMAGES) -> dict[str, float]:
    """mIoU of the all-background and random-CAM baselines over the first ``limit`` ``dataset`` items with GT."""
    import torch
    import torch.nn.functional as F

    n = len(dataset.classes)
    rng = np.random.default_rng(seed)
    background = MiouAccumulator(n)
    randoms = {a: MiouAccumulator(n) for a in exponents}
    for item in [it for it in dataset.items if it.gt is not None][:limit]:
        gt = io.read_mask(item.gt)
        background.add(gt, np.zeros_like(gt))
        noise = torch.from_numpy(rng.random((max(len(item.labels), 1), 4, 4), dtype=np.float32))
        cams = F.interpolate(noise[None], size=gt.shape, mode="bilinear", align_corners=False)[0, : len(item.labels)]
        cams = cams.numpy()
        for a, acc in randoms.items():
            acc.add(gt, cams_to_labels(cams, item.labels, a))
    return {"all background": background.result()["miou"],
            "random CAMs": max(acc.result()["miou"] for acc in randoms.values()), "images": background.n_images}


def collect(run: Path) -> list[dict[str, Any]]:
    """One row per stage: its mIoU from ``RUN/metrics/*.json``, or a note why it is missing."""
    rows = []
    for file, name, folder in STAGES:
        path = run / "metrics" / file
        if path.is_file():
            result = io.read_json(path)
            rows.append({"stage": name, "miou": result["miou"], "n_images": result["n_images"],
                         "bg_exponent": result.get("bg_exponent")})
        else:
            note = "not run" if (run / folder).exists() else "skipped: stage not built yet"
            rows.append({"stage": name, "miou": None, "note": note})
    return rows


def write_contact_sheet(run: Path, dataset, path: Path, n: int = 8) -> Path | None:
    """image | ground truth | text CAM | vision CAM | pseudo mask for the first ``n`` training items with GT.

    CAM columns show the CLIP-ES labelling (bg = 1 - max, argmax); a stage that has not run shows black.
    """
    from .scenes import contact_sheet

    columns = ["image", "ground truth", "text CAM", "vision CAM", "pseudo mask"]
    rows = []
    for item in [it for it in dataset.items if it.gt is not None][:n]:
        image, gt = io.load_image(item.image), io.read_mask(item.gt)
        row = [image, gt]
        for folder in ("cams_text", "cams_vision"):
            cam_file = io.cam_path(run / folder, item.id)
            if cam_file.is_file():
                maps = io.read_cam(cam_file)
                row.append(cams_to_labels(maps.cams, maps.labels, 1.0))
            else:
                row.append(np.zeros_like(gt))
        png = io.mask_path(run / "pseudo", item.id)
        row.append(io.read_mask(png) if png.is_file() else np.zeros_like(gt))
        rows.append(row)
    if not rows:
        return None
    return contact_sheet(rows, columns, path, scale=2)


def write_prediction_sheet(run: Path, path: Path, n: int = 8) -> Path | None:
    """image | ground truth | decoder prediction for the first ``n`` validation items that were predicted."""
    from .scenes import contact_sheet

    folder = run / "pred_val"
    if not io.stage_record_path(folder).is_file():
        return None
    items = [it for it in open_recorded(folder).items if it.gt is not None][:n]
    rows = [[io.load_image(it.image), io.read_mask(it.gt), io.read_mask(io.mask_path(folder, it.id))] for it in items]
    return contact_sheet(rows, ["image", "ground truth", "prediction"], path, scale=2) if rows else None


def run_demo_report(run: str | Path, seed: int = 0) -> dict[str, Any]:
    """Gather the stage metrics of a demo run folder, add chance baselines, write ``metrics.json`` + sheet."""
    run = Path(run)
    io.read_stage_record(run / "features", "extract")
    train = open_recorded(run / "features")
    report = {
        "run": str(run),
        "stages": collect(run),
        "chance": chance_baselines(train, seed),
        "contact_sheet": None,
    }
    sheet = write_contact_sheet(run, train, run / "contact_sheet.png")
    report["contact_sheet"] = str(sheet) if sheet else None
    pred_sheet = write_prediction_sheet(run, run / "contact_sheet_val.png")
    report["prediction_sheet"] = str(pred_sheet) if pred_sheet else None
    io.write_json(run / "metrics.json", report)
    return report


def format_report(report: dict[str, Any]):
    """A rich table: stage | mIoU % | chance (random CAMs) | all background."""
    from rich.table import Table

    chance = report["chance"]
    table = Table(title=f"vpltool: mIoU per stage of {report['run']}", title_justify="left")
    table.add_column("stage")
    table.add_column("mIoU %", justify="right")
    table.add_column("chance %", justify="right")
    table.add_column("note")
    for row in report["stages"]:
        value = "—" if row["miou"] is None else f"{100 * row['miou']:.1f}"
        note = row.get("note") or (f"{row['n_images']} images" + (f", bg a={row['bg_exponent']:g}"
                                                                  if row.get("bg_exponent") else ""))
        table.add_row(row["stage"], value, f"{100 * chance['random CAMs']:.1f}", note)
    table.caption = (f"chance = random smooth CAMs with the true image labels; all-background = "
                     f"{100 * chance['all background']:.1f}; both on {chance.get('images', '?')} training images")
    return table

"""`vpltool demo-report`: mIoU per pipeline stage on the training split and on the held-out split, next to chance.

W (the vision prototypes) is learned on the training split only. Text CAMs, vision CAMs and CRF masks are scored on
both splits (the paper's "seed" and "mask" figures are its *training*-split figures, labelled as such); the decoder
is scored on the held-out split. CAMs are GradCAM at the last block's input (the paper's layer); the other layer and
the pixel classifier come from `vpltool diagnose` (``RUN/metrics/diagnose_val.json``), labelled.

Baselines, on the same images and labels as the stages (never tuned on val), per split:

* ``all background``: every pixel predicted background.
* ``chance``: for each labelled class a smooth random map (bilinear-upsampled 4x4 uniform noise), scored with the
  same background-exponent rule and exponent search as real CAMs. It knows the image-level labels, as every stage
  does, so it is the floor a localisation method must beat.

Both are computed on the first ``CHANCE_IMAGES`` images with ground truth of each split (all of the demo world's),
so a full VOC or COCO report does not re-read every mask for a floor.

The training-free dense CLIP's rows (``RUN/metrics/dense/<method>/``: `segment --dense` on val, `cam --dense` and
its `crf` masks on train, their settings chosen on train) follow the pipeline's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .. import io
from ..config import SAM_PSEUDO_RULES, EvalConfig
from ..data import open_recorded
from ..ops.kernels import MiouAccumulator, cams_to_labels
from .choose_pseudo import CHOICE_FILE, describe, refinement_dir, split_candidate

CHANCE_IMAGES = 500  # a floor needs no more; the demo world's default train split has exactly 500
# the rows of `sam-pseudo`'s rules (the Makefile's PSEUDO words but crf; config.SAM_PSEUDO_RULES): rule K's masks of
# refinement R in RUN[/R]/K/pseudo, scored under RUN/metrics[/R]/K/; a row's title -> its rule
SAM_NAMES = {"sam": "SAM", "sam3": "SAM 3"}  # what a rule's row calls its model (another rule: its own name)
RULE_STAGES = {f"{SAM_NAMES.get(k, k)} pseudo masks (sam-pseudo --masks {k}, from vision CAMs)": k
               for k in SAM_PSEUDO_RULES}

# (display name, metrics file of the training split or None, of the held-out split or None), in pipeline order
STAGES = (
    ("CAM, text prototypes", "cams_text.json", "cams_text_val.json"),
    ("CAM, vision prototypes (W learned on train)", "cams_vision.json", "cams_vision_val.json"),
    ("CRF masks from text CAMs", "pseudo_text.json", "pseudo_text_val.json"),
    ("CRF pseudo masks (from vision CAMs)", "pseudo.json", "pseudo_val.json"),
    *((title, f"{k}/pseudo.json", f"{k}/pseudo_val.json") for title, k in RULE_STAGES.items()),
    ("decoder prediction", None, "pred_val.json"),
)
# shown only where scored (the Makefile makes them when it compares REFINES, and with PSEUDO's sam rules)
OPTIONAL = {"CRF masks from text CAMs", *RULE_STAGES}
SPLITS = ("train", "val")


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


def _miou(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    result = io.read_json(path)
    return {"miou": result["miou"], "n_images": result["n_images"], "bg_exponent": result.get("bg_exponent"),
            "protocol": result.get("protocol")}  # what made it (vpltool.io.protocols; None: an older eval's)


def run_refinement(run: Path) -> str | None:
    """The `cam --refine` of the run's own CAMs (``RUN/cams_text``'s record), None where there are none."""
    for folder in ("cams_text", "cams_vision"):
        if io.stage_record_path(run / folder).is_file():
            return io.read_stage_record(run / folder, "cam")["params"].get("refine")
    return None


def compared_refinements(run: Path) -> list[str]:
    """The other refinements the run compares (``RUN/metrics/R/``, as the Makefile's REFINES and AFFINITY_ROWS write
    them; ``R@A`` is refinement R with ``--affinity A``)."""
    metrics = run / "metrics"
    if not metrics.is_dir():
        return []
    return sorted(d.name for d in metrics.iterdir() if d.is_dir() and d.name not in (DENSE_DIR, *SAM_PSEUDO_RULES))


def collect(run: Path, choice: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows per stage: the run's own CAMs and masks (``RUN/metrics/*.json``), then each compared refinement's
    (``RUN/metrics/R/*.json``), with ``refine`` naming it; mIoU per split, None where a stage was not run. The
    decoder's row names the pseudo masks it was trained on (``choice``, from `choose-pseudo`)."""
    own = run_refinement(run)
    sources = [(own, run / "metrics"), *((r, run / "metrics" / r) for r in compared_refinements(run))]
    rows = []
    for name, train_file, val_file in STAGES:
        if train_file is None:  # the decoder: one row
            rows.append({"stage": name, "refine": choice["chosen"] if choice else own, "train": None,
                         "val": _miou(run / "metrics" / val_file)})
            continue
        for nth, (refine, folder) in enumerate(sources):
            row = {"stage": name, "refine": refine}
            for split, file in zip(SPLITS, (train_file, val_file)):
                row[split] = _miou(folder / file)
            if (nth == 0 and name not in OPTIONAL) or row["train"] or row["val"]:
                rows.append(row)
    return rows


DENSE_DIR = "dense"  # RUN/metrics/dense/<method>/: the training-free dense CLIP's scores (issue 35)
# (display name, metrics file, split): zero-shot segmentation of val (no labels), dense CAMs of train and their CRF
DENSE_STAGES = (("zero-shot segmentation, no labels (segment --dense)", "segment_val.json", "val"),
                ("CAM, dense (cam --dense)", "cams.json", "train"),
                ("CRF masks from dense CAMs", "pseudo.json", "train"),
                ("open vocabulary, every class unseen (predict --classes --dense)", "pred_val.json", "val"))


def dense_rows(run: Path) -> list[dict[str, Any]]:
    """Rows of the dense methods the run scored (``RUN/metrics/dense/<method>/``): per method its zero-shot val
    mIoU, its dense CAMs and their CRF masks on train, and the val IoU of the dataset's classes averaged over the
    classes (``held_out``: every class is unseen by a training-free method; what `predict --classes --dense` gives
    with the same queries)."""
    root = run / "metrics" / DENSE_DIR
    if not root.is_dir():
        return []
    rows = []
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    for name, file, split in DENSE_STAGES:  # stage by stage, the methods side by side
        for folder in folders:
            result = _miou(folder / file)
            if result is None:
                continue
            row = {"stage": name, "dense": folder.name, "train": None, "val": None, split: result}
            if file.endswith("_val.json"):
                iou = io.read_json(folder / file)["iou"]
                values = [v for k, v in iou.items() if k != "background" and v is not None]
                row["held_out"] = float(np.mean(values)) if values else None
            rows.append(row)
    return rows


def dense_options(folder: str) -> str:
    """A dense row's folder name as the options that made it: ``M`` is ``--dense M``, ``M@R`` (the Makefile's
    ``make sam3-regions``) ``--dense M --region-masks R``."""
    method, _, regions = folder.partition("@")
    return f"--dense {method}" + (f" --region-masks {regions}" if regions else "")


def other_layers(run: Path) -> list[dict[str, Any]]:
    """Rows of ``diagnose_val.json``: the pixel classifier and GradCAM at each layer, per prototypes file."""
    path = run / "metrics" / "diagnose_val.json"
    if not path.is_file():
        return []
    names = {"text": "text prototypes", "vision": "vision prototypes"}
    out = []
    for row in io.read_json(path)["rows"]:
        who = names.get(row["source"], row["source"])
        out += [{"stage": f"GradCAM at the last block's output, {who} (raw, no CAA)", "val": row["gradcam_output"]},
                {"stage": f"GradCAM at the last block's input, {who} (raw, no CAA)", "val": row["gradcam_input"]},
                {"stage": f"pixel classifier softmax(x.W/T), {who}", "val": row["pixel"]}]
    return out


# --------------------------------------------------------------------------------------------- contact sheets
_PALETTE = np.asarray(io.voc_palette(), np.uint8).reshape(256, 3)


def heatmap(image: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """``[H, W, 3]``: the image under a JET heat map of the per-pixel maximum of ``cams`` ``[K, H, W]``."""
    import cv2

    peak = cams.astype(np.float32).max(0) if len(cams) else np.zeros(image.shape[:2], np.float32)
    heat = cv2.applyColorMap((np.clip(peak, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.45 * image + 0.55 * heat).astype(np.uint8)


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], columns: list[str], path: Path, classes, *,
                  scale: int = 2, gap: int = 2) -> Path:
    """Tiles under a header row of ``columns``; each row is ``(caption, tiles)``; a class legend at the bottom.

    Tiles are ``[H, W, 3]`` RGB pictures or ``[H, W]`` uint8 masks (drawn with the VOC palette).
    """
    tiles = [(caption, [(t if t.ndim == 3 else _PALETTE[t]).repeat(scale, 0).repeat(scale, 1) for t in row])
             for caption, row in rows]
    th = max((t.shape[0] for _, row in tiles for t in row), default=1)
    tw = max((t.shape[1] for _, row in tiles for t in row), default=1)
    header, caption_h, legend_h = 14, 12, 16 * ((len(classes) + 3) // 4)
    width = gap + len(columns) * (tw + gap)
    height = header + len(tiles) * (caption_h + th + gap) + legend_h + gap
    sheet = Image.new("RGB", (max(width, 4 * 110), height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(columns):
        draw.text((gap + j * (tw + gap) + 1, 1), text, fill=(0, 0, 0))
    y = header
    for caption, row in tiles:
        draw.text((gap, y), caption, fill=(60, 60, 60))
        for j, tile in enumerate(row):
            sheet.paste(Image.fromarray(np.ascontiguousarray(tile)), (gap + j * (tw + gap), y + caption_h))
        y += caption_h + th + gap
    for k, name in enumerate(classes):  # legend: palette colour and name of every class, background included
        x0, y0 = gap + (k % 4) * 110, y + 2 + 16 * (k // 4)
        draw.rectangle([x0, y0, x0 + 12, y0 + 12], fill=tuple(int(v) for v in _PALETTE[k]), outline=(0, 0, 0))
        draw.text((x0 + 16, y0), f"{k} {name}", fill=(0, 0, 0))
    return io.write_png(path, sheet, kind="contact-sheet")


def _caption(item, classes) -> str:
    return f"{item.id}: {', '.join(classes[c] for c in item.labels)}"


def _cam_tile(folder: Path, item_id: str, image: np.ndarray) -> np.ndarray:
    path = io.cam_path(folder, item_id)
    return heatmap(image, io.read_cam(path).cams) if path.is_file() else np.zeros_like(image)


def _mask_tile(folder: Path, item_id: str, shape) -> np.ndarray:
    path = io.mask_path(folder, item_id)
    return io.read_mask(path) if path.is_file() else np.zeros(shape, np.uint8)


def write_sheet(run: Path, dataset, path: Path, suffix: str = "", n: int = 8, where: Path | None = None,
                masks: Path | None = None) -> Path | None:
    """image | ground truth | text-CAM heat map | vision-CAM heat map | pseudo mask [| decoder prediction] for the
    first ``n`` images with ground truth and at least one label (empty scenes show nothing). CAMs come from
    ``where`` (default ``run``; ``run/R`` for a compared refinement R), masks from ``masks`` (default ``where``;
    ``where/sam`` for its SAM masks)."""
    where = where or run
    masks = masks or where
    sam = masks != where
    columns = ["image", "ground truth", "text CAM (max over classes)", "vision CAM (max over classes)",
               "SAM pseudo mask" if sam else "CRF pseudo mask"]
    with_pred = bool(suffix) and io.stage_record_path(run / "pred_val").is_file()
    columns += ["decoder prediction"] if with_pred else []
    rows = []
    for item in [it for it in dataset.items if it.gt is not None and it.labels][:n]:
        image, gt = io.load_image(item.image), io.read_mask(item.gt)
        row = [image, gt, _cam_tile(where / f"cams_text{suffix}", item.id, image),
               _cam_tile(where / f"cams_vision{suffix}", item.id, image),
               _mask_tile(masks / f"pseudo{suffix}", item.id, gt.shape)]
        row += [_mask_tile(run / "pred_val", item.id, gt.shape)] if with_pred else []
        rows.append((_caption(item, dataset.classes), row))
    return contact_sheet(rows, columns, path, dataset.classes) if rows else None


def run_demo_report(run: str | Path, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Gather the stage metrics of a run folder, add the baselines per split, write ``metrics.json`` + sheets
    (``overwrite``: replace files of another kind there, :func:`vpltool.io.check_outputs`)."""
    run = Path(run)
    io.read_stage_record(run / "features", "extract")
    datasets = {"train": open_recorded(run / "features")}
    if io.stage_record_path(run / "features_val").is_file():
        datasets["val"] = open_recorded(run / "features_val")
    elif io.stage_record_path(run / "pred_val").is_file():
        datasets["val"] = open_recorded(run / "pred_val")
    choice_file = run / "metrics" / CHOICE_FILE
    choice = io.read_json(choice_file) if choice_file.is_file() else None
    sheets = {split: run / f"contact_sheet{'' if split == 'train' else '_' + split}.png" for split in datasets}
    io.check_outputs("demo-report", {"metrics": (run / "metrics.json", "file", "run-metrics"),
                                     **{f"{split} sheet": (path, "file", "contact-sheet")
                                        for split, path in sheets.items()}}, overwrite=overwrite,
                     inputs={"the run's features": run / "features"},
                     protected=[p for ds in datasets.values() for p in ds.folders()])
    report = {"run": str(run), "stages": collect(run, choice), "pseudo_choice": choice,
              "other_layers": other_layers(run), "dense": dense_rows(run),
              "chance": {split: chance_baselines(ds, seed) for split, ds in datasets.items()}, "sheets": [],
              "sam": sam_note(run)}
    # the sheets show the refinement whose masks trained the decoder (its CRF masks, or its SAM masks)
    where = refinement_dir(run, choice["chosen"], run_refinement(run)) if choice else run
    cams = where.parent if choice and split_candidate(choice["chosen"])[1] else where
    for split, ds in datasets.items():
        sheet = write_sheet(run, ds, sheets[split], suffix="" if split == "train" else "_val", where=cams,
                            masks=where)
        if sheet:
            report["sheets"].append(str(sheet))
    io.write_json(run / "metrics.json", report, kind="run-metrics")
    return report


def sam_note(run: Path) -> str | None:
    """What the run's `sam-pseudo` masks were made with, rule by rule (the record of each rule's first folder, as
    :func:`_made_with` words it), None where there are none."""
    notes = []
    for rule in SAM_PSEUDO_RULES:
        folders = ((run if refine is None else run / refine) / rule / "pseudo"
                   for refine in [None, *compared_refinements(run)])
        folder = next((f for f in folders if io.stage_record_path(f).is_file()), None)
        if folder is not None:
            params = io.read_record(io.stage_record_path(folder)).get("params", {})
            notes.append(f"+{rule}: {_made_with(run, params)}")
    return "; ".join(notes) or None


NOTED = ("masks", "merge", "start", "sam_model", "sam3_gate")  # a sam-pseudo record's options a note gives


def _made_with(run: Path, params: dict[str, Any]) -> str:
    """A `sam-pseudo` record's ``params`` as its options (:data:`NOTED`, those it records: a rule records only
    its own), and the world a toy SAM was trained on."""
    what = " ".join(f"--{k.replace('_', '-')} {params[k]}" for k in NOTED if params.get(k) is not None)
    world = _toy_world(params.get("sam_weights"))
    if world is not None:
        own = _world_seed(run)
        what += (f" (a toy trained on world seed {world}'s train scenes, never this run's, world seed {own})"
                 if own is not None and own != world else
                 f" (a toy trained on world seed {world}: this run's world is {own if own is not None else '?'})")
    return what


def _world_seed(run: Path) -> int | None:
    """The seed of the `make-world` folder the run's features were made from (None for another dataset)."""
    root = Path(open_recorded(run / "features").root)
    record = io.stage_record_path(root)
    return io.read_record(record).get("params", {}).get("seed") if record.is_file() else None


def _toy_world(weights: str | None) -> int | None:
    """The world seed a toy SAM's record (``model.json`` beside its weights, or in its folder: a toy SAM 3 of
    Hugging Face's layout) names, or None."""
    if not weights:
        return None
    record = Path(weights) / "model.json" if Path(weights).is_dir() else Path(weights).with_suffix(".json")
    if not record.is_file():
        return None
    world = io.read_json(record).get("world") or {}
    return world.get("seed")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _made(row: dict[str, Any]) -> str | None:
    """A row's protocol and post-processing, ``weak labels: CRF off · scale 1 · no flip · whole image``, from its
    scores' eval (the held-out split's first: a weak-label row's post-processing is the same on both); None for a
    score of an older vpltool."""
    from ..io.protocols import from_row

    made = next((m for m in (from_row((row.get(s) or {}).get("protocol")) for s in reversed(SPLITS)) if m), None)
    return None if made is None else f"{made.protocol}: {made.brief()}"


class _Keys:
    """Each distinct protocol a short key (``a``, ``b``, ...), in the order the rows name them: the table shows the
    key, its caption the protocol once (the protocols' text in every row took the table past 80 columns)."""

    def __init__(self):
        self.keys: dict[str, str] = {}

    def __call__(self, row: dict[str, Any]) -> str:
        made = _made(row)
        if made is None:
            return "—"
        if made not in self.keys:
            n = len(self.keys)
            self.keys[made] = chr(ord("a") + n) if n < 26 else str(n + 1)
        return self.keys[made]

    def legend(self) -> str:
        return "\n".join(f"protocol {key}: {made}." for made, key in self.keys.items())


def format_report(report: dict[str, Any]):
    """A rich table: stage | cam --refine | train mIoU % | val mIoU %, then the baselines, then the other layers
    (val); the caption says which pseudo masks trained the decoder, and why."""
    from rich.table import Table

    choice = report.get("pseudo_choice")
    table = Table(title=f"vpltool: mIoU % per stage of {report['run']}", title_justify="left",
                  caption_justify="left")
    table.add_column("stage")
    table.add_column("--refine")
    for split in SPLITS:
        table.add_column(f"{split} mIoU %", justify="right")
    table.add_column("protocol")  # a key; the caption says which protocol and post-processing (_Keys)
    keyed = _Keys()
    previous = None
    for row in report["stages"]:
        if previous is not None and row["stage"] != previous:
            table.add_section()
        chosen = choice["chosen"] if choice else None
        kind = f"+{RULE_STAGES[row['stage']]}" if row["stage"] in RULE_STAGES else ""
        decoder_input = bool(choice) and (row["stage"].startswith("CRF pseudo") or kind) and \
            f"{row['refine']}{kind}" == chosen
        refine = f"{row.get('refine') or '—'}{' → decoder' if decoder_input else ''}"
        table.add_row(row["stage"] if row["stage"] != previous else "", refine,
                      *(_pct((row.get(s) or {}).get("miou")) for s in SPLITS), keyed(row))
        previous = row["stage"]
    chance = report["chance"]
    table.add_section()
    for key, name in (("random CAMs", "chance (random smooth CAMs, true labels)"), ("all background",
                                                                                    "all background")):
        table.add_row(f"[dim]{name}[/]", "", *(_pct(chance[s][key]) if s in chance else "—" for s in SPLITS))
    if report.get("dense"):
        table.add_section()
        previous = None
        for row in report["dense"]:
            extra = f"; class IoU mean {_pct(row['held_out'])}" if row.get("held_out") is not None else ""
            stage = row["stage"] if row["stage"] != previous else ""
            table.add_row(stage, f"{dense_options(row['dense'])}{extra}", *(_pct((row.get(s) or {}).get("miou"))
                                                                     for s in SPLITS), keyed(row))
            previous = row["stage"]
    if report.get("other_layers"):
        table.add_section()
        for row in report["other_layers"]:
            table.add_row(f"[dim]{row['stage']}[/]", "none", "—", _pct(row["val"]))
    images = ", ".join(f"{s} {c['images']}" for s, c in chance.items())
    table.caption = ("W is learned on train only. CAM rows: GradCAM at the last block's input (the paper's layer), "
                     f"refined by `cam --refine`; R@A: `--refine R --affinity A` (CAA from DINO's attention, or "
                     f"mixed with CLIP's). Images scored: {images}.")
    if keyed.keys:
        table.caption += "\n" + keyed.legend()
    sam = report.get("sam")  # the SAM behind the sam-pseudo rows (sam_note)
    if sam:
        table.caption += f"\nsam-pseudo masks: {sam}."
    if choice:
        table.caption += f"\n{describe(choice)}; val is never used for the choice."
    return table

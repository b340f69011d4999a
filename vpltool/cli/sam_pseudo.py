"""The `sam-pseudo` command: pseudo masks from SAM's masks and a `cam` folder (:mod:`vpltool.stages.sam_pseudo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import SAM_MERGES, SAM_STARTS, SamPseudoConfig
from .options import _R, Device, LogFile, OutDir, Overwrite, Precision, Shard, Verbose, Workers, runtime, warn_inert
from .output import pending, progress, say
from .values import shard as shard_of

_P = SamPseudoConfig()


def sam_pseudo_cmd(
    cams: Annotated[Path, typer.Argument(help="A `cam` folder (vision- or text-prototype CAMs), as `crf` takes it.")],
    out: OutDir,
    masks: Annotated[str, typer.Option(help="SAM's masks: sam (segment-anything's automatic mask generator on "
                                       "--sam-model / --sam-weights) | sam2[:CONFIG] (SAM 2's; --sam-weights its "
                                       "checkpoint) | a folder as segment-anything's scripts/amg.py writes it "
                                       "(FOLDER/<image id>/<k>.png, 255 inside a mask) | sam3 (the other rule: SAM 3 "
                                       "prompted with each label's name, --sam-weights its weights).")] = _P.masks,
    sam_model: Annotated[str, typer.Option(help="The SAM of --masks sam: vit_b | vit_l | vit_h | toy (the demo "
                                           "world's: vpltool/assets/toy-sam-world20, trained on another world by "
                                           "`make toy-sam-world20`).")]
        = _P.sam_model,
    sam_weights: Annotated[Optional[str], typer.Option(help="Its weights: a local file (SAM's released checkpoint, "
                                                       "e.g. sam_vit_h_4b8939.pth; SAM 2's with sam2; SAM 3's "
                                                       "folder or sam3.pt with sam3) | none (random SAM, seeded: "
                                                       "tests). Required with sam, sam2 and sam3.",
                                                       show_default=False)] = None,
    merge: Annotated[str, typer.Option(help=f"The rule ({' | '.join(SAM_MERGES)}; SAM_WSSS's merge/max_iou*.py): "
                                       "a mask more than half of one class's goes to that class; imp2 also gives a "
                                       "class a mask holding 85 % of its pixels; imp and imp2 keep the CAM's label "
                                       "where no mask is; max-iou leaves it background.")] = _P.merge,
    start: Annotated[str, typer.Option(help=f"The CAM label the rule starts from ({' | '.join(SAM_STARTS)} | "
                                       "FOLDER): crf = `crf --confidence 0`'s mask (the published rule's: CRF "
                                       "labels without ignore pixels); argmax = `crf --no-crf`'s; FOLDER = either, "
                                       "as `crf --start-out FOLDER` wrote it from its own CRF of these CAMs (no "
                                       "second CRF; its record is checked).")] = _P.start,
    bg_exponent: Annotated[float, typer.Option(help="Background score (1 - max CAM)^a of the start label.")] =
        _P.bg_exponent,
    points_per_side: Annotated[int, typer.Option(help="The automatic mask generator's grid of point prompts.")] =
        _P.points_per_side,
    pred_iou_thresh: Annotated[float, typer.Option(help="Keep masks whose predicted IoU is at least this.")] =
        _P.pred_iou_thresh,
    stability_score_thresh: Annotated[float, typer.Option(help="Keep masks whose stability score is at least "
                                                          "this.")] = _P.stability_score_thresh,
    sam3_threshold: Annotated[float, typer.Option(help="--masks sam3: keep the instances SAM 3 scores above this "
                                                  "(Meta's).")] = _P.sam3_threshold,
    sam3_gate: Annotated[float, typer.Option(help="--masks sam3: an instance stays when at least this share of its "
                                             "pixels carry its label in the CAM's label; a label left with none "
                                             "keeps the CAM's mask.")] = _P.sam3_gate,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    workers: Workers = None,
    shard: Shard = None,
    overwrite: Overwrite = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Pseudo masks from Segment Anything: each SAM mask takes the class of the CAM's label that covers most of it.

    SAM-enhanced pseudo labels (Chen et al. 2023): the CAM's label (`crf --confidence 0`'s mask by default), SAM's
    automatic masks, and the published merge rule; pixels no mask covers keep the CAM's label. With --masks sam3,
    SAM 3 prompted with each label's name, its instances gated by the CAM's label; a label it misses keeps the
    CAM's mask. The output is a folder of label PNGs that train-decoder, eval and choose-pseudo take as they take
    `crf`'s.

    \b
    Example:
      vpltool sam-pseudo runs/voc/cams_vision -o runs/voc/pseudo_sam --sam-model vit_h \\
          --sam-weights sam_vit_h_4b8939.pth --device cuda
      vpltool sam-pseudo runs/voc/cams_vision -o runs/voc/pseudo_sam --masks sam_masks/   # amg.py's folders
      vpltool sam-pseudo runs/voc/cams_vision -o runs/voc/pseudo_sam3 --masks sam3 --sam-weights sam3/
    """
    from ..stages.sam_pseudo import run_sam_pseudo

    cfg = warn_inert(SamPseudoConfig(masks=masks, sam_model=sam_model, sam_weights=sam_weights, merge=merge,
                                     start=start, bg_exponent=bg_exponent, points_per_side=points_per_side,
                                     pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                                     sam3_threshold=sam3_threshold, sam3_gate=sam3_gate))
    with progress("sam-pseudo") as (on_start, on_item):
        s = run_sam_pseudo(cams, out, cfg, runtime(device=device, precision=precision, workers=workers,
                                                    overwrite=overwrite),
                           shard=shard_of(shard), on_item=on_item, on_start=on_start)
    if s.masks is None:
        what = ""
    elif cfg.prompted:
        what = (f", {s.masks:.1f} SAM 3 instances an image, {100 * s.missed:.1f}% of the labels left to the CAM, "
                f"{100 * s.changed:.1f}% of the pixels relabelled")
    else:
        what = (f", {s.masks:.1f} SAM masks an image covering {100 * s.covered:.1f}% of the pixels, "
                f"{100 * s.changed:.1f}% of the pixels relabelled")
    rule = "sam3, gated" if cfg.prompted else cfg.merge
    say(f"[green]✓[/] sam-pseudo ({rule} from {cfg.start}): {s.done} masks ({s.images_per_s:.1f} img/s){what}, "
        f"{s.skipped} already done → {out}{pending(out)}")

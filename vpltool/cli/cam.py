"""The `cam` command: seeds for each image's labelled classes: GradCAM + CAA (CLIP-ES, VPL, SSR), a training-free
dense CLIP (--dense) or a PGSeg / GroupViT checkpoint (--model pgseg:FILE, alias --pgseg FILE)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import (
    CAM_ATTENTION_BLOCKS,
    DEFAULT_PRETRAINED,
    MIN_TEMPERATURE,
    CamConfig,
)
from ..config.dense import PLAIN_METHODS
from ..errors import VplError, VplWarning
from .options import (
    BATCHED,
    MODEL,
    DenseCrop,
    DenseSide,
    DenseStride,
    LogFile,
    OutDir,
    Shard,
    Split,
    Verbose,
    runtime,
    warn_inert,
)
from .output import pending, progress, say
from .values import model_spec, names_a_folder, segmenting_model, text_defaults
from .values import shard as shard_of


def cam_cmd(
    source: Annotated[Path, typer.Argument(help="An `extract` folder (labels, cache and model come from it), or a "
                                           "dataset (VOC/COCO root, folder, manifest): the frozen blocks then run "
                                           "here, in one process, and nothing is cached.")],
    out: OutDir,
    prototypes: Annotated[Optional[Path], typer.Option("--prototypes", "-p", help="A prototypes file: "
                                                       "`text-prototypes` or `learn-prototypes` output; with a "
                                                       "dataset it also names the CLIP. Required unless --model "
                                                       "pgseg:FILE.",
                                                       show_default=False)] = None,
    split: Split = None,
    refine: Annotated[str, typer.Option(help="caa (CLIP-ES) | caa+sgc (SSR: CAA propagates only inside K-means "
                                        "groups of SLIC superpixels) | none.")] = CamConfig.refine,
    affinity: Annotated[str, typer.Option(help="Attention CAA is built from: clip | dino (a timm ViT, --dino-model) "
                                          "| clip+dino (mixed, --affinity-weight; SSR).")] = CamConfig.affinity,
    affinity_weight: Annotated[float, typer.Option(help="clip+dino: CLIP's share of the mixed attention, DINO gets "
                                                   "the rest (SSR: 0.4 : 0.6).")] = CamConfig.affinity_weight,
    dino_model: Annotated[str, typer.Option(help="timm ViT name for --affinity dino/clip+dino.")] =
        CamConfig.dino_model,
    dino_weights: Annotated[str, typer.Option(help="hub (timm's pretrained weights; offline: from the local cache) "
                                              "| a local weights file | none (random).")] = CamConfig.dino_weights,
    sgc_segments: Annotated[int, typer.Option(help="caa+sgc: SLIC superpixels per image.")] =
        CamConfig.sgc_segments,
    sgc_clusters: Annotated[int, typer.Option(help="caa+sgc: K-means groups of superpixels.")] =
        CamConfig.sgc_clusters,
    sgc_position: Annotated[float, typer.Option(help="caa+sgc: weight of superpixel position against colour in "
                                                "K-means (0 = colour alone).")] = CamConfig.sgc_position,
    box_threshold: Annotated[float, typer.Option(help="CAA box threshold x max (VOC 0.4, COCO 0.7).")] =
        CamConfig.box_threshold,
    layer: Annotated[str, typer.Option(help="GradCAM activations: input (the last block's ln_1 output: CLIP-ES "
                                       "and VPL, the paper's) | output (the last block's output tokens).")] =
        CamConfig.layer,
    temperature: Annotated[Optional[float], typer.Option(help="Softmax temperature, at least "
                                                         f"{MIN_TEMPERATURE:g} [default: the prototypes file's: "
                                                         "1/logit_scale for text, tau_I for vision].",
                                                         show_default=False)] = CamConfig.temperature,
    attention_blocks: Annotated[Optional[int], typer.Option(help="Last blocks whose attention CAA averages; 1 = "
                                                            "the last block alone [default: an extract folder's own "
                                                            f"--attention-blocks; {CAM_ATTENTION_BLOCKS} on a "
                                                            "dataset].", show_default=False)] =
        CamConfig.attention_blocks,
    parity: Annotated[str, typer.Option(help="none | clip-es (reproduce CLIP-ES's arithmetic; an extract folder "
                                        "must be made with --parity clip-es too).")] = CamConfig.parity,
    dense: Annotated[str, typer.Option("--dense", help="none (GradCAM + CAA) | " + " | ".join(PLAIN_METHODS[1:])
                                       + ": seeds from that training-free dense CLIP instead: the softmax over "
                                       "the image's class rows and the background rows, at image size, with the "
                                       "method's segmentor settings (`vpltool segment --help`); the GradCAM/CAA "
                                       "options are then unused.")] = "none",
    dense_side: DenseSide = None,
    dense_scale: Annotated[Optional[float], typer.Option(help="--dense: softmax(scale * cosine) [default: the "
                                                               "method's].", show_default=False)] = None,
    dense_crop: DenseCrop = None,
    dense_stride: DenseStride = None,
    dense_pamr: Annotated[Optional[int], typer.Option(help="--dense: PAMR steps (0 = off) [default: the "
                                                            "method's].", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", rich_help_panel=MODEL, show_default=False,
        help="FAMILY:FILE: seeds from a checkpoint of a text-supervised family instead, pgseg:FILE or "
             "groupvit:FILE (a train-pgseg pgseg.safetensors or a release .pth): its zero-shot maps of each image's "
             "labelled classes among the dataset's class names, as `segment --model pgseg:FILE` computes them, at "
             "image size; no --prototypes, the GradCAM/CAA options are unused. (cam's CLIP is the one its "
             "--prototypes file names; local-dir:DIR: where that CLIP's folder lies now, renamed or copied since, "
             "taken when it holds the recorded weights.)")] = None,
    pgseg: Annotated[Optional[Path], typer.Option(help="The alias of --model pgseg:FILE (the same run).",
                                                  rich_help_panel=MODEL, show_default=False)] = None,
    pgseg_side: Annotated[Optional[int], typer.Option(
        help="--model FAMILY:FILE: images resized to this short side first (the family's reference test scale; "
             "its sliding windows) [default: the family's: " + text_defaults("short_side") + "].",
        show_default=False)] = None,
    save_overlays: Annotated[Optional[Path], typer.Option(help="Also write heat-map-over-image PNGs here.")] = None,
    save_debug: Annotated[Optional[Path], typer.Option(help="Also write each image's raw GradCAM, softmax "
                                                       "probabilities, CAA boxes and pre-min-max refined maps here "
                                                       "(docs/file-formats.md).")] = None,
    raw_out: Annotated[Optional[Path], typer.Option(help="With --refine caa: also write here the folder --refine "
                                                    "none would make (its GradCAM maps, the same files and "
                                                    "records), from the same pass: one GradCAM for both.",
                                                    show_default=False)] = None,
    shard: Shard = None,
    run: dict = BATCHED,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Softmax-GradCAM at the last block + class-aware attention affinity, for each image's labelled classes.

    \b
    Examples:
      vpltool cam runs/voc/features -p runs/voc/text.safetensors -o runs/voc/cams_text
      vpltool cam data/VOC2012 --split train -p runs/voc/text.safetensors -o runs/voc/cams_text
      vpltool cam data/VOC2012 --split train --model pgseg:runs/gv/pgseg.safetensors -o runs/voc/cams_pgseg
    """
    cam_cfg = CamConfig(refine=refine, box_threshold=box_threshold, temperature=temperature, parity=parity,
                        layer=layer, attention_blocks=attention_blocks, affinity=affinity,
                        affinity_weight=affinity_weight, dino_model=dino_model, dino_weights=dino_weights,
                        sgc_segments=sgc_segments, sgc_clusters=sgc_clusters, sgc_position=sgc_position)
    _warn_unused_dense_block(dense, cam_cfg, {"--dense-side": dense_side, "--dense-scale": dense_scale,
                                              "--dense-crop": dense_crop, "--dense-stride": dense_stride,
                                              "--dense-pamr": dense_pamr})
    family, checkpoint = segmenting_model(model, pgseg)  # --pgseg FILE is --model pgseg:FILE; two files: one line
    model_at = None  # a CLIP folder given: where the recorded CLIP lies now (checked by its bytes)
    if model is not None and family == "clip":
        if not names_a_folder(model):
            raise VplError(f"--model {model}: cam's CLIP is the one its --prototypes file names (or the extract "
                           "folder's); drop --model, give --model local-dir:DIR where that CLIP's folder lies now, "
                           "or --model pgseg:FILE for seeds from a PGSeg / GroupViT checkpoint")
        model_at = model_spec(model, DEFAULT_PRETRAINED, None)
    if family == "clip" and prototypes is None:
        raise VplError("cam: pass --prototypes/-p (a text-prototypes or learn-prototypes file), or --model pgseg:FILE "
                       "(alias --pgseg FILE)")
    if raw_out is not None and (family != "clip" or dense != "none"):
        raise VplError(f"--raw-out {raw_out}: made only with --refine caa (GradCAM), not with --dense or --model "
                       f"{family}:FILE; drop it")
    source, split = _open_source(source, split, prototypes)
    if family != "clip":  # a text-supervised family's checkpoint
        _cam_text(source, family, checkpoint, out, split, pgseg_side, run, shard)
        return
    from ..stages.cam import run_cam, run_dense_cam

    if dense != "none":
        from ..config import dense_config

        for option, value in (("--save-overlays", save_overlays), ("--save-debug", save_debug),
                              ("--parity", None if parity == "none" else parity)):
            if value is not None:
                raise VplError(f"{option}: not made with --dense {dense} (no GradCAM, no CAA); drop one of them")

        seg = dense_config(dense=dense, short_side=dense_side, logit_scale=dense_scale, slide_crop=dense_crop,
                           slide_stride=dense_stride, pamr_steps=dense_pamr)
        with progress("cam") as (on_start, on_item):
            s = run_dense_cam(source, prototypes, out, seg, runtime(**run), split=split, shard=shard_of(shard),
                              on_item=on_item, on_start=on_start, model_at=model_at)
        say(f"[green]✓[/] cam --dense {dense}: {s.done} images ({s.images_per_s:.1f} img/s), {s.skipped} already "
            f"done → {out}{pending(out)}")
        return
    cfg = warn_inert(cam_cfg)
    with progress("cam") as (on_start, on_item):
        s = run_cam(source, prototypes, out, cfg, runtime(**run), split=split, overlays=save_overlays,
                    debug=save_debug, shard=shard_of(shard), on_item=on_item, on_start=on_start, model_at=model_at,
                    raw_out=raw_out)
    also = "" if raw_out is None else f" (and --refine none's → {raw_out}{pending(raw_out)})"
    say(f"[green]✓[/] cam: {s.done} images ({s.images_per_s:.1f} img/s), {s.skipped} already done → {out}"
        f"{pending(out)}{also}")


def _open_source(source: Path, split: str | None, prototypes: Path | None):
    """What `cam` reads first, checked torch-free before the stage (and torch) loads, as `segment` does: a source
    or a prototypes file that is not there is answered in a fraction of a second. A dataset is opened here once and
    handed to the stage as ``(dataset, None)``; an `extract` folder stays a path (the stage reads its record)."""
    from .. import io
    from ..data import is_extract_folder, open_dataset

    if not is_extract_folder(source):
        source, split = open_dataset(source, split), None
    if prototypes is not None:
        io.read_header(prototypes)  # there and a safetensors file; the stage checks the rest
    return source, split


def _cam_text(source, family: str, checkpoint: Path, out: Path, split: str | None, side: int | None, run: dict,
              shard) -> None:
    """`cam --model NAME:FILE` (PGSeg's alias `--pgseg FILE`): the seeds of a text-supervised family's checkpoint
    (vpltool.stages.cam.text); the options it does not use were refused or warned about before
    (vpltool.cli.applies)."""
    from ..stages.cam.text import run_text_cam

    with progress("cam") as (on_start, on_item):
        s = run_text_cam(source, family, checkpoint, out, runtime(**run), split=split, short_side=side,
                         shard=shard_of(shard), on_item=on_item, on_start=on_start)
    say(f"[green]✓[/] cam --model {family}: {s.done} images ({s.images_per_s:.1f} img/s), {s.skipped} already done "
        f"→ {out}{pending(out)}")


def _warn_unused_dense_block(dense: str, cam_cfg: CamConfig, dense_options: dict) -> None:
    """cam runs one of two paths; what the other path alone reads is warned about (and not recorded), as predict
    does: the ``--dense-*`` options without ``--dense``, the GradCAM/CAA options (set away from their defaults)
    with it."""
    from dataclasses import fields

    from ..config.checks import ignored_option

    if dense == "none":
        said = [ignored_option(option, f"{value:g}" if isinstance(value, float) else value, "without --dense")
                for option, value in dense_options.items() if value is not None]
    else:
        default = CamConfig()
        said = [ignored_option(f"--{f.name.replace('_', '-')}", getattr(cam_cfg, f.name),
                               f"with --dense {dense} (no GradCAM, no CAA)")
                for f in fields(CamConfig) if getattr(cam_cfg, f.name) != getattr(default, f.name)]
    for sentence in said:
        warnings.warn(VplWarning(sentence), stacklevel=2)

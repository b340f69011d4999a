"""The `segment` command: open-vocabulary segmentation with a training-free dense CLIP (no labels, no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED, SegmentConfig
from .dense_options import DENSE, DenseOpt
from .options import (
    BATCHED,
    MODEL,
    LogFile,
    ModelConfigDir,
    OutDir,
    PretrainedOpt,
    Shard,
    Split,
    Verbose,
    runtime,
    warn_inert,
)
from .output import pending, progress, say
from .values import model_spec, segmenting_model, text_defaults
from .values import shard as shard_of

_S = SegmentConfig
SegmentModelOpt = Annotated[str, typer.Option(
    "--model", rich_help_panel=MODEL,
    help="The model that segments: a CLIP (an open_clip architecture, local-dir:/path, hf-hub:ORG/REPO, or "
         "vpltool-toy: the demo world's toy CLIP) with a --dense method, or FAMILY:FILE, a checkpoint of a "
         "text-supervised family: pgseg:FILE or groupvit:FILE (a train-pgseg pgseg.safetensors or a GroupViT / "
         "PGSeg release .pth, segmenting as the reference's pgseg_seg.py: group maps, the 'a photo of a {}.' "
         "template, --bg-thresh), each family as its reference evaluates; there --short-side, --slide-crop and "
         f"--slide-stride default to the family's ({text_defaults('short_side')}; {text_defaults('slide_crop')}; "
         f"{text_defaults('slide_stride')}: the references' VOC test) and the CLIP options are not used.")]


def segment_cmd(
    data: Annotated[Path, typer.Argument(help="A photo, a folder of photos (no labels needed: give --classes), or a "
                                         "dataset: a VOC root, a COCO root, a generic folder or manifest.json "
                                         "(labels are not read).")],
    out: OutDir,
    split: Split = None,
    classes: Annotated[Optional[str], typer.Option(help="Class names: a file with one per line, or a,b,c; synonyms "
                                                   "as cat|kitten (one query each, the class takes the best); the "
                                                   "masks are over background + these [default: the dataset's "
                                                   "classes].", show_default=False)] = None,
    dense: DenseOpt = _S.dense,
    templates: Annotated[str, typer.Option(help="imagenet (the methods' 80 prompts) | clip-es | ov-stitcher (the 80 "
                                           "and, per query word, OV-Stitcher's class-biased sentences) | a template "
                                           "with {} | a file, one template per line.")] = _S.templates,
    background: Annotated[Optional[str], typer.Option(
        help="Background words (queries of class 0): auto | voc | coco | none | a file | 'w1,w2,...' [default: "
             f"{_S.background}; with --model FAMILY:FILE the family's: {text_defaults('background')}].",
        show_default=False)] = None,
    knobs: dict = DENSE,
    model: SegmentModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    pgseg: Annotated[Optional[Path], typer.Option(help="The alias of --model pgseg:FILE (the same run).",
                                                  rich_help_panel=MODEL, show_default=False)] = None,
    bg_thresh: Annotated[Optional[float], typer.Option(
        help="With --model FAMILY:FILE: a pixel whose best class score is below this is background (PGSeg: capped "
             f"at the image's highest affinity) [default: the family's: {text_defaults('bg_thresh')}].",
        show_default=False)] = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write each photo with its mask's colours and a "
                                          "legend of the classes, OUT/overlays/<id>.jpg (the photos are only "
                                          "read).")] = False,
    onnx: Annotated[Optional[Path], typer.Option(
        help="A file `vpltool export` wrote: run it with onnxruntime on the CPU instead of a model (its classes, "
             "settings and photo size are the file's; multi-scale, flip and the CRF are not in it).",
        rich_help_panel=MODEL, show_default=False)] = None,
    shard: Shard = None,
    run: dict = BATCHED,
    model_config_dir: ModelConfigDir = None,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Segment any class names with no labels and no training: CLIP with a training-free dense last block
    (MaskCLIP, SCLIP, ClearCLIP, NACLIP, SC-CLIP; ProxyCLIP and CASS with a DINO proxy model; Trident with DINO
    and SAM's image encoder) against text queries, or a text-supervised family's checkpoint (PGSeg / GroupViT:
    --model pgseg:FILE);
    palette PNGs that `eval` scores by class name.

    \b
    Example:
      vpltool segment data/VOC2012 --split val -o runs/voc/naclip_val --dense naclip
      vpltool segment photo.jpg --classes cat,dog -o runs/photo_seg --overlay
      vpltool segment photos/ --classes "cat|kitten,dog,sofa" -o runs/photos_seg
      vpltool segment photos/ --classes cat,dog -o runs/gv_seg --model pgseg:runs/gv/pgseg.safetensors
      vpltool segment voc20=data/VOC2012 -o runs/voc20 --dense sclip --class-file sclip:voc20
      vpltool segment photos/ -o runs/proxy --dense proxyclip --proxy-weights dino_vitbase8_pretrain.pth
      vpltool segment photos/ -o runs/trident --dense trident --proxy-weights dino_vitbase16_pretrain.pth \\
          --sam-weights sam_vit_b_01ec64.pth
    """
    from ..data import open_dataset

    if onnx is not None:
        _segment_onnx(data, split, out, onnx, classes, overlay, shard, run)
        return
    family, checkpoint = segmenting_model(model, pgseg)  # --pgseg FILE is --model pgseg:FILE; two files: one line
    dataset = open_dataset(data, split)  # torch-free: a missing or unreadable input is answered before torch loads
    from ..data.class_files import parse_class_names

    if family != "clip":  # a text-supervised family's checkpoint (vpltool.stages.segment_text)
        from ..stages.segment import class_list
        from ..stages.segment_text import run_segment_text

        names = class_list(dataset, None if classes is None else parse_class_names(classes))
        own = _slide(family, knobs["slide_crop"], knobs["slide_stride"])
        with progress("segment") as (on_start, on_item):
            s = run_segment_text(dataset, out, family, checkpoint, names, runtime(**run), bg_thresh=bg_thresh,
                                 short_side=knobs["short_side"], slide=own, background=background,
                                 on_start=on_start, on_item=on_item, overlay=overlay, shard=shard_of(shard))
        say(f"[green]✓[/] segment ({family}): {s.done} masks ({s.images_per_s:.1f} img/s), {s.skipped} already done "
            f"→ {out}{pending(out)}")
        return
    cfg = SegmentConfig.of(dense=dense, templates=templates,
                        background=_S.background if background is None else background,
                        classes=None if classes is None else parse_class_names(classes), **knobs)
    warn_inert(cfg)
    from ..stages.segment import run_segment  # torch: once the options are known good (a misspelt --dense is not)

    with progress("segment") as (on_start, on_item):
        s = run_segment(dataset, out, model_spec(model, pretrained, model_config_dir), cfg,
                        runtime(**run), shard=shard_of(shard),
                        on_item=on_item, on_start=on_start, overlay=overlay)
    say(f"[green]✓[/] segment ({cfg.dense}): {s.done} masks ({s.images_per_s:.1f} img/s), {s.skipped} already done "
        f"→ {out}{pending(out)}")


def _segment_onnx(data: Path, split, out: Path, onnx: Path, classes, overlay: bool, shard, run: dict) -> None:
    """``segment DATA --onnx FILE``: the exported file's classes and settings, its masks as segment's."""
    from ..data import open_dataset
    from ..errors import VplError

    if classes is not None:
        raise VplError(f"--classes with --onnx {onnx}: the file's classes are baked in; export another file with "
                       "these --classes")
    dataset = open_dataset(data, split)
    from ..stages.export.run import run_onnx_segment

    with progress("segment") as (on_start, on_item):
        s = run_onnx_segment(dataset, out, onnx, runtime(**run), shard=shard_of(shard), on_item=on_item,
                             on_start=on_start, overlay=overlay)
    say(f"[green]✓[/] segment (onnx {onnx.name}): {s.done} masks ({s.images_per_s:.1f} img/s), {s.skipped} already "
        f"done → {out}{pending(out)}")


def _slide(family: str, crop: int | None, stride: int | None) -> tuple[int, int] | None:
    """``--slide-crop`` / ``--slide-stride`` with a text-supervised family's checkpoint: what is not given is the
    family's (its configuration's ``ZERO_SHOT``); None when neither is given."""
    from ..models.registry import text_config

    if crop is None and stride is None:
        return None
    own = text_config(family).ZERO_SHOT.slide
    return (own[0] if crop is None else crop, own[1] if stride is None else stride)

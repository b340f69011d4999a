"""The `segment` command: open-vocabulary segmentation with a training-free dense CLIP (no labels, no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED, SegmentConfig, dense_help
from ..config.pgseg import PGSEG_BACKGROUND, PGSEG_BG_THRESH
from .common import (
    BATCHED,
    AttentionOpt,
    ClassFileOpt,
    ClusterCutOpt,
    CoarseThresholdOpt,
    CosFacOpt,
    DenseOpt,
    GlobalWeightOpt,
    LogFile,
    MinimalAreaOpt,
    ModelConfigDir,
    ModelOpt,
    OutDir,
    PretrainedOpt,
    ProxyModelOpt,
    ProxyWeightsOpt,
    RefineNegCosOpt,
    ResidualOpt,
    SamHalvesOpt,
    SamModelOpt,
    SamRefineOpt,
    SamWeightsOpt,
    Shard,
    ShiftWeightOpt,
    Split,
    StretchOpt,
    Verbose,
    WindowGlobalOpt,
    friendly_errors,
    option_blocks,
    pending,
    progress,
    runtime,
    say,
    warn_inert,
)
from .root import app
from .values import model_spec
from .values import shard as shard_of

_S = SegmentConfig
_METHOD = f"[default: the --dense method's. {dense_help()}]"


@app.command("segment")
@friendly_errors
@option_blocks
def segment_cmd(
    data: Annotated[Path, typer.Argument(help="Dataset: a VOC root, a COCO root, a generic folder or manifest.json "
                                         "(labels are not read).")],
    out: OutDir,
    split: Split = None,
    classes: Annotated[Optional[str], typer.Option(help="Class names: a file with one per line, or a,b,c; synonyms "
                                                   "as cat|kitten (one query each, the class takes the best); the "
                                                   "masks are over background + these [default: the dataset's "
                                                   "classes].", show_default=False)] = None,
    dense: DenseOpt = _S.dense,
    templates: Annotated[str, typer.Option(help="imagenet (the methods' 80 prompts) | clip-es | a template with {} | "
                                           "a file, one template per line.")] = _S.templates,
    background: Annotated[Optional[str], typer.Option(
        help="Background words (queries of class 0): auto | voc | coco | none | a file | 'w1,w2,...' [default: "
             f"{_S.background}; with --pgseg {PGSEG_BACKGROUND} (the reference's)].", show_default=False)] = None,
    logit_scale: Annotated[Optional[float], typer.Option(help="softmax(scale * cosine) over the queries. " + _METHOD,
                                                         show_default=False)] = None,
    prob_threshold: Annotated[Optional[float], typer.Option(help="A pixel whose top class probability is below this "
                                                            "is background.", show_default=False)] = None,
    area_threshold: Annotated[Optional[float], typer.Option(help="SCLIP's filter: a class covering at most this share "
                                                            "of the foreground is dropped (0 = off).",
                                                            show_default=False)] = None,
    short_side: Annotated[Optional[int], typer.Option(help="Images resized to this short side first (mmseg keep-ratio "
                                                      "resize, long side at most 2048).", show_default=False)] = None,
    slide_crop: Annotated[Optional[int], typer.Option(help="Sliding window side in pixels (0 = the whole image).",
                                                      show_default=False)] = None,
    slide_stride: Annotated[Optional[int], typer.Option(help="Sliding window stride in pixels.",
                                                        show_default=False)] = None,
    pamr_steps: Annotated[Optional[int], typer.Option(help="PAMR refinement steps (0 = off; dilations 8, 16).",
                                                      show_default=False)] = None,
    class_file: ClassFileOpt = None,
    attention: AttentionOpt = None,
    residual: ResidualOpt = None,
    global_weight: GlobalWeightOpt = None,
    shift_weight: ShiftWeightOpt = None,
    cluster_cut: ClusterCutOpt = None,
    stretch: StretchOpt = None,
    window_global: WindowGlobalOpt = None,
    proxy_model: ProxyModelOpt = None,
    proxy_weights: ProxyWeightsOpt = _S.proxy_weights,
    sam_model: SamModelOpt = _S.sam_model,
    sam_weights: SamWeightsOpt = None,
    cos_fac: CosFacOpt = None,
    refine_neg_cos: RefineNegCosOpt = None,
    sam_halves: SamHalvesOpt = None,
    sam_refine: SamRefineOpt = None,
    coarse_threshold: CoarseThresholdOpt = None,
    minimal_area: MinimalAreaOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    pgseg: Annotated[Optional[Path], typer.Option(help="Segment with this PGSeg / GroupViT checkpoint instead (a "
                                                  "train-pgseg pgseg.safetensors or a GroupViT / PGSeg release "
                                                  ".pth), as the reference's pgseg_seg.py: group maps, the 'a photo "
                                                  "of a {}.' template, --bg-thresh; there --short-side 448, "
                                                  "--slide-crop 448 and --slide-stride 224 by default (the "
                                                  "reference's VOC test); the CLIP options are not used.")] = None,
    bg_thresh: Annotated[float, typer.Option(help="With --pgseg: a pixel whose best class affinity is below this "
                                             "(capped at the image's highest) is background.")] = PGSEG_BG_THRESH,
    shard: Shard = None,
    run: dict = BATCHED,
    model_config_dir: ModelConfigDir = None,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Segment any class names with no labels and no training: CLIP with a training-free dense last block
    (MaskCLIP, SCLIP, ClearCLIP, NACLIP, SC-CLIP; ProxyCLIP and CASS with a DINO proxy model; Trident with DINO
    and SAM's image encoder) against text queries;
    palette PNGs that `eval` scores by class name.

    \b
    Example:
      vpltool segment data/VOC2012 --split val -o runs/voc/naclip_val --dense naclip
      vpltool segment photos/ --classes "cat|kitten,dog,sofa" -o runs/photos_seg
      vpltool segment voc20=data/VOC2012 -o runs/voc20 --dense sclip --class-file sclip:voc20
      vpltool segment photos/ -o runs/proxy --dense proxyclip --proxy-weights dino_vitbase8_pretrain.pth
      vpltool segment photos/ -o runs/trident --dense trident --proxy-weights dino_vitbase16_pretrain.pth \\
          --sam-weights sam_vit_b_01ec64.pth
    """
    from ..data import open_dataset
    from ..stages.predict import parse_class_names
    from ..stages.segment import run_segment

    dataset = open_dataset(data, split)
    if pgseg is not None:  # PGSeg / GroupViT: zero-shot by group maps (vpltool.stages.segment_pgseg)
        from ..stages.segment_pgseg import DEFAULT_SHORT_SIDE, DEFAULT_SLIDE, run_segment_pgseg

        names = parse_class_names(classes) if classes is not None else list(dataset.classes[1:])
        with progress("segment") as (on_start, on_item):
            s = run_segment_pgseg(dataset, out, pgseg, names, runtime(**run), bg_thresh=bg_thresh,
                                  short_side=short_side or DEFAULT_SHORT_SIDE,
                                  slide=(DEFAULT_SLIDE[0] if slide_crop is None else slide_crop,
                                         DEFAULT_SLIDE[1] if slide_stride is None else slide_stride),
                                  background=PGSEG_BACKGROUND if background is None else background,
                                  on_start=on_start, on_item=on_item)
        say(f"[green]✓[/] segment (pgseg): {s.done} masks ({s.images_per_s:.1f} img/s), {s.skipped} already done → "
            f"{out}")
        return
    cfg = SegmentConfig(dense=dense, templates=templates,
                        background=_S.background if background is None else background, logit_scale=logit_scale,
                        prob_threshold=prob_threshold, area_threshold=area_threshold, short_side=short_side,
                        slide_crop=slide_crop, slide_stride=slide_stride, pamr_steps=pamr_steps,
                        classes=None if classes is None else parse_class_names(classes), class_file=class_file,
                        attention=attention, residual=residual, proxy_model=proxy_model, proxy_weights=proxy_weights,
                        global_weight=global_weight, shift_weight=shift_weight, cluster_cut=cluster_cut,
                        stretch=stretch, window_global=window_global, sam_model=sam_model, sam_weights=sam_weights,
                        cos_fac=cos_fac, refine_neg_cos=refine_neg_cos, sam_halves=sam_halves,
                        sam_refine=sam_refine, coarse_threshold=coarse_threshold, minimal_area=minimal_area)
    warn_inert(cfg)
    with progress("segment") as (on_start, on_item):
        s = run_segment(dataset, out, model_spec(model, pretrained, model_config_dir), cfg,
                        runtime(**run), shard=shard_of(shard),
                        on_item=on_item, on_start=on_start)
    say(f"[green]✓[/] segment ({cfg.dense}): {s.done} masks ({s.images_per_s:.1f} img/s), {s.skipped} already done "
        f"→ {out}{pending(out)}")

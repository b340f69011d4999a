"""The training-free dense methods' options (`segment`, `benchmark`, and `--dense` of `cam` and `predict`), defined
once; defaults are the methods' own (:mod:`vpltool.config.dense`), so most of them are ``None`` here: the method's.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import SegmentConfig, dense_help
from .options import OptionBlock

_S = SegmentConfig
_METHOD = f"[default: the --dense method's. {dense_help()}]"
_PRESET = "[default: the method's preset for each benchmark; `--presets` lists them]"

DenseOpt = Annotated[str, typer.Option("--dense", help="How CLIP's last block mixes its tokens: none (CLIP's own, "
                                       "the CLIP-ES path) | maskclip | sclip | clearclip | naclip | sc-clip | "
                                       "proxyclip | cass | trident (the training-free dense methods, as their "
                                       "public code; "
                                       "docs/open-vocabulary.md).")]
ProxyModelOpt = Annotated[Optional[str], typer.Option(
    "--proxy-model", help="--dense proxyclip's, cass's and trident's proxy vision model: a timm DINO ViT name "
    "[default: the method's: vit_base_patch8_224.dino (the references' dino_vitb8) for proxyclip and cass, "
    "vit_base_patch16_224.dino (dino_vitb16) for trident].", show_default=False)]
ProxyWeightsOpt = Annotated[str, typer.Option("--proxy-weights", help="Its weights: hub (timm's local cache) | a "
                                              "local file (timm or DINO layout) | none (random, seeded: tests).")]

# the references' queries and last-block switches (segment, benchmark): None = the method's / the preset's
ClassFileOpt = Annotated[Optional[str], typer.Option(
    "--class-file", help="Queries as the references write them: a file of one line a class (the dataset's order; "
    "first line the background's words when it has one more line), comma-separated synonyms, or a bundled "
    "SET:BENCHMARK (sclip:voc21, clearclip:voc21, ...); each class is still scored as the dataset's. Queries "
    "separated by ',' (SCLIP's files) or, in a file with a ';', by '; ' (ProxyCLIP's and Trident's). benchmark "
    "also takes a set name alone (sclip: each benchmark's own file).",
    show_default=False)]
AttentionOpt = Annotated[Optional[str], typer.Option(
    "--attention", help="The last block's attention in place of the --dense method's: qk (CLIP's own; ClearCLIP's "
    "model_type vanilla) | identity (MaskCLIP) | qq+kk (SCLIP) | qq (ClearCLIP) | kk (NACLIP).", show_default=False)]
# CASS's per-dataset knobs (segment, benchmark): None = its VOC21 config's / the benchmark preset's
GlobalWeightOpt = Annotated[Optional[float], typer.Option(
    "--global-weight", help="--dense cass: the image embedding's share of each patch's logits (its "
    "global_semantics_weight) [default: 0.1, cfg_voc21.py].", show_default=False)]
ShiftWeightOpt = Annotated[Optional[float], typer.Option(
    "--shift-weight", help="--dense cass: how far the query nearest the image moves toward its 2 most similar "
    "patches, per query cluster (its mean_vector_weight) [default: 0.03].", show_default=False)]
ClusterCutOpt = Annotated[Optional[float], typer.Option(
    "--cluster-cut", help="--dense cass: the Ward distance cutting the queries into clusters (its h_threshold) "
    "[default: 0.10].", show_default=False)]
StretchOpt = Annotated[Optional[bool], typer.Option(
    "--stretch/--no-stretch", help="--dense cass: stretch the DINO graph's singular values (its code does for every "
    "dataset but VOC20 and Cityscapes) [default: stretch].", show_default=False)]
# Trident's SAM encoder and its aggregation (segment, benchmark)
SamModelOpt = Annotated[str, typer.Option("--sam-model", help="--dense trident's SAM image encoder: vit_b (the "
                                          "reference's) | vit_l | vit_h | toy (the demo world's: "
                                          "vpltool/assets/toy-sam, `train-toy-sam`).")]
SamWeightsOpt = Annotated[Optional[str], typer.Option(
    "--sam-weights", help="--dense trident: SAM's weights, a local file (SAM's released checkpoint, e.g. "
    "sam_vit_b_01ec64.pth, or the image encoder's tensors) | none (random, seeded: tests). Required with trident.",
    show_default=False)]
CosFacOpt = Annotated[Optional[float], typer.Option(
    "--cos-fac", help="--dense trident: SAM's attention kept where its value cosine exceeds this times the row's "
    "mean (its cos_fac) [default: 1.2, base_config.py].", show_default=False)]
RefineNegCosOpt = Annotated[Optional[bool], typer.Option(
    "--refine-neg-cos/--no-refine-neg-cos", help="--dense trident: keep a negative cosine threshold (its "
    "refine_neg_cos; off: 0.6 in its place) [default: on].", show_default=False)]
SamHalvesOpt = Annotated[Optional[bool], typer.Option(
    "--sam-halves/--sam-whole", help="--dense trident: SAM sees the photo's left and right halves apart, each half "
    "of the spliced map aggregated by its own (its Cityscapes) [default: whole].", show_default=False)]
SamRefineOpt = Annotated[Optional[bool], typer.Option(
    "--sam-refine/--no-sam-refine", help="--dense trident: its SAM prompt refinement (eval.py --sam_refine, which its "
    "published figures use): each coarse region prompts SAM's mask decoder with a point, a box and its scores, and "
    "confident masks relabel it; needs SAM's whole checkpoint in --sam-weights [default: off for segment; on in "
    "benchmark's trident presets].", show_default=False)]
CoarseThresholdOpt = Annotated[Optional[float], typer.Option(
    "--coarse-threshold", help="--sam-refine: pixels and classes below this probability prompt nothing (its "
    "coarse_thresh) [default: 0.2, cfg_voc21.py; benchmark: each preset's].", show_default=False)]
MinimalAreaOpt = Annotated[Optional[int], typer.Option(
    "--minimal-area", help="--sam-refine: a coarse region smaller than this, in half-resolution pixels, prompts "
    "nothing (its minimal_area, set for photos of short side 448) [default: 225, base_config.py].",
    show_default=False)]
WindowGlobalOpt = Annotated[Optional[bool], typer.Option(
    "--window-global/--input-global", help="--dense cass: each window's own image embedding (its Cityscapes) or the "
    "whole input's [default: input-global].", show_default=False)]
ResidualOpt = Annotated[Optional[bool], typer.Option(
    "--residual/--no-residual", help="Keep (or drop) the last block's residual and FFN, in place of the --dense "
    "method's (ClearCLIP's ignore_residual=True is --no-residual).", show_default=False)]


# ---- the blocks: every knob of a dense method, as `segment` and `benchmark` take it (one parameter each)
# the segmentor's settings, one row a knob: its type, segment's help (the --dense method's default) and benchmark's
# (each benchmark's preset); None = the method's / the preset's
_SETTINGS = (
    ("logit_scale", float, "softmax(scale * cosine) over the queries. " + _METHOD,
     "softmax(scale * cosine). " + _PRESET),
    ("prob_threshold", float, "A pixel whose top class probability is below this is background.",
     "Background below this top probability. " + _PRESET),
    ("area_threshold", float, "SCLIP's filter: a class covering at most this share of the foreground is dropped "
     "(0 = off).", "SCLIP's area filter (0 = off). " + _PRESET),
    ("short_side", int, "Images resized to this short side first (mmseg keep-ratio resize, long side at most 2048).",
     "Short side of the resize. " + _PRESET),
    ("slide_crop", int, "Sliding window side in pixels (0 = the whole image).", "Window side (0 = whole image). "
     + _PRESET),
    ("slide_stride", int, "Sliding window stride in pixels.", "Window stride. " + _PRESET),
    ("pamr_steps", int, "PAMR refinement steps (0 = off; dilations 8, 16).", "PAMR steps (0 = off). " + _PRESET),
)
# the references' queries, the last block's switches and CASS's knobs; then Trident's
# a method's class-agnostic region masks per image (segment, benchmark)
RegionMasksOpt = Annotated[Optional[str], typer.Option(
    "--region-masks", help="--dense corrclip's class-agnostic region masks: a folder of one <image stem>.npz per "
    "image (key instance_mask, an int map at the image's size, the smallest id unsegmented: the reference's "
    "precomputed masks) | sam (segment-anything's automatic mask generator on --sam-model / --sam-weights, with the "
    "reference's SAM2 settings; it keeps 3 masks a point where that SAM2 setting keeps 1) | sam2[:CONFIG] (SAM2's, "
    "where the sam2 package is installed; --sam-weights its checkpoint).", show_default=False)]
_KNOBS = (("class_file", ClassFileOpt, None), ("attention", AttentionOpt, None), ("residual", ResidualOpt, None),
          ("region_masks", RegionMasksOpt, None),
          ("global_weight", GlobalWeightOpt, None), ("shift_weight", ShiftWeightOpt, None),
          ("cluster_cut", ClusterCutOpt, None), ("stretch", StretchOpt, None),
          ("window_global", WindowGlobalOpt, None))
_TRIDENT = (("cos_fac", CosFacOpt, None), ("refine_neg_cos", RefineNegCosOpt, None),
            ("sam_halves", SamHalvesOpt, None), ("sam_refine", SamRefineOpt, None),
            ("coarse_threshold", CoarseThresholdOpt, None), ("minimal_area", MinimalAreaOpt, None))
# the proxy models: segment's defaults are the config's, benchmark's None (each preset's)
_PROXY = (("proxy_model", ProxyModelOpt, None), ("proxy_weights", ProxyWeightsOpt, _S.proxy_weights),
          ("sam_model", SamModelOpt, _S.sam_model), ("sam_weights", SamWeightsOpt, None))
_PROXY_PRESET = (
    ("proxy_model", ProxyModelOpt, None),
    ("proxy_weights", Annotated[Optional[str], typer.Option(
        "--proxy-weights", help="The proxy model's weights: hub (timm's local cache) | a local file | none (random, "
        "seeded: tests) [default: hub].", show_default=False)], None),
    ("sam_model", Annotated[Optional[str], typer.Option(
        "--sam-model", help="--dense trident's SAM image encoder: vit_b | vit_l | vit_h | toy [default: vit_b, "
        "Trident's].", show_default=False)], None),
    ("sam_weights", SamWeightsOpt, None))


def _settings(column: int) -> tuple:
    return tuple((name, Annotated[Optional[kind], typer.Option(help=helps[column], show_default=False)], None)
                 for name, kind, *helps in _SETTINGS)


# segment's and benchmark's (whose --help lists the proxy models last): the values are SegmentConfig's fields by name,
# given to it (segment) or as the presets' overrides (benchmark)
DENSE = OptionBlock(*_settings(0), *_KNOBS, *_PROXY, *_TRIDENT)
DENSE_PRESET = OptionBlock(*_settings(1), *_KNOBS, *_TRIDENT, *_PROXY_PRESET)

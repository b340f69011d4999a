"""The own settings of the ``--dense`` methods that have knobs, one :class:`~vpltool.config.knobs.MethodKnobs`
dataclass each (their spec rows in :mod:`vpltool.config.dense` name them). None = the method's value: its module's
default (its reference's VOC21 config), or the benchmark preset's. Torch-free.

The option names, their help and the field names are those the methods had as fields of
:class:`~vpltool.config.SegmentConfig`: a stage record keeps the fields by name, so earlier runs resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import VplError
from .checks import at_least, choice, fraction, positive, require
from .knobs import MethodKnobs, knob


@dataclass(frozen=True)
class CassKnobs(MethodKnobs):
    """CASS's per-dataset knobs (its ``configs/cfg_*.py`` and dataset switches); None = its VOC21 values
    (:class:`vpltool.models.dense.cass.TextShift` / ``SpectralMatching``)."""

    # global_semantics_weight: the image embedding's share of the logits
    global_weight: float | None = knob(
        "--global-weight", "the image embedding's share of each patch's logits (its global_semantics_weight) "
        "[default: 0.1, cfg_voc21.py].")
    # mean_vector_weight: how far a query moves toward its top patches
    shift_weight: float | None = knob(
        "--shift-weight", "how far the query nearest the image moves toward its 2 most similar patches, per query "
        "cluster (its mean_vector_weight) [default: 0.03].")
    # h_threshold: the Ward distance at which the queries' tree is cut
    cluster_cut: float | None = knob(
        "--cluster-cut", "the Ward distance cutting the queries into clusters (its h_threshold) [default: 0.10].")
    # the DINO graph's singular values stretched (all but voc20 and city_scapes)
    stretch: bool | None = knob(
        "--stretch/--no-stretch", "stretch the DINO graph's singular values (its code does for every dataset but "
        "VOC20 and Cityscapes) [default: stretch].")
    # each window's own image embedding (city_scapes) instead of the input's
    window_global: bool | None = knob(
        "--window-global/--input-global", "each window's own image embedding (its Cityscapes) or the whole input's "
        "[default: input-global].")

    def __post_init__(self) -> None:
        for option, value in (("--global-weight", self.global_weight), ("--shift-weight", self.shift_weight)):
            if value is not None:
                fraction(option, value)
        positive("--cluster-cut", self.cluster_cut, allow_none=True)


@dataclass(frozen=True)
class TridentKnobs(MethodKnobs):
    """Trident's SAM aggregation knobs (None = its VOC21 values, :class:`vpltool.models.dense.trident.SamAggregation`),
    then its SAM prompt refinement's (fields of :class:`~vpltool.config.DenseSettings` too: the resolved settings
    take them)."""

    cos_fac: float | None = knob(  # pairs kept where SAM's value cosine > cos_fac x the row's mean
        "--cos-fac", "SAM's attention kept where its value cosine exceeds this times the row's mean (its cos_fac) "
        "[default: 1.2, base_config.py].")
    refine_neg_cos: bool | None = knob(  # a negative threshold kept (True) or replaced by 0.6 (False)
        "--refine-neg-cos/--no-refine-neg-cos", "keep a negative cosine threshold (its refine_neg_cos; off: 0.6 in "
        "its place) [default: on].")
    sam_halves: bool | None = knob(  # SAM on the photo's left and right halves apart (its Cityscapes)
        "--sam-halves/--sam-whole", "SAM sees the photo's left and right halves apart, each half of the spliced map "
        "aggregated by its own (its Cityscapes) [default: whole].")
    sam_refine: bool | None = knob(  # Trident's SAM prompt refinement (eval.py --sam_refine)
        "--sam-refine/--no-sam-refine", "its SAM prompt refinement (eval.py --sam_refine, which its published "
        "figures use): each coarse region prompts SAM's mask decoder with a point, a box and its scores, and "
        "confident masks relabel it; needs SAM's whole checkpoint in --sam-weights [default: off for segment; on in "
        "benchmark's trident presets].",
        # asked for, the refinement would be silently skipped by any other method (it needs Trident's SAM pass)
        needs="Trident's SAM prompt refinement needs SAM's image encoder")
    coarse_threshold: float | None = knob(  # its coarse_thresh (None = DenseSettings')
        "--coarse-threshold", "with --sam-refine: pixels and classes below this probability prompt nothing (its "
        "coarse_thresh) [default: 0.2, cfg_voc21.py; benchmark: each preset's].")
    minimal_area: int | None = knob(  # its minimal_area, half-resolution pixels (None = DenseSettings')
        "--minimal-area", "with --sam-refine: a coarse region smaller than this, in half-resolution pixels, prompts "
        "nothing (its minimal_area, set for photos of short side 448) [default: 225, base_config.py].")

    def __post_init__(self) -> None:
        if self.cos_fac is not None and not self.cos_fac >= 0:  # nan too (nan < 0 is False)
            require(False, f"--cos-fac {self.cos_fac}: give a factor >= 0 (Trident's own: 1.2; 0 keeps every pair "
                    "with a positive SAM cosine)")
        if self.coarse_threshold is not None:
            fraction("--coarse-threshold", self.coarse_threshold)
        at_least("--minimal-area", self.minimal_area, 1, allow_none=True, why=" half-resolution pixels")


# what --sam-weights is for each --sam-model: segment-anything's released checkpoints, and the demo world's toy SAM,
# shipped in the package (vpltool/assets/toy-sam, made by `train-toy-sam`)
SAM_RELEASES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
TOY_SAM = Path(__file__).resolve().parents[1] / "assets" / "toy-sam" / "model.safetensors"


def automatic_generator(value: str | None) -> bool:
    """``value`` (``--masks``, ``--region-masks``) names an automatic mask generator, ``sam`` or ``sam2[:CONFIG]``,
    not a folder: ``sam2_masks`` or ``sam_out`` is a folder's name (read as SAM 2 with config ``_masks`` it was
    refused for want of weights, the folder never named)."""
    return value in ("sam", "sam2") or str(value).startswith("sam2:")


def sam_weights_hint(sam_model: str) -> str:
    """What to pass as ``--sam-weights`` for ``--sam-model sam_model``, for messages."""
    if sam_model == "toy":
        return f"--sam-weights {TOY_SAM} (the demo world's toy SAM, shipped with vpltool)"
    release = SAM_RELEASES.get(sam_model, SAM_RELEASES["vit_b"])
    return (f"--sam-weights FILE, SAM's released checkpoint of --sam-model {sam_model} ({release}, from "
            "segment-anything's model card)")


# ActiveSAM's settings, defined once: VILA-Lab/ActiveSAM@41cad43 configs/base_config.py's model dict (its
# pruner_max_active is max_active here). --help, the benchmark presets and the method's settings all read them
ACTIVESAM_DEFAULTS = {"neighbor_tokens": 2, "hypernym_tokens": 2, "bucket_size": 32, "confidence_threshold": 0.3,
                      "preview_resolution": 672, "quantile_alpha": 0.2, "max_active": 40, "mabc_exponent": 1.25}


def _confidence_threshold(newer: bool = False) -> float | None:
    """The instance-score threshold both SAM 3 methods read, and SAM 3's region generator (declared alike;
    ``newer`` in the region methods, whose runs were recorded before it)."""
    return knob(
        "--confidence-threshold", "an instance mask of a concept prompt is kept when its score (sigmoid of its "
        "logit times the prompt's presence) is above this (its confidence_threshold); corrclip, ov-stitcher and "
        "textregion: with --region-masks sam3, the instances that are regions [default: 0.5 sam3 and the regions, "
        f"base.py and Meta's Sam3Processor; {ACTIVESAM_DEFAULTS['confidence_threshold']} activesam, "
        "base_config.py].", newer=newer)


def _region_masks() -> str | None:
    """The knob CorrCLIP, OV-Stitcher and TextRegion share (each class declares it alike, so --region-masks is one
    option whose help says what each method reads)."""
    return knob(
        "--region-masks", "class-agnostic region masks per image. corrclip and ov-stitcher: a folder of one <image "
        "stem>.npz per image (key instance_mask, an int map at the image's size, the smallest id unsegmented: the "
        "reference's precomputed masks) | sam (segment-anything's automatic mask generator on --sam-model / "
        "--sam-weights, with each reference's SAM2 settings; it keeps 3 masks a point where that SAM2 setting keeps "
        "1) | sam2[:CONFIG] (SAM2's, where the sam2 package is installed; --sam-weights its checkpoint). textregion: "
        "a folder of one <image stem>.npz per image (key masks, regions x height x width soft masks in [0, 3] at the "
        "image's size) | sam2[:CONFIG] (SAM 2's generator as TextRegion runs it, fused soft masks; --sam-weights its "
        "checkpoint) | sam (that generator on segment-anything's --sam-model / --sam-weights). All three: "
        "sam3[:CONCEPTS] (SAM 3 prompted with concepts, by default the run's class names and background words, its "
        "instance masks the regions; --sam-weights its facebook/sam3 folder or Meta's sam3.pt).",
        uses=("sam_model", "sam_weights"), when=("sam", "sam2", "sam3"))


QUERY_MERGES = ("max", "reference")  # --query-merge: each class its queries' max | its reference's, by position


def _query_merge() -> str | None:
    """The knob CorrCLIP, OV-Stitcher and TextRegion share: how their query rows become classes."""
    return knob(
        "--query-merge", "how the query rows' probabilities become classes: max (each class the max over its own "
        "queries) | reference (as its reference's code merges them, by position: the first Q-C+1 rows to the first "
        "class, each later row to the next class; the same where synonyms sit on a class file's first row alone, as "
        "in the references' own files, and other classes' rows elsewhere) [default: max].", newer=True)


def _check_query_merge(value: str | None) -> None:
    if value is not None and value not in QUERY_MERGES:
        choice("--query-merge", value, QUERY_MERGES)


def is_sam3(value: str | None) -> bool:
    """Whether ``--region-masks value`` names SAM 3 (``sam3`` or ``sam3:CONCEPTS``: the region generator of
    :mod:`vpltool.models.dense.concept_regions`)."""
    return isinstance(value, str) and value.split(":", 1)[0] == "sam3"


def _check_region_threshold(region_masks: str | None, threshold: float | None) -> None:
    """--confidence-threshold is SAM 3's instance score: read by --region-masks sam3 alone (the folders and the
    automatic generators keep every mask they have), so with another source it is refused, not ignored."""
    if threshold is None:
        return
    fraction("--confidence-threshold", threshold)
    require(is_sam3(region_masks),
            f"--confidence-threshold {threshold:g} with --region-masks {region_masks}: it keeps SAM 3's instances "
            "(--region-masks sam3) and no other source has scores to keep; drop it or use --region-masks sam3")


@dataclass(frozen=True)
class CorrCLIPKnobs(MethodKnobs):
    """CorrCLIP's class-agnostic region masks per image (:mod:`vpltool.models.dense.corrclip.regions`)."""

    # a folder of <image stem>.npz files (key instance_mask) | sam (segment-anything's automatic mask generator:
    # --sam-model, --sam-weights) | sam2[:CONFIG] (SAM2's, where installed: --sam-weights its checkpoint)
    region_masks: str | None = _region_masks()
    query_merge: str | None = _query_merge()  # max | reference (postprocess_result's merge by position)
    confidence_threshold: float | None = _confidence_threshold(newer=True)  # --region-masks sam3's

    def __post_init__(self) -> None:
        _check_query_merge(self.query_merge)
        _check_region_threshold(self.region_masks, self.confidence_threshold)


@dataclass(frozen=True)
class TextRegionKnobs(MethodKnobs):
    """TextRegion's region masks and views (:mod:`vpltool.models.dense.textregion`; None = its own:
    ``configs/base_config.py``'s 16 points a side and 336-pixel views, the whole photo one view)."""

    # a folder of <image stem>.npz files (key masks, soft masks in [0, 3]) | sam2[:CONFIG] | sam: its generator
    region_masks: str | None = _region_masks()
    points_per_side: int | None = knob(  # SAM 2's point grid side with --region-masks sam2 / sam
        "--points-per-side", "with --region-masks sam2 or sam: the generator's point grid side (its "
        "points_per_side) [default: 16, base_config.py; benchmark: 36 on cityscapes].")
    region_halves: bool | None = knob(  # the whole-photo view as two halves (its Cityscapes)
        "--region-halves/--region-whole", "the whole-photo view is the photo's left and right halves (its "
        "Cityscapes) [default: whole].")
    region_crop: int | None = knob(  # the side of its views (its crop_size)
        "--region-crop", "the side in pixels of each view, the photo's and its tiles' (its crop_size) [default: "
        "336, base_config.py].")

    query_merge: str | None = _query_merge()  # max | reference (model_semantic.py's merge by position)
    confidence_threshold: float | None = _confidence_threshold(newer=True)  # --region-masks sam3's

    def __post_init__(self) -> None:
        at_least("--points-per-side", self.points_per_side, 1, allow_none=True, why=" points")
        at_least("--region-crop", self.region_crop, 16, allow_none=True, why=" pixels")
        _check_query_merge(self.query_merge)
        _check_region_threshold(self.region_masks, self.confidence_threshold)


@dataclass(frozen=True)
class OVStitcherKnobs(MethodKnobs):
    """OV-Stitcher's region masks, read as CorrCLIP's (its SAM2 settings its own:
    :data:`vpltool.models.dense.ov_stitcher.SAM_SETTINGS`)."""

    region_masks: str | None = _region_masks()
    query_merge: str | None = _query_merge()  # max | reference (CorrCLIP's postprocess_result, as its code has it)
    confidence_threshold: float | None = _confidence_threshold(newer=True)  # --region-masks sam3's

    def __post_init__(self) -> None:
        _check_query_merge(self.query_merge)
        _check_region_threshold(self.region_masks, self.confidence_threshold)


@dataclass(frozen=True)
class RadsegKnobs(MethodKnobs):
    """RADSeg's files and scales (:mod:`vpltool.models.dense.radseg`; None = its own: scales 10, eval.py); its
    configs' constants (the prompt-denoising threshold 0.5, the ``siglip2`` adaptor) are the module's."""

    language_model: str | None = knob(
        "--language-model", "SigLIP 2's text tower and tokenizer, as RADIO's siglip2 adaptor loads them: a local "
        "folder of google/siglip2-giant-opt-patch16-384 (config.json, model.safetensors, the tokenizer's files); "
        "--proxy-weights is NVlabs/RADIO's checkpoint (e.g. c-radio_v3-b_half.pth.tar).")
    scra_scale: float | None = knob(
        "--scra-scale", "the last block's self-correlating attention: the scale of its token cosines (its "
        "scra_scaling) [default: 10, eval.py].")
    scga_scale: float | None = knob(
        "--scga-scale", "the global aggregation: the scale of its centred patch cosines (its scga_scaling) "
        "[default: 10, eval.py].")

    def __post_init__(self) -> None:
        positive("--scra-scale", self.scra_scale, allow_none=True, upper=1000.0)
        positive("--scga-scale", self.scga_scale, allow_none=True, upper=1000.0)


_A = ACTIVESAM_DEFAULTS
SAM3_PATCH = 14  # SAM 3's ViT patch in pixels (Meta's and every checkpoint's): a side SAM 3 reads is a multiple


def _sam3_weights() -> str | None:
    """The knob SAM 3 and ActiveSAM share (each class declares it alike: one --sam3-weights option)."""
    return knob(
        "--sam3-weights", "SAM 3's weights: a local folder in Hugging Face's layout (facebook/sam3: config.json, "
        "model.safetensors) or Meta's checkpoint file (sam3.pt, as ActiveSAM and Meta's package load it).")


SAM3_HEADS = ("instance", "semantic", "both")


@dataclass(frozen=True)
class Sam3Knobs(MethodKnobs):
    """SAM 3 per concept prompt (:mod:`vpltool.models.dense.sam3`; None = the "SAM 3" row's protocol: instance
    masks above 0.5, no semantic head, no presence gate)."""

    sam3_weights: str | None = _sam3_weights()
    confidence_threshold: float | None = _confidence_threshold()
    sam3_heads: str | None = knob(
        "--sam3-heads", "which of SAM 3's outputs make a prompt's score map: instance (its kept masks, each "
        "pixel the max of mask probability x score), semantic (its semantic head) or both (their pixelwise max, "
        "as ActiveSAM fuses them) [default: instance].")
    presence_gate: bool | None = knob(
        "--presence-gate/--no-presence-gate", "multiply each prompt's score map by its presence score (ActiveSAM "
        "and SegEarth-OV3 do; an instance score holds it already) [default: off].")

    def __post_init__(self) -> None:
        if self.confidence_threshold is not None:
            fraction("--confidence-threshold", self.confidence_threshold)
        if self.sam3_heads is not None:
            require(self.sam3_heads in SAM3_HEADS, f"--sam3-heads {self.sam3_heads!r}: give one of "
                    f"{', '.join(SAM3_HEADS)}")


@dataclass(frozen=True)
class ActiveSamKnobs(MethodKnobs):
    """ActiveSAM's settings (:mod:`vpltool.models.dense.activesam`; None = configs/base_config.py's)."""

    sam3_weights: str | None = _sam3_weights()
    confidence_threshold: float | None = _confidence_threshold()
    neighbor_tokens: int | None = knob(
        "--neighbor-tokens", "context tokens per class from its most similar other classes (its neighbor_tokens; "
        f"0 = none) [default: {_A['neighbor_tokens']}, base_config.py].")
    hypernym_tokens: int | None = knob(
        "--hypernym-tokens", "context tokens per class from its WordNet hypernyms, read through nltk's wordnet "
        f"data (its hypernym_tokens; 0 = none, and no WordNet needed) [default: {_A['hypernym_tokens']}, "
        "base_config.py].")
    bucket_size: int | None = knob(
        "--bucket-size", "concept prompts decoded together in one SAM 3 forward (its bucket_size) "
        f"[default: {_A['bucket_size']}, base_config.py].")
    preview_resolution: int | None = knob(
        "--preview-resolution", "the side in pixels of the presence preview that prunes the vocabulary (its "
        f"preview_resolution; a multiple of SAM 3's 14-pixel patch) [default: {_A['preview_resolution']}].")
    quantile_alpha: float | None = knob(
        "--quantile-alpha", "the preview keeps the classes whose presence is at least its (1 - alpha) quantile "
        f"(its quantile_alpha) [default: {_A['quantile_alpha']}].")
    max_active: int | None = knob(
        "--max-active", "at most this many classes are decoded at full resolution; a vocabulary no larger skips "
        f"the preview (its pruner_max_active) [default: {_A['max_active']}].")
    mabc_exponent: float | None = knob(
        "--mabc-exponent", "margin-aware background calibration: a pixel whose s1 sqrt(s1 - s2) is below "
        f"prob_threshold ** this is background (its mabc_exponent) [default: {_A['mabc_exponent']}].")

    def __post_init__(self) -> None:
        if self.confidence_threshold is not None:
            fraction("--confidence-threshold", self.confidence_threshold)
        for option, value in (("--neighbor-tokens", self.neighbor_tokens), ("--hypernym-tokens", self.hypernym_tokens)):
            at_least(option, value, 0, allow_none=True, why=" tokens (0 = none)")
        at_least("--bucket-size", self.bucket_size, 1, allow_none=True, why=" prompts")
        at_least("--preview-resolution", self.preview_resolution, SAM3_PATCH, allow_none=True, why=" pixels")
        if self.preview_resolution is not None and self.preview_resolution % SAM3_PATCH:
            below = self.preview_resolution // SAM3_PATCH * SAM3_PATCH
            raise VplError(f"--preview-resolution {self.preview_resolution}: not a multiple of SAM 3's "
                           f"{SAM3_PATCH}-pixel patch; give {below} or {below + SAM3_PATCH}")
        at_least("--max-active", self.max_active, 1, allow_none=True, why=" classes")
        if self.quantile_alpha is not None:
            fraction("--quantile-alpha", self.quantile_alpha)
        positive("--mabc-exponent", self.mabc_exponent, allow_none=True, upper=100.0)


__all__ = ["CassKnobs", "TridentKnobs", "CorrCLIPKnobs", "OVStitcherKnobs", "TextRegionKnobs", "RadsegKnobs",
           "Sam3Knobs", "ActiveSamKnobs", "ACTIVESAM_DEFAULTS", "SAM3_PATCH", "SAM3_HEADS", "QUERY_MERGES",
           "is_sam3"]

"""The defaults of the training-free dense segmentor (`segment`, `cam --dense`, `predict --classes --dense`): one set
per ``--dense`` method, each as that method's public code runs PASCAL VOC with background (its ``cfg_voc21.py``).

An option left at None takes the method's value (:meth:`SegmentConfig.resolved`); what ran is recorded resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import VplError
from .checks import at_least, choice, fraction, positive, require
from .method_presets import MethodPresets

DEFAULT_PROXY_MODEL = "vit_base_patch8_224.dino"  # timm's name of the references' dino_vitb8 checkpoint
DEFAULT_SAM_MODEL = "vit_b"  # Trident's sam_model_type (configs/base_config.py)
CROP_MODES = ("pad", "floor")  # a window that is no patch multiple: zero-padded (ClearCLIP) | remainder dropped
ATTENTION_CHOICES = ("qk", "identity", "qq+kk", "qq", "kk")  # vpltool.models.dense.ATTENTIONS (torch-free)
WHOLE_MODES = ("input", "direct")  # --slide-crop 0: logits via the input size (NACLIP) | straight to the image


@dataclass(frozen=True)
class DenseSettings:
    """One method's segmentor, as its code runs VOC21."""

    logit_scale: float  # softmax(logit_scale * cos) over the queries
    prob_threshold: float  # pixels whose top class probability is below it -> background
    short_side: int  # mmseg Resize(scale=(long_side, short_side), keep_ratio=True)
    slide_crop: int  # sliding window side in pixels; 0 = the whole image at once
    slide_stride: int
    crop_mode: str  # CROP_MODES
    whole: str  # WHOLE_MODES
    area_threshold: float | None = None  # SCLIP: a class below this share of the foreground argmax area is dropped
    pamr_steps: int = 0  # PAMR propagation steps (0 = off)
    pamr_dilations: tuple[int, ...] = (8, 16)
    pad_multiple: int = 0  # crop_mode pad: windows zero-padded to a multiple of this (0 = the patch size)
    # a photo whose long side is above this is segmented at this long side (the model's input is the same; the
    # upsampled logits, PAMR and the argmax run on fewer pixels) and its labels enlarged, nearest, to the photo
    # (0 = off: the photo's own size, the references' arithmetic)
    max_side: int = 0
    # the resize's long side: mmseg's Resize(scale=(long_side, short_side)) scales by min(long_side / long,
    # short_side / short); the methods' configs say 2048 (TextRegion's 1008 binds on photos wider than 3:2)
    long_side: int = 2048
    # Trident's SAM prompt refinement (eval.py --sam_refine; vpltool.models.dense.sam_refine), off by default as
    # eval.py; thresholds of configs/base_config.py + cfg_voc21.py and trident.py's sam_mask_coff default
    sam_refine: bool = False
    coarse_threshold: float = 0.2  # coarse_thresh: a pixel below it prompts nothing; a class below it is not refined
    minimal_area: int = 225  # minimal_area: a region's least size in half-resolution pixels
    sam_iou_threshold: float = 0.8  # sam_iou_thresh: a SAM mask is kept when its predicted IoU exceeds it
    sam_mask_coeff: float = 0.005  # sam_mask_coff: the mask prompt's scale


SAM_REFINE_FIELDS = ("sam_refine", "coarse_threshold", "minimal_area", "sam_iou_threshold", "sam_mask_coeff")


@dataclass(frozen=True)
class Knob:
    """One knob of one method: a :class:`SegmentConfig` field only that method reads, and its command-line option
    (`segment` and `benchmark` make it from this row; its type is the field's)."""

    field: str  # the SegmentConfig field (None there = the method's value, or the benchmark preset's)
    option: str  # its option: "--cos-fac", or "--stretch/--no-stretch" for a switch
    help: str  # --help's text after "--dense METHOD: ", with the method's default in [default: ...]
    # shared options (SegmentConfig fields whose options are made elsewhere) that this knob's value reads when it
    # starts with one of `when` (CorrCLIP's --region-masks sam reads --sam-model and --sam-weights); inert otherwise
    uses: tuple[str, ...] = ()
    when: tuple[str, ...] = ()


@dataclass(frozen=True)
class DenseMethodSpec:
    """One ``--dense`` method as the CLI, the benchmarks and the segmentor know it (torch-free): a row of
    :data:`DENSE_SPECS`."""

    settings: DenseSettings  # its segmentor, as its code runs VOC21
    module: str | None = None  # its module in vpltool.models.dense; None: a pure-mixing preset (dense/mixing.py)
    proxy_model: str | None = None  # the proxy vision model it takes (timm's name, --proxy-model's default); None: none
    sam: bool = False  # it takes SAM's image encoder too (--sam-model, --sam-weights)
    knobs: tuple[Knob, ...] = ()  # SegmentConfig fields only it reads (its per-dataset knobs; its with_knobs hook)
    # its reference's class-file set (vpltool/assets/class_files/<set>/, its configs/cls_*.txt copied byte for
    # byte): its benchmark presets' queries. A new set is a folder there, named here; None: the dataset's names
    class_files: str | None = None
    # its per-benchmark presets (its reference's configs/cfg_*.py), kept with its row; None: none here (the older
    # methods' rows are written in vpltool/config/benchmarks.py)
    presets: MethodPresets | None = None


# ClearCLIP's harness (clearclip_segmentor.py, cfg_voc21.py) runs vanilla CLIP (model_type 'vanilla', our `none`) and
# MaskCLIP (model_type 'MaskCLIP', ignore_residual False) with its own settings
_CLEARCLIP_HARNESS = DenseSettings(logit_scale=50.0, prob_threshold=0.5, short_side=448, slide_crop=448,
                                   slide_stride=224, crop_mode="pad", whole="direct")


def _corrclip_benchmarks() -> dict:
    """zdk258/CorrCLIP CorrCLIPv1/configs/cfg_*.py: each benchmark's Resize short side (448 on ADE20K and
    Cityscapes), its prob_thd where set (VOC21, Context60, COCO-Object), Cityscapes' windows; each with its line."""
    files = {"voc21": ("cfg_voc21.py", 16), "context60": ("cfg_context60.py", 16),
             "coco-object": ("cfg_coco_object.py", 16), "voc20": ("cfg_voc20.py", 15),
             "context59": ("cfg_context59.py", 15), "coco-stuff": ("cfg_coco_stuff164k.py", 15),
             "cityscapes": ("cfg_city_scapes.py", 17), "ade20k": ("cfg_ade20k.py", 15)}
    thresholds = {"voc21": 0.2, "context60": 0.15, "coco-object": 0.25}
    out = {}
    for bench, (cfg, line) in files.items():
        row = {"short_side": (448 if bench in ("ade20k", "cityscapes") else 336, f"configs/{cfg}:{line}")}
        if bench in thresholds:
            row["prob_threshold"] = (thresholds[bench], f"configs/{cfg}:7")
        if bench == "cityscapes":
            row.update(slide_stride=(112, f"configs/{cfg}:7"), slide_crop=(224, f"configs/{cfg}:8"))
        out[bench] = row
    return out


# its segmentor's __init__ defaults under each benchmark's config
_CORRCLIP_PRESETS = MethodPresets(
    "zdk258/CorrCLIP@103bc18 (CorrCLIPv1)",
    {"dense": "corrclip", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 336, "slide_stride": 112,
     "pamr_steps": 0, "area_threshold": 0.0},
    "corrclip_segmentor.py:46-47 (__init__ defaults)", _corrclip_benchmarks())

# one knob two methods read: their class-agnostic region masks per image
_REGION_MASKS = Knob(
    "region_masks", "--region-masks", "class-agnostic region masks per image. corrclip: a folder of one <image "
    "stem>.npz per image (key instance_mask, an int map at the image's size, the smallest id unsegmented: the "
    "reference's precomputed masks) | sam (segment-anything's automatic mask generator on --sam-model / "
    "--sam-weights, with the reference's SAM2 settings; it keeps 3 masks a point where that SAM2 setting keeps 1) | "
    "sam2[:CONFIG] (SAM2's, where the sam2 package is installed; --sam-weights its checkpoint). textregion: a folder "
    "of one <image stem>.npz per image (key masks, regions x height x width soft masks in [0, 3] at the image's "
    "size) | sam2[:CONFIG] (SAM 2's generator as TextRegion runs it, fused soft masks; --sam-weights its "
    "checkpoint).", uses=("sam_model", "sam_weights"), when=("sam", "sam2"))


def _textregion_benchmarks() -> dict:
    """avaxiao/TextRegion configs/cfg_ds/cfg_*.py: each benchmark's Resize scale (long, short), its prob_thd where
    set (VOC21, Context60, COCO-Object), Cityscapes' 36 points a side and its halves (model_semantic.py:413,493,568,
    609: "city_scape" in the config's name); each with its line."""
    files = {"voc21": ("cfg_voc21.py", 17, (1008, 672)), "context60": ("cfg_context60.py", 17, (2016, 672)),
             "coco-object": ("cfg_coco_object.py", 17, (2016, 672)), "voc20": ("cfg_voc20.py", 15, (2016, 672)),
             "context59": ("cfg_context59.py", 15, (2016, 672)),
             "coco-stuff": ("cfg_coco_stuff164k.py", 15, (1334, 896)),
             "cityscapes": ("cfg_city_scapes.py", 18, (2688, 1344)), "ade20k": ("cfg_ade20k.py", 15, (2016, 672))}
    thresholds = {"voc21": 0.4, "context60": 0.35, "coco-object": 0.5}
    out = {}
    for bench, (cfg, line, (long, short)) in files.items():
        src = f"configs/cfg_ds/{cfg}"
        row = {"short_side": (short, f"{src}:{line}"), "long_side": (long, f"{src}:{line}")}
        if bench in thresholds:
            row["prob_threshold"] = (thresholds[bench], f"{src}:6")
        if bench == "cityscapes":
            row.update(points_per_side=(36, f"{src}:7"), region_halves=(True, "model_semantic.py:413 (city_scape)"))
        out[bench] = row
    return out


# its segmentor's __init__ defaults (model_semantic.py) and base_config.py's sam2_cfg under each benchmark's config
_TEXTREGION_PRESETS = MethodPresets(
    "avaxiao/TextRegion@e392cd2",
    {"dense": "textregion", "logit_scale": 50.0, "prob_threshold": 0.0, "slide_crop": 0, "slide_stride": 112,
     "pamr_steps": 0, "area_threshold": 0.0, "points_per_side": 16, "region_halves": False, "region_crop": 336},
    "model_semantic.py:86-87 (__init__ defaults: region_logit_scale 50, prob_thd 0); configs/base_config.py:11,18 "
    "(points_per_side 16, crop_size 336); its own views, no slide windows", _textregion_benchmarks())

# the spec table: every --dense method, in --help's order. A new method is a row here (and, unless it only mixes
# the last block, a module in vpltool/models/dense/)
DENSE_SPECS: dict[str, DenseMethodSpec] = {
    "none": DenseMethodSpec(_CLEARCLIP_HARNESS, class_files="clearclip"),
    "maskclip": DenseMethodSpec(_CLEARCLIP_HARNESS, class_files="clearclip"),
    # clip_segmentor.py + cfg_voc21.py: logit scale 65 (40 elsewhere), prob_thd 0.1, area_thd 0.1, 224/112, short 336
    "sclip": DenseMethodSpec(DenseSettings(logit_scale=65.0, prob_threshold=0.1, short_side=336, slide_crop=224,
                                           slide_stride=112, crop_mode="floor", whole="direct", area_threshold=0.1),
                             class_files="sclip"),
    "clearclip": DenseMethodSpec(_CLEARCLIP_HARNESS, class_files="clearclip"),
    # naclip.py + cfg_voc21.py: logit scale 40, prob_thd 0.1, the whole image (slide_crop 0), PAMR 10 steps (8, 16)
    "naclip": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.1, short_side=336, slide_crop=0,
                                            slide_stride=112, crop_mode="floor", whole="input", pamr_steps=10),
                              class_files="sclip"),
    # scclip_segmentor.py + cfg_voc21.py: logit scale 50, prob_thd 0.15, area_thd 0.1, slide 224/112, short 336
    "sc-clip": DenseMethodSpec(DenseSettings(logit_scale=50.0, prob_threshold=0.15, short_side=336, slide_crop=224,
                                             slide_stride=112, crop_mode="floor", whole="direct", area_threshold=0.1),
                               module="sc_clip", class_files="sclip"),
    # proxyclip_segmentor.py + cfg_voc21.py: logit scale 40, prob_thd 0.2, slide 336/112 (windows padded to a
    # multiple of 56), short side 336
    "proxyclip": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.2, short_side=336, slide_crop=336,
                                               slide_stride=112, crop_mode="pad", whole="direct", pad_multiple=56),
                                 module="proxyclip", proxy_model=DEFAULT_PROXY_MODEL, class_files="proxyclip"),
    # cass_segmentor.py + cfg_voc21.py (eval.py --pamr off): logit scale 40, prob_thd 0.1, the whole image
    # (slide_crop 0), short side 336; the logits resized to the input, then to the image
    "cass": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.1, short_side=336, slide_crop=0,
                                          slide_stride=112, crop_mode="floor", whole="input"),
                            module="cass", proxy_model=DEFAULT_PROXY_MODEL, class_files="sclip", knobs=(
        Knob("global_weight", "--global-weight", "the image embedding's share of each patch's logits (its "
             "global_semantics_weight) [default: 0.1, cfg_voc21.py]."),
        Knob("shift_weight", "--shift-weight", "how far the query nearest the image moves toward its 2 most similar "
             "patches, per query cluster (its mean_vector_weight) [default: 0.03]."),
        Knob("cluster_cut", "--cluster-cut", "the Ward distance cutting the queries into clusters (its h_threshold) "
             "[default: 0.10]."),
        Knob("stretch", "--stretch/--no-stretch", "stretch the DINO graph's singular values (its code does for every "
             "dataset but VOC20 and Cityscapes) [default: stretch]."),
        Knob("window_global", "--window-global/--input-global", "each window's own image embedding (its "
             "Cityscapes) or the whole input's [default: input-global].")),
    ),
    # trident.py + configs/base_config.py + cfg_voc21.py (eval.py without --sam_refine): logit scale 40, prob_thd
    # 0.2, slide 336/224 spliced (windows never padded), short side 448; logits on SAM's grid resized to the image;
    # torch.hub's dino_vitb16 as its proxy; its SAM aggregation's knobs, then its SAM prompt refinement's
    "trident": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.2, short_side=448, slide_crop=336,
                                             slide_stride=224, crop_mode="floor", whole="direct"),
                               module="trident", proxy_model="vit_base_patch16_224.dino", sam=True,
                               class_files="proxyclip", knobs=(
        Knob("cos_fac", "--cos-fac", "SAM's attention kept where its value cosine exceeds this times the row's "
             "mean (its cos_fac) [default: 1.2, base_config.py]."),
        Knob("refine_neg_cos", "--refine-neg-cos/--no-refine-neg-cos", "keep a negative cosine threshold (its "
             "refine_neg_cos; off: 0.6 in its place) [default: on]."),
        Knob("sam_halves", "--sam-halves/--sam-whole", "SAM sees the photo's left and right halves apart, each half "
             "of the spliced map aggregated by its own (its Cityscapes) [default: whole]."),
        Knob("sam_refine", "--sam-refine/--no-sam-refine", "its SAM prompt refinement (eval.py --sam_refine, which "
             "its published figures use): each coarse region prompts SAM's mask decoder with a point, a box and its "
             "scores, and confident masks relabel it; needs SAM's whole checkpoint in --sam-weights [default: off "
             "for segment; on in benchmark's trident presets]."),
        Knob("coarse_threshold", "--coarse-threshold", "with --sam-refine: pixels and classes below this "
             "probability prompt nothing (its coarse_thresh) [default: 0.2, cfg_voc21.py; benchmark: each "
             "preset's]."),
        Knob("minimal_area", "--minimal-area", "with --sam-refine: a coarse region smaller than this, in "
             "half-resolution pixels, prompts nothing (its minimal_area, set for photos of short side 448) "
             "[default: 225, base_config.py].")),
    ),
    # corrclip_segmentor.py + configs/base_config.py + cfg_voc21.py: logit scale 40, prob_thd 0.2, slide 336/112
    # (windows padded to a multiple of 56), short side 336; torch.hub's dino_vitb8 as its proxy; its region masks
    "corrclip": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.2, short_side=336, slide_crop=336,
                                              slide_stride=112, crop_mode="pad", whole="direct", pad_multiple=56),
                                module="corrclip", proxy_model=DEFAULT_PROXY_MODEL, class_files="corrclip", knobs=(
        _REGION_MASKS,),
                                presets=_CORRCLIP_PRESETS),
    # model_semantic.py + configs/base_config.py + cfg_voc21.py: region logit scale 50, prob_thd 0.4, Resize
    # (1008, 672), its own views (the photo and 336-pixel tiles) in place of slide windows; SAM 2's region masks
    "textregion": DenseMethodSpec(DenseSettings(logit_scale=50.0, prob_threshold=0.4, short_side=672, slide_crop=0,
                                                slide_stride=112, crop_mode="floor", whole="direct", long_side=1008),
                                  module="textregion", class_files="proxyclip", knobs=(
        _REGION_MASKS,
        Knob("points_per_side", "--points-per-side", "with --region-masks sam2: SAM 2's point grid side (its "
             "points_per_side) [default: 16, base_config.py; benchmark: 36 on cityscapes]."),
        Knob("region_halves", "--region-halves/--region-whole", "the whole-photo view is the photo's left and right "
             "halves (its Cityscapes) [default: whole]."),
        Knob("region_crop", "--region-crop", "the side in pixels of each view, the photo's and its tiles' (its "
             "crop_size) [default: 336, base_config.py].")),
                                  presets=_TEXTREGION_PRESETS),
}
# what the rest of vpltool reads, each derived from the table
DENSE_CHOICES = tuple(DENSE_SPECS)
DENSE_SEGMENTORS: dict[str, DenseSettings] = {name: spec.settings for name, spec in DENSE_SPECS.items()}
PROXY_METHODS = tuple(name for name, spec in DENSE_SPECS.items() if spec.proxy_model)  # take a proxy vision model
PROXY_MODELS = {name: spec.proxy_model for name, spec in DENSE_SPECS.items() if spec.proxy_model}
SAM_METHODS = tuple(name for name, spec in DENSE_SPECS.items() if spec.sam)  # take SAM's image encoder too
# the methods that need no side model (cam --dense seeds, predict --dense)
PLAIN_METHODS = tuple(name for name, spec in DENSE_SPECS.items() if not spec.proxy_model and not spec.sam)
KNOBS: dict[str, Knob] = {k.field: k for spec in DENSE_SPECS.values() for k in spec.knobs}  # every method's
_READERS: dict[str, list[str]] = {}
for _name, _spec in DENSE_SPECS.items():
    for _k in _spec.knobs:
        _READERS.setdefault(_k.field, []).append(_name)
KNOB_READERS = {f: tuple(names) for f, names in _READERS.items()}  # the methods that read each knob
KNOB_METHOD = {f: " and ".join(names) for f, names in _READERS.items()}  # ... as --help names them
# the bundled class-file sets the rows name (vpltool/assets/class_files/<set>/), in the table's order
CLASS_SETS = tuple(dict.fromkeys(spec.class_files for spec in DENSE_SPECS.values() if spec.class_files))


def dense_help() -> str:
    """The per-method defaults, for ``--help``."""
    rows = []
    for name in DENSE_CHOICES[1:]:
        s = DENSE_SEGMENTORS[name]
        crop = f"slide {s.slide_crop}/{s.slide_stride}" if s.slide_crop else "whole image"
        extra = (f", area {s.area_threshold:g}" if s.area_threshold else "") + (
            f", PAMR {s.pamr_steps}" if s.pamr_steps else "")
        rows.append(f"{name}: scale {s.logit_scale:g}, threshold {s.prob_threshold:g}, short side {s.short_side}, "
                    f"{crop}{extra}")
    return "; ".join(rows)


MAX_LOGIT_SCALE = 1000.0
MIN_MAX_SIDE = 64  # segment --max-side: a smaller working size leaves PAMR's dilations (8, 16) little room


@dataclass(frozen=True)
class SegmentConfig:
    """`vpltool segment` (and the dense paths of `cam` and `predict`): a frozen CLIP whose last block mixes its
    tokens as ``dense`` says, text queries, no training. None = the method's value (:data:`DENSE_SEGMENTORS`)."""

    dense: str = "naclip"  # the best of the four on VOC in its paper (64.1 mIoU VOC21 with PAMR)
    templates: str = "imagenet"  # the methods' 80 OpenAI ImageNet templates, per-template normalised, averaged
    background: str = "auto"  # background words, queries of class 0 (as text-prototypes' --background)
    logit_scale: float | None = None
    prob_threshold: float | None = None
    area_threshold: float | None = None  # None = the method's (SCLIP 0.1); 0 = off
    short_side: int | None = None
    long_side: int | None = None
    slide_crop: int | None = None
    slide_stride: int | None = None
    pamr_steps: int | None = None
    max_side: int | None = None  # None = off: each photo at its own size (DenseSettings.max_side)
    classes: tuple[str, ...] | None = None  # None = the dataset's own classes
    # the references' class file (one line a class, comma-separated queries; vpltool.data.class_files): the
    # queries of each class, which is still written and scored as the dataset's class; None = --classes/--background
    class_file: str | None = None
    # the last block's attention and residual+FFN in place of the --dense method's (ClearCLIP's harness runs
    # model_type 'vanilla' = qk with ignore_residual True = no residual, no FFN); None = the method's
    attention: str | None = None
    residual: bool | None = None
    # the proxy vision model: a timm DINO ViT (the toy DINO's folder); None = the method's (PROXY_MODELS)
    proxy_model: str | None = None
    proxy_weights: str = "hub"  # its weights: hub (timm's cache) | a local file | none (random, seeded: tests)
    # CASS's per-dataset knobs (its configs/cfg_*.py and dataset switches); None = its VOC21 values
    # (vpltool.models.dense.cass.TextShift / SpectralMatching)
    global_weight: float | None = None  # global_semantics_weight: the image embedding's share of the logits
    shift_weight: float | None = None  # mean_vector_weight: how far a query moves toward its top patches
    cluster_cut: float | None = None  # h_threshold: the Ward distance at which the queries' tree is cut
    stretch: bool | None = None  # the DINO graph's singular values stretched (all but voc20 and city_scapes)
    window_global: bool | None = None  # each window's own image embedding (city_scapes) instead of the input's
    # Trident: SAM's image encoder (vpltool.models.backbones.sam) and its aggregation's knobs (None = its VOC21 values,
    # vpltool.models.dense.trident.SamAggregation)
    sam_model: str = DEFAULT_SAM_MODEL  # vit_b | vit_l | vit_h | toy (the demo world's, vpltool/assets/toy-sam)
    sam_weights: str | None = None  # a local file (SAM's released checkpoint) | none (random, seeded: tests)
    cos_fac: float | None = None  # pairs kept where SAM's value cosine > cos_fac x the row's mean
    refine_neg_cos: bool | None = None  # a negative threshold kept (True) or replaced by 0.6 (False)
    sam_halves: bool | None = None  # SAM on the photo's left and right halves apart (its Cityscapes)
    sam_refine: bool | None = None  # Trident's SAM prompt refinement (eval.py --sam_refine)
    coarse_threshold: float | None = None  # its coarse_thresh (None = DenseSettings')
    minimal_area: int | None = None  # its minimal_area, half-resolution pixels (None = DenseSettings')
    # a method's class-agnostic region masks per image (CorrCLIP's: vpltool.models.dense.corrclip.regions): a folder
    # of <image stem>.npz files (key instance_mask) | sam (segment-anything's automatic mask generator: --sam-model,
    # --sam-weights) | sam2[:CONFIG] (SAM2's, where installed: --sam-weights its checkpoint)
    region_masks: str | None = None
    # TextRegion's (vpltool.models.dense.textregion): SAM 2's point grid side with --region-masks sam2 (None = 16),
    # the whole-photo view as two halves (its Cityscapes; None = whole)
    points_per_side: int | None = None
    region_halves: bool | None = None
    region_crop: int | None = None  # the side of its views (its crop_size; None = 336)

    def __post_init__(self) -> None:
        choice("--dense", self.dense, DENSE_CHOICES)
        if self.proxy_model is None:  # the method's own, recorded as such
            object.__setattr__(self, "proxy_model", PROXY_MODELS.get(self.dense, DEFAULT_PROXY_MODEL))
        if self.cos_fac is not None and not self.cos_fac >= 0:  # nan too (nan < 0 is False)
            require(False, f"--cos-fac {self.cos_fac}: give a factor >= 0 (Trident's own: 1.2; 0 keeps every pair "
                    "with a positive SAM cosine)")
        # asked for, SAM's refinement would be silently skipped by any other method (it needs Trident's SAM pass)
        require(not self.sam_refine or self.dense in SAM_METHODS,
                f"--sam-refine: Trident's SAM prompt refinement needs SAM's image encoder, which --dense {self.dense} "
                f"does not run; pass --dense {' or '.join(SAM_METHODS)}, or drop --sam-refine")
        if self.attention is not None:
            choice("--attention", self.attention, ATTENTION_CHOICES)
        # CLIP's own is 100 (learned, clamped there); beyond MAX_LOGIT_SCALE softmax is an argmax already, and the
        # product overflows float16 (65504) under --precision fp16 and float32 at ~3e38 (all-background masks)
        positive("--logit-scale", self.logit_scale, allow_none=True, upper=MAX_LOGIT_SCALE)
        for option, value in (("--prob-threshold", self.prob_threshold), ("--area-threshold", self.area_threshold),
                              ("--coarse-threshold", self.coarse_threshold)):
            if value is not None:
                fraction(option, value)
        at_least("--short-side", self.short_side, 16, allow_none=True, why=" pixels")
        at_least("--long-side", self.long_side, 16, allow_none=True, why=" pixels")
        at_least("--minimal-area", self.minimal_area, 1, allow_none=True, why=" half-resolution pixels")
        at_least("--slide-crop", self.slide_crop, 0, allow_none=True, why=" pixels (0 = the whole image)")
        at_least("--slide-stride", self.slide_stride, 1, allow_none=True, why=" pixels")
        at_least("--pamr-steps", self.pamr_steps, 0, allow_none=True, why=" (0 = off)")
        at_least("--max-side", self.max_side, MIN_MAX_SIDE, allow_none=True, why=" pixels")
        at_least("--points-per-side", self.points_per_side, 1, allow_none=True, why=" points")
        at_least("--region-crop", self.region_crop, 16, allow_none=True, why=" pixels")
        require(bool(self.templates.strip()), "--templates is empty: give imagenet, clip-es, a template or a file")
        for option, value in (("--global-weight", self.global_weight), ("--shift-weight", self.shift_weight)):
            if value is not None:
                fraction(option, value)
        positive("--cluster-cut", self.cluster_cut, allow_none=True)

    def inert(self) -> dict[str, str]:
        """The proxy options have no effect without a proxy method (:data:`PROXY_METHODS`), a method's knobs
        without that method (:data:`DENSE_SPECS`)."""
        out = {}
        own = DENSE_SPECS[self.dense]  # a method's own knobs (and SAM's options) are never another's to leave out
        mine = {*(k.field for k in own.knobs), *(u for k in own.knobs for u in k.uses),
                *(("sam_model", "sam_weights") if own.sam else ())}
        for name, spec in DENSE_SPECS.items():  # each method's knobs (SAM's options with SAM's methods)
            if name != self.dense:
                fields_ = (*(k.field for k in spec.knobs), *(("sam_model", "sam_weights") if spec.sam else ()))
                out.update({k: f"without --dense {' or '.join(KNOB_READERS.get(k, (name,)))}" for k in fields_
                            if k not in mine})
        for knob in own.knobs:  # shared options that only some values of its knob read
            if knob.uses and not str(getattr(self, knob.field) or "").startswith(knob.when):
                out.update({k: f"without {knob.option} {' or '.join(knob.when)}" for k in knob.uses})
        if self.dense in PROXY_METHODS:
            return out
        why = f"without --dense {' or '.join(PROXY_METHODS)}"
        return {**out, "proxy_model": why, "proxy_weights": why}

    def resolved(self) -> DenseSettings:
        """The method's :class:`DenseSettings` with every option given here in place of its own."""
        base = DENSE_SEGMENTORS[self.dense]
        inert = self.inert()  # an option of another method (--sam-refine without trident) is not applied
        given = {f.name: getattr(self, f.name) for f in fields(DenseSettings)
                 if getattr(self, f.name, None) is not None and f.name not in inert}
        if given.get("area_threshold") == 0:
            given["area_threshold"] = None
        out = replace(base, **given)
        if out.slide_crop and out.slide_stride > out.slide_crop:
            require(False, f"--slide-stride {out.slide_stride} is larger than --slide-crop {out.slide_crop}: pixels "
                    "between windows would have no score")
        return out


# segment's options as cam and predict spell them (their --dense-* block), for their messages
DENSE_OPTION_NAMES = {"--short-side": "--dense-side", "--logit-scale": "--dense-scale", "--slide-crop": "--dense-crop",
                      "--slide-stride": "--dense-stride", "--pamr-steps": "--dense-pamr",
                      "--prob-threshold": "--dense-threshold"}


def dense_config(**given) -> SegmentConfig:
    """The :class:`SegmentConfig` of `cam --dense` / `predict --dense` (its :meth:`~SegmentConfig.resolved` settings
    checked too), its one-line errors naming their ``--dense-*`` options, not segment's."""
    import re

    try:
        cfg = SegmentConfig(**given)
        cfg.resolved()
    except VplError as e:
        message = re.sub("|".join(map(re.escape, DENSE_OPTION_NAMES)), lambda m: DENSE_OPTION_NAMES[m.group(0)],
                         str(e))
        raise type(e)(message) from None
    return cfg

"""The defaults of the training-free dense segmentor (`segment`, `cam --dense`, `predict --classes --dense`): one set
per ``--dense`` method, each as that method's public code runs PASCAL VOC with background (its ``cfg_voc21.py``).

An option left at None takes the method's value (:meth:`SegmentConfig.resolved`); what ran is recorded resolved.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import VplError, VplWarning
from ..plugins.entry_points import DerivedMap, DerivedTuple, PluginTable
from . import dense_knobs, dense_presets
from . import licences as lic
from .checks import at_least, choice, fraction, ignored_option, positive, require, shown_value
from .dense_knobs import CassKnobs, CorrCLIPKnobs, OVStitcherKnobs, RadsegKnobs, TextRegionKnobs, TridentKnobs
from .dense_plugins import HOOK_NAMES, check_hooks_source, method_knobs  # noqa: F401 (HOOK_NAMES: read here)
from .dense_presets import CORRCLIP_PRESETS, OV_STITCHER_PRESETS, RADSEG_PRESETS, TEXTREGION_PRESETS
from .knobs import Knob, MethodKnobs, knob  # noqa: F401 (the knobs of a method are written with these)
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


def check_knobs_class(cls: Any, taken: dict[str, Knob] | None = None) -> None:
    """Refuse, in one line (``TypeError``), a knobs class that is no :class:`MethodKnobs` dataclass, a field not
    made by :func:`knob` (no option or help, a default other than None), a field named as a shared
    :class:`SegmentConfig` field, or an option another method spells for another field (``taken``: every other
    method's knobs by field)."""
    if not (isinstance(cls, type) and issubclass(cls, MethodKnobs)):
        raise TypeError(f"knobs {cls!r}: give a frozen dataclass subclassing vpltool.config.dense.MethodKnobs")
    shared = {f.name for f in fields(SegmentConfig)}
    options = {k.option.split("/")[0]: k.field for k in (taken or {}).values()}
    options.update({f"--{name.replace('_', '-')}": name for name in shared})
    for f in fields(cls):
        where = f"{cls.__qualname__}.{f.name}"
        if "option" not in f.metadata or not str(f.metadata["option"]).startswith("--"):
            raise TypeError(f"{where}: make it with vpltool.config.dense.knob(\"--option\", \"help\")")
        if f.default is not None or f.default_factory is not MISSING:
            raise TypeError(f"{where}: its default must be None (the method's own value)")
        if f.name in shared:
            raise TypeError(f"{where}: {f.name!r} is a shared segment setting; name the knob otherwise")
        option = f.metadata["option"].split("/")[0]
        if options.get(option, f.name) != f.name:
            raise TypeError(f"{where}: option {option} is already that of {options[option]!r}; spell it otherwise")
        other = (taken or {}).get(f.name)
        if other is not None and (other.option != f.metadata["option"]):
            raise TypeError(f"{where}: knob {f.name!r} is another method's with option {other.option}; use that "
                            "option or another name")


@dataclass(frozen=True)
class DenseMethodSpec:
    """One ``--dense`` method as the CLI, the benchmarks and the segmentor know it (torch-free): a DENSE_SPECS row."""

    settings: DenseSettings  # its segmentor, as its code runs VOC21
    module: str | None = None  # its module in vpltool.models.dense; None: a pure-mixing preset (dense/mixing.py)
    proxy_model: str | None = None  # the proxy vision model it takes (timm's name, --proxy-model's default); None: none
    sam: bool = False  # it takes SAM's image encoder too (--sam-model, --sam-weights)
    # an input only `segment` takes (TextRegion's region masks, SAM 3's model), which cam/predict --dense refuse
    segment_only: str | None = None
    # its own settings, a MethodKnobs dataclass of the knobs only it reads (its per-dataset knobs; with_knobs hook)
    knobs_class: type[MethodKnobs] = MethodKnobs
    # its reference's class-file set (vpltool/assets/class_files/<set>/, its configs/cls_*.txt copied byte for
    # byte): its benchmark presets' queries. A new set is a folder there, named here; None: the dataset's names
    class_files: str | None = None
    # its per-benchmark presets (its reference's configs/cfg_*.py); None: none here (older rows: config/benchmarks.py)
    presets: MethodPresets | None = None
    # the distribution of a plugin's method ("vpltool-example 0.1.0"; set when it registers, for messages), whose
    # module is then a full dotted name; None: vpltool's own (module relative to vpltool.models.dense)
    plugin: str | None = None
    timm_tower: bool = False  # runs on a timm tower (SigLIP 2, PE-Core): it changes the last block's attention alone
    licence: lic.Licence | None = None  # its code's and weights' (config/licences.py); None: a plugin's, undeclared
    concept_prompts: bool = False  # its words are SAM 3's prompts as they are (no CLIP, template, auto background)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        """Its knobs as the command line shows them (its :attr:`knobs_class`' fields)."""
        return self.knobs_class.rows()


# ClearCLIP's harness (clearclip_segmentor.py, cfg_voc21.py) runs vanilla CLIP (model_type 'vanilla', our `none`) and
# MaskCLIP (model_type 'MaskCLIP', ignore_residual False) with its own settings
_CLEARCLIP_HARNESS = DenseSettings(logit_scale=50.0, prob_threshold=0.5, short_side=448, slide_crop=448,
                                   slide_stride=224, crop_mode="pad", whole="direct")

# SAM 3's methods read the decoded photo (SAM 3 resizes it to its own square input), not the shared resize's
_SAM3_ONLY = "SAM 3's model in place of a CLIP (segment --sam3-weights)"
# why a CLIP's options (--model, --pretrained, --templates) do nothing with a method of concept prompts
CONCEPT_PROMPTS_WHY = "with --dense {dense} (it runs SAM 3, no CLIP: its prompts are the words themselves)"
_SAM3_SETTINGS = DenseSettings(logit_scale=1.0, prob_threshold=0.4, short_side=1008, slide_crop=0, slide_stride=112,
                               crop_mode="floor", whole="direct")


# the spec table: every --dense method, in --help's order. A new method is a row here (and, unless it only mixes
# the last block, a module in vpltool/models/dense/); a plugin's method is a row its package registers
# (vpltool.plugins.register_dense_method), after these
_OWN_SPECS: dict[str, DenseMethodSpec] = {
    "none": DenseMethodSpec(_CLEARCLIP_HARNESS, class_files="clearclip", timm_tower=True, licence=lic.NONE),
    "maskclip": DenseMethodSpec(_CLEARCLIP_HARNESS, class_files="clearclip", timm_tower=True, licence=lic.MASKCLIP),
    # clip_segmentor.py + cfg_voc21.py: logit scale 65 (40 elsewhere), prob_thd 0.1, area_thd 0.1, 224/112, short 336
    "sclip": DenseMethodSpec(DenseSettings(logit_scale=65.0, prob_threshold=0.1, short_side=336, slide_crop=224,
                                           slide_stride=112, crop_mode="floor", whole="direct", area_threshold=0.1),
                             class_files="sclip", timm_tower=True, licence=lic.SCLIP),
    "clearclip": DenseMethodSpec(_CLEARCLIP_HARNESS, class_files="clearclip", timm_tower=True, licence=lic.CLEARCLIP),
    # naclip.py + cfg_voc21.py: logit scale 40, prob_thd 0.1, the whole image (slide_crop 0), PAMR 10 steps (8, 16)
    "naclip": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.1, short_side=336, slide_crop=0,
                                            slide_stride=112, crop_mode="floor", whole="input", pamr_steps=10),
                              class_files="sclip", timm_tower=True, licence=lic.NACLIP),
    # scclip_segmentor.py + cfg_voc21.py: logit scale 50, prob_thd 0.15, area_thd 0.1, slide 224/112, short 336
    "sc-clip": DenseMethodSpec(DenseSettings(logit_scale=50.0, prob_threshold=0.15, short_side=336, slide_crop=224,
                                             slide_stride=112, crop_mode="floor", whole="direct", area_threshold=0.1),
                               module="sc_clip", class_files="sclip", licence=lic.SC_CLIP),
    # proxyclip_segmentor.py + cfg_voc21.py: logit scale 40, prob_thd 0.2, slide 336/112 padded to 56s, short 336
    "proxyclip": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.2, short_side=336, slide_crop=336,
                                               slide_stride=112, crop_mode="pad", whole="direct", pad_multiple=56),
                                 module="proxyclip", proxy_model=DEFAULT_PROXY_MODEL, class_files="proxyclip",
                                 licence=lic.PROXYCLIP),
    # cass_segmentor.py + cfg_voc21.py (--pamr off): scale 40, prob_thd 0.1, whole image, short 336, logits 2 resizes
    "cass": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.1, short_side=336, slide_crop=0,
                                          slide_stride=112, crop_mode="floor", whole="input"),
                            module="cass", proxy_model=DEFAULT_PROXY_MODEL, class_files="sclip",
                            knobs_class=CassKnobs, licence=lic.CASS),
    # trident.py + base_config.py + cfg_voc21.py (no --sam_refine): scale 40, prob_thd 0.2, slide 336/224 spliced
    # (never padded), short 448; logits on SAM's grid; torch.hub's dino_vitb16 proxy; SAM aggregation's knobs
    "trident": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.2, short_side=448, slide_crop=336,
                                             slide_stride=224, crop_mode="floor", whole="direct"),
                               module="trident", proxy_model="vit_base_patch16_224.dino", sam=True,
                               class_files="proxyclip", knobs_class=TridentKnobs, licence=lic.TRIDENT),
    # corrclip_segmentor.py + configs/base_config.py + cfg_voc21.py: logit scale 40, prob_thd 0.2, slide 336/112
    # (windows padded to a multiple of 56), short side 336; torch.hub's dino_vitb8 as its proxy; its region masks
    "corrclip": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.2, short_side=336, slide_crop=336,
                                              slide_stride=112, crop_mode="pad", whole="direct", pad_multiple=56),
                                module="corrclip", proxy_model=DEFAULT_PROXY_MODEL, class_files="corrclip",
                                knobs_class=CorrCLIPKnobs, presets=CORRCLIP_PRESETS, licence=lic.CORRCLIP),
    # ov_stitcher_segmentor.py + configs/base_config.py + cfg_voc21.py: logit scale 40, prob_thd 0.1, slide 336/112
    # (unpadded windows stitched), short side 448; torch.hub's dino_vitb8; CorrCLIP's class files and region masks
    # (its SAM2 settings its own); benchmark sets its class-biased templates (--templates ov-stitcher)
    "ov-stitcher": DenseMethodSpec(DenseSettings(logit_scale=40.0, prob_threshold=0.1, short_side=448, slide_crop=336,
                                                 slide_stride=112, crop_mode="pad", whole="direct", pad_multiple=56),
                                   module="ov_stitcher", proxy_model=DEFAULT_PROXY_MODEL, class_files="corrclip",
                                   knobs_class=OVStitcherKnobs, presets=OV_STITCHER_PRESETS,
                                   licence=lic.OV_STITCHER),
    # model_semantic.py + configs/base_config.py + cfg_voc21.py: region logit scale 50, prob_thd 0.4, Resize
    # (1008, 672), its own views (the photo and 336-pixel tiles) in place of slide windows; SAM 2's region masks
    "textregion": DenseMethodSpec(DenseSettings(logit_scale=50.0, prob_threshold=0.4, short_side=672, slide_crop=0,
                                                slide_stride=112, crop_mode="floor", whole="direct", long_side=1008),
                                  module="textregion", class_files="proxyclip", knobs_class=TextRegionKnobs,
                                  presets=TEXTREGION_PRESETS,
                                  segment_only="region masks per photo (segment --region-masks)",
                                  licence=lic.TEXTREGION),
    # radseg/radseg.py + evaluation/2d/configs/base_config.py: softmax(100 cos) over the prompts, no threshold
    # (prediction_thresh 0), slide 336/224 in feature space, short side 336 (mid_res cfg_voc20.py); C-RADIOv3-B
    # (NVlabs/RADIO's checkpoint, --proxy-weights) and its SigLIP 2 adaptor's text tower (--language-model)
    "radseg": DenseMethodSpec(DenseSettings(logit_scale=100.0, prob_threshold=0.0, short_side=336, slide_crop=336,
                                            slide_stride=224, crop_mode="floor", whole="direct"),
                              module="radseg", proxy_model="naflexvit_base_patch16_radio_v3", class_files="proxyclip",
                              knobs_class=RadsegKnobs, presets=RADSEG_PRESETS, licence=lic.RADSEG),
    # VILA-Lab/ActiveSAM base.py's FrozenSAM3Segmentor + cfg_voc21.py: SAM 3 prompted with each word; prob_thd 0.4
    "sam3": DenseMethodSpec(_SAM3_SETTINGS, module="sam3", class_files="activesam", knobs_class=dense_knobs.Sam3Knobs,
                            presets=dense_presets.SAM3_PRESETS, segment_only=_SAM3_ONLY, licence=lic.SAM3_METHOD,
                            concept_prompts=True),
    # its segmentor.py + base_config.py + cfg_voc21.py: expansion, preview, buckets, MABC at prob_thd 0.4
    "activesam": DenseMethodSpec(_SAM3_SETTINGS, module="activesam", class_files="activesam",
                                 knobs_class=dense_knobs.ActiveSamKnobs, presets=dense_presets.ACTIVESAM_PRESETS,
                                 segment_only=_SAM3_ONLY, licence=lic.ACTIVESAM, concept_prompts=True),
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_.+-]*")  # a --dense name: one word of a comma-separated list (benchmark)


def _plugin_spec(name: str, spec: Any, dist: str) -> DenseMethodSpec:
    """A plugin's spec row checked (:class:`~vpltool.plugins.entry_points.PluginTable`): one line for what is wrong."""
    if not isinstance(spec, DenseMethodSpec):
        raise VplError(f"register_dense_method takes a DenseMethodSpec, not a {type(spec).__name__}")
    if not _NAME.fullmatch(name):
        raise VplError("a --dense name is lower-case letters, digits and - _ . + (no comma, no space)")
    if not spec.module or spec.module.startswith("."):
        raise VplError("its spec row names no module: give module='your_package.your_method', the module of its "
                       "DenseHooks class (imported when the method is used)")
    check_knobs_class(spec.knobs_class, {k.field: k for row in DENSE_SPECS.rows_so_far().values()
                                         for k in row.knobs})
    check_hooks_source(spec.module)
    if spec.presets is not None and spec.presets.defaults.get("dense") != name:
        raise VplError(f"its presets' defaults name --dense {spec.presets.defaults.get('dense')!r}; give "
                       f"dense={name!r} there")
    if spec.class_files is not None:
        if not (Path(__file__).resolve().parents[1] / "assets" / "class_files" / spec.class_files).is_dir():
            raise VplError(f"class_files={spec.class_files!r} is no set of vpltool's (a plugin names one of "
                           "vpltool/assets/class_files/, or None)")
    return replace(spec, plugin=dist, licence=lic.checked(spec.licence, name))


DENSE_SPECS: PluginTable = PluginTable("dense", _OWN_SPECS, _plugin_spec, "--dense method")
# what the rest of vpltool reads, each derived from the table (with the plugins' rows, read on first use)
DENSE_CHOICES = DerivedTuple(lambda: tuple(DENSE_SPECS), DENSE_SPECS, names=True)
DENSE_SEGMENTORS: DerivedMap = DerivedMap(lambda: {name: spec.settings for name, spec in DENSE_SPECS.items()},
                                          DENSE_SPECS)
PROXY_METHODS = DerivedTuple(lambda: tuple(n for n, s in DENSE_SPECS.items() if s.proxy_model), DENSE_SPECS)  # proxy
PROXY_MODELS = DerivedMap(lambda: {name: spec.proxy_model for name, spec in DENSE_SPECS.items()
                                   if spec.proxy_model}, DENSE_SPECS)
TIMM_METHODS = DerivedTuple(lambda: tuple(n for n, s in DENSE_SPECS.items() if s.timm_tower), DENSE_SPECS)  # timm_tower
SAM_METHODS = DerivedTuple(lambda: tuple(n for n, s in DENSE_SPECS.items() if s.sam), DENSE_SPECS)  # SAM's encoder too
# the methods that need no side model and no per-image input (cam --dense seeds, predict --dense)
PLAIN_METHODS = DerivedTuple(lambda: tuple(name for name, spec in DENSE_SPECS.items()
                                           if not spec.proxy_model and not spec.sam and not spec.segment_only),
                             DENSE_SPECS)
# every method's knobs by field
KNOBS = DerivedMap(lambda: {k.field: k for spec in DENSE_SPECS.values() for k in spec.knobs}, DENSE_SPECS)
# the methods that read each knob (one, unless two name a knob alike), and the first of them
KNOB_METHODS = DerivedMap(lambda: {field: tuple(name for name, spec in DENSE_SPECS.items()
                                                if field in {k.field for k in spec.knobs}) for field in KNOBS},
                          DENSE_SPECS)
KNOB_METHOD = DerivedMap(lambda: {field: methods[0] for field, methods in KNOB_METHODS.items()}, DENSE_SPECS)
# the bundled class-file sets the rows name (vpltool/assets/class_files/<set>/), in the table's order
CLASS_SETS = DerivedTuple(lambda: tuple(dict.fromkeys(spec.class_files for spec in DENSE_SPECS.values()
                                                      if spec.class_files)), DENSE_SPECS)


def segment_only(method: str, command: str) -> str | None:
    """Why ``command`` (`cam` or `predict`, which take no per-image input) cannot run ``--dense method``, in one
    line naming what only `segment` gives it; None: it can (a proxy method's own line is the command's)."""
    spec = DENSE_SPECS.get(method)
    if spec is None or not spec.segment_only:
        return None
    return (f"{command} --dense {method}: the method needs {spec.segment_only}, which only `vpltool "
            f"segment` takes; choose another --dense method here ({', '.join(PLAIN_METHODS[1:])})")


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
    # the SAM image encoder of the methods that take one (vpltool.models.backbones.sam; Trident's) and of the knob
    # values that read it (CorrCLIP's --region-masks sam)
    sam_model: str = DEFAULT_SAM_MODEL  # vit_b | vit_l | vit_h | toy (the demo world's, vpltool/assets/toy-sam)
    sam_weights: str | None = None  # a local file (SAM's released checkpoint) | none (random, seeded: tests)
    # the --dense method's own settings: an instance of its spec row's knobs_class (CASS's CassKnobs, ...); None =
    # its defaults. SegmentConfig.of() takes them by field name, as the command line and vpltool.segmenter give them
    knobs: MethodKnobs | None = None

    def __post_init__(self) -> None:
        choice("--dense", self.dense, DENSE_CHOICES)
        if self.proxy_model is None:  # the method's own, recorded as such
            object.__setattr__(self, "proxy_model", PROXY_MODELS.get(self.dense, DEFAULT_PROXY_MODEL))
        own = DENSE_SPECS[self.dense].knobs_class
        if self.knobs is None or (type(self.knobs) is not own and isinstance(self.knobs, MethodKnobs)
                                  and not self.knobs.given()):  # none given (replace(cfg, dense=...)): its own
            object.__setattr__(self, "knobs", own())
        elif type(self.knobs) is not own:
            raise VplError(f"SegmentConfig(dense={self.dense!r}): knobs is a {type(self.knobs).__name__}; give "
                           f"{own.__name__}(...) (the method's own settings), or its knobs by name to "
                           "SegmentConfig.of()")
        if self.attention is not None:
            choice("--attention", self.attention, ATTENTION_CHOICES)
        # CLIP's own is 100 (learned, clamped there); beyond MAX_LOGIT_SCALE softmax is an argmax already, and the
        # product overflows float16 (65504) under --precision fp16 and float32 at ~3e38 (all-background masks)
        positive("--logit-scale", self.logit_scale, allow_none=True, upper=MAX_LOGIT_SCALE)
        for option, value in (("--prob-threshold", self.prob_threshold), ("--area-threshold", self.area_threshold)):
            if value is not None:
                fraction(option, value)
        at_least("--short-side", self.short_side, 16, allow_none=True, why=" pixels")
        at_least("--long-side", self.long_side, 16, allow_none=True, why=" pixels")
        at_least("--slide-crop", self.slide_crop, 0, allow_none=True, why=" pixels (0 = the whole image)")
        at_least("--slide-stride", self.slide_stride, 1, allow_none=True, why=" pixels")
        at_least("--pamr-steps", self.pamr_steps, 0, allow_none=True, why=" (0 = off)")
        at_least("--max-side", self.max_side, MIN_MAX_SIDE, allow_none=True, why=" pixels")
        require(bool(self.templates.strip()),
                "--templates is empty: give imagenet, clip-es, ov-stitcher, a template or a file")

    @classmethod
    def of(cls, dense: str = "naclip", **options: Any) -> SegmentConfig:
        """The config of ``dense`` from options by field name, as `segment` and :func:`vpltool.segmenter` give
        them: the shared fields, and the method's knobs (its :class:`MethodKnobs` fields) into its ``knobs``.

        Another method's knob given (not None) is warned about and ignored (:class:`~vpltool.errors.VplWarning`,
        the sentence of :func:`~vpltool.config.ignored_option`; never recorded), or refused in one line when its
        row says the run would silently differ (``needs``: ``--sam-refine`` without Trident's SAM pass). A name that
        is nobody's is one line naming the options."""
        choice("--dense", dense, DENSE_CHOICES)
        own_class = DENSE_SPECS[dense].knobs_class
        own = {f.name for f in fields(own_class)}
        shared = {f.name for f in fields(cls)} - {"dense", "knobs"}
        knobs = {k: options.pop(k) for k in list(options) if k in own}
        for name in [n for n in options if n not in shared]:
            value = options.pop(name)
            if name not in KNOBS:
                from .checks import did_you_mean

                raise VplError(f"--dense {dense}: no option {name!r};{did_you_mean(name, [*shared, *own])} its "
                               f"options are {', '.join(sorted([*shared, *own]))}")
            if value is None:
                continue
            knob_, owners = KNOBS[name], " or ".join(KNOB_METHODS[name])
            flag = knob_.option.split("/")[0]
            require(knob_.needs is None, f"{flag}: {knob_.needs}, which --dense {dense} does not run; pass "
                    f"--dense {owners}, or drop {flag}")
            warnings.warn(VplWarning(ignored_option(flag, shown_value(value), f"without --dense {owners}")),
                          stacklevel=2)
        return cls(dense=dense, knobs=method_knobs(dense, DENSE_SPECS[dense], knobs, KNOBS), **options)

    @classmethod
    def option_names(cls, dense: str | None = None) -> list[str]:
        """The options :meth:`of` takes for ``dense`` (None: for any method: every method's knobs), by field name."""
        shared = [f.name for f in fields(cls) if f.name != "knobs"]
        return shared + ([k.field for k in DENSE_SPECS[dense].knobs] if dense is not None else list(KNOBS))

    def flat(self) -> dict[str, Any]:
        """Every setting by field name, the method's knobs beside the shared ones (how a stage records them, and
        :meth:`of` takes them back)."""
        # long_side and a knob(newer=True), newer than runs recorded before them, left out at None: those resume
        out = {f.name: v for f in fields(self) if f.name != "knobs"
               if (v := getattr(self, f.name)) is not None or f.name != "long_side"}
        return out | {f.name: v for f in fields(self.knobs) if (v := getattr(self.knobs, f.name)) is not None
                      or not f.metadata.get("newer")}

    def inert(self) -> dict[str, str]:
        """The proxy options have no effect without a proxy method (:data:`PROXY_METHODS`), SAM's without a method
        that takes SAM or a knob value that reads it (:attr:`Knob.uses`)."""
        out = {}
        own = DENSE_SPECS[self.dense]
        if not own.sam:
            used = {u for k in own.knobs for u in k.uses}
            why = f"without --dense {' or '.join(SAM_METHODS)}"
            out.update({k: why for k in ("sam_model", "sam_weights") if k not in used})
        for knob_ in own.knobs:  # shared options that only some values of its knob read
            if knob_.uses and not str(getattr(self.knobs, knob_.field) or "").startswith(knob_.when):
                out.update({k: f"without {knob_.option} {' or '.join(knob_.when)}" for k in knob_.uses})
        if own.concept_prompts:
            out["templates"] = CONCEPT_PROMPTS_WHY.format(dense=self.dense)
        if self.dense in PROXY_METHODS:
            return out
        why = f"without --dense {' or '.join(PROXY_METHODS)}"
        return {**out, "proxy_model": why, "proxy_weights": why}

    def resolved(self) -> DenseSettings:
        """The method's :class:`DenseSettings` with every option given here in place of its own."""
        base = DENSE_SEGMENTORS[self.dense]
        inert = self.inert()
        flat = self.flat()  # a method's knob that is a segmentor setting (Trident's --sam-refine) applies there too
        given = {f.name: flat[f.name] for f in fields(DenseSettings)
                 if flat.get(f.name) is not None and f.name not in inert}
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
    try:
        cfg = SegmentConfig.of(**given)
        cfg.resolved()
    except VplError as e:
        message = re.sub("|".join(map(re.escape, DENSE_OPTION_NAMES)), lambda m: DENSE_OPTION_NAMES[m.group(0)],
                         str(e))
        raise type(e)(message) from None
    return cfg

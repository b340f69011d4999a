"""The per-benchmark presets a ``--dense`` spec row carries (:attr:`~vpltool.config.dense.DenseMethodSpec.presets`):
one :class:`~vpltool.config.method_presets.MethodPresets` per newer method, each value its reference's config sets,
with its ``file:line``. :mod:`vpltool.config.benchmarks` holds the older methods' rows and adds these;
parity/benchmarks_parity.py checks them against the references' clones. Torch-free.
"""

from __future__ import annotations

from .dense_knobs import ACTIVESAM_DEFAULTS
from .method_presets import CFG_FILES, MethodPresets


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
CORRCLIP_PRESETS = MethodPresets(
    "zdk258/CorrCLIP@103bc18 (CorrCLIPv1)",
    {"dense": "corrclip", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 336, "slide_stride": 112,
     "pamr_steps": 0, "area_threshold": 0.0},
    "corrclip_segmentor.py:46-47 (__init__ defaults)", _corrclip_benchmarks())



def _ov_stitcher_benchmarks() -> dict:
    """atw617/OV-Stitcher configs/cfg_*.py (the stored 2bb6586): each benchmark's Resize short side (448; 560 on
    Cityscapes), its prob_thd where set (VOC21 and Context60 0.1, COCO-Object 0.2), its windows (336/112; 224/112 on
    Cityscapes, 336/224 on COCO-Stuff); each with its line."""
    files = {"voc21": ("cfg_voc21.py", 18), "context60": ("cfg_context60.py", 18),
             "coco-object": ("cfg_coco_object.py", 18), "voc20": ("cfg_voc20.py", 17),
             "context59": ("cfg_context59.py", 17), "coco-stuff": ("cfg_coco_stuff164k.py", 17),
             "cityscapes": ("cfg_city_scapes.py", 17), "ade20k": ("cfg_ade20k.py", 17)}
    thresholds = {"voc21": 0.1, "context60": 0.1, "coco-object": 0.2}
    windows = {"cityscapes": (224, 112), "coco-stuff": (336, 224)}
    out = {}
    for bench, (cfg, line) in files.items():
        row = {"short_side": (560 if bench == "cityscapes" else 448, f"configs/{cfg}:{line}")}
        shift = 0
        if bench in thresholds:
            row["prob_threshold"] = (thresholds[bench], f"configs/{cfg}:7")
            shift = 1
        crop, stride = windows.get(bench, (336, 112))
        row.update(slide_stride=(stride, f"configs/{cfg}:{7 + shift}"), slide_crop=(crop, f"configs/{cfg}:{8 + shift}"))
        out[bench] = row
    return out


# its segmentor's __init__ defaults (and base_config.py's class-biased templates) under each benchmark's config
OV_STITCHER_PRESETS = MethodPresets(
    "atw617/OV-Stitcher@91a9489 (cfg_*.py: 2bb6586)",
    {"dense": "ov-stitcher", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 336, "slide_stride": 112,
     "pamr_steps": 0, "area_threshold": 0.0, "templates": "ov-stitcher"},
    "ov_stitcher_segmentor.py:47 (__init__ defaults); configs/base_config.py:8 (template_path)",
    _ov_stitcher_benchmarks())

# TextRegion's dataset configs live in configs/cfg_ds/ (configs/ holds its base and reasoning configs)
TEXTREGION_CONFIGS = {b: f"configs/cfg_ds/{f}" for b, f in CFG_FILES.items()}


def _textregion_benchmarks() -> dict:
    """avaxiao/TextRegion configs/cfg_ds/cfg_*.py: each benchmark's Resize scale (long, short), its prob_thd where
    set (VOC21, Context60, COCO-Object), Cityscapes' 36 points a side and its halves (model_semantic.py:413,493,568,
    609: "city_scape" in the config's name); each with its line."""
    scale = {"voc21": (17, (1008, 672)), "context60": (17, (2016, 672)), "coco-object": (17, (2016, 672)),
             "voc20": (15, (2016, 672)), "context59": (15, (2016, 672)), "coco-stuff": (15, (1334, 896)),
             "cityscapes": (18, (2688, 1344)), "ade20k": (15, (2016, 672))}
    thresholds = {"voc21": 0.4, "context60": 0.35, "coco-object": 0.5}
    out = {}
    for bench, (line, (long, short)) in scale.items():
        src = TEXTREGION_CONFIGS[bench]
        row = {"short_side": (short, f"{src}:{line}"), "long_side": (long, f"{src}:{line}")}
        if bench in thresholds:
            row["prob_threshold"] = (thresholds[bench], f"{src}:6")
        if bench == "cityscapes":
            row.update(points_per_side=(36, f"{src}:7"), region_halves=(True, "model_semantic.py:413 (city_scape)"))
        out[bench] = row
    return out


# its segmentor's __init__ defaults (model_semantic.py) and base_config.py's sam2_cfg under each benchmark's config
TEXTREGION_PRESETS = MethodPresets(
    "avaxiao/TextRegion@e392cd2",
    {"dense": "textregion", "logit_scale": 50.0, "prob_threshold": 0.0, "slide_crop": 0, "slide_stride": 112,
     "pamr_steps": 0, "area_threshold": 0.0, "points_per_side": 16, "region_halves": False, "region_crop": 336},
    "model_semantic.py:86-87 (__init__ defaults: region_logit_scale 50, prob_thd 0); configs/base_config.py:11,18 "
    "(points_per_side 16, crop_size 336); its own views, no slide windows", _textregion_benchmarks(),
    config_files=TEXTREGION_CONFIGS)

# RADSeg evaluates five benchmarks (no background class: VOC20, Context59, COCO-Stuff, Cityscapes, ADE20K), each
# with a config in every resolution folder; eval.py's default folder is mid_res_configs
RADSEG_CONFIGS = {b: f"evaluation/2d/configs/mid_res_configs/{f}" for b, f in (
    ("voc20", "cfg_voc20.py"), ("context59", "cfg_context59.py"), ("coco-stuff", "cfg_cocostuff.py"),
    ("cityscapes", "cfg_city_scapes.py"), ("ade20k", "cfg_ade20k.py"))}


def _radseg_benchmarks() -> dict:
    """RADSeg-OVSS/RADSeg evaluation/2d/configs/mid_res_configs/cfg_*.py (eval.py's default config folder): each
    benchmark's Resize short side and its windows where set (base_config.py's 336/224 otherwise), each with its
    line; its low- and high-resolution configs are the presets' ``extra``."""
    mid = {"voc20": (336, 112), "context59": (576, None), "coco-stuff": (448, None), "cityscapes": (688, None),
           "ade20k": (576, None)}
    out = {}
    for bench, (side, stride) in mid.items():
        where = RADSEG_CONFIGS[bench]
        row = {"short_side": (side, f"{where}:{12 if stride else 5}")}
        if stride:
            row["slide_stride"] = (stride, f"{where}:5")
        out[bench] = row
    return out


# RADSeg's low- and high-resolution configs (not the presets: eval.py's default is mid_res_configs), and each
# dataset config's coarse_thresh (RADSeg+'s SAM refinement, which vpltool does not run), recorded beside its rows
RADSEG_EXTRA = {
    "voc20": {"low_res": "short 336, slide 224/112", "high_res": "short 672 (long 2016), slide 336/224",
              "coarse_thresh": 0.2},
    "context59": {"low_res": "short 336, slide 224/112", "high_res": "short 672 (long 2016), slide 336/224",
                  "coarse_thresh": 0.15},
    "coco-stuff": {"low_res": "short 336, slide 224/112", "high_res": "short 896 (long 1334), slide 336/224",
                   "coarse_thresh": 0.05},
    "cityscapes": {"low_res": "short 560, slide 224/112", "high_res": "short 1344 (long 2688), slide 336/224",
                   "coarse_thresh": 0.10},
    "ade20k": {"low_res": "short 336, slide 224/112", "high_res": "short 672 (long 2016), slide 336/224",
               "coarse_thresh": 0.05},
}
RADSEG_PRESETS = MethodPresets(
    "RADSeg-OVSS/RADSeg@05ec86f",
    {"dense": "radseg", "logit_scale": 100.0, "prob_threshold": 0.0, "slide_crop": 336, "slide_stride": 224,
     "pamr_steps": 0, "area_threshold": 0.0},
    "evaluation/2d/configs/base_config.py:3-12 (slide 336/224; radseg/radseg.py compute_cos_sim's softmax(100 sim),"
    " prediction_thresh 0)", _radseg_benchmarks(), RADSEG_EXTRA, config_files=RADSEG_CONFIGS)


def _activesam_benchmarks() -> dict:
    """VILA-Lab/ActiveSAM configs/cfg_*.py: each benchmark's prob_thd where set (VOC21 0.4, Context60 0.1, COCO-Object
    0.4; elsewhere base.py's 0.0, no background), each with its line; its class file is the preset's class set."""
    thresholds = {"voc21": ("cfg_voc21.py", 0.4), "context60": ("cfg_context60.py", 0.1),
                  "coco-object": ("cfg_coco_object.py", 0.4)}
    return {bench: {"prob_threshold": (value, f"configs/{cfg}:6")} for bench, (cfg, value) in thresholds.items()}


# base.py's FrozenSAM3Segmentor defaults (prob_thd 0.0, confidence_threshold 0.5) under each benchmark's config; the
# "SAM 3" row: per query word SAM 3's kept instance masks, no semantic head, no presence gate (docs/open-vocabulary.md)
SAM3_PRESETS = MethodPresets(
    "VILA-Lab/ActiveSAM@41cad43 (FrozenSAM3Segmentor, its SAM 3 row)",
    {"dense": "sam3", "prob_threshold": 0.0, "slide_crop": 0, "pamr_steps": 0, "area_threshold": 0.0,
     "confidence_threshold": 0.5, "sam3_heads": "instance", "presence_gate": False},
    "activesam/model/base.py:28,30 (__init__ defaults: prob_thd 0.0, confidence_threshold 0.5)",
    _activesam_benchmarks())

# configs/base_config.py's model dict under each benchmark's config
ACTIVESAM_PRESETS = MethodPresets(
    "VILA-Lab/ActiveSAM@41cad43",
    {"dense": "activesam", "prob_threshold": 0.0, "slide_crop": 0, "pamr_steps": 0, "area_threshold": 0.0,
     **ACTIVESAM_DEFAULTS},
    "configs/base_config.py:9-22 (model dict); activesam/model/base.py:28 (prob_thd 0.0)", _activesam_benchmarks())


__all__ = ["CORRCLIP_PRESETS", "OV_STITCHER_PRESETS", "TEXTREGION_CONFIGS", "TEXTREGION_PRESETS", "RADSEG_CONFIGS",
           "RADSEG_EXTRA", "RADSEG_PRESETS",
           "SAM3_PRESETS", "ACTIVESAM_PRESETS"]

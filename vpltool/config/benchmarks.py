"""Per-method, per-benchmark presets: the settings each reference's own config runs each of the eight benchmarks with
(`vpltool benchmark`, `vpltool benchmark --presets`). Read from each repository's ``configs/cfg_<benchmark>.py``
(the ``model = dict(...)`` keys and the ``Resize(scale=(2048, S))`` short side) over its segmentor's ``__init__``
defaults; the source of every value is kept with it. Options given on the command line win over a preset.

Keys are :class:`~vpltool.config.SegmentConfig` fields (``class_file`` a bundled ``SET:BENCHMARK``, see
:mod:`vpltool.data.class_files`); ``extra`` holds a method's own knobs (ProxyCLIP's beta/gamma, CASS's weights,
Trident's thresholds) recorded for the methods another module runs. Torch-free.
"""

from __future__ import annotations

from dataclasses import replace

from ..plugins.entry_points import DerivedMap
from .dense import DENSE_SPECS, KNOBS
from .method_presets import BENCHMARK_NAMES, MethodPresets
from .method_presets import CFG_FILES as _CFG


def _per(values: dict) -> dict:
    """``{benchmark: {key: (value, line)}}`` -> sources as ``cfg_x.py:line``."""
    return {b: {k: (v, f"configs/{_CFG[b]}:{line}") for k, (v, line) in kv.items()} for b, kv in values.items()}


def _short(lines: dict, sides: dict) -> dict:
    """Each benchmark's Resize short side with its line."""
    return {b: {"short_side": (sides[b], lines[b])} for b in sides}


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for b, kv in part.items():
            out.setdefault(b, {}).update(kv)
    return out


# the methods' own knobs, shown beside the common columns (their spec rows' knobs classes)
_METHOD_KNOBS = KNOBS
_MMSEG_LINES = {"voc21": 16, "context60": 15, "coco-object": 15, "voc20": 15, "context59": 14, "coco-stuff": 14,
                "cityscapes": 14, "ade20k": 14}
_S336 = {b: 336 for b in BENCHMARK_NAMES} | {"cityscapes": 560}

_OWN_PRESETS: dict[str, MethodPresets] = {
    "naclip": MethodPresets(
        "sinahmr/NACLIP",
        {"dense": "naclip", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 224, "slide_stride": 112,
         "pamr_steps": 10, "area_threshold": 0.0},
        "naclip.py:20-22 (__init__ defaults; test_all.sh --pamr on = 10 steps)",
        _per(_merge(_short(_MMSEG_LINES, _S336),
                    {"voc21": {"prob_threshold": (0.1, 6), "slide_crop": (0, 7)},
                     "context60": {"prob_threshold": (0.1, 6)}, "coco-object": {"prob_threshold": (0.1, 6)},
                     "voc20": {"slide_crop": (0, 6)}}))),
    "sclip": MethodPresets(
        "wangf3014/SCLIP",
        {"dense": "sclip", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 224, "slide_stride": 112,
         "pamr_steps": 0, "area_threshold": 0.0},
        "clip_segmentor.py:19-21 (__init__ defaults)",
        _per(_merge(_short(_MMSEG_LINES | {"voc21": 17, "context60": 16, "coco-object": 16, "voc20": 14},
                           _S336 | {"coco-stuff": 448}),
                    {"voc21": {"logit_scale": (65.0, 6), "prob_threshold": (0.1, 7), "area_threshold": (0.1, 8)},
                     "context60": {"logit_scale": (50.0, 6), "prob_threshold": (0.1, 7)},
                     "coco-object": {"logit_scale": (50.0, 6), "prob_threshold": (0.1, 7)}}))),
    "clearclip": MethodPresets(
        "mc-lan/ClearCLIP",
        {"dense": "clearclip", "logit_scale": 50.0, "prob_threshold": 0.0, "slide_crop": 448, "slide_stride": 224,
         "pamr_steps": 0, "area_threshold": 0.0},
        "clearclip_segmentor.py:22-23 (__init__ defaults)",
        _per(_merge(_short(_MMSEG_LINES | {"voc21": 15, "voc20": 14, "cityscapes": 15},
                           {b: 448 for b in BENCHMARK_NAMES}),
                    {"voc21": {"prob_threshold": (0.5, 6)}, "context60": {"prob_threshold": (0.15, 6)},
                     "coco-object": {"prob_threshold": (0.4, 6)}, "cityscapes": {"slide_crop": (224, 6)}}))),
    "proxyclip": MethodPresets(
        "mc-lan/ProxyCLIP@e7b767f",
        {"dense": "proxyclip", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 336, "slide_stride": 112,
         "pamr_steps": 0, "area_threshold": 0.0},
        "proxyclip_segmentor.py:30-31 (__init__ defaults; base_config vfm_model='dino')",
        _per(_merge(_short(_MMSEG_LINES | {"voc21": 15, "voc20": 14, "cityscapes": 16},
                           {b: 336 for b in BENCHMARK_NAMES} | {"cityscapes": 448, "ade20k": 448}),
                    {"voc21": {"prob_threshold": (0.2, 6)}, "context60": {"prob_threshold": (0.15, 6)},
                     "coco-object": {"prob_threshold": (0.25, 6)},
                     "cityscapes": {"slide_stride": (112, 6), "slide_crop": (224, 7)}})),
        {b: {"beta": 1.2, "gamma": 3.0} for b in BENCHMARK_NAMES}),
    "sc-clip": MethodPresets(
        "SuleBai/SC-CLIP@0417ba9",
        {"dense": "sc-clip", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 224, "slide_stride": 112,
         "pamr_steps": 0, "area_threshold": 0.0},
        "scclip_segmentor.py:19-22 (__init__ defaults)",
        _per(_merge(_short(_MMSEG_LINES | {"voc20": 14}, _S336),
                    {"voc21": {"area_threshold": (0.1, 6), "logit_scale": (50.0, 7), "prob_threshold": (0.15, 7)},
                     "context60": {"prob_threshold": (0.15, 6)},
                     "coco-object": {"logit_scale": (55.0, 6), "prob_threshold": (0.35, 6)}}))),
    "cass": MethodPresets(
        "MICV-yonsei/CASS@228ecdd",
        {"dense": "cass", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 224, "slide_stride": 112,
         "pamr_steps": 0, "area_threshold": 0.0, "stretch": True, "window_global": False},
        "cass_segmentor.py:31-33 (__init__ defaults; eval_all.sh --pamr off; clip/model.py:467-468 stretch, "
        "cass_segmentor.py:231 window_global)",
        _merge(
            _per(_merge(_short({b: 20 for b in BENCHMARK_NAMES} | {"voc21": 21, "context60": 21, "coco-object": 21,
                                "cityscapes": 21}, _S336),
                        {"voc21": {"prob_threshold": (0.1, 6), "slide_crop": (0, 7)},
                         "context60": {"prob_threshold": (0.1, 6)}, "coco-object": {"prob_threshold": (0.1, 6)}},
                        {b: {"global_weight": (g, line), "shift_weight": (m, line + 1), "cluster_cut": (h, line + 2)}
                         for b, (g, m, h, line) in {
                             "voc21": (0.1, 0.03, 0.10, 10), "context60": (0.25, 0.04, 0.09, 9),
                             "coco-object": (0.25, 0.01, 0.10, 9), "voc20": (0.4, 0.02, 0.10, 8),
                             "cityscapes": (0.1, 0.03, 0.14, 8), "context59": (0.25, 0.04, 0.09, 8),
                             "ade20k": (0.3, 0.05, 0.06, 8), "coco-stuff": (0.2, 0.02, 0.02, 8)}.items()})),
            {"voc20": {"stretch": (False, "clip/model.py:467 (_scale_singular_values: voc20 kept)")},
             "cityscapes": {"stretch": (False, "clip/model.py:467 (_scale_singular_values: city_scapes kept)"),
                            "window_global": (True, "cass_segmentor.py:231 (city_scapes: forward_feature(crop, "
                                                    "None))")}})),
    "trident": MethodPresets(
        "YuHengsss/Trident@a93b346",
        {"dense": "trident", "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 336, "slide_stride": 224,
         "pamr_steps": 0, "area_threshold": 0.0, "cos_fac": 1.2, "refine_neg_cos": True, "sam_halves": False,
         "sam_refine": True, "coarse_threshold": 0.2},
        "configs/base_config.py (slide_stride=224, slide_crop=336, cos_fac=1.2, refine_neg_cos=True, "
        "coarse_thresh=0.2) over trident.py:29-33; sam_refine: dist_test.sh:3 (eval.py --sam_refine, its "
        "published figures)",
        _per(_merge(_short({b: 15 for b in BENCHMARK_NAMES} | {"voc21": 16, "context60": 16, "coco-object": 16,
                            "voc20": 17, "cityscapes": 18, "ade20k": 16},
                           {"voc21": 448, "context60": 576, "coco-object": 448, "voc20": 336, "context59": 576,
                            "coco-stuff": 448, "cityscapes": 688, "ade20k": 576}),
                    {"voc21": {"prob_threshold": (0.2, 6)}, "context60": {"prob_threshold": (0.15, 6)},
                     "coco-object": {"prob_threshold": (0.25, 7)},
                     "voc20": {"slide_stride": (112, 7), "cos_fac": (0.0, 8)},
                     "cityscapes": {"sam_halves": (True, 6), "cos_fac": (3.0, 7), "refine_neg_cos": (False, 8)},
                     "ade20k": {"refine_neg_cos": (False, 6)}},
                    # the SAM prompt refinement's coarse_thresh (--sam-refine, on: dist_test.sh)
                    {"voc21": {"coarse_threshold": (0.2, 7)}, "context60": {"coarse_threshold": (0.15, 7)},
                     "coco-object": {"coarse_threshold": (0.25, 6)}, "voc20": {"coarse_threshold": (0.2, 6)},
                     "context59": {"coarse_threshold": (0.15, 6)}, "coco-stuff": {"coarse_threshold": (0.05, 6)},
                     "cityscapes": {"coarse_threshold": (0.10, 9)}, "ade20k": {"coarse_threshold": (0.05, 7)}}))),
}
# MaskCLIP as ClearCLIP's harness runs it (model_type 'MaskCLIP', ignore_residual False): ClearCLIP's settings
_OWN_PRESETS["maskclip"] = MethodPresets(
    "mc-lan/ClearCLIP (model_type='MaskCLIP')", {**_OWN_PRESETS["clearclip"].defaults, "dense": "maskclip"},
    _OWN_PRESETS["clearclip"].defaults_source, _OWN_PRESETS["clearclip"].benchmarks)


def _presets() -> dict[str, MethodPresets]:
    """The rows above, then the presets a method keeps in its spec row (DenseMethodSpec.presets: a new method, a
    plugin's, adds no line here); each with its queries, its method's reference's class-file set (named once in
    the spec row, class_files)."""
    out = dict(_OWN_PRESETS)
    out.update({name: spec.presets for name, spec in DENSE_SPECS.items()
                if spec.presets is not None and name not in out})
    return {name: replace(p, class_set=DENSE_SPECS[p.defaults["dense"]].class_files) for name, p in out.items()
            if p.defaults["dense"] in DENSE_SPECS}


# every method's per-benchmark presets (read with the plugins' rows, on first use)
BENCHMARK_PRESETS = DerivedMap(_presets, DENSE_SPECS, names=True)  # by method: a plugin's is loaded when named


def source_summary(method: str, benchmark: str) -> str:
    """Where a preset's values come from, compactly: ``cfg_voc21.py:6 prob_threshold, :16 short_side; the rest
    naclip.py:20-22 (...)``."""
    p = BENCHMARK_PRESETS[method]
    cfg = p.config_file(benchmark)
    own = sorted(((src.rsplit(":", 1)[1], k) for k, src in p.sources(benchmark).items()
                  if src.startswith(f"{cfg}:")), key=lambda t: int(t[0]))
    head = (cfg + ":" + ", :".join(f"{line} {k}" for line, k in own)) if own else f"{cfg}: nothing"
    return f"{head}; the rest {p.defaults_source}" + ("; class file: its configs/cls_*.txt" if p.class_set else "")


def presets_table(method: str | None = None) -> list[dict]:
    """Rows ``{method, benchmark, settings, sources, extra}`` of every preset (or one method's), for listings."""
    rows = []
    for name, p in BENCHMARK_PRESETS.items():
        if method is not None and name != method:
            continue
        for b in p.names:
            rows.append({"method": name, "repo": p.repo, "benchmark": b, "settings": p.settings(b),
                         "sources": p.sources(b), "source": source_summary(name, b), "extra": p.extra.get(b, {})})
    return rows


def presets_markdown() -> str:
    """Every preset as a markdown table (docs/benchmarks.md, written by docgen/benchmark_presets.py)."""
    lines = ["| method | benchmark | short side | window / stride | logit scale | prob. threshold | area threshold "
             "| PAMR | class file | from (repository: file:line) |", "|" + "---|" * 10]
    for row in presets_table():
        s = row["settings"]
        window = f"{s['slide_crop']} / {s['slide_stride']}" if s["slide_crop"] else "whole image"
        # CASS's knobs, a preset's prompt set (OV-Stitcher's templates), then the not-run ones
        knobs = {**{k: s[k] for k in (*_METHOD_KNOBS, "templates") if k in s}, **row["extra"]}
        extra = (" (+ " + ", ".join(f"{k} {v}" for k, v in knobs.items()) + ")") if knobs else ""
        # a method whose model reads the photo at its own side (SAM 3's) and scores without a logit scale: "-"
        side = f"{s['short_side']} (long {s['long_side']})" if s.get("long_side") else s.get("short_side", "-")
        scale = f"{s['logit_scale']:g}" if "logit_scale" in s else "-"
        lines.append(f"| {row['method']} | {row['benchmark']} | {side} | {window} | {scale} | "
                     f"{s['prob_threshold']:g} | {s['area_threshold'] or '-'} | {s['pamr_steps'] or '-'} | "
                     f"{s.get('class_file', 'its own')} | {row['repo']}: {row['source']}{extra} |")
    return "\n".join(lines) + "\n"


__all__ = ["BENCHMARK_NAMES", "BENCHMARK_PRESETS", "MethodPresets", "presets_table", "source_summary",
           "presets_markdown"]

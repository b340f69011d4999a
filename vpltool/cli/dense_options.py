"""The training-free dense methods' options (`segment`, `benchmark`, and `--dense` of `cam` and `predict`), defined
once; defaults are the methods' own (:mod:`vpltool.config.dense`), so most of them are ``None`` here: the method's.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import SegmentConfig, dense_help
from ..config.dense import CLASS_SETS, DENSE_CHOICES, DENSE_SPECS, KNOB_METHODS, KNOBS, PROXY_MODELS, SAM_METHODS
from ..plugins.survey import shown_so_far
from .options import OptionBlock

_S = SegmentConfig
_METHOD = f"[default: the --dense method's. {dense_help()}]"
_PRESET = "[default: the method's preset for each benchmark; `--presets` lists them]"


def _methods(names) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# every list below is DENSE_SPECS' (vpltool/config/dense.py): a new method's row shows here by itself; a help lists
# the plugins' methods too, each listed in a child process and not loaded here (vpltool.plugins.survey.shown)
_OWN_CHOICES = tuple(DENSE_CHOICES)  # a tuple: looking a name up in DENSE_CHOICES loads the plugin that has it
LISTED_METHODS = tuple(name for name, fam in shown_so_far("methods").items()
                       if fam == "clip" and name not in _OWN_CHOICES)
DenseOpt = Annotated[str, typer.Option("--dense", help="How CLIP's last block mixes its tokens: "
                                       + " | ".join((*_OWN_CHOICES, *LISTED_METHODS))
                                       + " (none: CLIP's own, the CLIP-ES path; the "
                                       "others the training-free dense methods, as their public code; "
                                       "docs/open-vocabulary.md).")]
_BY_MODEL: dict[str, list[str]] = {}
for _name, _model in PROXY_MODELS.items():
    _BY_MODEL.setdefault(_model, []).append(_name)
ProxyModelOpt = Annotated[Optional[str], typer.Option(
    "--proxy-model", help=f"The proxy vision model of --dense {_methods(PROXY_MODELS)}: a timm DINO ViT name "
    "[default: the method's: " + "; ".join(f"{m} for {_methods(n)}" for m, n in _BY_MODEL.items()) + "].",
    show_default=False)]
ProxyWeightsOpt = Annotated[str, typer.Option("--proxy-weights", help="Its weights: hub (timm's local cache) | a "
                                              "local file (timm or DINO layout) | none (random, seeded: tests).")]

# the references' queries and last-block switches (segment, benchmark): None = the method's / the preset's
_SETS = CLASS_SETS
ClassFileOpt = Annotated[Optional[str], typer.Option(
    "--class-file", help="Queries as the references write them: a file of one line a class (the dataset's order; "
    "first line the background's words when it has one more line), comma-separated synonyms, or a bundled "
    f"SET:BENCHMARK (SET one of {', '.join(_SETS)}: the references' own files, e.g. sclip:voc21); each class is "
    "still scored as the dataset's. Queries separated by ',' (SCLIP's files) or, in a file with a ';', by '; ' "
    "(ProxyCLIP's and CorrCLIP's). benchmark also takes a set name alone (sclip: each benchmark's own file) "
    "[default: the dataset's names; benchmark: the method's reference's set].",
    show_default=False)]
AttentionOpt = Annotated[Optional[str], typer.Option(
    "--attention", help="The last block's attention in place of the --dense method's: qk (CLIP's own; ClearCLIP's "
    "model_type vanilla) | identity (MaskCLIP) | qq+kk (SCLIP) | qq (ClearCLIP) | kk (NACLIP).", show_default=False)]
# the SAM encoder of the methods that take one, and of the knob values that read it (segment, benchmark)
_SAM = _methods(SAM_METHODS)
_SAM_USERS = "".join(f" (and of {k.option} {k.when[0]} of --dense {_methods(KNOB_METHODS[k.field])})"
                     for k in KNOBS.values() if "sam_model" in k.uses)
SamModelOpt = Annotated[str, typer.Option("--sam-model", help=f"The SAM image encoder of --dense {_SAM}{_SAM_USERS}: "
                                          "vit_b (Trident's) | vit_l | vit_h | toy (the demo world's: "
                                          "vpltool/assets/toy-sam, `train-toy-sam`).")]
SamWeightsOpt = Annotated[Optional[str], typer.Option(
    "--sam-weights", help=f"SAM's weights of --dense {_SAM}{_SAM_USERS}: a local file (SAM's released checkpoint, e.g. "
    "sam_vit_b_01ec64.pth for vit_b, or the image encoder's tensors; --sam-model toy's is vpltool/assets/toy-sam/"
    f"model.safetensors in the package) | none (random, seeded: tests). Required with {_SAM}. With --region-masks "
    "sam3: SAM 3's, a facebook/sam3 folder (config.json + model.safetensors) or Meta's sam3.pt.", show_default=False)]
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
    ("short_side", int, "Images resized to this short side first (mmseg keep-ratio resize, long side at most "
     "--long-side).", "Short side of the resize. " + _PRESET),
    ("long_side", int, "The resize's long side at most this (mmseg's Resize(scale=(long, short)): the smaller "
     "of the two factors wins; 2048 for every method but textregion's 1008).", "Long side cap of the resize. "
     + _PRESET),
    ("slide_crop", int, "Sliding window side in pixels (0 = the whole image).", "Window side (0 = whole image). "
     + _PRESET),
    ("slide_stride", int, "Sliding window stride in pixels.", "Window stride. " + _PRESET),
    ("pamr_steps", int, "PAMR refinement steps (0 = off; dilations 8, 16).", "PAMR steps (0 = off). " + _PRESET),
)
# segment's alone (benchmark's photos are the benchmarks' sizes)
MaxSideOpt = Annotated[Optional[int], typer.Option(
    "--max-side", help="A photo whose long side is above this is segmented at this long side and its mask enlarged "
    "(nearest) to the photo: time and memory go with the smaller size; its labels differ from the photo's own "
    "size's (edges, small regions) [default: none: every photo at its own size].", show_default=False)]
# the references' queries and the last block's switches
_KNOBS = (("class_file", ClassFileOpt, None), ("attention", AttentionOpt, None), ("residual", ResidualOpt, None))


def _knob_type(field: str) -> object:
    """A method knob's option, made from its method's own settings class (a field of its spec row's
    ``knobs_class``: :class:`vpltool.config.knobs.Knob`, and the field's type, ``float | None`` ->
    ``Optional[float]``); None = the method's / the preset's."""
    owners = KNOB_METHODS[field]
    kind = DENSE_SPECS[owners[0]].knobs_class.types()[field]
    knob = KNOBS[field]
    return Annotated[Optional[kind], typer.Option(knob.option, help=knob_help(owners, knob.help),
                                                  show_default=False)]


def knob_help(owners: tuple[str, ...], text: str) -> str:
    """A knob's ``--help``: ``--dense NAME: `` (the methods that read it) before the knob's own text, which
    :func:`vpltool.config.knobs.knob` says not to start so; a text that does anyway keeps its own."""
    prefix = f"--dense {_methods(owners)}: "
    return text if text.startswith(("--dense ", prefix)) else prefix + text


# every method's own knobs, in DENSE_SPECS' order
_METHOD_KNOBS = tuple((field, _knob_type(field), None) for field in KNOBS)
# the proxy models: segment's defaults are the config's, benchmark's None (each preset's)
_PROXY = (("proxy_model", ProxyModelOpt, None), ("proxy_weights", ProxyWeightsOpt, _S.proxy_weights),
          ("sam_model", SamModelOpt, _S.sam_model), ("sam_weights", SamWeightsOpt, None))
_PROXY_PRESET = (
    ("proxy_model", ProxyModelOpt, None),
    ("proxy_weights", Annotated[Optional[str], typer.Option(
        "--proxy-weights", help="The proxy model's weights: hub (timm's local cache) | a local file | none (random, "
        "seeded: tests) [default: hub].", show_default=False)], None),
    ("sam_model", Annotated[Optional[str], typer.Option(
        "--sam-model", help=f"The SAM image encoder of --dense {_SAM}{_SAM_USERS}: vit_b | vit_l | vit_h | toy "
        "[default: vit_b, Trident's].", show_default=False)], None),
    ("sam_weights", SamWeightsOpt, None))


def _settings(column: int) -> tuple:
    return tuple((name, Annotated[Optional[kind], typer.Option(help=helps[column], show_default=False)], None)
                 for name, kind, *helps in _SETTINGS)


# segment's and benchmark's (whose --help lists the proxy models last): the values are SegmentConfig's fields by name,
# given to it (segment) or as the presets' overrides (benchmark)
# a plugin's knob (no method of vpltool's reads it), with its distribution: left out, in one line, where a command
# already spells its option (vpltool.cli.options.option_blocks)
_PLUGIN_KNOBS = {field: DENSE_SPECS.plugin(methods[0]) for field, methods in KNOB_METHODS.items()
                 if all(DENSE_SPECS.plugin(m) for m in methods)}
DENSE = OptionBlock(*_settings(0), ("max_side", MaxSideOpt, _S.max_side), *_KNOBS, *_PROXY, *_METHOD_KNOBS,
                    plugins=_PLUGIN_KNOBS)
DENSE_PRESET = OptionBlock(*_settings(1), *_KNOBS, *_METHOD_KNOBS, *_PROXY_PRESET, plugins=_PLUGIN_KNOBS)

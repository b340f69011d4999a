"""`vpltool segment`: open-vocabulary segmentation with no label and no training: a frozen CLIP whose last block
mixes its tokens as a training-free dense method does (MaskCLIP, SCLIP, ClearCLIP, NACLIP, SC-CLIP, and ProxyCLIP
with a DINO proxy model: :mod:`vpltool.backbone.dense`), scored against text queries for any class names.

Per image (each method's public segmentor, :mod:`vpltool.backbone.segmentor`):

1. resized to the method's short side (mmseg's keep-ratio resize; the pixels by CLIP's Pillow bicubic, as every
   vpltool stage), CLIP-normalised;
2. slide inference (or the whole image): per window the dense method's patch features, their cosine with every
   query row resized to the window, averaged over the windows, resized to the image;
3. optional PAMR (NACLIP's default); ``softmax(logit_scale * cos)`` over the queries, each class the max over its
   queries (a class's synonyms ``cat|kitten``; background words are queries of class 0), SCLIP's area filter, and
   pixels whose top probability is below ``prob_threshold`` are background;
4. a palette PNG over ``['background', *names]``, which ``_stage.json`` records: `eval` scores it by name.

The queries are made like `text-prototypes` makes its rows (templates, background words: the same functions);
the default templates are the methods' 80 ImageNet prompts. Images of one input size run as one batch on the shared
pipeline (:mod:`vpltool.batches`), without a backward and without waiting for the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from . import io, presets
from .backbone import ClipBackbone, ModelSpec, load_backbone
from .backbone.prompts import resolve_background, resolve_templates
from .backbone.registry import load_model
from .backbone.segmentor import (  # the segmentor's pure functions, importable from here too
    class_probabilities,
    dense_logits,
    dense_mask_stage,
    dense_probabilities,
    pamr,
    query_rows,
    segment_logits,
    settings_params,
    short_side_size,
    write_dense_masks,
)
from .config import RuntimeConfig, SegmentConfig, to_params
from .data import Dataset
from .device import resolve_device, resolve_precision
from .errors import VplError

STAGE = "segment"
SYNONYM_SEPARATOR = "|"  # 'tv monitor|television|screen': one class, three queries


def class_synonyms(names: Sequence[str]) -> list[list[str]]:
    """``--classes`` entries -> per class its query names: split at ``|`` (synonyms), ``_`` read as a space
    (``potted_plant``), blanks dropped. The class is named by its entry's first name."""
    out = []
    for entry in names:
        words = [w.strip().replace("_", " ") for w in entry.split(SYNONYM_SEPARATOR) if w.strip()]
        if not words:
            raise VplError(f"--classes: {entry!r} names no class; give names like cat,dog or cat|kitten,dog")
        out.append(words)
    return out


def class_names(names: Sequence[str]) -> list[str]:
    """The class of each ``--classes`` entry: its first name, as given (the masks' and eval's name)."""
    return [entry.split(SYNONYM_SEPARATOR)[0].strip() for entry in names]


def check_queries(names: Sequence[str], cfg: SegmentConfig) -> tuple[list[str], list[str]]:
    """The classes' names, templates and background words checked before the model loads (one line each);
    returns (templates, background words)."""
    classes = ["background", *class_names(names)]
    presets.check_class_names(classes[1:], "--classes")
    templates = resolve_templates(cfg.templates)
    background = resolve_background(cfg.background, presets.preset_for(classes), [w for s in class_synonyms(names)
                                                                                 for w in s])
    return templates, background


def proxy_spec(cfg: SegmentConfig):
    """The proxy vision model of a ``--dense`` method that takes one (ProxyCLIP), its weights checked now (one line
    for a missing file or another architecture, before any model loads); None for the others."""
    from .backbone.dino import DinoSpec
    from .backbone.registry import check_model
    from .config.dense import PROXY_METHODS

    if cfg.dense not in PROXY_METHODS:
        return None
    spec = DinoSpec(cfg.proxy_model, cfg.proxy_weights)
    try:
        check_model("dino", spec)
    except VplError as e:  # the dino family names its own options
        raise VplError(str(e).replace("--dino-model", "--proxy-model").replace("--dino-weights", "--proxy-weights")
                       .replace("--affinity dino", f"--dense {cfg.dense}")) from None
    return spec


def run_segment(
    dataset: Dataset,
    out: str | Path,
    spec: ModelSpec,
    cfg: SegmentConfig = SegmentConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
) -> io.StageSummary:
    """Masks ``<out>/<id>.png`` for every image of ``dataset`` over ``['background', *names]`` (``cfg.classes``, by
    default the dataset's own), then ``_stage.json``; finished images are skipped unless ``runtime.overwrite``.
    ``backbone``: reuse a loaded CLIP of ``spec`` (its ``--dense`` is set to ``cfg.dense``)."""
    out = io.check_folder_target(out)
    names = list(cfg.classes) if cfg.classes else list(dataset.classes[1:])
    templates, background = check_queries(names, cfg)
    io.check_outputs(STAGE, {"--out": (out, "stage")}, inputs={"the dataset": dataset.root},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    proxy = proxy_spec(cfg)
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    settings = cfg.resolved()
    classes = ["background", *class_names(names)]
    params = {**to_params(cfg), "classes": names, "settings": settings_params(settings), "model": spec.identity(),
              "template_list": templates, "background_words": background}
    return dense_mask_stage(STAGE, out, params, dataset.inputs(), dataset, classes, shard, runtime, device, dtype,
                            settings, lambda: (backbone or load_backbone(spec, device)).with_dense(
                                cfg.dense, proxy=None if proxy is None else load_model("dino", proxy, device)),
                            (class_synonyms(names), templates, background), "--classes / --templates / --background",
                            on_start, on_item)


__all__ = ["STAGE", "run_segment", "proxy_spec", "settings_params", "class_synonyms", "class_names", "check_queries",
           "SYNONYM_SEPARATOR", "class_probabilities", "dense_logits", "dense_probabilities", "pamr", "query_rows",
           "segment_logits", "short_side_size", "write_dense_masks"]

"""`vpltool segment`: open-vocabulary segmentation with no label and no training: a frozen CLIP whose last block
mixes its tokens as a training-free dense method does (MaskCLIP, SCLIP, ClearCLIP, NACLIP, SC-CLIP, and ProxyCLIP
with a DINO proxy model: :mod:`vpltool.models.dense`), scored against text queries for any class names.

Per image (each method's public segmentor, :mod:`vpltool.models.dense.segmentor`):

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
pipeline (:mod:`vpltool.runtime.batches`), without a backward and without waiting for the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .. import io
from ..config import NOT_COMPARED, RuntimeConfig, SegmentConfig, presets, to_params
from ..data import Dataset
from ..device import resolve_device, resolve_precision, shard_from_env
from ..errors import VplError
from ..io.overlays import overlay_folder, write_overlays
from ..models import ClipBackbone, ModelSpec, check_tokenizer
from ..models.backbones.prompts import prompt_files, resolve_background, resolve_templates
from ..models.dense.method import proxy_spec, sam_spec  # noqa: F401 (importable from here too)
from ..models.dense.segmentor import (  # the segmentor's pure functions, importable from here too
    class_probabilities,
    dense_logits,
    dense_probabilities,
    pamr,
    query_rows,
    segment_logits,
    settings_params,
    short_side_size,
)
from ..runtime.numerics import run_numerics
from ._masks import DenseJob, dense_mask_stage

STAGE = "segment"
SYNONYM_SEPARATOR = "|"  # 'tv monitor|television|screen': one class, three queries
# options naming a file, recorded as {path, sha256} (vpltool.io.inputs) when they do: compared by content
FILE_PARAMS = ("proxy_weights", "sam_weights", "class_file")


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
    return [next((w.strip() for w in entry.split(SYNONYM_SEPARATOR) if w.strip()), "") for entry in names]


def check_queries(names: Sequence[str], cfg: SegmentConfig) -> tuple[list[str], list[str]]:
    """The classes' names, templates and background words checked before the model loads (one line each);
    returns (templates, background words)."""
    classes = ["background", *class_names(names)]
    presets.check_class_names(classes[1:], "--classes", [[w.strip() for w in entry.split(SYNONYM_SEPARATOR)
                                                          if w.strip()] for entry in names])
    templates = resolve_templates(cfg.templates)
    background = resolve_background(cfg.background, presets.preset_for(classes), [w for s in class_synonyms(names)
                                                                                 for w in s])
    return templates, background


def resolve_queries(names: Sequence[str], cfg: SegmentConfig, scored_background: bool = True,
                    benchmark: bool = False) -> tuple[list[list[str]], list[str], list[str]]:
    """``(queries per class 1..C, templates, background words)``: from ``cfg.class_file`` (the references' format,
    :mod:`vpltool.data.class_files`) when given, else from the ``--classes`` entries and ``--background``. Checked
    before the model loads. ``scored_background`` False (a benchmark without background, such as ADE20K):
    ``--background auto`` means none, since a pixel given to class 0 there is wrong wherever it is. With a method of
    concept prompts (SAM 3's: :func:`concept_prompts`) ``--background auto`` means none too: its reference prompts
    SAM 3 with its class file's lines alone, and ``--prob-threshold`` scores the background; explicit words still
    are prompts. ``benchmark``:
    the dataset is one of the benchmarks, whose class count decides whether a class file holds the background's
    line (:func:`vpltool.data.class_files.class_file_queries`).

    A class file on another dataset holds the background's line when marked or one line longer than the classes;
    a file of one unmarked line a class is taken as one without only when ``--background`` (not ``auto``) says how
    the background is scored (its words, or ``none``: ``--prob-threshold`` alone), and refused otherwise (it reads
    the same as a file with the background's line and one class line missing). The words used are recorded as the
    run's ``background_words``."""
    if cfg.class_file is None:
        if cfg.background == "auto" and (not scored_background or concept_prompts(cfg)):
            cfg = replace(cfg, background="none")
        templates, background = check_queries(names, cfg)
        return class_synonyms(names), templates, background
    from ..data.class_files import check_class_file, class_file_queries

    presets.check_class_names(class_names(names), "--classes")
    # the background's line: a benchmark's class count decides; elsewhere a mark, the count, or --background given
    given = cfg.background != "auto" or not scored_background
    synonyms, background = class_file_queries(cfg.class_file, len(names),
                                              scored_background if benchmark else (False if given else None))
    if cfg.background != "auto":  # the file has no background line (class_file_queries: else one line)
        if background:
            raise VplError(f"--background {cfg.background}: --class-file {cfg.class_file} gives the background's "
                           "queries on its first line; drop --background, or that line to use --background's")
        classes = ["background", *class_names(names)]
        background = resolve_background(cfg.background, presets.preset_for(classes), [w for s in synonyms for w in s])
    check_class_file(cfg.class_file, class_names(names), synonyms, background)
    return synonyms, resolve_templates(cfg.templates), background


def is_benchmark(dataset: Dataset) -> bool:
    """Whether ``dataset`` is one of the benchmarks (its class count decides a class file's background line)."""
    from ..data.benchmarks import BENCHMARKS

    return dataset.kind in BENCHMARKS


def scored_background(dataset: Dataset) -> bool:
    """False for a benchmark whose ground truth has no background class (VOC20, Context59, COCO-Stuff, Cityscapes,
    ADE20K): vpltool's class 0 is never right there."""
    from ..data.benchmarks import BENCHMARKS

    bench = BENCHMARKS.get(dataset.kind)
    return bench is None or bench.has_background


def concept_prompts(cfg: SegmentConfig) -> bool:
    """Whether ``cfg.dense`` prompts SAM 3 with its query words (``--dense sam3``, ``activesam``): no CLIP, no
    template."""
    from ..config.dense import DENSE_SPECS

    return DENSE_SPECS[cfg.dense].concept_prompts


def unread_clip_options(cfg: SegmentConfig, spec: ModelSpec | None) -> list[str]:
    """One sentence per CLIP option of ``spec`` given (not the default) to a method of concept prompts, which loads
    no CLIP (``--templates``: the config's own inert rule, :meth:`SegmentConfig.inert`)."""
    from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED, ignored_option
    from ..config.dense import CONCEPT_PROMPTS_WHY

    if spec is None or not concept_prompts(cfg):
        return []
    why = CONCEPT_PROMPTS_WHY.format(dense=cfg.dense)
    return [ignored_option(option, value, why) for option, value, default in
            (("--model", spec.model, DEFAULT_MODEL), ("--pretrained", spec.pretrained, DEFAULT_PRETRAINED))
            if value != default]


def dense_mixing_of(cfg: SegmentConfig):
    """The last block's mixing of ``cfg`` (:func:`vpltool.models.dense.method.method_mixing`): a
    :class:`~vpltool.models.dense.DenseMixing` when an option changes the preset, else the method's name."""
    from ..models.dense import dense_hooks
    from ..models.dense.method import method_mixing

    mixing, changed = method_mixing(cfg, dense_hooks(cfg.dense, cfg))
    return mixing if changed else cfg.dense


def check_dense(cfg: SegmentConfig, spec: ModelSpec | None = None):
    """``cfg``'s dense method resolved once and checked before any model loads: one
    :class:`~vpltool.models.dense.method.DenseMethod` (one line for a CLIP of ``spec`` whose tower does not take the
    method, or a missing or foreign proxy / SAM file)."""
    import warnings

    from ..errors import VplWarning
    from ..models.dense.method import resolve_method

    for sentence in unread_clip_options(cfg, spec):
        warnings.warn(VplWarning(sentence), stacklevel=2)
    method = resolve_method(cfg, spec)
    if spec is not None and not method.hooks.own_backbone:  # its text is encoded: the CLIP's tokenizer is made here
        check_tokenizer(spec)
    return method


def load_dense(spec: ModelSpec, method, device, backbone: ClipBackbone | None = None, dtype=None) -> ClipBackbone:
    """The CLIP of ``spec`` (or ``backbone``, already loaded) with :func:`check_dense`'s method
    (:meth:`~vpltool.models.dense.method.DenseMethod.load`; ``dtype``: the run's precision)."""
    return method.load(spec, device, backbone, dtype)


def class_list(dataset: Dataset, cfg_classes: Sequence[str] | None, option: str = "--classes") -> list[str]:
    """The classes to segment: ``cfg_classes`` when given, else the dataset's own; plain photos have none, so
    there ``--classes`` is needed (one line, before any model loads)."""
    if cfg_classes:
        return list(cfg_classes)
    if len(dataset.classes) < 2:
        raise VplError(f"{dataset.root}: plain photos name no classes; pass {option} with the names to find, "
                       "e.g. --classes cat,dog")
    return list(dataset.classes[1:])


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
    overlay: bool = False,
) -> io.StageSummary:
    """Masks ``<out>/<id>.png`` for every image of ``dataset`` over ``['background', *names]`` (``cfg.classes``, by
    default the dataset's own; plain photos need them), then ``_stage.json``; finished images are skipped unless
    ``runtime.overwrite``. ``backbone``: reuse a loaded CLIP of ``spec`` (its ``--dense`` is set to ``cfg.dense``).
    ``overlay``: also the coloured overlays ``<out>/overlays/<id>.jpg`` (:func:`vpltool.io.overlays.write_overlays`)."""
    out = io.check_folder_target(out)
    names = class_list(dataset, cfg.classes)
    synonyms, templates, background = resolve_queries(names, cfg, scored_background(dataset), is_benchmark(dataset))
    io.check_outputs(STAGE, {"--out": (out, "stage"), "--overlay": (overlay_folder(out) if overlay else None, "side")},
                     inputs={"the dataset": dataset.root}, protected=dataset.folders(), overwrite=runtime.overwrite)
    method = check_dense(cfg, spec)
    method.hooks.check_items(dataset.items)  # a method's per-image inputs, before any model loads
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    settings = cfg.resolved()
    classes = ["background", *class_names(names)]
    clip = {} if concept_prompts(cfg) else {"model": spec.identity(), "template_list": templates}  # none read
    params = {**to_params(cfg), "classes": names, "settings": settings_params(settings), **clip,
              "background_words": background,
              **({"class_queries": synonyms} if cfg.class_file is not None else {}),
              **({"mixing": _mixing_params(method.mixing)} if method.changed else {}), **method.hooks.record()}
    for key in FILE_PARAMS:  # a file by content: another path to it is the same run, other bytes are not
        if key in params:
            params[key] = io.weights_identity(params[key])
    for key, path in prompt_files(cfg.templates, cfg.background).items():  # likewise a prompt file
        if key in params:  # (a templates file a method of concept prompts does not read is not recorded)
            params[key] = io.file_identity(path.resolve())
    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, not_compared=NOT_COMPARED,
                            inputs=dataset.inputs(), shard=shard_from_env(shard),
                            numerics=run_numerics(dtype, runtime.precision, device), older=method.hooks.older_record)
    job = DenseJob(cfg.dense, classes, settings, dtype, lambda: load_dense(spec, method, device, backbone, dtype),
                   (synonyms, templates, background),
                   "--class-file / --templates" if cfg.class_file else "--classes / --templates / --background",
                   max_side_option="--max-side {}")
    summary = dense_mask_stage(folder, dataset, job, runtime, device, on_start, on_item)
    if overlay:
        write_overlays(dataset.items, out, classes, STAGE, runtime.overwrite)
    return summary


def _mixing_params(mixing) -> dict:
    from dataclasses import asdict

    return asdict(mixing)


__all__ = ["STAGE", "resolve_queries", "concept_prompts", "unread_clip_options",
           "dense_mixing_of", "proxy_spec", "sam_spec", "check_dense",
           "load_dense", "class_list", "run_segment", "settings_params", "class_synonyms", "class_names",
           "check_queries",
           "SYNONYM_SEPARATOR", "class_probabilities", "dense_logits", "dense_probabilities", "pamr", "query_rows",
           "segment_logits", "short_side_size"]

"""The stages as Python functions, with the CLI's defaults: ``vpltool.api.cam(features, prototypes, out, ...)``.

Each is a thin function over the stage's library function (the one its command calls: ``run_extract``,
``run_cam``, ...). Options are the command's, by their Python names (``--box-threshold`` -> ``box_threshold``), and
go into the stage's config dataclass (:mod:`vpltool.config`), where every default is defined once; ``device``,
``precision``, ``batch_size``, ``workers`` and ``overwrite`` go into :class:`~vpltool.config.RuntimeConfig`. An
unknown option is one line with the closest name and the options there are. ``progress``: the command's progress
bar on stderr (None, the default: on a terminal; False: never). Each returns what its library function returns (a
summary with ``done``, ``skipped``, ``seconds``; `evaluate` the scores).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from ..config import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    CamConfig,
    CrfConfig,
    DecoderConfig,
    EvalConfig,
    ExtractConfig,
    LearnPrototypesConfig,
    PredictConfig,
    ReportConfig,
    RuntimeConfig,
    SamPseudoConfig,
    SegmentConfig,
    TextPrototypesConfig,
)
from ..errors import VplError, VplWarning
from .options import keyword_line, python_lines
from .progress import hooks

PathLike = str | os.PathLike
_RUNTIME = tuple(f.name for f in fields(RuntimeConfig))


def configs(stage: str, config: type, options: dict[str, Any], runtime: bool = True) -> tuple[Any, RuntimeConfig]:
    """``(config(**its options), RuntimeConfig(**the runtime ones))`` from ``options``; one line for an option
    neither knows."""
    # a config of per-method settings (SegmentConfig) takes its methods' knobs by name too, through its of()
    own = set(config.option_names()) if hasattr(config, "option_names") else {f.name for f in fields(config)}
    allowed = own | (set(_RUNTIME) if runtime else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        from .segmenters import unknown_option

        raise unknown_option(f"vpltool.api.{stage}", unknown[0], sorted(allowed))
    from .options import typed_options

    options = typed_options(typed_options(options, config), RuntimeConfig)  # one line for a value of another type
    rt = RuntimeConfig(**{k: v for k, v in options.items() if k in _RUNTIME})
    make = config.of if hasattr(config, "of") else config
    return make(**{k: v for k, v in options.items() if k in own}), rt


def python_door(config: type, runtime: bool = True) -> Callable[[Callable], Callable]:
    """A stage function's error and warning lines as a Python caller reads them: each ``--option`` it takes as a
    keyword named by that keyword (``--batch-size`` -> ``batch_size``, ``--out`` -> ``out``;
    :func:`.options.keyword_line`), the keywords being ``config``'s options, the runtime's (``runtime``) and the
    function's own parameters. The command line's ``vpltool <stage>`` still says ``--batch-size``: only this door
    renames."""
    def wrap(fn: Callable) -> Callable:
        own = set(config.option_names()) if hasattr(config, "option_names") else {f.name for f in fields(config)}
        params = {p.name for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD}
        keywords = own | (set(_RUNTIME) if runtime else set()) | params
        named = python_lines(fn, keywords)

        @functools.wraps(fn)
        def door(*args: Any, **kwargs: Any) -> Any:
            caught: list = []
            try:
                with warnings.catch_warnings(record=True) as caught:  # under the caller's filters, as they are
                    return named(*args, **kwargs)
            finally:  # each warning said again outside, a VplWarning's line in keywords
                for w in caught:
                    message = w.message
                    if isinstance(message, VplWarning):
                        message = type(message)(keyword_line(str(message), keywords))
                    warnings.warn_explicit(message, w.category, w.filename, w.lineno, source=w.source)
        return door
    return wrap


def _spec(model: str, pretrained: str, model_config_dir: PathLike | None):
    from ..models import ModelSpec

    return ModelSpec(model=model, pretrained=pretrained,
                     config_dir=str(model_config_dir) if model_config_dir is not None else None)


@python_door(ExtractConfig)
def extract(data: PathLike, out: PathLike, *, split: str | None = None, model: str = DEFAULT_MODEL,
            pretrained: str = DEFAULT_PRETRAINED, model_config_dir: PathLike | None = None,
            labels_file: PathLike | None = None, progress: bool | None = None, **options: Any):
    """`vpltool extract DATA -o OUT`: the frozen CLIP's dense features of every image (:class:`ExtractConfig`)."""
    from ..data import open_dataset
    from ..stages.extract import run_extract

    cfg, rt = configs("extract", ExtractConfig, options)
    with hooks(progress, "extract") as (on_start, on_item):
        return run_extract(open_dataset(data, split, labels_file=labels_file), out,
                           _spec(model, pretrained, model_config_dir), cfg, rt, on_item=on_item, on_start=on_start)


@python_door(TextPrototypesConfig)
def text_prototypes(features: PathLike, out: PathLike, *, model: str | None = None, pretrained: str | None = None,
                    **options: Any):
    """`vpltool text-prototypes FEATURES -o OUT`: the classes of an extract folder and background words, encoded
    by its CLIP (:class:`TextPrototypesConfig`); ``model`` / ``pretrained``: where that CLIP lies now (its
    ``local-dir:`` folder renamed), taken when it holds the recorded weights. Returns the prototypes."""
    from ..stages.text_prototypes import extract_context, run_text_prototypes

    cfg, rt = configs("text_prototypes", TextPrototypesConfig, options)
    at = None if model is None and pretrained is None else \
        _spec(model or DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED, None)
    with hooks(False, "text-prototypes"):  # one run (no bar: one model, one pass)
        _, spec, classes, _ = extract_context(features, at)
        return run_text_prototypes(classes, out, spec, cfg, device=rt.device, source=features,
                                   overwrite=rt.overwrite)


@python_door(CamConfig)
def cam(source: PathLike, prototypes: PathLike, out: PathLike, *, split: str | None = None,
        model: str | None = None, progress: bool | None = None, **options: Any):
    """`vpltool cam SOURCE -p PROTOTYPES -o OUT`: CLIP-ES's GradCAM (+ CAA, SSR's SGC) per labelled class
    (:class:`CamConfig`). ``source``: an extract folder or a dataset. ``model``: ``local-dir:DIR``, where the CLIP
    the prototypes name lies now (its folder renamed), taken when it holds the recorded weights."""
    from ..stages.cam import run_cam

    cfg, rt = configs("cam", CamConfig, options)
    at = None if model is None else _spec(model, DEFAULT_PRETRAINED, None)
    with hooks(progress, "cam") as (on_start, on_item):
        return run_cam(source, prototypes, out, cfg, rt, split=split, on_item=on_item, on_start=on_start,
                       model_at=at)


@python_door(LearnPrototypesConfig)
def learn_prototypes(features: PathLike, cams: PathLike, text: PathLike, out: PathLike, *,
                     progress: bool | None = None, **options: Any):
    """`vpltool learn-prototypes FEATURES --cams CAMS --text TEXT -o OUT`: VPL's vision prototypes
    (:class:`LearnPrototypesConfig`)."""
    from ..stages.learn_prototypes import run_learn_prototypes

    cfg, rt = configs("learn_prototypes", LearnPrototypesConfig, options)
    with hooks(progress, "learn-prototypes", unit="iterations") as (on_start, on_item):
        return run_learn_prototypes(features, cams, text, out, cfg, rt, overwrite=rt.overwrite, on_start=on_start,
                                    on_iter=None if on_item is None else lambda i, loss: on_item(1))


@python_door(CrfConfig)
def crf(cams: PathLike, out: PathLike, *, progress: bool | None = None, **options: Any):
    """`vpltool crf CAMS -o OUT`: dense-CRF pseudo masks from a cam folder (:class:`CrfConfig`)."""
    from ..stages.crf import run_crf

    cfg, rt = configs("crf", CrfConfig, options)
    with hooks(progress, "crf") as (on_start, on_item):
        return run_crf(cams, out, cfg, rt, on_item=on_item, on_start=on_start)


@python_door(SamPseudoConfig)
def sam_pseudo(cams: PathLike, out: PathLike, *, progress: bool | None = None, **options: Any):
    """`vpltool sam-pseudo CAMS -o OUT`: pseudo masks from SAM's masks given the CAM's classes, or SAM 3 prompted
    with the labels (:class:`SamPseudoConfig`)."""
    from ..stages.sam_pseudo import run_sam_pseudo

    cfg, rt = configs("sam_pseudo", SamPseudoConfig, options)
    with hooks(progress, "sam-pseudo") as (on_start, on_item):
        return run_sam_pseudo(cams, out, cfg, rt, on_item=on_item, on_start=on_start)


@python_door(DecoderConfig)
def train_decoder(pseudo: PathLike, prototypes: PathLike, out: PathLike, *, resume: bool = False,
                  progress: bool | None = None, **options: Any):
    """`vpltool train-decoder PSEUDO -p PROTOTYPES -o OUT`: the segmentation decoder on the pseudo masks
    (:class:`DecoderConfig`)."""
    from ..stages.train_decoder import run_train_decoder

    cfg, rt = configs("train_decoder", DecoderConfig, options)
    with hooks(progress, "train-decoder", unit="iterations") as (on_start, on_item):
        return run_train_decoder(pseudo, prototypes, out, cfg, rt, resume=resume, on_start=on_start,
                                 on_iter=None if on_item is None else lambda i, rec: on_item(1))


@python_door(PredictConfig)
def predict(decoder: PathLike, out: PathLike, *, data: PathLike | None = None, split: str | None = None,
            model: str | None = None, progress: bool | None = None, **options: Any):
    """`vpltool predict DECODER -o OUT`: the decoder's masks (:class:`PredictConfig`); ``data`` / ``split``: other
    images than the decoder's dataset; ``model``: ``local-dir:DIR``, where the decoder's CLIP lies now (its folder
    renamed), taken when it holds the recorded weights."""
    from ..stages.predict import run_predict

    cfg, rt = configs("predict", PredictConfig, options)
    at = None if model is None else _spec(model, DEFAULT_PRETRAINED, None)
    with hooks(progress, "predict") as (on_start, on_item):
        return run_predict(decoder, data, split, out, cfg, rt, on_item=on_item, on_start=on_start, model_at=at)


@python_door(EvalConfig, runtime=False)
def evaluate(folder: PathLike, *, data: PathLike | None = None, split: str | None = None,
             json_out: PathLike | None = None, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """`vpltool eval FOLDER`: mIoU and per-class IoU of a mask or CAM folder against ground truth
    (:class:`EvalConfig`). Returns the scores (``miou`` in [0, 1], ``iou`` per class, ...)."""
    from ..stages.eval import run_eval

    cfg, _ = configs("evaluate", EvalConfig, options, runtime=False)
    with hooks(False, "eval"):  # one run (no bar)
        return run_eval(folder, data=data, split=split, cfg=cfg, json_out=json_out, overwrite=overwrite)[0]


@python_door(SegmentConfig)
def segment(data: PathLike, out: PathLike, classes: str | Sequence[str] | None = None, *,
            method: str | None = None, split: str | None = None, model: str = DEFAULT_MODEL,
            pretrained: str = DEFAULT_PRETRAINED, model_config_dir: PathLike | None = None,
            checkpoint: PathLike | None = None, overlay: bool = False, progress: bool | None = None,
            **options: Any):
    """`vpltool segment DATA --classes NAMES -o OUT`: open-vocabulary masks of a photo, a folder of photos or a
    dataset (``classes`` None: the dataset's own) by a dense CLIP ``method`` (``dense=``, as ``--dense`` names it;
    :class:`SegmentConfig`), or a text-supervised family's checkpoint: ``method=NAME`` with ``checkpoint=FILE``
    (``NAME=FILE``, as ``--pgseg FILE``) or ``model="NAME:FILE"`` (``pgseg``; options ``bg_thresh``,
    ``short_side``, ``slide_crop``, ``slide_stride``, ``background``). ``overlay``: also
    ``OUT/overlays/<id>.jpg``."""
    from ..data import open_dataset
    from .options import model_names
    from .segmenters import class_entries, method_option, segmenting

    method, checkpoint = method_option("vpltool.api.segment", method, checkpoint, options)
    model, pretrained = model_names(model, pretrained)
    family, method, checkpoint = segmenting(method, model, checkpoint)  # model="NAME:FILE": checkpoint=FILE
    entries = None if classes is None else class_entries(classes)
    if family != "clip":  # a text-supervised family's checkpoint
        return _segment_text(family, open_dataset(data, split), out, entries, checkpoint, overlay, options, progress)
    cfg, rt = configs("segment", SegmentConfig, {**options, "dense": method,  # the options before the data
                                                 "classes": None if entries is None else tuple(entries)})
    dataset = open_dataset(data, split)
    from ..stages.segment import run_segment

    with hooks(progress, f"segment ({method})") as (on_start, on_item):
        return run_segment(dataset, out, _spec(model, pretrained, model_config_dir), cfg, rt, overlay=overlay,
                           on_item=on_item, on_start=on_start)


def _segment_text(family: str, dataset, out, entries, checkpoint, overlay: bool, options: dict,
                  progress: bool | None):
    from ..models.registry import TEXT_FAMILIES
    from ..stages.segment import class_list
    from ..stages.segment_text import run_segment_text
    from .segmenters import text_options

    if checkpoint is None:
        raise VplError(f"vpltool.api.segment(method={family!r}): pass checkpoint=FILE "
                       f"({TEXT_FAMILIES[family].files})")
    where = f"vpltool.api.segment(method={family!r})"
    o = text_options(family, {k: v for k, v in options.items() if k not in _RUNTIME}, where)
    rt = RuntimeConfig(**{k: v for k, v in options.items() if k in _RUNTIME})
    with hooks(progress, f"segment ({family})") as (on_start, on_item):
        return run_segment_text(dataset, out, family, checkpoint, class_list(dataset, entries), rt,
                                bg_thresh=o["bg_thresh"], short_side=o["short_side"],
                                slide=(o["slide_crop"], o["slide_stride"]), background=o["background"],
                                overlay=overlay, on_start=on_start, on_item=on_item)


@python_door(ReportConfig, runtime=False)
def report(run: PathLike, out: PathLike | None = None, *, workers: int = 0, progress: bool | None = None,
           **options: Any):
    """`vpltool report RUN`: the static HTML report of a run folder, or of one `segment` folder
    (:class:`ReportConfig`). Returns its summary (``index``: the page)."""
    from ..stages.report import run_report

    cfg, _ = configs("report", ReportConfig, options, runtime=False)
    with hooks(progress, "report") as (on_start, on_item):
        return run_report(run, out, cfg, workers=workers, on_start=on_start, on_item=on_item)


def doctor(dense: str | Sequence[str] | None = None, model: str | Sequence[str] | None = None, *,
           pretrained: str = DEFAULT_PRETRAINED, **options: Any) -> list:
    """`vpltool doctor`: every weights file the ``dense`` methods (a name or several; None and no ``model``: every
    method) and each ``model`` (``"pgseg:FILE"``, or the CLIP the dense methods read, with ``pretrained``) would
    load, as :class:`vpltool.stages.doctor.WeightsFile` rows (path, ``sha256``, ``size``, ``present``, ``get``: how
    to get an absent one); ``options`` the methods' options by field name (``sam3_weights=``, ``sam_weights=``,
    ``proxy_weights=``, ``region_masks=``, ...). Loads no model; returns the rows, absent ones included (the command
    exits 2 for those)."""
    from ..models.registry import model_family
    from ..stages.doctor import doctor as run_doctor

    dense = [dense] if isinstance(dense, str) else dense
    models = [model] if isinstance(model, str) else list(model or ())
    clips = [m for m in models if model_family(m)[0] == "clip"]
    if len(clips) > 1:
        raise VplError(f"model: {', '.join(clips)}: one CLIP at most (the one the --dense methods read)")
    clip = _spec(clips[0], pretrained, None) if clips else None
    texts = [m for m in models if m not in clips]
    return run_doctor(dense, texts, clip, **options)


__all__ = ["extract", "text_prototypes", "cam", "learn_prototypes", "crf", "sam_pseudo", "train_decoder", "predict",
           "evaluate",
           "segment", "report", "doctor", "configs", "python_door"]

"""``vpltool.segmenter(...)``: segment one photo by class names from Python, with the per-image code `segment` runs.

A training-free dense CLIP method (``naclip``, ``maskclip``, ... the names of ``segment --dense``) or the checkpoint
of a text-supervised family (PGSeg / GroupViT: method ``pgseg`` with ``checkpoint=FILE``, or ``model="pgseg:FILE"``
as ``segment --model``; any family's NAME:FILE) is loaded once;
each call takes a photo and class names and returns a :class:`Segmentation`. The settings are `segment`'s
(:class:`vpltool.config.SegmentConfig`, defined once there) and the work per image is the CLI's own function
(:func:`vpltool.models.segmentor.scores_batch`, :func:`vpltool.stages.segment_text.image_scores`), so a label map from
here equals the mask `segment` writes for the same image and names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED, RuntimeConfig, SegmentConfig
from ..errors import VplError


@dataclass(frozen=True)
class Segmentation:
    """One photo segmented.

    Attributes:
        labels: ``[H, W]`` int64 label map at the photo's size: 0 = background, ``c`` = ``classes[c]``.
        scores: ``[C + 1, H, W]`` float32 per-class scores (dense methods: probabilities in [0, 1], each class the
            max over its synonyms; PGSeg: its zero-shot logits), index 0 = background.
        classes: ``('background', *names)``, the names as given (a synonym list ``cat|kitten`` by its first).
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: tuple[str, ...]


def class_entries(classes: str | Sequence[str]) -> list[str]:
    """``"cat|kitten,dog"`` or ``["cat|kitten", "dog"]`` -> the ``--classes`` entries ``["cat|kitten", "dog"]``."""
    entries = classes.split(",") if isinstance(classes, str) else list(classes)
    entries = [str(e).strip() for e in entries if str(e).strip()]
    if not entries:
        raise VplError("classes: give at least one class name, e.g. ['cat', 'dog'] or 'cat,dog'")
    return entries


def as_rgb(image: Any) -> np.ndarray:
    """A photo as ``[H, W, 3]`` uint8 RGB: a path (decoded as every stage decodes it, EXIF orientation applied), a
    PIL image (any mode, its EXIF orientation applied), or an ``[H, W, 3]`` uint8 array (used as is)."""
    from .. import io

    if isinstance(image, (str, os.PathLike)):
        return io.load_image(Path(image))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise VplError(f"image: an array of {image.dtype} {tuple(image.shape)}; give [H, W, 3] uint8 RGB")
        return image
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        from ..io.images import _to_rgb

        return _to_rgb(ImageOps.exif_transpose(image))
    raise VplError(f"image: a {type(image).__name__}; give a path, a PIL image or an [H, W, 3] uint8 array")


def photo_item(image: Any):
    """The dataset item a method's ``extra_inputs`` hook gets for a photo given to a segmenter: ``id`` the file's
    stem (``image`` its path) for a path, else ``"image"`` (``image`` None)."""
    from ..data.common import Item

    if isinstance(image, (str, os.PathLike)):
        return Item(Path(image).stem, Path(image), ())
    return Item("image", None, ())  # type: ignore[arg-type]


class Segmenter:
    """A loaded segmenter: ``seg(image, classes)`` -> :class:`Segmentation`. Made by :func:`segmenter`."""

    method: str

    def __call__(self, image: Any, classes: str | Sequence[str]) -> Segmentation:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<vpltool segmenter {self.method!r} on {self.device}>"


class DenseSegmenter(Segmenter):
    """A frozen CLIP with a training-free dense last block (``segment --dense METHOD``)."""

    def __init__(self, spec, cfg: SegmentConfig, runtime: RuntimeConfig):
        from ..device import resolve_device, resolve_precision
        from ..stages.segment import check_dense, load_dense

        self.method, self.cfg, self.settings = cfg.dense, cfg, cfg.resolved()
        self.dense = check_dense(cfg)  # resolved once; one line for a missing proxy / SAM file, before any load
        self.device = resolve_device(runtime.device)
        self.dtype = resolve_precision(runtime.precision, self.device)
        self.model = load_dense(spec, self.dense, self.device)
        self._queries: dict[tuple[str, ...], tuple] = {}

    def queries(self, entries: list[str]):
        """The query rows of ``entries`` as `segment` makes them (templates, background words), cached."""
        from ..models.segmentor import query_rows
        from ..stages.segment import resolve_queries

        key = tuple(entries)
        if key not in self._queries:
            rows = query_rows(self.model, *resolve_queries(entries, self.cfg))
            self._queries[key] = tuple(t.to(self.model.device) for t in rows)
        return self._queries[key]

    def __call__(self, image: Any, classes: str | Sequence[str]) -> Segmentation:
        from ..models.segmentor import batch_extras, dense_input, scores_batch, short_side_size
        from ..stages.segment import class_names

        entries = class_entries(classes)
        text, query_class = self.queries(entries)
        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        size = short_side_size(h, w, self.settings.short_side)
        x = dense_input(self.model.preprocessor, rgb, size, self.dense.hooks.extra_inputs(photo_item(image), rgb))
        pixels = self.model.pixels(x["pixels"][None], size)
        probs, labels = scores_batch(self.model, pixels, text, query_class, len(entries) + 1, self.settings,
                                     [(h, w)], self.dtype, batch_extras({k: [v] for k, v in x.items()}, 1))[0]
        return Segmentation(labels.cpu().numpy().astype(np.int64), probs.float().cpu().numpy(),
                            ("background", *class_names(entries)))


class TextSegmenter(Segmenter):
    """A text-supervised family's checkpoint segmenting by class names (``segment --model NAME:FILE``; PGSeg /
    GroupViT by its group maps). ``family``: a name of :data:`vpltool.models.registry.TEXT_FAMILIES`."""

    def __init__(self, family: str, checkpoint: str | os.PathLike, runtime: RuntimeConfig, *, bg_thresh: float,
                 short_side: int, slide: tuple[int, int], background: str):
        from ..device import resolve_device
        from ..stages.segment_text import check_options, text_family_of

        self.family = text_family_of(family)
        check_options(bg_thresh, short_side, slide, self.family.TrainConfig.ZERO_SHOT.min_side)
        self.method, self.checkpoint = family, Path(checkpoint)
        self.bg_thresh, self.short_side, self.slide, self.background = bg_thresh, short_side, slide, background
        self.family.check_checkpoint(self.checkpoint)  # one line for a missing file or another model's
        self.device = resolve_device(runtime.device)
        self.model = self.family.load_model(self.checkpoint, self.device)
        self._queries: dict[tuple[str, ...], tuple] = {}

    def __call__(self, image: Any, classes: str | Sequence[str]) -> Segmentation:
        from ..stages.segment_text import image_scores, text_names, text_queries

        entries = tuple(class_entries(classes))
        if entries not in self._queries:
            names, bg_words = text_names(entries, self.background)
            self._queries[entries] = names, text_queries(self.family, self.model, names, bg_words, self.device)
        names, text = self._queries[entries]
        logits, labels = image_scores(self.family, self.model, as_rgb(image), text, len(names), self.bg_thresh,
                                      self.short_side, self.slide, self.device)
        return Segmentation(labels.cpu().numpy().astype(np.int64), logits.cpu().numpy(), ("background", *names))


PgsegSegmenter = TextSegmenter  # its name before other text-supervised families


_RUNTIME = ("device", "precision")


def segmenter(method: str | None = None, *, model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED,
              checkpoint: str | os.PathLike | None = None, model_config_dir: str | os.PathLike | None = None,
              **options: Any) -> Segmenter:
    """Load a segmenter once; call it on photos.

    Args:
        method: a dense CLIP method of ``segment --dense`` (``maskclip``, ``sclip``, ``clearclip``, ``naclip``,
            ``sc-clip``, ``proxyclip``, ``cass``, ``trident``, ``none``; default `segment`'s), or a text-supervised
            family's name (``pgseg``: a PGSeg / GroupViT checkpoint, ``checkpoint=FILE``).
        model, pretrained: the CLIP, as `segment`'s ``--model`` / ``--pretrained`` (``ViT-B-16`` / ``openai``;
            ``vpltool-toy`` / ``none``: the demo world's toy CLIP); or ``model="pgseg:FILE"`` (``groupvit:FILE``),
            as `segment --model pgseg:FILE`: the same as ``segmenter(NAME, checkpoint=FILE)``.
        checkpoint: a text-supervised family's file (PGSeg: `train-pgseg`'s ``pgseg.safetensors`` or a GroupViT /
            PGSeg ``.pth``).
        options: `segment`'s options by their Python names, with its defaults: for a dense method the fields of
            :class:`vpltool.config.SegmentConfig` (``templates``, ``background``, ``prob_threshold``,
            ``short_side``, ``slide_crop``, ``proxy_weights``, ...); for a text-supervised family ``bg_thresh``,
            ``short_side``, ``slide_crop``, ``slide_stride``, ``background`` (its defaults: its ``ZERO_SHOT``);
            and ``device`` / ``precision`` (``auto``).

    Raises:
        VplError: an unknown method or option, or a missing or foreign weights file: one line, before any load.
    """
    runtime = RuntimeConfig(**{k: options.pop(k) for k in _RUNTIME if k in options})
    family, method, checkpoint = segmenting(method, model, checkpoint)
    if family != "clip":  # a text-supervised family's checkpoint
        return _text_segmenter(family, method, checkpoint, runtime, options)
    if checkpoint is not None:
        raise VplError(f"checkpoint: a text-supervised family's file (pgseg, ...); method {method!r} takes model= "
                       "and pretrained=")
    known = {f.name for f in fields(SegmentConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise VplError(f"segmenter({method!r}): unknown option {unknown[0]!r}; the options are segment's: "
                       f"{', '.join(sorted(known - {'dense'}))}")
    if "classes" in options:
        raise VplError("segmenter: the class names are given per call, seg(image, ['cat', 'dog'])")
    from ..models import ModelSpec

    cfg = SegmentConfig(dense=method, **options)  # an unknown method: one line listing them
    spec = ModelSpec(model=model, pretrained=pretrained,
                     config_dir=str(model_config_dir) if model_config_dir is not None else None)
    return DenseSegmenter(spec, cfg, runtime)


def segmenting(method: str | None, model: str, checkpoint: str | os.PathLike | None) -> tuple[str, str, Any]:
    """``(method, model, checkpoint)`` as :func:`segmenter` takes them -> ``(family, method, checkpoint)``:
    ``model="NAME:FILE"`` (:func:`vpltool.models.registry.model_family`) is ``method=NAME, checkpoint=FILE``;
    a dense method beside it, or another checkpoint, is one line. ``method`` None: `segment`'s default method."""
    from ..models.registry import model_family, segmenter_family

    family, spec = model_family(model)
    if family == "clip":
        method = SegmentConfig.dense if method is None else method
        return segmenter_family(method), method, checkpoint
    if method is not None and segmenter_family(method) != family:
        raise VplError(f"model={model!r} is a {family} checkpoint, which segments as method {family!r}; drop method "
                       f"{method!r} (a dense CLIP method)")
    if checkpoint is not None and os.path.abspath(checkpoint) != os.path.abspath(spec):
        raise VplError(f"model={model!r} and checkpoint={str(checkpoint)!r}: two checkpoints; give one "
                       f"(model='{family}:FILE' is checkpoint=FILE)")
    return family, method or model.partition(":")[0].lower(), spec


def text_options(family: str, options: dict, where: str) -> dict:
    """A text-supervised family's zero-shot options (``bg_thresh``, ``short_side``, ``slide_crop``,
    ``slide_stride``, ``background``) over its defaults (its configuration's ``ZERO_SHOT``); an unknown option is
    one line naming them."""
    from ..models.registry import text_config

    defaults = text_config(family).ZERO_SHOT.options()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise VplError(f"{where}: unknown option {unknown[0]!r}; the options are {', '.join(defaults)}, device, "
                       "precision")
    return {**defaults, **options}


def _text_segmenter(family: str, method: str, checkpoint, runtime: RuntimeConfig, options: dict) -> TextSegmenter:
    from ..models.registry import TEXT_FAMILIES

    if checkpoint is None:
        raise VplError(f"segmenter({method!r}): pass checkpoint=FILE ({TEXT_FAMILIES[family].files})")
    o = text_options(family, options, f"segmenter({method!r})")
    return TextSegmenter(family, checkpoint, runtime, bg_thresh=o["bg_thresh"], short_side=o["short_side"],
                         slide=(o["slide_crop"], o["slide_stride"]), background=o["background"])


__all__ = ["Segmentation", "Segmenter", "DenseSegmenter", "TextSegmenter", "PgsegSegmenter", "segmenter", "segmenting",
           "as_rgb", "class_entries"]

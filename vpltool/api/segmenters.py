"""``vpltool.segmenter(...)``: segment photos by class names from Python, with the per-image code `segment` runs.

A training-free dense CLIP method (``naclip``, ``maskclip``, ... the names of ``segment --dense``;
:func:`vpltool.list_methods`) or the checkpoint of a text-supervised family (PGSeg / GroupViT: method ``pgseg`` with
``checkpoint=FILE``, or ``model="pgseg:FILE"`` as ``segment --model``; any family's NAME:FILE) is loaded once; each
call takes one photo or a list and class names and returns a :class:`Segmentation` or a list of them (numpy, or
torch with ``return_tensors="pt"``), :meth:`Segmenter.map` walks a folder or an iterable lazily, with a progress
bar, and :meth:`Segmenter.embed` keeps a photo's image side for calls with other class names
(:mod:`vpltool.api.embed`). The settings are `segment`'s (:class:`vpltool.config.SegmentConfig`, defined once
there; the segmentor's may change per call, :data:`vpltool.api.options.PER_CALL`) and the work per image is the
CLI's own function (:func:`vpltool.models.dense.segmentor.scores_batch`,
:func:`vpltool.stages.segment_text.image_scores`), so a label map from here equals the mask `segment` writes for the
same image and names.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED, RuntimeConfig, SegmentConfig
from ..errors import VplError
from .base import Segmenter, checked_batch_size, segmentation, warn_anew
from .embed import Embedding
from .images import as_rgb, name_of, photo_item
from .options import (
    ALIASES,
    PER_CALL,
    RUNTIME,
    TEXT_ALIASES,
    TEXT_PER_CALL,
    call_options,
    class_entries,
    dense_options,
    device_name,
    method_option,
    model_names,
    python_lines,
    segmenting,
    text_options,
    torch_dtype_pointer,
    typed_options,
    unknown_option,
)
from .results import Segmentation


class DenseSegmenter(Segmenter):
    """A frozen CLIP with a training-free dense last block (``segment --dense METHOD``)."""

    def __init__(self, spec, cfg: SegmentConfig, runtime: RuntimeConfig):
        from ..device import resolve_device, resolve_precision
        from ..stages.segment import check_dense, load_dense

        self.method, self.cfg, self.settings = cfg.dense, cfg, cfg.resolved()
        self.dense = check_dense(cfg, spec)  # resolved once; one line for a missing proxy / SAM file, before any load
        self.precision, self.batch_size = runtime.precision, runtime.batch_size
        self.device = resolve_device(runtime.device)
        self.dtype = resolve_precision(runtime.precision, self.device)
        self.backbone = load_dense(spec, self.dense, self.device, dtype=self.dtype)
        self._queries: dict[tuple[str, ...], tuple] = {}
        self._words: dict[tuple[str, ...], tuple] = {}

    @property
    def model(self):
        """The CLIP (open_clip's ``nn.Module``) whose last block the method mixes; ProxyCLIP's and CASS's DINO and
        Trident's SAM are ``seg.backbone.proxy.model`` and ``seg.backbone.sam.model``."""
        return self.backbone.model

    def _to(self, device: str) -> DenseSegmenter:
        from ..device import resolve_device, resolve_precision

        self.device = resolve_device(device)
        self.dtype = resolve_precision(self.precision, self.device)
        self.backbone = self.backbone.to(self.device)
        self._queries = {k: tuple(t.to(self.device) for t in v) for k, v in self._queries.items()}
        return self

    def _ready(self):
        """The backbone, following its model where ``seg.model.to(...)`` moved it alone."""
        weights = next(self.backbone.model.parameters())
        if weights.device != self.backbone.device:
            self._to(str(weights.device))
        return self.backbone

    def _options(self, options: dict) -> tuple:
        """``(DenseSettings, batch size)`` of a call: the segmenter's, with the call's :data:`PER_CALL` options
        checked as `segment` checks them (:class:`SegmentConfig`)."""
        given = typed_options(call_options(options, (*PER_CALL, "batch_size"), ALIASES,
                                           f"seg(...) with method {self.method!r}"), SegmentConfig)
        batch = checked_batch_size(given.pop("batch_size")) if "batch_size" in given else self.batch_size
        return (replace(self.cfg, **given).resolved() if given else self.settings), batch

    def queries(self, entries: list[str]):
        """The query rows of ``entries`` as `segment` makes them (templates, background words), cached; a new list
        of names is told of the words the toy CLIP does not know, as a command is."""
        from ..models.dense.segmentor import query_rows

        key = tuple(entries)
        if key not in self._queries:
            warn_anew(self.backbone.tokenizer)
            rows = query_rows(self.backbone, *self.query_words(entries))
            self._queries[key] = tuple(t.to(self.backbone.device) for t in rows)
        return self._queries[key]

    def query_words(self, entries: list[str]) -> tuple:
        """``(names per class, templates, background words)`` of ``entries``, resolved and checked as `segment`
        does before its model loads (cached: a class file's warning is said once)."""
        from ..stages.segment import resolve_queries

        key = tuple(entries)
        if key not in self._words:
            self._words[key] = resolve_queries(entries, self.cfg)
        return self._words[key]

    def _inputs(self, bb, rgbs: list, given: list, index: list[int], size: tuple[int, int]) -> tuple:
        """``([B, 3, H, W]`` pixels of the photos ``index`` at input ``size``, each one's extra inputs by key)."""
        from ..models.dense.segmentor import dense_input

        xs = [dense_input(bb.preprocessor, rgbs[i], size,
                          self.dense.hooks.extra_inputs(photo_item(given[i][1]), rgbs[i])) for i in index]
        extras = [{k: v for k, v in x.items() if k != "pixels"} for x in xs]  # a method's own, by key
        return bb.pixels([x["pixels"] for x in xs], size), extras

    def _embed(self, photo: Any, rgb: Any, run: tuple) -> Embedding:
        import torch

        from ..device import autocast
        from ..models.dense.bands import check_photo_memory, working_size
        from ..models.dense.segmentor import short_side_size
        from .embed import embeddable, image_side, kept_features, refuse

        if not embeddable(self.dense.hooks):
            raise refuse(self.method)
        settings, _ = run
        h, w = rgb.shape[:2]
        check_photo_memory([name_of(photo)], [(h, w)], 1, settings, scores=1,
                           max_side_option="vpltool.segmenter(..., max_side={})")
        bb = self._ready()
        size = short_side_size(h, w, settings.short_side, settings.long_side)
        pixels, extras = self._inputs(bb, [rgb], [(None, photo)], [0], size)
        named = photo if isinstance(photo, (str, os.PathLike)) else None
        emb = Embedding(named, rgb, self.method, owner=self._owner())
        with torch.no_grad(), autocast(bb.device, self.dtype):
            own = self.dense.hooks.image_side(bb, extras[0])  # a method's own image side (SAM 3's encoder)
        if own is not None:
            emb.kept.extend(own)
            return emb
        with kept_features(bb, emb.kept, record=True):
            image_side(bb, pixels, [working_size(h, w, settings.max_side)], settings, extras, self.dtype)
        return emb

    def _owner(self) -> tuple:
        return id(self.backbone), str(self.device), str(self.dtype)

    def _run(self, rgbs: list, given: list, entries: list[str], tensors: bool, run: tuple,
             embedding: Embedding | None = None) -> list[Segmentation]:
        """Photos of one input size (`segment`'s short side) in batches of the batch size, as `segment` runs
        them (:func:`~vpltool.models.dense.segmentor.scores_batch`; out of device memory, the batches halve); an
        embedding's photo alone, its kept features answering its windows (:func:`~vpltool.api.embed.kept_features`)."""
        from contextlib import nullcontext

        from ..models.dense.bands import check_photo_memory
        from ..models.dense.segmentor import scores_batch, short_side_size
        from ..runtime.batches import BatchRunner, plan_batches, resolve_batch_size
        from ..stages._masks import Producer, check_output
        from ..stages.segment import class_names
        from .embed import check_owner, kept_features

        settings, batch_size = run
        classes = ("background", *class_names(entries))
        producer = Producer.dense(self.method, len(classes))
        names = [name_of(photo, i) for i, photo in given]
        sizes = [tuple(rgb.shape[:2]) for rgb in rgbs]
        synonyms, _, background = self.query_words(entries)  # as `segment` counts them, before anything runs
        check_photo_memory(names, sizes, sum(map(len, synonyms)) + len(background), settings,
                           scores=len(classes), max_side_option="vpltool.segmenter(..., max_side={})")
        bb = self._ready()
        if embedding is not None:
            check_owner(embedding, self._owner())
        text, query_class = self.queries(entries)
        inputs = [short_side_size(h, w, settings.short_side, settings.long_side) for h, w in sizes]
        out: list[Any] = [None] * len(rgbs)
        limit = resolve_batch_size(batch_size, bb.device, 1)
        kept = nullcontext() if embedding is None else kept_features(bb, embedding.kept, record=False)
        with kept:
            for index in plan_batches(inputs, limit):
                pixels, extras = self._inputs(bb, rgbs, given, index, inputs[index[0]])
                runner = BatchRunner(limit, describe=lambda j, index=index: f"{names[index[j]]} "
                                     f"({sizes[index[j]][0]}x{sizes[index[j]][1]})",
                                     advice="pass a smaller short_side or slide_crop, or a smaller batch_size")

                def chunk(part: slice, index=index, pixels=pixels, extras=extras) -> list:
                    return scores_batch(bb, pixels[part], text, query_class, len(classes), settings,
                                        [sizes[i] for i in index[part]], self.dtype, extras[part])

                done = [pair for part in runner(len(index), chunk) for pair in part]
                for i, (probs, labels) in zip(index, done):
                    check_output(producer, names[i], sizes[i], probs, labels)  # as a mask `segment` writes
                    out[i] = segmentation(probs, labels, classes, tensors, rgbs[i])
        return out


class TextSegmenter(Segmenter):
    """A text-supervised family's checkpoint segmenting by class names (``segment --model NAME:FILE``; PGSeg /
    GroupViT by its group maps). ``family``: a name of :data:`vpltool.models.registry.TEXT_FAMILIES`."""

    def __init__(self, family: str, checkpoint: str | os.PathLike, runtime: RuntimeConfig, *, bg_thresh: float,
                 short_side: int, slide: tuple[int, int], background: str):
        from ..device import resolve_device
        from ..models.registry import load_model
        from ..stages.segment_text import check_options, text_family_of

        self.family = text_family_of(family)
        check_options(bg_thresh, short_side, slide, self.family.TrainConfig.ZERO_SHOT.min_side)
        self.method, self.checkpoint = family, Path(checkpoint)
        self.bg_thresh, self.short_side, self.slide, self.background = bg_thresh, short_side, slide, background
        self.family.check_checkpoint(self.checkpoint)  # one line for a missing file or another model's
        self.device = resolve_device(runtime.device)
        self.batch_size = runtime.batch_size
        self.model = load_model(family, self.checkpoint, self.device)  # the registry's door: every weight checked
        self._queries: dict[tuple[str, ...], tuple] = {}

    def _to(self, device: str) -> TextSegmenter:
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.model.to(self.device)
        self._queries = {k: (names, text.to(self.device)) for k, (names, text) in self._queries.items()}
        return self

    def _options(self, options: dict) -> tuple:
        """``(bg_thresh, batch size)`` of a call (one photo a forward, as `segment --model NAME:FILE`: the batch
        size is checked and kept, not used)."""
        from ..stages.segment_text import check_options

        given = call_options(options, (*TEXT_PER_CALL, "batch_size"), TEXT_ALIASES,
                             f"seg(...) with a {self.method} checkpoint")
        batch = checked_batch_size(given.pop("batch_size")) if "batch_size" in given else self.batch_size
        bg_thresh = given.get("bg_thresh", self.bg_thresh)
        check_options(bg_thresh, self.short_side, self.slide, self.family.TrainConfig.ZERO_SHOT.min_side)
        return bg_thresh, batch

    def _embed(self, photo: Any, rgb: Any, run: tuple) -> Embedding:
        from ..models.registry import TEXT_FAMILIES
        from .embed import refuse

        raise refuse(self.method, TEXT_FAMILIES[self.family.name].title)

    def _run(self, rgbs: list, given: list, entries: list[str], tensors: bool, run: tuple,
             embedding: Embedding | None = None) -> list[Segmentation]:
        from ..stages._masks import Producer, check_output
        from ..stages.segment_text import image_scores, text_names, text_queries

        weights = next(self.model.parameters())
        if weights.device != self.device:  # seg.model.to(...) alone: follow it
            self._to(str(weights.device))
        key = tuple(entries)
        if key not in self._queries:
            classes, bg_words = text_names(key, self.background)
            self._queries[key] = classes, text_queries(self.family, self.model, classes, bg_words, self.device)
        classes, text = self._queries[key]
        producer = Producer.text_family(self.family.name, self.checkpoint, len(classes) + 1)
        out = []
        for (i, photo), rgb in zip(given, rgbs):  # one photo a forward, as `segment --model NAME:FILE` runs them
            logits, labels = image_scores(self.family, self.model, rgb, text, len(classes), run[0],
                                          self.short_side, self.slide, self.device)
            check_output(producer, name_of(photo, i), rgb.shape[:2], None, labels)  # as a mask `segment` writes
            out.append(segmentation(logits, labels, ("background", *classes), tensors, rgb))
        return out


PgsegSegmenter = TextSegmenter  # its name before other text-supervised families


@python_lines
def segmenter(method: str | None = None, *, model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED,
              checkpoint: str | os.PathLike | None = None, model_config_dir: str | os.PathLike | None = None,
              **options: Any) -> Segmenter:
    """Load a segmenter once; call it on photos.

    Args:
        method: a dense CLIP method of ``segment --dense`` (one of :data:`vpltool.config.dense.DENSE_CHOICES`,
            the spec table's names: ``naclip``, ``proxyclip``, ...; default `segment`'s), or a text-supervised
            family's name (``pgseg``: a PGSeg / GroupViT checkpoint, ``checkpoint=FILE``): :func:`vpltool.list_methods`.
            ``dense=`` is the same, as ``--dense`` names it; ``pgseg=FILE`` is ``method`` pgseg with
            ``checkpoint=FILE``, as ``--pgseg FILE``.
        model, pretrained: the CLIP, as `segment`'s ``--model`` / ``--pretrained`` (``ViT-B-16`` / ``openai``;
            ``vpltool-toy`` / ``none``: the demo world's toy CLIP; :func:`vpltool.list_models`); or
            ``model="pgseg:FILE"`` (``groupvit:FILE``), as `segment --model pgseg:FILE`: the same as
            ``segmenter(NAME, checkpoint=FILE)``.
        checkpoint: a text-supervised family's file (PGSeg: `train-pgseg`'s ``pgseg.safetensors`` or a GroupViT /
            PGSeg ``.pth``).
        options: `segment`'s options by their Python names, with its defaults: for a dense method the fields of
            :class:`vpltool.config.SegmentConfig` (``templates``, ``background``, ``prob_threshold``,
            ``short_side``, ``slide_crop``, ``proxy_weights``, ...); for a text-supervised family ``bg_thresh``,
            ``short_side``, ``slide_crop``, ``slide_stride``, ``background`` (its defaults: its ``ZERO_SHOT``);
            and ``device`` (``auto``, ``cpu``, ``cuda:N``, a GPU's index, ``-1`` = the CPU, a ``torch.device``),
            ``precision`` (``auto``; transformers' ``torch_dtype``), ``batch_size`` (photos per forward;
            `segment`'s: 1 on a CPU, 32 on CUDA).

    Raises:
        VplError: an unknown method or option (with the closest name), or a missing or foreign weights file: one
            line, before any load.
    """
    torch_dtype_pointer(options)
    method, checkpoint = method_option("segmenter", method, checkpoint, options)
    model, pretrained = model_names(model, pretrained)
    if "device" in options:
        options["device"] = device_name(options["device"])
    options = typed_options(typed_options(options, SegmentConfig), RuntimeConfig)
    runtime = RuntimeConfig(**{k: options.pop(k) for k in RUNTIME if k in options})
    family, method, checkpoint = segmenting(method, model, checkpoint)
    if family != "clip":  # a text-supervised family's checkpoint
        return _text_segmenter(family, method, checkpoint, runtime, options)
    if checkpoint is not None:
        raise VplError(f"checkpoint: a text-supervised family's file (pgseg, ...); method {method!r} takes model= "
                       "and pretrained=")
    if "classes" in options:
        raise VplError("segmenter: the class names are given per call, seg(image, ['cat', 'dog'])")
    unknown = sorted(set(options) - set(SegmentConfig.option_names()))
    if unknown:
        raise unknown_option(f"segmenter({method!r})", unknown[0], dense_options(method))
    from ..models import ModelSpec

    cfg = SegmentConfig.of(dense=method, **options)
    _warn_unread(method, cfg, options)
    spec = ModelSpec(model=model, pretrained=pretrained,
                     config_dir=str(model_config_dir) if model_config_dir is not None else None)
    return DenseSegmenter(spec, cfg, runtime)


def _warn_unread(method: str, cfg: SegmentConfig, options: dict) -> None:
    """One warning per keyword given that ``method`` never reads (:meth:`SegmentConfig.inert`), as `segment` warns
    of such an option: ``segmenter('sam3', proxy_weights=...)`` was taken without a word."""
    import warnings

    from ..config import inert_fields
    from ..errors import VplWarning

    for name, why in inert_fields(cfg).items():
        if name in options:
            warnings.warn(VplWarning(f"segmenter({method!r}): {name}={options[name]!r} has no effect {why}; it is "
                                     "ignored"), stacklevel=3)


def _text_segmenter(family: str, method: str, checkpoint, runtime: RuntimeConfig, options: dict) -> TextSegmenter:
    from ..models.registry import TEXT_FAMILIES

    if checkpoint is None:
        raise VplError(f"segmenter({method!r}): pass checkpoint=FILE ({TEXT_FAMILIES[family].files})")
    o = text_options(family, options, f"segmenter({method!r})")
    return TextSegmenter(family, checkpoint, runtime, bg_thresh=o["bg_thresh"], short_side=o["short_side"],
                         slide=(o["slide_crop"], o["slide_stride"]), background=o["background"])


__all__ = ["Embedding", "Segmentation", "Segmenter", "DenseSegmenter", "TextSegmenter", "PgsegSegmenter", "segmenter",
           "segmenting", "as_rgb", "class_entries", "method_option", "dense_options", "unknown_option", "text_options"]

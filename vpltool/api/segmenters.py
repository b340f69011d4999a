"""``vpltool.segmenter(...)``: segment photos by class names from Python, with the per-image code `segment` runs.

A training-free dense CLIP method (``naclip``, ``maskclip``, ... the names of ``segment --dense``;
:func:`vpltool.list_methods`) or the checkpoint of a text-supervised family (PGSeg / GroupViT: method ``pgseg`` with
``checkpoint=FILE``, or ``model="pgseg:FILE"`` as ``segment --model``; any family's NAME:FILE) is loaded once; each
call takes one photo or a list and class names and returns a :class:`Segmentation` or a list of them (numpy, or
torch with ``return_tensors="pt"``), and :meth:`Segmenter.map` walks a folder or an iterable lazily, with a progress
bar. The settings are `segment`'s (:class:`vpltool.config.SegmentConfig`, defined once there) and the work per image
is the CLI's own function (:func:`vpltool.models.dense.segmentor.scores_batch`,
:func:`vpltool.stages.segment_text.image_scores`), so a label map from here equals the mask `segment` writes for the
same image and names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED, DENSE_CHOICES, RuntimeConfig, SegmentConfig
from ..errors import VplError
from .images import as_rgb, chunks, folder_photos, is_batch, name_of, photo_item, photos
from .results import Segmentation

RETURN_TENSORS = ("np", "pt")  # transformers' names: numpy arrays on the host, torch tensors on the device


def class_entries(classes: str | Sequence[str]) -> list[str]:
    """``"cat|kitten,dog"`` or ``["cat|kitten", "dog"]`` -> the ``--classes`` entries ``["cat|kitten", "dog"]``."""
    entries = classes.split(",") if isinstance(classes, str) else list(classes)
    entries = [str(e).strip() for e in entries if str(e).strip()]
    if not entries:
        raise VplError("classes: give at least one class name, e.g. ['cat', 'dog'] or 'cat,dog'")
    return entries


class Segmenter:
    """A loaded segmenter: ``seg(images, classes)`` -> a :class:`Segmentation` per photo. Made by :func:`segmenter`.

    ``seg.model`` is the network (an ``nn.Module``: the CLIP of a dense method, the PGSeg / GroupViT model);
    ``seg.to(device)`` moves it; ``seg.device`` says where it is."""

    method: str
    device: Any
    batch_size: int | None = None  # photos per forward; None: `segment`'s (1 on a CPU, 32 on CUDA)

    def __call__(self, images: Any, classes: str | Sequence[str], *, return_tensors: str = "np"
                 ) -> Segmentation | list[Segmentation]:
        """Segment one photo or several.

        Args:
            images: a photo (a path, a PIL image, an ``[H, W, 3]`` uint8 array, a ``[3, H, W]`` uint8 or float
                tensor in [0, 1]) or a list of them (or a ``[B, H, W, 3]`` array / ``[B, 3, H, W]`` tensor); photos
                of one input size run as one batch.
            classes: ``["cat", "dog"]`` or ``"cat,dog"``; synonyms ``"cat|kitten"``.
            return_tensors: ``"np"``: numpy arrays on the host; ``"pt"``: torch tensors on :attr:`device`.

        Returns:
            One :class:`Segmentation` for one photo, a list for a list.
        """
        tensors = _check_return(return_tensors)
        entries = class_entries(classes)
        if not is_batch(images):
            return self._run([as_rgb(images)], [(None, images)], entries, tensors)[0]
        batch = list(enumerate(photos(images)))
        return self._run([as_rgb(im, i) for i, im in batch], batch, entries, tensors)

    def map(self, source: str | os.PathLike | Iterable, classes: str | Sequence[str], *,
            progress: bool | None = None, return_tensors: str = "np") -> Iterator[tuple[Any, Segmentation]]:
        """Segment a folder of photos (its images as `segment` lists them) or any iterable of photos, lazily:
        yields ``(path or index, Segmentation)`` as each batch is done, so the photos are read as they are used.
        ``progress``: a bar on stderr (None: on a terminal; False: never)."""
        from ..runtime.batches import resolve_batch_size
        from .progress import hooks

        tensors = _check_return(return_tensors)
        entries = class_entries(classes)
        items, total, key = folder_photos(source)
        size = resolve_batch_size(self.batch_size, self.device, 1)  # photos read ahead: one batch's worth
        with hooks(progress, f"segment ({self.method})") as (on_start, on_item):
            if on_start is not None and total is not None:
                on_start(total)
            for chunk in chunks(enumerate(items), size):
                rgbs = [as_rgb(photo, i) for i, photo in chunk]
                results = self._run(rgbs, chunk, entries, tensors)
                if on_item is not None:
                    on_item(len(chunk))
                for (i, photo), result in zip(chunk, results):
                    yield key(i, photo), result

    def to(self, device: Any) -> Segmenter:
        """Move the model (and what the segmenter keeps on its device) to ``device``; returns the segmenter."""
        raise NotImplementedError

    def _run(self, rgbs: list, given: list, entries: list[str], tensors: bool) -> list[Segmentation]:
        """``rgbs``: the photos decoded; ``given``: each as ``(its index in the caller's list, or None for one
        photo; the photo as given)``: a path names it in a message, and is the item a method's ``extra_inputs``
        hook gets."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<vpltool segmenter {self.method!r} on {self.device}>"


def _check_return(return_tensors: str) -> bool:
    if return_tensors not in RETURN_TENSORS:
        raise VplError(f"return_tensors={return_tensors!r}: choose 'np' (numpy arrays) or 'pt' (torch tensors)")
    return return_tensors == "pt"


def _result(scores, labels, classes: tuple[str, ...], tensors: bool) -> Segmentation:
    """A :class:`Segmentation` from the device's ``[C + 1, H, W]`` scores and ``[H, W]`` labels."""
    import numpy as np
    import torch

    if tensors:
        return Segmentation(labels.to(torch.int64), scores.float(), classes)
    return Segmentation(labels.cpu().numpy().astype(np.int64), scores.float().cpu().numpy(), classes)


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
        self.backbone = load_dense(spec, self.dense, self.device)
        self._queries: dict[tuple[str, ...], tuple] = {}
        self._words: dict[tuple[str, ...], tuple] = {}

    @property
    def model(self):
        """The CLIP (open_clip's ``nn.Module``) whose last block the method mixes; ProxyCLIP's and CASS's DINO and
        Trident's SAM are ``seg.backbone.proxy.model`` and ``seg.backbone.sam.model``."""
        return self.backbone.model

    def to(self, device: Any) -> DenseSegmenter:
        from ..device import resolve_device, resolve_precision

        self.device = resolve_device(str(device))
        self.dtype = resolve_precision(self.precision, self.device)
        self.backbone = self.backbone.to(self.device)
        self._queries = {k: tuple(t.to(self.device) for t in v) for k, v in self._queries.items()}
        return self

    def _ready(self):
        """The backbone, following its model where ``seg.model.to(...)`` moved it alone."""
        weights = next(self.backbone.model.parameters())
        if weights.device != self.backbone.device:
            self.to(weights.device)
        return self.backbone

    def queries(self, entries: list[str]):
        """The query rows of ``entries`` as `segment` makes them (templates, background words), cached."""
        from ..models.dense.segmentor import query_rows

        key = tuple(entries)
        if key not in self._queries:
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

    def _run(self, rgbs: list, given: list, entries: list[str], tensors: bool) -> list[Segmentation]:
        """Photos of one input size (`segment`'s short side) in batches of :attr:`batch_size`, as `segment` runs
        them (:func:`~vpltool.models.dense.segmentor.scores_batch`; out of device memory, the batches halve)."""
        from ..models.dense.bands import check_photo_memory
        from ..models.dense.segmentor import dense_input, scores_batch, short_side_size
        from ..runtime.batches import BatchRunner, plan_batches, resolve_batch_size
        from ..stages.segment import class_names

        classes = ("background", *class_names(entries))
        names = [name_of(photo, i) for i, photo in given]
        sizes = [tuple(rgb.shape[:2]) for rgb in rgbs]
        synonyms, _, background = self.query_words(entries)  # as `segment` counts them, before anything runs
        check_photo_memory(names, sizes, sum(map(len, synonyms)) + len(background), self.settings,
                           scores=len(classes), max_side_option="vpltool.segmenter(..., max_side={})")
        bb = self._ready()
        text, query_class = self.queries(entries)
        inputs = [short_side_size(h, w, self.settings.short_side) for h, w in sizes]
        out: list[Any] = [None] * len(rgbs)
        limit = resolve_batch_size(self.batch_size, bb.device, 1)
        for index in plan_batches(inputs, limit):
            xs = [dense_input(bb.preprocessor, rgbs[i], inputs[i],
                              self.dense.hooks.extra_inputs(photo_item(given[i][1]), rgbs[i])) for i in index]
            pixels = bb.pixels([x["pixels"] for x in xs], inputs[index[0]])
            extras = [{k: v for k, v in x.items() if k != "pixels"} for x in xs]  # a method's own, by key
            runner = BatchRunner(limit, describe=lambda j, index=index: f"{names[index[j]]} "
                                 f"({sizes[index[j]][0]}x{sizes[index[j]][1]})",
                                 advice="pass a smaller short_side or slide_crop, or a smaller batch_size")

            def chunk(part: slice, index=index, pixels=pixels, extras=extras) -> list:
                return scores_batch(bb, pixels[part], text, query_class, len(classes), self.settings,
                                    [sizes[i] for i in index[part]], self.dtype, extras[part])

            done = [pair for part in runner(len(index), chunk) for pair in part]
            for i, (probs, labels) in zip(index, done):
                out[i] = _result(probs, labels, classes, tensors)
        return out


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
        self.batch_size = runtime.batch_size
        self.model = self.family.load_model(self.checkpoint, self.device)
        self._queries: dict[tuple[str, ...], tuple] = {}

    def to(self, device: Any) -> TextSegmenter:
        from ..device import resolve_device

        self.device = resolve_device(str(device))
        self.model.to(self.device)
        self._queries = {k: (names, text.to(self.device)) for k, (names, text) in self._queries.items()}
        return self

    def _run(self, rgbs: list, given: list, entries: list[str], tensors: bool) -> list[Segmentation]:
        from ..stages.segment_text import image_scores, text_names, text_queries

        weights = next(self.model.parameters())
        if weights.device != self.device:  # seg.model.to(...) alone: follow it
            self.to(weights.device)
        key = tuple(entries)
        if key not in self._queries:
            classes, bg_words = text_names(key, self.background)
            self._queries[key] = classes, text_queries(self.family, self.model, classes, bg_words, self.device)
        classes, text = self._queries[key]
        out = []
        for rgb in rgbs:  # one photo a forward, as `segment --model NAME:FILE` runs them
            logits, labels = image_scores(self.family, self.model, rgb, text, len(classes), self.bg_thresh,
                                          self.short_side, self.slide, self.device)
            out.append(_result(logits, labels, ("background", *classes), tensors))
        return out


PgsegSegmenter = TextSegmenter  # its name before other text-supervised families


_RUNTIME = ("device", "precision", "batch_size")


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
            ``vpltool-toy`` / ``none``: the demo world's toy CLIP); or ``model="pgseg:FILE"`` (``groupvit:FILE``),
            as `segment --model pgseg:FILE`: the same as ``segmenter(NAME, checkpoint=FILE)``.
        checkpoint: a text-supervised family's file (PGSeg: `train-pgseg`'s ``pgseg.safetensors`` or a GroupViT /
            PGSeg ``.pth``).
        options: `segment`'s options by their Python names, with its defaults: for a dense method the fields of
            :class:`vpltool.config.SegmentConfig` (``templates``, ``background``, ``prob_threshold``,
            ``short_side``, ``slide_crop``, ``proxy_weights``, ...); for a text-supervised family ``bg_thresh``,
            ``short_side``, ``slide_crop``, ``slide_stride``, ``background`` (its defaults: its ``ZERO_SHOT``);
            and ``device`` / ``precision`` (``auto``), ``batch_size`` (photos per forward; `segment`'s: 1 on a
            CPU, 32 on CUDA).

    Raises:
        VplError: an unknown method or option (with the closest name), or a missing or foreign weights file: one
            line, before any load.
    """
    method, checkpoint = method_option("segmenter", method, checkpoint, options)
    runtime = RuntimeConfig(**{k: options.pop(k) for k in _RUNTIME if k in options})
    family, method, checkpoint = segmenting(method, model, checkpoint)
    if family != "clip":  # a text-supervised family's checkpoint
        return _text_segmenter(family, method, checkpoint, runtime, options)
    if checkpoint is not None:
        raise VplError(f"checkpoint: a text-supervised family's file (pgseg, ...); method {method!r} takes model= "
                       "and pretrained=")
    if "classes" in options:
        raise VplError("segmenter: the class names are given per call, seg(image, ['cat', 'dog'])")
    unknown = sorted(set(options) - {f.name for f in fields(SegmentConfig)})
    if unknown:
        raise unknown_option(f"segmenter({method!r})", unknown[0], dense_options(method))
    from ..models import ModelSpec

    cfg = SegmentConfig(dense=method, **options)
    spec = ModelSpec(model=model, pretrained=pretrained,
                     config_dir=str(model_config_dir) if model_config_dir is not None else None)
    return DenseSegmenter(spec, cfg, runtime)


def method_option(where: str, method: str | None, checkpoint: Any, options: dict) -> tuple[str | None, Any]:
    """``(method, checkpoint)`` with the command line's names popped from ``options``: ``dense=`` (``--dense``) is
    ``method=``, and a text-supervised family's name as a keyword (``pgseg=FILE``, as ``--pgseg FILE``) is
    ``method=NAME, checkpoint=FILE``; two different values for one thing are one line, never one dropped."""
    from ..models.registry import SEGMENTERS

    dense = options.pop("dense", None)
    if dense is not None:
        if method is not None and method != dense:
            raise VplError(f"{where}: method={method!r} and dense={dense!r}; give one (dense= is method=, as "
                           "--dense names it)")
        method = dense
    for name in [n for n in SEGMENTERS if n in options]:
        given = options.pop(name)
        if checkpoint is not None and os.path.abspath(checkpoint) != os.path.abspath(given):
            raise VplError(f"{where}: checkpoint={str(checkpoint)!r} and {name}={str(given)!r}; give one ({name}=FILE "
                           f"is checkpoint=FILE, as --{name} names it)")
        if method is not None and method != name:
            raise VplError(f"{where}: method={method!r} and {name}=FILE; give one ({name}=FILE is method={name!r}, "
                           "checkpoint=FILE)")
        method, checkpoint = name, given
    return method, checkpoint


def dense_options(method: str) -> list[str]:
    """The options a dense ``method`` reads: `segment`'s, less the other methods' own knobs
    (:meth:`SegmentConfig.inert`), and the runtime's."""
    inert = SegmentConfig(dense=method).inert() if method in DENSE_CHOICES else {}
    own = [f.name for f in fields(SegmentConfig) if f.name not in ("dense", "classes") and f.name not in inert]
    return [*own, *_RUNTIME]


def unknown_option(where: str, name: str, options: Sequence[str]) -> VplError:
    """One line for an option nobody knows: the closest of ``options`` (difflib), then the list."""
    from ..config.checks import did_you_mean

    hint = did_you_mean(name, options)
    return VplError(f"{where}: unknown option {name!r};{hint} its options are {', '.join(options)}")


def segmenting(method: str | None, model: str, checkpoint: str | os.PathLike | None) -> tuple[str, str, Any]:
    """``(method, model, checkpoint)`` as :func:`segmenter` takes them -> ``(family, method, checkpoint)``:
    ``model="NAME:FILE"`` (:func:`vpltool.models.registry.model_family`) is ``method=NAME, checkpoint=FILE``;
    a dense method beside it, or another checkpoint, is one line. ``method`` None: `segment`'s default method."""
    from ..models.registry import model_family, segmenter_family
    from .methods import check_method

    if method is not None:
        check_method(method)  # one line with the closest name, before anything loads
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
    one line with the closest name and the options."""
    from ..models.registry import text_config

    defaults = text_config(family).ZERO_SHOT.options()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise unknown_option(where, unknown[0], [*defaults, *_RUNTIME])
    return {**defaults, **options}


def _text_segmenter(family: str, method: str, checkpoint, runtime: RuntimeConfig, options: dict) -> TextSegmenter:
    from ..models.registry import TEXT_FAMILIES

    if checkpoint is None:
        raise VplError(f"segmenter({method!r}): pass checkpoint=FILE ({TEXT_FAMILIES[family].files})")
    o = text_options(family, options, f"segmenter({method!r})")
    return TextSegmenter(family, checkpoint, runtime, bg_thresh=o["bg_thresh"], short_side=o["short_side"],
                         slide=(o["slide_crop"], o["slide_stride"]), background=o["background"])


__all__ = ["Segmentation", "Segmenter", "DenseSegmenter", "TextSegmenter", "PgsegSegmenter", "segmenter", "segmenting",
           "as_rgb", "class_entries", "method_option", "dense_options", "unknown_option", "text_options"]

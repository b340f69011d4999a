"""vpltool from Python (docs/api.md): a segmenter loaded once and called on photos, and the stages as functions.

* :func:`segmenter` (``vpltool.segmenter``): ``seg = vpltool.segmenter("naclip", model="ViT-B-16",
  pretrained="openai")``, then ``seg(photo, ["cat", "dog"])`` -> :class:`Segmentation` (an ``[H, W]`` int64 label
  map, 0 = background, and ``[C + 1, H, W]`` scores; numpy, or torch with ``return_tensors="pt"``), ``seg([a, b],
  names)`` -> a list, ``seg.map(folder, names)`` -> lazily, with a progress bar; ``vpltool.segmenter(NAME,
  checkpoint=FILE)`` for the checkpoint of a text-supervised family (``pgseg``: PGSeg / GroupViT). The label map
  equals the mask `vpltool segment` writes for the same photo and names; ``seg.embed(photo)`` keeps a photo's
  image side for many class lists. :func:`onnx_segmenter` (``vpltool.onnx_segmenter``) runs a file `vpltool export`
  wrote, with onnxruntime. :func:`list_methods` (``vpltool.list_methods``) lists the methods,
  :func:`list_models` and :func:`list_pretrained` the models it can load.
* the stages (:mod:`vpltool.api.stages`): ``vpltool.api.extract``, ``text_prototypes``, ``cam``,
  ``learn_prototypes``, ``crf``, ``train_decoder``, ``predict``, ``evaluate`` (`eval`), ``segment``, ``report``,
  ``doctor`` (every weights file a method would load), each over the library function its command calls, with the
  command's defaults.

Nothing heavy is imported until a name is used (``import vpltool`` imports no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_SEGMENTER = ("segmenter", "Segmenter", "Segmentation", "Embedding")
_METHODS = ("list_methods",)
_MODELS = ("list_models", "list_pretrained")
_ONNX = ("onnx_segmenter", "OnnxSegmenter")
_STAGES = ("extract", "text_prototypes", "cam", "learn_prototypes", "crf", "sam_pseudo", "train_decoder", "predict",
           "evaluate", "segment", "report", "doctor")
__all__ = [*_SEGMENTER, *_METHODS, *_MODELS, *_ONNX, *_STAGES]


def __getattr__(name: str) -> Any:
    if name in _SEGMENTER:
        return getattr(importlib.import_module(".segmenters", __name__), name)
    if name in _METHODS:
        return getattr(importlib.import_module(".methods", __name__), name)
    if name in _MODELS:
        return getattr(importlib.import_module(".models", __name__), name)
    if name in _ONNX:
        return getattr(importlib.import_module(".onnx", __name__), name)
    if name in _STAGES:
        return getattr(importlib.import_module(".stages", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""vpltool: weakly-supervised semantic segmentation with CLIP (CLIP-ES + VPL), one stage per command, and a library.

From Python (docs/api.md)::

    import vpltool
    seg = vpltool.segmenter("naclip", model="ViT-B-16", pretrained="openai")
    result = seg("photo.jpg", ["cat", "dog"])   # result.labels: [H, W] int64, 0 = background
    results = seg(["a.jpg", "b.jpg"], "cat,dog")  # a list: one result each
    emb = seg.embed("photo.jpg")                 # the photo's image side, once
    seg(emb, ["sofa", "cat"])                    # ... for another class list: only the text side runs
    vpltool.list_methods()                       # the methods segmenter() takes
    vpltool.list_models()                        # the models it can load
    onnx = vpltool.onnx_segmenter("naclip.onnx")  # a file `vpltool export` wrote, run by onnxruntime

and the stages as functions, ``vpltool.api.cam(...)``, ... Importing vpltool is cheap: these names load on first use
(no torch at ``import vpltool``).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"
# the process that started this one, read at import, before anything slow loads: a torchrun rank ties its life to
# its agent (vpltool.cli.errors), and a rank whose agent died while it was still starting (importing torch takes
# seconds on a loaded machine) must see that, not tie itself to init, which adopted it
LAUNCHED_BY = os.getppid()
# reproducible mode pins each library's instructions and threads before torch, numpy and OpenCV load (runtime.numerics)
if os.environ.get("VPLTOOL_REPRODUCIBLE", "").strip().lower() in ("1", "true", "yes", "on"):  # numerics.ON_WORDS
    from .runtime.numerics import ask_reproducible

    ask_reproducible()

_API = ("segmenter", "Segmenter", "Segmentation", "Embedding")
_METHODS = ("list_methods",)
_MODELS = ("list_models", "list_pretrained")
_ONNX = ("onnx_segmenter",)


def __getattr__(name: str) -> Any:
    if name == "api":
        return importlib.import_module(".api", __name__)
    if name in _API:  # from the module that defines them (no submodule of that name can shadow them)
        return getattr(importlib.import_module(".api.segmenters", __name__), name)
    if name in _METHODS:
        return getattr(importlib.import_module(".api.methods", __name__), name)
    if name in _MODELS:
        return getattr(importlib.import_module(".api.models", __name__), name)
    if name in _ONNX:
        return getattr(importlib.import_module(".api.onnx", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "api", *_API, *_METHODS, *_MODELS, *_ONNX})

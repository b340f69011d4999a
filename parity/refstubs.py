"""What the reference runners share: stand-in modules for imports whose code the compared arithmetic never reaches,
running from inside a peer's clone, and mmseg 0.x's sliding-window inference restated.

Like the runners, it imports nothing from vpltool: a runner's process holds the peer's code alone.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import sys
import types
from pathlib import Path


def stub_module(name: str, **attrs) -> types.ModuleType:
    """Put a module ``name`` holding ``attrs`` into ``sys.modules``, and onto its parent when that is loaded.

    Its ``__spec__`` is set because torch._dynamo's import scan calls ``importlib.util.find_spec`` on loaded modules.
    """
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, mod)
    return mod


class MmcvRegistry:
    """mmcv's ``Registry`` as PGSeg's and GroupViT's code use it: ``register_module()`` keeps the class by its name,
    ``build(dict)`` calls ``cls(**rest)`` for the dict's ``type``."""

    def __init__(self, name):
        self.name, self.classes = name, {}

    def register_module(self, *a, **k):
        def deco(cls):
            self.classes[cls.__name__] = cls
            return cls
        return deco

    def build(self, cfg):
        cfg = dict(cfg)
        return self.classes[cfg.pop("type")](**cfg)


class MmcvConfig(dict):
    """mmcv's ``Config`` as the runners need it: a dict with attribute access (a missing key reads None)."""

    __getattr__ = dict.get


def stub_pkg_resources() -> bool:
    """``from pkg_resources import packaging`` (the OpenAI CLIP copies' torch version check) where setuptools >= 81
    no longer ships ``pkg_resources``: a module holding the ``packaging`` package stands in. True if stubbed."""
    try:
        importlib.import_module("pkg_resources")
        return False
    except ImportError:
        import packaging.version  # noqa: F401 - loads the package's version submodule the check reads

        stub_module("pkg_resources", packaging=sys.modules["packaging"])
        return True


@contextlib.contextmanager
def in_clone(folder: Path):
    """Run with ``folder`` first on ``sys.path`` and as the working directory (the clones read files relative to
    their root); both restored afterwards."""
    saved = (list(sys.path), os.getcwd())
    sys.path.insert(0, str(folder))
    os.chdir(folder)
    try:
        yield
    finally:
        sys.path[:] = saved[0]
        os.chdir(saved[1])


def slide_inference(seg, img, crop: int, stride: int):
    """mmseg 0.x ``EncoderDecoder.slide_inference`` (mmseg is not installed: restated), the reference's
    ``encode_decode`` on each window: windows every ``stride`` pixels, the last moved back inside, logits padded
    into place and divided by the number of windows covering each pixel; ``seg.num_classes`` stands for the
    ``out_channels`` mmseg reads from the decode head."""
    import torch.nn.functional as F

    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((img.shape[0], seg.num_classes, h_img, w_img))
    count = img.new_zeros((img.shape[0], 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logit = seg.encode_decode(img[:, :, y1:y2, x1:x2], None)
            preds += F.pad(logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count[:, :, y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    return preds / count

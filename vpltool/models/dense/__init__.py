"""The training-free dense CLIP methods (``--dense``), one module each behind a registry, loaded lazily by name.

* :mod:`.mixing`: how the last block mixes its tokens (:class:`DenseMixing`), the four pure-mixing presets
  (MaskCLIP, SCLIP, ClearCLIP, NACLIP, and CLIP's own block ``none``) as data, and the one forward that runs them.
* one module per method that reads more than the last block's input: :mod:`.sc_clip`, :mod:`.proxyclip`,
  :mod:`.cass`, :mod:`.trident`. Each holds its config, kernels, preset (``PRESET``) and hooks, which the backbone
  and the segmentor call when present: ``features(bb, pixels, fp16_pos)`` (the patch features),
  ``feature_grid(bb, size)``, ``grid_logits`` and ``input_embedding`` (a window's logits), ``dense_logits`` (a whole
  segmentor), ``extra_inputs(image)`` (what the loading workers add), ``with_knobs(mixing, knobs)`` (its
  ``SegmentConfig`` knobs) and ``refined_labels`` (a post-processing).

Which module holds a method is a row of the torch-free spec table :data:`vpltool.config.dense.DENSE_SPECS`, which also
gives the choices, ``--help``'s defaults, the proxy and SAM models each takes and its knob names. A new method is
a module here plus a spec row (docs/architecture.md).

Stable API (used by ``parity/dense_parity.py``): :data:`DENSE_METHODS`, :data:`DENSE_PRESETS`, :func:`dense_mixing`,
``load_backbone(spec, device, dense="naclip")`` or ``bb.with_dense("naclip")``, ``bb.dense_features(pixels)``
(``[B, 3, H, W]`` CLIP-normalised pixels, sides multiples of the patch -> ``[B, h*w, D]`` joint-space patch
features, not normalised), the segmentor (:mod:`vpltool.models.segmentor`), and each method's own names from its
module (``from vpltool.models.dense.sc_clip import SelfCalibration``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType

from ...config.dense import DENSE_SPECS
from ...errors import VplError
from .mixing import (
    ATTENTIONS,
    DENSE_METHODS,
    POS_INTERPOLATIONS,
    PURE_PRESETS,
    DenseMixing,
    mix_last_block,
    mixed_attention,
    neighbourhood_bias,
    resize_positional,
)


def dense_method(name: str) -> ModuleType | None:
    """The module of ``--dense name`` (imported the first time it is asked for); None for a pure-mixing preset."""
    spec = DENSE_SPECS.get(name)
    if spec is None or spec.module is None:
        return None
    return importlib.import_module(f".{spec.module}", __name__)


class _Presets(Mapping):
    """``{method: DenseMixing}``; a method module is imported when its preset is first read."""

    def __getitem__(self, name: str) -> DenseMixing:
        if name in PURE_PRESETS:
            return PURE_PRESETS[name]
        module = dense_method(name)
        if module is None:
            raise KeyError(name)
        return module.PRESET

    def __iter__(self) -> Iterator[str]:
        return iter(DENSE_METHODS)

    def __len__(self) -> int:
        return len(DENSE_METHODS)


DENSE_PRESETS: Mapping[str, DenseMixing] = _Presets()


def dense_mixing(method: str | DenseMixing) -> DenseMixing:
    """The preset of ``--dense METHOD`` (a :class:`DenseMixing` passes through)."""
    if isinstance(method, DenseMixing):
        return method
    if method not in DENSE_METHODS:
        raise VplError(f"--dense {method!r}: choose one of {', '.join(DENSE_METHODS)}")
    return DENSE_PRESETS[method]


__all__ = ["DENSE_METHODS", "DENSE_PRESETS", "DenseMixing", "dense_mixing", "dense_method", "resize_positional",
           "neighbourhood_bias", "mixed_attention", "mix_last_block", "ATTENTIONS", "POS_INTERPOLATIONS"]

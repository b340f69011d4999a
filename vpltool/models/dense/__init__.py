"""The training-free dense CLIP methods (``--dense``), one module each behind a registry, loaded lazily by name.

* :mod:`.mixing`: how the last block mixes its tokens (:class:`DenseMixing`), the four pure-mixing presets
  (MaskCLIP, SCLIP, ClearCLIP, NACLIP, and CLIP's own block ``none``) as data, and the one forward that runs them.
* :mod:`.hooks`: :class:`DenseHooks`, the written extension points (every hook the backbone and the segmentor
  call, each with its default) and their registry.
* one module per method that reads more than the last block's input: :mod:`.sc_clip`, :mod:`.proxyclip`,
  :mod:`.cass`, :mod:`.trident`. Each holds its config, kernels, preset (``PRESET``) and one :class:`DenseHooks`
  subclass naming itself (``class Hooks(DenseHooks, method="trident", preset=PRESET)``).
* :mod:`.method`: :func:`~.method.resolve_method`, a ``--dense`` name resolved once into one
  :class:`~.method.DenseMethod` (spec row, settings, mixing, hooks, proxy and SAM specs, class-file set, presets).

Which module holds a method is a row of the torch-free spec table :data:`vpltool.config.dense.DENSE_SPECS`, which also
gives the choices, ``--help``'s defaults, the proxy and SAM models each takes, its knobs and its class-file set. A
new method is a module here plus a spec row (docs/architecture.md).

Stable API (used by ``parity/dense_parity.py``): :data:`DENSE_METHODS`, :data:`DENSE_PRESETS`, :func:`dense_mixing`,
``load_backbone(spec, device, dense="naclip")`` or ``bb.with_dense("naclip")``, ``bb.dense_features(pixels)``
(``[B, 3, H, W]`` CLIP-normalised pixels, sides multiples of the patch -> ``[B, h*w, D]`` joint-space patch
features, not normalised), the segmentor (:mod:`vpltool.models.dense.segmentor`), and each method's own names from its
module (``from vpltool.models.dense.sc_clip import SelfCalibration``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from ...config.dense import DENSE_SPECS
from ...errors import ContractError, VplError
from .hooks import HOOK_NAMES, DenseHooks, hooks_class
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


def dense_hooks(name: str, cfg: Any = None) -> DenseHooks:
    """The hooks of ``--dense name`` (its module imported the first time it is asked for; the defaults for a
    pure-mixing preset), made with the run's ``cfg`` (a :class:`~vpltool.config.SegmentConfig`, or None)."""
    spec = DENSE_SPECS.get(name)
    if spec is None or spec.module is None:
        return DenseHooks(cfg)
    if spec.plugin is None:
        module = importlib.import_module(f".{spec.module}", __name__)
    else:  # a plugin's module: whatever fails there is the plugin's, one line naming it and the fix
        module = _plugin_module(name, spec)
    cls = hooks_class(name)
    if cls is None:
        where = f"plugin {spec.plugin}: " if spec.plugin else ""
        raise ContractError(f"{where}{module.__name__}: --dense {name}'s module defines no hooks class; add "
                            f"class Hooks(DenseHooks, method={name!r}, preset=PRESET)")
    return cls(cfg)


def _plugin_module(name: str, spec) -> Any:
    """A plugin method's module, imported; an import that fails (a missing package, a misspelt hook refused
    where its class is written, a name its class claims twice) is one line naming the plugin's distribution."""
    from ...plugins.entry_points import PluginFailure, plugin_code, uninstall_hint

    try:
        with plugin_code() as said:
            return importlib.import_module(spec.module)
    except PluginFailure as e:  # the plugin's own code (sys.exit and Ctrl-C in it too)
        raise VplError(f"plugin {spec.plugin}: --dense {name}'s module {spec.module} cannot be used ({e.cause}"
                       f"{said.tail()}); fix the plugin{uninstall_hint(spec.plugin)}") from None


class _Presets(Mapping):
    """``{method: DenseMixing}``; a method module is imported when its preset is first read."""

    def __getitem__(self, name: str) -> DenseMixing:
        if name in PURE_PRESETS:
            return PURE_PRESETS[name]
        if name not in DENSE_SPECS:
            raise KeyError(name)
        return type(dense_hooks(name)).preset

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


__all__ = ["DENSE_METHODS", "DENSE_PRESETS", "DenseMixing", "dense_mixing", "dense_hooks", "DenseHooks",
           "HOOK_NAMES", "resize_positional",
           "neighbourhood_bias", "mixed_attention", "mix_last_block", "ATTENTIONS", "POS_INTERPOLATIONS"]

"""The model families behind one registry (:mod:`.registry`), in three folders by kind: :mod:`.backbones` (the frozen
encoders: the CLIP with the CLIP-ES surgery, its loading, model, GradCAM and text tower; the DINO of SSR's affinity
and the proxies; SAM), :mod:`.dense` (the training-free ``--dense`` methods and the segmentor they share) and
:mod:`.text` (the text-supervised families: PGSeg / GroupViT, Talk2DINO). The names below load on first use.

The only package that creates open_clip models; stages share its forward (:meth:`ClipBackbone.encode`), its
GradCAM (:meth:`ClipBackbone.gradcam`) and its text tower (:meth:`ClipBackbone.encode_text`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

# each public name -> the submodule that defines it, imported on first use: `import vpltool.models.registry` (the
# CLI's family names, :func:`.registry.model_family`) stays torch-free, and a stage pays for torch, open_clip and timm
# only when it names what needs them
_LAZY = {
    **dict.fromkeys(("load_backbone", "check_tokenizer"), "backbones.clip"),
    **dict.fromkeys(("DENSE_METHODS", "DENSE_PRESETS", "DenseMixing", "dense_mixing"), "dense"),
    **dict.fromkeys(("DinoBackbone", "DinoSpec", "check_dino", "load_dino"), "backbones.dino"),
    **dict.fromkeys(("GRADCAM_LAYERS", "BatchGradCam", "GradCam", "SoftmaxRows"), "backbones.gradcam"),
    **dict.fromkeys(("EXTRA_CONFIG", "ModelSpec", "create_model", "load_extra_config"), "backbones.loading"),
    **dict.fromkeys(("register_model", "register_tokenizer"), "backbones.aliases"),  # torch-free: plugins call them
    **dict.fromkeys(("ClipBackbone", "Encoded"), "backbones.model"),
    **dict.fromkeys(("check_model", "families", "load_model", "register_family"), "registry"),
}


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` (PEP 562) over ``table``, public name -> the submodule that defines it:
    the submodule is imported on the name's first use and the name kept in the package (this one's, and a model
    family's that keeps its import free: :mod:`.talk2dino`)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(f".{table[name]}", package), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = list(_LAZY)  # the public names are the lazy table's: one list, not two kept in step

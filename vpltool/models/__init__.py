"""The frozen CLIP backbone with the CLIP-ES surgery: loading (:mod:`.loading`), the model (:mod:`.model`), its
GradCAM (:mod:`.gradcam`), the training-free dense methods of its last block (:mod:`.dense`: MaskCLIP, SCLIP,
ClearCLIP, NACLIP) and the DINO ViT of SSR's affinity (:mod:`.dino`). Model families (``clip``: :mod:`.clip`,
``dino``: :mod:`.dino`) are named through the one registry, :mod:`.registry`. The names below load on first use.

The only package that creates open_clip models; stages share its forward (:meth:`ClipBackbone.encode`), its
GradCAM (:meth:`ClipBackbone.gradcam`) and its text tower (:meth:`ClipBackbone.encode_text`).
"""

from __future__ import annotations

import importlib
from typing import Any

# each public name -> the submodule that defines it, imported on first use: `import vpltool.models.registry` (the
# CLI's family names, :func:`.registry.model_family`) stays torch-free, and a stage pays for torch, open_clip and timm
# only when it names what needs them
_LAZY = {
    "load_backbone": "clip",
    **dict.fromkeys(("DENSE_METHODS", "DENSE_PRESETS", "DenseMixing", "dense_mixing"), "dense"),
    **dict.fromkeys(("DinoBackbone", "DinoSpec", "check_dino", "load_dino"), "dino"),
    **dict.fromkeys(("GRADCAM_LAYERS", "BatchGradCam", "GradCam", "SoftmaxRows"), "gradcam"),
    **dict.fromkeys(("EXTRA_CONFIG", "ModelSpec", "create_model", "load_extra_config", "register_model",
                     "register_tokenizer"), "loading"),
    **dict.fromkeys(("ClipBackbone", "Encoded"), "model"),
    **dict.fromkeys(("check_model", "families", "load_model", "register_family"), "registry"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)  # the public names are the lazy table's: one list, not two kept in step

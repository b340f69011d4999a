"""The frozen CLIP backbone with the CLIP-ES surgery: loading (:mod:`.loading`), the model (:mod:`.model`), its
GradCAM (:mod:`.gradcam`), the training-free dense methods of its last block (:mod:`.dense`: MaskCLIP, SCLIP,
ClearCLIP, NACLIP) and the DINO ViT of SSR's affinity (:mod:`.dino`). Model families (``clip``: :mod:`.clip`,
``dino``: :mod:`.dino`) are named through the one registry, :mod:`.registry`.

The only package that creates open_clip models; stages share its forward (:meth:`ClipBackbone.encode`), its
GradCAM (:meth:`ClipBackbone.gradcam`) and its text tower (:meth:`ClipBackbone.encode_text`).
"""

from .clip import load_backbone
from .dense import DENSE_METHODS, DENSE_PRESETS, DenseMixing, dense_mixing
from .dino import DinoBackbone, DinoSpec, check_dino, load_dino
from .gradcam import GRADCAM_LAYERS, BatchGradCam, GradCam, SoftmaxRows
from .loading import EXTRA_CONFIG, ModelSpec, create_model, load_extra_config, register_model, register_tokenizer
from .model import ClipBackbone, Encoded
from .registry import check_model, families, load_model, register_family

__all__ = [
    "EXTRA_CONFIG", "ModelSpec", "create_model", "load_backbone", "load_extra_config", "register_model",
    "register_tokenizer", "GRADCAM_LAYERS", "ClipBackbone", "Encoded", "GradCam", "BatchGradCam", "SoftmaxRows",
    "DENSE_METHODS", "DENSE_PRESETS", "DenseMixing", "dense_mixing",
    "DinoBackbone", "DinoSpec", "check_dino", "load_dino",
    "check_model", "families", "load_model", "register_family",
]  # fmt: skip

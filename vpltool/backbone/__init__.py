"""The frozen CLIP backbone with the CLIP-ES surgery: loading (:mod:`.loading`), the model (:mod:`.model`), its
GradCAM (:mod:`.gradcam`), the training-free dense methods of its last block (:mod:`.dense`: MaskCLIP, SCLIP,
ClearCLIP, NACLIP) and the DINO ViT of SSR's affinity (:mod:`.dino`).

The only package that creates open_clip models; stages share its forward (:meth:`ClipBackbone.encode`), its
GradCAM (:meth:`ClipBackbone.gradcam`) and its text tower (:meth:`ClipBackbone.encode_text`).
"""

import torch

from .dense import DENSE_METHODS, DENSE_PRESETS, DenseMixing, dense_mixing
from .dino import DinoBackbone, DinoSpec, check_dino, load_dino
from .gradcam import GRADCAM_LAYERS, BatchGradCam, GradCam, SoftmaxRows
from .loading import EXTRA_CONFIG, ModelSpec, create_model, load_extra_config, register_model, register_tokenizer
from .model import ClipBackbone, Encoded
from .registry import check_model, families, load_model, register_family


def load_backbone(spec: ModelSpec, device: torch.device | str = "cpu", dense: str | DenseMixing = "none"
                  ) -> ClipBackbone:
    """Build the frozen :class:`ClipBackbone`; a one-line VplError for every way the weights can be missing or
    wrong. ``dense``: how its last block mixes its tokens (:mod:`vpltool.backbone.dense`; ``none`` = CLIP-ES)."""
    mixing = dense_mixing(dense)  # a bad name fails before the weights load
    model, folder = create_model(spec)
    return ClipBackbone(model, spec, torch.device(device), load_extra_config(folder if spec.folder else None), mixing)


register_family("clip", load_backbone, summary="open_clip ViTs, local weight files and folders, the demo's toy CLIP; "
                "the CLIP-ES surgery, --dense a parameter of its last block", module=__name__)


__all__ = [
    "EXTRA_CONFIG", "ModelSpec", "create_model", "load_backbone", "load_extra_config", "register_model",
    "register_tokenizer", "GRADCAM_LAYERS", "ClipBackbone", "Encoded", "GradCam", "BatchGradCam", "SoftmaxRows",
    "DENSE_METHODS", "DENSE_PRESETS", "DenseMixing", "dense_mixing",
    "DinoBackbone", "DinoSpec", "check_dino", "load_dino",
    "check_model", "families", "load_model", "register_family",
]  # fmt: skip

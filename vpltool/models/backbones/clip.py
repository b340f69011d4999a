"""The ``clip`` model family: open_clip ViTs with the CLIP-ES surgery
(:class:`~vpltool.models.backbones.model.ClipBackbone`).

Stages ask for it through the registry, ``load_model("clip", spec, device, dense=...)``
(:mod:`vpltool.models.registry`); this module is the family's one entry point. Its parts stay in their own modules:
which weights and how they load (:mod:`.loading`: local files and folders, open_clip tags, the toy CLIP), the
model and its forward (:mod:`.model`), its GradCAM (:mod:`.gradcam`) and how its last block mixes its tokens
(:mod:`.dense`: ``none`` = CLIP-ES, or one preset per training-free method; a parameter, not a second forward).
"""

from __future__ import annotations

import torch

from ..dense import DenseMixing, dense_mixing
from ..registry import register_family
from .loading import ModelSpec, create_model, load_extra_config
from .model import ClipBackbone


def load_backbone(spec: ModelSpec, device: torch.device | str = "cpu", dense: str | DenseMixing = "none"
                  ) -> ClipBackbone:
    """Build the frozen :class:`ClipBackbone`; a one-line VplError for every way the weights can be missing or
    wrong (a file of another architecture included). ``dense``: how its last block mixes its tokens
    (:mod:`vpltool.models.dense`; ``none`` = CLIP-ES)."""
    mixing = dense_mixing(dense)  # a bad name fails before the weights load
    model, folder = create_model(spec)
    return ClipBackbone(model, spec, torch.device(device), load_extra_config(folder if spec.folder else None), mixing)


register_family("clip", load_backbone, summary="open_clip ViTs, local weight files and folders, the demo's toy CLIP; "
                "the CLIP-ES surgery, --dense a parameter of its last block", module=__name__)

__all__ = ["load_backbone"]

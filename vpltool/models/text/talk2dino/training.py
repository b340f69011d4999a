"""What Talk2DINO's training needs beside the model: its image view and its optimiser (``train.py``,
``dino_extraction_v2.py``, ``src/train_util.py`` of lorebianchi98/Talk2DINO at 4918c2d)."""

from __future__ import annotations

import torch

from .model import IMAGENET_MEAN, IMAGENET_STD

LR = 1e-4  # configs/vitb_mlp_infonce.yaml train.lr
EPOCHS = 100  # train.num_epochs
BATCH_SIZE = 128  # train.batch_size


def train_view(side: int):
    """PIL RGB image -> ``[3, side, side]`` float32: the extraction's transform, ``Resize(side, bicubic)`` (the
    short side), ``CenterCrop(side)``, ``ToTensor``, ImageNet ``Normalize``; no augmentation (the reference extracts
    each image's features once)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(side, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(side), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def make_optimizer(model: torch.nn.Module, lr: float = LR) -> torch.optim.Adam:
    """``optim.Adam(model.parameters(), lr)``: the projection's parameters (the loss's logit scale is not among
    them, so it stays at 1 / 0.07); betas, eps torch's defaults; the weight decay ``train.py`` passes is ignored."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


__all__ = ["LR", "EPOCHS", "BATCH_SIZE", "train_view", "make_optimizer"]

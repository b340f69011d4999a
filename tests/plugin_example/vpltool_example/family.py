"""The example model family ``example-mean`` (imported only when it is named): a "model" that gives a photo's mean
colour, to show the registration a backbone family makes. Its load returns a torch module, as every family's
does: the registry checks each floating-point tensor of its state (here the scale) before handing it out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vpltool.models import register_family
from vpltool.plugins import Licence


class MeanColour(nn.Module):
    """``model(image)``: an ``[H, W, 3]`` uint8 photo -> its ``[3]`` float32 mean colour in [0, 1] times the scale."""

    def __init__(self, scale: float):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, image: np.ndarray) -> np.ndarray:
        mean = np.asarray(image, np.float32).reshape(-1, 3).mean(0) / 255.0
        return (mean * float(self.scale)).astype(np.float32)


def load(spec, device="cpu", **options):
    return MeanColour(float(spec))


register_family("example-mean", load, summary="an example plugin's family: a photo's mean colour",
                module=__name__, licence=Licence("MIT (the example's own)", "no weights: it averages colours"))

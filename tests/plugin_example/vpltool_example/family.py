"""The example model family ``example-mean`` (imported only when it is named): a "model" that gives a photo's mean
colour, to show the registration a backbone family makes."""

from __future__ import annotations

import numpy as np

from vpltool.models import register_family


class MeanColour:
    """``model(image)``: an ``[H, W, 3]`` uint8 photo -> its ``[3]`` float32 mean colour in [0, 1]."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return (np.asarray(image, np.float32).reshape(-1, 3).mean(0) / 255.0 * self.scale).astype(np.float32)


def load(spec, device="cpu", **options):
    return MeanColour(float(spec))


register_family("example-mean", load, summary="an example plugin's family: a photo's mean colour",
                module=__name__)

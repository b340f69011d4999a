"""The example method's work (imported only when ``--dense example-smooth`` runs): NACLIP's last-block attention
(its key-key attention, without the neighbourhood bias) and, after the argmax, the class probabilities averaged
over a box of ``--smooth-size`` pixels, the labels their new argmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vpltool.models.dense import DenseHooks, DenseMixing

PRESET = DenseMixing("example-smooth", "kk", False, False, "bicubic-dino")
DEFAULT_SIZE = 5


def smoothed(probs: torch.Tensor, size: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[C, H, W]`` probabilities -> their ``size`` x ``size`` box mean (the box cut at the borders), and its
    labels: the argmax, 0 where the top probability is below ``threshold``."""
    if size == 1:
        out = probs
    else:
        out = F.avg_pool2d(probs[None].float(), size, stride=1, padding=size // 2, count_include_pad=False)[0]
    top, labels = out.max(0)
    return out, torch.where(top < threshold, torch.zeros_like(labels), labels)


class Hooks(DenseHooks, method="example-smooth", preset=PRESET):
    """The example's one hook: its post-process."""

    def postprocess(self, bb, probs, labels, extras, settings):
        size = (self.cfg.knobs.smooth_size if self.cfg is not None else None) or DEFAULT_SIZE
        return smoothed(probs, size, settings.prob_threshold)

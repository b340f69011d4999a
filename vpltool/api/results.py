"""A segmented photo (:class:`Segmentation`), as numpy or torch, and as transformers' ``image-segmentation`` output.

Torch-free until torch is asked for: :meth:`Segmentation.torch` imports it, :meth:`Segmentation.numpy` needs it only
when the result holds tensors (a segmenter called with ``return_tensors="pt"``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Segmentation:
    """One photo segmented.

    Attributes:
        labels: ``[H, W]`` int64 label map at the photo's size: 0 = background, ``c`` = ``classes[c]``; a numpy
            array, or a torch tensor on the segmenter's device (``return_tensors="pt"``).
        scores: ``[C + 1, H, W]`` float32 per-class scores, index 0 = background (dense methods: probabilities in
            [0, 1], each class the max over its synonyms; PGSeg / GroupViT: its zero-shot logits, not
            probabilities); numpy or torch as ``labels``.
        classes: ``('background', *names)``, the names as given (a synonym list ``cat|kitten`` by its first).
    """

    labels: Any
    scores: Any
    classes: tuple[str, ...]

    def numpy(self) -> Segmentation:
        """The same result as numpy arrays on the host (itself when it holds them already)."""
        if isinstance(self.labels, np.ndarray):
            return self
        return replace(self, labels=self.labels.cpu().numpy().astype(np.int64),
                       scores=self.scores.float().cpu().numpy())

    def torch(self, device: Any = None) -> Segmentation:
        """The same result as torch tensors (``labels`` int64, ``scores`` float32), on ``device`` (None: where they
        are; the host for numpy)."""
        import torch

        labels = torch.as_tensor(self.labels)
        scores = torch.as_tensor(self.scores)
        if device is not None:
            labels, scores = labels.to(device), scores.to(device)
        return replace(self, labels=labels, scores=scores)

    def to_pipeline(self) -> list[dict[str, Any]]:
        """transformers' ``pipeline("image-segmentation")`` output for this photo: per class present in the label
        map (background too), in class order, ``{"label": name, "score": float, "mask": PIL image}``: the mask is
        mode ``L``, 255 on the class's pixels and 0 elsewhere, as transformers gives it; the score is the class's
        mean score over those pixels (a probability for the dense methods, a logit for PGSeg: transformers gives
        None for a semantic segmentation)."""
        from PIL import Image

        result = self.numpy()
        labels, scores = result.labels, result.scores
        out = []
        for c in np.unique(labels).tolist():
            inside = labels == c
            out.append({"label": self.classes[c], "score": float(scores[c][inside].mean()),
                        "mask": Image.fromarray(inside.astype(np.uint8) * 255)})
        return out

    def to_pil(self):
        """The label map as `segment` writes it: a palette (``P``) image with the PASCAL VOC colours, index = class."""
        from PIL import Image

        from ..io.images import voc_palette

        img = Image.fromarray(self.numpy().labels.astype(np.uint8))  # mode L, made P by its palette
        img.putpalette(voc_palette())
        return img


__all__ = ["Segmentation"]

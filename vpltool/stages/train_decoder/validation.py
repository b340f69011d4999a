"""train-decoder's validation: single-scale, unflipped mIoU of the decoder on a split with GT, at predict's size."""

from __future__ import annotations

import numpy as np
import torch

from ... import io
from ...decoder import SegDecoder, input_long_side, predict_logits
from ...models import ClipBackbone
from ...ops.kernels import MiouAccumulator


def evaluate(bb: ClipBackbone, model: SegDecoder, blocks, items, crop_size: int, dtype: torch.dtype,
             label_map: np.ndarray | None = None) -> float | None:
    """Single-scale, unflipped mIoU of ``model`` on dataset items with GT (predict's input size rule); ``label_map``
    renumbers the GT as the training masks were (held-out classes ignored)."""
    acc = MiouAccumulator(model.n_classes)
    for item in items:
        labels = predict_labels(bb, model, blocks, io.load_image(item.image), crop_size, dtype)
        gt = io.read_mask(item.gt)
        acc.add(gt if label_map is None else label_map[gt], labels, item=item.id)
    return acc.result()["miou"]


def predict_labels(bb: ClipBackbone, model: SegDecoder, blocks, image: np.ndarray, crop_size: int,
                   dtype: torch.dtype) -> np.ndarray:
    """``[H, W]`` uint8 classes of an ``[H, W, 3]`` uint8 photo: single scale, unflipped, predict's input size."""
    logits = predict_logits(bb, model, blocks, image, (1.0,), False, input_long_side(None, crop_size), dtype)
    return logits.argmax(0).numpy().astype(np.uint8)

"""Steps 1-2 of `cam`: the softmax-GradCAM target, and GradCAM itself, for one image or a batch.

The target of image b is its own softmax over ``[W_present; W_background]``: the K_b rows of its image-level
classes first, then every background row (:meth:`vpltool.io.Prototypes.image_rows`), at the prototypes' temperature
(or ``--temperature``). Class k's map is the GradCAM of ``p_k``: background rows compete for probability mass but get
no map. The computation itself lives on the backbone (:meth:`vpltool.models.ClipBackbone.gradcam` for one image,
``gradcam_batch`` for B images of one grid, batched by label count), since extract and diagnose share the model's
forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ... import io
from ...config import CamConfig
from ...models import ClipBackbone
from ...models.backbones.gradcam import PrototypeRows


@dataclass
class ImageTokens:
    """What `cam` needs of one image's frozen pass (from an `extract` cache, or computed from the image).

    Attributes:
        last_block_input: ``[1 + hw, width]`` float32 tokens entering the last block.
        attention: ``[hw, hw]`` mean head-averaged attention (CLS removed) of the ``n_prev`` blocks before the last;
            None when ``n_prev`` is 0.
    """

    id: str
    labels: tuple[int, ...]
    image_size: tuple[int, int]
    grid: tuple[int, int]
    last_block_input: torch.Tensor
    attention: torch.Tensor | None
    n_prev: int
    source: str  # the file or image the tokens came from, for messages


def temperature_of(cfg: CamConfig, protos: io.Prototypes) -> float:
    """The softmax temperature: ``--temperature``, else the prototypes file's own (CLIP's 0.01 for text rows)."""
    return cfg.temperature or protos.temperature


def gradcam_image(bb: ClipBackbone, tokens: ImageTokens, protos: io.Prototypes, cfg: CamConfig, temperature: float,
                  precision: str = "fp32"):
    """Steps 1-2 for one image: a :class:`vpltool.models.GradCam` (``maps`` ``[K, h, w]`` in [0, 1], the last
    block's attention, the softmax ``[K + M]``), in CLIP-ES's operation order under ``--parity clip-es``."""
    labels = tokens.labels
    return bb.gradcam(tokens.last_block_input, tokens.grid, protos.image_rows(labels), len(labels), temperature,
                      layer=cfg.layer, exact=cfg.parity == "clip-es", precision=precision)


def gradcam_batch(bb: ClipBackbone, tokens: torch.Tensor, grid: tuple[int, int], labels: Sequence[Sequence[int]],
                  rows: PrototypeRows, cfg: CamConfig, temperature: float, precision: str = "fp32"):
    """Steps 1-2 for B images of one grid (``tokens`` ``[B, 1 + hw, width]``): a
    :class:`vpltool.models.BatchGradCam`, one map per (image, class) pair."""
    return bb.gradcam_batch(tokens, grid, rows.for_labels(labels), temperature, layer=cfg.layer, precision=precision)


def row_names(protos: io.Prototypes, labels) -> list[str]:
    """Display names of an image's softmax rows, in :meth:`io.Prototypes.image_rows` order."""
    rows = [int(protos.class_rows()[c - 1]) for c in labels] + protos.background_rows().tolist()
    return [protos.row_names[r] for r in rows]

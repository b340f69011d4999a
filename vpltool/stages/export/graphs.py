"""The modules that `export` traces: each the very functions `predict` and `segment` run on one photo, with the
photo's sizes fixed (a traced graph keeps the sizes it was traced at).

Both take the photo already resized by Pillow's bicubic to the model's input (what vpltool's loading workers send:
:meth:`~vpltool.models.backbones.preprocess.Preprocess.resize`), ``[1, H, W, 3]`` uint8, and return the scores at the
photo's own size ``[1, N, H0, W0]`` float32 and the labels ``[1, H0, W0]`` int64. The resize stays outside the graph:
ONNX's bicubic is not Pillow's, and the labels must equal vpltool's.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...decoder import decoder_forward


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with no parameter asking for a gradient (the tracer keeps no autograd graph), in place."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class DecoderGraph(nn.Module):
    """A trained decoder with its frozen CLIP, as ``predict --scales 1 --no-flip`` (the VPL recipe's view: the long
    side resized, sides rounded up to the patch): normalise, the frozen blocks, the decoder, the scores resized
    bilinearly to the photo, the argmax."""

    def __init__(self, bb, model, blocks, photo: tuple[int, int]):
        super().__init__()
        self.bb, self.model, self.blocks, self.photo = bb, model, tuple(blocks), tuple(photo)
        self.clip = frozen(bb.model)  # its weights the graph's initializers
        frozen(model)
        self.forward_view = decoder_forward(bb, model, blocks, torch.float32)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[1, H, W, 3]`` uint8 -> (``[1, C + 1, H0, W0]`` float32 logits, their softmax, ``[1, H0, W0]`` int64
        labels)."""
        grid = self.forward_view(self.bb.normalize(pixels))  # [1, C + 1, h, w]
        logits = F.interpolate(grid.float(), size=self.photo, mode="bilinear", align_corners=False)
        return logits, logits.softmax(1), logits.argmax(1)


class DenseGraph(nn.Module):
    """A training-free dense CLIP method with its text queries baked in, as `segment` runs one photo
    (:func:`~vpltool.models.dense.segmentor.segment_logits`, then the method's ``probabilities`` hook): the query
    logits at the photo's size (after PAMR where the method has it) and the labels."""

    def __init__(self, bb, text: Tensor, query_class: Tensor, n_classes: int, settings, photo: tuple[int, int]):
        super().__init__()
        self.bb, self.settings, self.photo, self.n_classes = bb, settings, tuple(photo), n_classes
        self.clip = frozen(bb.model)  # its weights the graph's initializers
        self.register_buffer("text", text.float())
        self.register_buffer("query_class", query_class.long())

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[1, H, W, 3]`` uint8 -> (``[1, Q, H0, W0]`` float32 query logits, ``[1, C + 1, H0, W0]`` class
        probabilities, ``[1, H0, W0]`` int64 labels)."""
        from ...models.dense.segmentor import segment_logits

        logits = segment_logits(self.bb, self.bb.normalize(pixels), self.text, self.settings, [self.photo])[0]
        with grouped_class_max(self.query_class.tolist()):
            probs, labels = self.bb.hooks.probabilities(self.bb, logits.float(), self.query_class, self.n_classes,
                                                        self.settings)
        return logits[None].float(), probs[None], labels[None]


@contextlib.contextmanager
def grouped_class_max(owners: list[int]):
    """Inside the block, the segmentor's class probabilities (each class the max over its queries,
    :func:`~vpltool.models.dense.bands.class_probabilities`) as one ``amax`` per class over its constant query rows
    instead of ``scatter_reduce``: the same values (a max rounds nothing; a class without a query is 0 either way),
    but a graph onnxruntime loads (the TorchScript exporter's ``scatter_reduce`` gives an ``If`` whose output rank
    ONNX's shape inference gets wrong, and a ``Concat`` after it is refused: SCLIP's area filter)."""
    from ...models.dense import segmentor

    def class_probabilities(logits: Tensor, query_class: Tensor, n_classes: int, logit_scale: float) -> Tensor:
        probs = (logits * logit_scale).softmax(0)
        rows = [[q for q, c in enumerate(owners) if c == k] for k in range(n_classes)]
        return torch.stack([probs[r].amax(0) if r else probs.new_zeros(probs.shape[1:]) for r in rows])

    own = segmentor.class_probabilities
    segmentor.class_probabilities = class_probabilities
    try:
        yield
    finally:
        segmentor.class_probabilities = own


class TextGraph(nn.Module):
    """A text-supervised family's checkpoint (PGSeg / GroupViT) with its class list's text baked in, as `segment
    --model pgseg:FILE` runs one photo (:func:`vpltool.stages.segment_text.image_scores`): the zero-shot logits at the
    photo's size and the labels. Its input is the family's own image tensor (``fam.image_tensor``: PGSeg's is
    OpenCV's fixed-point bilinear resize on uint8, which no ONNX resize reproduces), made outside the graph."""

    def __init__(self, fam, model, text: Tensor, n_names: int, bg_thresh: float, slide: tuple[int, int],
                 photo: tuple[int, int]):
        super().__init__()
        self.fam, self.model, self.n_names, self.bg_thresh = fam, frozen(model), n_names, float(bg_thresh)
        self.slide, self.photo = tuple(slide), tuple(photo)
        self.register_buffer("text", text.float())

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[1, 3, h, w]`` float32 (the family's image tensor) -> (``[1, C + 1, H0, W0]`` float32 zero-shot logits
        (twice: they are the family's scores), ``[1, H0, W0]`` int64 labels)."""
        crop = self.slide[0] or self.fam.TrainConfig.ZERO_SHOT.slide[0]
        logits = self.fam.zero_shot_logits(self.model, pixels, self.text, self.bg_thresh,
                                           mode="slide" if self.slide[0] else "whole", crop=crop,
                                           stride=self.slide[1])
        logits = F.interpolate(logits, size=self.photo, mode="bilinear", align_corners=False)
        labels = logits.argmax(1)
        labels = torch.where(labels > self.n_names, torch.zeros_like(labels), labels)  # a background word's pixels
        scores = logits[:, : self.n_names + 1].float()
        return scores, scores, labels

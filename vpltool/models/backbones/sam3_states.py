"""The states SAM 3's calls pass between them (:mod:`.sam3`): an image encoded once, K prompts encoded, their raw
grounding and one prompt's result at the photo's size. Plain tensors in dataclasses; no model code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch


@dataclass
class Sam3Image:
    """One batch of images encoded once (:meth:`Sam3.encode_image`).

    Attributes:
        features: the FPN levels the heads read, ``[B, D, 4g, 4g]``, ``[B, D, 2g, 2g]``, ``[B, D, g, g]`` float32
            (``D`` the DETR width, 256; ``g = S / 14``, 72 at 1008 px): Meta's ``backbone_fpn`` (its ``scalp`` 1);
            the last alone where encoded with ``finer=False`` (no segmentation head).
        positions: their sine position encodings, the same shapes (Meta's ``vision_pos_enc``).
        size: the input side ``S``.
        attended: the DETR encoder's first self-attention over the coarsest level, ``[1, g * g, D]``, by the
            precision it was made in: what every prompt on this one image computes alike (before any text is
            mixed in), made by the first :meth:`Sam3.ground` that reads the image and shared by the others.
        convolved: the segmentation head's convolution of each finer level, ``{stage: [1, D, h, w]}`` by the
            precision it was made in, each stage the head runs by phases: made by the first :meth:`Sam3.ground`
            that runs the head, read by the others (:class:`.sam3_fast.SharedLateralPixelDecoder`).
    """

    features: tuple[torch.Tensor, ...]
    positions: tuple[torch.Tensor, ...]
    size: int
    attended: dict = field(default_factory=dict, repr=False)
    convolved: dict = field(default_factory=dict, repr=False)

    @property
    def batch(self) -> int:
        return int(self.features[0].shape[0])


@dataclass
class Sam3Text:
    """K concept prompts encoded (:meth:`Sam3.encode_text`).

    Attributes:
        features: ``[K, L, D]`` float32 the prompt tokens as the DETR reads them (the text tower's tokens through
            the resizer ``text_projection``: Meta's ``language_features``, batch first); ``L`` = 32.
        valid: ``[K, L]`` bool, True where a token is attended (Meta's ``language_mask`` is its negation).
        embeds: ``[K, L, W]`` float32 the token embeddings before the text tower (``W`` its width, 1024; Meta's
            ``language_embeds``, which ActiveSAM mean-pools over ``valid``).
    """

    features: torch.Tensor
    valid: torch.Tensor
    embeds: torch.Tensor

    def with_tokens(self, tokens: torch.Tensor, valid: torch.Tensor) -> Sam3Text:
        """These prompts with ``tokens`` ``[K, M, D]`` appended to each (ActiveSAM's context memory bank, its
        ``[M, K, D]`` tokens transposed), ``valid`` ``[K, M]`` bool (True = attended; its mask negated). ``embeds``
        are unchanged."""
        if tokens.shape[0] != self.features.shape[0] or tokens.shape[-1] != self.features.shape[-1]:
            raise ValueError(f"extra tokens {tuple(tokens.shape)} for prompts {tuple(self.features.shape)}")
        return replace(self, features=torch.cat([self.features, tokens.to(self.features)], dim=1),
                       valid=torch.cat([self.valid, valid.to(self.valid)], dim=1))

    def select(self, index: Sequence[int] | torch.Tensor) -> Sam3Text:
        """The prompts ``index`` picks (a bucket of them)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.features.device)
        return Sam3Text(self.features[index], self.valid[index], self.embeds[index])


@dataclass
class Sam3Grounding:
    """The raw outputs of K prompts (:meth:`Sam3.ground`), as Meta's ``forward_grounding`` gives them, batch first.

    Attributes:
        pred_logits: ``[K, Q]`` float32 each query's object logit (``Q`` = 200).
        presence_logits: ``[K]`` float32 the prompt's presence logit (Meta's ``presence_logit_dec``).
        pred_boxes: ``[K, Q, 4]`` float32 ``(cx, cy, w, h)`` in [0, 1].
        pred_masks: ``[K, Q, 4g, 4g]`` float32 mask logits (288 x 288 at 1008 px), None when the head was skipped.
        semantic_seg: ``[K, 1, 4g, 4g]`` float32 the semantic head's logits, None when skipped.
    """

    pred_logits: torch.Tensor
    presence_logits: torch.Tensor
    pred_boxes: torch.Tensor
    pred_masks: torch.Tensor | None = None
    semantic_seg: torch.Tensor | None = None
    # the prompts whose heads ran when ``ground`` was given a score (``masks=0.5``): the rows of pred_masks and
    # semantic_seg, in this order; None: every prompt's (or none, with the head skipped)
    mask_prompts: list[int] | None = None

    def scores(self) -> torch.Tensor:
        """``[K, Q]`` each query's probability: ``sigmoid(pred_logits) * sigmoid(presence)`` (Meta's
        ``out_probs``)."""
        return self.pred_logits.sigmoid() * self.presence_logits.sigmoid()[:, None]


@dataclass
class Sam3Concept:
    """One prompt's result at the photo's size (:meth:`Sam3.concepts`; Meta's ``Sam3Processor`` state).

    Attributes:
        masks: ``[n, H, W]`` float32 the kept queries' mask probabilities (sigmoid of the bilinearly resized
            logits; > 0.5 is Meta's ``masks``).
        scores: ``[n]`` float32 their probabilities (:meth:`Sam3Grounding.scores`), each above the threshold.
        boxes: ``[n, 4]`` float32 ``(x0, y0, x1, y1)`` in the photo's pixels.
        presence: the prompt's presence probability.
        semantic: ``[H, W]`` float32 the semantic head's probability.
    """

    masks: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    presence: float
    semantic: torch.Tensor


__all__ = ["Sam3Concept", "Sam3Grounding", "Sam3Image", "Sam3Text"]

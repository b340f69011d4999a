"""SAM 3 as open-vocabulary semantic segmentation (``--dense sam3``): each query word a concept prompt, as
VILA-Lab/ActiveSAM's ``FrozenSAM3Segmentor`` (``activesam/model/base.py``) runs the "SAM 3" row of its table; no
CLIP. Restated from a reading of its code; what the row runs where the base class is abstract is written in
docs/open-vocabulary.md ("SAM 3 as it is").

One photo ``[H0, W0, 3]`` uint8, ``Q`` query words (each class's names, then the background words; no template):

1. :func:`sam3_pixels`: the photo resized to SAM 3's square input (bilinear with antialiasing, on the uint8 image,
   as Meta's ``Sam3Processor``'s torchvision transform), scaled to [0, 1] and normalised with mean and std 0.5; SAM 3's
   image encoder once;
2. per word, its concept prompt grounded on the photo's features (:class:`Sam3Concepts.ground`; the words in
   buckets of :data:`BUCKET`: one forward decodes many prompts, each on its own, as one prompt per forward would);
3. :func:`word_scores`: per word its instance masks whose score ``sigmoid(logit) * presence`` is above
   ``--confidence-threshold``, each resized bilinearly to the photo, its sigmoid times its score, the pixelwise max
   over them (``--sam3-heads instance``, the row's reading); ``semantic``: the semantic head's sigmoid, resized;
   ``both``: their pixelwise max (ActiveSAM's fusion); ``--presence-gate``: times the prompt's presence;
4. the :meth:`Hooks.probabilities` hook: each class the max of its words, the argmax, and pixels whose top class
   score is below ``--prob-threshold`` to background (:mod:`.activesam.calibration`).

The model is the ``sam3`` family's (:mod:`vpltool.models.backbones.sam3`) through :class:`Sam3Concepts`, what this
method and ActiveSAM read of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ...errors import VplError
from .activesam.calibration import class_scores, threshold_background
from .hooks import DenseHooks
from .mixing import DenseMixing

PRESET = DenseMixing("sam3")  # no CLIP block is mixed: the name alone
BUCKET = 32  # prompts grounded in one forward (ActiveSAM's bucket_size); the result is each prompt's own
MASK_CHUNK = 16  # instance masks resized at a time (each [H0, W0] float32)


@dataclass(frozen=True)
class Sam3Settings:
    """The settings a run of either SAM 3 method uses (its knobs resolved; None given = these)."""

    confidence_threshold: float = 0.5  # base.py's confidence_threshold
    heads: str = "instance"
    presence_gate: bool = False


def sam3_settings(cfg) -> Sam3Settings:
    """``cfg.knobs``' values where given (a :class:`~vpltool.config.SegmentConfig`'s)."""
    knobs = getattr(cfg, "knobs", None)
    names = {"confidence_threshold": "confidence_threshold", "sam3_heads": "heads", "presence_gate": "presence_gate"}
    return Sam3Settings(**{ours: getattr(knobs, field) for field, ours in names.items()
                           if getattr(knobs, field, None) is not None})


@dataclass(frozen=True)
class ConceptPrompts:
    """The ``text`` SAM 3's methods hand their segmentor (their ``query_text`` hook): the query words themselves."""

    words: tuple[str, ...]

    def to(self, device) -> ConceptPrompts:
        return self

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class Grounding:
    """SAM 3's answer to K concept prompts on one image (float32, on the model's device): ``logits`` ``[K, N]`` the N
    instance queries' logits, ``presence`` ``[K]`` the prompts' presence logits, ``masks`` ``[K, N, h, w]`` the
    instance mask logits and ``semantic`` ``[K, 1, h, w]`` the semantic head's (None with the head skipped)."""

    logits: torch.Tensor
    presence: torch.Tensor
    masks: torch.Tensor | None
    semantic: torch.Tensor | None


class Sam3Concepts(Protocol):
    """What SAM 3's two methods read of the ``sam3`` family's model (the family implements it)."""

    resolution: int  # the square input side of its image encoder (1008 for SAM 3)
    resizer: torch.nn.Module  # the text encoder's width -> prompt width linear layer

    def image_state(self, pixels: torch.Tensor) -> Any:
        """``[1, 3, S, S]`` normalised pixels (S the resolution, or another multiple of its patch x window: the
        preview's) -> the image's features, reused for every prompt."""

    def ground(self, state: Any, words: Sequence[str], extra: tuple[torch.Tensor, torch.Tensor] | None = None,
               seg_head: bool = True) -> Grounding:
        """K concept prompts (their words, text features cached per word) on the image of ``state``: ``extra``
        ``([M, K, d] tokens, [K, M] bool padding)`` appended to each prompt's text tokens (ActiveSAM's context
        bank); ``seg_head`` False skips the segmentation head (``masks`` and ``semantic`` None)."""

    def token_embeddings(self, words: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[K, L, D]`` each prompt's token embeddings before the text transformer and ``[K, L]`` bool padding."""


def sam3_pixels(photo: torch.Tensor, side: int, device) -> torch.Tensor:
    """``[H0, W0, 3]`` uint8 -> ``[1, 3, side, side]`` float32: Meta's ``Sam3Processor`` transform (the uint8 image
    resized bilinearly with antialiasing to a square, scaled to [0, 1], normalised with mean and std 0.5)."""
    from torchvision.transforms.v2 import functional as TF

    x = photo.to(device).permute(2, 0, 1).contiguous()
    x = TF.resize(x, [side, side], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = TF.to_dtype(x, torch.float32, scale=True)
    return TF.normalize(x, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])[None]


def instance_map(masks: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[n, h, w]`` kept instance mask logits and their ``[n]`` scores -> ``[H0, W0]``: the pixelwise max of each
    mask's sigmoid (resized bilinearly first) times its score; zeros for none."""
    out = masks.new_zeros(size)
    for i in range(0, len(masks), MASK_CHUNK):
        part = F.interpolate(masks[i:i + MASK_CHUNK, None], size=size, mode="bilinear", align_corners=False)
        out = torch.maximum(out, (part[:, 0].sigmoid() * scores[i:i + MASK_CHUNK, None, None]).amax(0))
    return out


def word_scores(g: Grounding, size: tuple[int, int], settings: Sam3Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3 for the K prompts of ``g``: ``[K, H0, W0]`` score maps in [0, 1] and ``[K]`` presence probabilities."""
    presence = g.presence.float().sigmoid()
    probs = g.logits.float().sigmoid() * presence[:, None]
    out = []
    for k in range(len(probs)):
        maps = []
        if settings.heads in ("instance", "both"):
            keep = probs[k] > settings.confidence_threshold
            maps.append(instance_map(g.masks[k][keep].float(), probs[k][keep], size))
        if settings.heads in ("semantic", "both"):
            sem = F.interpolate(g.semantic[k:k + 1].float(), size=size, mode="bilinear", align_corners=False)
            maps.append(sem[0, 0].sigmoid())
        score = maps[0] if len(maps) == 1 else torch.maximum(maps[0], maps[1])
        out.append(score * presence[k] if settings.presence_gate else score)
    return torch.stack(out), presence


def sam3_scores(model: Sam3Concepts, photo: torch.Tensor, words: Sequence[str], size: tuple[int, int],
                settings: Sam3Settings) -> torch.Tensor:
    """Steps 1-3 for one photo: ``[Q, H0, W0]`` float32 per-word scores at ``size``."""
    state = model.image_state(sam3_pixels(photo, model.resolution, _device(model)))
    out = []
    for start in range(0, len(words), BUCKET):
        g = model.ground(state, list(words[start:start + BUCKET]), seg_head=True)
        out.append(word_scores(g, size, settings)[0])
    return torch.cat(out)


def _device(model) -> torch.device:
    return getattr(model, "device", None) or next(model.resizer.parameters()).device


class Sam3Backbone:
    """The model SAM 3's methods run (``bb`` in their hooks): the family's :class:`Sam3Concepts` model, and what the
    shared segmentor reads of a backbone. The photo reaches the method whole (its ``extra_inputs``): the shared
    resize is not used, so its ``pixels`` are a placeholder."""

    def __init__(self, model: Sam3Concepts, hooks, device):
        self.model, self.hooks, self.device = model, hooks, torch.device(device)
        self.embed_dim, self.patch_size = 256, 14

    @property
    def preprocessor(self):
        return _Placeholder()

    def pixels(self, loaded, size) -> torch.Tensor:
        return loaded.to(self.device, torch.float32)

    def encode_text(self, prompts, exact: bool = False) -> torch.Tensor:
        raise VplError(f"--dense {self.hooks.method} prompts SAM 3 with the words themselves; it has no text rows")

    def to(self, device) -> Sam3Backbone:
        return Sam3Backbone(self.model.to(device), self.hooks, device)


class _Placeholder:
    """The shared loader's preprocessing, unused here: one zero pixel per photo (SAM 3 reads the photo itself)."""

    def loaded(self, image, size) -> torch.Tensor:
        return torch.zeros(3, 1, 1, dtype=torch.uint8)


def load_sam3(cfg, device):
    """The ``sam3`` family's model of ``cfg``'s ``--sam3-weights`` (through the registry's door: digest, finite
    weights)."""
    from ..registry import load_model

    return load_model("sam3", _weights(cfg), device)


def _weights(cfg) -> str:
    weights = getattr(getattr(cfg, "knobs", None), "sam3_weights", None) if cfg is not None else None
    if not weights:
        method = getattr(cfg, "dense", "sam3")
        raise VplError(f"--dense {method} needs SAM 3's weights: pass --sam3-weights, a local folder of "
                       "facebook/sam3 (Hugging Face's layout) or Meta's sam3.pt")
    return weights


def check_sam3(cfg) -> None:
    """One line, before any model loads, for no weights given or a file that is not SAM 3's."""
    from ..registry import check_model

    check_model("sam3", _weights(cfg))


class Hooks(DenseHooks, method="sam3", preset=PRESET):
    """SAM 3 per concept prompt: its own model (:meth:`backbone`), the words as prompts (:meth:`query_text`), its
    segmentor (:func:`sam3_scores`) and the background rule (:meth:`probabilities`)."""

    def check(self) -> None:
        check_sam3(self.cfg)

    def record(self) -> dict:
        return {"sam3": vars(sam3_settings(self.cfg))}

    def backbone(self, device):
        return Sam3Backbone(load_sam3(self.cfg, device), self, device)

    def query_text(self, bb, names, templates):
        return ConceptPrompts(tuple(names))

    def extra_inputs(self, item, image):
        return {"photo": torch.from_numpy(image)}

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        knobs = sam3_settings(self.cfg)
        return [sam3_scores(bb.model, extras[i]["photo"], text.words, tuple(size), knobs)
                for i, size in enumerate(sizes)]

    def features(self, bb, pixels, fp16_pos=False):
        raise VplError("--dense sam3 has no CLIP features: it segments through segment or vpltool.segmenter")

    def probabilities(self, bb, logits, query_class, n_classes, settings):
        probs = class_scores(logits, query_class, n_classes)
        return probs, threshold_background(probs, settings.prob_threshold)


__all__ = ["Hooks", "PRESET", "BUCKET", "Sam3Settings", "sam3_settings", "ConceptPrompts", "Grounding",
           "Sam3Concepts", "sam3_pixels", "instance_map", "word_scores", "sam3_scores", "Sam3Backbone", "load_sam3",
           "check_sam3"]

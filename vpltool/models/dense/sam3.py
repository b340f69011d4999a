"""SAM 3 as open-vocabulary semantic segmentation (``--dense sam3``): each query word a concept prompt, as
VILA-Lab/ActiveSAM's ``FrozenSAM3Segmentor`` (``activesam/model/base.py``) runs the "SAM 3" row of its table; no
CLIP. Restated from a reading of its code; what the row runs where the base class is abstract is written in
docs/open-vocabulary.md ("SAM 3 as it is").

One photo ``[H0, W0, 3]`` uint8, ``Q`` query words (each class's names, then the background words; no template):

1. the family's ``prepare``: the photo resized to SAM 3's square input (bilinear with antialiasing, on the uint8
   image, as Meta's ``Sam3Processor``'s torchvision transform), normalised; SAM 3's image encoder once (on CUDA
   :data:`ENCODE_BATCH` photos of the loader's batch a forward, :func:`sam3_scores_batch`: the same numbers);
2. per word, its concept prompt grounded on the photo's features (the family's ``ground``; the words' text encoded
   once per run, the prompts in buckets, :func:`bucket`: 8 on a small grid, one at Meta's size; one forward decodes
   many prompts, each on its own, as one prompt per forward would);
3. :func:`grounding_scores`: per word its instance masks whose score ``sigmoid(logit) * presence`` is above
   ``--confidence-threshold``, each resized bilinearly to the photo, its sigmoid times its score, the pixelwise max
   over them (``--sam3-heads instance``, the row's reading); ``semantic``: the semantic head's sigmoid, resized;
   ``both``: their pixelwise max (ActiveSAM's fusion); ``--presence-gate``: times the prompt's presence;
4. the :meth:`Hooks.probabilities` hook: each class the max of its words, the argmax, and pixels whose top class
   score is below ``--prob-threshold`` to background (:mod:`.activesam.calibration`).

The model is the ``sam3`` family's (:mod:`vpltool.models.backbones.sam3`: ``prepare``, ``encode_image``,
``encode_text``, ``ground``, ``concepts``: Meta's processor's calls, written once there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ...errors import VplError
from .hooks import DenseHooks
from .mixing import DenseMixing

PRESET = DenseMixing("sam3")  # no CLIP block is mixed: the name alone
BUCKET_TOKENS = 4608  # the image's tokens (the DETR's grid, g x g) times the prompts grounded in one forward: 8
# prompts on a 24 x 24 grid (one forward decodes many prompts, each on its own, as one prompt per forward would), one
# at a time on Meta's 72 x 72 (1008 px), where a prompt's encoder activations ([5184, 2048]) and decoder attention
# bias ([8, 200, 5184]) are tens of MB each: in buckets they fall out of the CPU's caches (:func:`bucket`)
ENCODE_BATCH = 8  # photos a batched image-encoder forward takes (sam3_scores_batch): at Meta's 1008 px each holds
# its FPN levels and their positions until its prompts are grounded (the finest [256, 288, 288], 85 MB each in fp32),
# so segment's CUDA batch (32 by default) is encoded 8 at a time
MASK_CHUNK = 16  # instance masks resized and folded at a time (the memory a prompt's masks take at the photo's size)
_UNREAD = ("model", "template_list", "templates")  # a CLIP's entries an earlier vpltool's record held


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


def grounding_scores(grounding, size: tuple[int, int], settings: Sam3Settings,
                     chunk: int = MASK_CHUNK) -> torch.Tensor:
    """Step 3 for K prompts' grounding (the family's ``Sam3Grounding``, its heads run: ``pred_masks`` ``[K, Q, h,
    w]``, ``semantic_seg`` ``[K, 1, h, w]`` logits) -> ``[K, H0, W0]`` score maps in [0, 1] at ``size``.

    The numbers of the family's ``Sam3.concepts`` folded per prompt (each kept mask resized bilinearly, its sigmoid
    times its score, the pixelwise max from zeros; the same to float32's last bit), without holding every kept mask
    at the photo's size: they are resized ``chunk`` at a time into a running max, so the memory is ``chunk + K + 2``
    maps of the photo's size (a chunk's resize, its sigmoid and product written in place) whatever the number of
    instances kept (at a low ``--confidence-threshold`` all 200 queries a prompt, 480 MB a prompt on a 2000 x 300
    photo when held at once)."""
    h, w = (int(v) for v in size)
    probs = grounding.scores()
    presence = grounding.presence_logits.sigmoid()
    semantic = None  # [K, 1, H0, W0]: as many maps as prompts (a bucket), whatever the instances kept
    if settings.heads in ("semantic", "both"):
        semantic = F.interpolate(grounding.semantic_seg, (h, w), mode="bilinear", align_corners=False).sigmoid()
    out = []
    for k in range(probs.shape[0]):
        maps = []
        if settings.heads in ("instance", "both"):
            keep = probs[k] > settings.confidence_threshold
            low, scores = grounding.pred_masks[k][keep], probs[k][keep]
            inst = low.new_zeros(h, w)
            for i in range(0, len(scores), chunk):
                masks = F.interpolate(low[i:i + chunk, None], (h, w), mode="bilinear", align_corners=False)[:, 0]
                # in place: the resize's own buffer (the same numbers; no second and third map of the chunk)
                inst = torch.maximum(inst, masks.sigmoid_().mul_(scores[i:i + chunk, None, None]).amax(0))
            maps.append(inst)
        if semantic is not None:
            maps.append(semantic[k, 0])
        score = maps[0] if len(maps) == 1 else torch.maximum(maps[0], maps[1])
        out.append(score * float(presence[k]) if settings.presence_gate else score)
    return torch.stack(out)


def bucket(sam) -> int:
    """The prompts :func:`sam3_scores` grounds in one forward on ``sam`` (the family's model): as many as
    :data:`BUCKET_TOKENS` holds of its DETR's grid (``image_size / patch`` squared), at least one."""
    grid = int(sam.image_size) // int(sam.patch)
    return max(1, BUCKET_TOKENS // (grid * grid))


def sam3_scores(sam, photo: torch.Tensor, text, size: tuple[int, int], settings: Sam3Settings) -> torch.Tensor:
    """Steps 1-3 for one photo: ``sam`` the family's model, ``text`` its encoding of the Q words (once per run) ->
    ``[Q, H0, W0]`` float32 per-word scores at ``size``."""
    return image_scores(sam, sam.encode_image(sam.prepare(photo)), text, size, settings)


def sam3_scores_batch(sam, photos: Sequence[torch.Tensor], text, sizes: Sequence[tuple[int, int]],
                      settings: Sam3Settings, encode: int = ENCODE_BATCH) -> list[torch.Tensor]:
    """:func:`sam3_scores` for B photos (each ``[H, W, 3]`` uint8, any size) whose image encoder runs on ``[b, 3, S,
    S]`` batches of their inputs, ``encode`` photos a forward: on a GPU one ViT forward of b photos keeps it busier
    than b of one (the grounding stays per photo: its prompts already fill a forward). Per photo ``[Q, H0, W0]``
    float32 at its size; the same numbers as one photo at a time up to the kernels' summation order (fp32: below
    1e-4)."""
    out = []
    for start in range(0, len(photos), encode):
        chunk = range(start, min(start + encode, len(photos)))
        images = sam.encode_image(torch.cat([sam.prepare(photos[i]) for i in chunk]))
        out += [image_scores(sam, _one_image(images, j), text, tuple(sizes[i]), settings) for j, i in enumerate(chunk)]
    return out


def _one_image(images, i: int):
    """Photo ``i`` of a batch's :class:`~vpltool.models.backbones.sam3_states.Sam3Image` as a batch of one (its
    caches its own: what the prompts of one image share)."""
    from ..backbones.sam3_states import Sam3Image

    return Sam3Image(tuple(f[i:i + 1] for f in images.features), tuple(p[i:i + 1] for p in images.positions),
                     images.size)


def image_scores(sam, image, text, size: tuple[int, int], settings: Sam3Settings) -> torch.Tensor:
    """Steps 2-3 for one encoded photo (a :class:`~vpltool.models.backbones.sam3_states.Sam3Image` of batch 1) ->
    ``[Q, H0, W0]`` float32 per-word scores at ``size``."""
    n, threshold = int(text.features.shape[0]), settings.confidence_threshold
    out = []
    size_of = bucket(sam)
    for start in range(0, n, size_of):
        index = list(range(start, min(start + size_of, n)))
        if settings.heads != "instance":
            out.append(grounding_scores(sam.ground(image, text.select(index)), size, settings))
            continue
        # instance masks alone: a prompt none of whose queries is kept scores 0 everywhere, so the segmentation
        # head runs for the others only (the same numbers, without the work the reference throws away)
        g = sam.ground(image, text.select(index), masks=threshold)
        maps = torch.zeros(len(index), *size, device=g.pred_logits.device)
        if g.mask_prompts:
            rows = g.mask_prompts
            kept = replace(g, pred_logits=g.pred_logits[rows], presence_logits=g.presence_logits[rows],
                           pred_boxes=g.pred_boxes[rows], mask_prompts=None)
            maps[rows] = grounding_scores(kept, size, settings).to(maps.dtype)
        out.append(maps)
    return torch.cat(out)


def encoded(sam, photo: torch.Tensor, side: int, finer: bool = True) -> tuple:
    """``(sam, "encode_image", arguments, image)``: the photo encoded at ``side`` as the methods encode it (their
    ``image_side`` hook, for ``seg.embed``; ``finer=False``: the coarsest level alone, as ActiveSAM's preview)."""
    pixels = sam.prepare(photo, side)
    # the arguments as seg.embed's kept calls match them (keywords as (name, value) after the positions)
    return sam, "encode_image", (pixels,) if finer else (pixels, ("finer", False)), sam.encode_image(pixels, finer)


class Sam3Backbone:
    """The model SAM 3's methods run (``bb`` in their hooks): ``sam``, the ``sam3`` family's model (``Sam3``; its
    ``nn.Module`` is ``model``), and what the shared segmentor reads of a backbone. The photo reaches the method
    whole (its ``extra_inputs``): the shared resize is not used, so its ``pixels`` are a placeholder."""

    tokenizer = None  # the words are prompts as they are: no unknown word to warn of

    def __init__(self, sam, hooks, device):
        self.sam, self.model, self.hooks, self.device = sam, sam.model, hooks, torch.device(device)
        self.embed_dim, self.patch_size = int(sam.width), int(sam.patch)
        self._text: dict = {}

    def text_of(self, words: Sequence[str]):
        """The words' encoding (``Sam3.encode_text``), made once per vocabulary: the prompts of every photo and
        bucket are picked from it (ActiveSAM's per-prompt text cache)."""
        key = tuple(words)
        if key not in self._text:
            self._text = {key: self.sam.encode_text(list(words))}
        return self._text[key]

    @property
    def preprocessor(self):
        return _Placeholder()

    def pixels(self, loaded, size) -> torch.Tensor:
        """The placeholders (a collated batch, or a list of them) as ``[B, 3, 1, 1]`` float32 on the device."""
        batch = torch.stack(list(loaded)) if isinstance(loaded, (list, tuple)) else loaded
        return batch.to(self.device, torch.float32)

    def encode_text(self, prompts, exact: bool = False) -> torch.Tensor:
        raise VplError(f"--dense {self.hooks.method} prompts SAM 3 with the words themselves; it has no text rows")

    def to(self, device) -> Sam3Backbone:
        return Sam3Backbone(self.sam.to(device), self.hooks, device)


class _Placeholder:
    """The shared loader's preprocessing, unused here: one zero pixel per photo (SAM 3 reads the photo itself)."""

    def loaded(self, image, size) -> torch.Tensor:
        return torch.zeros(3, 1, 1, dtype=torch.uint8)


def load_sam3(cfg, device):
    """The ``sam3`` family's model of ``cfg``'s ``--sam3-weights`` (through the registry's door: digest, finite
    weights)."""
    from ..backbones.sam3 import Sam3Spec
    from ..registry import load_model

    return load_model("sam3", Sam3Spec(_weights(cfg)), device)


def _weights(cfg) -> str:
    weights = getattr(getattr(cfg, "knobs", None), "sam3_weights", None) if cfg is not None else None
    if not weights:
        method = getattr(cfg, "dense", "sam3")
        raise VplError(f"--dense {method} needs SAM 3's weights: pass --sam3-weights, a local folder of "
                       "facebook/sam3 (Hugging Face's layout) or Meta's sam3.pt")
    return weights


def check_sam3(cfg) -> None:
    """One line, before any model loads, for no weights given or a file that is not SAM 3's."""
    from ..backbones.sam3 import Sam3Spec
    from ..registry import check_model

    check_model("sam3", Sam3Spec(_weights(cfg)))


class Hooks(DenseHooks, method="sam3", preset=PRESET):
    """SAM 3 per concept prompt: its own model (:meth:`backbone`), the words as prompts (:meth:`query_text`), its
    segmentor (:func:`sam3_scores`) and the background rule (:meth:`probabilities`)."""

    def check(self) -> None:
        check_sam3(self.cfg)

    def models(self) -> list:
        from ..backbones.sam3 import Sam3Spec
        from .hooks import ModelNeed

        weights = getattr(getattr(self.cfg, "knobs", None), "sam3_weights", None) if self.cfg is not None else None
        return [ModelNeed("sam3", Sam3Spec(weights) if weights else None, "--sam3-weights")]

    def record(self) -> dict:
        return {"sam3": vars(sam3_settings(self.cfg))}

    def older_record(self, old: dict, new: dict) -> dict:
        # an earlier vpltool recorded the CLIP and templates these methods never read: the same run without them
        return {k: v for k, v in old.items() if k not in _UNREAD or k in new}

    def backbone(self, device):
        return Sam3Backbone(load_sam3(self.cfg, device), self, device)

    def query_text(self, bb, names, templates):
        return ConceptPrompts(tuple(names))

    def extra_inputs(self, item, image):
        return {"photo": torch.tensor(image)}  # a copy: the decoded array may be read-only

    def image_side(self, bb, extras):
        return [encoded(bb.sam, extras["photo"], side, finer) for side, finer in self._sides(bb)]

    def _sides(self, bb) -> list[tuple[int, bool]]:
        """The sides the photo is encoded at, each with whether its finer levels are made: SAM 3's own, with."""
        return [(bb.sam.image_size, True)]

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        knobs = sam3_settings(self.cfg)
        encoded = bb.text_of(text.words)
        if bb.device.type == "cuda" and len(sizes) > 1:  # the loader's batch through one ViT forward
            return sam3_scores_batch(bb.sam, [e["photo"] for e in extras], encoded, sizes, knobs)
        return [sam3_scores(bb.sam, extras[i]["photo"], encoded, tuple(size), knobs)
                for i, size in enumerate(sizes)]

    def features(self, bb, pixels, fp16_pos=False):
        raise VplError(f"--dense {self.method} has no CLIP features: it segments through segment or "
                       "vpltool.segmenter")

    def probabilities(self, bb, logits, query_class, n_classes, settings):
        from .activesam.calibration import class_scores, threshold_background  # (the package imports this module)

        probs = class_scores(logits, query_class, n_classes)
        return probs, threshold_background(probs, settings.prob_threshold)


__all__ = ["Hooks", "PRESET", "BUCKET_TOKENS", "ENCODE_BATCH", "bucket", "Sam3Settings", "sam3_settings",
           "ConceptPrompts", "grounding_scores", "sam3_scores", "sam3_scores_batch", "image_scores", "Sam3Backbone",
           "load_sam3", "check_sam3"]

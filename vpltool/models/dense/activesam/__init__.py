"""ActiveSAM (``--dense activesam``; VILA-Lab/ActiveSAM@41cad43, ``activesam/model/segmentor.py``): SAM 3 made an
active-vocabulary segmenter, training-free. Restated from a reading of its code; no CLIP.

One photo, ``Q`` query words (the class file's names; every string SAM 3's text encoder reads is first
canonicalised: :func:`.vocabulary.canonical`):

1. **contextual prompt expansion**, once per vocabulary (:func:`.context.context_bank`): per word two semantic-
   neighbour tokens and two WordNet-hypernym tokens (``--neighbor-tokens``, ``--hypernym-tokens``), appended to its
   prompt's text tokens at full resolution;
2. **presence preview** (only when Q > ``--max-active``): the photo at ``--preview-resolution``, every word's
   prompt in buckets of ``--bucket-size`` without the context tokens, the segmentation head skipped; the words at
   or above the presence scores' ``1 - --quantile-alpha`` quantile stay, at most ``--max-active``
   (:func:`.pruning.active_words`);
3. **bucketed full-resolution decoding**: the photo at SAM 3's own side, the kept words in buckets, each with its
   context tokens; per word its instance masks above ``--confidence-threshold`` (each mask's sigmoid times its
   score, pixelwise max) and its semantic head, fused by their pixelwise max, times its presence; words not kept
   score 0 (:func:`~..sam3.grounding_scores` with ``heads`` both and the presence gate);
4. each class the max of its words, the argmax, and **margin-aware background calibration** at ``--prob-threshold``
   and ``--mabc-exponent`` (:func:`.calibration.mabc_labels`).
"""

from __future__ import annotations

import torch

from ....config.dense_knobs import ACTIVESAM_DEFAULTS
from ..mixing import DenseMixing
from ..sam3 import Hooks as Sam3Hooks
from ..sam3 import Sam3Settings, grounding_scores
from .calibration import class_scores, mabc_labels
from .context import ContextBank, context_bank, pooled_embeddings
from .pruning import active_words, buckets, needs_preview
from .vocabulary import canonical, hypernyms, wordnet

PRESET = DenseMixing("activesam")


class ActiveSamSettings:
    """configs/base_config.py's model dict, with ``cfg.knobs``' values where given."""

    DEFAULTS = ACTIVESAM_DEFAULTS  # defined once, in vpltool.config.dense_knobs

    def __init__(self, cfg=None):
        knobs = getattr(cfg, "knobs", None)
        for name, value in self.DEFAULTS.items():
            given = getattr(knobs, name, None)
            setattr(self, name, value if given is None else given)

    def fusion(self) -> Sam3Settings:
        return Sam3Settings(confidence_threshold=self.confidence_threshold, heads="both", presence_gate=True)


def build_bank(sam, words, s: ActiveSamSettings) -> ContextBank:
    """Step 1 for the vocabulary ``words`` (raw: canonicalised here, as the reference's text encoder wrapper does);
    ``sam`` the family's model."""
    def pooled_of(strings):
        text = sam.encode_text([canonical(w) for w in strings])
        return pooled_embeddings(text.embeds.float(), ~text.valid)

    wn = wordnet() if s.hypernym_tokens > 0 else None
    return context_bank(list(words), pooled_of, sam.model.text_projection, s.neighbor_tokens, s.hypernym_tokens,
                        lambda w, n: hypernyms(canonical(w), n, wn))


def preview_presence(sam, photo, text, s: ActiveSamSettings) -> torch.Tensor:
    """Step 2's scores: ``[Q]`` presence probabilities on the preview (``text``: the Q canonical words encoded)."""
    # the coarsest level alone: the head is skipped here, so the neck's finer levels would go unread
    image = sam.encode_image(sam.prepare(photo, s.preview_resolution), finer=False)
    return torch.cat([sam.ground(image, text.select(b), masks=False).presence_logits.sigmoid()
                      for b in buckets(int(text.features.shape[0]), s.bucket_size)])


def activesam_scores(sam, photo, text, size, s: ActiveSamSettings, bank: ContextBank) -> tuple:
    """Steps 2-3 for one photo (``text``: the Q canonical words encoded, once per run): ``[Q, H0, W0]`` float32
    per-word scores, the kept words, the preview's scores (None when skipped)."""
    n = int(text.features.shape[0])
    presence, active = None, list(range(n))
    if needs_preview(n, s.max_active):
        presence = preview_presence(sam, photo, text, s)
        active = active_words(presence, s.quantile_alpha, s.max_active)
    image = sam.encode_image(sam.prepare(photo))
    scores = torch.zeros(n, *size, device=sam.device)
    fusion = s.fusion()
    for b in buckets(len(active), s.bucket_size):
        kept = [active[i] for i in b]
        prompts = text.select(kept)
        extra = bank.tokens(kept)
        if extra is not None:  # the context tokens, batch first, True = attended
            prompts = prompts.with_tokens(extra[0].transpose(0, 1), ~extra[1])
        scores[kept] = grounding_scores(sam.ground(image, prompts), size, fusion).float()
    return scores, active, presence


class Hooks(Sam3Hooks, method="activesam", preset=PRESET):
    """ActiveSAM's hooks: SAM 3's own (its model, the words as prompts, the photo; :class:`..sam3.Hooks`), and its
    four parts in place of SAM 3's scores and background rule."""

    def check(self) -> None:
        super().check()
        if ActiveSamSettings(self.cfg).hypernym_tokens > 0:
            wordnet()  # one line when nltk or its WordNet data is missing, before any model loads

    def record(self) -> dict:
        return {"activesam": vars(ActiveSamSettings(self.cfg))}

    def _sides(self, bb) -> list[tuple[int, bool]]:
        """The preview's side (read when the words outnumber --max-active; its coarsest level alone), then SAM 3's
        own."""
        return [(ActiveSamSettings(self.cfg).preview_resolution, False), (bb.sam.image_size, True)]

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        s = ActiveSamSettings(self.cfg)
        key = (text.words, id(bb.sam))
        if getattr(self, "_bank_key", None) != key:  # once per vocabulary and model
            self._bank, self._bank_key = build_bank(bb.sam, text.words, s).to(bb.sam.device), key
        encoded = bb.text_of([canonical(w) for w in text.words])
        return [activesam_scores(bb.sam, extras[i]["photo"], encoded, tuple(size), s, self._bank)[0]
                for i, size in enumerate(sizes)]

    def probabilities(self, bb, logits, query_class, n_classes, settings):
        s = ActiveSamSettings(self.cfg)
        probs = class_scores(logits, query_class, n_classes)
        return probs, mabc_labels(probs, settings.prob_threshold, s.mabc_exponent)


__all__ = ["Hooks", "PRESET", "ActiveSamSettings", "build_bank", "preview_presence", "activesam_scores"]

"""A caption's nouns and their prompts: the text side of GroupViT's multi-label loss (`train-pgseg --multi-label K`).

The reference (NVlabs/GroupViT, and Ferenas/PGSeg at 9f167cd, ``datasets/builder.py`` ``WordAugTokenizeWrapper``)
tags the caption with nltk (``word_tokenize`` then ``pos_tag``) and keeps the words tagged ``NN``, ``NNS``,
``NNP`` or any ``VB*`` (every occurrence, in caption order); it draws ``min(K, n)`` of them without replacement
(``np.random.choice``), puts each in a template drawn from CLIP's 80 ImageNet templates (its ``template_set``
``full``), and pads to ``K`` prompts with the caption itself. The texts of one sample are ``[caption, prompt_1 ..
prompt_K]``.

Where the words come from (:func:`noun_source`), vpltool's rule:

* ``--nouns FILE`` given: the caption's words (lower-cased runs of letters, digits, ``-`` and ``'``) that are
  entries of FILE (one word a line; blank lines and ``#`` comments skipped), every occurrence, in caption order.
  The demo uses this rule, its FILE holding the world's shape and background words.
* else nltk, when it is installed with its tokenizer and tagger data (``punkt``/``punkt_tab`` and
  ``averaged_perceptron_tagger``/``_eng``): the reference's tags.
* else one line: pass ``--nouns FILE`` or install nltk's data.

The draw is seeded per sample (the caller's ``numpy.random.RandomState``), in the reference's order of calls:
the nouns first, then one template per drawn noun.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..config.presets import IMAGENET_TEMPLATES
from ..errors import VplError

NOUN_TAGS = ("NN", "NNS", "NNP", "VBG", "VB", "VBD", "VBN", "VBP", "VBZ")  # builder.py's get_tag(..., [...])
_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")


def read_vocabulary(path: str | Path) -> frozenset[str]:
    """The entries of a noun vocabulary file (one word a line, lower-cased; ``#`` comments and blank lines
    skipped); one line for a missing, unreadable or empty file or an entry of several words."""
    path = Path(path)
    if not path.is_file():
        raise VplError(f"--nouns {path}: no such file; pass a text file with one noun a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VplError(f"--nouns {path}: cannot be read as UTF-8 text ({e.__class__.__name__}); pass a text file "
                       "with one noun a line") from None
    words = [ln.split("#", 1)[0].strip().lower() for ln in lines]
    words = [w for w in words if w]
    if not words:
        raise VplError(f"--nouns {path}: holds no noun; write one noun a line")
    bad = next((w for w in words if not _WORD.fullmatch(w)), None)
    if bad is not None:
        raise VplError(f"--nouns {path}: entry {bad!r} is not one word; write one noun a line")
    return frozenset(words)


class VocabularyNouns:
    """``caption -> its words that are vocabulary entries`` (every occurrence, caption order); picklable (it
    goes to the DataLoader's workers)."""

    def __init__(self, vocabulary: frozenset[str]):
        self.vocabulary = vocabulary

    def __call__(self, caption: str) -> list[str]:
        return [w for w in _WORD.findall(caption.lower()) if w in self.vocabulary]


class NltkNouns:
    """The reference's tagger: ``nltk.word_tokenize`` + ``nltk.pos_tag``, the words tagged :data:`NOUN_TAGS`."""

    def __call__(self, caption: str) -> list[str]:
        import nltk

        words = nltk.word_tokenize(caption)
        return [w for w, tag in nltk.pos_tag(words) if tag in NOUN_TAGS] if words else []


def nltk_nouns() -> NltkNouns | None:
    """:class:`NltkNouns`, or None when nltk or its tokenizer / tagger data is not installed (it is never
    downloaded here)."""
    try:
        NltkNouns()("a photo of a dog.")
    except Exception:  # not installed (ImportError), or LookupError: its data is missing
        return None
    return NltkNouns()


def noun_source(vocabulary_file: str | Path | None) -> tuple[Callable[[str], list[str]], str]:
    """``(caption -> nouns, what it is)`` by the module's rule; one line when there is none."""
    if vocabulary_file is not None:
        return VocabularyNouns(read_vocabulary(vocabulary_file)), f"vocabulary {vocabulary_file}"
    tagger = nltk_nouns()
    if tagger is None:
        raise VplError("--multi-label: no noun tagger: nltk with its punkt and averaged_perceptron_tagger data is "
                       "not installed; pass --nouns FILE (one noun a line) or install them")
    return tagger, "nltk pos_tag"


def noun_prompts(caption: str, nouns: Sequence[str], k: int, rng: np.random.RandomState,
                 templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
    """``[caption, prompt_1 .. prompt_k]``: ``min(k, len(nouns))`` nouns drawn without replacement, each in a
    template drawn for it, then the caption itself until there are ``k`` prompts (the reference's padding)."""
    prompts: list[str] = []
    if len(nouns) > 0:
        chosen = rng.choice(list(nouns), min(k, len(nouns)), replace=False)
        prompts = [str(rng.choice(list(templates))).format(noun) for noun in chosen]
    prompts += [caption] * (k - len(prompts))
    return [caption, *prompts]


__all__ = ["NOUN_TAGS", "read_vocabulary", "VocabularyNouns", "NltkNouns", "nltk_nouns", "noun_source", "noun_prompts"]

"""The toy CLIP's word-level tokenizer (a model folder's ``vpltool.json`` names it ``"tokenizer": "word"``)."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import torch

from ..config import presets
from ..errors import VplWarning

UNKNOWN = 0  # a word outside the vocabulary: the padding id, whose row no training prompt ever held inside it
SHOWN = 12  # unknown words a warning names (then how many more)


class WordTokenizer:
    """Word-level tokenizer of the toy CLIP: ``[SOT] words [EOT] 0...``; EOT has the highest id so that
    open_clip's argmax text pooling finds it.

    The toy knows only the demo world's words. A word outside them is read as :data:`UNKNOWN` (the toy has no row of
    its own for it), so names made of such words look alike to it: one warning line says so, once per tokenizer (a
    command encodes its names and its background words in several calls), naming the first call's unknown words,
    the most used first (a class name is in every prompt of its class, a template's word in one per class), instead
    of refusing a photo's class names outright. :meth:`warn_again` opens another such scope (the Python door, for
    each new list of class names): its first call with words not named yet warns again, naming only those.
    """

    def __init__(self, vocabulary: Sequence[str], context_length: int):
        self.words = list(vocabulary)
        self.index = {w: i + 1 for i, w in enumerate(self.words)}  # 0 = padding
        self.sot, self.eot = len(self.words) + 1, len(self.words) + 2
        self.context_length = context_length
        self.warned = False
        self.named: set[str] = set()  # unknown words a warning has named (or counted) already

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 3

    def split(self, text: str) -> list[str]:
        return "".join(c if c.isalnum() else " " for c in text.lower()).split()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        unknown: Counter[str] = Counter()  # prompts per unknown word, in order of first use
        for row, text in enumerate(texts):
            words = self.split(text)
            unknown.update(list(dict.fromkeys(w for w in words if w not in self.index)))  # once a prompt
            ids = [self.sot] + [self.index.get(w, UNKNOWN) for w in words][: self.context_length - 2] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        new = [w for w, _ in unknown.most_common() if w not in self.named]
        if new and not self.warned:
            self.warned = True
            self.named.update(new)
            warnings.warn(VplWarning(self.unknown_line(new)), stacklevel=2)
        return out

    def warn_again(self) -> None:
        """Let the next call that meets unknown words not named yet warn again (naming only those): a Python
        segmenter calls it for each new list of class names, which a command gives once."""
        self.warned = False

    def unknown_line(self, words: list[str]) -> str:
        """The one warning line for ``words`` outside the vocabulary: the words of vpltool's own default templates
        and background words (which the user never typed) are counted, not named."""
        typed = [w for w in words if w not in _DEFAULT_WORDS]
        n_default = len(words) - len(typed)
        known = ", ".join(self.words[:SHOWN]) + (", ..." if len(self.words) > SHOWN else "")
        knows = (f"it knows only the demo world's {len(self.words)} words ({known}: the 'vocabulary' of its "
                 "vpltool.json)")
        if not typed:
            return (f"the toy CLIP does not know {n_default} word{'s' if n_default != 1 else ''} of vpltool's default "
                    f"templates and background words: each is read as one unknown-word token; {knows}, so give "
                    "templates and background words in them")
        shown = ", ".join(repr(w) for w in typed[:SHOWN]) + (f" and {len(typed) - SHOWN} more" if len(typed) > SHOWN
                                                             else "")
        plural = "s" if n_default != 1 else ""
        defaults = f", and {n_default} word{plural} of vpltool's default templates and background words" if n_default \
            else ""
        return (f"the toy CLIP does not know {shown}: each is read as one unknown-word token (so is any other word "
                f"outside its vocabulary{defaults}), so names made of such words look alike to it; {knows}, so use it "
                "on the demo world's shapes, colours and backgrounds")


def _words(texts) -> set[str]:
    return {w for text in texts for w in "".join(c if c.isalnum() else " " for c in text.lower()).split()}


# the words of the prompts vpltool makes by itself (its default templates and background words): not the user's
_DEFAULT_WORDS = _words((*presets.IMAGENET_TEMPLATES, presets.CLIP_ES_TEMPLATE, *presets.VOC_BACKGROUND,
                         *presets.COCO_BACKGROUND))

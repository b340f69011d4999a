"""The toy CLIP's word-level tokenizer (a model folder's ``vpltool.json`` names it ``"tokenizer": "word"``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import VplError


class WordTokenizer:
    """Word-level tokenizer of the toy CLIP: ``[SOT] words [EOT] 0...``; EOT has the highest id so that
    open_clip's argmax text pooling finds it."""

    def __init__(self, vocabulary: Sequence[str], context_length: int):
        self.words = list(vocabulary)
        self.index = {w: i + 1 for i, w in enumerate(self.words)}  # 0 = padding
        self.sot, self.eot = len(self.words) + 1, len(self.words) + 2
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 3

    def split(self, text: str) -> list[str]:
        return "".join(c if c.isalnum() else " " for c in text.lower()).split()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = self.split(text)
            unknown = [w for w in words if w not in self.index]
            if unknown:
                # no option named: the prompts come from --templates, --classes, --background, a class file, a
                # decoder's record or captions, depending on the command
                raise VplError(f"prompt {text!r}: words {unknown} are not in the toy CLIP's vocabulary (it knows only "
                               f"the demo world's {len(self.words)} words: {', '.join(self.words)}); use it on the "
                               "demo world, or keep the prompts (templates, class names, background words) to those "
                               "words")
            ids = [self.sot] + [self.index[w] for w in words][: self.context_length - 2] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

"""The demo world: rendered scenes with exact masks (:mod:`.scenes`, written as a dataset by :mod:`.make_world`), a
toy CLIP (:mod:`.toyclip`) trained on their captions (:mod:`.train_toy_clip`), the per-stage report
(:mod:`.report`) and their settings (:mod:`.config`). A module per command, like the stages.

It plugs into the core through the backbone's registration point (the ``vpltool.plugins`` entry point calls
:func:`register`): ``--model vpltool-toy`` and the toy's word-level tokenizer (the toy CLIP's ``word`` and the
toy PGSeg's ``toy-words``). The core names neither.
"""

from __future__ import annotations

from pathlib import Path

TOY_MODEL = "vpltool-toy"  # --model alias of the toy CLIP shipped inside the package
TOY_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy-clip"


def _word_tokenizer(extra: dict, context_length: int):
    from .tokenizer import WordTokenizer

    return WordTokenizer(extra["vocabulary"], context_length)


def register() -> None:
    """Register the toy CLIP alias and its tokenizer with :mod:`vpltool.models` (cheap: nothing is loaded)."""
    from ..models import register_model, register_tokenizer

    register_model(TOY_MODEL, lambda: TOY_DIR)
    register_tokenizer("word", _word_tokenizer)
    register_tokenizer("toy-words", _word_tokenizer)  # the toy PGSeg's (its config's tokenizer name)

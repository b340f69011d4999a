"""ActiveSAM's contextual prompt expansion, its text side (VILA-Lab/ActiveSAM ``activesam/prompt_expansion/``, read
and restated): the lexical canonicalisation of class names, and WordNet's hypernyms through nltk's ``wordnet``
corpus. Torch-free.

Every string SAM 3's text encoder sees in an ActiveSAM run goes through :func:`canonical` first (the reference wraps
the model's ``forward_text``): the query words of the preview, of the full-resolution buckets and of the pooled
embeddings, and the hypernyms themselves.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ....errors import VplError, install_extra

# class names written as one word, split where a word boundary was lost (its COMPOUND_SPLIT_MAP), keyed by the name
# lower-cased with everything but letters and digits removed
COMPOUNDS = {
    "trafficlight": "traffic light", "trafficsign": "traffic sign", "pottedplant": "potted plant",
    "tvmonitor": "tv monitor", "windowpane": "window pane", "coffeetable": "coffee table",
    "streetlight": "street light", "signboard": "sign board", "arcademachine": "arcade machine",
    "kitchenisland": "kitchen island", "dirttrack": "dirt track", "chestofdrawers": "chest of drawers",
    "televisionreceiver": "television receiver", "conveyerbelt": "conveyor belt", "bedclothes": "bed clothes",
    "sportsball": "sports ball", "baseballbat": "baseball bat", "baseballglove": "baseball glove",
    "tennisracket": "tennis racket", "wineglass": "wine glass", "cellphone": "cell phone",
    "hairdrier": "hair drier", "firehydrant": "fire hydrant", "stopsign": "stop sign",
    "parkingmeter": "parking meter", "aeroplane": "airplane", "diningtable": "dining table",
    "motorbike": "motorcycle",
}
# COCO-Stuff's material-first names in English word order (its WORDORDER_REPAIR_MAP)
WORD_ORDER = {
    "wallbrick": "brick wall", "wallconcrete": "concrete wall", "wallstone": "stone wall", "walltile": "tile wall",
    "wallwood": "wooden wall", "wallpanel": "wall panel", "floormarble": "marble floor", "floorstone": "stone floor",
    "floortile": "tile floor", "floorwood": "wooden floor", "ceilingtile": "tile ceiling",
    "windowblind": "window blind",
}
# homonyms and archaic names as the object the benchmarks mean (its AMBIGUOUS_LABEL_MAP)
AMBIGUOUS = {
    "tie": "necktie", "remote": "remote control", "mouse": "computer mouse", "monitor": "computer monitor",
    "ashcan": "trash can", "plaything": "toy", "buffet": "sideboard",
}
_NLTK_ENV = ("KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")  # what importing nltk sets in os.environ
WORDNET_FIX = (f"install nltk and its WordNet data ({install_extra('activesam')}; python -m nltk.downloader "
               "wordnet, or copy an nltk_data folder holding corpora/wordnet and set NLTK_DATA to it), or pass "
               "--hypernym-tokens 0")


def _key(name: str) -> str:
    """A name lower-cased with every run of characters other than a-z and 0-9 removed (``Traffic-Light`` ->
    ``trafficlight``)."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def canonical(name: str, universal: bool = True) -> str:
    """The name SAM 3 is prompted with: a compound split, and (``universal``, as ActiveSAM runs it) a word order
    repaired or an ambiguous name made specific; any other name unchanged (not even its case)."""
    key = _key(name)
    if key in COMPOUNDS:
        return COMPOUNDS[key]
    if universal:
        return WORD_ORDER.get(key, AMBIGUOUS.get(key, name))
    return name


@lru_cache(maxsize=1)
def wordnet():
    """nltk's WordNet reader, loaded now; one line naming the fix when nltk or its data is missing, asked before any
    model loads (the method's ``check``). The reference stops too, later and with a traceback: its
    ``from nltk.corpus import wordnet`` inside ``try/except (ImportError, LookupError)`` imports nltk's lazy loader,
    which finds no data only at the first ``wordnet.synsets`` call, outside the ``try``, and raises ``LookupError``
    while its context bank is built (without nltk itself it adds no hypernym token)."""
    import os

    saved = {k: os.environ.get(k) for k in _NLTK_ENV}
    try:
        from nltk.corpus import wordnet as wn
    except ImportError:
        raise VplError(f"--dense activesam reads WordNet's hypernyms through nltk, which is not installed: "
                       f"{WORDNET_FIX}") from None
    finally:  # nltk's import sets OpenMP's variables for the whole process (and its workers): put them back
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        wn.ensure_loaded()
    except LookupError:
        raise VplError(f"--dense activesam: nltk finds no WordNet data (corpora/wordnet under its nltk_data "
                       f"folders or NLTK_DATA): {WORDNET_FIX}") from None
    return wn


def hypernyms(name: str, count: int, wn=None) -> list[str]:
    """Up to ``count`` names of the hypernyms of ``name``'s first noun sense in WordNet: the lookup key is the name
    lower-cased with spaces and hyphens as underscores; each hypernym's first lemma with underscores as spaces,
    repeats dropped; ``[]`` for a name WordNet does not know. The hypernyms are taken in the order of their synset
    names (as nltk before 3.9 returned them): nltk 3.9 on returns them from a set, in an order that changes with
    the process's string hashing, so that the reference's choice of two among three changes from run to run."""
    wn = wn or wordnet()
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    senses = wn.synsets(key, pos=wn.NOUN)
    out: list[str] = []
    for synset in (sorted(senses[0].hypernyms(), key=lambda s: s.name())[:count] if senses else []):
        lemma = synset.lemmas()[0].name().replace("_", " ")
        if lemma and lemma not in out:
            out.append(lemma)
    return out


__all__ = ["COMPOUNDS", "WORD_ORDER", "AMBIGUOUS", "WORDNET_FIX", "canonical", "wordnet", "hypernyms"]

"""Which models vpltool can load, listed as ``open_clip.list_models()`` / ``open_clip.list_pretrained()`` and
``timm.list_models(filter)`` list theirs: :func:`list_models` and :func:`list_pretrained`.

The CLIPs are the aliases plugins register (``vpltool-toy``, the demo world's toy CLIP, shipped: offline) and
open_clip's architectures (their weights by tag, :func:`list_pretrained`: downloaded once, then read from the cache;
``local-dir:/path`` and ``hf-hub:ORG/REPO`` name others); the text-supervised families segment from a checkpoint
file (``pgseg:FILE``); the side models of some methods are a timm DINO (``proxy_model=``) and SAM's image encoder
(``sam_model=``). Importing this module is free; a listing imports open_clip (and torch) or timm when it needs them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from ..errors import VplError

FAMILIES = ("clip", "text", "dino", "sam")  # what list_models(family=...) takes


def _matching(names: list[str], filter: str | Sequence[str]) -> list[str]:
    patterns = [filter] if isinstance(filter, str) else list(filter)
    patterns = [p.lower() for p in patterns if p] or ["*"]
    return [n for n in names if any(fnmatch.fnmatchcase(n.lower(), p) for p in patterns)]


def _aliases() -> list[str]:
    from ..models.backbones.aliases import registered_models  # torch-free: the plugins' aliases

    return registered_models()


def _clip_models() -> list[str]:
    from ..models.backbones.loading import import_open_clip

    return [*_aliases(), *import_open_clip().list_models()]


def _text_models() -> list[str]:
    from ..models.registry import SEGMENTERS

    return [f"{name}:FILE" for name in SEGMENTERS]


def _dino_models() -> list[str]:
    try:
        import timm
    except ImportError:  # the dino extra: pip install -e '.[dino]'
        return []
    return [n for n in timm.list_models("vit_*", pretrained=True) if "dino" in n.partition(".")[2]]


def _sam_models() -> list[str]:
    from ..models.backbones.sam import SAM_ARCHS

    return list(SAM_ARCHS)


def list_models(filter: str | Sequence[str] = "", family: str | None = None) -> list[str]:
    """The models vpltool can load, by the name each option takes.

    Args:
        filter: a wildcard pattern (``"ViT-B*"``; case aside) or several: the names matching any; ``""``: all.
        family: ``"clip"``: ``segmenter(model=...)``'s CLIPs (registered aliases first, then open_clip's
            architectures); ``"text"``: the text-supervised checkpoints, ``NAME:FILE`` (``pgseg:FILE``, ...);
            ``"dino"``: the timm DINO ViTs of ``proxy_model=`` (with timm installed); ``"sam"``: SAM's encoders of
            ``sam_model=``. None: what ``segmenter(model=...)`` takes, the CLIPs then the checkpoints.

    Returns:
        The names, in that order.
    """
    if family is not None and family not in FAMILIES:
        raise VplError(f"list_models(family={family!r}): choose {', '.join(FAMILIES)}")
    table = {"clip": _clip_models, "text": _text_models, "dino": _dino_models, "sam": _sam_models}
    chosen = ("clip", "text") if family is None else (family,)
    return _matching([n for f in chosen for n in table[f]()], filter)


def list_pretrained(filter: str | Sequence[str] = "") -> list[tuple[str, str]]:
    """``(model, pretrained)`` pairs ``segmenter(model=..., pretrained=...)`` takes, as
    ``open_clip.list_pretrained()``: each registered alias with ``"none"`` (its weights are in its folder), then
    open_clip's tags. ``filter``: wildcard patterns on the model's name."""
    from ..models.backbones.loading import import_open_clip

    pairs = [(alias, "none") for alias in _aliases()] + [tuple(p) for p in import_open_clip().list_pretrained()]
    names = set(_matching([m for m, _ in pairs], filter))
    return [(m, t) for m, t in pairs if m in names]


__all__ = ["FAMILIES", "list_models", "list_pretrained"]

"""Which methods :func:`vpltool.segmenter` takes, listed as ``timm.list_models`` and ``open_clip.list_models`` list
theirs, and the one-line refusal of a name that is none of them ("did you mean ...?"). Torch-free."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from ..errors import VplError


def method_families() -> dict[str, str]:
    """Every method name -> its model family: the training-free dense methods of ``segment --dense`` (the
    ``clip`` family, in ``--help``'s order), then the text-supervised families' names (``pgseg``, ``groupvit``:
    a checkpoint, ``--model pgseg:FILE``)."""
    from ..config.dense import DENSE_CHOICES
    from ..models.registry import SEGMENTERS

    return {**{name: "clip" for name in DENSE_CHOICES}, **SEGMENTERS}


def list_methods(filter: str | Sequence[str] = "", family: str | None = None) -> list[str]:
    """The methods :func:`vpltool.segmenter` takes, as ``timm.list_models(filter)`` lists models.

    Args:
        filter: a wildcard pattern (``"*clip*"``; case aside) or several: the names matching any; ``""``: all.
        family: ``"clip"`` (the dense CLIP methods of ``segment --dense``) or a text-supervised family
            (``pgseg``: PGSeg and GroupViT checkpoints); None: every family.

    Returns:
        The names, dense methods first in ``--help``'s order, then the text-supervised ones.
    """
    table = method_families()
    if family is not None and family not in set(table.values()):
        raise VplError(f"list_methods(family={family!r}): choose {', '.join(sorted(set(table.values())))}")
    patterns = [filter] if isinstance(filter, str) else list(filter)
    patterns = [p.lower() for p in patterns if p] or ["*"]
    return [name for name, fam in table.items() if (family is None or fam == family)
            and any(fnmatch.fnmatchcase(name.lower(), p) for p in patterns)]


def check_method(method: str) -> str:
    """``method`` if :func:`vpltool.segmenter` takes it, else one line with the closest name and the list."""
    from ..config.checks import did_you_mean

    names = list(method_families())
    if method not in names:
        hint = did_you_mean(method, names)
        raise VplError(f"method {method!r}:{hint or ''} choose one of {', '.join(names)} (vpltool.list_methods())")
    return method


__all__ = ["check_method", "list_methods", "method_families"]

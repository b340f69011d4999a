"""Which methods :func:`vpltool.segmenter` takes, listed as ``timm.list_models`` and ``open_clip.list_models`` list
theirs, and the one-line refusal of a name that is none of them ("did you mean ...?"). Torch-free."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from ..config.licences import Licence
from ..errors import VplError


def method_families(listed: bool = False) -> dict[str, str]:
    """Every method name -> its model family: the training-free dense methods of ``segment --dense`` (the
    ``clip`` family, in ``--help``'s order), then the text-supervised families' names (``pgseg``, ``groupvit``:
    a checkpoint, ``--model pgseg:FILE``). ``listed``: with every plugin's that lists cleanly, each listed in a child
    process and none loaded here (:func:`vpltool.plugins.survey.shown`); else those loaded here."""
    from ..config.dense import DENSE_CHOICES
    from ..models.registry import SEGMENTERS

    own = {**{name: "clip" for name in DENSE_CHOICES}, **SEGMENTERS}
    if not listed:
        return own
    from ..plugins import entry_points

    entry_points.listed()
    dense = {n: "clip" for n, fam in _shown("methods").items() if fam == "clip" and n not in own}
    text = {n: fam for n, fam in _shown("methods").items() if fam != "clip" and n not in own}
    return {**{n: fam for n, fam in own.items() if fam == "clip"}, **dense,
            **{n: fam for n, fam in own.items() if fam != "clip"}, **text}


def _shown(what: str) -> dict:
    """A listing's view of the plugins not loaded here (:func:`vpltool.plugins.survey.shown`)."""
    from ..plugins.survey import shown

    return shown(what)


def list_methods(filter: str | Sequence[str] = "", family: str | None = None, details: bool = False,
                 licences: bool = False) -> list[str] | dict[str, str] | dict[str, Licence | None]:
    """The methods :func:`vpltool.segmenter` takes, as ``timm.list_models(filter)`` lists models.

    Args:
        filter: a wildcard pattern (``"*clip*"``; case aside) or several: the names matching any; ``""``: all.
        family: ``"clip"`` (the dense CLIP methods of ``segment --dense``) or a text-supervised family
            (``pgseg``: PGSeg and GroupViT checkpoints); None: every family.
        details: a dict of each name and one line saying what it is (:func:`method_summary`) instead of a list.
        licences: a dict of each name and its :class:`~vpltool.config.licences.Licence` (the code it follows, the
            weights it loads; None: a plugin's that declares none) instead of a list (:func:`family_licences`
            gives the model families').

    Returns:
        The names, dense methods first in ``--help``'s order, then the text-supervised ones.
    """
    table = method_families(listed=True)  # the plugins' too, each listed in a child: none loaded here
    if family is not None and family not in set(table.values()):
        raise VplError(f"list_methods(family={family!r}): choose {', '.join(sorted(set(table.values())))}")
    if not isinstance(filter, str) and not (isinstance(filter, (list, tuple))
                                            and all(isinstance(p, str) for p in filter)):
        raise VplError(f"list_methods({filter!r}): the filter is a pattern ('*clip*') or a list of them, not "
                       f"{'an' if type(filter).__name__[0] in 'aeiou' else 'a'} {type(filter).__name__}")
    patterns = [filter] if isinstance(filter, str) else list(filter)
    patterns = [p.lower() for p in patterns if p] or ["*"]
    names = [name for name, fam in table.items() if (family is None or fam == family)
             and any(fnmatch.fnmatchcase(name.lower(), p) for p in patterns)]
    if licences:
        return {name: _listed_licence(name) for name in names}
    return {name: _listed_summary(name) for name in names} if details else names


def _loaded(method: str) -> bool:
    """Whether ``method``'s row is in this process's tables (vpltool's own, or a plugin loaded here)."""
    return method in method_families()


def _listed_licence(method: str) -> Licence | None:
    """:func:`method_licence`, or a plugin's as its child listing said (its plugin not loaded here)."""
    if _loaded(method):
        return method_licence(method)
    said = _shown("licences").get(method)
    return None if said is None else Licence(**said)


def _listed_summary(method: str) -> str:
    """:func:`method_summary`, or a plugin's as its child listing said (its plugin not loaded here)."""
    return method_summary(method) if _loaded(method) else _shown("summaries")[method]


def method_licence(method: str) -> Licence | None:
    """The :class:`~vpltool.config.licences.Licence` that ``method``'s spec row or text-supervised family's row
    declares (torch-free); None: a plugin's that declares none."""
    from ..config.dense import DENSE_SPECS
    from ..models.registry import SEGMENTERS, TEXT_FAMILIES

    check_method(method)
    return TEXT_FAMILIES[SEGMENTERS[method]].licence if method in SEGMENTERS else DENSE_SPECS[method].licence


def family_licences() -> dict[str, Licence | None]:
    """Every model family -> the :class:`~vpltool.config.licences.Licence` its registration declares (each
    family's module is imported: torch loads); None: a plugin's that declares none. A plugin's family not loaded
    here is read in a child process (:func:`vpltool.plugins.survey.family_licences`): a listing loads no plugin."""
    from ..models.registry import families, family, loaded_families
    from ..plugins.survey import family_licences as listed_licences

    names, own = families(), set(loaded_families())
    listed = listed_licences([n for n in names if n not in own]) if any(n not in own for n in names) else {}
    return {name: (family(name).licence if name in own else
                   None if listed[name] is None else Licence(**listed[name]))
            for name in names if name in own or name in listed}


def method_summary(method: str) -> str:
    """One line saying what ``method`` is, read from its spec row (:data:`vpltool.config.dense.DENSE_SPECS`: its
    segmentor's defaults, its side models) or its text-supervised family's row."""
    from ..config.dense import DENSE_SPECS
    from ..models.registry import SEGMENTERS, TEXT_FAMILIES

    check_method(method)
    if method in SEGMENTERS:
        row = TEXT_FAMILIES[SEGMENTERS[method]]
        return f"a {row.title} checkpoint, trained on image-text pairs (model='{method}:FILE': {row.files})"
    spec = DENSE_SPECS[method]
    s = spec.settings
    crop = f"windows {s.slide_crop}/{s.slide_stride}" if s.slide_crop else "the whole image"
    extra = (f", area {s.area_threshold:g}" if s.area_threshold else "") + (
        f", PAMR {s.pamr_steps}" if s.pamr_steps else "")
    what = ("CLIP's own last block, unchanged: no dense method, the baseline (CLIP-ES's path)" if method == "none"
            else "a training-free dense CLIP method: CLIP's last block mixed as its paper does")
    if spec.plugin is not None:  # a method of a package outside vpltool (vpltool.plugins)
        what = f"a dense CLIP method of the plugin {spec.plugin}"
    sides = [f"a DINO proxy ({spec.proxy_model})" if spec.proxy_model else "", "SAM's image encoder" if spec.sam
             else ""]
    with_ = " and ".join(x for x in sides if x)
    return (f"{what}{', with ' + with_ if with_ else ''}; its segmentor: short side {s.short_side}, {crop}, scale "
            f"{s.logit_scale:g}, threshold {s.prob_threshold:g}{extra}")


def check_method(method: str) -> str:
    """``method`` if :func:`vpltool.segmenter` takes it, else one line with the closest name and the list."""
    from ..config.checks import did_you_mean

    names = list(method_families())
    if method not in names:
        from ..plugins.entry_points import want

        if want(method):  # a plugin's method, named: its plugin loaded now
            names = list(method_families())
    if method not in names:
        hint = did_you_mean(method, names)
        raise VplError(f"method {method!r}:{hint or ''} choose one of {', '.join(names)} (vpltool.list_methods())")
    return method


__all__ = ["check_method", "family_licences", "list_methods", "method_families", "method_licence", "method_summary"]

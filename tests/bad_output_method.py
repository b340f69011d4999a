"""A ``--dense`` method whose output is damaged as a broken plugin or a buggy method damages it: MaskCLIP's mixing,
and a ``postprocess`` hook that gives back the labels and probabilities with one of :data:`DAMAGES` applied.

``robustness_cases.py`` registers it (:func:`registered`) as ``--dense test-bad-output`` for its rows, and
``test_fuzz.py`` applies the same damages to the output of every ``--dense`` method (:func:`damaged_postprocess`).
Every damage must be refused in one line naming the method before a mask is written (vpltool.stages._masks)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from vpltool.models.dense import DENSE_PRESETS, DenseHooks

METHOD = "test-bad-output"


def _label_past_the_classes(probs, labels):
    labels = labels.clone()
    labels[0, 0] = len(probs)  # one past the last class (C + 1 rows: background and C classes)
    return probs, labels


def _labels_past_255(probs, labels):
    return probs, labels + 300  # a uint8 mask would hold them modulo 256: other classes, silently


def _negative_labels(probs, labels):
    return probs, labels - 1  # -1 as a uint8 mask is 255: ignore, silently


def _nan_probabilities(probs, labels):
    probs = probs.clone()
    probs[0, 0, 0] = float("nan")
    return probs, labels


# name -> (probs [C + 1, H, W] float, labels [H, W] int64) -> damaged
DAMAGES: dict[str, Callable] = {
    "a label past the classes": _label_past_the_classes,
    "labels past 255": _labels_past_255,
    "negative labels": _negative_labels,
    "a half-size label map": lambda p, lab: (p, lab[::2, ::2]),
    "float labels": lambda p, lab: (p, lab.float()),
    "NaN probabilities": _nan_probabilities,
    "probabilities above 1": lambda p, lab: (p * 2 + 0.5, lab),
    "probabilities of another shape": lambda p, lab: (p[:-1], lab),
}
_DAMAGE = ["a label past the classes"]


class Hooks(DenseHooks, method=METHOD, preset=DENSE_PRESETS["maskclip"]):
    def postprocess(self, bb, probs, labels, extras, settings):
        return DAMAGES[_DAMAGE[0]](probs, labels)


@contextlib.contextmanager
def registered(damage: str) -> Iterator[str]:
    """``--dense test-bad-output`` registered in this process with ``damage`` (its row removed after)."""
    from vpltool.config.dense import DENSE_SEGMENTORS, DENSE_SPECS, DenseMethodSpec

    _DAMAGE[0] = damage
    DENSE_SPECS[METHOD] = DenseMethodSpec(DENSE_SEGMENTORS["maskclip"], module=__name__)
    try:
        yield METHOD
    finally:
        del DENSE_SPECS[METHOD]


def damaged_postprocess(method: str, damage: str) -> contextlib.AbstractContextManager:
    """``method``'s own output (its ``postprocess`` hook's, or the shared one's) with ``damage`` applied, while the
    context lasts: a patch of its hooks class."""
    from unittest import mock

    from vpltool.models.dense.hooks import hooks_class

    cls = hooks_class(method) or DenseHooks
    own = cls.postprocess

    def postprocess(self, bb, probs, labels, extras, settings):
        return DAMAGES[damage](*own(self, bb, probs, labels, extras, settings))

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(cls, "postprocess", postprocess))
    stack.enter_context(mock.patch.object(cls, "own_postprocess", True))
    return stack


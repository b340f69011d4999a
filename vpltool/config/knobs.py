"""A ``--dense`` method's own settings: a frozen dataclass of its knobs (:class:`MethodKnobs`), one field each made
by :func:`knob` (its option and ``--help`` text in the field's metadata), and :class:`Knob`, a knob as the command
line shows it. Torch-free: `segment` and `benchmark` make their options from these classes when the CLI is built.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Knob:
    """One knob of one method as the command line shows it: a field of the method's :class:`MethodKnobs` class
    (made by :func:`knob`, read from its metadata) and its option (`segment` and `benchmark` make it from this row;
    its type is the field's)."""

    field: str  # the MethodKnobs field (None there = the method's value, or the benchmark preset's)
    option: str  # its option: "--cos-fac", or "--stretch/--no-stretch" for a switch
    help: str  # --help's text after "--dense METHOD: ", with the method's default in [default: ...]
    # shared options (SegmentConfig fields whose options are made elsewhere) that this knob's value reads when it
    # starts with one of `when` (CorrCLIP's --region-masks sam reads --sam-model and --sam-weights); inert otherwise
    uses: tuple[str, ...] = ()
    when: tuple[str, ...] = ()
    # given with another --dense method: warned about and ignored (None), or refused, this saying why ("Trident's
    # SAM prompt refinement needs SAM's image encoder": a refinement silently skipped would be a different result)
    needs: str | None = None


def knob(option: str, help: str, *, uses: tuple[str, ...] = (), when: tuple[str, ...] = (),
         needs: str | None = None, newer: bool = False) -> Any:
    """A field of a :class:`MethodKnobs` class: default None (the method's own value, or the benchmark preset's),
    its option and ``--help`` text in the field's metadata (:class:`Knob` says what each is)::

        @dataclass(frozen=True)
        class CassKnobs(MethodKnobs):
            global_weight: float | None = knob("--global-weight", "the image embedding's share ... [default: 0.1].")

    ``help`` is what follows ``--dense NAME: `` in ``--help``: the command line puts the names of the methods that
    read the knob first (``--global-weight  --dense cass: the image embedding's share ...``), so the text starts
    with what the knob is, lower-case, and ends with its default in ``[default: ...]`` (None shows no value).

    ``newer``: a knob added to a method after runs of it were recorded: a stage record leaves it out at None (the
    method's own value, what those runs ran), so that they resume with the same parameters."""
    return field(default=None, metadata={"option": option, "help": help, "uses": tuple(uses), "when": tuple(when),
                                         "needs": needs, "newer": newer})


@dataclass(frozen=True)
class MethodKnobs:
    """A ``--dense`` method's own settings: a frozen dataclass of its knobs, one :func:`knob` field each (None = its
    own value), checked in its ``__post_init__`` (one line naming the option). A method without knobs has this class
    itself. :class:`SegmentConfig` holds the chosen method's (``cfg.knobs``); `segment` and `benchmark` make one
    option per field; a stage record keeps them by field name beside the shared settings, as before they were a
    class of their own, so earlier runs resume."""

    @classmethod
    def rows(cls) -> tuple[Knob, ...]:
        """Its knobs as the command line shows them, in field order."""
        return tuple(Knob(f.name, f.metadata["option"], f.metadata["help"], f.metadata.get("uses", ()),
                          f.metadata.get("when", ()), f.metadata.get("needs")) for f in fields(cls))

    @classmethod
    def types(cls) -> dict[str, type]:
        """Each field's value type, ``float | None`` read as ``float`` (its option's type)."""
        import types as _types

        hints = typing.get_type_hints(cls)
        out = {}
        for f in fields(cls):
            kind = hints[f.name]
            if isinstance(kind, _types.UnionType) or typing.get_origin(kind) is typing.Union:
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            out[f.name] = kind
        return out

    def given(self) -> dict[str, Any]:
        """``{field: value}`` of the knobs given (not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


__all__ = ["Knob", "MethodKnobs", "knob"]

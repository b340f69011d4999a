"""A second text-supervised family for tests, ``toytext``: every hook of
:class:`vpltool.models.text.family.TextSegFamily` over the tiny model of :mod:`pgseg_stand_in` (patch features, a
bag-of-words text tower, four soft groups). It proves that a family is its module plus its registry row: install
the row with :func:`install_row` (what a new family writes in ``vpltool/models/registry.py``) and `segment
--model toytext:FILE`, `cam`, ``vpltool.segmenter`` and the shared trainer take it with no other edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pgseg_stand_in as base

from vpltool.config.text import TextTrainConfig, ZeroShotSettings

NAME = "toytext"


@dataclass(frozen=True)
class ToyTextTrainConfig(TextTrainConfig):
    """The stand-in's configuration: the shared loop's fields and one knob of its own."""

    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {"reference": {}, "tiny": {"batch_size": 2, "epochs": 2,
                                                                             "crop_size": 32, "min_scale": 1.0,
                                                                             "log_every": 1}}
    ZERO_SHOT: ClassVar[ZeroShotSettings] = ZeroShotSettings(bg_thresh=0.3, short_side=32, slide=(0, 0),
                                                             min_side=16, source="tests/text_family_stand_in.py")
    FINAL: ClassVar[str] = "toytext.safetensors"
    CHECKPOINT_KIND: ClassVar[str] = "toytext-checkpoint"
    FILE_KINDS: ClassVar[dict[str, str]] = {"pgseg": "a toytext model (tests)",
                                            "toytext-checkpoint": "a toytext training checkpoint (tests)"}

    family: str = NAME
    npr: bool = False  # the stand-in model's extra regulariser term


class ToyTextFamily(base.StandInFamily):
    """The stand-in's hooks (:class:`pgseg_stand_in.StandInFamily`) under its own name and configuration."""

    name = NAME
    TrainConfig = ToyTextTrainConfig


def install_row(monkeypatch) -> None:
    """The registry row a new family adds (here in-process, for one test; a plugin's package registers it so,
    vpltool.plugins.register_text_family): the names it segments under and its module follow from the row."""
    from vpltool.models import registry
    from vpltool.models.registry import TextFamilyRow

    monkeypatch.setitem(registry.TEXT_FAMILIES, NAME, TextFamilyRow(
        "text_family_stand_in_register", "text_family_stand_in:ToyTextTrainConfig", (NAME,), "the toy text family",
        "a toytext.safetensors (tests)"))

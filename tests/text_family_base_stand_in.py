"""A third text-supervised family for tests, ``basetoy``: :class:`vpltool.models.text.base.TextFamilyBase` with the
five hooks a family writes (the tiny model of :mod:`pgseg_stand_in`), every other hook the base's default. Its row
(:func:`install_row`) names text_family_base_register, which registers it when ``text_family("basetoy")`` imports
it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import pgseg_stand_in as base
import torch.nn.functional as F

from vpltool.config.text import TextTrainConfig, ZeroShotSettings
from vpltool.models.text.base import TextFamilyBase

NAME = "basetoy"


@dataclass(frozen=True)
class BaseToyTrainConfig(TextTrainConfig):
    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {"reference": {}, "tiny": {"batch_size": 2, "epochs": 1,
                                                                             "crop_size": 32, "min_scale": 1.0,
                                                                             "log_every": 1}}
    ZERO_SHOT: ClassVar[ZeroShotSettings] = ZeroShotSettings(bg_thresh=0.2, short_side=32, slide=(0, 0),
                                                             min_side=16, source="tests/text_family_base_stand_in.py")
    FINAL: ClassVar[str] = "basetoy.safetensors"
    CHECKPOINT_KIND: ClassVar[str] = "basetoy-checkpoint"
    FILE_KINDS: ClassVar[dict[str, str]] = {NAME: "a basetoy model (tests)",
                                            "basetoy-checkpoint": "a basetoy training checkpoint (tests)"}
    family: str = NAME


class BaseToyFamily(TextFamilyBase):
    """Five hooks; the base gives the other twelve."""

    name = NAME
    TrainConfig = BaseToyTrainConfig
    ModelConfig = base.PGSegConfig

    def tokenizer(self, cfg, vocabulary=None):
        return base.tokenizer(cfg)

    def model_config(self, cfg, init=None):
        return init if init is not None else replace(base.PGSegConfig(img_size=cfg.crop_size), npr=False)

    def build_model(self, cfg, seed=0):
        return base.build_model(cfg, seed)

    def forward_train(self, model, images, tokens, gather=None, keys=None):
        return model.forward_train(images, tokens, gather=gather, keys=keys)

    def class_scores(self, model, images, text):
        p = model.cfg.patch
        x = images[..., : images.shape[-2] // p * p, : images.shape[-1] // p * p]
        feats = F.normalize(model.img_proj(model._patches(x)), dim=-1)  # [B, hw, D]
        return (feats @ text.t()).transpose(1, 2).reshape(len(x), len(text), x.shape[-2] // p, x.shape[-1] // p)


def install_row(monkeypatch) -> None:
    from vpltool.models import registry
    from vpltool.models.registry import TextFamilyRow

    monkeypatch.setitem(registry.TEXT_FAMILIES, NAME, TextFamilyRow(
        "text_family_base_register", "text_family_base_stand_in:BaseToyTrainConfig", (NAME,), "the base toy family",
        "a basetoy file"))

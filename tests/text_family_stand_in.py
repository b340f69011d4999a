"""A second text-supervised family for tests, ``toytext``: every hook of
:class:`vpltool.models.text_family.TextSegFamily` over the tiny model of :mod:`pgseg_stand_in` (patch features, a
bag-of-words text tower, four soft groups). It proves that a family is its module plus its registry row: install
the row with :func:`install_row` (what a new family writes in ``vpltool/models/registry.py``) and `segment
--model toytext:FILE`, `cam`, ``vpltool.segmenter`` and the shared trainer take it with no other edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pgseg_stand_in as base
import torch
import torch.nn.functional as F

from vpltool.config.text import TextTrainConfig, ZeroShotSettings

NAME = "toytext"


@dataclass(frozen=True)
class ToyTextTrainConfig(TextTrainConfig):
    """The stand-in's configuration: the shared loop's fields and one knob of its own."""

    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {"reference": {}, "tiny": {"batch_size": 4, "epochs": 2,
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


class ToyTextFamily:
    name = NAME
    TrainConfig = ToyTextTrainConfig
    TEMPLATES = {"simple": ("a photo of a {}.",)}

    def tokenizer(self, cfg, vocabulary=None):
        return base.tokenizer(cfg)

    def caption_length(self, cfg):
        return base.tokenizer(cfg).length, cfg.context_length

    def class_tokens(self, names, tokenize, templates):
        return torch.stack([tokenize([t.format(n) for t in templates]) for n in names])

    def class_text_embeddings(self, model, tokens):
        n, t, length = tokens.shape
        with torch.no_grad():
            emb = model.encode_text(tokens.reshape(n * t, length)).reshape(n, t, -1).mean(1)
        return F.normalize(emb, dim=-1)

    def image_tensor(self, image, short_side):
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        return F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)

    def zero_shot_logits(self, model, images, text, bg_thresh=0.3, with_bg=True, mode="whole", crop=448,
                         stride=224):
        with torch.no_grad():
            p = model.cfg.patch
            x = images[:, :, : images.shape[2] // p * p, : images.shape[3] // p * p]
            patches = model._patches(x)  # [B, h*w, C]
            maps = model.groups(patches).softmax(-1)  # [B, h*w, 4]
            groups = torch.einsum("bng,bnc->bgc", maps, patches) / maps.sum(1)[..., None]
            sim = (F.normalize(model.img_proj(groups), dim=-1) @ text.t()).softmax(-1)  # [B, 4, N]
            pix = torch.einsum("bng,bgk->bkn", maps, sim).reshape(len(x), -1, x.shape[2] // p, x.shape[3] // p)
            pix = F.interpolate(pix, size=images.shape[-2:], mode="bilinear", align_corners=False)
            if not with_bg:
                return pix
            bg = (pix.max(1, keepdim=True).values < bg_thresh).to(pix.dtype)
            return torch.cat([bg, pix], dim=1)

    def check_checkpoint(self, path):
        return base.load_checkpoint(path)[0]

    def load_checkpoint(self, path):
        return base.load_checkpoint(path)

    def load_model(self, path, device="cpu"):
        cfg, state = base.load_checkpoint(path)
        model = base.PGSeg(cfg)
        model.load_state_dict(state)
        return model.eval().requires_grad_(False).to(device)

    def save_checkpoint(self, path, model, extra=None) -> Path:
        return base.save_checkpoint(path, model, extra)

    def model_config(self, cfg, init=None):
        return init if init is not None else base.PGSegConfig(npr=cfg.npr, img_size=cfg.crop_size)

    def build_model(self, cfg, seed=0):
        return base.build_model(cfg, seed)

    def forward_train(self, model, images, tokens, gather=None, keys=None):
        return model.forward_train(images, tokens, gather=gather, keys=keys)

    def for_ranks(self, model):
        return model


def install_row(monkeypatch) -> None:
    """The registry row a new family adds (here in-process, for one test)."""
    from vpltool.models import registry
    from vpltool.models.registry import TextFamilyRow

    monkeypatch.setitem(registry.TEXT_FAMILIES, NAME, TextFamilyRow(
        "text_family_stand_in_register", "text_family_stand_in:ToyTextTrainConfig", (NAME,), "the toy text family",
        "a toytext.safetensors (tests)"))
    monkeypatch.setitem(registry.SEGMENTERS, NAME, NAME)
    monkeypatch.setitem(registry._MODULES, NAME, "text_family_stand_in_register")

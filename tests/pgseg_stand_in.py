"""A tiny stand-in for the ``pgseg`` model family (tests only): every hook the trainer and `segment` call
(:class:`StandInFamily`: tokenizer, ``forward_train``, checkpoint files, zero-shot maps), with arithmetic small
enough for a test: patch features pooled, a bag-of-words text tower, the reference's image–text contrastive loss
over every rank's batch (labels offset by the rank, as multi_label_contrastive.py ``loss``) and, with ``npr``, an
extra regulariser term. :data:`NOISE`: a random term drawn from the torch RNG (as gumbel noise is), to prove the RNG is
seeded per iteration.

Install it with :func:`install` (in-process) or run a script under ``STAND_IN=1`` with tests/ on the path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vpltool import io
from vpltool.config.pgseg import PGSegTrainConfig

NOISE = True  # module-wide: the DDP test turns it off (each rank draws its own noise, as the reference's gumbel)


@dataclass
class PGSegConfig:
    width: int = 8
    embed: int = 8
    patch: int = 16
    vocab: int = 97
    context_length: int = 16
    npr: bool = True
    img_size: int = 32
    tokenizer: str = "stand-in"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PGSegConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Tokenizer:
    def __init__(self, context: int, vocab: int):
        self.context_length, self.vocab = context, vocab

    def split(self, text: str) -> list[str]:
        return text.lower().split()

    def words(self, text: str) -> list[int]:
        return [1 + sum(map(ord, w)) % (self.vocab - 3) for w in self.split(text)]

    def length(self, text: str) -> int:
        return len(self.words(text)) + 2

    def __call__(self, texts) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.vocab - 2, *self.words(t)][: self.context_length - 1] + [self.vocab - 1]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def tokenizer(cfg: PGSegConfig, vocabulary=None) -> Tokenizer:
    return Tokenizer(cfg.context_length, cfg.vocab)


PRESETS = {"groupvit-s": PGSegConfig, "tiny": PGSegConfig}


def build_model(cfg: PGSegConfig, seed: int = 0) -> PGSeg:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PGSeg(cfg)


class PGSeg(nn.Module):
    def __init__(self, cfg: PGSegConfig):
        super().__init__()
        self.cfg = cfg
        self.convert_sync_batchnorm = lambda: self
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch, cfg.patch)
        self.groups = nn.Linear(cfg.width, 4)  # 4 "group tokens": a soft assignment of each patch
        self.img_proj = nn.Linear(cfg.width, cfg.embed)
        self.tok = nn.Embedding(cfg.vocab, cfg.width)
        self.txt_proj = nn.Linear(cfg.width, cfg.embed)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.npr_head = nn.Linear(cfg.width, cfg.width)

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch(images).flatten(2).transpose(1, 2)  # [B, N, C]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.img_proj(self._patches(images).mean(1)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens > 0).float()[..., None]
        return F.normalize(self.txt_proj((self.tok(tokens) * mask).sum(1) / mask.sum(1)), dim=-1)

    def group_maps(self, images: torch.Tensor) -> torch.Tensor:
        p = self._patches(images)
        side = images.shape[-1] // self.cfg.patch
        return self.groups(p).softmax(-1).transpose(1, 2).reshape(len(images), 4, -1, side)

    def forward_train(self, images, tokens, gather=None, keys=None):  # the family's signature (keys: unused here)
        feats = self._patches(images).mean(1)
        if NOISE:
            feats = feats + 0.05 * torch.randn_like(feats)
        img = F.normalize(self.img_proj(feats), dim=-1)
        txt = self.encode_text(tokens)
        b = len(img)
        offset = dist.get_rank() * b if gather is not None else 0
        all_img, all_txt = (gather(img), gather(txt)) if gather is not None else (img, txt)
        scale = self.logit_scale.exp().clamp(max=100)
        labels = torch.arange(b) + offset
        contrast = 0.5 * (F.cross_entropy(img @ all_txt.t() * scale, labels)
                          + F.cross_entropy(txt @ all_img.t() * scale, labels))
        out = {"loss": contrast, "contrast": contrast.detach()}
        if self.cfg.npr:
            npr = 0.1 * (self.npr_head(feats) - feats.detach()).pow(2).mean()
            out["loss"] = contrast + npr
            out["npr"] = npr.detach()
        return out


def save_checkpoint(path, model: PGSeg, extra: dict | None = None, **meta) -> Path:
    return io.write_tensors(path, model.state_dict(), kind="pgseg", classes=[], params=model.cfg.to_dict(),
                            model_config=model.cfg.to_dict(), extra=extra or {}, **meta)


def load_checkpoint(path):
    f = io.read_tensors(path, kind="pgseg")
    return PGSegConfig.from_dict(f.meta("model_config")), dict(f.tensors)


def zero_shot_labels(model: PGSeg, images: torch.Tensor, text: torch.Tensor, bg_thresh: float) -> torch.Tensor:
    maps = model.group_maps(images)  # [B, G, h, w]
    groups = torch.einsum("bghw,bhwc->bgc", maps, model._patches(images).reshape(
        len(images), maps.shape[2], maps.shape[3], -1))
    sim = F.normalize(model.img_proj(groups), dim=-1) @ text.t()  # [B, G, K]
    pix = torch.einsum("bghw,bgk->bkhw", maps, sim)
    best, label = pix.max(1)
    thresh = torch.minimum(torch.tensor(bg_thresh), best.flatten(1).max(1).values)[:, None, None]
    label = torch.where(best >= thresh, label + 1, 0)
    return F.interpolate(label[:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0].long()


class StandInFamily:
    """Every hook of :class:`vpltool.models.text.family.TextSegFamily` over this module's model, as the ``pgseg``
    family (:func:`install` hands it to the trainer; tests/text_family_stand_in.py registers it under a name of
    its own)."""

    name = "pgseg"
    TrainConfig = PGSegTrainConfig
    TEMPLATES = {"simple": ("a photo of a {}.",)}

    def tokenizer(self, cfg, vocabulary=None):
        return tokenizer(cfg)

    def caption_length(self, cfg):
        return tokenizer(cfg).length, cfg.context_length

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
        return load_checkpoint(path)[0]

    def load_checkpoint(self, path):
        return load_checkpoint(path)

    def load_model(self, path, device="cpu"):
        cfg, state = load_checkpoint(path)
        model = PGSeg(cfg)
        model.load_state_dict(state)
        return model.eval().requires_grad_(False).to(device)

    def save_checkpoint(self, path, model, extra=None, **meta) -> Path:
        return save_checkpoint(path, model, extra, **meta)

    def model_config(self, cfg, init=None):
        return replace(init if init is not None else PGSegConfig(img_size=cfg.crop_size), npr=cfg.npr)

    def build_model(self, cfg, seed=0):
        return build_model(cfg, seed)

    def forward_train(self, model, images, tokens, gather=None, keys=None):
        return model.forward_train(images, tokens, gather=gather, keys=keys)

    def for_ranks(self, model):
        return model


def install(monkeypatch=None):
    """Make the trainer (`train-pgseg`, `train-text --family pgseg`) use this module's :class:`StandInFamily` as
    the ``pgseg`` family; returns this module."""
    import sys

    import vpltool.stages.train_text as tp

    family = StandInFamily()
    if monkeypatch is not None:
        monkeypatch.setattr(tp, "_family", lambda *_: family)
    else:
        tp._family = lambda *_: family
    return sys.modules[__name__]

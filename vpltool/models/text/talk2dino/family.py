"""The ``talk2dino`` family's hooks (:class:`vpltool.models.text.family.TextSegFamily`): what `segment`, `cam`,
`benchmark`, the Python API and the shared trainer (`train-text --family talk2dino`) call, each a thin hand-over to
this package's functions. Registered here; its training config is :class:`.config.Talk2DINOTrainConfig`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ....errors import VplError
from ...backbones.onednn import OneDnnLinear
from ..family import register_text_family
from . import zeroshot as _zs
from .backbones import backbone_options, check_backbones, with_digests
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Talk2DINOTrainConfig
from .model import Projection, Talk2DINOConfig
from .net import Talk2DINO, load_backbones

_LOADED: dict[tuple, Any] = {}  # the frozen backbones this process has loaded, by spec: each loaded once


def _clip(cfg: Any) -> Any:
    """The CLIP ``cfg`` names (a model config or a training config), frozen, on the CPU."""
    from ...backbones.loading import ModelSpec
    from ...registry import load_model

    key = ("clip", cfg.clip_model, cfg.clip_pretrained)
    if key not in _LOADED:
        with backbone_options(cfg):
            _LOADED[key] = load_model("clip", ModelSpec(cfg.clip_model, cfg.clip_pretrained), "cpu")
    return _LOADED[key]


def _dino(cfg: Any) -> Any:
    """The DINO ``cfg`` names, frozen, on the CPU."""
    from ...backbones.dino import DinoSpec
    from ...registry import load_model

    key = ("dino", cfg.dino_model, cfg.dino_weights, cfg.dino_pos_resize)
    if key not in _LOADED:
        with backbone_options(cfg):
            _LOADED[key] = load_model("dino", DinoSpec(cfg.dino_model, cfg.dino_weights, cfg.dino_pos_resize), "cpu")
    return _LOADED[key]


def _backbones(cfg: Any) -> tuple[Any, Any]:
    return _dino(cfg), _clip(cfg)


def check_talk2dino(path: str | Path) -> Talk2DINOConfig:
    """The config of checkpoint ``path``, its tensors checked against the projection it declares (no backbone)."""
    cfg, state = load_checkpoint(path)
    check_backbones(cfg, str(path))  # the DINO and CLIP it names are still the bytes it was learnt over
    with torch.device("meta"):
        expected = {f"proj.{k}": tuple(v.shape) for k, v in Projection(cfg.text_dim, cfg.dino_dim,
                                                                       cfg.hidden_layers).state_dict().items()}
    bad = sorted(k for k in set(expected) | set(state)
                 if tuple(getattr(state.get(k), "shape", ())) != expected.get(k))
    if bad:
        raise VplError(f"{path}: does not fit the Talk2DINO projection it declares (first mismatched keys "
                       f"{bad[:3]}); pass a checkpoint of this model")
    return cfg


def load_talk2dino(path: str | Path, device: Any = "cpu") -> Talk2DINO:
    """The frozen model of checkpoint ``path`` on ``device``: its projection, its DINO and CLIP."""
    cfg = check_talk2dino(path)
    _, state = load_checkpoint(path)
    with backbone_options(cfg):
        model = Talk2DINO(cfg, *load_backbones(cfg, device))
    model.load_state_dict(state, strict=True)
    return model.frozen().to(torch.device(device))


class Talk2DINOFamily:
    """Talk2DINO as a text-supervised family (every hook of ``TextSegFamily`` and of ``FrozenSide``, nothing else
    public)."""

    name = "talk2dino"
    TrainConfig = Talk2DINOTrainConfig
    TEMPLATES = _zs.TEMPLATES

    def tokenizer(self, cfg: Talk2DINOConfig, vocabulary: Sequence[str] | None = None):
        return _clip(cfg).tokenizer  # the CLIP's own (its word list, for the toy)

    def caption_length(self, cfg: Talk2DINOConfig) -> tuple[Callable[[str], int], int]:
        tokenize = self.tokenizer(cfg)
        context = int(_clip(cfg).model.positional_embedding.shape[0])
        if hasattr(tokenize, "split"):  # the toy's word tokenizer

            def length(text: str) -> int:
                tokenize([text])  # a word the vocabulary lacks is named here (it warns once)
                return len(tokenize.split(text)) + 2

            return length, context
        from ...backbones.open_clip_import import clip_bpe

        bpe = clip_bpe()
        return (lambda text: len(bpe.encode(text)) + 2), context

    def class_tokens(self, names: Sequence[str], tokenize, templates: Sequence[str]) -> torch.Tensor:
        return _zs.class_tokens(names, tokenize, templates)

    def class_text_embeddings(self, model: Talk2DINO, tokens: torch.Tensor) -> torch.Tensor:
        return _zs.class_text_embeddings(model, tokens)

    def image_tensor(self, image, short_side: int) -> torch.Tensor:
        return _zs.image_tensor(image, short_side)

    def zero_shot_logits(self, model: Talk2DINO, images: torch.Tensor, text: torch.Tensor, bg_thresh: float = 0.55,
                         with_bg: bool = True, mode: str = "whole", crop: int = 448,
                         stride: int = 224) -> torch.Tensor:
        if mode not in ("whole", "slide"):
            raise ValueError(f"zero-shot mode {mode!r}: whole or slide")
        return torch.cat([_zs.zero_shot_logits(model, images[i:i + 1], text, with_bg, bg_thresh, model.cfg.bg_clean,
                                               model.cfg.pamr, crop if mode == "slide" else 0, stride)
                          for i in range(images.shape[0])])

    def check_checkpoint(self, path: str | Path) -> Talk2DINOConfig:
        return check_talk2dino(path)

    def load_checkpoint(self, path: str | Path) -> tuple[Talk2DINOConfig, dict[str, torch.Tensor]]:
        return load_checkpoint(path)

    def load_model(self, path: str | Path, device: Any = "cpu") -> Talk2DINO:
        return load_talk2dino(path, device)

    def save_checkpoint(self, path: str | Path, model: Talk2DINO, extra: dict[str, Any] | None = None,
                        **meta: Any) -> Path:
        return save_checkpoint(path, model, extra, **meta)

    def model_config(self, cfg: Talk2DINOTrainConfig, init: Talk2DINOConfig | None = None) -> Talk2DINOConfig:
        """``init``'s architecture (a checkpoint to continue), else the backbones ``cfg`` names, their widths read
        from them; ``resize_dim`` is ``cfg.crop_size``; the zero-shot knobs as ``cfg`` says; the digests of the
        backbones' bytes now (``init``'s recorded ones checked first: :mod:`.backbones`)."""
        if init is not None:
            if init.resize_dim != cfg.crop_size:
                raise VplError(f"--init: its DINO reads {init.resize_dim}-px squares, not --crop-size "
                               f"{cfg.crop_size}; pass --crop-size {init.resize_dim}")
            return with_digests(replace(init, pamr=cfg.pamr, bg_clean=cfg.bg_clean), "--init")
        dino, clip = _backbones(cfg)
        width = int(getattr(dino.model, "embed_dim", 0) or dino.model.num_features)
        if cfg.crop_size < dino.patch_size:
            raise VplError(f"--crop-size {cfg.crop_size}: smaller than the DINO's patch ({dino.patch_size} px); "
                           f"pass --crop-size {dino.patch_size} or more")
        return with_digests(Talk2DINOConfig(
            dino_model=cfg.dino_model, dino_weights=cfg.dino_weights, dino_pos_resize=cfg.dino_pos_resize,
            clip_model=cfg.clip_model, clip_pretrained=cfg.clip_pretrained, text_dim=int(clip.embed_dim),
            dino_dim=width, hidden_layers=cfg.hidden_layers, resize_dim=cfg.crop_size, pamr=cfg.pamr,
            bg_clean=cfg.bg_clean))

    def build_model(self, cfg: Talk2DINOConfig, seed: int = 0) -> Talk2DINO:
        from .net import build_model

        return build_model(cfg, seed, backbones=_backbones(cfg))

    def forward_train(self, model: Talk2DINO, images: torch.Tensor, tokens: torch.Tensor,
                      gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = model.forward_train(images, tokens, gather)
        return {"loss": out["loss"]}

    def for_ranks(self, model: Talk2DINO) -> Talk2DINO:
        return model

    # FrozenSide: the DINO and the CLIP are frozen and read the same view each epoch (the trainer caches them)
    def frozen_identity(self, model: Talk2DINO) -> dict[str, Any]:
        cfg = model.cfg
        return {"family": self.name, "dino_model": cfg.dino_model, "dino_pos_resize": cfg.dino_pos_resize,
                "dino": cfg.dino_digest or _values_digest(model.dino.model), "clip_model": cfg.clip_model,
                "clip": cfg.clip_digest or _values_digest(model.clip.model), "resize_dim": cfg.resize_dim,
                "dtype": str(next(model.dino.model.parameters()).dtype).removeprefix("torch."),
                "linear": "onednn" if any(isinstance(m, OneDnnLinear) for m in model.dino.model.modules()) else
                "torch"}  # the DINO's matrix products (another order of the same sums: other rounding)

    def frozen_image_features(self, model: Talk2DINO, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return model.frozen_image_features(images)

    def frozen_text_features(self, model: Talk2DINO, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return model.frozen_text_features(tokens)

    def forward_train_from(self, model: Talk2DINO, features: dict[str, torch.Tensor],
                           gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"loss": model.forward_from(features, gather)["loss"]}


def _values_digest(module: torch.nn.Module) -> str:
    """``values:<sha256>`` of a module's parameters and buffers (names, dtypes, shapes, bytes): the identity of
    weights no file names (a tag's download, seeded random weights), read once per run (~0.3 s for a ViT-B)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "values:" + h.hexdigest()


FAMILY = register_text_family(Talk2DINOFamily())

__all__ = ["FAMILY", "Talk2DINOFamily", "check_talk2dino", "load_talk2dino"]

"""The Talk2DINO module: the trainable projection (its only parameters, all a checkpoint holds) beside the frozen DINO
and CLIP it reads, which the registry's ``dino`` and ``clip`` families load by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Projection,
    Talk2DINOConfig,
    cls_attention_logits,
    head_embeddings,
    talk2dino_loss,
)


def load_backbones(cfg: Talk2DINOConfig, device: Any = "cpu") -> tuple[Any, Any]:
    """(the frozen :class:`~vpltool.models.DinoBackbone`, the frozen :class:`~vpltool.models.ClipBackbone`) that
    ``cfg`` names, through the registry (one line for weights that are missing or of another model)."""
    from ...backbones.dino import DinoSpec
    from ...backbones.loading import ModelSpec
    from ...registry import load_model

    dino = load_model("dino", DinoSpec(cfg.dino_model, cfg.dino_weights, cfg.dino_pos_resize), device)
    clip = load_model("clip", ModelSpec(cfg.clip_model, cfg.clip_pretrained), device)
    return dino, clip


class Talk2DINO(nn.Module):
    """The projection (``self.proj``, :class:`~.model.Projection`) and, outside the module's parameters and state,
    the frozen ``dino`` and ``clip`` backbones (None: a projection alone, for tests and the loss)."""

    def __init__(self, cfg: Talk2DINOConfig, dino: Any = None, clip: Any = None):
        super().__init__()
        self.cfg = cfg
        self.proj = Projection(cfg.text_dim, cfg.dino_dim, cfg.hidden_layers)
        self.backbones = (dino, clip)  # a tuple: nn.Module does not register what is inside it
        if getattr(dino, "packed", None) == []:  # frozen: its blocks' weights packed once for oneDNN's products
            from ...backbones.mkl_packed import pack_blocks

            dino.packed = pack_blocks(dino.model, mkl=False)  # (not MKL's: its batch's groups vary in rows)

    @property
    def dino(self):
        return self.backbones[0]

    @property
    def clip(self):
        return self.backbones[1]

    def _apply(self, fn, recurse: bool = True):  # .to(device) moves the frozen backbones with the projection
        out = super()._apply(fn, recurse)
        probe = fn(torch.zeros(()))
        dino, clip = self.backbones
        if dino is not None and probe.device != dino.device:
            dino.model.to(probe.device)
            dino.device = probe.device
        if clip is not None and probe.device != torch.device(clip.device):
            clip.model.to(probe.device)
            clip.device = probe.device
        return out

    def frozen(self) -> Talk2DINO:
        self.eval().requires_grad_(False)
        return self

    # ---------------------------------------------------------------------------------------------- the text side
    @torch.no_grad()
    def text_features(self, tokens: Tensor) -> Tensor:
        """``[N, L]`` int64 token ids -> ``[N, text_dim]`` float32: the CLIP's ``encode_text``, not normalised (the
        reference's ``ann_feats`` and class embeddings)."""
        return self.clip.model.encode_text(tokens.to(self.clip.device)).float()

    def project_text(self, features: Tensor) -> Tensor:
        """``[..., text_dim]`` -> ``[..., dino_dim]``: the projection, not normalised."""
        return self.proj(features)

    # --------------------------------------------------------------------------------------------- the image side
    def normalise(self, pixels: Tensor) -> Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] -> ImageNet-normalised (the extraction's and inference's ``Normalize``)."""
        mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    @torch.no_grad()
    def dino_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, S, S]`` normalised pixels -> (``[B, P, C]`` the DINO's final-norm patch tokens, ``[B, H, P]`` its
        last block's CLS-to-patch logits per head, :func:`~.model.cls_attention_logits`)."""
        tokens, qkv, _ = self.dino.tokens_and_last_qkv(pixels)
        heads = self.dino.model.blocks[-1].attn.num_heads
        return tokens.float(), cls_attention_logits(qkv.float(), heads, self.dino.n_prefix)

    def train_features(self, pixels: Tensor) -> Tensor:
        """``[B, 3, S, S]`` normalised pixels -> ``[B, H, C]`` per-head image embeddings (the training features)."""
        return head_embeddings(*self.dino_features(pixels))

    # ---------------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def frozen_image_features(self, images: Tensor) -> dict[str, Tensor]:
        """What the frozen DINO makes of a batch, the same at every epoch (the reference extracts it once,
        ``dino_extraction_v2.py``): ``[b, 3, S, S]`` normalised -> ``{"heads": [b, H, dino_dim]}`` float32, the
        per-head image embeddings."""
        return {"heads": self.train_features(images)}

    @torch.no_grad()
    def frozen_text_features(self, tokens: Tensor) -> dict[str, Tensor]:
        """What the frozen CLIP makes of the captions (the reference's saved ``ann_feats``): ``[b, L]`` int64 ->
        ``{"text": [b, text_dim]}`` float32, ``encode_text``."""
        return {"text": self.text_features(tokens)}

    def forward_from(self, features: dict[str, Tensor], gather: Callable[[Tensor], Tensor] | None = None
                     ) -> dict[str, Tensor]:
        """The loss from both frozen sides' features in one dict (computed now or read back): ``{"loss", "heads"}``
        (:func:`~.model.talk2dino_loss`); the projection is the only part with gradients. ``gather``: the
        cross-rank all-gather under torchrun (this rank's index from torch.distributed)."""
        import torch.distributed as dist

        rank = dist.get_rank() if gather is not None and dist.is_initialized() else 0
        return talk2dino_loss(self.project_text(features["text"]), features["heads"], gather, rank)

    def forward_train(self, images: Tensor, tokens: Tensor, gather: Callable[[Tensor], Tensor] | None = None,
                      keys: Tensor | None = None) -> dict[str, Tensor]:
        """One batch of pairs -> ``{"loss", "heads"}``: :meth:`forward_from` of the frozen sides' features (one path,
        so that a step from cached features is this step bit for bit). ``images``: ``[b, 3, S, S]`` normalised (the
        family's train view), ``tokens``: ``[b, L]`` int64 captions. ``keys``: unused (another family's)."""
        return self.forward_from({**self.frozen_text_features(tokens), **self.frozen_image_features(images)}, gather)

    def forward(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        return self.forward_train(images, tokens)


def build_model(cfg: Talk2DINOConfig, seed: int = 0, device: Any = "cpu", backbones: tuple | None = None
                ) -> Talk2DINO:
    """A Talk2DINO whose projection is initialised under ``seed`` (torch's default ``nn.Linear`` init, the
    reference's: its ``ProjectionLayer`` under ``set_seed``), its backbones loaded (or ``backbones`` given)."""
    dino, clip = backbones if backbones is not None else load_backbones(cfg, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Talk2DINO(cfg, dino, clip)
    return model.to(device)


def config_for(dino: Any, clip: Any, **changes: Any) -> Talk2DINOConfig:
    """The config of a Talk2DINO over loaded backbones: the widths read from them (the CLIP's text embedding, the
    DINO's width), the specs from their own."""
    spec = dino.spec
    text_dim = int(clip.embed_dim)
    width = int(dino.model.embed_dim) if hasattr(dino.model, "embed_dim") else int(dino.model.num_features)
    return Talk2DINOConfig(**{"dino_model": spec.model, "dino_weights": spec.weights,
                              "dino_pos_resize": spec.pos_resize, "clip_model": clip.spec.model,
                              "clip_pretrained": clip.spec.pretrained, "text_dim": text_dim, "dino_dim": width,
                              **changes})


def interpolate_square(pixels: Tensor, side: int) -> Tensor:
    """torchvision's ``Resize((side, side))`` on a float tensor: bilinear, antialiased, align_corners False."""
    if tuple(pixels.shape[-2:]) == (side, side):
        return pixels
    return F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


__all__ = ["Talk2DINO", "build_model", "load_backbones", "config_for", "interpolate_square"]

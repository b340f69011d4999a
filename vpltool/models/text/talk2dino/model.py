"""Talk2DINO's model: a projection of CLIP's text embedding onto a frozen DINO's patch space, its training features
and its loss, on current torch (read from lorebianchi98/Talk2DINO at 4918c2d: ``src/model.py`` ``ProjectionLayer``,
``dino_extraction_v2.py`` with ``src/hooks.py``, ``src/loss.py``, ``train.py`` / ``src/train_util.py``).

* The projection is on the text side alone (``ProjectionLayer`` with ``hidden_layer: True``):
  ``Linear(text_dim -> dino_dim) -> tanh -> Linear(dino_dim -> dino_dim)``; the DINO's patch tokens are used as
  they are. ``text_dim`` is the CLIP's text embedding (the projected EOT token ``encode_text`` returns, 512 for
  ViT-B/16, 64 for the toy CLIP), ``dino_dim`` the DINO's width.
* Each image is described by one embedding per attention head of the DINO's last block
  (:func:`head_embeddings`): the head's CLS-to-patch attention logits, ``q * 0.125 @ kᵀ`` (the scale is the
  reference's constant, not ``head_dim ** -0.5``), softmaxed over the patches, weight the final-norm patch tokens,
  averaged (a mean, not a sum: the result is scaled by 1 / patches).
* The loss (:func:`talk2dino_loss`): per caption, the head of its own image whose embedding is closest (cosine,
  softmax, argmax: ``alignment_strategy: max_score``) is its image's embedding; then a symmetric InfoNCE over the
  batch with the logit scale FIXED at 1 / 0.07 (the criterion's parameter never reaches the optimiser), divided by
  the squared batch size (``loss.py``'s normalisation, kept: Adam barely sees it).
* Training: Adam at 1e-4, no schedule, no clipping (``configs/vitb_mlp_infonce.yaml``, ``train.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import VplError

ATTN_SCALE = 0.125  # src/hooks.py process_self_attention's scale: hard-coded, right for a head width of 64 alone
LOGIT_SCALE = 1 / 0.07  # src/loss.py Contrastive.logit_scale, exp(log(1 / 0.07)), never optimised
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the DINO's normalisation in extraction and inference
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Talk2DINOConfig:
    """A Talk2DINO model: its frozen backbones (named, not stored: a checkpoint holds the projection alone) and the
    projection's shape.

    Attributes:
        dino_model, dino_weights, dino_pos_resize: the DINO family's spec (:class:`vpltool.models.DinoSpec`): a timm
            ViT name, ``hub`` / a weights file / ``none``, and how its positional table is resized
            (``bicubic-antialias`` for DINOv2's ``*_reg`` models, the reference's ``dinov2_vitb14_reg``).
        clip_model, clip_pretrained: the CLIP whose text tower embeds captions and class prompts (the reference's
            OpenAI ``ViT-B/16``; ``vpltool-toy`` on the demo).
        text_dim, dino_dim: the CLIP text embedding's and the DINO's widths (the projection's in and out).
        hidden_layers: tanh + Linear(dino_dim, dino_dim) blocks after the first linear (the reference's 1).
        resize_dim: the side of the square the DINO sees (448: a 32x32 grid at patch 14; the demo's 192: the toy
            DINO's 12x12 training grid at patch 16).
        pamr: zero-shot masks refined by PAMR (the reference's ``*_pamr.yml`` evaluations, all of its README's).
        bg_clean: zero-shot background cleaning (``with_bg_clean``, a model key of the reference's VOC21 and
            COCO-Object configs alone).
        clip_digest, dino_digest: ``sha256:<hex>`` of the local bytes the CLIP and the DINO were loaded from when
            the projection was made (:mod:`.backbones`); None for one named by a tag (``openai``, ``hub``), random
            weights, or a file written before digests were kept. A checkpoint over other bytes under the same
            names is refused: its projection was learnt against those.
    """

    dino_model: str = "vit_base_patch14_reg4_dinov2.lvd142m"
    dino_weights: str = "hub"
    dino_pos_resize: str = "bicubic-antialias"
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    text_dim: int = 512
    dino_dim: int = 768
    hidden_layers: int = 1
    resize_dim: int = 448
    pamr: bool = True
    bg_clean: bool = False
    clip_digest: str | None = None
    dino_digest: str | None = None

    def __post_init__(self) -> None:
        for name in ("text_dim", "dino_dim", "resize_dim"):
            if int(getattr(self, name)) < 1:
                raise VplError(f"Talk2DINO config: {name} {getattr(self, name)} must be at least 1")
        if int(self.hidden_layers) < 0:
            raise VplError(f"Talk2DINO config: hidden_layers {self.hidden_layers} must be 0 or more")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Talk2DINOConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise VplError(f"Talk2DINO config: unknown keys {unknown}; a checkpoint of another model or version")
        return cls(**d)


class Projection(nn.Module):
    """``[..., text_dim]`` -> ``[..., dino_dim]`` float32: ``linear_layer``, then per hidden layer tanh and the
    layer (``ProjectionLayer.project_clip_txt``; tensor names as the reference's, so its ``.pth`` loads as it is)."""

    def __init__(self, text_dim: int, dino_dim: int, hidden_layers: int = 1):
        super().__init__()
        self.linear_layer = nn.Linear(text_dim, dino_dim)
        self.hidden_layers = nn.ModuleList([nn.Linear(dino_dim, dino_dim) for _ in range(hidden_layers)])

    def forward(self, text: Tensor) -> Tensor:
        x = self.linear_layer(text.float())
        for layer in self.hidden_layers:
            x = layer(torch.tanh(x))
        return x


def cls_attention_logits(qkv: Tensor, heads: int, prefix: int, scale: float = ATTN_SCALE) -> Tensor:
    """The last block's fused qkv output ``[B, N, 3C]`` -> ``[B, heads, N - prefix]`` float: each head's attention
    logits of the class token to the patch tokens, ``(q * scale) @ kᵀ``, not softmaxed (``process_self_attention``:
    its ``self_attn_maps``)."""
    b, n, c3 = qkv.shape
    qkv = qkv.reshape(b, n, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    # the class token's row alone (the reference forms every token's [B, heads, N, N] logits and keeps this row:
    # 305 MB at 6 photos of 448 px, for 1/N of it)
    q, k = qkv[0][:, :, :1] * scale, qkv[1]
    return (q @ k.transpose(-2, -1))[:, :, 0, prefix:]


def head_embeddings(tokens: Tensor, logits: Tensor) -> Tensor:
    """``[B, P, C]`` patch tokens, ``[B, H, P]`` CLS logits -> ``[B, H, C]``: per head, the mean over the patches of
    ``softmax_p(logits) * tokens`` (``disentangled_self_attn`` of ``dino_extraction_v2.py``)."""
    # one product (the reference broadcasts [B, H, P, C] and averages it: 226 MB at 6 photos of 448 px)
    return logits.softmax(dim=-1) @ tokens / tokens.shape[1]


def select_heads(text: Tensor, heads: Tensor) -> tuple[Tensor, Tensor]:
    """``[b, D]`` normalised texts, ``[b, H, D]`` normalised head embeddings of their own images -> (``[b, D]`` the
    head each caption is closest to, ``[b]`` int64 its index): softmax over the heads, argmax (``max_score``)."""
    index = torch.einsum("ik,ijk->ij", text, heads).softmax(dim=-1).argmax(dim=-1)
    picked = torch.gather(heads, 1, index.view(-1, 1, 1).expand(-1, 1, heads.shape[-1])).squeeze(1)
    return picked, index


def talk2dino_loss(text: Tensor, heads: Tensor, gather: Callable[[Tensor], Tensor] | None = None,
                   rank: int = 0) -> dict[str, Tensor]:
    """``[b, D]`` projected texts (not normalised), ``[b, H, D]`` head embeddings -> ``{"loss": scalar, "heads":
    [b] int64}``.

    One process (``gather`` None): ``scores = t @ vᵀ`` over the batch, ``(CE(s * scores) + CE(s * scoresᵀ)) / 2 /
    B²`` with ``s = 1 / 0.07`` (``ContrastiveLoss`` with ``ltype: infonce``). With ``gather`` (every rank's rows,
    rank by rank): this rank's rows of ``scores`` and of ``scoresᵀ`` against every rank's columns, labels offset by
    the rank, the same ``/ B²`` of the global batch: the ranks' losses average (DDP) to the one-process loss."""
    text = F.normalize(text, p=2, dim=-1)
    heads = F.normalize(heads, p=2, dim=-1)
    picked, index = select_heads(text, heads)
    scale = torch.full((), math.log(LOGIT_SCALE), device=text.device).exp()
    b = text.shape[0]
    labels = torch.arange(b, device=text.device)
    if gather is None:
        scores = scale * (text @ picked.transpose(1, 0))
        loss = (F.cross_entropy(scores, labels) + F.cross_entropy(scores.t(), labels)) / 2
        return {"loss": loss / b ** 2, "heads": index}
    all_text, all_picked = gather(text), gather(picked)
    total = all_text.shape[0]
    labels = labels + rank * b
    rows = scale * (text @ all_picked.transpose(1, 0))
    cols = scale * (picked @ all_text.transpose(1, 0))
    loss = (F.cross_entropy(rows, labels) + F.cross_entropy(cols, labels)) / 2
    return {"loss": loss / total ** 2, "heads": index}


__all__ = ["ATTN_SCALE", "LOGIT_SCALE", "IMAGENET_MEAN", "IMAGENET_STD", "Talk2DINOConfig", "Projection",
           "cls_attention_logits", "head_embeddings", "select_heads", "talk2dino_loss"]

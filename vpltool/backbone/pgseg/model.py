"""The PGSeg model: GroupViT image encoder (+ I-NPR), text encoder (+ T-NPR), projection MLPs, and its losses.

``PGSeg`` mirrors the reference's ``MultiLabelContrastive`` (Ferenas/PGSeg at 9f167cd, ``configs/pgseg_specific.yml``:
multi-label loss off) with the attribute names of its checkpoints: ``img_encoder``, ``text_encoder``,
``img_projector``, ``text_projector``, ``logit_scale``. ``npr=False`` is GroupViT (NVlabs/GroupViT) itself: no NPR
module is built and the loss is the image-text contrastive loss alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .groupvit import GroupViTEncoder
from .npr import Gather, ProjectMLP, npr_losses
from .text import TextTransformer


@dataclass(frozen=True)
class PGSegConfig:
    """Architecture and loss settings; the defaults are the reference's GroupViT-S / PGSeg
    (``configs/pgseg_specific.yml``). ``npr=False``: plain GroupViT.

    Images: ``img_size`` square in training (any size at eval: the position table is resized), ``patch_size``
    16. Stages: ``depths`` blocks each, ``num_heads``, ``num_group_tokens`` (64, 8, 0) merged into
    ``num_output_groups`` (64, 8). Text: CLIP BPE ids (``vocab_size`` 49408) at ``context_length`` 77;
    ``tokenizer`` names how captions become ids (``clip``: CLIP's BPE; ``toy-words``: the demo's word tokenizer).
    """

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    depths: tuple[int, ...] = (6, 3, 3)
    num_heads: tuple[int, ...] = (6, 6, 6)
    num_group_tokens: tuple[int, ...] = (64, 8, 0)
    num_output_groups: tuple[int, ...] = (64, 8)
    hard_assignment: bool = True
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    context_length: int = 77
    text_width: int = 256
    text_layers: int = 12
    vocab_size: int = 49408
    output_dim: int = 256
    proj_inner_dim: int = 4096
    contrast_temperature: float = 0.07
    npr: bool = True
    npr_iters: int = 10
    npr_momentum: float = 0.9
    npr_weight: float = 0.1
    tokenizer: str = "clip"

    def __post_init__(self):
        for name in ("depths", "num_heads", "num_group_tokens", "num_output_groups"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.depths)
        if len(self.num_heads) != n or len(self.num_group_tokens) != n or len(self.num_output_groups) != n - 1:
            raise ValueError("PGSegConfig: depths, num_heads, num_group_tokens need one entry per stage and "
                             "num_output_groups one per grouping stage")
        if self.npr and n != 3:
            raise ValueError("PGSegConfig: NPR needs exactly two grouping stages (three stages)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PGSegConfig:
        """From :meth:`to_dict`'s output; unknown keys are refused (a file of another version or kind)."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"unknown PGSeg config keys {extra}")
        return cls(**d)


def tiny_config(**overrides: Any) -> PGSegConfig:
    """A small model of the same code for tests and the demo (32-px images, 8-px patches, width 64 in one head, one
    block per stage, 16 then 8 groups, a one-layer 64-wide text encoder, 64-wide projector hidden layers). Heads are
    64 wide, as in GroupViT-S, so that a reference checkpoint's config is read back from its shapes."""
    base = dict(img_size=32, patch_size=8, embed_dim=64, depths=(1, 1, 1), num_heads=(1, 1, 1),
                num_group_tokens=(16, 8, 0), num_output_groups=(16, 8), text_width=64, text_layers=1,
                output_dim=32, proj_inner_dim=64)
    base.update(overrides)
    return PGSegConfig(**base)


PRESETS = {"groupvit-s": lambda: PGSegConfig(npr=False), "pgseg-s": PGSegConfig, "tiny": tiny_config,
           "tiny-groupvit": lambda: tiny_config(npr=False)}


class PGSeg(nn.Module):
    """PGSeg (or GroupViT when ``cfg.npr`` is False).

    Inputs: ``images`` ``[B, 3, H, W]`` float32, normalised with CLIP-style ImageNet statistics as the caller's
    pipeline does (the reference: mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on 0-255 RGB);
    ``tokens`` ``[B, L]`` int64 BPE ids, ``L`` = ``cfg.context_length``.
    """

    def __init__(self, cfg: PGSegConfig):
        super().__init__()
        self.cfg = cfg
        self.img_encoder = GroupViTEncoder(cfg)
        self.text_encoder = TextTransformer(cfg.context_length, cfg.text_width, cfg.text_layers, cfg.vocab_size,
                                            cfg.npr, cfg.num_output_groups[-1], cfg.npr_iters, cfg.npr_momentum)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / cfg.contrast_temperature))
        self.img_projector = ProjectMLP(cfg.embed_dim, cfg.proj_inner_dim, cfg.output_dim)
        self.text_projector = ProjectMLP(cfg.text_width, cfg.proj_inner_dim, cfg.output_dim)

    def convert_sync_batchnorm(self) -> PGSeg:
        """The reference's multi-GPU set-up: the two contrastive projectors' BatchNorm synchronised across ranks
        (NPR's projectors stay per-rank, as there)."""
        self.img_projector = nn.SyncBatchNorm.convert_sync_batchnorm(self.img_projector)
        self.text_projector = nn.SyncBatchNorm.convert_sync_batchnorm(self.text_projector)
        return self

    # ------------------------------------------------------------------ features
    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` int64 -> the projected, UNnormalised text embeddings ``[N, output_dim]``."""
        return self.text_projector(self.text_encoder(tokens))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` int64 -> L2-normalised text embeddings ``[N, output_dim]`` float32."""
        return F.normalize(self.text_features(tokens), dim=-1)

    def image_features(self, images: torch.Tensor) -> dict[str, Any]:
        """``[B, 3, H, W]`` -> ``tokens`` (final group tokens after the norm, ``[B, G, C]``), ``groups`` (their
        projections ``[B, G, output_dim]``), ``pooled`` (the projection of their mean ``[B, output_dim]``: the
        image embedding of the contrastive loss), ``stages`` (the per-stage dicts), all unnormalised."""
        tokens, stages = self.img_encoder.forward_features(images)
        return {"tokens": tokens, "groups": self.img_projector(tokens),
                "pooled": self.img_projector(self.img_encoder.pooled(tokens)), "stages": stages}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> the final group embeddings ``[B, G, output_dim]``, L2-normalised."""
        tokens, _ = self.img_encoder.forward_features(images)
        return F.normalize(self.img_projector(tokens), dim=-1)

    @staticmethod
    def combine_maps(stages: list[dict]) -> torch.Tensor:
        """The soft assignments of the grouping stages chained: ``[B, h*w, G1] @ [B, G1, G2] ...`` -> ``[B, h*w,
        G_last]`` (each stage's map is a softmax over its groups: rows sum to 1)."""
        combined = None
        for stage in stages:
            if stage["maps"] is None:
                continue
            soft = stage["maps"]["soft"][:, 0].transpose(1, 2)  # [B, 1, G, L] -> [B, L, G]
            combined = soft if combined is None else combined @ soft
        return combined

    def group_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, G_last, h, w]`` float32: each patch's soft membership of every final group,
        both stages combined (``h, w`` = the patch grid)."""
        p = self.cfg.patch_size
        h, w = images.shape[-2] // p, images.shape[-1] // p  # the stride-p convolution's grid
        _, stages = self.img_encoder.forward_features(images)
        combined = self.combine_maps(stages)
        return combined.transpose(1, 2).reshape(images.shape[0], -1, h, w)

    # ------------------------------------------------------------------ training
    def contrastive_loss(self, image_x: torch.Tensor, text_x: torch.Tensor, gather: Gather | None = None,
                         rank: int = 0) -> torch.Tensor:
        """The symmetric image-text InfoNCE of the reference (``loss``): ``[B, D]`` each, the other side gathered
        across ranks, labels offset by ``B * rank``, scale ``exp(logit_scale)`` clamped at 100."""
        b = image_x.shape[0]
        labels = torch.arange(b, dtype=torch.long, device=image_x.device) + b * rank
        image_x, text_x = F.normalize(image_x, dim=-1), F.normalize(text_x, dim=-1)
        all_text = text_x if gather is None else gather(text_x)
        all_image = image_x if gather is None else gather(image_x)
        scale = torch.clamp(self.logit_scale.exp(), max=100)
        return 0.5 * (F.cross_entropy(image_x @ all_text.t() * scale, labels)
                      + F.cross_entropy(text_x @ all_image.t() * scale, labels))

    def forward_train(self, images: torch.Tensor, tokens: torch.Tensor, gather: Gather | None = None,
                      rank: int | None = None) -> dict[str, torch.Tensor]:
        """One training forward on ``B`` image-caption pairs (call ``train()`` first: gumbel assignment, drop path,
        batch statistics, the text prototypes' momentum update).

        Args:
            images: ``[B, 3, img_size, img_size]`` float32, normalised.
            tokens: ``[B, L]`` int64.
            gather: cross-rank all-gather along dim 0 that passes gradients (the reference's ``dist_collect``);
                None = one process.
            rank: this process's rank (the contrastive labels' offset); None = ``torch.distributed``'s when a
                ``gather`` is given and a group is initialised, else 0.

        Returns:
            ``loss`` (total = ``contrastive`` + ``npr``), ``contrastive``, and with NPR ``npr``, ``npr_stage1``,
            ``npr_stage2``, ``npr_text`` (scalars) and the matched indices ``match_stage1``/``match_stage2``/
            ``match_text`` (int64 ``[B*G]``).
        """
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if gather is not None and dist.is_available() and dist.is_initialized() else 0
        eot = self.text_encoder(tokens)
        text_mu = self.text_encoder.prototypes(eot, gather) if self.cfg.npr else None
        text_x = self.text_projector(eot)
        tokens_img, stages = self.img_encoder.forward_features(images)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.npr:
            out.update(npr_losses(stages, text_mu, self.img_encoder.logit_scale, self.cfg.npr_weight))
        image_x = self.img_projector(self.img_encoder.pooled(tokens_img))
        out["contrastive"] = self.contrastive_loss(image_x, text_x, gather, rank)
        out["loss"] = out["contrastive"] + out["npr"] if self.cfg.npr else out["contrastive"]
        return out

    def frozen(self) -> PGSeg:
        """Eval mode, no gradients (what :func:`~vpltool.backbone.registry.load_model` hands the stages)."""
        return self.eval().requires_grad_(False)


def build_model(cfg: PGSegConfig, seed: int = 0) -> PGSeg:
    """A freshly initialised model, seeded (the same random model in every process; the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PGSeg(cfg)

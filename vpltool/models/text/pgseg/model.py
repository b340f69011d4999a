"""The PGSeg model: GroupViT image encoder (+ I-NPR), text encoder (+ T-NPR), projection MLPs, and its losses.

``PGSeg`` mirrors the reference's ``MultiLabelContrastive`` (Ferenas/PGSeg at 9f167cd, ``configs/pgseg_specific.yml``:
multi-label loss off) with the attribute names of its checkpoints: ``img_encoder``, ``text_encoder``,
``img_projector``, ``text_projector``, ``logit_scale``. ``npr=False`` is GroupViT (NVlabs/GroupViT) itself: no NPR
module is built and the loss is the image-text contrastive loss alone. ``multi_label=K > 0`` adds GroupViT's
multi-label (noun) loss (``group_vit_gcc_yfcc_30e.yml``: ``multi_label: 3``) with its own ``multi_label_logit_scale``:
each caption comes with ``K`` prompted nouns of it (:mod:`vpltool.data.nouns`), tokens ``[B, 1 + K, L]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ....config.pgseg import ASSIGN_INITS, ASSIGN_METRICS, MULTI_LABEL_POOLS
from .groupvit import GroupViTEncoder
from .npr import Gather, ProjectMLP, npr_losses
from .targets import gathered_ids, matched_label_loss, positive_targets, soft_target_ce
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
    multi_label: int = 0  # data.text_aug.multi_label: noun prompts per caption (0: no multi-label loss)
    multi_label_weight: float = 1.0  # MultiLabelContrastive's multi_label_loss_weight (share_temperature False)
    # both contrastive losses' targets: False, the reference's (each image's own texts alone); True, every text of
    # the batch with the same token ids as one of its own is a positive too (a duplicated caption or noun prompt
    # is then no negative), the target spread evenly over them (the toy CLIP's multi-positive InfoNCE)
    multi_positive: bool = False
    # the image side of the multi-label loss: "mean", the reference's (the pooled embedding: the mean of the final
    # groups, projected); "max", each final group projected and an image's similarity to a noun prompt its best
    # group's (what zero-shot segmentation reads: each group matched to the class names); "match", each image's
    # distinct noun prompts matched one to one to distinct final groups (the assignment that maximises their summed
    # similarity, no gradient through it) and the loss read group by group, every other group of the batch a
    # negative: one group cannot stand for two nouns of its image (:meth:`PGSeg.matched_label_loss`)
    multi_label_pool: str = "mean"
    # mimetic query-key init (W_q = W_k, this gain: vpltool.models.backbones.mimetic) of every grouping block's
    # assignment attention (assign_qk_init) and of every other attention, self and cross (qk_init); 0: the
    # reference's init
    assign_qk_init: float = 0.0
    qk_init: float = 0.0
    # how the first stage's blocks mix the patch tokens: 0, globally (the reference's); k (odd), each patch token
    # attends to its k x k patch neighbourhood alone while the group tokens attend to everything (the toy CLIP's
    # windowed early blocks, whose patch tokens stay local: what its dense read-out segments with)
    attention_window: int = 0
    # how the image encoder's softmax attention is computed, not what: True = PyTorch's fused
    # scaled_dot_product_attention (~1e-7 apart in fp32, which the hard assignment's argmax can turn into another
    # group: docs/pgseg.md); False = the reference's explicit softmax(q k^T) v, bit for bit
    fused_attention: bool = False
    # how many times each grouping block assigns the tokens to its groups: 1, once from the group tokens' queries
    # (the reference's); n > 1, n - 1 k-means steps first, each query moved to the soft-assigned mean of the keys
    # (differentiable; a group holding no token keeps its query), then the (gumbel) assignment from those queries
    assign_iters: int = 1
    # what a grouping block outputs: True, each group token (which has seen the whole image through attention)
    # plus the tokens assigned to it (the reference's); False, the assigned tokens alone, so that what a group
    # says about the image comes from the patches it holds (an empty group says nothing)
    center_residual: bool = True
    # how a token's affinity to a group is read: "dot", the query-key product (the reference's: the query of largest
    # norm takes every token on its side); "distance", minus the squared query-key distance (the nearest centre)
    assign_metric: str = "dot"
    # where a grouping block's assignment centres start: "query", the group tokens' queries (the reference's);
    # "tokens", farthest-point seeds among this image's token keys refined by assign_iters - 1 hard k-means steps
    # (the group tokens then only gather context through attention; the centre residual pairs no group token with a
    # cluster, so it must be off, and the affinity must be the distance)
    assign_init: str = "query"

    def __post_init__(self):
        for name in ("depths", "num_heads", "num_group_tokens", "num_output_groups"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        n = len(self.depths)
        if len(self.num_heads) != n or len(self.num_group_tokens) != n or len(self.num_output_groups) != n - 1:
            raise ValueError("PGSegConfig: depths, num_heads, num_group_tokens need one entry per stage and "
                             "num_output_groups one per grouping stage")
        if self.npr and n != 3:
            raise ValueError("PGSegConfig: NPR needs exactly two grouping stages (three stages)")
        if self.multi_label < 0:
            raise ValueError("PGSegConfig: multi_label is a count of noun prompts (>= 0)")
        if self.multi_label_pool not in MULTI_LABEL_POOLS:
            raise ValueError(f"PGSegConfig: multi_label_pool is one of {', '.join(MULTI_LABEL_POOLS)}")
        if self.multi_label_pool == "match" and self.multi_label > self.num_output_groups[-1]:
            raise ValueError(f"PGSegConfig: multi_label_pool 'match' gives each of the {self.multi_label} noun "
                             f"prompts its own final group; there are {self.num_output_groups[-1]}")
        if self.assign_metric not in ASSIGN_METRICS:
            raise ValueError(f"PGSegConfig: assign_metric is one of {', '.join(ASSIGN_METRICS)}")
        if self.assign_init not in ASSIGN_INITS:
            raise ValueError(f"PGSegConfig: assign_init is one of {', '.join(ASSIGN_INITS)}")
        if self.assign_init == "tokens" and (self.center_residual or self.assign_metric != "distance"):
            raise ValueError("PGSegConfig: assign_init 'tokens' needs center_residual False and assign_metric "
                             "'distance'")
        if self.assign_iters < 1:
            raise ValueError("PGSegConfig: assign_iters is 1 (the reference's) or more")
        if self.attention_window < 0 or (self.attention_window and self.attention_window % 2 == 0):
            raise ValueError("PGSegConfig: attention_window is 0 (global) or an odd patch count")

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


def demo_config(**overrides: Any) -> PGSegConfig:
    """The demo world's model (`train-pgseg --recipe demo`): the toy CLIP's image tower size (96 px images in 8 px
    patches: 144 tokens, width 128 in 2 heads of 64, 4 blocks in all: 2, 1, 1 per stage) with groups for scenes of
    at most 3 objects on a background (8 then 4), a 2-layer 128-wide text encoder over 48 tokens (a detailed
    caption has at most 35 of CLIP's BPE), 128-wide projector hidden layers. Every other setting is GroupViT's."""
    base = dict(img_size=96, patch_size=8, embed_dim=128, depths=(2, 1, 1), num_heads=(2, 2, 2),
                num_group_tokens=(8, 4, 0), num_output_groups=(8, 4), text_width=128, text_layers=2,
                context_length=48, output_dim=64, proj_inner_dim=128)
    base.update(overrides)
    return PGSegConfig(**base)


PRESETS = {"groupvit-s": lambda: PGSegConfig(npr=False), "pgseg-s": PGSegConfig, "tiny": tiny_config,
           "tiny-groupvit": lambda: tiny_config(npr=False), "demo": demo_config}


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
        if cfg.multi_label > 0:  # the reference's own temperature for the noun loss (share_temperature False)
            self.multi_label_logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / cfg.contrast_temperature))

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
                         rank: int = 0, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The symmetric image-text InfoNCE of the reference (``loss``): ``[B, D]`` each, the other side gathered
        across ranks, labels offset by ``B * rank``, scale ``exp(logit_scale)`` clamped at 100.

        ``tokens`` (``[B, L]`` the captions' ids) with ``cfg.multi_positive``: every caption of the batch with the
        same ids as sample ``b``'s is a positive of image ``b`` (and their images of text ``b``), the target
        ``1 / n`` over the ``n`` of them (:func:`positive_targets`); with no duplicate it is the reference's loss."""
        b = image_x.shape[0]
        image_x, text_x = F.normalize(image_x, dim=-1), F.normalize(text_x, dim=-1)
        all_text = text_x if gather is None else gather(text_x)
        all_image = image_x if gather is None else gather(image_x)
        scale = torch.clamp(self.logit_scale.exp(), max=100)
        if self.cfg.multi_positive and tokens is not None:
            target = positive_targets(tokens[:, None], gathered_ids(tokens[:, None], gather))  # [B, W B]
            return 0.5 * (soft_target_ce(image_x @ all_text.t() * scale, target)
                          + soft_target_ce(text_x @ all_image.t() * scale, target))
        labels = torch.arange(b, dtype=torch.long, device=image_x.device) + b * rank
        return 0.5 * (F.cross_entropy(image_x @ all_text.t() * scale, labels)
                      + F.cross_entropy(text_x @ all_image.t() * scale, labels))

    def multi_label_loss(self, image_feat: torch.Tensor, text_feat: torch.Tensor, gather: Gather | None = None,
                         rank: int = 0, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """GroupViT's multi-label contrastive loss (``MultiLabelContrastive.multi_label_loss``), unweighted.

        Args:
            image_feat: ``[B, L1, D]`` (the pooled image embedding: ``L1`` = 1), unnormalised.
            text_feat: ``[B, L2, D]`` (the ``K`` noun prompts of each caption), unnormalised.

        Image row ``(b, l1)`` against every rank's ``(b', l2)`` texts: a soft target ``1 / L2`` on each of its own
        sample's ``L2`` prompts (``L1``: the other way round); scale ``exp(multi_label_logit_scale)`` clamped at
        100; the mean over rows of the soft cross-entropy (timm's ``SoftTargetCrossEntropy``), the two directions
        averaged. Returns a scalar float32.

        ``tokens`` (``[B, L2, L]``, the prompts' ids; ``L1`` = 1) with ``cfg.multi_positive``: image ``b``'s target
        is spread over every prompt of the batch whose ids equal one of its own prompts' (the same noun in the same
        template), prompt ``(b, l)``'s over every image one of whose prompts it equals (:func:`positive_targets`).

        With ``cfg.multi_label_pool`` "max", ``image_feat`` is ``[B, G, D]`` (each final group projected) and
        image ``b``'s logit for a prompt is its best group's, ``max_g``: one row per image (``L1`` = 1 in the
        targets).
        """
        b, l1, l2 = image_feat.shape[0], image_feat.shape[1], text_feat.shape[1]
        text_x = F.normalize(text_feat, dim=-1).flatten(0, 1)  # [(B L2), D]
        all_text = text_x if gather is None else gather(text_x)  # [(W B L2), D], rank by rank
        scale = torch.clamp(self.multi_label_logit_scale.exp(), max=100)
        if self.cfg.multi_label_pool == "max":
            groups = F.normalize(image_feat, dim=-1)  # [B, G, D]
            all_groups = groups if gather is None else gather(groups)  # [W B, G, D]
            i2t = torch.einsum("bgd,nd->bgn", groups, all_text).amax(1)  # [B, W B L2]
            t2i = torch.einsum("nd,mgd->nmg", text_x, all_groups).amax(2)  # [(B L2), W B]
            l1 = 1
        else:
            image_x = F.normalize(image_feat, dim=-1).flatten(0, 1)  # [(B L1), D]
            all_image = image_x if gather is None else gather(image_x)
            i2t, t2i = image_x @ all_text.t(), text_x @ all_image.t()
        if self.cfg.multi_positive and tokens is not None and l1 == 1:
            all_tokens = gathered_ids(tokens, gather)  # [W B, L2, L]
            to_text = positive_targets(tokens, all_tokens)  # [B, (W B L2)]
            # prompt (b, l) -> image b': positive when it equals one of b''s prompts
            to_image = positive_targets(tokens.flatten(0, 1)[:, None], all_tokens, per="sample")  # [(B L2), W B]
            return 0.5 * (soft_target_ce(i2t * scale, to_text) + soft_target_ce(t2i * scale, to_image))
        loss_img = self._soft_ce(i2t * scale, b, l1, l2, rank)
        loss_text = self._soft_ce(t2i * scale, b, l2, l1, rank)
        return 0.5 * (loss_img + loss_text)

    def matched_label_loss(self, group_feat: torch.Tensor, text_feat: torch.Tensor, tokens: torch.Tensor,
                           gather: Gather | None = None) -> torch.Tensor:
        """The multi-label loss read group by group (``cfg.multi_label_pool`` "match"; not the reference's):
        :func:`~vpltool.models.text.pgseg.targets.matched_label_loss` at ``exp(multi_label_logit_scale)`` clamped at
        100. ``group_feat`` ``[B, G, D]``, ``text_feat`` ``[B, K, D]`` unnormalised, ``tokens`` ``[B, 1 + K, L]``."""
        scale = torch.clamp(self.multi_label_logit_scale.exp(), max=100)
        return matched_label_loss(group_feat, text_feat, tokens, scale, gather)

    @staticmethod
    def _soft_ce(logits: torch.Tensor, b: int, rows: int, cols: int, rank: int) -> torch.Tensor:
        """Soft cross-entropy of ``logits`` ``[(B rows), (W B cols)]`` against the target ``1 / cols`` on the
        ``cols`` columns of the row's own sample on this rank (``rank * B * cols + b * cols + c``), 0 elsewhere.
        The target is dense and the sum runs over every column, as timm's ``SoftTargetCrossEntropy`` sums (the
        same arithmetic, so the gradients match the reference's to the last bit; it is as large as the logits)."""
        target = torch.zeros(b, rows, logits.shape[1] // (b * cols), b, cols, dtype=logits.dtype,
                             device=logits.device)  # [B, rows, W, B, cols]
        own = torch.arange(b, device=logits.device)
        target[own, :, rank, own, :] = 1.0 / cols
        target = target.reshape(b * rows, -1)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()

    def forward_train(self, images: torch.Tensor, tokens: torch.Tensor, gather: Gather | None = None,
                      rank: int | None = None, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One training forward on ``B`` image-caption pairs (call ``train()`` first: gumbel assignment, drop path,
        batch statistics, the text prototypes' momentum update).

        Args:
            images: ``[B, 3, img_size, img_size]`` float32, normalised.
            tokens: ``[B, L]`` int64; with ``cfg.multi_label = K > 0``, ``[B, 1 + K, L]``: the caption, then its
                ``K`` noun prompts. All ``B (1 + K)`` texts go through the text encoder and projector together
                (the projector's BatchNorm statistics over all of them), as the reference's ``encode_text``.
            gather: cross-rank all-gather along dim 0 that passes gradients (the reference's ``dist_collect``);
                None = one process.
            rank: this process's rank (the contrastive labels' offset); None = ``torch.distributed``'s when a
                ``gather`` is given and a group is initialised, else 0.
            keys: ``[B, Lk]`` int64, what makes two captions the same for ``cfg.multi_positive`` (equal rows:
                positives of each other's images); None = the captions' own token ids.

        Returns:
            ``loss`` (total = ``contrastive`` + ``npr`` + ``multi_label``), ``contrastive``, with NPR ``npr``,
            ``npr_stage1``, ``npr_stage2``, ``npr_text`` (scalars) and the matched indices ``match_stage1``/
            ``match_stage2``/``match_text`` (int64 ``[B*G]``), with ``K > 0`` ``multi_label`` (weighted).
            T-NPR's text prototypes come from the captions alone (``[:, 0]``): the reference computes them over
            all ``B (1 + K)`` texts and then cannot match them to ``B`` images (its PGSeg config has ``K`` = 0).
        """
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if gather is not None and dist.is_available() and dist.is_initialized() else 0
        k = self.cfg.multi_label
        if k > 0 and (tokens.ndim != 3 or tokens.shape[1] != 1 + k):
            raise ValueError(f"multi_label={k}: tokens must be [B, {1 + k}, L], got {tuple(tokens.shape)}")
        flat = tokens.flatten(0, 1) if k > 0 else tokens
        eot = self.text_encoder(flat, move_prototypes=False)  # [B (1 + K), width]; T-NPR below, on the captions
        caption_eot = eot.unflatten(0, (-1, 1 + k))[:, 0] if k > 0 else eot
        text_mu = self.text_encoder.prototypes(caption_eot, gather) if self.cfg.npr else None
        text_all = self.text_projector(eot)
        text_x = text_all.unflatten(0, (-1, 1 + k)) if k > 0 else None
        tokens_img, stages = self.img_encoder.forward_features(images)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.npr:
            out.update(npr_losses(stages, text_mu, self.img_encoder.logit_scale, self.cfg.npr_weight))
        image_x = self.img_projector(self.img_encoder.pooled(tokens_img))
        caption_keys = keys if keys is not None else tokens if k == 0 else tokens[:, 0]
        out["contrastive"] = self.contrastive_loss(image_x, text_all if k == 0 else text_x[:, 0], gather, rank,
                                                   caption_keys)
        total = out["contrastive"] + out["npr"] if self.cfg.npr else out["contrastive"]
        if k > 0 and self.cfg.multi_label_pool == "match":
            out["multi_label"] = self.matched_label_loss(self.img_projector(tokens_img), text_x[:, 1:], tokens,
                                                         gather) * self.cfg.multi_label_weight
            total = total + out["multi_label"]
        elif k > 0:
            image_feat = self.img_projector(tokens_img) if self.cfg.multi_label_pool == "max" else \
                image_x.unsqueeze(1)
            out["multi_label"] = self.multi_label_loss(image_feat, text_x[:, 1:], gather, rank,
                                                       tokens[:, 1:]) * self.cfg.multi_label_weight
            total = total + out["multi_label"]
        out["loss"] = total
        return out

    def frozen(self) -> PGSeg:
        """Eval mode, no gradients (what :func:`~vpltool.models.registry.load_model` hands the stages)."""
        return self.eval().requires_grad_(False)


def build_model(cfg: PGSegConfig, seed: int = 0) -> PGSeg:
    """A freshly initialised model, seeded (the same random model in every process; the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PGSeg(cfg)

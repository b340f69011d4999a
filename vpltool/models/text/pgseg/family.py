"""The ``pgseg`` family's hooks (:class:`vpltool.models.text.family.TextSegFamily`): what `segment`, `cam`,
`benchmark`, the Python API and the shared trainer call, each a thin hand-over to this package's functions.

:class:`PGSegFamily` registers in :mod:`vpltool.models.text.pgseg` (its ``__init__``); its training config is
:class:`vpltool.config.pgseg.PGSegTrainConfig`, the class the registry's row names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ....config.pgseg import PGSegTrainConfig
from ....errors import VplError
from . import zeroshot as _zs
from .checkpoint import load_checkpoint, model_from_state, save_checkpoint
from .model import PRESETS, PGSeg, PGSegConfig
from .model import build_model as _build


def tokenizer(cfg: PGSegConfig, vocabulary: Sequence[str] | None = None):
    """``texts -> [N, context_length]`` int64 ids. ``clip``: CLIP's BPE (open_clip's ``SimpleTokenizer``, the same
    BPE and cleaning as the reference's ``datasets/tokenizer.py``; ``[SOT] ids [EOT]``, truncated to the context with
    EOT last, zero-padded). ``toy-words``: the demo's word tokenizer over ``vocabulary``, which the demo registers
    (:func:`~vpltool.models.register_tokenizer`); another name, any tokenizer a plugin registers."""
    if cfg.tokenizer == "clip":
        from ...backbones.open_clip_import import clip_bpe

        bpe = clip_bpe()
        sot, eot = bpe.encoder["<start_of_text>"], bpe.encoder["<end_of_text>"]

        def tokenize(texts: Sequence[str]) -> torch.Tensor:
            out = torch.zeros(len(texts), cfg.context_length, dtype=torch.long)
            for i, text in enumerate(texts):
                ids = [sot] + bpe.encode(text) + [eot]
                if len(ids) > cfg.context_length:
                    ids = ids[:cfg.context_length]
                    ids[-1] = eot
                out[i, :len(ids)] = torch.tensor(ids)
            return out

        return tokenize
    from ...backbones.loading import tokenizer_factory  # the registration point plugins fill (the demo: toy-words)

    try:
        factory = tokenizer_factory(cfg.tokenizer)
    except VplError:
        raise VplError(f"unknown PGSeg tokenizer {cfg.tokenizer!r}; known: clip, toy-words") from None
    if vocabulary is None:
        raise VplError(f"the {cfg.tokenizer} tokenizer needs the demo's vocabulary")
    return factory({"vocabulary": list(vocabulary)}, cfg.context_length)


def check_pgseg(spec: str | Path, **_: Any) -> PGSegConfig:
    """The config of checkpoint ``spec`` (read and validated; no model built)."""
    from ....io.tensors import check_weights

    cfg, state = load_checkpoint(spec)
    with torch.device("meta"):  # the model's keys, shapes and dtypes: no memory, no init
        expected = PGSeg(cfg).state_dict()
    # the one scrutiny of a model file: the first wrong tensor named with both shapes whole (not a cut key list)
    check_weights(spec, state, expected, fix="pass a checkpoint of this model")
    return cfg


def build_model_shapes(cfg: PGSegConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``cfg``'s model and its shape (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = PGSeg(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_pgseg(spec: str | Path, device: Any = "cpu", **_: Any) -> PGSeg:
    """The frozen model of checkpoint ``spec`` on ``device`` (eval mode, no gradients)."""
    cfg, state = load_checkpoint(spec)
    return model_from_state(cfg, state, str(spec)).frozen().to(torch.device(device))


class PGSegFamily:
    """PGSeg / GroupViT as a text-supervised family (every hook of ``TextSegFamily``, nothing else public)."""

    name = "pgseg"
    TrainConfig = PGSegTrainConfig
    TEMPLATES = _zs.TEMPLATES

    def tokenizer(self, cfg: PGSegConfig, vocabulary: Sequence[str] | None = None):
        return tokenizer(cfg, vocabulary)

    def caption_length(self, cfg: PGSegConfig) -> tuple[Callable[[str], int], int]:
        if cfg.tokenizer == "clip":
            from ...backbones.open_clip_import import clip_bpe

            bpe = clip_bpe()
            return (lambda text: len(bpe.encode(text)) + 2), cfg.context_length
        tokenize = self.tokenizer(cfg)

        def length(text: str) -> int:
            tokenize([text])  # a word the vocabulary lacks is named here (the toy's word tokenizer warns once)
            return len(tokenize.split(text)) + 2

        return length, cfg.context_length

    def class_tokens(self, names: Sequence[str], tokenize, templates: Sequence[str]) -> torch.Tensor:
        return _zs.class_tokens(names, tokenize, templates)

    def class_text_embeddings(self, model: PGSeg, tokens: torch.Tensor) -> torch.Tensor:
        return _zs.class_text_embeddings(model, tokens)

    def image_tensor(self, image, short_side: int) -> torch.Tensor:
        return _zs.image_tensor(image, short_side)

    def zero_shot_logits(self, model: PGSeg, images: torch.Tensor, text: torch.Tensor, bg_thresh: float = 0.95,
                         with_bg: bool = True, mode: str = "whole", crop: int = 448,
                         stride: int = 224) -> torch.Tensor:
        return _zs.zero_shot_logits(model, images, text, bg_thresh, with_bg, mode, crop, stride)

    def check_checkpoint(self, path: str | Path) -> PGSegConfig:
        return check_pgseg(path)

    def load_checkpoint(self, path: str | Path) -> tuple[PGSegConfig, dict[str, torch.Tensor]]:
        return load_checkpoint(path)

    def load_model(self, path: str | Path, device: Any = "cpu") -> PGSeg:
        return load_pgseg(path, device)

    def save_checkpoint(self, path: str | Path, model: PGSeg, extra: dict[str, Any] | None = None,
                        **meta: Any) -> Path:
        return save_checkpoint(path, model, extra, **meta)

    def model_config(self, cfg: PGSegTrainConfig, init: PGSegConfig | None = None) -> PGSegConfig:
        """The ``--init`` file's architecture, else ``cfg.preset`` at ``cfg.crop_size`` (its position table's
        side); NPR, the losses and the grouping as ``cfg`` says."""
        if init is not None and init.img_size != cfg.crop_size:
            raise VplError(f"--init: its model trains at {init.img_size} px (its position table), not "
                           f"--crop-size {cfg.crop_size}; pass --crop-size {init.img_size}")
        if init is not None and init.npr and not cfg.npr:  # the file's architecture, NPR included
            raise VplError("--init: a PGSeg checkpoint (it holds NPR modules), which a model trained with --no-npr "
                           "lacks; pass --npr to fine-tune it as PGSeg, or a GroupViT checkpoint for --no-npr")
        base = init.to_dict() if init is not None else {**PRESETS[cfg.preset]().to_dict(), "img_size": cfg.crop_size}
        if cfg.groups:
            base = {**base, **_groups(base, cfg.groups, init is not None)}
        groups = list(base.get("num_output_groups") or [0])[-1]
        if cfg.multi_label_pool == "match" and cfg.multi_label > groups:
            raise VplError(f"--multi-label-pool match: each of the {cfg.multi_label} noun prompts takes its own "
                           f"final group and the model has {groups}; pass --multi-label {groups} or fewer")
        out = PGSegConfig.from_dict({**base, "npr": cfg.npr, "multi_label": cfg.multi_label,
                                     "multi_label_weight": cfg.multi_label_weight,
                                     "multi_positive": cfg.multi_positive, "multi_label_pool": cfg.multi_label_pool,
                                     "contrast_temperature": cfg.temperature,
                                     "hard_assignment": cfg.hard_assignment,
                                     "assign_iters": cfg.assign_iters, "center_residual": cfg.center_residual,
                                     "assign_metric": cfg.assign_metric, "assign_init": cfg.assign_init,
                                     # an init's weights are trained: its own init gains stay as recorded
                                     **({} if init is not None else
                                        {"assign_qk_init": cfg.assign_qk_init, "qk_init": cfg.qk_init,
                                         "attention_window": cfg.attention_window})})
        if cfg.crop_size < out.patch_size:  # no patch token at all: a traceback in the first forward
            raise VplError(f"--crop-size {cfg.crop_size}: smaller than the model's patch ({out.patch_size} px), so "
                           f"a crop holds no patch; pass --crop-size {out.patch_size} or more")
        return out

    def build_model(self, cfg: PGSegConfig, seed: int = 0) -> PGSeg:
        return _build(cfg, seed=seed)

    def forward_train(self, model: PGSeg, images: torch.Tensor, tokens: torch.Tensor, gather=None,
                      keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return model.forward_train(images, tokens, gather=gather, keys=keys)

    def for_ranks(self, model: PGSeg) -> PGSeg:
        return model.convert_sync_batchnorm()  # the reference's projectors (SyncBatchNorm has no CPU kernels)


def _groups(base: dict[str, Any], groups: tuple[int, ...], from_init: bool) -> dict[str, Any]:
    """``--groups``: each grouping stage's group tokens and output groups (GroupViT's ``num_group_tokens`` /
    ``num_output_groups``; the last stage, which groups nothing, keeps its 0 tokens)."""
    now = tuple(base.get("num_output_groups") or ())
    given = ",".join(map(str, groups))
    if from_init and now != groups:
        raise VplError(f"--groups {given}: the --init checkpoint's model has {','.join(map(str, now))} groups and "
                       f"its weights need them; drop --groups or pass --groups {','.join(map(str, now))}")
    if len(groups) != len(now):
        raise VplError(f"--groups {given}: the model has {len(now)} grouping stage(s), so give {len(now)} counts "
                       f"(its own: {','.join(map(str, now))})")
    tokens = list(base.get("num_group_tokens") or ())
    return {"num_output_groups": list(groups), "num_group_tokens": [*groups, *tokens[len(groups):]]}


__all__ = ["PGSegFamily", "tokenizer", "check_pgseg", "build_model_shapes", "load_pgseg"]

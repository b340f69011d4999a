"""Model family ``pgseg``: PGSeg (NeurIPS'23, "Uncovering Prototypical Knowledge for Weakly Open-Vocabulary Semantic
Segmentation") and GroupViT (its ``npr=False``), on current torch, exact against Ferenas/PGSeg at 9f167cd
(``parity/pgseg_parity.py``).

Package layout: :mod:`.groupvit` the image encoder (grouping blocks, gumbel assignment), :mod:`.npr` the prototypes,
matching and losses, :mod:`.text` the text encoder, :mod:`.model` the config and model, :mod:`.checkpoint` the
safetensors checkpoints and the key maps of the reference releases, :mod:`.zeroshot` zero-shot segmentation.

Through the registry: ``load_model("pgseg", path)`` -> the frozen :class:`PGSeg` of a checkpoint (vpltool's
``.safetensors`` or a GroupViT/PGSeg ``.pth`` release); ``check_model("pgseg", path)`` reads the file and its config
without building the model. A file of another architecture is one line (exit 2 through the CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import VplError
from ..registry import register_family
from .checkpoint import from_reference, infer_config, load_checkpoint, model_from_state, save_checkpoint
from .model import PRESETS, PGSeg, PGSegConfig, build_model, tiny_config
from .npr import closs, hrs, hungarian_match, npr_losses
from .zeroshot import (
    IMAGE_MEAN,
    IMAGE_STD,
    TEMPLATES,
    class_text_embeddings,
    class_tokens,
    image_tensor,
    resized_size,
    zero_shot_labels,
    zero_shot_logits,
)

# the reference's evaluation settings (segmentation/configs/_base_/datasets/*.py, test_cfg)
DEFAULT_BG_THRESH = 0.95


def tokenizer(cfg: PGSegConfig, vocabulary: Sequence[str] | None = None):
    """``texts -> [N, context_length]`` int64 ids. ``clip``: CLIP's BPE (open_clip's ``SimpleTokenizer``, the same
    BPE and cleaning as the reference's ``datasets/tokenizer.py``; ``[SOT] ids [EOT]``, truncated to the context with
    EOT last, zero-padded). ``toy-words``: the demo's word tokenizer over ``vocabulary``, which the demo registers
    (:func:`~vpltool.models.register_tokenizer`); another name, any tokenizer a plugin registers."""
    if cfg.tokenizer == "clip":
        from open_clip.tokenizer import SimpleTokenizer

        bpe = SimpleTokenizer()
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
    from ..loading import tokenizer_factory  # the registration point plugins fill (the demo: toy-words)

    try:
        factory = tokenizer_factory(cfg.tokenizer)
    except VplError:
        raise VplError(f"unknown PGSeg tokenizer {cfg.tokenizer!r}; known: clip, toy-words") from None
    if vocabulary is None:
        raise VplError(f"the {cfg.tokenizer} tokenizer needs the demo's vocabulary")
    return factory({"vocabulary": list(vocabulary)}, cfg.context_length)


def check_pgseg(spec: str | Path, **_: Any) -> PGSegConfig:
    """The config of checkpoint ``spec`` (read and validated; no model built)."""
    cfg, state = load_checkpoint(spec)
    expected = build_model_shapes(cfg)
    bad = [k for k, shape in expected.items() if k not in state or tuple(state[k].shape) != shape]
    if bad or set(state) - set(expected):
        raise VplError(f"{spec}: does not fit the PGSeg/GroupViT architecture it declares (first mismatched keys "
                       f"{(bad or sorted(set(state) - set(expected)))[:3]}); pass a checkpoint of this model")
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


register_family("pgseg", load_pgseg, check_pgseg, module=__name__,
                summary="PGSeg / GroupViT (image-text grouping transformer): checkpoints of train-pgseg, GroupViT "
                        "and PGSeg releases")

__all__ = [
    "PGSeg", "PGSegConfig", "PRESETS", "build_model", "tiny_config", "tokenizer", "save_checkpoint",
    "load_checkpoint", "from_reference", "infer_config", "model_from_state", "check_pgseg", "load_pgseg",
    "zero_shot_labels", "zero_shot_logits", "class_text_embeddings", "class_tokens", "TEMPLATES", "image_tensor",
    "resized_size",
    "npr_losses", "closs", "hrs", "hungarian_match", "DEFAULT_BG_THRESH", "IMAGE_MEAN", "IMAGE_STD",
]

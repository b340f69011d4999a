"""Model family ``pgseg``: PGSeg (NeurIPS'23, "Uncovering Prototypical Knowledge for Weakly Open-Vocabulary Semantic
Segmentation") and GroupViT (its ``npr=False``), on current torch, exact against Ferenas/PGSeg at 9f167cd
(``parity/pgseg_parity.py``).

Package layout: :mod:`.groupvit` the image encoder (grouping blocks, gumbel assignment), :mod:`.npr` the prototypes,
matching and losses, :mod:`.text` the text encoder, :mod:`.model` the config and model, :mod:`.checkpoint` the
safetensors checkpoints and the key maps of the reference releases, :mod:`.zeroshot` zero-shot segmentation.

:mod:`.family` holds its hooks (:class:`~vpltool.models.text.family.TextSegFamily`), registered here. Through the
registry: ``load_model("pgseg", path)`` -> the frozen :class:`PGSeg` of a checkpoint (vpltool's
``.safetensors`` or a GroupViT/PGSeg ``.pth`` release); ``check_model("pgseg", path)`` reads the file and its config
without building the model. A file of another architecture is one line (exit 2 through the CLI).
"""

from __future__ import annotations

from ..family import register_text_family
from .checkpoint import from_reference, infer_config, load_checkpoint, model_from_state, save_checkpoint
from .family import PGSegFamily, build_model_shapes, check_pgseg, load_pgseg, tokenizer
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


register_text_family(PGSegFamily())


__all__ = [
    "PGSeg", "PGSegConfig", "PRESETS", "build_model", "tiny_config", "tokenizer", "save_checkpoint",
    "load_checkpoint", "from_reference", "infer_config", "model_from_state", "check_pgseg", "load_pgseg",
    "zero_shot_labels", "zero_shot_logits", "class_text_embeddings", "class_tokens", "TEMPLATES", "image_tensor",
    "resized_size",
    "npr_losses", "closs", "hrs", "hungarian_match", "DEFAULT_BG_THRESH", "IMAGE_MEAN", "IMAGE_STD", "PGSegFamily",
    "build_model_shapes",
]

"""Model family ``talk2dino``: Talk2DINO (ICCV'25, "Talking to DINO: Bridging Self-Supervised Vision Backbones with
Language for Open-Vocabulary Segmentation"), a text-supervised model that learns a projection of CLIP's text
embedding onto a frozen DINO's patch space from image–caption pairs alone. Read from lorebianchi98/Talk2DINO at
4918c2d and exact against it (``parity/talk2dino_parity.py``).

Package layout: :mod:`.model` the config, the projection, the training features and the loss; :mod:`.net` the
module over the frozen backbones; :mod:`.zeroshot` zero-shot segmentation as its evaluation runs it;
:mod:`.checkpoint` the files; :mod:`.backbones` the digests of the frozen backbones' bytes; :mod:`.training` its
train view and optimiser; :mod:`.config` its training configuration (torch-free); :mod:`.family` its hooks of
:class:`vpltool.models.text.family.TextSegFamily`, registered there (the registry's ``talk2dino`` row names it).

Importing the package costs nothing (the CLI reads :mod:`.config` before torch loads): the names below load on
first use.
"""

from __future__ import annotations

from ... import lazy_getattr

_LAZY = {
    **dict.fromkeys(("ATTN_SCALE", "LOGIT_SCALE", "Projection", "Talk2DINOConfig", "cls_attention_logits",
                     "head_embeddings", "select_heads", "talk2dino_loss"), "model"),
    **dict.fromkeys(("Talk2DINO", "build_model", "config_for", "interpolate_square", "load_backbones"), "net"),
    **dict.fromkeys(("TEMPLATES", "class_text_embeddings", "class_tokens", "crop_masks", "image_tensor",
                     "slide_windows", "zero_shot_labels", "zero_shot_logits"), "zeroshot"),
    **dict.fromkeys(("KIND", "from_reference", "load_checkpoint", "save_checkpoint"), "checkpoint"),
    **dict.fromkeys(("FAMILY", "check_talk2dino", "load_talk2dino"), "family"),
    "Talk2DINOTrainConfig": "config",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = list(_LAZY)

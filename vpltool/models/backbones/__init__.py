"""The frozen backbones, one model family each behind :mod:`vpltool.models.registry`: what loads weights and runs
the image and text towers, and nothing of the methods built on them.

=============== ======================================================= ======================================
module          what it is                                              family
=============== ======================================================= ======================================
``clip``        open_clip ViTs and its SigLIP 2 / PE-Core timm towers   ``clip``
                with the CLIP-ES surgery (its parts: ``loading``,
                ``open_clip_import``, ``model``, ``towers``,
                ``timm_tower``, ``gradcam``, ``text_tower``,
                ``preprocess``, ``prompts``, ``local_weights``,
                ``fast_load``)
``dino``        a timm ViT (DINO, DINOv2, DINOv3, C-RADIOv3, the toy    ``dino``
                DINO): its attention (+ ``dino_weights``)
``sam``         segment-anything's image encoder (and prompt decoder)   ``sam``
=============== ======================================================= ======================================

``mimetic``, ``windows`` and ``timm_blocks`` (how a timm block mixes its tokens, RoPE included) are layers several
families share. Nothing is imported here: each module loads when its family is first named.
"""

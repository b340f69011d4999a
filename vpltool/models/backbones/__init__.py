"""The frozen backbones, one model family each behind :mod:`vpltool.models.registry`: what loads weights and runs
the image and text towers, and nothing of the methods built on them.

=============== ======================================================= ======================================
module          what it is                                              family
=============== ======================================================= ======================================
``clip``        open_clip ViTs with the CLIP-ES surgery (its parts:     ``clip``
                ``loading``, ``model``, ``gradcam``, ``text_tower``,
                ``preprocess``, ``prompts``, ``local_weights``,
                ``fast_load``)
``dino``        a timm ViT (DINO, DINOv2, the toy DINO): its attention  ``dino``
``sam``         segment-anything's image encoder (and prompt decoder)   ``sam``
=============== ======================================================= ======================================

``mimetic`` and ``windows`` are layers several families share (the toy CLIP's blocks, PGSeg's). Nothing is imported
here: each module loads when its family is first named.
"""

"""`vpltool cam`: CLIP-ES softmax-GradCAM + class-aware attention affinity (CAA), from any prototypes file.

Per image (CLIP-ES ``generate_cams_voc12.py:perform``; ``h x w`` patch grid, K present classes, M background rows):

1. Re-run only the last block from the cached ``last_block_input`` with autograd; image embedding = mean of the
   projected patch tokens; ``p = softmax(cos(img, [W_present; W_background]) / temperature)`` over K + M rows.
2. GradCAM (:meth:`vpltool.models.ClipBackbone.gradcam`) at the last block's ``ln_1`` output A ``[hw, width]``
   (``--layer input``, CLIP-ES and VPL; ``--layer output``: the block's output tokens): ``w_k = mean_patches
   dp_k/dA``, ``cam_k = ReLU(A @ w_k)``, min-max twice as pytorch_grad_cam. **All K classes in one batched
   backward**, in fp32 (fp16 gradients underflow).
3. CAA: ``Att`` = mean of the head-averaged attention of the last ``attention_blocks`` blocks without CLS (the
   cached mean of the earlier ones + the last block's own map); three column/row normalisations, symmetrise,
   square: ``T``. Box mask ``B_k`` from ``cam_k`` (all contours of ``cam > thr * max``, ``utils.py:
   scoremap2bbox``); ``refined_k = minmax((T * B_k[None, :]) @ cam_k)``.
4. The maps are stored on the patch grid (float32, ~100x smaller than at image size); readers resize them to the
   image (:func:`vpltool.io.read_cam`, bilinear as CLIP-ES's ``cv2.resize``).

Options from SSR (Semantic and Spatial Rectification, AAAI 2026; no code published, see docs/pipeline.md):

* ``--refine caa+sgc`` (superpixel-guided correction): SLIC superpixels of the image, grouped by K-means over their
  mean Lab colour and centroid (:func:`superpixel_groups`); ``M[i, j] = 1`` when patches i and j fall in the same
  group (:func:`group_mask`), and ``refined_k = minmax((T * M * B_k[None, :]) @ cam_k)``: activation does not
  propagate across groups.
* ``--affinity dino|clip+dino``: ``T`` is built from a timm ViT's attention on the same patch grid
  (:mod:`vpltool.models.backbones.dino`), or from ``w * Att_clip + (1 - w) * Att_dino``.

The files, in the order a reader meets the method:

* :mod:`~vpltool.stages.cam.gradcam`: steps 1-2, the softmax target over an image's rows and GradCAM (whose arithmetic
  is on the backbone, shared with extract and diagnose).
* :mod:`~vpltool.stages.cam.caa`: step 3, the affinity, the box masks and the propagation, the per-image (CLIP-ES
  parity) and the batched form side by side; the DINO attention hookup.
* :mod:`~vpltool.stages.cam.sgc`: SSR's superpixel groups.
* :mod:`~vpltool.stages.cam.sources`: where each image's tokens come from (an `extract` cache, or a dataset).
* :mod:`~vpltool.stages.cam.dense`: ``--dense METHOD``: seeds from a training-free dense CLIP instead of GradCAM.
* :mod:`~vpltool.stages.cam.stage`: the stage, which runs the images batched on the shared pipeline, writes the maps and
  draws overlays.
"""

from .caa import (
    Refined,
    affinity,
    affinity_share,
    box_coords,
    box_mask,
    box_masks,
    caa_attention,
    caa_transition,
    check_affinity,
    components,
    dino_backbone,
    mean_attention,
    needs_image,
    refine,
    refine_batch,
)
from .dense import dense_maps, run_dense_cam
from .gradcam import ImageTokens, PrototypeRows, gradcam_batch, gradcam_image, row_names, temperature_of
from .sgc import group_mask, kmeans, patch_majority, superpixel_features, superpixel_groups
from .sources import cached_tokens, image_tokens
from .stage import STAGE, CamResult, batched_mode, cams_for_batch, cams_for_image, overlay, run_cam

__all__ = [
    "STAGE", "run_cam", "CamResult", "cams_for_image", "cams_for_batch", "batched_mode", "overlay",
    "ImageTokens", "PrototypeRows", "gradcam_image", "gradcam_batch", "row_names", "temperature_of",
    "affinity", "affinity_share", "box_coords", "box_mask", "box_masks", "components", "Refined", "refine",
    "refine_batch",
    "mean_attention", "caa_attention", "caa_transition", "check_affinity", "dino_backbone", "needs_image",
    "kmeans", "patch_majority", "superpixel_features", "superpixel_groups", "group_mask",
    "cached_tokens", "image_tokens", "run_dense_cam", "dense_maps",
]  # fmt: skip

"""TextRegion (``--dense textregion``; avaxiao/TextRegion, TMLR'25): region tokens pooled from CLIP's last-block
values over SAM 2's soft region masks, each scored against the text and painted back through its mask; the pixels
no mask covers take SCLIP's patch logits.

Its parts: :mod:`.kernels` (the arithmetic, restated from a reading of ``model_semantic.py``), :mod:`.regions`
(where the masks come from: a folder of ``.npz`` files, or SAM 2) and :mod:`.generator` (SAM 2's mask generator as
the reference configures it). Each image needs its masks (the ``masks`` extra input). Its segmentor settings and
per-benchmark presets are its spec row's (:data:`vpltool.config.dense.DENSE_SPECS`); its own constants
:class:`~.kernels.RegionPooling` and :class:`~.generator.MaskGenerator`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ....config.dense_knobs import automatic_generator
from ....errors import VplError
from ..concept_regions import fill_regions, is_sam3
from ..hooks import DenseHooks
from ..mixing import DenseMixing
from .generator import MaskGenerator
from .kernels import (
    RegionPooling,
    clip_views,
    feature_masks,
    global_patch_filter,
    multi_resolution,
    photo_logits,
    region_logits,
    textregion_logits,
)

# model_semantic.py's get_CLIP_logits (the uncovered pixels): custom_attn(csa=True) with the residual and the MLP,
# and custom_clip's interpolate_pos_encoding (+0.1, bicubic) for its 336-pixel views
PRESET = DenseMixing("textregion", "qq+kk", True, True, "bicubic-dino")


def _knobs(cfg):
    """The run's :class:`~vpltool.config.dense_knobs.TextRegionKnobs` (None: a backbone made by name alone)."""
    return getattr(cfg, "knobs", None)


def pooling(cfg) -> RegionPooling:
    """The run's :class:`RegionPooling` (its knobs applied)."""
    out, knobs = RegionPooling(), _knobs(cfg)
    if getattr(knobs, "region_halves", None) is not None:
        out = replace(out, halves=bool(knobs.region_halves))
    if getattr(knobs, "region_crop", None) is not None:
        out = replace(out, crop=int(knobs.region_crop))
    return out


def generator_settings(cfg) -> MaskGenerator:
    """The run's :class:`MaskGenerator` (its knobs applied)."""
    out, knobs = MaskGenerator(), _knobs(cfg)
    if getattr(knobs, "points_per_side", None) is not None:
        out = replace(out, points_per_side=int(knobs.points_per_side))
    return out


def _source(cfg, load: bool = True, device: str = "cpu"):
    from .regions import mask_source

    if cfg is None:
        raise VplError("--dense textregion needs its region masks: run it through segment or vpltool.segmenter with "
                       "--region-masks (a backbone made by name alone has none)")
    return mask_source(cfg.knobs.region_masks, cfg.sam_weights, generator_settings(cfg), load=load,
                       sam_model=cfg.sam_model, device=device)


class Hooks(DenseHooks, method="textregion", preset=PRESET):
    """TextRegion's hooks: each image's region masks (``masks``, ``[R, H0, W0]`` float16) and its segmentor
    (:func:`textregion_logits`, one photo at a time)."""

    _folder: dict | None = None  # a folder of region masks by content (FolderMasks.check)
    _names: tuple[str, ...] | None = None  # the run's query words (query_text), SAM 3's default concepts

    def check(self) -> None:
        _source(self.cfg, load=False)  # the value, the sam2 package, the weights file

    def check_items(self, items) -> None:
        from pathlib import Path

        from ....io import image_size
        from .regions import FolderMasks

        source = _source(self.cfg, load=False)
        if isinstance(source, FolderMasks):
            self._folder = source.check([(Path(it.image), image_size(it.image)) for it in items])

    def record(self) -> dict:
        from ..concept_regions import threshold_of
        from .regions import source_record

        out = source_record(self.cfg.knobs.region_masks, self.cfg.sam_weights, generator_settings(self.cfg),
                            self.cfg.sam_model, threshold_of(self.cfg.knobs))
        if self._folder is None:
            return {"region_source": out}
        # the folder by content, in place of the path given (an input, not a setting), as CorrCLIP's
        return {"region_source": out, "region_masks": self._folder}

    def query_text(self, bb, names, templates):
        self._names = tuple(names)  # SAM 3's regions prompt it with the run's words (concept_regions)
        return super().query_text(bb, names, templates)

    def extra_inputs(self, item, image) -> dict:
        masks = self.cfg.knobs.region_masks
        if is_sam3(masks) or automatic_generator(masks):  # a model's regions: made where the segmentor runs, at
            return {"photo": torch.tensor(image)}  # its --precision (fill_regions); a copy: the array may be read-only
        source = _source(self.cfg)
        if getattr(item, "image", None) is None:
            raise VplError(f"--region-masks {masks}: a photo given as an array has no file name to "
                           "find its <stem>.npz by; pass the photo's path, or --region-masks sam2 / sam")
        return {"masks": torch.from_numpy(source.masks(getattr(item, "image", None), image, self.cfg))}

    def _region_maker(self, device):
        """An automatic generator's (``sam``, ``sam2``) soft masks of a photo (``[H0, W0, 3]`` uint8, numpy or
        torch) -> ``[R, H0, W0]`` float16, its SAM on ``device`` (:func:`~..concept_regions.fill_regions`)."""
        source = _source(self.cfg, device=str(device))
        return lambda photo: source.masks(None, np.asarray(photo.cpu() if hasattr(photo, "cpu") else photo), self.cfg)

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        fill_regions(self, extras, pixels.device, key="masks")
        cfg = pooling(self.cfg)
        return [textregion_logits(bb, pixels[i], text, torch.as_tensor(e["masks"]), size, cfg)
                for i, (size, e) in enumerate(zip(sizes, extras))]

    def features(self, bb, pixels, fp16_pos=False):
        raise VplError("--dense textregion has no features without each image's region masks: its segmentor "
                       "(segment, vpltool.segmenter) gives them their masks")

    def probabilities(self, bb, logits, query_class, n_classes, settings):
        from ..queries import merged_probabilities

        return merged_probabilities(self.cfg, logits, query_class, n_classes, settings)  # --query-merge


__all__ = ["Hooks", "PRESET", "RegionPooling", "MaskGenerator", "pooling", "generator_settings", "clip_views",
           "feature_masks", "global_patch_filter", "multi_resolution", "photo_logits", "region_logits",
           "textregion_logits"]

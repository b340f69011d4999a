"""CorrCLIP (``--dense corrclip``; zdk258/CorrCLIP ``CorrCLIPv1/``): CLIP's last block mixed by a proxy DINO's
patch correlation restricted to class-agnostic regions, a spatial branch of the middle blocks, a semantic branch of
one class-token copy per region, and a map correction after the argmax.

Its parts: :mod:`.kernels` (the forward and the post-process, restated from a reading of its code) and
:mod:`.regions` (where the region masks come from: a folder of the reference's ``.npz`` files, segment-anything's
automatic mask generator, or SAM2). The backbone needs a proxy DINO (``with_dense("corrclip", proxy=...)``); each
image needs its region map (the ``regions`` extra input). Its segmentor settings and proxy model are the spec
table's (:data:`vpltool.config.dense.DENSE_SPECS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ....config.dense_knobs import automatic_generator
from ....errors import VplError
from ..concept_regions import fill_regions, is_sam3, sam3_record, sam3_source, threshold_of
from ..hooks import DenseHooks
from ..mixing import DenseMixing
from .kernels import (
    Correlation,
    corrclip_logits,
    dbscan_labels,
    dino_query_keys,
    map_correction,
    merge_regions,
    region_attention_mask,
    scope_attention,
    spatial_blocks,
    window_features,
)

# corrclip_segmentor.py + its open_clip: the DINO-style positional resize (interpolate_pos_encoding, +0.1)
PRESET = DenseMixing("corrclip", "proxy", False, False, "bicubic-dino")
CORRELATION = Correlation()


def input_regions(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A photo's ``[H0, W0]`` int region map -> ``[H, W]`` int32 at the network input's ``size`` (nearest,
    ``F.interpolate``'s floor indexing, as the reference's ``predict``)."""
    return F.interpolate(ids.view(1, 1, *ids.shape[-2:]).float(), size=tuple(size), mode="nearest").int()[0, 0]


class Hooks(DenseHooks, method="corrclip", preset=PRESET):
    """CorrCLIP's hooks: each image's region map (``regions``, the photo's ``[H0, W0]`` int64 ids), its segmentor
    (:func:`corrclip_logits`) and its map correction after the argmax (:func:`map_correction`). A method built on
    CorrCLIP's region maps (OV-Stitcher) subclasses them with its own segmentor and its SAM settings."""

    _folder: dict | None = None  # a folder of region masks by content (FolderRegions.check)
    _sam_settings: dict | None = None  # the method's SAM automatic-mask settings; None: CorrCLIP's (regions.py)
    _names: tuple[str, ...] | None = None  # the run's query words (query_text), SAM 3's default concepts

    def _source(self, load: bool = True, device: Any = "cpu"):
        """The run's region source (:func:`.regions.region_source`, its SAM on ``device``) with the method's name and
        SAM settings."""
        from .regions import SAM_SETTINGS, region_source

        if self.cfg is None:
            raise VplError(f"--dense {self.method} needs its region masks: run it through segment or vpltool.segmenter "
                           "with --region-masks (a backbone made by name alone has none)")
        k = self.cfg
        if is_sam3(k.knobs.region_masks):  # checked only: its model loads where the segmentor runs (fill_regions)
            return sam3_source(k.knobs.region_masks, k.sam_weights, load=False)
        return region_source(k.knobs.region_masks, k.sam_model, k.sam_weights, load=load,
                             settings=self._sam_settings or SAM_SETTINGS, method=self.method, device=str(device))

    def check(self) -> None:
        self._source(load=False)  # the value, the SAM file's kind, the sam2 package

    def check_items(self, items) -> None:
        from pathlib import Path

        from ....io import image_size
        from .regions import FolderRegions

        source = self._source(load=False)
        if isinstance(source, FolderRegions):
            self._folder = source.check([(Path(it.image), image_size(it.image)) for it in items])

    def record(self) -> dict:
        from .regions import SAM_SETTINGS, source_record

        k = self.cfg
        out = {"region_source": sam3_record(k.knobs.region_masks, k.sam_weights, threshold_of(k.knobs))
               if is_sam3(k.knobs.region_masks)
               else source_record(k.knobs.region_masks, k.sam_model, k.sam_weights,
                                  self._sam_settings or SAM_SETTINGS)}
        if self._folder is not None:  # the folder by content, in place of the path given (an input, not a setting)
            out["region_masks"] = self._folder
        return out

    def older_record(self, old: dict, new: dict) -> dict:
        # before 48b463c a folder of masks was recorded as its path given (region_masks) and its files' digest
        # beside the generator (region_source.files_sha256, the digest region_masks.sha256 holds now)
        source, folder = old.get("region_source"), new.get("region_masks")
        if not (isinstance(source, dict) and "files_sha256" in source and isinstance(folder, dict)):
            return old
        digest = source["files_sha256"]
        was = old.get("region_masks")
        was = folder if digest == folder.get("sha256") else {"path": was if isinstance(was, str) else None,
                                                             "sha256": digest}  # other bytes: a changed input
        return {**old, "region_masks": was,
                "region_source": {k: v for k, v in source.items() if k != "files_sha256"}}

    def query_text(self, bb, names, templates):
        self._names = tuple(names)  # SAM 3's regions prompt it with the run's words (concept_regions)
        return super().query_text(bb, names, templates)

    def extra_inputs(self, item, image) -> dict:
        masks = self.cfg.knobs.region_masks
        if is_sam3(masks) or automatic_generator(masks):  # a model's regions: made where the segmentor runs, at
            return {"photo": torch.tensor(image)}  # its --precision (fill_regions); a copy: the array may be read-only
        if getattr(item, "image", None) is None:
            raise VplError(f"--region-masks {masks}: a photo given as an array has no file name to find its "
                           "<stem>.npz by; pass the photo's path, or --region-masks sam")
        return {"regions": torch.from_numpy(self._source().region_map(getattr(item, "image", None), image))}

    def _region_maker(self, device):
        """An automatic generator's (``sam``, ``sam2``) region map of a photo (``[H0, W0, 3]`` uint8, numpy or
        torch) -> ``[H0, W0]`` int64 ids, its SAM on ``device`` (:func:`~..concept_regions.fill_regions`)."""
        source = self._source(device=device)
        return lambda photo: source.region_map(None, np.asarray(photo.cpu() if hasattr(photo, "cpu") else photo))

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        fill_regions(self, extras, pixels.device)
        ids = [input_regions(torch.as_tensor(e["regions"]), pixels.shape[-2:]) for e in extras]
        return corrclip_logits(bb, pixels, text, ids, sizes, settings.slide_crop, settings.slide_stride, CORRELATION)

    def features(self, bb, pixels, fp16_pos=False):
        raise VplError(f"--dense {self.method} has no features without each image's region map: its segmentor "
                       "(segment, vpltool.segmenter) gives them their masks")

    def probabilities(self, bb, logits, query_class, n_classes, settings):
        from ..queries import merged_probabilities

        return merged_probabilities(self.cfg, logits, query_class, n_classes, settings)  # --query-merge

    def postprocess(self, bb, probs, labels, extras, settings):
        return probs, map_correction(labels, torch.as_tensor(extras["regions"]))


__all__ = ["Hooks", "PRESET", "CORRELATION", "Correlation", "input_regions", "corrclip_logits", "dbscan_labels",
           "dino_query_keys", "map_correction", "merge_regions", "region_attention_mask", "scope_attention",
           "spatial_blocks", "window_features"]

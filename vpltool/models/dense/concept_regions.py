"""SAM 3's masks as the class-agnostic regions of CorrCLIP, OV-Stitcher and TextRegion (``--region-masks
sam3[:CONCEPTS]``, ``--sam-weights`` SAM 3's folder or ``sam3.pt``; the ``sam3`` family).

What a region generator is with SAM 3. The references take their regions from SAM 2's automatic mask generator: a
grid of point prompts, every mask kept whatever it shows, its class left to CLIP. SAM 3's model (transformers'
``Sam3Model``, what the ``sam3`` family loads) is prompted by concept, not by points (its point-prompted head is
the tracker's, which the family does not build). So a SAM 3 region generator prompts it with concepts and keeps
every instance mask it finds, dropping the concept: by default the words the run segments (each class's names and
synonyms, then the background words, the queries CLIP scores), so that the regions cover what the run asks about
and the stuff around it; ``sam3:WORD,WORD`` names other concepts (generic ones, e.g. ``sam3:object,stuff``). Each
concept's instances are those Meta's processor keeps (object probability times presence above its confidence
threshold, 0.5 unless ``--confidence-threshold`` says otherwise), at the photo's size. CLIP still decides each
region's class, as in the references.

The two forms the methods read:

* CorrCLIP and OV-Stitcher: one ``[H0, W0]`` int64 id map, the masks (> 0.5) painted by ascending area with ids
  1..N, as the references paint SAM 2's (:func:`.corrclip.regions.paint_masks`); pixels no mask covers stay 0;
* TextRegion: ``[R, H0, W0]`` float16 soft masks, each kept query's mask logits at the photo's size clamped to
  [0, 3] (how TextRegion's generator keeps SAM 2's), by descending score.

SAM 3 runs where the segmentor runs (the GPU when there is one), on each photo as decoded, in the main process: a
method's ``extra_inputs`` hands the photo over and its ``dense_logits`` fills the regions in before its arithmetic;
the photo is encoded once, the concepts once a run, and grounded 8 at a time (:meth:`~vpltool.models.backbones.sam3.
Sam3.segment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ...config.dense_knobs import is_sam3  # torch-free: the knobs' check reads it too
from ...errors import VplError

PREFIX = "sam3"
THRESHOLD = 0.5  # Meta's Sam3Processor's confidence_threshold
CLAMP = (0.0, 3.0)  # TextRegion's soft masks: SAM 2's logits clamped so


def threshold_of(knobs) -> float:
    """The instance-score threshold a run's region methods give SAM 3: its ``--confidence-threshold``, else
    Meta's 0.5."""
    value = getattr(knobs, "confidence_threshold", None)
    return THRESHOLD if value is None else float(value)


def concepts_of(value: str) -> tuple[str, ...] | None:
    """The concepts ``sam3:CONCEPTS`` names (comma-separated), or None for ``sam3`` (the run's queries); one line for
    an empty list."""
    _, sep, rest = value.partition(":")
    if not sep:
        return None
    words = tuple(w.strip() for w in rest.split(",") if w.strip())
    if not words:
        raise VplError(f"--region-masks {value}: no concept after 'sam3:'; give sam3 (the run's class names and "
                       "background words) or sam3:WORD,WORD")
    return words


@dataclass
class Sam3Regions:
    """SAM 3 (a loaded ``sam3`` family model) as a region generator: ``concepts`` its prompts (None: the run's
    query words, given per call)."""

    sam: Any
    concepts: tuple[str, ...] | None = None
    threshold: float = THRESHOLD

    def words(self, names) -> tuple[str, ...]:
        words = self.concepts if self.concepts is not None else tuple(names or ())
        if not words:
            raise VplError("--region-masks sam3 prompts SAM 3 with the run's class names, which this call has none "
                           "of; run it through segment or vpltool.segmenter, or give sam3:WORD,WORD")
        return words

    def instances(self, photo: np.ndarray | torch.Tensor, names=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every concept's kept instances on ``photo`` (``[H0, W0, 3]`` uint8): ``[N, H0, W0]`` float32 mask logits
        at the photo's size and ``[N]`` their scores, in concept order, each concept's by query
        (:meth:`vpltool.models.backbones.sam3.Sam3.segment`)."""
        found = self.sam.segment(photo, self.words(names), self.threshold)
        h, w = int(photo.shape[0]), int(photo.shape[1])
        if not any(c.scores.numel() for c in found):
            return torch.zeros(0, h, w), torch.zeros(0)
        return (torch.logit(torch.cat([c.masks for c in found]).float()).cpu(),
                torch.cat([c.scores for c in found]).float().cpu())

    def region_map(self, photo, names=None) -> np.ndarray:
        """``[H0, W0]`` int64 ids (CorrCLIP's and OV-Stitcher's form; module docstring)."""
        from .corrclip.regions import paint_masks

        logits, _ = self.instances(photo, names)
        masks = (logits > 0).numpy()  # sigmoid > 0.5
        return paint_masks([{"segmentation": m, "area": int(m.sum())} for m in masks], tuple(photo.shape[:2]))

    def soft_masks(self, photo, names=None) -> np.ndarray:
        """``[R, H0, W0]`` float16 soft masks in [0, 3] (TextRegion's form; module docstring)."""
        logits, scores = self.instances(photo, names)
        order = torch.argsort(scores, descending=True, stable=True)
        return logits[order].clamp(*CLAMP).to(torch.float16).numpy()


_SOURCES: dict[tuple, Sam3Regions] = {}  # per process: one SAM 3 per weights and device


def sam3_source(value: str, sam_weights: str | None, load: bool = True, device: Any = "cpu",
                threshold: float = THRESHOLD):
    """The SAM 3 region generator ``--region-masks value`` names, keeping the instances scored above ``threshold``
    (checked: the concepts, the weights file's kind, one line, before any model loads; ``load`` False: checked
    only)."""
    from ..backbones.sam3 import Sam3Spec
    from ..registry import check_model, load_model

    concepts = concepts_of(value)
    if sam_weights in (None, "none"):
        raise VplError(f"--region-masks {value} needs SAM 3's weights: pass --sam-weights with facebook/sam3's "
                       "folder (config.json + model.safetensors) or Meta's sam3.pt")
    from ...io import file_stamp
    from ..backbones.sam3_weights import locate

    spec = Sam3Spec(str(sam_weights))
    if not load:
        check_model("sam3", spec)
        return None
    # by the files' stamps, never their digests: a file rewritten since the run named it loads anew, and the
    # registry's load refuses it in one line (a digest taken here would name the new bytes over the record's)
    key = (str(sam_weights), tuple(tuple(file_stamp(p) or ()) for p in locate(spec.weights).files), str(device))
    if key not in _SOURCES:
        check_model("sam3", spec)
        _SOURCES.clear()  # one SAM 3 at a time: they are large
        _SOURCES[key] = Sam3Regions(load_model("sam3", spec, device))
    source = _SOURCES[key]
    same = source.concepts == concepts and source.threshold == threshold
    return source if same else Sam3Regions(source.sam, concepts, threshold)


def sam3_record(value: str, sam_weights: str | None, threshold: float = THRESHOLD) -> dict:
    """How a run names its SAM 3 regions in its record: the concepts (or the run's queries), the threshold and the
    weights by content (:func:`vpltool.models.backbones.sam3.sam3_identity`)."""
    from ..backbones.sam3 import Sam3Spec, sam3_identity

    concepts = concepts_of(value)
    return {"generator": PREFIX, "concepts": list(concepts) if concepts else "the run's queries",
            "threshold": threshold, "weights": sam3_identity(Sam3Spec(str(sam_weights)))}


def fill_regions(hooks, extras: list[dict], device, key: str = "regions") -> None:
    """Each image's regions (``key``: ``regions``, the id map, or ``masks``, TextRegion's soft masks) made from its
    ``photo`` (its ``extra_inputs``), where not there yet, on ``device`` at the caller's autocast (the run's
    ``--precision``): SAM 3's, whose concepts default to the run's query words (``hooks._names``, from its
    ``query_text``), or an automatic generator's (``sam``, ``sam2``: ``hooks._region_maker(device)``)."""
    todo = [e for e in extras if key not in e and "photo" in e]
    if not todo:
        return
    if is_sam3(hooks.cfg.knobs.region_masks):
        knobs = hooks.cfg.knobs
        source = sam3_source(knobs.region_masks, hooks.cfg.sam_weights, device=device, threshold=threshold_of(knobs))
        names = getattr(hooks, "_names", None)
        make = partial(source.soft_masks if key == "masks" else source.region_map, names=names)
    else:
        make = hooks._region_maker(device)
    for e in todo:
        photo = e.pop("photo")
        e[key] = torch.from_numpy(make(photo))


__all__ = ["PREFIX", "THRESHOLD", "Sam3Regions", "concepts_of", "fill_regions", "is_sam3", "sam3_record",
           "sam3_source", "threshold_of"]

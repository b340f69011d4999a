"""Where CorrCLIP's class-agnostic region maps come from (``--region-masks``), each recorded by content.

A region map is one photo's ``[H0, W0]`` int array at its original size: one id a region, the smallest id the union
of the pixels no region covers (the reference's ``instance_mask``). OV-Stitcher reads the same maps the same way; a
generator takes its method's SAM2 settings (``settings``: CorrCLIP's :data:`SAM_SETTINGS` by default) and its name
for messages. Three generators:

* a folder of the reference's mask files (its paper numbers use these: SAM2's masks, published precomputed):
  ``<folder>/<image stem>.npz``, key ``instance_mask`` (:class:`FolderRegions`); every file is read and checked
  against its image's size before a model loads, and the files' bytes are the recorded digest;
* segment-anything's automatic mask generator with CorrCLIP's SAM2 settings (8 points a side, predicted-IoU and
  stability thresholds 0.4), its masks painted as the reference paints SAM2's (:func:`paint_masks`)
  (:class:`SamRegions`; the demo world's toy SAM serves it). segment-anything v1 has no ``multimask_output``
  switch: it keeps three masks per point where CorrCLIP's SAM2 setting asks for one, so its set of masks differs;
* SAM2's ``SAM2AutomaticMaskGenerator`` with those settings and ``multimask_output=False``, where the ``sam2``
  package is installed (:class:`Sam2Regions`);
* SAM 3 prompted with concepts (the run's query words by default), its instance masks painted as SAM2's
  (``sam3[:CONCEPTS]``: :mod:`vpltool.models.dense.concept_regions`, which says why that is SAM 3's region
  generator).

A model's regions (sam, sam2, sam3) are made where the segmentor runs, not in a loading worker, on its device and at
its ``--precision`` (:func:`vpltool.models.dense.concept_regions.fill_regions`); segment-anything's post-processing
after the decoder runs in fp32 as there (:mod:`.amg`).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....config.dense_knobs import automatic_generator
from ....errors import VplError, install_extra

NPZ_KEY = "instance_mask"
FORMAT = (f"one <image stem>.npz per image with an int array '{NPZ_KEY}' of the image's height x width "
          "(np.savez(path, instance_mask=ids); the smallest id = unsegmented)")
# corrclip_segmentor.py's SAM2AutomaticMaskGenerator arguments (a method's own: region_source's settings)
SAM_SETTINGS = {"points_per_side": 8, "pred_iou_thresh": 0.4, "stability_score_thresh": 0.4}


def read_region_file(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """One region-mask file -> ``[H0, W0]`` int64 ids (:func:`exact_ids`); ``shape``: its image's ``(H0, W0)``,
    checked. The file is read once (:func:`vpltool.io.read_as_named`: the bytes the run's record names, or one
    line). A missing, unreadable or malformed file is one line naming it and the fix."""
    import io as _io

    from ....io import read_as_named

    path = Path(path)
    if not path.is_file():
        raise VplError(f"{path}: no region-mask file for this image; give --region-masks a folder with {FORMAT}")
    try:
        data = np.load(_io.BytesIO(read_as_named(path)), allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # np.save's one array under an .npz name
            raise VplError(f"{path}: one bare array (np.save's .npy format), not an .npz archive; write {FORMAT}")
        with data:
            if NPZ_KEY not in data.files:
                raise VplError(f"{path}: no '{NPZ_KEY}' array (it holds {', '.join(data.files) or 'nothing'}); "
                               f"write {FORMAT}")
            ids = data[NPZ_KEY]
    except VplError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VplError(f"{path}: not a readable .npz file ({type(e).__name__}); write it again as {FORMAT}") from None
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise VplError(f"{path}: '{NPZ_KEY}' is {ids.dtype} of shape {ids.shape}, not a 2-D int array; write "
                       f"{FORMAT}")
    if shape is not None and tuple(ids.shape) != tuple(shape):
        raise VplError(f"{path}: a {ids.shape[0]}x{ids.shape[1]} region map for a {shape[0]}x{shape[1]} image; the "
                       "map must be at the image's original size (regenerate it from that image)")
    return exact_ids(ids, path)


# the ids the segmentor carries through float32 (the reference's nearest resize of the map): every whole number in
# [-2^24, 2^24] is one float32, so these pass unchanged; others would merge (2^24 + 1 reads as 2^24)
EXACT = 1 << 24


def exact_ids(ids: np.ndarray, path: Path | str = "region map") -> np.ndarray:
    """``[H0, W0]`` int64 region ids that keep every region apart and in order through float32: the ids as they
    are where each lies in [-2^24, 2^24] (the reference's own values), else each id's rank among the map's ids
    (0 the smallest: the unsegmented pixels stay the smallest id), never a cast that wraps (uint64 above 2^63) or
    merges (ids past 2^24 through float32). A map of more than 2^24 regions cannot be carried exactly: one line."""
    low, high = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
    if -EXACT <= low and high <= EXACT:
        return ids.astype(np.int64)
    values, ranks = np.unique(ids, return_inverse=True)
    if len(values) > EXACT:
        raise VplError(f"{path}: {len(values)} regions, more than the 2^24 the segmentor keeps apart; merge regions "
                       "or give a map with fewer")
    return ranks.reshape(ids.shape).astype(np.int64)


def paint_masks(records: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """An automatic mask generator's records -> ``[H0, W0]`` int64 ids, as the reference converts SAM2's: sorted
    by ascending ``area`` (stable), painted with ids 1..N in that order (a larger mask over the smaller ones it
    covers); pixels no mask covers stay 0."""
    ids = np.zeros(tuple(shape), dtype=np.int64)
    for k, rec in enumerate(sorted(records, key=lambda r: r["area"]), start=1):
        ids[np.asarray(rec["segmentation"], dtype=bool)] = k
    return ids


def record_masks(records: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """An automatic mask generator's records -> ``[N, H0, W0]`` bool, one mask each, in the generator's order
    (``sam-pseudo`` assigns each to a class; overlaps kept, which a painted map loses)."""
    if not records:
        return np.zeros((0, *shape), bool)
    return np.stack([np.asarray(rec["segmentation"], dtype=bool) for rec in records])


def file_digest(path: Path) -> str:
    """The file's sha256 (hex), taken through :func:`vpltool.io.sha256_file`, so that the bytes read later are held
    to it (:func:`vpltool.io.read_as_named`)."""
    from ....io import sha256_file

    return sha256_file(path).removeprefix("sha256:")


@dataclass
class FolderRegions:
    """Precomputed region maps: ``folder/<image stem>.npz``."""

    folder: Path

    def check(self, images: list[tuple[Path, tuple[int, int]]]) -> dict:
        """Every image's file read and checked (``(image path, (H0, W0))`` each), before a model loads; returns the
        folder's identity by content (:mod:`vpltool.io.inputs`): ``{"path": the folder, absolute, "sha256": a digest
        of the files' names and bytes, "files": [[name, sha256], ...]}``, so that the folder given by another path is
        the same input and a file changed is named."""
        if not Path(self.folder).is_dir():
            raise VplError(f"--region-masks {self.folder}: not a folder; give a folder with {FORMAT}, or sam")
        h, files = hashlib.sha256(), []
        for image, shape in images:
            path = self.path(image)
            digest = file_digest(path) if path.is_file() else None  # named first: the reads are held to it
            read_region_file(path, shape)
            files.append([path.name, digest])
            h.update(f"{path.name}:{digest}\n".encode())
        return {"path": str(Path(self.folder).resolve()), "sha256": h.hexdigest(), "files": files}

    def path(self, image: Path) -> Path:
        return Path(self.folder) / f"{Path(image).stem}.npz"

    def region_map(self, image_path: Path, image: np.ndarray) -> np.ndarray:
        return read_region_file(self.path(image_path), tuple(image.shape[:2]))

    def record(self) -> dict:
        return {"generator": "folder", "folder": str(self.folder)}


class SamRegions:
    """segment-anything's ``SamAutomaticMaskGenerator`` (``settings``, by default :data:`SAM_SETTINGS`; its records
    from :class:`~.amg.MaskGenerator`, which makes and upsamples only the masks it keeps) on a whole SAM
    (``load_sam`` with its prompt encoder and mask decoder: a released checkpoint, or the demo's toy SAM)."""

    def __init__(self, sam, settings: dict = SAM_SETTINGS):
        import torch
        from segment_anything.modeling import Sam

        from ....runtime.heap import keep_freed_memory
        from ...backbones.sam import PIXEL_MEAN, PIXEL_STD
        from .amg import MaskGenerator

        model = Sam(sam.model, sam.prompt_encoder, sam.mask_decoder, list(PIXEL_MEAN), list(PIXEL_STD))
        self.generator = MaskGenerator(model.eval().to(sam.device), **settings)
        if torch.device(sam.device).type == "cpu":
            # each batch of prompts makes and frees tensors of a few MB, which glibc handed back to the system and
            # faulted in again, page by page (tests/test_heap.py counts the faults; bench/bench_sam_pseudo.py times it)
            keep_freed_memory()

    def records(self, image: np.ndarray) -> list[dict]:
        import torch

        with torch.no_grad():
            return self.generator.generate(np.ascontiguousarray(image))

    def region_map(self, image_path: Path, image: np.ndarray) -> np.ndarray:
        return paint_masks(self.records(image), image.shape[:2])

    def masks(self, image: np.ndarray) -> np.ndarray:
        """``[N, H, W]`` bool: every mask the generator keeps for ``image`` (:func:`record_masks`)."""
        return record_masks(self.records(image), image.shape[:2])


def import_sam2():
    """The ``sam2`` package's builder and generator, or one line naming the fix."""
    try:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
    except ImportError:
        raise VplError(f"--region-masks sam2: the sam2 package is not installed; {install_extra('sam2')} "
                       "(SAM2_BUILD_CUDA=0 where there is no CUDA), or give --region-masks a folder of .npz "
                       "region masks or sam") from None
    return build_sam2, SAM2AutomaticMaskGenerator


class Sam2Regions:
    """SAM2's automatic mask generator as CorrCLIP and OV-Stitcher configure it (``multimask_output=False``,
    ``apply_postprocessing=False``, the method's ``settings``), from a model config and a checkpoint file."""

    def __init__(self, config: str, checkpoint: Path, device="cpu", settings: dict = SAM_SETTINGS):
        from ...registry import certify

        build_sam2, generator = import_sam2()
        model = build_sam2(config, str(checkpoint), device=str(device), apply_postprocessing=False)
        # the sam2 package reads its checkpoint itself: the registry's weights rule, as for every family's model
        certify(model, str(checkpoint), "pass SAM2's released checkpoint (re-download it) to --sam-weights")
        self.generator = generator(model=model, multimask_output=False, **settings)

    records, region_map, masks = SamRegions.records, SamRegions.region_map, SamRegions.masks


_SOURCES: dict[tuple, object] = {}  # per process (a loading worker builds its SAM once)
NEED = ("--dense {method} needs class-agnostic region masks: pass --region-masks FOLDER (" + FORMAT + "), "
        "--region-masks sam with --sam-model and --sam-weights (segment-anything's automatic mask generator), or "
        "--region-masks sam3 with --sam-weights (SAM 3 prompted with the run's class names)")


def region_source(value: str | None, sam_model: str = "vit_b", sam_weights: str | None = None, load: bool = True,
                  settings: dict = SAM_SETTINGS, method: str = "corrclip", device: str = "cpu"):
    """The generator ``--region-masks value`` names: a folder (:class:`FolderRegions`), ``sam``
    (:class:`SamRegions` on ``--sam-model`` / ``--sam-weights``, its prompt encoder and mask decoder included) or
    ``sam2[:CONFIG]`` (:class:`Sam2Regions`, ``--sam-weights`` its checkpoint; CONFIG SAM2's model config, by default
    the reference's ``sam2_hiera_l.yaml``). ``load`` False: checked only (the SAM file's kind, the package), nothing
    built. ``settings``: the method's SAM2 generator arguments; ``method``: its name, for the message; ``device``:
    where the model runs. One line naming the fix for a value that is none of these. ``sam3[:CONCEPTS]`` is not this
    function's: the hooks ask :func:`~vpltool.models.dense.concept_regions.sam3_source` for it (its model loads
    where the segmentor runs)."""
    if not value:
        raise VplError(NEED.format(method=method))
    if automatic_generator(value):
        if sam_weights is None:
            from ....config.dense_knobs import sam_weights_hint

            what = ("--sam-weights FILE, SAM2's released checkpoint" if value.startswith("sam2") else
                    sam_weights_hint(sam_model))
            raise VplError(f"--region-masks {value} needs the model's weights: pass {what}")
        if value == "sam":
            from ...backbones.sam import SamSpec
            from ...registry import check_model

            spec = SamSpec(sam_model, sam_weights, prompt=True)
            check_model("sam", spec)
            key = ("sam", sam_model, sam_weights, tuple(sorted(settings.items())), str(device))
            if load and key not in _SOURCES:
                from ...registry import load_model

                _SOURCES[key] = SamRegions(load_model("sam", spec, device), settings)
            return _SOURCES.get(key)
        import_sam2()
        config = value.partition(":")[2] or "sam2_hiera_l.yaml"
        key = ("sam2", config, sam_weights, tuple(sorted(settings.items())), str(device))
        if load and key not in _SOURCES:
            _SOURCES[key] = Sam2Regions(config, Path(sam_weights), device=device, settings=settings)
        return _SOURCES.get(key)
    return FolderRegions(Path(value).expanduser())


def source_record(value: str, sam_model: str, sam_weights: str | None, settings: dict = SAM_SETTINGS) -> dict:
    """How the run names its generator in its record: SAM by its weights' bytes; a folder's files by content are
    its ``region_masks`` (:meth:`FolderRegions.check`); SAM 3's is :func:`~vpltool.models.dense.concept_regions.
    sam3_record`."""
    if automatic_generator(value):
        # segment-anything v1 always predicts three masks a point; SAM2 runs with multimask_output=False
        return {"generator": value, "settings": dict(settings, multimask_output=value == "sam"),
                "sam_model": sam_model if value == "sam" else None,
                "weights_sha256": file_digest(Path(sam_weights)) if sam_weights not in (None, "none") else None}
    return {"generator": "folder"}


__all__ = ["NPZ_KEY", "SAM_SETTINGS", "read_region_file", "paint_masks", "record_masks", "FolderRegions", "SamRegions",
           "Sam2Regions", "import_sam2", "file_digest", "region_source", "source_record"]

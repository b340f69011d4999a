"""Where TextRegion's region masks come from (``--region-masks``), each recorded by content.

A photo's region masks are one ``[R, H0, W0]`` array at its original size, one soft mask a region: the values of
the reference's SAM 2 generator (its mask logits clamped to [0, 3] and resized to the photo, float16), or any
binary masks (bool or 0/1). Masks may overlap; the method clamps them to [0, 1]. Two generators:

* a folder of ``<image stem>.npz`` files, key ``masks`` (:class:`FolderMasks`); every file is read and checked
  against its image's size before a model loads, and the files' bytes are the recorded digest;
* SAM 2's mask generator as the reference runs it, where the ``sam2`` package is installed (``sam2[:CONFIG]``,
  :mod:`.generator`), or the same generator on segment-anything's SAM (``sam``: the demo world's toy SAM).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....config.dense_knobs import automatic_generator
from ....errors import VplError
from ....io.digests import sha256_file

NPZ_KEY = "masks"
FORMAT = (f"one <image stem>.npz per image with a float or bool array '{NPZ_KEY}' of regions x height x width "
          "(np.savez(path, masks=m); one soft mask a region, values in [0, 3] as SAM 2's generator gives them)")


def read_mask_file(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """One region-mask file -> ``[R, H0, W0]`` float16; ``shape``: its image's ``(H0, W0)``, checked. The file is
    read once (:func:`vpltool.io.read_as_named`: the bytes the run's record names, or one line). A missing,
    unreadable or malformed file is one line naming it and the fix."""
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
            masks = data[NPZ_KEY]
    except VplError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VplError(f"{path}: not a readable .npz file ({type(e).__name__}); write it again as {FORMAT}") from None
    kind = masks.dtype
    if masks.ndim != 3 or not (np.issubdtype(kind, np.floating) or np.issubdtype(kind, np.integer) or kind == np.bool_):
        raise VplError(f"{path}: '{NPZ_KEY}' is {kind} of shape {masks.shape}, not a 3-D array of masks; write "
                       f"{FORMAT}")
    if shape is not None and tuple(masks.shape[1:]) != tuple(shape):
        raise VplError(f"{path}: {masks.shape[1]}x{masks.shape[2]} region masks for a {shape[0]}x{shape[1]} image; "
                       "the masks must be at the image's original size (regenerate them from that image)")
    masks = masks.astype(np.float16)
    if not np.isfinite(masks).all() or (masks < 0).any():
        raise VplError(f"{path}: '{NPZ_KEY}' holds negative, NaN or infinite values (or values beyond float16); "
                       "write masks in [0, 3]")
    return masks


@dataclass
class FolderMasks:
    """Precomputed region masks: ``folder/<image stem>.npz``."""

    folder: Path

    def check(self, images: list[tuple[Path, tuple[int, int]]]) -> dict:
        """Every image's file read and checked (``(image path, (H0, W0))`` each), before a model loads; returns the
        folder's identity by content (:mod:`vpltool.io.inputs`), as CorrCLIP's folder: ``{"path": the folder,
        absolute, "sha256": a digest of the files' names and bytes, "files": [[name, sha256], ...]}``, so that the
        folder given by another path is the same input and a file changed is named."""
        if not Path(self.folder).is_dir():
            raise VplError(f"--region-masks {self.folder}: not a folder; give a folder with {FORMAT}, or sam2 / sam")
        h, files = hashlib.sha256(), []
        for image, shape in images:
            path = self.path(image)
            # named first: the reads are held to it
            digest = sha256_file(path).removeprefix("sha256:") if path.is_file() else None
            read_mask_file(path, shape)
            files.append([path.name, digest])
            h.update(f"{path.name}:{digest}\n".encode())
        return {"path": str(Path(self.folder).resolve()), "sha256": h.hexdigest(), "files": files}

    def path(self, image: Path) -> Path:
        return Path(self.folder) / f"{Path(image).stem}.npz"

    def masks(self, image_path: Path, image: np.ndarray, cfg=None) -> np.ndarray:
        """``[R, H0, W0]`` float16: the image's file (``cfg`` unused: the masks are at the photo's size)."""
        return read_mask_file(self.path(image_path), tuple(image.shape[:2]))


NEED = ("--dense textregion needs class-agnostic region masks: pass --region-masks FOLDER (" + FORMAT + "), or "
        "--region-masks sam2[:CONFIG] with --sam-weights (SAM 2's generator as TextRegion runs it; the sam2 package), "
        "or --region-masks sam with --sam-model and --sam-weights (that generator on segment-anything's SAM), or "
        "--region-masks sam3 with --sam-weights (SAM 3 prompted with the run's class names)")
_SOURCES: dict[tuple, object] = {}  # per process and device: the segmentor's builds its SAM (2) once


def mask_source(value: str | None, sam_weights: str | None = None, generator=None, load: bool = True,
                sam_model: str = "vit_b", device: str = "cpu"):
    """The generator ``--region-masks value`` names: a folder (:class:`FolderMasks`), ``sam2[:CONFIG]`` (TextRegion's
    generator, :class:`~.generator.TextRegionGenerator` with ``generator``'s settings, on SAM 2's ``CONFIG``, by
    default the reference's ``sam2.1_hiera_l.yaml``, and ``--sam-weights``) or ``sam`` (the same generator on
    segment-anything's ``--sam-model`` / ``--sam-weights``, its prompt encoder and mask decoder included: the demo
    world's toy SAM), on ``device``. ``load`` False: checked only (the package, the file's kind), nothing built. One
    line naming the fix for a value that is none of these."""
    from ..concept_regions import is_sam3, sam3_source

    if not value:
        raise VplError(NEED)
    if is_sam3(value):  # checked only: its model loads where the segmentor runs (concept_regions.fill_regions)
        sam3_source(value, sam_weights, load=False)
        return None
    if automatic_generator(value):
        from .generator import DEFAULT_CONFIG, Sam2Model, SamModel, TextRegionGenerator, import_sam2

        if sam_weights is None:
            raise VplError(f"--region-masks {value} needs the model's weights: pass --sam-weights FILE (SAM 2's "
                           "checkpoint, or segment-anything's with sam)")
        if value == "sam":
            from ...backbones.sam import SamSpec
            from ...registry import check_model, load_model

            spec = SamSpec(sam_model, sam_weights, prompt=True)
            check_model("sam", spec)
            key = ("sam", sam_model, sam_weights, generator, device)
            if load and key not in _SOURCES:
                _SOURCES[key] = TextRegionGenerator(SamModel(load_model("sam", spec, device)), generator)
            return _SOURCES.get(key)
        import_sam2()
        if not Path(sam_weights).is_file():
            raise VplError(f"--sam-weights {sam_weights}: no such file; give SAM 2's checkpoint (.pt)")
        config = value.partition(":")[2] or DEFAULT_CONFIG
        key = ("sam2", config, sam_weights, generator, device)
        if load and key not in _SOURCES:
            _SOURCES[key] = TextRegionGenerator(Sam2Model(config, Path(sam_weights), device), generator)
        return _SOURCES.get(key)
    return FolderMasks(Path(value).expanduser())


def source_record(value: str, sam_weights: str | None, generator=None, sam_model: str | None = None,
                  sam3_threshold: float | None = None) -> dict:
    """How the run names its generator in its record: a folder by its files' digest (added by
    :meth:`FolderMasks.check`), SAM 2 (or SAM) by its weights' bytes and its settings, SAM 3 by its concepts and
    weights and ``sam3_threshold`` (the run's, resolved by :func:`~..concept_regions.threshold_of`)."""
    from ..concept_regions import is_sam3, sam3_record

    if is_sam3(value):
        return sam3_record(value, sam_weights, sam3_threshold)
    if automatic_generator(value):
        from dataclasses import asdict

        return {"generator": value, "settings": asdict(generator) if generator is not None else None,
                "sam_model": sam_model if value == "sam" else None,
                "weights_sha256": sha256_file(sam_weights) if sam_weights else None}
    return {"generator": "folder"}


__all__ = ["NPZ_KEY", "FORMAT", "read_mask_file", "FolderMasks", "mask_source", "source_record"]

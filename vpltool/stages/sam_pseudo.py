"""`vpltool sam-pseudo`: pseudo masks from Segment Anything's masks, each assigned to a class of the CAM's label.

The same contract as `crf`: a `cam` folder in (its ``_stage.json`` names the dataset with the images), one label PNG
per image out (0 background, class ids; ``_stage.json`` beside them), so that `train-decoder`, `eval`,
`choose-pseudo` and `report` read the folder as they read `crf`'s.

**SAM-enhanced pseudo labels** (Chen, Mai, Li and Chao 2023, arXiv 2305.05803; their code cskyl/SAM_WSSS @4885dde,
``merge/max_iou*.py``, run unchanged against this module by ``parity/sam_wsss_parity.py``). Per image:

1. The CAM's label ``P`` ``[H, W]``: `crf --confidence 0`'s mask of the image's CAMs (``--start crf``, the
   default: the labels the released code merges, TransCAM's 1,464 VOC train labels shipped with it, hold values 0
   to 20 and no 255, with the ragged outlines a dense CRF leaves, not an upsampled CAM's smooth ones), or `crf
   --no-crf`'s argmax (``--start argmax``).
2. SAM's automatic masks ``m_1 .. m_N`` (``[N, H, W]`` bool, overlapping): segment-anything's
   ``SamAutomaticMaskGenerator`` (``--masks sam``), SAM 2's (``--masks sam2:CONFIG``), or a folder of masks as
   segment-anything's ``scripts/amg.py`` writes them, which is what the released code reads.
3. :func:`merge_masks`: for each class ``c`` of ``P`` in increasing order, every mask no earlier class took whose
   pixels are more than half ``c`` (``2 |m ∩ P_c| > |m|``), or (``max-iou-imp2``) that holds at least 85 % of
   ``P_c``, is taken by ``c`` and painted ``c``; ``max-iou-imp`` and ``-imp2`` also paint ``c`` where ``P_c`` lies
   outside every mask not taken before ``c`` ("trust CAM if SAM has no prediction on that pixel"). A later class
   paints over an earlier one. Everything else is background (0): a mask that no class holds the majority of
   (most of it background) makes its pixels background, which is how the rule removes a CAM's spill.

So "each mask takes the class that covers most of it" is exact when that class covers more than half; a mask with
no such class goes to background (or to a class it covers 85 % of); the order of the masks does not matter (each
class looks at every mask once, and unions do not depend on order), the order of the classes does.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..config import IGNORE_INDEX, SAM_COVERAGE, RuntimeConfig, SamPseudoConfig, to_params
from ..data import open_recorded
from ..errors import VplError
from ..numerics import run_numerics

STAGE = "sam-pseudo"
FOLDER_FORMAT = ("one folder per image, named by its id, holding one PNG per mask of the image's size (255 inside "
                 "the mask, 0 outside), as segment-anything's scripts/amg.py writes them")


# --------------------------------------------------------------------------------------------- the rule
def merge_masks(start: np.ndarray, masks: np.ndarray, merge: str = "max-iou-imp2",
                coverage: float = SAM_COVERAGE) -> np.ndarray:
    """SAM_WSSS's merge of a CAM label with SAM's masks (the module docstring, step 3).

    Args:
        start: ``[H, W]`` uint8 CAM label: 0 background, class ids (255 is no class: such pixels end background
            unless a taken mask covers them, as in the released code, whose labels hold none).
        masks: ``[N, H, W]`` bool, SAM's masks (overlapping; any order).
        merge: ``max-iou-imp2`` | ``max-iou-imp`` | ``max-iou`` (:data:`vpltool.config.SAM_MERGES`).
        coverage: ``max-iou-imp2``'s share of a class's pixels that a mask must hold to be taken for it anyway.

    Returns:
        ``[H, W]`` uint8: 0 background or a class id of ``start``.
    """
    if masks.ndim != 3 or masks.shape[1:] != start.shape:
        raise ValueError(f"masks {masks.shape} do not fit a {start.shape} label")
    out = np.zeros_like(start)
    flat, label = masks.reshape(len(masks), start.size).astype(bool, copy=False), start.reshape(-1)
    painted = out.reshape(-1)
    area = np.count_nonzero(flat, axis=1)
    taken = np.zeros(len(masks), bool)
    for c in np.unique(label):
        if c in (0, IGNORE_INDEX):
            continue
        cls = label == c
        free = np.flatnonzero(~taken)
        inter = np.count_nonzero(flat[free] & cls, axis=1)
        pick = 2 * inter - area[free] > 0
        if merge == "max-iou-imp2":
            pick |= inter / np.count_nonzero(cls) >= coverage
        region = flat[free[pick]].any(0)
        if merge != "max-iou":  # the class's own pixels that no mask still free covers
            region |= cls & ~flat[free].any(0)
        painted[region] = c
        taken[free[pick]] = True
    return out


def start_label(image: np.ndarray, cams: np.ndarray, labels: Sequence[int], cfg: SamPseudoConfig) -> np.ndarray:
    """The CAM label the rule starts from (step 1): `crf --confidence 0`'s mask, or `crf --no-crf`'s argmax."""
    from ..ops.kernels import refine_image

    return refine_image(image, cams, labels, cfg.crf())


# --------------------------------------------------------------------------------------------- masks
def _check_mask_png(path: Path, shape: tuple[int, int]) -> None:
    """A mask file's header: a PNG of ``shape``; one line otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
    except (OSError, UnidentifiedImageError, ValueError):
        raise VplError(f"{path}: not a readable PNG mask; write {FOLDER_FORMAT}") from None
    if fmt != "PNG" or (size[1], size[0]) != tuple(shape):
        what = f"a {fmt} file" if fmt != "PNG" else f"a {size[1]}x{size[0]} mask"
        raise VplError(f"{path}: {what} for a {shape[0]}x{shape[1]} image; write {FOLDER_FORMAT}")


def read_mask_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One mask file -> ``[H, W]`` bool (255 inside, as SAM_WSSS reads ``== 255``); a file of other values than 0
    and 255, of another size, or unreadable is one line."""
    from PIL import Image, UnidentifiedImageError

    _check_mask_png(path, shape)
    try:
        with Image.open(path) as im:
            values = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError):
        raise VplError(f"{path}: not a readable PNG mask; write {FOLDER_FORMAT}") from None
    if values.ndim != 2 or not np.isin(values, (0, 255)).all():
        raise VplError(f"{path}: holds {'colour' if values.ndim != 2 else 'values other than 0 and 255'}, not a "
                       f"binary mask; write {FOLDER_FORMAT}")
    return values == 255


@dataclass
class FolderMasks:
    """Precomputed masks: ``folder/<image id>/*.png`` (:data:`FOLDER_FORMAT`)."""

    folder: Path

    def files(self, item_id: str) -> list[Path]:
        return sorted(p for p in (Path(self.folder) / item_id).iterdir() if p.suffix.lower() == ".png")

    def check(self, items: Sequence[tuple[str, tuple[int, int]]]) -> dict[str, Any]:
        """Every image's folder there and every mask file read (a binary PNG of the image's size), before a model
        loads or a mask is written; returns the folder's identity by content (a digest of its files' names and
        bytes)."""
        if not Path(self.folder).is_dir():
            raise VplError(f"--masks {self.folder}: not a folder, nor sam or sam2[:CONFIG]; give {FOLDER_FORMAT}")
        h = hashlib.sha256()
        for item_id, shape in items:
            sub = Path(self.folder) / item_id
            if not sub.is_dir():
                raise VplError(f"{sub}: no mask folder for image '{item_id}'; --masks needs {FOLDER_FORMAT}")
            for path in self.files(item_id):
                digest = io.sha256_file(path)  # first: the read below is of these bytes
                read_mask_png(path, shape)
                h.update(f"{item_id}/{path.name}:{digest}\n".encode())
        return {"path": str(Path(self.folder).resolve()), "sha256": h.hexdigest()}

    def masks(self, item_id: str, shape: tuple[int, int]) -> np.ndarray:
        files = self.files(item_id)
        if not files:
            return np.zeros((0, *shape), bool)
        return np.stack([read_mask_png(p, shape) for p in files])


def _generator(cfg: SamPseudoConfig, load: bool, device: str = "cpu"):
    """The automatic mask generator ``cfg.masks`` names (:func:`vpltool.models.dense.corrclip.regions.region_source`:
    checked first, one line for a missing package or a weights file of another model; built when ``load``)."""
    from ..models.dense.corrclip.regions import region_source

    if cfg.sam_weights is None:
        raise VplError(f"--masks {cfg.masks} needs the model's weights: pass --sam-weights FILE (SAM's released "
                       "checkpoint, e.g. sam_vit_h_4b8939.pth with --sam-model vit_h; SAM 2's with sam2)")
    return region_source(cfg.masks, cfg.sam_model, cfg.sam_weights, load=load, settings=cfg.settings(),
                         method="sam-pseudo", device=device)


# --------------------------------------------------------------------------------------------- the stage
@dataclass
class SamPseudoSummary(io.StageSummary):
    masks: float | None = None  # SAM masks per image, this run's images
    covered: float | None = None  # share of this run's pixels inside at least one SAM mask
    changed: float | None = None  # share of this run's pixels whose label the rule changed from the start label


def _params(cfg: SamPseudoConfig) -> dict[str, Any]:
    """What makes two runs' masks interchangeable: the rule, its start and the generator's settings (a folder of
    masks is recorded by content in the inputs, not by path)."""
    params = to_params(cfg)
    params["masks"] = cfg.generator() or "folder"
    params["coverage"] = SAM_COVERAGE if cfg.merge == "max-iou-imp2" else None
    for name in cfg.inert():
        params.pop(name, None)
    return params


def run_sam_pseudo(
    cams_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: SamPseudoConfig = SamPseudoConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> SamPseudoSummary:
    """Pseudo masks ``<out>/<id>.png`` for every CAM file of a `cam` folder (the module docstring), then
    ``<out>/_stage.json``; finished masks are kept (a resume) unless ``runtime.overwrite``.

    Args:
        cams_dir: output folder of `vpltool cam`; its ``_stage.json`` names the dataset holding the images.
        out: output folder (created).
        cfg: the rule, its start label and SAM (:class:`vpltool.config.SamPseudoConfig`).
        runtime: ``device`` (SAM's), ``workers`` (image loaders, which also run the start label's CRF),
            ``overwrite``.
        shard: ``(i, n)``: every n-th mask from the i-th (``--shard i/n``).
        on_item: called with the number of images just finished. on_start: called once with the number to do.

    Raises:
        VplError: bad input (the CAM folder, the masks, SAM's weights, the output), one line, before a model loads.
    """
    import torch

    from ..device import resolve_device, shard_from_env
    from ..ops.densecrf import image_tensor
    from ..runtime.batches import run_image_batches

    cams_dir, out = Path(cams_dir), Path(out)
    shard = shard_from_env(shard)
    record = io.read_stage_record(cams_dir, "cam")
    dataset = open_recorded(cams_dir)
    made = record.get(io.NUMERICS)
    # no --precision: the masks carry the CAMs' dtype, in this run's mode (which must be the CAMs')
    numerics = run_numerics(made.get("dtype") if isinstance(made, dict) else None)
    io.check_numerics(numerics, (cams_dir, made, "cam"))
    folder_masks = None if cfg.generator() else FolderMasks(Path(cfg.masks).expanduser())
    weights = None if folder_masks else cfg.sam_weights
    io.check_outputs(STAGE, {"--out": (out, "stage")},
                     inputs={"the cam folder": cams_dir, "--masks": folder_masks and folder_masks.folder,
                             "--sam-weights": weights if weights not in io.NOT_FILES else None},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    if cfg.start == "crf":
        from ..ops.densecrf import densecrf_module

        densecrf_module()  # the start's CRF runs with pydensecrf in the loading processes: one line if missing
    ids = io.item_ids(cams_dir)
    items = dataset.by_id()
    unknown = [i for i in ids if i not in items]
    if unknown:
        raise VplError(f"{io.cam_path(cams_dir, unknown[0])}: image '{unknown[0]}' is not in dataset "
                       f"{dataset.root} (split {dataset.split}); was the dataset changed after `cam`?")
    if folder_masks is not None:
        masks_input = folder_masks.check([(i, io.image_size(items[i].image)) for i in ids])
    else:
        from ..models.dense.corrclip.regions import source_record

        _generator(cfg, load=False)  # the package and the weights file's kind, before anything is written
        masks_input = source_record(cfg.masks, cfg.sam_model, cfg.sam_weights, cfg.settings())
    inputs = {"cams": io.sha256_file(io.stage_record_path(cams_dir)), **io.dataset_inputs(record),
              "masks": masks_input}
    start = time.perf_counter()
    counts = {"masks": 0, "covered": 0, "changed": 0, "pixels": 0, "images": 0}
    lock = threading.Lock()  # the counts are added by the writer threads
    with io.StageFolder(out, STAGE, _params(cfg), overwrite=runtime.overwrite, inputs=inputs, shard=shard,
                        items=(ids, io.mask_path), numerics=numerics) as folder:
        todo = [(i, str(items[i].image), tuple(items[i].labels)) for i in folder.todo(ids, io.mask_path)]
        if on_start:
            on_start(len(todo))
        if todo:
            device = resolve_device(runtime.device)
            generator = None if folder_masks else _generator(cfg, load=True, device=str(device))
            classes = dataset.classes

            def load(k: int) -> dict[str, Any]:  # in a loading process: the image, its start label, its masks
                item_id, image_path, labels = todo[k]
                image, maps = io.read_cam_item(cams_dir, item_id, image_path, labels, classes)
                loaded = {"image": image_tensor(image), "start": torch.from_numpy(
                    start_label(image, maps.cams, maps.labels, cfg))}
                if folder_masks is not None:
                    loaded["masks"] = torch.from_numpy(folder_masks.masks(item_id, image.shape[:2]))
                return loaded

            def run(batch: dict[str, Any]) -> Callable[[slice], dict]:  # SAM on the device, one image at a time
                def chunk(part: slice) -> dict[str, Any]:
                    rows = range(len(batch["index"]))[part]
                    masks = ([batch["masks"][b].numpy() for b in rows] if folder_masks is not None else
                             [generator.masks(batch["image"][b].numpy()) for b in rows])
                    return {"start": [batch["start"][b].numpy() for b in rows], "masks": masks}
                return chunk

            def write(index: list[int], t: dict[str, Any]) -> None:  # on a writer thread: the rule, the PNG
                for k, begin, masks in zip(index, t["start"], t["masks"]):
                    mask = merge_masks(begin, masks, cfg.merge)
                    io.write_mask(io.mask_path(out, todo[k][0]), mask, todo[k][0])
                    seen = {"masks": len(masks), "covered": int(masks.any(0).sum()) if len(masks) else 0,
                            "changed": int((mask != begin).sum()), "pixels": mask.size, "images": 1}
                    with lock:
                        for key, value in seen.items():
                            counts[key] += value

            sizes = [io.image_size(p) for _, p, _ in todo]
            run_image_batches(sizes, load, run, write, device, runtime,
                              lambda k: f"{todo[k][1]} ({sizes[k][0]}x{sizes[k][1]})",
                              "SAM's automatic masks run one image at a time; use a smaller SAM or a GPU", on_item,
                              batch_size=1, workers=runtime.loader_workers(device))
        complete = folder.finish(ids, io.mask_path)
    n, pixels = counts["images"], counts["pixels"]
    return SamPseudoSummary(done=len(todo), skipped=len(folder.mine(ids)) - len(todo),
                            seconds=time.perf_counter() - start, complete=complete,
                            masks=counts["masks"] / n if n else None,
                            covered=counts["covered"] / pixels if pixels else None,
                            changed=counts["changed"] / pixels if pixels else None)


__all__ = ["STAGE", "FOLDER_FORMAT", "merge_masks", "start_label", "read_mask_png", "FolderMasks",
           "SamPseudoSummary", "run_sam_pseudo"]

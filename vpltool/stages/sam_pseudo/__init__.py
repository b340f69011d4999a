"""`vpltool sam-pseudo`: pseudo masks from Segment Anything's masks, each assigned to a class of the CAM's label.

The same contract as `crf`: a `cam` folder in (its ``_stage.json`` names the dataset with the images), one label PNG
per image out (0 background, class ids; ``_stage.json`` beside them), so that `train-decoder`, `eval`,
`choose-pseudo` and `report` read the folder as they read `crf`'s.

**SAM-enhanced pseudo labels** (Chen, Mai, Li and Chao 2023, arXiv 2305.05803; their code cskyl/SAM_WSSS @4885dde,
``merge/max_iou*.py``, run unchanged against this module by ``parity/sam_wsss_parity.py``). Per image:

1. The CAM's label ``P`` ``[H, W]``: `crf --confidence 0`'s mask of the image's CAMs (``--start crf``, the
   default: the labels the released code merges, TransCAM's 1,464 VOC train labels shipped with it, hold values 0
   to 20 and no 255, with the ragged outlines a dense CRF leaves, not an upsampled CAM's smooth ones), or `crf
   --no-crf`'s argmax (``--start argmax``), or either read from a folder that `crf --start-out` wrote beside its
   own masks from the same CRF (``--start FOLDER``: the CRF runs once in a pipeline; :mod:`.start` checks the
   folder's record against these CAMs and settings before a model loads).
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

**SAM 3 prompted with the labels** (``--masks sam3``; :func:`~.rules.prompted_masks`): SAM 3 is asked for each
image-level label's name (:func:`vpltool.config.presets.spoken_names`); an instance it keeps (probability above
``--sam3-threshold``, Meta's 0.5) stays when at least ``--sam3-gate`` of its pixels carry that label in the CAM's
label (step 1); a pixel inside staying instances takes the most probable one's label; a label SAM 3 misses (or
whose instances the gate drops) keeps the CAM's mask; the rest is background. No published code to follow: the
gate is the automatic rule's majority, a choice, not a reference's.

**Precision.** SAM, SAM 2 or SAM 3 runs at ``--precision`` under the device's autocast: ``auto`` is the dtype the
CAMs record (the masks carry it, as `crf`'s do), and another is refused before SAM loads; the generator's steps
after SAM's decoder run in fp32 (:mod:`vpltool.models.dense.corrclip.amg`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import io
from ...config import SAM_COVERAGE, RuntimeConfig, SamPseudoConfig, to_params
from ...data import open_recorded
from ...runtime.numerics import run_numerics
from .rules import merge_masks, prompted_masks
from .sources import FOLDER_FORMAT, FolderMasks, Sam3Masks, mask_source, read_mask_png
from .start import check_start_folder, read_start, start_folder

STAGE = "sam-pseudo"


def start_label(image: np.ndarray, cams: np.ndarray, labels: Sequence[int], cfg: SamPseudoConfig) -> np.ndarray:
    """The CAM label the rule starts from (step 1): `crf --confidence 0`'s mask, or `crf --no-crf`'s argmax."""
    from ...ops.kernels import refine_image

    return refine_image(image, cams, labels, cfg.crf())


# --------------------------------------------------------------------------------------------- the stage
@dataclass
class SamPseudoSummary(io.StageSummary):
    masks: float | None = None  # SAM masks per image (SAM 3: instances kept), this run's images
    covered: float | None = None  # share of this run's pixels inside at least one SAM mask (automatic masks)
    changed: float | None = None  # share of this run's pixels whose label the rule changed from the start label
    missed: float | None = None  # SAM 3: share of the image-level labels left to the CAM (no instance kept)


def _params(cfg: SamPseudoConfig, start: str) -> dict[str, Any]:
    """What makes two runs' masks interchangeable: the rule, its start and the generator's settings (a folder of
    masks, or of start labels, is recorded by content in the inputs, not by path; ``start``: crf or argmax, the one
    the run computes or its start folder holds)."""
    params = to_params(cfg)
    params["start"] = start
    params["masks"] = "sam3" if cfg.prompted else cfg.generator() or "folder"
    params["coverage"] = SAM_COVERAGE if cfg.merge == "max-iou-imp2" and not cfg.prompted else None
    if cfg.prompted:  # SAM 3's weights are an input, by content (Sam3Masks.weights), not a path among the settings
        params.pop("sam_weights", None)
    for name in cfg.inert():
        params.pop(name, None)
    return params


def _loaders(runtime: RuntimeConfig, device, start_dir: Path | None, images: int) -> int:
    """The loading processes of a run of ``images``: ``--workers``, or (auto) the runtime's, but none beside this
    process on a CPU when the start labels are read from a folder: the loaders are there to run the start's CRF
    beside SAM, and a photo and a PNG a step cost less CPU time here than the processes that would load them and
    hand them over."""
    if runtime.workers is None and start_dir is not None and getattr(device, "type", device) != "cuda":
        return 1
    return runtime.loader_workers(device, images)


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
        runtime: ``device`` and ``precision`` (SAM's: auto = the CAMs' dtype; another is refused), ``workers``
            (image loaders, which also run the start label's CRF; auto with a start folder on a CPU: this process
            alone), ``overwrite``.
        shard: ``(i, n)``: every n-th mask from the i-th (``--shard i/n``).
        on_item: called with the number of images just finished. on_start: called once with the number to do.

    Raises:
        VplError: bad input (the CAM folder, the masks, SAM's weights, the output), one line, before a model loads.
    """
    import torch

    from ...device import autocast, resolve_device, resolve_precision, shard_from_env
    from ...ops.densecrf import image_tensor
    from ...runtime.batches import run_image_batches

    cams_dir, out = Path(cams_dir), Path(out)
    shard = shard_from_env(shard)
    record = io.read_stage_record(cams_dir, "cam")
    dataset = open_recorded(cams_dir)
    made = io.folder_made(cams_dir, record, "cam")  # the record's, then each CAM file's own (its header)
    # --precision is SAM's: auto follows the CAMs' dtype, and another is refused (the masks carry the CAMs' dtype,
    # in this run's mode, which must be the CAMs')
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device, io.recorded_dtype(*made))
    numerics = run_numerics(dtype, runtime.precision, device)
    io.check_numerics(numerics, *made)
    source = mask_source(cfg, dataset.classes)
    folder_masks = source if isinstance(source, FolderMasks) else None
    weights = None if folder_masks else cfg.sam_weights
    start_dir = start_folder(cfg)
    io.check_outputs(STAGE, {"--out": (out, "stage")},
                     inputs={"the cam folder": cams_dir, "--masks": folder_masks and folder_masks.folder,
                             "--sam-weights": weights if weights not in io.NOT_FILES else None,
                             "--start": start_dir},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    if cfg.start == "crf":
        from ...ops.densecrf import densecrf_module

        densecrf_module()  # the start's CRF runs with pydensecrf in the loading processes: one line if missing
    ids, items = io.cam_items(cams_dir, dataset)
    sizes = {i: io.image_size(items[i].image) for i in ids}
    inputs = {"cams": io.sha256_file(io.stage_record_path(cams_dir)), **io.dataset_inputs(record),
              "masks": source.check([(i, sizes[i]) for i in ids])}  # checked whole: nothing loaded yet
    if isinstance(source, Sam3Masks):
        inputs["sam_weights"] = source.weights()
    start_kind = cfg.start
    if start_dir is not None:  # checked whole: every image's label there, of these CAMs and settings
        start_kind, inputs["start"] = check_start_folder(start_dir, cams_dir, cfg, ids, sizes, numerics)
    start = time.perf_counter()
    counts = {"masks": 0, "covered": 0, "changed": 0, "pixels": 0, "images": 0, "labels": 0, "missed": 0}
    lock = threading.Lock()  # the counts are added by the writer threads
    with io.StageFolder(out, STAGE, _params(cfg, start_kind), overwrite=runtime.overwrite, inputs=inputs, shard=shard,
                        items=(ids, io.mask_path), numerics=numerics) as folder:
        todo = [(i, str(items[i].image), tuple(items[i].labels)) for i in folder.todo(ids, io.mask_path)]
        if on_start:
            on_start(len(todo))
        if todo:
            if not source.in_loader:
                with torch.no_grad(), autocast(device, dtype):  # SAM 3's words encoded at the run's precision
                    source.load(device)
            classes = dataset.classes

            def load(k: int) -> dict[str, Any]:  # in a loading process: the image, its start label (, its masks)
                item_id, image_path, labels = todo[k]
                if start_dir is not None:  # the label crf wrote: no CAM file, no CRF here
                    image = io.load_image(image_path)
                    begin = read_start(start_dir, item_id, image.shape[:2])
                else:
                    image, maps = io.read_cam_item(cams_dir, item_id, image_path, labels, classes)
                    begin = start_label(image, maps.cams, maps.labels, cfg)
                loaded = {"image": image_tensor(image), "start": torch.from_numpy(begin)}
                if source.in_loader:
                    loaded["masks"] = torch.from_numpy(source.masks(item_id, image.shape[:2]))
                return loaded

            def run(batch: dict[str, Any]) -> Callable[[slice], dict]:  # SAM on the device, one image at a time
                def chunk(part: slice) -> dict[str, Any]:
                    rows = range(len(batch["index"]))[part]
                    with torch.no_grad(), autocast(device, dtype):  # SAM at --precision (its masks' steps in fp32)
                        masks = ([batch["masks"][b].numpy() for b in rows] if source.in_loader else
                                 [source.masks(batch["image"][b].numpy(), todo[batch["index"][b]][2]) for b in rows])
                    return {"start": [batch["start"][b].numpy() for b in rows], "masks": masks}
                return chunk

            def write(index: list[int], t: dict[str, Any]) -> None:  # on a writer thread: the rule, the PNG
                for k, begin, masks in zip(index, t["start"], t["masks"]):
                    if cfg.prompted:
                        mask, kept, missed = prompted_masks(begin, masks, cfg.sam3_gate)
                        seen = {"masks": kept, "labels": len(masks), "missed": len(missed)}
                    else:
                        mask = merge_masks(begin, masks, cfg.merge)
                        seen = {"masks": len(masks), "covered": int(masks.any(0).sum()) if len(masks) else 0}
                    io.write_mask(io.mask_path(out, todo[k][0]), mask, todo[k][0])
                    seen.update(changed=int((mask != begin).sum()), pixels=mask.size, images=1)
                    with lock:
                        for key, value in seen.items():
                            counts[key] += value

            run_image_batches([sizes[i] for i, _, _ in todo], load, run, write, device, runtime,
                              lambda k: f"{todo[k][1]} ({sizes[todo[k][0]][0]}x{sizes[todo[k][0]][1]})",
                              "SAM runs one image at a time; use a smaller SAM or a GPU", on_item,
                              batch_size=1, workers=_loaders(runtime, device, start_dir, len(todo)))
        complete = folder.finish(ids, io.mask_path)
    n, pixels = counts["images"], counts["pixels"]
    return SamPseudoSummary(done=len(todo), skipped=len(folder.mine(ids)) - len(todo),
                            seconds=time.perf_counter() - start, complete=complete,
                            masks=counts["masks"] / n if n else None,
                            covered=counts["covered"] / pixels if pixels and not cfg.prompted else None,
                            changed=counts["changed"] / pixels if pixels else None,
                            missed=counts["missed"] / counts["labels"] if cfg.prompted and counts["labels"] else None)


__all__ = ["STAGE", "FOLDER_FORMAT", "merge_masks", "prompted_masks", "start_label", "read_mask_png",
           "FolderMasks", "SamPseudoSummary", "run_sam_pseudo"]

"""The `cam` stage: GradCAM then CAA for every image, run batched on the shared pipeline, written behind.

:func:`run_cam` checks every output before the model loads, picks the source (:mod:`vpltool.stages.cam.sources`), and
runs the images through :mod:`vpltool.runtime.batches` inside a :class:`vpltool.io.StageFolder` (resume, records,
shards):

* batched (the default: ``--refine none|caa`` with CLIP's attention): :func:`cams_for_batch` runs steps 1-3 for a
  whole batch of one grid on the device;
* one image at a time (``--parity clip-es``, whose operation order is CLIP-ES's; SSR's superpixel groups and DINO
  attention, computed on the host): :func:`cams_for_image`.

Each image's maps are written by the writer thread (:func:`vpltool.io.write_cam`), with optional overlays
(:func:`overlay`) and debug files (`--save-debug`: raw maps, softmax, maps before the min-max, boxes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from ... import io
from ...config import CAM_ATTENTION_BLOCKS, GRADCAM_CUDA_PRECISION, CamConfig, RuntimeConfig, to_params
from ...data import Dataset, is_extract_folder
from ...device import resolve_device, resolve_precision, shard_from_env
from ...errors import ContractError, VplError
from ...models import ClipBackbone, ModelSpec, load_model
from ...runtime.batches import cuda_paths, run_image_batches, to_device
from ...runtime.numerics import run_numerics
from .caa import Refined, affinity, box_coords, caa_transition, check_affinity, mean_attention, refine, refine_batch
from .gradcam import ImageTokens, PrototypeRows, gradcam_batch, gradcam_image, row_names, temperature_of
from .sources import FromDataset, FromFeatures, attention_blocks_for, frozen_tokens

STAGE = "cam"


@dataclass
class CamResult:
    """One image's CAMs (:func:`cams_for_image`)."""

    maps: torch.Tensor  # [K, h, w] float32 in [0, 1] on the patch grid: what is stored
    labels: tuple[int, ...]
    raw: torch.Tensor  # [K, h, w] unrefined GradCAM in [0, 1]
    probs: torch.Tensor  # [K + M] softmax over the image's rows
    refined: Refined | None = None  # CAA's intermediate maps and boxes (None with --refine none)


def cams_for_image(bb: ClipBackbone, tokens: ImageTokens, protos: io.Prototypes, cfg: CamConfig,
                   temperature: float, image: np.ndarray | None = None, precision: str = "fp32") -> CamResult:
    """Steps 1-3 of :mod:`vpltool.stages.cam` for one image (the maps on the host, as stored); ``precision``: GradCAM's
    block (:func:`vpltool.models.backbones.gradcam.gradcam_batch`; fp32 under ``--parity clip-es``)."""
    labels = tokens.labels
    cam = gradcam_image(bb, tokens, protos, cfg, temperature, precision)
    maps, refined = cam.maps, None
    if cfg.refine != "none" and len(labels):
        trans = caa_transition(bb, tokens, cam.attention, cfg, image)
        refined = refine(cam.maps, trans, cfg.box_threshold, parity=cfg.parity == "clip-es")
        maps = refined.maps
    maps = maps.cpu()
    return CamResult(maps, labels, cam.maps.cpu(), cam.probs.cpu(), refined)


@dataclass
class CamBatch:
    """Steps 1-3 for a batch (:func:`cams_for_batch`), on the model's device, one map per (image, class) pair:
    image b's maps are rows ``offsets[b]:offsets[b + 1]``."""

    maps: torch.Tensor  # [P, h, w] float32 in [0, 1]: refined (or raw with --refine none), what is stored
    raw: torch.Tensor  # [P, h, w] the GradCAM maps before CAA
    probs: list[torch.Tensor]  # B softmax vectors [K_b + M]
    before: torch.Tensor | None  # [P, h, w] CAA's maps before its min-max; None with --refine none
    offsets: list[int]  # B + 1


def cams_for_batch(bb: ClipBackbone, tokens: torch.Tensor, prev: torch.Tensor, n_prev: int, grid: tuple[int, int],
                   labels: list[tuple[int, ...]], rows: PrototypeRows, cfg: CamConfig, temperature: float,
                   precision: str = "fp32") -> CamBatch:
    """Steps 1-3 of :mod:`vpltool.stages.cam` for B images of one grid, on the model's device, with no per-image loop
    over the network, no copy to the host and nothing that waits for the device.

    Args:
        tokens: ``[B, 1 + hw, width]`` entering the last block. prev: ``[B, hw, hw]`` mean attention of the
            ``n_prev`` blocks before it. labels: each image's K_b classes. rows: the prototypes on the device.
        precision: GradCAM's block (:func:`vpltool.models.backbones.gradcam.gradcam_batch`).
    """
    cam = gradcam_batch(bb, tokens, grid, labels, rows, cfg, temperature, precision)
    if cfg.refine == "none" or not len(cam.maps):
        return CamBatch(cam.maps, cam.maps, cam.probs, None, cam.offsets)
    attention = mean_attention(prev, n_prev, cam.attention, cfg.attention_blocks, bb.n_blocks, n_prefix=bb.n_prefix)
    maps, before = refine_batch(cam.maps, affinity(attention), cam.image_of, cfg.box_threshold)
    return CamBatch(maps, cam.maps, cam.probs, before, cam.offsets)


def run_cam(
    source: str | Path | Dataset,
    prototypes: str | Path,
    out: str | Path,
    cfg: CamConfig = CamConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    split: str | None = None,
    overlays: str | Path | None = None,
    debug: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
    model_at: ModelSpec | None = None,
    raw_out: str | Path | None = None,
) -> io.StageSummary:
    """CAMs for every image of an `extract` folder, or of a dataset given directly, with its image-level labels.

    Args:
        source: an `extract` folder (its cache, its model), or a dataset (VOC/COCO root, folder, manifest) with
            ``split`` (or a :class:`vpltool.data.Dataset` already opened): the frozen blocks then run here, in this
            one process, and nothing is cached; the CLIP model is the one the prototypes were made with.
        overlays: a folder for heat-map PNGs. debug: a folder for each image's intermediate maps (kind
            ``cam-debug``, docs/file-formats.md). backbone: reuse an already loaded model of the same identity.
        model_at: where the recorded CLIP lies now (``--model local-dir:NEW``, its folder renamed since), taken
            when it holds the recorded bytes (:meth:`vpltool.models.ModelSpec.from_identity`).
        raw_out: with ``--refine caa`` (batched, CLIP's attention), also the folder ``--refine none`` would make
            (the same files and records): the GradCAM maps CAA starts from, written from the same pass, so that
            comparing the two refinements costs one GradCAM (:func:`check_raw_out`).
        shard: ``(i, n)``: every n-th image from the i-th (``--shard i/n``; under torchrun the rank, see
            :func:`vpltool.device.shard_from_env`); the folder completes when every shard's images are there.
    """
    out = Path(out)
    check_affinity(cfg)
    if not isinstance(source, Dataset) and is_extract_folder(source):
        source = Path(source)
        if split is not None:
            raise VplError(f"{source}: an extract folder holds one split; drop --split (or extract the other one)")
        src = FromFeatures(source, prototypes, cfg, model_at)
        cfg = replace(cfg, attention_blocks=attention_blocks_for(cfg, src.extract_cfg, source))
    else:
        cfg = replace(cfg, attention_blocks=cfg.attention_blocks or CAM_ATTENTION_BLOCKS)
        src = FromDataset(source, split, prototypes, cfg, model_at)
        source = Path(source.root if isinstance(source, Dataset) else source)
    dino_file = cfg.dino_weights if cfg.affinity != "clip" and cfg.dino_weights not in ("hub", "none") else None
    raw_out = check_raw_out(cfg, out, raw_out)
    io.check_outputs(STAGE, {"--out": (out, "stage"), "--raw-out": (raw_out, "stage"),
                             "--save-overlays": (overlays, "side"), "--save-debug": (debug, "side")},
                     inputs={"the source": source, "--prototypes": prototypes, "--dino-weights": dino_file},
                     protected=src.folders(), overwrite=runtime.overwrite)  # every output, before the model loads
    return _run_on(src, out, cfg, runtime, overlays, debug, shard_from_env(shard), on_item, on_start, backbone,
                   raw_out)


def check_raw_out(cfg: CamConfig, out: Path, raw_out: str | Path | None) -> Path | None:
    """``--raw-out`` as a path, or VplError (one line, before the model loads) where this run computes no GradCAM
    that ``--refine none`` would store as is: only the batched CAA on CLIP's attention (:func:`batched_mode`)
    keeps it apart from its refined maps, bit for bit the maps of a ``--refine none`` run."""
    if raw_out is None:
        return None
    raw_out = Path(raw_out)
    if cfg.refine != "caa" or not batched_mode(cfg):
        raise VplError(f"--raw-out {raw_out}: made only with --refine caa --affinity clip (without --parity "
                       f"clip-es), not --refine {cfg.refine} --affinity {cfg.affinity} --parity {cfg.parity}; drop it "
                       "and run `cam --refine none` for that folder")
    if raw_out.resolve() == out.resolve():
        raise VplError(f"--raw-out {raw_out}: the same folder as --out; give the --refine none folder another name")
    return raw_out


def batched_mode(cfg: CamConfig) -> bool:
    """Whether `cam` runs whole batches through :func:`cams_for_batch`; the rest (``--parity clip-es``, whose
    operation order is CLIP-ES's, one image at a time; SSR's superpixel groups and DINO attention, computed per image
    on the host) runs :func:`cams_for_image`."""
    return cfg.parity == "none" and cfg.refine in ("none", "caa") and cfg.affinity == "clip"


def _run_on(src, out: Path, cfg: CamConfig, runtime: RuntimeConfig, overlays, debug, shard: tuple[int, int],
            on_item, on_start, backbone, raw_out: Path | None = None) -> io.StageSummary:
    """The stage on either source, through the shared pipeline of :mod:`vpltool.runtime.batches` (plan, load ahead, run
    batched, write behind) inside the skeleton of :class:`vpltool.io.StageFolder`."""
    device = resolve_device(runtime.device)
    made = src.made_from()
    dtype = resolve_precision(runtime.precision, device, io.recorded_dtype(*made))  # auto: the features' dtype
    numerics = run_numerics(dtype, runtime.precision, device)
    io.check_numerics(numerics, *made)  # the features and prototypes: this run's dtype and mode
    temperature = temperature_of(cfg, src.protos)
    prototypes = io.file_identity(src.protos.path, source=src.protos.source)
    params = {**to_params(cfg), "temperature": temperature, "prototypes": prototypes}
    # --raw-out's record: what a --refine none run of the same options records (CAA's own fields are inert there);
    # only with --raw-out, which check_raw_out allows with --affinity clip alone (refine none refuses another)
    raw_params = None if raw_out is None else {**to_params(replace(cfg, refine="none")), "temperature": temperature,
                                               "prototypes": prototypes}
    inputs = dict(src.inputs)
    if "dino_weights" in params and params["dino_weights"] not in ("hub", "none"):
        # a weights file is an input, known by its content: another spelling of its path is the same run, the same
        # name over other weights is not
        inputs["dino_weights"] = io.sha256_file(Path(params["dino_weights"]).expanduser())
        params["dino_weights"] = "file"
    need_images = src.need_images or overlays is not None
    items = src.dataset().by_id() if need_images else {}

    def work(todo: list[str]) -> None:
        bb = backbone or load_model("clip", src.spec, device)
        if bb.embed_dim != src.protos.dim:
            raise ContractError(f"{src.protos.path}: prototypes are {src.protos.dim}-d but the model's features "
                                f"are {bb.embed_dim}-d; make prototypes with the same CLIP model")
        plan = src.plan(bb, todo, items, runtime.loader_workers(bb.device))
        raw = None if raw_out is None else (raw_out, raw_params)
        _run_batches(bb, src, plan, out, cfg, runtime, temperature, dtype, params, overlays, debug, on_item, raw)

    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, inputs=inputs, shard=shard,
                            sides={"--save-overlays": overlays, "--save-debug": debug}, numerics=numerics)
    # --raw-out's folder beside it: an image done again where either misses its file is rewritten the same where the
    # other has it (the same run, so the same bytes)
    beside = [] if raw_out is None else [io.StageFolder(raw_out, STAGE, raw_params, overwrite=runtime.overwrite,
                                                        inputs=inputs, shard=shard, numerics=numerics)]
    return folder.run(src.ids, io.cam_path, work, on_start, beside=beside, inputs=inputs)


def _run_batches(bb: ClipBackbone, src, plan: list[dict], out: Path, cfg: CamConfig, runtime: RuntimeConfig,
                 temperature: float, dtype: torch.dtype, params: dict, overlays, debug, on_item,
                 raw: tuple[Path, dict] | None = None) -> None:
    """The images of ``plan`` on the shared loop (:func:`vpltool.runtime.batches.run_image_batches`): same-grid
    batches loaded ahead, run batched (:func:`cams_for_batch`, chunks halved on out-of-memory) or one image a batch
    (:func:`cams_for_image`), written behind; ``raw``: ``(folder, its params)`` of ``--raw-out``, where the batch's
    GradCAM maps before CAA go as well (batched only, :func:`check_raw_out`)."""
    batched = batched_mode(cfg)
    need_image = overlays is not None or (src.need_images and not batched)
    pre, rows, block = bb.preprocessor, PrototypeRows(src.protos, bb.device), gradcam_precision(bb.device)

    def run(batch: dict) -> Callable[[slice], dict]:  # on the device: a chunk of the batch -> what the writer needs
        entries = [plan[i] for i in batch["index"]]
        images = batch.get("image", [None] * len(entries))
        if not batched:  # one image a batch: its tokens, then its maps
            def one(part: slice) -> dict:
                tokens = src.tokens(bb, entries[0]["id"], entries[0]["item"], images[0], dtype)
                result = cams_for_image(bb, tokens, src.protos, cfg, temperature, images[0], block)
                return {**_result_tensors(result), "image": images}

            return one

        def chunk(part: slice) -> dict:
            cams = _chunk(bb, batch, part, entries, src, rows, cfg, temperature, dtype, block)
            return {**_batch_tensors(cams, debug is not None, raw is not None), "offsets": cams.offsets,
                    "image": images[part]}

        return chunk

    def write(index: list[int], t: dict) -> None:  # on a writer thread
        entries = [plan[i] for i in index]
        if batched:
            _batch_writer(out, entries, t["image"], t["offsets"], src, params, overlays, debug, cfg)(t)
            if raw is not None:  # the maps --refine none stores: GradCAM's, as they entered CAA
                _batch_writer(raw[0], entries, t["image"], t["offsets"], src, raw[1], None, None, cfg)(
                    {"maps": t["raw_maps"], "finite": t["raw_finite"]})
        else:
            _writer(out, entries[0], t["image"][0], src, params, overlays, debug)(t)

    run_image_batches([e["grid"] for e in plan], lambda i: src.load(plan[i], pre, need_image, batched), run, write,
                      bb.device, runtime, lambda i: _describe(plan[i]), on_item=on_item,
                      batch_size=None if batched else 1)


def gradcam_precision(device: torch.device) -> str:
    """The precision of GradCAM's block: :data:`vpltool.config.GRADCAM_CUDA_PRECISION` where the CUDA path runs
    (:func:`vpltool.runtime.batches.cuda_paths`), fp32 on a CPU (``--parity clip-es`` always runs fp32: its own
    path)."""
    return GRADCAM_CUDA_PRECISION if cuda_paths(device) else "fp32"


def _describe(entry: dict) -> str:
    h, w = entry["image_size"]
    where = entry["item"].image if entry.get("item") is not None else entry.get("path", entry["id"])
    return f"{where} ({h}x{w}, {entry['grid'][0] * entry['grid'][1]} patch tokens)"


def _chunk(bb: ClipBackbone, batch: dict, part: slice, entries: list[dict], src, rows: PrototypeRows,
           cfg: CamConfig, temperature: float, dtype: torch.dtype, block: str) -> CamBatch:
    """:func:`cams_for_batch` on ``batch[part]``: the frozen pass first where the cache holds no tokens (the
    loaders' uint8 pixels resized, where the device does it, and normalised on the device)."""
    grid = tuple(entries[part.start]["grid"])
    labels = [tuple(e["labels"]) for e in entries[part]]
    if "tokens" in batch:
        tokens = to_device(batch["tokens"][part], bb.device).float()
        prev = to_device(batch["attention"][part], bb.device).float()
        n_prev = int(entries[part.start]["n_prev"])
    else:
        pixels = bb.pixels(batch["pixels"][part], tuple(entries[part.start]["input_size"]))
        tokens, prev, n_prev = frozen_tokens(bb, pixels, src, cfg, dtype)
    return cams_for_batch(bb, tokens, prev, n_prev, grid, labels, rows, cfg, temperature, block)


def _batch_tensors(cams: CamBatch, debug: bool, raw_out: bool = False) -> dict:
    """What the writer needs of a batch, cast and checked on the device: the maps clamped to [0, 1] as stored, a
    finiteness flag per map, (``--save-debug``) the intermediate maps, and (``--raw-out``) the GradCAM maps as a
    ``--refine none`` run's would be; nothing else crosses to the host."""
    def stored(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # as written, and each map's finiteness
        return maps.clamp(0, 1), torch.isfinite(maps).flatten(1).all(1)

    out = dict(zip(("maps", "finite"), stored(cams.maps)))
    if debug:
        out.update(raw=cams.raw, probs=cams.probs, before=cams.before)
    if raw_out:
        # flat keys: the host copy (vpltool.runtime.host.to_host) takes tensors and lists of them, not dicts
        out.update(zip(("raw_maps", "raw_finite"), stored(cams.raw)))
    return out


def _result_tensors(result: CamResult) -> dict:
    refined = result.refined
    return {"maps": result.maps, "raw": result.raw, "probs": result.probs,
            "before": None if refined is None else refined.before_minmax,
            "boxes": None if refined is None else refined.boxes}


def _batch_writer(out: Path, entries: list[dict], images: list, offsets: list[int], src, params: dict, overlays,
                  debug, cfg: CamConfig) -> Callable[[dict], None]:
    """The writes of one batch's images (:func:`_batch_tensors` on the host), run on a writer thread."""

    def write(t: dict) -> None:
        for b, (entry, image) in enumerate(zip(entries, images)):
            lo, hi = offsets[b], offsets[b + 1]
            if not bool(t["finite"][lo:hi].all()):
                raise ContractError(f"{io.cam_path(out, entry['id'])}: the CAMs of {entry['id']} hold NaN or inf; not "
                                    "written (broken weights or prototypes, or an overflow: try --precision fp32)")
            one = {"maps": t["maps"][lo:hi], "checked": True}
            if debug is not None:
                one.update(raw=t["raw"][lo:hi], probs=t["probs"][b],
                           before=None if t["before"] is None else t["before"][lo:hi])
            _writer(out, entry, image, src, params, overlays, debug, cfg)(one)

    return write


def _writer(out: Path, entry: dict, image: np.ndarray | None, src, params: dict, overlays, debug,
            cfg: CamConfig | None = None) -> Callable[[dict], None]:
    """The write of one image's results, run on the writer thread (``cfg``: compute the debug boxes there)."""

    def write(t: dict) -> None:
        item_id, maps = entry["id"], t["maps"].cpu()
        io.write_cam(io.cam_path(out, item_id), maps, entry["labels"], image_size=entry["image_size"],
                     classes=src.classes, params=params, checked=t.get("checked", False), id=item_id)
        if overlays is not None and image is not None:
            io.write_png(io.mask_path(overlays, item_id),
                         overlay(image, io.read_cam(io.cam_path(out, item_id)).cams, entry["labels"], src.classes))
        if debug is not None:
            boxes = t.get("boxes")
            if boxes is None and t.get("before") is not None:
                boxes = [box_coords(m.numpy(), cfg.box_threshold) for m in t["raw"].cpu()]
            io.write_cam_debug(io.cam_path(debug, item_id), t["raw"].cpu(), t["probs"].cpu(), entry["labels"],
                               None if t["before"] is None else t["before"].cpu(), boxes,
                               classes=src.classes, params=params, id=item_id,
                               row_names=row_names(src.protos, entry["labels"]))

    return write


def overlay(image: np.ndarray, cams: np.ndarray, labels, classes) -> np.ndarray:
    """``[H, (K + 1) W, 3]`` uint8: the image, then a JET heat map over the image per class, each named."""
    from PIL import Image, ImageDraw

    panels = [image]
    for cam in cams:
        heat = cv2.applyColorMap((cam.astype(np.float32) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        panels.append((0.5 * image + 0.5 * heat).astype(np.uint8))
    sheet = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(sheet)
    for i, c in enumerate(labels):
        draw.text(((i + 1) * image.shape[1] + 3, 2), classes[c], fill=(255, 255, 255))
    return np.asarray(sheet)

"""`cam --dense METHOD`: seeds from a training-free dense CLIP (MaskCLIP, SCLIP, ClearCLIP, NACLIP) instead of GradCAM,
in the CAM file format, so `crf`, `learn-prototypes`, `train-decoder` and the report take them unchanged.

Per image with labels K (the dataset's, as `cam`), through the method's segmentor
(:func:`vpltool.models.dense.segmentor.segment_logits`: its resize, slide windows and PAMR; a large photo's in column
bands, :mod:`vpltool.models.dense.bands`): the cosine logits of every row of the prototypes file; then
``softmax(logit_scale * cos)`` over the image's K class rows and every background row; the K class probabilities are
the maps, in [0, 1], stored at image size (no gradient, no CAA: the dense methods' own maps). The logit scale and
windows are the method's (:data:`vpltool.config.DENSE_SEGMENTORS`) unless given; the probability threshold is not
used (the CRF and eval choose the background).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ... import io
from ...config import RuntimeConfig, SegmentConfig
from ...data import Dataset, open_source, recorded_folders
from ...device import autocast, resolve_device, resolve_precision, shard_from_env
from ...errors import ContractError, VplError
from ...models import ClipBackbone, ModelSpec
from ...models.dense.bands import check_photo_memory
from ...models.dense.segmentor import batch_extras, dense_input, photo_logits, settings_params, short_side_size
from ...runtime.batches import image_names, image_stage, run_image_batches
from ...runtime.numerics import run_numerics
from .._masks import Producer, check_output

STAGE = "cam"


def dense_maps(logits: torch.Tensor, rows: torch.Tensor, n_labels: int, logit_scale: float) -> torch.Tensor:
    """One image's ``[R, H, W]`` cosine logits of every prototype row -> ``[K, H, W]`` maps: the softmax over the
    rows ``rows`` (``[K + M]`` on the device: the image's K class rows, then the M background rows), first K."""
    return (logits.index_select(0, rows) * logit_scale).softmax(0)[:n_labels]


def dense_class_probs(logits: torch.Tensor, rows: torch.Tensor, n_labels: int, logit_scale: float) -> torch.Tensor:
    """As :func:`dense_maps`, with the background first: ``[1 + K, H, W]``, channel 0 the best background row's
    probability (as `segment` scores a class by its best query), then the K maps: what a method's ``postprocess``
    hook takes."""
    probs = (logits.index_select(0, rows) * logit_scale).softmax(0)
    background = probs[n_labels:].amax(0, keepdim=True) if len(rows) > n_labels else torch.zeros_like(probs[:1])
    return torch.cat([background, probs[:n_labels]])


def postprocessed_maps(bb, probs: torch.Tensor, extras: dict, settings, photo: Any = "the photo") -> torch.Tensor:
    """A method's ``postprocess`` hook on one image's ``[1 + K, H, W]`` probabilities (:func:`dense_class_probs`)
    and their argmax (no threshold: `cam` leaves the background to the CRF) -> its ``[K, H, W]`` maps. A pixel the
    hook gives another label than its probabilities' argmax (a region vote, CorrCLIP's) takes the pixel's top
    probability in that label's map, swapped with the label it had, so that the maps' argmax is the hook's. The
    hook's output is checked as a mask's (:func:`vpltool.stages._masks.check_output`; ``photo`` names it)."""
    size, producer = tuple(probs.shape[-2:]), Producer.dense(bb.hooks.method or "none", len(probs))
    probs, labels = bb.hooks.postprocess(bb, probs, probs.argmax(0), extras, settings)
    check_output(producer, photo, size, probs, labels)
    probs, labels = probs.float(), labels.to(probs.device).long()
    top, best = probs.max(0)
    moved = labels != best
    if bool(moved.any()):
        at_label = probs.gather(0, labels[None])[0]
        probs = probs.clone()
        probs.scatter_(0, best[None], torch.where(moved, at_label, top)[None])
        probs.scatter_(0, labels[None], torch.where(moved, top, at_label)[None])
    return probs[1:]


def run_dense_cam(
    source: str | Path | Dataset,
    prototypes: str | Path,
    out: str | Path,
    cfg: SegmentConfig,
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    split: str | None = None,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
    model_at: ModelSpec | None = None,
) -> io.StageSummary:
    """Dense CAMs ``<out>/<id>.safetensors`` (kind ``cam``) for every image of a dataset (``source`` + ``split``) or
    of the dataset an `extract` folder was made from; the CLIP is the one the prototypes were made with (where it
    lies now: ``model_at``, as :func:`run_cam`'s)."""
    from ...config.dense import PROXY_METHODS, segment_only
    from ...models.dense.method import resolve_method

    if cfg.dense in PROXY_METHODS:
        raise VplError(f"cam --dense {cfg.dense}: the method needs a proxy vision model, which only `vpltool "
                       "segment` loads (--proxy-model); choose another --dense method for seeds")
    if (why := segment_only(cfg.dense, "cam")) is not None:
        raise VplError(why)
    (source, dataset), out = open_source(source, split), Path(out)
    protos = io.read_prototypes(prototypes, classes=dataset.classes)
    io.check_outputs(STAGE, {"--out": (out, "stage")}, inputs={"the source": source, "--prototypes": prototypes},
                     protected=[*dataset.folders(), *recorded_folders(source)], overwrite=runtime.overwrite)
    spec = ModelSpec.from_identity(protos.model, protos.path, model_at)  # its weights are still those it recorded
    method = resolve_method(cfg, spec)  # the method resolved once: its own check (and the CLIP's), then its
    method.hooks.check_items(dataset.items)  # per-image inputs' check, both before any model loads (as segment's)
    settings = cfg.resolved()
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    numerics = run_numerics(dtype, runtime.precision, device)
    io.check_numerics(numerics, protos.made())
    params = {"source": "dense", "dense": cfg.dense,
              "settings": settings_params(settings),
              "prototypes": io.file_identity(protos.path, source=protos.source), **method.hooks.record()}
    inputs = dataset.inputs()

    def work(items: list, sizes: list[tuple[int, int]]) -> None:
        check_photo_memory([it.image for it in items], sizes, len(protos.vectors), settings)  # before the model
        bb = method.load(spec, device, backbone, dtype)  # its mixing, and its hooks made with the run's config
        if bb.embed_dim != protos.dim:
            raise ContractError(f"{protos.path}: prototypes are {protos.dim}-d but the model's features are "
                                f"{bb.embed_dim}-d; make prototypes with the same CLIP model")
        _run(bb, items, sizes, protos, settings, dataset.classes, params, out, runtime, dtype, on_item)

    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, inputs=inputs, shard=shard_from_env(shard),
                            numerics=numerics)
    return image_stage(folder, dataset, io.cam_path, runtime.loader_workers(device), work, on_start, inputs=inputs)


def _run(bb: ClipBackbone, items: list, sizes: list, protos: io.Prototypes, settings, classes, params: dict, out: Path,
         runtime: RuntimeConfig, dtype: torch.dtype, on_item) -> None:
    inputs = [short_side_size(h, w, settings.short_side, settings.long_side) for h, w in sizes]
    pre = bb.preprocessor
    vectors = protos.vectors.to(bb.device)
    # each class's row and the background rows as device tensors, made once: an image's rows are then gathered on
    # the device, with no host-to-device copy per image
    class_rows = [r.view(1) for r in protos.class_rows().to(bb.device)]
    background = (protos.row_class == 0).nonzero().flatten().to(bb.device)

    def load(i: int) -> dict:  # with what the method's extra_inputs hook adds per image (as segment's)
        image = io.load_image(items[i].image)
        return dense_input(pre, image, inputs[i], bb.hooks.extra_inputs(items[i], image))

    post = bb.hooks.own_postprocess  # a method whose work is after the argmax (its postprocess hook) runs it here too
    maps_fn = dense_class_probs if post else dense_maps

    def maps_of(pixels: torch.Tensor, index: list[int], extras: list[dict]) -> list[torch.Tensor]:
        with torch.no_grad(), autocast(bb.device, dtype):  # a large photo's logits come in column bands
            logits = photo_logits(bb, pixels, vectors, settings, [sizes[i] for i in index], extras)
        out_maps = []
        for lg, i, extra in zip(logits, index, extras):
            labels = items[i].labels
            rows = torch.cat([*(class_rows[c - 1] for c in labels), background])
            if isinstance(lg, torch.Tensor):
                maps = maps_fn(lg.float(), rows, len(labels), settings.logit_scale)
            else:
                maps = torch.empty(len(labels) + post, *sizes[i], device=bb.device)
                with torch.no_grad(), autocast(bb.device, dtype):
                    for x0, x1, band in lg():
                        band_maps = maps_fn(band.float(), rows, len(labels), settings.logit_scale)  # [K, n, H0]
                        maps[:, :, x0:x1] = band_maps.transpose(1, 2)
            if post:
                with torch.no_grad():
                    maps = postprocessed_maps(bb, maps, extra, settings, items[i].image)
            out_maps.append(maps)
        return out_maps

    def run(batch: dict) -> Callable[[slice], dict]:  # on the device: a chunk of the batch -> its maps
        index = batch["index"]
        pixels = bb.pixels(batch["pixels"], inputs[index[0]])
        extras = batch_extras(batch, len(index))

        def chunk(part: slice) -> dict:
            maps = maps_of(pixels[part], index[part], extras[part])
            return {"maps": maps, "finite": [torch.isfinite(m).all() for m in maps]}

        return chunk

    write = maps_writer(out, items, sizes, classes, params, "dense CAMs",
                        "broken weights or prototypes: try --precision fp32")
    run_image_batches(inputs, load, run, write, bb.device, runtime, image_names(items, sizes),
                      "pass a smaller --short-side or --slide-crop, or a smaller --batch-size", on_item)


def maps_writer(out: Path, items: list, sizes: list, classes, params: dict, what: str, why: str
                ) -> Callable[[list[int], dict], None]:
    """Writes a chunk's CAM files at image size on a writer thread (`cam --dense`, `cam --pgseg`): ``write(index,
    t)`` for the images ``index`` of ``items`` (``sizes``: their ``(H, W)``), ``t["maps"]`` one ``[K, H, W]`` each
    and ``t["finite"]`` its flag, made on the device; maps with NaN or inf are one line naming the file, ``what``
    they are and ``why`` (the likely cause and fix), and are not written."""

    def write(index: list[int], t: dict) -> None:
        for i, maps, ok in zip(index, t["maps"], t["finite"]):
            item = items[i]
            if not bool(ok):
                raise ContractError(f"{io.cam_path(out, item.id)}: the {what} of {item.id} hold NaN or inf; not "
                                    f"written ({why})")
            io.write_cam(io.cam_path(out, item.id), maps, item.labels, image_size=list(sizes[i]), classes=classes,
                         params=params, checked=True, id=item.id)

    return write


__all__ = ["run_dense_cam", "dense_maps", "dense_class_probs", "postprocessed_maps"]

"""`vpltool segment`: open-vocabulary segmentation with no label and no training: a frozen CLIP whose last block
mixes its tokens as a training-free dense method does (MaskCLIP, SCLIP, ClearCLIP, NACLIP:
:mod:`vpltool.backbone.dense`), scored against text queries for any class names.

Per image (each method's public segmentor, :mod:`vpltool.backbone.segmentor`):

1. resized to the method's short side (mmseg's keep-ratio resize; the pixels by CLIP's Pillow bicubic, as every
   vpltool stage), CLIP-normalised;
2. slide inference (or the whole image): per window the dense method's patch features, their cosine with every
   query row resized to the window, averaged over the windows, resized to the image;
3. optional PAMR (NACLIP's default); ``softmax(logit_scale * cos)`` over the queries, each class the max over its
   queries (a class's synonyms ``cat|kitten``; background words are queries of class 0), SCLIP's area filter, and
   pixels whose top probability is below ``prob_threshold`` are background;
4. a palette PNG over ``['background', *names]``, which ``_stage.json`` records: `eval` scores it by name.

The queries are made like `text-prototypes` makes its rows (templates, background words: the same functions);
the default templates are the methods' 80 ImageNet prompts. Images of one input size run as one batch on the shared
pipeline (:mod:`vpltool.batches`), without a backward and without waiting for the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import io, presets
from .backbone import ClipBackbone, ModelSpec, load_backbone
from .backbone.prompts import resolve_background, resolve_templates
from .backbone.segmentor import dense_probabilities, query_rows, segment_logits, short_side_size
from .batches import (
    BackgroundWriter,
    BatchRunner,
    header_sizes,
    load_batches,
    plan_batches,
    resolve_batch_size,
    shard_from_env,
)
from .config import NOT_COMPARED, RuntimeConfig, SegmentConfig, to_params
from .data import Dataset
from .device import autocast, resolve_device, resolve_precision
from .errors import ContractError, VplError

STAGE = "segment"
SYNONYM_SEPARATOR = "|"  # 'tv monitor|television|screen': one class, three queries


def class_synonyms(names: Sequence[str]) -> list[list[str]]:
    """``--classes`` entries -> per class its query names: split at ``|`` (synonyms), ``_`` read as a space
    (``potted_plant``), blanks dropped. The class is named by its entry's first name."""
    out = []
    for entry in names:
        words = [w.strip().replace("_", " ") for w in entry.split(SYNONYM_SEPARATOR) if w.strip()]
        if not words:
            raise VplError(f"--classes: {entry!r} names no class; give names like cat,dog or cat|kitten,dog")
        out.append(words)
    return out


def class_names(names: Sequence[str]) -> list[str]:
    """The class of each ``--classes`` entry: its first name, as given (the masks' and eval's name)."""
    return [entry.split(SYNONYM_SEPARATOR)[0].strip() for entry in names]


def check_queries(names: Sequence[str], cfg: SegmentConfig) -> tuple[list[str], list[str]]:
    """The classes' names, templates and background words checked before the model loads (one line each);
    returns (templates, background words)."""
    classes = ["background", *class_names(names)]
    presets.check_class_names(classes[1:], "--classes")
    templates = resolve_templates(cfg.templates)
    background = resolve_background(cfg.background, presets.preset_for(classes), [w for s in class_synonyms(names)
                                                                                 for w in s])
    return templates, background


def settings_params(settings) -> dict:
    """A :class:`~vpltool.config.DenseSettings` as recorded (JSON: tuples as lists, so a resume compares equal)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


def run_segment(
    dataset: Dataset,
    out: str | Path,
    spec: ModelSpec,
    cfg: SegmentConfig = SegmentConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
) -> io.StageSummary:
    """Masks ``<out>/<id>.png`` for every image of ``dataset`` over ``['background', *names]`` (``cfg.classes``, by
    default the dataset's own), then ``_stage.json``; finished images are skipped unless ``runtime.overwrite``.
    ``backbone``: reuse a loaded CLIP of ``spec`` (its ``--dense`` is set to ``cfg.dense``)."""
    out = io.check_folder_target(out)
    names = list(cfg.classes) if cfg.classes else list(dataset.classes[1:])
    templates, background = check_queries(names, cfg)
    io.check_outputs(STAGE, {"--out": (out, "stage")}, inputs={"the dataset": dataset.root},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    settings = cfg.resolved()
    classes = ["background", *class_names(names)]
    params = {**to_params(cfg), "classes": names, "settings": settings_params(settings), "model": spec.identity(),
              "template_list": templates, "background_words": background}
    index, count = shard_from_env(shard)
    ids = [it.id for it in dataset.items]
    inputs = {"dataset": dataset.identity(), "items": dataset.items_sha()}
    start = time.perf_counter()
    with io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, not_compared=NOT_COMPARED, inputs=inputs,
                        shard=(index, count)) as folder:
        todo = folder.todo(ids[index::count], io.mask_path)
        if on_start:
            on_start(len(todo))
        if todo:
            items = dataset.by_id()
            todo_items = [items[i] for i in todo]
            sizes = header_sizes([it.image for it in todo_items], runtime.loader_workers(device))
            bb = (backbone or load_backbone(spec, device)).with_dense(cfg.dense)
            try:
                text, query_class = query_rows(bb, class_synonyms(names), templates, background)
            except VplError as e:  # e.g. a word the toy CLIP's tokenizer does not know
                raise VplError(f"--classes: {e}") from None
            _segment(bb, todo_items, sizes, text, query_class, len(classes), settings, out, runtime, dtype, on_item)
        folder.finish(ids, io.mask_path, index, count, classes=classes)
    return io.StageSummary(done=len(todo), skipped=len(ids[index::count]) - len(todo),
                           seconds=time.perf_counter() - start)


def labels_batch(bb: ClipBackbone, pixels: torch.Tensor, text: torch.Tensor, query_class: torch.Tensor,
                 n_classes: int, settings, sizes: Sequence[tuple[int, int]], dtype: torch.dtype
                 ) -> list[torch.Tensor]:
    """B images of one input size -> B ``[H0, W0]`` uint8 masks on the device (nothing waits for it)."""
    with torch.no_grad(), autocast(bb.device, dtype):
        logits = segment_logits(bb, pixels, text, settings, sizes)
    masks = []
    for lg in logits:
        _, labels = dense_probabilities(lg.float(), query_class, n_classes, settings.logit_scale,
                                        settings.prob_threshold, settings.area_threshold)
        masks.append(labels.to(torch.uint8))
    return masks


def _segment(bb: ClipBackbone, items: list, sizes: list[tuple[int, int]], text: torch.Tensor,
             query_class: torch.Tensor, n_classes: int, settings, out: Path, runtime: RuntimeConfig,
             dtype: torch.dtype, on_item) -> None:
    """Images batched by input size, loaded ahead, segmented on the device, written behind."""
    inputs = [short_side_size(h, w, settings.short_side) for h, w in sizes]
    pre = bb.preprocessor
    text, query_class = text.to(bb.device), query_class.to(bb.device)

    def load(i: int) -> dict:  # in a loading worker: the uint8 image resized (here or on the device)
        image = io.load_image(items[i].image)
        if tuple(image.shape[:2]) != tuple(sizes[i]):
            raise ContractError(f"{items[i].image}: decoded to {image.shape[0]}x{image.shape[1]}, but its header said "
                                f"{sizes[i][0]}x{sizes[i][1]}; the file changed during the run: run again")
        return {"pixels": pre.loaded(image, inputs[i])}

    size = resolve_batch_size(runtime.batch_size, bb.device, cpu_default=1)
    runner = BatchRunner(size, describe=lambda i: f"{items[i].image} ({sizes[i][0]}x{sizes[i][1]})",
                         advice="pass a smaller --short-side or --slide-crop, or a smaller --batch-size")
    with BackgroundWriter(on_item) as writer:
        for batch in load_batches(len(items), plan_batches(inputs, size), load, runtime.loader_workers(bb.device),
                                  bb.device):
            index = batch["index"]
            pixels = bb.pixels(batch["pixels"], inputs[index[0]])

            def run(part: slice, index=index, pixels=pixels) -> tuple[slice, list[torch.Tensor]]:
                return part, labels_batch(bb, pixels[part], text, query_class, n_classes, settings,
                                          [sizes[i] for i in index[part]], dtype)

            for part, masks in runner(len(index), run):
                writer.submit({"masks": masks}, _writer(out, [items[i].id for i in index[part]]), n=len(masks))


def _writer(out: Path, ids: list[str]) -> Callable[[dict], None]:
    def write(t: dict) -> None:
        for item_id, mask in zip(ids, t["masks"]):
            io.write_mask(io.mask_path(out, item_id), np.asarray(mask.numpy(), dtype=np.uint8))

    return write


__all__ = ["STAGE", "run_segment", "settings_params", "labels_batch", "class_synonyms", "class_names", "check_queries",
           "SYNONYM_SEPARATOR"]

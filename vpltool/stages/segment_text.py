"""`vpltool segment --model NAME:FILE`: zero-shot segmentation by class names with the checkpoint of a
text-supervised family (PGSeg / GroupViT: `train-pgseg`'s ``pgseg.safetensors`` or a release ``.pth``; any family
of :data:`vpltool.models.registry.TEXT_FAMILIES`), as the family's reference evaluates it. The family is named,
never assumed: its hooks (:class:`vpltool.models.text.family.TextSegFamily`) do the work and its configuration's
``ZERO_SHOT`` gives the defaults.

1. the image file read as the family's reference reads it (``image_tensor``: PGSeg's is mmseg's keep-ratio uint8
   ``cv2.resize`` to ``short_side``, 448 on PASCAL VOC / Context, then mmcv's ``imnormalize``);
2. each class name in the family's template (PGSeg: ``a photo of a {}.``), its text embedding;
3. per window (sliding windows; ``slide`` (0, _) = the whole image), the family's ``zero_shot_logits``:
   background channel 0 (a pixel whose best class score is below ``bg_thresh``), then the classes; with
   ``background`` words (not PGSeg's reference: segment --dense's background queries) each word is one more query,
   and a pixel that takes one is background;
4. the windows' logits averaged where they overlap, resized (bilinear) to the image, argmax: a palette PNG over
   ``['background', *names]``, recorded in ``_stage.json`` so that `eval` scores it by name as it scores
   `segment --dense`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import io
from ..config import RuntimeConfig, presets
from ..config.checks import at_least
from ..config.text import ZeroShotSettings
from ..data import Dataset
from ..device import resolve_device
from ..errors import VplError
from ..io.overlays import overlay_folder, write_overlays
from ..models.dense.bands import WHOLE_BUDGET, logit_bands
from ..models.registry import load_model, text_config
from ..runtime.batches import image_stage
from ._masks import Producer, write_masks

STAGE = "segment"


def zero_shot_settings(family: str) -> ZeroShotSettings:
    """Family ``family``'s zero-shot defaults (its configuration's ``ZERO_SHOT``; torch-free)."""
    return text_config(family).ZERO_SHOT


def text_family_of(family: str):
    """The :class:`~vpltool.models.text.family.TextSegFamily` of ``family``, through the registry."""
    from ..models.text.family import text_family

    return text_family(family)


def text_names(entries: Sequence[str], background: str) -> tuple[list[str], list[str]]:
    """``--classes`` entries -> (class names: each entry's first name, ``_`` read as a space; background words of
    ``--background``), checked before any model loads."""
    from ..models.backbones.prompts import resolve_background

    names = [n.split("|")[0].strip().replace("_", " ") for n in entries]
    presets.check_class_names(names, "--classes")
    return names, resolve_background(background, presets.preset_for(["background", *names]), ["background", *names])


def text_queries(fam, model, names: Sequence[str], bg_words: Sequence[str], device) -> torch.Tensor:
    """``[N + W, D]`` float32: the class then background-word text embeddings of the checkpoint (the family's
    template, its configuration's ``ZERO_SHOT.templates``)."""
    from ..models.text.family import class_embeddings

    templates = fam.TEMPLATES[fam.TrainConfig.ZERO_SHOT.templates]
    return class_embeddings(fam, model, [*names, *bg_words], templates, device)


def run_segment_text(
    dataset: Dataset,
    out: str | Path,
    family: str,
    checkpoint: str | Path,
    names: Sequence[str],
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    bg_thresh: float | None = None,
    short_side: int | None = None,
    slide: tuple[int, int] | None = None,
    background: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_item: Callable[[int], None] | None = None,
    overlay: bool = False,
    shard: tuple[int, int] | None = None,
) -> io.StageSummary:
    """Masks ``<out>/<id>.png`` over ``['background', *names]`` for every image of ``dataset`` by the
    ``family`` checkpoint ``checkpoint`` (module doc); finished images are skipped unless ``runtime.overwrite``.
    ``bg_thresh``, ``short_side``, ``slide`` ``(crop, stride)``, ``background`` (background words as `segment`'s
    ``--background`` takes them: none | auto | voc | coco | a file | 'w1,w2'): None = the family's defaults. The
    checkpoint is read (and its architecture checked) before any output. ``overlay``: also `segment --overlay`'s
    coloured overlays. ``shard``: ``(i, n)``, this process's share of the images (None: torchrun's rank, or every
    image)."""
    from ..device import shard_from_env
    from ..runtime.numerics import run_numerics

    own = zero_shot_settings(family)
    bg_thresh = own.bg_thresh if bg_thresh is None else bg_thresh
    short_side = own.short_side if short_side is None else short_side
    slide = own.slide if slide is None else slide
    background = own.background if background is None else background
    check_options(bg_thresh, short_side, slide, own.min_side)
    out = io.check_folder_target(out)
    names, bg_words = text_names(names, background)
    classes = ["background", *names]
    io.check_outputs(STAGE, {"--out": (out, "stage"),
                             "--overlay": (overlay_folder(out) if overlay else None, "side")},
                     inputs={"the dataset": dataset.root, "--model": checkpoint},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    fam = text_family_of(family)
    fam.check_checkpoint(checkpoint)  # one line for a missing file or another model's, before anything is written
    templates = list(fam.TEMPLATES[own.templates])
    params = {"method": family, "classes": list(names), "bg_thresh": bg_thresh, "short_side": short_side,
              "slide_crop": slide[0], "slide_stride": slide[1], "background": bg_words,
              "template_list": templates, family: io.file_identity(checkpoint),
              "model": {"model": family, "pretrained": str(checkpoint)}}  # the records' model: a family and a file

    device = resolve_device(runtime.device)

    def work(items: list, sizes: list[tuple[int, int]]) -> None:
        model = load_model(family, checkpoint, device)  # the registry's door: every weight checked
        text = text_queries(fam, model, names, bg_words, device)
        producer = Producer.text_family(family, checkpoint, len(classes))
        _masks(items, sizes, out, producer, fam, model, text, len(names), (bg_thresh, short_side, slide), device,
               runtime, on_item)

    numerics = run_numerics()  # the families run in fp32 (no --precision); another mode is said in a warning
    io.check_numerics(numerics, (checkpoint, io.file_numerics(checkpoint), "train-text"), weights=True)
    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, inputs=dataset.inputs(),
                            shard=shard_from_env(shard), numerics=numerics)
    start = time.perf_counter()
    summary = image_stage(folder, dataset, io.mask_path, runtime.loader_workers(device), work, on_start,
                          classes=classes)
    if overlay:
        write_overlays(dataset.items, out, classes, STAGE, runtime.overwrite)
        summary.seconds = time.perf_counter() - start  # the run's time holds the overlays'
    return summary


def _masks(items: list, sizes: list[tuple[int, int]], out: Path, producer: Producer, fam, model, text: torch.Tensor,
           n_names: int, zero_shot: tuple, device, runtime: RuntimeConfig, on_item) -> None:
    """The masks of ``items`` (their photos' ``sizes``) on the shared mask path
    (:func:`vpltool.stages._masks.write_masks`: decoded ahead, segmented (:func:`image_labels`), checked and
    written behind), one image a batch (each is read at its own size). ``zero_shot``: ``(bg_thresh, short_side,
    slide)``."""

    def compute(batch: dict) -> Callable[[slice], list]:  # on the device: the batch's one image -> its labels
        image = batch["image"][0]
        return lambda part: [(None, image_labels(fam, model, image, text, n_names, *zero_shot, device))]

    write_masks(out, items, sizes, producer, [0] * len(items), lambda i: {"image": io.load_image(items[i].image)},
                compute, device, runtime, "pass a smaller --short-side or --slide-crop", on_item, batch_size=1)


def _model_logits(fam, model, image, text: torch.Tensor, bg_thresh: float, short_side: int,
                  slide: tuple[int, int], device) -> torch.Tensor:
    """One decoded ``[H0, W0, 3]`` uint8 image -> ``[1, C + 1 (+ words), h, w]`` zero-shot logits at the model's
    input size (module doc, steps 1 and 3)."""
    with torch.no_grad():
        x = fam.image_tensor(image, short_side).to(device)
        return fam.zero_shot_logits(model, x, text, bg_thresh, mode="slide" if slide[0] else "whole",
                                    crop=slide[0] or fam.TrainConfig.ZERO_SHOT.slide[0], stride=slide[1])


def image_scores(fam, model, image, text: torch.Tensor, n_names: int, bg_thresh: float, short_side: int,
                 slide: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoded ``[H0, W0, 3]`` uint8 image -> (``[C + 1, H0, W0]`` float32 zero-shot logits of background and
    the ``n_names`` classes, ``[H0, W0]`` int64 labels, 0 = background): the per-image work of
    :func:`vpltool.api.segmenter` (module doc, steps 1, 3 and 4). ``text``: the class then background-word
    embeddings (:func:`text_queries`)."""
    h0, w0 = image.shape[:2]
    logits = _model_logits(fam, model, image, text, bg_thresh, short_side, slide, device)
    with torch.no_grad():
        logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)[0]
    labels = logits.argmax(0)
    labels[labels > n_names] = 0  # a background word's pixels (channels after the classes')
    return logits[: n_names + 1].float(), labels


def image_labels(fam, model, image, text: torch.Tensor, n_names: int, bg_thresh: float, short_side: int,
                 slide: tuple[int, int], device) -> torch.Tensor:
    """:func:`image_scores`' ``[H0, W0]`` int64 labels alone, the per-image work of `segment --model NAME:FILE`.
    A photo whose upsampled logits (every query's, float32) pass :data:`vpltool.models.dense.bands.WHOLE_BUDGET` is
    upsampled and reduced in column bands (:func:`vpltool.models.dense.bands.logit_bands` without PAMR, the whole
    resize's values bit for bit), so that memory does not grow with the photo's pixels beyond its labels."""
    h0, w0 = image.shape[:2]
    logits = _model_logits(fam, model, image, text, bg_thresh, short_side, slide, device)[0]  # [Q, h, w]
    with torch.no_grad():
        if 4 * len(logits) * h0 * w0 <= WHOLE_BUDGET or logits.shape[-2] > h0 or logits.shape[-1] > w0:
            labels = F.interpolate(logits[None], size=(h0, w0), mode="bilinear", align_corners=False)[0].argmax(0)
        else:
            labels = torch.empty(h0, w0, dtype=torch.int64)
            for x0, x1, band in logit_bands(logits.cpu(), (h0, w0)):  # [Q, n, H0]: the photo's columns x0..x1
                labels[:, x0:x1] = band.argmax(0).T
    labels[labels > n_names] = 0  # a background word's pixels (channels after the classes')
    return labels


def check_options(bg_thresh: float, short_side: int, slide: tuple[int, int], min_side: int = 32,
                  side_option: str = "--short-side") -> None:
    """One line for an option out of range, before anything loads. ``min_side``: the family's smallest side (its
    patches need room; a side of 1 was a traceback in PGSeg's patch embedding)."""
    if not 0.0 <= bg_thresh <= 1.0:
        raise VplError(f"--bg-thresh {bg_thresh}: must be in [0, 1]")
    at_least(side_option, short_side, min_side, why=" pixels (the model's patches need room)")
    if slide[0] < 0 or (slide[0] > 0 and not 0 < slide[1] <= slide[0]):
        raise VplError(f"--slide-crop {slide[0]} --slide-stride {slide[1]}: the crop must be >= 0 (0 = the whole "
                       "image) and the stride between 1 and the crop")


__all__ = ["run_segment_text", "image_scores", "check_options", "text_family_of", "text_names", "text_queries",
           "zero_shot_settings"]

"""`vpltool segment --pgseg FILE`: zero-shot segmentation by class names with a PGSeg / GroupViT checkpoint
(`train-pgseg`'s ``pgseg.safetensors`` or a GroupViT / PGSeg release ``.pth``), as the reference's evaluation
(Ferenas/PGSeg 9f167cd, ``segmentation/evaluation/pgseg_seg.py`` in mmseg's ``EncoderDecoder``):

1. the image file read as the reference's mmseg test pipeline reads it (:func:`vpltool.models.pgseg.image_tensor`):
   resized to ``short_side`` (mmcv's keep-ratio ``imrescale``: ``cv2.resize`` bilinear on the uint8 image; the
   reference's test scale is 448 on PASCAL VOC / Context), normalised as mmcv's ``imnormalize`` (0-255 statistics);
2. each class name in the reference's ``simple`` template (``a photo of a {}.``), its text embedding;
3. per window (sliding 448-px windows at stride 224, as the reference's VOC ``test_cfg``; ``slide`` (0, _) = the
   whole image), both grouping stages' maps combined, every pixel its final group, every group the class it
   matches among the image's top 5, background where the best affinity is below ``bg_thresh`` (0.95, capped at
   the image's highest affinity): :func:`vpltool.models.pgseg.zero_shot_logits`; with ``background`` words
   (not the reference's: segment --dense's background queries) each word is one more query, in the top-5 and the
   threshold as a class, and a pixel that takes one is background;
4. the windows' logits averaged where they overlap (mmseg's ``slide_inference``, the family's ``mode="slide"``),
   resized (bilinear) to the image, argmax: a palette PNG over ``['background', *names]``, recorded in
   ``_stage.json`` so that `eval` scores it by name as it scores `segment --dense`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import io, presets
from ..config import RuntimeConfig
from ..config.pgseg import (
    PGSEG_BACKGROUND,
    PGSEG_BG_THRESH,
    PGSEG_SHORT_SIDE,
    PGSEG_SLIDE,
    PGSEG_TEMPLATES,
    check_pgseg_side,
)
from ..data import Dataset
from ..device import resolve_device
from ..errors import VplError
from ..io.overlays import overlay_folder, write_overlays
from ..runtime.batches import run_image_batches

STAGE = "segment"
DEFAULT_SHORT_SIDE = PGSEG_SHORT_SIDE
DEFAULT_SLIDE = PGSEG_SLIDE


def pgseg_family():
    """The ``pgseg`` family's module, through the registry."""
    from ..models.registry import family_module

    return family_module("pgseg")


def pgseg_names(entries: Sequence[str], background: str) -> tuple[list[str], list[str]]:
    """``--classes`` entries -> (class names: each entry's first name, ``_`` read as a space; background words of
    ``--background``), checked before any model loads."""
    from ..models.prompts import resolve_background

    names = [n.split("|")[0].strip().replace("_", " ") for n in entries]
    presets.check_class_names(names, "--classes")
    return names, resolve_background(background, presets.preset_for(["background", *names]), ["background", *names])


def pgseg_text(fam, model, names: Sequence[str], bg_words: Sequence[str], device) -> torch.Tensor:
    """The class then background-word text embeddings of the checkpoint (the reference's template)."""
    templates = list(fam.TEMPLATES[PGSEG_TEMPLATES])
    tokens = fam.class_tokens([*names, *bg_words], fam.tokenizer(model.cfg), templates).to(device)
    return fam.class_text_embeddings(model, tokens)


def pgseg_queries(fam, model, entries: Sequence[str], background: str, device) -> tuple[list[str], torch.Tensor]:
    """(class names, text embeddings) of ``entries``: :func:`pgseg_names` then :func:`pgseg_text`."""
    names, bg_words = pgseg_names(entries, background)
    return names, pgseg_text(fam, model, names, bg_words, device)


def run_segment_pgseg(
    dataset: Dataset,
    out: str | Path,
    checkpoint: str | Path,
    names: Sequence[str],
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    bg_thresh: float = PGSEG_BG_THRESH,
    short_side: int = DEFAULT_SHORT_SIDE,
    slide: tuple[int, int] = DEFAULT_SLIDE,
    background: str = PGSEG_BACKGROUND,
    on_start: Callable[[int], None] | None = None,
    on_item: Callable[[int], None] | None = None,
    overlay: bool = False,
    shard: tuple[int, int] | None = None,
) -> io.StageSummary:
    """Masks ``<out>/<id>.png`` over ``['background', *names]`` for every image of ``dataset`` (module doc);
    finished images are skipped unless ``runtime.overwrite``. ``background``: background words as `segment`'s
    ``--background`` takes them (none | auto | voc | coco | a file | 'w1,w2'). The checkpoint is read (and its
    architecture checked) before any output. ``overlay``: also `segment --overlay`'s coloured overlays.
    ``shard``: ``(i, n)``, this process's share of the images (`segment --shard i/n`; None: torchrun's rank, or
    every image)."""
    from ..device import shard_from_env
    from ..models.registry import load_model

    check_options(bg_thresh, short_side, slide)
    out = io.check_folder_target(out)
    names, bg_words = pgseg_names(names, background)
    classes = ["background", *names]
    io.check_outputs(STAGE, {"--out": (out, "stage"),
                             "--overlay": (overlay_folder(out) if overlay else None, "side")},
                     inputs={"the dataset": dataset.root, "--pgseg": checkpoint},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    fam = pgseg_family()
    fam.load_checkpoint(checkpoint)  # one line for a missing file or another model's, before anything is written
    templates = list(fam.TEMPLATES[PGSEG_TEMPLATES])
    params = {"method": "pgseg", "classes": list(names), "bg_thresh": bg_thresh, "short_side": short_side,
              "slide_crop": slide[0], "slide_stride": slide[1], "background": bg_words,
              "template_list": templates, "pgseg": io.file_identity(checkpoint),
              "model": {"model": "pgseg", "pretrained": str(checkpoint)}}  # the records' model: a family and a file
    def work(todo: list[str]) -> None:
        device = resolve_device(runtime.device)
        model = load_model("pgseg", checkpoint, device)
        text = pgseg_text(fam, model, names, bg_words, device)
        _masks(dataset, todo, out, fam, model, text, len(names), bg_thresh, short_side, slide, device, runtime, on_item)

    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, inputs=dataset.inputs(),
                            shard=shard_from_env(shard))
    start = time.perf_counter()
    summary = folder.run([it.id for it in dataset.items], io.mask_path, work, on_start, classes=classes)
    if overlay:
        write_overlays(dataset.items, out, classes, STAGE, runtime.overwrite)
        summary.seconds = time.perf_counter() - start  # the run's time holds the overlays'
    return summary


def _masks(dataset: Dataset, todo: list[str], out: Path, fam, model, text: torch.Tensor, n_names: int,
           bg_thresh: float, short_side: int, slide: tuple[int, int], device, runtime: RuntimeConfig,
           on_item) -> None:
    """The masks of the ids ``todo`` on the shared loop (:func:`vpltool.runtime.batches.run_image_batches`), one
    image a batch (each is read at its own size): decoded ahead, segmented (:func:`image_scores`), written behind."""
    by_id = dataset.by_id()
    items = [by_id[i] for i in todo]

    def run(batch: dict) -> Callable[[slice], dict]:  # on the device: the batch's one image -> its mask
        image = batch["image"][0]
        return lambda part: {"masks": [image_scores(fam, model, image, text, n_names, bg_thresh, short_side, slide,
                                                    device)[1].to(torch.uint8)]}

    def write(index: list[int], t: dict) -> None:  # on a writer thread
        for i, mask in zip(index, t["masks"]):
            io.write_mask(io.mask_path(out, items[i].id), mask.cpu().numpy())

    run_image_batches([0] * len(items), lambda i: {"image": io.load_image(items[i].image)}, run, write, device,
                      runtime, lambda i: str(items[i].image), "pass a smaller --short-side or --slide-crop", on_item,
                      batch_size=1)


def image_scores(fam, model, image, text: torch.Tensor, n_names: int, bg_thresh: float, short_side: int,
                 slide: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoded ``[H0, W0, 3]`` uint8 image -> (``[C + 1, H0, W0]`` float32 zero-shot logits of background and
    the ``n_names`` classes, ``[H0, W0]`` int64 labels, 0 = background): the per-image work of `segment --pgseg`
    and of :func:`vpltool.api.segmenter` ``("pgseg", ...)`` (module doc, steps 1, 3 and 4). ``text``: the class
    then background-word embeddings (``fam.class_text_embeddings``)."""
    h0, w0 = image.shape[:2]
    with torch.no_grad():
        x = fam.image_tensor(image, short_side).to(device)
        logits = fam.zero_shot_logits(model, x, text, bg_thresh, mode="slide" if slide[0] else "whole",
                                      crop=slide[0] or DEFAULT_SLIDE[0], stride=slide[1])  # [1, C+1(+words), h, w]
        logits = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)[0]
    labels = logits.argmax(0)
    labels[labels > n_names] = 0  # a background word's pixels (channels after the classes')
    return logits[: n_names + 1].float(), labels


def check_options(bg_thresh: float, short_side: int, slide: tuple[int, int]) -> None:
    """One line for an option out of range, before anything loads."""
    if not 0.0 <= bg_thresh <= 1.0:
        raise VplError(f"--bg-thresh {bg_thresh}: must be in [0, 1]")
    check_pgseg_side("--short-side", short_side)
    if slide[0] < 0 or (slide[0] > 0 and not 0 < slide[1] <= slide[0]):
        raise VplError(f"--slide-crop {slide[0]} --slide-stride {slide[1]}: the crop must be >= 0 (0 = the whole "
                       "image) and the stride between 1 and the crop")


__all__ = ["run_segment_pgseg", "image_scores", "check_options", "pgseg_family", "pgseg_names", "pgseg_text",
           "pgseg_queries", "DEFAULT_SHORT_SIDE", "DEFAULT_SLIDE"]

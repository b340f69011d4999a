"""`cam --model NAME:FILE` (PGSeg's alias ``--pgseg FILE``): seeds from the zero-shot maps of a text-supervised
family's checkpoint instead of GradCAM, in the CAM file format, so that `crf`, `learn-prototypes`,
`train-decoder` and the report take them unchanged (as `cam --dense`).

Per image with labels K (the dataset's, as `cam`), the family's ``zero_shot_logits`` without the background channel
(:class:`vpltool.models.text.family.TextSegFamily`; the arithmetic `segment --model NAME:FILE` runs): the image
read as `segment` reads it (the family's ``image_tensor``), the dataset's foreground class names embedded in the
family's template through the model's own text tower, in sliding windows averaged where they overlap. The K
labelled classes' channels, resized bilinearly to the image, are the maps. No background threshold (the CRF and
eval choose the background, as for every other seed source). PGSeg's: every pixel its final group, every group
its affinity to each class (softmax over the image's top-5 classes times the prior softmax over all), in [0, 1];
a labelled class outside the image's top 5 gets an all-zero map, as it gets no pixel in `segment`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ... import io
from ...config import RuntimeConfig, presets
from ...config.checks import at_least
from ...data import Dataset, open_source, recorded_folders
from ...device import resolve_device, shard_from_env
from ...errors import VplError
from ...runtime.batches import image_names, image_stage, run_image_batches
from ...runtime.numerics import run_numerics
from .dense import maps_writer

STAGE = "cam"


def _family(family: str):
    """The :class:`~vpltool.models.text.family.TextSegFamily` of ``family``, through the registry."""
    from ...models.text.family import text_family

    return text_family(family)


def label_maps(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """``[N, H, W]`` foreground logits over the dataset's N classes (class ``c`` of ``labels`` is channel ``c - 1``)
    -> ``[K, H, W]``: the image's labelled classes, in label order."""
    index = torch.as_tensor([c - 1 for c in labels], dtype=torch.long, device=logits.device)
    return logits.index_select(0, index)


def run_text_cam(
    source: str | Path | Dataset,
    family: str,
    checkpoint: str | Path,
    out: str | Path,
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    split: str | None = None,
    short_side: int | None = None,
    slide: tuple[int, int] | None = None,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> io.StageSummary:
    """The CAMs ``<out>/<id>.safetensors`` (kind ``cam``, maps at image size) of the ``family`` checkpoint
    ``checkpoint`` for every image of a dataset (``source`` + ``split``) or of the dataset an `extract` folder was
    made from. ``short_side``, ``slide`` (``(crop, stride)`` of the sliding window, crop 0 = the whole image): None
    = the family's ``ZERO_SHOT``. The checkpoint is read (its architecture checked) before any output."""
    from ...models.registry import text_config

    own = text_config(family).ZERO_SHOT
    short_side = own.short_side if short_side is None else short_side
    slide = own.slide if slide is None else slide
    at_least("--pgseg-side", short_side, own.min_side, why=" pixels (the model's patches need room)")
    if slide[0] < 0 or (slide[0] > 0 and not 0 < slide[1] <= slide[0]):
        raise VplError(f"cam --pgseg: window {slide[0]} at stride {slide[1]}: the crop must be >= 0 (0 = the whole "
                       "image) and the stride between 1 and the crop")
    (source, dataset), out = open_source(source, split), Path(out)
    names = [n.replace("_", " ") for n in dataset.classes[1:]]
    presets.check_class_names(names, "the dataset's classes")
    io.check_outputs(STAGE, {"--out": (out, "stage")}, inputs={"the source": source, "--model": checkpoint},
                     protected=[*dataset.folders(), *recorded_folders(source)], overwrite=runtime.overwrite)
    fam = _family(family)
    fam.check_checkpoint(checkpoint)  # one line for a missing file or another model's, before anything is written
    templates = list(fam.TEMPLATES[own.templates])
    params = {"source": family, family: io.file_identity(checkpoint), "short_side": short_side,
              "slide_crop": slide[0], "slide_stride": slide[1], "template_list": templates}
    device = resolve_device(runtime.device)

    def work(items: list, sizes: list[tuple[int, int]]) -> None:
        from ...models.registry import load_model
        from ...models.text.family import class_embeddings

        model = load_model(family, checkpoint, device)  # the registry's door: every weight checked
        text = class_embeddings(fam, model, names, templates, device)
        mode = "slide" if slide[0] else "whole"

        def run(batch: dict) -> Callable[[slice], dict]:  # one image a batch (each is read at its own size)
            i = batch["index"][0]
            x = fam.image_tensor(batch["image"][0], short_side).to(device)

            def chunk(part: slice) -> dict:
                with torch.no_grad():
                    logits = fam.zero_shot_logits(model, x, text, with_bg=False, mode=mode,
                                                  crop=slide[0] or own.slide[0], stride=slide[1])  # [1, N, h, w]
                    logits = F.interpolate(logits, size=tuple(sizes[i]), mode="bilinear", align_corners=False)[0]
                maps = label_maps(logits, list(items[i].labels))
                return {"maps": [maps], "finite": [torch.isfinite(maps).all()]}

            return chunk

        write = maps_writer(out, items, sizes, dataset.classes, params, f"{family} maps", "broken weights")
        run_image_batches(sizes, lambda i: {"image": io.load_image(items[i].image)}, run, write, device, runtime,
                          image_names(items, sizes), "pass a smaller --pgseg-side", on_item, batch_size=1)

    numerics = run_numerics()  # the families run in fp32 (no --precision); another mode is said in a warning
    io.check_numerics(numerics, (checkpoint, io.file_numerics(checkpoint), "train-text"), weights=True)
    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, inputs=dataset.inputs(),
                            shard=shard_from_env(shard), numerics=numerics)
    return image_stage(folder, dataset, io.cam_path, runtime.loader_workers(device), work, on_start,
                       inputs=dataset.inputs())


__all__ = ["run_text_cam", "label_maps"]

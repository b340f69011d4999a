"""The one path from a method's labels to the masks on disk, shared by the stages that write label masks: `segment
--dense` and `predict --classes --dense` (:func:`dense_mask_stage`), `segment --model NAME:FILE` (a text-supervised
family: :mod:`vpltool.stages.segment_text`) and, through them, `benchmark`. The models compute (per image
``([C + 1, H, W]`` float probabilities or None, ``[H, W]`` integer labels``)``); this module checks and writes.

Every method's output, vpltool's own or a plugin's, is checked here before its mask is written (:func:`check_output`):

* the labels: a tensor of an integer dtype, of the photo's size ``[H, W]``, each value a class ``0..C`` of the run
  (0 = background) or 255 (the mask format's ignore);
* the probabilities, where the method gives them: ``[C + 1, H, W]``, finite, in [0, 1].

A failure is one line naming the method (and the plugin's distribution, from its spec row: ``DENSE_SPECS.plugin``)
and the photo, and nothing of that photo is written. The dtypes and shapes are checked as the batch's outputs are
handed over; the values on the device, as a few flags that travel with the batch to the writer thread, which checks
them before it writes (:func:`write_masks`): nothing waits for the device.

A module of the stage layer that no command is named after (its name starts with ``_``): the stages that write masks
import it; it imports no stage (tests/test_imports.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..errors import ContractError, VplError
from ..runtime.batches import image_names, image_stage, run_image_batches

IGNORE = 255  # the masks' "not scored" value (io.write_mask; eval skips it)
PROB_SLACK = 1e-5  # float rounding a softmax or an average may leave past 0 or 1


@dataclass(frozen=True)
class Producer:
    """Who computed a run's masks, as a refusal names it: ``what`` (``--dense naclip``, ``--model pgseg:FILE``),
    ``n_classes`` (with the background: labels are ``0..n_classes - 1``) and the plugin's distribution (``"vpltool-
    example 0.1.0"``; None for vpltool's own, :data:`vpltool.plugins.entry_points.IN_PROCESS` for a row added in this
    process)."""

    what: str
    n_classes: int
    plugin: str | None = None

    @classmethod
    def dense(cls, method: str, n_classes: int) -> Producer:
        """A ``--dense`` method's, its distribution from its spec row."""
        from ..config.dense import DENSE_SPECS

        return cls(f"--dense {method}", n_classes, DENSE_SPECS.plugin(method) if method in DENSE_SPECS else None)

    @classmethod
    def text_family(cls, family: str, checkpoint: Any, n_classes: int) -> Producer:
        """A text-supervised family's checkpoint (``--model NAME:FILE``), its distribution from its registry row."""
        from ..models.registry import TEXT_FAMILIES

        return cls(f"--model {family}:{checkpoint}", n_classes,
                   TEXT_FAMILIES.plugin(family) if family in TEXT_FAMILIES else None)

    def __str__(self) -> str:
        return f"{self.what} (plugin {self.plugin})" if self.plugin else self.what

    def refuse(self, photo: Any, problem: str) -> ContractError:
        """The one line of an output that fails its check."""
        from ..plugins.entry_points import uninstall_hint

        if self.plugin is None:
            fix = "this is a vpltool bug: please report it, and choose another method meanwhile"
        else:
            fix = f"fix the plugin{uninstall_hint(self.plugin)}"
        return ContractError(f"{self}: its output for {photo} {problem}, so it is not used: {fix}")


def _shape_problem(producer: Producer, size: tuple[int, int], probs: Any, labels: Any) -> str | None:
    """What is wrong with an output's types, dtypes and shapes (no device sync), or None."""
    if not isinstance(labels, torch.Tensor):
        return f"is a {type(labels).__name__} of labels, not a torch tensor"
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return f"holds {str(labels.dtype).removeprefix('torch.')} labels, not integers (class indices)"
    height, width = size
    if tuple(labels.shape) != (height, width):
        shape = "x".join(map(str, labels.shape)) or "a scalar"
        return f"is a {shape} label map, the photo is {height}x{width}"
    if probs is None:
        return None
    if not isinstance(probs, torch.Tensor):
        return f"gives probabilities as a {type(probs).__name__}, not a torch tensor"
    if not probs.is_floating_point():
        return f"gives {str(probs.dtype).removeprefix('torch.')} probabilities, not floats"
    if tuple(probs.shape) != (producer.n_classes, height, width):
        return (f"gives probabilities of shape {tuple(probs.shape)}, not ({producer.n_classes}, {height}, {width}) "
                f"(the background and {producer.n_classes - 1} classes at the photo's size)")
    return None


def value_flags(probs: torch.Tensor | None, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[5]`` int64 on the labels' device, made without waiting for it: the smallest and the largest label, how
    many labels are no class (``0..n_classes - 1``) and not 255, how many probabilities are NaN or inf, how many lie
    outside [0, 1]."""
    lab = labels.long()
    bad = ((lab < 0) | ((lab >= n_classes) & (lab != IGNORE))).sum()
    if probs is None:
        zero = bad.new_zeros(())
        nonfinite = outside = zero
    else:
        p = probs.float()
        finite = torch.isfinite(p)
        nonfinite = (~finite).sum().to(bad.device)
        outside = (finite & ((p < -PROB_SLACK) | (p > 1 + PROB_SLACK))).sum().to(bad.device)
    low = lab.min() if lab.numel() else bad.new_zeros(())
    high = lab.max() if lab.numel() else bad.new_zeros(())
    return torch.stack([low, high, bad, nonfinite, outside])


def _value_problem(flags: Any, n_classes: int) -> str | None:
    low, high, bad, nonfinite, outside = (int(v) for v in flags)
    if bad:
        return (f"holds labels from {low} to {high} ({bad} pixel{'s' if bad != 1 else ''} outside 0..{n_classes - 1} "
                f"and not {IGNORE}): a mask holds the run's classes 0..{n_classes - 1}, or {IGNORE} for ignore")
    if nonfinite:
        return f"gives {_probabilities(nonfinite)} that {'is' if nonfinite == 1 else 'are'} NaN or inf"
    if outside:
        return f"gives {_probabilities(outside)} outside [0, 1]"
    return None


def _probabilities(n: int) -> str:
    return f"{n} probabilit{'y' if n == 1 else 'ies'}"


def check_output(producer: Producer, photo: Any, size: tuple[int, int], probs: Any, labels: Any) -> None:
    """One image's output checked whole (module doc), waiting for the device: where the output is used at once
    (`cam --dense`'s maps, the Python segmenter's results). One line naming the method and ``photo`` otherwise."""
    problem = _shape_problem(producer, tuple(size), probs, labels)
    if problem is None:
        problem = _value_problem(value_flags(probs, labels, producer.n_classes).cpu(), producer.n_classes)
    if problem is not None:
        raise producer.refuse(photo, problem)


def write_masks(out: Path, items: Sequence, sizes: Sequence[tuple[int, int]], producer: Producer,
                keys: Sequence, load: Callable[[int], dict], compute: Callable[[dict], Callable[[slice], list]],
                device: torch.device, runtime, advice: str, on_item: Callable[[int], None] | None, *,
                batch_size: int | None = None) -> None:
    """Masks ``<out>/<id>.png`` of ``items`` (their photos' ``(H, W)`` ``sizes``) on the shared per-image loop
    (:func:`vpltool.runtime.batches.run_image_batches`: ``keys`` group the batches, ``load(i)`` in a loading worker,
    ``advice`` the fix of an image that fits in no chunk). ``compute(batch)`` on the device returns the function of
    a chunk (a slice of the batch) to its images' ``(probabilities or None, labels)`` (module doc). Each output's
    types and shapes are checked as it is handed over, its values on the writer thread before its mask is
    written."""
    n_classes = producer.n_classes

    def run(batch: dict) -> Callable[[slice], dict]:
        index, chunk = batch["index"], compute(batch)

        def part(where: slice) -> dict:
            outputs, mine = list(chunk(where)), index[where]
            if len(outputs) != len(mine):
                raise producer.refuse(items[mine[0]].image, f"is {len(outputs)} outputs for {len(mine)} photos")
            masks, flags = [], []
            for i, (probs, labels) in zip(mine, outputs):
                problem = _shape_problem(producer, tuple(sizes[i]), probs, labels)
                if problem is not None:
                    raise producer.refuse(items[i].image, problem)
                flags.append(value_flags(probs, labels, n_classes))
                masks.append(labels.to(torch.uint8))  # a label past 255 wraps here: its flag refuses the mask
            return {"masks": masks, "flags": flags}

        return part

    def write(index: list[int], t: dict) -> None:  # on a writer thread: the values checked, then the masks written
        for i, mask, flags in zip(index, t["masks"], t["flags"]):
            problem = _value_problem(flags, n_classes)
            if problem is not None:
                raise producer.refuse(items[i].image, problem)
            io.write_mask(io.mask_path(out, items[i].id), np.asarray(mask.numpy(), dtype=np.uint8), items[i].id)

    run_image_batches(keys, load, run, write, device, runtime, image_names(items, sizes), advice, on_item,
                      batch_size=batch_size)


@dataclass(frozen=True)
class DenseJob:
    """What `segment --dense` and `predict --classes --dense` compute for each image: the ``method`` (its name) over
    ``classes`` (``['background', ...]``) with ``settings`` (a :class:`~vpltool.config.DenseSettings`) at ``dtype``;
    ``backbone()`` loads the CLIP with the method set (called only when there is work); ``queries`` = ``(synonyms
    per class, templates, background words)``; a query the tokenizer refuses is one line naming ``query_options``,
    a photo too large for the free memory one naming ``max_side_option`` (`segment`'s ``--max-side {}``) at the
    value that fits, where the command has it."""

    method: str
    classes: list[str]
    settings: Any
    dtype: torch.dtype
    backbone: Callable[[], Any]
    queries: tuple
    query_options: str
    max_side_option: str | None = None


def dense_mask_stage(folder: io.StageFolder, dataset, job: DenseJob, runtime, device,
                     on_start: Callable[[int], None] | None = None,
                     on_item: Callable[[int], None] | None = None) -> io.StageSummary:
    """The stage body of `segment --dense` and of `predict --classes --dense`: in ``folder`` (its lock, records and
    shard), for the images of ``dataset`` not done yet their header sizes, the photo-memory check, then the CLIP
    (``job.backbone()``), the query rows and the masks (:func:`dense_masks`).

    Returns:
        :class:`vpltool.io.StageSummary`.
    """
    from ..models.dense.bands import check_photo_memory
    from ..models.dense.segmentor import query_rows

    synonyms, _, background = job.queries

    def work(items: list, sizes: list[tuple[int, int]]) -> None:
        check_photo_memory([it.image for it in items], sizes, sum(map(len, synonyms)) + len(background),
                           job.settings, max_side_option=job.max_side_option)
        bb = job.backbone()
        try:
            text, query_class = query_rows(bb, *job.queries)
        except VplError as e:  # e.g. a word the toy CLIP's tokenizer does not know
            raise VplError(f"{job.query_options}: {e}") from None
        dense_masks(bb, items, sizes, text, query_class, job, folder.folder, runtime, on_item)

    return image_stage(folder, dataset, io.mask_path, runtime.loader_workers(device), work, on_start,
                       classes=job.classes)


def dense_masks(bb, items: list, sizes: list[tuple[int, int]], text: torch.Tensor, query_class: torch.Tensor,
                job: DenseJob, out: Path, runtime, on_item) -> None:
    """Masks ``<out>/<id>.png`` of ``items`` by ``job``'s method: images batched by input size, loaded ahead,
    segmented on the device (:func:`vpltool.models.dense.segmentor.scores_batch`, without the probabilities the
    method does not make anyway), checked and written behind (:func:`write_masks`)."""
    from ..models.dense import segmentor

    settings = job.settings
    inputs = [segmentor.short_side_size(h, w, settings.short_side, settings.long_side) for h, w in sizes]
    pre = bb.preprocessor
    text, query_class = text.to(bb.device), query_class.to(bb.device)

    def load(i: int) -> dict:  # in a loading worker: the uint8 image resized (here or on the device)
        image = io.load_image(items[i].image)
        if tuple(image.shape[:2]) != tuple(sizes[i]):
            raise ContractError(f"{items[i].image}: decoded to {image.shape[0]}x{image.shape[1]}, but its header said "
                                f"{sizes[i][0]}x{sizes[i][1]}; the file changed during the run: run again")
        return segmentor.dense_input(pre, image, inputs[i], bb.hooks.extra_inputs(items[i], image))

    def compute(batch: dict) -> Callable[[slice], list]:  # on the device: a chunk of the batch -> its outputs
        index = batch["index"]
        pixels = bb.pixels(batch["pixels"], inputs[index[0]])
        extras = segmentor.batch_extras(batch, len(index))  # what the method's extra_inputs hook added per image
        return lambda part: segmentor.scores_batch(bb, pixels[part], text, query_class, len(job.classes), settings,
                                                   [sizes[i] for i in index[part]], job.dtype, extras[part],
                                                   scores=False)

    write_masks(out, items, sizes, Producer.dense(job.method, len(job.classes)), inputs, load, compute, bb.device,
                runtime, "pass a smaller --short-side or --slide-crop, or a smaller --batch-size", on_item)


__all__ = ["IGNORE", "Producer", "DenseJob", "check_output", "value_flags", "write_masks", "dense_mask_stage",
           "dense_masks"]

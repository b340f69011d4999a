"""The segmenter's front: :class:`Segmenter`, what every family's segmenter shares (a call on one photo, a list, an
embedding, a folder lazily; per-call options; ``.to``), over each family's ``_options``, ``_embed``, ``_to`` and
``_run`` (:mod:`vpltool.api.segmenters`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..config import RuntimeConfig
from ..errors import VplError
from .embed import Embedding
from .images import as_rgb, check_image_format, chunks, folder_photos, is_batch, photos
from .options import class_entries, device_name, python_lines
from .results import Segmentation

RETURN_TENSORS = ("np", "pt")  # transformers' names: numpy arrays on the host, torch tensors on the device


class Segmenter:
    """A loaded segmenter: ``seg(images, classes)`` -> a :class:`Segmentation` per photo. Made by :func:`segmenter`.

    ``seg.model`` is the network (an ``nn.Module``: the CLIP of a dense method, the PGSeg / GroupViT model);
    ``seg.to(device)`` moves it; ``seg.device`` says where it is."""

    method: str
    device: Any
    batch_size: int | None = None  # photos per forward; None: `segment`'s (1 on a CPU, 32 on CUDA)

    @python_lines
    def __call__(self, images: Any, classes: str | Sequence[str] | None = None, *,
                 candidate_labels: Sequence[str] | None = None, return_tensors: str = "np",
                 image_format: str = "RGB", **options: Any) -> Segmentation | list[Segmentation]:
        """Segment one photo or several.

        Args:
            images: a photo (a path, an ``http(s)://`` URL, a PIL image, an ``[H, W, 3]`` uint8 array, a
                ``[3, H, W]`` uint8 or float tensor in [0, 1], or an :class:`~vpltool.api.embed.Embedding` of
                :meth:`embed`) or a list of them (or a ``[B, H, W, 3]`` array / ``[B, 3, H, W]`` tensor); photos of
                one input size run as one batch.
            classes: ``["cat", "dog"]`` or ``"cat,dog"``; synonyms ``"cat|kitten"``; class ``i`` of the labels is
                entry ``i - 1`` (0: background). ``candidate_labels``: transformers' name for the same.
            return_tensors: ``"np"``: numpy arrays on the host; ``"pt"``: torch tensors on :attr:`device`.
            image_format: ``"RGB"`` or ``"BGR"`` (OpenCV's order), for arrays and tensors.
            options: for this call only, in place of the segmenter's: a dense method's segmentor settings
                (``prob_threshold``, or ``threshold`` as transformers names it; ``pamr_steps``, ``max_side``,
                ``short_side``, ``slide_crop``, ``slide_stride``, ``logit_scale``, ``area_threshold``) and
                ``batch_size``; a text-supervised family's ``bg_thresh`` (``threshold``) and ``batch_size``.

        Returns:
            One :class:`Segmentation` for one photo, a list for a list.
        """
        tensors = _check_return(return_tensors)
        check_image_format(image_format)
        entries = class_entries(classes, candidate_labels)
        run = self._options(options)
        if not is_batch(images):
            return self._segment([(None, images)], entries, tensors, image_format, run)[0]
        return self._segment(list(enumerate(photos(images))), entries, tensors, image_format, run)

    @python_lines
    def map(self, source: str | os.PathLike | Iterable, classes: str | Sequence[str] | None = None, *,
            candidate_labels: Sequence[str] | None = None, progress: bool | None = None, return_tensors: str = "np",
            image_format: str = "RGB", **options: Any) -> Iterator[tuple[Any, Segmentation]]:
        """Segment a folder of photos (its images as `segment` lists them) or any iterable of photos, lazily:
        yields ``(path or index, Segmentation)`` as each batch is done, so the photos are read as they are used.
        ``progress``: a bar on stderr (None: on a terminal; False: never); the other arguments as a call's."""
        from ..runtime.batches import resolve_batch_size
        from .progress import hooks

        tensors = _check_return(return_tensors)
        check_image_format(image_format)
        entries = class_entries(classes, candidate_labels)
        run = self._options(options)
        items, total, key = folder_photos(source)
        size = resolve_batch_size(run[-1], self.device, 1)  # photos read ahead: one batch's worth
        with hooks(progress, f"segment ({self.method})") as (on_start, on_item):
            if on_start is not None and total is not None:
                on_start(total)
            for chunk in chunks(enumerate(items), size):
                results = self._segment(chunk, entries, tensors, image_format, run)
                if on_item is not None:
                    on_item(len(chunk))
                for (i, photo), result in zip(chunk, results):
                    yield key(i, photo), result

    @python_lines
    def embed(self, images: Any, *, image_format: str = "RGB", **options: Any) -> Embedding | list[Embedding]:
        """A photo's image side, computed once (:mod:`vpltool.api.embed`): ``emb = seg.embed(photo)``, then
        ``seg(emb, names)`` for any class names gives the labels a fresh ``seg(photo, names)`` gives, running only
        the text side. ``images``: a photo or a list (a list of embeddings back); ``options``: the image side's
        per-call settings (``short_side``, ``slide_crop``, ``slide_stride``), else the segmenter's."""
        check_image_format(image_format)
        run = self._options(options)
        if is_batch(images):
            return [self._embed(photo, as_rgb(photo, i, image_format), run) for i, photo in enumerate(photos(images))]
        return self._embed(images, as_rgb(images, None, image_format), run)

    @python_lines
    def to(self, device: Any) -> Segmenter:
        """Move the model (and what the segmenter keeps on its device) to ``device`` (``"cuda"``, ``0``,
        ``torch.device``, ...); returns the segmenter."""
        return self._to(device_name(device))

    def _segment(self, given: list, entries: list[str], tensors: bool, image_format: str, run: tuple
                 ) -> list[Segmentation]:
        """``given``: ``(index in the caller's list or None, photo or embedding)``; every photo decoded and checked
        before any runs; embeddings run one by one, as they were made."""
        out: list[Any] = [None] * len(given)
        plain = [k for k, (_, photo) in enumerate(given) if not isinstance(photo, Embedding)]
        rgbs = [as_rgb(given[k][1], given[k][0], image_format) for k in plain]
        if plain:
            for k, result in zip(plain, self._run(rgbs, [given[k] for k in plain], entries, tensors, run)):
                out[k] = result
        for k, (i, emb) in enumerate(given):
            if isinstance(emb, Embedding):
                out[k] = self._run([emb.image], [(i, emb.photo if emb.photo is not None else emb.image)], entries,
                                   tensors, run, emb)[0]
        return [_with_source(result, photo) for result, (_, photo) in zip(out, given)]

    def _options(self, options: dict) -> tuple:
        """A call's per-call options -> what :meth:`_run` takes (the last item: the batch size)."""
        raise NotImplementedError

    def _embed(self, photo: Any, rgb: Any, run: tuple) -> Embedding:
        raise NotImplementedError

    def _to(self, device: str) -> Segmenter:
        raise NotImplementedError

    def _run(self, rgbs: list, given: list, entries: list[str], tensors: bool, run: tuple,
             embedding: Embedding | None = None) -> list[Segmentation]:
        """``rgbs``: the photos decoded; ``given``: each as ``(its index in the caller's list, or None for one
        photo; the photo as given)``: a path names it in a message, and is the item a method's ``extra_inputs``
        hook gets; ``run``: the call's :meth:`_options`; ``embedding``: the one photo's kept image side."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<vpltool segmenter {self.method!r} on {self.device}>"


def _check_return(return_tensors: str) -> bool:
    if return_tensors not in RETURN_TENSORS:
        raise VplError(f"return_tensors={return_tensors!r}: choose 'np' (numpy arrays) or 'pt' (torch tensors)")
    return return_tensors == "pt"


def _with_source(result: Segmentation, photo: Any) -> Segmentation:
    """:func:`~vpltool.api.results.with_source`, an embedding read as the photo it embeds."""
    from .results import with_source

    return with_source(result, photo.photo if isinstance(photo, Embedding) else photo)


def checked_batch_size(batch: Any) -> Any:
    RuntimeConfig(batch_size=batch)  # its check, its line
    return batch


def segmentation(scores, labels, classes: tuple[str, ...], tensors: bool, image: Any = None) -> Segmentation:
    """A :class:`Segmentation` from the device's ``[C + 1, H, W]`` scores and ``[H, W]`` labels, and the photo."""
    import numpy as np
    import torch

    if tensors:
        return Segmentation(labels.to(torch.int64), scores.float(), classes, image)
    return Segmentation(labels.cpu().numpy().astype(np.int64), scores.float().cpu().numpy(), classes, image)


def warn_anew(tokenizer: Any) -> None:
    """A new list of class names gets its own unknown-word warning (a tokenizer that warns once per command, the
    toy CLIP's, offers ``warn_again``; open_clip's warns never)."""
    again = getattr(tokenizer, "warn_again", None)
    if again is not None:
        again()


__all__ = ["RETURN_TENSORS", "Segmenter", "checked_batch_size", "segmentation", "warn_anew"]

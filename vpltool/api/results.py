"""A segmented photo (:class:`Segmentation`), as numpy or torch, as transformers' ``image-segmentation`` output, as
`segment`'s mask file and overlay, and each class's area and box.

Torch-free until torch is asked for: :meth:`Segmentation.torch` imports it, :meth:`Segmentation.numpy` needs it only
when the result holds tensors (a segmenter called with ``return_tensors="pt"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VplError

SAVED_KIND = "segmentation"  # the kind a result's mask records (vpltool.io.marks): what save() may replace


@dataclass(frozen=True)
class Segmentation:
    """One photo segmented.

    Attributes:
        labels: ``[H, W]`` int64 label map at the photo's size: 0 = background, ``c`` = ``classes[c]``; a numpy
            array, or a torch tensor on the segmenter's device (``return_tensors="pt"``).
        scores: ``[C + 1, H, W]`` float32 per-class scores, index 0 = background (dense methods: probabilities in
            [0, 1], each class the max over its synonyms; PGSeg / GroupViT: its zero-shot logits, not
            probabilities); numpy or torch as ``labels``.
        classes: ``('background', *names)``, the names as given (a synonym list ``cat|kitten`` by its first).
        image: the photo segmented, ``[H, W, 3]`` uint8 RGB (numpy), which :meth:`overlay` draws on; None for a
            result made by hand.
        source: the photo's file, when the photo was given as a path (or a ``file://`` URL): what :meth:`save`
            never writes over; None otherwise.
    """

    labels: Any
    scores: Any
    classes: tuple[str, ...]
    image: Any = field(default=None, repr=False, compare=False)
    source: Path | None = field(default=None, repr=False, compare=False)

    def numpy(self) -> Segmentation:
        """The same result as numpy arrays on the host (itself when it holds them already)."""
        if isinstance(self.labels, np.ndarray):
            return self
        return replace(self, labels=self.labels.cpu().numpy().astype(np.int64),
                       scores=self.scores.float().cpu().numpy())

    def torch(self, device: Any = None) -> Segmentation:
        """The same result as torch tensors (``labels`` int64, ``scores`` float32), on ``device`` (None: where they
        are; the host for numpy)."""
        import torch

        labels = torch.as_tensor(self.labels)
        scores = torch.as_tensor(self.scores)
        if device is not None:
            labels, scores = labels.to(device), scores.to(device)
        return replace(self, labels=labels, scores=scores)

    def to_pipeline(self) -> list[dict[str, Any]]:
        """transformers' ``pipeline("image-segmentation")`` output for this photo: per class present in the label
        map (background too), in class order, ``{"label": name, "score": float, "mask": PIL image}``: the mask is
        mode ``L``, 255 on the class's pixels and 0 elsewhere, as transformers gives it; the score is the class's
        mean score over those pixels (a probability for the dense methods, a logit for PGSeg: transformers gives
        None for a semantic segmentation)."""
        from PIL import Image

        result = self.numpy()
        labels, scores = result.labels, result.scores
        out = []
        for c in np.unique(labels).tolist():
            inside = labels == c
            out.append({"label": self.classes[c], "score": float(scores[c][inside].mean()),
                        "mask": Image.fromarray(inside.astype(np.uint8) * 255)})
        return out

    def to_pil(self):
        """The label map as `segment` writes it: a palette (``P``) image with the PASCAL VOC colours, index = class."""
        from PIL import Image

        from ..io.images import voc_palette

        img = Image.fromarray(self._mask())  # mode L, made P by its palette
        img.putpalette(voc_palette())
        return img

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the label map as `segment` writes a mask: a palette PNG (the VOC colours, index = class, 0 =
        background; :func:`vpltool.io.write_mask`, atomically: a failed write leaves ``path`` as it was), marked as
        a result's mask (the kind ``segmentation``, :mod:`vpltool.io.marks`). Returns the path.

        Checked as the command line checks a file it writes (:func:`vpltool.io.check_outputs`), each refusal one
        :class:`~vpltool.errors.VplError` line naming the path and the fix, before anything is written: never the
        photo this result segmented (:attr:`source`: the same path, a symbolic link to it, or a hard link, the
        same file under another name), whatever ``overwrite`` says; never an existing file that a result's
        ``save`` did not write (a user's own, another vpltool file) unless ``overwrite=True``; never inside a
        vpltool stage folder, whose files only its stage writes."""
        from ..io import check_outputs, write_mask

        path = Path(path)
        if path.suffix.lower() != ".png":
            raise VplError(f"{path}: a mask is saved as a .png (a palette PNG, lossless); name it "
                           f"{path.with_suffix('.png').name}")
        self._check_not_source(path)
        check_outputs("Segmentation.save", {"path": (path, "file", SAVED_KIND)},
                      inputs={"the photo this result segmented": self.source}, overwrite=overwrite,
                      flag="overwrite=True")
        return write_mask(path, self._mask(), kind=SAVED_KIND)

    def _check_not_source(self, path: Path) -> None:
        """One line if ``path`` is the segmented photo's file under another name: a hard link, the same device and
        inode (the same path and a symbolic link to it resolve to the photo: :func:`vpltool.io.check_outputs`
        refuses them as the command line refuses an output that is its input)."""
        if self.source is None:
            return
        try:
            same = os.path.samefile(path, self.source)
        except OSError:  # either is missing (the photo moved away): nothing to destroy
            return
        if same and os.path.realpath(path) != os.path.realpath(self.source):
            raise VplError(f"{path}: is the photo this result segmented ({self.source}), the same file under "
                           "another name; writing there would destroy it: choose another path")

    def overlay(self, image: Any = None, alpha: float | None = None):
        """The photo with its mask's colours blended in and a legend of the classes it holds below it, as a PIL RGB
        image: what `segment --overlay` writes (:func:`vpltool.io.overlays.class_overlay`, the same function) before
        its JPEG encoding. ``image``: the photo (any the segmenter takes; None: the one segmented); ``alpha``: the
        colours' share of each pixel (None: `segment`'s, 0.5)."""
        from PIL import Image

        from ..io.overlays import ALPHA, class_overlay
        from .images import as_rgb

        photo = self.image if image is None else as_rgb(image)
        if photo is None:
            raise VplError("overlay: this result holds no photo; pass it, result.overlay(photo)")
        mask = self._mask()
        if tuple(photo.shape[:2]) != mask.shape:
            raise VplError(f"overlay: the photo is {photo.shape[0]}x{photo.shape[1]} and the mask "
                           f"{mask.shape[0]}x{mask.shape[1]}; pass the photo that was segmented")
        return Image.fromarray(class_overlay(photo, mask, self.classes, ALPHA if alpha is None else alpha))

    def areas(self, normalize: bool = True) -> dict[str, float]:
        """Each class's area, in class order (background first, absent classes 0): its share of the photo's
        pixels in [0, 1], or (``normalize=False``) its pixel count."""
        labels = self.numpy().labels
        counts = np.bincount(labels.ravel(), minlength=len(self.classes))[: len(self.classes)]
        total = max(labels.size, 1)
        return {name: (float(n) / total if normalize else int(n)) for name, n in zip(self.classes, counts.tolist())}

    def boxes(self) -> dict[str, tuple[int, int, int, int] | None]:
        """Each class's bounding box in class order (background first): ``(left, top, right, bottom)`` in pixels,
        right and bottom exclusive (PIL's ``crop`` box: ``photo.crop(box)`` is the class's rectangle); None for a
        class the label map does not hold."""
        labels = self.numpy().labels
        out: dict[str, tuple[int, int, int, int] | None] = {}
        for c, name in enumerate(self.classes):
            rows, cols = np.nonzero((labels == c).any(axis=1))[0], np.nonzero((labels == c).any(axis=0))[0]
            out[name] = None if not len(rows) else (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        return out

    def _mask(self) -> np.ndarray:
        """The label map as `segment`'s mask: ``[H, W]`` uint8 (class indices below 255)."""
        labels = self.numpy().labels
        if len(self.classes) > 255:
            raise VplError(f"a mask PNG holds at most 255 classes (255 = ignore); this result has {len(self.classes)}")
        return labels.astype(np.uint8)


def with_source(result: Segmentation, photo: Any) -> Segmentation:
    """``result`` with the photo's file (:attr:`Segmentation.source`) when the photo was given as a path or a
    ``file://`` URL: its ``save`` never writes there. Every door that segments a photo (:func:`vpltool.segmenter`'s,
    :func:`vpltool.onnx_segmenter`'s) returns its result through here."""
    from .images import file_url_path, is_url

    photo = file_url_path(photo)
    if not isinstance(photo, (str, os.PathLike)) or is_url(photo):
        return result
    return replace(result, source=Path(photo))


__all__ = ["SAVED_KIND", "Segmentation", "with_source"]

"""``vpltool.onnx_segmenter(FILE)``: run a file `vpltool export` wrote, from Python, with onnxruntime on the CPU.

``seg = vpltool.onnx_segmenter("naclip.onnx")``, then ``seg(photo)`` -> a :class:`~vpltool.api.results.Segmentation`
(``[H, W]`` int64 labels over the file's classes, ``[C + 1, H, W]`` float32 scores), ``seg([a, b])`` -> a list. The
classes are the file's (baked in at export); a photo of another size than the file's is refused in one line naming
the ``--size`` to export with. The label map is the mask ``segment DATA --onnx FILE`` writes for the same photo.
"""

from __future__ import annotations

import os
from typing import Any

from .images import as_rgb, is_batch, name_of, photos
from .results import Segmentation, with_source


class OnnxSegmenter:
    """An exported file loaded once (:class:`vpltool.stages.export.run.OnnxFile`): ``classes``, ``size`` (the
    photos' ``(H, W)``), ``metadata`` (every ``vpltool.*`` entry)."""

    def __init__(self, path: str | os.PathLike):
        from ..stages.export.run import OnnxFile

        self.file = OnnxFile(path)
        self.classes, self.size, self.metadata = self.file.classes, self.file.size, self.file.metadata

    def __call__(self, images: Any) -> Segmentation | list[Segmentation]:
        """One photo (a path, a URL, a PIL image, an ``[H, W, 3]`` uint8 array) or a list of them."""
        if is_batch(images):
            return [self._one(photo, i) for i, photo in enumerate(photos(images))]
        return self._one(images, None)

    def _one(self, photo: Any, index: int | None) -> Segmentation:
        rgb = as_rgb(photo, index)
        out = self.file.run(rgb, name_of(photo, index))
        # the photo's file too: its save() never writes over the photo it segmented
        return with_source(Segmentation(out["labels"], out["scores"], self.classes, rgb), photo)

    def __repr__(self) -> str:
        return (f"OnnxSegmenter({str(self.file.path)!r}, source={self.file.source!r}, "
                f"size={self.size[0]}x{self.size[1]}, classes={len(self.classes)})")


def onnx_segmenter(path: str | os.PathLike) -> OnnxSegmenter:
    """Load an exported file (``vpltool export``) once; call it on photos of the size it was exported for.

    Raises:
        VplError: a missing file, one that is no ONNX model or not `export`'s, or onnxruntime missing: one line.
    """
    return OnnxSegmenter(path)


__all__ = ["OnnxSegmenter", "onnx_segmenter"]

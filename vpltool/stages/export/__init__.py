"""`vpltool export`: a trained decoder, or a training-free dense CLIP method with its class list, as one ONNX file
that onnxruntime runs without torch or vpltool's models.

What is exported (:mod:`.graphs`): the very functions `predict` and `segment` run on one photo, traced by torch's own
exporter (``torch.onnx.export``, opset :data:`OPSET`) at one photo size:

* ``--decoder FILE`` (`train-decoder`'s output): the frozen CLIP and the decoder, as ``predict --scales 1
  --no-flip`` (no CRF): multi-scale, flip and the CRF stay outside the graph.
* ``--dense METHOD`` (:data:`EXPORTABLE`): the CLIP's last block mixed as the method mixes it, its slide windows,
  PAMR where it has one, the text queries of the class list baked in as constants, as `segment`.
* ``--model pgseg:FILE`` (`train-text` / `train-pgseg`'s checkpoint, a GroupViT / PGSeg release): its zero-shot
  segmentation with the class text baked in, as ``segment --model pgseg:FILE`` (its bilinear resize inside the
  graph: its input is the photo itself).

A traced graph keeps the sizes it was traced at, so the photo's size ``(H0, W0)`` (``--size``) and the model's input
size are recorded in the file's metadata (:data:`META`) and checked by the runner (:mod:`.run`): a photo of another
size is refused in one line naming the ``--size`` to export with. The graph takes the photo resized to the input
size by Pillow's bicubic (``[1, H, W, 3]`` uint8; ONNX's bicubic is not Pillow's) and gives ``logits`` (the decoder's
class logits, or the method's query logits ``[1, Q, H0, W0]``), ``scores`` (``[1, C + 1, H0, W0]``: the decoder's
softmax, or the method's class probabilities) and ``labels`` (``[1, H0, W0]`` int64).

Everything asked is checked before the output file (so a method that cannot be exported is refused as such, never
with an ``--overwrite`` advice that leads to the same refusal), and both before any model loads; the file is written
atomically (:func:`vpltool.io.atomic_path`), never over an existing one without ``overwrite``.
"""

from __future__ import annotations

from .common import (
    EXPORTABLE,
    KIND,
    META,
    NOT_EXPORTABLE,
    OPSET,
    ExportSummary,
    check_exportable,
    check_target,
    parse_size,
    require_onnx,
    size_text,
)
from .decoder import export_decoder
from .dense import export_dense
from .text import export_text

__all__ = ["OPSET", "EXPORTABLE", "NOT_EXPORTABLE", "META", "KIND", "ExportSummary", "parse_size", "size_text",
           "check_exportable", "check_target", "export_decoder", "export_dense", "export_text", "require_onnx"]

"""`vpltool export`: a trained decoder, or a training-free dense CLIP method with its class list, as one ONNX file
that onnxruntime runs without torch or vpltool's models.

What is exported (:mod:`.graphs`): the very functions `predict` and `segment` run on one photo, traced by torch's own
exporter (``torch.onnx.export``, opset :data:`OPSET`) at one photo size:

* ``--decoder FILE`` (`train-decoder`'s output): the frozen CLIP and the decoder, as ``predict --scales 1
  --no-flip`` (no CRF): multi-scale, flip and the CRF stay outside the graph.
* ``--dense METHOD`` (:data:`EXPORTABLE`): the CLIP's last block mixed as the method mixes it, its slide windows,
  PAMR where it has one, the text queries of the class list baked in as constants, as `segment`.

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

import contextlib
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ... import io
from ...errors import VplError

OPSET = 18  # ScatterElements' max reduction (a class's probability: the max over its synonyms) is opset 18's
FORMAT = "1"
# the training-free methods whose arithmetic is one fixed graph for a fixed class list and photo size
EXPORTABLE = ("none", "maskclip", "sclip", "clearclip", "naclip")
# why each other method cannot be exported, in the one line that refuses it
NOT_EXPORTABLE = {
    "sc-clip": "its Local Outlier Factor step picks each photo's outlier tokens by a neighbour search",
    "proxyclip": "its attention comes from a DINO proxy model beside CLIP, which export does not trace",
    "cass": "its attention comes from a DINO proxy's spectral decomposition, made per photo",
    "trident": "it needs a DINO proxy and SAM's image encoder beside CLIP, which export does not trace",
    "corrclip": "its regions come from SAM's automatic masks and per-photo clustering (data-dependent)",
    "ov-stitcher": "its regions come from SAM's automatic masks and per-photo clustering (data-dependent)",
    "textregion": "its regions come from SAM's automatic masks (data-dependent)",
    "radseg": "its regions come from per-photo region merging on C-RADIOv3 (data-dependent)",
    "sam3": "SAM 3 keeps or drops each detected mask per photo (data-dependent)",
    "activesam": "SAM 3 keeps or drops each detected mask per photo (data-dependent)",
}
# metadata keys (onnx metadata_props), all strings
META = ("vpltool.kind", "vpltool.format", "vpltool.version", "vpltool.source", "vpltool.photo_size",
        "vpltool.input_size", "vpltool.classes", "vpltool.source_sha256", "vpltool.model", "vpltool.settings",
        "vpltool.outputs", "vpltool.licence")
KIND = "segmenter"


@dataclass(frozen=True)
class ExportSummary:
    """What `export` wrote: the file, its source, the photo size and the classes."""

    out: Path
    source: str
    size: tuple[int, int]
    classes: tuple[str, ...]


def parse_size(spec: str | Sequence[int]) -> tuple[int, int]:
    """``--size`` ``HxW`` (or ``(H, W)``) -> ``(H, W)``, each side at least 1; one line otherwise."""
    if not isinstance(spec, str):
        parts = [str(v) for v in spec]
    else:
        parts = spec.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise VplError(f"--size {spec}: give the photos' height x width in pixels, e.g. --size 480x640") from None
    if h < 1 or w < 1:
        raise VplError(f"--size {spec}: both sides must be at least 1 pixel")
    return h, w


def size_text(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def check_exportable(dense: str | None, decoder: str | Path | None, family: str = "clip") -> None:
    """One line (exit 2) for what cannot be exported, before anything else is checked: a dense method whose graph is
    data-dependent (:data:`NOT_EXPORTABLE`), a text-supervised family's checkpoint, or both sources at once."""
    if family != "clip":
        raise VplError(f"--model {family}:FILE: export takes a trained decoder (--decoder) or a dense CLIP method "
                       f"(--dense {'|'.join(EXPORTABLE)}); text-supervised checkpoints are not exported yet")
    if decoder is not None and dense not in (None, "none"):
        raise VplError(f"--decoder and --dense {dense}: export one of them (a decoder with its own classes, or a "
                       "dense method with --classes)")
    if dense is None or dense in EXPORTABLE:
        return
    why = NOT_EXPORTABLE.get(dense)
    if why is None:
        raise VplError(f"--dense {dense}: not exportable (export supports {', '.join(EXPORTABLE[1:])} and none)")
    raise VplError(f"--dense {dense}: cannot be exported to ONNX: {why}; export one of "
                   f"{', '.join(EXPORTABLE[1:])}")


def check_target(out: str | Path, overwrite: bool, inputs: dict) -> Path:
    """The output file: a regular file's name (or absent), never an input, and never over an existing file without
    ``overwrite`` (checked after what is asked, before any model loads)."""
    out = io.check_writable_target(out, suffix=".onnx", option="--out")
    io.check_outputs("export", {"--out": (out, "file")}, inputs=inputs, overwrite=overwrite)
    if out.exists() and not overwrite:
        raise VplError(f"{out}: exists; pass --overwrite to replace it, or choose another --out")
    return out


@contextlib.contextmanager
def traceable():
    """torch's plain operators inside the block, as ONNX knows them: ``nn.MultiheadAttention``'s fused inference
    kernel off, and every linear product through ``F.linear`` (oneDNN's op has no ONNX form; MKL's is the
    references' library, :func:`~vpltool.models.backbones.onednn.references_library`)."""
    import torch

    from ...models.backbones.onednn import references_library

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with references_library(), torch.no_grad():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def state_digest(module) -> str:
    """sha256 of a model's weights as loaded: every tensor of its state dict, by name, in name order (the same
    digest whatever file or hub tag the weights came from)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def licence_of(spec) -> str:
    """The licences a method or family declares, when it declares them (``spec.licence``: the registry's licence
    field, where one is added); empty otherwise."""
    licence = getattr(spec, "licence", None)
    if licence is None:
        return ""
    return json.dumps(licence if isinstance(licence, (str, dict, list)) else str(licence))


def write_onnx(graph, example, out: Path, meta: dict[str, str]) -> None:
    """Trace ``graph`` on ``example`` and write it, with ``meta`` as its metadata, atomically at ``out``."""
    import onnx
    import torch

    buffer = __import__("io").BytesIO()
    # the tracer's notes (a shape read as a constant: the sizes are fixed on purpose) and the legacy exporter's
    # notice are not the user's concern
    with traceable(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), buffer, opset_version=OPSET, dynamo=False, input_names=["pixels"],
                          output_names=["logits", "scores", "labels"])
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with io.atomic_path(out) as tmp:
        onnx.save(model, str(tmp))


def require_onnx() -> None:
    """The ``onnx`` extra, before any model loads: one line with the install line otherwise."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise VplError("export needs onnx and onnxruntime: pip install 'vpltool[onnx]' (pip install -e '.[onnx]' in "
                       "vpltool's checkout)") from None


from .decoder import export_decoder  # noqa: E402
from .dense import export_dense  # noqa: E402

__all__ = ["OPSET", "EXPORTABLE", "NOT_EXPORTABLE", "META", "KIND", "ExportSummary", "parse_size", "size_text",
           "check_exportable", "check_target", "export_decoder", "export_dense", "require_onnx"]

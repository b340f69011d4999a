"""What the export modules share: the methods that can be exported, the checks made before any model loads, the
metadata keys, and the writer (:func:`write_onnx`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ... import io
from ...config.pgseg import EXPORTABLE_FAMILIES
from ...errors import VplError, install_extra

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
        "vpltool.outputs", "vpltool.licence", "vpltool.preprocess")
KIND = "segmenter"
# the photo's way into the graph (``vpltool.preprocess``): resized by Pillow's bicubic to the input size, ``[1, H, W,
# 3]`` uint8 (vpltool's loading workers' resize), or ``family:NAME``: that text-supervised family's own image tensor
PILLOW = "pillow-bicubic-uint8"


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
    if h * w > largest_photo():
        raise VplError(f"--size {spec}: {h * w:,} pixels, more than any photo vpltool decodes "
                       f"({largest_photo():,}, Pillow's limit); give the photos' own size")
    return h, w


def largest_photo() -> int:
    """The most pixels a photo vpltool reads may have: twice Pillow's ``MAX_IMAGE_PIXELS``, where Pillow refuses
    to decode (:mod:`vpltool.io.images`)."""
    from PIL import Image

    return 2 * (Image.MAX_IMAGE_PIXELS or 0) or 2**62


def check_output_memory(size: tuple[int, int], channels: int) -> None:
    """One line for a photo size whose graph outputs (logits and scores, ``channels`` each, float32, at the photo's
    size) need more memory than is free, before the model loads."""
    from ...models.dense.bands import available_bytes

    need, free = 8 * channels * size[0] * size[1], available_bytes()
    if free is not None and need > free:
        raise VplError(f"--size {size_text(size)}: the file's outputs at that size need {need / 2**30:.1f} GiB, "
                       f"{free / 2**30:.1f} GiB is free; export for smaller photos (resize them first)")


def size_text(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


# why the text-supervised families that export does not trace (config.pgseg.EXPORTABLE_FAMILIES) are refused
FAMILY_NOT_EXPORTABLE = {
    "talk2dino": "its DINO's antialiased resize (F.interpolate antialias=True) has no ONNX form in torch's exporter",
}


def check_exportable(dense: str | None, decoder: str | Path | None, family: str = "clip") -> None:
    """One line (exit 2) for what cannot be exported, before anything else is checked: a dense method whose graph is
    data-dependent (:data:`NOT_EXPORTABLE`), a text-supervised family that cannot be traced, or two sources at once."""
    if family != "clip":
        if family in EXPORTABLE_FAMILIES and decoder is None and dense in (None, "none"):
            return
        if family in FAMILY_NOT_EXPORTABLE:
            raise VplError(f"--model {family}:FILE: cannot be exported to ONNX: {FAMILY_NOT_EXPORTABLE[family]}")
        if family not in EXPORTABLE_FAMILIES:
            raise VplError(f"--model {family}:FILE: not exportable (export supports "
                           f"{', '.join(f + ':FILE' for f in EXPORTABLE_FAMILIES)})")
        raise VplError(f"--model {family}:FILE with {'--decoder' if decoder is not None else '--dense ' + str(dense)}"
                       ": export one source at a time")
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


def vpltool_version() -> str:
    from ... import __version__

    return __version__


def require_onnx() -> None:
    """The ``onnx`` extra, before any model loads: one line with the install line otherwise."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise VplError(f"export needs onnx and onnxruntime: {install_extra('onnx')}") from None


__all__ = ["OPSET", "FORMAT", "EXPORTABLE", "NOT_EXPORTABLE", "EXPORTABLE_FAMILIES", "FAMILY_NOT_EXPORTABLE",
           "META", "KIND", "PILLOW", "ExportSummary", "parse_size", "size_text", "check_exportable", "check_target",
           "traceable", "state_digest", "largest_photo", "check_output_memory", "licence_of", "write_onnx",
           "require_onnx", "vpltool_version"]

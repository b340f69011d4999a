"""Running an exported file with onnxruntime on the CPU: :class:`OnnxFile` (one photo at a time, the Python door
``vpltool.onnx_segmenter``) and :func:`run_onnx_segment` (``segment DATA --onnx FILE``: the palette PNGs and
``_stage.json`` that `segment` and `predict` write, so `eval` scores them by class name).

Per photo: its size checked against the recorded one (a traced graph has fixed sizes), resized to the recorded
input size by Pillow's bicubic (as vpltool's loading workers), the graph run, its ``labels`` the mask. Multi-scale,
flip and the CRF are not in the file and not run here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ... import io
from ...errors import VplError, install_extra
from .common import FORMAT, KIND, PILLOW, parse_size, size_text


def read_metadata(path: str | Path) -> dict[str, str]:
    """An exported file's ``vpltool.*`` metadata, read through onnxruntime (no session run); one line for a file
    that is missing, no ONNX model, or not `export`'s."""
    path = Path(path)
    if not path.is_file():
        raise VplError(f"--onnx {path}: no such file; give a file `vpltool export` wrote")
    return _session(path)[1]


def _session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise VplError(f"--onnx needs onnxruntime: {install_extra('onnx')}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the shape-merge notes of a traced graph are not the user's concern
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own classes for a file it cannot read
        # onnxruntime's own text repeats the path it was given, cut where it likes: its status code says what failed
        status = re.search(r"\[ONNXRuntimeError\] : \d+ : (\w+)", str(e))
        raise VplError(f"--onnx {path}: not an ONNX model onnxruntime can load "
                       f"({status.group(1) if status else type(e).__name__})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("vpltool.kind") != KIND:
        raise VplError(f"--onnx {path}: not a file `vpltool export` wrote (no vpltool.kind metadata)")
    if meta.get("vpltool.format") != FORMAT:
        raise VplError(f"--onnx {path}: format {meta.get('vpltool.format')}, this vpltool reads {FORMAT}; export "
                       "it again with this vpltool")
    return session, meta


class OnnxFile:
    """An exported file loaded once into an onnxruntime CPU session.

    Attributes:
        path: the file. classes: ``('background', *names)`` its labels index. size: ``(H0, W0)`` the photos' size it
        was exported for. input_size: ``(H, W)`` the model's input. source: ``decoder`` or ``dense:METHOD``.
        metadata: every ``vpltool.*`` entry, as strings.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise VplError(f"--onnx {self.path}: no such file; give a file `vpltool export` wrote")
        self.session, self.metadata = _session(self.path)
        self.classes = tuple(json.loads(self.metadata["vpltool.classes"]))
        self.size = parse_size(self.metadata["vpltool.photo_size"])
        self.input_size = parse_size(self.metadata["vpltool.input_size"])
        self.source = self.metadata["vpltool.source"]

    def check_size(self, name: str, size: tuple[int, int]) -> None:
        """One line for a photo whose ``(H, W)`` is not the size the file was exported for."""
        if tuple(size) != self.size:
            raise VplError(f"{name}: {size_text(size)} pixels, but {self.path} was exported for "
                           f"{size_text(self.size)} photos (a traced graph has fixed sizes); export one with "
                           f"--size {size_text(size)}")

    def run(self, rgb: np.ndarray, name: str = "the photo") -> dict[str, np.ndarray]:
        """One ``[H0, W0, 3]`` uint8 RGB photo -> ``{"logits", "scores", "labels"}``: ``[N, H0, W0]`` float32,
        ``[C + 1, H0, W0]`` float32, ``[H0, W0]`` int64 (the graph's outputs, batch dimension dropped)."""
        self.check_size(name, rgb.shape[:2])
        pixels = self.pixels(np.ascontiguousarray(rgb))
        logits, scores, labels = self.session.run(["logits", "scores", "labels"], {"pixels": pixels})
        return {"logits": logits[0], "scores": scores[0], "labels": labels[0].astype(np.int64)}

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """The graph's input for one photo (``vpltool.preprocess``): Pillow's bicubic resize to the input size,
        ``[1, H, W, 3]`` uint8, or a text-supervised family's own image tensor ``[1, 3, h, w]`` float32."""
        how = self.metadata.get("vpltool.preprocess", PILLOW)
        if how == PILLOW:
            from ...models.backbones.preprocess import Preprocess

            return Preprocess.resize(rgb, self.input_size).numpy()[None]
        if how.startswith("family:"):
            from ..segment_text import text_family_of

            settings = json.loads(self.metadata["vpltool.settings"])
            return text_family_of(how.removeprefix("family:")).image_tensor(rgb, settings["short_side"]).numpy()
        raise VplError(f"--onnx {self.path}: its input is made by {how!r}, which this vpltool does not know; "
                       "export it again with this vpltool")

    def params(self) -> dict:
        """What a `segment --onnx` folder records of the file: its path and sha256, source, sizes and settings."""
        return {"onnx": io.file_identity(self.path.resolve()), "source": self.source,
                "photo_size": list(self.size), "input_size": list(self.input_size),
                "settings": json.loads(self.metadata.get("vpltool.settings", "{}"))}


def run_onnx_segment(dataset, out: str | Path, onnx_file: str | Path, runtime, *, shard=None,
                     on_item: Callable[[int], None] | None = None,
                     on_start: Callable[[int], None] | None = None, overlay: bool = False) -> io.StageSummary:
    """``segment DATA --onnx FILE``: masks ``<out>/<id>.png`` over the file's classes, then ``_stage.json``. Every
    photo's size is checked against the file's before the folder opens (one line naming the photo and the
    ``--size`` to export with)."""
    from ...config import NOT_COMPARED
    from ...device import shard_from_env
    from ...io.overlays import overlay_folder, write_overlays
    from ...runtime.batches import header_sizes
    from ...runtime.numerics import run_numerics

    out = io.check_folder_target(out)
    io.check_outputs("segment", {"--out": (out, "stage"),
                                 "--overlay": (overlay_folder(out) if overlay else None, "side")},
                     inputs={"the dataset": dataset.root, "--onnx": onnx_file}, protected=dataset.folders(),
                     overwrite=runtime.overwrite)
    model = OnnxFile(onnx_file)
    sizes = header_sizes([item.image for item in dataset.items], runtime.workers or 1)
    for item, size in zip(dataset.items, sizes):
        model.check_size(str(item.image), size)
    folder = io.StageFolder(out, "segment", {"onnx": model.params(), "classes": list(model.classes[1:])},
                            overwrite=runtime.overwrite, not_compared=NOT_COMPARED, inputs=dataset.inputs(),
                            shard=shard_from_env(shard), numerics=run_numerics())

    def work(todo: list[str]) -> None:
        items = dataset.by_id()
        for i in todo:
            labels = model.run(io.load_image(items[i].image), str(items[i].image))["labels"]
            io.write_mask(io.mask_path(out, i), labels.astype(np.uint8), i)
            if on_item is not None:
                on_item(1)

    summary = folder.run([it.id for it in dataset.items], io.mask_path, work, on_start, classes=list(model.classes))
    if overlay:
        write_overlays(dataset.items, out, list(model.classes), "segment", runtime.overwrite)
    return summary


__all__ = ["OnnxFile", "read_metadata", "run_onnx_segment"]

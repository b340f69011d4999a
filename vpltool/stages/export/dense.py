"""A training-free dense CLIP method with a fixed class list as ONNX: `segment --dense METHOD` on photos of one
size, the text queries baked in."""

from __future__ import annotations

import json
from pathlib import Path

from ...config import SegmentConfig
from ...errors import VplError
from ...models import ModelSpec
from .common import (
    FORMAT,
    KIND,
    PILLOW,
    ExportSummary,
    check_exportable,
    check_output_memory,
    check_target,
    licence_of,
    require_onnx,
    size_text,
    state_digest,
    vpltool_version,
    write_onnx,
)
from .graphs import DenseGraph


def export_dense(spec: ModelSpec, cfg: SegmentConfig, names: list[str], out: str | Path, size: tuple[int, int], *,
                 overwrite: bool = False) -> ExportSummary:
    """Write ``out``: ``cfg.dense`` on the CLIP of ``spec`` for photos of ``size`` ``(H0, W0)``, over
    ``['background', *names]`` (the entries as `segment --classes` takes them: ``cat|kitten`` synonyms), the
    queries `segment` makes of ``cfg``'s templates and background words.

    The names, templates, background words and the method are checked (and the CLIP's tokenizer made) before the
    output file is, and everything before the model loads."""
    import torch

    from ...config.dense import DENSE_SPECS
    from ...models.dense.bands import check_photo_memory, working_size
    from ...models.dense.segmentor import query_rows, settings_params, short_side_size
    from ..segment import check_dense, class_names, load_dense, resolve_queries

    check_exportable(cfg.dense, None)  # a method that cannot be exported: its reason, before anything else
    synonyms, templates, background = resolve_queries(names, cfg)
    method = check_dense(cfg, spec)
    settings = cfg.resolved()
    if working_size(*size, settings.max_side) != tuple(size):
        raise VplError(f"--max-side {settings.max_side}: export computes the photo at its own size "
                       f"({size_text(size)}); drop --max-side, or resize the photos and export a smaller --size")
    check_photo_memory([f"--size {size_text(size)}"], [size], sum(map(len, synonyms)) + len(background), settings,
                       scores=len(names) + 1)
    check_output_memory(size, sum(map(len, synonyms)) + len(background) + len(names) + 1)
    out = check_target(out, overwrite, {})
    require_onnx()
    device = torch.device("cpu")
    bb = load_dense(spec, method, device)
    text, query_class = query_rows(bb, synonyms, templates, background)
    classes = ("background", *class_names(names))
    view = short_side_size(size[0], size[1], settings.short_side, settings.long_side)
    graph = DenseGraph(bb, text, query_class, len(classes), settings, size).eval()
    example = torch.zeros(1, *view, 3, dtype=torch.uint8)
    meta = {"vpltool.kind": KIND, "vpltool.format": FORMAT, "vpltool.version": vpltool_version(),
            "vpltool.source": f"dense:{cfg.dense}", "vpltool.preprocess": PILLOW,
            "vpltool.photo_size": size_text(size),
            "vpltool.input_size": size_text(view), "vpltool.classes": json.dumps(list(classes)),
            "vpltool.source_sha256": state_digest(bb.model),
            "vpltool.model": json.dumps(spec.identity()),
            "vpltool.settings": json.dumps({"dense": cfg.dense, **settings_params(settings),
                                            "queries": synonyms, "templates": list(templates),
                                            "background_words": list(background), "resize": "pillow-bicubic"}),
            "vpltool.outputs": "logits: each query's cosine logits (after PAMR where the method has it); scores: "
                               "the class probabilities; labels: the argmax after the method's thresholds",
            "vpltool.licence": licence_of(DENSE_SPECS[cfg.dense])}
    write_onnx(graph, example, out, meta)
    return ExportSummary(Path(out), f"dense:{cfg.dense}", tuple(size), classes)


__all__ = ["export_dense"]

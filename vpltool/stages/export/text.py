"""A text-supervised family's checkpoint (`train-text` / `train-pgseg`: PGSeg, GroupViT releases) with a fixed class
list as ONNX: `segment --model pgseg:FILE` on photos of one size, the class text baked in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ... import io
from .common import (
    FORMAT,
    KIND,
    ExportSummary,
    check_exportable,
    check_output_memory,
    check_target,
    licence_of,
    require_onnx,
    size_text,
    vpltool_version,
    write_onnx,
)
from .graphs import TextGraph


def export_text(family: str, checkpoint: str | Path, names: list[str], out: str | Path, size: tuple[int, int], *,
                bg_thresh: float | None = None, short_side: int | None = None, slide: tuple[int, int] | None = None,
                background: str | None = None, overwrite: bool = False) -> ExportSummary:
    """Write ``out``: the ``family`` checkpoint for photos of ``size`` ``(H0, W0)`` over ``['background', *names]``,
    its zero-shot settings `segment --model FAMILY:FILE`'s (None: the family's own). Checked before any model loads:
    the family, the options, the names, the checkpoint, the output file."""
    import torch

    from ...models.registry import load_model
    from ..segment_text import check_options, text_family_of, text_names, text_queries, zero_shot_settings

    check_exportable(None, None, family)
    own = zero_shot_settings(family)
    bg_thresh = own.bg_thresh if bg_thresh is None else bg_thresh
    short_side = own.short_side if short_side is None else short_side
    slide = own.slide if slide is None else slide
    check_options(bg_thresh, short_side, slide, own.min_side)
    names, bg_words = text_names(names, own.background if background is None else background)
    fam = text_family_of(family)
    fam.check_checkpoint(checkpoint)
    check_output_memory(size, len(names) + 1)
    out = check_target(out, overwrite, {"--model": checkpoint})
    require_onnx()
    device = torch.device("cpu")
    model = load_model(family, checkpoint, device)
    text = text_queries(fam, model, names, bg_words, device)
    graph = TextGraph(fam, model, text, len(names), bg_thresh, slide, size).eval()
    example = fam.image_tensor(np.zeros((*size, 3), dtype=np.uint8), short_side)  # [1, 3, h, w] float32
    classes = ("background", *names)
    meta = {"vpltool.kind": KIND, "vpltool.format": FORMAT, "vpltool.version": vpltool_version(),
            "vpltool.source": f"text:{family}", "vpltool.photo_size": size_text(size),
            "vpltool.input_size": size_text(example.shape[-2:]), "vpltool.preprocess": f"family:{family}",
            "vpltool.classes": json.dumps(list(classes)),
            "vpltool.source_sha256": io.sha256_file(checkpoint),
            "vpltool.model": json.dumps({"model": family, "pretrained": str(checkpoint)}),
            "vpltool.settings": json.dumps({"bg_thresh": bg_thresh, "short_side": short_side, "slide_crop": slide[0],
                                            "slide_stride": slide[1], "background_words": list(bg_words),
                                            "templates": list(fam.TEMPLATES[own.templates]),
                                            "resize": f"the {family} family's image tensor, outside the graph"}),
            "vpltool.outputs": "logits and scores: the zero-shot logits of background and the classes; labels: the "
                               "argmax, a background word's pixels background",
            "vpltool.licence": licence_of(fam)}
    write_onnx(graph, example, out, meta)
    return ExportSummary(Path(out), f"text:{family}", tuple(size), classes)


__all__ = ["export_text"]

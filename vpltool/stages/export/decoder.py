"""A trained decoder with its frozen CLIP as ONNX: ``predict --scales 1 --no-flip`` on photos of one size."""

from __future__ import annotations

import json
from pathlib import Path

from ... import io
from ...config.stages import MAX_TOKENS
from ...decoder import input_long_side, view_size
from ...errors import VplError
from .common import (
    FORMAT,
    KIND,
    PILLOW,
    ExportSummary,
    check_output_memory,
    check_target,
    licence_of,
    require_onnx,
    size_text,
    state_digest,
    vpltool_version,
    write_onnx,
)
from .graphs import DecoderGraph


def check_decoder(f: io.TensorFile) -> None:
    """A decoder whose test view is `predict`'s default one (the long side resized by Pillow's bicubic, sides rounded
    up to the patch), with no second backbone: WeCLIP's views are bilinear on the normalised tensor, and WeCLIP+
    runs a frozen DINO beside CLIP."""
    cfg = f.meta("decoder_config")
    recipe = cfg.get("recipe", "vpl") if isinstance(cfg, dict) else "vpl"
    if recipe in ("weclip", "weclip+") or (isinstance(cfg, dict) and cfg.get("dino_model")):
        raise VplError(f"{f.path}: a decoder of --recipe {recipe} cannot be exported: its test views are resized "
                       "bilinearly on the normalised tensor (and WeCLIP+ runs a DINO beside CLIP); export a decoder "
                       "of --recipe vpl or cpu")


def export_decoder(decoder_file: str | Path, out: str | Path, size: tuple[int, int], *, long_side: int | None = None,
                   overwrite: bool = False) -> ExportSummary:
    """Write ``out``: the decoder of ``decoder_file`` and its frozen CLIP for photos of ``size`` ``(H0, W0)``, its
    classes its own, its input view ``predict``'s (long side ``long_side``, default 1.6 x its training crop).

    Checked before any model loads: the decoder file (its header), the recipe, the output file."""
    import torch

    from ...models import ModelSpec, load_model

    if long_side is not None and long_side < 1:
        raise VplError(f"--decoder-long-side {long_side}: must be at least 1 pixel")
    f = io.read_tensors(decoder_file, kind=io.DECODER_KIND, keys=())  # its header: one line for another file
    check_decoder(f)
    check_output_memory(size, len(f.classes))
    out = check_target(out, overwrite, {"the decoder": decoder_file})
    require_onnx()
    device = torch.device("cpu")
    digest = io.sha256_file(decoder_file)
    model, f = load_model("decoder", decoder_file, device)
    bb = load_model("clip", ModelSpec.from_identity(f.meta("model"), f.path), device)
    stats = model.cfg.input_stats()
    bb = bb.with_normalization(*stats) if stats else bb
    arch = f.meta("decoder_arch")
    side = input_long_side(long_side, f.meta("decoder_config")["crop_size"])
    view = view_size(bb, size[0], size[1], side, 1.0)
    tokens = (view[0] // bb.patch_size) * (view[1] // bb.patch_size)
    if tokens > MAX_TOKENS:  # predict's limit: attention memory grows with the square of the tokens
        raise VplError(f"--decoder-long-side {side}: the input view {size_text(view)} makes {tokens:,} patch tokens, "
                       f"above predict's limit {MAX_TOKENS}; pass a smaller --decoder-long-side")
    graph = DecoderGraph(bb, model.eval(), arch["blocks"], size).eval()
    example = torch.zeros(1, *view, 3, dtype=torch.uint8)
    classes = tuple(f.classes)
    meta = {"vpltool.kind": KIND, "vpltool.format": FORMAT, "vpltool.version": vpltool_version(),
            "vpltool.source": "decoder", "vpltool.preprocess": PILLOW, "vpltool.photo_size": size_text(size),
            "vpltool.input_size": size_text(view),
            "vpltool.classes": json.dumps(list(classes)), "vpltool.source_sha256": digest,
            "vpltool.model": json.dumps({**f.meta("model"), "state_sha256": state_digest(bb.model)}),
            "vpltool.settings": json.dumps({"scales": [1.0], "flip": False, "crf": False, "long_side": side,
                                            "resize": "pillow-bicubic"}),
            "vpltool.outputs": "logits: the decoder's class logits; scores: their softmax; labels: the argmax",
            "vpltool.licence": licence_of(model.cfg)}
    write_onnx(graph, example, out, meta)
    return ExportSummary(out, "decoder", tuple(size), classes)

"""The `export` command: a trained decoder, or a dense CLIP method with its class list, as an ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED, SegmentConfig
from .dense_options import DENSE
from .options import MODEL, ModelConfigDir, OutFile, OverwriteFile, PretrainedOpt, Verbose, warn_inert
from .output import say

_S = SegmentConfig
EXPORT_CHOICES = "none | maskclip | sclip | clearclip | naclip"


def export_cmd(
    out: OutFile,
    size: Annotated[str, typer.Option(help="HxW: the size of the photos the file will segment, in pixels (a traced "
                                      "graph has fixed sizes; a photo of another size is refused).",
                                      show_default=False)],
    decoder: Annotated[Optional[Path], typer.Option(help="A train-decoder decoder.safetensors: exported with its "
                                                    "frozen CLIP and its own classes, as predict --scales 1 "
                                                    "--no-flip (no CRF).", show_default=False)] = None,
    decoder_long_side: Annotated[Optional[int], typer.Option(help="With --decoder: the input's long side, as "
                                                             "predict's --long-side [default: 1.6 x the decoder's "
                                                             "training crop].", show_default=False)] = None,
    dense: Annotated[Optional[str], typer.Option(help=f"A training-free dense CLIP method: {EXPORT_CHOICES}, its "
                                                 "text queries for --classes baked in, as segment runs it (the "
                                                 "others cannot be exported: each is refused with its reason).",
                                                 show_default=False)] = None,
    classes: Annotated[Optional[str], typer.Option(help="With --dense: class names, a file with one per line or "
                                                   "a,b,c; synonyms as cat|kitten.", show_default=False)] = None,
    templates: Annotated[str, typer.Option(help="With --dense: prompt templates, as segment's.")] = _S.templates,
    background: Annotated[Optional[str], typer.Option(help="Background words, as segment's [default: "
                                                      f"{_S.background}; with --model FAMILY:FILE the family's].",
                                                      show_default=False)] = None,
    knobs: dict = DENSE,
    model: Annotated[str, typer.Option("--model", rich_help_panel=MODEL,
                                       help="With --dense: the CLIP, as segment's --model; or pgseg:FILE, a "
                                            "text-supervised checkpoint (train-text / train-pgseg, a GroupViT / "
                                            "PGSeg release) exported with --classes as segment --model pgseg:FILE "
                                            "runs it.")] = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    model_config_dir: ModelConfigDir = None,
    overwrite: OverwriteFile = False,
    verbose: Verbose = False,
) -> None:
    """Export a trained decoder (with its frozen CLIP), a training-free dense CLIP method or a PGSeg checkpoint (with
    its class list) as one ONNX file (opset 18, torch's exporter) that onnxruntime runs on the CPU: `vpltool segment
    DATA --onnx FILE`, or vpltool.onnx_segmenter(FILE) from Python. The file records the photo size, the classes,
    the settings and the source model's sha256 in its metadata. Multi-scale, flip and the CRF stay outside the
    graph, and so does the photo's resize (Pillow's bicubic; PGSeg's own). Needs the onnx extra: pip install -e
    '.[onnx]' in vpltool's checkout.

    \b
    Example:
      vpltool export -o decoder.onnx --decoder runs/demo/decoder/decoder.safetensors --size 288x256
      vpltool export -o naclip.onnx --dense naclip --classes cat,dog,sofa --size 480x640
      vpltool export -o pgseg.onnx --model pgseg:runs/gv/pgseg.safetensors --classes cat,dog --size 480x640
    """
    from ..data.class_files import parse_class_names
    from ..errors import VplError
    from ..stages.export import check_exportable, export_decoder, export_dense, export_text, parse_size
    from .segment import _slide
    from .values import segmenting_model

    family, checkpoint = segmenting_model(model)
    check_exportable(dense, decoder, family)  # what cannot be exported, before the output file's check
    hw = parse_size(size)
    if decoder is None and dense is None and family == "clip":
        raise VplError(f"export: pass --decoder FILE (a trained decoder), --dense {EXPORT_CHOICES} or --model "
                       "pgseg:FILE, with --classes for the last two")
    if decoder is not None and classes is not None:
        raise VplError(f"--classes with --decoder {decoder}: the decoder is exported with its own classes (predict's "
                       "open vocabulary is not exported); drop --classes")
    if decoder is None and classes is None:
        raise VplError(f"{'--dense ' + dense if dense else '--model ' + model}: pass --classes with the names the "
                       "file will segment (their text is baked in)")
    if decoder is not None:
        s = export_decoder(decoder, out, hw, long_side=decoder_long_side, overwrite=overwrite)
    elif family != "clip":
        s = export_text(family, checkpoint, list(parse_class_names(classes)), out, hw, background=background,
                        short_side=knobs["short_side"], slide=_slide(family, knobs["slide_crop"],
                                                                     knobs["slide_stride"]), overwrite=overwrite)
    else:
        names = parse_class_names(classes)
        cfg = SegmentConfig.of(dense=dense, templates=templates, classes=names, **knobs,
                               background=_S.background if background is None else background)
        warn_inert(cfg)
        from .values import model_spec

        s = export_dense(model_spec(model, pretrained, model_config_dir), cfg, list(names), out, hw,
                         overwrite=overwrite)
    say(f"[green]✓[/] export ({s.source}): {len(s.classes)} classes, photos of {hw[0]}x{hw[1]} → {s.out}")

"""`vpltool export` and `segment --onnx`'s bad input, as rows of the table of ``robustness_cases.py`` (imported at
its end, after the tenth round's): each is refused in one line before any model loads."""

from __future__ import annotations

from collections.abc import Iterator

from robustness_cases import TINY, Workspace, case


@case("export --dense sam3 over an existing file: refused as a method that cannot be exported, not as an existing "
      "file", "--dense sam3: cannot be exported to ONNX: SAM 3 keeps or drops each detected mask per photo")
def _export_sam3_over_a_file(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("export_sam3")
    out.mkdir()
    (out / "m.onnx").write_bytes(b"a user's file")
    yield ["export", "-o", out / "m.onnx", "--dense", "sam3", "--classes", "cat", "--size", "96x96", *TINY]


@case("export --size without a width", "--size 96x: give the photos' height x width in pixels")
def _export_bad_size(ws: Workspace) -> Iterator[list[object]]:
    yield ["export", "-o", ws.out("export_size") / "m.onnx", "--decoder", ws.decoder / "decoder.safetensors",
           "--size", "96x"]


@case("export --dense naclip without --classes", "--dense naclip: pass --classes with the names the file will")
def _export_no_classes(ws: Workspace) -> Iterator[list[object]]:
    yield ["export", "-o", ws.out("export_classes") / "m.onnx", "--dense", "naclip", "--size", "96x96", *TINY]


@case("segment --onnx of a file that is no ONNX model", "not an ONNX model onnxruntime can load")
def _segment_onnx_not_onnx(ws: Workspace) -> Iterator[list[object]]:
    bad = ws.out("onnx_bad")
    bad.mkdir()
    (bad / "x.onnx").write_bytes(b"not onnx")
    yield ["segment", ws.world, "--split", "val", "--onnx", bad / "x.onnx", "-o", ws.out("onnx_bad_out")]

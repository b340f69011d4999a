"""The tenth round of bad input, as rows of the table of ``robustness_cases.py`` (which imports this module last, so
the rows follow its own in docs/robustness.md): each row fails with its fix reverted."""

from __future__ import annotations

from collections.abc import Iterator

import bad_output_method as bom  # tests/ is on sys.path

from robustness_cases import CPU, TINY, Workspace, case

SEG_VAL = ["--split", "val", *TINY, *CPU, "--classes", "star,circle"]


# ---- H: a --dense method's output is checked before a mask is written (vpltool.stages._masks), built-in or plugin
def _bad_output_case(damage: str, *expect: str, command: str = "segment"):
    @case(f"segment --dense by a method (a plugin) whose output is damaged: {damage} (once written and certified)",
          "--dense test-bad-output (plugin this process): its output for world/images/val_00000", *expect,
          "so it is not used: fix the plugin")
    def _row(ws: Workspace) -> Iterator[list[object]]:
        with bom.registered(damage) as method:
            yield ["segment", ws.world, "-o", ws.out("seg_bad_output"), *SEG_VAL, "--dense", method]

    return _row


_bad_output_case("a label past the classes", "holds labels from 0 to 3 (1 pixel outside 0..2 and not 255)")
_bad_output_case("labels past 255", "holds labels from 300 to ", "outside 0..2 and not 255")
_bad_output_case("negative labels", "holds labels from -1 to ")
_bad_output_case("a half-size label map", "is a 48x48 label map, the photo is 96x96")
_bad_output_case("float labels", "holds float32 labels, not integers (class indices)")
_bad_output_case("NaN probabilities", "gives 1 probability that is NaN or inf")
_bad_output_case("probabilities above 1", "probabilities outside [0, 1]")
_bad_output_case("probabilities of another shape", "gives probabilities of shape (2, 96, 96), not (3, 96, 96)")


@case("predict --classes --dense by a method whose labels pass the classes (the same check as segment's)",
      "--dense test-bad-output (plugin this process): its output for world/images/val_00000",
      "outside 0..2 and not 255")
def _predict_bad_output(ws: Workspace) -> Iterator[list[object]]:
    with bom.registered("a label past the classes") as method:
        yield ["predict", ws.decoder / "decoder.safetensors", "--split", "val", "-o", ws.out("pred_bad_output"),
               "--classes", "star,circle", "--dense", method, *CPU]


@case("cam --dense by a method whose postprocess gives a half-size label map (once a RuntimeError in its maps)",
      "--dense test-bad-output (plugin this process): its output for world/images/train_00000",
      "label map, the photo is 96x96")
def _cam_bad_output(ws: Workspace) -> Iterator[list[object]]:
    with bom.registered("a half-size label map") as method:
        yield ["cam", ws.world, "--split", "train", "-p", ws.text, "-o", ws.out("cams_bad_output"), "--dense",
               method, *CPU]


@case("Python: a segmenter whose method gives labels past the classes (once returned as they were)",
      "VplError: method test-bad-output (plugin this process): its output for image (a ndarray)",
      "outside 0..1 and not 255", python=True)
def _py_bad_output(ws: Workspace) -> Iterator[list[object]]:
    with bom.registered("a label past the classes") as method:
        yield [f"s = vpltool.segmenter({method!r}, model='vpl-test-vit', pretrained='none', device='cpu', "
               "templates='a photo of a {}.', background='grass,sky')",
               "s(np.zeros((32, 32, 3), np.uint8), ['star'])"]

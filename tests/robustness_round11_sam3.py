"""The eleventh round's rows for a new user of SAM 3 (``--dense sam3``, ``--dense activesam``), as rows of the table
of ``robustness_cases.py`` (which imports this module last): each row fails with its fix reverted."""

from __future__ import annotations

from collections.abc import Iterator

from robustness_cases import Workspace, _no_sam3_load, _sam3_args, _sam3_weights, case


@case("segment --dense activesam --preview-resolution 500 (not a multiple of SAM 3's 14-pixel patch)",
      "--preview-resolution 500: not a multiple of SAM 3's 14-pixel patch; give 490 or 504")
def _activesam_preview_off_patch(ws: Workspace) -> Iterator[list[object]]:
    with _no_sam3_load():
        yield _sam3_args(ws, "activesam", "seg_activesam", "--sam3-weights", _sam3_weights(ws),
                         "--preview-resolution", "500")


@case("segment --dense sam3 with --model, --pretrained and --templates, which it never reads (no CLIP)",
      "--model ViT-L-14 has no effect with --dense sam3", "--pretrained laion2b has no effect with --dense sam3",
      "--templates clip-es has no effect with --dense sam3", exit_code=0,
      leaves=("seg_sam3_clip_options/*",), tsv="seg_sam3_weights_and_model")
def _sam3_clip_options(ws: Workspace) -> Iterator[list[object]]:
    yield _sam3_args(ws, "sam3", "seg_sam3_clip_options", "--sam3-weights", _sam3_weights(ws), "--model",
                     "ViT-L-14", "--pretrained", "laion2b", "--templates", "clip-es")


@case("doctor --dense sam3 without --sam3-weights (which file, and how to get it)",
      "1 weights file(s) missing (above)")
def _doctor_sam3_missing(ws: Workspace) -> Iterator[list[object]]:
    yield ["doctor", "--dense", "sam3"]

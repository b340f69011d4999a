"""The eleventh round's rows for `train-toy-sam3` (the toy SAM 3), as rows of the table of ``robustness_cases.py``
(imported at its end): its folder output that is a file, a weights file of another kind in it, and a --data folder
that is no world, each one line before any model is built."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

from robustness_cases import Workspace, case


@case("train-toy-sam3 OUT where OUT is a file", "a_file: exists and is not a folder; choose a folder for the model")
def _toy_sam3_out_is_a_file(ws: Workspace) -> Iterator[list[object]]:
    target = ws.root / "toy_sam3_out" / "a_file"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("the user's\n")
    yield ["train-toy-sam3", target, "--data", ws.world]


@case("train-toy-sam3 OUT whose model.safetensors is the run's text prototypes (no --overwrite)",
      "model.safetensors: holds text prototypes (`text-prototypes`), not a toy SAM 3's weights (`train-toy-sam3`)")
def _toy_sam3_over_prototypes(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.root / "toy_sam3_prototypes"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ws.text, folder / "model.safetensors")
    yield ["train-toy-sam3", folder, "--data", ws.world]


@case("train-toy-sam3 --data a folder without images/ (the run's features)",
      "no images/ folder; pass a folder written by make-world")
def _toy_sam3_data_not_a_world(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-sam3", ws.out("toy_sam3_no_world"), "--data", ws.features]

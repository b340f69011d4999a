"""The fifteenth round's rows for `train-toy-radio` (the toy RADIO of `--dense radseg`), as rows of the table of
``robustness_cases.py`` (imported at its end): its folder output that is a file, a record of another kind in it,
and sizes a toy cannot take, each one line before anything is trained or written."""

from __future__ import annotations

from collections.abc import Iterator

from robustness_cases import Workspace, case


@case("train-toy-radio OUT where OUT is a file",
      "a_file: exists and is not a folder; choose a folder for the toy RADIO")
def _toy_radio_out_is_a_file(ws: Workspace) -> Iterator[list[object]]:
    target = ws.root / "toy_radio_out" / "a_file"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("the user's\n")
    yield ["train-toy-radio", target]


@case("train-toy-radio OUT whose model.json is the user's file (no --overwrite)",
      "model.json", "--overwrite")
def _toy_radio_over_a_user_record(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.root / "toy_radio_user_json"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text('{"mine": 1}\n')
    yield ["train-toy-radio", folder]


@case("train-toy-radio --side 100 (not a multiple of C-RADIOv3's 16-pixel patch)",
      "--side 100: give a multiple of 16 pixels")
def _toy_radio_side(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-radio", ws.out("toy_radio_side"), "--side", "100"]


@case("train-toy-radio --batch-size 1 (a contrastive loss needs two pairs)",
      "--batch-size 1: give at least 2")
def _toy_radio_batch(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-radio", ws.out("toy_radio_batch"), "--batch-size", "1"]


@case("train-toy-radio --width 63 (two attention heads)", "--width 63: give an even width")
def _toy_radio_width(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-radio", ws.out("toy_radio_width"), "--width", "63"]


@case("train-toy-radio --siglip-steps 0", "--siglip-steps 0: must be >= 1")
def _toy_radio_steps(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-toy-radio", ws.out("toy_radio_steps"), "--siglip-steps", "0"]


__all__: list[str] = []

"""The eleventh round's rows that the generators of ``test_fuzz.py`` found, as rows of the table of
``robustness_cases.py`` (imported at its end): each fails with its fix reverted.

* A folder named like a photo (``val_000000.png/``) in a folder of photos: `segment PHOTOS` skipped it without a
  word and made one mask fewer, exit 0 (a FIFO, a link to /dev/zero, a link loop were one line already).
* ``result.save(photo, overwrite=True)`` of a result of :func:`vpltool.onnx_segmenter`: it wrote over the photo it
  segmented (the other doors' results refused).
* The same command re-run after a SAM's weights were replaced in place (after a kill, or between two shards): it
  was refused as "other parameters (region_source, sam_weights differ); re-run with the same options", a fix that
  cannot work; it is a changed input.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import model_kinds as mk  # tests/ is on sys.path
from robustness_round11_ledger import killed_before_finish

from robustness_cases import CPU, TEXT_ARGS, TINY, Workspace, case, cli_ok


@case("segment PHOTOS where a folder is named like a photo, PHOTOS/val_000000.png/ (once: skipped silently, one "
      "mask fewer, exit 0)", "val_000000.png: a folder, not an image file; remove it, or put the image itself there")
def _photo_named_folder(ws: Workspace) -> Iterator[list[object]]:
    photos = ws.root / "photos_with_a_folder"
    if not photos.is_dir():
        photos.mkdir()
        for image in sorted((ws.world / "images").glob("val_*.png"))[1:]:
            shutil.copy(image, photos / image.name)
        (photos / "val_000000.png").mkdir()
    yield ["segment", photos, "-o", ws.out("seg_photo_folder"), *TINY, *CPU, "--dense", "maskclip", "--classes",
           "star", *TEXT_ARGS]


ONNX_PHOTO = "photo_onnx_save.png"


@case("Python: result.save(photo, overwrite=True) of vpltool.onnx_segmenter(FILE)'s result, the photo it segmented "
      "(once written over)", f"{ONNX_PHOTO}: is also this run's input (the photo this result segmented); writing "
      "there would destroy it: choose another path", python=True)
def _onnx_save_over_photo(ws: Workspace) -> Iterator[list[object]]:
    model = ws.root / "onnx_save" / "m.onnx"
    if not model.is_file():
        cli_ok("export", "-o", model, "--decoder", ws.decoder / "decoder.safetensors", "--size", "96x96")
        shutil.copy(sorted((ws.world / "images").glob("val_*.png"))[0], ws.root / ONNX_PHOTO)
    yield [f"r = vpltool.onnx_segmenter({os.path.relpath(model, ws.root)!r})({ONNX_PHOTO!r})",
           f"print(r.save({ONNX_PHOTO!r}, overwrite=True))"]


@case("segment --dense corrclip --region-masks sam killed before it finished, its SAM weights replaced in place, the "
      "same command again (once: 'other parameters (region_source, sam_weights differ); re-run with the same "
      "options', which it was)", "an interrupted run made from other inputs (region_source: the content of the "
      "model it reads changed (sha256 ", "sam_weights ", "its content changed (sha256 ",
      "pass --overwrite to redo every item")
def _sam_killed_swapped(ws: Workspace) -> Iterator[list[object]]:
    model, out = mk.fresh_copy(ws, "sam", "sam_killed_swapped"), ws.out("seg_sam_killed_swapped")
    args = mk.KINDS["sam"].command(ws, model, out)
    killed_before_finish(*args)
    mk.replace_with_another(mk.KINDS["sam"].weights_file(model), mk.KINDS["sam"].noise)
    yield args

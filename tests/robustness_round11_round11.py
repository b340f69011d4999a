"""The eleventh round's review list (``tests/data/robustness-round11.tsv``), one row per case of it that no row of the
earlier modules answers: each row names its id (``tsv=``), runs the review's command on the workspace's folders and
records what the user sees and what is left on disk (``robustness_cases.py`` imports this module last).

The review's ids answered by rows of other modules carry ``tsv=`` there; ``test_robustness_ids.py`` checks that every
id of the list has exactly one row.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from robustness_round11_ledger import killed_before_finish
from robustness_round11_plugins import _ending_plugins
from robustness_round11_records import _edited, _nan_cams, _sam_pseudo

from robustness_cases import (
    CORRCLIP,
    CPU,
    DECODER_ARGS,
    SEG_TINY,
    TINY,
    Workspace,
    _amg_folder,
    _no_sam3_load,
    _sam3_args,
    case,
    cli_ok,
    diverging_decoder,
    invoke,
)

# ---- sam-pseudo: a mask folder (amg.py's layout) with an entry named like a mask that is no mask file
MASK_ID = "train_000003"  # the image whose mask folder a row damages (the last: three items are read first)


def _amg_with(ws: Workspace, name: str, make) -> Path:
    """The workspace's one-mask-per-image amg folder, with ``make(path)`` making ``<MASK_ID>/1.png``."""
    folder = _amg_folder(ws, name)
    make(folder / MASK_ID / "1.png")
    return folder


def _sam_pseudo_args(ws: Workspace, masks: Path, out: str, *more: object) -> list[object]:
    return ["sam-pseudo", ws.cams, "-o", ws.out(out), "--masks", masks, "--workers", "1", *more]


@case("sam-pseudo --masks FOLDER where one image's 1.png is a folder (once a 98-line IsADirectoryError)",
      f"amg_dirpng/{MASK_ID}/1.png: a folder, not a mask file", tsv="sp_mask_dirpng")
def _sp_mask_dirpng(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo_args(ws, _amg_with(ws, "amg_dirpng", lambda p: p.mkdir()), "sp_dirpng")


@case("sam-pseudo --masks FOLDER where one image's 1.png is a symlink loop (once a 90-line OSError)",
      f"amg_loop/{MASK_ID}/1.png: cannot be read", "looping symlink", tsv="sp_mask_loop")
def _sp_mask_loop(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo_args(ws, _amg_with(ws, "amg_loop", lambda p: p.symlink_to(p.name)), "sp_loop")


def _full_mask(path: Path) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((96, 96), 255, np.uint8)).save(path)


@case("sam-pseudo --masks FOLDER where one image's folder holds a hidden .1.png (skipped, as every reader skips a "
      "dot-file: 1.0 masks an image; once read as a mask)", "1.0 SAM masks an image", exit_code=0,
      leaves=("sp_hidden/", "sp_hidden/*"), tsv="sp_mask_hidden")
def _sp_mask_hidden(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo_args(ws, _amg_with(ws, "amg_hidden", lambda p: _full_mask(p.with_name(".1.png"))), "sp_hidden",
                           "--start", "argmax")


@case("sam-pseudo --masks FOLDER where one image's 1.png is a FIFO (once a hang)",
      f"amg_fifo/{MASK_ID}/1.png: a pipe (FIFO), not a mask file", tsv="sp_mask_fifo")
def _sp_mask_fifo(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo_args(ws, _amg_with(ws, "amg_fifo", lambda p: os.mkfifo(p)), "sp_fifo")


@case("sam-pseudo --masks FOLDER where one image's 1.png is a link to /dev/zero (once a hang, hashing an endless "
      "file)", f"amg_devzero/{MASK_ID}/1.png: a link to /dev/zero, a device, not a mask file", tsv="sp_mask_devzero")
def _sp_mask_devzero(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo_args(ws, _amg_with(ws, "amg_devzero", lambda p: p.symlink_to("/dev/zero")), "sp_devzero")


@case("sam-pseudo --masks sam2_masks, an existing folder of masks whose name starts like SAM 2's generator (once "
      "read as SAM 2 with config '_masks')", "✓ sam-pseudo", exit_code=0, leaves=("sp_sam2name/", "sp_sam2name/*"),
      tsv="sp_masks_named_sam2")
def _sp_masks_named_sam2(ws: Workspace) -> Iterator[list[object]]:
    masks = _amg_folder(ws, "amg_sam2name")
    named = ws.out("sam2_masks")
    masks.rename(named)
    with contextlib.chdir(ws.root):  # the folder given by its bare name, as a user types it
        yield ["sam-pseudo", ws.cams, "-o", ws.out("sp_sam2name"), "--masks", "sam2_masks", "--workers", "1",
               "--start", "argmax"]


@case("sam-pseudo --bg-exponent 1e308 (once exit 0 after numpy's 'overflow encountered in cast')",
      "--bg-exponent 1e+308: must be", tsv="sp_opt_bgexp_huge")
def _sp_bg_exponent_huge(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo_args(ws, _amg_folder(ws, "amg_bgexp"), "sp_bgexp", "--bg-exponent", "1e308")


# ---- sam-pseudo --masks sam3: an interrupted run resumed with its weights in the other layout, or replaced
def _sam3_interrupted(ws: Workspace, name: str) -> tuple[Path, Path]:
    """A tiny SAM 3 of the row's own (Hugging Face's layout) and a sam-pseudo --masks sam3 run of it killed after
    its masks were written (its last mask removed, no _stage.json)."""
    from vpltool.models.backbones.sam3_files import write_tiny

    weights = Path(write_tiny(ws.drop_after_case(ws.out(f"{name}_weights")), "hf"))  # 7 MB of the row's own
    out = ws.out(name)
    killed_before_finish("sam-pseudo", ws.cams, "-o", out, "--masks", "sam3", "--sam-weights", weights,
                         "--workers", "1")
    assert (out / "_run.json").is_file() and not (out / "_stage.json").exists()
    sorted(out.glob("*.png"))[-1].unlink()
    return weights, out


@case("sam-pseudo --masks sam3 resuming an interrupted run with its weights in Meta's layout (other files: refused "
      "as such, since the bytes cannot show the same weights; once 'other parameters (sam_weights differ)')",
      "sp_sam3_meta: an interrupted run made from other inputs (sam_weights ", "weights in Meta's sam3.pt where the "
      "record has Hugging Face's layout", tsv="sp_resume_sam3_meta_layout")
def _sp_resume_sam3_meta(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.backbones.sam3_files import write_tiny

    _, out = _sam3_interrupted(ws, "sp_sam3_meta")
    meta = ws.drop_after_case(ws.out("sp_sam3_meta_pt"))  # 7 MB of the row's own
    yield ["sam-pseudo", ws.cams, "-o", out, "--masks", "sam3", "--sam-weights", write_tiny(meta, "meta"), "--workers",
           "1"]


@case("sam-pseudo --masks sam3 resuming an interrupted run whose --sam-weights were replaced in place (once 'masks "
      "changed since', not the weights)", "(sam_weights: ", "model.safetensors changed (sha256 ",
      tsv="sp_resume_sam3_weights_replaced_inplace")
def _sp_resume_sam3_replaced(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.backbones.sam3_files import write_tiny

    weights, out = _sam3_interrupted(ws, "sp_sam3_inplace")
    other = write_tiny(ws.out("sp_sam3_other"), "hf", seed=1)
    shutil.copyfile(other / "model.safetensors", weights / "model.safetensors")
    shutil.rmtree(other)
    yield ["sam-pseudo", ws.cams, "-o", out, "--masks", "sam3", "--sam-weights", weights, "--workers", "1"]


# ---- after an --overwrite that failed, or was killed: the last good result is kept, and later stages read it
def _failed_overwrite(ws: Workspace, name: str) -> Path:
    """A finished sam-pseudo folder after `sam-pseudo --overwrite --merge max-iou` of CAMs with a NaN failed."""
    folder = _sam_pseudo(ws, name)
    r = invoke("sam-pseudo", _nan_cams(ws, f"{name}_nan_cams"), "-o", folder, "--overwrite", "--masks",
               _amg_folder(ws, f"{name}_amg"), "--start", "argmax", "--workers", "1", "--merge", "max-iou")
    assert r.exit_code == 2, r.output
    return folder


@case("eval of a sam-pseudo folder after an --overwrite of it failed (the last good result, scored; once 'no "
      "_stage.json naming its dataset')", "✓ eval: mIoU", exit_code=0, tsv="sp_after_failed_overwrite_eval")
def _sp_eval_after_failed_overwrite(ws: Workspace) -> Iterator[list[object]]:
    yield ["eval", _failed_overwrite(ws, "sp_ow")]


@case("eval of a sam-pseudo folder after an --overwrite of it was killed (the last good result, scored; once 'no "
      "_stage.json naming its dataset')", "✓ eval: mIoU", exit_code=0, tsv="sp_after_killed_overwrite_eval")
def _sp_eval_after_killed_overwrite(ws: Workspace) -> Iterator[list[object]]:
    folder = _sam_pseudo(ws, "sp_ow4")
    killed_before_finish("sam-pseudo", ws.cams, "-o", folder, "--overwrite", "--masks", _amg_folder(ws, "sp_ow4_amg"),
                         "--start", "argmax", "--workers", "1", "--merge", "max-iou")
    for left in ws.root.glob(".sp_ow4*"):  # what the kill left beside it (a later run of the command clears it)
        shutil.rmtree(left)
    yield ["eval", folder]


@case("train-decoder on a sam-pseudo folder after an --overwrite of it failed (the last good result; once 'no "
      "_stage.json; `vpltool crf` was interrupted', the wrong stage)", "✓ train-decoder", exit_code=0,
      leaves=("dec_ow3/", "dec_ow3/*", "dec_ow3/checkpoints/*"), tsv="sp_after_failed_overwrite2_train_decoder")
def _sp_decoder_after_failed_overwrite(ws: Workspace) -> Iterator[list[object]]:
    yield ["train-decoder", _failed_overwrite(ws, "sp_ow3"), "-p", ws.text, "-o", ws.out("dec_ow3"), *DECODER_ARGS]


# ---- SAM 3's weights (segment --dense sam3 --sam3-weights): damaged files, links, both layouts in one folder
def _tiny_sam3_state(seed: int = 0):
    from vpltool.models.backbones.sam3_files import tiny_state
    from vpltool.models.backbones.sam3_weights import tiny_config

    config = tiny_config()
    return config, tiny_state(config, seed)


def _s3_hf(ws: Workspace, name: str, edit=None, seed: int = 0) -> Path:
    """A tiny SAM 3 folder (Hugging Face's layout) whose state ``edit(state)`` changed first."""
    from vpltool.models.backbones.sam3_files import write_hf

    config, state = _tiny_sam3_state(seed)
    if edit is not None:
        edit(state)
    return write_hf(ws.drop_after_case(ws.out(name)), config, state)  # 7 MB of the case's own


def _s3_meta(ws: Workspace, name: str, edit=None) -> Path:
    from vpltool.models.backbones.sam3_files import write_meta

    config, state = _tiny_sam3_state()
    if edit is not None:
        edit(state)
    ws.out(name)
    return write_meta(ws.root / name, config, state)


BOX = "detr_decoder.box_head.layer2.weight"  # a tensor the forward reads (the review's)


def _set(name: str, value: float):
    def edit(state):
        state[name] = state[name].clone().fill_(value)
    return edit


def _first_float(state) -> str:
    return next(k for k, v in state.items() if v.is_floating_point())


def _sam3_seg(ws: Workspace, weights: Path | str, out: str) -> list[object]:
    return _sam3_args(ws, "sam3", out, "--sam3-weights", weights)


SAM3_FIX = "pass SAM 3's weights"


def _sam3_row(tsv: str, what: str, *expect: str, loading: bool = False):
    """A row of `segment --dense sam3 --sam3-weights W` where ``make(ws)`` returns W: refused before SAM 3 loads,
    or (``loading``: a NaN, an inf, every weight 0) while its tensors are read, before any photo (docs/backbones.md)."""
    def register(make):
        @case(f"segment --dense sam3 --sam3-weights {what}", *expect, tsv=tsv)
        def _sam3_weights_row(ws: Workspace) -> Iterator[list[object]]:
            weights = make(ws)
            with contextlib.nullcontext() if loading else _no_sam3_load():
                yield _sam3_seg(ws, weights, f"o_{tsv}")
        return make
    return register


@_sam3_row("sam3w_s3_nan", "a folder whose model.safetensors holds a NaN in a tensor the forward reads",
           f"s3_nan/model.safetensors: tensor '{BOX}' holds NaN or inf", SAM3_FIX, loading=True)
def _s3_nan(ws):
    return _s3_hf(ws, "s3_nan", _set(BOX, float("nan")))


@_sam3_row("sam3w_s3_inf", "a folder whose model.safetensors holds an inf",
           f"s3_inf/model.safetensors: tensor '{BOX}' holds NaN or inf", SAM3_FIX, loading=True)
def _s3_inf(ws):
    return _s3_hf(ws, "s3_inf", _set(BOX, float("inf")))


@_sam3_row("sam3w_s3_nan_unused", "a folder whose model.safetensors holds a NaN in detr_decoder.ref_point_head",
           "s3_nan_unused/model.safetensors: tensor 'detr_decoder.ref_point_head.layer1.bias' holds NaN or inf",
           SAM3_FIX, loading=True)
def _s3_nan_unused(ws):
    return _s3_hf(ws, "s3_nan_unused", _set("detr_decoder.ref_point_head.layer1.bias", float("nan")))


@_sam3_row("sam3w_s3_allzero", "a folder whose every weight is 0", "s3_allzero/model.safetensors: every weight is 0",
           SAM3_FIX, loading=True)
def _s3_allzero(ws):
    return _s3_hf(ws, "s3_allzero", lambda state: [v.zero_() for v in state.values() if v.is_floating_point()])


@_sam3_row("sam3w_s3_int_tensor", "a folder with one weight stored as int32",
           f"s3_int_tensor/model.safetensors: tensor '{BOX}' is int32", SAM3_FIX)
def _s3_int_tensor(ws):
    import torch

    def edit(state):
        state[BOX] = state[BOX].to(torch.int32)
    return _s3_hf(ws, "s3_int_tensor", edit)


@_sam3_row("sam3w_s3_weights_empty", "a folder whose model.safetensors is empty (0 bytes)",
           "s3_weights_empty/model.safetensors: not a readable safetensors file", SAM3_FIX)
def _s3_weights_empty(ws):
    folder = _s3_hf(ws, "s3_weights_empty")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@_sam3_row("sam3w_s3_weights_loop", "a folder whose model.safetensors is a symlink loop (once 'a config.json "
           "without model.safetensors')", "s3_weights_loop/model.safetensors: ", SAM3_FIX)
def _s3_weights_loop(ws):
    folder = _s3_hf(ws, "s3_weights_loop")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("model.safetensors")
    return folder


@_sam3_row("sam3w_s3_both_layouts_differ", "a folder holding model.safetensors (seed 1) and sam3.pt (seed 0), two "
           "models (once the Hugging Face file taken without a word)", "s3_both_layouts_differ", "sam3.pt",
           "model.safetensors")
def _s3_both_layouts(ws):
    from vpltool.models.backbones.sam3_files import write_meta

    folder = _s3_hf(ws, "s3_both_layouts_differ", seed=1)
    config, state = _tiny_sam3_state(0)
    write_meta(folder / "sam3.pt", config, state)
    return folder


@_sam3_row("sam3w_s3_loop_dir", "a symlink loop where the folder belongs (once 'no such file or folder')",
           "s3_loop_dir: a symbolic link loop", SAM3_FIX)
def _s3_loop_dir(ws):
    link = ws.out("s3_loop_dir")
    link.unlink(missing_ok=True)
    link.symlink_to("s3_loop_dir")
    return link


@_sam3_row("sam3w_s3_empty.pt", "an empty sam3.pt (0 bytes)", "s3_empty.pt: not a readable torch checkpoint",
           SAM3_FIX)
def _s3_empty_pt(ws):
    path = ws.root / "s3_empty.pt"
    path.write_bytes(b"")
    return path


@_sam3_row("sam3w_s3_loop.pt", "a sam3.pt that is a symlink loop (once 'no such file or folder')",
           "s3_loop.pt: a symbolic link loop", SAM3_FIX)
def _s3_loop_pt(ws):
    return _loop_pt(ws)


def _loop_pt(ws: Workspace) -> Path:
    link = ws.root / "s3_loop.pt"
    if not link.is_symlink():
        link.symlink_to("s3_loop.pt")
    return link


@_sam3_row("sam3w_s3_inf2.pt", "a sam3.pt (Meta's layout) holding an inf", "s3_inf2.pt: tensor ", "holds NaN or inf",
           SAM3_FIX, loading=True)
def _s3_inf2_pt(ws):
    return _s3_meta(ws, "s3_inf2.pt", lambda state: state[_first_float(state)].fill_(float("inf")))


@_sam3_row("sam3w_devzero", "a folder whose model.safetensors is a link to /dev/zero (once 'a config.json without "
           "model.safetensors')", "s3_weights_devzero/model.safetensors: ", SAM3_FIX)
def _s3_devzero(ws):
    folder = _s3_hf(ws, "s3_weights_devzero")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")
    return folder


@case("segment --dense corrclip --region-masks sam3 --sam-weights a sam3.pt that is a symlink loop (once 'no such "
      "file or folder')", "s3_loop.pt: a symbolic link loop", SAM3_FIX, tsv="region_masks_sam3_loop_pt")
def _regions_sam3_loop_pt(ws: Workspace) -> Iterator[list[object]]:
    with _no_sam3_load():
        yield ["segment", ws.world, "--split", "val", "--classes", "star,circle", "-o", ws.out("rm_loop"),
               "--region-masks", "sam3", "--sam-weights", _loop_pt(ws), *CORRCLIP]


# ---- the CPU linear route's cache file (VPLTOOL_CPU_LINEAR=auto): damaged, a FIFO, forged between two shards
LINEAR_SEG = ["--split", "val", *SEG_TINY, "--classes", "circle,star,square", "--dense", "naclip"]


@contextlib.contextmanager
def _linear_cache(ws: Workspace, name: str, make) -> Iterator[Path]:
    """VPLTOOL_CPU_LINEAR=auto with the cache folder ``name`` holding ``make(path)``'s cpu_linear.json; no product
    decided yet in this process (each is read from the cache, or measured). A measurement's timing is stubbed (every
    pair even: MKL's verdict): the row is about reading the cache, and timing every product took ~15 s here."""
    from vpltool.models.backbones import onednn

    folder = ws.out(name)
    folder.mkdir()
    make(folder / onednn.CACHE_NAME)
    with mock.patch.dict(os.environ, {"VPLTOOL_CPU_LINEAR": "auto", "VPLTOOL_CACHE_DIR": str(folder)}), \
            mock.patch.dict(onednn._DECIDED, clear=True), mock.patch.object(onednn, "_WARNED", set()), \
            mock.patch.object(onednn, "calibrate", lambda k, n, rows: [1.0] * onednn.PAIRS):
        yield folder


def _write_json(value):
    return lambda path: path.write_text(json.dumps(value))


def _products_str(path: Path) -> None:
    from vpltool.models.backbones import onednn

    key, what = onednn.machine_key()
    path.write_text(json.dumps({"format": onednn._FORMAT, "machines": {key: {**what, "products": "garbage"}}}))


for _tsv, _what, _make in (
        ("lin_cache_machines_list", "valid JSON of another shape ({'format': 1, 'machines': []})",
         _write_json({"format": 1, "machines": []})),
        ("lin_cache_products_str", "this machine's table with 'products': 'garbage'", _products_str),
        ("lin_cache_fifo", "a FIFO (once a hang)", os.mkfifo)):
    def _lin_row(ws: Workspace, _tsv=_tsv, _make=_make) -> Iterator[list[object]]:
        with _linear_cache(ws, f"cache_{_tsv}", _make):
            yield ["segment", ws.world, "-o", ws.out(f"seg_{_tsv}"), *LINEAR_SEG]

    case(f"segment at fp32 on the CPU (VPLTOOL_CPU_LINEAR=auto) with a cpu_linear.json cache that is {_what}: "
         "ignored with one warning and written anew (once a 445-line AttributeError, or a hang)",
         "cpu_linear.json: ", "ignored and measured again", exit_code=0,
         leaves=(f"seg_{_tsv}/", f"seg_{_tsv}/*", f"cache_{_tsv}/*"), shows_env=("VPLTOOL_CPU_LINEAR",),
         tsv=_tsv)(_lin_row)


# ---- the review's rows of round ten's fixes, and the steps after sam-pseudo
@case("eval of a sam-pseudo folder whose _stage.json dtype was edited (once scored as if the record were true)",
      "sp_dtype_lie: its _stage.json was edited after `vpltool sam-pseudo` wrote it", tsv="sp_dtype_lie_eval")
def _sp_dtype_lie_eval(ws: Workspace) -> Iterator[list[object]]:
    folder = _sam_pseudo(ws, "sp_dtype_lie")
    _edited(folder)
    yield ["eval", folder]


@case("train-decoder --precision fp32 on sam-pseudo masks made at bf16 (the fix names `vpltool cam`, whose "
      "--precision sets the masks' dtype: sam-pseudo's --precision auto follows its CAMs')",
      "made at bf16", "re-run `vpltool cam`", "then `vpltool sam-pseudo` on it", tsv="ref_sp_bf16_train_decoder_fp32")
def _sp_bf16_decoder_fp32(ws: Workspace) -> Iterator[list[object]]:
    from robustness_round10 import _amx_features

    made = ws.root / "sp_bf16_made"
    if not (made / "_stage.json").is_file():  # bf16 CAMs: --precision auto on a CPU with AMX
        with mock.patch.dict(os.environ, {"VPLTOOL_ASSUME_AMX": "1"}):
            cli_ok("cam", _amx_features(ws, "features_amx_for_sp"), "-p", ws.text, "-o", ws.out("cams_bf16"), *CPU)
        cli_ok("sam-pseudo", ws.root / "cams_bf16", "-o", made, "--masks", _amg_folder(ws, "amg_bf16"), "--start",
               "argmax", "--workers", "1")
    yield ["train-decoder", ws.copy(made, "sp_bf16"), "-p", ws.text, "-o", ws.out("dec_bf16_fp32"), *DECODER_ARGS,
           "--precision", "fp32"]


@case("train-decoder on sam-pseudo masks of the val split (trained, with one warning; once without a word)",
      "sp_val: pseudo masks of the dataset's 'val' split, whose images a decoder is scored on", exit_code=0,
      leaves=("dec_val/", "dec_val/*", "dec_val/checkpoints/*"), tsv="ds_train_decoder_on_val_pseudo")
def _decoder_on_val_pseudo(ws: Workspace) -> Iterator[list[object]]:
    made = ws.root / "sp_val_made"
    if not (made / "_stage.json").is_file():
        cli_ok("extract", ws.world, "--split", "val", "-o", ws.root / "features_val", *TINY, *CPU, "--workers", "1")
        cli_ok("cam", ws.root / "features_val", "-p", ws.text, "-o", ws.root / "cams_val", *CPU)
        masks = ws.out("amg_val")
        for f in sorted((ws.root / "cams_val").glob("*.safetensors")):
            (masks / f.stem).mkdir(parents=True)
            shutil.copy(next((_amg_folder(ws, "amg_val_one")).glob("*/0.png")), masks / f.stem / "0.png")
        cli_ok("sam-pseudo", ws.root / "cams_val", "-o", made, "--masks", masks, "--start", "argmax", "--workers", "1")
    yield ["train-decoder", ws.copy(made, "sp_val"), "-p", ws.text, "-o", ws.out("dec_val"), *DECODER_ARGS]


def _choice_masks_edited(ws: Workspace, name: str, refinement: str, sam: bool = False) -> Path:
    """A run folder of two scored candidates (``none`` and ``caa``; ``sam``: caa's masks a `sam-pseudo` folder of
    its CAMs), then ``refinement``'s masks edited to background after its score, in place (their PNG chunks kept:
    only the pixels)."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    from robustness_cases import _choice_run

    run = _choice_run(ws, name)
    if sam:  # none+sam: sam-pseudo masks of the run's own CAMs, RUN/sam/pseudo, scored on train
        cli_ok("sam-pseudo", run / "cams_vision", "-o", run / "sam" / "pseudo", "--masks",
               _amg_folder(ws, f"{name}_amg"), "--workers", "1")
        cli_ok("eval", run / "sam" / "pseudo", "--json", run / "metrics" / "sam" / "pseudo.json")
    folder = run / {"none": "pseudo", "none+sam": "sam/pseudo"}.get(refinement, f"{refinement}/pseudo")
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as im:
            info = PngImagePlugin.PngInfo()
            for k, v in im.text.items():
                info.add_text(k, v)
            blank = Image.fromarray(np.zeros_like(np.asarray(im)), mode=im.mode)
            if im.mode == "P":
                blank.putpalette(im.getpalette())
        blank.save(path, pnginfo=info)
    return run


@case("choose-pseudo after the none+sam candidate's masks (a sam-pseudo folder) were edited to background after its "
      "score (their chunks kept; once its stale score used)", "chs_edit/metrics/sam/pseudo.json: stale",
      tsv="ds_choose_sam_masks_edited_after_score")
def _choice_sam_edited(ws: Workspace) -> Iterator[list[object]]:
    yield ["choose-pseudo", _choice_masks_edited(ws, "chs_edit", "none+sam", sam=True), "none", "none+sam", "--by",
           "masks"]


@case("choose-pseudo after the run's own (none) candidate's masks were edited to background after its score "
      "(their chunks kept; once picked on its stale score)", "chs_flip/metrics/pseudo.json: stale",
      tsv="ds_choose_crf_masks_edited_after_score")
def _choice_none_edited(ws: Workspace) -> Iterator[list[object]]:
    yield ["choose-pseudo", _choice_masks_edited(ws, "chs_flip", "none"), "none", "caa", "--by", "masks"]


@case("Python: vpltool.segmenter('sam3', proxy_weights='x'), an option sam3 never reads (once taken without a word; "
      "the CLI warns)", "segmenter('sam3'): proxy_weights='x' has no effect without --dense proxyclip", python=True,
      exit_code=0, tsv="api_unknown_option")
def _py_sam3_unread_option(ws: Workspace) -> Iterator[list[object]]:
    from robustness_cases import _sam3_weights

    weights = _sam3_weights(ws)
    yield [f"s = vpltool.segmenter('sam3', sam3_weights={str(weights)!r}, proxy_weights='x', device='cpu')",
           "print(type(s).__name__)"]


@case("eval /nonexistent with a plugin installed whose register() calls os._exit(0) (once exit 0 and no word: every "
      "command loaded every plugin first)", "/nonexistent", tsv="plugin_os_exit_eval_missing")
def _eval_missing_beside_ending_plugins(ws: Workspace) -> Iterator[list[object]]:
    with _ending_plugins(ws):
        yield ["eval", "/nonexistent"]


def _forged_to_onednn(path: Path) -> None:
    """The cache file with every verdict of this machine's table turned to oneDNN's."""
    cache = json.loads(path.read_text())
    for table in cache["machines"].values():
        for verdict in table["products"].values():
            verdict["onednn"] = True
    path.write_text(json.dumps(cache))


@case("extract --shard 1/2 at VPLTOOL_CPU_LINEAR=auto with the cache forged to oneDNN's verdicts after --shard 0/2 "
      "took MKL's (once accepted: a record kept the route asked, auto, not each product's library, and the two "
      "shards' features could differ in their last bits)", "lin_shards: an interrupted run made with "
      "VPLTOOL_CPU_LINEAR=auto taking MKL for its ", "where this run takes oneDNN (its verdict in the route cache ",
      "put that cache back as it was (or run where the folder was made), pass --overwrite to redo every item",
      shows_env=("VPLTOOL_CPU_LINEAR",), tsv="lin_shard1_forged_cache")
def _linear_cache_forged_between_shards(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.models.backbones import onednn

    out = ws.out("lin_shards")
    extract = ["extract", ws.world, "--split", "train", "-o", out, *TINY, *CPU, "--workers", "1"]
    with _linear_cache(ws, "cache_lin_shards", lambda path: None) as cache:
        cli_ok(*extract, "--shard", "0/2")
        _forged_to_onednn(cache / onednn.CACHE_NAME)
        onednn._DECIDED.clear()  # a new process: each product's verdict read from the cache again
        yield [*extract, "--shard", "1/2"]


# ---- beyond the list: the other records sealed as _stage.json is (an edit refused, not believed)
@case("crf resuming an interrupted run whose _run.json was edited to the resume's --confidence (once believed: the "
      "items of two settings in one folder)", "pseudo_run_edit: its _run.json was edited after `vpltool crf` wrote "
      "it", "re-make it with `vpltool crf --overwrite`")
def _crf_resume_run_record_edited(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    folder = ws.copy(ws.pseudo, "pseudo_run_edit")
    record = io.read_record(folder / io.STAGE_RECORD)
    (folder / io.STAGE_RECORD).unlink()
    sorted(folder.glob("*.png"))[-1].unlink()  # what a kill left: one mask short, the run's record sealed
    run = io.seal({k: record[k] for k in ("stage", "params", "inputs", io.NUMERICS, io.RUN_DIGEST) if k in record})
    run["params"] = {**run["params"], "confidence": 0.5}  # the edit, its seal as it was
    io.write_json(folder / io.RUN_RECORD, run)
    yield ["crf", ws.cams, "-o", folder, "--workers", "1", "--confidence", "0.5"]


@case("cam --save-debug into a cam --save-overlays folder whose _side.json was edited to say --save-debug (once "
      "believed: written into)", "overlays_side_edit: its _side.json was edited after `vpltool cam --save-debug` "
      "wrote it")
def _cam_side_record_edited(ws: Workspace) -> Iterator[list[object]]:
    from vpltool import io

    side = ws.out("overlays_side_edit")
    io.write_side_record(side, "cam", "--save-overlays")
    record = json.loads((side / io.SIDE_RECORD).read_text())
    (side / io.SIDE_RECORD).write_text(json.dumps({**record, "option": "--save-debug"}))
    yield ["cam", ws.features, "-p", ws.text, "-o", ws.out("cams_side_edit"), *CPU, "--save-debug", side]


@case("train-decoder --overwrite of a trained decoder, diverging at iteration 2 (simulated; once the last decoder "
      "deleted first, and the line said the new run's checkpoint was kept)", "decoder_ow_nan: training diverged at "
      "iteration 2", "the folder's result from before --overwrite is put back")
def _decoder_overwrite_diverges(ws: Workspace) -> Iterator[list[object]]:
    out = ws.copy(ws.decoder, "decoder_ow_nan")
    with diverging_decoder():
        yield ["train-decoder", ws.pseudo, "-p", ws.text, "-o", out, *DECODER_ARGS, "--overwrite", "--iters", "3"]


@case("make-world --overwrite with another --seed, failing at its second file (a full disk, simulated; once the "
      "last world's records deleted and its first files replaced)", "no space left on device writing world_ow_full/")
def _make_world_overwrite_fails(ws: Workspace) -> Iterator[list[object]]:
    import errno

    from robustness_cases import failing_writes

    world = ws.out("world_ow_full")
    cli_ok("make-world", world, "--train", "2", "--val", "1")
    with failing_writes(errno.ENOSPC, after=1):
        yield ["make-world", world, "--train", "2", "--val", "1", "--seed", "9", "--overwrite"]

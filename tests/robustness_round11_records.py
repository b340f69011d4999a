"""The eleventh round's records rows, as rows of the table of ``robustness_cases.py`` (which imports this module
after round 10's): a stage record edited by hand is refused by its seal (``record_digest``) in every folder kind,
and an ``--overwrite`` that fails keeps the last good result. Each row fails with its fix reverted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from robustness_cases import CPU, DECODER_ARGS, Workspace, _amg_folder, _poison, case, cli_ok

OTHER = {"bf16": "fp32", "fp32": "bf16"}


def _edited(folder: Path, seal: bool | None = False) -> str:
    """Flip the dtype ``folder``'s record says (the edit that let bf16 masks into an fp32 training), leaving its
    seal as it was (``seal=False``: a hand edit) or deleting it (None: an older vpltool's record, or an edit that
    deleted the seal too). Returns the dtype the record now says."""
    path = folder / "_stage.json"
    record = json.loads(path.read_text())
    dtype = OTHER[record["numerics"]["dtype"]]
    record["numerics"]["dtype"] = dtype
    if seal is None:
        del record["record_digest"]
    path.write_text(json.dumps(record, indent=2))
    return dtype


def _sam_pseudo(ws: Workspace, name: str) -> Path:
    """A finished `sam-pseudo` folder of the workspace's CAMs (a mask folder in amg.py's layout: no SAM runs)."""
    made = ws.root / "sam_pseudo_made"
    if not (made / "_stage.json").is_file():
        cli_ok("sam-pseudo", ws.cams, "-o", made, "--masks", _amg_folder(ws, "amg_records"), "--start", "argmax",
               "--workers", "1")
    return ws.copy(made, name)


# ---- H: a mask folder's record edited to another dtype, then train-decoder at that dtype (once trained, exit 0)
@case("train-decoder --precision <the edited dtype> on a crf folder whose _stage.json dtype was edited (once "
      "trained on masks of the other dtype, exit 0)", "pseudo_dtype_edit: its _stage.json was edited after `vpltool "
      "crf` wrote it", "re-make it with `vpltool crf --overwrite` (or into another folder)")
def _decoder_on_edited_crf(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.pseudo, "pseudo_dtype_edit")
    dtype = _edited(folder)
    yield ["train-decoder", folder, "-p", ws.text, "-o", ws.out("decoder_dtype_edit"), *DECODER_ARGS[:-2],
           "--precision", dtype, *CPU]


@case("train-decoder --precision <the edited dtype> on a sam-pseudo folder whose _stage.json dtype was edited",
      "sam_dtype_edit: its _stage.json was edited after `vpltool sam-pseudo` wrote it",
      "re-make it with `vpltool sam-pseudo --overwrite`")
def _decoder_on_edited_sam_pseudo(ws: Workspace) -> Iterator[list[object]]:
    folder = _sam_pseudo(ws, "sam_dtype_edit")
    dtype = _edited(folder)
    yield ["train-decoder", folder, "-p", ws.text, "-o", ws.out("decoder_sam_edit"), *DECODER_ARGS[:-2],
           "--precision", dtype, *CPU]


@case("train-decoder on a crf folder whose _stage.json dtype was edited and its seal deleted (or an older "
      "vpltool's record: its PNG masks cannot say their dtype)", "pseudo_unsealed: its _stage.json is not sealed",
      "its masks cannot say which dtype and mode made them", "re-make it with `vpltool crf --overwrite`")
def _decoder_on_unsealed_crf(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.pseudo, "pseudo_unsealed")
    dtype = _edited(folder, seal=None)
    yield ["train-decoder", folder, "-p", ws.text, "-o", ws.out("decoder_unsealed"), *DECODER_ARGS[:-2],
           "--precision", dtype, *CPU]


@case("cam on an extract folder whose _stage.json params were edited (every folder kind is sealed, not only masks)",
      "features_params_edit: its _stage.json was edited after `vpltool extract` wrote it",
      "re-make it with `vpltool extract --overwrite`")
def _cam_on_edited_features(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.features, "features_params_edit")
    path = folder / "_stage.json"
    record = json.loads(path.read_text())
    record["params"]["max_side"] = 4096
    path.write_text(json.dumps(record))
    yield ["cam", folder, "-p", ws.text, "-o", ws.out("cams_params_edit"), *CPU]


@case("crf into a folder whose _stage.json was edited, without --overwrite (a resume believed the record)",
      "pseudo_resume_edit: its _stage.json was edited after `vpltool crf` wrote it", "--overwrite")
def _crf_resume_edited(ws: Workspace) -> Iterator[list[object]]:
    folder = ws.copy(ws.pseudo, "pseudo_resume_edit")
    _edited(folder)
    yield ["crf", ws.cams, "-o", folder, "--workers", "1"]


# ---- H: --overwrite that fails keeps the last good result (once: _stage.json deleted, the first masks replaced)
def _nan_cams(ws: Workspace, name: str) -> Path:
    """A copy of the workspace's CAMs whose second image's CAM holds a NaN: a run fails there, after the first."""
    cams = ws.copy(ws.cams, name)
    _poison(sorted(cams.glob("*.safetensors"))[1], "cams")
    return cams


@case("crf --overwrite of a finished folder from CAMs with a NaN at the second image (once: its _stage.json "
      "deleted and the first mask replaced)", "train_000001.safetensors", "NaN")
def _crf_overwrite_fails(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", _nan_cams(ws, "cams_nan_overwrite"), "-o", ws.copy(ws.pseudo, "pseudo_kept"), "--overwrite",
           "--no-crf", "--workers", "1"]


@case("sam-pseudo --overwrite of a finished folder from CAMs with a NaN at the second image (once: its "
      "_stage.json deleted and the masks before the NaN replaced)", "train_000001.safetensors", "NaN",
      tsv="sp_overwrite_other_rule_fails_midrun")
def _sam_pseudo_overwrite_fails(ws: Workspace) -> Iterator[list[object]]:
    yield ["sam-pseudo", _nan_cams(ws, "cams_nan_sam"), "-o", _sam_pseudo(ws, "sam_kept"), "--overwrite",
           "--masks", _amg_folder(ws, "amg_records_nan"), "--start", "argmax", "--workers", "1", "--merge", "max-iou"]

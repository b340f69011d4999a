"""Rows of the table of ``robustness_cases.py`` (which imports this module last) for sam-pseudo's start labels read
from a folder (``sam-pseudo --start FOLDER``, written by ``crf --start-out``): a folder that is not the start
sam-pseudo would compute, or none, is one line naming the file and the fix, before any model loads and before anything
is written; ``crf --start-out`` with a backend or options it cannot serve likewise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from robustness_cases import CPU, Workspace, _amg_folder, case, cli_ok


def _start(ws: Workspace, cams: Path, name: str) -> Path:
    """The start labels `crf CAMS --start-out` writes (made once per workspace)."""
    start = ws.root / name
    if not (start / "_stage.json").is_file():
        cli_ok("crf", cams, "-o", ws.root / f"{name}_masks", "--start-out", start, "--workers", "1")
    return start


def _sam_pseudo(ws: Workspace, out: str, start: object, cams: Path | None = None) -> list[object]:
    """sam-pseudo on the workspace's CAMs from ``start``, with a mask folder in amg.py's layout (no SAM loads)."""
    return ["sam-pseudo", cams or ws.cams, "-o", ws.out(out), "--masks", _amg_folder(ws, "amg_start"), "--start",
            start, "--workers", "1"]


@case("sam-pseudo --start FOLDER where FOLDER is crf's own masks (--confidence 0.95: ignore pixels, not the start)",
      "pseudo/_stage.json: labels of `vpltool crf --confidence 0.95`, while sam-pseudo starts from `vpltool crf "
      "--confidence 0.0`'s",
      "--start-out")
def _start_is_crfs_masks(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo(ws, "sp_start_masks", ws.pseudo)


@case("sam-pseudo --start FOLDER where FOLDER holds the start labels of other CAMs (cam --refine none's)",
      "start_other/_stage.json: start labels of other CAMs than", "--start-out")
def _start_of_other_cams(ws: Workspace) -> Iterator[list[object]]:
    other = ws.root / "cams_none"
    if not (other / "_stage.json").is_file():
        cli_ok("cam", ws.features, "-p", ws.text, "-o", other, "--refine", "none", *CPU)
    yield _sam_pseudo(ws, "sp_start_other", _start(ws, other, "start_other"))


@case("sam-pseudo --start FOLDER --bg-exponent 2 where FOLDER's labels were made at the CRF's --bg-exponent 1",
      "labels of `vpltool crf --bg-exponent 1.0`, while sam-pseudo starts from `vpltool crf --bg-exponent 2.0`'s",
      "--start-out")
def _start_of_another_exponent(ws: Workspace) -> Iterator[list[object]]:
    yield [*_sam_pseudo(ws, "sp_start_exp", _start(ws, ws.cams, "start_ok")), "--bg-exponent", "2"]


@case("sam-pseudo --start FOLDER where FOLDER lacks one image's start label",
      "no start label for image", "--start-out")
def _start_missing_label(ws: Workspace) -> Iterator[list[object]]:
    cut = ws.copy(_start(ws, ws.cams, "start_ok"), "start_cut")
    sorted(cut.glob("*.png"))[-1].unlink()
    yield _sam_pseudo(ws, "sp_start_cut", cut)


@case("sam-pseudo --start crff (a typo of crf: no such folder)",
      "--start crff: no such folder; pass crf or argmax, or a folder of start labels that `crf --start-out` wrote")
def _start_typo(ws: Workspace) -> Iterator[list[object]]:
    yield _sam_pseudo(ws, "sp_start_typo", "crff")


@case("crf --start-out FOLDER --backend torch (sam-pseudo's start is pydensecrf's CRF)",
      "written by the pydensecrf backend only", "drop --backend torch")
def _start_out_torch(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.out("crf_torch_start"), "--start-out", ws.out("start_torch"), "--backend",
           "torch", "--workers", "1"]


@case("crf --with-start-out FOLDER without --with-cams",
      "--with-start-out", "pass --with-cams and --with-out too, or use --start-out")
def _with_start_out_alone(ws: Workspace) -> Iterator[list[object]]:
    yield ["crf", ws.cams, "-o", ws.out("crf_wso"), "--with-start-out", ws.out("start_wso"), "--workers", "1"]

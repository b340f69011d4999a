"""The eleventh round's rows for the trainers that build beside (:func:`vpltool.io.beside.built_beside`), as rows of
the table of ``robustness_cases.py`` (imported at its end): `train-pgseg`, `train-text` and `train-toy-sam3` with
``--overwrite`` (or over their own model) that fail or are killed keep the last good result, byte for byte (its
feature cache included); the rows assert it after the command too."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from robustness_cases import CPU, PGSEG_ARGS, Workspace, case, cli_ok, failing_writes, invoke


def _bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their target's name), by relative path: what "byte-identical" compares."""
    return {str(p.relative_to(folder)): (p.read_bytes() if not p.is_symlink() else str(p.readlink()).encode())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


@contextlib.contextmanager
def _kept_whole(folder: Path) -> Iterator[None]:
    """Inside: the row's command; after it, ``folder`` holds what it held before, byte for byte, and nothing waits
    beside it."""
    from vpltool.io.beside import aside_path

    before = _bytes(folder)
    yield
    assert _bytes(folder) == before, f"{folder}: the last good result changed"
    assert not aside_path(folder).exists(), f"{aside_path(folder)}: left beside the folder"


@contextlib.contextmanager
def _diverging_text_trainer() -> Iterator[None]:
    """train-text's steps blowing up: every loss and the gradient norm NaN from the first iteration on (the line
    then shows no number that another CPU would round otherwise)."""
    from vpltool.stages import train_text

    real = train_text.train_step

    def nan_step(*args, **kwargs):
        losses, norm = real(*args, **kwargs)
        return {k: v * float("nan") for k, v in losses.items()}, norm * float("nan")

    with mock.patch.object(train_text, "train_step", nan_step):
        yield


class _Killed(BaseException):
    """The run ended where a kill -9 would end it: mid-training, nothing after it run (the swap back included)."""


def _killed_mid_training(*args: object) -> None:
    """The command ``args`` run in this process and ended as a kill -9 would end it at its first logged iteration:
    no clean-up runs, so its new folder stays in place and the last result beside it."""
    from vpltool.io import beside
    from vpltool.stages import train_text

    def killed(*a, **kw):
        raise _Killed()

    with mock.patch.object(train_text, "diverged", killed), mock.patch.object(beside, "put_back", lambda *a: None):
        try:
            invoke(*args)
        except _Killed:
            pass


def _pgseg_run(ws: Workspace, name: str) -> tuple[Path, list[object]]:
    """A finished train-pgseg run of the row's own and the arguments that run it again over its folder."""
    out = ws.drop_after_case(ws.out(name))  # 82 MB that no later case reads
    args = ["train-pgseg", ws.world, "-o", out, *PGSEG_ARGS]
    cli_ok(*args)
    return out, args


@case("train-pgseg --overwrite of a trained run, its loss NaN at the first iteration (simulated; once the last model, "
      "checkpoint and log deleted at its first checkpoint, before the new run was known to finish)",
      "pgseg_ow_nan: training diverged at iteration 1 (loss nan, gradient norm nan)")
def _pgseg_overwrite_diverges(ws: Workspace) -> Iterator[list[object]]:
    out, args = _pgseg_run(ws, "pgseg_ow_nan")
    with _kept_whole(out), _diverging_text_trainer():
        yield [*args, "--overwrite"]


@case("train-pgseg over its folder after an --overwrite of it was killed mid-training (the last trained run put back "
      "whole as the folder opens, and refused without --overwrite as before; once its model deleted)",
      "pgseg_ow_killed: holds a trained model; pass --overwrite or choose another --out",
      leaves=("pgseg_ow_killed/*", "-pgseg_ow_killed/*", "-.pgseg_ow_killed.vpltool-last/*"))
def _pgseg_overwrite_killed(ws: Workspace) -> Iterator[list[object]]:
    from vpltool.io.beside import aside_path

    out, args = _pgseg_run(ws, "pgseg_ow_killed")
    with _kept_whole(out):
        _killed_mid_training(*args, "--overwrite")
        assert aside_path(out).is_dir() and not (out / "pgseg.safetensors").exists()  # what the kill left
        yield args


@case("train-text --family talk2dino --overwrite of a run with a feature cache, its loss NaN at the first iteration "
      "(simulated): the last run kept byte for byte, its cache included (the new run starts from hard links of it)",
      "t2d_ow_nan: training diverged at iteration 1 (loss nan, gradient norm nan)")
def _t2d_overwrite_diverges(ws: Workspace) -> Iterator[list[object]]:
    from robustness_cases import _pairs_folder

    pairs, out = _pairs_folder(ws, "pairs_t2d"), ws.out("t2d_ow_nan")
    args = ["train-text", pairs, "--family", "talk2dino", "--recipe", "demo", "-o", out, "--batch-size", "2",
            "--crop-size", "32", "--workers", "1", *CPU]
    cli_ok(*args)
    assert any((out / "cache").rglob("*.safetensors"))
    with _kept_whole(out), _diverging_text_trainer():
        yield [*args, "--overwrite"]


TOY_SAM3 = ["--epochs", "1", "--batch-size", "6", "--side", "56", "--width", "8"]


@case("train-toy-sam3 --overwrite of a trained toy SAM 3 with a full disk at its weights (simulated; once its new "
      "config.json written over the last one's, beside the last weights)",
      "no space left on device writing toysam3_ow_full/")
def _toy_sam3_overwrite_full_disk(ws: Workspace) -> Iterator[list[object]]:
    out = ws.out("toysam3_ow_full")
    args = ["train-toy-sam3", out, "--data", ws.world, *TOY_SAM3]
    cli_ok(*args)
    with _kept_whole(out), failing_writes(errno.ENOSPC, after=0):
        yield [*args, "--side", "84", "--overwrite"]  # another config.json too

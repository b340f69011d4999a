"""The eleventh round's first H class, as rows of the table of ``robustness_cases.py`` (imported at its end): a
method's weights recorded by content, in one place (:mod:`vpltool.io.reads`), so that SAM 3's weights replaced in
place between two shards, or between a kill and the re-run, are refused before any model loads. Each row fails with
the ledger reverted (the folder was finished and certified with masks of two models)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from robustness_cases import CPU, Workspace, case, cli_ok, invoke

LINE = ("made from ", "model.safetensors as sha256 ", "(replaced since), so its items would come from two different "
        "models; put the file back, pass --overwrite to redo every item, or choose another --out")


def _own_sam3(ws: Workspace, name: str, seed: int = 0) -> Path:
    """A tiny seeded SAM 3 of the case's own (Hugging Face's layout), so that replacing it touches no other row."""
    from vpltool.models.backbones.sam3_files import write_tiny

    folder = ws.drop_after_case(ws.root / name)  # 7 MB of the row's own
    shutil.rmtree(folder, ignore_errors=True)
    return Path(write_tiny(folder, "hf", seed=seed))


def _sam3_args(ws: Workspace, weights: Path, out: Path) -> list[object]:
    return ["segment", ws.world, "--split", "val", "-o", out, *CPU, "--classes", "star,circle", "--dense", "sam3",
            "--sam3-weights", weights]


def _another_model(weights: Path) -> None:
    """Another tiny SAM 3 (another seed) written over ``weights``' files, under the same names."""
    from vpltool.models.backbones.sam3_files import write_tiny

    scratch = weights.parent / "_other"
    write_tiny(scratch, "hf", seed=1)
    shutil.copyfile(scratch / "model.safetensors", weights / "model.safetensors")
    shutil.rmtree(scratch)


@case("segment --dense sam3: its weights replaced in place between --shard 0/2 and --shard 1/2 (once finished and "
      "certified with masks of two models)", "seg_sam3_ledger_shards: an interrupted run ", *LINE)
def _sam3_shards_swapped(ws: Workspace) -> Iterator[list[object]]:
    weights, out = _own_sam3(ws, "sam3_ledger_shards"), ws.out("seg_sam3_ledger_shards")
    cli_ok(*_sam3_args(ws, weights, out), "--shard", "0/2")
    _another_model(weights)
    yield [*_sam3_args(ws, weights, out), "--shard", "1/2"]


class _Killed(BaseException):
    """The run ended where a kill -9 would end it: its masks written, its run record there, no _stage.json."""


def killed_before_finish(*args: object) -> None:
    """The command ``args`` run in this process and ended as a kill -9 would end it just before its folder is
    finished (:class:`_Killed` raised in ``StageFolder.finish``)."""
    from vpltool import io

    def killed(self, *a, **kw):
        raise _Killed()

    with mock.patch.object(io.StageFolder, "finish", killed):
        try:
            invoke(*args)
        except _Killed:
            pass


@case("segment --dense sam3 killed before it finished, then its weights replaced in place before the re-run (once "
      "finished and certified with masks of two models)", "seg_sam3_ledger_killed: an interrupted run ", *LINE)
def _sam3_killed_swapped(ws: Workspace) -> Iterator[list[object]]:
    weights, out = _own_sam3(ws, "sam3_ledger_killed"), ws.out("seg_sam3_ledger_killed")
    killed_before_finish(*_sam3_args(ws, weights, out))
    assert (out / "_run.json").is_file() and not (out / "_stage.json").exists()
    sorted(out.glob("*.png"))[-1].unlink()  # the mask the kill cut off
    _another_model(weights)
    yield _sam3_args(ws, weights, out)

"""Each per-item file records the run that wrote it, and every reader compares it with its folder's record.

The mechanism (vpltool.io.provenance) on hand-made stage folders, without a model: a foreign item (another run's,
same image) is refused by the kind's one reader; shards, a resume and a copy of the whole folder agree; the fix the
message gives (remove the file, re-run with the folder's options) works; folders written before run digests are read
as before, and take no item of a run that has one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vpltool import io
from vpltool.errors import ContractError

CLASSES = ["background", "star", "circle"]
IDS = ["a", "b", "c"]


def _cam_folder(out: Path, params: dict, ids=IDS, shard=(0, 1), todo=None) -> io.StageFolder:
    """A `cam`-like run: one CAM file per id (its maps filled with the params' value), then the folder's record."""
    folder = io.StageFolder(out, "cam", params, shard=shard, inputs={"features": {"sha256": "f" * 64}})
    with folder:
        for item in folder.todo(ids, io.cam_path) if todo is None else todo:
            maps = torch.full((1, 2, 2), float(params["v"]))
            io.write_cam(io.cam_path(out, item), maps, [1], image_size=[2, 2], classes=CLASSES, params=params,
                         id=item)
        folder.finish(ids, io.cam_path)
    return folder


def _read_all(out: Path) -> list[float]:
    return [float(io.read_cam(io.cam_path(out, i), CLASSES, [1]).cams.max()) for i in io.item_ids(out)]


def test_a_cam_of_another_run_copied_into_a_finished_folder_is_refused_and_the_fix_works(tmp_path):
    mine, other = tmp_path / "cams", tmp_path / "cams_other"
    _cam_folder(mine, {"v": 0.5, "refine": "caa"})
    _cam_folder(other, {"v": 0.25, "refine": "none"})
    assert _read_all(mine) == [0.5] * 3
    shutil.copyfile(other / "b.safetensors", mine / "b.safetensors")  # same id, same labels: fits but for its run
    with pytest.raises(ContractError, match=r"b\.safetensors: made by another run than its folder's.*re-run "
                                            r"`vpltool cam` with the folder's options"):
        _read_all(mine)
    (mine / "b.safetensors").unlink()  # the fix: remove it, re-run with the folder's options (only it is redone)
    _cam_folder(mine, {"v": 0.5, "refine": "caa"})
    assert _read_all(mine) == [0.5] * 3


def _run_again(out: Path, params: dict) -> io.StageSummary:
    """The stage run again on its folder through :meth:`vpltool.io.StageFolder.run` (a finished folder: nothing to
    do, the folder certified again)."""
    folder = io.StageFolder(out, "cam", params, inputs={"features": {"sha256": "f" * 64}})
    return folder.run(IDS, io.cam_path, lambda todo: None)


@pytest.mark.parametrize("copied", ["another run's item", "a file that records no run"])
def test_a_stage_run_again_on_a_folder_holding_another_runs_item_refuses_it_and_changes_nothing(tmp_path, copied):
    """Re-running the stage on a finished folder with an item copied in said "3 already done" and certified it
    again; its header is read when the folder is entered (not its tensors), before anything is written."""
    mine, other = tmp_path / "cams", tmp_path / "cams_other"
    _cam_folder(mine, {"v": 0.5})
    _cam_folder(other, {"v": 0.25})
    assert _run_again(mine, {"v": 0.5}).skipped == 3  # its own items: done, and certified again
    if copied == "another run's item":
        shutil.copyfile(other / "b.safetensors", mine / "b.safetensors")
    else:
        (mine / "b.safetensors").write_bytes(b"not a vpltool file")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    said = ("made by another run than its folder's" if copied == "another run's item" else
            "not a file `vpltool cam` wrote")
    with pytest.raises(ContractError, match=rf"b\.safetensors: {said}.*remove it and re-run `vpltool cam`"):
        _run_again(mine, {"v": 0.5})
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before  # no _run.json left, nothing rewritten
    (mine / "b.safetensors").unlink()  # the fix the line gives
    _cam_folder(mine, {"v": 0.5})
    assert _run_again(mine, {"v": 0.5}).skipped == 3 and _read_all(mine) == [0.5] * 3


def test_shards_a_resume_and_a_copy_of_the_whole_folder_agree(tmp_path):
    out = tmp_path / "cams"
    params = {"v": 0.5}
    _cam_folder(out, params, shard=(1, 2))
    assert not (out / io.STAGE_RECORD).exists()
    _cam_folder(out, params, shard=(0, 2))  # the last shard completes the folder
    record = io.read_record(out / io.STAGE_RECORD)
    assert record[io.RUN_DIGEST] == io.run_digest("cam", params, {"features": {"sha256": "f" * 64}})
    assert _read_all(out) == [0.5] * 3
    again = _cam_folder(out, params)  # a finished folder run again: nothing to do, the digest kept
    assert again.digest == record[io.RUN_DIGEST]
    shutil.copytree(out, tmp_path / "copy")
    assert _read_all(tmp_path / "copy") == [0.5] * 3
    # an equal run elsewhere writes interchangeable items: the same digest
    _cam_folder(tmp_path / "twin", params)
    shutil.copyfile(tmp_path / "twin" / "a.safetensors", out / "a.safetensors")
    assert _read_all(out) == [0.5] * 3


def test_a_mask_of_another_run_is_refused_and_a_users_mask_folder_is_read(tmp_path):
    labels = np.zeros((4, 4), np.uint8)
    for name, params in (("pseudo", {"no_crf": False}), ("pseudo_other", {"no_crf": True})):
        with io.StageFolder(tmp_path / name, "crf", params) as folder:
            for item in IDS:
                io.write_mask(io.mask_path(tmp_path / name, item), labels, item)
            folder.finish(IDS, io.mask_path)
    io.read_mask(io.mask_path(tmp_path / "pseudo", "a"))
    shutil.copyfile(tmp_path / "pseudo_other" / "a.png", tmp_path / "pseudo" / "a.png")
    with pytest.raises(ContractError, match="a.png: made by another run than its folder's.*`vpltool crf`"):
        io.read_mask(io.mask_path(tmp_path / "pseudo", "a"))
    # a user's own masks (no record, no id) and a vpltool mask moved into such a folder: nothing to compare
    mine = tmp_path / "mine"
    mine.mkdir()
    io.write_mask(mine / "x.png", labels)
    shutil.copyfile(tmp_path / "pseudo_other" / "b.png", mine / "b.png")
    io.read_mask(mine / "x.png"), io.read_mask(mine / "b.png")


def _strip_digests(folder: Path) -> None:
    """``folder`` as a vpltool before run digests wrote it: no digest in its record nor in its items (and no seal:
    sealed records came later)."""
    from safetensors import safe_open

    record = json.loads((folder / io.STAGE_RECORD).read_text())
    del record[io.RUN_DIGEST], record[io.RECORD_DIGEST]
    (folder / io.STAGE_RECORD).write_text(json.dumps(record))
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
        del meta["vpltool.run"]
        io.save_tensor_file(path, tensors, meta)


def test_a_folder_written_before_run_digests_is_read_as_before_and_takes_no_newer_item(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    _cam_folder(old, {"v": 0.5})
    _cam_folder(new, {"v": 0.5})
    _strip_digests(old)
    assert _read_all(old) == [0.5] * 3  # nothing to compare: read as before
    shutil.copyfile(new / "a.safetensors", old / "a.safetensors")
    with pytest.raises(ContractError, match="its folder's _stage.json \\(of an older vpltool\\) none"):
        _read_all(old)
    shutil.copyfile(old / "b.safetensors", new / "b.safetensors")  # and an old item in a new folder
    with pytest.raises(ContractError, match="b.safetensors: made by another run.*it records no run"):
        _read_all(new)


def test_an_interrupted_folder_of_an_older_vpltool_is_resumed_without_digests(tmp_path):
    out = tmp_path / "cams"
    _cam_folder(out, {"v": 0.5})
    _strip_digests(out)
    record = json.loads((out / io.STAGE_RECORD).read_text())
    (out / io.STAGE_RECORD).unlink()
    (out / "c.safetensors").unlink()
    io.write_json(out / io.RUN_RECORD, {"stage": "cam", "params": record["params"]})  # killed, by the older vpltool
    folder = _cam_folder(out, {"v": 0.5})
    assert folder.digest is None and io.RUN_DIGEST not in io.read_record(out / io.STAGE_RECORD)
    assert _read_all(out) == [0.5] * 3


def test_a_damaged_run_digest_in_a_record_is_named(tmp_path):
    out = tmp_path / "cams"
    _cam_folder(out, {"v": 0.5})
    record = json.loads((out / io.STAGE_RECORD).read_text())
    (out / io.STAGE_RECORD).write_text(json.dumps({**record, io.RUN_DIGEST: "x" * 40}))
    with pytest.raises(ContractError, match="'run_digest' is \"xxx.*not 16 hex digits"):
        _read_all(out)

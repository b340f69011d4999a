"""An interrupted run's record (``_run.json``) and a side folder's (``_side.json``) are sealed as ``_stage.json`` is:
edited by hand (to pass a resume with other parameters, to let a run write into a folder), each is refused in one line
naming the folder and the fix; unedited, or of a vpltool before the seal, each reads as before."""

from __future__ import annotations

import json

import pytest

from vpltool import io
from vpltool.errors import VplError

PARAMS = {"size": 32, "rule": "a"}


def _begin(folder, params=PARAMS, overwrite=False):
    return io.begin_stage_run(folder, "toy-stage", params, overwrite, inputs={"data": "x"})


def test_a_run_record_is_sealed_and_an_edit_is_refused_before_the_resume(tmp_path):
    folder = tmp_path / "run"
    _begin(folder)
    path = folder / io.RUN_RECORD
    record = json.loads(path.read_text())
    assert record[io.RECORD_DIGEST] == io.record_digest(record)
    _begin(folder)  # a resume with the same parameters reads it
    record["params"] = {**PARAMS, "rule": "b"}  # the edit that would let a run with rule b resume rule a's items
    path.write_text(json.dumps(record))
    with pytest.raises(VplError, match=r"run: its _run\.json was edited after `vpltool toy-stage` wrote it "
                                       r"\(its 'record_digest' no longer matches what it holds\).*"
                                       r"re-make it with `vpltool toy-stage --overwrite`"):
        _begin(folder, {**PARAMS, "rule": "b"})
    _begin(folder, {**PARAMS, "rule": "b"}, overwrite=True)  # --overwrite clears it
    assert json.loads(path.read_text())["params"]["rule"] == "b"


def test_an_unsealed_run_record_of_an_older_vpltool_still_resumes(tmp_path):
    folder = tmp_path / "old"
    _begin(folder)
    path = folder / io.RUN_RECORD
    record = json.loads(path.read_text())
    del record[io.RECORD_DIGEST]
    path.write_text(json.dumps(record))
    _begin(folder)
    assert io.record_digest(json.loads(path.read_text())) == json.loads(path.read_text())[io.RECORD_DIGEST]


def test_a_side_record_is_sealed_and_an_edit_is_refused_by_the_output_guard(tmp_path):
    """A side folder's ``_side.json`` (``--save-overlays``): sealed when written; edited (the option it names, what
    lets a run write into the folder) it is refused in one line by the output guard; unsealed (an older vpltool's)
    it reads as before."""
    side = tmp_path / "overlays"
    io.write_side_record(side, "cam", "--save-overlays")
    record = json.loads((side / io.SIDE_RECORD).read_text())
    assert record[io.RECORD_DIGEST] == io.record_digest(record)
    io.check_outputs("cam", {"--save-overlays": (side, "side")})  # its own side folder: written into again
    (side / io.SIDE_RECORD).write_text(json.dumps({**record, "option": "--save-debug"}))
    with pytest.raises(VplError, match=r"overlays: its _side\.json was edited after `vpltool cam --save-debug` wrote "
                                       r"it \(its 'record_digest' no longer matches what it holds\)"):
        io.check_outputs("cam", {"--save-debug": (side, "side")})
    del record[io.RECORD_DIGEST]
    (side / io.SIDE_RECORD).write_text(json.dumps(record))
    assert io.read_side_record(side / io.SIDE_RECORD) == record
    io.check_outputs("cam", {"--save-overlays": (side, "side")})

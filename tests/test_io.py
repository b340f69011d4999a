"""The file contract: atomic writes, kind/class checks before loading, masks, stage folders, locks, prototypes."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vpltool import io
from vpltool.errors import ContractError, VplError

CLASSES = ("background", "cat", "dog")


def _write(path, kind="features", classes=CLASSES, **tensors):
    tensors = tensors or {"dense": torch.randn(2, 3, 4)}
    return io.write_tensors(path, tensors, kind=kind, classes=classes, params={"a": 1}, id="x")


def _protos(n_bg: int = 2, dim: int = 8) -> io.Prototypes:
    vectors = F.normalize(torch.randn(2 + n_bg, dim), dim=1)
    row_class = torch.tensor([1, 2] + [0] * n_bg)
    return io.Prototypes(vectors, row_class, ["cat", "dog"] + [f"bg{i}" for i in range(n_bg)], classes=CLASSES,
                         temperature=0.01, source="text", model={"model": "m", "pretrained": "none"},
                         params={"templates": "x"})


# --------------------------------------------------------------------------------------------- atomic writes
def test_atomic_path_failure_leaves_no_target_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_keeps_the_previous_file(tmp_path):
    target = io.write_json(tmp_path / "out.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise RuntimeError
    assert io.read_json(target) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --------------------------------------------------------------------------------------------- safetensors
def _char_device(path) -> bool:
    """A character device node at ``path`` (a private copy of /dev/null), if this process may make one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


def test_atomic_path_never_replaces_what_is_not_a_regular_file(tmp_path):
    """Run as root, ``-o /dev/null`` once replaced the system's /dev/null with a regular file."""
    fifo, folder, device = tmp_path / "fifo", tmp_path / "folder", tmp_path / "null"
    os.mkfifo(fifo)
    folder.mkdir()
    targets = [fifo, folder] + ([device] if _char_device(device) else [])
    for target in targets:
        mode = os.lstat(target).st_mode
        with pytest.raises(VplError, match=f"^{target}: (exists and is not a regular file|is a folder)"):
            io.write_json(target, {"v": 1})
        assert os.lstat(target).st_mode == mode  # still the FIFO / folder / device it was
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)  # no temporary left


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(tmp_path, umask_027):
    """0666 / 0777 minus the umask, as open() and mkdir() give: the group can read results (mkstemp gave 0600)."""
    written = [io.write_json(tmp_path / "a.json", {}), _write(tmp_path / "b.safetensors"),
               io.write_mask(tmp_path / "c.png", np.zeros((2, 2), np.uint8))]
    io.append_log(tmp_path / "log.jsonl", {"iter": 1})
    with io.output_lock(tmp_path / "stage"):
        pass
    written += [tmp_path / "log.jsonl", tmp_path / "stage" / io.LOCK_FILE]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o640" for p in written}
    assert oct((tmp_path / "stage").stat().st_mode & 0o777) == "0o750"


def test_tensors_round_trip_with_metadata(tmp_path):
    t = torch.randn(2, 3, 4)
    f = io.read_tensors(_write(tmp_path / "a.safetensors", dense=t), kind="features", classes=CLASSES)
    assert torch.equal(f["dense"], t)
    assert f.classes == list(CLASSES) and f.params == {"a": 1} and f.meta("id") == "x"
    assert f.meta("nope", None) is None
    with pytest.raises(ContractError, match="missing"):
        f["not_there"]


def test_wrong_kind_is_refused_naming_the_file(tmp_path):
    path = _write(tmp_path / "a.safetensors", kind="cam")
    with pytest.raises(ContractError) as e:
        io.read_tensors(path, kind="features")
    assert str(path) in str(e.value) and "'cam'" in str(e.value)
    assert io.read_tensors(path, kind=("features", "cam")).meta("kind") == "cam"  # any of several kinds


def test_class_list_mismatch_is_refused(tmp_path):
    path = _write(tmp_path / "a.safetensors")
    with pytest.raises(ContractError, match="classes"):
        io.read_tensors(path, kind="features", classes=("background", "cat", "cow"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_safetensors_is_a_contract_error(tmp_path, damage):
    path = _write(tmp_path / "a.safetensors")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty": b""}[damage])
    with pytest.raises(ContractError, match="not a readable safetensors"):
        io.read_tensors(path, kind="features")


def test_missing_tensor_file_is_a_user_error(tmp_path):
    with pytest.raises(VplError, match="not found"):
        io.read_tensors(tmp_path / "nope.safetensors", kind="features")


def test_check_finite(tmp_path):
    io.check_finite(tmp_path, "ok", torch.ones(3))
    io.check_finite(tmp_path, "ints", torch.tensor([1, 2]))  # integer tensors cannot hold NaN
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ContractError, match="'dense' contains NaN"):
            io.check_finite(tmp_path, "dense", torch.tensor([0.0, bad]))


def test_read_features_refuses_nan(tmp_path):
    dense = torch.zeros(2, 2, 4)
    dense[1, 1, 3] = float("nan")
    path = io.write_tensors(tmp_path / "x.safetensors", {"dense": dense}, kind=io.FEATURES_KIND, classes=CLASSES,
                            id="x", image_size=[32, 32], input_size=[32, 32], model={"model": "m"})
    with pytest.raises(ContractError, match="NaN"):
        io.read_features(path)


# --------------------------------------------------------------------------------------------- masks
def test_palette_mask_round_trip(tmp_path):
    labels = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 255]], dtype=np.uint8)
    path = io.write_mask(tmp_path / "m.png", labels)
    with Image.open(path) as img:
        assert img.mode == "P"
        palette = img.getpalette()
    assert palette[:6] == [0, 0, 0, 128, 0, 0]  # VOC: background black, class 1 dark red
    assert palette[255 * 3: 255 * 3 + 3] == [255, 255, 255]  # ignore drawn white
    back = io.read_mask(path)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)  # indices, not colours


def test_write_mask_refuses_wrong_dtype_or_shape(tmp_path):
    with pytest.raises(ContractError):
        io.write_mask(tmp_path / "a.png", np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(ContractError):
        io.write_mask(tmp_path / "b.png", np.zeros((4, 4, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_read_mask_refuses_rgb(tmp_path):
    Image.new("RGB", (4, 4), (128, 0, 0)).save(tmp_path / "rgb.png")
    with pytest.raises(ContractError, match="palette"):
        io.read_mask(tmp_path / "rgb.png")


# --------------------------------------------------------------------------------------------- stage folders
def test_prepare_stage_dir_refuses_other_params_unless_overwrite(tmp_path):
    out = tmp_path / "stage"
    io.prepare_stage_dir(out, "extract", {"a": 1}, overwrite=False)
    io.write_stage_record(out, "extract", params={"a": 1}, inputs={}, count=0)
    io.prepare_stage_dir(out, "extract", {"a": 1}, overwrite=False)  # same params: resume, record kept
    assert io.read_stage_record(out, "extract")["params"] == {"a": 1}
    with pytest.raises(VplError, match="other parameters"):
        io.prepare_stage_dir(out, "extract", {"a": 2}, overwrite=False)
    with pytest.raises(VplError, match="holds `extract` output"):
        io.prepare_stage_dir(out, "cam", {"a": 1}, overwrite=False)
    assert io.stage_record_path(out).is_file()  # refusals change nothing
    io.prepare_stage_dir(out, "extract", {"a": 2}, overwrite=True)
    assert not io.stage_record_path(out).exists()  # an interrupted re-run can never look complete


def test_read_stage_record_errors(tmp_path):
    with pytest.raises(VplError, match="folder not found"):
        io.read_stage_record(tmp_path / "nope", "extract")
    with pytest.raises(ContractError, match="did not finish"):
        io.read_stage_record(tmp_path, "extract")
    io.write_stage_record(tmp_path, "cam", params={}, inputs={}, count=1)
    with pytest.raises(ContractError, match="expected `extract` output"):
        io.read_stage_record(tmp_path, "extract")
    assert json.loads(io.stage_record_path(tmp_path).read_text())["count"] == 1


def test_output_lock_refuses_a_second_holder(tmp_path):
    with io.output_lock(tmp_path):
        with pytest.raises(VplError, match="another vpltool run"):
            with io.output_lock(tmp_path):
                pass
        with io.output_lock(tmp_path, name=".vpltool.lock.1-of-2"):  # shards hold separate locks
            pass
    with io.output_lock(tmp_path):  # released on exit
        pass


# --------------------------------------------------------------------------------------------- prototypes
def test_prototypes_round_trip(tmp_path):
    p = _protos()
    q = io.read_prototypes(io.write_prototypes(tmp_path / "p.safetensors", p), classes=CLASSES, dim=8)
    assert torch.allclose(q.vectors, p.vectors) and torch.equal(q.row_class, p.row_class)
    assert q.row_names == p.row_names and q.classes == list(CLASSES)
    assert (q.temperature, q.source, q.model, q.params) == (0.01, "text", p.model, p.params)
    assert q.class_rows().tolist() == [0, 1] and q.background_rows().tolist() == [2, 3] and q.dim == 8


def test_prototypes_validation(tmp_path):
    path = io.write_prototypes(tmp_path / "p.safetensors", _protos())
    with pytest.raises(ContractError, match="16-d"):
        io.read_prototypes(path, dim=16)
    p = _protos()
    p.vectors = p.vectors * 2
    with pytest.raises(ContractError, match="unit-norm"):
        io.read_prototypes(io.write_prototypes(tmp_path / "big.safetensors", p))
    p = _protos()
    p.row_class = torch.tensor([1, 1, 0, 0])  # class 2 has no row
    with pytest.raises(ContractError, match="one row per class"):
        io.read_prototypes(io.write_prototypes(tmp_path / "rows.safetensors", p))
    with pytest.raises(ContractError, match="expected a 'prototypes' file"):
        io.read_prototypes(_write(tmp_path / "f.safetensors"))

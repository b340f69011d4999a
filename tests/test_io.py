"""The file contract: atomic writes, kind/class checks before loading, masks, stage folders, locks, prototypes."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
from pathlib import Path

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
    item_id = Path(path).name.split(".")[0]  # the name it is read by: a per-item file records its id
    return io.write_tensors(path, tensors, kind=kind, classes=classes, params={"a": 1}, id=item_id)


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
    assert f.classes == list(CLASSES) and f.params == {"a": 1} and f.meta("id") == "a"
    assert f.meta("nope", None) is None
    with pytest.raises(ContractError, match="missing"):
        f["not_there"]


def test_safetensors_are_read_into_aligned_memory_of_their_own(tmp_path):
    """Each tensor its own 64-byte-aligned allocation (torch's), whatever its offset in the file (here 8-byte
    ones, a header of odd length before them): the library's values, dtypes and shapes, no view of a shared buffer."""
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, generator=gen), "b": torch.randn(5, 7, generator=gen),
               "c": torch.arange(3, dtype=torch.int64), "d": torch.randn(2, 3, generator=gen).bfloat16(),
               "empty": torch.empty(0, 4), "flag": torch.tensor([True, False])}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"pad": "x" * 13})
    offsets = [e["data_offsets"][0] for k, e in json.loads(path.read_bytes()[8:8 + int.from_bytes(
        path.read_bytes()[:8], "little")]).items() if k != "__metadata__"]
    assert any(o % 64 for o in offsets)  # the file places some tensor off a 64-byte line
    got, want = io.read_safetensors(path), load_file(str(path))
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value)
        assert got[name].numel() == 0 or got[name].data_ptr() % 64 == 0
    assert len({t.untyped_storage().data_ptr() for t in got.values() if t.numel()}) == 5  # no shared buffer


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


def test_the_writer_refuses_nan_and_the_reader_too(tmp_path):
    from safetensors.torch import save_file

    dense = torch.zeros(2, 2, 4)
    dense[1, 1, 3] = float("nan")
    path = tmp_path / "x.safetensors"
    with pytest.raises(ContractError, match="tensor 'dense' holds NaN or inf; not written"):
        io.write_tensors(path, {"dense": dense}, kind=io.FEATURES_KIND, classes=CLASSES, id="x")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary
    io.write_tensors(path, {"dense": torch.zeros(2, 2, 4)}, kind=io.FEATURES_KIND, classes=CLASSES, id="x",
                     image_size=[32, 32], input_size=[32, 32], model={"model": "m"})
    tensors, meta = {"dense": dense}, io.read_header(path)
    save_file(tensors, str(path), metadata=meta)  # damaged by another tool: the reader is the last guard
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
        with pytest.raises(VplError, match="another vpltool run \\(not a shard\\)"):  # one lock for shards too
            with io.output_lock(tmp_path, shard=(1, 2)):
                pass
    with io.output_lock(tmp_path):  # released on exit
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".vpltool.lock"]  # a refused shard leaves no claim


def test_shards_share_the_folder_lock_and_claim_their_index(tmp_path):
    with io.output_lock(tmp_path, shard=(0, 2)):
        with io.output_lock(tmp_path, shard=(1, 2)):  # the other shard of the run: side by side
            assert {p.name for p in tmp_path.iterdir()} == {".vpltool.lock", ".vpltool.lock.0-of-2",
                                                              ".vpltool.lock.1-of-2"}
        with pytest.raises(VplError, match="--shard 0/2 is already running here"):
            with io.output_lock(tmp_path, shard=(0, 2)):
                pass
        with pytest.raises(VplError, match=r"shards of another count \(--shard 0/2\)"):
            with io.output_lock(tmp_path, shard=(1, 3)):
                pass
        with pytest.raises(VplError, match="the shards of a --shard run are writing here"):
            with io.output_lock(tmp_path):
                pass
    assert [p.name for p in tmp_path.iterdir()] == [".vpltool.lock"]  # claims go with their runs


def test_a_run_alone_removes_what_killed_runs_left(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / ".a.safetensors.abcd1234.tmp", tmp_path / "checkpoints" / ".last.safetensors.x.tmp",
                 tmp_path / ".vpltool.lock.1-of-2"]  # a shard's claim whose run was killed
    for path in leftovers:
        path.write_text("")
    (tmp_path / "item.safetensors").write_text("kept")
    with io.output_lock(tmp_path):
        assert not any(p.exists() for p in leftovers) and (tmp_path / "item.safetensors").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_holds_the_lock(tmp_path):
    """A DataLoader worker is a fork: it shares the lock's open file description, so it kept the folder locked
    after its run died. The child's copy is re-pointed at /dev/null at fork (io.stage._release_in_child)."""
    read, write = os.pipe()
    with io.output_lock(tmp_path):
        pid = os.fork()
        if pid == 0:  # the child: wait until the parent released, then report whether the lock is free
            os.close(write)
            os.read(read, 1)
            try:
                with io.output_lock(tmp_path):
                    os._exit(0)
            except VplError:
                os._exit(1)
    os.close(read)
    os.write(write, b"x")  # the parent released the lock: the child must be able to take it (nobody holds it)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


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


# --------------------------------------------------------------------------------------------- writers fail in one line
def test_identical_tensor_files_are_byte_identical(tmp_path):
    """The library writes its header in hash order (a new order per map): the writer sorts it."""
    tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(3, dtype=torch.float16), "c": torch.tensor([1, 2])}
    meta = dict(image_size=[3, 4], model={"pretrained": "none", "model": "m"}, labels=[2, 1])
    paths = [io.write_tensors(tmp_path / f"{i}.safetensors", tensors, kind="cam", classes=CLASSES, params={"z": 1,
                              "a": 2}, **meta) for i in range(6)]
    first = paths[0].read_bytes()
    assert all(p.read_bytes() == first for p in paths[1:])
    size = int.from_bytes(first[:8], "little")
    header = json.loads(first[8:8 + size])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert (8 + size) % 8 == 0  # the data section stays aligned
    back = io.read_tensors(paths[0], kind="cam")
    assert all(torch.equal(back.tensors[k], v) for k, v in tensors.items())
    assert back.meta("model") == {"model": "m", "pretrained": "none"}


def _safetensor_error(message):
    from safetensors import SafetensorError

    def save(*args, **kwargs):
        raise SafetensorError(message)

    return save


@pytest.mark.parametrize("message, line", [
    ("Error while serializing: I/O error: No space left on device (os error 28)", "no space left on device writing"),
    ("Error while serializing: I/O error: File too large (os error 27)", "file too large"),
    ("Error while serializing: I/O error: Read-only file system (os error 30)", "read-only file system writing"),
], ids=["ENOSPC", "EFBIG", "EROFS"])
def test_a_safetensors_error_from_the_disk_is_one_line(tmp_path, message, line):
    """safetensors raises its own SafetensorError (no OSError) for I/O errors: mapped by its "(os error N)"."""
    from unittest import mock

    import safetensors.torch

    path = tmp_path / "x.safetensors"
    with mock.patch.object(safetensors.torch, "save", _safetensor_error(message)):
        with pytest.raises(VplError, match=line) as info:
            _write(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, line", [(errno.ENOSPC, "no space left on device writing"),
                                        (errno.EFBIG, "file too large"), (errno.EROFS, "read-only file system")],
                         ids=["ENOSPC", "EFBIG", "EROFS"])
@pytest.mark.parametrize("writer", ["tensors", "mask", "png", "json"])
def test_every_writer_fails_in_one_line_and_leaves_nothing(tmp_path, code, line, writer):
    """The disk fails mid-write (the file half written); a PNG write also chains PIL's ``_idat ... fileno``
    AttributeError, as with ``ulimit -f`` in a crf worker."""
    from pathlib import Path
    from unittest import mock

    from vpltool.io import files

    real_write_bytes, real_save, real_open = Path.write_bytes, Image.Image.save, open

    def fail(path_or_fh):
        try:
            raise AttributeError("'_idat' object has no attribute 'fileno'")
        except AttributeError:
            raise OSError(code, os.strerror(code)) from None

    def write_bytes(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        fail(self)

    def save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        fail(fp)

    class HalfWritten:  # io.atomic_write's file: the disk fills halfway through its first chunk
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[: len(data) // 2])
            fail(self.fh)

    def open_half(file, *args, **kwargs):
        return HalfWritten(real_open(file, *args, **kwargs))

    target = tmp_path / {"tensors": "x.safetensors", "mask": "m.png", "png": "p.png", "json": "r.json"}[writer]
    run = {"tensors": lambda: _write(target), "mask": lambda: io.write_mask(target, np.zeros((4, 4), np.uint8)),
           "png": lambda: io.write_png(target, np.zeros((4, 4, 3), np.uint8)),
           "json": lambda: io.write_json(target, {"a": 1})}[writer]
    with mock.patch.object(Path, "write_bytes", write_bytes), mock.patch.object(Image.Image, "save", save), \
            mock.patch.object(Path, "write_text", lambda self, text: write_bytes(self, text.encode())), \
            mock.patch.object(files, "open", open_half, create=True):
        with pytest.raises(VplError, match=line) as info:
            run()
    assert str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- the output guard
def _stage_folder(path, stage="cam", n=2):
    path.mkdir(parents=True)
    for i in range(n):
        (path / f"x{i}.safetensors").write_bytes(b"x")
    io.write_stage_record(path, stage, params={}, inputs={}, count=n, ids=[f"x{i}" for i in range(n)])
    return path


def test_check_outputs_refuses_inputs_datasets_and_mixed_outputs(tmp_path):
    text = tmp_path / "t.safetensors"
    text.write_bytes(b"t")
    images = tmp_path / "world" / "images"
    images.mkdir(parents=True)
    (images / "a.png").write_bytes(b"p")
    with pytest.raises(VplError, match=r"is also this run's input \(--text\).*choose another --out"):
        io.check_outputs("learn-prototypes", {"--out": (text, "file")}, inputs={"--text": text})
    with pytest.raises(VplError, match="is the dataset's folder .*choose another --save-overlays"):
        io.check_outputs("cam", {"--save-overlays": (images, "side")}, protected=[images])
    with pytest.raises(VplError, match="lies inside the dataset's folder"):
        io.check_outputs("cam", {"--plot": (images / "a.png", "file")}, protected=[images])
    out = tmp_path / "cams"
    with pytest.raises(VplError, match="given as both --out and --save-overlays; their files would mix"):
        io.check_outputs("cam", {"--out": (out, "stage"), "--save-overlays": (out, "side")})
    link = tmp_path / "broken"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(VplError, match="a symbolic link to .*nowhere, which does not exist"):
        io.check_outputs("cam", {"--out": (link, "stage")})
    io.check_outputs("cam", {"--out": (out, "stage"), "--save-overlays": (tmp_path / "ov", "side"),
                             "--plot": (tmp_path / "x.png", "file")}, inputs={"--text": text}, protected=[images])


def test_check_outputs_never_adopts_a_folder(tmp_path):
    pseudo = _stage_folder(tmp_path / "pseudo", "crf")
    for overwrite, extra in ((False, ""), (True, "; --overwrite only redoes a `cam` folder")):
        with pytest.raises(VplError, match=f"holds `crf` output{extra}"):
            io.check_outputs("cam", {"--out": (pseudo, "stage")}, overwrite=overwrite)
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"gt")
    with pytest.raises(VplError, match="not empty and made by no vpltool stage"):
        io.check_outputs("crf", {"--out": (masks, "stage")}, overwrite=True)
    with pytest.raises(VplError, match="not empty and holds no _side.json of `cam --save-debug`"):
        io.check_outputs("cam", {"--save-debug": (masks, "side")})
    io.check_outputs("crf", {"--out": (pseudo, "stage")})  # its own stage: resumable
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".vpltool.lock").write_text("")  # what a refused run leaves: still empty
    io.check_outputs("crf", {"--out": (empty, "stage")})
    io.write_side_record(masks, "cam", "--save-debug")
    io.check_outputs("cam", {"--save-debug": (masks, "side")})
    with pytest.raises(VplError, match="holds `cam --save-debug` output"):
        io.check_outputs("predict", {"--save-overlays": (masks, "side")})
    assert io.folder_owner(tmp_path / "empty") is None and io.folder_owner(pseudo) == "crf"
    assert io.folder_owner(masks) == ""


def test_prepare_stage_dir_with_overwrite_never_takes_another_stage(tmp_path):
    pseudo = _stage_folder(tmp_path / "pseudo", "crf")
    with pytest.raises(VplError, match="holds `crf` output"):
        io.prepare_stage_dir(pseudo, "cam", {}, overwrite=True)
    assert io.read_stage_record(pseudo, "crf")["count"] == 2


def test_a_resume_from_other_inputs_is_refused_and_the_record_kept(tmp_path):
    out = tmp_path / "cams"
    with io.StageFolder(out, "cam", {"a": 1}, inputs={"features": "sha256:1"}) as folder:
        folder.complete(count=0, ids=[])
    record = io.stage_record_path(out).read_bytes()
    with pytest.raises(VplError, match=r"made from other inputs \(features changed since\).*--overwrite"):
        with io.StageFolder(out, "cam", {"a": 1}, inputs={"features": "sha256:2"}):
            pass
    assert io.stage_record_path(out).read_bytes() == record  # never rewritten over stale items
    with io.StageFolder(out, "cam", {"a": 1}, inputs={"features": "sha256:2"}, overwrite=True) as folder:
        assert folder.todo(["x"], io.cam_path) == ["x"]  # --overwrite redoes every item
        folder.complete(count=0, ids=[])
    assert io.read_stage_record(out, "cam")["inputs"] == {"features": "sha256:2"}


def test_items_come_from_the_record_and_a_missing_one_is_named(tmp_path):
    folder = _stage_folder(tmp_path / "features", "extract", n=3)
    (folder / "text.safetensors").write_bytes(b"prototypes saved beside the features")
    assert io.item_ids(folder) == ["x0", "x1", "x2"]  # the stray file is no item
    (folder / "x1.safetensors").unlink()
    with pytest.raises(ContractError, match=r"incomplete: 1 of the 3 items .* \(first: x1.safetensors\); re-run "
                                            "`vpltool extract`"):
        io.item_ids(folder)
    record = io.read_json(io.stage_record_path(folder))
    del record["ids"], record[io.RECORD_DIGEST]  # a record of an older vpltool (no ids, no seal): the count is checked
    io.write_json(io.stage_record_path(folder), record)
    (folder / "text.safetensors").unlink()
    with pytest.raises(ContractError, match="2 item files but its _stage.json counts 3"):
        io.item_ids(folder)


def test_side_folders_are_marked_and_a_refused_run_removes_them(tmp_path):
    out, side = tmp_path / "cams", tmp_path / "cams" / "overlays"
    with pytest.raises(RuntimeError, match="model failed"):
        with io.StageFolder(out, "cam", {}, sides={"--save-overlays": side}):
            raise RuntimeError("model failed")
    assert not out.exists()  # neither the side folder nor the output folder it lies in
    with io.StageFolder(out, "cam", {}, sides={"--save-overlays": side, "--save-debug": None}) as folder:
        folder.complete(count=0, ids=[])
    assert io.read_json(side / io.SIDE_RECORD)["option"] == "--save-overlays"
    io.check_outputs("cam", {"--out": (out, "stage"), "--save-overlays": (side, "side")})  # the same run again


def test_every_file_output_records_its_kind_and_the_guard_reads_it(tmp_path):
    from vpltool.io.marks import file_kind

    scores = io.write_json(tmp_path / "s.json", {"miou": 0.5}, kind="scores")
    chart = io.write_chart(tmp_path / "c.png", [{"loss": [(0, 1.0), (1, 0.5)]}], kind="loss-curve")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    assert (file_kind(scores), file_kind(chart), file_kind(notes)) == ("scores", "loss-curve", None)
    io.check_outputs("eval", {"--json": (scores, "file", "scores")})  # the same kind: replaced
    for path, kind, found in ((scores, "diagnosis", "holds scores"), (chart, "scores", "holds a loss curve"),
                              (notes, "scores", "was not written by vpltool")):
        with pytest.raises(VplError, match=found):
            io.check_outputs("x", {"--json": (path, "file", kind)})
        io.check_outputs("x", {"--json": (path, "file", kind)}, overwrite=True)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    io.check_outputs("x", {"--json": (empty, "file", "scores")})  # nothing to lose
def test_eval_results_read_back_through_the_checked_reader(world, tmp_path):
    """What eval writes passes io.read_eval_metrics (the report's reader); the wrong shape is one line naming the
    field (issue 38: a traceback after every thumbnail was made)."""
    import shutil

    from vpltool.data import open_dataset
    from vpltool.stages.eval import run_eval

    masks = tmp_path / "masks"
    masks.mkdir()
    for item in open_dataset(world, "train").items:
        shutil.copy(item.gt, masks / f"{item.id}.png")
    run_eval(masks, data=world, split="train", json_out=tmp_path / "m.json")
    assert io.read_eval_metrics(tmp_path / "m.json")["miou"] == 1.0
    for bad, field in [({"miou": "abc", "iou": {}}, "'miou' is \"abc\""), ({"miou": 0.5, "iou": [1]}, "'iou' is [1]"),
                       ({"miou": 1.5, "iou": {}}, "'miou' is 1.5"), ({"miou": 0.5, "iou": {}, "n_images": -1},
                                                                   "'n_images' is -1")]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ContractError, match=re.escape(field)):
            io.read_eval_metrics(tmp_path / "bad.json")
    assert not io.is_eval_metrics({"rows": []}) and io.is_eval_metrics({"miou": None})


def test_a_per_item_file_under_another_items_name_is_refused(tmp_path):
    """Every per-item kind records the id it was made for; the one reader refuses it under another item's name."""
    path = _write(tmp_path / "img_1.safetensors")
    os.replace(path, tmp_path / "img_2.safetensors")
    with pytest.raises(ContractError, match="holds item 'img_1''s features .* not 'img_2''s"):
        io.read_tensors(tmp_path / "img_2.safetensors", kind="features")
    io.write_mask(tmp_path / "img_1.png", np.zeros((4, 5), np.uint8), "img_1")
    assert io.read_mask(tmp_path / "img_1.png").shape == (4, 5)
    os.replace(tmp_path / "img_1.png", tmp_path / "img_2.png")
    with pytest.raises(ContractError, match="holds item 'img_1''s mask"):
        io.read_mask(tmp_path / "img_2.png")
    io.write_mask(tmp_path / "user.png", np.zeros((4, 5), np.uint8))  # a user's mask records no id: not checked
    os.replace(tmp_path / "user.png", tmp_path / "other.png")
    assert io.read_mask(tmp_path / "other.png").shape == (4, 5)


def test_a_ctrl_c_the_moment_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch):
    # a SIGINT that arrives during open()'s system call is raised just after it returns, before the temporary's
    # name reaches the code that removes it (benchmark --shard under Ctrl-C once left a .NAME.XXXXXXXX.tmp)
    from vpltool.io import files

    real_open = os.open

    def open_then_interrupted(*args, **kwargs):
        real_open(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "mask.png"):
            pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_stage_folder_a_peer_rank_begins_while_this_one_checks_it_is_that_stage_s(tmp_path, monkeypatch):
    """The ranks of a stage check its folder as they start; a peer may write its run record (then its items) while
    this rank reads the folder. The folder is listed before its records are read, so a record written in between is
    found, and the folder is never taken for a file of no stage's (a node once refused the folder its peer had just
    begun)."""
    from vpltool.io import guard

    folder = tmp_path / "cams"
    folder.mkdir()
    (folder / ".vpltool.lock").write_text("")  # the peer's lock: the folder still empty
    listed = os.scandir

    def peer_begins(path):  # the peer writes its run record the moment this rank lists the folder itself
        if sys._getframe(1).f_code.co_name == "folder_owner" and not (folder / io.RUN_RECORD).exists():
            io.begin_stage_run(folder, "cam", {"a": 1}, False)
        return listed(path)

    monkeypatch.setattr(guard.os, "scandir", peer_begins)
    assert io.folder_owner(folder) == "cam"
    io.check_outputs("cam", {"--out": (folder, "stage")})  # the same stage: resumed, not refused

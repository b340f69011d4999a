"""SAM 3 loaded straight into the run's half precision (vpltool/models/backbones/sam3.py's load_sam3 under a bf16
autocast, sam3_half.load_dtypes), on the tiny random SAM 3 in both layouts: the weights are those of the old fp32 load
halved on the first call, bit for bit, and the fp32 copy is never held whole (each tensor read and converted alone)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from vpltool.models import load_model  # noqa: E402
from vpltool.models.backbones import sam3_files  # noqa: E402
from vpltool.models.backbones.sam3 import Sam3Spec  # noqa: E402
from vpltool.models.backbones.sam3_half import halved_names  # noqa: E402
from vpltool.models.backbones.sam3_weights import locate  # noqa: E402


@pytest.fixture(scope="module", params=["hf", "meta"])
def tiny(request, tmp_path_factory):
    return str(sam3_files.write_tiny(tmp_path_factory.mktemp("sam3") / request.param, request.param))


def _bf16_load(weights: str, dtype: torch.dtype = torch.bfloat16):
    with torch.autocast("cpu", dtype=dtype):
        return load_model("sam3", Sam3Spec(weights), "cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])  # fp16: a GPU's, whose rule is the same
def test_a_bf16_load_holds_the_weights_of_an_fp32_load_halved_on_its_first_call(tiny, dtype):
    old = load_model("sam3", Sam3Spec(tiny), "cpu")
    with torch.autocast("cpu", dtype=dtype):
        old.follow_autocast()  # the old way: loaded in fp32, halved in place at the first call
    new = _bf16_load(tiny, dtype)
    assert old.held == new.held == dtype
    want, got = old.model.state_dict(), new.model.state_dict()
    assert want.keys() == got.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
    assert sum(v.dtype == dtype for v in got.values()) > 50
    with torch.autocast("cpu", dtype=dtype):
        new.follow_autocast()  # already at the run's precision: nothing read again
    assert new.held == dtype
    new.follow_autocast()  # back in fp32: the files' weights, as an fp32 load's
    fp32 = load_model("sam3", Sam3Spec(tiny), "cpu").model.state_dict()
    assert new.held == torch.float32
    assert all(t.dtype == fp32[k].dtype and torch.equal(t, fp32[k]) for k, t in new.model.state_dict().items())


def test_the_fp32_copy_is_never_held_whole(tiny, monkeypatch):
    """The state handed to the model already holds the halved tensors in bf16 (no fp32 state of them is made): a
    Hugging Face file is never read whole (each tensor alone), nor is Meta's: its index is read (no tensor's data),
    then each storage's bytes once, by plain reads (never mapped, so a file cut short is an error, not SIGBUS)."""
    from vpltool import io

    seen, reads, check, read_bytes, load = {}, [], io.check_weights, sam3_files.read_at, torch.load

    def spy(where, state, expected, fix, shapes_only=False):
        if not shapes_only:  # the load's check of the tensors as read (the earlier one: the header's shapes)
            seen.update({k: v.dtype for k, v in state.items()})
        return check(where, state, expected, fix, shapes_only=shapes_only)

    def whole(path):
        raise AssertionError(f"{path} read whole")

    def lazy_load(*args, **kwargs):
        assert not kwargs.get("mmap") and kwargs.get("map_location") == "meta", kwargs  # index only, no mapping
        return load(*args, **kwargs)

    monkeypatch.setattr(io, "check_weights", spy)
    monkeypatch.setattr(io, "read_safetensors", whole)
    monkeypatch.setattr(torch, "load", lazy_load)
    monkeypatch.setattr(sam3_files, "read_at", lambda fh, at, into: (reads.append((at, len(into))),
                                                                     read_bytes(fh, at, into)))
    sam = _bf16_load(tiny)
    halved = halved_names(sam.model)
    assert len(halved) > 50
    assert {k for k, d in seen.items() if d == torch.bfloat16} == halved
    assert all(d == torch.float32 for k, d in seen.items() if k not in halved)
    files = locate(tiny)
    if files.layout == "meta":  # every storage the model reads read once, none twice, each at its own offset
        index = sam3_files.read_state(files, shapes_only=True)
        storages = {(v.untyped_storage()._checkpoint_offset, v.untyped_storage().nbytes()) for v in index.values()}
        assert len(reads) == len(set(reads)) == len(storages) and set(reads) == storages
    else:
        assert reads == []


def test_segment_loads_sam3_at_the_runs_precision(tiny):
    """`segment --dense sam3 --precision bf16` (here its Python door) loads SAM 3 straight into bf16, before any
    photo; fp32 as the files hold it."""
    import vpltool

    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seg = vpltool.segmenter("sam3", sam3_weights=tiny, precision=precision, device="cpu")
        sam = seg.backbone.sam
        assert sam.held == dtype
        weights = dict(sam.model.named_parameters())
        assert {k for k, p in weights.items() if p.dtype == torch.bfloat16} == (
            halved_names(sam.model) if dtype == torch.bfloat16 else set())


def test_a_sam3_pt_cut_short_while_it_loads_is_one_line_not_sigbus(world, tmp_path, monkeypatch):
    """Meta's sam3.pt truncated by another process between two of its tensors' reads (a copy still being written,
    a file replaced): `segment --dense sam3 --precision bf16` ends with one line naming the file and the fix, exit 2,
    no output folder. Its storages are read by plain reads, so the short read is an error where a mapped read past
    the file's new end ended the process with SIGBUS."""
    import os

    from typer.testing import CliRunner

    from vpltool.cli import app

    path = sam3_files.write_tiny(tmp_path / "sam3.pt", "meta")
    size, read, calls = path.stat().st_size, sam3_files.read_at, []

    def cut_after_first(fh, offset, into):
        calls.append(offset)
        if len(calls) == 2:  # the first tensor read whole, then the file cut to half its size
            os.truncate(path, size // 2)
        return read(fh, offset, into)

    monkeypatch.setattr(sam3_files, "read_at", cut_after_first)
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "-o", str(out), "--device", "cpu",
                                 "--classes", "star,circle", "--dense", "sam3", "--sam3-weights", str(path),
                                 "--precision", "bf16"])
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2, r.output
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    assert f"{path}: cut short while it was read" in errors[0] and "Pass the whole file" in errors[0]
    assert len(calls) >= 2 and path.stat().st_size == size // 2  # the cut came between two reads
    assert not out.exists()


def test_a_hugging_face_file_cut_short_while_it_loads_is_one_line(tmp_path, monkeypatch):
    """The same for Hugging Face's model.safetensors, read tensor by tensor into bf16: the short read is one line
    naming the file, not handed to safetensors' own reader (which maps the file)."""
    import os

    from vpltool.errors import VplError
    from vpltool.io import tensors

    folder = sam3_files.write_tiny(tmp_path / "hf", "hf")
    path, entry, calls = folder / "model.safetensors", tensors._entry, []

    def cut_after_first(*args):
        calls.append(args[0])
        if len(calls) == 2:  # the first tensor read whole, then the file cut to half its size
            os.truncate(path, path.stat().st_size // 2)
        return entry(*args)

    monkeypatch.setattr(tensors, "_entry", cut_after_first)
    with pytest.raises(VplError) as e:
        _bf16_load(str(folder))
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{path}: cut short while it was read"), line
    assert "Pass the whole file" in line

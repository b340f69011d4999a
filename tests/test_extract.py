"""`extract`: what each features file holds, resuming, overwrite, batching, shards and bad images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vpltool import io
from vpltool.config import ExtractConfig, RuntimeConfig
from vpltool.data import open_dataset
from vpltool.demo.make_world import write_dataset
from vpltool.errors import ContractError, VplWarning
from vpltool.stages.extract import run_extract

CPU = RuntimeConfig(device="cpu", precision="fp32", workers=1)  # fp32 also where auto is bf16 (AMX, CUDA)


def _run(data, out, spec, cfg=ExtractConfig(), runtime=CPU, **kw):
    return run_extract(data, out, spec, cfg, runtime, **kw)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def train(world):
    return open_dataset(world, "train")


def test_feature_file_keys_shapes_and_dtypes(features_dir, train):
    assert sorted(p.stem for p in features_dir.glob("*.safetensors")) == sorted(it.id for it in train.items)
    f = io.read_tensors(features_dir / f"{train.items[0].id}.safetensors", kind="features", classes=train.classes)
    assert set(f.tensors) == {"dense", "last_block_input", "attention"}
    assert f["dense"].shape == (6, 6, 32) and f["dense"].dtype == torch.float16  # 96 px / patch 16
    assert f["last_block_input"].shape == (1 + 36, 64) and f["last_block_input"].dtype == torch.float16
    attn = f["attention"]
    assert attn.shape == (36, 36) and attn.dtype == torch.float16
    rows = attn.float().sum(1)  # a mean of row-stochastic maps with the CLS column dropped
    assert (attn >= 0).all() and (rows <= 1 + 1e-3).all() and (rows > 0).all()


def test_feature_metadata(features_dir, train, tiny_spec):
    for item in train.items:
        feats = io.read_features(io.feature_path(features_dir, item.id), classes=train.classes, need_tokens=True)
        assert feats.id == item.id
        assert feats.image_size == (96, 96) and feats.input_size == (96, 96) and feats.grid == (6, 6)
        assert feats.labels == item.labels
        assert feats.model == tiny_spec.identity()
        assert feats.file.meta("attention_blocks") == 2  # min(8, 3 blocks) - 1: the blocks before the last
    record = io.read_stage_record(features_dir, "extract")
    assert record["count"] == 6 and record["classes"] == list(train.classes)
    assert record["params"]["model"] == tiny_spec.identity()


def test_rerun_skips_and_overwrite_redoes(train, tiny_spec, tmp_path):
    first = _run(train, tmp_path, tiny_spec)
    assert (first.done, first.skipped, first.complete) == (6, 0, True)
    again = _run(train, tmp_path, tiny_spec)
    assert (again.done, again.skipped, again.complete) == (0, 6, True)
    redo = _run(train, tmp_path, tiny_spec, runtime=RuntimeConfig(device="cpu", workers=1, overwrite=True))
    assert (redo.done, redo.skipped, redo.complete) == (6, 0, True)
    assert io.stage_record_path(tmp_path).is_file() and _leftovers(tmp_path) == []


def test_batch_size_does_not_change_features(train, tiny_spec, tmp_path):
    full = ExtractConfig(cache="full")
    _run(train, tmp_path / "b1", tiny_spec, full, runtime=RuntimeConfig(device="cpu", workers=1, batch_size=1))
    _run(train, tmp_path / "b4", tiny_spec, full, runtime=RuntimeConfig(device="cpu", workers=2, batch_size=4))
    for item in train.items:
        a = io.read_tensors(io.feature_path(tmp_path / "b1", item.id), kind="features")
        b = io.read_tensors(io.feature_path(tmp_path / "b4", item.id), kind="features")
        for key in ("dense", "last_block_input", "attention"):
            assert torch.equal(a[key], b[key]), (item.id, key)  # batching changes no bit of the frozen pass


def test_shards_split_the_work_and_the_last_one_writes_the_record(train, tiny_spec, tmp_path):
    s0 = _run(train, tmp_path, tiny_spec, shard=(0, 2))
    assert (s0.done, s0.complete) == (3, False)
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == [it.id for it in train.items[0::2]]
    assert not io.stage_record_path(tmp_path).exists()
    assert io.finished_shards(tmp_path) == [(0, 2)]  # so a later stage says which shard is pending
    with pytest.raises(ContractError, match=r"only shard\(s\) 0 finished; run `vpltool extract` with the pending "
                                            r"--shard 1/2"):
        io.read_stage_record(tmp_path, "extract")
    s1 = _run(train, tmp_path, tiny_spec, shard=(1, 2))
    assert (s1.done, s1.complete) == (3, True)
    assert len(list(tmp_path.glob("*.safetensors"))) == 6 and io.stage_record_path(tmp_path).is_file()
    assert io.finished_shards(tmp_path) == []  # the record replaces the shard records


def test_no_tokens_stores_only_dense(train, tiny_spec, tmp_path):
    _run(train, tmp_path, tiny_spec, ExtractConfig(cache="light"))
    path = io.feature_path(tmp_path, train.items[0].id)
    assert set(io.read_tensors(path, kind="features").tensors) == {"dense"}
    with pytest.raises(ContractError, match="--cache full"):
        io.read_features(path, need_tokens=True)


def test_fixed_image_size(train, tiny_spec, tmp_path):
    with pytest.warns(VplWarning, match="not a multiple of .* patch size 16: every input is 64x64"):
        _run(train, tmp_path, tiny_spec, ExtractConfig(image_size=60))  # rounded up to 64, and said so
    feats = io.read_features(io.feature_path(tmp_path, train.items[0].id))
    assert feats.input_size == (64, 64) and feats.grid == (4, 4) and feats.image_size == (96, 96)


def test_corrupt_image_is_refused_naming_it_before_anything_is_written(tiny_spec, tmp_path):
    root = write_dataset(tmp_path / "data", n_train=4, n_val=1, seed=0)
    bad = root / "images" / "train_000002.png"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    data, out = open_dataset(root, "train"), tmp_path / "out"
    with pytest.raises(ContractError, match="train_000002.png"):
        _run(data, out, tiny_spec, ExtractConfig(cache="full"), RuntimeConfig(device="cpu", workers=1, batch_size=1))
    # a file cut short is found from its structure before the model loads: nothing is written, nothing half-written
    assert not out.exists()
    shutil.copy(root / "images" / "train_000003.png", bad)  # repaired: the re-run does the whole split
    summary = _run(data, out, tiny_spec, ExtractConfig(cache="full"))
    assert (summary.done, summary.skipped, summary.complete) == (4, 0, True)
    for p in out.glob("*.safetensors"):
        io.read_features(p, need_tokens=True)


def test_odd_image_modes_go_through(tiny_spec, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), "L").save(root / "images" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (33, 17, 4), dtype=np.uint8), "RGBA").save(root / "images" / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16)).save(root / "images" / "deep.png")
    (root / "labels.csv").write_text("gray,cat\nrgba,dog\ndeep,cat;dog\n")
    data = open_dataset(root)
    summary = _run(data, tmp_path / "out", tiny_spec)
    assert (summary.done, summary.complete) == (3, True)
    sizes = {it.id: io.read_features(io.feature_path(tmp_path / "out", it.id)) for it in data.items}
    assert sizes["gray"].input_size == (48, 64) and sizes["gray"].image_size == (40, 50)
    assert sizes["rgba"].input_size == (48, 32) and sizes["deep"].input_size == (32, 32)
    assert sizes["deep"].labels == (1, 2)


def test_bf16_on_the_cpu_really_runs_in_bf16(train, tiny_spec, tmp_path):
    _run(train, tmp_path / "fp32", tiny_spec)
    _run(train, tmp_path / "bf16", tiny_spec, runtime=RuntimeConfig(device="cpu", workers=1, precision="bf16"))
    item = train.items[0].id
    a = io.read_features(io.feature_path(tmp_path / "fp32", item)).dense.flatten(0, 1)
    b = io.read_features(io.feature_path(tmp_path / "bf16", item)).dense.flatten(0, 1)
    assert (a - b).abs().max() > 1e-3  # a different computation, not fp32 under another name
    assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.99  # but the same features


def test_fp16_on_the_cpu_is_refused(train, tiny_spec, tmp_path):
    from vpltool.errors import VplError

    with pytest.raises(VplError, match="--precision fp16"):
        _run(train, tmp_path / "out", tiny_spec, runtime=RuntimeConfig(device="cpu", precision="fp16"))


def test_an_unreadable_image_is_refused_before_the_model_loads(tiny_spec, tmp_path, monkeypatch):
    """A zero-byte image: the message came only after loading the model, and left a folder and a lock file."""
    import vpltool.stages.extract as extract

    root = write_dataset(tmp_path / "data", n_train=3, n_val=1, seed=0)
    (root / "images" / "train_000001.png").write_bytes(b"")
    monkeypatch.setattr(extract, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    with pytest.raises(ContractError, match=r"train_000001\.png: unreadable image"):
        _run(open_dataset(root, "train"), out, tiny_spec)
    assert not out.exists()


def test_too_many_tokens_is_refused_before_any_forward_and_a_resume_may_raise_the_limit(train, tiny_spec, tmp_path,
                                                                                         monkeypatch):
    """The world's 96x96 scenes are 6x6 = 36 tokens at patch 16: a limit of 30 refuses them all, before any file;
    ``max_tokens`` is a limit, not a setting, so a resumed run may change it."""
    from vpltool.errors import VplError

    out = tmp_path / "out"
    with pytest.raises(VplError, match=r"96x96 pixels make 36 patch tokens \(6x6 at patch 16\), above --max-tokens "
                                       r"30 .*pass --max-side 80"):
        _run(train, out, tiny_spec, ExtractConfig(max_tokens=30))
    assert not out.exists()
    _run(train, out, tiny_spec, shard=(0, 2))  # half of it (its _run.json says max_tokens 4096), then a resume
    assert io.read_json(out / io.RUN_RECORD)["params"]["max_tokens"] == 4096
    summary = _run(train, out, tiny_spec, ExtractConfig(max_tokens=100))
    assert summary.complete and summary.skipped == len(train.shard(0, 2).items)

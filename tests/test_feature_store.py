"""train-decoder's feature store (--feature-store): a second run on the same images reads the features the first
kept, by content, and trains the weights of a run without a store. CPU, tiny, seeded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from vpltool.cli import app
from vpltool.config import DecoderConfig, RuntimeConfig
from vpltool.errors import VplWarning
from vpltool.stages.train_decoder import data, run_train_decoder
from vpltool.stages.train_decoder.store import store_key

CACHED = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=3, checkpoint_every=3,
                       log_every=1, warmup_iters=1, lr=0.05, cache_features=True)
CPU = RuntimeConfig(device="cpu", workers=1)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "decoder.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(gt_pseudo, text_protos, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of a run whose cache is built in memory only."""
    out = tmp_path_factory.mktemp("no-store")
    run_train_decoder(gt_pseudo, text_protos, out, CACHED, CPU)
    return _weights(out)


def _counting_clip(monkeypatch) -> list[int]:
    """Counts the frozen CLIP passes of the cache's build (one per image: the view and its mirror)."""
    calls = [0]
    real = data.block_features

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "block_features", counted)
    return calls


def test_a_second_run_reads_the_stored_features_and_trains_the_same_weights(gt_pseudo, text_protos, reference,
                                                                            tmp_path, monkeypatch):
    store, calls = tmp_path / "store", _counting_clip(monkeypatch)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "a", CACHED, CPU, feature_store=store)
    built = calls[0]
    assert built > 0 and len(list(store.glob("*.safetensors"))) == 1
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "b", CACHED, CPU, feature_store=store)
    assert calls[0] == built  # no CLIP pass: read from the store
    assert _same(_weights(tmp_path / "a"), reference) and _same(_weights(tmp_path / "b"), reference)


def test_another_view_is_another_entry(gt_pseudo, text_protos, tmp_path):
    store = tmp_path / "store"
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "a", CACHED, CPU, feature_store=store)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "b", replace(CACHED, crop_size=32), CPU, feature_store=store)
    assert len(list(store.glob("*.safetensors"))) == 2


def test_a_damaged_entry_is_built_again_with_a_warning(gt_pseudo, text_protos, reference, tmp_path):
    store = tmp_path / "store"
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "a", CACHED, CPU, feature_store=store)
    entry = next(store.glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(VplWarning, match="unreadable feature-store entry"):
        run_train_decoder(gt_pseudo, text_protos, tmp_path / "b", CACHED, CPU, feature_store=store)
    assert _same(_weights(tmp_path / "b"), reference)
    assert load_file(str(entry))["feats"].dtype == torch.float16  # rewritten whole


def test_the_key_follows_the_images_bytes_and_the_identity(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one"), b.write_bytes(b"two")
    key = store_key({"crop": 64}, [a, b])
    assert key == store_key({"crop": 64}, [a, b])
    assert key != store_key({"crop": 64}, [b, a])  # the order of the rows
    assert key != store_key({"crop": 32}, [a, b])
    b.write_bytes(b"TWO")
    assert key != store_key({"crop": 64}, [a, b])


def test_the_store_without_the_cache_is_one_line_before_anything_loads(gt_pseudo, text_protos, tmp_path):
    r = CliRunner().invoke(app, ["train-decoder", str(gt_pseudo), "-p", str(text_protos), "-o", str(tmp_path / "d"),
                                 "--iters", "2", "--no-cache-features", "--feature-store", str(tmp_path / "s")])
    assert r.exit_code == 2, r.output
    assert "--feature-store" in r.output and "--cache-features" in r.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "s").exists()

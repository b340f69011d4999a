"""predict's feature store (--feature-store): a second decoder on the same CLIP, views and images reads the frozen
features the first run kept (no CLIP pass) and writes the masks of a run without a store, bit for bit; another key
(views, images) misses. CPU, tiny, seeded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig
from vpltool.decoder import stored
from vpltool.errors import VplWarning
from vpltool.stages import predict
from vpltool.stages.predict import run_predict

DEC = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=2, log_every=1, warmup_iters=1)
CPU = RuntimeConfig(device="cpu", workers=1, precision="fp32")
ONE = PredictConfig(scales=(1.0,), flip=False)  # the demo's choice predictions (CHOICE_PRED_ARGS)


@pytest.fixture(scope="module")
def decoders(gt_pseudo, text_protos, tmp_path_factory) -> list[Path]:
    """Two decoders on the same CLIP and images whose masks differ: a trained one, and the same with another head
    (as another refinement's masks would train other weights)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vpltool.stages.train_decoder import run_train_decoder

    folder = tmp_path_factory.mktemp("dec")
    run_train_decoder(gt_pseudo, text_protos, folder, DEC, CPU)
    first, second = folder / "decoder.safetensors", folder / "other.safetensors"
    with safe_open(str(first), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    head = tensors["head.weight"]  # another head: random, seeded
    tensors["head.weight"] = torch.randn(head.shape, generator=torch.Generator().manual_seed(0)).to(head.dtype)
    save_file(tensors, str(second), metadata=meta)
    return [first, second]


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: io.read_mask(p) for p in sorted(folder.glob("*.png"))}


def _same(a: Path, b: Path) -> bool:
    ma, mb = _masks(a), _masks(b)
    return len(ma) > 0 and ma.keys() == mb.keys() and all(np.array_equal(ma[k], mb[k]) for k in ma)


def _counting_clip(monkeypatch) -> list[int]:
    """Counts the frozen CLIP passes of predict's views (each forward of a batch)."""
    calls, real = [0], stored.block_features

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(stored, "block_features", counted)
    return calls


def _recording_scores(monkeypatch) -> list[torch.Tensor]:
    """Every image's view-grid scores, as predict resizes them to the image (the masks' source, before argmax)."""
    seen, real = [], predict._image_scores

    def recording(logits, size, crf):
        seen.append(logits.clone())
        return real(logits, size, crf)

    monkeypatch.setattr(predict, "_image_scores", recording)
    return seen


@pytest.mark.parametrize("cfg", [ONE, PredictConfig()], ids=["one-view", "scales-and-flip"])
def test_a_second_decoder_reads_the_stored_features_and_writes_the_masks_of_a_run_without(
        world, decoders, cfg, tmp_path, monkeypatch):
    scores = _recording_scores(monkeypatch)
    plain, runs = {}, []
    for k, decoder in enumerate(decoders):
        plain[k] = tmp_path / f"plain{k}"
        run_predict(decoder, world, "train", plain[k], cfg, CPU)
        runs.append(list(scores)), scores.clear()
    store, calls = tmp_path / "store", _counting_clip(monkeypatch)
    run_predict(decoders[0], world, "train", tmp_path / "a", cfg, CPU, feature_store=store)
    built = calls[0]
    assert built > 0 and len(list(store.glob("*.safetensors"))) == 1
    runs.append(list(scores)), scores.clear()
    run_predict(decoders[1], world, "train", tmp_path / "b", cfg, CPU, feature_store=store)
    assert calls[0] == built  # no CLIP pass: read from the store
    runs.append(list(scores))
    for alone, stored_run in ((runs[0], runs[2]), (runs[1], runs[3])):  # the scores of a run without, bit for bit
        assert len(alone) == 6 and all(torch.equal(x, y) for x, y in zip(alone, stored_run, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))  # the decoders differ: each its own
    assert _same(tmp_path / "a", plain[0]) and _same(tmp_path / "b", plain[1])
    for k, out in enumerate((tmp_path / "a", tmp_path / "b")):  # the records of a run without the store
        record, alone = (json.loads((f / "_stage.json").read_text()) for f in (out, plain[k]))
        assert record["params"] == alone["params"] and record["inputs"] == alone["inputs"]


def test_other_views_or_images_miss(world, decoders, tmp_path, monkeypatch):
    store, calls = tmp_path / "store", _counting_clip(monkeypatch)
    run_predict(decoders[0], world, "train", tmp_path / "a", ONE, CPU, feature_store=store)
    built = calls[0]
    run_predict(decoders[1], world, "train", tmp_path / "b", replace(ONE, long_side=80), CPU, feature_store=store)
    assert calls[0] == 2 * built and len(list(store.glob("*.safetensors"))) == 2  # another view: computed
    run_predict(decoders[1], world, "val", tmp_path / "c", ONE, CPU, feature_store=store)
    assert calls[0] > 2 * built and len(list(store.glob("*.safetensors"))) == 3  # other images: computed
    seen = calls[0]
    run_predict(decoders[1], world, "train", tmp_path / "d", replace(ONE, long_side=80), CPU, feature_store=store)
    assert calls[0] == seen and _same(tmp_path / "d", tmp_path / "b")  # the same key again: read


def test_a_damaged_entry_is_computed_again_with_a_warning(world, decoders, tmp_path):
    store = tmp_path / "store"
    run_predict(decoders[0], world, "train", tmp_path / "a", ONE, CPU, feature_store=store)
    entry = next(store.glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(VplWarning, match="unreadable feature-store entry"):
        run_predict(decoders[0], world, "train", tmp_path / "b", ONE, CPU, feature_store=store)
    assert _same(tmp_path / "a", tmp_path / "b")
    assert stored.read_entry(entry, lambda t: None)  # rewritten whole


def test_the_store_with_dense_is_one_line(decoders, tmp_path):
    r = CliRunner().invoke(app, ["predict", str(decoders[0]), "-o", str(tmp_path / "p"), "--split", "train",
                                 "--classes", "cat,dog", "--dense", "maskclip", "--feature-store", str(tmp_path / "s")])
    assert r.exit_code == 2, r.output
    assert "--feature-store" in r.output and "--dense" in r.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


def test_class_argmax_is_torchs_argmax_over_classes_ties_and_nan_included():
    """predict's masks: the class-last argmax picks what ``argmax(0)`` picks, the first of equal maxima and a NaN
    as torch ranks it."""
    from vpltool.decoder import class_argmax

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (9, 37, 41), generator=g).float()  # many ties
    scores[4, 5, 6] = float("nan")
    scores[:, 0, 0] = 1.0  # every class equal
    got = class_argmax(scores)
    assert got.dtype == torch.int64 and torch.equal(got, scores.argmax(0))
    assert got[0, 0] == 0 and got[5, 6] == scores[:, 5, 6].argmax()

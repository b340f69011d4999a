"""`segment`, `cam --dense` and `predict --classes --dense` end to end on the tiny world (CPU, seeded), and their
batched loops without a stalling op."""

from __future__ import annotations

import json

import numpy as np
import pytest
from stalls import StallCounter

from vpltool import io
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig, SegmentConfig
from vpltool.data import open_dataset
from vpltool.errors import VplError
from vpltool.runtime import batches
from vpltool.stages.segment import class_names, class_synonyms, run_segment

CPU = RuntimeConfig(device="cpu", workers=1)
SMALL = dict(templates="a photo of a {}.", background="grass,sky", short_side=48)


def test_synonyms_parse():
    assert class_synonyms(["tv monitor|screen", "potted_plant"]) == [["tv monitor", "screen"], ["potted plant"]]
    assert class_names(["tv monitor|screen", "dog"]) == ["tv monitor", "dog"]


def test_segment_end_to_end_is_scored_by_name(world, tiny_spec, tmp_path):
    from vpltool.stages.eval import run_eval

    ds = open_dataset(world, "val")
    names = list(ds.classes[1:])
    picked = [names[1], f"{names[0]}|{names[2]}"]  # a subset, one class with a synonym
    out = tmp_path / "seg"
    s = run_segment(ds, out, tiny_spec, SegmentConfig(dense="naclip", classes=tuple(picked), **SMALL), CPU)
    assert s.done == len(ds.items)
    record = io.read_stage_record(out, "segment")
    assert record["classes"] == ["background", names[1], names[0]]
    assert record["params"]["settings"]["pamr_steps"] == 10 and record["params"]["dense"] == "naclip"
    for item in ds.items:
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=3)
        assert mask.shape == io.load_image(item.image).shape[:2] and mask.max() <= 2
    with pytest.warns(Warning):  # the masks never predict the classes left out
        result, _ = run_eval(out)
    assert 0.0 <= result["miou"] <= 1.0
    again = run_segment(ds, out, tiny_spec, SegmentConfig(dense="naclip", classes=tuple(picked), **SMALL), CPU)
    assert again.done == 0 and again.skipped == len(ds.items)  # a resume skips finished masks


def test_segment_shards_complete_the_folder_with_the_same_masks(world, tiny_spec, tmp_path):
    # the shard is applied once, by the stage folder (as under torchrun): two shards make every mask, each once
    ds = open_dataset(world, "val")
    cfg = SegmentConfig(dense="clearclip", classes=tuple(ds.classes[1:3]), **SMALL)
    whole = run_segment(ds, tmp_path / "one", tiny_spec, cfg, CPU)
    first = run_segment(ds, tmp_path / "two", tiny_spec, cfg, CPU, shard=(0, 2))
    second = run_segment(ds, tmp_path / "two", tiny_spec, cfg, CPU, shard=(1, 2))
    assert first.done + second.done == whole.done == len(ds.items)
    assert first.done == len(ds.items[0::2]) and second.done == len(ds.items[1::2])
    io.read_stage_record(tmp_path / "two", "segment")  # complete once the last shard is done
    for item in ds.items:
        assert (io.mask_path(tmp_path / "one", item.id).read_bytes()
                == io.mask_path(tmp_path / "two", item.id).read_bytes())


def test_segment_refuses_bad_input_before_the_model(world, tiny_spec, tmp_path):
    ds = open_dataset(world, "val")
    with pytest.raises(VplError, match="background"):
        run_segment(ds, tmp_path / "x", tiny_spec, SegmentConfig(classes=("background", "a"), **SMALL), CPU)
    with pytest.raises(VplError, match="--dense"):
        SegmentConfig(dense="nope")
    with pytest.raises(VplError, match="--slide-stride"):
        SegmentConfig(dense="sclip", slide_stride=500).resolved()
    (tmp_path / "file").write_text("x")
    with pytest.raises(VplError, match="not a folder"):
        run_segment(ds, tmp_path / "file", tiny_spec, SegmentConfig(**SMALL), CPU)


def test_dense_cams_feed_crf(world, text_protos, tmp_path):
    from vpltool.config import CrfConfig
    from vpltool.stages.cam import run_dense_cam
    from vpltool.stages.crf import run_crf

    cams = tmp_path / "cams"
    s = run_dense_cam(world, text_protos, cams, SegmentConfig(dense="clearclip", short_side=48, slide_crop=32,
                                                              slide_stride=16), CPU, split="train")
    ds = open_dataset(world, "train")
    assert s.done == len(ds.items)
    for item in ds.items:
        m = io.read_cam(io.cam_path(cams, item.id), ds.classes)
        assert m.labels == tuple(item.labels)
        assert m.cams.shape[1:] == io.load_image(item.image).shape[:2]
        assert not len(m.cams) or (m.cams.min() >= 0 and m.cams.max() <= 1)
    record = io.read_stage_record(cams, "cam")
    assert record["params"]["source"] == "dense" and record["params"]["settings"]["crop_mode"] == "pad"
    run_crf(cams, tmp_path / "crf", CrfConfig(), RuntimeConfig(device="cpu", workers=1))
    assert len(list((tmp_path / "crf").glob("*.png"))) == len(ds.items)


def test_predict_classes_through_the_dense_path(world, gt_pseudo, text_protos, tmp_path):
    from vpltool.stages.predict import run_predict
    from vpltool.stages.train_decoder import run_train_decoder

    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "d", cfg, CPU)
    ds = open_dataset(world, "val")
    names = tuple(ds.classes[1:3])
    with pytest.raises(VplError, match="--classes"):
        PredictConfig(dense="naclip")
    s = run_predict(tmp_path / "d" / "decoder.safetensors", world, "val", tmp_path / "p",
                    PredictConfig(classes=names, dense="sclip"), CPU)
    assert s.done == len(ds.items)
    record = json.loads((tmp_path / "p" / "_stage.json").read_text())
    assert record["classes"] == ["background", *names] and record["params"]["dense"] == "sclip"
    mask = io.read_mask(io.mask_path(tmp_path / "p", ds.items[0].id), num_classes=3)
    assert mask.dtype == np.uint8


def test_cam_and_predict_dense_check_the_methods_per_image_inputs_before_the_model(world, text_protos, tmp_path,
                                                                                  monkeypatch):
    """`cam --dense` and `predict --classes --dense` resolve the method as `segment` does: its hooks' check_items
    sees the items before any model loads, and its one line stops the run with nothing written."""
    from vpltool.models import registry
    from vpltool.models.dense.hooks import DenseHooks
    from vpltool.stages.cam import run_dense_cam
    from vpltool.stages.predict import _predict_dense

    seen = []

    def check_items(self, items):
        seen.append(len(items))
        raise VplError(f"{self.method or 'default'}: a per-image input is missing")

    monkeypatch.setattr(DenseHooks, "check_items", check_items)  # naclip's hooks are the defaults
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: pytest.fail("a model loaded before the check"))
    with pytest.raises(VplError, match="per-image input is missing"):
        run_dense_cam(world, text_protos, tmp_path / "cams", SegmentConfig(dense="naclip", short_side=48), CPU,
                      split="train")
    assert seen == [len(open_dataset(world, "train").items)] and not (tmp_path / "cams").exists()
    monkeypatch.setattr(io, "read_tensors", lambda *a, **k: _Decoder())  # no decoder needed to reach the check
    with pytest.raises(VplError, match="per-image input is missing"):
        _predict_dense("decoder.safetensors", open_dataset(world, "val"), tmp_path / "p",
                       PredictConfig(classes=("circle",), dense="naclip"), CPU, "cpu", None, None, None, None, None)
    assert seen[1] == len(open_dataset(world, "val").items) and not (tmp_path / "p").exists()


class _Decoder:
    """A decoder file's stand-in for `predict --dense`: the prompts it recorded (``recorded_prompts``)."""

    path = "decoder.safetensors"

    def meta(self, key, default=None):
        return {"prompts": {"templates": ["a photo of a {}."], "background_words": ["grass"]}}.get(key, default)


def test_segment_and_dense_cam_loops_never_stall(world, tiny_spec, text_protos, tmp_path, monkeypatch):
    """The main thread's loops of the dense segmentor and of `cam --dense` (both the shared
    :func:`vpltool.runtime.batches.run_image_batches`) dispatch no op that waits for the device (tests/stalls.py)."""
    from vpltool.stages.cam import dense as dense_cam

    monkeypatch.setenv("VPLTOOL_TEST_CUDA_PATHS", "1")
    counters, real = [], batches.load_batches

    def counting(*args, **kwargs):
        counter = StallCounter()
        counters.append(counter)
        for batch in real(*args, **kwargs):
            with counter:
                yield batch

    monkeypatch.setattr(batches, "load_batches", counting)
    ds = open_dataset(world, "train")
    for method in ("naclip", "sclip"):  # PAMR; the area filter and slide windows
        run_segment(ds, tmp_path / method, tiny_spec, SegmentConfig(dense=method, slide_crop=32, slide_stride=16,
                                                                    **SMALL),
                    RuntimeConfig(device="cpu", precision="fp32", batch_size=8, workers=1))
    dense_cam.run_dense_cam(world, text_protos, tmp_path / "cams", SegmentConfig(dense="naclip", short_side=48),
                            RuntimeConfig(device="cpu", precision="fp32", batch_size=8, workers=1), split="train")
    assert len(counters) == 3
    assert counters and sum(c.total for c in counters) == 0, [dict(c.counts) for c in counters]


@pytest.mark.cuda
def test_the_dense_loops_never_synchronise_on_a_gpu(world, tiny_spec, text_protos, tmp_path, monkeypatch):
    """segment (NACLIP: PAMR; SCLIP: windows and the area filter) and cam --dense on CUDA at batch 2: after the first
    batch, no call of the main loop waits for the device (torch raises on one)."""
    import torch

    from vpltool.stages.cam import dense as dense_cam

    def checked(real):
        def wrapped(*args, **kwargs):
            seen = 0
            try:
                for batch in real(*args, **kwargs):
                    if seen:
                        torch.cuda.set_sync_debug_mode("error")
                    seen += 1
                    yield batch
                    torch.cuda.set_sync_debug_mode("default")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return wrapped

    monkeypatch.setattr(batches, "load_batches", checked(batches.load_batches))
    gpu = RuntimeConfig(device="cuda", batch_size=2, workers=2)
    ds = open_dataset(world, "train")
    for method in ("naclip", "sclip"):
        assert run_segment(ds, tmp_path / method, tiny_spec, SegmentConfig(dense=method, slide_crop=32, slide_stride=16,
                                                                           **SMALL), gpu).done == len(ds.items)
    assert dense_cam.run_dense_cam(world, text_protos, tmp_path / "cams", SegmentConfig(dense="naclip", short_side=48),
                                   gpu, split="train").done == len(ds.items)


def test_a_class_is_named_by_its_first_non_blank_synonym():
    from vpltool.stages.segment import class_names, class_synonyms

    assert class_names(["|star", " circle | ring", "cat|"]) == ["star", "circle", "cat"]
    assert class_synonyms(["|star", "circle|ring"]) == [["star"], ["circle", "ring"]]

"""No operation that stalls a CUDA host in the main thread's loop of cam, extract and predict (issue 28).

On the CPU, under the test switch that runs the CUDA-only steps there (``VPLTOOL_TEST_CUDA_PATHS=1``: pinned
buffers, one event per batch, GradCAM's block in its CUDA precision), :class:`stalls.StallCounter` counts every op
the main thread dispatches in the loop's body, for every batch. It cannot see ``.tolist()`` or ``.numpy()``; the
``cuda``-marked test runs the same loops on a GPU under ``torch.cuda.set_sync_debug_mode("error")``, after a first
batch that warms the allocator and the kernels.
"""

from __future__ import annotations

import pytest
import torch
from stalls import StallCounter

from vpltool.config import DecoderConfig, ExtractConfig, RuntimeConfig
from vpltool.data import open_dataset
from vpltool.runtime import batches
from vpltool.stages import cam, extract, predict

IMAGES = 8


@pytest.fixture(scope="module")
def world8(tmp_path_factory):
    """A demo world of 8 train images (one batch of 8) and the same classes as the shared world."""
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("world8"), n_train=IMAGES, n_val=1, seed=1)


def _counted(monkeypatch, module) -> list[StallCounter]:
    """Wrap ``module.load_batches`` so that a StallCounter is active while the loop's body runs on each batch (the
    body runs while the generator is suspended inside the ``with``); the DataLoader's own work between batches
    (its set-up draws a seed with ``.item()`` on a CPU tensor) happens in worker processes or outside the count."""
    counters, real = [], module.load_batches

    def counting(*args, **kwargs):
        counter = StallCounter()
        counters.append(counter)
        for batch in real(*args, **kwargs):
            with counter:
                yield batch

    monkeypatch.setattr(module, "load_batches", counting)
    return counters


def _check(counters: list[StallCounter]) -> None:
    assert counters, "the loop did not run"
    assert sum(c.total for c in counters) == 0, [dict(c.counts) for c in counters]


@pytest.fixture
def cuda_paths(monkeypatch):
    monkeypatch.setenv("VPLTOOL_TEST_CUDA_PATHS", "1")


RUN = RuntimeConfig(device="cpu", precision="fp32", batch_size=IMAGES, workers=2)


@pytest.mark.parametrize("cache", ["full", "light"])
def test_extract_and_cam_loops_never_stall(cache, cuda_paths, world8, tiny_spec, text_protos, tmp_path, monkeypatch):
    dataset = open_dataset(world8, "train")
    counted = _counted(monkeypatch, batches)  # the loop of extract and of cam: run_image_batches
    extract.run_extract(dataset, tmp_path / "f", tiny_spec, ExtractConfig(cache=cache), RUN)
    _check(counted)
    before = len(counted)
    summary = cam.run_cam(tmp_path / "f", text_protos, tmp_path / "c", runtime=RUN)
    assert summary.done == IMAGES and len(counted) > before  # cam's loop ran, counted
    _check(counted)


def test_cam_from_a_dataset_never_stalls(cuda_paths, world8, text_protos, tmp_path, monkeypatch):
    counted = _counted(monkeypatch, batches)  # cam's loop: run_image_batches
    assert cam.run_cam(world8, text_protos, tmp_path / "c", split="train", runtime=RUN).done == IMAGES
    _check(counted)


def test_predict_loop_never_stalls(cuda_paths, world8, gt_pseudo, text_protos, tmp_path, monkeypatch):
    from vpltool.stages.train_decoder import run_train_decoder

    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "d", cfg, RuntimeConfig(device="cpu", workers=1,
                                                                                  precision="fp32"))
    counted = _counted(monkeypatch, batches)  # predict's loop: run_image_batches
    summary = predict.run_predict(tmp_path / "d" / "decoder.safetensors", world8, "train", tmp_path / "p", runtime=RUN)
    assert summary.done == IMAGES
    _check(counted)


# --------------------------------------------------------------------------------------------- on a GPU
def _sync_checked(monkeypatch, module) -> list[int]:
    """Wrap ``module.load_batches``: from the second batch on, any synchronising CUDA call is an error."""
    batches, real = [], module.load_batches

    def checked(*args, **kwargs):
        try:
            for batch in real(*args, **kwargs):
                if batches:
                    torch.cuda.set_sync_debug_mode("error")
                batches.append(len(batch["index"]))
                yield batch
                torch.cuda.set_sync_debug_mode("default")
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(module, "load_batches", checked)
    return batches


@pytest.mark.cuda
def test_the_steady_state_loops_never_synchronise_on_a_gpu(world8, tiny_spec, text_protos, gt_pseudo, tmp_path,
                                                           monkeypatch):
    """extract, cam (cached tokens, light cache, dataset) and predict on CUDA at batch 2: after the first batch,
    no call of the main loop waits for the device (torch raises on one)."""
    from vpltool.stages.train_decoder import run_train_decoder

    gpu = RuntimeConfig(device="cuda", batch_size=2, workers=2)
    dataset = open_dataset(world8, "train")
    seen = _sync_checked(monkeypatch, batches)  # the loop of extract, cam and predict: run_image_batches
    for cache in ("full", "light"):
        seen.clear()  # each run's first batch warms up
        extract.run_extract(dataset, tmp_path / cache, tiny_spec, ExtractConfig(cache=cache), gpu)
        assert sum(seen) == IMAGES and len(seen) > 1
        seen.clear()
        assert cam.run_cam(tmp_path / cache, text_protos, tmp_path / f"c{cache}", runtime=gpu).done == IMAGES
    seen.clear()
    assert cam.run_cam(world8, text_protos, tmp_path / "cd", split="train", runtime=gpu).done == IMAGES
    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "d", cfg, RuntimeConfig(device="cuda", workers=1))
    seen.clear()
    assert predict.run_predict(tmp_path / "d" / "decoder.safetensors", world8, "train", tmp_path / "p",
                               runtime=gpu).done == IMAGES

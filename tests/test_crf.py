"""`crf`: CLIP-ES's dense-CRF pseudo masks, the parity image, --no-crf, workers, the file contract, errors."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vpltool import io
from vpltool.config import CrfConfig, RuntimeConfig
from vpltool.errors import ContractError, MissingDependencyError, VplError
from vpltool.io import mask_path
from vpltool.ops.densecrf import dense_crf
from vpltool.ops.kernels import cams_to_labels, clip_es_image, crf_probabilities, pseudo_labels
from vpltool.runtime.numerics import run_numerics
from vpltool.stages.crf import refine_image, run_crf

NUMERICS = run_numerics("fp32")  # what a `cam` run records of its dtype and mode

needs_crf = pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None,
                               reason="the CRF extra is not installed: pip install -e '.[crf]'")

ONE = RuntimeConfig(device="cpu", workers=1)  # auto picks the torch backend where CUDA is (a GPU machine)


# --------------------------------------------------------------------------------------------- fixtures
def _gt_cams(gt: np.ndarray, labels: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """[K, H, W] float32 CAM-like maps: blurred GT blobs that spill over object edges, plus a little noise."""
    h, w = gt.shape
    maps = []
    for c in labels:
        blob = cv2.GaussianBlur((gt == c).astype(np.float32), (0, 0), sigmaX=4.0)
        blob = np.clip(blob * 1.5 + rng.uniform(0, 0.1, (h, w)).astype(np.float32), 0, None)
        maps.append(blob / max(float(blob.max()), 1e-6))
    return np.stack(maps) if maps else np.zeros((0, h, w), np.float32)


def _write_cam_folder(folder: Path, dataset, size_override: dict[str, tuple[int, int]] | None = None,
                      seed: int = 0) -> Path:
    """A finished `cam`-like folder over ``dataset``: one CAM file per item + a `_stage.json` naming the dataset."""
    import torch

    rng = np.random.default_rng(seed)
    for item in dataset.items:
        cams = _gt_cams(io.read_mask(item.gt), item.labels, rng)
        if size_override and item.id in size_override:
            cams = np.zeros((len(item.labels), *size_override[item.id]), np.float32)
        io.write_cam(io.cam_path(folder, item.id), torch.from_numpy(cams), item.labels, classes=dataset.classes,
                     params={}, id=item.id, image_size=list(cams.shape[1:]), numerics=NUMERICS)
    io.write_stage_record(folder, "cam", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=NUMERICS)  # what every stage records (the record and each item): dtype and mode
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from vpltool.data import open_dataset
    from vpltool.demo.make_world import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("crf_world"), n_train=4, n_val=2, seed=0)
    return open_dataset(root, "train")


@pytest.fixture(scope="module")
def cams_dir(dataset, tmp_path_factory) -> Path:
    return _write_cam_folder(tmp_path_factory.mktemp("cams"), dataset)


@pytest.fixture(scope="module")
def pseudo_dir(cams_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pseudo")
    run_crf(cams_dir, out, runtime=ONE)
    return out


def _blocks_image() -> tuple[np.ndarray, np.ndarray]:
    """A 24x32 image of three colour blocks and its [24, 32] label map (0, 1, 2)."""
    labels = np.zeros((24, 32), np.int64)
    labels[:, 12:22], labels[:, 22:] = 1, 2
    colours = np.array([[40, 120, 40], [220, 30, 30], [30, 30, 220]], np.uint8)
    return colours[labels], labels


# --------------------------------------------------------------------------------------------- kernels
def test_probabilities_stack_background_first():
    cams = np.array([[[0.2, 1.0]], [[0.5, 0.0]]], np.float16)  # [K=2, 1, 2]
    probs = crf_probabilities(cams, bg_exponent=2.0)
    assert probs.shape == (3, 1, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], [[0.5**2, 0.0]])
    np.testing.assert_allclose(probs[1:], cams.astype(np.float32))
    assert crf_probabilities(np.zeros((0, 2, 3)), 1.0).tolist() == np.ones((1, 2, 3)).tolist()  # no label: all bg


@needs_crf
def test_confident_unaries_keep_their_argmax():
    image, truth = _blocks_image()
    cams = np.stack([(truth == 1), (truth == 2)]).astype(np.float32)  # one-hot: unary gap -log(1e-5) = 11.5
    q = dense_crf(image, crf_probabilities(cams, 1.0))
    assert q.shape == (3, 24, 32) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(q.argmax(0), truth)
    mask = refine_image(image, cams, (7, 3))
    np.testing.assert_array_equal(mask, np.array([0, 7, 3], np.uint8)[truth])  # rows map to the dataset ids


@needs_crf
def test_low_confidence_pixels_become_ignore():
    image, _ = _blocks_image()
    cams = np.full((2, 24, 32), 0.5, np.float32)  # bg = cam1 = cam2 = 0.5: Q stays uniform at 1/3 < 0.95
    mask = refine_image(image, cams, (1, 2))
    assert (mask == 255).all()
    assert (refine_image(image, cams, (1, 2), CrfConfig(confidence=0.0)) != 255).all()  # 0 = never ignore


def test_pseudo_labels_threshold_and_ties():
    scores = np.array([[[0.5, 0.2]], [[0.5, 0.97]]], np.float32)  # pixel 0: a tie, pixel 1: confident class
    np.testing.assert_array_equal(pseudo_labels(scores, (4,), None), [[0, 4]])  # ties go to background
    np.testing.assert_array_equal(pseudo_labels(scores, (4,), 0.95), [[255, 4]])


def test_no_crf_is_the_cam_argmax_eval_scores(dataset):
    rng = np.random.default_rng(1)
    cams = rng.uniform(0, 1, (2, 8, 9)).astype(np.float32)
    image = np.zeros((8, 9, 3), np.uint8)
    for a in (1.0, 2.0):
        mask = refine_image(image, cams, (2, 5), CrfConfig(no_crf=True, bg_exponent=a))
        np.testing.assert_array_equal(mask, cams_to_labels(cams, (2, 5), a))


def test_clip_es_image_wraps_mean_subtracted_bgr():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [0, 0, 103], [0, 0, 105]]], np.uint8)
    # B - 104.008 etc., truncated toward zero, then modulo 256: -104.008 -> 152, -1.008 -> 255, 0.992 -> 0
    expected = [[[152, 140, 134], [150, 138, 132], [255, 140, 134], [0, 140, 134]]]
    out = clip_es_image(rgb)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_missing_pydensecrf_is_one_line(monkeypatch, cams_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # None in sys.modules makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[crf\]' in vpltool's checkout") as info:
        run_crf(cams_dir, tmp_path / "out", runtime=ONE)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # failed before touching the output
    run_crf(cams_dir, tmp_path / "plain", CrfConfig(no_crf=True), ONE)  # --no-crf does not need it


# --------------------------------------------------------------------------------------------- the stage
@needs_crf
def test_stage_writes_palette_pngs_and_a_record(pseudo_dir, cams_dir, dataset):
    record = io.read_stage_record(pseudo_dir, "crf")
    assert record["count"] == len(dataset.items)
    assert record["inputs"] == {"cams": io.sha256_file(io.stage_record_path(cams_dir)), "dataset": dataset.identity()}
    for item in dataset.items:
        with Image.open(mask_path(pseudo_dir, item.id)) as img:
            assert img.mode == "P" and img.getpalette()[:9] == io.voc_palette()[:9]
        mask = io.read_mask(mask_path(pseudo_dir, item.id))
        assert mask.dtype == np.uint8 and mask.shape == io.read_mask(item.gt).shape
        assert set(np.unique(mask)) <= {0, 255, *item.labels}


@needs_crf
def test_palette_png_round_trips_the_labels(pseudo_dir, cams_dir, dataset):
    from vpltool.io import load_image

    item = next(it for it in dataset.items if it.labels)
    maps = io.read_cam(io.cam_path(cams_dir, item.id), dataset.classes)
    cams, labels = maps.cams, maps.labels
    expected = refine_image(load_image(item.image), cams, labels)
    np.testing.assert_array_equal(io.read_mask(mask_path(pseudo_dir, item.id)), expected)


@needs_crf
def test_workers_give_identical_pngs(pseudo_dir, cams_dir, tmp_path):
    ticks, starts = [], []
    summary = run_crf(cams_dir, tmp_path / "two", runtime=RuntimeConfig(device="cpu", workers=2), on_item=ticks.append,
                      on_start=starts.append)
    n = len(list(pseudo_dir.glob("*.png")))
    assert summary.workers == 2 and summary.done == n and starts == [n] and sum(ticks) == n
    for png in pseudo_dir.glob("*.png"):
        assert (tmp_path / "two" / png.name).read_bytes() == png.read_bytes()


@needs_crf
def test_finished_items_are_skipped_and_params_guarded(pseudo_dir, cams_dir, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(pseudo_dir, out)
    record = io.read_json(out / io.STAGE_RECORD)
    (out / io.STAGE_RECORD).unlink()
    io.write_json(out / io.RUN_RECORD, {"stage": "crf", "params": record["params"],
                                        io.RUN_DIGEST: record[io.RUN_DIGEST]})  # as the killed run left it
    next(out.glob("*.png")).unlink()  # an interrupted run: one mask and the record missing, the run's record kept
    summary = run_crf(cams_dir, out, runtime=ONE)
    assert (summary.done, summary.skipped) == (1, len(list(out.glob("*.png"))) - 1)
    with pytest.raises(VplError, match="other parameters"):
        run_crf(cams_dir, out, CrfConfig(iterations=3), ONE)


@needs_crf
def test_eval_scores_the_pseudo_masks(pseudo_dir):
    from vpltool.stages.eval import run_eval

    result, _ = run_eval(pseudo_dir)
    assert result["kind"] == "mask" and result["n_images"] == 4 and result["miou"] > 0.5


@needs_crf
def test_image_and_cam_size_mismatch_names_the_file(dataset, tmp_path):
    bad = next(it.id for it in dataset.items if it.labels)
    cams = _write_cam_folder(tmp_path / "cams", dataset, size_override={bad: (50, 40)})
    with pytest.raises(ContractError) as info:
        run_crf(cams, tmp_path / "out", runtime=ONE)
    message = str(info.value)
    assert f"{bad}.safetensors" in message and "50x40" in message and "\n" not in message


@needs_crf
def test_bad_options_and_inputs_are_one_line(cams_dir, tmp_path):
    with pytest.raises(VplError, match="--parity"):
        run_crf(cams_dir, tmp_path / "a", CrfConfig(parity="caffe"), ONE)
    with pytest.raises(VplError, match="--confidence"):
        run_crf(cams_dir, tmp_path / "b", CrfConfig(confidence=1.5), ONE)
    with pytest.raises(VplError, match="run `vpltool cam` first"):
        run_crf(tmp_path / "nothing", tmp_path / "c", runtime=ONE)


@needs_crf
@pytest.mark.parametrize("confidence", [0.0, 0.95, 1.0])
def test_the_summary_counts_the_ignored_pixels_it_wrote(cams_dir, tmp_path, confidence):
    """`crf --confidence 1.0` once made all-255 masks without a word; the summary now says what share is 255."""
    out = tmp_path / "out"
    summary = run_crf(cams_dir, out, CrfConfig(confidence=confidence), ONE)
    masks = [io.read_mask(p) for p in sorted(out.glob("*.png"))]
    share = sum(int((m == 255).sum()) for m in masks) / sum(m.size for m in masks)
    assert summary.ignored == pytest.approx(share)
    assert (share == 0) == (confidence == 0) and (confidence < 1 or share > 0.5)
    again = run_crf(cams_dir, out, CrfConfig(confidence=confidence), ONE)  # a resume: nothing new written
    assert again.done == 0 and again.ignored == pytest.approx(share)  # the share still covers the whole folder


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_a_real_file_size_limit_in_crf_workers_is_one_line(cams_dir, tmp_path, backend):
    """``ulimit -f`` (RLIMIT_FSIZE, inherited by the spawned CRF workers): PIL's PNG writer fails with EFBIG inside
    a worker (chained with its ``'_idat' object has no attribute 'fileno'``), or on the torch backend's writer
    thread; the user sees one line, exit 2, and no partial file. The limit lets ``_run.json`` through and stops
    every mask (each holds a 768-byte palette). The torch backend loads in this process (``--workers 1``): the
    DataLoader's workers hand tensors over in shared-memory files, which the same limit forbids."""
    import os
    import resource
    import subprocess

    out = tmp_path / "pseudo"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (800, 800))

    if backend == "pydensecrf" and importlib.util.find_spec("pydensecrf") is None:
        pytest.skip("the CRF extra is not installed")
    workers = "2" if backend == "pydensecrf" else "1"
    r = subprocess.run([sys.executable, "-m", "vpltool", "crf", str(cams_dir), "-o", str(out), "--workers", workers,
                        "--backend", backend],
                       capture_output=True, text=True, preexec_fn=limit, env={**os.environ, "COLUMNS": "300"})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-1].startswith("error: file too large") and f"writing {out}" in lines[-1], lines
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.tmp"))


# --------------------------------------------------------------------------------------------- the torch backend
TORCH_CPU = RuntimeConfig(device="cpu", workers=1, batch_size=3)


def _equal_fraction(a: Path, b: Path, item_id: str) -> float:
    return float((io.read_mask(mask_path(a, item_id)) == io.read_mask(mask_path(b, item_id))).mean())


@needs_crf
def test_torch_backend_writes_the_pydensecrf_masks_and_records_itself(pseudo_dir, cams_dir, dataset, tmp_path):
    out, ticks = tmp_path / "torch", []
    summary = run_crf(cams_dir, out, CrfConfig(backend="torch"), TORCH_CPU, on_item=ticks.append)
    n = len(dataset.items)
    assert (summary.backend, summary.done, sum(ticks)) == ("torch", n, n)
    assert io.read_stage_record(out, "crf")["params"]["backend"] == "torch"
    assert io.read_stage_record(pseudo_dir, "crf")["params"]["backend"] == "pydensecrf"  # auto on a CPU
    assert min(_equal_fraction(out, pseudo_dir, item.id) for item in dataset.items) >= 0.995
    with pytest.raises(VplError, match="other parameters"):  # the masks of two backends are not mixed on resume
        run_crf(cams_dir, out, CrfConfig(backend="pydensecrf"), ONE)


def test_torch_backend_does_not_depend_on_loaders_or_batch_size(cams_dir, tmp_path):
    """Also runs without pydensecrf: the torch backend does not need the CRF extra."""
    run_crf(cams_dir, tmp_path / "a", CrfConfig(backend="torch"), TORCH_CPU)
    summary = run_crf(cams_dir, tmp_path / "b", CrfConfig(backend="torch"),
                      RuntimeConfig(device="cpu", workers=2, batch_size=1))
    assert summary.workers == 2 and 0 < summary.ignored < 1
    for png in (tmp_path / "a").glob("*.png"):
        assert (tmp_path / "b" / png.name).read_bytes() == png.read_bytes()


def test_backend_option_default_record_and_bad_values(cams_dir, tmp_path):
    from typer.testing import CliRunner

    from vpltool.cli import app

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    help_text = " ".join(invoke("crf", "--help").output.split())
    assert "[default: auto]" in help_text.split("--backend <str>", 1)[1].split("--device <str>", 1)[0]
    r = invoke("crf", cams_dir, "-o", tmp_path / "t", "--backend", "torch", "--device", "cpu", "--workers", "1")
    assert r.exit_code == 0 and "crf (torch)" in r.output, r.output
    assert io.read_stage_record(tmp_path / "t", "crf")["params"]["backend"] == "torch"
    for args, words in ((["--backend", "gpu"], "--backend 'gpu': choose auto, pydensecrf or torch"),
                        (["--backend", "torch", "--parity", "clip-es"], "drop --backend torch")):
        r = invoke("crf", cams_dir, "-o", tmp_path / "bad", *args)
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 2 and len(errors) == 1 and words in errors[0], r.output
        assert "Traceback" not in r.output and not (tmp_path / "bad").exists()


@needs_crf
def test_dense_crfs_of_one_image_equal_each_dense_crf_alone():
    image, _ = _blocks_image()
    rng = np.random.default_rng(1)
    probs = [rng.uniform(0, 1, (3, *image.shape[:2])).astype(np.float32) for _ in range(3)]
    from vpltool.ops.densecrf import dense_crfs

    together = dense_crfs(image, probs)
    alone = [dense_crf(image, p) for p in probs]
    assert not np.array_equal(alone[0], alone[1])  # different unaries: the equality below could fail
    for a, b in zip(together, alone):
        assert a.tobytes() == b.tobytes()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


@needs_crf
def test_with_cams_writes_both_folders_as_their_own_runs(pseudo_dir, cams_dir, dataset, tmp_path):
    """`crf A -o OA --with-cams B --with-out OB`: OA and OB hold the bytes (masks and records) of `crf A -o OA` and
    `crf B -o OB`, on one process or two."""
    other = _write_cam_folder(tmp_path / "cams_b", dataset, seed=7)
    run_crf(other, tmp_path / "b_alone", runtime=ONE)
    assert _files(tmp_path / "b_alone") != _files(pseudo_dir)  # other CAMs, other masks: the check can fail
    for workers in (1, 2):
        out_a, out_b = tmp_path / f"a{workers}", tmp_path / f"b{workers}"
        summary = run_crf(cams_dir, out_a, runtime=RuntimeConfig(device="cpu", workers=workers),
                          with_cams=(other, out_b))
        assert summary.complete and summary.done == len(dataset.items)
        assert _files(out_a) == _files(pseudo_dir)
        assert _files(out_b) == _files(tmp_path / "b_alone")
    (out_b / next(out_b.glob("*.png")).name).unlink()  # a resume redoes what either folder misses
    again = run_crf(cams_dir, out_a, runtime=ONE, with_cams=(other, out_b))
    assert again.done == 1 and _files(out_b) == _files(tmp_path / "b_alone")


@needs_crf
def test_with_cams_of_other_images_or_the_torch_backend_is_refused(cams_dir, dataset, tmp_path):
    from vpltool.data import open_dataset

    val = open_dataset(dataset.root, "val")
    other = _write_cam_folder(tmp_path / "cams_val", val)
    with pytest.raises(VplError, match="--with-cams .*other images"):
        run_crf(cams_dir, tmp_path / "a", runtime=ONE, with_cams=(other, tmp_path / "b"))
    with pytest.raises(VplError, match="--with-cams .*pydensecrf"):
        run_crf(cams_dir, tmp_path / "a", CrfConfig(backend="torch"), ONE, with_cams=(other, tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


@needs_crf
def test_start_out_writes_the_confidence_0_run_beside_the_masks_from_the_same_crf(pseudo_dir, cams_dir, dataset,
                                                                                 tmp_path):
    """`crf A -o OA --start-out S` (and `--with-cams B --with-out OB --with-start-out SB`): OA holds `crf A`'s bytes,
    S `crf A --confidence 0`'s (masks and records), one CRF an image; a start folder needs pydensecrf and a folder of
    its own."""
    run_crf(cams_dir, tmp_path / "zero", CrfConfig(confidence=0.0), ONE)
    other = _write_cam_folder(tmp_path / "cams_b", dataset, seed=7)
    run_crf(other, tmp_path / "b_alone", runtime=ONE)
    run_crf(other, tmp_path / "b_zero", CrfConfig(confidence=0.0), ONE)
    zero = _files(tmp_path / "zero")
    assert zero.keys() == _files(pseudo_dir).keys() and zero != _files(pseudo_dir)  # 255 pixels differ: can fail
    summary = run_crf(cams_dir, tmp_path / "a", runtime=ONE, start_out=tmp_path / "s")
    assert summary.complete and _files(tmp_path / "a") == _files(pseudo_dir) and _files(tmp_path / "s") == zero
    run_crf(cams_dir, tmp_path / "a2", runtime=RuntimeConfig(device="cpu", workers=2), start_out=tmp_path / "s2",
            with_cams=(other, tmp_path / "b2"), with_start_out=tmp_path / "sb2")
    assert _files(tmp_path / "a2") == _files(pseudo_dir) and _files(tmp_path / "s2") == zero
    assert _files(tmp_path / "b2") == _files(tmp_path / "b_alone")
    assert _files(tmp_path / "sb2") == _files(tmp_path / "b_zero")
    (tmp_path / "s" / next((tmp_path / "s").glob("*.png")).name).unlink()  # a resume redoes what the start lacks
    assert run_crf(cams_dir, tmp_path / "a", runtime=ONE, start_out=tmp_path / "s").done == 1
    assert _files(tmp_path / "s") == zero
    refused = {"pydensecrf": dict(cfg=CrfConfig(backend="torch"), start_out=tmp_path / "x"),
               "given as both --out and --start-out": dict(start_out=tmp_path / "y" / ".." / "out"),
               "two of this run's outputs": dict(with_cams=(other, tmp_path / "b3"), with_start_out=tmp_path / "out"),
               "pass --with-cams and --with-out too": dict(with_start_out=tmp_path / "x")}
    for words, kwargs in refused.items():
        with pytest.raises(VplError) as e:
            run_crf(cams_dir, tmp_path / "out", kwargs.pop("cfg", CrfConfig()), ONE, **kwargs)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()  # refused before anything is written

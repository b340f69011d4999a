"""bench/bench_sam3_device.py (SAM 3's methods in half precision on a device, a folder batched) at its smoke size on
the CPU: one JSON object with every figure it promises, fp32 against a separate fp32 run at distance 0 (the CPU is
deterministic), the batched folder equal to one photo at a time; and ``sam3_scores_batch`` itself against
``sam3_scores`` on photos of different sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOY_SAM3 = ROOT / "vpltool" / "assets" / "toy-sam3"
needs_toy = pytest.mark.skipif(not (TOY_SAM3 / "model.safetensors").is_file(), reason="the toy SAM 3 is missing")
pytest.importorskip("transformers")


@needs_toy
def test_quick_run_prints_each_precision_s_distance_and_the_folder_s_timings(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_sam3_device.py"), "--device", "cpu",
                           "--quick", "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["benchmark"] == "sam3-device" and result["machine"]["device"] == "cpu" and result["cpu_name"]
    assert result["errors"] == [] and result["skipped"] == [] and result["precisions"] == ["fp32"]
    toy = result["models"]["toy"]
    assert set(toy["methods"]) == {"sam3", "activesam"}
    for method, rows in toy["methods"].items():
        assert set(rows) == {"reference_fp32", "fp32"}, method
        row = rows["fp32"]
        assert row["s_per_photo"] > 0 and row["weights_mib"] > 0 and row["peak_device_mib"] is None, method
        against = row["against_fp32"]
        # a separate run of the same precision on the CPU: the same numbers, every label equal
        assert against["scores_max_abs_diff"] == 0.0 and against["labels_equal_pct"] == 100.0, method
        assert against["labels"] == 2 * 96 * 96 and against["finite"], method
        assert against["fp32_score_max"] > 0, method  # something scored: the distance compares real maps
    folder = toy["folder"]["fp32"]
    assert folder["photos"] == 2 and folder["batch"] == 2
    assert folder["one_at_a_time_s_per_photo"] > 0 and folder["batched_s_per_photo"] > 0
    assert folder["batched_against_one_max_abs_diff"] <= folder["bar"] and folder["bar_met"]


@needs_toy
def test_a_spent_budget_skips_every_unit_and_still_prints_the_json(tmp_path):
    out = tmp_path / "partial.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_sam3_device.py"), "--device", "cpu",
                           "--quick", "--work", str(tmp_path), "--budget-s", "0", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["skipped"] == ["toy/sam3/reference", "toy/activesam/reference", "toy/folder/fp32"]
    assert result["models"]["toy"]["methods"] == {"sam3": {}, "activesam": {}} and result["errors"] == []
    assert json.loads(out.read_text())["skipped"] == result["skipped"]


@needs_toy
def test_a_batch_scores_each_photo_as_one_at_a_time_does():
    """Photos of three sizes, one ViT forward: each photo's scores those of its own forward (fp32, CPU)."""
    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec
    from vpltool.models.dense.sam3 import Sam3Settings, sam3_scores, sam3_scores_batch

    torch.manual_seed(0)
    sam = load_model("sam3", Sam3Spec(str(TOY_SAM3)), "cpu")
    rng = np.random.default_rng(0)
    photos = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              ((40, 60), (96, 96), (70, 33))]
    sizes = [tuple(p.shape[:2]) for p in photos]
    settings = Sam3Settings(confidence_threshold=0.0, heads="both")  # every query kept: both heads, every mask
    with torch.no_grad():
        text = sam.encode_text(["circle", "square", "triangle"])
        one = [sam3_scores(sam, p, text, s, settings) for p, s in zip(photos, sizes)]
        batched = sam3_scores_batch(sam, photos, text, sizes, settings)
    assert [tuple(b.shape) for b in batched] == [(3, *s) for s in sizes]
    for a, b in zip(one, batched):
        assert float(a.max()) > 0  # scores to compare
        assert float((a - b).abs().max()) <= 1e-4
    # the photos are not mixed up: reversed, and two a forward (a batch of two, then of one), each its own scores
    reverse = sam3_scores_batch(sam, photos[::-1], text, sizes[::-1], settings)[::-1]
    pairs = sam3_scores_batch(sam, photos, text, sizes, settings, encode=2)
    for a, b, c in zip(one, reverse, pairs):
        assert float((a - b).abs().max()) <= 1e-4 and float((a - c).abs().max()) <= 1e-4


@needs_toy
@pytest.mark.cuda
def test_on_cuda_segment_s_hook_runs_the_loader_s_batch_through_one_encoder_forward():
    """`segment`'s ``dense_logits`` hook for ``--dense sam3`` on CUDA: three photos, one image-encoder forward,
    each photo's scores those of one photo at a time (fp32)."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method
    from vpltool.models.dense.sam3 import sam3_scores, sam3_settings

    dense = resolve_method(SegmentConfig.of("sam3", sam3_weights=str(TOY_SAM3), confidence_threshold=0.0))
    bb = dense.load(None, "cuda")
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (96, 96), (70, 33))]
    sizes = [p.shape[:2] for p in photos]
    calls = []
    encode = bb.sam.encode_image
    bb.sam.encode_image = lambda pixels: calls.append(pixels.shape[0]) or encode(pixels)
    with torch.no_grad():
        text = dense.hooks.query_text(bb, ["circle", "square", "triangle"], ["{}"])
        batched = dense.hooks.dense_logits(bb, None, text, sizes, dense.settings,
                                           [dense.hooks.extra_inputs(None, p) for p in photos])
        assert calls == [3]
        encoded = bb.text_of(text.words)
        for photo, size, got in zip(photos, sizes, batched):
            one = sam3_scores(bb.sam, torch.tensor(photo), encoded, size, sam3_settings(dense.cfg))
            assert float(one.max()) > 0 and float((one - got).abs().max()) <= 1e-4

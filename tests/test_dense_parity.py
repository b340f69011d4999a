"""parity/dense_parity.py and dense_ref_runner.py without the clones: the comparison's plumbing (``--quick``:
vpltool against itself, then a reference changed on purpose), and the runner on a fake clone that uses the same
OpenMMLab imports and hooks as the methods' segmentors (its config chain, stubs, text memo, captured outputs)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "parity"
sys.path[:0] = [str(BENCH), str(ROOT / "bench"), str(ROOT / "docgen")]

import dense_parity  # noqa: E402
import dense_ref_runner  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run (1 photo, no point d) whose work folder is kept: (its JSON, the folder)."""
    import io
    from contextlib import redirect_stdout

    work = tmp_path_factory.mktemp("dense_parity")
    buf = io.StringIO()
    with redirect_stdout(buf):
        dense_parity.main(["--quick", "--work", str(work), "--no-preprocessing"])
    return json.loads(buf.getvalue()), work


def test_quick_self_comparison_prints_every_method_at_zero(quick):
    result, _ = quick
    assert result["benchmark"] == "dense-parity" and result["quick"] is True
    assert set(result["methods"]) == set(dense_parity.METHODS)
    assert set(result["variants"]) == set(dense_parity.VARIANTS)
    for method in result["methods"].values():
        assert method["max_abs_diff"] == 0.0 and method["bar_met"] and method["labels_equal_min"] == 1.0
    for v in result["variants"].values():
        assert v["text_rows_max_abs_diff"] == 0.0 and v["templates_equal"] and not v["settings_mismatched"]
        assert set(v["patch_logits"]) == {"crop224", "whole"}


def test_a_changed_reference_shows_up_in_each_figure(quick):
    _, work = quick
    ref = work / "ref" / "sclip"
    photo = torch.load(ref / "photo_000.pt")
    photo["logits"][0, 1, 2, 3] += 1e-3
    photo["pred"][0, :2, :] = 99  # two rows of labels no class has
    torch.save(photo, ref / "photo_000.pt")
    patch = torch.load(ref / "patch.pt")
    patch["whole"]["patch_logits"] = patch["whole"]["patch_logits"][..., :-1]  # a grid of another size
    torch.save(patch, ref / "patch.pt")
    vt = dense_parity.Vpltool(dense_parity.QUICK["model"], work / "weights.safetensors")
    out = dense_parity.compare_variant(vt, "sclip", ref)
    assert out["seg_logits_max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert out["patch_logits"]["whole"]["max_abs_diff"] is None  # a shape mismatch is reported, not broadcast
    assert out["patch_logits"]["crop224"]["max_abs_diff"] == 0.0
    h, w = photo["pred"].shape[-2:]
    assert out["labels_equal_min"] == pytest.approx(1 - 2 / h)
    assert dense_parity.worst([0.0, None]) is None
    nan = dense_parity.worst([1e-7, float("nan"), 2e-7])
    assert nan != nan  # a NaN photo is not hidden behind the others' largest difference


def test_mmseg_resize_size_is_vpltools_short_side_size(tmp_path):
    import cv2

    from vpltool.models.dense.segmentor import short_side_size

    pre = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "bgr_to_rgb": True}
    rng = np.random.default_rng(0)
    for h, w in ((375, 500), (333, 500), (500, 281), (300, 451), (365, 487), (40, 3000)):
        path = tmp_path / f"{h}x{w}.png"
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(path), img)
        x, ori = dense_ref_runner.mmseg_input(path, (2048, 336), pre)
        assert ori == (h, w) and tuple(x.shape[-2:]) == short_side_size(h, w, 336)
        # TextRegion's Resize(scale=(1008, 672)): its long side binds on the photos wider than 3:2 (300x451)
        big, _ = dense_ref_runner.mmseg_input(path, (1008, 672), pre)
        assert tuple(big.shape[-2:]) == short_side_size(h, w, 672, 1008)
        assert (max(big.shape[-2:]) == 1008) == (max(h, w) / min(h, w) > 1.5)
        if (h, w) == (375, 500):  # cv2.INTER_LINEAR of the decoded BGR image, swapped to RGB, unnormalised
            expected = cv2.resize(img, (448, 336), interpolation=cv2.INTER_LINEAR)[..., ::-1].transpose(2, 0, 1)
            assert torch.equal(x[0], torch.from_numpy(expected.astype(np.float32)))


FAKE_SEGMENTOR = '''
import torch
from mmengine.structures import PixelData
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS

import clip

openai_imagenet_template = [lambda c: f"a photo of a {c}.", lambda c: f"a {c}."]
CALLS = []


@MODELS.register_module()
class FakeSeg(BaseSegmentor):
    def __init__(self, clip_path, name_path, device="cuda", logit_scale=40, prob_thd=0.0, slide_crop=0):
        super().__init__(data_preprocessor=SegDataPreProcessor(mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0],
                                                               bgr_to_rgb=True))
        self.net = clip.model.CLIP()
        words, self.query_idx = get_cls_idx(name_path)
        self.query_idx = torch.tensor(self.query_idx)
        rows = [self.net.encode_text(torch.tensor([[len(w), i]])) for i, w in enumerate(words)]
        self.query_features = torch.cat(rows)
        self.query_features /= self.query_features.norm(dim=-1, keepdim=True)  # in place, as the methods do
        self.logit_scale, self.prob_thd, self.slide_crop = logit_scale, prob_thd, slide_crop

    def forward_feature(self, img):
        feats = img.mean(1).unfold(1, 16, 16).unfold(2, 16, 16).mean((-1, -2))  # [1, h, w]
        logits = feats[:, None] * self.query_features[:, :1].T[..., None, None]  # [1, Q, h, w]
        return torch.nn.functional.interpolate(logits, size=img.shape[-2:], mode="bilinear")

    def predict(self, inputs, data_samples):
        logits = torch.nn.functional.interpolate(self.forward_feature(inputs),
                                                 size=data_samples[0].metainfo["ori_shape"], mode="bilinear")
        return self.postprocess_result(logits, data_samples)

    def postprocess_result(self, seg_logits, data_samples):
        probs = (seg_logits[0] * self.logit_scale).softmax(0)
        data_samples[0].set_data({"seg_logits": PixelData(data=probs),
                                  "pred_sem_seg": PixelData(data=probs.argmax(0, keepdim=True))})
        return data_samples


def get_cls_idx(path):
    names = [line.strip().split(", ") for line in open(path)]
    return [n for ns in names for n in ns], [i for i, ns in enumerate(names) for _ in ns]
'''

FAKE_CLIP_MODEL = '''
import torch


class CLIP(torch.nn.Module):
    def encode_text(self, text):
        import fake_seg
        fake_seg.CALLS.append(text.tolist())
        return torch.stack([text[:, 0].float() + 1, text[:, 1].float() + 2], 1)
'''


def test_runner_on_a_fake_clone(tmp_path):
    """The runner's whole path on a clone that imports what the methods import (mmseg, mmengine, a top-level
    ``clip``): config chain, stubs, the text memo across variants, captured logits, probabilities and labels."""
    import cv2

    clone = tmp_path / "clone"
    (clone / "configs").mkdir(parents=True)
    (clone / "clip").mkdir()
    (clone / "fake_seg.py").write_text(textwrap.dedent(FAKE_SEGMENTOR))
    (clone / "clip" / "__init__.py").write_text("from . import model\n")
    (clone / "clip" / "model.py").write_text(textwrap.dedent(FAKE_CLIP_MODEL))
    (clone / "configs" / "base.py").write_text("model = dict(type='FakeSeg', clip_path='X', logit_scale=10)\n")
    (clone / "configs" / "cfg.py").write_text(
        "_base_ = './base.py'\nmodel = dict(name_path='./configs/cls.txt', prob_thd=0.2)\n"
        "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(2048, 64), keep_ratio=True)]\n")
    (clone / "configs" / "cls.txt").write_text("sky, wall\ncat\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), np.full((40, 60, 3), 100, np.uint8))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    out = tmp_path / "out"
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    try:
        dense_ref_runner.main(["--clone", str(clone), "--module", "fake_seg", "--cls", "FakeSeg", "--config",
                               "configs/cfg.py", "--weights", str(weights), "--photos", str(photos), "--out",
                               str(out), "--variants", json.dumps([{"name": "one"},
                                                                   {"name": "two", "overrides": {"logit_scale": 5}}])])
        calls = list(sys.modules["fake_seg"].CALLS)
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:  # the fake clone's and the stubs' modules
            del sys.modules[name]
    assert len(calls) == 3  # three queries, encoded once for both variants (the memo)
    one, two = (json.loads((out / n / "meta.json").read_text()) for n in ("one", "two"))
    assert one["kwargs"]["logit_scale"] == 10 and one["kwargs"]["prob_thd"] == 0.2  # _base_, then the config
    assert one["kwargs"]["clip_path"] == str(weights.resolve()) and one["kwargs"]["device"] == "cpu"
    assert two["effective"]["logit_scale"] == 5 and two["variant"]["overrides"] == {"logit_scale": 5}
    assert one["query_words"] == ["sky", "wall", "cat"] and one["query_idx"] == [0, 0, 1]
    assert one["templates"] == ["a photo of a {}.", "a {}."] and one["resize_scale"] == [2048, 64]
    assert one["photos"] == [{"file": "a.jpg", "ori_shape": [40, 60], "input_shape": [64, 96]}]
    text = torch.load(out / "one" / "text.pt")["query_features"]
    assert torch.allclose(text.norm(dim=1), torch.ones(3))
    patch = torch.load(out / "one" / "patch.pt")
    assert patch["whole"]["patch_logits"].shape == (1, 3, 4, 6)  # the tensor forward_feature interpolates
    assert patch["crop224"]["input"].shape == (1, 3, 64, 96)  # a 224 crop of a smaller input is the input
    photo = torch.load(out / "one" / "photo_000.pt")
    assert photo["input"].shape == (1, 3, 64, 96)
    assert torch.allclose(photo["input"][0, :, 0, 0], torch.tensor([49.5, 49.0, 48.5]))  # (100 - mean) / std
    assert photo["logits"].shape == (1, 3, 40, 60) and photo["probs"].shape == (3, 40, 60)
    assert photo["pred"].shape == (1, 40, 60)
    assert torch.allclose(photo["probs"], (photo["logits"][0] * 10).softmax(0))


def test_make_table_renders_the_parity_section(quick, tmp_path):
    import make_table

    result, _ = quick
    (tmp_path / "dense_parity.json").write_text(json.dumps(result))
    out = tmp_path / "performance.md"
    make_table.main(["--results", str(tmp_path), "--out", str(out), "--reproduce", str(tmp_path / "none.md")])
    page = out.read_text()
    assert "## Dense CLIP methods against their public code" in page
    assert "| naclip | vpltool itself (no --ref) | naclip, naclip-pamr, naclip-slide | 0 | 1 | met |" in page
    row = next(line for line in page.splitlines() if line.startswith("| naclip-csa |"))
    assert row.startswith("| naclip-csa | 0 | 0 | 0 | 0 | 0 | 1 | ") and row.endswith(" | 1 | none |")

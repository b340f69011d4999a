"""parity/weclip_parity.py and weclip_ref_runner.py without the clone: the figures and their bars, the mapping of
WeCLIP's decoder names onto vpltool's SegDecoder (both ways), the VOC root WeCLIP's datasets read, the runner's
stubs; and the committed parity/results/weclip_parity.json against its own bars."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity"), str(ROOT / "bench")]

import weclip_parity  # noqa: E402
import weclip_ref_runner  # noqa: E402

ASSETS = ROOT / "tests" / "assets" / "model_configs"
RESULT = ROOT / "parity" / "results" / "weclip_parity.json"


def test_figures_meet_their_bars_only_when_compared():
    assert weclip_parity.figure("logits", 1e-6)["met"] is True
    assert weclip_parity.figure("logits", 2e-5)["met"] is False
    assert weclip_parity.figure("pseudo_labels", 0.9995)["met"] is True
    assert weclip_parity.figure("pseudo_labels", 0.99)["met"] is False
    missing = weclip_parity.figure("steps", None)
    assert missing["compared"] is False and missing["met"] is False
    assert weclip_parity.worst([1e-7, None]) is None and weclip_parity.worst([0.5, 0.9], "min") == 0.5
    assert weclip_parity.max_diff(torch.zeros(2, 3), torch.zeros(3, 2)) is None  # reported, never broadcast
    assert weclip_parity.share_equal(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    empty = weclip_parity.summarise({})
    assert set(empty) == set(weclip_parity.BARS) and not any(f["compared"] or f["met"] for f in empty.values())


def weclip_state(width: int, layers: int, dim: int = 256, classes: int = 21) -> dict:
    """A random decoder state under WeCLIP's own names (segformer_head.py, Decoder/TransDecoder.py)."""
    g = torch.Generator().manual_seed(0)
    shapes = {}
    for i in range(layers):
        p = f"decoder_fts_fuse.linears_modulelist.{i}."
        shapes.update({p + "proj.weight": (dim, width), p + "proj.bias": (dim,), p + "proj_2.weight": (dim, dim),
                       p + "proj_2.bias": (dim,)})
    shapes.update({"decoder_fts_fuse.linear_fuse.weight": (dim, dim * layers, 1, 1),
                   "decoder_fts_fuse.linear_fuse.bias": (dim,)})
    for j in range(3):
        p = f"decoder.transformer.resblocks.{j}."
        shapes.update({p + "attn.in_proj_weight": (3 * dim, dim), p + "attn.in_proj_bias": (3 * dim,),
                       p + "attn.out_proj.weight": (dim, dim), p + "attn.out_proj.bias": (dim,),
                       p + "ln_1.weight": (dim,), p + "ln_1.bias": (dim,), p + "ln_2.weight": (dim,),
                       p + "ln_2.bias": (dim,), p + "mlp.c_fc.weight": (4 * dim, dim), p + "mlp.c_fc.bias": (4 * dim,),
                       p + "mlp.c_proj.weight": (dim, 4 * dim), p + "mlp.c_proj.bias": (dim,)})
    shapes.update({"decoder.linear_pred.weight": (classes, dim, 1, 1), "decoder.linear_pred.bias": (classes,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def vt(tmp_path_factory):
    import bench_cam

    work = tmp_path_factory.mktemp("weclip_parity")
    _, st = bench_cam.make_weights(work, "vpl-test-vit", ASSETS)
    g = torch.Generator().manual_seed(1)
    init = {"fg_text_features": torch.randn(20, 32, generator=g), "bg_text_features": torch.randn(25, 32, generator=g)}
    return weclip_parity.Vpltool(st, init, model="vpl-test-vit", config_dir=ASSETS)


def test_weclip_decoder_names_load_into_segdecoder_and_back(vt):
    state = weclip_state(vt.bb.width, len(vt.blocks))
    model = vt.decoder(state)
    vt.weclip_names = list(state)
    back = vt.named_in_weclip(model)
    assert set(back) == set(state)
    for name, value in state.items():
        assert torch.equal(back[name][0].reshape(value.shape), value), name
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_params == sum(v.numel() for v in state.values())  # every trainable parameter comes from WeCLIP's


def test_make_voc_writes_the_labels_weclip_reads(tmp_path):
    import bench_cam
    from PIL import Image

    root = weclip_parity.make_voc(tmp_path / "voc", 3)
    onehot = np.load(root / "ImageSets" / "Segmentation" / "cls_labels_onehot.npy", allow_pickle=True).item()
    for i in range(3):
        name = f"img_{i:03d}"
        want = sorted(weclip_parity.VOC.index(c) for c in bench_cam.PHOTOS[i][3])
        png = np.asarray(Image.open(root / "SegmentationClassAug" / f"{name}.png"))
        assert png.shape == np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg")).shape[:2]
        assert (np.unique(png)[1:] - 1).tolist() == want  # clip_tool.py: np.unique(label) - 1, background dropped
        assert np.flatnonzero(onehot[name]).tolist() == want
    assert (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == ["img_000", "img_001", "img_002"]


def test_runner_stubs_leave_importable_modules():
    saved = dict(sys.modules)
    try:
        weclip_ref_runner.install_stubs()
        import importlib.util

        for name in ("mmcv.cnn", "ttach", "omegaconf"):
            assert name in sys.modules and importlib.util.find_spec(name) is not None  # torch._dynamo scans specs
        with weclip_ref_runner.cpu_fp32():
            x = torch.ones(2)
            assert x.cuda() is x and x.half().dtype == torch.float32
        assert torch.ones(1).half().dtype == torch.float16  # restored
    finally:
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]


@pytest.mark.skipif(not RESULT.is_file(), reason="no committed parity/results/weclip_parity.json")
def test_committed_result_agrees_with_its_bars():
    result = json.loads(RESULT.read_text())
    assert result["benchmark"] == "weclip-parity" and set(result["recipes"]) == {"weclip", "weclip+"}
    runs = [result] + ([result["seed0_init"]] if "seed0_init" in result else [])  # the first runs, kept
    for one in runs:
        check_result(one)
    if "seed0_init" in result:  # the new weights are the sharpened ones; the kept run's are the seed-0 init
        assert result["weights"]["qk_gain"] > 1 and result["seed0_init"]["weights"].startswith("random (seed 0")
    tied = result.get("weclip_plus_tied")
    if tied:  # the WeCLIP+ run kept beside the new one: its figures agree with their bars as well
        check_result({"recipes": {"weclip+": tied["recipe"]}, "all_met": {"weclip+": tied["all_met"]},
                      "reference": result["reference"]})
        assert result["weights"]["plus_batch"]["batch_seed"] == result["reference"]["weclip+"]["batch_seed"]


def check_result(result: dict) -> None:
    for recipe, body in result["recipes"].items():
        assert set(body["figures"]) == set(weclip_parity.BARS)
        for name, fig in body["figures"].items():
            kind, bar = weclip_parity.BARS[name]
            assert fig["bar"] == bar and fig["compared"] == (fig["value"] is not None)
            if fig["value"] is None:
                assert fig["met"] is False  # not compared is never met
            else:
                assert fig["met"] == (fig["value"] <= bar if kind == "max" else fig["value"] >= bar), (recipe, name)
        assert result["all_met"][recipe] == all(f["met"] for f in body["figures"].values())
    assert result["reference"]["commit"].startswith("0f47db4")


def test_parity_page_is_rendered_from_the_results(tmp_path):
    """docs/parity.md is docgen/parity_page.py's rendering of parity/results/ (no figure typed by hand), and a
    figure not compared is shown as such."""
    sys.path.insert(0, str(ROOT / "docgen"))
    import parity_page

    assert (ROOT / "docs" / "parity.md").read_text() == parity_page.render(ROOT / "parity" / "results")
    fake = {"benchmark": "weclip-parity", "reference": {"repository": "zbf1991/WeCLIP", "commit": "0f47db4"},
            "vpltool_commit": "abc", "crops": 4, "steps": 3, "photos": 12, "test_photos": 2, "threads": 1,
            "machine": {"cpu": "AMD EPYC"},
            "recipes": {"weclip": {"figures": weclip_parity.summarise({}), "errors": {"all": "no --ref"}}}}
    (tmp_path / "weclip_parity.json").write_text(json.dumps(fake))
    page = parity_page.render(tmp_path)
    assert "| logits | max abs diff <= 1e-05 | not compared | not compared |" in page and "- all: no --ref" in page


def test_weclip_plus_decoder_names_load_into_segdecoder_and_back(tmp_path):
    """WeCLIP+'s decoder (the CLIP head reading one block, dino_decoder_fts_fuse, the shared decoder) under its own
    names onto vpltool's weclip+ SegDecoder and back; every trainable parameter comes from WeCLIP+'s."""
    import bench_cam

    toy_dino = ROOT / "vpltool" / "assets" / "toy-dino" / "model.safetensors"
    _, st = bench_cam.make_weights(tmp_path, "vpl-test-vit", ASSETS)
    g = torch.Generator().manual_seed(1)
    init = {"fg_text_features": torch.randn(20, 32, generator=g), "bg_text_features": torch.randn(25, 32, generator=g)}
    vt = weclip_parity.Vpltool(st, init, recipe="weclip+", model="vpl-test-vit", config_dir=ASSETS,
                               dino_weights=toy_dino, dino_model="test_vit")
    assert len(vt.blocks) == 1 and vt.plus  # WeCLIP+ reads the block before the last alone
    dim, width = 256, int(vt.dino.model.num_features)
    state = weclip_state(vt.bb.width, 1)
    p = "dino_decoder_fts_fuse."
    state.update({p + "linears_modulelist.0.proj.weight": torch.randn(dim, width, generator=g),
                  p + "linears_modulelist.0.proj.bias": torch.randn(dim, generator=g),
                  p + "linears_modulelist.0.proj_2.weight": torch.randn(dim, dim, generator=g),
                  p + "linears_modulelist.0.proj_2.bias": torch.randn(dim, generator=g),
                  p + "linear_fuse.weight": torch.randn(dim, dim, 1, 1, generator=g),
                  p + "linear_fuse.bias": torch.randn(dim, generator=g)})
    model = vt.decoder(state)
    vt.weclip_names = list(state)
    back = vt.named_in_weclip(model)
    assert set(back) == set(state)
    for name, value in state.items():
        assert torch.equal(back[name][0].reshape(value.shape), value), name
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(v.numel() for v in state.values())


def test_loss_diffs_leave_out_a_reference_nan_term():
    mine = {k: torch.tensor(v) for k, v in {"ce": 1.0, "aff": 0.5, "dice": 0.25, "cross": 0.0, "loss": 1.3}.items()}
    ref = {"loss": float("nan"), "seg_loss": 1.0, "aff_loss": 0.5, "dice_loss": 0.25, "cross_loss": float("nan")}
    out = weclip_parity.loss_diffs(mine, ref)
    assert "cross" not in out and out["reference_nan_terms"] == ["cross"] and out["loss_of_finite_terms"]
    assert out["loss"] == pytest.approx(0.0) and out["ce"] == 0.0
    ref.update(loss=1.4, cross_loss=0.0)
    out = weclip_parity.loss_diffs(mine, ref)
    assert out["loss"] == pytest.approx(0.1) and out["cross"] == 0.0 and "loss_of_finite_terms" not in out


def test_sharpen_attention_scales_each_heads_logits_and_keeps_the_rest():
    """The well-conditioned weights: each image-tower head's q and k rows times sqrt(g), g in [gain/spread,
    gain*spread] (so its logits q k^T times g), fp16-exact values, text tower and values untouched; gain 1 and
    spread 1 give the seed-0 init back."""
    g = torch.Generator().manual_seed(0)
    width = 128  # two heads of 64
    state = {f"visual.transformer.resblocks.{i}.attn.in_proj_weight": torch.randn(3 * width, width, generator=g)
             .half().float() for i in range(2)}
    state["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3 * 32, 32, generator=g)
    assert weclip_parity.sharpen_attention(state, 1.0, 1.0) is state
    out = weclip_parity.sharpen_attention(state, 16.0, 2.0)
    assert torch.equal(out["transformer.resblocks.0.attn.in_proj_weight"],
                       state["transformer.resblocks.0.attn.in_proj_weight"])
    x = torch.randn(5, width, generator=g)
    for i in range(2):
        key = f"visual.transformer.resblocks.{i}.attn.in_proj_weight"
        new, old = out[key], state[key]
        assert torch.equal(new, new.half().float())  # fp16-exact
        assert torch.equal(new[2 * width:], old[2 * width:])  # values untouched
        gains = []
        for h in range(2):
            rows = slice(64 * h, 64 * (h + 1))
            q0, k0 = x @ old[rows].T, x @ old[width:][rows].T
            q1, k1 = x @ new[rows].T, x @ new[width:][rows].T
            gains.append(float(((q1 @ k1.T) / (q0 @ k0.T)).median()))
        assert all(8 * 0.99 <= v <= 32 * 1.01 for v in gains), gains
        assert abs(gains[0] - gains[1]) > 0.1  # per head, not one factor


def test_previous_keeps_the_seed0_runs_only(tmp_path):
    """--previous: a result on the seed-0 init is kept whole under seed0_init, a result that already holds one passes
    it on, and a result on the sharpened weights (or no file) adds nothing: a rerun never mislabels its runs."""
    import argparse

    def prev(body):
        path = tmp_path / "old.json"
        if body is not None:
            path.write_text(json.dumps(body))
        return weclip_parity.previous(argparse.Namespace(previous=path))

    first = {"weights": "random (seed 0, fp16-exact values)", "recipes": {}, "findings": ["f"]}
    kept = prev(first)["seed0_init"]
    assert kept["findings"] == ["f"] and kept["weights"] == first["weights"] and "label" in kept
    assert prev({"weights": {"qk_gain": 16.0}, "seed0_init": kept}) == {"seed0_init": kept}
    assert prev({"weights": {"qk_gain": 16.0}}) == {}
    (tmp_path / "old.json").unlink()
    assert prev(None) == {}


def test_par_margins_find_the_pixel_nearest_a_tie():
    """probe_batches' conditioning measure: the float64 top-2 margin per pixel against its float32 rounding; the
    pixel whose margin is the fewest times its own rounding is found, and one map has no tie to measure."""
    g = torch.Generator().manual_seed(0)
    fp64 = torch.rand(3, 8, 8, generator=g, dtype=torch.float64)
    fp64[0], fp64[1] = fp64[0] + 2, fp64[1] + 1  # class 0 leads everywhere by ~1 ...
    fp64[1, 5, 6] = fp64[0, 5, 6] - 1e-6  # ... but at one pixel, 1e-6 ahead of class 1
    fp32 = fp64.clone()
    fp32[1, 5, 6] += 4e-7  # its float32 rounding there: 4e-7 (the margin 2.5 times it)
    fp32[2] += 1e-3  # a third class's rounding does not enter the top-2 margin
    out = weclip_parity.par_margins(fp32, fp64)
    assert out["margin_min"] == pytest.approx(1e-6) and out["margin_at"] == [5, 6]
    assert out["ratio_min"] == pytest.approx(2.5, rel=1e-6) and out["ratio_min_at"] == [5, 6]
    assert out["pixels_ratio_under_10"] == 1 and out["pixels_ratio_under_100"] == 1
    assert out["rounding_max"] == pytest.approx(4e-7)
    single = weclip_parity.par_margins(fp32[:1], fp64[:1])
    assert single["margin_min"] is None and single["pixels_ratio_under_10"] == 0


def test_tied_plus_keeps_the_earlier_weclip_plus_run_whole(tmp_path):
    """--tied-plus: the earlier result's WeCLIP+ run (figures, reference) is kept under weclip_plus_tied, a result that
    already holds one passes it on (--update or make parity's --previous), and without either nothing is added."""
    import argparse

    earlier = {"all_met": {"weclip+": False}, "recipes": {"weclip+": {"figures": {"grads_online": {"value": 1.05e-5}}}},
               "reference": {"weclip+": {"tree": "WeCLIP+"}}, "test_photos_plus": 2, "vpltool_commit": "abc"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(earlier))
    kept = weclip_parity.tied_plus(argparse.Namespace(tied_plus=path, previous=None), None)["weclip_plus_tied"]
    assert kept["recipe"] == earlier["recipes"]["weclip+"] and kept["reference"] == {"tree": "WeCLIP+"}
    assert kept["all_met"] is False and kept["test_photos"] == 2 and "label" in kept
    again = {"weclip_plus_tied": kept}
    assert weclip_parity.tied_plus(argparse.Namespace(tied_plus=None, previous=None), again) == again
    path.write_text(json.dumps(again))
    assert weclip_parity.tied_plus(argparse.Namespace(tied_plus=None, previous=path), None) == again
    assert weclip_parity.tied_plus(argparse.Namespace(tied_plus=None, previous=None), earlier) == {}


def test_runner_batch_seed_defaults_to_the_seed():
    import argparse

    assert weclip_ref_runner.batch_seed(argparse.Namespace(seed=0, batch_seed=None)) == 0
    assert weclip_ref_runner.batch_seed(argparse.Namespace(seed=0, batch_seed=5)) == 5

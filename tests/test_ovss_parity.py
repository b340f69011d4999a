"""parity/ovss_parity.py without the clones: the comparison's plumbing (``--quick``: vpltool against itself, then a
reference changed on purpose), the merge of runs, and the committed figures of parity/results/ovss_parity.json
against the bars (max |Δ| of the dense logits <= 1e-4, >= 99.9 % equal labels)."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity"), str(ROOT / "bench")]

import ovss_parity  # noqa: E402

RESULTS = ROOT / "parity" / "results" / "ovss_parity.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    # MKL's products, the references' library and the route this Intel Xeon's calibration takes. With oneDNN forced,
    # SC-CLIP's 336-pixel outputs vary from one process to the next (0, 1.5e-7 or 1.8e-7 apart over runs, with ASLR
    # off too; the same on every call inside one process): its cause is not found, and the parity bar is 1e-4
    work = tmp_path_factory.mktemp("ovss_parity")
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buf):
        mp.setenv("VPLTOOL_CPU_LINEAR", "mkl")
        ovss_parity.main(["--quick", "--work", str(work)])
    return json.loads(buf.getvalue()), work


def test_quick_self_comparison_prints_every_method_at_zero(quick):
    result, _ = quick
    assert result["benchmark"] == "ovss-parity" and result["quick"] is True
    assert set(result["methods"]) == {"sc-clip", "proxyclip", "cass"} == set(result["variants"])
    for method in result["methods"].values():
        assert method["max_abs_diff"] == 0.0 and method["bar_met"] and method["labels_bar_met"]
    for name, v in result["variants"].items():
        assert v["text_rows_max_abs_diff"] == 0.0 and not v["settings_mismatched"]
        # SC-CLIP's and ProxyCLIP's grids are square; CASS's whole photo is not
        assert set(v["patch_logits"]) == ({"crop224", "whole"} if name == "cass" else {"crop224", "square"})


def test_a_changed_reference_shows_up_and_fails_the_bars(quick):
    _, work = quick
    ref = work / "ref" / "proxyclip"
    photo = torch.load(ref / "photo_000.pt")
    photo["logits"][0, 1, 2, 3] += 1e-3
    photo["pred"][0, :3, :] = 99  # three rows of labels no class has
    torch.save(photo, ref / "photo_000.pt")
    from dense_parity import Vpltool  # noqa: F401  (the harness the script wraps)

    with ovss_parity.harness():
        vt = ovss_parity.Vpltool(ovss_parity.QUICK["model"], work / "weights.safetensors", ovss_parity.dp.ASSETS)
        out = ovss_parity.dp.compare_variant(vt, "proxyclip", ref)
    assert out["seg_logits_max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert out["labels_equal_min"] < 1.0
    summary = ovss_parity.summary({"proxyclip": out})["proxyclip"]
    assert not summary["bar_met"] and not summary["labels_bar_met"]


def test_merge_keeps_each_runs_methods_and_header(quick, tmp_path):
    result, _ = quick
    a, b = dict(result), dict(result)
    a["methods"] = {"sc-clip": result["methods"]["sc-clip"]}
    b["methods"] = {"proxyclip": result["methods"]["proxyclip"]}
    files = []
    for name, r in (("a", a), ("b", b)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(r))
    merged = ovss_parity.merge(files)
    assert set(merged["methods"]) == {"sc-clip", "proxyclip"} and len(merged["runs"]) == 2
    assert merged["runs"][0]["argv"] == ["--quick", "--work", merged["runs"][0]["argv"][2]]


@pytest.mark.skipif(not RESULTS.is_file(), reason="no committed parity/results/ovss_parity.json")
def test_committed_figures_against_the_bars():
    result = json.loads(RESULTS.read_text())
    assert not result.get("quick")
    for name, method in result["methods"].items():
        variant = result["variants"][name]
        worst = max([variant["seg_logits_max_abs_diff"], *(p["max_abs_diff"] for p in
                                                          variant["patch_logits"].values())])
        assert method["max_abs_diff"] == worst  # the headline is the worst of the figures
        assert method["max_abs_diff"] <= ovss_parity.BAR, (name, method)
        assert method["labels_equal_min"] >= ovss_parity.LABELS_BAR, (name, method)
        assert not variant["settings_mismatched"], (name, variant["settings_mismatched"])


def test_bench_dense_methods_quick_prints_one_json_object():
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_dense_methods.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(proc.stdout)
    assert result["benchmark"] == "dense-methods" and result["quick"] and result["machine"]["device"] == "cpu"
    assert set(result["methods"]) == {"sc-clip", "proxyclip", "cass", "trident"} and result["none_seconds"] > 0
    for name in ("proxyclip", "cass", "trident"):
        assert result["methods"][name]["proxy_forward_seconds"] > 0
    assert result["methods"]["sc-clip"]["proxy_forward_seconds"] == 0
    # the rounds are printed to 0.1 ms and the ratios to 0.001: a ratio recomputed from the printed rounds may differ
    # by that rounding over the shortest round (on a fast CPU a quick round's method and proxy times round equal)
    slack = 1.1e-4 / min(result["none_rounds"]) + 1e-3
    for m in result["methods"].values():  # the verdict follows the figures
        base = result["none_seconds"] + m["proxy_forward_seconds"]
        assert m["ratio_to_none_plus_proxy"] == pytest.approx(m["seconds"] / base, rel=0.1)  # rounded to 0.1 ms
        # the verdict: the median over the alternating rounds of (method - its proxy's forward) / none
        pairs = sorted((t - p) / n for t, p, n in zip(m["rounds"]["seconds"], m["rounds"]["proxy_forward_seconds"],
                                                       result["none_rounds"]))
        assert m["ratio_to_none_after_proxy_median"] == pytest.approx(pairs[len(pairs) // 2], rel=0.1, abs=slack)
        verdict = m.get("ratio_to_none_keys_cached_median", m["ratio_to_none_after_proxy_median"])
        assert m["bar_met"] == (verdict <= 1.2)
    cass = result["methods"]["cass"]  # CASS's verdict: with its DINO's keys memoised, against none, per round
    ratios = sorted(t / n for t, n in zip(cass["rounds_keys_cached"], result["none_rounds"]))
    assert cass["ratio_to_none_keys_cached_median"] == pytest.approx(ratios[len(ratios) // 2], rel=0.1, abs=slack)


def test_ambiguity_tells_a_separable_cost_from_a_unique_optimum():
    """CASS's head matching: an additive cost ``f(i) + g(j)`` makes every assignment an optimum (margin 0, every
    2-swap tied); a generic cost has one optimum."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    additive = rng.random(6)[:, None] + rng.random(6)[None]
    tied = ovss_parity.ambiguity(additive, linear_sum_assignment)
    assert tied["margin"] < 1e-12 and tied["tied_swaps"] == tied["swaps"] == 15 and tied["separable"] < 1e-12
    unique = ovss_parity.ambiguity(rng.random((6, 6)), linear_sum_assignment)
    assert unique["margin"] > 1e-6 and unique["tied_swaps"] == 0 and unique["separable"] > 0.1


def test_replayed_matchings_hand_back_the_reference_columns_and_their_gap():
    import numpy as np
    import scipy.optimize

    cost = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    calls = [{"cost": torch.from_numpy(cost + 0.5), "cols": torch.tensor([1, 0])}]
    with ovss_parity.replayed_matchings(calls) as seen:
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert cols.tolist() == [1, 0] and not calls  # the reference's matching, consumed
    assert seen[0]["differs"] and seen[0]["gap"] == 2.0 and seen[0]["cost_max_abs_diff"] == 0.5
    assert scipy.optimize.linear_sum_assignment(cost)[1].tolist() == [0, 1]  # restored


def test_proxy_pos_std_redraws_only_the_positions_of_the_same_dino(tmp_path, monkeypatch):
    """``--proxy-pos-std S``: the proxy DINO of the default file with its ``pos_embed`` alone redrawn N(0, S) (seed
    2), written once beside it; without it the default file (timm's init) is what both sides load."""
    import timm

    # the real ViT-B/8 is 86 M parameters: a tiny ViT of the same names stands in
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=0))
    plain = ovss_parity.proxy_weights(tmp_path)
    assert plain == tmp_path / "dino_vitb8.pth"
    moved = ovss_parity.proxy_weights(tmp_path, 1.0)
    assert moved.name == "dino_vitb8_pos1.pth" and ovss_parity.proxy_weights(tmp_path, 1.0) == moved
    a, b = torch.load(plain), torch.load(moved)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "pos_embed")
    assert 0.8 < b["pos_embed"].std().item() < 1.2 and a["pos_embed"].std().item() < 0.05

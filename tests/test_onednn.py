"""fp32 linear layers through oneDNN (``vpltool.models.backbones.onednn``): the same outputs as ``F.linear`` to float
rounding where oneDNN is called, bit for bit where it is not (bf16, gradients), nothing changed in reproducible
mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vpltool.models.backbones import onednn, towers

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear op")


def _mlp(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40, bias=bias), nn.GELU(), nn.Linear(40, 8, bias=bias))


def _counted(monkeypatch) -> list:
    calls = []
    inner = onednn.linear

    def counting(*a):
        calls.append(a[0].shape)
        return inner(*a)

    monkeypatch.setattr(onednn, "linear", counting)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_fp32_cpu_inference_goes_through_onednn_with_the_same_outputs(monkeypatch, bias):
    model, plain = _mlp(bias), _mlp(bias)
    keys = list(model.state_dict())
    assert onednn.use_onednn(model) == 2
    assert all(type(m) is onednn.OneDnnLinear for m in model if isinstance(m, nn.Linear))
    assert list(model.state_dict()) == keys  # the same parameters, as a checkpoint names them
    calls = _counted(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    for x in (torch.randn(5, 24, generator=gen), torch.randn(2, 7, 24, generator=gen),
              torch.randn(2, 24, 7, generator=gen).transpose(1, 2)):  # 2-d, 3-d and a strided view
        with torch.no_grad():
            got, want = model(x), plain(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(calls) == 6  # both layers, every input: the oneDNN path was the one taken


def test_bf16_and_training_keep_f_linear_bit_for_bit(monkeypatch):
    model, plain = _mlp(), _mlp()
    onednn.use_onednn(model)
    calls = _counted(monkeypatch)
    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.to(torch.bfloat16)(x.bfloat16()), plain.to(torch.bfloat16)(x.bfloat16()))
    model.float(), plain.float()
    out, ref = model(x).sum(), plain(x).sum()  # gradients asked of the weights: F.linear, and its backward
    out.backward(), ref.backward()
    assert torch.equal(out, ref) and torch.equal(model[0].weight.grad, plain[0].weight.grad)
    assert calls == []


def test_reproducible_mode_leaves_the_layers_as_they_are(monkeypatch):
    monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
    model = _mlp()
    assert onednn.use_onednn(model) == 0
    assert all(type(m) is nn.Linear for m in model if isinstance(m, nn.Linear))


def test_linear_matches_f_linear_on_a_backbone_sized_product():
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(64, 96, generator=gen), torch.randn(128, 96, generator=gen), torch.randn(128, generator=gen)
    exact = F.linear(x.double(), w.double(), b.double())
    assert float((onednn.linear(x, w, b).double() - exact).abs().max()) < 1e-4  # fp32 sums, not bf16's


def test_f_linear_is_f_linear_through_onednn_and_f_linear_itself_where_it_does_not_apply(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(3, 37, 64, generator=gen), torch.randn(96, 64, generator=gen) * 0.1, torch.randn(96)
    want = F.linear(x.double(), w.double(), b.double())
    calls = _counted(monkeypatch)
    assert onednn.applies(x, w) and (onednn.f_linear(x, w, b).double() - want).abs().max() < 1e-5
    assert calls == [(3, 37, 64)]
    # MKL's product itself, bit for bit: under MIN_ROWS rows, a gradient asked for, bf16, autocast, reproducible
    assert not onednn.applies(x[0, : onednn.MIN_ROWS - 1], w)
    wg = w.clone().requires_grad_(True)
    assert torch.equal(onednn.f_linear(x, wg, b), F.linear(x, wg, b))
    assert torch.equal(onednn.f_linear(x.bfloat16(), w.bfloat16()), F.linear(x.bfloat16(), w.bfloat16()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.f_linear(x, w, b).dtype == torch.bfloat16
    monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
    assert torch.equal(onednn.f_linear(x, w, b), F.linear(x, w, b))
    assert calls == [(3, 37, 64)]


def test_out_proj_is_converted_when_asked_and_a_converted_model_pickles(monkeypatch):
    import pickle

    torch.manual_seed(5)
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    model = nn.Sequential(nn.Linear(64, 64), mha)
    assert onednn.use_onednn(model) == 1 and type(mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert onednn.use_onednn(model, out_proj=True) == 1 and type(mha.out_proj) is onednn.OneDnnOutProj
    assert isinstance(mha.out_proj, nn.modules.linear.NonDynamicallyQuantizableLinear)  # its own class the base
    copy = pickle.loads(pickle.dumps(model))  # a worker process's copy
    assert type(copy[0]) is onednn.OneDnnLinear and torch.equal(copy[0].weight, model[0].weight)
    calls = _counted(monkeypatch)
    with torch.no_grad():
        mha.out_proj(torch.randn(5, 64))
    assert calls == [(5, 64)]


@pytest.mark.parametrize("masked", [False, True])
def test_self_attention_is_the_module_s_own(masked):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    h = torch.randn(3, 37, 64)
    mask = torch.zeros(37, 37).masked_fill(torch.rand(37, 37) > 0.7, float("-inf")).fill_diagonal_(0) if masked \
        else None
    with torch.no_grad():
        want = mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        got = towers.self_attention(mha, h, mask)
        assert got is not None and got.shape == want.shape and (got - want).abs().max() < 1e-5
        assert towers.self_attention(mha, h.bfloat16(), mask) is None  # not fp32: the caller runs the module
        assert towers.self_attention(nn.MultiheadAttention(64, 4), h) is None  # sequence-first: the module's own


@pytest.fixture
def auto_route(monkeypatch, tmp_path):
    """The auto route with its cache in ``tmp_path`` and this process's verdicts forgotten."""
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "auto")
    monkeypatch.setenv("VPLTOOL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(onednn, "_DECIDED", {})
    return tmp_path / onednn.CACHE_NAME


def test_the_auto_route_takes_the_library_this_cpu_ran_faster_once_and_keeps_the_verdict(monkeypatch, auto_route):
    import json

    timed = []
    speed = {(64, 96): 0.5, (96, 64): 1.2}  # oneDNN's share of MKL's time, as a calibration would find it

    def calibrate(k, n, rows):
        timed.append((k, n, rows))
        return [speed[(k, n)]] * onednn.PAIRS

    monkeypatch.setattr(onednn, "calibrate", calibrate)
    assert onednn.takes_onednn(300, 64, 96) and not onednn.takes_onednn(300, 96, 64)
    assert onednn.takes_onednn(1000, 64, 96) and timed == [(64, 96, 256), (96, 64, 256)]  # 1000 rows: 256's bucket
    assert not onednn.takes_onednn(onednn.MIN_ROWS - 1, 64, 96)  # a product this small stays with MKL unmeasured
    kept = json.loads(auto_route.read_text())["machines"]
    (table,) = kept.values()
    assert table["products"]["64x96@256"]["onednn"] and not table["products"]["96x64@256"]["onednn"]
    assert table["torch"] == torch.__version__ and table["threads"] == torch.get_num_threads()
    # another process on this machine reads the verdicts; another library version measures again
    monkeypatch.setattr(onednn, "_DECIDED", {})
    assert onednn.takes_onednn(300, 64, 96) and len(timed) == 2
    versions = onednn.library_versions()
    monkeypatch.setattr(onednn, "library_versions", lambda: {**versions, "onednn": "99.0"})
    monkeypatch.setattr(onednn, "_DECIDED", {})
    assert onednn.takes_onednn(300, 64, 96) and len(timed) == 3
    assert len(json.loads(auto_route.read_text())["machines"]) == 2


def test_a_calibration_times_both_libraries_on_the_shape():
    ratios = onednn.calibrate(64, 96, 16)
    assert len(ratios) == onednn.PAIRS and all(0.05 < r < 20 for r in ratios)


@pytest.mark.parametrize(("ratios", "onednn_taken"), [
    ([0.50, 0.52, 0.48, 0.55, 0.51, 0.49, 0.53], True),  # a clear win in every pair
    ([0.85, 0.88, 0.86, 0.87, 0.89, 0.84, 0.86], True),  # a small win, but in every pair: beyond the spread
    ([0.82, 0.95, 0.70, 1.05, 0.85, 0.88, 0.80], False),  # median 0.85, but one pair lost: within the spread
    ([0.91, 0.92, 0.93, 0.90, 0.95, 0.94, 0.92], True),  # 8 % faster at the median, in every pair
    ([0.96, 0.97, 0.95, 0.96, 0.98, 0.97, 0.96], False),  # faster in every pair, not by the clear win
    ([1.20, 1.30, 1.10, 1.25, 1.15, 1.22, 1.18], False),  # MKL faster
])
def test_onednn_is_taken_only_where_it_wins_beyond_the_spread_of_the_pairs(ratios, onednn_taken):
    verdict = onednn.decide(ratios)
    assert verdict["onednn"] is onednn_taken and verdict["pairs"] == len(ratios)
    assert verdict["ratio"] == pytest.approx(sorted(ratios)[len(ratios) // 2], abs=1e-3)
    assert verdict["slowest"] == pytest.approx(max(ratios), abs=1e-3)


def test_a_loaded_pair_keeps_mkl_in_the_auto_route(monkeypatch, auto_route):
    """The same shape's calibration with and without one lost pair: the verdict follows the spread, not the median."""
    import json

    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [0.8, 0.8, 0.8, 1.02, 0.8, 0.8, 0.8])
    assert not onednn.takes_onednn(300, 64, 96)
    kept = json.loads(auto_route.read_text())["machines"]
    (table,) = kept.values()
    assert table["products"]["64x96@256"] | {"measured": None} == {"onednn": False, "ratio": 0.8, "slowest": 1.02,
                                                                    "pairs": 7, "measured": None}


def test_two_processes_that_measure_a_shape_at_once_take_the_verdict_kept_first(monkeypatch, auto_route):
    """Two stages, shards or ranks of one machine that both calibrate a shape before either has kept its verdict
    take one library: the later one reads the cache again under its lock and takes the verdict kept first, its own
    measurement dropped (each had kept and taken its own, so a folder one made was refused on resume for a verdict
    nobody changed); verdicts of other shapes are kept beside it."""
    import json

    def calibrate(k, n, rows):  # while this process measures, another one keeps oneDNN for the same shape
        if (k, n) == (64, 96):
            monkeypatch.setattr(onednn, "_DECIDED", {})
            monkeypatch.setattr(onednn, "calibrate", lambda *a: [0.5] * onednn.PAIRS)
            assert onednn.takes_onednn(300, 64, 96)
        return [1.2] * onednn.PAIRS  # this process's own: MKL's

    monkeypatch.setattr(onednn, "calibrate", calibrate)
    assert onednn.takes_onednn(300, 64, 96)  # the other process's verdict, not the one measured here
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [1.2] * onednn.PAIRS)
    assert not onednn.takes_onednn(300, 96, 64)  # a shape nobody else kept: its own
    (table,) = json.loads(auto_route.read_text())["machines"].values()
    assert table["products"]["64x96@256"]["onednn"] is True and table["products"]["96x64@256"]["onednn"] is False
    assert (auto_route.parent / f".{auto_route.name}.lock").is_file()


def test_either_library_can_be_forced_and_another_value_is_refused(monkeypatch, auto_route):
    from vpltool.errors import VplError

    monkeypatch.setattr(onednn, "calibrate", lambda *a: pytest.fail("a forced route measures nothing"))
    x, w = torch.randn(8, 64), torch.randn(96, 64)
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")
    assert not onednn.applies(x, w)
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "oneDNN ")
    assert onednn.applies(x, w)
    with onednn.references_library():  # a product a method compares with a threshold: MKL's, whatever is asked
        assert not onednn.applies(x, w)
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "blas")
    with pytest.raises(VplError, match=r"^VPLTOOL_CPU_LINEAR='blas': choose auto .*, mkl or onednn, or unset it$"):
        onednn.applies(x, w)


def test_the_command_line_refuses_a_route_of_no_library_before_anything_loads(tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "VPLTOOL_CPU_LINEAR": "fastest"}
    out = subprocess.run([sys.executable, "-m", "vpltool", "extract", str(tmp_path / "missing"), "-o",
                          str(tmp_path / "f")], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: VPLTOOL_CPU_LINEAR='fastest': choose auto (each product measured once on this CPU), mkl or onednn, "
        "or unset it"] and not (tmp_path / "f").exists()


@pytest.mark.parametrize("content", [
    {"format": onednn._FORMAT, "machines": []},  # valid JSON of another shape
    "products-garbage",  # this machine's table with 'products': 'garbage' (written below)
    "fifo",  # a FIFO: reading it would hang
    "{not json",
])
def test_a_cache_of_another_shape_or_no_regular_file_is_ignored_with_one_warning_and_written_anew(
        monkeypatch, auto_route, content):
    import json
    import os

    from vpltool.errors import VplWarning

    monkeypatch.setattr(onednn, "_WARNED", set())
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [0.5] * onednn.PAIRS)
    if content == "fifo":
        os.mkfifo(auto_route)
    elif content == "products-garbage":
        key, what = onednn.machine_key()
        garbage = {key: {**what, "products": "garbage"}}
        auto_route.write_text(json.dumps({"format": onednn._FORMAT, "machines": garbage}))
    else:
        auto_route.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.warns(VplWarning, match=rf"^{auto_route}: not .*; the CPU linear route's verdicts there are "
                                        "ignored and measured again") as caught:
        assert onednn.takes_onednn(300, 64, 96)
        assert onednn.takes_onednn(300, 96, 64)  # a second shape read from the file: no second warning
    assert len([w for w in caught if issubclass(w.category, VplWarning)]) == 1
    kept = json.loads(auto_route.read_text())  # a regular file again, of the cache's shape
    (table,) = kept["machines"].values()
    assert kept["format"] == onednn._FORMAT and table["products"]["64x96@256"]["onednn"] is True


def test_a_resume_or_another_shard_with_another_cpu_linear_route_is_refused(monkeypatch, tmp_path):
    """A folder's items made on MKL's products must not be joined by items of oneDNN's (their last bits differ): the
    route is in the run's numerics, and a resume or another shard with another one is refused in one line."""
    from vpltool.errors import VplError
    from vpltool.io.stage import begin_stage_run
    from vpltool.runtime.numerics import run_numerics

    monkeypatch.delenv("VPLTOOL_REPRODUCIBLE", raising=False)
    folder, params = tmp_path / "feats", {"size": 32}
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")
    made = run_numerics(torch.float32, "auto", torch.device("cpu"))
    assert made["linear"] == "mkl"
    begin_stage_run(folder, "toy-stage", params, False, numerics=made)
    begin_stage_run(folder, "toy-stage", params, False, numerics=run_numerics(torch.float32, "auto"))  # the same
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "onednn")
    with pytest.raises(VplError, match=r"feats: an interrupted run made with VPLTOOL_CPU_LINEAR=mkl, this run with "
                                       r"onednn \(the library .*\); set VPLTOOL_CPU_LINEAR=mkl to resume, pass "
                                       r"--overwrite"):
        begin_stage_run(folder, "toy-stage", params, False, numerics=run_numerics(torch.float32, "auto"))
    # products that take no CPU route (bf16 here, CUDA) record none and go on
    assert "linear" not in run_numerics(torch.bfloat16, "bf16")
    begin_stage_run(folder, "toy-stage", params, True, numerics=run_numerics(torch.float32, "auto"))  # --overwrite


def test_a_stage_folder_records_the_library_each_product_took_and_a_changed_route_cache_is_refused(
        monkeypatch, auto_route, tmp_path):
    """Under ``auto`` two processes of one folder may take other libraries for the same products (the route cache
    changed between them); the folder records the route of each shape as its first product runs (``_run.json``, then
    ``_stage.json``), and a resume or another shard that would take the other one is refused in one line naming the
    folder and the fix, before any model loads; the same cache goes on."""
    import json
    from pathlib import Path

    from vpltool import io
    from vpltool.errors import VplError
    from vpltool.io.folder_routes import ROUTES
    from vpltool.runtime.numerics import run_numerics

    monkeypatch.delenv("VPLTOOL_REPRODUCIBLE", raising=False)
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [1.0] * onednn.PAIRS)  # MKL's verdicts, untimed
    folder, model = tmp_path / "feats", _mlp()
    onednn.use_onednn(model)
    numerics = run_numerics(torch.float32, "auto", torch.device("cpu"))
    assert numerics["linear"] == "auto"

    def shard(index: int) -> None:
        ids = ["a", "b"]
        with io.StageFolder(folder, "toy-stage", {"size": 32}, shard=(index, 2), numerics=numerics) as f:
            with torch.no_grad():
                model(torch.randn(5, 24))
            (folder / f"{ids[index]}.txt").write_text("item")
            f.finish(ids, lambda out, i: Path(out) / f"{i}.txt")

    shard(0)
    assert json.loads((folder / io.RUN_RECORD).read_text())[ROUTES] == {"24x40@4": "mkl", "40x8@4": "mkl"}
    cache = json.loads(auto_route.read_text())
    for table in cache["machines"].values():
        table["products"]["40x8@4"]["onednn"] = True  # the cache edited between the shards
    auto_route.write_text(json.dumps(cache))
    monkeypatch.setattr(onednn, "_DECIDED", {})  # a new process: each verdict read from the cache again
    with pytest.raises(VplError, match=r"^[^\n]*feats: an interrupted run made with VPLTOOL_CPU_LINEAR=auto taking "
                                       r"MKL for its 40x8@4 products, where this run takes oneDNN \(its verdict in "
                                       r"the route cache .*cpu_linear.json, changed since or of another machine\).*"
                                       r"put that cache back as it was \(or run where the folder was made\), pass "
                                       r"--overwrite to redo every item, or choose another --out$"):
        shard(1)
    assert not (folder / "b.txt").exists() and not (folder / io.STAGE_RECORD).exists()
    table["products"]["40x8@4"]["onednn"] = False  # put back: the other shard completes the folder
    auto_route.write_text(json.dumps(cache))
    monkeypatch.setattr(onednn, "_DECIDED", {})
    shard(1)
    assert json.loads((folder / io.STAGE_RECORD).read_text())[ROUTES] == {"24x40@4": "mkl", "40x8@4": "mkl"}
    # a run that forces a library records no per-shape route (the route asked says it)
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")
    with io.StageFolder(tmp_path / "forced", "toy-stage", {}, numerics=run_numerics(torch.float32, "auto")):
        with torch.no_grad():
            model(torch.randn(5, 24))
        assert ROUTES not in json.loads((tmp_path / "forced" / io.RUN_RECORD).read_text())

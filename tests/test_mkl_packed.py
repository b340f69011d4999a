"""MKL's packed product for fp32 linear layers (``vpltool.models.backbones.mkl_packed``): ``F.linear``'s outputs,
packed for the first rows or as a caller prepares, packed again for weights loaded in place, not taken where the
route takes oneDNN (unless packed it ran faster at the prepared rows), in reproducible mode, inside the references'
library or with gradients; where the route takes oneDNN, oneDNN's own packing, by a contest run in the forwards, one
packing for every row count, a memory-mapped file's pages handed back once it serves; Talk2DINO's DINO packed so."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from test_onednn import _counted  # tests/ is on sys.path: oneDNN's linear calls, counted
from torch import nn

from vpltool.models.backbones import mkl_packed, onednn

pytestmark = pytest.mark.skipif(not mkl_packed.HAS_MKL_PACK, reason="this torch has no MKL packed linear op")


def test_mkl_s_packed_product_is_f_linear_s_for_the_rows_packed_and_plain_mkl_for_others(monkeypatch):
    import copy
    import pickle

    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")  # the route's MKL side, where the packed product is taken
    torch.manual_seed(6)
    layer, plain = nn.Linear(64, 96), nn.Linear(64, 96)
    plain.load_state_dict(layer.state_dict())
    assert mkl_packed.use_packed_mkl(layer) == 1 and type(layer) is mkl_packed.PackedLinear
    assert list(layer.state_dict()) == ["weight", "bias"]  # no packed copy in a checkpoint
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(2, 5, 64, generator=gen), torch.randn(7, 64, generator=gen)
    with torch.no_grad():
        assert torch.allclose(layer(x), plain(x), rtol=1e-5, atol=1e-6)
        assert layer.__dict__["_packing"][0][0] == 10  # packed for the first forward's 10 rows
        assert torch.allclose(layer(y), plain(y), rtol=1e-5, atol=1e-6)  # 7 rows: MKL's plain product
        assert layer.__dict__["_packing"][0][0] == 10
        layer.prepare(7)  # once: the packing kept (sizes in turn keep one)
        assert layer.__dict__["_packing"][0][0] == 10
        layer.prepare(7)  # twice in a row: packed for 7 rows, before the forward
        assert layer.__dict__["_packing"][0][0] == 7 and layer.packed(7) is not None
        assert torch.allclose(layer(y), plain(y), rtol=1e-5, atol=1e-6)
        layer.load_state_dict({"weight": plain.weight * 2, "bias": plain.bias})  # in place: packed again
        assert layer.packed(7) is None
        assert torch.allclose(layer(y), F.linear(y, plain.weight * 2, plain.bias), rtol=1e-5, atol=1e-6)
        assert layer.packed(7) is not None
    x = y
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):  # without the packing, made again
        assert "_packing" not in twin.__dict__
        with torch.no_grad():
            assert torch.equal(twin(x), layer(x))
    out = layer(x).sum()  # a gradient asked of the weights: F.linear and its backward
    out.backward()
    assert layer.weight.grad is not None


@pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear op")
def test_the_packed_product_leaves_the_onednn_route_reproducible_mode_and_the_references_library(monkeypatch):
    torch.manual_seed(8)
    layer = nn.Linear(64, 32)
    mkl_packed.use_packed_mkl(layer)
    x = torch.randn(9, 64)
    calls = _counted(monkeypatch)
    with torch.no_grad():
        layer(x)  # the suite's route: oneDNN (conftest)
        assert calls == [(9, 64)] and "_packing" not in layer.__dict__
        monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")
        with onednn.references_library():
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        monkeypatch.setenv("VPLTOOL_REPRODUCIBLE", "1")
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert "_packing" not in layer.__dict__ and mkl_packed.use_packed_mkl(nn.Linear(4, 4)) == 0


@pytest.mark.skipif(not onednn.available(), reason="this torch has no oneDNN linear op")
def test_a_packed_layer_takes_the_packed_product_where_it_beats_the_route_s_onednn_at_its_rows(monkeypatch, tmp_path):
    """Where ``auto`` takes oneDNN for a shape (oneDNN against MKL's plain product at the rows' bucket), a layer
    prepared for its rows weighs oneDNN against MKL's packed product at those rows (measured once, kept in the
    route's cache as ``KxN@rows/mkl-packed``): packed only where the packed product wins beyond the pairs' spread
    (the route's rule for leaving the library it chose), oneDNN's otherwise, a tie included; a forced route is not
    measured."""
    import json

    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "auto")
    monkeypatch.setenv("VPLTOOL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(onednn, "_DECIDED", {})
    monkeypatch.setattr(mkl_packed, "_OVER_ONEDNN", {})
    monkeypatch.setattr(mkl_packed, "_ONEDNN_PACKED", {})
    monkeypatch.setattr(mkl_packed, "_CONTESTS", {})
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [0.5] * onednn.PAIRS)  # the route: oneDNN
    share = {96: 0.9, 64: 0.97}  # the packed product's time over oneDNN's, by the product's outputs (0.97: a tie)
    timed = []

    def time_pairs(sides):
        out = [side() for side in sides]  # both sides run: the packed product is the product
        assert torch.allclose(out[0], out[1], rtol=1e-5, atol=1e-5)
        timed.append(tuple(out[0].shape))
        return [share[out[0].shape[1]]] * onednn.PAIRS

    monkeypatch.setattr(onednn, "time_pairs", time_pairs)
    torch.manual_seed(9)
    layer, other = nn.Linear(64, 96), nn.Linear(96, 64)
    mkl_packed.use_packed_mkl(layer, other)
    x = torch.randn(300, 64)
    with torch.no_grad():
        layer.prepare(300)
        layer.prepare(300)  # again (each forward of a model prepares): the verdict of this process, not measured anew
        assert layer.packed(300) is not None and timed == [(300, 96)]
        calls = _counted(monkeypatch)
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
        assert calls == []  # the packed product, not oneDNN's
        other.prepare(300)
        assert other.packed(300) is None and other.packed(300, "onednn") is not None  # oneDNN's own: its contest
        calls.clear()
        other(layer(x))
        assert calls == [(300, 96)]  # oneDNN's, as the route says
    (table,) = json.loads((tmp_path / onednn.CACHE_NAME).read_text())["machines"].values()
    assert table["products"]["64x96@300/mkl-packed"]["onednn"] is True  # field "onednn": the contender's win
    assert table["products"]["96x64@300/mkl-packed"]["onednn"] is False
    monkeypatch.setattr(mkl_packed, "_OVER_ONEDNN", {})  # another process reads the verdicts
    assert mkl_packed.packed_over_onednn(64, 96, 300) and len(timed) == 2
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "onednn")
    assert not mkl_packed.packed_over_onednn(64, 96, 300)


@pytest.mark.skipif(not mkl_packed.HAS_ONEDNN_PACK, reason="this torch has no oneDNN weight packing")
@pytest.mark.parametrize("packed_share", [0.9, 1.0])
def test_onednn_s_own_packing_is_taken_by_a_contest_in_the_forwards_where_it_wins_beyond_the_spread(
        monkeypatch, tmp_path, packed_share):
    """Where the route takes oneDNN for a layer's rows and MKL's packed product does not beat it, the layer's calls
    alternate between oneDNN's plain call and its packed weights, each timed after :data:`CONTEST_WARM` calls a
    side, until :data:`.onednn.PAIRS` pairs of :data:`CONTEST_CALLS` calls a side; the packing is kept where it took
    at most ``ONEDNN_PACK_WIN`` of the plain calls' time (its copy dropped otherwise), the verdict in the route's
    cache as ``KxN@rows/onednn-packed`` for the next process. Every call's output is oneDNN's product, within float
    rounding; a forced route holds no contest."""
    import json

    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "auto")
    monkeypatch.setenv("VPLTOOL_CACHE_DIR", str(tmp_path))
    for name in ("_OVER_ONEDNN", "_ONEDNN_PACKED", "_CONTESTS"):
        monkeypatch.setattr(mkl_packed, name, {})
    monkeypatch.setattr(onednn, "_DECIDED", {})
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [0.5] * onednn.PAIRS)  # the route: oneDNN
    monkeypatch.setattr(mkl_packed, "packed_over_onednn", lambda k, n, rows: False)  # MKL's packing refused
    sides = []
    real = mkl_packed.contest_call

    def contest_call(k, n, rows, side, seconds):  # each call's time as the share says, whatever the clock read
        sides.append(side)
        real(k, n, rows, side, packed_share if side else 1.0)

    monkeypatch.setattr(mkl_packed, "contest_call", contest_call)
    reads = []
    cached = mkl_packed.cached_verdict

    def counted(shape, ratios, *win):  # the route's cache read for the verdict: once when the contest opens
        reads.append(shape)
        return cached(shape, ratios, *win)

    monkeypatch.setattr(mkl_packed, "cached_verdict", counted)
    torch.manual_seed(10)
    layer = nn.Linear(64, 96)
    mkl_packed.use_packed_mkl(layer)
    x = torch.randn(3, 100, 64)
    want = F.linear(x, layer.weight, layer.bias)
    calls = 2 * (mkl_packed.CONTEST_WARM + mkl_packed.CONTEST_CALLS * onednn.PAIRS)  # the first untimed
    with torch.no_grad():
        layer.prepare(300)
        assert layer.packed(300, "onednn") is not None  # packed before the forward: the contest needs it
        for _ in range(calls):
            assert torch.allclose(layer(x), want, rtol=1e-5, atol=1e-6)
        assert sides == [0, 1] * (calls // 2) and mkl_packed._CONTESTS == {}
        assert reads == ["64x96@300/onednn-packed"] * 2  # opened (nothing kept), decided: not read at every call
        taken = packed_share <= mkl_packed.ONEDNN_PACK_WIN
        assert mkl_packed.onednn_packing(64, 96, 300) is taken
        assert torch.allclose(layer(x), want, rtol=1e-5, atol=1e-6) and len(sides) == calls  # no contest now
        assert (layer.packed(300, "onednn") is not None) is taken  # a refused packing's copy dropped
    (table,) = json.loads((tmp_path / onednn.CACHE_NAME).read_text())["machines"].values()
    assert table["products"]["64x96@300/onednn-packed"]["onednn"] is taken
    monkeypatch.setattr(mkl_packed, "_ONEDNN_PACKED", {})  # another process reads the verdict
    assert mkl_packed.onednn_packing(64, 96, 300) is taken
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "onednn")
    assert mkl_packed.onednn_packing(64, 96, 300) is False


@pytest.mark.skipif(not mkl_packed.HAS_ONEDNN_PACK, reason="this torch has no oneDNN weight packing")
@pytest.mark.parametrize("packed_share", [0.9, 0.96])
def test_where_the_route_keeps_mkl_onednn_s_packing_must_beat_mkl_s_plain_product_by_the_route_s_margin(
        monkeypatch, tmp_path, packed_share):
    """A oneDNN-packing layer (Talk2DINO's DINO) whose shape the route keeps with MKL (its calibration times oneDNN's
    plain call) weighs oneDNN's packing against MKL's plain product once, before its first product, as the route
    does: the packing is taken only at the route's margin (CLEAR_WIN, kept as ``KxN@rows/onednn-packed-over-mkl``),
    MKL's plain product otherwise, and every call then takes that one library (never both in turn); a layer with
    MKL's packing never asks; every output is F.linear's within float rounding; a forced route takes MKL's."""
    import json

    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "auto")
    monkeypatch.setenv("VPLTOOL_CACHE_DIR", str(tmp_path))
    for name in ("_OVER_ONEDNN", "_ONEDNN_PACKED", "_PACKED_OVER_MKL", "_CONTESTS"):
        monkeypatch.setattr(mkl_packed, name, {})
    monkeypatch.setattr(onednn, "_DECIDED", {})
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [1.0] * onednn.PAIRS)  # the route: MKL
    timed, libraries = [], []
    monkeypatch.setattr(onednn, "time_pairs", lambda sides: timed.append(len(sides)) or [packed_share] * onednn.PAIRS)
    inner = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a: libraries.append("onednn") or inner(*a))
    torch.manual_seed(14)
    layer, mkl = nn.Linear(64, 96), nn.Linear(64, 96)
    mkl.load_state_dict(layer.state_dict())
    mkl_packed.use_packed_mkl(layer, mkl=False)
    mkl_packed.use_packed_mkl(mkl)
    x = torch.randn(3, 100, 64)
    want = F.linear(x, layer.weight, layer.bias)
    taken = packed_share <= onednn.CLEAR_WIN
    with torch.no_grad():
        layer.prepare(300)
        assert timed == [2] and (layer.packed(300, "onednn") is not None) is taken  # weighed before any product
        for _ in range(5):
            assert torch.allclose(layer(x), want, rtol=1e-5, atol=1e-6)
        assert libraries == ["onednn"] * (5 * taken) and timed == [2]  # one library, weighed once
        assert mkl_packed.onednn_packed_over_mkl(64, 96, 300) is taken and mkl_packed._CONTESTS == {}
        mkl.prepare(300)
        assert torch.allclose(mkl(x), want, rtol=1e-5, atol=1e-6) and mkl.packed(300) is not None
        assert timed == [2] and libraries == ["onednn"] * (5 * taken)  # MKL's packing: never weighed so
    (table,) = json.loads((tmp_path / onednn.CACHE_NAME).read_text())["machines"].values()
    assert table["products"]["64x96@300/onednn-packed-over-mkl"]["onednn"] is taken
    monkeypatch.setattr(mkl_packed, "_PACKED_OVER_MKL", {})  # another process reads the verdict
    assert mkl_packed.onednn_packed_over_mkl(64, 96, 300) is taken and timed == [2]
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")
    assert mkl_packed.onednn_packed_over_mkl(64, 96, 300) is False


def _auto_route(monkeypatch, tmp_path, packing: bool | None) -> None:
    """The route ``auto`` on an empty cache, oneDNN taken for every shape, MKL's packing refused, and oneDNN's
    packing's verdict ``packing`` for every shape (None: its contest open); oneDNN's packing never weighed against
    MKL's plain product while ``auto`` takes oneDNN's."""
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "auto")
    monkeypatch.setenv("VPLTOOL_CACHE_DIR", str(tmp_path))
    for name in ("_OVER_ONEDNN", "_ONEDNN_PACKED", "_CONTESTS"):
        monkeypatch.setattr(mkl_packed, name, {})
    monkeypatch.setattr(onednn, "_DECIDED", {})
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [0.5] * onednn.PAIRS)
    monkeypatch.setattr(mkl_packed, "packed_over_onednn", lambda k, n, rows: False)
    monkeypatch.setattr(mkl_packed, "onednn_packing", lambda k, n, rows: packing)

    def never(k, n, rows):  # auto takes oneDNN: MKL's plain product is never weighed against the packing there
        from vpltool.runtime.numerics import cpu_linear_asked

        assert cpu_linear_asked() != "auto", f"{k}x{n}@{rows}: weighed against MKL's plain product on oneDNN's route"
        return False

    monkeypatch.setattr(mkl_packed, "onednn_packed_over_mkl", never)


@pytest.mark.skipif(not mkl_packed.HAS_ONEDNN_PACK, reason="this torch has no oneDNN weight packing")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a mapping's pages are found in /proc/self/maps")
def test_onednn_s_packing_serves_every_row_count_and_a_mapped_file_s_pages_go_back_once_it_serves(
        monkeypatch, tmp_path):
    """oneDNN's packing, made for one row count, serves products of any rows (its outputs oneDNN's plain call's, no
    second packing); a layer whose weights a file backs hands the file's pages back once (the packing takes their
    place), not while its contest is open; MKL's packing hands them back when it is made; the weights stay readable
    (read again from the file)."""
    from vpltool.io import pages

    _auto_route(monkeypatch, tmp_path, True)
    torch.manual_seed(11)
    torch.save(nn.Linear(64, 96).state_dict(), tmp_path / "w.pt")
    layer = nn.Linear(64, 96)
    layer.load_state_dict(torch.load(tmp_path / "w.pt", mmap=True), assign=True)  # the file's pages, not a copy
    assert pages.file_backed(layer.weight.data_ptr())
    handed = []
    real = pages.page_out_tensors
    monkeypatch.setattr(pages, "page_out_tensors", lambda ts: handed.append([t.data_ptr() for t in ts]) or real(ts))
    assert mkl_packed.use_packed_mkl(layer, mkl=False) == 1 and type(layer) is mkl_packed.OneDnnPackedLinear
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():
        layer.prepare(300)
        kept = layer.__dict__["_packing"][1]
        assert handed == [[layer.weight.data_ptr()]]  # at the packing, before any forward's activations
        for rows in (300, 7, 1029):
            x = torch.randn(rows, 64, generator=gen)
            assert torch.allclose(layer(x), onednn.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
            layer.prepare(rows)
            assert layer.__dict__["_packing"][1] is kept  # the one packing, whatever the rows
        assert handed == [[layer.weight.data_ptr()]]  # once a packing
        monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")  # the route's MKL: MKL's plain product, never its packing
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias)) and layer.__dict__["_packing"][1] is kept
    other = nn.Linear(64, 96)
    other.load_state_dict(torch.load(tmp_path / "w.pt", mmap=True), assign=True)
    mkl_packed.use_packed_mkl(other, mkl=False)
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "auto")
    monkeypatch.setattr(mkl_packed, "onednn_packing", lambda k, n, rows: None)  # its contest open: both ways in turn
    handed.clear()
    with torch.no_grad():
        other.prepare(300)
        other(x)
    assert other.packed(300, "onednn") is not None and handed == []
    monkeypatch.setattr(mkl_packed, "onednn_packing", lambda k, n, rows: True)  # decided: handed back at its next call
    with torch.no_grad():
        other(x)
        other(x)
    assert handed == [[other.weight.data_ptr()]]
    mkl = nn.Linear(64, 96)  # MKL's packing, where the route takes MKL: handed back when it is made, and only then
    mkl.load_state_dict(torch.load(tmp_path / "w.pt", mmap=True), assign=True)
    mkl_packed.use_packed_mkl(mkl)
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "mkl")
    handed.clear()
    with torch.no_grad():
        mkl.prepare(300)
        y = torch.randn(300, 64, generator=gen)
        for _ in range(2):
            assert torch.allclose(mkl(y), F.linear(y, mkl.weight, mkl.bias), rtol=1e-5, atol=1e-6)
    assert mkl.packed(300) is not None and handed == [[mkl.weight.data_ptr()]]


def test_talk2dino_s_dino_holds_its_blocks_weights_in_onednn_s_packing_with_the_same_features(monkeypatch, tmp_path):
    """A Talk2DINO's frozen DINO packs its blocks' four linear layers for oneDNN (not MKL's packing: its batches'
    groups of images vary in rows), each forward preparing them first; its features are the unpacked DINO's."""
    from test_talk2dino import TOY_DINO

    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.registry import load_model
    from vpltool.models.text.talk2dino import Talk2DINOConfig
    from vpltool.models.text.talk2dino.net import Talk2DINO

    if not (mkl_packed.HAS_ONEDNN_PACK and onednn.available()):
        pytest.skip("this torch has no oneDNN weight packing")
    _auto_route(monkeypatch, tmp_path, True)
    spec = DinoSpec("test_vit", str(TOY_DINO), "bicubic-antialias")
    dino, plain = (load_model("dino", spec, "cpu") for _ in range(2))
    model = Talk2DINO(Talk2DINOConfig(text_dim=64, dino_dim=int(dino.model.embed_dim)), dino, None)
    layers = mkl_packed.block_linears(dino.model)
    assert model.dino is dino and dino.packed == layers and len(layers) == 4 * len(dino.model.blocks)
    assert all(type(m) is mkl_packed.OneDnnPackedLinear for m in layers) and plain.packed == []
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        got = model.dino_features(pixels)
        want = Talk2DINO(Talk2DINOConfig(text_dim=64, dino_dim=int(dino.model.embed_dim)), None, None)
        want.backbones = (plain, None)
        want = want.dino_features(pixels)
    assert all(m.packed(1, "onednn") is not None for m in layers)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("route", ["onednn", "mkl"])
def test_fc1_and_its_exact_gelu_are_one_onednn_call_where_the_product_is_onednn_s(monkeypatch, route):
    """linear_gelu is F.gelu(layer(x)) for every kind of layer: one oneDNN call with its GELU post-op where the
    route takes oneDNN's product, the GELU after MKL's product otherwise, F.gelu (with its gradient) in training;
    timm's Mlp in a DINO forward goes through it."""
    from vpltool.models.backbones.dino_attention import dino_mlp

    if not onednn.available():
        pytest.skip("this torch has no oneDNN linear op")
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", route)
    posts = []
    inner = onednn.linear
    monkeypatch.setattr(onednn, "linear", lambda *a: posts.append(a[3] if len(a) > 3 else "none") or inner(*a))
    gen = torch.Generator().manual_seed(4)
    plain = nn.Linear(24, 40)
    x = torch.randn(2, 9, 24, generator=gen)
    want = F.gelu(plain(x)).detach()
    for kind in ("linear", "onednn", "packed", "onednn-packed"):
        layer = nn.Linear(24, 40)
        layer.load_state_dict(plain.state_dict())
        if kind == "onednn":
            onednn.use_onednn(layer)
        elif kind != "linear":
            mkl_packed.use_packed_mkl(layer, mkl=kind == "packed")
        posts.clear()
        with torch.no_grad():
            got = mkl_packed.linear_gelu(layer, x)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), kind
        assert posts == ([] if kind == "linear" or route == "mkl" else ["gelu"]), kind
        y = mkl_packed.linear_gelu(layer, x.requires_grad_())  # gradients recorded: F.gelu's
        y.sum().backward()
        assert torch.allclose(y, want, rtol=1e-5, atol=1e-6) and x.grad is not None
        x = x.detach()

    from timm.layers import Mlp

    mlp = Mlp(24, 40).eval()
    onednn.use_onednn(mlp)
    posts.clear()
    with torch.no_grad():
        assert torch.allclose(dino_mlp(mlp, x), mlp(x), rtol=1e-5, atol=1e-6)
    assert posts[:1] == ([] if route == "mkl" else ["gelu"])


@pytest.mark.skipif(not mkl_packed.HAS_ONEDNN_PACK, reason="this torch has no oneDNN weight packing")
def test_a_stage_folder_records_the_library_a_packing_verdict_took_and_a_changed_verdict_is_refused(
        monkeypatch, tmp_path):
    """The two packing verdicts that hand a layer's products to the other library than the route's (MKL's packed
    product on oneDNN's route, oneDNN's packing on MKL's) are recorded by the stage folder as that library, as the
    route's own verdicts are; a resume or another shard whose cache now gives those products to the other library
    is refused in one line naming the verdict, before any product; the cache put back, it completes the folder."""
    import json
    from pathlib import Path

    from vpltool import io
    from vpltool.errors import VplError
    from vpltool.io.folder_routes import ROUTES
    from vpltool.runtime.numerics import run_numerics

    monkeypatch.delenv("VPLTOOL_REPRODUCIBLE", raising=False)
    monkeypatch.setenv("VPLTOOL_CPU_LINEAR", "auto")
    monkeypatch.setenv("VPLTOOL_CACHE_DIR", str(tmp_path))
    route = {(64, 96): 0.5, (96, 64): 1.0}  # the route: oneDNN for the first layer's shape, MKL for the second's
    monkeypatch.setattr(onednn, "calibrate", lambda k, n, rows: [route[(k, n)]] * onednn.PAIRS)
    monkeypatch.setattr(onednn, "time_pairs", lambda sides: [0.9] * onednn.PAIRS)  # each contender wins: the other
    monkeypatch.setattr(mkl_packed, "onednn_packing", lambda k, n, rows: False)  # library takes both layers

    def new_process() -> None:
        for name in ("_OVER_ONEDNN", "_ONEDNN_PACKED", "_PACKED_OVER_MKL", "_CONTESTS"):
            monkeypatch.setattr(mkl_packed, name, {})
        monkeypatch.setattr(onednn, "_DECIDED", {})

    torch.manual_seed(15)
    first, second = nn.Linear(64, 96), nn.Linear(96, 64)
    mkl_packed.use_packed_mkl(first)
    mkl_packed.use_packed_mkl(second, mkl=False)
    numerics, folder = run_numerics(torch.float32, "auto", torch.device("cpu")), tmp_path / "feats"

    def shard(index: int) -> None:
        with io.StageFolder(folder, "toy-stage", {"size": 32}, shard=(index, 2), numerics=numerics) as f:
            with torch.no_grad():
                first.prepare(300)
                second.prepare(300)
                second(first(torch.randn(300, 64)))
            (folder / f"{'ab'[index]}.txt").write_text("item")
            f.finish(["a", "b"], lambda out, i: Path(out) / f"{i}.txt")

    new_process()
    shard(0)
    assert json.loads((folder / io.RUN_RECORD).read_text())[ROUTES] == {
        "64x96@256": "onednn", "64x96@300/mkl-packed": "mkl",
        "96x64@256": "mkl", "96x64@300/onednn-packed-over-mkl": "onednn"}
    cache_file = tmp_path / onednn.CACHE_NAME
    for verdict, library in (("64x96@300/mkl-packed", "oneDNN"), ("96x64@300/onednn-packed-over-mkl", "MKL")):
        cache = json.loads(cache_file.read_text())
        (table,) = cache["machines"].values()
        table["products"][verdict]["onednn"] = not table["products"][verdict]["onednn"]  # edited between shards
        cache_file.write_text(json.dumps(cache))
        new_process()
        with pytest.raises(VplError, match=rf"^[^\n]*feats: an interrupted run made with VPLTOOL_CPU_LINEAR=auto "
                                           rf"taking [A-Za-z]+ for its {verdict} products, where this run takes "
                                           rf"{library} \(its verdict in the route cache .*--overwrite"):
            shard(1)
        assert not (folder / "b.txt").exists() and not (folder / io.STAGE_RECORD).exists()
        table["products"][verdict]["onednn"] = not table["products"][verdict]["onednn"]  # put back
        cache_file.write_text(json.dumps(cache))
    new_process()
    shard(1)
    assert len(json.loads((folder / io.STAGE_RECORD).read_text())[ROUTES]) == 4

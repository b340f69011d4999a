"""Every bench JSON names its CPU exactly (``bench/benchlib.py``): the identity ``machine()`` adds, the generation
table, each bench script taking its machine record from there, and docs/performance.md naming a CPU for every
table."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "docgen"))
import make_table  # noqa: E402

import benchlib  # noqa: E402

# /proc/cpuinfo's first block, trimmed, as two CPUs print it (fields and flags as the kernel names them)
CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model}
model name\t: {name}
stepping\t: 1
microcode\t: 0xa101144
flags\t\t: fpu sse2 avx2 avx512f {extra}

processor\t: 1
vendor_id\t: SomethingElse
"""


def _info(vendor: str, family: int, model: int, name: str = "a CPU", extra: str = "") -> str:
    return CPUINFO.format(vendor=vendor, family=family, model=model, name=name, extra=extra)


@pytest.mark.parametrize(("vendor", "family", "model", "generation"), [
    ("GenuineIntel", 6, 143, "Sapphire Rapids"), ("GenuineIntel", 6, 207, "Emerald Rapids"),
    ("GenuineIntel", 6, 106, "Ice Lake-X"), ("GenuineIntel", 6, 999, None), ("GenuineIntel", 15, 143, None),
    ("AuthenticAMD", 25, 1, "Zen 3"), ("AuthenticAMD", 25, 0x11, "Zen 4"), ("AuthenticAMD", 25, 0xA0, "Zen 4"),
    ("AuthenticAMD", 25, 0x21, "Zen 3"), ("AuthenticAMD", 23, 0x31, "Zen 2"), ("AuthenticAMD", 26, 0x02, "Zen 5"),
    ("AuthenticAMD", 26, 0x44, "Zen 5"), ("AuthenticAMD", 25, 0xC0, None), ("AuthenticAMD", 6, 143, None)])
def test_generation_by_vendor_family_and_model(vendor, family, model, generation):
    assert benchlib.cpu_generation(vendor, family, model) == generation


@pytest.mark.parametrize(("stepping", "generation"), [
    (None, "Skylake-X"), (4, "Skylake-X"), (7, "Cascade Lake"), (5, "Cascade Lake"), (11, "Cooper Lake"), (8, None)])
def test_intel_model_0x55_is_told_apart_by_its_stepping(stepping, generation):
    assert benchlib.cpu_generation("GenuineIntel", 6, 0x55, stepping) == generation


def test_identity_reads_the_first_processor_and_the_isa_flags():
    identity = benchlib.cpu_identity(_info("AuthenticAMD", 25, 17, "AMD EPYC 9B14 96-Core Processor",
                                           "avx512_bf16 avx_vnni"))
    assert identity["vendor"] == "AuthenticAMD" and (identity["family"], identity["model"]) == (25, 17)
    assert identity["stepping"] == 1 and identity["microcode"] == "0xa101144"
    assert identity["generation"] == "Zen 4" and identity["model_name"] == "AMD EPYC 9B14 96-Core Processor"
    assert identity["isa_flags"] == {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False,
                                     "amx_tile": False, "avx512_fp16": False, "avx_vnni": True,
                                     "avx512_vnni": False}
    assert identity["torch"] and "blas_info" in identity["blas"] and "vpltool_cpu_linear" in identity["blas"]
    assert benchlib.cpu_name(identity) == "AMD Zen 4 (AMD EPYC 9B14 96-Core Processor; family 25, model 17)"
    unknown = benchlib.cpu_identity(_info("AuthenticAMD", 25, 0xC0, "AMD EPYC"))
    assert unknown["generation"] is None and benchlib.cpu_name(unknown).endswith("generation unknown)")


def test_the_machine_record_carries_the_identity_and_any_gemm_rates():
    m = benchlib.machine("cpu", {"mkl_gflops": 100.0, "onednn_gflops": 200.0})
    assert set(benchlib.ISA_FLAGS) == set(m["cpu_identity"]["isa_flags"])
    assert m["cpu_identity"]["gemm_gflops"] == {"mkl_gflops": 100.0, "onednn_gflops": 200.0}
    assert "gemm_gflops" not in benchlib.machine("cpu")["cpu_identity"]
    json.dumps(m)  # what a bench prints
    old = {"cpu": "AMD EPYC", "cores": 2, "torch": "2.14.1", "device": "cpu", "amx": False, "isa": "AVX512"}
    assert benchlib.machine_line(old).startswith("AMD EPYC (AVX512; generation not recorded)")


# the scripts under bench/ that print a result JSON (the others are libraries, workers or run by hand and print no
# result: sidebyside.py, startup_phases.py (inside cam.json), trace_refs.py, torchrun_kill.py, vs_reference_ref.py)
RESULT_SCRIPTS = sorted([*ROOT.glob("bench/bench_*.py"), ROOT / "bench/stage_costs.py",
                         ROOT / "bench/profile_stage.py"])


@pytest.mark.parametrize("script", RESULT_SCRIPTS, ids=lambda p: p.name)
def test_every_bench_script_takes_its_machine_record_from_benchlib(script):
    """The one place a bench JSON's machine comes from is ``benchlib.machine`` (which adds the CPU's identity)."""
    source = script.read_text()
    assert re.search(r"\bmachine\(", source) and "benchlib" in source, \
        f"{script.name}: its JSON must hold benchlib.machine(...) under 'machine'"


GENERATIONS = [*(("Intel", g) for g in benchlib.INTEL_FAMILY_6.values()),
               *(("Intel", g) for _, g in benchlib.INTEL_SKYLAKE_X_STEPPINGS),
               *(("AMD", g) for ranges in benchlib.AMD_ZEN.values() for _, g in ranges)]


def test_performance_page_names_a_cpu_for_every_table():
    """docs/performance.md: one table per CPU that a figure came from, and every section's machine line names a
    CPU with its generation or says that the record does not hold it."""
    page = (ROOT / "docs" / "performance.md").read_text()
    assert page.count("## The CPUs these figures came from") == 1
    cpus = re.findall(r"^### CPU: (.+)$", page, flags=re.M)
    assert cpus and len(cpus) == len(set(cpus))
    assert any(c.startswith("AMD EPYC (") and "generation not recorded" in c for c in cpus)
    lines = re.findall(r"^`[^`]+\.json` · machine: (.+)$", page, flags=re.M)
    assert lines
    for line in lines:
        assert "generation not recorded" in line or "generation unknown" in line or \
            any(line.startswith(f"{v} {g} (") for v, g in GENERATIONS), line
    assert not re.search(r"\b(on|for) (AMD|Intel) (CPUs )?in general\b", page)


def test_make_table_groups_results_by_cpu(tmp_path):
    identity = benchlib.cpu_identity(_info("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8480+", "amx_tile"))
    new = {"benchmark": "x", "machine": {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "device": "cpu",
                                         "cpu_identity": {**identity, "gemm_gflops": {"mkl_gflops": 150.5}}}}
    old = {"benchmark": "y", "machine": {"cpu": "AMD EPYC", "device": "cpu"}, "linear": {"onednn_gflops": 228.1}}
    lines = make_table.cpus_section([(tmp_path / "new.json", new), (tmp_path / "old.json", old)])
    text = "\n".join(lines)
    assert "### CPU: Intel Sapphire Rapids (Intel(R) Xeon(R) Platinum 8480+; family 6, model 143), AMX" in text
    assert "### CPU: AMD EPYC (generation not recorded)" in text and 'only as "AMD EPYC"' in text
    assert "| `new.json` | x | cpu | — | 150 | — |" in text and "| `old.json` | y | cpu | — | — | 228 |" in text


def test_the_radseg_floor_is_the_reference_s_products_at_the_fastest_rate_measured():
    """bench_radseg.py --profile: FLOPs from the profiled shapes, the two sides' ops side by side, the floor."""
    sys.path.insert(0, str(ROOT / "parity"))
    import bench_radseg as br

    assert br.op_flop("aten::addmm", [[3072], [898, 768], [768, 3072], [], []]) == 2 * 898 * 768 * 3072
    assert br.op_flop("aten::bmm", [[24, 449, 64], [24, 64, 449]]) == 2 * 24 * 449 * 64 * 449
    sdpa = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert br.op_flop(sdpa, [[2, 12, 449, 64]] * 3) == 4 * 24 * 449 * 449 * 64
    assert br.op_flop("mkl::_mkl_linear", [[2, 449, 768], [], [3072, 768], [3072], []]) == 2 * 898 * 768 * 3072
    assert br.op_flop("aten::gelu", [[2, 449, 3072]]) == 0 and br.op_flop("aten::mm", [[]]) == 0

    def side(gemm_s, rest_s):
        return {"unit_s": gemm_s + 0.1 + rest_s, "ops": {
            "aten::addmm": {"self_s": 2 * gemm_s, "cpu_s": gemm_s, "calls": 4, "gflop": 100.0},
            sdpa: {"self_s": 0.2, "cpu_s": 0.1, "calls": 1, "gflop": 5.0},
            "aten::gelu": {"self_s": 2 * rest_s, "cpu_s": rest_s, "calls": 1, "gflop": 0.0}}}

    table = br.op_table({"reference": side(1.0, 0.3), "vpltool": side(0.8, 0.2)})
    assert [r["op"] for r in table["ops"]] == ["aten::addmm", "aten::gelu", sdpa]
    assert table["totals"]["vpltool"]["gemm"]["gflops_per_s"] == 125.0
    assert table["totals"]["reference"]["rest_cpu_s"] == 0.3
    floor = br.floor_of(table, {"shape": "x", "mkl_gflops": 140.0, "onednn_gflops": 120.0})
    assert floor["gflop"] == 105.0 and floor["peak_gflops_per_s"] == 140.0 and floor["floor_s"] == 0.75
    floor = br.floor_of(table, {"mkl_gflops": 100.0})  # a side's products faster than any probe: their rate
    assert floor["peak_gflops_per_s"] == 125.0 and floor["floor_s"] == 0.84
    # with torch's attention: the reference's 5 GFLOP of it at that kernel's fastest rate (a probe's 80 here, above
    # the 50 it ran at in the profiles), its 100 of products at 125
    kernel = br.floor_of(table, {"mkl_gflops": 100.0}, {"2x12x449x64": 80.0, "6x12x449x64": 20.0})
    assert kernel["with_torch_attention"]["floor_s"] == 0.8625 and kernel["floor_s"] == 0.84
    slow = br.floor_of(table, {"mkl_gflops": 100.0}, {"2x12x449x64": 40.0})  # the profiled 50 is the faster
    assert slow["with_torch_attention"]["floor_s"] == 0.9
    assert "with_torch_attention" not in floor
    # bench/profile_text.py lays the same figures out by kind, each side's op on one line, with the products' rate
    import profile_text

    result = {"profile": table, "floor": {**floor, "floor_over_reference": 0.6}, "ratio_median": 0.8,
              "ratios": [0.8], "cpu_seconds_median": {"vpltool": 1.1, "reference": 1.4}}
    lines = profile_text.text(result).splitlines()
    addmm = next(line for line in lines if line.startswith("aten::addmm"))
    assert addmm.split() == ["aten::addmm", "0.8000", "4", "100.000", "125.0", "|", "1.0000", "4", "100.000", "100.0"]
    kinds = [line for line in lines if line.startswith("-- ")]
    assert kinds[:3] == ["-- attention", "-- products", "-- elementwise, norms"]
    assert profile_text.kind_of("aten::copy_") == "copies, layouts" and profile_text.kind_of("x::y") == "other"


def test_bench_activesam_reuses_the_reference_of_an_earlier_run_of_the_same_settings_alone(tmp_path, monkeypatch):
    """--reference-from: the earlier result's reference rows where it measured the same thing; one line naming what
    differs (the settings, the pairs), a missing outputs file, or --one-at-a-time left out."""
    import argparse

    sys.path.insert(0, str(ROOT / "parity"))
    import activesam_parity
    import bench_activesam as ba

    monkeypatch.setattr(activesam_parity, "commit_of", lambda folder: "abc")
    settings, unit = {"prob_thd": 0.1, "confidence_threshold": 0.15}, "one photo, 1 in turn: 50x40"
    earlier = {"benchmark": "sam3-vs-reference", "model": ba.MODELS["full"], "settings": settings,
               "class_set": "activesam:voc21", "classes": 21, "unit": unit, "command": "python bench/...",
               "reference": {"repo": "VILA-Lab/ActiveSAM", "commit": "abc"}, "vpltool_commit": "df04ed2",
               "pairs": [{"reference": {"cpu": 10.0}, "vpltool": {"cpu": 9.0}}]}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    args = argparse.Namespace(reference_from=path, one_at_a_time=True, method="sam3", arch="full", ref=tmp_path,
                              class_set="activesam:voc21", classes=21, pairs=1, work=tmp_path)
    with pytest.raises(SystemExit, match="reference_out.pt missing"):
        ba.reference_rows(args, settings, unit)
    (tmp_path / "reference_out.pt").write_bytes(b"")
    reused = ba.reference_rows(args, settings, unit)
    assert reused["rows"] == [{"cpu": 10.0}] and reused["note"]["vpltool_commit"] == "df04ed2"
    with pytest.raises(SystemExit, match=r"settings differ"):
        ba.reference_rows(args, {**settings, "prob_thd": 0.2}, unit)
    with pytest.raises(SystemExit, match=r"pairs \(1 there\) differ"):
        ba.reference_rows(argparse.Namespace(**{**vars(args), "pairs": 2}), settings, unit)
    with pytest.raises(SystemExit, match="add --one-at-a-time"):
        ba.reference_rows(argparse.Namespace(**{**vars(args), "one_at_a_time": False}), settings, unit)


def test_a_side_s_saved_outputs_are_compared_only_by_a_run_of_the_same_worker_arguments(tmp_path):
    """sidebyside.save_outputs records the worker arguments beside a side's outputs; check_outputs (a later run that
    reuses them: --reference-from) refuses in one line outputs another method or setting made in the same --work, or
    that carry no record, instead of comparing them with this run's."""
    import sidebyside

    class FakeSide:  # a worker that writes its outputs where it is told
        def save(self, path):
            path.write_bytes(b"outputs")

    out = tmp_path / "reference_out.pt"
    sam3 = ["--method", "sam3", "--work", tmp_path, "--overrides", '{"prob_thd": 0.1}']
    with pytest.raises(SystemExit, match="reference_out.pt missing"):
        sidebyside.check_outputs(out, sam3)
    out.write_bytes(b"an older run's")
    with pytest.raises(SystemExit, match="reference_out.pt: no record of the run that made them"):
        sidebyside.check_outputs(out, sam3)
    sidebyside.save_outputs(FakeSide(), out, sam3)
    sidebyside.check_outputs(out, sam3)  # the same arguments: reused
    activesam = [a if a != "sam3" else "activesam" for a in sam3]
    with pytest.raises(SystemExit, match=r"reference_out.pt: made by a run with other arguments: activesam, sam3; "):
        sidebyside.check_outputs(out, activesam)


def test_bench_activesam_floor_counts_the_products_convolutions_and_attention_at_the_fastest_rate(monkeypatch):
    """count_flops: 2 x the multiply-adds of a linear layer, a CPU attention (torch's table leaves its fused op
    out), a convolution and a batched product, by hand; a worker counts its warm-up unit's photo, then on ``flops``
    runs the photos not counted yet once more; floor_of: each pair's photo's FLOPs at the fastest probe over the
    reference's CPU-seconds on it (pair i timed photo (i + 1) % n)."""
    import argparse

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "parity"))
    import bench_activesam as ba

    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 5, 8, generator=gen), torch.randn(6, 8, generator=gen), torch.randn(6, generator=gen)
    q, k, v = (torch.randn(1, 2, n, 4, generator=gen) for n in (7, 9, 9))
    img, cw = torch.randn(1, 3, 10, 10, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)

    def unit():
        return F.linear(x, w, b), F.scaled_dot_product_attention(q, k, v), F.conv2d(img, cw), x @ x.transpose(1, 2)

    out, counted = ba.count_flops(unit)
    linear, attention, conv, bmm = 2 * 10 * 8 * 6, 2 * 2 * (2 * 7 * 9 * 4), 2 * 4 * 8 * 8 * 27, 2 * 2 * 5 * 8 * 5
    assert counted["gflop"] * 1e9 == pytest.approx(linear + attention + conv + bmm, abs=1e-6)
    assert set(counted["by_op_gflop"]) == {"aten.addmm", "aten._scaled_dot_product_flash_attention_for_cpu",
                                           "aten.convolution", "aten.bmm"}
    assert torch.equal(out[2], F.conv2d(img, cw))  # the unit's own output, not a stand-in

    files, state, seen, served = [Path("a.jpg"), Path("b.jpg")], {"k": 0}, [], {}

    def photo_unit():
        seen.append(files[state["k"] % 2].name)
        state["k"] += 1
        return torch.ones(3, 4) @ torch.ones(4, 5 if seen[-1] == "a.jpg" else 7)

    monkeypatch.setattr(ba, "serve", lambda unit, trim, commands: served.update(unit=unit, commands=commands))
    ba.finish(argparse.Namespace(profile=0), photo_unit, files, state)
    served["unit"](), served["unit"]()  # the warm-up (a.jpg, counted), a timed unit (b.jpg)
    assert [(f["photo"], round(f["gflop"] * 1e9)) for f in served["commands"]["counted"]()["flops"]] == [("a.jpg", 120)]
    counts = served["commands"]["flops"]()["flops"]
    assert seen == ["a.jpg", "b.jpg", "b.jpg"] and [(f["photo"], round(f["gflop"] * 1e9)) for f in counts] == [
        ("a.jpg", 120), ("b.jpg", 168)]

    flops = [{"photo": "b.jpg", "gflop": 300.0}, {"photo": "a.jpg", "gflop": 200.0}]
    rows = [{"reference": {"cpu": 6.0}}, {"reference": {"cpu": 4.0}}, {"reference": {"cpu": 3.0}}]
    floor = ba.floor_of(flops, rows, files, {"default": {"shape": "x", "mkl_gflops": 80.0, "onednn_gflops": 100.0},
                                             "sam3_vit_mlp": {"shape": "y", "mkl_gflops": 90.0}})
    assert floor["peak_gflops_per_s"] == 100.0 and floor["floor_s_per_photo"] == {"b.jpg": 3.0, "a.jpg": 2.0}
    assert floor["floor_over_reference"] == [0.5, 0.5, 1.0] and floor["floor_over_reference_median"] == 0.5
    floor = ba.floor_of(flops[1:], rows, files, {"default": {"mkl_gflops": 100.0}})  # --floor-from, a.jpg alone
    assert floor["floor_over_reference"] == [None, 0.5, None] and floor["floor_over_reference_median"] == 0.5


def test_cpu_name_reads_a_record_s_stepping_by_the_table_now():
    """A record made before model 0x55's steppings were told apart says "Skylake-X" of a Cascade Lake: its name is
    the table's now, from the recorded family, model and stepping."""
    old = {"vendor": "GenuineIntel", "family": 6, "model": 85, "stepping": 7, "generation": "Skylake-X",
           "model_name": "Intel(R) Xeon(R) Processor @ 2.50GHz"}
    assert benchlib.cpu_name(old).startswith("Intel Cascade Lake (")
    assert benchlib.cpu_name({**old, "stepping": None}).startswith("Intel Skylake-X (")


def test_every_floor_takes_the_same_rates_and_arithmetic():
    """probe_rates and at_fastest: the one place the side-by-side benches read a probe's rates and put work at the
    fastest of them."""
    probes = {"shape": "914x768x3072", "mkl_gflops": 97.1, "onednn_gflops": 107.0, "mkl_packed_gflops": 0.0}
    assert benchlib.probe_rates(probes) == {"mkl": 97.1, "onednn": 107.0}  # a library that measured nothing: out
    assert benchlib.probe_rates(probes, "vit_{library}") == {"vit_mkl": 97.1, "vit_onednn": 107.0}
    assert benchlib.at_fastest(1298.5, {"mkl": 97.1, "onednn": 107.0, "roofline": 100.0}) == (107.0, 1298.5 / 107.0)


def test_the_dino_forward_bench_counts_a_call_s_flops_from_its_input_shapes():
    """bench_dino_forward's GFLOP/s by op: a linear layer's (oneDNN's op, MKL's addmm) and the fused attention's
    FLOPs from the profiler's input shapes (bench_radseg's op_flop, the one count of the profiling benches); 0 for an
    op it does not count."""
    import bench_dino_forward as bd
    import bench_radseg as br

    assert bd.op_flop is br.op_flop
    assert bd.op_flop("mkldnn::_linear_pointwise", [[1, 1029, 768], [3072, 768], [3072]]) == 2 * 1029 * 768 * 3072
    assert bd.op_flop("aten::addmm", [[768], [1029, 768], [768, 768]]) == 2 * 1029 * 768 * 768
    assert bd.op_flop("aten::mm", [[1029, 64], [64, 1029]]) == 2 * 1029 * 64 * 1029
    q = [1, 12, 1029, 64]
    assert bd.op_flop("aten::_scaled_dot_product_flash_attention_for_cpu", [q, q, q, []]) == 4 * 12 * 1029 * 1029 * 64
    assert bd.op_flop("aten::gelu", [[1, 1029, 3072], []]) == 0

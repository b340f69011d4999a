"""The numeric mode (vpltool.runtime.numerics): the AMX switch, reproducible mode's pins and what a run records of them.

The pins are read when a library loads, so every check of them runs a fresh Python process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vpltool import io
from vpltool.device import cpu_has_amx, resolve_precision
from vpltool.errors import ContractError, VplError, VplWarning
from vpltool.runtime import numerics

CPU = torch.device("cpu")


def _fresh(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python with ``env`` over this one's (without the mode's variables)."""
    base = {k: v for k, v in os.environ.items()
            if k not in numerics.pinned_environment() and k != numerics.ASSUME_AMX_ENV}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("assumed, dtype", [("1", torch.bfloat16), ("0", torch.float32)])
def test_the_amx_switch_resolves_auto_as_that_cpu_would(monkeypatch, assumed, dtype):
    monkeypatch.setenv(numerics.ASSUME_AMX_ENV, assumed)
    monkeypatch.delenv(numerics.MODE_ENV, raising=False)
    assert cpu_has_amx() is (assumed == "1")
    assert resolve_precision("auto", CPU) == dtype
    assert resolve_precision("fp32", CPU) == torch.float32  # an explicit dtype is never changed


def test_reproducible_mode_resolves_auto_to_fp32_whatever_the_cpu(monkeypatch):
    monkeypatch.setenv(numerics.ASSUME_AMX_ENV, "1")
    monkeypatch.setenv(numerics.MODE_ENV, "1")
    assert resolve_precision("auto", CPU) == torch.float32
    assert resolve_precision("auto", torch.device("cuda")) == torch.float32
    assert resolve_precision("bf16", CPU) == torch.bfloat16


def test_the_pins_name_only_the_avx512_features_the_cpu_has(monkeypatch):
    monkeypatch.setattr(numerics, "x86", lambda: True)
    avx2 = numerics.pinned_environment({"avx", "avx2", "fma"})
    avx512 = numerics.pinned_environment({"avx2", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
    assert avx2["ATEN_CPU_CAPABILITY"] == "avx2" and avx2["MKL_CBWR"] == "COMPATIBLE"
    assert avx2["OMP_NUM_THREADS"] == "1" and avx2[numerics.MODE_ENV] == "1"
    assert "OPENCV_CPU_DISABLE" not in avx2  # OpenCV prints a line for each feature the CPU lacks
    assert avx512["OPENCV_CPU_DISABLE"] == "AVX512F,AVX512-COMMON,AVX512-SKX"
    monkeypatch.setattr(numerics, "x86", lambda: False)
    assert "ATEN_CPU_CAPABILITY" not in numerics.pinned_environment(set())  # threads alone off x86


PROBE = ("import json, vpltool, torch, numpy; from vpltool.runtime.numerics import mkl_branch, run_numerics; "
         "print(json.dumps([run_numerics(torch.float32, 'auto'), torch.backends.cpu.get_cpu_capability(), "
         "torch.get_num_threads(), mkl_branch()]))")


@pytest.mark.skipif(not numerics.x86() or "avx2" not in numerics.cpu_flags(), reason="an x86-64 CPU with AVX2")
def test_reproducible_mode_pins_torch_and_numpy_before_they_load():
    got = _fresh(PROBE, {numerics.MODE_ENV: "1", "OMP_NUM_THREADS": "2"})
    assert got.returncode == 0, got.stderr
    record, capability, threads, branch = json.loads(got.stdout)
    assert record == {"dtype": "fp32", "precision": "auto", "mode": "reproducible", "isa": "AVX2", "threads": 1,
                      "linear": "openblas-haswell"}  # its products' library (vpltool.runtime.products)
    assert (capability, threads) == ("AVX2", 1)  # ATen's kernels and torch's threads as pinned
    # MKL's vendor-neutral branch as MKL reports it (its AVX2 branch is Intel's alone: an AMD CPU ran AUTO there)
    assert branch in ("COMPATIBLE", None), branch
    fast = json.loads(_fresh(PROBE, {}).stdout)[0]
    assert fast["mode"] == "fast" and fast["amx"] == ("amx_bf16" in numerics.cpu_flags())


@pytest.mark.skipif(not numerics.x86() or "avx2" not in numerics.cpu_flags(), reason="an x86-64 CPU with AVX2")
def test_reproducible_yes_is_reproducible_mode_before_torch_loads():
    """``VPLTOOL_REPRODUCIBLE=yes`` (or true, on, any case) asks the mode as ``1`` does (once: fast, silently)."""
    got = _fresh(PROBE, {numerics.MODE_ENV: "Yes"})
    assert got.returncode == 0, got.stderr
    record, capability, threads, _ = json.loads(got.stdout)
    assert record["mode"] == "reproducible" and (capability, threads) == ("AVX2", 1)


@pytest.mark.parametrize("name", [numerics.MODE_ENV, numerics.ASSUME_AMX_ENV])
def test_a_switch_takes_the_usual_words_and_refuses_any_other(monkeypatch, name):
    for word, on in [("1", True), ("true", True), (" YES ", True), ("on", True), ("0", False), ("False", False),
                     ("no", False), ("off", False), ("", None)]:
        monkeypatch.setenv(name, word)
        assert numerics.switch(name) is on, word
    for word in ("2", "garbage", "1.0", "y es"):
        monkeypatch.setenv(name, word)
        with pytest.raises(VplError, match=rf"^{name}={word!r}: not a switch; set it to 1 \(or true, yes, on\) "):
            numerics.check_switches()
    monkeypatch.setenv(numerics.ASSUME_AMX_ENV, "true")
    monkeypatch.delenv(numerics.MODE_ENV, raising=False)
    assert cpu_has_amx() and resolve_precision("auto", CPU) == torch.bfloat16  # once: this CPU's, silently


def test_the_mode_asked_after_torch_loaded_is_said_and_recorded_as_fast():
    late = PROBE.replace("import json, vpltool, torch, numpy", "import json, torch, numpy; import vpltool")
    got = _fresh(late, {numerics.MODE_ENV: "1"})
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)[0]["mode"] == "fast"
    said = [line for line in got.stderr.splitlines() if "VPLTOOL_REPRODUCIBLE=1 asked" in line]
    assert len(said) == 1 and "torch, numpy loaded before the mode was asked" in said[0]


FAST = {"dtype": "fp32", "precision": "auto", "mode": "fast", "isa": "AVX512", "amx": False, "threads": 2}
REPRO = {"dtype": "fp32", "precision": "auto", "mode": "reproducible", "isa": "AVX2", "threads": 1}
BF16 = {**FAST, "dtype": "bf16", "amx": True}


def test_a_file_of_another_dtype_or_mode_is_refused_in_one_line():
    with pytest.raises(ContractError, match=r"features: made at bf16 \(auto precision on a CPU with AMX\); this run "
                                            r"is at fp32 \(auto precision\): pass --precision bf16 to this command, "
                                            r"or re-run `vpltool extract` .* with --precision fp32"):
        io.check_numerics(FAST, ("features", BF16, "extract"))
    with pytest.raises(ContractError, match=r"cams: made in reproducible mode; this run is in fast mode: run this "
                                            r"command in reproducible mode too"):
        io.check_numerics(FAST, ("cams", REPRO, "cam"))
    with pytest.raises(ContractError, match=r"re-run `vpltool cam` in reproducible mode too, or run this command "
                                            "without it"):
        io.check_numerics(REPRO, ("cams", FAST, "cam"))
    with pytest.raises(ContractError, match="'numerics' is .*the file is damaged"):
        io.check_numerics(FAST, ("cams", {"mode": "turbo"}, "cam"))


def test_a_file_of_another_dtype_and_mode_names_both():
    """A reproducible (fp32) file read by a fast run at auto on an AMX CPU (bf16) differs in both: the line had named
    the dtype alone, found on a Xeon with AMX. And bf16 at auto on CUDA is said as such, not as an AMX CPU's."""
    with pytest.raises(ContractError, match=r"features: made at fp32 \(auto precision\), in reproducible mode; this "
                                            r"run is at bf16 \(auto precision on a CPU with AMX\), in fast mode: run "
                                            r"this command in reproducible mode with --precision fp32, or re-run "
                                            r"`vpltool extract` \(and what it was made from\) as this run is"):
        io.check_numerics(BF16, ("features", REPRO, "extract"))
    with pytest.raises(ContractError, match=r"made at fp32 \(auto precision\); this run is at bf16 \(auto "
                                            r"precision on CUDA\)"):
        io.check_numerics({**BF16, "device": "cuda"}, ("features", FAST, "extract"))


def test_trained_weights_of_another_dtype_or_mode_are_used_with_a_warning():
    # a decoder trained at fp32 predicting at bf16 (as a CLIP's fp32 weights run at bf16): said, not refused
    with pytest.warns(VplWarning, match=r"decoder.safetensors: made at fp32 \(auto precision\); this run is at "
                                        r"bf16 .*its weights are used as they are"):
        io.check_numerics(BF16, ("decoder.safetensors", FAST, "train-decoder"), weights=True)
    with pytest.warns(VplWarning, match="made in reproducible mode; this run is in fast mode"):
        io.check_numerics(FAST, ("talk2dino.safetensors", REPRO, "train-text"), weights=True)
    with pytest.raises(ContractError, match="'numerics' is .*the file is damaged"):  # a damaged record still is
        io.check_numerics(FAST, ("decoder.safetensors", {"mode": "turbo"}, "train-decoder"), weights=True)


def test_what_is_not_compared():
    io.check_numerics(FAST, ("old", None, "extract"))  # a file of a vpltool before numerics: read as before
    io.check_numerics(BF16, ("text.safetensors", {**FAST, "dtype": None}, "text-prototypes"))  # fp32 by design
    io.check_numerics({**FAST, "dtype": None}, ("cams", BF16, "cam"))  # crf: no --precision of its own
    io.check_numerics({**FAST, "isa": "AVX2", "threads": 16}, ("features", FAST, "extract"))  # another machine


def test_records_and_items_carry_the_numerics_and_a_resume_in_another_mode_is_refused(tmp_path):
    out = tmp_path / "cams"
    with io.StageFolder(out, "cam", {"v": 1}, numerics=FAST) as folder:
        assert io.read_record(out / io.RUN_RECORD, run=True)[io.NUMERICS] == FAST
        io.write_cam(out / "a.safetensors", torch.rand(1, 2, 2), [1], image_size=(4, 4), id="a",
                     classes=["background", "x"], params={})
        folder.complete(count=1, ids=["a"])
    assert io.read_record(out / io.STAGE_RECORD)[io.NUMERICS] == FAST
    assert io.header_numerics(io.read_header(out / "a.safetensors")) == FAST
    with pytest.raises(VplError, match=r"cams: made in fast mode, this run is in reproducible mode; re-run with the "
                                       "same mode, pass --overwrite"):
        io.StageFolder(out, "cam", {"v": 1}, numerics=REPRO).__enter__()
    with io.StageFolder(out, "cam", {"v": 1}, numerics={**FAST, "isa": "AVX2"}):  # the same mode elsewhere resumes
        pass

"""Reproducible mode on one machine: extract -> text-prototypes -> cam (CAA) -> crf of the test world, run as this
machine is and with an AVX2-only machine emulated from the start, are the same bytes; in fast mode they are not (the
negative control: else the emulation changes nothing). The whole reduced demo is bench/bench_reproducible.py's.

Each run is a fresh Python process (the pins act when torch and numpy load) that runs its commands one after the
other; the two reproducible-mode runs that both tests compare are made once, by the ``reproducible_runs`` fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpltool.runtime import numerics

# (not marked numeric: it sets the AMX switch itself, and clears it from the environment it is given)
pytestmark = pytest.mark.skipif(not numerics.x86() or "avx2" not in numerics.cpu_flags(), reason="x86-64 with AVX2")

TINY = ["--model", "vpl-test-vit", "--pretrained", "none", "--device", "cpu"]
RUN = """
import json, sys
import vpltool  # first: the mode's pins act before torch and numpy load
from vpltool.cli import app

for args in json.loads(sys.argv[1]):
    code = app(args, standalone_mode=False)  # the CLI's error line printed, its exit code returned
    if code:
        sys.exit(code)
"""
# the same, with the tests' tiny timm towers registered first (RADSeg's tiny C-RADIOv3 and SigLIP 2 tower)
RUN_TOWERS = RUN.replace("from vpltool.cli import app", f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                         "import tiny_towers\ntiny_towers.register()\nfrom vpltool.cli import app")
# an AVX2-only x86-64 machine without AMX, emulated: each library capped at AVX2 by its documented setting, glibc's
# AVX-512 ifuncs off (bench/bench_reproducible.py's emulation)
GLIBC_AVX2 = "glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL"


def avx2_machine() -> dict[str, str]:
    env = {**numerics.ISA_PINS, "GLIBC_TUNABLES": GLIBC_AVX2, numerics.ASSUME_AMX_ENV: "0"}
    opencv = numerics.pinned_environment().get("OPENCV_CPU_DISABLE")
    return {**env, **({"OPENCV_CPU_DISABLE": opencv} if opencv else {})}


def _demo_commands(world: Path, out: Path) -> list[list[str]]:
    """The demo's four stages into ``out``: extract, text-prototypes, cam (CAA), crf."""
    commands = [["extract", world, "--split", "train", "-o", out / "features", *TINY, "--workers", "1", "--cache",
                 "full"],
                ["text-prototypes", out / "features", "-o", out / "text.safetensors", "--templates",
                 "a photo of a {}.", "--background", "grass,sky,wall,water", "--device", "cpu"],
                ["cam", out / "features", "-p", out / "text.safetensors", "-o", out / "cams", "--refine", "caa",
                 "--device", "cpu", "--workers", "1"],
                ["crf", out / "cams", "-o", out / "pseudo", "--workers", "1"]]
    return [[str(a) for a in c] for c in commands]


def _run(world: Path, out: Path, env: dict[str, str]) -> Path:
    """The four stages into ``out`` in one fresh process with ``env`` over a clean environment."""
    _run_commands(_demo_commands(world, out), env, RUN)
    return out


def _files(run: Path) -> dict[str, bytes]:
    """Every features, CAM and mask file of a run, and the prototypes, as bytes (their headers included)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.suffix in (".safetensors", ".png")}


def _payload(data: bytes) -> bytes:
    """A safetensors file's tensors alone (its header records the instructions of a fast run)."""
    return data[8 + int.from_bytes(data[:8], "little"):]


def test_reproducible_mode_gives_the_same_bytes_on_an_emulated_avx2_machine_and_fast_mode_does_not(
        world, reproducible_runs):
    root, _ = reproducible_runs
    here, avx2 = _files(root / "here" / "demo"), _files(root / "avx2" / "demo")
    amx = _files(_run(world, root / "run" / "demo", {numerics.MODE_ENV: "1", numerics.ASSUME_AMX_ENV: "1"}))
    (root / "run").rename(root / "amx")  # the next run writes the same paths: its records name them
    assert len(here) == 1 + 3 * 6 and here.keys() == avx2.keys() == amx.keys()
    assert [k for k in here if here[k] != avx2[k]] == []  # every file, its header included
    assert [k for k in here if here[k] != amx[k]] == []  # reproducible mode ignores the AMX switch
    fast = {k: _payload(v) for k, v in _files(_run(world, root / "run" / "demo", {})).items()
            if k.endswith("tensors")}
    (root / "run").rename(root / "fast")
    slow = {k: _payload(v) for k, v in _files(_run(world, root / "run" / "demo", avx2_machine())).items()
            if k.endswith("tensors")}
    differ = [k for k in fast if fast[k] != slow[k]]
    assert any(k.startswith("cams/") for k in differ), "the emulated AVX2 machine changed no CAM in fast mode"


def _segment_commands(inputs, out: Path) -> list[list[str]]:
    """``segment --dense M`` of the method matrix's photo into ``out/M``, one command per method it can run here
    (tests/method_matrix.py: each method's proxy, SAM, region masks and RADSeg's tiny towers)."""
    import method_matrix as mm

    from vpltool.config.dense import DENSE_SPECS

    tiny = ["--model", "vpl-test-vit", "--pretrained", "none", "--model-config-dir", inputs.model_config_dir]
    commands = []
    for method in DENSE_SPECS:
        if mm.missing_inputs(method, inputs):
            continue
        own = mm.method_options(method, inputs)
        side = own.pop("short_side", mm.SIDE)
        commands.append(["segment", inputs.photos, "-o", str(out / method), "--classes", ",".join(mm.CLASSES), *tiny,
                         "--dense", method, "--short-side", str(side), *mm._flags(mm.TEXT), *mm._flags(own),
                         "--device", "cpu", "--workers", "1"])
    return commands


def _run_commands(commands: list[list[str]], env: dict[str, str], program: str = RUN_TOWERS) -> None:
    """``commands`` one after the other in one fresh process (``program``) with ``env`` over a clean environment."""
    base = {k: v for k, v in os.environ.items()
            if k not in numerics.pinned_environment() and k != numerics.ASSUME_AMX_ENV}
    done = subprocess.run([sys.executable, "-c", program, json.dumps(commands)],
                          env={**base, "OMP_NUM_THREADS": "2", **env}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def reproducible_runs(world, tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """The reproducible-mode runs both tests compare, made once: the demo's four stages (``run/demo``) and every
    dense method's ``segment`` (``run/dense``, :func:`_segment_commands`), all in one fresh process as this machine
    is (then moved to ``here``) and in one on an emulated AVX2-only machine (``avx2``), at the same paths (records
    name them). Two processes where the two tests started four, each paying torch's imports and the pins."""
    import method_matrix as mm

    root = tmp_path_factory.mktemp("reproducible")
    inputs = mm.make_inputs(root / "inputs", root, root, root)
    segment = _segment_commands(inputs, root / "run" / "dense")
    for name, env in (("here", {numerics.MODE_ENV: "1"}), ("avx2", {numerics.MODE_ENV: "1", **avx2_machine()})):
        _run_commands([*_demo_commands(world, root / "run" / "demo"), *segment], env)
        (root / "run").rename(root / name)
    return root, segment


def test_every_dense_method_gives_the_same_bytes_in_reproducible_mode_on_an_emulated_avx2_machine(
        reproducible_runs):
    """Each ``--dense`` method (training-free, with its proxy DINO, SAM, region masks), not only the demo's stages:
    CASS's cell of the README once moved with the CPU in reproducible mode (a library its randomised SVD and
    spectra reach). Its masks made here and on an emulated AVX2-only machine are the same bytes."""
    root, commands = reproducible_runs
    assert len(commands) >= 10, [c[c.index("--dense") + 1] for c in commands]
    here, avx2 = _files(root / "here" / "dense"), _files(root / "avx2" / "dense")
    masks = {k.partition("/")[0] for k in here if k.endswith(".png")}
    assert masks == {c[c.index("--dense") + 1] for c in commands} and here.keys() == avx2.keys()
    assert [k for k in here if here[k] != avx2[k]] == []

"""What every benchmark script records besides its timings: the machine, and the peak memory of each stage.

Imported by the scripts as ``benchlib`` (``python bench/bench_x.py`` puts this folder on ``sys.path``; the studies,
parity runners and doc generators add it).

Peak memory is per stage, not per process: before a stage, Linux's peak-RSS counter is reset
(``/proc/self/clear_refs`` = 5, which also resets ``getrusage``'s ``ru_maxrss``), so the figure is what that stage
held at most, model weights and inputs already resident included. Where the reset is not possible (not Linux, or
not permitted) the figure is the process peak so far and ``scope`` says so. On CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``, reset per stage) is recorded next to the host RSS.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from sidebyside import reset_peak  # the kernel's peak-RSS counter reset (this folder; stdlib only)


def run_child(cmd: list, env: dict | None = None, cwd=None) -> tuple[float, float]:
    """Run ``cmd`` as its own process: (wall seconds, its peak resident memory in MiB from ``wait4``).

    stderr is drained before the wait (a child that fills the pipe would block forever); a failure exits with the
    command and the tail of its stderr.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def run_children_in_one(commands: list[list], env: dict | None = None) -> list[tuple[float, float]]:
    """Run the vpltool commands ``commands`` (each its argument list, without ``vpltool``) one after the other in
    ONE child process (``run_in_one.py``): ``(wall seconds, peak MiB)`` per command, as :func:`run_child` gives for
    one. For ``--quick`` smoke tests only: the start-up each process of :func:`run_child` pays (3-4 CPU-s) is
    paid once, and a command's seconds and memory no longer include their own start-up."""
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="run_in_one_") as tmp:
        listed, result = Path(tmp) / "commands.json", Path(tmp) / "result.json"
        listed.write_text(json.dumps([[str(a) for a in cmd] for cmd in commands]))
        run_child([sys.executable, Path(__file__).with_name("run_in_one.py"), result, listed], env)
        return [tuple(pair) for pair in json.loads(result.read_text())]


def add_common_args(parser, quick_help: str, device_help: str = "cpu | cuda | cuda:N") -> None:
    """The options every benchmark takes: ``--device`` (default cpu) and ``--quick`` (a smoke test)."""
    parser.add_argument("--device", default="cpu", help=device_help)
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {quick_help}")


def apply_quick(args, quick: dict, single_thread: bool = True):
    """With ``--quick``, override ``args`` with the tiny sizes of ``quick``; returns ``args``."""
    if args.quick:
        vars(args).update(quick)
        if single_thread:
            import torch

            torch.set_num_threads(1)  # tiny ops on a busy host: OpenMP barriers cost more than they save
    return args


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_vendor() -> str | None:
    """``GenuineIntel``, ``AuthenticAMD``, ... (``vendor_id`` of /proc/cpuinfo), None where it does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), None)
    except OSError:
        return None


# The ISA flags that decide which kernels torch's libraries run (fp32 GEMM: avx2 / avx512f; bf16: avx512_bf16,
# amx_bf16 with amx_tile; fp16: avx512_fp16; int8: avx_vnni), as /proc/cpuinfo's flags name them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "avx_vnni", "avx512_vnni")

# Generation by (vendor, family, model), as Linux names them. Intel family 6: arch/x86/include/asm/intel-family.h
# (INTEL_HASWELL_X 0x3F ... INTEL_GRANITERAPIDS_D 0xAE); model 0x55 is three generations told apart by the stepping
# (:data:`INTEL_SKYLAKE_X_STEPPINGS`). AMD: arch/x86/kernel/cpu/amd.c, bsp_init_amd's "Figure out
# Zen generations" (family 0x17 Zen / Zen 2, 0x19 Zen 3 / Zen 4, 0x1A Zen 5 / Zen 6, with their model ranges).
INTEL_FAMILY_6 = {0x3F: "Haswell-X", 0x4F: "Broadwell-X", 0x55: "Skylake-X", 0x6A: "Ice Lake-X", 0x6C: "Ice Lake-D",
                  0x8F: "Sapphire Rapids", 0xCF: "Emerald Rapids", 0xAD: "Granite Rapids-X",
                  0xAE: "Granite Rapids-D"}
# INTEL_SKYLAKE_X (0x55) by stepping, as intel-family.h's comment and Intel's specification updates give them:
# Skylake-SP 0-4, Cascade Lake 5-7, Cooper Lake 10-11 (their fp32 GEMM and bf16 kernels differ: Cooper Lake has
# avx512_bf16, Cascade Lake avx512_vnni alone)
INTEL_SKYLAKE_X_STEPPINGS = (((0, 4), "Skylake-X"), ((5, 7), "Cascade Lake"), ((10, 11), "Cooper Lake"))
AMD_ZEN = {0x17: (((0x00, 0x2F), "Zen"), ((0x50, 0x5F), "Zen"), ((0x30, 0x4F), "Zen 2"), ((0x60, 0x7F), "Zen 2"),
                  ((0x90, 0x91), "Zen 2"), ((0xA0, 0xAF), "Zen 2")),
           0x19: (((0x00, 0x0F), "Zen 3"), ((0x20, 0x5F), "Zen 3"), ((0x10, 0x1F), "Zen 4"), ((0x60, 0xAF), "Zen 4")),
           0x1A: (((0x00, 0x2F), "Zen 5"), ((0x40, 0x4F), "Zen 5"), ((0x60, 0x7F), "Zen 5"), ((0x50, 0x5F), "Zen 6"),
                  ((0x80, 0xAF), "Zen 6"), ((0xC0, 0xCF), "Zen 6"))}


def cpu_generation(vendor: str | None, family: int | None, model: int | None,
                   stepping: int | None = None) -> str | None:
    """The CPU's generation from its ``vendor_id``, ``cpu family``, ``model`` and, for Intel's model 0x55, its
    ``stepping`` (:data:`INTEL_FAMILY_6`, :data:`INTEL_SKYLAKE_X_STEPPINGS`, :data:`AMD_ZEN`): ``"Emerald
    Rapids"``, ``"Cascade Lake"``, ``"Zen 4"``; None where the table does not know it ("Skylake-X" for model 0x55
    without a stepping: the family of the three)."""
    if family is None or model is None:
        return None
    if vendor == "GenuineIntel" and family == 6:
        if model == 0x55 and stepping is not None:
            return next((name for (low, high), name in INTEL_SKYLAKE_X_STEPPINGS if low <= stepping <= high), None)
        return INTEL_FAMILY_6.get(model)
    if vendor == "AuthenticAMD":
        return next((name for (low, high), name in AMD_ZEN.get(family, ()) if low <= model <= high), None)
    return None


def _cpuinfo(text: str | None = None) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (or of ``text``); {} where there is none."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def blas_route() -> dict:
    """Which libraries torch's CPU products go through: its BLAS build (``BLAS_INFO``), the MKL and oneDNN inside
    it, and vpltool's fp32 linear route (``VPLTOOL_CPU_LINEAR``: auto measures per shape, mkl / onednn forced;
    reproducible mode takes MKL's whatever it says)."""
    import re

    import torch

    from vpltool.models.backbones.onednn import library_versions
    from vpltool.runtime.numerics import cpu_linear_asked, reproducible_asked

    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    versions = library_versions()
    return {"blas_info": blas.group(1) if blas else None, "mkl": versions["mkl"], "onednn": versions["onednn"],
            "mkldnn_enabled": bool(torch.backends.mkldnn.is_available()), "vpltool_cpu_linear": cpu_linear_asked(),
            "reproducible_mode": reproducible_asked()}  # reproducible mode: MKL's product whatever the route says


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """The CPU exactly, as /proc/cpuinfo names it (or ``cpuinfo``, that file's text): vendor, family, model, model
    name, stepping, microcode, the ISA flags of :data:`ISA_FLAGS` (each True or False), the core count, the
    generation where :func:`cpu_generation` knows it, and torch's version and BLAS route (:func:`blas_route`).
    A figure measured on one CPU generation says nothing of another: "AMD EPYC" covers several."""
    import torch

    info = _cpuinfo(cpuinfo)
    vendor, family, model = info.get("vendor_id"), _int(info.get("cpu family")), _int(info.get("model"))
    stepping = _int(info.get("stepping"))
    flags = set(info.get("flags", "").split())
    return {"vendor": vendor, "family": family, "model": model,
            "model_name": info.get("model name") or platform.processor() or platform.machine(),
            "stepping": stepping, "microcode": info.get("microcode"),
            "generation": cpu_generation(vendor, family, model, stepping),
            "isa_flags": {f: f in flags for f in ISA_FLAGS},
            "cores": os.cpu_count(), "torch": torch.__version__, "blas": blas_route()}


def cpu_name(identity: dict) -> str:
    """One readable name from :func:`cpu_identity`'s dict: ``"Intel Emerald Rapids (family 6, model 207)"``,
    or the model name with its family and model and "generation unknown" where the table does not know it."""
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(identity.get("vendor"), identity.get("vendor"))
    where = f"family {identity.get('family')}, model {identity.get('model')}"
    # by the table now, from the recorded vendor, family, model and stepping (a record made before the table told
    # model 0x55's steppings apart says "Skylake-X" of a Cascade Lake), else as recorded
    generation = cpu_generation(identity.get("vendor"), identity.get("family"), identity.get("model"),
                                identity.get("stepping")) or identity.get("generation")
    if generation:
        return f"{vendor} {generation} ({identity.get('model_name')}; {where})"
    return f"{identity.get('model_name')} ({where}; generation unknown)"


def clone_commit(folder) -> str | None:
    """The commit of a reference's clone: its git HEAD, or the ``COMMIT`` file a carried copy of its files holds
    (``bench/gpu_session.sh refs``: a copy inside this repository, where git would answer this repository's HEAD)."""
    from pathlib import Path

    marker = Path(folder) / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip() or None
    if not (Path(folder) / ".git").exists():
        return None
    proc = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def machine(device: str = "cpu", gemm_gflops: dict | None = None) -> dict:
    """The machine a result was measured on: CPU (its model, vendor, whether it has AMX tiles, the instructions
    ATen runs; exactly, in ``cpu_identity``: :func:`cpu_identity`), cores, torch, device, GPU, threads, load and
    nice level; ``gemm_gflops``, where the bench measured them, each library's fp32 GEMM rate on this CPU
    (``{"mkl_gflops": ..., "onednn_gflops": ...}``: :func:`gemm_rates`).

    Every bench script's JSON takes its ``machine`` from here (``tests/test_benchlib.py`` checks each script), so
    every figure names the CPU generation it came from. Load and nice are recorded because the same script gives
    other numbers on a shared or throttled host.
    """
    import torch

    from vpltool.runtime.numerics import cpu_flags

    info = {
        "cpu": cpu_model(),
        "cpu_vendor": cpu_vendor(),
        "amx": "amx_bf16" in cpu_flags(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "gpu": None,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "cpu_identity": cpu_identity(),
    }
    if gemm_gflops:
        info["cpu_identity"]["gemm_gflops"] = gemm_gflops
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def gemm_rates(rows: int = 914, k: int = 768, n: int = 3072, repeats: int = 5) -> dict:
    """GFLOP/s of one fp32 product ``[rows, k] x [k, n]`` plus a bias on this process's threads, through each of
    torch's CPU libraries: ``F.linear`` (MKL's) and oneDNN's (:func:`vpltool.models.backbones.onednn.linear`), and
    MKL's packed product (``mkl_packed``: the weights packed once, :mod:`vpltool.models.backbones.mkl_packed`) where
    torch has it. The default is a ViT-B's MLP on two 336-pixel windows (RADSeg's)."""
    import torch
    import torch.nn.functional as F

    from vpltool.models.backbones.mkl_packed import HAS_MKL_PACK
    from vpltool.models.backbones.onednn import available, linear

    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((rows, k), (n, k), (n,)))
    out = {"shape": f"{rows}x{k}x{n}"}
    packed = None
    if HAS_MKL_PACK:
        wp = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)

        def packed(x_, w_, b_):
            return torch.ops.mkl._mkl_linear(x_, wp, w_, b_, rows)
    for name, fn in (("mkl", F.linear), ("onednn", linear if available() else None), ("mkl_packed", packed)):
        if fn is None:
            continue
        fn(x, w, b)
        start = time.process_time()
        for _ in range(repeats):
            fn(x, w, b)
        out[f"{name}_gflops"] = round(2 * rows * k * n * repeats / (time.process_time() - start) / 1e9, 1)
    return out


def attention_rates(shapes, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of torch's fused attention (``F.scaled_dot_product_attention``: on a CPU its flash kernel; fp32, no
    mask) on each ``(B, H, N, d)`` shape, the best of ``repeats`` calls in CPU-seconds on this process's threads:
    ``{"BxHxNxd": rate}``. A call is ``4 B H N² d`` FLOPs, its two products, as torch's FLOP counter counts it."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    out = {}
    for b, h, n, d in shapes:
        q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
        F.scaled_dot_product_attention(q, k, v)
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            F.scaled_dot_product_attention(q, k, v)
            best = min(best, time.process_time() - start)
        out[f"{b}x{h}x{n}x{d}"] = round(4 * b * h * n * n * d / best / 1e9, 1)
    return out


def attention_floor(gflop: float, attention_gflop: float, gemm_peak: float, attention_peak: float) -> float:
    """The least seconds ``gflop`` of a unit's work can take with torch's own attention kernel (beside issue 79's
    floor, :func:`at_fastest`, which runs the attention at the GEMM rate too): its ``attention_gflop`` at the fastest
    rate that kernel reached on the unit's shapes (:func:`attention_rates`), the rest at the fastest GEMM rate."""
    return (gflop - attention_gflop) / gemm_peak + attention_gflop / attention_peak


def probe_rates(probes: dict, name: str = "{library}") -> dict[str, float]:
    """The GFLOP/s of one :func:`gemm_rates` result by library (its ``<library>_gflops`` keys), each named by
    ``name`` (``"{library}_probe"``, ``"vit_{library}"``); a library that measured nothing is left out."""
    return {name.format(library=k[:-len("_gflops")]): v for k, v in probes.items() if k.endswith("_gflops") and v}


def at_fastest(gflop: float, rates: dict[str, float]) -> tuple[float, float]:
    """The floor's arithmetic (issue 79's rule), for every side-by-side bench: ``gflop`` of work at the fastest of
    ``rates`` (GFLOP/s, any names) -> (that rate, the seconds it would take)."""
    peak = max(rates.values())
    return peak, gflop / peak


def machine_line(m: dict) -> str:
    """One readable line from :func:`machine`'s dict (used by make_table.py): the CPU by its generation where
    the record names its family and model (:func:`cpu_name`), else as recorded, with "generation not recorded"."""
    identity = m.get("cpu_identity")
    if isinstance(identity, dict):
        cpu = cpu_name(identity) + (" (AMX)" if identity.get("isa_flags", {}).get("amx_tile")
                                    else f" ({m.get('isa') or 'no AMX'})")
    else:
        kind = "" if m.get("amx") is None else ("AMX; " if m["amx"] else f"{m.get('isa') or 'no AMX'}; ")
        cpu = f"{m.get('cpu') or '?'} ({kind}generation not recorded)"
    parts = [cpu, f"{m.get('cores', '?')} cores", f"torch {m.get('torch', '?')}",
             f"device {m.get('device', '?')}"]
    if m.get("gpu"):
        parts.append(m["gpu"])
    if m.get("load_average_1min") is not None:
        parts.append(f"load {m['load_average_1min']}")
    return ", ".join(parts)


def _rss_peak_mib() -> float:
    """Peak resident set (ru_maxrss) in MiB; Linux reports KiB, macOS bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@dataclass
class Peak:
    """Peak memory of one stage (filled when its ``with`` block ends)."""

    stage: str
    rss_mib: float | None = None
    cuda_mib: float | None = None
    scope: str = "stage"
    seconds: float | None = None  # wall time of the block, CUDA work included

    def as_dict(self) -> dict:
        return {"stage": self.stage, "rss_mib": self.rss_mib, "cuda_mib": self.cuda_mib, "scope": self.scope}


class PeakMemory:
    """Collects :class:`Peak` records, one per ``with peaks.stage(name):`` block."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.records: list[Peak] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[Peak]:
        import torch

        cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        peak = Peak(name, scope="stage" if reset_peak() else "process")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            yield peak
        finally:
            if cuda:
                torch.cuda.synchronize()  # queued kernels belong to this stage's time and memory
                peak.cuda_mib = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            peak.seconds = time.perf_counter() - start
            peak.rss_mib = round(_rss_peak_mib(), 1)
            self.records.append(peak)

    def as_list(self) -> list[dict]:
        return [p.as_dict() for p in self.records]


def synchronize(device: str) -> None:
    """Wait for queued CUDA work so a wall-clock reading includes it (no-op on CPU)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


__all__ = ["cpu_generation", "cpu_identity", "cpu_model", "cpu_name", "gemm_rates", "machine", "machine_line", "Peak",
           "PeakMemory", "synchronize"]

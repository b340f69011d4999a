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


def machine(device: str = "cpu") -> dict:
    """The machine a result was measured on: CPU (its model, vendor, whether it has AMX tiles, the instructions
    ATen runs), cores, torch, device, GPU, threads, load and nice level.

    Load and nice are recorded because the same script gives other numbers on a shared or throttled host.
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
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(m: dict) -> str:
    """One readable line from :func:`machine`'s dict (used by make_table.py)."""
    cpu = m.get("cpu") or "?"
    if m.get("amx") is not None:  # recorded since the CPUs' own kernels were told apart
        cpu += " (AMX)" if m["amx"] else f" ({m.get('isa') or 'no AMX'})"
    parts = [cpu, f"{m.get('cores', '?')} cores", f"torch {m.get('torch', '?')}",
             f"device {m.get('device', '?')}"]
    if m.get("gpu"):
        parts.append(m["gpu"])
    if m.get("load_average_1min") is not None:
        parts.append(f"load {m['load_average_1min']}")
    return ", ".join(parts)


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
        peak = Peak(name, scope="stage" if _reset_rss_peak() else "process")
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


__all__ = ["cpu_model", "machine", "machine_line", "Peak", "PeakMemory", "synchronize"]

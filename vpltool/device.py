"""Device, precision and seeding: CUDA when present, CPU otherwise, the same code on both."""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from .errors import VplError
from .runtime import numerics

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _pin_products() -> None:
    """Reproducible mode's CPU matrix products through the pinned OpenBLAS (:mod:`.runtime.products`), installed
    when this module loads: before any stage, model or method multiplies (each imports this module)."""
    try:
        effect = numerics.reproducible_in_effect()
    except VplError:  # a value that is no switch: refused in one line where the command reads its switches
        return
    if effect:
        numerics.pin_products()


_pin_products()


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; 'auto' falls back to CPU.

    Under ``torchrun`` (``LOCAL_RANK`` set) 'auto' and 'cuda' mean this process's GPU, ``cuda:LOCAL_RANK``, which
    also becomes the current device (CUDA events and pinned copies follow the current device).
    """
    device = device.strip()  # VPLTOOL_DEVICE='cpu ' from a script: the value is cpu
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    option = _device_option(device)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VplError(f"{option} {device!r} not understood; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VplError(f"{option} {device} asked for, but CUDA is not available; use --device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VplError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        if dev.index is not None:
            torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise VplError(f"{option} {device!r}: only cpu and cuda are supported")
    return dev


def _device_option(device: str) -> str:
    """How the user gave ``device``: the CLI reads --device from VPLTOOL_DEVICE when the option is absent, so a
    value equal to that variable's is named as coming from it (the user may never have typed --device)."""
    env = os.environ.get("VPLTOOL_DEVICE")
    return "--device (from VPLTOOL_DEVICE)" if env is not None and env.strip() == device else "--device"


def torchrun_rank() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` of a torchrun (or Slurm script) launch, None when neither is set.

    One line for what a half-set or stale environment makes (an old torchrun shell, a job script): one of the two
    missing, a value that is not plain digits 0-9, a rank outside the world.
    """
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return None
    fix = "launch with torchrun, or unset RANK and WORLD_SIZE (and pass --shard i/n)"
    if rank is None or world is None:
        given, missing = ("WORLD_SIZE", "RANK") if rank is None else ("RANK", "WORLD_SIZE")
        raise VplError(f"{given}={os.environ[given]} is set but {missing} is not; {fix}")
    digits = [v.strip() for v in (rank, world)]
    if not all(re.fullmatch(r"-?[0-9]+", v) for v in digits):
        raise VplError(f"RANK={rank!r} WORLD_SIZE={world!r}: not integers; {fix}")
    index, count = int(digits[0]), int(digits[1])
    if count < 1:
        raise VplError(f"WORLD_SIZE={world} must be at least 1; {fix}")
    if not 0 <= index < count:
        raise VplError(f"RANK={rank} WORLD_SIZE={world}: RANK must be in 0..WORLD_SIZE-1 (0..{count - 1}); {fix}")
    return index, count


def runs_python(pid: int) -> bool:
    """Whether the process ``pid`` runs a Python interpreter (its command line names one: torchrun's agent is
    ``python .../torchrun`` or ``python -m torch.distributed.run``, or a script calling ``elastic_launch``); True
    where ``/proc`` cannot say (not Linux). A torchrun rank whose parent is not Python was adopted by init or a
    subreaper (systemd, tini, a shell): its agent died before the rank could read who started it."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self/cmdline").exists()  # no /proc here: nothing to tell by
    args = [a.decode(errors="replace") for a in argv if a]
    return any("python" in Path(a).name or "torch" in a for a in args)


def tie_to_parent(parent: int, watch: bool = False) -> bool:
    """Be killed (SIGKILL) when the process ``parent`` ends (Linux ``PR_SET_PDEATHSIG``), and exit at once if it
    is gone already; False where the kernel has no such call. ``watch``: also a daemon thread that checks the
    parent once a second (the kernel's signal follows the parent's thread that forked us, and exists on Linux
    only). Loading workers (:func:`vpltool.runtime.batches.die_with_parent`) and the ranks of a torchrun launch
    (:func:`vpltool.cli.errors._on_ranks`, with ``watch``) call it, so that ``kill -9`` of the run (or of torchrun's
    agent) leaves nothing running that could go on writing, or certify a model, alone."""
    import ctypes
    import signal

    if watch:
        import threading

        def watchdog() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watchdog, name="vpltool-parent-watch", daemon=True).start()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)
    return True


def shard_from_env(shard: tuple[int, int] | None = None) -> tuple[int, int]:
    """The shard this process runs: ``--shard i/n`` when given, else ``torchrun``'s ``RANK`` of ``WORLD_SIZE``
    (single- or multi-node), else the whole dataset. Both given and different is a one-line error (which one did
    the user mean?); Slurm arrays pass ``--shard`` explicitly."""
    env = torchrun_rank()
    if shard is None:
        return env or (0, 1)
    if env is not None and env != tuple(shard):
        raise VplError(f"--shard {shard[0]}/{shard[1]}, but RANK={env[0]} WORLD_SIZE={env[1]} (torchrun or a job "
                       f"script) make this process shard {env[0]}/{env[1]}; drop --shard under torchrun, or unset "
                       "RANK and WORLD_SIZE")
    return tuple(shard)


def cpu_has_amx() -> bool:
    """True on an x86 CPU with AMX-BF16 tiles (Sapphire Rapids and later), where bf16 matmuls pay.

    Measured on ViT-B/16 forwards: with AMX, bf16 weights were 2.2-3.5x faster than fp32; on a CPU with AVX512-BF16
    but no AMX, 1.35x *slower*; with neither (AVX2 only) bf16 is emulated. ``VPLTOOL_ASSUME_AMX=1`` (``0``) answers
    as a CPU with (without) AMX would, so that a machine without AMX computes what one with it does.
    """
    assumed = numerics.switch(numerics.ASSUME_AMX_ENV)  # 1/true/yes/on, 0/false/no/off; another value: one line
    if assumed is not None:
        return assumed
    return "amx_bf16" in numerics.cpu_flags()


def resolve_precision(precision: str, device: torch.device, follow: str | None = None) -> torch.dtype:
    """The dtype of the frozen blocks. 'auto' = bf16 on CUDA and on CPUs with AMX, fp32 on other CPUs, and fp32
    everywhere in reproducible mode (:mod:`vpltool.runtime.numerics`: the one dtype every CPU computes alike).

    ``follow``: the dtype a stage's inputs record (:func:`vpltool.io.recorded_dtype`: ``fp32``, ``bf16``): 'auto' is
    that dtype then, outside reproducible mode, so that a plain later stage computes as its inputs were made (a
    plain `cam` after `extract --precision fp32` on a CPU with AMX was refused: "made at fp32; this run is at bf16").

    fp16 is refused on the CPU (no fast kernels, and a narrower range than bf16 for nothing).
    """
    if precision == "auto":
        if numerics.reproducible_asked():
            return torch.float32
        if follow in _DTYPES and not (follow == "fp16" and device.type == "cpu"):
            return _DTYPES[follow]
        return torch.bfloat16 if device.type == "cuda" or cpu_has_amx() else torch.float32
    if precision not in _DTYPES:
        raise VplError(f"--precision {precision!r}: choose auto, fp32, bf16 or fp16")
    if device.type == "cpu" and precision == "fp16":
        raise VplError("--precision fp16 is not supported on the CPU; use bf16 (fast on CPUs with AMX) or fp32")
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast of the frozen blocks to ``dtype`` (bf16 / fp16), on CUDA and on the CPU; a no-op in fp32.

    Callers run it under ``no_grad``, never ``inference_mode``: bf16 autocast on the CPU inside inference_mode was
    10-60x slower at batch >= 2. GradCAM's own block runs outside it, in fp32 (fp16/bf16 gradients underflow).
    """
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def configure_threads() -> None:
    """Respect OMP_NUM_THREADS if set; otherwise let torch use every core (its default)."""
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


def available_memory(device: torch.device | None = None) -> int:
    """Bytes free for new tensors: free GPU memory on CUDA, else the kernel's MemAvailable (8 GB if unknown).

    The one memory probe: learn-prototypes sizes its resident pixels with it, train-decoder its feature cache.
    """
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 10**9


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux ru_maxrss is in KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

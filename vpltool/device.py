"""Device, precision and seeding: CUDA when present, CPU otherwise, the same code on both."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .errors import VplError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device; 'auto' falls back to CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VplError(f"--device {device!r} not understood; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VplError(f"--device {device} asked for, but CUDA is not available; use --device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VplError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise VplError(f"--device {device!r}: only cpu and cuda are supported")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """'auto' = bf16 on CUDA, fp32 on CPU. CPU half precision is refused: slow, and bf16 autocast on CPU inside
    inference_mode is 10-60x slower (research §9)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise VplError(f"--precision {precision!r}: choose auto, fp32, bf16 or fp16")
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast for the frozen blocks on CUDA; a no-op on CPU and in fp32."""
    if device.type != "cuda" or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


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

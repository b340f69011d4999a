"""Where the CUDA-only steps run (:func:`cuda_paths`) and the host copies the writer threads take of a batch
(:func:`to_host`): the device side of :mod:`vpltool.runtime.batches`'s pipeline.

The test switch ``VPLTOOL_TEST_CUDA_PATHS=1`` runs the CUDA-only steps on a CPU (CI exercises them without a GPU; no
user option).
"""

from __future__ import annotations

import os
from typing import Any

import torch

TEST_SWITCH = "VPLTOOL_TEST_CUDA_PATHS"  # tests only


def cuda_paths(device: torch.device) -> bool:
    """Whether the CUDA-only steps run on ``device``: on CUDA, and on a CPU under the test switch
    ``VPLTOOL_TEST_CUDA_PATHS=1`` (CI exercises them without a GPU; no user option)."""
    return device.type == "cuda" or os.environ.get(TEST_SWITCH) == "1"


def to_host(tensors: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Host copies of the device tensors in ``tensors`` (values: tensors, lists/tuples of tensors, or anything
    else, kept as it is) and the one event that marks them all copied (None when nothing was copied).

    On CUDA each tensor goes to a pinned buffer with a non-blocking copy, and one CUDA event is recorded after the
    last: the main thread never waits. On a CPU the tensors are the host's already and pass as they are, except
    under the test switch (:func:`cuda_paths`), where the CUDA path runs with unpinned buffers and a stand-in event.
    """
    copy = any(_device_of(v) is not None for v in tensors.values())
    if not copy:
        return dict(tensors), None
    host = {key: _copy_to_host(value) for key, value in tensors.items()}
    return host, _record_event()


def _device_of(value: Any) -> torch.device | None:
    """The device of a tensor (or of a list of tensors) that :func:`to_host` copies: CUDA, or any device under the
    test switch; None for everything else."""
    first = value[0] if isinstance(value, (list, tuple)) and value else value
    if not isinstance(first, torch.Tensor):
        return None
    return first.device if cuda_paths(first.device) else None


def _copy_to_host(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_to_host(v) for v in value)
    if _device_of(value) is None:
        return value
    buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=torch.cuda.is_available())
    return buffer.copy_(value, non_blocking=True)


class _HostEvent:
    """A CUDA event's stand-in when the CUDA path runs on a CPU under the test switch: the copies are done."""

    def synchronize(self) -> None:
        return None


def _record_event() -> Any:
    if torch.cuda.is_available():
        event = torch.cuda.Event()
        event.record()
        return event
    return _HostEvent()


__all__ = ["TEST_SWITCH", "cuda_paths", "to_host"]

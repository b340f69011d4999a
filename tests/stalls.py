"""Counting the operations that stall a CUDA host, on any device (issue 28's proof that needs no GPU).

On CUDA these ops copy a result to the host and wait for the device, so one in a per-image loop serialises the
host and the GPU. :class:`StallCounter` is a ``TorchDispatchMode``: it sees every op the *calling thread*
dispatches (dispatch modes are thread-local, so the writer thread and the DataLoader's worker processes, which
may read tensors on the host, are not counted), on the CPU as on CUDA.

What it cannot see: ``Tensor.tolist()`` and ``numpy()`` do not dispatch an op, so the tests that use this counter
also check, on CUDA, with ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops whose result's size or value must reach the host before the next op can be issued
STALLING = frozenset({
    "aten._local_scalar_dense",  # .item(), float(t), int(t), bool(t), if t: ...
    "aten.is_nonzero",
    "aten.equal",
    "aten.nonzero",
    "aten.masked_select",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
})  # fmt: skip


class StallCounter(TorchDispatchMode):
    """``with StallCounter() as stalls: ...`` then ``stalls.total`` / ``stalls.counts`` (op name -> calls).

    Also counted: indexing with a boolean mask (``x[mask]``: its output size is the mask's count) and
    ``repeat_interleave`` with tensor repeats and no ``output_size``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.replace("::", ".")
        if name in STALLING:
            self.counts[name] += 1
        elif name == "aten.index" and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                          for i in (args[1] if len(args) > 1 else ())):
            self.counts["aten.index (boolean mask)"] += 1
        elif name == "aten.repeat_interleave" and func._overloadname == "Tensor" and \
                (kwargs or {}).get("output_size") is None:
            self.counts["aten.repeat_interleave (tensor repeats)"] += 1
        return func(*args, **(kwargs or {}))


__all__ = ["STALLING", "StallCounter"]

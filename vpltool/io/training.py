"""The files of a decoder run: the trained decoder, its checkpoint (kinds ``decoder``, ``decoder-checkpoint``).

The decoder module itself (:class:`vpltool.decoder.SegDecoder`) is rebuilt from these by ``vpltool.decoder``; this
module only reads and writes the tensors and their metadata. ``log.jsonl`` is in :mod:`vpltool.io.files`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .tensors import TensorFile, check_finite, read_tensors, write_tensors

DECODER_KIND = "decoder"
CHECKPOINT_KIND = "decoder-checkpoint"


def write_decoder(path: str | os.PathLike, state: Mapping[str, Any], *, classes: Sequence[str],
                  config: Mapping[str, Any], arch: Mapping[str, Any], model: Mapping[str, Any],
                  **extra: Any) -> Path:
    """``decoder.safetensors``: the state dict (prototypes W included) and everything needed to rebuild it.

    Metadata: ``decoder_config`` (the full DecoderConfig as a dict, also the file's params), ``decoder_arch``
    (CLIP width, blocks read, embedding dim, prototype rows), ``model`` (the frozen CLIP's identity), ``classes``
    and ``extra`` (dataset, inputs, prototypes source, iterations, val mIoU).
    """
    return write_tensors(path, state, kind=DECODER_KIND, classes=classes, params=config, decoder_config=config,
                         decoder_arch=arch, model=model, **extra)


def read_decoder(path: str | os.PathLike) -> TensorFile:
    """A decoder file with every tensor checked for NaN/inf; ``meta('decoder_config')``, ``meta('decoder_arch')``
    and ``meta('model')`` rebuild it."""
    f = read_tensors(path, kind=DECODER_KIND)
    for name, tensor in f.tensors.items():
        check_finite(f.path, name, tensor)
    return f


def write_checkpoint(path: str | os.PathLike, model_state: Mapping[str, Any], optimizer_state: Mapping[str, Any],
                     iteration: int, *, classes: Sequence[str], config: Mapping[str, Any], **meta: Any) -> Path:
    """Model and optimizer state in one file, so one atomic rename never leaves half of each.

    Tensors: ``model.<name>`` and ``optim.<param id>.<slot>``; metadata ``iteration``, ``optim_groups`` (the
    optimizer's param groups) and ``meta`` (config, inputs, model identity).
    """
    import torch

    tensors = {f"model.{k}": v for k, v in model_state.items()}
    for pid, slots in optimizer_state["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return write_tensors(path, tensors, kind=CHECKPOINT_KIND, classes=classes, params=config, iteration=iteration,
                         optim_groups=optimizer_state["param_groups"], **meta)


def read_checkpoint(path: str | os.PathLike, *, header_only: bool = False
                    ) -> tuple[dict[str, Any], dict[str, Any], TensorFile]:
    """``(model state, optimizer state, file)`` of :func:`write_checkpoint`'s file; empty states with
    ``header_only`` (to check a checkpoint's settings before building anything)."""
    f = read_tensors(path, kind=CHECKPOINT_KIND, keys=() if header_only else None)
    model = {k[6:]: v for k, v in f.tensors.items() if k.startswith("model.")}
    slots: dict[int, dict[str, Any]] = {}
    for key, value in f.tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    return model, {"state": slots, "param_groups": f.meta("optim_groups")}, f

"""The files of a training run: the ``log.jsonl`` both trainers write (:func:`read_log`, :func:`trim_log`,
:func:`append_log`), and a decoder run's trained decoder and checkpoint (kinds ``decoder``, ``decoder-checkpoint``).

The decoder module itself (:class:`vpltool.decoder.SegDecoder`) is rebuilt from these by ``vpltool.decoder``; this
module only reads and writes the tensors and their metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ContractError
from .files import append_line, atomic_path
from .tensors import TensorFile, check_weight_values, read_tensors, write_tensors

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
    """A decoder file with the metadata that rebuilds it checked for shape (:func:`check_decoder_meta`);
    ``meta('decoder_config')``, ``meta('decoder_arch')`` and ``meta('model')`` rebuild it (the config's values are
    checked where it is rebuilt, by the config's own rules; its weights' values where every model is, by the
    registry's ``load_model("decoder", path)``)."""
    f = read_tensors(path, kind=DECODER_KIND)
    check_decoder_meta(f)
    return f


ARCH_FIELDS = ("in_width", "embed_dim", "n_rows")  # whole numbers >= 1; "blocks": a list of block indices


def check_decoder_meta(f: TensorFile) -> None:
    """``decoder_config`` a JSON object, ``decoder_arch`` one with whole numbers >= 1 for :data:`ARCH_FIELDS` and a
    non-empty list of block indices >= 0, ``model`` an object naming the CLIP; ContractError (one line) otherwise."""
    def bad(key: str, what: str) -> ContractError:
        raw = f.raw_meta.get(f"vpltool.{key}")
        found = "missing" if raw is None else repr(raw if len(raw) <= 60 else raw[:60] + "…")
        return ContractError(f"{f.path}: metadata 'vpltool.{key}' is {found}, not {what}; the file is damaged: "
                             "re-run `vpltool train-decoder` (with --overwrite)")

    def whole(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not isinstance(f.meta("decoder_config", None), dict):
        raise bad("decoder_config", "a JSON object of the decoder's settings")
    arch = f.meta("decoder_arch", None)
    if not (isinstance(arch, dict) and all(whole(arch.get(k), 1) for k in ARCH_FIELDS)
            and isinstance(arch.get("blocks"), list) and arch["blocks"] and all(whole(b, 0) for b in arch["blocks"])):
        raise bad("decoder_arch", f"a JSON object with {', '.join(ARCH_FIELDS)} (whole numbers >= 1) and blocks (a "
                                  "list of block indices)")
    model = f.meta("model", None)
    if not (isinstance(model, dict) and isinstance(model.get("model"), str)):
        raise bad("model", "a JSON object naming the CLIP (model, pretrained)")


def write_checkpoint(path: str | os.PathLike, model_state: Mapping[str, Any], optimizer_state: Mapping[str, Any],
                     iteration: int, *, classes: Sequence[str], config: Mapping[str, Any],
                     kind: str = CHECKPOINT_KIND, **meta: Any) -> Path:
    """Model and optimizer state in one file, so one atomic rename never leaves half of each.

    ``kind``: the file's kind (another training command's checkpoints, e.g. ``pgseg-checkpoint``).

    Tensors: ``model.<name>`` and ``optim.<param id>.<slot>``; metadata ``iteration``, ``optim_groups`` (the
    optimizer's param groups) and ``meta`` (config, inputs, model identity).
    """
    import torch

    tensors = {f"model.{k}": v for k, v in model_state.items()}
    for pid, slots in optimizer_state["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return write_tensors(path, tensors, kind=kind, classes=classes, params=config, iteration=iteration,
                         optim_groups=optimizer_state["param_groups"], **meta)


def read_checkpoint(path: str | os.PathLike, *, header_only: bool = False, kind: str = CHECKPOINT_KIND
                    ) -> tuple[dict[str, Any], dict[str, Any], TensorFile]:
    """``(model state, optimizer state, file)`` of :func:`write_checkpoint`'s file (of ``kind``); empty states with
    ``header_only`` (to check a checkpoint's settings before building anything)."""
    f = read_tensors(path, kind=kind, keys=() if header_only else None)
    # a checkpoint is a weights file too: the values rule of every model file (vpltool.io.check_weight_values)
    check_weight_values(f.path, f.tensors.items(), "the checkpoint is damaged: start the run afresh (--overwrite)")
    model = {k[6:]: v for k, v in f.tensors.items() if k.startswith("model.")}
    slots: dict[int, dict[str, Any]] = {}
    for key, value in f.tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    return model, {"state": slots, "param_groups": f.meta("optim_groups")}, f


def read_log(path: str | os.PathLike, upto: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (those whose ``iter`` is <= ``upto`` when given).

    A last line without its newline is dropped: a write cut short (disk full, power loss) must not stop
    ``--resume``, and that iteration is past the checkpoint anyway.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the piece after the last newline is empty or torn
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if upto is None or r["iter"] <= upto]


def write_log(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> Path:
    """Replace a ``log.jsonl`` by ``records``, atomically (a resumed run trims the log to its checkpoint)."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Path(path)


def trim_log(path: str | os.PathLike, start: int) -> None:
    """A training run's ``log.jsonl`` as the run starting at iteration ``start`` continues it: the records up to its
    checkpoint kept (a resume), none for a fresh start (``start`` 0: a killed run's lines go); nothing is written
    for a fresh start with no log. Both trainers call it once, before their first iteration, so that a log never
    holds an iteration twice or another run's lines."""
    path = Path(path)
    if start or path.exists():
        write_log(path, read_log(path, upto=start) if start else [])


def append_log(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """One record appended to a ``log.jsonl`` (one JSON object per line)."""
    append_line(path, json.dumps(record))

"""Where the chunks live between iterations: in memory (CUDA: on the device), or streamed from scratch shards.

Private scratch (deleted by ``cleanup``), not a vpltool contract file: the safetensors shards hold raw chunk tensors.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ... import io
from ...config import LearnPrototypesConfig
from ...device import available_memory
from .descent import Chunk


class MemorySource:
    """Every chunk resident (CUDA: on the device)."""

    def __init__(self, device: torch.device):
        self.device, self.chunks = device, []

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def add(self, ch: Chunk) -> None:
        self.chunks.append(ch.to(self.device))

    def close(self) -> None:
        return None

    def cleanup(self) -> None:
        return None

    def __call__(self) -> Iterable[Chunk]:
        return self.chunks


class ShardSource:
    """Chunks written to scratch safetensors shards of about ``shard_bytes``, streamed back every iteration.

    Private scratch (deleted by :meth:`cleanup`), not a vpltool contract file. The next shard is read by a
    background thread while the current one is being used, so at most two shards are in memory.
    """

    def __init__(self, folder: Path, device: torch.device, shard_bytes: int):
        self.folder, self.device, self.shard_bytes = folder, device, shard_bytes
        self.paths: list[Path] = []
        self.n_chunks = 0
        self._buffer: list[Chunk] = []
        self._bytes = 0
        self._pool = ThreadPoolExecutor(1)

    def add(self, ch: Chunk) -> None:
        self.n_chunks += 1
        self._buffer.append(ch)
        self._bytes += ch.nbytes
        if self._bytes >= self.shard_bytes:
            self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        if not self._buffer:
            return
        path = self.folder / f"shard_{len(self.paths):05d}.safetensors"
        tensors = {f"{j}.{k}": v.contiguous() for j, ch in enumerate(self._buffer) for k, v in ch.tensors().items()}
        io.save_tensor_file(path, tensors, atomic=False)  # a full disk is one line, as every write
        self.paths.append(path)
        self._buffer, self._bytes = [], 0

    def _load(self, path: Path) -> list[Chunk]:
        from safetensors.torch import load_file

        flat = load_file(str(path))
        parts: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            j, name = key.split(".", 1)
            parts.setdefault(int(j), {})[name] = value
        return [Chunk(**parts[j]).to(self.device) for j in sorted(parts)]

    def __call__(self) -> Iterator[Chunk]:
        if not self.paths:
            return
        pending = self._pool.submit(self._load, self.paths[0])
        for nxt in [*self.paths[1:], None]:
            chunks = pending.result()
            if nxt is not None:
                pending = self._pool.submit(self._load, nxt)
            yield from chunks

    def cleanup(self) -> None:
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def memory_budget(cfg: LearnPrototypesConfig, device: torch.device) -> int:
    """Bytes the resident pixels may take: ``max_memory_gb``, or (None) 60% of free device memory / RAM."""
    if cfg.max_memory_gb is not None:
        return int(cfg.max_memory_gb * 1e9)
    return int(0.6 * available_memory(device))

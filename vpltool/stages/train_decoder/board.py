"""train-decoder's TensorBoard events (``--tensorboard DIR``): what ``log.jsonl`` holds, and what it cannot.

At every log line (the loop's read of the losses: no extra wait for the device) each loss term, the learning rate,
the training speed since the previous read and the memory (CUDA: the allocator's current and peak; CPU: the peak
resident size); the validation mIoU when there is one; every ``val_every`` iterations and at the end, a few fixed
images (the validation split's first, else the training set's), each as the photo beside the decoder's
single-scale prediction in the VOC palette.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import io
from ...device import peak_rss_bytes

PREVIEWS = 4  # images shown every val_every iterations


def memory_gib(device: torch.device) -> dict[str, float]:
    """What the run holds: on CUDA the allocator's current and peak bytes (host-side counters: no wait for the
    device), on the CPU the process's peak resident size; GiB."""
    if device.type == "cuda":
        return {"memory/cuda_allocated_gib": torch.cuda.memory_allocated(device) / 2**30,
                "memory/cuda_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"memory/host_peak_rss_gib": peak_rss_bytes() / 2**30}


def preview(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[H, 2W, 3]`` uint8: the photo, and beside it the labels ``[H, W]`` in the VOC palette over a dimmed copy."""
    palette = np.asarray(io.voc_palette(), np.uint8).reshape(256, 3)
    coloured = (0.35 * image + 0.65 * palette[labels]).astype(np.uint8)
    return np.concatenate([image, coloured], axis=1)


def draw_curve(records: list[dict[str, Any]], path: Path) -> Path:
    """Loss curves (top) and validation mIoU (bottom) of ``log.jsonl`` records as a PNG."""
    losses = {k: [(r["iter"], r[k]) for r in records if r.get(k) is not None]
              for k in ("loss", "ce", "rsc", "proto")}
    val = {"val_miou": [(r["iter"], r["val_miou"]) for r in records if r.get("val_miou") is not None]}
    return io.write_chart(path, [losses, val], ranges=[None, (0.0, 1.0)], title="train-decoder")


class Board:
    """One run's event file (rank 0 only); ``items`` are ``(id, image path)`` of the preview images."""

    def __init__(self, folder: Path, stage: str, items: Sequence[tuple[str, Path]], start: int,
                 run: Path | None = None):
        self.writer = io.open_events(folder, stage, purge_step=start or None, run=run)
        self.items = list(items)[:PREVIEWS]

    def scalars(self, n: int, losses: dict[str, float], lr: float, iters_per_s: float | None,
                memory: dict[str, float]) -> None:
        for name, value in losses.items():
            self.writer.add_scalar(f"loss/{name}", value, n)
        self.writer.add_scalar("lr", lr, n)
        if iters_per_s is not None:
            self.writer.add_scalar("speed/iters_per_s", iters_per_s, n)
        for name, value in memory.items():
            self.writer.add_scalar(name, value, n)

    def validation(self, n: int, miou: float | None) -> None:
        if miou is not None:
            self.writer.add_scalar("val/miou", miou, n)

    def previews(self, n: int, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        """``predict``: ``[H, W, 3]`` uint8 photo -> ``[H, W]`` uint8 class indices."""
        for item_id, path in self.items:
            image = io.load_image(path)
            self.writer.add_image(f"preview/{item_id}", preview(image, predict(image)), n, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()

"""train-decoder's data: WeCLIP's augmentation, the deterministic batch plan, and the frozen-feature cache."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ... import io
from ...config import IGNORE_INDEX, DecoderConfig
from ...decoder import block_features
from ...device import available_memory
from ...errors import ContractError, VplError
from ...runtime.batches import die_with_parent
from .store import store_key, stored_features

if TYPE_CHECKING:
    from ...models import ClipBackbone


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: DecoderConfig
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WeCLIP's training view: random rescale, horizontal flip, pad with ignore, random crop; only the crop's pixels
    are resized (PIL's ``box``), so a view costs the crop, not the rescaled image.

    The view is the one of "rescale the whole image, flip, pad bottom/right, crop": the same four draws from
    ``rng`` in the same order (scale, flip, crop row, crop column), resampled from the same source pixels (up to
    PIL's rounding of the box corners: a level or a mask pixel at the edge of a sampling cell now and then).

    Args:
        image: ``[H, W, 3]`` uint8 RGB; mask: ``[H, W]`` uint8 (255 = ignore).
        rng: the sample's generator (seeded by seed, epoch, index).

    Returns:
        pixels ``[S, S, 3]`` uint8 (padding 0), mask ``[S, S]`` uint8 (padding 255) and the extent ``[2]`` int32
        (rows, columns) of the image inside the crop, from its top-left corner; S = ``cfg.crop_size``.
        :func:`normalize_views` turns the pixels into the model's input on the device.
    """
    h, w = mask.shape
    s = rng.uniform(cfg.scale_min, cfg.scale_max)
    sw, sh = max(1, round(w * s)), max(1, round(h * s))  # the rescaled image
    flip = bool(cfg.flip and rng.random() < 0.5)
    crop = cfg.crop_size
    y, x = int(rng.integers(0, max(crop, sh) - crop + 1)), int(rng.integers(0, max(crop, sw) - crop + 1))
    rows, cols = min(crop, sh - y), min(crop, sw - x)  # the padding lies below and right of the image
    left = sw - x - cols if flip else x  # the crop's first column in the unflipped rescaled image
    box = (left * w / sw, y * h / sh, (left + cols) * w / sw, (y + rows) * h / sh)
    views = [Image.fromarray(a).resize((cols, rows), resample, box=box)
             for a, resample in ((image, Image.BILINEAR), (mask, Image.NEAREST))]
    if flip:
        views = [v.transpose(Image.FLIP_LEFT_RIGHT) for v in views]
    pixels = np.zeros((crop, crop, 3), np.uint8)
    labels = np.full((crop, crop), IGNORE_INDEX, np.uint8)
    pixels[:rows, :cols], labels[:rows, :cols] = np.asarray(views[0]), np.asarray(views[1])
    return pixels, labels, np.array([rows, cols], np.int32)


def normalize_views(pixels: Tensor, extent: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
                    ) -> Tensor:
    """The model's input from :func:`augment`'s views, on their device.

    Args:
        pixels: ``[B, S, S, 3]`` uint8; extent: ``[B, 2]`` integer (rows, columns) of the image in each view.
        mean, std: the CLIP's normalisation, 3 values (pass float32 tensors on the device in a loop: a list is
            copied to the device on every call, a copy the host waits for).

    Returns:
        ``[B, 3, S, S]`` float32 ``(x / 255 - mean) / std`` (numpy's float32 arithmetic, bit for bit), 0 (the mean
        colour) outside the image.
    """
    x = pixels.permute(0, 3, 1, 2).float().div_(255)
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    x = x.sub_(mean_t).div_(std_t)
    side = torch.arange(x.shape[-1], device=x.device)
    inside = (side[None, :, None] < extent[:, :1, None]) & (side[None, None, :] < extent[:, 1:, None])  # [B, S, S]
    return x.masked_fill_(~inside[:, None], 0.0)


def read_pair(image_path: Path, mask_path: Path, label_map: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """An image and its pseudo mask, checked to be the same size; ``label_map`` (``[256]`` uint8, from
    :func:`held_out_label_map`) renumbers the mask's classes."""
    image, mask = io.load_image(image_path), io.read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise ContractError(f"{mask_path}: mask {mask.shape} does not match its image {image_path} "
                            f"{image.shape[:2]}; re-run `vpltool crf` on this dataset")
    return image, (mask if label_map is None else label_map[mask])


def held_out_label_map(classes: list[str], held_out: tuple[str, ...], where: object) -> np.ndarray | None:
    """``[256]`` uint8 lookup: held-out classes -> 255 (ignored), the others renumbered to close the gap; None when
    nothing is held out. VplError when a name is not a class or every foreground class would be held out."""
    if not held_out:
        return None
    unknown = [c for c in held_out if c not in classes]
    if unknown:
        raise VplError(f"--ignore-classes {unknown[0]!r} is not a class of {where} (classes: "
                       f"{', '.join(classes[1:])})")
    if len(held_out) >= len(classes) - 1:
        raise VplError("--ignore-classes holds out every foreground class; keep at least one to train on")
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    kept = [i for i, c in enumerate(classes) if c not in held_out]
    lut[kept] = np.arange(len(kept), dtype=np.uint8)
    return lut


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class PseudoMaskSet(torch.utils.data.Dataset):
    """Augmented views per key ``(index, epoch)``: ``(pixels [S, S, 3] uint8, mask [S, S] uint8, extent [2]
    int32)`` (:func:`augment`); runs in the DataLoader's worker processes."""

    def __init__(self, pairs: list[tuple[str, Path, Path]], cfg: DecoderConfig, label_map: np.ndarray | None = None):
        self.pairs, self.cfg, self.label_map = pairs, cfg, label_map

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        index, epoch = key
        image, mask = read_pair(*self.pairs[index][1:], self.label_map)
        views = augment(image, mask, sample_rng(self.cfg.seed, epoch, index), self.cfg)
        return tuple(torch.from_numpy(a) for a in views)


def training_views(data: PseudoMaskSet, plan: BatchPlan, workers: int, device: torch.device,
                   mean: Sequence[float], std: Sequence[float], pin: bool | None = None
                   ) -> Iterator[tuple[Tensor, Tensor]]:
    """The augmented batches of ``plan`` on ``device``: ``(pixels [B, 3, S, S] float32 normalised, masks [B, S, S]
    int64)``, one per iteration.

    ``workers`` > 1 augments in that many DataLoader processes (1 = in this process); the batches travel as uint8
    (2 bytes a pixel with its mask instead of 20), through pinned memory (``pin``; default: on CUDA) and
    ``non_blocking`` copies, and are normalised on the device. The loader is iterated once for the whole run, so
    its workers live as long as the run without ``persistent_workers``; each keeps the default 2 batches ahead.
    """
    pin = device.type == "cuda" if pin is None else pin
    # the workers die with the run (a run killed with -9 leaves none behind), as the other stages' loaders
    loader = torch.utils.data.DataLoader(data, batch_sampler=plan, num_workers=workers if workers > 1 else 0,
                                         pin_memory=pin, worker_init_fn=functools.partial(die_with_parent, os.getpid()))
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, std))  # once, not per batch
    for pixels, masks, extent in loader:
        pixels, masks, extent = (t.to(device, non_blocking=True) for t in (pixels, masks, extent))
        yield normalize_views(pixels, extent, mean, std), masks.long()


def batches_per_epoch(n: int, batch_size: int, world: int, where: object = "") -> int:
    """Full batches per epoch of ``n`` samples split over ``world`` processes (DistributedSampler's ``drop_last``);
    a one-line error naming ``where`` (the pseudo-mask folder) when not even one batch fits."""
    per_epoch = n // world // batch_size
    if per_epoch == 0:
        prefix = f"{where}: " if where else ""
        raise VplError(f"{prefix}{n} pseudo masks cannot fill a batch of {batch_size} on each of {world} "
                       f"process(es); lower --batch-size (at most {max(1, n // world)})")
    return per_epoch


def check_supervision(pairs: list[tuple[str, Path, Path]], where: object, num_classes: int | None = None) -> None:
    """Refuse pseudo masks whose every pixel is 255 (ignored): the loss would be 0 and nothing learnt; and, given
    ``num_classes`` (background included), a mask holding a value outside ``0..num_classes-1`` and 255, named.

    Every mask is read once before training (a bad value in a region no crop samples would otherwise pass, and one
    that is sampled stops the run with an IndexError deep in the loss); without ``num_classes`` masks are read
    until one holds a label (`crf --confidence 1.0` made them all 255)."""
    supervised = False
    for _, _, mask_path in pairs:
        labelled = bool((io.read_mask(mask_path, num_classes) != IGNORE_INDEX).any())  # read every mask: checked
        supervised = supervised or labelled
        if supervised and num_classes is None:
            return
    if supervised:
        return
    raise VplError(f"{where}: every pixel of its {len(pairs)} pseudo masks is 255 (ignored), so there is nothing to "
                   "learn; re-run `vpltool crf` with a lower --confidence (default 0.95)")


class BatchPlan(torch.utils.data.Sampler):
    """This process's batches of ``(index, epoch)`` keys for iterations ``start .. stop - 1``.

    Each epoch is DistributedSampler's shuffled order (seed + epoch, ``drop_last``) cut into batches, the last
    partial batch dropped; a run resumed at ``start`` sees exactly the batches the uninterrupted run saw.
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, start: int, stop: int):
        self.sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                                           seed=seed, drop_last=True)
        self.batch_size, self.start, self.stop = batch_size, start, stop
        self.per_epoch = batches_per_epoch(n, batch_size, world)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it = self.start
        epoch, skip = divmod(it, self.per_epoch)
        while it < self.stop:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for b in range(skip, self.per_epoch):
                if it >= self.stop:
                    return
                yield [(i, epoch) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
                it += 1
            epoch, skip = epoch + 1, 0


def fixed_view(bb: ClipBackbone, image_path: Path, mask_path: Path, blocks, crop: int, dtype: torch.dtype,
               label_map: np.ndarray | None = None) -> tuple[Tensor, np.ndarray]:
    """One image resized to ``crop x crop`` (bicubic; aspect not kept): its frozen features ``[1, L, h, w, width]``
    float16 on the CPU and its mask ``[S, S]`` uint8 (nearest)."""
    image, mask = read_pair(image_path, mask_path, label_map)
    feats = block_features(bb, bb.preprocess(image, (crop, crop))[None], blocks, dtype).half().cpu()
    return feats, np.asarray(Image.fromarray(mask).resize((crop, crop), Image.NEAREST))


class FeatureCache:
    """Frozen features of each training image resized to ``crop x crop``, and of its mirror image.

    Attributes:
        feats: ``[n, 2, L, h, w, width]`` float16 (view 1 = mirrored), on the CPU.
        masks: ``[n, 2, S, S]`` uint8.
    """

    def __init__(self, feats: Tensor, masks: Tensor):
        self.feats, self.masks = feats, masks

    @classmethod
    def build(cls, bb: ClipBackbone, pairs, blocks, crop: int, dtype: torch.dtype,
              label_map: np.ndarray | None = None, store: tuple[Path, dict] | None = None) -> FeatureCache:
        """The cache of ``pairs`` ``(id, image, mask)``; ``store``: ``(folder, identity)`` of ``--feature-store``,
        where the features are read from, or built once and written (:mod:`.store`; the masks are always read)."""
        grid = crop // bb.patch_size
        need = len(pairs) * 2 * (len(blocks) * grid * grid * bb.width * 2 + crop * crop)
        if need > 0.5 * available_memory():
            raise VplError(f"--cache-features needs {need / 2**30:.1f} GiB for {len(pairs)} images, more than half "
                           "the free memory; train without it or with a smaller --crop-size")

        def frozen(image: np.ndarray) -> Tensor:  # [2, L, h, w, width] float16: the view and its mirror
            pixels = bb.preprocess(image, (crop, crop))
            return block_features(bb, torch.stack([pixels, pixels.flip(-1)]), blocks, dtype).half().cpu()

        feats, masks = [], []
        for _, image_path, mask_path in pairs:  # (the images decoded here once: without a store, features too)
            image, mask = read_pair(image_path, mask_path, label_map)
            if store is None:
                feats.append(frozen(image))
            small = np.asarray(Image.fromarray(mask).resize((crop, crop), Image.NEAREST))
            masks.append(torch.from_numpy(np.stack([small, small[:, ::-1]]).copy()))
        if store is None:
            return cls(torch.stack(feats), torch.stack(masks))
        images = [image_path for _, image_path, _ in pairs]
        return cls(stored_features(store[0], store_key(store[1], images), len(pairs),
                                   lambda: torch.stack([frozen(io.load_image(path)) for path in images])),
                   torch.stack(masks))

    @classmethod
    def of_run(cls, run) -> FeatureCache:
        """The cache of a train-decoder run (``_Run``: its CLIP, pairs, blocks, crop, dtype, label map), with its
        ``feature_store`` (or None) and what its features depend on besides the images (:mod:`.store`)."""
        store = None if run.feature_store is None else (run.feature_store, {
            "model": run.protos.model, "mean": list(run.bb.mean), "std": list(run.bb.std), "blocks": list(run.blocks),
            "crop": run.cfg.crop_size, "dtype": str(run.dtype), "numerics": run.extra_meta.get(io.NUMERICS)})
        return cls.build(run.bb, run.pairs, run.blocks, run.cfg.crop_size, run.dtype, run.label_map, store)

    def plain_views(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The unflipped views in order, ``batch_size`` at a time: ``(feats [B, L, h, w, width] float16, masks
        [B, S, S] int64)`` (what CMPA's bank is built from)."""
        for start in range(0, len(self.feats), batch_size):
            yield self.feats[start : start + batch_size, 0], self.masks[start : start + batch_size, 0].long()

    def batch(self, keys: list[tuple[int, int]], cfg: DecoderConfig) -> tuple[Tensor, Tensor]:
        """Features ``[B, L, h, w, width]`` float16 and masks ``[B, S, S]`` int64 of the keys' views."""
        views = [int(cfg.flip and sample_rng(cfg.seed, e, i).random() < 0.5) for i, e in keys]
        idx = torch.tensor([i for i, _ in keys])
        return self.feats[idx, views], self.masks[idx, views].long()

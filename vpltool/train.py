"""`vpltool train-decoder`: VPL phase 2, the decoder on the frozen CLIP supervised by `crf` pseudo masks.

Per iteration (docs/decoder.md): a batch of augmented crops (random rescale, flip, crop padded with ignore) runs
through the frozen CLIP blocks under ``no_grad`` (bf16 autocast on CUDA); the decoder gives ``V`` and ``A``;
``L = lambda_ce L_ce(M, A) + lambda_rsc L_RSC`` (Eq. 14); SGD (or AdamW) with linear warm-up and poly decay.

* The frozen CLIP is the one that made the prototypes (their file's ``model`` metadata).
* Determinism: the batch order is DistributedSampler's (seeded by seed + epoch), the augmentation of a sample is
  seeded by (seed, epoch, index) and the torch RNG (dropout) by (seed, iteration, rank), so a resumed run
  repeats the uninterrupted one exactly without storing any RNG state.
* ``torchrun --nproc-per-node N``: env:// init, NCCL on GPUs / gloo on CPU, DistributedDataParallel; rank 0
  alone writes the log, checkpoints and the final decoder.
* ``cache_features``: the frozen features of every image resized to ``crop x crop`` and of its mirror are computed
  once; iterations then cost no CLIP forward but see no rescale and no crop.

Outputs in ``out_dir``: ``decoder.safetensors`` (kind ``decoder``), ``checkpoints/last.safetensors`` (model +
optimizer, kind ``decoder-checkpoint``), ``log.jsonl`` and ``curve.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from . import io
from .backbone import ClipBackbone, ModelSpec, load_backbone
from .config import IGNORE_INDEX, DecoderConfig, PredictConfig, RuntimeConfig
from .decoder import (SegDecoder, balanced_ce_loss, block_features, ce_loss, feature_blocks, region_masks,
                      present_classes, region_embeddings, rsc_loss, save_decoder)
from .device import autocast, resolve_device, resolve_precision, seed_everything
from .errors import ContractError, VplError

STAGE = "train-decoder"
CHECKPOINT_KIND = "decoder-checkpoint"
MASK_STAGES = ("crf", "predict")  # pseudo masks: CRF output, or a decoder's own predictions (self-training)
RESUMABLE_CHANGES = ("checkpoint_every", "val_every", "log_every")  # fields a resumed run may change


# --------------------------------------------------------------------------------------------- data
def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: DecoderConfig,
            mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """WeCLIP's training view: random rescale, horizontal flip, normalise, pad, random crop.

    Args:
        image: ``[H, W, 3]`` uint8 RGB; mask: ``[H, W]`` uint8 (255 = ignore).
        rng: the sample's generator (seeded by seed, epoch, index).

    Returns:
        pixels ``[3, S, S]`` float32 CLIP-normalised (padding = 0, i.e. the mean colour), mask ``[S, S]`` int64
        (padding = 255), S = ``cfg.crop_size``.
    """
    h, w = mask.shape
    s = rng.uniform(cfg.scale_min, cfg.scale_max)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    if cfg.flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    pixels = (image.astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    crop = cfg.crop_size
    ph, pw = max(crop, size[1]), max(crop, size[0])
    canvas = np.zeros((ph, pw, 3), np.float32)
    labels = np.full((ph, pw), IGNORE_INDEX, np.int64)
    canvas[: size[1], : size[0]], labels[: size[1], : size[0]] = pixels, mask
    y, x = rng.integers(0, ph - crop + 1), rng.integers(0, pw - crop + 1)
    return (np.ascontiguousarray(canvas[y : y + crop, x : x + crop].transpose(2, 0, 1)),
            np.ascontiguousarray(labels[y : y + crop, x : x + crop]))


def read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its pseudo mask, checked to be the same size."""
    from .data import load_image

    image, mask = load_image(image_path), io.read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise ContractError(f"{mask_path}: mask {mask.shape} does not match its image {image.shape[:2]}")
    return image, mask


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class PseudoMaskSet(torch.utils.data.Dataset):
    """Augmented ``(pixels [3, S, S] float32, mask [S, S] int64)`` per key ``(index, epoch)``."""

    def __init__(self, pairs: list[tuple[str, Path, Path]], cfg: DecoderConfig, mean, std):
        self.pairs, self.cfg, self.mean, self.std = pairs, cfg, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, epoch = key
        image, mask = read_pair(*self.pairs[index][1:])
        pixels, labels = augment(image, mask, sample_rng(self.cfg.seed, epoch, index), self.cfg, self.mean, self.std)
        return torch.from_numpy(pixels), torch.from_numpy(labels)


class BatchPlan(torch.utils.data.Sampler):
    """This process's batches of ``(index, epoch)`` keys for iterations ``start .. stop - 1``.

    Each epoch is DistributedSampler's shuffled order (seed + epoch, ``drop_last``) cut into batches, the last
    partial batch dropped; a run resumed at ``start`` sees exactly the batches the uninterrupted run saw.
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, start: int, stop: int):
        self.sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                                           seed=seed, drop_last=True)
        self.batch_size, self.start, self.stop = batch_size, start, stop
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise VplError(f"{n} pseudo masks cannot fill a batch of {batch_size} on each of {world} process(es); "
                           "lower --batch-size")

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


class FeatureCache:
    """Frozen features of each training image resized to ``crop x crop``, and of its mirror image.

    Attributes:
        feats: ``[n, 2, L, h, w, width]`` float16 (view 1 = mirrored), on the CPU.
        masks: ``[n, 2, S, S]`` uint8.
    """

    def __init__(self, feats: Tensor, masks: Tensor):
        self.feats, self.masks = feats, masks

    @classmethod
    def build(cls, bb: ClipBackbone, pairs, blocks, crop: int, dtype: torch.dtype) -> FeatureCache:
        grid = crop // bb.patch_size
        need = len(pairs) * 2 * (len(blocks) * grid * grid * bb.width * 2 + crop * crop)
        if need > 0.5 * _available_memory():
            raise VplError(f"--cache-features needs {need / 2**30:.1f} GiB for {len(pairs)} images, more than half "
                           "the free memory; train without it or with a smaller --crop-size")
        feats, masks = [], []
        for _, image_path, mask_path in pairs:
            image, mask = read_pair(image_path, mask_path)
            pixels = bb.preprocess(image, (crop, crop))
            views = torch.stack([pixels, pixels.flip(-1)])
            feats.append(block_features(bb, views, blocks, dtype).half().cpu())
            small = np.asarray(Image.fromarray(mask).resize((crop, crop), Image.NEAREST))
            masks.append(torch.from_numpy(np.stack([small, small[:, ::-1]]).copy()))
        return cls(torch.stack(feats), torch.stack(masks))

    def batch(self, keys: list[tuple[int, int]], cfg: DecoderConfig) -> tuple[Tensor, Tensor]:
        """Features ``[B, L, h, w, width]`` float16 and masks ``[B, S, S]`` int64 of the keys' views."""
        views = [int(cfg.flip and sample_rng(cfg.seed, e, i).random() < 0.5) for i, e in keys]
        idx = torch.tensor([i for i, _ in keys])
        return self.feats[idx, views], self.masks[idx, views].long()


def _available_memory() -> int:
    """MemAvailable in bytes (Linux); a large number elsewhere, where no check is made."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


# --------------------------------------------------------------------------------------------- optimisation
def lr_at(cfg: DecoderConfig, it: int) -> float:
    """Learning rate of iteration ``it`` (0-based): linear warm-up, then ``(1 - it/iters)^poly_power``."""
    warm = min(1.0, (it + 1) / cfg.warmup_iters) if cfg.warmup_iters > 0 else 1.0
    return cfg.lr * warm * max(0.0, 1.0 - it / cfg.iters) ** cfg.poly_power


def make_optimizer(model: SegDecoder, cfg: DecoderConfig) -> torch.optim.Optimizer:
    """SGD (paper) or AdamW (WeCLIP) over the trainable decoder parameters (W only with train_prototypes)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)


def compute_losses(model, feats: Tensor, target: Tensor, cfg: DecoderConfig,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Eq. 14 on one batch: the decoder under autocast (``dtype``, CUDA only), the losses in fp32.

    Args:
        model: a :class:`SegDecoder` (or its DDP wrapper).
        feats: ``[B, L, h, w, width]`` frozen features; target: ``[B, S, S]`` int64 pseudo masks (255 = ignore).

    Returns:
        ``loss``, ``ce`` and (when ``lambda_rsc > 0``) ``rsc``, float32 scalars with gradients.
    """
    with autocast(feats.device, dtype):
        v, logits, protos = model(feats)
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False).float()
    ce = balanced_ce_loss(up, target) if cfg.loss == "balanced" else ce_loss(up, target)
    out = {"ce": ce, "loss": cfg.lambda_ce * ce}
    if cfg.lambda_rsc > 0:
        present = present_classes(target, logits.shape[1])
        regions, region_class = region_embeddings(v, region_masks(logits, present), present)
        row_class = getattr(model, "module", model).row_class
        out["rsc"] = rsc_loss(regions, region_class, protos, row_class, cfg.rsc_temperature)
        out["loss"] = out["loss"] + cfg.lambda_rsc * out["rsc"]
    return out


def train_step(model, optimizer: torch.optim.Optimizer, feats: Tensor, target: Tensor, cfg: DecoderConfig,
               lr: float, dtype: torch.dtype = torch.float32, scaler=None) -> dict[str, float]:
    """One optimisation step at learning rate ``lr``; returns the batch's losses before the step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    losses = compute_losses(model, feats, target, cfg, dtype)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16 only: bf16 has fp32's range and needs no loss scaling
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses["loss"].backward()
        optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


# --------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model: SegDecoder, optimizer: torch.optim.Optimizer, iteration: int,
                    classes, meta: dict[str, Any]) -> Path:
    """Model and optimizer state in one safetensors file (one atomic rename: never half of each)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for pid, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return io.write_tensors(path, tensors, kind=CHECKPOINT_KIND, classes=classes, params=meta["decoder_config"],
                            iteration=iteration, optim_groups=state["param_groups"], **meta)


def load_checkpoint(path: Path, model: SegDecoder, optimizer: torch.optim.Optimizer) -> io.TensorFile:
    """Restore model and optimizer from :func:`save_checkpoint`'s file; returns the file (``meta('iteration')``)."""
    f = io.read_tensors(path, kind=CHECKPOINT_KIND)
    model.load_state_dict({k[6:]: v for k, v in f.tensors.items() if k.startswith("model.")}, strict=True)
    slots: dict[int, dict[str, Tensor]] = {}
    for key, value in f.tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": f.meta("optim_groups")})
    return f


def _check_resumable(f: io.TensorFile, cfg: DecoderConfig, inputs: dict[str, Any]) -> None:
    old = f.meta("decoder_config")
    changed = [k for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES and old.get(k) != _plain(v)]
    if changed:
        raise VplError(f"{f.path}: made with other settings ({', '.join(changed)}); resume with the same options "
                       "or start again with --overwrite")
    if f.meta("inputs") != json.loads(json.dumps(inputs, default=str)):
        raise VplError(f"{f.path}: trained on other pseudo masks or prototypes; use --overwrite to start again")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# --------------------------------------------------------------------------------------------- log + curve
def read_log(path: Path, upto: int | None = None) -> list[dict[str, Any]]:
    """The records of ``log.jsonl`` (those of iterations <= ``upto`` when given).

    A last line without its newline is dropped: a write cut short (disk full, power loss) must not stop
    ``--resume``, and that iteration is past the checkpoint anyway.
    """
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the piece after the last newline is empty or torn
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if upto is None or r["iter"] <= upto]


def draw_curve(records: list[dict[str, Any]], path: Path, size: tuple[int, int] = (720, 480)) -> Path:
    """Loss curves (top) and validation mIoU (bottom) of ``log.jsonl`` records as a PNG, drawn with PIL."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    panels = [(("loss", "ce", "rsc"), (40, 10, w - 10, h // 2 - 20)),
              (("val_miou",), (40, h // 2 + 10, w - 10, h - 20))]
    colors = {"loss": (0, 0, 0), "ce": (31, 119, 180), "rsc": (214, 39, 40), "val_miou": (44, 160, 44)}
    last = max((r["iter"] for r in records), default=1)
    for keys, box in panels:
        series = {k: [(r["iter"], r[k]) for r in records if r.get(k) is not None] for k in keys}
        values = [v for pts in series.values() for _, v in pts]
        lo, hi = (0.0, 1.0) if keys == ("val_miou",) else (min(values, default=0.0), max(values, default=1.0))
        _axes(draw, box, lo, hi, last)
        for i, (k, pts) in enumerate(series.items()):
            xy = [_to_px(box, x / last, (v - lo) / (hi - lo or 1.0)) for x, v in pts]
            if len(xy) > 1:
                draw.line(xy, fill=colors[k], width=2)
            for p in xy if len(xy) < 30 else []:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colors[k])
            draw.text((box[2] - 70, box[1] + 4 + 12 * i), k, fill=colors[k])
    with io.atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def _to_px(box: tuple[int, int, int, int], fx: float, fy: float) -> tuple[float, float]:
    return box[0] + fx * (box[2] - box[0]), box[3] - fy * (box[3] - box[1])


def _axes(draw: ImageDraw.ImageDraw, box, lo: float, hi: float, last: int) -> None:
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((2, box[1]), f"{hi:.3g}", fill=(90, 90, 90))
    draw.text((2, box[3] - 10), f"{lo:.3g}", fill=(90, 90, 90))
    draw.text((box[2] - 60, box[3] + 3), f"iter {last}", fill=(90, 90, 90))


# --------------------------------------------------------------------------------------------- distributed
@contextlib.contextmanager
def distributed(device: str) -> Iterator[tuple[int, int, torch.device]]:
    """``(rank, world_size, device)``; under torchrun (``WORLD_SIZE`` > 1) joins the process group (env://)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        yield 0, 1, dev
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    try:
        yield rank, world, dev
        if created:  # leave together: a rank tearing gloo down while rank 0 still writes could abort the run
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def _mean_across(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / world).tolist()))


# --------------------------------------------------------------------------------------------- the stage
@dataclass
class TrainSummary:
    iterations: int  # completed iterations (== cfg.iters when finished)
    start: int  # iteration this run started from (> 0 after --resume)
    seconds: float  # the training loop (validation included; model loading and the feature cache excluded)
    loss: float | None  # last logged training loss (mean over processes)
    val_miou: float | None  # last validation mIoU
    decoder: Path | None  # the final file (rank 0 only)
    world_size: int
    cache_seconds: float = 0.0  # building the --cache-features cache

    @property
    def iters_per_s(self) -> float:
        done = self.iterations - self.start
        return done / self.seconds if self.seconds > 0 else 0.0


def _check_config(cfg: DecoderConfig) -> None:
    problems = [
        (cfg.optimizer not in ("sgd", "adamw"), f"--optimizer {cfg.optimizer!r}: choose sgd or adamw"),
        (cfg.loss not in ("ce", "balanced"), f"--loss {cfg.loss!r}: choose ce or balanced"),
        (cfg.iters < 1 or cfg.batch_size < 1, "--iters and --batch-size must be >= 1"),
        (not 0 < cfg.scale_min <= cfg.scale_max, f"--scale-min {cfg.scale_min} --scale-max {cfg.scale_max}: "
                                                  "need 0 < min <= max"),
        (cfg.lambda_ce < 0 or cfg.lambda_rsc < 0, "--lambda-ce and --lambda-rsc must be >= 0"),
        (cfg.rsc_temperature <= 0 or (cfg.temperature is not None and cfg.temperature <= 0),
         "temperatures must be > 0"),
        (min(cfg.checkpoint_every, cfg.val_every, cfg.log_every) < 1, "--checkpoint-every, --val-every and "
                                                                       "--log-every must be >= 1"),
    ]
    for bad, message in problems:
        if bad:
            raise VplError(message)


def _training_pairs(dataset, pseudo_dir: Path) -> list[tuple[str, Path, Path]]:
    pairs = [(it.id, it.image, pseudo_dir / f"{it.id}.png") for it in dataset.items
             if (pseudo_dir / f"{it.id}.png").is_file()]
    if not pairs:
        raise VplError(f"{pseudo_dir}: no pseudo mask matches an image of its dataset; re-run `vpltool crf`")
    return pairs


def _iteration_seed(seed: int, it: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, it, rank]).generate_state(1)[0])


def _prepare_out(out_dir: Path, resume: bool, overwrite: bool, rank: int, world: int) -> Path | None:
    """Refuse to clobber a finished or interrupted run; the checkpoint to resume from (None = fresh start).

    ``--resume`` without a checkpoint starts afresh, so a preemptible job can always pass it.
    """
    ckpt = out_dir / "checkpoints" / "last.safetensors"
    final = out_dir / "decoder.safetensors"
    if not overwrite and not resume:
        if ckpt.is_file():
            raise VplError(f"{out_dir}: holds an interrupted run; pass --resume to continue or --overwrite")
        if final.is_file():
            raise VplError(f"{out_dir}: holds a trained decoder; pass --overwrite or choose another --out")
    if world > 1:
        dist.barrier()  # every rank checked before rank 0 deletes anything
    if overwrite and not resume and rank == 0:
        for path in (ckpt, final, out_dir / "log.jsonl", out_dir / "curve.png"):
            path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    return ckpt if resume and ckpt.is_file() else None


class _Run:
    """The state of one training process: frozen CLIP, decoder, optimizer, data source, log."""

    def __init__(self, cfg: DecoderConfig, runtime: RuntimeConfig, rank: int, world: int, device: torch.device,
                 protos: io.Prototypes, pairs, out_dir: Path, inputs: dict[str, Any], backbone: ClipBackbone | None):
        self.cfg, self.runtime, self.rank, self.world, self.device = cfg, runtime, rank, world, device
        self.protos, self.pairs, self.out_dir, self.inputs = protos, pairs, out_dir, inputs
        self.dtype = resolve_precision(runtime.precision, device)
        self.bb = backbone or load_backbone(ModelSpec.from_identity(protos.model), device)
        if cfg.crop_size % self.bb.patch_size:
            raise VplError(f"--crop-size {cfg.crop_size} is not a multiple of the CLIP patch size {self.bb.patch_size}")
        self.blocks = feature_blocks(self.bb.n_blocks, cfg.include_last_block)
        seed_everything(cfg.seed)
        self.model = SegDecoder(cfg, in_width=self.bb.width, n_inputs=len(self.blocks), prototypes=protos.vectors,
                                row_class=protos.row_class, temperature=protos.temperature).to(device)
        self.optimizer = make_optimizer(self.model, cfg)
        fp16 = device.type == "cuda" and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.log_path, self.last_loss, self.val_miou = out_dir / "log.jsonl", None, None
        self.seconds, self.cache_seconds = 0.0, 0.0  # training loop; building the feature cache

    @property
    def inner(self) -> SegDecoder:
        """The decoder itself, also when wrapped in DistributedDataParallel."""
        return getattr(self.model, "module", self.model)

    def meta(self) -> dict[str, Any]:
        return {"decoder_config": asdict(self.cfg), "inputs": self.inputs, "model": self.protos.model}

    def restore(self, ckpt: Path | None) -> int:
        """Load the checkpoint (if any) and trim the log to it; returns the first iteration to run."""
        start = 0
        if ckpt is not None:
            f = io.read_tensors(ckpt, kind=CHECKPOINT_KIND, keys=())
            _check_resumable(f, self.cfg, self.inputs)
            start = int(load_checkpoint(ckpt, self.model, self.optimizer).meta("iteration"))
        if self.rank == 0:
            kept = read_log(self.log_path, upto=start) if start else []
            with io.atomic_path(self.log_path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return start

    def batches(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``(frozen features [B, L, h, w, width], masks [B, S, S])`` on the device, one per iteration.

        With ``cache_features`` the cache is built here, before the first batch (``self.cache_seconds``).
        """
        cfg = self.cfg
        plan = BatchPlan(len(self.pairs), cfg.batch_size, self.world, self.rank, cfg.seed, start, cfg.iters)
        if cfg.cache_features:
            t0 = time.perf_counter()
            cache = FeatureCache.build(self.bb, self.pairs, self.blocks, cfg.crop_size, self.dtype)
            self.cache_seconds = time.perf_counter() - t0
            return (tuple(t.to(self.device) for t in cache.batch(keys, cfg)) for keys in plan)
        data = PseudoMaskSet(self.pairs, cfg, self.bb.mean, self.bb.std)
        loader = torch.utils.data.DataLoader(data, batch_sampler=plan, num_workers=self.runtime.workers,
                                             pin_memory=self.device.type == "cuda")
        return ((block_features(self.bb, p, self.blocks, self.dtype), m.to(self.device)) for p, m in loader)

    def log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            io.append_line(self.log_path, json.dumps(record))

    def validate(self, items, n: int) -> None:
        """Single-scale mIoU on the validation items (rank 0), logged and drawn."""
        self.val_miou = evaluate(self.bb, self.inner.eval(), self.blocks, items, self.cfg.crop_size, self.dtype)
        self.log({"iter": n, "val_miou": self.val_miou})
        draw_curve(read_log(self.log_path), self.out_dir / "curve.png")

    def loop(self, start: int, val_items, on_iter) -> None:
        cfg, batches = self.cfg, self.batches(start)
        t0 = time.perf_counter()
        for it, (feats, target) in zip(range(start, cfg.iters), batches):
            torch.manual_seed(_iteration_seed(cfg.seed, it, self.rank))  # dropout: same stream after --resume
            lr = lr_at(cfg, it)
            losses = train_step(self.model, self.optimizer, feats, target, cfg, lr, self.dtype, self.scaler)
            n = it + 1
            record = {"iter": n}
            if n % cfg.log_every == 0 or n == cfg.iters:
                losses = _mean_across(losses, self.world, self.device)
                record = {"iter": n, **losses, "lr": lr, "sec": round(time.perf_counter() - t0, 3)}
                self.last_loss = losses["loss"]
                self.log(record)
            if val_items and self.rank == 0 and (n % cfg.val_every == 0 or n == cfg.iters):
                self.validate(val_items, n)
            if self.rank == 0 and (n % cfg.checkpoint_every == 0 or n == cfg.iters):
                save_checkpoint(self.out_dir / "checkpoints" / "last.safetensors", self.inner, self.optimizer, n,
                                self.protos.classes, self.meta())
            self.seconds = time.perf_counter() - t0
            if on_iter and self.rank == 0:
                on_iter(n, record)

    def finish(self) -> Path | None:
        if self.rank != 0:
            return None
        path = save_decoder(self.out_dir / "decoder.safetensors", self.inner, self.cfg, classes=self.protos.classes,
                            model_identity=self.protos.model, blocks=self.blocks, dataset=self.inputs["dataset"],
                            inputs=self.inputs, prototypes_source=self.protos.source, iterations=self.cfg.iters,
                            val_miou=self.val_miou)
        draw_curve(read_log(self.log_path), self.out_dir / "curve.png")
        return path


def evaluate(bb: ClipBackbone, model: SegDecoder, blocks, items, crop_size: int, dtype: torch.dtype) -> float | None:
    """Single-scale, unflipped mIoU of ``model`` on dataset items with GT (predict's input size rule)."""
    from .data import load_image
    from .metrics import MiouAccumulator
    from .predict import input_long_side, predict_logits

    acc = MiouAccumulator(model.n_classes)
    long_side = input_long_side(PredictConfig(), crop_size)
    for item in items:
        image = load_image(item.image)
        logits = predict_logits(bb, model, blocks, image, (1.0,), False, long_side, dtype)
        acc.add(io.read_mask(item.gt), logits.argmax(0).numpy().astype(np.uint8), item=item.id)
    return acc.result()["miou"]


def run_train_decoder(
    pseudo_dir: str | Path,
    prototypes: str | Path,
    out_dir: str | Path,
    cfg: DecoderConfig = DecoderConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    resume: bool = False,
    val_split: str | None = None,
    on_iter: Callable[[int, dict[str, Any]], None] | None = None,
    backbone: ClipBackbone | None = None,
) -> TrainSummary:
    """Train the decoder on the pseudo masks of a `crf` folder; write ``out_dir/decoder.safetensors``.

    Args:
        pseudo_dir: a finished `crf` (or `predict`) folder; its ``_stage.json`` names the dataset of the images.
        prototypes: a prototypes file (vision or text: the "text prototypes in phase 2" ablation); its ``model``
            metadata names the frozen CLIP.
        cfg: see :class:`DecoderConfig`; ``runtime.workers`` = data loading processes, ``runtime.batch_size`` is
            not used (``cfg.batch_size`` is).
        resume: continue from ``out_dir/checkpoints/last.safetensors`` (a fresh start when there is none).
        val_split: a split of the same dataset with GT masks, scored every ``cfg.val_every`` iterations.
        on_iter: called on rank 0 after every iteration with ``(iteration, log record)``.
        backbone: reuse an already loaded CLIP; it must be the one the prototypes record.
    """
    from .data import open_dataset

    _check_config(cfg)
    pseudo_dir, out_dir = Path(pseudo_dir), Path(out_dir)
    record = io.read_stage_record(pseudo_dir, MASK_STAGES)
    dataset_id = record["inputs"]["dataset"]
    dataset = open_dataset(dataset_id["root"], dataset_id.get("split"))
    protos = io.read_prototypes(prototypes, classes=dataset.classes)
    inputs = {"pseudo": {"path": str(pseudo_dir), "sha256": io.sha256_file(io.stage_record_path(pseudo_dir))},
              "prototypes": {"path": str(protos.path), "sha256": io.sha256_file(protos.path), "source": protos.source},
              "dataset": dataset_id}
    val_items = []
    if val_split is not None:
        val_items = [it for it in open_dataset(dataset_id["root"], val_split).items if it.gt is not None]
        if not val_items:
            raise VplError(f"{dataset_id['root']}: split {val_split!r} has no GT masks to validate on")
    pairs = _training_pairs(dataset, pseudo_dir)
    with distributed(runtime.device) as (rank, world, device):
        out_dir.mkdir(parents=True, exist_ok=True)
        with io.output_lock(out_dir) if rank == 0 else contextlib.nullcontext():
            ckpt = _prepare_out(out_dir, resume, runtime.overwrite, rank, world)
            run = _Run(cfg, runtime, rank, world, device, protos, pairs, out_dir, inputs, backbone)
            start = run.restore(ckpt)
            if world > 1:
                run.model = torch.nn.parallel.DistributedDataParallel(
                    run.model, device_ids=[device.index] if device.type == "cuda" else None)
            run.loop(start, val_items, on_iter)
            path = run.finish()
    return TrainSummary(iterations=cfg.iters, start=start, seconds=run.seconds, loss=run.last_loss,
                        val_miou=run.val_miou, decoder=path, world_size=world,
                        cache_seconds=run.cache_seconds)

"""`vpltool train-toy-dino`: a toy DINO, self-supervised on the demo world's train images (no labels, no captions).

The affinity backbone of SSR (`cam --affinity dino|clip+dino`) for the demo world: a timm ViT small enough to train
on a CPU, saved as one safetensors file of the timm model's own tensors, so that the existing path loads it
unchanged: ``--dino-model test_vit --dino-weights vpltool/assets/toy-dino/model.safetensors``.

DINO's recipe (Caron et al., ICCV 2021), at toy size:

* **Student and teacher**, the same ViT + projection head; the student learns by AdamW, the teacher is the
  student's exponential moving average (momentum rising from ``momentum`` to 1 on a cosine). The teacher ships.
* **Multi-crop.** Per image two global crops (``global_scale`` of the image, resized so the patch grid is the toy
  CLIP's 12x12) and ``local_crops`` local ones (``local_scale``, half the side: a 6x6 grid); flips, colour jitter,
  grayscale, and solarisation on the second global crop. The teacher sees the global crops only; the student every
  crop, and learns to predict the teacher's output of each *other* view.
* **Centering and sharpening.** The teacher's logits are centred by a running mean (``center_momentum``) and
  sharpened by a low temperature (``teacher_temp`` against the student's ``student_temp``): together they keep the
  outputs from collapsing to one prototype or to the uniform distribution.

Everything is seeded, runs on the CPU with a fixed thread count and reads the images in a fixed order, so the same
settings rebuild the same weights bit for bit (`make toy-dino`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError
from .config import ToyDinoConfig
from .toy_weights import write_toy
from .toyclip import equal_query_key

GRID = 12  # the toy CLIP's patch grid (96 px, patch 8): the DINO crops give its attention on the same grid
WEIGHTS_FILE = "model.safetensors"


# ---------------------------------------------------------------------------------------------- model
def build_student(cfg: ToyDinoConfig) -> torch.nn.Module:
    """The timm ViT as `--dino-model` builds it (no classifier, any input size), randomly initialised, its query and
    key weights made equal when ``cfg.qk_init`` > 0 (:func:`mimetic_qk`)."""
    from ..models.backbones.dino import import_timm

    model = import_timm().create_model(cfg.model, num_classes=0, dynamic_img_size=True, pretrained=False)
    if cfg.qk_init > 0:
        mimetic_qk(model, cfg.qk_init)
    return model


@torch.no_grad()
def mimetic_qk(model: torch.nn.Module, gain: float) -> None:
    """Mimetic initialisation of self-attention (Trockman & Kolter, ICML 2023), its query-key half: ``W_q = W_k =
    gain * G / sqrt(width)`` per block (G standard normal), so that ``q . k`` starts as a similarity kernel of the
    two tokens (positional embedding included) rather than near zero.

    Why: at timm's init (std 0.02) the attention logits of this tiny ViT are ~0, every map is uniform, and on
    small images DINO's loss is met without attention ever leaving uniform (measured: the affinity stayed at
    chance after 160 steps); a similarity kernel gives the gradient something to sharpen, as the paper's small-data
    ViTs.
    """
    for block in model.blocks:
        equal_query_key(block.attn.qkv.weight, block.attn.qkv.bias, gain)


class DinoHead(torch.nn.Module):
    """DINO's projection head: a 3-layer MLP to a bottleneck, L2-normalised, then ``out_dim`` unit prototypes."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.GELU(), torch.nn.Linear(hidden, bottleneck))
        self.prototypes = torch.nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim]`` -> ``[B, out_dim]`` logits: cosine of the bottleneck with each prototype (DINO's weight-
        normalised last layer with its norm fixed at 1)."""
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


class Network(torch.nn.Module):
    """ViT (its class token, after the final norm) + head."""

    def __init__(self, backbone: torch.nn.Module, head: DinoHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy of every student view against every *other* teacher view (the teacher sees global views only).

    Args:
        student: V tensors ``[B, K]`` (the global views first), teacher: 2 tensors ``[B, K]``, center ``[K]``.
    """
    targets = [F.softmax((t - center) / teacher_temp, dim=-1) for t in teacher]
    total, pairs = 0.0, 0
    for i, t in enumerate(targets):
        for v, s in enumerate(student):
            if v == i:
                continue
            total = total + (-t * F.log_softmax(s / student_temp, dim=-1)).sum(-1).mean()
            pairs += 1
    return total / pairs


# ---------------------------------------------------------------------------------------------- data
def world_images(data_dir: str | Path) -> torch.Tensor:
    """The train split's images of a `make-world` folder: ``[N, 3, H, W]`` float32 in [0, 1] (labels unread)."""
    from ..data import open_dataset
    from ..io import load_image

    if not (Path(data_dir) / "images").is_dir():  # before open_dataset, whose line would name a --split it lacks
        raise VplError(f"{data_dir}: no images/ folder; pass a folder written by make-world")
    items = open_dataset(Path(data_dir), "train").items
    if not items:
        raise VplError(f"{data_dir}: no train images; pass a folder written by make-world")
    images = [load_image(item.image) for item in items]
    if len({im.shape for im in images}) != 1:
        raise VplError(f"{data_dir}: train images of different sizes; the toy DINO needs one size (make-world)")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)


def _crop(image: torch.Tensor, scale: tuple[float, float], side: int, gen: torch.Generator) -> torch.Tensor:
    """A random-resized crop (area ``scale`` of the image, aspect 3/4..4/3) of ``[3, H, W]``, resized to ``side``."""
    _, h, w = image.shape
    u = torch.rand(3, generator=gen).tolist()
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
    ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    ch = max(1, min(h, round(math.sqrt(area / ratio))))
    cw = max(1, min(w, round(math.sqrt(area * ratio))))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
    patch = image[None, :, top:top + ch, left:left + cw]
    out = F.interpolate(patch, size=(side, side), mode="bicubic", align_corners=False, antialias=True)[0]
    return out.flip(-1) if u[2] < 0.5 else out


def _photometric(x: torch.Tensor, gen: torch.Generator, jitter: float, solarize: float) -> torch.Tensor:
    """DINO's colour augmentations on ``[3, S, S]`` in [0, 1]: brightness/contrast/saturation jitter (p 0.8),
    grayscale (p 0.2), solarisation (p ``solarize``)."""
    u = torch.rand(6, generator=gen).tolist()
    if u[0] < 0.8:
        f = [1 + jitter * (2 * v - 1) for v in u[1:4]]
        x = (x * f[0]).clamp(0, 1)
        x = ((x - x.mean()) * f[1] + x.mean()).clamp(0, 1)
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = ((x - gray) * f[2] + gray).clamp(0, 1)
    if u[4] < 0.2:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].expand(3, -1, -1)
    if u[5] < solarize:
        x = torch.where(x >= 0.5, 1 - x, x)
    return x


def views(images: torch.Tensor, cfg: ToyDinoConfig, patch: int, gen: torch.Generator,
          mean: torch.Tensor, std: torch.Tensor) -> list[torch.Tensor]:
    """The multi-crop views of a batch ``[B, 3, H, W]``: 2 global ``[B, 3, 12p, 12p]`` then the local ones
    ``[B, 3, 6p, 6p]``, normalised as :class:`vpltool.models.DinoBackbone` normalises."""
    g, loc = GRID * patch, GRID * patch // 2
    out = []
    for v in range(2 + cfg.local_crops):
        side, scale = (g, cfg.global_scale) if v < 2 else (loc, cfg.local_scale)
        solarize = 0.2 if v == 1 else 0.0
        batch = torch.stack([_photometric(_crop(im, scale, side, gen), gen, cfg.jitter, solarize) for im in images])
        out.append((batch - mean) / std)
    return out


# ---------------------------------------------------------------------------------------------- training
def _cosine(start: float, end: float, step: int, total: int) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def train_toy_dino(out: str | Path, data_dir: str | Path, cfg: ToyDinoConfig = ToyDinoConfig(),
                   on_start: Callable[[int], None] | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train the toy DINO on ``data_dir``'s train images and write the teacher's ViT to ``out`` (safetensors,
    float32, the timm model's own tensor names) with ``out``'s ``.json`` record beside it.

    Returns:
        the record: recipe, ``final_loss`` (mean of the last 10 steps), ``teacher_entropy`` (mean entropy of the
        teacher's centred, sharpened output on the last batch, in nats; ``log(out_dim)`` would be collapse to
        uniform, 0 collapse to one prototype), ``seconds``, ``steps``, ``path``.
    """
    out = Path(out)
    if out.exists() and not out.is_file():
        raise VplError(f"{out}: exists and is not a file; choose a weights file path")
    images = world_images(data_dir)
    if on_start is not None:
        on_start(cfg.epochs * (len(images) // cfg.batch_size))
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _train(out, images, cfg, on_step, str(Path(data_dir)))
    finally:
        torch.set_num_threads(previous)


def _train(out: Path, images: torch.Tensor, cfg: ToyDinoConfig, on_step, source: str) -> dict[str, Any]:
    backbone = build_student(cfg)
    student = Network(backbone, DinoHead(backbone.num_features, cfg.out_dim))
    teacher = Network(build_student(cfg), DinoHead(backbone.num_features, cfg.out_dim))
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
    pcfg = backbone.pretrained_cfg
    mean = torch.tensor(pcfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(pcfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    patch = backbone.patch_embed.patch_size[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    per_epoch = len(images) // cfg.batch_size
    if per_epoch == 0:
        raise VplError(f"{source}: {len(images)} train images, fewer than --batch-size {cfg.batch_size}")
    total = cfg.epochs * per_epoch
    warmup = max(1, min(total // 10, 10 * per_epoch))
    center = torch.zeros(cfg.out_dim)
    losses, entropy, step = [], float("nan"), 0
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(images), generator=gen)
        for b in range(per_epoch):
            batch = images[order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            crops = views(batch, cfg, patch, gen, mean, std)
            lr = cfg.lr * (step + 1) / warmup if step < warmup else _cosine(cfg.lr, cfg.min_lr, step - warmup,
                                                                               total - warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.no_grad():
                t_out = [teacher(x) for x in crops[:2]]
            s_out = [student(x) for x in crops]
            loss = dino_loss(s_out, t_out, center, cfg.student_temp, cfg.teacher_temp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
            opt.step()
            with torch.no_grad():
                m = _cosine(cfg.momentum, 1.0, step, total)
                for ps, pt in zip(student.parameters(), teacher.parameters()):
                    pt.mul_(m).add_(ps.detach(), alpha=1 - m)
                batch_center = torch.cat(t_out).mean(0)
                probs = F.softmax((torch.cat(t_out) - center) / cfg.teacher_temp, dim=-1)
                entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean())
                center = center * cfg.center_momentum + batch_center * (1 - cfg.center_momentum)
            losses.append(loss.item())
            step += 1
            if on_step is not None:
                on_step(step, losses[-1])
    seconds = time.perf_counter() - start
    record = {"model": cfg.model, "recipe": asdict(cfg), "data": source, "images": len(images), "steps": total,
              "final_loss": round(float(np.mean(losses[-10:])), 4), "teacher_entropy": round(entropy, 3),
              "seconds": round(seconds, 1)}
    write_toy(out, teacher.backbone, record, KIND, RECORD_KIND)
    return {**record, "path": str(out)}


KIND, RECORD_KIND = "toy-dino", "toy-dino-record"  # the file kinds of its weights and their record (io.marks)


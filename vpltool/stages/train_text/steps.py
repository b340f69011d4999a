"""The shared trainer's iteration (`train-text`, `train-pgseg`): the reference's learning-rate schedule, the step
(forward through DDP, backward, clipping, AdamW), the cross-rank gather of the contrastive loss, the iteration's seed
and the losses' read (Ferenas/PGSeg 9f167cd, main_pg_seg.py ``train_one_epoch``; :mod:`vpltool.stages.train_text`
runs them)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ...config.text import TextTrainConfig
from ...errors import VplError


# ------------------------------------------------------------------------------------------------ schedule
def schedule_lr(cfg: TextTrainConfig, t: int, steps_per_epoch: int) -> float:
    """timm ``CosineLRScheduler(t_initial=epochs*steps, warmup_t=warmup_epochs*steps, lr_min, warmup_lr_init,
    cycle_limit=1, t_in_epochs=False)`` at update ``t``: linear warm-up from ``warmup_lr``, then the cosine from
    ``lr`` to ``min_lr`` over the whole run (the warm-up counted in it, ``warmup_prefix`` False)."""
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if t < warm:  # timm's order of operations: the step (lr - warmup_lr) / warm first, then times t
        return cfg.warmup_lr + t * ((cfg.lr - cfg.warmup_lr) / warm)
    if t >= total:
        return cfg.min_lr
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t / total))


def lr_at(cfg: TextTrainConfig, it: int, steps_per_epoch: int) -> float:
    """The rate of iteration ``it`` (0-based): the schedule is updated after each step, so step ``it`` runs at
    its value for ``it - 1`` (step 0 at the warm-up's start, set when the scheduler is built)."""
    return schedule_lr(cfg, max(it - 1, 0), steps_per_epoch)


# ------------------------------------------------------------------------------------------------ model pieces
class TrainStep(torch.nn.Module):
    """``forward(images, tokens) -> losses``: the family's ``forward_train`` as a module's forward, so that DDP's
    forward hooks (unused parameters, gradient sync) run as around the reference's ``model(**samples)``.
    ``forward_train``: the family's hook (:meth:`TextSegFamily.forward_train`); None: the model's own
    ``forward_train`` method (PGSeg's, which the hook calls). ``forward_from``: the family's
    :meth:`FrozenSide.forward_train_from`, run when ``images`` is a dict of its frozen features (``tokens`` None)."""

    def __init__(self, model: torch.nn.Module, gather: Callable[[Tensor], Tensor] | None,
                 forward_train: Callable[..., dict[str, Tensor]] | None = None,
                 forward_from: Callable[..., dict[str, Tensor]] | None = None):
        super().__init__()
        self.model, self.gather, self.forward_train, self.forward_from = model, gather, forward_train, forward_from

    def forward(self, images: Tensor | dict[str, Tensor], tokens: Tensor | None,
                keys: Tensor | None = None) -> dict[str, Tensor]:
        if isinstance(images, dict):  # the frozen side's features (the feature cache): the family's forward_train_from
            assert self.forward_from is not None, "features given to a step without forward_train_from"
            return self.forward_from(self.model, images, gather=self.gather, keys=keys)
        if self.forward_train is None:
            return self.model.forward_train(images, tokens, gather=self.gather, keys=keys)
        return self.forward_train(self.model, images, tokens, gather=self.gather, keys=keys)


def gather_ranks(x: Tensor) -> Tensor:
    """``[b, ...]`` of every rank -> ``[world * b, ...]`` rank by rank, gradients flowing back to each rank's
    rows (torch's functional all-gather: its backward is a reduce-scatter, the sum of every rank's gradient of each
    row). The group is named at the call: the command's own, not the one of the import. (torch.distributed.nn's
    all_gather, which torch deprecates for this one, kept the group object in the autograd graph.)"""
    import torch.distributed._functional_collectives as fc

    # all_gather_single is newer torch's (2.14 has it; 2.11 has not), all_gather_tensor_autograd the older (deprecated
    # for it since): vpltool takes torch from 2.4 on
    gather = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor_autograd
    out = gather(x.contiguous(), 0, dist.group.WORLD)
    return out.wait() if isinstance(out, fc.AsyncCollectiveTensor) else out  # a plain tensor, gathered now


def make_optimizer(model: torch.nn.Module, cfg: TextTrainConfig) -> torch.optim.AdamW:
    """AdamW over two groups as utils/optimizer.py ``set_weight_decay``: weight decay on the matrices, none on
    biases and 1-d parameters (norms, scales). Its kernels are the config's ``ADAM_KERNELS``: PyTorch's
    multi-tensor (``foreach``) AdamW, a few kernels over all parameters instead of a dozen small ones per
    parameter, bit for bit the reference's per-parameter loop (PGSeg: the fused AdamW is faster still but rounds
    otherwise, which the hard assignment's argmax can amplify); or the ``fused`` AdamW, one kernel a parameter
    (Talk2DINO, where the update is most of a cached step)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay}, {"params": plain, "weight_decay": 0.0}], lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             **{cfg.ADAM_KERNELS: True})


def train_step(step: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               images: Tensor | dict[str, Tensor], tokens: Tensor | None, lr: float, clip_grad: float | None,
               keys: Tensor | None = None, measure: bool = True) -> tuple[dict[str, Tensor], Tensor | None]:
    """One iteration of the reference's loop on a batch already on the device: ``losses = step(images, tokens)``
    (or ``step(features, None)``, the frozen side's features: :mod:`.cache`),
    backward, the gradient norm clipped to ``clip_grad`` (None / 0: measured only, and only with ``measure``: the
    caller logs this step), AdamW at rate ``lr``. Returns the losses and the norm as tensors (None: not measured):
    nothing here waits for the device (the caller reads them when it logs)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    step.train()
    losses = step(images, tokens) if keys is None else step(images, tokens, keys)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    norm = None
    if clip_grad or measure:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip_grad, foreach=True) if clip_grad \
            else torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    optimizer.step()
    return losses, norm


def _iteration_seed(seed: int, it: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, it, rank]).generate_state(1)[0])


def diverged(losses: dict[str, float], grad_norm: float) -> bool:
    """A step that broke the model: a non-finite gradient norm or contrastive loss. A non-finite NPR term alone is
    not one: T-NPR's ``closs`` is a mean over the rows HRS keeps, NaN when it keeps none in the batch (the
    reference's arithmetic), and contributes no gradient then (the step is the other terms'); the log records
    that NaN as it is."""
    return not math.isfinite(grad_norm) or not math.isfinite(losses.get("contrastive", losses["loss"]))


def shown_losses(got: dict[str, float], model_cfg) -> tuple[dict[str, float], bool]:
    """The losses a step logs and prints, and whether T-NPR had no rows. T-NPR's term (``npr_text``) is NaN when
    HRS keeps no row of the batch (a mean over nothing: the reference's arithmetic, kept in the model's losses for
    parity) and adds no gradient then; it is left out, and ``npr`` and ``loss`` are the finite terms that made the
    step (``npr = w * (stage1 + stage2)``, ``w`` the config's ``npr_weight``): a log of NaN says nothing."""
    text = got.get("npr_text")
    if text is None or math.isfinite(text) or not all(math.isfinite(got.get(k, 0.0)) for k in
                                                          ("npr_stage1", "npr_stage2", "contrastive", "multi_label")):
        return got, False
    npr = model_cfg.npr_weight * (got["npr_stage1"] + got["npr_stage2"])
    shown = {k: v for k, v in got.items() if k != "npr_text"}
    return {**shown, "npr": npr, "loss": got["contrastive"] + npr + got.get("multi_label", 0.0)}, True


@dataclass
class TextTrainSummary:
    """What a training run did (train-text, train-pgseg): ``first_loss`` / ``loss`` the first and last logged
    losses (their finite terms, :func:`shown_losses`); ``empty_text_npr`` the logged iterations whose T-NPR term
    had no rows (PGSeg's)."""

    iterations: int
    start: int
    seconds: float
    first_loss: float | None
    loss: float | None
    model: Path | None
    world_size: int
    pairs: int
    empty_text_npr: int = 0

    @property
    def iters_per_s(self) -> float:
        done = self.iterations - self.start
        return done / self.seconds if self.seconds > 0 else 0.0

    def notes(self) -> list[str]:
        """One-line notes the command prints before its summary line (a run's last line is its ✓ summary)."""
        if not self.empty_text_npr:
            return []
        return [f"note: T-NPR had no rows (HRS kept none) in {self.empty_text_npr} logged iteration(s): its term is "
                "NaN there and adds no gradient; the losses logged and shown are the other terms"]


def _mean_losses(losses: dict[str, Tensor], world: int) -> dict[str, float]:
    """The scalar losses, averaged over the ranks."""
    names = sorted(k for k, v in losses.items() if v.ndim == 0 and v.is_floating_point())  # not the matches
    row = torch.stack([losses[k].detach().double() for k in names])
    if world > 1:
        dist.all_reduce(row)
        row /= world
    return dict(zip(names, row.tolist()))


def load_init(model: torch.nn.Module, state: dict[str, Tensor], where: Any) -> None:
    """``--init``'s weights into ``model``: keys it lacks are left as initialised (a GroupViT release has no NPR
    prototypes); a key of no parameter here, or of another shape, is another architecture: one line."""
    own = model.state_dict()
    foreign = [k for k in state if k not in own or own[k].shape != state[k].shape]
    if foreign:
        raise VplError(f"--init {where}: {len(foreign)} tensors do not fit this model (first {foreign[0]!r}); the "
                       "model is the file's architecture with the settings given (PGSeg: --npr / --no-npr and "
                       "--groups): pass those the file was trained with, or a checkpoint of the architecture you want")
    model.load_state_dict(state, strict=False)


__all__ = ["load_init", "schedule_lr", "lr_at", "TrainStep", "gather_ranks", "make_optimizer", "train_step", "diverged",
           "shown_losses", "TextTrainSummary"]

"""train-decoder's optimisation: learning rate, losses (Eq. 14), one step, checkpoints, and DDP."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ... import io
from ...config import DecoderConfig, inert_fields
from ...config.decoder import DECODER_RECIPES
from ...decoder import (
    SegDecoder,
    balanced_ce_loss,
    block_features,
    ce_loss,
    class_regions,
    cmpa_loss,
    mask_fractions,
    present_classes,
    region_masks,
    rsc_loss,
    upsample_logits,
)
from ...device import autocast, resolve_precision
from ...runtime.numerics import run_numerics
from ...runtime.ranks import check_resumable

RESUMABLE_CHANGES = ("checkpoint_every", "val_every", "log_every", "compile")  # fields a resumed run may change


def lr_at(cfg: DecoderConfig, it: int) -> float:
    """Learning rate of iteration ``it`` (0-based): linear warm-up, then ``(1 - it/iters)^poly_power``.

    With ``warmup_ratio`` r, WeCLIP's ``PolyWarmupAdamW`` (``utils/optimizer.py``): ``lr (1 - (1 - it/W)(1 - r))``
    for ``it < W`` (no decay yet), then the poly decay."""
    if cfg.warmup_ratio is not None:
        if it < cfg.warmup_iters:
            return cfg.lr * (1 - (1 - it / cfg.warmup_iters) * (1 - cfg.warmup_ratio))
        return cfg.lr * max(0.0, 1.0 - it / cfg.iters) ** cfg.poly_power
    warm = min(1.0, (it + 1) / cfg.warmup_iters) if cfg.warmup_iters > 0 else 1.0
    return cfg.lr * warm * max(0.0, 1.0 - it / cfg.iters) ** cfg.poly_power


def make_optimizer(model: SegDecoder, cfg: DecoderConfig) -> torch.optim.Optimizer:
    """SGD (paper) or AdamW (WeCLIP) over the trainable decoder parameters (W only with train_prototypes)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: a handful of multi-tensor ops per step (torch's default only on CUDA; on the CPU it was 4 per tensor)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay,
                             foreach=True)


def compute_losses(model, feats: Tensor, target: Tensor, cfg: DecoderConfig,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Eq. 14 on one batch: the decoder under autocast (``dtype``, CUDA only), the losses in fp32.

    Args:
        model: a :class:`SegDecoder` (or its DDP wrapper).
        feats: ``[B, L, h, w, width]`` frozen features; target: ``[B, S, S]`` int64 pseudo masks (255 = ignore).

    Returns:
        ``loss``, ``ce``, (when ``lambda_rsc > 0``) ``rsc`` and (when ``lambda_proto > 0``) ``proto``, float32
        scalars with gradients.
    """
    with autocast(feats.device, dtype):
        v, logits, protos = model(feats)
    up = upsample_logits(logits, target.shape[-2:])  # [B, C + 1, S, S] float32
    ddp = _ddp_world(model)
    count = None if ddp == 1 else functools.partial(_mean_over_ranks, world=ddp)
    ce = balanced_ce_loss(up, target, count) if cfg.loss == "balanced" else ce_loss(up, target, count)
    out = {"ce": ce, "loss": cfg.lambda_ce * ce}
    if cfg.lambda_rsc > 0:
        present = present_classes(target, logits.shape[1])
        regions, region_class, valid = _gathered(class_regions(v, region_masks(logits, present), present), ddp)
        row_class = getattr(model, "module", model).row_class
        out["rsc"] = rsc_loss(regions, region_class, protos, row_class, cfg.rsc_temperature, valid)
        out["loss"] = out["loss"] + cfg.lambda_rsc * out["rsc"]
    if cfg.lambda_proto > 0:
        out["proto"] = proto_loss(getattr(model, "module", model), v, protos, target, ddp)
        out["loss"] = out["loss"] + cfg.lambda_proto * out["proto"]
    return out


# DDP (N ranks, batch B each) trains as one process with the batch N x B, up to float rounding: DDP averages the
# ranks' gradients, so a loss that is a mean over the batch is divided by the mean count over the ranks (the CE), and
# one that contrasts the regions of the batch (RSC, CMPA) is computed by every rank on every rank's regions (an
# all-gather whose backward sums the ranks' gradients into each rank's own regions). Tested: tests/test_torchrun.py.
def _ddp_world(model) -> int:
    """The ranks ``model`` trains over: DistributedDataParallel's world (also under ``--compile``, which wraps
    it), else 1."""
    wrapped = getattr(model, "_orig_mod", model)
    return dist.get_world_size() if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else 1


def _mean_over_ranks(count: Tensor, world: int) -> Tensor:
    """``count`` summed over the ranks, over ``world``: the per-rank share of the whole batch's count."""
    total = count.float()
    dist.all_reduce(total)
    return total / world


def _gathered(regions: tuple[Tensor, Tensor, Tensor], world: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`vpltool.decoder.class_regions`' ``(P [R, D], classes [R], valid [R])`` of every rank, rank by rank
    (the same fixed size R on each: the batch and the classes are the same); P keeps its gradient."""
    if world == 1:
        return regions
    embeddings, classes, valid = regions
    labels = torch.stack([classes, valid.long()])  # one collective for both (gloo gathers no bool)
    gathered = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(gathered, labels)
    labels = torch.cat(gathered, dim=1)
    return _GatherRows.apply(embeddings), labels[0], labels[1].bool()


class _GatherRows(torch.autograd.Function):
    """``[R, D]`` of every rank -> ``[world * R, D]``, rank by rank; backward: the gradients of every rank's loss
    summed (an all-reduce), this rank's rows kept. (torch.distributed.nn's all_gather binds the group it was
    imported under, stale once a command's group is gone.)"""

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:
        ctx.rank, ctx.n = dist.get_rank(), len(rows)
        out = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(out, rows.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def proto_loss(inner: SegDecoder, v: Tensor, protos: Tensor, target: Tensor, world: int = 1) -> Tensor:
    """CMPA on one batch: pseudo-mask masked average pooling of ``V [B, D, h, w]`` per (image, class), then
    :func:`vpltool.decoder.cmpa_loss` against the class rows of ``protos [N, D]`` and the image-prototype bank
    (``world``: DDP's, whose ranks' regions are gathered)."""
    present = present_classes(target, inner.n_classes)
    regions, region_class, valid = _gathered(
        class_regions(v, mask_fractions(target, inner.n_classes, v.shape[-2:]), present), world)
    return cmpa_loss(regions, region_class, protos[inner.class_rows], inner.proto_bank, inner.proto_bank_valid,
                     inner.proto_log_temp, valid=valid)


def train_step(model, optimizer: torch.optim.Optimizer, feats: Tensor, target: Tensor, cfg: DecoderConfig,
               lr: float, dtype: torch.dtype = torch.float32, scaler=None, losses_fn=None) -> dict[str, Tensor]:
    """One optimisation step at learning rate ``lr``; returns the batch's losses before the step, detached float32
    scalars left on the device (reading them would make the host wait for the step: :class:`LossWindow`).

    ``losses_fn``: the compiled form of :func:`compute_losses` (:func:`compile_iteration`); None = this module's
    own."""
    for group in optimizer.param_groups:
        group["lr"] = lr  # a Python float: SGD / AdamW read it on the host, no device value to wait for
    model.train()
    losses = (losses_fn or compute_losses)(model, feats, target, cfg, dtype)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16 only: bf16 has fp32's range and needs no loss scaling
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        losses["loss"].backward()
        optimizer.step()
    return {k: v.detach().float() for k, v in losses.items()}


def compile_iteration(mode: str, world: int, model):
    """``--compile mode``: ``(model, losses_fn, frozen_fn)`` for the training loop (:func:`train_step`'s
    ``losses_fn``, the frozen forward :func:`~vpltool.decoder.block_features`).

    Compiled: :func:`compute_losses` (the decoder's forward and every loss, so their backward too) and the frozen
    forward, each one graph without breaks (tests/test_decoder.py), so that ``reduce-overhead`` replays an iteration's
    kernels as CUDA graphs: the loop is bound by the host's launches on a GPU. Under DDP only the decoder module is
    compiled (after DDP: its buckets split the graph), the losses stay eager. ``none``: nothing.
    """
    if mode == "none":
        return model, None, block_features
    options = {"mode": None if mode == "default" else mode}
    if world > 1:
        return torch.compile(model, **options), None, block_features
    frozen = torch.compile(block_features, **options)
    if mode == "reduce-overhead":  # a new CUDA-graph iteration starts at the losses' call, whose graph may reuse the
        frozen = _copied(frozen)  # frozen graph's output memory: the features leave it first (one copy, ~40 MB)
    return model, torch.compile(compute_losses, **options), frozen


def _copied(fn):
    def call(*args, **kwargs):
        return fn(*args, **kwargs).clone()

    return call


@dataclass
class Read:
    """What one :meth:`LossWindow.read` found: the losses of its last iteration (mean over processes) and, when
    the run diverged, the first iteration whose losses are not finite and those losses; or, when the losses were
    finite but the weights checked before a checkpoint were not, the window's last iteration and
    ``{"weights": nan}``."""

    iteration: int
    losses: dict[str, float]
    diverged_at: int | None = None
    bad: dict[str, float] | None = None


class LossWindow:
    """The losses of the iterations since the last read, kept on the device: :meth:`read` waits for the device
    once, every few iterations, instead of once per step, and still names the first non-finite iteration exactly.

    ``add`` costs one stack of the step's scalars (no host read). ``read`` averages the window over the processes
    (one ``all_reduce`` of a ``[k, terms]`` tensor, so every rank sees the same values and stops together), then
    reads it with one ``.item()`` (the status) and a ``tolist`` of the window already waited for.
    """

    def __init__(self) -> None:
        self.iterations: list[int] = []
        self.values: list[Tensor] = []
        self.names: list[str] = []

    def add(self, iteration: int, losses: dict[str, Tensor]) -> None:
        self.names = list(losses)
        self.iterations.append(iteration)
        self.values.append(torch.stack(list(losses.values())))

    def read(self, world: int = 1, weights: list[Tensor] | None = None) -> Read:
        """Read and empty the window; ``weights`` (the parameters, before a checkpoint) are checked finite too."""
        window = torch.stack(self.values).double()  # [k, terms]
        if world > 1:
            dist.all_reduce(window)
            window /= world
        finite = torch.isfinite(window).all(1)
        status = torch.where(finite.all(), -1, (~finite).int().argmax())  # first bad row, -1 = none
        if weights:
            norm = torch.nn.utils.get_total_norm(weights, foreach=True)  # not finite when any weight is not
            status = torch.where((status < 0) & ~torch.isfinite(norm), len(self.values), status)
        first = int(status)  # the read's one wait for the device
        rows, iterations = window.tolist(), self.iterations
        self.iterations, self.values = [], []
        last = dict(zip(self.names, rows[-1]))
        if first < 0:
            return Read(iterations[-1], last)
        if first == len(rows):  # finite losses, spoilt weights: the last step blew them up
            return Read(iterations[-1], last, iterations[-1], {"weights": float("nan")})
        return Read(iterations[-1], last, iterations[first], dict(zip(self.names, rows[first])))


def save_checkpoint(path: Path, model: SegDecoder, optimizer: torch.optim.Optimizer, iteration: int,
                    classes, meta: dict[str, Any]) -> Path:
    """Model and optimizer state in one file (:func:`vpltool.io.write_checkpoint`), both per file parameter
    (:meth:`SegDecoder.file_parameters`: step 2's stacked parameters as L rows each)."""
    return io.write_checkpoint(path, model.state_dict(), optimizer_state_to_file(model, optimizer.state_dict()),
                               iteration, classes=classes, config=meta["decoder_config"], **meta)


def load_checkpoint(path: Path, model: SegDecoder, optimizer: torch.optim.Optimizer) -> io.TensorFile:
    """Restore model and optimizer from :func:`save_checkpoint`'s file; returns the file (``meta('iteration')``)."""
    model_state, optim_state, f = io.read_checkpoint(path)
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(optimizer_state_from_file(model, optim_state))
    return f


def _file_layout(model: SegDecoder) -> list[tuple[int, int | None]]:
    """Per trainable file parameter, in files' order: ``(index among the optimizer's parameters, block row or
    None)`` (:func:`make_optimizer` takes the trainable parameters in the module's order)."""
    params = dict(model.named_parameters())
    index = {name: i for i, name in enumerate(n for n, p in model.named_parameters() if p.requires_grad)}
    return [(index[name], row) for _, name, row in model.file_parameters() if params[name].requires_grad]


def optimizer_state_to_file(model: SegDecoder, state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict of the module's parameters -> one per file parameter: a stacked parameter's slots
    (momentum, Adam's moments) become one row each, its scalar slots (Adam's step) repeat (each row its own tensor:
    a file holds no two views of one)."""
    layout = _file_layout(model)
    slots = {}
    for f, (j, row) in enumerate(layout):
        if j in state["state"]:
            slots[f] = {k: _row(v, row) for k, v in state["state"][j].items()}
    groups = [{**g, "params": [f for f, (j, _) in enumerate(layout) if j in members]}
              for g, members in ((g, set(g["params"])) for g in state["param_groups"])]
    return {"state": slots, "param_groups": groups}


def _row(value: Any, row: int | None) -> Any:
    """Slot ``value`` of a file parameter: row ``row`` of a stacked parameter's slot (a copy; a scalar slot copied
    whole), or the slot itself for a parameter that is not stacked (``row`` None)."""
    if row is None or not torch.is_tensor(value):
        return value
    return (value[row] if value.dim() else value).clone()


def optimizer_state_from_file(model: SegDecoder, state: dict[str, Any]) -> dict[str, Any]:
    """:func:`optimizer_state_to_file` undone: the rows of a stacked parameter's slots stacked again. A file whose
    parameters are not this module's (another architecture) is left as it is, to the optimizer's own check."""
    layout = _file_layout(model)
    n_files = sum(len(g["params"]) for g in state["param_groups"])
    if n_files != len(layout):
        return state
    stacked = {j for j, row in layout if row is not None}
    rows: dict[int, list[dict[str, Any]]] = {}
    for f, (j, _) in enumerate(layout):
        if f in state["state"]:
            rows.setdefault(j, []).append(state["state"][f])
    slots = {j: {k: torch.stack([r[k] for r in parts]) if j in stacked and torch.is_tensor(v) and v.dim() else v
                 for k, v in parts[0].items()} for j, parts in rows.items()}
    groups = [{**g, "params": sorted({layout[f][0] for f in g["params"]})} for g in state["param_groups"]]
    return {"state": slots, "param_groups": groups}


# what the inputs of a run are called on the command line (messages)
INPUT_OPTIONS = {"pseudo": "PSEUDO (the pseudo masks)", "prototypes": "--prototypes", "dataset": "the dataset",
                 "content": "the dataset's images and labels", "clip_weights": "the CLIP's weights",
                 "dino_weights": "--dino-weights"}


def checked_numerics(runtime, device, protos: io.Prototypes, masks: tuple[Path, dict] | None) -> dict[str, Any]:
    """This run's dtype and numeric mode (:func:`vpltool.runtime.numerics.run_numerics`; ``--precision auto``: the dtype
    the inputs record), refused (one line) where the prototypes or the pseudo masks (``(folder, its record)``;
    None: WeCLIP's online masks) were made in another. The trainer computes at its ``dtype``
    (:func:`followed_runtime`)."""
    made = [protos.made(), *([] if masks is None else io.folder_made(masks[0], masks[1], masks[1]["stage"],
                                                                      items=False))]
    dtype = resolve_precision(runtime.precision, device, io.recorded_dtype(*made))  # auto: the masks' dtype
    numerics = run_numerics(dtype, runtime.precision, device)
    io.check_numerics(numerics, *made)
    return numerics


def followed_runtime(runtime, numerics: dict[str, Any]):
    """``runtime`` with ``--precision auto`` resolved to the dtype :func:`checked_numerics` followed, so that the
    trainer's frozen blocks run at it (its record still says auto: the numerics keep ``precision``)."""
    from dataclasses import replace

    if runtime.precision != "auto" or numerics.get("dtype") is None:
        return runtime
    return replace(runtime, precision=numerics["dtype"])


def _check_resumable(f: io.TensorFile, cfg: DecoderConfig, inputs: dict[str, Any], world: int = 1,
                     numerics: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint made with other settings, inputs (by content, :func:`vpltool.io.changed_inputs`) or world
    size (the batch plan and the global batch follow from it), naming every difference at once (a second try must
    not meet a second refusal): each option with its value there and here, and each input that changed; first, one
    made in another dtype or numeric mode than ``numerics`` (this run's)."""
    if numerics is not None:
        io.check_numerics(numerics, (f.path, io.header_numerics(f.raw_meta), "train-decoder"))
    old = f.meta("decoder_config")
    defaults = asdict(DecoderConfig())  # a field newer than the checkpoint reads as its default
    ignored = set(RESUMABLE_CHANGES) | set(inert_fields(cfg))  # an option without effect is never compared
    if "dino_weights" in inputs:  # compared by content, as an input (another path to the same file is the same)
        ignored.add("dino_weights")
    recipe = old.get("recipe", defaults["recipe"])
    if recipe != cfg.recipe:  # what each recipe sets follows from it (some of it has no option): named once, as it
        ignored |= {"recipe", *DECODER_RECIPES.get(recipe, {}), *DECODER_RECIPES.get(cfg.recipe, {})}
    said = [f"--recipe {recipe} there, {cfg.recipe} here"] if recipe != cfg.recipe else []
    said += [f"--{k.replace('_', '-')} {_shown(old.get(k, defaults[k]))} there, {_shown(v)} here"
            for k, v in asdict(cfg).items() if k not in ignored and old.get(k, _plain(defaults[k])) != _plain(v)]
    check_resumable(f, said, inputs, INPUT_OPTIONS, world, cfg.batch_size)


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v



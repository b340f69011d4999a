"""`vpltool train-decoder`: VPL phase 2, the decoder on the frozen CLIP supervised by `crf` pseudo masks.

Per iteration (docs/decoder.md): a batch of augmented crops (random rescale, flip, crop padded with ignore: made
in DataLoader workers, sent as uint8, normalised on the device) runs through the frozen CLIP blocks under
``no_grad`` (on CUDA an image tower stored in bf16, fused attention); the decoder gives ``V`` and ``A``;
``L = lambda_ce L_ce(M, A) + lambda_rsc L_RSC`` (Eq. 14); SGD (or AdamW) with linear warm-up and poly decay.

* No host wait per iteration: the losses stay on the device (:class:`.steps.LossWindow`) and are read at the log
  lines, checkpoints and validations; a read names the first non-finite iteration, and the read before each
  checkpoint also checks the weights, so a checkpoint is always made from finite weights.
* The frozen CLIP is the one that made the prototypes (their file's ``model`` metadata).
* Determinism: the batch order is DistributedSampler's (seeded by seed + epoch), the augmentation of a sample is
  seeded by (seed, epoch, index) and the torch RNG (dropout) by (seed, iteration, rank), so a resumed run
  repeats the uninterrupted one exactly without storing any RNG state.
* ``torchrun --nproc-per-node N``: env:// init, NCCL on GPUs / gloo on CPU, DistributedDataParallel; rank 0
  alone writes the log, checkpoints and the final decoder.
* ``cache_features``: the frozen features of every image resized to ``crop x crop`` and of its mirror are computed
  once; iterations then cost no CLIP forward but see no rescale and no crop.

Modules: :mod:`.inputs` (what the run reads and records, its run folder), :mod:`.data` (augmentation, batch plan,
loading, feature cache: the one owner of the data path), :mod:`.steps` (learning rate, losses, step, loss reads,
checkpoints, DDP), :mod:`.online` and :mod:`.par` (WeCLIP's masks made in the loop), :mod:`.board` (TensorBoard);
this one runs the stage. Outputs in ``out_dir``: ``decoder.safetensors`` (kind ``decoder``),
``checkpoints/last.safetensors`` (model + optimizer, kind ``decoder-checkpoint``), ``log.jsonl`` and ``curve.png``;
with ``tensorboard``, event files there.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ... import io
from ...config import PSEUDO_STAGES, DecoderConfig, RuntimeConfig, to_params
from ...data import open_dataset, open_recorded
from ...decoder import SegDecoder, block_features, feature_blocks, refresh_bank, save_decoder
from ...device import resolve_precision, seed_everything
from ...errors import VplError
from ...io.beside import aside_path, built_beside
from ...models import ClipBackbone, DinoSpec, ModelSpec, check_model, load_model
from ...models.backbones.gradcam import PrototypeRows
from ...runtime.ranks import process_group
from .board import Board, draw_curve, memory_gib
from .data import (
    BatchPlan,
    FeatureCache,
    PseudoMaskSet,
    augment,
    batches_per_epoch,
    check_supervision,
    fixed_view,
    held_out_label_map,
    normalize_views,
    training_views,
)
from .inputs import (
    CHECKPOINT,
    WRITES,
    check_crop,
    drop_classes,
    online_dataset,
    prepare_out,
    prompt_recipe,
    run_inputs,
    training_pairs,
    warn_held_out,
)
from .online import LabelledImages, labelled_views, online_step
from .steps import (
    LossWindow,
    Read,
    _check_resumable,
    checked_numerics,
    compile_iteration,
    compute_losses,
    followed_runtime,
    load_checkpoint,
    lr_at,
    make_optimizer,
    save_checkpoint,
    train_step,
)
from .validation import evaluate, predict_labels

STAGE = "train-decoder"
MASK_STAGES = (*PSEUDO_STAGES, "predict")  # pseudo masks: crf's, sam-pseudo's, or a decoder's own (self-training)


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
    first_loss: float | None = None  # first training loss this run logged (to compare with ``loss``)

    @property
    def iters_per_s(self) -> float:
        done = self.iterations - self.start
        return done / self.seconds if self.seconds > 0 else 0.0


def dino_width(dino) -> int:
    """The width of a frozen DINO's patch tokens (timm's ``num_features``)."""
    return int(getattr(dino.model, "num_features", None) or dino.model.embed_dim)


def _iteration_seed(seed: int, it: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, it, rank]).generate_state(1)[0])


class _Run:
    """The state of one training process: frozen CLIP, decoder, optimizer, data source, log."""

    def __init__(self, cfg: DecoderConfig, runtime: RuntimeConfig, rank: int, world: int, device: torch.device,
                 protos: io.Prototypes, pairs, out_dir: Path, inputs: dict[str, Any], backbone: ClipBackbone | None,
                 label_map: np.ndarray | None = None, extra_meta: dict[str, Any] | None = None):
        self.cfg, self.runtime, self.rank, self.world, self.device = cfg, runtime, rank, world, device
        self.label_map, self.extra_meta, self.cache, self.feature_store = label_map, dict(extra_meta or {}), None, None
        self.protos, self.pairs, self.out_dir, self.inputs = protos, pairs, out_dir, inputs
        self.dtype = resolve_precision(runtime.precision, device)
        self.online = cfg.pseudo == "online"
        # frozen: its image tower is kept in the run's precision (a copy when the caller's backbone is given); with
        # online masks in float32, under autocast: GradCAM re-runs the last block in float32
        bb = backbone or load_model("clip", ModelSpec.from_identity(protos.model, protos.path), device)
        bb = bb if self.online else bb.with_image_tower_in(self.dtype)
        stats = cfg.input_stats()  # WeCLIP: ImageNet's mean / std
        self.bb = bb.with_normalization(*stats) if stats else bb
        self.rows = PrototypeRows(protos, device) if self.online else None  # GradCAM's softmax rows
        check_crop(cfg.crop_size, self.bb.patch_size)
        self.blocks = feature_blocks(self.bb.n_blocks, cfg.include_last_block)
        if cfg.read_blocks:  # WeCLIP+: the last block before the last alone
            self.blocks = self.blocks[-cfg.read_blocks:]
        dino = load_model("dino", DinoSpec(cfg.dino_model, cfg.dino_weights), device) if cfg.dino_model else None
        seed_everything(cfg.seed)
        self.model = SegDecoder(cfg, in_width=self.bb.width, n_inputs=len(self.blocks), prototypes=protos.vectors,
                                row_class=protos.row_class, temperature=protos.temperature,
                                dino_width=None if dino is None else dino_width(dino)).to(device)
        self.model.dino_backbone = dino
        self.optimizer = make_optimizer(self.model, cfg)
        fp16 = device.type == "cuda" and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.log_path, self.first_loss, self.last_loss, self.val_miou = out_dir / "log.jsonl", None, None, None
        self.seconds, self.cache_seconds = 0.0, 0.0  # training loop; building the feature cache
        self.saved_at = 0  # iteration of the last checkpoint written (0 = none yet)
        self.board: Board | None = None  # TensorBoard events (rank 0, --tensorboard)
        self.losses_fn, self.frozen_fn = None, block_features  # --compile: compile_iteration

    @property
    def inner(self) -> SegDecoder:
        """The decoder itself, also when wrapped in DistributedDataParallel and/or compiled."""
        model = getattr(self.model, "_orig_mod", self.model)
        return getattr(model, "module", model)

    def meta(self) -> dict[str, Any]:
        # to_params: an option without effect in this combination is not recorded (as every stage records)
        return {"decoder_config": to_params(self.cfg), "inputs": self.inputs, "model": self.protos.model,
                "world_size": self.world, **{k: v for k, v in self.extra_meta.items() if k == io.NUMERICS}}

    def restore(self, ckpt: Path | None) -> int:
        """Load the checkpoint (if any) and trim the log to it; returns the first iteration to run."""
        start = 0
        if ckpt is not None:  # (its settings and inputs were checked before the models loaded)
            start = int(load_checkpoint(ckpt, self.model, self.optimizer).meta("iteration"))
        if self.rank == 0:
            io.trim_log(self.log_path, start)
        return start

    def batches(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``(frozen features [B, L, h, w, width], masks [B, S, S])`` on the device, one per iteration.

        With ``cache_features`` the cache is built here, before the first batch (``self.cache_seconds``).
        """
        cfg = self.cfg
        plan = BatchPlan(len(self.pairs), cfg.batch_size, self.world, self.rank, cfg.seed, start, cfg.iters)
        if cfg.cache_features:
            t0 = time.perf_counter()
            cache = FeatureCache.of_run(self)  # with --feature-store: read, or built once and kept
            self.cache_seconds = time.perf_counter() - t0
            self.cache = cache
            return (tuple(t.to(self.device, non_blocking=True) for t in cache.batch(keys, cfg)) for keys in plan)
        workers = self.runtime.loader_workers(self.device, len(plan) * cfg.batch_size)  # 1: in this process
        if self.online:  # (pixels, the crops' image labels): the frozen pass runs in the step, with GradCAM
            return labelled_views(LabelledImages(self.pairs, cfg), plan, workers, self.device, self.bb.mean,
                                  self.bb.std)
        data = PseudoMaskSet(self.pairs, cfg, self.label_map)
        views = training_views(data, plan, workers, self.device, self.bb.mean, self.bb.std)
        return ((self.frozen_fn(self.bb, p, self.blocks, self.dtype), m) for p, m in views)

    def bank_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """CMPA's bank source: every training image at ``crop x crop``, unflipped (the cache's views, or computed
        now), as ``(feats, masks)`` batches on the device."""
        if self.cache is not None:
            views = self.cache.plain_views(self.cfg.batch_size)
        else:
            views = ((f, torch.from_numpy(m.copy()).long()[None]) for f, m in (
                fixed_view(self.bb, image, mask, self.blocks, self.cfg.crop_size, self.dtype, self.label_map)
                for _, image, mask in self.pairs))
        return ((f.to(self.device), m.to(self.device)) for f, m in views)

    def log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            io.append_log(self.log_path, record)

    def validate(self, items, n: int) -> None:
        """Single-scale mIoU on the validation items (rank 0), logged and drawn."""
        self.val_miou = evaluate(self.bb, self.inner.eval(), self.blocks, items, self.cfg.crop_size, self.dtype,
                                 self.label_map)
        self.log({"iter": n, "val_miou": self.val_miou})
        draw_curve(io.read_log(self.log_path), self.out_dir / "curve.png")
        if self.board is not None:
            self.board.validation(n, self.val_miou)

    def reads_at(self, n: int) -> tuple[bool, bool, bool]:
        """(log line, checkpoint, validation / previews) at iteration ``n``; the losses are read when any is due.
        The same on every rank (a read averages over the processes)."""
        cfg = self.cfg
        last = n == cfg.iters
        return (n % cfg.log_every == 0 or last or n == 1,  # a first line at once: the run is alive
                n % cfg.checkpoint_every == 0 or last, n % cfg.val_every == 0 or last)

    def loop(self, start: int, val_items, on_iter, ready: Callable[[], None] | None = None) -> None:
        """Iterations ``start`` to ``cfg.iters``; ``ready()`` once the batches are ready (the feature cache built),
        when the loop's clock starts: the progress's rate and the summary's it/s then measure the same time."""
        cfg, batches, window = self.cfg, self.batches(start), LossWindow()
        if ready is not None:
            ready()
        # CUDA graphs (--compile reduce-overhead): an iteration's graphs replay into the same memory; say where an
        # iteration begins, before its frozen forward (the batches generator runs it at the loop's head)
        step_begin = torch.compiler.cudagraph_mark_step_begin if cfg.compile == "reduce-overhead" else lambda: None
        step_begin()
        t0 = time.perf_counter()
        mark = (start, t0)  # the iteration and time the last read's own work ended: the speed's baseline
        for it, (feats, target) in zip(range(start, cfg.iters), batches):
            if cfg.lambda_proto > 0 and it > 0 and it % cfg.proto_period == 0:  # CMPA: rebuild the image bank
                refresh_bank(self.inner, self.bank_batches(), seed=cfg.seed)
            torch.manual_seed(_iteration_seed(cfg.seed, it, self.rank))  # dropout: same stream after --resume
            lr = lr_at(cfg, it)
            n = it + 1
            if self.online:  # feats, target: the crops' pixels and image labels
                window.add(n, online_step(self.model, self.optimizer, self.bb, self.blocks, self.rows,
                                          self.protos.temperature, feats, target, cfg, it, lr, self.dtype))
            else:
                window.add(n, train_step(self.model, self.optimizer, feats, target, cfg, lr, self.dtype, self.scaler,
                                         self.losses_fn))  # add() copies the losses out of the graph's memory
            step_begin()
            record = {"iter": n}
            logged, checkpoint, val = self.reads_at(n)
            if logged or checkpoint or val:
                got = window.read(self.world, list(self.inner.parameters()) if checkpoint else None)
                now = time.perf_counter()
                self.check_diverged(got)
                if logged:
                    record = {"iter": n, **got.losses, "lr": lr, "sec": round(now - t0, 3)}
                    self.last_loss = got.losses["loss"]
                    self.first_loss = got.losses["loss"] if self.first_loss is None else self.first_loss
                    self.log(record)
                    if self.board is not None:
                        speed = (n - mark[0]) / (now - mark[1]) if now > mark[1] else None
                        self.board.scalars(n, got.losses, lr, speed, memory_gib(self.device))
                self.side_work(n, checkpoint, val, val_items)
                mark = (n, time.perf_counter())
            self.seconds = time.perf_counter() - t0
            if on_iter and self.rank == 0:
                on_iter(n, record)

    def side_work(self, n: int, checkpoint: bool, val: bool, val_items) -> None:
        """Rank 0's work at a read: validation, previews, the checkpoint."""
        if self.rank != 0:
            return
        if val and val_items:
            self.validate(val_items, n)
        if val and self.board is not None:
            self.board.previews(n, self.predict_labels)
        if checkpoint:
            save_checkpoint(self.out_dir / CHECKPOINT, self.inner, self.optimizer, n, self.protos.classes, self.meta())
            self.saved_at = n

    def predict_labels(self, image: np.ndarray) -> np.ndarray:
        """``[H, W]`` uint8 classes of a photo by the decoder as it is now (validation's protocol)."""
        return predict_labels(self.bb, self.inner.eval(), self.blocks, image, self.cfg.crop_size, self.dtype)

    def check_diverged(self, got: Read) -> None:
        """Stop (one line, exit 2) at a read that found a non-finite loss (or, before a checkpoint, non-finite
        weights): that step already spoilt the weights, so nothing more is written; the last checkpoint (made from
        finite weights: the read before it checked them) is kept for --resume."""
        if got.diverged_at is None:
            return
        bad = "the weights are no longer finite" if "weights" in got.bad else \
            ", ".join(f"{k} {v}" for k, v in got.bad.items() if not math.isfinite(v))
        ckpt = self.out_dir / CHECKPOINT
        kept = ("the folder's result from before --overwrite is put back, this run's checkpoints dropped"  # beside
                if aside_path(self.out_dir).is_dir() else f"the last good checkpoint {ckpt} (iteration {self.saved_at})"
                " is kept" if ckpt.is_file() else "no checkpoint was written")
        raise VplError(f"{self.out_dir}: training diverged at iteration {got.diverged_at} ({bad}); {kept}; lower "
                       "--lr or --lambda-rsc and re-run with --overwrite")

    def finish(self) -> Path | None:
        if self.rank != 0:
            return None
        path = save_decoder(self.out_dir / "decoder.safetensors", self.inner, self.cfg, classes=self.protos.classes,
                            model_identity=self.protos.model, blocks=self.blocks, dataset=self.inputs["dataset"],
                            inputs=self.inputs, prototypes_source=self.protos.source, iterations=self.cfg.iters,
                            val_miou=self.val_miou, **self.extra_meta)
        draw_curve(io.read_log(self.log_path), self.out_dir / "curve.png")
        return path


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
    on_start: Callable[[int, int], None] | None = None,
    backbone: ClipBackbone | None = None,
    tensorboard: str | Path | None = None,
    split: str | None = None, feature_store: str | Path | None = None,
) -> TrainSummary:
    """Train the decoder on the pseudo masks of a `crf` folder (or, with ``cfg.pseudo == "online"``, WeCLIP's
    masks made in the loop from a dataset's image labels); write ``out_dir/decoder.safetensors``.

    Args:
        pseudo_dir: a finished `crf` (or `predict`) folder; its ``_stage.json`` names the dataset of the images.
            With online masks (``--recipe weclip``): the dataset itself (its ``split``, default train).
        prototypes: a prototypes file (vision or text: the "text prototypes in phase 2" ablation); its ``model``
            metadata names the frozen CLIP.
        cfg: see :class:`DecoderConfig`; ``runtime.workers`` = data loading processes (1 = in this process, 0 =
            one per core, None = auto: :meth:`RuntimeConfig.loader_workers`), ``runtime.batch_size`` is not used
            (``cfg.batch_size`` is).
        resume: continue from ``out_dir/checkpoints/last.safetensors`` (a fresh start when there is none).
        val_split: a split of the same dataset with GT masks, scored every ``cfg.val_every`` iterations.
        on_iter: called on rank 0 after every iteration with ``(iteration, log record)``. on_start: called on
            rank 0 with ``(cfg.iters, first iteration)`` once the inputs and the output folder passed their checks,
            the checkpoint (``--resume``) is loaded and the feature cache built: when the iterations begin.
        backbone: reuse an already loaded CLIP; it must be the one the prototypes record (left as it is: the run
            works on a copy when its precision differs).
        tensorboard: a folder for TensorBoard event files (:mod:`.board`); needs the ``tensorboard`` extra.
        feature_store: ``--feature-store``: the cached features kept there by content (:mod:`.store`); None: not kept.
    """
    pseudo_dir, out_dir = Path(pseudo_dir), Path(out_dir)
    online = cfg.pseudo == "online"
    if online:  # WeCLIP: image labels only, the masks are made in the loop
        dataset = online_dataset(pseudo_dir, split, cfg)
        if cfg.dino_model:  # WeCLIP+: its DINO's weights, before any output or model (one line when offline)
            check_model("dino", DinoSpec(cfg.dino_model, cfg.dino_weights))
            if cfg.dino_weights not in ("hub", "none"):  # a file: by an absolute path, so predict finds it anywhere
                cfg = replace(cfg, dino_weights=str(Path(cfg.dino_weights).expanduser().resolve()))
        dataset_id = dataset.identity()
    else:
        record = io.read_stage_record(pseudo_dir, MASK_STAGES)
        dataset = open_recorded(pseudo_dir)  # first: one line for a record that names no dataset
        dataset_id = record["inputs"]["dataset"]
        warn_held_out(pseudo_dir, dataset_id)
    dino_file = cfg.dino_weights if cfg.dino_model and cfg.dino_weights not in io.NOT_FILES else None
    io.check_outputs(STAGE, {"--out": (out_dir, "stage"),
                             "--out checkpoint": (out_dir / CHECKPOINT, "file", "decoder-checkpoint"),
                             **{option: (out_dir / name, "written") for option, name in WRITES.items()},
                             "--tensorboard": (tensorboard, "side")},
                     inputs={"the dataset" if online else "the pseudo-mask folder": pseudo_dir,
                             "--prototypes": prototypes, "--dino-weights": dino_file},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    if tensorboard is not None:
        io.check_tensorboard()
        io.check_events_folder(tensorboard, out_dir, resuming=resume and (out_dir / CHECKPOINT).is_file())
    # WeCLIP's GradCAM scores text prototypes (its classifier's rows are the class names' text embeddings)
    protos = io.read_prototypes(prototypes, classes=dataset.classes, source="text" if online else None,
                                option=f"--prototypes (--recipe {cfg.recipe})")
    if online and not len(protos.background_rows()):  # GradCAM's softmax runs over the background rows too
        raise VplError(f"--prototypes {prototypes}: no background row; --recipe {cfg.recipe} scores each image's "
                       "classes against the background: pass text prototypes made with background words "
                       "(`vpltool text-prototypes --background ...`)")
    # before any output: the crop against the patch size, and the CLIP's weights against the prototypes' record
    check_crop(cfg.crop_size, ModelSpec.from_identity(protos.model, protos.path).vision_value("patch_size"))
    label_map = held_out_label_map(list(dataset.classes), cfg.ignore_classes, dataset_id["root"])
    extra_meta = {"prompts": prompt_recipe(protos)}  # what `predict --classes` encodes new names with
    if cfg.ignore_classes:
        protos = drop_classes(protos, cfg.ignore_classes)
        extra_meta["held_out"] = list(cfg.ignore_classes)
    if online:  # (id, image, image labels)
        pairs = [(it.id, it.image, tuple(it.labels)) for it in dataset.items]
    else:
        pairs = training_pairs(dataset, pseudo_dir)
    inputs = run_inputs(pseudo_dir, pairs, protos, dataset, dataset_id, cfg)
    val_items = []
    if val_split is not None:
        val_set = open_dataset(pseudo_dir, val_split) if online else open_recorded(pseudo_dir, val_split)
        val_items = [it for it in val_set.items if it.gt is not None]
        if not val_items:
            raise VplError(f"{dataset_id['root']}: split {val_split!r} has no GT masks to validate on")
    if not online:
        check_supervision(pairs, pseudo_dir, len(dataset.classes))
    with process_group(runtime.device) as (rank, world, device):
        batches_per_epoch(len(pairs), cfg.batch_size, world, pseudo_dir)  # before anything is created
        if world > 1 and cfg.dino_model:
            raise VplError("--recipe weclip+ trains in one process (its two-branch step runs outside "
                           "DistributedDataParallel); run it without torchrun")
        numerics = checked_numerics(runtime, device, protos, None if online else (pseudo_dir, record))
        io.make_folder(out_dir)
        with io.output_lock(out_dir) if rank == 0 else contextlib.nullcontext(), \
                built_beside(out_dir, "decoder.safetensors", runtime.overwrite and not resume, alone=world == 1):
            ckpt = prepare_out(out_dir, resume, runtime.overwrite, rank, world)
            if ckpt is not None:  # before any model loads: a refused resume costs nothing and leaves the folder
                _check_resumable(io.read_checkpoint(ckpt, header_only=True)[2], cfg, inputs, world, numerics)
            run = _Run(cfg, followed_runtime(runtime, numerics), rank, world, device, protos, pairs, out_dir, inputs,
                       backbone, label_map, {**extra_meta, io.NUMERICS: numerics})  # auto: the masks' dtype
            run.feature_store = None if feature_store is None else Path(feature_store)
            start = run.restore(ckpt)
            # a resumed run counts on from its checkpoint, and from when the iterations begin
            ready = (lambda: on_start(cfg.iters, start)) if on_start and rank == 0 else None
            if world > 1:
                run.model = torch.nn.parallel.DistributedDataParallel(
                    run.model, device_ids=[device.index] if device.type == "cuda" else None)
            run.model, run.losses_fn, run.frozen_fn = compile_iteration(cfg.compile, world, run.model)  # after DDP
            if tensorboard is not None and rank == 0:
                shown = [(it.id, it.image) for it in val_items] or [(i, image) for i, image, _ in pairs]
                run.board = Board(Path(tensorboard), STAGE, shown, start, run=out_dir)
            try:
                run.loop(start, val_items, on_iter, ready)
                path = run.finish()
            finally:
                if run.board is not None:
                    run.board.close()
    return TrainSummary(iterations=cfg.iters, start=start, seconds=run.seconds, loss=run.last_loss,
                        val_miou=run.val_miou, decoder=path, world_size=world,
                        cache_seconds=run.cache_seconds, first_loss=run.first_loss)


__all__ = [
    "STAGE", "MASK_STAGES", "draw_curve", "TrainSummary", "evaluate", "run_train_decoder", "BatchPlan",
    "FeatureCache", "PseudoMaskSet", "augment", "normalize_views", "training_views", "compute_losses", "lr_at",
    "drop_classes", "prompt_recipe", "make_optimizer", "train_step", "LossWindow", "save_checkpoint", "load_checkpoint",
]  # fmt: skip

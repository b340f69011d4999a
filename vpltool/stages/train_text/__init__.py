"""`vpltool train-text --family NAME` (PGSeg's alias `train-pgseg`): a text-supervised family trained from
image–text pairs alone, by one loop for every family.

The loop is PGSeg's reference's (Ferenas/PGSeg 9f167cd, main_pg_seg.py ``train_one_epoch``), per iteration: a batch
of pairs (RandomResizedCrop + horizontal flip, ImageNet normalisation: ``deit_aug: false`` in default_pgseg.yml, so
its RandAugment / colour jitter / random erasing keys are not applied), the family's ``forward_train`` (PGSeg: the
image–text contrastive loss over every rank's batch, plus NPR's terms), backward, gradient norm clipped to
``clip_grad``, AdamW over the parameters that train, then the cosine schedule's ``step_update(epoch * steps +
idx)``: the rate of step ``i`` is the schedule's value at ``i - 1`` (its warm-up start at step 0), as timm's
``CosineLRScheduler`` (``t_in_epochs=False``) gives it.

* The model comes from the config's family (``cfg.family``, through :func:`_family`: the registry's
  :class:`~vpltool.models.text.family.TextSegFamily`): its model config (``model_config``), tokenizer,
  ``build_model``, ``forward_train(model, images, tokens, gather, keys)`` and checkpoint files; the config's
  class names the files (``FINAL``, ``CHECKPOINT_KIND``) and the stage its folders record (``STAGE``: PGSeg's
  ``train-pgseg``, so that every run of then resumes).
* Determinism: an epoch's order is a seeded permutation (:func:`vpltool.data.pairs.epoch_order`) cut into global
  batches and each global batch into the ranks' shares, a sample's augmentation is seeded by (seed, epoch, index)
  and the torch RNG (gumbel noise, drop path) by (seed, iteration, rank): a resumed run repeats the uninterrupted
  one bit for bit, and N ranks at batch B see the samples one process sees at batch N x B.
* ``torchrun``: DistributedDataParallel (no buffer sync at each forward, ``find_unused_parameters=True`` as the
  reference: :func:`_data_parallel`), the model's cross-rank gather is torch's functional autograd all-gather (the
  reference's ``dist_collect``); rank 0 alone writes the log, checkpoints and the final model.

Modules: :mod:`.steps` (the schedule, the iteration, the cross-rank gather), :mod:`.cache` (a frozen side's features
kept in ``out_dir/cache``: Talk2DINO's DINO and CLIP, ``--feature-cache``); this one holds the data path and runs
the stage. Outputs in ``out_dir``: the family's final file (``cfg.FINAL``: PGSeg's ``pgseg.safetensors``, what
``segment --model pgseg:FILE`` takes), ``_stage.json`` (the run's record), ``checkpoints/last.safetensors`` (model
+ AdamW, kind ``cfg.CHECKPOINT_KIND``: PGSeg's ``pgseg-checkpoint``), ``log.jsonl``. ``--overwrite`` of a finished
folder builds the new run beside the last one (:func:`vpltool.io.beside.built_beside`, as train-decoder): a run that
fails or is killed leaves the last one whole; the new run starts from hard links of its feature cache.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ... import io
from ...config import RuntimeConfig, to_params
from ...config.presets import IMAGENET_TEMPLATES
from ...config.text import TextTrainConfig
from ...data.nouns import noun_prompts, noun_source
from ...data.pairs import PairSet, check_pairs, decode_rgb, epoch_order, open_pairs, whole_view
from ...device import seed_everything
from ...errors import VplError, VplWarning
from ...io.beside import built_beside
from ...runtime.batches import die_with_parent
from ...runtime.numerics import run_numerics
from ...runtime.ranks import check_resumable, prepare_run_folder, process_group
from .cache import CACHE_DIR, CachedPairs, FeatureCache, as_list, cache_off, check_cache_folder, pair_batches
from .last_run import LastRun
from .steps import (
    TextTrainSummary,
    TrainStep,
    _iteration_seed,
    _mean_losses,
    diverged,
    gather_ranks,
    load_init,
    lr_at,
    make_optimizer,
    schedule_lr,
    shown_losses,
    train_step,
)

CHECKPOINT = "checkpoints/last.safetensors"
LOG = "log.jsonl"


def writes(cfg: TextTrainConfig) -> dict[str, tuple[str, ...]]:
    """Every file the run writes in --out, which --overwrite deletes first: each is declared to the output guard,
    so that no input of the run (--init, --nouns) may be one of them (io.check_outputs). The names are the family
    config's (PGSeg's have not changed since train-pgseg)."""
    return {"--out model": (cfg.FINAL, "written"), "--out checkpoint": (CHECKPOINT, "file", cfg.CHECKPOINT_KIND),
            "--out log": (LOG, "written")}


# what the inputs of a run are called on the command line (messages)
INPUT_OPTIONS = {"pairs": "PAIRS", "init": "--init", "nouns": "--nouns"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm IMAGENET_DEFAULT_MEAN / STD, the reference's Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)
# settings a resumed run may change (how often it logs and saves); every other must match the checkpoint's
RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "feature_cache")


def _family(name: str):
    """Text-supervised family ``name`` (the config's ``family``: what the trainer builds, trains and saves), through
    the registry (tests put a small stand-in here)."""
    from ...models.text.family import text_family

    return text_family(name)


# ------------------------------------------------------------------------------------------------ data
class PairViews(torch.utils.data.Dataset):
    """Keys ``(index, epoch)`` -> ``(image [3, S, S] float32 normalised, tokens [L] int64)``; runs in the
    DataLoader's workers. The crop is torchvision's, drawn from a torch RNG seeded by (seed, epoch, index).
    With ``K > 0`` noun prompts (``cfg.noun_prompts()``: PGSeg's ``multi_label``) and ``nouns`` (caption -> its
    nouns): tokens ``[1 + K, L]``, the caption and ``K`` noun prompts (:func:`vpltool.data.nouns.noun_prompts`)
    drawn from a numpy RNG seeded by (seed, epoch, index, 1). When the config keys captions by their nouns (PGSeg's
    ``same_caption`` "nouns"), a third item: the caption's key ``[L]`` int64, its nouns sorted and tokenised
    (captions naming the same nouns are then the same caption to the contrastive loss's ``--multi-positive``: the
    toy CLIP's caption key)."""

    def __init__(self, pairs: PairSet, tokenize: Callable, cfg: TextTrainConfig,
                 nouns: Callable[[str], list[str]] | None = None):
        from torchvision import transforms

        self.pairs, self.tokenize, self.seed = pairs.pairs, tokenize, cfg.seed
        self.multi_label, templates, self.keyed = cfg.noun_prompts()
        self.nouns = nouns
        # "full": CLIP's 80 ImageNet templates (GroupViT's noun prompts); else the family's segmentation template
        self.templates = IMAGENET_TEMPLATES if templates == "full" else \
            _family(cfg.family).TEMPLATES[cfg.ZERO_SHOT.templates]
        self.transform = transforms.Compose([
            # min_scale 1: RandomResizedCrop's own fallback box, drawn from no RNG (its tries could land a pixel off
            # it by rounding, on about one non-square image in ten): a function of the image alone (the cache's)
            whole_view(cfg.crop_size) if cfg.min_scale >= 1 else
            transforms.RandomResizedCrop(cfg.crop_size, scale=(cfg.min_scale, 1.0)),
            *([transforms.RandomHorizontalFlip()] if cfg.hflip else []),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, ...]:
        index, epoch = key
        pair = self.pairs[index]
        with torch.random.fork_rng(devices=[]):  # the caller's stream (the model's noise) is left as it was
            torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
            image = self.transform(decode_rgb(pair))
        if self.multi_label == 0:
            return image, self.tokenize([pair.caption])[0]
        rng = np.random.RandomState(np.random.SeedSequence([self.seed, epoch, index, 1]).generate_state(1)[0])
        nouns = self.nouns(pair.caption)
        tokens = self.tokenize(noun_prompts(pair.caption, nouns, self.multi_label, rng, self.templates))
        return (image, tokens, self.tokenize([" ".join(sorted(set(nouns)))])[0]) if self.keyed else (image, tokens)


class GlobalBatches(torch.utils.data.Sampler):
    """This rank's share of iterations ``start .. stop - 1``: global batch ``b`` of an epoch is
    ``order[b*G:(b+1)*G]`` (``G = batch * world``, the last partial one dropped) and rank ``r`` takes its ``r``-th
    slice of ``batch``; independent of the world size but for the cut."""

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int, start: int, stop: int):
        self.n, self.batch, self.world, self.rank, self.seed = n, batch, world, rank, seed
        self.start, self.stop = start, stop
        self.per_epoch = steps_per_epoch(n, batch, world)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.stop):
            epoch, b = divmod(it, self.per_epoch)
            order = epoch_order(self.n, self.seed, epoch)
            first = b * self.batch * self.world + self.rank * self.batch
            yield [(int(i), epoch) for i in order[first:first + self.batch]]


def steps_per_epoch(n: int, batch: int, world: int, where: object = "") -> int:
    """Full global batches per epoch; one line when not even one fits."""
    steps = n // (batch * world)
    if steps == 0:
        raise VplError(f"{where}: {n} pairs cannot fill a batch of {batch} on each of {world} process(es); lower "
                       f"--batch-size (at most {max(1, n // world)})")
    return steps


def loader(views: torch.utils.data.Dataset, plan: GlobalBatches, workers: int, pin: bool = False,
           collate: Callable | None = None) -> torch.utils.data.DataLoader:
    """``pin``: page-locked batches (a GPU run), so that their copy to the device does not wait for the host.
    ``collate``: the cached pairs' (:func:`.cache.as_list`), None for torch's."""
    return torch.utils.data.DataLoader(views, batch_sampler=plan, num_workers=workers if workers > 1 else 0,
                                       pin_memory=pin and collate is None, collate_fn=collate,
                                       worker_init_fn=functools.partial(die_with_parent, os.getpid()))


def _data_parallel(step: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``step`` in DistributedDataParallel as the reference wraps it: buffers not synced at each forward (its
    ``broadcast_buffers=False``), ``find_unused_parameters=True``. torch 2.14 renamed the first
    ``forward_sync_buffers`` (the old name warns on every rank); the new one also syncs the buffers once at
    init, which changes nothing here: every rank builds the same seeded model or loads the same checkpoint."""
    import inspect

    ddp = torch.nn.parallel.DistributedDataParallel
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else \
        "broadcast_buffers"
    return ddp(step, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True,
               **{no_sync: False})


def _tokenizer(fam, model_cfg) -> tuple[Callable, Callable[[str], int], int]:
    """``(tokenize(texts) -> [N, L] int64, length(text) -> its tokens with start and end before any cut,
    context L)`` of the family's tokenizer for ``model_cfg``."""
    length, context = fam.caption_length(model_cfg)
    return fam.tokenizer(model_cfg), length, context


# ------------------------------------------------------------------------------------------------ the run
def _prepare_out(out_dir: Path, cfg: TextTrainConfig, resume: bool, overwrite: bool, rank: int,
                 world: int) -> tuple[Path | None, LastRun]:
    """:func:`vpltool.runtime.ranks.prepare_run_folder` for this stage's files, which ``--overwrite`` replaces only
    once this run has a checkpoint of its own (:class:`LastRun`)."""
    ckpt, final = out_dir / CHECKPOINT, out_dir / cfg.FINAL
    return prepare_run_folder(out_dir, ckpt, [
        (final, "holds a trained model; pass --overwrite or choose another --out"),  # (it keeps its last checkpoint)
        (ckpt, "holds an interrupted run; pass --resume to continue or --overwrite"),
    ], [], resume=resume, overwrite=overwrite, rank=rank, world=world), LastRun(
        [*(out_dir / name for name, *_ in writes(cfg).values()), io.stage_record_path(out_dir)], out_dir / LOG,
        active=overwrite and not resume and rank == 0)


def _files(family: str) -> str:
    """What a checkpoint of ``family`` is, for messages (its registry row's words)."""
    from ...models.registry import TEXT_FAMILIES

    return TEXT_FAMILIES[family].files


def _check_resumable(f: io.TensorFile, cfg: TextTrainConfig, params: dict[str, Any], inputs: dict[str, Any],
                     world: int, model_config: dict[str, Any]) -> None:
    """Refuse a checkpoint of other settings, inputs (by content: :func:`vpltool.io.changed_inputs` names each),
    model (``model_config``: what the family builds from them, the digests of its frozen backbones' bytes included,
    compared where both configs have the key and the settings do not already say it) or world size (the schedule's
    steps per epoch and the global batch follow from it), naming every difference at once; before anything is
    written (a refused resume leaves the folder as it was)."""
    old = f.meta("train_config")
    # a setting added after the checkpoint was written reads as its default there (the run used the default)
    old = {**io.jsonable(asdict(type(cfg)())), **old}
    said = [f"--{k.replace('_', '-')} {old.get(k)} there, {v} here" for k, v in params.items()
            if k not in RESUMABLE_CHANGES and old.get(k) != io.jsonable(v)]
    was, now = f.meta("model_config", None) or {}, io.jsonable(model_config)
    digest = lambda v: str(v).startswith("sha256:")  # noqa: E731 (a file's bytes, which no setting makes)
    short = lambda v: str(v).removeprefix("sha256:")[:12] + "…" if digest(v) else v  # noqa: E731
    differ = [k for k in sorted(set(was) & set(now)) if k not in params and was[k] != now[k]]
    # a digest that differs is a file the model names (its DINO, its CLIP) changed; another value follows from the
    # settings (--crop-size makes the model's img_size), said once by the setting when one differs
    said += [f"the model's {k} {short(was[k])} there, {short(now[k])} here"
             + (" (a file it names changed)" if digest(was[k]) or digest(now[k]) else "")
             for k in differ if digest(was[k]) or digest(now[k]) or not said]
    check_resumable(f, said, inputs, INPUT_OPTIONS, world, params["batch_size"])


def run_train_text(
    pairs_path: str | Path,
    out_dir: str | Path,
    cfg: TextTrainConfig,
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    split: str | None = None,
    init: str | Path | None = None,
    nouns: str | Path | None = None,
    resume: bool = False,
    tensorboard: str | Path | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_iter: Callable[[int, dict[str, Any]], None] | None = None,
    stop_after: int | None = None,
) -> TextTrainSummary:
    """Train family ``cfg.family`` on the pairs of ``pairs_path`` (:func:`vpltool.data.pairs.open_pairs`:
    ``split`` of a folder with listings, None = ``train`` there; refused where there are none; recorded in
    ``inputs.pairs``); write ``out_dir/<cfg.FINAL>`` (PGSeg's ``pgseg.safetensors``).

    Args:
        cfg: the family's configuration (a :class:`~vpltool.config.text.TextTrainConfig` subclass: PGSeg's
            :class:`~vpltool.config.pgseg.PGSegTrainConfig`); ``cfg.batch_size`` is per process.
            ``runtime.workers``: DataLoader processes (1 = in this process).
        init: a checkpoint the family reads (PGSeg: a GroupViT or PGSeg release ``.pth`` or its own safetensors)
            whose weights start the run; its architecture replaces the config's (PGSeg's ``preset``).
        nouns: with noun prompts (``cfg.noun_prompts()``: PGSeg's ``multi_label > 0``), a noun vocabulary file
            (one noun a line): the caption's words in it are its nouns; None: nltk's tagger when its data is
            installed (:mod:`vpltool.data.nouns`).
        resume: continue from ``out_dir/checkpoints/last.safetensors`` (a fresh start when there is none).
        tensorboard: a folder for TensorBoard scalars (the ``tensorboard`` extra).
        on_start: rank 0, ``(total iterations, first iteration)`` when the iterations begin. on_iter: rank 0,
            ``(iteration, log record)`` after each.
        stop_after: end (without the final file) after this iteration, as a kill would: for tests of --resume.
    """
    out_dir = Path(out_dir)
    fam = _family(cfg.family)
    if not isinstance(cfg, fam.TrainConfig):
        raise VplError(f"train-text --family {cfg.family}: its settings are a {fam.TrainConfig.__name__}, not a "
                       f"{type(cfg).__name__}; build them with {fam.TrainConfig.__name__}.recipe_config(...)")
    stage = cfg.STAGE
    multi_label = cfg.noun_prompts()[0]
    pairs = open_pairs(pairs_path, split)
    io.check_outputs(stage, {"--out": (out_dir, "stage"),
                             **{option: (out_dir / name, *kind) for option, (name, *kind) in writes(cfg).items()},
                             "--tensorboard": (tensorboard, "side")},
                     inputs={"PAIRS": pairs.root, "--init": init, "--nouns": nouns}, protected=[pairs.root])
    if tensorboard is not None:
        io.check_tensorboard()
    if nouns is not None and multi_label == 0:
        raise VplError(f"--nouns {nouns}: the nouns feed the multi-label loss; pass --multi-label K (K > 0) too, "
                       "or drop --nouns")
    find_nouns, noun_rule = noun_source(nouns) if multi_label > 0 else (None, None)
    init_config, init_state = (None, None)
    if init is not None:
        if not Path(init).is_file():
            raise VplError(f"--init {init}: no such file; pass {_files(cfg.family)}")
        init_config, init_state = fam.load_checkpoint(init)
        # the values rule of every model file (the registry's, for the models it loads), for every family's --init
        io.check_weight_values(init, init_state.items(), f"pass {_files(cfg.family)}")
    model_cfg = fam.model_config(cfg, init_config)
    if "groups" in {f.name for f in fields(cfg)} and cfg.groups and \
            fam.model_config(replace(cfg, groups=()), init_config) == model_cfg:
        cfg = replace(cfg, groups=())  # the model's own groups: recorded as a run without --groups (a resume matches)
    tokenize, length, context = _tokenizer(fam, model_cfg)
    check_pairs(pairs, length, context, truncate=cfg.truncate, workers=runtime.loader_workers("cpu"))
    if nouns is not None and find_nouns is not None and not any(find_nouns(p.caption) for p in pairs.pairs):
        # every noun prompt would be the caption itself: the multi-label loss a second contrastive loss, unsaid
        raise VplError(f"--nouns {nouns}: none of its words is in any of the {len(pairs.pairs)} captions, so the "
                       "multi-label loss would have no noun to prompt; give a vocabulary of the captions' nouns")
    params = to_params(cfg)  # options without effect (--multi-label-weight without the loss) left out
    if init is not None:  # the --init file's architecture replaces --preset: its identity records it
        params.pop("preset", None)  # (a family without presets has none to drop)
    inputs = {"pairs": pairs.identity(), "init": None if init is None else io.file_identity(init)}
    if noun_rule is not None:  # (only then: the inputs of a run without the loss stay as they were)
        inputs["nouns"] = io.file_identity(nouns) if nouns is not None else noun_rule
    with process_group(runtime.device) as (rank, world, device):
        per_epoch = steps_per_epoch(len(pairs.pairs), cfg.batch_size, world, pairs.root)
        total = cfg.epochs * per_epoch
        io.make_folder(out_dir)
        # --overwrite: built beside the last run, which stays unless this one ends (the module's docstring)
        with io.output_lock(out_dir) if rank == 0 else contextlib.nullcontext(), built_beside(
                out_dir, io.STAGE_RECORD, runtime.overwrite and not resume, alone=world == 1, carry=(CACHE_DIR,)):
            if (off := cache_off(fam, cfg)) is None:
                check_cache_folder(out_dir / CACHE_DIR)  # a file there, before anything is written
            ckpt, previous = _prepare_out(out_dir, cfg, resume, runtime.overwrite, rank, world)
            numerics = run_numerics()  # fp32 (no --precision); a resume in another mode is refused
            if ckpt is not None:  # checked before anything is written: a refused resume leaves no trace
                head = io.read_checkpoint(ckpt, kind=cfg.CHECKPOINT_KIND, header_only=True)[2]
                io.check_numerics(numerics, (ckpt, io.header_numerics(head.raw_meta), stage))
                _check_resumable(head, cfg, params, inputs, world, model_cfg.to_dict())
            if rank == 0:  # the folder is this command's from now on (the output guard reads it), finished or not
                io.write_json(out_dir / io.RUN_RECORD, io.seal({"stage": stage, "params": params, "inputs": inputs,
                                                                 io.NUMERICS: numerics}))
            seed_everything(cfg.seed)
            model = fam.build_model(model_cfg, seed=cfg.seed)  # the same initial weights on every rank
            if init_state is not None:
                load_init(model, init_state, init)
            if world > 1 and device.type == "cuda":
                model = fam.for_ranks(model)  # PGSeg: its projectors' SyncBatchNorm (no CPU kernels)
            model = model.to(device)
            optimizer = make_optimizer(model, cfg)
            start = 0
            if ckpt is not None:
                model_state, optim_state, f = io.read_checkpoint(ckpt, kind=cfg.CHECKPOINT_KIND)
                model.load_state_dict(model_state, strict=True)
                optimizer.load_state_dict(optim_state)
                start = int(f.meta("iteration"))
            if off and rank == 0:
                warnings.warn(VplWarning(off), stacklevel=2)
            cache = None if off is not None else FeatureCache.open(out_dir / CACHE_DIR, {  # (the batch's size too:
                **fam.frozen_identity(model), "crop_size": cfg.crop_size, "min_scale": cfg.min_scale,  # a backbone's
                "batch_size": cfg.batch_size, "numerics": numerics}, rank, world)  # rounding can follow it)
            step = TrainStep(model, gather_ranks if world > 1 else None, fam.forward_train,
                             fam.forward_train_from if cache is not None else None)
            if world > 1:
                step = _data_parallel(step, device)
            board = None
            if tensorboard is not None and rank == 0:
                from torch.utils.tensorboard import SummaryWriter

                board = SummaryWriter(str(tensorboard), purge_step=start + 1)
            stop = total if stop_after is None else min(total, stop_after)
            views = PairViews(pairs, tokenize, cfg, find_nouns)
            data = views if cache is None else CachedPairs(views, cache)
            batches = pair_batches(
                data, lambda first, end: GlobalBatches(len(pairs.pairs), cfg.batch_size, world, rank, cfg.seed,
                                                       first, end), per_epoch, start, stop,
                lambda plan: loader(data, plan, runtime.loader_workers(device.type, len(plan) * plan.batch),
                                    pin=device.type == "cuda", collate=None if cache is None else as_list))
            every = cfg.checkpoint_every or per_epoch
            if rank == 0:  # the log of this run: to its checkpoint (a resume), or none (a fresh start)
                previous.start(start)
            if on_start is not None and rank == 0:
                on_start(total, start)
            first = last = None
            empty_text, t0 = 0, time.perf_counter()
            try:
                for it, batch in zip(range(start, stop), batches):
                    torch.manual_seed(_iteration_seed(cfg.seed, it, rank))  # gumbel noise, drop path
                    lr = lr_at(cfg, it, per_epoch)
                    if cache is not None:  # the frozen side's features, read back or computed (and kept) now
                        images, tokens, keys = data.features(batch, fam, model, device), None, ()
                    else:
                        images, tokens, *keys = (t.to(device, non_blocking=True) for t in batch)
                    n = it + 1
                    logged = n % cfg.log_every == 0 or n == stop or n == start + 1
                    losses, norm = train_step(step, model, optimizer, images, tokens, lr, cfg.clip_grad, *keys,
                                              measure=logged)
                    record: dict[str, Any] = {"iter": n}
                    if logged:
                        got, no_rows = shown_losses(_mean_losses(losses, world), model_cfg)
                        empty_text += no_rows
                        if diverged(got, float(norm)):
                            raise VplError(f"{out_dir}: training diverged at iteration {n} (loss {got['loss']}, "
                                           f"gradient norm {float(norm)}); lower --lr and re-run with --overwrite")
                        record = {"iter": n, "epoch": it // per_epoch, **got, "grad_norm": float(norm), "lr": lr,
                                  "sec": round(time.perf_counter() - t0, 3)}
                        first = got["loss"] if first is None else first
                        last = got["loss"]
                        if rank == 0:
                            previous.log(record)
                            if board is not None:
                                for k, v in {**got, "lr": lr, "grad_norm": float(norm)}.items():
                                    board.add_scalar(f"train/{k}", v, n)
                    if rank == 0 and (n % every == 0 or n == total):
                        previous.replace()  # --overwrite: the last run's files go only now
                        io.write_checkpoint(out_dir / CHECKPOINT, model.state_dict(), optimizer.state_dict(), n,
                                            classes=[], config=params, kind=cfg.CHECKPOINT_KIND, train_config=params,
                                            model_config=model_cfg.to_dict(), inputs=inputs, world_size=world,
                                            numerics=numerics)
                    if on_iter is not None and rank == 0:
                        on_iter(n, record)
            finally:
                if board is not None:
                    board.close()
            seconds = time.perf_counter() - t0
            path = None
            if rank == 0 and stop == total:
                path = fam.save_checkpoint(out_dir / cfg.FINAL, model, {"train_config": params, "inputs": inputs,
                                                                       "iterations": total}, numerics=numerics)
                io.write_stage_record(out_dir, stage, params=params, inputs=inputs, count=len(pairs.pairs),
                                      model=str(out_dir / cfg.FINAL), model_config=model_cfg.to_dict(),
                                      iterations=total, world_size=world, numerics=numerics)
                (out_dir / io.RUN_RECORD).unlink(missing_ok=True)  # complete: the run record goes
    return TextTrainSummary(iterations=stop, start=start, seconds=seconds, first_loss=first, loss=last, model=path,
                        world_size=world, pairs=len(pairs.pairs), empty_text_npr=empty_text)


__all__ = ["CHECKPOINT", "writes", "TextTrainSummary", "run_train_text", "schedule_lr", "lr_at", "diverged",
           "PairViews", "GlobalBatches", "TrainStep", "gather_ranks", "make_optimizer", "train_step",
           "steps_per_epoch", "shown_losses"]

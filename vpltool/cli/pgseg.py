"""`vpltool train-pgseg`: PGSeg / GroupViT from image–text pairs, the alias of `train-text --family pgseg` with
PGSeg's settings spelled as options (vpltool.stages.train_text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config.pgseg import PGSEG_PRESETS, PGSEG_RECIPES, PGSegTrainConfig
from .errors import all_ranks
from .options import _R, Device, LogFile, OutDir, Overwrite, Resume, Verbose, Workers, runtime
from .train_text import TextTensorboard, train_and_report
from .values import parse_ints

_T = PGSegTrainConfig()


def _default(name: str) -> str:
    """``[default: 1024 (reference), 32 (cpu)]``: a default per recipe, read from config."""
    values: dict[Any, list[str]] = {}
    for recipe, changes in PGSEG_RECIPES.items():
        values.setdefault(changes.get(name, getattr(_T, name)), []).append(recipe)
    def shown(v: Any) -> str:  # a tuple as the option spells it; empty: the preset's
        return (",".join(map(str, v)) or "the preset's") if isinstance(v, tuple) else str(v)

    if len(values) == 1:
        return f"[default: {shown(next(iter(values)))}]"
    return "[default: " + ", ".join(f"{shown(v)} ({'/'.join(r)})" for v, r in values.items()) + "]"


def _opt(help_text: str, name: str, *flags: str) -> Any:
    return typer.Option(*flags, help=f"{help_text} {_default(name)}", show_default=False)


@all_ranks
def train_pgseg_cmd(
    pairs: Annotated[Path, typer.Argument(help="Image–text pairs: a folder of webdataset .tar shards as img2dataset "
                                          "writes them (KEY.jpg + KEY.txt), one .tar, a brace pattern "
                                          "('cc3m/{00000..00331}.tar'), or a folder of images with captions.json "
                                          "(the demo world).")],
    out: OutDir,
    recipe: Annotated[str, typer.Option(help="reference (Ferenas/PGSeg's default_pgseg.yml: GroupViT-S, batch 1024 "
                                        "per process, 30 epochs: GPU days) | demo (make-pairs shards: the demo "
                                        "preset, batch 64, one pass; make pgseg's) | cpu (the family's tiny model "
                                        "on the whole 96 px scenes, batch 32: minutes on a demo world).")] = _T.recipe,
    npr: Annotated[Optional[bool], typer.Option("--npr/--no-npr", show_default=False,
                                                help="PGSeg's non-learnable prototypical regularisation; --no-npr "
                                                "trains plain GroupViT [default: --npr].")] = None,
    preset: Annotated[Optional[str], _opt(f"The model's size: {' | '.join(PGSEG_PRESETS)}.", "preset")] = None,
    batch_size: Annotated[Optional[int], _opt("Pairs per process (the global batch is this x the ranks).",
                                              "batch_size")] = None,
    epochs: Annotated[Optional[int], _opt("Epochs.", "epochs")] = None,
    warmup_epochs: Annotated[Optional[float], _opt("Linear warm-up epochs, a fraction allowed (counted in the cosine).",
                                                 "warmup_epochs")] = None,
    lr: Annotated[Optional[float], _opt("AdamW's peak learning rate (not scaled by the batch).", "lr")] = None,
    warmup_lr: Annotated[Optional[float], _opt("The warm-up's first rate.", "warmup_lr")] = None,
    min_lr: Annotated[Optional[float], _opt("The cosine's final rate.", "min_lr")] = None,
    weight_decay: Annotated[Optional[float], _opt("AdamW weight decay (none on biases and norms).",
                                                  "weight_decay")] = None,
    eps: Annotated[Optional[float], _opt("AdamW eps.", "eps")] = None,
    clip_grad: Annotated[Optional[float], _opt("Gradient norm clip; 0 = none.", "clip_grad")] = None,
    crop_size: Annotated[Optional[int], _opt("RandomResizedCrop side.", "crop_size")] = None,
    min_scale: Annotated[Optional[float], _opt("RandomResizedCrop's smallest area fraction.", "min_scale")] = None,
    multi_label: Annotated[Optional[int], _opt("GroupViT's multi-label (noun) loss: K noun prompts per caption "
                                               "beside it (GroupViT's released config: 3); 0 = off.",
                                               "multi_label")] = None,
    multi_label_weight: Annotated[Optional[float], _opt("The multi-label loss's weight.",
                                                        "multi_label_weight")] = None,
    noun_templates: Annotated[Optional[str], _opt("The noun prompts' templates: full (CLIP's 80 ImageNet ones, the "
                                                  "reference's) | simple ('a photo of a {}.', segmentation's).",
                                                  "noun_templates")] = None,
    multi_label_pool: Annotated[Optional[str], _opt("The multi-label loss's image side: mean (the pooled embedding, "
                                                    "the reference's) | max (each image's best final group, as "
                                                    "segmentation matches groups to names) | match (each noun "
                                                    "prompt its own final group, matched one to one; needs K <= "
                                                    "the final groups).",
                                                    "multi_label_pool")] = None,
    multi_positive: Annotated[Optional[bool], typer.Option(
        "--multi-positive/--single-positive", show_default=False,
        help="Every text of the batch equal to one of a sample's own (a repeated caption or noun prompt) is a "
             f"positive of its image, not a negative (the reference: single) {_default('multi_positive')}.")] = None,
    same_caption: Annotated[Optional[str], _opt("Which captions --multi-positive counts as the same: text (equal "
                                                "token ids) or nouns (the same set of --nouns words, whatever else "
                                                "they say: the toy CLIP's caption key).", "same_caption")] = None,
    assign_qk_init: Annotated[Optional[float], _opt("Mimetic init of the grouping's assignment attention (W_q = "
                                                    "W_k, this gain: a patch starts in the group it looks like); "
                                                    "0 = the reference's init.", "assign_qk_init")] = None,
    qk_init: Annotated[Optional[float], _opt("Mimetic init of every other attention (gain); 0 = the reference's.",
                                             "qk_init")] = None,
    attention_window: Annotated[Optional[int], _opt("The first stage's attention window, in patches (odd): a patch "
                                                    "token sees its k x k neighbourhood, the group tokens see "
                                                    "everything; 0 = global, the reference's.",
                                                    "attention_window")] = None,
    temperature: Annotated[Optional[float], _opt("The contrastive losses' initial temperature (1 / exp(logit "
                                                 "scale), trainable, scale clamped at 100).", "temperature")] = None,
    assign_iters: Annotated[Optional[int], _opt("The grouping's assignment steps: 1 (the reference's: once, from "
                                                "the group tokens) | n > 1 (n - 1 k-means steps of the group "
                                                "queries over the tokens' keys first).", "assign_iters")] = None,
    assign_metric: Annotated[Optional[str], _opt("A token's affinity to a group: dot (the query-key product, the "
                                                 "reference's) | distance (minus the squared query-key distance: "
                                                 "the nearest centre, as k-means).", "assign_metric")] = None,
    assign_init: Annotated[Optional[str], _opt("Where the grouping's centres start: query (the group tokens', the "
                                               "reference's) | tokens (farthest-point seeds among the image's "
                                               "token keys, then --assign-iters - 1 k-means steps; needs "
                                               "--no-center-residual --assign-metric distance).",
                                               "assign_init")] = None,
    groups: Annotated[Optional[str], _opt("Each grouping stage's group tokens (its output groups), largest first, "
                                          "e.g. 16,8; empty = the preset's (groupvit-s 64,8; demo 8,4).",
                                          "groups")] = None,
    center_residual: Annotated[Optional[bool], typer.Option(
        "--center-residual/--no-center-residual", show_default=False,
        help="A grouping block's output: the group token plus the tokens assigned to it (the reference's) or the "
             f"assigned tokens alone (a group is what it holds) {_default('center_residual')}.")] = None,
    hard_assignment: Annotated[Optional[bool], typer.Option(
        "--hard-assignment/--soft-assignment", show_default=False,
        help="Patches to groups in training: gumbel noise and a straight-through hard assignment (the reference's) "
             f"or the plain softmax {_default('hard_assignment')}.")] = None,
    hflip: Annotated[Optional[bool], typer.Option("--hflip/--no-hflip", show_default=False,
                                                  help="Random horizontal flips (off for captions that say left "
                                                  f"and right) {_default('hflip')}.")] = None,
    nouns: Annotated[Optional[Path], typer.Option(help="With --multi-label: a noun vocabulary file (one noun a "
                                                  "line): a caption's nouns are its words found there. Without it, "
                                                  "nltk's tagger as the reference (needs nltk and its tagger "
                                                  "data).")] = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="Cut captions longer than the text context (the "
                                           "reference does); without it such a caption is refused.")] = False,
    split: Annotated[Optional[str], typer.Option("--split", "-s", help="For a folder with split listings "
                                                 "(splits/<split>.txt: the demo world): the split to train on; an "
                                                 "unknown one is refused, and so is a split where there is none "
                                                 "(shards, a folder without listings) [default: train where there "
                                                 "are listings].", show_default=False)] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from these weights: a GroupViT or PGSeg release (.pth) "
                                                 "or a train-pgseg file; its architecture replaces --preset.")] = None,
    resume: Resume = False,
    checkpoint_every: Annotated[Optional[int], _opt("Iterations between checkpoints; 0 = once per epoch.",
                                                    "checkpoint_every")] = None,
    log_every: Annotated[Optional[int], _opt("Iterations between log lines (OUT/log.jsonl).", "log_every")] = None,
    tensorboard: TextTensorboard = None,
    seed: Annotated[Optional[int], _opt("Seed.", "seed")] = None,
    device: Device = _R.device,
    workers: Workers = _R.workers,
    overwrite: Overwrite = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """PGSeg (NeurIPS'23) or plain GroupViT trained from image–text pairs alone; then `segment --pgseg` segments
    any class by name.

    Multi-GPU / multi-node: torchrun --nproc-per-node 8 -m vpltool train-pgseg ... (DDP, the contrastive loss
    over every rank's batch; --batch-size is per process).

    \b
    Example:
      vpltool make-world world --train 400 --val 100
      vpltool train-pgseg world --recipe cpu -o runs/pgseg
    """
    from ..config.pgseg import pgseg_recipe

    cfg = pgseg_recipe(recipe, npr=npr, preset=preset, batch_size=batch_size, epochs=epochs,
                       warmup_epochs=warmup_epochs, lr=lr, warmup_lr=warmup_lr, min_lr=min_lr,
                       weight_decay=weight_decay, eps=eps, clip_grad=clip_grad, crop_size=crop_size,
                       min_scale=min_scale, truncate=truncate or None, checkpoint_every=checkpoint_every,
                       log_every=log_every, seed=seed, multi_label=multi_label,
                       multi_label_weight=multi_label_weight, noun_templates=noun_templates,
                       multi_positive=multi_positive, same_caption=same_caption, multi_label_pool=multi_label_pool,
                       assign_qk_init=assign_qk_init, qk_init=qk_init, attention_window=attention_window,
                       temperature=temperature, hflip=hflip,
                       hard_assignment=hard_assignment, assign_iters=assign_iters,
                       center_residual=center_residual, assign_metric=assign_metric, assign_init=assign_init,
                       groups=None if groups is None else parse_ints(groups, "--groups", "16,8"))
    what = "PGSeg" if cfg.npr else "GroupViT"
    train_and_report("train-pgseg", f"train-pgseg: {what},", pairs, out, cfg,
                     runtime(device, workers=workers, overwrite=overwrite), split=split, init=init, nouns=nouns,
                     resume=resume, tensorboard=tensorboard)

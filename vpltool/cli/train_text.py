"""`vpltool train-text --family NAME`: any text-supervised family trained from image–text pairs by the one shared
loop (vpltool.stages.train_text); the family's own settings come from its configuration class (``--set KEY=VALUE``,
listed with their defaults by ``--knobs``). `train-pgseg` is PGSeg's alias, its settings spelled as options."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import RuntimeConfig
from ..config.text import TextTrainConfig
from ..errors import install_extra
from ..models.registry import TEXT_FAMILIES, text_config
from .errors import all_ranks
from .options import _R, Device, LogFile, Overwrite, Resume, Verbose, Workers, runtime
from .output import progress, say


def _shown(v: Any) -> str:
    return (",".join(map(str, v)) or "()") if isinstance(v, tuple) else str(v)


def _defaults(cls: type[TextTrainConfig], name: str) -> str:
    """``1024 (reference), 32 (demo/cpu)``: a setting's value in each recipe of ``cls``."""
    values: dict[str, list[str]] = {}
    for recipe, changes in cls.RECIPES.items():
        values.setdefault(_shown(changes.get(name, getattr(cls(), name))), []).append(recipe)
    if len(values) == 1:
        return next(iter(values))
    return ", ".join(f"{v} ({'/'.join(r)})" for v, r in values.items())


def _loop_default(name: str) -> str:
    """``--help``'s default of a loop option: each family's recipes' values."""
    return "; ".join(f"{family}: {_defaults(text_config(family), name)}" for family in TEXT_FAMILIES)


def _opt(help_text: str, name: str) -> Any:
    return typer.Option(help=f"{help_text} [default: the recipe's: {_loop_default(name)}]", show_default=False)


def _families_help() -> str:
    rows = []
    for family, row in TEXT_FAMILIES.items():
        cls = text_config(family)
        rows.append(f"{family} ({row.title}; recipes {', '.join(cls.RECIPES)}; settings "
                    f"{', '.join(cls.family_fields()) or 'none'})")
    return "; ".join(rows)


# spelled the same by train-text and its alias train-pgseg
TextTensorboard = Annotated[Optional[Path], typer.Option(help="Also write TensorBoard scalars here "
                                                         f"({install_extra('tensorboard')}).")]


def train_and_report(command: str, head: str, pairs: Path, out: Path, cfg: Any, rt: RuntimeConfig,
                     **inputs: Any) -> None:
    """Run the shared text trainer (``run_train_text(pairs, out, cfg, rt, **inputs)``) under ``command``'s
    progress bar, then print its notes and the ✓ line, ``head`` first (``train-text (pgseg):``)."""
    from ..stages.train_text import run_train_text

    with progress(command, unit="iterations") as (on_start, on_item):
        s = run_train_text(pairs, out, cfg, rt, on_start=on_start, on_iter=lambda i, rec: on_item(1), **inputs)
    done = f"{s.iterations} iterations" if not s.start else f"iterations {s.start} → {s.iterations} (resumed)"
    loss = "" if s.loss is None else f", loss {s.first_loss:.4f} → {s.loss:.4f}"
    written = s.model if s.model is not None else f"{out} (rank 0 writes the files)"
    for note in s.notes():
        say(note)
    say(f"[green]✓[/] {head} {s.pairs} pairs, {done} ({s.iters_per_s:.2f} it/s){loss} → {written}")


# the loop's settings that train-text spells as options (the others, and the family's own, are --set KEY=VALUE)
OPTIONS = ("batch_size", "epochs", "warmup_epochs", "lr", "warmup_lr", "min_lr", "weight_decay", "eps", "clip_grad",
           "crop_size", "min_scale", "hflip", "truncate", "checkpoint_every", "log_every", "seed", "feature_cache")


def knobs_table(family: str) -> list[str]:
    """``--knobs``: every setting of ``family``'s configuration, its value in each recipe, and the option or
    ``--set`` key that changes it."""
    cls = text_config(family)
    lines = [f"{family}: {TEXT_FAMILIES[family].title}; recipes: {', '.join(cls.RECIPES)}; trains into "
             f"OUT/{cls.FINAL}"]
    for f in fields(cls):
        if f.name in ("recipe", "family"):
            continue
        how = f"--{f.name.replace('_', '-')}" if f.name in OPTIONS else f"--set {f.name}=..."
        lines.append(f"  {f.name:<20} {_defaults(cls, f.name):<36} {how}")
    return lines


@all_ranks
def train_text_cmd(
    pairs: Annotated[Optional[Path], typer.Argument(
        help="Image–text pairs: a folder of webdataset .tar shards as img2dataset writes them (KEY.jpg + KEY.txt), "
             "one .tar, a brace pattern ('cc3m/{00000..00331}.tar'), or a folder of images with captions.json (the "
             "demo world).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder: the family's model file, "
                                                "checkpoints/last.safetensors, log.jsonl, _stage.json.",
                                                show_default=False)] = None,
    family: Annotated[Optional[str], typer.Option(help=f"The text-supervised family to train: {_families_help()}.",
                                                  show_default=False)] = None,
    recipe: Annotated[str, typer.Option(help="The family's recipe (--knobs lists each one's settings); 'reference' "
                                        "is its paper's.")] = TextTrainConfig.recipe,
    settings: Annotated[Optional[list[str]], typer.Option(
        "--set", help="KEY=VALUE, once per setting that is not an option here: the family's own (see --family) and "
        "the loop's beta1, beta2; --knobs lists them with their defaults. A bool as true/false, a tuple as 16,8.",
        show_default=False)] = None,
    knobs: Annotated[bool, typer.Option("--knobs", help="List the family's settings, their value in each recipe and "
                                        "the option that changes each, then exit.")] = False,
    batch_size: Annotated[Optional[int], _opt("Pairs per process (the global batch is this x the ranks).",
                                              "batch_size")] = None,
    epochs: Annotated[Optional[int], _opt("Epochs.", "epochs")] = None,
    warmup_epochs: Annotated[Optional[float], _opt("Linear warm-up epochs, a fraction allowed (counted in the "
                                                   "cosine).", "warmup_epochs")] = None,
    lr: Annotated[Optional[float], _opt("AdamW's peak learning rate (not scaled by the batch).", "lr")] = None,
    warmup_lr: Annotated[Optional[float], _opt("The warm-up's first rate.", "warmup_lr")] = None,
    min_lr: Annotated[Optional[float], _opt("The cosine's final rate.", "min_lr")] = None,
    weight_decay: Annotated[Optional[float], _opt("AdamW weight decay (none on biases and norms).",
                                                  "weight_decay")] = None,
    eps: Annotated[Optional[float], _opt("AdamW eps.", "eps")] = None,
    clip_grad: Annotated[Optional[float], _opt("Gradient norm clip; 0 = none.", "clip_grad")] = None,
    crop_size: Annotated[Optional[int], _opt("RandomResizedCrop side.", "crop_size")] = None,
    min_scale: Annotated[Optional[float], _opt("RandomResizedCrop's smallest area fraction.", "min_scale")] = None,
    hflip: Annotated[Optional[bool], typer.Option(
        "--hflip/--no-hflip", show_default=False,
        help=f"Random horizontal flips (off for captions that say left and right) [default: the recipe's: "
             f"{_loop_default('hflip')}].")] = None,
    feature_cache: Annotated[Optional[bool], typer.Option(
        "--feature-cache/--no-feature-cache", show_default=False,
        help="A family whose backbones are frozen and whose view is unaugmented (Talk2DINO): each pair's DINO and "
             "CLIP features computed once, kept in OUT/cache and read back on later epochs and on --resume (the "
             "same loss, bit for bit); off: every step runs the backbones; PGSeg trains its image side and caches "
             f"nothing [default: {'on' if TextTrainConfig.feature_cache else 'off'}].")] = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="Cut captions longer than the text context; without "
                                           "it such a caption is refused.")] = False,
    split: Annotated[Optional[str], typer.Option("--split", "-s", help="For a folder with split listings (the demo "
                                                 "world): the split to train on [default: train where there are "
                                                 "listings].", show_default=False)] = None,
    init: Annotated[Optional[Path], typer.Option(help="Start from these weights (a checkpoint the family reads); "
                                                 "its architecture replaces the recipe's.")] = None,
    nouns: Annotated[Optional[Path], typer.Option(help="With noun prompts (PGSeg: --set multi_label=K): a noun "
                                                  "vocabulary file (one noun a line).")] = None,
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
    """Train a text-supervised family (PGSeg / GroupViT, ...) from image–text pairs alone, with the one loop every
    family shares (resumable bit for bit, torchrun DDP); then `segment --model FAMILY:FILE` segments any class by
    name. The loop's settings are options; the family's own are --set KEY=VALUE (--knobs lists them).

    Multi-GPU / multi-node: torchrun --nproc-per-node 8 -m vpltool train-text ... (--batch-size is per process).

    \b
    Example:
      vpltool make-world world --train 400 --val 100
      vpltool train-text world --family pgseg --recipe cpu -o runs/pgseg
      vpltool train-text world --family pgseg --recipe cpu --set npr=false --set groups=16,8 -o runs/groupvit
      vpltool train-text --family pgseg --knobs
    """
    from ..config.text import parse_settings
    from ..errors import VplError

    if family is None:
        raise VplError(f"train-text: give --family NAME ({', '.join(TEXT_FAMILIES)})")
    cls = text_config(family)  # an unknown family: one line naming the known ones
    if knobs:
        for line in knobs_table(family):
            typer.echo(line)
        return
    if pairs is None or out is None:
        raise VplError("train-text: give PAIRS and --out (or --knobs to list the family's settings)")
    loop = dict(batch_size=batch_size, epochs=epochs, warmup_epochs=warmup_epochs, lr=lr, warmup_lr=warmup_lr,
                min_lr=min_lr, weight_decay=weight_decay, eps=eps, clip_grad=clip_grad, crop_size=crop_size,
                min_scale=min_scale, hflip=hflip, truncate=truncate or None, checkpoint_every=checkpoint_every,
                log_every=log_every, seed=seed, feature_cache=feature_cache)
    cfg = cls.recipe_config(recipe, family=family, **loop, **parse_settings(cls, settings, OPTIONS))
    train_and_report("train-text", f"train-text ({family}):", pairs, out, cfg,
                     runtime(device, workers=workers, overwrite=overwrite), split=split, init=init, nouns=nouns,
                     resume=resume, tensorboard=tensorboard)


__all__ = ["train_text_cmd", "knobs_table", "train_and_report", "TextTensorboard"]

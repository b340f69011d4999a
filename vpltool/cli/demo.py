"""The demo world's commands: make-world, train-toy-clip, demo-report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .common import LogFile, Overwrite, Verbose, friendly_errors, progress, say

DEMO = "Demo world"


@app.command("make-world", rich_help_panel=DEMO)
@friendly_errors
def make_world_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    train: Annotated[int, typer.Option(min=1, help="Training scenes.")] = 500,
    val: Annotated[int, typer.Option(min=1, help="Validation scenes (rendered from another seed).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives byte-identical files.")] = 0,
    size: Annotated[int, typer.Option(min=32, help="Scene side in pixels.")] = 96,
    layout: Annotated[str, typer.Option(help="folder (generic layout) | voc (PASCAL VOC layout).")] = "folder",
    distractors: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability of a same-colour, "
                                               "other-shape distractor per scene.")] = 0.0,
    overwrite: Overwrite = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Render the synthetic demo world: shapes on textured backgrounds, exact masks, captions, labels.

    \b
    Example:
      vpltool make-world runs/demo/world --train 500 --val 200 --layout voc
    """
    from ..demo.scenes import SceneConfig, write_dataset

    cfg = SceneConfig(size=size, distractors=distractors)
    write_dataset(out, n_train=train, n_val=val, seed=seed, cfg=cfg, layout=layout, overwrite=overwrite)
    say(f"[green]✓[/] make-world: {train} train + {val} val scenes ({layout} layout) → {out}")


@app.command("train-toy-clip", rich_help_panel=DEMO)
@friendly_errors
def train_toy_clip_cmd(
    out: Annotated[Path, typer.Argument(help="Model folder to write (open_clip local-dir + vpltool.json).")] =
        Path("vpltool/assets/toy-clip"),
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 400,
    batch_size: Annotated[int, typer.Option(min=2, help="Scenes per step.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    crop_prob: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of scenes replaced by a re-captioned "
                                             "random crop.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed; the defaults reproduce the shipped checkpoint.")] = 0,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Train the demo world's toy CLIP from scratch on rendered scenes and captions (CPU, about 10 min on 2 cores).

    \b
    Example:
      vpltool train-toy-clip /tmp/toy-clip && vpltool extract WORLD -o F --model local-dir:/tmp/toy-clip
    """
    from ..demo.toyclip import train_toy_clip

    with progress("train-toy-clip") as (on_start, on_item):
        on_start(steps)
        metrics = train_toy_clip(out, steps=steps, batch_size=batch_size, lr=lr, crop_prob=crop_prob, seed=seed,
                                 on_step=lambda step, loss: on_item(1))
    say(f"[green]✓[/] train-toy-clip: loss {metrics['final_loss']:.3f}, label-set accuracy "
              f"{metrics['label_set_accuracy']:.2f}, GradCAM mIoU {metrics['gradcam_miou']:.3f} → {out}")


@app.command("demo-report", rich_help_panel=DEMO)
@friendly_errors
def demo_report_cmd(
    run: Annotated[Path, typer.Argument(help="A demo run folder (the Makefile's RUN).")] = Path("runs/demo"),
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Table of mIoU per stage, train and held-out, next to chance; writes RUN/metrics.json and the contact sheets
    RUN/contact_sheet.png (train) and RUN/contact_sheet_val.png (held-out, with the decoder's prediction)."""
    from rich.console import Console

    from ..demo.report import format_report, run_demo_report

    report = run_demo_report(run)
    Console().print(format_report(report))
    say(f"[green]✓[/] demo-report → {', '.join([str(run / 'metrics.json'), *report['sheets']])}")

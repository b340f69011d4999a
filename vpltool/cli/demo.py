"""The demo world's commands: make-world, make-pairs, train-toy-clip, train-toy-dino, train-toy-sam, train-toy-sam3,
train-toy-radio, choose-pseudo, demo-report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..demo.config import (
    PairsConfig,
    ToyClipConfig,
    ToyDinoConfig,
    ToyRadioConfig,
    ToySam3Config,
    ToySamConfig,
    WorldConfig,
)
from .options import LogFile, Overwrite, OverwriteFile, Verbose
from .output import progress, say

_W, _T, _D = WorldConfig(), ToyClipConfig(), ToyDinoConfig()
_S = ToySamConfig()
_S3 = ToySam3Config()
_R = ToyRadioConfig()
_P = PairsConfig()


def make_world_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    train: Annotated[int, typer.Option(help="Training scenes.")] = _W.train,
    val: Annotated[int, typer.Option(help="Validation scenes (rendered from another seed).")] = _W.val,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives byte-identical files.")] = _W.seed,
    size: Annotated[int, typer.Option(help="Scene side in pixels (>= 32).")] = _W.size,
    layout: Annotated[str, typer.Option(help="folder (generic layout) | voc (PASCAL VOC layout).")] = _W.layout,
    distractors: Annotated[float, typer.Option(help="Probability of a same-colour, other-shape distractor per "
                                               "scene.")] = _W.distractors,
    overwrite: Overwrite = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Render the synthetic demo world: shapes on textured backgrounds, exact masks, captions, labels.

    \b
    Example:
      vpltool make-world runs/demo/world --train 500 --val 200 --layout voc
    """
    from ..demo.make_world import write_dataset
    from ..demo.scenes import SceneConfig

    world = WorldConfig(train=train, val=val, seed=seed, size=size, layout=layout, distractors=distractors)
    cfg = SceneConfig(size=world.size, distractors=world.distractors)
    write_dataset(out, n_train=world.train, n_val=world.val, seed=world.seed, cfg=cfg, layout=world.layout,
                  overwrite=overwrite)
    say(f"[green]✓[/] make-world: {train} train + {val} val scenes ({layout} layout) → {out}")


def make_pairs_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the webdataset shards into.")],
    scenes: Annotated[int, typer.Option(help="Samples, one fresh scene each (never a make-world scene).")] =
        _P.scenes,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives byte-identical shards.")] = _P.seed,
    shard_size: Annotated[int, typer.Option(help="Samples per .tar shard.")] = _P.shard_size,
    crop_prob: Annotated[float, typer.Option(help="Share of samples that are a random crop re-captioned with what "
                                             "it shows.")] = _P.crop_prob,
    detail: Annotated[float, typer.Option(help="Probability of each look, size and position phrase per object.")] =
        _P.detail,
    size: Annotated[int, typer.Option(help="Scene side in pixels.")] = _P.size,
    overwrite: Overwrite = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Write image-caption pairs of fresh demo scenes as webdataset shards (img2dataset's layout), fed as the toy
    CLIP is fed: detailed captions, half of the images re-captioned crops. A killed run resumes.

    \b
    Example:
      vpltool make-pairs runs/pairs --scenes 25600 && vpltool train-pgseg runs/pairs -o runs/gv --recipe demo
    """
    from ..demo.make_pairs import write_pairs

    cfg = PairsConfig(scenes=scenes, seed=seed, shard_size=shard_size, crop_prob=crop_prob, detail=detail,
                      size=size)
    with progress("make-pairs", unit="pairs") as (on_start, on_item):
        write_pairs(out, cfg, overwrite=overwrite, on_start=on_start, on_shard=on_item)
    say(f"[green]✓[/] make-pairs: {scenes} pairs in {-(-scenes // shard_size)} shard(s) → {out}")


def train_toy_clip_cmd(
    out: Annotated[Path, typer.Argument(help="Model folder to write (open_clip local-dir + vpltool.json).")] =
        Path("vpltool/assets/toy-clip"),
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = _T.steps,
    batch_size: Annotated[int, typer.Option(help="Scenes per step.")] = _T.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = _T.lr,
    crop_prob: Annotated[float, typer.Option(help="Share of scenes replaced by a re-captioned random crop.")] =
        _T.crop_prob,
    logit_scale: Annotated[float, typer.Option(help="Initial inverse temperature, trainable, clamped at 100 (0: "
                                               "open_clip's 1/0.07).")] = _T.logit_scale,
    captions: Annotated[str, typer.Option(help="names (class and background words) | detailed (+ colour, size, "
                                          "position and count words from the mask).")] = _T.captions,
    layers: Annotated[int, typer.Option(help="Vision blocks; all but the last --global-blocks attend to --window "
                                        "patch windows.")] = _T.layers,
    global_blocks: Annotated[int, typer.Option(help="The last vision blocks that attend globally.")] =
        _T.global_blocks,
    window: Annotated[int, typer.Option(help="Side of the early blocks' patch window, odd (1: a patch attends to "
                                        "itself alone).")] = _T.window,
    qk_init: Annotated[float, typer.Option(help="Mimetic init of the attention (W_q = W_k, this gain; 0: "
                                           "open_clip's init).")] = _T.qk_init,
    qk_blocks: Annotated[str, typer.Option(help="Blocks --qk-init applies to: global | all.")] = _T.qk_blocks,
    pool: Annotated[str, typer.Option(help="Image embedding trained: mean (patch mean, CLIP-ES's) | cls | both.")] =
        _T.pool,
    loss: Annotated[str, typer.Option(help="multi (same-meaning captions are positives) | infonce.")] = _T.loss,
    threads: Annotated[int, typer.Option(help="CPU threads; a fixed count makes a retrain bit-identical (0: all "
                                         "cores).")] = _T.threads,
    seed: Annotated[int, typer.Option(help="Seed; the defaults rebuild the shipped checkpoint.")] = _T.seed,
    pairs: Annotated[Optional[Path], typer.Option(help="Train on these image-caption pairs (make-pairs shards, "
                                                  "each image and caption as stored) instead of scenes rendered "
                                                  "on the fly.")] = None,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Train the demo world's toy CLIP from scratch on rendered scenes and captions (CPU, bit-identical per seed).

    \b
    Example:
      vpltool train-toy-clip /tmp/toy-clip && vpltool extract WORLD -o F --model local-dir:/tmp/toy-clip
    """
    from ..demo.toyclip import check_out_dir
    from ..demo.train_toy_clip import train_toy_clip

    check_out_dir(out)  # before the first progress line: a refused folder is the only line
    from .. import io

    io.check_outputs("train-toy-clip", {})  # the --log, in this run's context
    cfg = ToyClipConfig(steps=steps, batch_size=batch_size, lr=lr, crop_prob=crop_prob, seed=seed,
                        logit_scale=logit_scale, layers=layers, global_blocks=global_blocks, window=window,
                        qk_init=qk_init, qk_blocks=qk_blocks, captions=captions, pool=pool, loss=loss, threads=threads)
    if pairs is not None:  # checked before the first progress line too
        from ..demo.train_toy_clip import open_pair_source

        pairs = open_pair_source(pairs, cfg.batch_size, cfg.captions)
    with progress("train-toy-clip", unit="steps") as (on_start, on_item):
        on_start(cfg.steps)
        metrics = train_toy_clip(out, cfg, on_step=lambda step, loss: on_item(1), pairs=pairs)
    say(f"[green]✓[/] train-toy-clip: loss {metrics['final_loss']:.3f}, label-set accuracy "
        f"{metrics['label_set_accuracy']:.2f}, GradCAM mIoU {metrics['gradcam_miou']:.3f}, "
        f"{metrics['seconds']:.0f} s → {out}")


def train_toy_dino_cmd(
    out: Annotated[Path, typer.Argument(help="Weights file to write (safetensors; a .json record beside it).")] =
        Path("vpltool/assets/toy-dino/model.safetensors"),
    data: Annotated[Path, typer.Option(help="A make-world folder: its train images (no labels, no captions) are "
                                       "the training set.")] = Path("runs/toy-dino/world"),
    epochs: Annotated[int, typer.Option(help="Passes over the train images.")] = _D.epochs,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = _D.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = _D.lr,
    local_crops: Annotated[int, typer.Option(help="Local views per image (multi-crop).")] = _D.local_crops,
    threads: Annotated[int, typer.Option(help="CPU threads; a fixed count makes a retrain bit-identical.")] =
        _D.threads,
    seed: Annotated[int, typer.Option(help="Seed; the defaults rebuild the shipped weights.")] = _D.seed,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Train the demo world's toy DINO (a timm ViT, DINO's self-supervised recipe) for `cam --affinity dino`.

    \b
    Example:
      vpltool train-toy-dino /tmp/dino.safetensors --data runs/demo/world
      vpltool cam F -p P -o C --refine caa --affinity dino --dino-model test_vit --dino-weights /tmp/dino.safetensors
    """
    from dataclasses import replace

    from .. import io
    from ..demo.train_toy_dino import KIND, RECORD_KIND, train_toy_dino

    io.check_outputs("train-toy-dino", {"OUT": (out, "file", KIND), "OUT's record": (out.with_suffix(".json"), "file",
                                                                                     RECORD_KIND)},
                     inputs={"--data": data}, overwrite=overwrite)
    cfg = replace(_D, epochs=epochs, batch_size=batch_size, lr=lr, local_crops=local_crops, threads=threads,
                  seed=seed)
    with progress("train-toy-dino", unit="steps") as (on_start, on_item):
        record = train_toy_dino(out, data, cfg, on_start=on_start, on_step=lambda step, loss: on_item(1))
    say(f"[green]✓[/] train-toy-dino: loss {record['final_loss']:.3f}, teacher entropy "
        f"{record['teacher_entropy']:.2f} nats, {record['seconds']:.0f} s → {out}")


def train_toy_sam_cmd(
    out: Annotated[Path, typer.Argument(help="Weights file to write (safetensors, a whole Sam's tensor names; a "
                                        ".json record beside it).")] = Path("vpltool/assets/toy-sam/model.safetensors"),
    data: Annotated[Path, typer.Option(help="A make-world folder: its train masks, each object instance a "
                                       "class-agnostic mask (no class labels, no captions, no val), are the "
                                       "training set.")] = Path("runs/toy-sam/world"),
    epochs: Annotated[int, typer.Option(help="Passes over the train images.")] = _S.epochs,
    batch_size: Annotated[int, typer.Option(help="Images per step, each with all its masks.")] = _S.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (SAM's).")] = _S.lr,
    point_rounds: Annotated[int, typer.Option(help="Rounds adding a point from the error region after the first "
                                              "prompt (SAM's 8).")] = _S.point_rounds,
    mask_rounds: Annotated[int, typer.Option(help="Rounds adding only the previous mask's logits (SAM's 2).")] =
        _S.mask_rounds,
    background_masks: Annotated[bool, typer.Option(
        "--background-masks/--objects-only", help="Also the background region of each scene as a mask (SAM's "
        "\"stuff\"), so that its automatic masks could cover the scenes, not the objects alone. Measured on world "
        "seed 20: the toy then learns the background and loses the objects (docs/pipeline.md, sam-pseudo).")] =
        _S.background_masks,
    threads: Annotated[int, typer.Option(help="CPU threads; a fixed count makes a retrain bit-identical.")] =
        _S.threads,
    seed: Annotated[int, typer.Option(help="Seed; the defaults rebuild the shipped weights.")] = _S.seed,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Train the demo world's toy SAM (segment-anything's modules, SAM's recipe) for `segment --dense trident`.

    \b
    Example:
      vpltool train-toy-sam /tmp/sam.safetensors --data runs/demo/world
      vpltool segment runs/demo/world -o S --model vpltool-toy --pretrained none --dense trident \\
          --proxy-model test_vit --proxy-weights vpltool/assets/toy-dino/model.safetensors \\
          --sam-model toy --sam-weights /tmp/sam.safetensors
    """
    from dataclasses import replace

    from .. import io
    from ..demo.train_toy_sam import KIND, RECORD_KIND, train_toy_sam

    io.check_outputs("train-toy-sam", {"OUT": (out, "file", KIND), "OUT's record": (out.with_suffix(".json"), "file",
                                                                                    RECORD_KIND)},
                     inputs={"--data": data}, overwrite=overwrite)
    cfg = replace(_S, epochs=epochs, batch_size=batch_size, lr=lr, point_rounds=point_rounds, mask_rounds=mask_rounds,
                  background_masks=background_masks, threads=threads, seed=seed)
    with progress("train-toy-sam", unit="steps") as (on_start, on_item):
        record = train_toy_sam(out, data, cfg, on_start=on_start, on_step=lambda step, loss: on_item(1))
    say(f"[green]✓[/] train-toy-sam: loss {record['final_loss']:.3f}, train-mask IoU {record['first_iou']:.3f} "
        f"(first prompt) / {record['last_iou']:.3f} (last round), {record['seconds']:.0f} s → {out}")


def train_toy_sam3_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write (Hugging Face's layout: config.json, "
                                        "model.safetensors; the record model.json).")] =
        Path("vpltool/assets/toy-sam3"),
    data: Annotated[Path, typer.Option(help="A make-world folder: its train images, class names (classes.txt, the "
                                       "concept prompts) and masks (each class's connected components its "
                                       "instances) are the training set; the val split is never read.")] =
        Path("runs/toy-sam3/world"),
    epochs: Annotated[int, typer.Option(help="Passes over the train images.")] = _S3.epochs,
    batch_size: Annotated[int, typer.Option(help="Images per step, each with every class as a prompt.")] =
        _S3.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (SAM 3's transformer lr).")] = _S3.lr,
    width: Annotated[int, typer.Option(help="The ViT's, FPN's and DETR's width.")] = _S3.width,
    side: Annotated[int, typer.Option(help="SAM 3's square input side in pixels (a multiple of 28).")] = _S3.side,
    threads: Annotated[int, typer.Option(help="CPU threads; a fixed count makes a retrain bit-identical.")] =
        _S3.threads,
    seed: Annotated[int, typer.Option(help="Seed; the defaults rebuild the shipped weights.")] = _S3.seed,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Train the demo world's toy SAM 3 (transformers' Sam3Model, SAM 3's detector recipe) for `--dense sam3`,
    `--dense activesam` and the sam3 pseudo masks.

    \b
    Example:
      vpltool make-world /tmp/w20 --seed 20
      vpltool train-toy-sam3 /tmp/sam3 --data /tmp/w20
      vpltool segment runs/demo/world --split val -o S --dense sam3 --sam3-weights /tmp/sam3
    """
    from dataclasses import replace

    from .. import io
    from ..demo.train_toy_sam3 import KIND, RECORD_FILE, RECORD_KIND, train_toy_sam3
    from ..errors import VplError
    from ..models.backbones.sam3_weights import HF_WEIGHTS

    if out.exists() and not out.is_dir():
        raise VplError(f"{out}: exists and is not a folder; choose a folder for the model")
    io.check_outputs("train-toy-sam3", {"OUT's weights": (out / HF_WEIGHTS, "file", KIND),
                                        "OUT's record": (out / RECORD_FILE, "file", RECORD_KIND)},
                     inputs={"--data": data}, overwrite=overwrite)
    cfg = replace(_S3, epochs=epochs, batch_size=batch_size, lr=lr, width=width, side=side, threads=threads,
                  seed=seed)
    from ..io.beside import built_beside

    # a model folder replaced (its own kind, or --overwrite): the new model is made in the folder's place while the
    # last one waits beside it, kept back unless this run writes its record (a failure, a kill: the last one, whole)
    with built_beside(out, RECORD_FILE, out.is_dir()), \
            progress("train-toy-sam3", unit="steps") as (on_start, on_item):
        record = train_toy_sam3(out, data, cfg, on_start=on_start, on_step=lambda step, loss: on_item(1))
    (out / io.LOCK_FILE).unlink(missing_ok=True)  # the swap's lock, held no more: the package ships the folder
    say(f"[green]✓[/] train-toy-sam3: loss {record['first_loss']:.2f} → {record['final_loss']:.2f} over "
        f"{record['steps']} steps, {record['seconds']:.0f} s → {out}")


def train_toy_radio_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write: radio.pth.tar (NVlabs/RADIO's hub checkpoint, for "
                                        "--proxy-weights), siglip/ (a Hugging Face SigLIP folder, for "
                                        "--language-model) and the record model.json.")] =
        Path("vpltool/assets/toy-radio"),
    siglip_steps: Annotated[int, typer.Option(help="Steps of the toy SigLIP (sigmoid loss on fresh scenes' "
                                              "captions).")] = _R.siglip_steps,
    radio_steps: Annotated[int, typer.Option(help="Steps of the toy C-RADIO's distillation (unlabeled fresh "
                                             "scenes).")] = _R.radio_steps,
    batch_size: Annotated[int, typer.Option(help="Images (image-caption pairs) per step.")] = _R.batch_size,
    width: Annotated[int, typer.Option(help="The student's and the SigLIP's width (two heads).")] = _R.width,
    depth: Annotated[int, typer.Option(help="The student's blocks.")] = _R.depth,
    side: Annotated[int, typer.Option(help="Input side in pixels (a multiple of 16; the world's scenes "
                                      "resized).")] = _R.side,
    dino_teacher: Annotated[bool, typer.Option(help="Distil the shipped toy DINO too (RADIO's second "
                                               "teacher).")] = _R.dino_teacher,
    threads: Annotated[int, typer.Option(help="CPU threads; a fixed count makes a retrain bit-identical.")] =
        _R.threads,
    seed: Annotated[int, typer.Option(help="Seed; the defaults rebuild the shipped files.")] = _R.seed,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Train the demo world's toy RADIO (a toy SigLIP, then a toy C-RADIOv3 distilled from it and the toy DINO)
    for `--dense radseg`, on fresh scenes of the world (never a make-world split).

    \b
    Example:
      vpltool train-toy-radio /tmp/radio
      vpltool segment runs/demo/world --split val -o S --dense radseg --proxy-weights /tmp/radio/radio.pth.tar \\
          --language-model /tmp/radio/siglip --short-side 192 --slide-crop 192
    """
    from dataclasses import replace

    from .. import io
    from ..demo.train_toy_radio import RECORD_FILE, RECORD_KIND, train_toy_radio
    from ..errors import VplError

    if out.exists() and not out.is_dir():
        raise VplError(f"{out}: exists and is not a folder; choose a folder for the toy RADIO")
    cfg = replace(_R, siglip_steps=siglip_steps, radio_steps=radio_steps, batch_size=batch_size, width=width,
                  depth=depth, side=side, dino_teacher=dino_teacher, threads=threads, seed=seed)
    io.check_outputs("train-toy-radio", {"OUT's record": (out / RECORD_FILE, "file", RECORD_KIND)},
                     overwrite=overwrite)
    from ..io.beside import built_beside

    # as train-toy-sam3: the new folder is made in the last one's place, which waits beside it until the record
    with built_beside(out, RECORD_FILE, out.is_dir()), \
            progress("train-toy-radio", unit="steps") as (on_start, on_item):
        record = train_toy_radio(out, cfg, on_start=on_start, on_step=lambda: on_item(1))
    (out / io.LOCK_FILE).unlink(missing_ok=True)  # the swap's lock, held no more: the package ships the folder
    say(f"[green]✓[/] train-toy-radio: SigLIP loss {record['siglip']['first_loss']:.2f} → "
        f"{record['siglip']['final_loss']:.2f}, RADIO's {record['radio']['first_loss']:.2f} → "
        f"{record['radio']['final_loss']:.2f}, {record['seconds']:.0f} s → {out}")


def choose_pseudo_cmd(
    run: Annotated[Path, typer.Argument(help="A Make run folder (the Makefile's RUN).")],
    among: Annotated[list[str], typer.Argument(help="Refinements to choose among (the Makefile's REFINES); their "
                                               "pseudo masks and train-split eval JSONs must exist.")],
    refine: Annotated[Optional[str], typer.Option(help="The refinement of RUN's own folders (RUN/pseudo; any other "
                                                  "R's are RUN/R/pseudo), checked against their records "
                                                  "[default: read from the records].")] = None,
    split: Annotated[Optional[str], typer.Option("--split", "-s", help="The split every score must be on "
                                                 "[default: the one the masks were made from].")] = None,
    pick: Annotated[str, typer.Option(help="auto (the rule) or one of AMONG.")] = "auto",
    by: Annotated[str, typer.Option(help="What the rule scores: decoder (the decoder trained on each candidate's "
                                    "masks, RUN[/R]/decoder, by its prediction RUN[/R]/pred_train and its eval JSON "
                                    "RUN/metrics[/R]/pred_train.json) | masks (the masks' own mIoU).")] = "decoder",
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Choose, on the training split, which refinement's CRF pseudo masks train the decoder: the one whose decoder
    scores the highest mIoU on the training split (--by decoder; or whose masks do, --by masks). Prints the masks'
    folder on stdout (for the Makefile; their decoder is the folder's sibling decoder/), the choice and every
    candidate's scores on stderr, and writes RUN/metrics/pseudo_choice.json (demo-report shows it). Each score must
    be eval's JSON of that folder as it is now, on that split (eval records the folder, the digests of its record and
    of its masks' content, and the split); each decoder must be the one trained on those masks.

    \b
    Example:
      make decoders && vpltool choose-pseudo runs/demo none caa caa+sgc
    """
    from ..demo.choose_pseudo import choose_pseudo, describe

    choice = choose_pseudo(run, among, refine, pick, split, by, overwrite=overwrite)
    say(describe(choice))
    typer.echo(choice["folder"])


def demo_report_cmd(
    run: Annotated[Path, typer.Argument(help="A demo run folder (the Makefile's RUN).")] = Path("runs/demo"),
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Table of mIoU per stage, train and held-out, next to chance; writes RUN/metrics.json and the contact sheets
    RUN/contact_sheet.png (train) and RUN/contact_sheet_val.png (held-out, with the decoder's prediction)."""
    from rich.console import Console

    from ..demo.report import format_report, run_demo_report

    report = run_demo_report(run, overwrite=overwrite)
    Console().print(format_report(report))
    say(f"[green]✓[/] demo-report → {', '.join([str(run / 'metrics.json'), *report['sheets']])}; every image: "
        f"`vpltool report {run}` (make report) → {run / 'report' / 'index.html'}")

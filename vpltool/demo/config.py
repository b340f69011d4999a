"""The demo world's settings, defined once: the CLI's defaults, the Makefile's and the library's come from here.

:class:`ToyClipConfig` is the toy CLIP's training recipe (its defaults rebuild the shipped checkpoint, `make
toy-clip`); :class:`WorldConfig` is what `make-world` renders. Both check their values when built, so a bad value
fails with one line before anything is trained or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import at_least, choice, fraction, positive, require, seed_value

CAPTION_STYLES = ("names", "detailed")
POOLS = ("mean", "cls", "both")
LOSSES = ("multi", "infonce")
QK_BLOCKS = ("global", "all")
LAYOUTS = ("folder", "voc")
MAX_LR = 1.0  # AdamW moves each weight by about lr a step: above 1 the toy models only diverge (inf: NaN weights)
MAX_SIZE = 2048  # scene side: 100000 asked for a 37 GiB array and died with a MemoryError traceback
MAX_SCENES = 1_000_000  # train + val scenes of one world (its plan is held in memory before the first is drawn)
# scenes of one train-toy-clip step: each is rendered and held in memory with the batch x batch similarities (4096 at
# 96 px: 0.45 GB of float pixels, 64 MB of logits); 2147483648 grew memory for minutes before the first step
MAX_TOY_BATCH = 4096
# the toy SAM 3's sizes and counts: SAM 3's own widths (1024 ViT and text, 256 DETR) and 200 queries are below these
MAX_TOY_SAM3 = {"width": 1024, "text_width": 1024, "queries": 1000, "epochs": 10_000, "batch_size": MAX_TOY_BATCH,
                "threads": 1024}


@dataclass(frozen=True)
class ToyClipConfig:
    """How the toy CLIP is trained (``vpltool train-toy-clip``).

    Attributes:
        steps: optimiser steps.
        batch_size: scenes per step (>= 2).
        lr: AdamW peak learning rate (short warmup, cosine to 0, weight decay 0.1 on matrices).
        crop_prob: probability in [0, 1] that a scene is replaced by a random crop re-captioned with what it shows.
        seed: seeds the initial weights, the augmentation and the training and held-out scenes.
        logit_scale: initial inverse temperature (trainable, clamped at 100 as CLIP does); 0 = open_clip's 1/0.07.
            100 starts at CLIP's final temperature, which VPL's tau_I = 0.03 > tau_T relies on (Proposition 1).
        layers: vision blocks (>= 2); all but the last ``global_blocks`` attend to 3x3 patch windows.
        global_blocks: the last blocks that attend globally (1..layers).
        window: the side (odd, >= 1) of the patch window the other blocks attend to; 1: each patch attends to itself
            alone, so the tokens GradCAM reads (the last block's input) hold their own patch only.
        qk_init: gain of a mimetic query-key initialisation (``W_q = W_k``, Trockman & Kolter 2023, as the toy
            DINO); 0 = open_clip's own init.
        qk_blocks: the blocks ``qk_init`` applies to: 'global' (the last ``global_blocks``) or 'all'.
        captions: 'names' (class names and background word) or 'detailed' (each object also described by colour,
            texture, size, position and count words read off the mask).
        detail: with detailed captions, the probability in [0, 1] of each attribute of each object.
        pool: the image embedding trained: 'mean' of the patch tokens (CLIP-ES's inference path), 'cls' (the class
            token, as real CLIP), or 'both'.
        loss: 'multi' (InfoNCE where every caption with the same meaning is a positive) or 'infonce' (diagonal only).
        threads: CPU threads while training (0 = torch's default). CPU matmuls split their sums differently for
            other thread counts, so a fixed count is what makes a retrain bit-identical on any machine.
    """

    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    crop_prob: float = 0.5
    seed: int = 0
    logit_scale: float = 100.0
    layers: int = 4
    global_blocks: int = 1
    window: int = 3
    qk_init: float = 2.0
    qk_blocks: str = "all"
    captions: str = "detailed"
    detail: float = 0.5
    pool: str = "mean"
    loss: str = "multi"
    threads: int = 1

    def __post_init__(self) -> None:
        at_least("--steps", self.steps, 1)
        seed_value("--seed", self.seed)
        at_least("--batch-size", self.batch_size, 2)
        require(self.batch_size <= MAX_TOY_BATCH, f"--batch-size {self.batch_size}: at most {MAX_TOY_BATCH:,} scenes "
                "per step (each is rendered and held in memory, with a batch x batch similarity matrix); give a "
                "smaller batch")
        at_least("--layers", self.layers, 2)
        require(1 <= self.global_blocks <= self.layers, f"--global-blocks {self.global_blocks}: must be 1..--layers")
        at_least("--threads", self.threads, 0)
        positive("--lr", self.lr, upper=MAX_LR)
        require(self.window >= 1 and self.window % 2 == 1, f"--window {self.window}: must be odd and >= 1")
        require(math.isfinite(self.qk_init) and self.qk_init >= 0,
                f"--qk-init {self.qk_init}: must be a finite number >= 0 (0: open_clip's init)")
        fraction("--crop-prob", self.crop_prob)
        fraction("detail", self.detail)
        require(0 <= self.logit_scale <= 100, f"--logit-scale {self.logit_scale}: must be in [0, 100] (0: open_clip's "
                "1/0.07; CLIP clamps it at 100)")
        choice("--captions", self.captions, CAPTION_STYLES)
        choice("--qk-blocks", self.qk_blocks, QK_BLOCKS)
        choice("--pool", self.pool, POOLS)
        choice("--loss", self.loss, LOSSES)


@dataclass(frozen=True)
class ToyDinoConfig:
    """How the toy DINO is trained (``vpltool train-toy-dino``, :mod:`vpltool.demo.train_toy_dino`); the defaults
    rebuild the shipped weights (`make toy-dino`).

    Attributes:
        model: the timm ViT (``--dino-model`` when it is used): ``test_vit`` is timm's 0.3 M-parameter ViT (patch 16,
            width 64, 6 blocks, 2 heads).
        epochs: passes over the world's train images. batch_size: images per step.
        lr, min_lr: AdamW peak learning rate (linear warmup, cosine to ``min_lr``). weight_decay: on matrices only.
        out_dim: prototypes of the DINO head. student_temp, teacher_temp: softmax temperatures (the teacher's lower:
            sharpening). center_momentum: of the running centre of the teacher's outputs. momentum: the teacher's
            EMA momentum at the start (cosine to 1).
        local_crops: local views per image. global_scale, local_scale: crop areas as fractions of the image.
        jitter: colour jitter strength (brightness, contrast, saturation factors in 1 +- jitter).
        qk_init: gain of the mimetic query-key initialisation (``W_q = W_k``; 0 = timm's own init).
        seed: seeds the initial weights, the image order and the crops. threads: CPU threads (a fixed count makes the
            rebuild bit-identical).
    """

    model: str = "test_vit"
    epochs: int = 16
    batch_size: int = 50
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.04
    out_dim: int = 1024
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    momentum: float = 0.99
    local_crops: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    jitter: float = 0.4
    qk_init: float = 1.0
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        at_least("--epochs", self.epochs, 1)
        at_least("--batch-size", self.batch_size, 2)
        at_least("--local-crops", self.local_crops, 0)
        at_least("--threads", self.threads, 1)
        seed_value("--seed", self.seed)
        positive("--lr", self.lr, upper=MAX_LR)
        require(math.isfinite(self.min_lr) and self.min_lr >= 0, f"min_lr {self.min_lr}: must be >= 0")
        require(0 < self.teacher_temp and 0 < self.student_temp, "temperatures must be > 0")
        fraction("--momentum", self.momentum)
        fraction("--jitter", self.jitter)
        require(math.isfinite(self.qk_init) and self.qk_init >= 0, f"qk_init {self.qk_init}: must be >= 0")


@dataclass(frozen=True)
class ToySamConfig:
    """How the toy SAM is trained (``vpltool train-toy-sam``, :mod:`vpltool.demo.train_toy_sam`); the defaults
    rebuild the shipped weights (`make toy-sam`). SAM's recipe (Kirillov et al., ICCV 2023, appendix A) at toy size.

    Attributes:
        model: the ``sam`` family's architecture (:data:`vpltool.models.backbones.sam.SAM_ARCHS`; ``--sam-model``).
        epochs: passes over the world's train images. batch_size: images per step (each with all its masks).
        lr: AdamW peak learning rate (SAM's 8e-4; linear warmup over ``warmup`` steps, then divided by 10 at 2/3
            and at 26/27 of the steps, SAM's 60k and 86.7k of 90k). weight_decay: SAM's 0.1, on matrices only.
        point_rounds: the iterative rounds after the first prompt that add one point from the error region (SAM's
            8). mask_rounds: rounds that add no point, only the previous mask's logits (SAM's 2: one among the
            point rounds, one last).
        focal_weight, dice_weight: the mask loss's mix (SAM's 20:1). iou_weight: the IoU head's MSE weight (SAM's 1).
        box_noise: the box corners' noise std as a fraction of the box's side, capped at ``box_noise_max`` of the
            image's long side (SAM's 10 %, at most 20 of 1024 px).
        min_area: an instance smaller than this many pixels (a sliver cut off by another object) is not a mask.
        background_masks: also the background region of each scene (its 8-connected components) as masks, as SAM's
            data holds "stuff" beside objects; without them the automatic mask generator covers the objects alone
            (0.3 % of the background pixels), so a pixel the CAM spilled onto the background meets no mask. Measured
            (world seed 20, the recipe's other defaults): the toy learns the background and loses the objects
            (studies/results/toy_sam_background_masks_world20.json), so sam-pseudo's toy is objects-only.
        seed: seeds the initial weights, the image order and the prompts. threads: CPU threads (a fixed count makes
            the rebuild bit-identical).
    """

    model: str = "toy"
    epochs: int = 24
    batch_size: int = 16
    lr: float = 8e-4
    warmup: int = 50
    weight_decay: float = 0.1
    point_rounds: int = 2
    mask_rounds: int = 1
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    box_noise: float = 0.1
    box_noise_max: float = 20 / 1024
    min_area: int = 16
    background_masks: bool = False
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        at_least("--epochs", self.epochs, 1)
        at_least("--batch-size", self.batch_size, 1)
        at_least("--warmup", self.warmup, 0)
        at_least("--point-rounds", self.point_rounds, 0)
        at_least("--mask-rounds", self.mask_rounds, 0)
        at_least("--min-area", self.min_area, 1, why=" pixels")
        at_least("--threads", self.threads, 1)
        seed_value("--seed", self.seed)
        positive("--lr", self.lr, upper=MAX_LR)
        for name, value in (("weight_decay", self.weight_decay), ("focal_weight", self.focal_weight),
                            ("dice_weight", self.dice_weight), ("iou_weight", self.iou_weight)):
            require(math.isfinite(value) and value >= 0, f"{name} {value}: must be a finite number >= 0")
        fraction("--box-noise", self.box_noise)
        fraction("--box-noise-max", self.box_noise_max)


@dataclass(frozen=True)
class ToySam3Config:
    """How the toy SAM 3 is trained (``vpltool train-toy-sam3``, :mod:`vpltool.demo.train_toy_sam3`); the defaults
    rebuild the shipped weights (`make toy-sam3`). SAM 3's detector recipe (Carion et al. 2025; Meta's
    ``sam3/train``: ``BinaryHungarianMatcherV2``, ``Sam3LossWrapper``) at toy size.

    Attributes:
        width: the ViT's, the FPN's and the DETR's width (transformers' ``Sam3Config``; tiny_config's 32).
        side: SAM 3's square input in pixels, a multiple of 28 (its 14-pixel patch, an even grid; 168: a 12 x 12
            grid, a patch 8 of the world's 96 pixels as the toy CLIP's, masks 48 x 48).
        text_width: the text tower's width; its token table keeps CLIP's 49408 rows (the real tokenizer serves),
            so this sets most of the file's size (8: 1.6 MB).
        queries: the DETR's object queries (Meta's 200; a world scene holds at most a few objects of a class).
        epochs: passes over the world's train images. batch_size: images per step, each with every class as a
            concept prompt (the classes present positive, the absent ones negative).
        lr: AdamW peak learning rate for every weight (Meta's transformer lr 8e-4; linear warmup over ``warmup``
            steps, then cosine to 0, where Meta's inverse square root serves a long run). weight_decay: AdamW's
            (Meta's 0.1), on matrices only. clip: gradient-norm clip (Meta's GradientClipper 0.1).
        cost_class, cost_bbox, cost_giou: the Hungarian matcher's weights (Meta's 2, 5, 2; the class cost the
            focal form). loss_ce, loss_presence, loss_bbox, loss_giou, loss_mask, loss_dice, loss_semantic,
            loss_semantic_dice: the loss weights (Meta's 20, 20, 5, 2, 200, 10, 20, 30).
        min_area: an instance smaller than this many pixels (a sliver another object cuts off) is no target.
        seed: seeds the initial weights and the image order. threads: CPU threads (a fixed count makes the
            rebuild bit-identical).
    """

    width: int = 32
    side: int = 168
    text_width: int = 8
    queries: int = 16
    epochs: int = 25
    batch_size: int = 4
    lr: float = 8e-4
    warmup: int = 100
    weight_decay: float = 0.1
    clip: float = 0.1
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    loss_ce: float = 20.0
    loss_presence: float = 20.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    loss_mask: float = 200.0
    loss_dice: float = 10.0
    loss_semantic: float = 20.0
    loss_semantic_dice: float = 30.0
    min_area: int = 16
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("width", "text_width", "queries", "epochs", "batch_size", "threads"):
            at_least(f"--{name.replace('_', '-')}", getattr(self, name), 1)
            # a toy trained on a CPU: 2**31 asked for a model of 2**31 channels (or as many passes) and never returned
            require(getattr(self, name) <= MAX_TOY_SAM3[name], f"--{name.replace('_', '-')} {getattr(self, name)}: "
                    f"must be at most {MAX_TOY_SAM3[name]} (SAM 3's own sizes are below it; a toy trains on a CPU)")
        require(self.width % 2 == 0 and self.text_width % 2 == 0, f"--width {self.width} / --text-width "
                f"{self.text_width}: give even widths (two attention heads each)")
        require(28 <= self.side <= 1008 and self.side % 28 == 0,
                f"--side {self.side}: give a multiple of 28 pixels (SAM 3's 14-pixel patch, an even grid), at most "
                "SAM 3's 1008")
        at_least("--warmup", self.warmup, 0)
        at_least("--min-area", self.min_area, 1, why=" pixels")
        seed_value("--seed", self.seed)
        positive("--lr", self.lr, upper=MAX_LR)
        for name in ("weight_decay", "clip", "cost_class", "cost_bbox", "cost_giou", "loss_ce", "loss_presence",
                     "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_semantic", "loss_semantic_dice"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"{name} {value}: must be a finite number >= 0")


# the toy RADIO's sizes and counts: a toy trained on a CPU (C-RADIOv3-B's width 768 and 12 blocks are below these)
MAX_TOY_RADIO = {"width": 1024, "head_width": 4096, "depth": 48, "teacher_depth": 48, "text_depth": 48,
                 "siglip_steps": 1_000_000, "radio_steps": 1_000_000, "batch_size": MAX_TOY_BATCH, "threads": 1024}


@dataclass(frozen=True)
class ToyRadioConfig:
    """How the toy RADIO and its toy SigLIP teacher are trained (``vpltool train-toy-radio``,
    :mod:`vpltool.demo.train_toy_radio`); the defaults rebuild the shipped files (`make toy-radio`). RADIO's
    multi-teacher distillation (Ranzinger et al. 2024; C-RADIOv3) at toy size, after SigLIP's sigmoid loss (Zhai et
    al. 2023) for the teacher.

    Attributes:
        width: the student's, the toy SigLIP's vision and text towers' width (two heads each).
        depth: the student's blocks (C-RADIOv3-B's 12). teacher_depth / text_depth: the toy SigLIP's vision and text
            blocks.
        head_width: the hidden width of RADIO's MLP2 summary and feature heads.
        side: the input side in pixels, the world's 96-pixel scenes resized (a multiple of 16, C-RADIOv3's patch;
            192: a 12 x 12 grid, the toy CLIP's); the student's position table covers it (``cpe_max_size``).
        siglip_steps / radio_steps: optimiser steps of each phase. batch_size: images (pairs) per step.
        siglip_lr / radio_lr: AdamW peak learning rates (short warmup, cosine to 0, decay 0.1 on matrices).
        crop_prob / detail: the SigLIP's views and captions, as the toy CLIP's (``detailed_view``).
        dino_teacher: distil the shipped toy DINO too (RADIO's second teacher, ``dino_v2``).
        seed: seeds the weights and every scene, crop and caption. threads: CPU threads (a fixed count makes the
            rebuild bit-identical).
    """

    width: int = 64
    depth: int = 4
    teacher_depth: int = 4
    text_depth: int = 2
    head_width: int = 128
    side: int = 192
    siglip_steps: int = 250
    radio_steps: int = 250
    batch_size: int = 64
    siglip_lr: float = 1e-3
    radio_lr: float = 1e-3
    crop_prob: float = 0.5
    detail: float = 0.5
    dino_teacher: bool = True
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name, most in MAX_TOY_RADIO.items():
            at_least(f"--{name.replace('_', '-')}", getattr(self, name), 1)
            require(getattr(self, name) <= most, f"--{name.replace('_', '-')} {getattr(self, name)}: must be at "
                    f"most {most} (a toy trains on a CPU)")
        require(self.width % 2 == 0, f"--width {self.width}: give an even width (two attention heads)")
        require(self.batch_size >= 2, f"--batch-size {self.batch_size}: give at least 2 (a contrastive loss)")
        require(16 <= self.side <= 1024 and self.side % 16 == 0,
                f"--side {self.side}: give a multiple of 16 pixels (C-RADIOv3's patch), at most 1024")
        positive("--siglip-lr", self.siglip_lr, upper=MAX_LR)
        positive("--radio-lr", self.radio_lr, upper=MAX_LR)
        fraction("crop_prob", self.crop_prob)
        fraction("detail", self.detail)
        seed_value("--seed", self.seed)


@dataclass(frozen=True)
class PairsConfig:
    """What ``vpltool make-pairs`` writes: image-caption pairs of fresh demo scenes as webdataset shards, fed as the
    toy CLIP is fed (:func:`vpltool.demo.train_toy_clip.detailed_view`).

    Attributes:
        scenes: samples to write, one fresh scene each (never a scene of a `make-world` split).
        seed: seeds the scenes (:func:`vpltool.demo.toyclip.scene_seed` purpose ``"pairs"``), crops and captions.
        shard_size: samples per ``.tar`` shard (img2dataset's ``number_sample_per_shard``, 10,000 there).
        crop_prob: share of samples that are a random crop of their scene, re-captioned with what it shows (the toy
            CLIP's 0.5).
        detail: the probability of each look, size and position phrase per object (the toy CLIP's 0.5).
        size: scene side in pixels (the toy CLIP's 96).
    """

    scenes: int = 25600
    seed: int = 0
    shard_size: int = 1000
    crop_prob: float = 0.5
    detail: float = 0.5
    size: int = 96

    def __post_init__(self) -> None:
        at_least("--scenes", self.scenes, 1)
        at_least("--shard-size", self.shard_size, 1)
        seed_value("--seed", self.seed)
        fraction("--crop-prob", self.crop_prob)
        fraction("--detail", self.detail)
        at_least("--size", self.size, 48, why=" pixels (a crop is at least 48 px)")
        require(self.size <= MAX_SIZE, f"--size {self.size}: must be at most {MAX_SIZE} pixels")


@dataclass(frozen=True)
class WorldConfig:
    """What ``vpltool make-world`` renders (the Makefile's WORLD_TRAIN / WORLD_VAL / SEED match these)."""

    train: int = 500
    val: int = 200
    seed: int = 0
    size: int = 96
    layout: str = "folder"
    distractors: float = 0.0

    def __post_init__(self) -> None:
        at_least("--train", self.train, 1)
        at_least("--val", self.val, 0)
        # the scenes are planned in memory before the first is written: a count of 2**31 grew without a word
        require(self.train + self.val <= MAX_SCENES, f"--train {self.train} --val {self.val}: at most "
                f"{MAX_SCENES:,} scenes in all (a demo world of 500 + 200 is the demo's); give smaller counts")
        at_least("--size", self.size, 32, why=" pixels")
        require(self.size <= MAX_SIZE, f"--size {self.size}: must be at most {MAX_SIZE} pixels (a scene is drawn "
                "in memory, ~40 bytes per pixel; the toy CLIP is trained at 96)")
        seed_value("--seed", self.seed)
        fraction("--distractors", self.distractors)
        choice("--layout", self.layout, LAYOUTS)

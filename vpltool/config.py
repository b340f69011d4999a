"""Every default of every stage, defined once, and the rules a value must follow.

Torch-free so that ``vpltool --help`` stays fast: the CLI reads its option defaults from these frozen dataclasses,
and the library functions take the same objects. Each dataclass checks itself when built (``__post_init__``), so a
library caller gets the same one-line :class:`~vpltool.errors.VplError` as a CLI user; messages name the CLI option.
Field comments say *why* a value is what it is; docs/pipeline.md cites where each number comes from.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import VplError

IGNORE_INDEX = 255  # VOC convention: boundary / unknown pixels in masks
DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
PARITIES = ("none", "clip-es")
CACHES = ("light", "full")
MIN_SIDE = 32  # smallest --image-size / --max-side / --long-side accepted (a few patches of any ViT)
# patch tokens per image: ~1024x1024 px at patch 16 (VOC's ~500x375 photos are 768). Every block's attention map is
# tokens^2 per head, so a 4000x3000 photo (47k tokens) asked for 281 GB and died in the allocator
MAX_TOKENS = 4096
# smallest image side a stage accepts: below one ViT-B/16 patch an image is upsampled from a few pixels to a flat
# input, so its CAM says nothing (a 1x1 thumbnail or a broken export, not a photo)
MIN_IMAGE_SIDE = 16


# --------------------------------------------------------------------------------------------- checks
def require(ok: bool, message: str) -> None:
    if not ok:
        raise VplError(message)


def choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
    require(value in choices, f"{option} {value!r}: choose {listed}")


def positive(option: str, value: float | None, *, allow_none: bool = False, upper: float = math.inf) -> None:
    if value is None and allow_none:
        return
    ok = value is not None and math.isfinite(value) and 0 < value <= upper
    bound = f" and at most {upper:g}" if math.isfinite(upper) else ""
    require(ok, f"{option} {value}: must be a number above 0{bound}")


def at_least(option: str, value: int | None, low: int, *, allow_none: bool = False, why: str = "") -> None:
    if value is None and allow_none:
        return
    require(value is not None and value >= low, f"{option} {value}: must be >= {low}{why}")


def fraction(option: str, value: float) -> None:
    require(math.isfinite(value) and 0.0 <= value <= 1.0, f"{option} {value}: must be in [0, 1]")


def non_negative(option: str, value: float) -> None:
    """A weight: finite and >= 0 (nan is not "< 0", so it gets its own words)."""
    require(math.isfinite(value), f"{option} {value}: not a finite number; give a number >= 0")
    require(value >= 0, f"{option} {value}: must be >= 0")


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds: a negative one is refused by numpy deep inside, a traceback


def seed_value(option: str, value: int) -> None:
    require(0 <= value <= MAX_SEED, f"{option} {value}: must be an integer from 0 to {MAX_SEED}")


# --------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class RuntimeConfig:
    """Options spelled the same on every stage."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto = bf16 on CUDA and on CPUs with AMX, else fp32 (device.resolve_precision)
    # images per batch; None = auto: 32 on CUDA (halved on out-of-memory), and on a CPU, where batching buys
    # little, CPU_BATCH for extract and one image for cam and predict (their per-class backward does not batch)
    batch_size: int | None = None
    # image decoding threads (extract) / CRF processes / data-loading processes (train-decoder); 0 = one per CPU
    # core (every stage, see worker_count); 1 = in this process for crf and train-decoder
    workers: int = 2
    overwrite: bool = False

    def __post_init__(self) -> None:
        choice("--precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        at_least("--batch-size", self.batch_size, 1, allow_none=True)
        at_least("--workers", self.workers, 0, why=" (0 = one per CPU core)")

    @property
    def worker_count(self) -> int:
        """``workers`` with 0 resolved: :func:`worker_count`."""
        return worker_count(self.workers)


def worker_count(workers: int) -> int:
    """How many parallel workers ``--workers`` asks for; 0 means one per CPU core this process may use (its
    affinity mask: under Slurm or taskset that is fewer than the machine's cores)."""
    if workers >= 1:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ExtractConfig:
    """`vpltool extract`: one frozen CLIP pass per image, cached for every later stage."""

    image_size: int | None = None  # None = CLIP-ES: each side rounded *up* to a multiple of the patch size
    max_side: int | None = None  # optional cap on the longer side before rounding (keeps huge photos in memory)
    attention_blocks: int = 8  # CAA averages the head-mean attention of the last 8 blocks (CLIP-ES)
    # light: the dense features alone (what learn-prototypes and the decoder read; `cam` re-runs the frozen blocks
    # from the image): 0.8 MB per 500x375 image, VOC train_aug 8 GB. full: + the last block's input and the
    # attention (`cam` then re-runs only the last block: a 3x faster second pass on a CPU), 3.1 MB per image, the
    # attention growing with the square of the patch count
    cache: str = "light"
    # none | clip-es: CLIP-ES's fp16-rounded positional embedding, and the tokens cached in fp32 (not fp16), so that
    # `cam --parity clip-es` reproduces CLIP-ES's fp32 run
    parity: str = "none"
    # an image with more patch tokens is refused before the forward (check_tokens); a safety limit, not a setting
    # of the features, so a resume with another value is allowed (NOT_COMPARED)
    max_tokens: int = MAX_TOKENS

    def __post_init__(self) -> None:
        at_least("--image-size", self.image_size, MIN_SIDE, allow_none=True, why=" pixels")
        at_least("--max-side", self.max_side, MIN_SIDE, allow_none=True, why=" pixels")
        at_least("--attention-blocks", self.attention_blocks, 1)
        choice("--parity", self.parity, PARITIES)
        choice("--cache", self.cache, CACHES)
        at_least("--max-tokens", self.max_tokens, 1)

    @property
    def store_tokens(self) -> bool:
        return self.cache == "full"


CPU_BATCH = 8  # extract's images per batch on a CPU under --batch-size auto (the forward batches well there)
NOT_COMPARED = ("max_tokens",)  # recorded parameters that a resumed run may change (limits, not settings)


def check_tokens(image: object, size: tuple[int, int], grid: tuple[int, int], patch: int, max_tokens: int, *,
                 stage: str = "extract", scale: float = 1.0) -> None:
    """Refuse an image whose ``grid`` (``(h, w)`` patches of its network input) exceeds ``max_tokens``.

    The rule every stage that runs the frozen blocks on an image applies before the forward (`extract`, and `cam`
    when it recomputes or re-runs the last block): one line naming the image, its ``size`` ``(H, W)`` in pixels,
    the token count, and the ``--max-side`` (`predict`: the ``--long-side``; its ``size`` is then the largest test
    view, at ``scale`` x the long side) that brings it under the limit.
    """
    n = grid[0] * grid[1]
    if n <= max_tokens:
        return
    long, short = max(size), min(size)
    side = patch * max(1, int(math.sqrt(max_tokens * long / short)))  # the largest long side whose grid fits
    while side > patch and math.ceil(side / patch) * math.ceil(side * short / long / patch) > max_tokens:
        side -= patch
    if stage == "predict":  # size is the largest test view, at scale x --long-side
        fix = f"pass --long-side {int(side / scale)} or less"
    elif stage == "extract":
        fix = f"pass --max-side {side}"
    else:
        fix = f"re-run `vpltool extract` with --max-side {side}"
    what = f"{size[0]}x{size[1]} pixels"
    what = f"its largest test view, {what}, makes" if stage == "predict" else f"{what} make"
    raise VplError(f"{image}: {what} {n:,} patch tokens ({grid[0]}x{grid[1]} at patch "
                   f"{patch}), above --max-tokens {max_tokens} (attention memory grows with its square); {fix} "
                   "(or raise --max-tokens where the memory is)")


@dataclass(frozen=True)
class TextPrototypesConfig:
    """`vpltool text-prototypes`: class names x templates + background words -> one prototypes file."""

    templates: str = "clip-es"  # clip-es (single 'a clean origami {}.') | imagenet (80-template ensemble) | FILE
    background: str = "auto"  # auto = the preset that matches the classes | voc | coco | none | FILE | "w1,w2"
    synonyms: bool = True  # CLIP-ES fuses synonyms inside one prompt ('bird avian')
    # none | clip-es: CLIP-ES's zeroshot_classifier arithmetic (one prompt at a time, the full 77-token context, the
    # explicit attention path: the same embeddings up to rounding, and the same rounding); the default truncates the
    # context to the longest prompt, ~10x faster on an 80-template ensemble
    parity: str = "none"

    def __post_init__(self) -> None:
        choice("--parity", self.parity, PARITIES)
        require(bool(self.templates.strip()), "--templates is empty: give clip-es, imagenet, a template or a file")


# caa: CLIP-ES | caa+sgc: CAA with SSR's superpixel-group mask on the affinity | none: raw GradCAM
REFINES = ("caa", "caa+sgc", "none")
CAM_ATTENTION_BLOCKS = 8  # CLIP-ES's CAA: the last 8 blocks (cam on a dataset; an extract folder records its own)
# the sharpest softmax temperature `cam` accepts: 10x sharper than CLIP's (1/100); cosines differ by ~0.01-0.1
# between rows, so far below it one row takes all the probability and the GradCAM gradients underflow to 0
MIN_TEMPERATURE = 1e-3
AFFINITIES = ("clip", "dino", "clip+dino")  # the attention CAA's transition matrix is built from
DEFAULT_DINO = "vit_small_patch16_224.dino"


@dataclass(frozen=True)
class CamConfig:
    """`vpltool cam`: softmax-GradCAM + class-aware attention affinity (CLIP-ES), optionally SSR's SGC and DINO."""

    refine: str = "caa"  # caa | caa+sgc | none
    box_threshold: float = 0.4  # CLIP-ES: 0.4 for VOC, 0.7 for COCO
    # CLIP-ES averages the last 8 blocks. None = what the `extract` folder averaged (recorded there; any other value
    # but 1 cannot be served from its cache), or 8 on a dataset given directly
    attention_blocks: int | None = None
    temperature: float | None = None  # None = the prototypes file's own (1/logit_scale for text, tau_I for vision)
    parity: str = "none"  # none | clip-es (CLIP-ES's box ends; needs an extract folder made with --parity clip-es)
    # caa+sgc (SSR): SLIC superpixels per image, K-means groups of them (patches of different groups do not exchange
    # activation), and the weight of a superpixel's centroid (100 Lab units per image side) against its mean Lab
    # colour in the K-means features (0: colour alone). Chosen on the demo world's train split
    # (benchmarks/study_sgc.py); SSR's own settings are not published
    sgc_segments: int = 256
    sgc_clusters: int = 32
    sgc_position: float = 0.0
    sgc_compactness: float = 10.0  # SLIC's colour-vs-space balance
    affinity: str = "clip"  # clip | dino | clip+dino (SSR: a second backbone's attention)
    affinity_weight: float = 0.4  # clip+dino: CLIP's share of the mixed attention, DINO gets the rest (SSR 0.4:0.6)
    dino_model: str = DEFAULT_DINO  # a timm ViT name
    dino_weights: str = "hub"  # hub (timm's pretrained weights, from the local cache offline) | FILE | none (random)
    max_classes_per_pass: int = 32  # bounds memory of the batched backward on images with many labels
    # input (the last block's ln_1 output: CLIP-ES's target layer, what VPL uses) | output (its output tokens)
    layer: str = "input"

    def __post_init__(self) -> None:
        choice("--refine", self.refine, REFINES)
        choice("--layer", self.layer, ("input", "output"))
        fraction("--box-threshold", self.box_threshold)
        at_least("--attention-blocks", self.attention_blocks, 1, allow_none=True)
        positive("--temperature", self.temperature, allow_none=True)
        require(self.temperature is None or self.temperature >= MIN_TEMPERATURE,
                f"--temperature {self.temperature}: must be >= {MIN_TEMPERATURE:g}; below it the softmax over the "
                "image's rows is one-hot in float32 and GradCAM's gradients vanish (CLIP's own is 0.01)")
        choice("--parity", self.parity, PARITIES)
        at_least("--sgc-segments", self.sgc_segments, 1)
        positive("--sgc-compactness", self.sgc_compactness)
        at_least("--sgc-clusters", self.sgc_clusters, 1)
        require(math.isfinite(self.sgc_position) and self.sgc_position >= 0,
                f"--sgc-position {self.sgc_position}: must be a number >= 0 (0 = colour alone)")
        choice("--affinity", self.affinity, AFFINITIES)
        fraction("--affinity-weight", self.affinity_weight)
        require(bool(self.dino_model.strip()), "--dino-model is empty: give a timm ViT name, e.g. " + DEFAULT_DINO)
        require(bool(self.dino_weights.strip()), "--dino-weights is empty: give hub, a weights file or none")
        if self.affinity != "clip":
            require(self.refine in ("caa", "caa+sgc"),
                    f"--affinity {self.affinity} feeds CAA; it needs --refine caa or caa+sgc")
            require(self.parity != "clip-es", f"--affinity {self.affinity}: --parity clip-es reproduces CLIP-ES, "
                    "whose affinity is CLIP's alone; drop one of them")
        at_least("--max-classes-per-pass", self.max_classes_per_pass, 1)


@dataclass(frozen=True)
class EvalConfig:
    """`vpltool eval`: confusion matrix and mIoU (VOC/COCO convention: mean over classes present in GT)."""

    bg_exponents: tuple[float, ...] = (1.0, 2.0)  # CAM folders: bg = (1 - max cam)^a, best a reported (CLIP-ES)
    # none | clip-es (CLIP-ES's fp16 arithmetic for the background score); None = the CAM folder's own --parity
    parity: str | None = None

    def __post_init__(self) -> None:
        require(len(self.bg_exponents) > 0, "--bg-exponents is empty: give at least one value, e.g. 1,2")
        for a in self.bg_exponents:
            positive("--bg-exponents", a)
        if self.parity is not None:
            choice("--parity", self.parity, PARITIES)


TARGETS = ("hard", "soft")
REGULARIZATIONS = ("instance", "class")
MAX_LR = 1000.0  # a step in logit units: anything above diverges at once


@dataclass(frozen=True)
class LearnPrototypesConfig:
    """`vpltool learn-prototypes`: VPL phase 1 (projected gradient descent on the vision prototypes)."""

    tau_i: float = 0.03
    lr: float = 10.0
    iters: int = 3000
    targets: str = "hard"  # hard (paper: Phi-thresholded seeds) | soft (CAM scores as a distribution)
    threshold: float = 0.4  # Phi: CAM score above which a pixel is a seed of its class
    regularization: str = "instance"  # instance (per pixel, paper default) | class (Theorem 2)
    bg_exponent: float = 1.0
    # share of each image's patches used, drawn per image from ``seed`` (1 = all, the paper). The loss is a mean
    # over pixels, so a uniform sample estimates it without bias; 0.25 keeps COCO's ~100 GB of features on one GPU
    pixel_fraction: float = 1.0
    max_memory_gb: float | None = None  # resident pixel budget; above it they stream from scratch shards on disk.
    # None = 60% of free GPU memory (CUDA) or available RAM (CPU): full VOC (~8 GB bf16) stays on one GPU
    seed: int = 0

    def __post_init__(self) -> None:
        positive("--tau-i", self.tau_i)
        positive("--lr", self.lr, upper=MAX_LR)
        at_least("--iters", self.iters, 0)
        choice("--targets", self.targets, TARGETS)
        fraction("--threshold", self.threshold)
        choice("--regularization", self.regularization, REGULARIZATIONS)
        positive("--bg-exponent", self.bg_exponent)
        positive("--pixel-fraction", self.pixel_fraction, upper=1.0)
        positive("--max-memory-gb", self.max_memory_gb, allow_none=True)
        seed_value("seed", self.seed)  # a library field: the CLI has no --seed here


# the dense CRF's implementations (vpltool.densecrf): auto = torch on CUDA, pydensecrf on a CPU and under
# --parity clip-es; torch is the same model as pydensecrf (same lattice, parameters and iterations), batched on a GPU
CRF_BACKENDS = ("auto", "pydensecrf", "torch")


@dataclass(frozen=True)
class CrfConfig:
    """`vpltool crf`: dense CRF pseudo masks; defaults are CLIP-ES's `eval_cam_with_crf.py`."""

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    confidence: float = 0.95  # CRF max probability below this -> 255 ignore; 0 = never (CLIP-ES's --eval_only)
    bg_exponent: float = 1.0
    parity: str = "none"  # none | clip-es (CLIP-ES's wrapped mean-subtracted BGR image and fp16 unary)
    no_crf: bool = False  # thresholded argmax instead of the CRF (paper ablation)
    # auto | pydensecrf | torch; a stage records the one that ran (the two differ in float rounding: a few pixels)
    backend: str = "auto"

    def __post_init__(self) -> None:
        choice("--backend", self.backend, CRF_BACKENDS)
        require(not (self.parity == "clip-es" and self.backend == "torch"),
                "--backend torch with --parity clip-es: the parity reproduces CLIP-ES's own pydensecrf run, whose "
                "float rounding only pydensecrf has; drop --backend torch (auto picks pydensecrf)")
        at_least("--iterations", self.iterations, 1)
        for option, value in (("--gaussian-sxy", self.gaussian_sxy), ("--bilateral-sxy", self.bilateral_sxy),
                              ("--bilateral-srgb", self.bilateral_srgb), ("--bg-exponent", self.bg_exponent)):
            positive(option, value)
        for option, value in (("--gaussian-compat", self.gaussian_compat),
                              ("--bilateral-compat", self.bilateral_compat)):
            require(math.isfinite(value) and value >= 0, f"{option} {value}: must be >= 0")
        fraction("--confidence", self.confidence)
        choice("--parity", self.parity, PARITIES)


# --------------------------------------------------------------------------------------------- decoder
OPTIMIZERS = ("sgd", "adamw")
LOSSES = ("ce", "balanced")
BACKGROUNDS = ("logsumexp", "max")


@dataclass(frozen=True)
class DecoderConfig:
    """`vpltool train-decoder`: VPL phase 2, a light decoder on the frozen CLIP supervised by pseudo masks.

    Defaults are the paper's schedule (SGD, momentum 0.9, wd 1e-4, batch 6, 30k iterations) on WeCLIP's decoder;
    ``decoder_recipe("weclip")`` gives WeCLIP's AdamW recipe, ``decoder_recipe("cpu")`` a schedule a CPU finishes
    in minutes. docs/decoder.md explains every choice.
    """

    # architecture (WeCLIP: per-block MLPs 768->256->256, 1x1 fuse, Dropout2d 0.1, 3 transformer layers, 8 heads)
    dim: int = 256
    layers: int = 3
    heads: int = 8
    dropout: float = 0.1
    include_last_block: bool = False  # WeCLIP reads blocks 1..L-1; the last block's output is not an input
    background: str = "logsumexp"  # logsumexp | max: how the background rows of W make one background score
    temperature: float | None = None  # cosine / temperature scores; None = the prototypes file's own temperature
    learn_temperature: bool = False  # learn the logit scale (initialised from ``temperature``)
    train_prototypes: bool = False  # fine-tune W; frozen by default so the prototypes anchor the embedding space
    # losses (Eq. 14)
    loss: str = "ce"  # ce | balanced (WeCLIP/AFA: mean of background-pixel CE and foreground-pixel CE)
    lambda_ce: float = 1.0
    lambda_rsc: float = 1.0  # 0 = the paper's ablation without regional semantic contrast
    rsc_temperature: float = 0.07  # tau of Eq. 13; the paper gives none, 0.07 as RCA (the module VPL's RSC follows)
    # CMPA (SSR, AAAI 2026): prototype InfoNCE of pseudo-mask regions against the class rows of W and an image-
    # prototype bank (K-means of region embeddings); our reading of the paper, which has no code (docs/decoder.md)
    lambda_proto: float = 0.0  # 0 = off (the default pipeline); SSR's weight is 0.1
    proto_temperature: float = 0.05  # initial value of CMPA's learnable temperature (SSR: 0.05)
    proto_clusters: int = 4  # K-means centres per class in the image-prototype bank (SSR gives no K)
    proto_every: int | None = None  # bank refresh period; None = iters // 6 (SSR: every 5,000 of 30,000)
    # open-vocabulary study: classes held out of training (their pixels ignored, their row dropped from W)
    ignore_classes: tuple[str, ...] = ()
    # optimisation
    recipe: str = "vpl"  # vpl | weclip | cpu: which preset the other fields came from (recorded, not read)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # the paper gives none: the DeepLab/mmseg SGD lr of a freshly initialised head
    momentum: float = 0.9  # SGD momentum; AdamW uses betas (0.9, 0.999)
    weight_decay: float = 1e-4
    warmup_iters: int = 50  # linear warm-up (WeCLIP's 50) before the poly decay: transformer layers from scratch
    poly_power: float = 0.9  # lr x (1 - t/T)^power
    batch_size: int = 6  # per process; the global batch is batch_size x world size
    iters: int = 30000
    # augmentation (WeCLIP): random rescale, horizontal flip, random crop padded with ignore
    crop_size: int = 320  # must be a multiple of the CLIP patch size
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    cache_features: bool = False  # frozen features of a fixed-size view (+ its flip): no rescale / crop
    # bookkeeping
    checkpoint_every: int = 1000
    val_every: int = 2000  # with a validation split; WeCLIP validates every 2000 iterations
    log_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        choice("--recipe", self.recipe, tuple(DECODER_RECIPES))
        choice("--optimizer", self.optimizer, OPTIMIZERS)
        choice("--loss", self.loss, LOSSES)
        choice("--background", self.background, BACKGROUNDS)
        for option, value in (("--dim", self.dim), ("--layers", self.layers), ("--heads", self.heads),
                              ("--iters", self.iters), ("--batch-size", self.batch_size),
                              ("--checkpoint-every", self.checkpoint_every), ("--val-every", self.val_every),
                              ("--log-every", self.log_every)):
            at_least(option, value, 1)
        require(self.dim % self.heads == 0, f"--dim {self.dim} must be a multiple of --heads {self.heads}")
        at_least("--crop-size", self.crop_size, MIN_SIDE, why=" pixels")
        positive("--lr", self.lr, upper=MAX_LR)
        positive("--rsc-temperature", self.rsc_temperature)
        positive("--temperature", self.temperature, allow_none=True)
        require(0 < self.scale_min <= self.scale_max,
                 f"--scale-min {self.scale_min} --scale-max {self.scale_max}: need 0 < min <= max")
        non_negative("lambda_ce", self.lambda_ce)  # a library field: the CLI has no --lambda-ce
        non_negative("--lambda-rsc", self.lambda_rsc)
        seed_value("--seed", self.seed)
        require(self.lambda_proto >= 0, f"--lambda-proto {self.lambda_proto}: must be >= 0 (0 = off, SSR: 0.1)")
        positive("--proto-temperature", self.proto_temperature, upper=1.0)
        at_least("--proto-clusters", self.proto_clusters, 1)
        at_least("--proto-every", self.proto_every, 1, allow_none=True)
        require(len(set(self.ignore_classes)) == len(self.ignore_classes),
                f"--ignore-classes {','.join(self.ignore_classes)}: a class is named twice")
        require("background" not in self.ignore_classes,
                "--ignore-classes: background cannot be held out; name foreground classes")
        fraction("--dropout", self.dropout)

    @property
    def proto_period(self) -> int:
        """CMPA's bank refresh period: ``proto_every``, or SSR's 5,000 / 30,000 of the schedule."""
        return self.proto_every or max(1, self.iters // 6)


DECODER_RECIPES: dict[str, dict[str, Any]] = {
    "vpl": {},
    # WeCLIP (dist_clip_voc.py): AdamW wd 0.01, decoder lr 2e-3 (base 2e-4 x 10), poly power 1, batch 4, balanced CE
    "weclip": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01, "poly_power": 1.0, "batch_size": 4,
               "loss": "balanced"},
    # a CPU finishes in minutes: features cached once (no CLIP forward per iteration), small crops and decoder,
    # AdamW (converges in hundreds of steps); for trying the pipeline on a laptop, not for the paper's numbers
    "cpu": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01, "iters": 600, "batch_size": 8, "crop_size": 224,
            "dim": 128, "layers": 1, "heads": 4, "cache_features": True, "checkpoint_every": 100, "val_every": 200},
}


def decoder_recipe(name: str = "vpl", **changes: Any) -> DecoderConfig:
    """A :class:`DecoderConfig` preset (``vpl`` | ``weclip`` | ``cpu``) with ``changes`` applied (``None`` keeps the
    preset's value)."""
    choice("--recipe", name, tuple(DECODER_RECIPES))
    return override(DecoderConfig(recipe=name, **DECODER_RECIPES[name]), **changes)


MIN_SCALE = 0.1  # the smallest test scale: below it a view is a degenerate handful of patches


@dataclass(frozen=True)
class PredictConfig:
    """`vpltool predict`: WeCLIP's test protocol (multi-scale + flip averaged logits, optional dense CRF)."""

    scales: tuple[float, ...] = (1.0, 0.75)
    flip: bool = True
    long_side: int | None = None  # input long side; None = 1.6 x the decoder's crop (WeCLIP: crop 320, test 512)
    crf: bool = False  # test-time dense CRF on the softmaxed logits (needs the crf extra)
    max_tokens: int = MAX_TOKENS  # a test view with more patch tokens is refused before its forward (check_tokens)
    # open vocabulary: score these class names (text prototypes from the decoder's CLIP) instead of the trained W;
    # None = the decoder's own classes
    classes: tuple[str, ...] | None = None
    crf_iterations: int = 10  # WeCLIP test_msc_flip_voc.py:crf_proc, on the plain RGB image
    crf_gaussian_sxy: float = 3.0
    crf_gaussian_compat: float = 3.0
    crf_bilateral_sxy: float = 64.0
    crf_bilateral_srgb: float = 5.0
    crf_bilateral_compat: float = 4.0
    crf_backend: str = "auto"  # auto (torch on CUDA, pydensecrf on a CPU) | pydensecrf | torch (CRF_BACKENDS)

    def __post_init__(self) -> None:
        choice("--crf-backend", self.crf_backend, CRF_BACKENDS)
        require(len(self.scales) > 0, "--scales is empty: give at least one scale, e.g. 1.0,0.75")
        for s in self.scales:
            positive("--scales", s, upper=4.0)
            require(s >= MIN_SCALE, f"--scales {s:g}: each scale must be at least {MIN_SCALE:g}; a smaller view of the "
                    "image is a few patches wide (0.1 x the default 512-pixel long side: 3 patches of 16), which "
                    "adds noise to the averaged scores")
        at_least("--long-side", self.long_side, MIN_SIDE, allow_none=True, why=" pixels")
        at_least("--max-tokens", self.max_tokens, 1)
        if self.classes is not None:
            names = [c.strip() for c in self.classes]
            require(len(names) > 0 and all(names), "--classes is empty or has an empty name: give names like a,b,c")
            dup = sorted({c for c in names if names.count(c) > 1})
            require(not dup, f"--classes names {dup[0] if dup else ''!r} twice; give each class once")
            require("background" not in names, "--classes: leave out 'background' (it is always class 0, scored "
                    "with the decoder's background words)")


# --------------------------------------------------------------------------------------------- helpers
def to_params(cfg: Any) -> dict[str, Any]:
    """A config as a JSON-able dict, for file metadata and stage records."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def override(cfg: Any, **changes: Any) -> Any:
    """Copy of ``cfg`` with the given fields changed; ``None`` values keep the default (SAM's CLI pattern)."""
    names = {f.name for f in fields(cfg)}
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None and k in names})


def from_params(cls: type, params: dict[str, Any]) -> Any:
    """A config rebuilt from a recorded dict (a stage record's params): unknown keys ignored, lists as tuples."""
    names = {f.name: f for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names})


__all__ = [
    "IGNORE_INDEX", "DEFAULT_MODEL", "DEFAULT_PRETRAINED", "PARITIES", "MIN_SIDE", "MAX_TOKENS", "RuntimeConfig",
    "MIN_IMAGE_SIDE", "worker_count", "ExtractConfig", "NOT_COMPARED", "check_tokens",
    "TextPrototypesConfig", "REFINES", "AFFINITIES",
    "DEFAULT_DINO", "CamConfig", "EvalConfig", "TARGETS", "REGULARIZATIONS", "MAX_LR",
    "LearnPrototypesConfig", "CrfConfig", "OPTIMIZERS", "LOSSES", "BACKGROUNDS", "DecoderConfig", "DECODER_RECIPES",
    "decoder_recipe", "PredictConfig", "to_params", "override", "from_params",
    "require", "choice", "positive", "at_least", "fraction", "non_negative", "seed_value", "MAX_SEED",
    "MIN_TEMPERATURE", "CAM_ATTENTION_BLOCKS", "MIN_SCALE", "CRF_BACKENDS",
]  # fmt: skip

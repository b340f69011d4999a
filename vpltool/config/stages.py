"""Every default of the per-image stages (extract, text-prototypes, cam, eval, learn-prototypes, crf, report) and of the
options every stage shares, defined once. Field comments say *why* a value is what it is."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .checks import DTYPE_NAMES, at_least, choice, exponent, fraction, positive, require, seed_value, whole_number
from .dense_knobs import automatic_generator

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


@dataclass(frozen=True)
class RuntimeConfig:
    """Options spelled the same on every stage."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto = bf16 on CUDA and on CPUs with AMX, else fp32 (device.resolve_precision)
    # images per batch; None = auto: 32 on CUDA (halved on out-of-memory), and on a CPU, where batching buys
    # little, CPU_BATCH for extract and one image for cam and predict
    batch_size: int | None = None
    # data-loading processes (extract, cam, predict, diagnose, train-decoder) / CRF processes (crf); 0 = one per CPU
    # core (every stage, see worker_count); 1 = in this process. None = auto: CPU_WORKERS, the loaders on CUDA one per
    # core up to GPU_WORKERS (a GPU eats ~1,000 images/s, each ~4 ms of a core), a run of a few images this process
    workers: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        choice("--precision", self.precision, ("auto", "fp32", "bf16", "fp16"), DTYPE_NAMES)
        whole_number("--batch-size", self.batch_size, allow_none=True)
        whole_number("--workers", self.workers, allow_none=True)
        at_least("--batch-size", self.batch_size, 1, allow_none=True)
        at_least("--workers", self.workers, 0, allow_none=True, why=" (0 = one per CPU core)")

    @property
    def worker_count(self) -> int:
        """``workers`` resolved by :func:`worker_count`."""
        return worker_count(self.workers)

    def loader_workers(self, device, images: int | None = None) -> int:
        """Data-loading processes on ``device`` for a run of ``images``: :func:`worker_count`'s, on CUDA (auto) one
        per core up to ``GPU_WORKERS``, where loading for the GPU is the bottleneck (the cores shared among torchrun's
        processes on this machine, ``LOCAL_WORLD_SIZE``); ``CPU_WORKERS`` on a CPU, whose cores run the model."""
        if self.workers is None and getattr(device, "type", device) == "cuda" and worker_count(None, images) > 1:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            return max(1, min(worker_count(0) // max(1, local), GPU_WORKERS))
        return worker_count(self.workers, images)


CPU_WORKERS = 2  # auto --workers on a CPU (the old default): the model needs the cores more than the loading
GPU_WORKERS = 12  # auto --workers on CUDA caps at this many processes (issue 28: 12 cores feed ~1,000 img/s)
# auto --workers runs a run of fewer images in this process: a loader is a fork of the process that holds the model
# (0.07-0.16 CPU-s each), a CRF worker a fresh one (~0.3); with 2 loaders segment took 1.03-1.04 of its CPU time at
WORKERS_MIN_IMAGES = 24  # 4 and 16 photos, 0.93-1.02 at 31, 0.90-0.94 at 64 (bench/bench_loader_start.py, Zen 4)


def worker_count(workers: int | None, images: int | None = None) -> int:
    """How many parallel workers ``--workers`` asks for; 0 means one per CPU core this process may use (its
    affinity mask: under Slurm or taskset that is fewer than the machine's cores), and more than that is capped
    at it (the CLI says so: a process per batch helps nothing and exhausts memory); None (auto) ``CPU_WORKERS``, or
    1 (this process) for a run of fewer than ``WORKERS_MIN_IMAGES`` ``images``."""
    if workers is None:
        return 1 if images is not None and images < WORKERS_MIN_IMAGES else CPU_WORKERS
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return cores if workers < 1 else min(workers, cores)


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

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`)."""
        return {"max_side": "with --image-size (every input is that square)"} if self.image_size else {}


CPU_BATCH = 8  # extract's images per batch on a CPU under --batch-size auto (the forward batches well there)
NOT_COMPARED = ("max_tokens",)  # recorded parameters that a resumed run may change (limits, not settings)


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
# the precision of GradCAM's block on CUDA (--parity clip-es and the CPU run it in fp32): TF32 matrix products moved
# the final CAMs less than the bf16 frozen blocks already do, bf16 moved them far more (the demo's CAM mIoU by
# points): studies/study_gradcam_precision.py, docs/performance.md
GRADCAM_CUDA_PRECISION = "tf32"
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
    # (studies/study_sgc.py); SSR's own settings are not published
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
                f"--sgc-position {self.sgc_position}: must be a finite number >= 0 (0 = colour alone)")
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

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`)."""
        out = {}
        if self.refine == "none":
            out.update(box_threshold="with --refine none", attention_blocks="with --refine none (no CAA)")
        if self.refine != "caa+sgc":
            out.update({name: "without --refine caa+sgc" for name in
                        ("sgc_segments", "sgc_clusters", "sgc_position", "sgc_compactness")})
        if self.affinity != "clip+dino":
            out["affinity_weight"] = "without --affinity clip+dino"
        if self.affinity == "clip":
            out.update(dino_model="with --affinity clip", dino_weights="with --affinity clip")
        return out


@dataclass(frozen=True)
class EvalConfig:
    """`vpltool eval`: confusion matrix and mIoU (VOC/COCO convention: mean over classes present in GT)."""

    bg_exponents: tuple[float, ...] = (1.0, 2.0)  # CAM folders: bg = (1 - max cam)^a, best a reported (CLIP-ES)
    # none | clip-es (CLIP-ES's fp16 arithmetic for the background score); None = the CAM folder's own --parity
    parity: str | None = None

    def __post_init__(self) -> None:
        require(len(self.bg_exponents) > 0, "--bg-exponents is empty: give at least one value, e.g. 1,2")
        for a in self.bg_exponents:
            exponent("--bg-exponents", a)
        if self.parity is not None:
            choice("--parity", self.parity, PARITIES)


@dataclass(frozen=True)
class ReportConfig:
    """`vpltool report`: the browsable HTML report of a run folder (one row per image, a detail view per image)."""

    thumb_size: int = 96  # long side of the table's thumbnails, pixels (never above the image's own)
    detail_size: int = 320  # long side of the detail view's image and masks, pixels (never above the image's own)
    quality: int = 80  # WebP quality of the thumbnails and the detail view's photo (masks are lossless PNG)
    cam_grid: int = 32  # long side of the per-class CAMs the detail view draws (bilinear in the browser), cells
    page_size: int = 50  # table rows per page (the page lets the reader change it)

    def __post_init__(self) -> None:
        at_least("--thumb-size", self.thumb_size, 16, why=" pixels")
        at_least("--detail-size", self.detail_size, 32, why=" pixels")
        at_least("--quality", self.quality, 1)
        require(self.quality <= 100, f"--quality {self.quality}: give a WebP quality in 1..100")
        at_least("--cam-grid", self.cam_grid, 4, why=" cells")
        at_least("--page-size", self.page_size, 1)


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
        exponent("--bg-exponent", self.bg_exponent)
        positive("--pixel-fraction", self.pixel_fraction, upper=1.0)
        positive("--max-memory-gb", self.max_memory_gb, allow_none=True)
        seed_value("seed", self.seed)  # a library field: the CLI has no --seed here

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`)."""
        return {"bg_exponent": "with --targets hard"} if self.targets == "hard" else {}


# the dense CRF's implementations (vpltool.ops.densecrf): auto = torch on CUDA, pydensecrf on a CPU and under
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
                              ("--bilateral-srgb", self.bilateral_srgb)):
            positive(option, value)
        exponent("--bg-exponent", self.bg_exponent)
        for option, value in (("--gaussian-compat", self.gaussian_compat),
                              ("--bilateral-compat", self.bilateral_compat)):
            require(math.isfinite(value) and value >= 0, f"{option} {value}: must be >= 0")
        fraction("--confidence", self.confidence)
        choice("--parity", self.parity, PARITIES)

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`)."""
        names = ("iterations", "gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb",
                 "bilateral_compat", "confidence", "backend")
        return {name: "with --no-crf" for name in names} if self.no_crf else {}




# `sam-pseudo`: pseudo masks from SAM's masks and the CAMs. The stages whose folders are pseudo masks of the
# crf kind (a label PNG per image, 255 = ignore): train-decoder, eval, choose-pseudo and report read either
PSEUDO_STAGES = ("crf", "sam-pseudo")
# the stages whose dtype is the CAMs': each records the dtype of the CAMs it reads (crf has no --precision;
# sam-pseudo's is SAM's, auto = the CAMs' and another refused), so a dtype refused on their folder is changed by this
# stage's --precision, then a re-run of theirs (io.check_numerics says so)
PRECISION_FROM = {"crf": "cam", "sam-pseudo": "cam"}
# the pseudo-mask rules a Make run chooses among (the Makefile's PSEUDO words) -> the stage that makes their masks:
# crf's, and `sam-pseudo --masks K` for each other rule K (sam: SAM's automatic masks merged, also from SAM 2 or a
# folder; sam3: SAM 3 prompted with the labels). Refinement R's masks of rule K are choose-pseudo's candidate R+K,
# in the folder K/ below R's (the Makefile's SAM_RULES, one pattern rule each); a folder's record says its rule
PSEUDO_RULES = {"crf": "crf", "sam": "sam-pseudo", "sam3": "sam-pseudo"}
SAM_PSEUDO_RULES = tuple(k for k, stage in PSEUDO_RULES.items() if stage == "sam-pseudo")


def pseudo_rule(stage: str, params: dict) -> str | None:
    """The rule of :data:`PSEUDO_RULES` a pseudo-mask folder was made by, from its record's ``stage`` and ``params``
    (sam-pseudo records its ``masks``: a rule's name, or a generator or folder of the automatic rule, the first);
    None for a folder of another stage."""
    if stage == "sam-pseudo":
        masks = params.get("masks")
        return masks if masks in SAM_PSEUDO_RULES else SAM_PSEUDO_RULES[0]
    return stage if stage in PSEUDO_RULES else None
# the merge rules of SAM-enhanced pseudo labels (Chen et al. 2023, cskyl/SAM_WSSS @4885dde, merge/max_iou*.py; the
# released code's default is max_iou_imp2): per class of the CAM's label, in increasing class order, every SAM
# mask not taken by an earlier class whose pixels are more than half that class's (all three) or that holds at
# least SAM_COVERAGE of the class's pixels (imp2) is painted with it; imp and imp2 also keep the class's own
# pixels that no such untaken mask covers (max-iou leaves them background)
SAM_MERGES = ("max-iou-imp2", "max-iou-imp", "max-iou")
SAM_COVERAGE = 0.85  # max_iou_imp2.py's `improve_pred_thresh >= 0.85`
SAM_STARTS = ("crf", "argmax")  # the CAM label the rule starts from: crf --confidence 0's masks, or crf --no-crf's
# segment-anything's SamAutomaticMaskGenerator defaults (its scripts/amg.py, which writes the mask folders
# SAM_WSSS reads)
SAM_AMG_POINTS, SAM_AMG_IOU, SAM_AMG_STABILITY = 32, 0.88, 0.95


@dataclass(frozen=True)
class SamPseudoConfig:
    """`vpltool sam-pseudo`: SAM's masks assigned to the CAM's classes (docs/crf.md, "Pseudo masks from SAM").

    ``masks``: where the masks come from: ``sam`` (segment-anything's automatic mask generator on ``sam_model`` /
    ``sam_weights``), ``sam2[:CONFIG]`` (SAM 2's, ``sam_weights`` its checkpoint), or a folder of masks as
    segment-anything's ``scripts/amg.py`` writes them (``<folder>/<image id>/<k>.png``, 255 inside a mask).
    ``start``: the CAM label the rule starts from (:data:`SAM_STARTS`): ``crf`` is `crf --confidence 0`'s masks with
    ``bg_exponent`` and the CRF's defaults (pydensecrf, in the loading processes); ``argmax`` is `crf --no-crf`'s;
    any other value is a folder holding either, written by `crf --start-out` from its own CRF (checked by record).
    ``points_per_side``, ``pred_iou_thresh``, ``stability_score_thresh``: the generator's (its defaults).
    ``masks`` ``sam3``: the other rule, SAM 3 (``sam_weights``: its weights) prompted with each image-level label's
    name: an instance it keeps (probability above ``sam3_threshold``, Meta's) is kept for the label when at least
    ``sam3_gate`` of its pixels carry that label in the CAM's; a label with no such instance keeps the CAM's mask.
    """

    masks: str = "sam"
    sam_model: str = "vit_h"  # SAM's largest, as SAM-based WSSS runs it; `toy` is the demo world's
    sam_weights: str | None = None
    merge: str = "max-iou-imp2"  # the released code's default (main.py --method)
    start: str = "crf"  # the released labels it merges (TransCAM's) are CRF masks without ignore pixels
    bg_exponent: float = 1.0
    points_per_side: int = SAM_AMG_POINTS
    pred_iou_thresh: float = SAM_AMG_IOU
    stability_score_thresh: float = SAM_AMG_STABILITY
    sam3_threshold: float = 0.5  # Meta's Sam3Processor confidence_threshold
    sam3_gate: float = 0.5  # the automatic rule's majority: an instance mostly outside its class's CAM is dropped

    def __post_init__(self) -> None:
        choice("--merge", self.merge, SAM_MERGES)
        fraction("--sam3-threshold", self.sam3_threshold)
        fraction("--sam3-gate", self.sam3_gate)
        require(bool(self.start), f"--start: name {' or '.join(SAM_STARTS)}, or a folder that `crf --start-out` wrote")
        exponent("--bg-exponent", self.bg_exponent)
        at_least("--points-per-side", self.points_per_side, 1)
        fraction("--pred-iou-thresh", self.pred_iou_thresh)
        fraction("--stability-score-thresh", self.stability_score_thresh)
        require(bool(self.masks), "--masks: name sam, sam2[:CONFIG], sam3 or a folder of masks (segment-anything's "
                "scripts/amg.py output)")

    @property
    def prompted(self) -> bool:
        """The SAM 3 rule (masks prompted with each label's name), not the automatic masks' merge."""
        return self.masks == "sam3"

    def generator(self) -> str | None:
        """``sam`` or ``sam2[:CONFIG]`` when a model makes automatic masks, None for a folder of masks or SAM 3."""
        return self.masks if automatic_generator(self.masks) else None

    def settings(self) -> dict:
        """The automatic mask generator's arguments."""
        return {"points_per_side": self.points_per_side, "pred_iou_thresh": self.pred_iou_thresh,
                "stability_score_thresh": self.stability_score_thresh}

    def crf(self) -> CrfConfig:
        """The start label's CRF: `crf`'s defaults, no ignore pixel (the rule needs a class or background at each
        pixel), ``no_crf`` for the argmax start."""
        return CrfConfig(confidence=0.0, bg_exponent=self.bg_exponent, no_crf=self.start == "argmax",
                         backend="pydensecrf")  # a start folder's record must say the same (stages/sam_pseudo/start)

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`)."""
        automatic = ("points_per_side", "pred_iou_thresh", "stability_score_thresh")
        prompted = ("sam3_threshold", "sam3_gate")
        if self.prompted:
            return {n: "with --masks sam3 (SAM 3's rule)" for n in ("sam_model", "merge", *automatic)}
        if self.generator() is None:
            return {n: "with a folder of masks" for n in ("sam_model", "sam_weights", *automatic, *prompted)}
        return {n: "without --masks sam3" for n in prompted}

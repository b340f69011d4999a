"""Every default of the decoder: training (`train-decoder`, VPL phase 2, and its recipes) and test (`predict`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..presets import check_class_names
from .checks import at_least, choice, fraction, non_negative, override, positive, require, seed_value
from .dense import DENSE_CHOICES, PROXY_METHODS
from .stages import CRF_BACKENDS, MAX_LR, MAX_TOKENS, MIN_SIDE

OPTIMIZERS = ("sgd", "adamw")
# torch.compile of an iteration (the frozen forward; the decoder's forward, losses and backward): none | default
# (fused kernels) | reduce-overhead (also CUDA graphs). The training loop is host-bound on a GPU (~1,300 ops an
# iteration, each a launch: bench/bench_decoder.py --mode host), which compiling shrinks
COMPILE_MODES = ("none", "default", "reduce-overhead")
# the largest loss weight: the papers use 0.1-1; a weight of 1e30 overflowed AdamW's float32 second moments (NaN in
# the first checkpoint), far above any weight that balances two losses
MAX_LOSS_WEIGHT = 1000.0
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
    compile: str = "none"  # COMPILE_MODES; off by default: minutes of compiling, for a GPU's long runs

    def __post_init__(self) -> None:
        choice("--recipe", self.recipe, tuple(DECODER_RECIPES))
        choice("--optimizer", self.optimizer, OPTIMIZERS)
        choice("--loss", self.loss, LOSSES)
        choice("--background", self.background, BACKGROUNDS)
        choice("--compile", self.compile, COMPILE_MODES)
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
        non_negative("lambda_ce", self.lambda_ce, MAX_LOSS_WEIGHT)  # a library field: the CLI has no --lambda-ce
        non_negative("--lambda-rsc", self.lambda_rsc, MAX_LOSS_WEIGHT)
        seed_value("--seed", self.seed)
        non_negative("--lambda-proto", self.lambda_proto, MAX_LOSS_WEIGHT, " (0 = off, SSR: 0.1)")
        positive("--proto-temperature", self.proto_temperature, upper=1.0)
        at_least("--proto-clusters", self.proto_clusters, 1)
        at_least("--proto-every", self.proto_every, 1, allow_none=True)
        require(len(set(self.ignore_classes)) == len(self.ignore_classes),
                f"--ignore-classes {','.join(self.ignore_classes)}: a class is named twice")
        require("background" not in self.ignore_classes,
                "--ignore-classes: background cannot be held out; name foreground classes")
        fraction("--dropout", self.dropout)

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`); the resume of a checkpoint does not
        compare them."""
        out = {}
        if self.lambda_rsc == 0:
            out["rsc_temperature"] = "with --lambda-rsc 0"
        if self.lambda_proto == 0:
            out.update({name: "with --lambda-proto 0" for name in ("proto_temperature", "proto_clusters",
                                                                    "proto_every")})
        if self.optimizer != "sgd":
            out["momentum"] = f"with the {self.optimizer} optimizer"
        return out

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
    # with --classes: none (the decoder scores the names' text rows) | a training-free dense method of the decoder's
    # frozen CLIP (vpltool.backbone.dense), for names the decoder never trained on: the decoder is then not run
    dense: str = "none"
    # the dense method's segmentor settings (vpltool.config.DENSE_SEGMENTORS); None = the method's own
    dense_side: int | None = None
    dense_threshold: float | None = None
    dense_crop: int | None = None
    dense_stride: int | None = None

    def __post_init__(self) -> None:
        choice("--crf-backend", self.crf_backend, CRF_BACKENDS)
        choice("--dense", self.dense, DENSE_CHOICES)
        require(self.dense not in PROXY_METHODS, f"--dense {self.dense} needs a proxy vision model, which only "
                "`vpltool segment` loads (--proxy-model); segment the names with it")
        if self.dense != "none":
            self.segment_config()  # its one-line errors now
        require(self.dense == "none" or self.classes is not None,
                f"--dense {self.dense} scores --classes names with the frozen CLIP; give --classes too")
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
            check_class_names(names, "--classes")  # the rule of text-prototypes: no 'background', none twice

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`): without ``--dense`` the dense options
        (``--dense none`` is not recorded, so folders made before the option resume) and, without ``--crf``, the
        CRF's; with ``--dense`` the decoder's own (it does not run)."""
        crf_fields = [f.name for f in fields(self) if f.name.startswith("crf_")]
        if self.dense == "none":
            out = {k: "without --dense" for k in ("dense", "dense_side", "dense_threshold", "dense_crop",
                                                   "dense_stride")}
            if not self.crf:
                out.update({k: "without --crf" for k in crf_fields})
            return out
        unused = ("scales", "flip", "long_side", "crf", *crf_fields)
        return {k: f"with --dense {self.dense} (the decoder does not run)" for k in unused}

    def segment_config(self):
        """The :class:`~vpltool.config.SegmentConfig` of ``--dense`` and its settings (the method's where None)."""
        from .dense import SegmentConfig

        return SegmentConfig(dense=self.dense, short_side=self.dense_side, prob_threshold=self.dense_threshold,
                             slide_crop=self.dense_crop, slide_stride=self.dense_stride)



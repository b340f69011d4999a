"""Every default of the decoder: training (`train-decoder`, VPL phase 2, and its recipes) and test (`predict`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .checks import at_least, choice, fraction, non_negative, override, positive, require, seed_value
from .dense import DENSE_CHOICES, PROXY_METHODS, segment_only
from .presets import check_class_names
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
CLASSIFIERS = ("prototypes", "conv")  # cosine to the prototype rows W (VPL) | a free 1x1 conv to C + 1 (WeCLIP)
ACTIVATIONS = ("gelu", "quick_gelu")  # the decoder blocks' MLP: exact GELU | CLIP's x sigmoid(1.702 x) (WeCLIP)
PSEUDO_SOURCES = ("offline", "online")  # a crf folder's masks | WeCLIP's, made per crop and iteration
NORMALIZATIONS = ("clip", "imagenet")  # the mean/std fed to the frozen CLIP (WeCLIP feeds ImageNet's)
# WeCLIP's normalisation (its transforms.py: 123.675 / 255, ... on 0-255 pixels)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PADDINGS = ("mean", "black")  # crop padding: mean colour bottom/right, ignored | black at a random offset (WeCLIP)


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
    # WeCLIP's decoder head and supervision (--recipe weclip: train_decoder/online.py, docs/decoder.md)
    classifier: str = "prototypes"  # CLASSIFIERS; conv needs lambda_rsc = lambda_proto = 0 (no embedding space)
    block_norm: bool = True  # a LayerNorm before each per-block MLP (ours); WeCLIP feeds the raw residual stream
    activation: str = "gelu"  # ACTIVATIONS
    pseudo: str = "offline"  # PSEUDO_SOURCES; online: GradCAM + attention propagation (RFM) + PAR, no ignored pixel
    normalization: str = "clip"  # NORMALIZATIONS, at training and at test
    padding: str = "mean"  # PADDINGS
    lambda_aff: float = 0.0  # affinity loss on sigmoid(F^T F) of the fused features (WeCLIP: 0.1; needs conv)
    aff_radius: int = 8  # patch pairs further apart (rows or columns) are not supervised (WeCLIP: 8)
    box_threshold: float = 0.4  # online masks: CAA's box threshold (WeCLIP 0.4 on VOC, 0.7 on COCO)
    cam_blocks: int = 8  # online masks: propagate with the mean of the last 8 attention maps
    rfm_blocks: int = 6  # RFM: the last 6 maps, filtered by the decoder's affinity
    rfm_start: int | None = None  # RFM from this iteration on; None = iters // 2 (WeCLIP: 15,000 of 30,000)
    par_iters: int = 20  # online masks: PAR rounds (dilations 1, 2, 4, 8, 12, 24)
    # WeCLIP+ (--recipe weclip+, WeCLIP+/ of the same repository): a frozen DINO beside the CLIP, one shared decoder
    dino_model: str | None = None  # a timm ViT name; None = no DINO branch (WeCLIP+: DINOv2 ViT-S/14)
    dino_weights: str = "hub"  # hub (timm's, from the local cache offline) | FILE | none (random)
    read_blocks: int = 0  # the decoder reads the last n of the blocks before the last; 0 = all (WeCLIP+: 1)
    cam_input_back: int = 1  # GradCAM re-runs the last block on block L-1-n's output (WeCLIP 1; WeCLIP+'s code 2)
    self_label_start: int | None = None  # with DINO: confident predictions replace the online labels after this
    self_label_threshold: float = 0.75  # iteration (None = 0.6 iters, WeCLIP+'s 18,000 of 30,000) above this
    lambda_dice: float = 0.0  # with DINO: Dice loss of the mean logits (WeCLIP+: 1)
    lambda_cross: float = 0.0  # with DINO: each branch's balanced CE on the other's arg-max (WeCLIP+: 0.1)
    # optimisation
    recipe: str = "vpl"  # vpl | weclip | cpu: which preset the other fields came from (recorded, not read)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # the paper gives none: the DeepLab/mmseg SGD lr of a freshly initialised head
    momentum: float = 0.9  # SGD momentum; AdamW uses betas (0.9, 0.999)
    weight_decay: float = 1e-4
    warmup_iters: int = 50  # linear warm-up (WeCLIP's 50) before the poly decay: transformer layers from scratch
    # None: lr x (t+1)/warmup_iters x poly; a ratio r: WeCLIP's PolyWarmupAdamW, lr x (1 - (1 - t/warmup_iters)(1 - r))
    # during the warm-up (no poly), then lr x poly (WeCLIP: r = 1e-6)
    warmup_ratio: float | None = None
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
        choice("--classifier", self.classifier, CLASSIFIERS)
        choice("activation", self.activation, ACTIVATIONS)
        choice("pseudo", self.pseudo, PSEUDO_SOURCES)
        choice("normalization", self.normalization, NORMALIZATIONS)
        choice("padding", self.padding, PADDINGS)
        require(self.classifier == "prototypes" or (self.lambda_rsc == 0 and self.lambda_proto == 0),
                "--classifier conv has no prototype space: RSC and CMPA need --classifier prototypes; pass "
                "--lambda-rsc 0 (and --lambda-proto 0)")
        require(self.lambda_aff == 0 or self.classifier == "conv",
                "--lambda-aff: the affinity loss is WeCLIP's, on its conv decoder; give --classifier conv")
        require(self.pseudo == "offline" or self.classifier == "conv",
                "online pseudo masks (WeCLIP) train WeCLIP's conv classifier; give --classifier conv")
        require(self.pseudo == "offline" or not self.include_last_block,
                "online pseudo masks re-run the last CLIP block for GradCAM; the decoder reads the blocks before it")
        require(self.pseudo == "offline" or self.compile == "none",
                "--compile: online pseudo masks (WeCLIP) run GradCAM and PAR in each iteration; use --compile none")
        require(self.pseudo == "offline" or not self.ignore_classes,
                "--ignore-classes holds classes out of offline pseudo masks; online masks (WeCLIP) take none")
        require(self.pseudo == "offline" or not self.cache_features,
                "online pseudo masks need every crop's CLIP pass; drop --cache-features")
        non_negative("--lambda-aff", self.lambda_aff, MAX_LOSS_WEIGHT)
        if self.warmup_ratio is not None:
            fraction("warmup_ratio", self.warmup_ratio)
        require(self.dino_model is None or self.pseudo == "online",
                "--dino-model: the DINO branch is WeCLIP+'s, trained on online masks; use --recipe weclip+")
        require(self.dino_model is None or bool(self.dino_model.strip()), "--dino-model is empty: give a timm ViT")
        require(self.dino_model is None or self.recipe != "weclip",
                f"--dino-model {self.dino_model}: a DINO branch makes WeCLIP+'s two-branch decoder, which --recipe "
                "weclip would record as WeCLIP; pass --recipe weclip+ (or drop --dino-model)")
        at_least("read_blocks", self.read_blocks, 0)
        at_least("cam_input_back", self.cam_input_back, 1)
        at_least("self_label_start", self.self_label_start, 0, allow_none=True)
        fraction("self_label_threshold", self.self_label_threshold)
        non_negative("lambda_dice", self.lambda_dice, MAX_LOSS_WEIGHT)
        non_negative("lambda_cross", self.lambda_cross, MAX_LOSS_WEIGHT)
        at_least("aff_radius", self.aff_radius, 0)  # fields without an option: named as fields
        fraction("box_threshold", self.box_threshold)
        for option, value in (("cam_blocks", self.cam_blocks), ("rfm_blocks", self.rfm_blocks),
                              ("par_iters", self.par_iters)):
            at_least(option, value, 1)
        at_least("--rfm-start", self.rfm_start, 0, allow_none=True)
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
        if self.classifier == "conv":
            out.update({name: "with --classifier conv" for name in ("background", "temperature", "learn_temperature",
                                                                     "train_prototypes")})
        if self.lambda_aff == 0:
            out["aff_radius"] = "with --lambda-aff 0"
        if self.pseudo == "offline":
            out.update({name: "with offline pseudo masks" for name in ("box_threshold", "cam_blocks", "rfm_blocks",
                                                                        "rfm_start", "par_iters", "cam_input_back")})
        elif self.rfm_start is not None and self.rfm_start >= self.iters:
            out.update({name: f"at or past --iters {self.iters} (RFM never runs)" for name in ("rfm_start",
                                                                                               "rfm_blocks")})
        if self.dino_model is None:
            out.update({name: "without --dino-model" for name in ("dino_model", "dino_weights", "self_label_start",
                                                                   "self_label_threshold", "lambda_dice",
                                                                   "lambda_cross")})
        return out

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The mean / std the frozen CLIP is fed at training and test (``normalization``); None = the CLIP's own."""
        return (IMAGENET_MEAN, IMAGENET_STD) if self.normalization == "imagenet" else None

    @property
    def self_label_from(self) -> int:
        """WeCLIP+: the first (0-based) iteration whose labels take the confident predictions (its
        ``n_iter > 18000`` of 30,000: 0.6 of the schedule, from the iteration after)."""
        return (self.iters * 3) // 5 + 1 if self.self_label_start is None else self.self_label_start

    @property
    def rfm_from(self) -> int:
        """The first (0-based) iteration whose online masks use RFM: ``rfm_start``, or half the schedule (WeCLIP
        switches after its 15,000th of 30,000 forwards)."""
        return self.iters // 2 if self.rfm_start is None else self.rfm_start

    @property
    def proto_period(self) -> int:
        """CMPA's bank refresh period: ``proto_every``, or SSR's 5,000 / 30,000 of the schedule."""
        return self.proto_every or max(1, self.iters // 6)


DECODER_RECIPES: dict[str, dict[str, Any]] = {
    "vpl": {},
    # WeCLIP (dist_clip_voc.py): AdamW wd 0.01, decoder lr 2e-3 (base 2e-4 x 10), poly power 1, batch 4, balanced CE
    # and its model (model_attn_aff_voc.py): online pseudo masks, a 1x1 conv classifier, 0.1 x the affinity loss, no
    # input LayerNorm, QuickGELU blocks, ImageNet mean/std, black padding at a random offset; no RSC
    "weclip": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01, "poly_power": 1.0, "batch_size": 4,
               "loss": "balanced", "lambda_rsc": 0.0, "classifier": "conv", "block_norm": False,
               "activation": "quick_gelu", "pseudo": "online", "normalization": "imagenet", "padding": "black",
               "lambda_aff": 0.1, "warmup_ratio": 1e-6},
    # WeCLIP+ (WeCLIP+/WeCLIP_Plus/model_attn_aff_voc.py, scripts/dist_clip_voc.py, configs/voc_attn_reg.yaml): WeCLIP's
    # recipe with a frozen DINOv2 ViT-S/14 beside the CLIP; decoder lr 2e-4 (base 2e-5 x 10); the CLIP's last block
    # before the last read alone; RFM from the first iteration over the last 6 maps; CAMs times the decoders' mean
    # softmax, no boxes; Dice + 0.1 x cross-branch CE; confident predictions (> 0.75) as labels after 0.6 iters
    "weclip+": {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.01, "poly_power": 1.0, "batch_size": 4,
                "loss": "balanced", "lambda_rsc": 0.0, "classifier": "conv", "block_norm": False,
                "activation": "quick_gelu", "pseudo": "online", "normalization": "imagenet", "padding": "black",
                "lambda_aff": 0.1, "warmup_ratio": 1e-6, "dino_model": "vit_small_patch14_dinov2.lvd142m",
                "read_blocks": 1, "cam_input_back": 2, "rfm_start": 0, "cam_blocks": 6, "lambda_dice": 1.0,
                "lambda_cross": 0.1},
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


RESIZES = ("auto", "bicubic", "bilinear")  # predict's test views (PredictConfig.resize)
MIN_SCALE = 0.1  # the smallest test scale: below it a view is a degenerate handful of patches


@dataclass(frozen=True)
class PredictConfig:
    """`vpltool predict`: WeCLIP's test protocol (multi-scale + flip averaged logits, optional dense CRF)."""

    scales: tuple[float, ...] = (1.0, 0.75)
    flip: bool = True
    long_side: int | None = None  # input long side; None = 1.6 x the decoder's crop (WeCLIP: crop 320, test 512)
    # test views: auto (bilinear for a decoder of --recipe weclip / weclip+, else bicubic) | bicubic (the uint8
    # image, PIL, sides rounded up to the patch) | bilinear (WeCLIP's test_msc_flip_voc.py: the normalised tensor, sides
    # truncated, the patch grid floored)
    resize: str = "auto"
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
    # frozen CLIP (vpltool.models.dense), for names the decoder never trained on: the decoder is then not run
    dense: str = "none"
    # the dense method's segmentor settings (vpltool.config.DENSE_SEGMENTORS); None = the method's own
    dense_side: int | None = None
    dense_threshold: float | None = None
    dense_crop: int | None = None
    dense_stride: int | None = None

    def __post_init__(self) -> None:
        choice("--crf-backend", self.crf_backend, CRF_BACKENDS)
        choice("--resize", self.resize, RESIZES)
        choice("--dense", self.dense, DENSE_CHOICES)
        require(self.dense not in PROXY_METHODS, f"--dense {self.dense} needs a proxy vision model, which only "
                "`vpltool segment` loads (--proxy-model); segment the names with it")
        why = segment_only(self.dense, "predict")
        require(why is None, why or "")
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
            bar = next((n for n in names if "|" in n), None)  # segment's synonyms: never part of one class's name
            require(bar is None, f"--classes: {bar!r}: predict reads no synonyms ('|' is `vpltool segment`'s "
                    "separator); give one name per class")

    def inert(self) -> dict[str, str]:
        """Fields without effect here (:func:`vpltool.config.inert_fields`): without ``--dense`` the dense options
        (``--dense none`` is not recorded, so folders made before the option resume) and, without ``--crf``, the
        CRF's; with ``--dense`` the decoder's own (it does not run)."""
        crf_fields = [f.name for f in fields(self) if f.name.startswith("crf_")]
        if self.dense == "none":
            out = {k: "without --dense" for k in ("dense", "dense_side", "dense_threshold", "dense_crop",
                                                   "dense_stride")}
            if self.resize == "auto":  # not recorded: folders made before the option resume
                out["resize"] = "the decoder's recipe's"
            if not self.crf:
                out.update({k: "without --crf" for k in crf_fields})
            return out
        unused = ("scales", "flip", "long_side", "resize", "crf", *crf_fields)
        return {k: f"with --dense {self.dense} (the decoder does not run)" for k in unused}

    def segment_config(self):
        """The :class:`~vpltool.config.SegmentConfig` of ``--dense`` and its settings (the method's where None)."""
        from .dense import dense_config

        return dense_config(dense=self.dense, short_side=self.dense_side, prob_threshold=self.dense_threshold,
                            slide_crop=self.dense_crop, slide_stride=self.dense_stride)



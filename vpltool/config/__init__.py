"""Every default of every stage, defined once, and the rules a value must follow.

Torch-free so that ``vpltool --help`` stays fast: the CLI reads its option defaults from these frozen dataclasses,
and the library functions take the same objects. Each dataclass checks itself when built (``__post_init__``), so a
library caller gets the same one-line :class:`~vpltool.errors.VplError` as a CLI user; messages name the CLI option.
Field comments say *why* a value is what it is; docs/pipeline.md cites where each number comes from.

* :mod:`~vpltool.config.stages`: the options every stage shares (:class:`RuntimeConfig`) and the per-image stages'
  defaults (extract, text-prototypes, cam, eval, learn-prototypes, crf) and the report's.
* :mod:`~vpltool.config.decoder`: the decoder's defaults, for training (and its recipes) and for predict.
* :mod:`~vpltool.config.dense`: the training-free dense segmentor's defaults, one set per ``--dense`` method.
* :mod:`~vpltool.config.app`: `vpltool app`'s, the interactive page's.
* :mod:`~vpltool.config.checks`: the rules (one-line errors naming the option), and configs to and from the
  parameters a stage records.
"""

from .app import APP_MODEL, APP_PRETRAINED, AppConfig
from .checks import (
    MAX_SEED,
    at_least,
    check_tokens,
    choice,
    fraction,
    from_params,
    ignored_option,
    inert_fields,
    inert_options,
    non_negative,
    override,
    positive,
    require,
    seed_value,
    to_params,
)
from .decoder import (
    BACKGROUNDS,
    COMPILE_MODES,
    DECODER_RECIPES,
    LOSSES,
    MIN_SCALE,
    OPTIMIZERS,
    DecoderConfig,
    PredictConfig,
    decoder_recipe,
)
from .dense import DENSE_CHOICES, DENSE_SEGMENTORS, DenseSettings, SegmentConfig, dense_config, dense_help
from .stages import (
    AFFINITIES,
    CACHES,
    CAM_ATTENTION_BLOCKS,
    CPU_BATCH,
    CPU_WORKERS,
    CRF_BACKENDS,
    DEFAULT_DINO,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    GPU_WORKERS,
    GRADCAM_CUDA_PRECISION,
    IGNORE_INDEX,
    MAX_LR,
    MAX_TOKENS,
    MIN_IMAGE_SIDE,
    MIN_SIDE,
    MIN_TEMPERATURE,
    NOT_COMPARED,
    PARITIES,
    PSEUDO_RULES,
    PSEUDO_STAGES,
    REFINES,
    REGULARIZATIONS,
    SAM_COVERAGE,
    SAM_MERGES,
    SAM_PSEUDO_RULES,
    SAM_STARTS,
    TARGETS,
    WORKERS_MIN_IMAGES,
    CamConfig,
    CrfConfig,
    EvalConfig,
    ExtractConfig,
    LearnPrototypesConfig,
    ReportConfig,
    RuntimeConfig,
    SamPseudoConfig,
    TextPrototypesConfig,
    pseudo_rule,
    worker_count,
)

__all__ = [
    "APP_MODEL", "APP_PRETRAINED", "AppConfig",
    "IGNORE_INDEX", "DEFAULT_MODEL", "DEFAULT_PRETRAINED", "PARITIES", "CACHES", "MIN_SIDE", "MAX_TOKENS",
    "RuntimeConfig", "MIN_IMAGE_SIDE", "worker_count", "CPU_WORKERS", "GPU_WORKERS", "WORKERS_MIN_IMAGES",
    "ExtractConfig",
    "CPU_BATCH", "NOT_COMPARED", "check_tokens",
    "TextPrototypesConfig", "REFINES", "AFFINITIES",
    "DEFAULT_DINO", "CamConfig", "EvalConfig", "ReportConfig", "TARGETS", "REGULARIZATIONS", "MAX_LR",
    "LearnPrototypesConfig", "CrfConfig", "OPTIMIZERS", "LOSSES", "BACKGROUNDS", "COMPILE_MODES", "DecoderConfig",
    "DECODER_RECIPES",
    "decoder_recipe", "PredictConfig", "to_params", "override", "from_params", "inert_fields", "inert_options",
    "ignored_option",
    "require", "choice", "positive", "at_least", "fraction", "non_negative", "seed_value", "MAX_SEED",
    "MIN_TEMPERATURE", "CAM_ATTENTION_BLOCKS", "MIN_SCALE", "CRF_BACKENDS", "GRADCAM_CUDA_PRECISION",
    "DENSE_CHOICES", "DENSE_SEGMENTORS", "DenseSettings", "SegmentConfig", "dense_help", "dense_config",
    "PSEUDO_STAGES", "PSEUDO_RULES", "SAM_PSEUDO_RULES", "pseudo_rule", "SAM_MERGES", "SAM_COVERAGE", "SAM_STARTS",
    "SamPseudoConfig",
]  # fmt: skip

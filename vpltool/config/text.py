"""What every text-supervised family's configuration holds (torch-free: the CLI reads it for ``--help``).

A text-supervised family (PGSeg / GroupViT, Talk2DINO, ...) is trained from image–text pairs by the one shared
trainer (`train-text --family NAME`, :mod:`vpltool.stages.train_text`) and segments by class names from its
checkpoint (`segment --model NAME:FILE`). Its configuration is one frozen dataclass, a subclass of
:class:`TextTrainConfig`:

* the fields of :class:`TextTrainConfig`: the trainer's loop (batch, schedule, AdamW, crops, checkpoints), which
  every family shares and `train-text` takes as options;
* the family's own fields: its model's knobs (`train-text --set KEY=VALUE`; `train-pgseg` spells PGSeg's as
  options);
* its class constants (``ClassVar``): its recipes, its zero-shot defaults (:class:`ZeroShotSettings`: what
  `segment --model NAME:FILE`, `cam` and `benchmark` use), the files its training writes and their kinds.

The registry row of the family (:data:`vpltool.models.registry.TEXT_FAMILIES`) names the class; nothing else does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from ..errors import VplError, VplWarning
from .checks import at_least, choice, fraction, non_negative, positive, seed_value


@dataclass(frozen=True)
class ZeroShotSettings:
    """A family's zero-shot segmentation defaults (`segment --model NAME:FILE`, `cam`, `benchmark`, the API).

    Attributes:
        bg_thresh: a pixel whose best class score is below this is background (in [0, 1]).
        short_side: images are resized so that their short side is this many pixels.
        slide: ``(crop, stride)`` of the sliding window in pixels; crop 0 = the whole image at once.
        templates: the key of the family's ``TEMPLATES`` whose prompts embed a class name.
        background: background words queried beside the classes (`segment --background`'s forms; ``none``).
        min_side: the smallest ``short_side`` the model takes (its patches need room).
        source: where these numbers come from (`benchmark --presets` prints it).
    """

    bg_thresh: float
    short_side: int
    slide: tuple[int, int]
    templates: str = "simple"
    background: str = "none"
    min_side: int = 32
    source: str = ""

    def options(self) -> dict[str, Any]:
        """The settings by the names `segment` and :func:`vpltool.segmenter` take them."""
        return {"bg_thresh": self.bg_thresh, "short_side": self.short_side, "slide_crop": self.slide[0],
                "slide_stride": self.slide[1], "background": self.background}


@dataclass(frozen=True)
class TextTrainConfig:
    """One training run of a text-supervised family: the shared loop's settings (each family's class adds its
    own fields). Defaults: PGSeg's reference (Ferenas/PGSeg 9f167cd ``configs/default_pgseg.yml``, its key in
    the comment); a family changes them through its recipes."""

    # a family's recipes: name -> changed fields ("reference": its paper's settings)
    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {"reference": {}}
    ZERO_SHOT: ClassVar[ZeroShotSettings] = ZeroShotSettings(bg_thresh=0.5, short_side=448, slide=(448, 224))
    STAGE: ClassVar[str] = "train-text"  # the stage name its run folders record
    FINAL: ClassVar[str] = "model.safetensors"  # the trained model in --out: what `segment --model NAME:FILE` takes
    CHECKPOINT_KIND: ClassVar[str] = "text-checkpoint"  # the kind of checkpoints/last.safetensors (model + AdamW)
    FILE_KINDS: ClassVar[dict[str, str]] = {}  # kind -> what it is (messages), for each kind of file it writes
    # the optimiser's kernels: "foreach" (a few multi-tensor kernels, bit for bit a per-parameter loop) or "fused" (one
    # kernel a parameter: the same update, rounded otherwise); make_optimizer of vpltool.stages.train_text.steps
    ADAM_KERNELS: ClassVar[str] = "foreach"

    recipe: str = "reference"
    family: str = ""  # the family trained (a name of vpltool.models.registry.TEXT_FAMILIES)
    batch_size: int = 1024  # data.batch_size: per process (each rank's loader batches this many)
    epochs: int = 30  # train.epochs
    warmup_epochs: float = 10  # train.warmup_epochs (a fraction allowed: the warm-up is rounded to steps)
    lr: float = 1e-4  # train.base_lr; not scaled by the batch
    warmup_lr: float = 1e-6  # train.warmup_lr: the warm-up's first value
    min_lr: float = 1e-5  # train.min_lr: the cosine's floor
    weight_decay: float = 0.05  # train.weight_decay (0 for biases and 1-d weights)
    eps: float = 1e-8  # train.optimizer.eps
    beta1: float = 0.9  # train.optimizer.betas
    beta2: float = 0.999
    clip_grad: float = 5.0  # train.clip_grad: max gradient norm; 0 = no clipping
    crop_size: int = 224  # data.img_aug.img_size: RandomResizedCrop's side
    min_scale: float = 0.08  # data.img_aug.img_scale[0]: RandomResizedCrop's smallest area fraction
    seed: int = 0  # train.seed
    log_every: int = 10  # print_freq
    checkpoint_every: int = 0  # iterations between checkpoints; 0 = once per epoch (checkpoint.freq 1)
    truncate: bool = False  # cut captions longer than the context (the reference's Tokenize(truncate=True))
    hflip: bool = True  # RandomHorizontalFlip (the reference's); False for pairs whose captions say left and right
    # a family with frozen backbones and an unaugmented view (min_scale 1, no flip; Talk2DINO): their features of
    # each pair computed once and kept in OUT/cache, read back on later epochs and on --resume; False: every step
    # runs them (the same numbers, epochs times the backbone work)
    feature_cache: bool = True

    def __post_init__(self) -> None:
        choice("--recipe", self.recipe, tuple(self.RECIPES))
        for name in ("epochs", "crop_size", "log_every"):
            at_least(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        at_least("--batch-size", self.batch_size, 1)
        at_least("--checkpoint-every", self.checkpoint_every, 0)
        non_negative("--warmup-epochs", self.warmup_epochs)  # a fraction of an epoch: a few steps of a long epoch
        for name in ("lr", "eps"):
            positive(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("warmup_lr", "min_lr", "weight_decay", "clip_grad"):
            non_negative(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("beta1", "beta2"):
            fraction(f"--{name}", getattr(self, name))
        fraction("--min-scale", self.min_scale)
        positive("--min-scale", self.min_scale)
        seed_value("--seed", self.seed)
        for problem in self.schedule_problems():
            warnings.warn(VplWarning(problem), stacklevel=4)

    def schedule_problems(self) -> list[str]:
        """Learning-rate schedules that are legal but not what anyone means: a cosine that climbs (--min-lr above
        --lr), a warm-up that descends (--warmup-lr above --lr). (A warm-up longer than a short test run is left
        unsaid: every one-epoch smoke test would print it.)"""
        out = []
        if self.min_lr > self.lr:
            out.append(f"--min-lr {self.min_lr:g} is above --lr {self.lr:g}: the cosine climbs instead of decaying")
        if self.warmup_lr > self.lr:
            out.append(f"--warmup-lr {self.warmup_lr:g} is above --lr {self.lr:g}: the warm-up descends")
        return out

    def noun_prompts(self) -> tuple[int, str, bool]:
        """What the shared data path adds to each caption: ``(K, templates, keyed)``: ``K`` noun prompts per
        caption (0: the caption alone, ``[L]`` tokens; K > 0: ``[1 + K, L]``), their templates (``full``: CLIP's
        80 ImageNet ones; ``simple``: the family's segmentation template), and ``keyed``: a third item per sample,
        the caption's nouns tokenised (captions naming the same nouns are the same caption). Default: none."""
        return 0, "full", False

    def inert(self) -> dict[str, str]:
        """Fields without effect in this combination (not recorded: :func:`vpltool.config.inert_fields`)."""
        return {}

    @classmethod
    def recipe_config(cls, name: str, **changes: Any) -> TextTrainConfig:
        """Recipe ``name``'s config with ``changes`` (None values: the recipe's own)."""
        choice("--recipe", name, tuple(cls.RECIPES))
        base = replace(cls(), recipe=name, **cls.RECIPES[name])
        return replace(base, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def loop_fields(cls) -> tuple[str, ...]:
        """The shared loop's field names (options of `train-text` for every family)."""
        return tuple(f.name for f in fields(TextTrainConfig))

    @classmethod
    def family_fields(cls) -> tuple[str, ...]:
        """The family's own field names (`train-text --set KEY=VALUE`)."""
        loop = set(cls.loop_fields())
        return tuple(f.name for f in fields(cls) if f.name not in loop)


def parse_settings(cls: type[TextTrainConfig], given: list[str] | None,
                   options: tuple[str, ...] = ()) -> dict[str, Any]:
    """``--set KEY=VALUE`` entries -> ``{field: value}`` of ``cls``'s fields, each value read as its field's type
    (bool: true/false/1/0/yes/no; tuple: comma-separated); ``options``: the fields the command spells as options
    (``--lr``), refused here so that one value has one spelling. An unknown key or a bad value is one line naming
    the family's keys."""
    import typing

    hints = typing.get_type_hints(cls)
    keys = [f.name for f in fields(cls) if f.name not in ("recipe", "family", *options)]
    out: dict[str, Any] = {}
    for entry in given or []:
        key, sep, text = entry.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise VplError(f"--set {entry}: give KEY=VALUE, e.g. --set {keys[-1]}=...")
        if key in options:
            raise VplError(f"--set {key}: it is an option; pass --{key.replace('_', '-')} {text.strip()}")
        if key not in keys:
            raise VplError(f"--set {key}: not a setting of this family; its settings: {', '.join(keys)}")
        out[key] = _read(hints[key], text.strip(), f"--set {key}")
    return out


def _read(hint: Any, text: str, option: str) -> Any:
    import typing

    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if origin is tuple:
            inner = typing.get_args(hint)[0]
            return tuple(inner(t) for t in text.split(",") if t.strip())
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        raise VplError(f"{option}={text}: not {getattr(hint, '__name__', str(hint))}; give e.g. "
                       f"{option}={'true' if hint is bool else '1'}") from None
    raise VplError(f"{option}: a setting of type {hint} cannot be given on the command line")


__all__ = ["ZeroShotSettings", "TextTrainConfig", "parse_settings"]

"""The ``pgseg`` family's configuration: its training defaults (the reference's, Ferenas/PGSeg 9f167cd
configs/default_pgseg.yml + pgseg_specific.yml) and recipes, and its zero-shot defaults (`segment --model
pgseg:FILE`'s background threshold, side and window): :class:`PGSegTrainConfig`, which the registry's row names.

Torch-free (the CLI's ``--help`` reads these).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import VplError
from .checks import at_least, choice, non_negative, positive
from .text import TextTrainConfig, ZeroShotSettings

PGSEG_PRESETS = ("groupvit-s", "tiny", "demo")  # the model family's configs: the reference's GroupViT-S, a tiny one,
# the demo world's (the toy CLIP's image tower size)
# the text-supervised families `vpltool export` traces to ONNX (a fixed graph for a fixed class list; the others are
# refused in one line, stages/export)
EXPORTABLE_FAMILIES = ("pgseg",)
SAME_CAPTION = ("text", "nouns")  # what makes two captions the same for --multi-positive
MULTI_LABEL_POOLS = ("mean", "max", "match")  # the multi-label loss's image side (PGSegConfig.multi_label_pool)
ASSIGN_METRICS = ("dot", "distance")  # a token's affinity to a group (PGSegConfig.assign_metric)
ASSIGN_INITS = ("query", "tokens")  # where the assignment's centres start (PGSegConfig.assign_init)
NOUN_TEMPLATES = ("full", "simple")  # the noun prompts' templates: CLIP's 80 ImageNet ones (the reference's), or
# segmentation's one "a photo of a {}."
PGSEG_RECIPES: dict[str, dict[str, Any]] = {
    "reference": {},
    # the demo world on 2 shared CPU cores: the family's tiny model on the whole 96 px scenes (min_scale 1: a crop
    # of a small scene often cuts out the objects its caption names), 900 steps on 400 pairs (0.2 CPU-s a step on
    # an idle core: about 3 CPU-minutes). The crop and scale were chosen on the train split (train loss, shapes
    # recognised, groups in use: docs/pgseg.md); the length, 2.5 times the earlier 360 steps, is what three seeds
    # of it fit in one session's CPU budget, the train-split proxies rising with it (studies/results/
    # pgseg_length.json); nothing was tuned on val. The demo (make pgseg) adds GroupViT's multi-label noun loss,
    # `--multi-label 3 --nouns FILE` (the world's shape and background words): a noun vocabulary is data, so the
    # recipe keeps the reference's 0 (docs/pgseg.md: the demo's figures with and without it)
    # the demo world from `make-pairs` shards (32,000 pairs: one pass at batch 32, 1,000 steps, a 50-step warm-up),
    # chosen on the train split (docs/pgseg.md, studies/results/pgseg_token_seed_probes.json): the toy CLIP's image
    # tower size ("demo" preset), the whole 96 px views unflipped (their captions say left and right), the
    # assignment's centres seeded from each image's tokens with k-means steps (assign_init "tokens", the nearest
    # centre, each group the tokens it holds: with the group tokens' queries, the reference's, the objects, 8 % of
    # a scene, got no group of their own), GroupViT's multi-label loss with 4 nouns each matched to its own final
    # group, equal noun prompts (one template) as positives, the mimetic init (assignment gain 6, others 2), and
    # 16 then 8 groups (the preset's 4 final groups, one per object and the background, left the objects inside
    # background groups, which the reference's rule then named: docs/pgseg.md, pgseg_group_count_probes.json)
    "demo": {"preset": "demo", "batch_size": 32, "epochs": 1, "warmup_epochs": 0.05, "lr": 1e-3, "warmup_lr": 1e-5,
             "min_lr": 1e-5, "crop_size": 96, "min_scale": 1.0, "hflip": False, "multi_label": 4,
             "multi_label_pool": "match", "noun_templates": "simple", "multi_positive": True,
             "assign_init": "tokens", "assign_metric": "distance", "assign_iters": 3, "center_residual": False,
             "assign_qk_init": 6.0, "qk_init": 2.0, "groups": (16, 8), "log_every": 10},
    "cpu": {"preset": "tiny", "batch_size": 32, "epochs": 75, "warmup_epochs": 3, "lr": 1e-3, "warmup_lr": 1e-5,
            "min_lr": 1e-4, "crop_size": 96, "min_scale": 1.0, "log_every": 5},
}


PGSEG_BG_THRESH = 0.95  # segmentation/evaluation/pgseg_seg.py: bg_thresh, capped at each image's highest affinity
# background words queried beside the classes (a group that matches one is background): none in the reference; the
# demo also scores its own words (`--background grass,sky,wall,water`, chosen on the train split: docs/pgseg.md)
PGSEG_BACKGROUND = "none"
PGSEG_TEMPLATES = "simple"  # evaluate.seg.template of default_pgseg.yml
PGSEG_SHORT_SIDE = 448  # the reference's test scale (pascal_voc12.py / pascal_context.py: img_scale (2048, 448))
PGSEG_SLIDE = (448, 224)  # pascal_voc12.py test_cfg: mode='slide', crop_size (448, 448), stride (224, 224)
PGSEG_MIN_SIDE = 32  # two of GroupViT-S's 16-px patches a side: below it the group maps have no patch to assign
PGSEG_ZERO_SHOT = ZeroShotSettings(
    bg_thresh=PGSEG_BG_THRESH, short_side=PGSEG_SHORT_SIDE, slide=PGSEG_SLIDE, templates=PGSEG_TEMPLATES,
    background=PGSEG_BACKGROUND, min_side=PGSEG_MIN_SIDE,
    source="Ferenas/PGSeg@9f167cd: pgseg_seg.py, pascal_voc12.py test_cfg")


@dataclass(frozen=True)
class PGSegTrainConfig(TextTrainConfig):
    """One PGSeg / GroupViT training run (`train-text --family pgseg`, alias `train-pgseg`): the shared loop's
    fields (:class:`~vpltool.config.text.TextTrainConfig`, the reference's defaults) and PGSeg's own. Defaults:
    the reference's (its YAML key in the comment)."""

    RECIPES: ClassVar[dict[str, dict[str, Any]]] = PGSEG_RECIPES
    ZERO_SHOT: ClassVar[ZeroShotSettings] = PGSEG_ZERO_SHOT
    # the names its run folders and files have had since train-pgseg: kept, so that every run of then resumes
    STAGE: ClassVar[str] = "train-pgseg"
    FINAL: ClassVar[str] = "pgseg.safetensors"
    CHECKPOINT_KIND: ClassVar[str] = "pgseg-checkpoint"
    FILE_KINDS: ClassVar[dict[str, str]] = {
        "pgseg-model": "a trained PGSeg / GroupViT (`train-pgseg`)",
        "pgseg-checkpoint": "a PGSeg training checkpoint (`train-pgseg`)"}

    family: str = "pgseg"  # the model family trained: its package builds the model and its losses
    preset: str = "groupvit-s"  # model.img_encoder / text_encoder of pgseg_specific.yml
    npr: bool = True  # False: plain GroupViT (the image-text contrastive loss alone)
    # GroupViT's multi-label (noun) loss: K noun prompts per caption (data.text_aug.multi_label: 0 in
    # default_pgseg.yml, 3 in GroupViT's group_vit_gcc_yfcc_30e.yml), weighted (multi_label_loss_weight)
    multi_label: int = 0
    multi_label_weight: float = 1.0
    noun_templates: str = "full"  # the noun prompts' templates (NOUN_TEMPLATES): "full", the reference's template_set
    # both contrastive losses with every same-text pair of the batch a positive (PGSegConfig.multi_positive); False:
    # the reference's one positive per row
    multi_positive: bool = False
    # which captions are the same one to --multi-positive's contrastive loss: "text", equal token ids; "nouns", the
    # same set of noun-vocabulary words (the toy CLIP's caption key: two captions of the same shapes on the same
    # background, whatever their colours and places)
    same_caption: str = "text"
    multi_label_pool: str = "mean"  # the multi-label loss's image side (PGSegConfig.multi_label_pool): "mean", the
    # reference's pooled embedding; "max", each image's best final group
    # mimetic query-key init gains (PGSegConfig.assign_qk_init / qk_init): the assignment attention's, every other
    # attention's; 0: the reference's init
    assign_qk_init: float = 0.0
    qk_init: float = 0.0
    attention_window: int = 0  # the first stage's attention window in patches (PGSegConfig.attention_window); 0:
    # global, the reference's
    temperature: float = 0.07  # model.contrast_temperature: the initial 1 / exp(logit_scale) of both losses
    hard_assignment: bool = True  # model.img_encoder.hard_assignment: gumbel noise + straight-through hard
    # assignment of the patches to the groups in training (the reference's); False: the plain softmax
    assign_iters: int = 1  # the grouping's assignment steps (PGSegConfig.assign_iters): 1, the reference's; n > 1,
    # n - 1 k-means steps of the group queries before the assignment
    center_residual: bool = True  # a grouping block's output (PGSegConfig.center_residual): the group token plus its
    # tokens (the reference's); False: its tokens alone
    assign_metric: str = "dot"  # a token's affinity to a group (PGSegConfig.assign_metric): "dot", the reference's;
    # "distance", the nearest centre
    assign_init: str = "query"  # where the assignment's centres start (PGSegConfig.assign_init): "query", the
    # group tokens' (the reference's); "tokens", farthest-point seeds among the image's tokens + k-means steps
    # the group tokens of each grouping stage, which are also its output groups (num_group_tokens /
    # num_output_groups of the model's YAML); (): the preset's (GroupViT-S: 64, 8; demo: 8, 4)
    groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        choice("--preset", self.preset, PGSEG_PRESETS)
        # the contrastive projectors' BatchNorm (the reference's) cannot normalise one sample: a traceback at the
        # first step, after the folder was made
        at_least("--batch-size", self.batch_size, 2, why=" (the projectors' BatchNorm needs two pairs a batch on "
                 "each process)")
        at_least("--assign-iters", self.assign_iters, 1)
        if self.attention_window and self.attention_window % 2 == 0:
            raise VplError(f"--attention-window {self.attention_window}: a window is centred on its patch, so it "
                           f"spans an odd number of patches; pass {self.attention_window + 1} (or 0: global)")
        for count in self.groups:
            at_least("--groups", count, 1, why=" (each grouping stage needs a group)")
        if self.groups and self.groups[-1] < 2:  # trained and certified, it would give every pixel one class
            raise VplError(f"--groups {','.join(map(str, self.groups))}: the last stage's groups are the segments "
                           "the model names, and one group gives every pixel of a photo the same class; pass at "
                           "least 2 last, e.g. 16,8")
        if list(self.groups) != sorted(self.groups, reverse=True):
            raise VplError(f"--groups {','.join(map(str, self.groups))}: each stage merges the groups of the one "
                           f"before, so no stage may have more; pass them largest first, e.g. "
                           f"{','.join(map(str, sorted(self.groups, reverse=True)))}")
        for name in ("multi_label", "attention_window"):
            at_least(f"--{name.replace('_', '-')}", getattr(self, name), 0)
        choice("--noun-templates", self.noun_templates, NOUN_TEMPLATES)
        choice("--multi-label-pool", self.multi_label_pool, MULTI_LABEL_POOLS)
        choice("--assign-metric", self.assign_metric, ASSIGN_METRICS)
        choice("--assign-init", self.assign_init, ASSIGN_INITS)
        if self.assign_init == "tokens" and (self.center_residual or self.assign_metric != "distance"):
            raise VplError("--assign-init tokens: its centres are clusters of the image's tokens, which no group "
                           "token stands for; pass --no-center-residual --assign-metric distance with it")
        choice("--same-caption", self.same_caption, SAME_CAPTION)
        if self.multi_label_pool == "match" and not self.multi_label:
            raise VplError("--multi-label-pool match: matches the noun prompts to groups; pass --multi-label K "
                           "(K > 0) with --nouns FILE")
        if self.same_caption == "nouns" and not (self.multi_positive and self.multi_label):
            raise VplError("--same-caption nouns: needs --multi-positive (it says which captions are positives of "
                           "each other) and --multi-label K with nouns (it reads the nouns); pass both")
        positive("--temperature", self.temperature)
        for name in ("multi_label_weight", "assign_qk_init", "qk_init"):
            non_negative(f"--{name.replace('_', '-')}", getattr(self, name))

    def noun_prompts(self) -> tuple[int, str, bool]:
        """GroupViT's multi-label loss reads ``multi_label`` noun prompts per caption (its ``noun_templates``),
        and ``--same-caption nouns`` each caption's nouns as its key."""
        return self.multi_label, self.noun_templates, self.same_caption == "nouns"

    def inert(self) -> dict[str, str]:
        """The multi-label loss's weight has no effect without the loss (:func:`vpltool.config.inert_fields`); no
        ``--groups`` is the preset's, recorded as it was before the option (a run of then resumes now)."""
        out = {"feature_cache": "PGSeg trains its image side: nothing is frozen to cache"}
        if not self.multi_label:
            out["multi_label_weight"] = "without --multi-label K (K > 0)"
        return out if self.groups else {**out, "groups": "when empty (the preset's)"}


def pgseg_recipe(name: str, **changes: Any) -> PGSegTrainConfig:
    """The recipe's config with ``changes`` (None values: the recipe's own)."""
    return PGSegTrainConfig.recipe_config(name, **changes)


def check_pgseg_side(option: str, side: int) -> None:
    """The short side a PGSeg image is resized to (`segment --pgseg --short-side`, `cam --pgseg-side`): at least
    :data:`PGSEG_MIN_SIDE` (a side of 1 was a traceback in the patch embedding)."""
    at_least(option, side, PGSEG_MIN_SIDE, why=" pixels (the model's patches need room)")

__all__ = ["PGSEG_PRESETS", "PGSEG_RECIPES", "PGSegTrainConfig", "pgseg_recipe", "PGSEG_BG_THRESH",
           "PGSEG_BACKGROUND", "PGSEG_TEMPLATES", "PGSEG_SHORT_SIDE", "PGSEG_SLIDE",
           "PGSEG_MIN_SIDE", "PGSEG_ZERO_SHOT", "check_pgseg_side"]

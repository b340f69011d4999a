"""Talk2DINO's training configuration (torch-free: the CLI reads it before torch loads): the shared loop's fields with
the reference's values (lorebianchi98/Talk2DINO at 4918c2d, ``configs/vitb_mlp_infonce.yaml`` and ``train.py``:
Adam at 1e-4, batch 128, 100 epochs, no schedule, no clipping) and its own fields (the frozen backbones, the
projection's depth, its zero-shot knobs).

The shared trainer's AdamW with ``weight_decay`` 0 is Adam; ``min_lr`` = ``lr`` with no warm-up is the constant
rate; ``clip_grad`` 0 is no clipping. Its image view is the shared one with ``min_scale`` 1 and no flip: the whole
image resized to ``crop_size`` (the reference: ``Resize(448, bicubic)`` + ``CenterCrop(448)``, the same square on a
square image; bilinear there, bicubic here). ``crop_size`` is also the square the DINO sees at inference
(``resize_dim``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ....config.checks import choice
from ....config.text import TextTrainConfig, ZeroShotSettings

POS_RESIZE = ("bicubic-dino", "bicubic-antialias")  # vpltool.models.backbones.dino.DINO_POS_RESIZE (torch-free copy)
# the demo world: the toy DINO (test_vit, patch 16; 192 px, a 12x12 grid, in training) and the toy CLIP's text
# tower; one pass at a constant 1e-3 (ten times the reference's rate), batch 128: chosen on the train split by
# studies/probe_talk2dino_recipe.py (studies/results/talk2dino_recipe_probe.json, docs/talk2dino.md)
# the shipped toy DINO found from the package, so the recipe works from any folder (a path relative to the checkout
# did not: `train-text --recipe demo` outside it could not find it)
TOY_DINO = str(Path(__file__).resolve().parents[3] / "assets" / "toy-dino" / "model.safetensors")
DEMO = {"dino_model": "test_vit", "dino_weights": TOY_DINO,
        "clip_model": "vpltool-toy", "clip_pretrained": "none", "crop_size": 192}
RECIPES: dict[str, dict[str, Any]] = {
    "reference": {}, "demo": {**DEMO, "epochs": 1, "lr": 1e-3, "warmup_lr": 1e-3, "min_lr": 1e-3, "log_every": 25}}


@dataclass(frozen=True)
class Talk2DINOTrainConfig(TextTrainConfig):
    """One Talk2DINO training run (`train-text --family talk2dino`). Defaults: the reference's."""

    RECIPES: ClassVar[dict[str, dict[str, Any]]] = RECIPES
    # configs/*/eval_*_pamr.yml (bg_thresh 0.55, PAMR), segmentation/configs/_base_/datasets/*.py (448, slide 448/224),
    # evaluate.template sub_imagenet_template
    ZERO_SHOT: ClassVar[ZeroShotSettings] = ZeroShotSettings(
        bg_thresh=0.55, short_side=448, slide=(448, 224), templates="sub_imagenet", min_side=32,
        source="Talk2DINO 4918c2d: eval_voc_bg_pamr.yml, pascal_voc12.py")
    STAGE: ClassVar[str] = "train-text"
    FINAL: ClassVar[str] = "talk2dino.safetensors"
    CHECKPOINT_KIND: ClassVar[str] = "talk2dino-checkpoint"
    # Adam over the projection alone, in one kernel a parameter: once the features are cached the update is half a
    # step's CPU-seconds, and this kernel takes a third of the multi-tensor one's; it rounds otherwise than the
    # reference's per-parameter loop (the same update to float rounding: bench_vs_reference.py's unit (b))
    ADAM_KERNELS: ClassVar[str] = "fused"
    FILE_KINDS: ClassVar[dict[str, str]] = {"talk2dino-model": "a trained Talk2DINO projection (`train-text`)",
                                            "talk2dino-checkpoint": "a Talk2DINO training checkpoint (`train-text`)"}

    family: str = "talk2dino"
    batch_size: int = 128  # train.batch_size
    epochs: int = 100  # train.num_epochs
    warmup_epochs: float = 0  # no scheduler ('linear' with warm-up 0)
    lr: float = 1e-4  # train.lr
    warmup_lr: float = 1e-4
    min_lr: float = 1e-4  # a constant rate
    weight_decay: float = 0.0  # Adam: train.py's weight_decay is ignored
    clip_grad: float = 0.0  # no clipping (commented out in train_util.py)
    crop_size: int = 448  # --resize_dim / --crop_dim of dino_extraction_v2.py, resize_dim of the eval config
    min_scale: float = 1.0  # the whole image
    seed: int = 123  # set_seed(123)
    hflip: bool = False
    # its own fields
    dino_model: str = "vit_base_patch14_reg4_dinov2.lvd142m"  # dinov2_vitb14_reg, in timm's name
    dino_weights: str = "hub"
    dino_pos_resize: str = "bicubic-antialias"  # the *_reg hub models' positional resize
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    hidden_layers: int = 1  # hidden_layer: True
    pamr: bool = True  # evaluate.pamr of the *_pamr.yml bases
    bg_clean: bool = False  # model.with_bg_clean: true in voc_bg and coco_object alone

    def __post_init__(self) -> None:
        super().__post_init__()
        choice("--set dino_pos_resize", self.dino_pos_resize, POS_RESIZE)


__all__ = ["Talk2DINOTrainConfig", "RECIPES", "TOY_DINO"]

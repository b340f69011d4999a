"""The demo world's toy CLIP: an ordinary open_clip ViT small enough to train on 2 CPU cores (`train-toy-clip`).

The model (patch 8 on 96 px -> 12x12 tokens, width 128, 4 blocks; word-level text tower) is saved as an open_clip
``local-dir:`` folder plus our ``vpltool.json`` (tokenizer, vocabulary, attention window, training record) that
:func:`vpltool.models.load_backbone` reads. This module builds it, writes and swaps checkpoint folders, and scores
a toy (label-set retrieval, GradCAM mIoU); :mod:`.train_toy_clip` trains it.

* **Windowed attention.** In blocks 0..L-2 a patch attends only to its 3x3 patch neighbourhood (:func:`toy_window`);
  only the last block is global. A plain global ViT learns the captions just as well, but mixes every token with
  every other so early that its GradCAM maps are at chance (feasibility study).
* **Mimetic attention init** (issue 36). Every block's query and key weights start equal (``W_q = W_k``, gain 2:
  :func:`mimetic_qk`), so a patch first attends to the patches that look like it; training keeps that grouping
  (49.9 % of an object patch's CAA affinity on its own object, chance 7.0; 27.4 with open_clip's init), which is
  what CLIP-ES's CAA propagates CAMs through.
* **Seeds.** Training scenes and held-out scenes come from :func:`scene_seed`, 64-bit ``SeedSequence`` draws like
  :func:`vpltool.demo.scenes.split_seed`, so they never coincide with the demo's own train/val splits.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError
from ..models import EXTRA_CONFIG, ClipBackbone, ModelSpec
from ..models.backbones import mimetic
from ..ops.kernels import MiouAccumulator, cams_to_labels, upsample
from .scenes import (
    BACKGROUNDS,
    CLASSES,
    MAX_DETAILED_WORDS,
    Scene,
    SceneConfig,
    caption_vocabulary,
    detailed_vocabulary,
    make_caption,
    tokenize_caption,
)

TOY_WINDOW: dict[str, Any] = {"size": 3, "blocks": [0, 1, 2]}  # every block but the last (4 blocks)
PROMPT_TEMPLATE = "a photo of a {}."  # the demo's prompt; its words must be in the vocabulary
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, so the toy looks like the real thing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 96
CONTEXT_LENGTH = 16  # SOT + the 14 words of the longest caption + EOT
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on exp(logit_scale)
BACKGROUND_WORDS = frozenset(BACKGROUNDS)
_KEY_WORDS = frozenset(CLASSES[1:]) | BACKGROUND_WORDS


# --------------------------------------------------------------------------------------------- model
def toy_model_cfg(vocab_size: int, layers: int = 4, context_length: int = CONTEXT_LENGTH,
                  pool: str = "mean") -> dict[str, Any]:
    """open_clip ``model_cfg`` of the toy CLIP (~1.26 M parameters with 4 vision blocks).

    ``pool_type 'avg'`` makes open_clip's own ``encode_image`` pool the patch tokens like the CLIP-ES surgery;
    a toy trained on the class token (``pool='cls'``) records ``'tok'``, as real CLIP does.
    """
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 128, "layers": layers, "head_width": 32,
                       "pool_type": "tok" if pool == "cls" else "avg"},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": 128, "heads": 4,
                     "layers": 2},
    }


def toy_window(layers: int = 4, global_blocks: int = 1, size: int = TOY_WINDOW["size"]) -> dict[str, Any]:
    """The attention window: ``size x size`` (3x3 by default) in every vision block but the last ``global_blocks``."""
    return {"size": size, "blocks": list(range(layers - global_blocks))}


def context_length(captions: str = "names") -> int:
    """Text context: SOT + the longest caption of the style + EOT."""
    return CONTEXT_LENGTH if captions == "names" else MAX_DETAILED_WORDS + 2


def toy_vocabulary(captions: str = "names") -> list[str]:
    """Sorted words: every caption word plus what the prompts need (template, class names, background words)."""
    extra = {*tokenize_caption(PROMPT_TEMPLATE.format("")), *CLASSES[1:], *BACKGROUNDS}
    if captions == "detailed":
        extra |= set(detailed_vocabulary())
    return sorted(set(caption_vocabulary()) | extra)


def preprocess_cfg() -> dict[str, Any]:
    """open_clip ``preprocess_cfg`` stored beside the weights: the normalisation the model was trained with."""
    return {"size": IMAGE_SIZE, "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
            "resize_mode": "shortest"}


def build_toy_backbone(seed: int = 0, device: torch.device | str = "cpu", *, layers: int = 4,
                       captions: str = "names", pool: str = "mean",
                       logit_scale: float | None = None, global_blocks: int = 1, window: int = TOY_WINDOW["size"],
                       qk_init: float = 0.0, qk_blocks: str = "global") -> ClipBackbone:
    """A randomly initialised toy CLIP wrapped like a loaded one (word tokenizer + window); frozen, eval mode.

    ``logit_scale``: the initial inverse temperature (None: open_clip's 1 / 0.07). ``window``: the side of the
    early blocks' attention window. ``qk_init`` > 0: the query and key weights of the global blocks (``qk_blocks``
    'global') or of every block ('all') start equal (:func:`mimetic_qk`).
    """
    import open_clip

    vocab = toy_vocabulary(captions)
    torch.manual_seed(seed)
    kwargs = {} if logit_scale is None else {"init_logit_scale": math.log(logit_scale)}
    cfg = toy_model_cfg(len(vocab) + 3, layers, context_length(captions), pool)  # + padding, SOT, EOT
    model = open_clip.CLIP(**cfg, **kwargs)
    model.visual.preprocess_cfg = preprocess_cfg()
    if qk_init > 0:  # after the model's own draws, so that qk_init 0 builds the same weights as before
        first = 0 if qk_blocks == "all" else layers - global_blocks
        mimetic_qk(model.visual.transformer.resblocks[first:], qk_init)
    extra = {"tokenizer": "word", "vocabulary": vocab, "attention_window": toy_window(layers, global_blocks, window)}
    return ClipBackbone(model, ModelSpec(model="toy-clip", pretrained="none"), torch.device(device), extra)


@torch.no_grad()
def mimetic_qk(blocks: Iterable[torch.nn.Module], gain: float) -> None:
    """Mimetic initialisation of self-attention (Trockman & Kolter, ICML 2023), its query-key half, on open_clip
    blocks (:func:`equal_query_key`). Why: ``q . k`` then starts as a similarity kernel of the two tokens, so a patch
    attends to patches that look like it (the same object) from the first step; at open_clip's init the logits are
    near 0 and every map uniform."""
    for block in blocks:
        equal_query_key(block.attn.in_proj_weight, block.attn.in_proj_bias, gain)


@torch.no_grad()
def equal_query_key(weight: torch.Tensor, bias: torch.Tensor | None, gain: float) -> None:
    """In place, on one block's fused ``[3 * width, width]`` query-key-value projection (open_clip's
    ``in_proj_weight``, timm's ``qkv.weight``) and its bias: ``W_q = W_k = gain * G / sqrt(width)``, G standard
    normal (one draw), query and key biases 0; the value rows are left as they are."""
    width = weight.shape[1]
    halves = (bias[:width], bias[width:2 * width]) if bias is not None else (None, None)
    mimetic.equal_query_key(weight[:width], weight[width:2 * width], *halves, gain)


def encode_images(bb: ClipBackbone, pixels: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """``[B, 3, H, W]`` normalised pixels -> ``[B, D]`` unit image embeddings, differentiable.

    The inference path of the CLIP-ES surgery (:meth:`ClipBackbone.encode`: every block, window mask included, the
    positional embedding as a live parameter at the native grid). ``pool='mean'``: the mean of the projected patch
    tokens, as CLIP-ES reads the image. ``'cls'``: the projected class token, as real CLIP is trained. ``'both'``:
    ``[2, B, D]``, the two stacked (mean first).
    """
    tokens = bb.encode(pixels).tokens
    mean = bb.image_embedding(tokens)
    if pool == "mean":
        return mean
    v = bb.visual
    cls = F.normalize(v.ln_post(tokens[:, 0]) @ v.proj, dim=-1)
    return cls if pool == "cls" else torch.stack([mean, cls])


def encode_captions(bb: ClipBackbone, captions: Sequence[str]) -> torch.Tensor:
    """Captions -> ``[N, D]`` unit text embeddings, differentiable."""
    return bb.encode_text(captions, grad=True)


def to_pixels(images: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 RGB -> ``[B, 3, H, W]`` float32, normalised (no resize: scenes are already 96 px)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --------------------------------------------------------------------------------------------- data
def scene_seed(seed: int, purpose: str) -> int:
    """The scene seed of the toy CLIP's ``"train"`` or ``"heldout"`` scenes, or of `make-pairs`' ``"pairs"``:
    disjoint from each other and from the demo world's splits (:func:`vpltool.demo.scenes.split_seed`)."""
    index = ("train", "heldout", "pairs").index(purpose)
    return int(np.random.SeedSequence([seed, 0x70C11B, index]).generate_state(1, np.uint64)[0])


def caption_key(caption: str) -> frozenset[str]:
    """What a caption asserts: its class names and background word (template wording and order ignored)."""
    return frozenset(w for w in tokenize_caption(caption) if w in _KEY_WORDS)


# --------------------------------------------------------------------------------------------- checkpoint
def write_checkpoint(folder: Path, model: torch.nn.Module, extra: dict[str, Any],
                      arch: dict[str, Any] | None = None) -> None:
    """The three files of a ``local-dir:`` toy CLIP; weights in fp16 (open_clip casts them back on load)."""
    from safetensors.torch import save_file

    arch = arch or {}
    vocab = extra["vocabulary"]
    layers, captions = arch.get("layers", 4), arch.get("captions", "names")
    model_cfg = toy_model_cfg(len(vocab) + 3, layers, context_length(captions), arch.get("pool", "mean"))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg()}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(weights, folder / "open_clip_model.safetensors", metadata={"format": "pt"})
    (folder / EXTRA_CONFIG).write_text(json.dumps(extra, indent=2) + "\n")
    for path in folder.iterdir():
        path.chmod(0o644)  # safetensors writes owner-only files; the package ships these


def check_out_dir(out: Path) -> None:
    """Refuse to replace anything but a model folder (or an empty folder): checked before training starts too."""
    if out.exists() and not (out.is_dir() and ((out / "open_clip_config.json").is_file() or not any(out.iterdir()))):
        raise VplError(f"{out}: exists and is not a model folder; choose another output folder")


def swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished folder ``tmp``; an old model folder is removed only once the new one is in."""
    old = None
    if out.exists():
        check_out_dir(out)
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------- scoring
def candidate_captions(cfg: SceneConfig = SceneConfig()) -> tuple[list[str], list[frozenset[str]]]:
    """One caption per (label set, background) a scene can have, and its key; 372 for the default world."""
    rng = np.random.default_rng(0)  # fixed wording: the candidates are the same for every model
    names = CLASSES[1 : cfg.n_classes + 1]
    sets = [c for k in range(min(cfg.max_objects, cfg.n_classes) + 1) for c in combinations(names, k)]
    captions = [make_caption(rng, list(s), bg) for s in sets for bg in BACKGROUNDS]
    return captions, [caption_key(c) for c in captions]


@torch.no_grad()
def caption_accuracy(bb: ClipBackbone, scenes: Iterable[Scene], cfg: SceneConfig = SceneConfig(),
                     chunk: int = 128) -> dict[str, float]:
    """Top-1 retrieval of each scene's label set (+ background) among :func:`candidate_captions`.

    Returns:
        ``caption_accuracy`` (classes and background both right) and ``label_set_accuracy`` (classes right),
        fractions in [0, 1].
    """
    captions, keys = candidate_captions(cfg)
    text = bb.encode_text(captions)  # [C, D]
    exact = classes_only = total = 0
    scenes = iter(scenes)
    while batch := [s for _, s in zip(range(chunk), scenes)]:
        img = encode_images(bb, to_pixels(np.stack([s.image for s in batch]), bb.mean, bb.std).to(bb.device))
        best = (img @ text.T).argmax(1).tolist()
        for scene, j in zip(batch, best):
            truth = caption_key(scene.caption)
            exact += keys[j] == truth
            classes_only += keys[j] - BACKGROUND_WORDS == truth - BACKGROUND_WORDS
            total += 1
    return {"caption_accuracy": exact / max(total, 1), "label_set_accuracy": classes_only / max(total, 1)}


def localization_miou(bb: ClipBackbone, scenes: Iterable[Scene], template: str = PROMPT_TEMPLATE,
                      bg_exponent: float = 1.0) -> float:
    """mIoU of raw softmax-GradCAM (CLIP-ES, no CAA) against the exact scene masks.

    Per scene: rows = text prototypes of the present classes + the 4 background words from ``template``;
    temperature ``1 / logit_scale``; maps upsampled to the image and labelled with ``bg = (1 - max)^a``, argmax.
    """
    class_rows = bb.encode_text([template.format(c) for c in CLASSES[1:]])  # [8, D]
    bg_rows = bb.encode_text([template.format(b) for b in BACKGROUNDS])  # [4, D]
    acc = MiouAccumulator(len(CLASSES))
    for scene in scenes:
        pixels = to_pixels(scene.image[None], bb.mean, bb.std).to(bb.device)
        grid = (pixels.shape[-2] // bb.patch_size, pixels.shape[-1] // bb.patch_size)
        with torch.no_grad():
            x = bb.encode(pixels, stop=bb.n_blocks - 1).tokens
        labels = list(scene.labels)
        rows = torch.cat([class_rows[[c - 1 for c in labels]], bg_rows])
        cams = bb.gradcam(x[0], grid, rows, len(labels), 1.0 / bb.logit_scale).maps
        full = upsample(cams.cpu(), scene.mask.shape)
        acc.add(scene.mask, cams_to_labels(full.numpy(), labels, bg_exponent))
    return float(acc.result()["miou"])

"""A toy CLIP for the demo world: 1.3 M parameters, trained on scene captions in ~10 minutes on 2 CPU cores.

The model is an ordinary open_clip ViT (patch 8 on 96 px -> 12x12 tokens, width 128, 4 blocks; word-level text
tower, context 16) saved as an open_clip ``local-dir:`` folder, plus our ``vpltool.json`` (vocabulary and
attention window) that :func:`vpltool.backbone.load_backbone` reads. Two choices make its CAMs localise:

* **Windowed attention.** In blocks 0..2 a patch attends only to its 3x3 patch neighbourhood (``TOY_WINDOW``); only
  the last block is global. A plain global ViT learns the captions just as well, but mixes every token with every
  other so early that its GradCAM maps are at chance (feasibility study).
* **Train through the inference path.** The image embedding is the mean of the projected patch tokens, exactly
  CLIP-ES's surgery (``bb.dense(tokens).mean(1)``), and the blocks run through ``ClipBackbone.block`` with its
  window mask. What GradCAM differentiates at inference is then what the contrastive loss shaped.

Half of the training images are random crops re-captioned with what they show (:func:`crop_scene`): with
whole scenes only, the single-object scenes localise well but multi-object ones do not; crops teach that a region
matches the words for what lies in it (held-out GradCAM mIoU 0.32 -> 0.36 at 400 steps).

Training scenes are rendered on the fly from a seed derived from ``seed`` by :func:`scene_seed` (purpose
``"train"``); held-out scenes for the reported accuracy use purpose ``"heldout"``. Both are 64-bit
``SeedSequence`` draws like :func:`vpltool.demo.scenes.split_seed`, so they never coincide with the demo's own
train/val splits: the toy CLIP has never seen a scene the pipeline is scored on.

A batch of 128 holds duplicate captions (only 372 distinct label-set x background combinations exist), so the
loss is a **multi-positive** InfoNCE: every caption naming the same classes and background is a positive, with
the target spread evenly over them.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backbone import EXTRA_CONFIG, ClipBackbone, ModelSpec
from ..errors import VplError
from .scenes import (
    BACKGROUNDS, CLASSES, MAX_DETAILED_WORDS, Scene, SceneConfig, caption_vocabulary, detailed_caption,
    detailed_vocabulary, generate_scenes, make_caption, tokenize_caption,
)

TOY_WINDOW: dict[str, Any] = {"size": 3, "blocks": [0, 1, 2]}  # every block but the last (4 blocks)
CAPTION_STYLES = ("names", "detailed")
POOLS = ("mean", "cls", "both")
LOSSES = ("multi", "infonce")
PROMPT_TEMPLATE = "a photo of a {}."  # the demo's prompt; its words must be in the vocabulary
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, so the toy looks like the real thing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 96
CONTEXT_LENGTH = 16  # SOT + the 14 words of the longest caption + EOT
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on exp(logit_scale)
_BACKGROUND_WORDS = frozenset(BACKGROUNDS)
_KEY_WORDS = frozenset(CLASSES[1:]) | _BACKGROUND_WORDS


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


def toy_window(layers: int = 4) -> dict[str, Any]:
    """The attention window: 3x3 in every vision block but the last."""
    return {"size": TOY_WINDOW["size"], "blocks": list(range(layers - 1))}


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
                       logit_scale: float | None = None) -> ClipBackbone:
    """A randomly initialised toy CLIP wrapped like a loaded one (word tokenizer + window); frozen, eval mode.

    ``logit_scale``: the initial inverse temperature (None: open_clip's 1 / 0.07).
    """
    import open_clip

    vocab = toy_vocabulary(captions)
    torch.manual_seed(seed)
    kwargs = {} if logit_scale is None else {"init_logit_scale": math.log(logit_scale)}
    cfg = toy_model_cfg(len(vocab) + 3, layers, context_length(captions), pool)  # + padding, SOT, EOT
    model = open_clip.CLIP(**cfg, **kwargs)
    model.visual.preprocess_cfg = preprocess_cfg()
    extra = {"vocabulary": vocab, "attention_window": toy_window(layers)}
    return ClipBackbone(model, ModelSpec(model="toy-clip", pretrained="none"), torch.device(device), extra)


def _embed(bb: ClipBackbone, pixels: torch.Tensor) -> torch.Tensor:
    """``bb.embed`` at the native grid, but with gradients into the positional embedding.

    ``ClipBackbone.positional_embedding`` caches a detached copy (right for a frozen model), so training uses this
    twin; at 96 px both give the same tokens.

    Args:
        pixels: ``[B, 3, 96, 96]`` float32, CLIP-normalised.

    Returns:
        ``[B, 1 + 144, width]`` tokens entering block 0.
    """
    v = bb.visual
    x = v.conv1(pixels).flatten(2).transpose(1, 2)  # [B, hw, width]
    cls = v.class_embedding.view(1, 1, -1).expand(len(x), 1, -1)
    return v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding)


def encode_images(bb: ClipBackbone, pixels: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """``[B, 3, H, W]`` normalised pixels -> ``[B, D]`` unit image embeddings, differentiable.

    ``pool='mean'``: the inference path of the CLIP-ES surgery: every block through ``bb.block`` (window mask
    included), then the mean of the projected patch tokens. ``'cls'``: the projected class token, as real CLIP is
    trained. ``'both'``: ``[2, B, D]``, the two stacked (mean first).
    """
    grid = (pixels.shape[-2] // bb.patch_size, pixels.shape[-1] // bb.patch_size)
    x = _embed(bb, pixels)
    for i in range(bb.n_blocks):
        x = bb.block(i, x, grid)[0]
    mean = F.normalize(bb.dense(x).mean(1), dim=-1)
    if pool == "mean":
        return mean
    v = bb.visual
    cls = F.normalize(v.ln_post(x[:, 0]) @ v.proj, dim=-1)
    return cls if pool == "cls" else torch.stack([mean, cls])


def encode_captions(bb: ClipBackbone, captions: Sequence[str]) -> torch.Tensor:
    """Captions -> ``[N, D]`` unit text embeddings, differentiable (``bb.encode_text`` runs under no_grad)."""
    tokens = bb.tokenizer(list(captions)).to(bb.device)
    return F.normalize(bb._encode_tokens(tokens, bb._text_parts()), dim=-1)


def to_pixels(images: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 RGB -> ``[B, 3, H, W]`` float32, normalised (no resize: scenes are already 96 px)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --------------------------------------------------------------------------------------------- data
def scene_seed(seed: int, purpose: str) -> int:
    """The scene seed of the toy CLIP's ``"train"`` or ``"heldout"`` scenes, disjoint from the demo's splits."""
    index = ("train", "heldout").index(purpose)
    return int(np.random.SeedSequence([seed, 0x70C11B, index]).generate_state(1, np.uint64)[0])


def caption_key(caption: str) -> frozenset[str]:
    """What a caption asserts: its class names and background word (template wording and order ignored)."""
    return frozenset(w for w in tokenize_caption(caption) if w in _KEY_WORDS)


def _streamed_batches(n_batches: int, batch_size: int, seed: int, cfg: SceneConfig) -> Iterator[list[Scene]]:
    """Fresh scenes for every step: no scene is seen twice."""
    scenes = generate_scenes(n_batches * batch_size, seed, cfg)
    for _ in range(n_batches):
        yield [next(scenes) for _ in range(batch_size)]


def _pool_batches(pool: Sequence[Scene], n_batches: int, batch_size: int,
                  gen: torch.Generator) -> Iterator[list[Scene]]:
    """Random batches (without replacement inside a batch) from a fixed in-memory pool."""
    for _ in range(n_batches):
        yield [pool[i] for i in torch.randperm(len(pool), generator=gen)[:batch_size].tolist()]


def _world_pool(data_dir: str | Path) -> list[Scene]:
    """The train split of a `make-world` folder (``folder`` or ``voc`` layout) with its ``captions.json``."""
    from ..data import load_image, open_dataset
    from ..io import read_json, read_mask

    data_dir = Path(data_dir)
    if not (data_dir / "captions.json").is_file():
        raise VplError(f"{data_dir}: no captions.json; pass a folder written by the demo world (make-world)")
    captions = read_json(data_dir / "captions.json")
    pool = []
    for item in open_dataset(data_dir, "train").items:
        if item.id not in captions or item.gt is None:
            raise VplError(f"{data_dir}: train image {item.id} has no caption or no mask; re-run make-world")
        image = load_image(item.image)
        if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            raise VplError(f"{item.image}: {image.shape[:2]} px, the toy CLIP needs {IMAGE_SIZE}x{IMAGE_SIZE}")
        background = next(iter(caption_key(captions[item.id]) & _BACKGROUND_WORDS), BACKGROUNDS[0])
        pool.append(Scene(image, read_mask(item.gt), item.labels, background, captions[item.id]))
    return pool


def crop_and_recaption(scene: Scene, rng: np.random.Generator, min_side: int = 48) -> tuple[np.ndarray, str]:
    """A random square crop of ``scene`` (side ``min_side``..full), re-captioned by :func:`crop_scene`."""
    size = scene.image.shape[0]
    side = int(rng.integers(min_side, size + 1))
    y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return crop_scene(scene, (y0, x0, side), rng)


def crop_scene(scene: Scene, box: tuple[int, int, int], rng: np.random.Generator,
               min_pixels: int = 24) -> tuple[np.ndarray, str]:
    """The square ``box = (top, left, side)`` of ``scene``, resized back to full size, with a caption of what it shows.

    A crop is a new image: its caption names the classes left in the crop and the scene's background. Crops show
    single objects and parts of scenes, so the model learns that a region matches the words for what lies in it,
    which is what GradCAM asks of it later. A crop that leaves a class only a sliver (1 to ``min_pixels - 1``
    pixels: named or not, the caption would be doubtful) is not taken; the whole scene is returned instead.

    Returns:
        ``[H, W, 3]`` uint8 image (``scene.image`` itself when the crop is refused) and its caption.
    """
    from PIL import Image

    top, left, side = box
    window = (slice(top, top + side), slice(left, left + side))
    counts = np.bincount(scene.mask[window].ravel(), minlength=256)
    if any(0 < counts[c] < min_pixels for c in scene.labels):
        return scene.image, scene.caption
    names = [CLASSES[c] for c in scene.labels if counts[c]]
    size = scene.image.shape[1], scene.image.shape[0]
    image = np.asarray(Image.fromarray(scene.image[window]).resize(size, Image.BICUBIC))
    return image, make_caption(rng, names, scene.background)


def _views(batch: Sequence[Scene], rng: np.random.Generator, crop_prob: float) -> tuple[np.ndarray, list[str]]:
    """``[B, 96, 96, 3]`` uint8 images and B captions: each scene whole, or cropped with probability ``crop_prob``."""
    views = [crop_and_recaption(s, rng) if rng.random() < crop_prob else (s.image, s.caption) for s in batch]
    return np.stack([v[0] for v in views]), [v[1] for v in views]


def crop_with_mask(scene: Scene, rng: np.random.Generator, min_side: int = 48,
                   min_pixels: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A random square crop of ``scene`` (side ``min_side``..full) resized back to full size, image and mask.

    Like :func:`crop_and_recaption`, a crop leaving a class only a sliver returns the whole scene.
    """
    from PIL import Image

    size = scene.image.shape[0]
    side = int(rng.integers(min_side, size + 1))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    window = (slice(top, top + side), slice(left, left + side))
    counts = np.bincount(scene.mask[window].ravel(), minlength=256)
    if any(0 < counts[c] < min_pixels for c in scene.labels):
        return scene.image, scene.mask
    full = scene.image.shape[1], scene.image.shape[0]
    image = np.asarray(Image.fromarray(scene.image[window]).resize(full, Image.BICUBIC))
    mask = np.asarray(Image.fromarray(scene.mask[window]).resize(full, Image.NEAREST))
    return image, mask


def _detailed_views(batch: Sequence[Scene], rng: np.random.Generator, crop_prob: float,
                    detail: float) -> tuple[np.ndarray, list[str]]:
    """Like :func:`_views`, but flipped here (a caption may say left or right) and described from the mask."""
    images, captions = [], []
    for scene in batch:
        image, mask = crop_with_mask(scene, rng) if rng.random() < crop_prob else (scene.image, scene.mask)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        images.append(image)
        captions.append(detailed_caption(rng, mask, scene.labels, scene.background, detail))
    return np.stack(images), captions


def _flip(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip per image: captions say nothing about left and right."""
    flip = torch.rand(len(pixels), generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)


# --------------------------------------------------------------------------------------------- loss
def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, keys: Sequence[frozenset[str]],
                             logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption key is a positive.

    Args:
        img, txt: ``[B, D]`` unit embeddings; row i of both comes from scene i.
        keys: B caption keys (:func:`caption_key`).
        logit_scale: scalar log of the inverse temperature.

    Returns:
        Scalar: mean of the image->text and text->image cross-entropies against the normalised positive mask.
    """
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    key_ids = torch.tensor([ids[k] for k in keys], device=img.device)
    same = (key_ids[:, None] == key_ids[None, :]).float()  # [B, B], symmetric, diagonal 1
    target = same / same.sum(1, keepdim=True)
    logits = logit_scale.exp() * img @ txt.T  # [B, B]
    i2t = -(target * logits.log_softmax(1)).sum(1).mean()
    t2i = -(target * logits.log_softmax(0)).sum(0).mean()  # target's columns = its rows (symmetric mask)
    return (i2t + t2i) / 2


# --------------------------------------------------------------------------------------------- training
def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW with decay on matrices only: gains, biases, the class token and the logit scale are left alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)  # CLIP's betas and eps


def _schedule(steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup over the first ~5 % of steps, then cosine to 0."""
    warmup = max(1, min(25, steps // 20))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


def _batches(steps: int, batch_size: int, seed: int, data_dir: str | Path | None, n_scenes: int | None,
             cfg: SceneConfig, gen: torch.Generator) -> tuple[Iterator[list[Scene]], str]:
    """The training batches and a one-line description of where they come from (recorded in vpltool.json)."""
    if data_dir is not None:
        pool = _world_pool(data_dir)
        return _pool_batches(pool, steps, batch_size, gen), f"world folder {Path(data_dir).resolve()}"
    train_seed = scene_seed(seed, "train")
    if n_scenes is None:
        return _streamed_batches(steps, batch_size, train_seed, cfg), f"{steps * batch_size} fresh scenes"
    pool = list(generate_scenes(n_scenes, train_seed, cfg))
    return _pool_batches(pool, steps, batch_size, gen), f"pool of {n_scenes} scenes"


def _keys(captions: Sequence[str], captions_style: str, loss: str) -> list:
    """The positive-pair keys of a batch: what a caption asserts (names), the caption itself (detailed), or its
    index (plain InfoNCE: only the diagonal is positive)."""
    if loss == "infonce":
        return list(range(len(captions)))
    return [caption_key(c) for c in captions] if captions_style == "names" else list(captions)


def _train_step(bb: ClipBackbone, opt: torch.optim.Optimizer, sched, images: np.ndarray, captions: list[str],
                gen: torch.Generator, clip_norm: float = 1.0, *, flip: bool = True, captions_style: str = "names",
                pool: str = "mean", loss_kind: str = "multi") -> float:
    """One optimisation step on ``[B, 96, 96, 3]`` uint8 images and their captions; returns the loss."""
    model = bb.model
    pixels = to_pixels(images)
    pixels = (_flip(pixels, gen) if flip else pixels).to(bb.device)
    keys = _keys(captions, captions_style, loss_kind)
    img, txt = encode_images(bb, pixels, pool), encode_captions(bb, captions)
    if pool == "both":
        loss = sum(multi_positive_clip_loss(e, txt, keys, model.logit_scale) for e in img) / 2
    else:
        loss = multi_positive_clip_loss(img, txt, keys, model.logit_scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()
    sched.step()
    with torch.no_grad():  # CLIP clamps the inverse temperature at 100 so logits cannot blow up
        model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    return loss.item()


def train_toy_clip(
    out_dir: str | Path, *, data_dir: str | Path | None = None, steps: int = 400, batch_size: int = 128,
    lr: float = 1e-3, seed: int = 0, n_scenes: int | None = None, scene_cfg: SceneConfig = SceneConfig(),
    crop_prob: float = 0.5, eval_scenes: int = 500, cam_scenes: int = 200, device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None, logit_scale: float | None = None, layers: int = 4,
    captions: str = "names", detail: float = 0.5, pool: str = "mean", loss: str = "multi", threads: int | None = 2,
) -> dict[str, Any]:
    """Train the toy CLIP on demo-world captions and save it as a ``local-dir:`` model folder.

    Args:
        out_dir: the model folder (``open_clip_config.json``, ``open_clip_model.safetensors`` in fp16,
            ``vpltool.json``); written beside it first and swapped in at the end, so it is never half-written.
        data_dir: a `make-world` folder whose train split (images + ``captions.json``) is the training pool.
            None (default): render scenes on the fly from :func:`scene_seed` ``(seed, "train")``.
        steps: optimiser steps of ``batch_size`` images; ~1.2 s a step at 128 on 2 CPU cores.
        lr: AdamW peak learning rate (cosine schedule, short warmup, weight decay 0.1 on matrices).
        seed: seeds the initial weights, the augmentation and the training/held-out scenes.
        n_scenes: with no ``data_dir``, train on a fixed pool of this many scenes instead of fresh ones each step.
        scene_cfg: how scenes are drawn (the demo world's default).
        crop_prob: probability that an image is replaced by a re-captioned random crop (:func:`crop_and_recaption`).
        eval_scenes: held-out scenes for the caption retrieval accuracy.
        cam_scenes: held-out scenes for the GradCAM mIoU (0 skips it).
        device: 'cpu' (default, reproducible), 'cuda', or 'auto'.
        on_step: called as ``on_step(step, loss)`` after every step (1-based).
        logit_scale: initial inverse temperature (trainable, clamped at 100); None = open_clip's 1 / 0.07.
        layers: vision blocks (all but the last attend to 3x3 windows).
        captions: 'names' (the scene's caption: class names and background) or 'detailed' (objects also
            described by look, size and position, from the mask: :func:`vpltool.demo.scenes.detailed_caption`).
        detail: with detailed captions, the probability of each attribute of each object.
        pool: the image embedding trained: 'mean' of the patch tokens (the inference path), 'cls' (the class
            token, as real CLIP), or 'both' (the mean of the two losses).
        loss: 'multi' (multi-positive InfoNCE over equal caption keys) or 'infonce' (only the diagonal).
        threads: CPU threads while training (restored afterwards). CPU matmuls split their sums differently for
            other thread counts, so a fixed count is what makes a retrain bit-identical on any machine; None keeps
            torch's (the number of cores).

    Returns:
        ``final_loss`` (mean of the last 10 steps), ``caption_accuracy`` (top-1 over every label-set x background
        caption, exact match), ``label_set_accuracy`` (the same, background ignored), ``gradcam_miou``,
        ``seconds`` (training only), ``steps``, ``path``; all but the path are also in ``vpltool.json``.
    """

    if steps < 1 or batch_size < 2:
        raise VplError(f"need steps >= 1 and batch_size >= 2, got steps={steps}, batch_size={batch_size}")
    for name, value, allowed in (("captions", captions, CAPTION_STYLES), ("pool", pool, POOLS),
                                 ("loss", loss, LOSSES)):
        if value not in allowed:
            raise VplError(f"{name} {value!r}: choose one of {', '.join(allowed)}")
    if layers < 2:
        raise VplError(f"need layers >= 2, got {layers}")
    _check_out_dir(Path(out_dir))
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(out_dir, data_dir, steps, batch_size, lr, seed, n_scenes, scene_cfg, crop_prob, eval_scenes,
                      cam_scenes, device, on_step, logit_scale, layers, captions, detail, pool, loss)
    finally:
        torch.set_num_threads(previous_threads)


def _train(out_dir, data_dir, steps, batch_size, lr, seed, n_scenes, scene_cfg, crop_prob, eval_scenes, cam_scenes,
           device, on_step, logit_scale, layers, captions, detail, pool, loss) -> dict[str, Any]:
    """:func:`train_toy_clip` once its arguments are checked and the thread count is set."""
    from ..device import resolve_device

    dev = resolve_device(device)
    bb = build_toy_backbone(seed, dev, layers=layers, captions=captions, pool=pool, logit_scale=logit_scale)
    bb.model.requires_grad_(True).train()  # ClipBackbone froze it; we are the one stage that trains
    opt = _optimizer(bb.model, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps))
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 0xC409])  # crops and their captions
    batches, source = _batches(steps, batch_size, seed, data_dir, n_scenes, scene_cfg, gen)
    losses: list[float] = []
    start = time.perf_counter()
    for step, batch in enumerate(batches, 1):
        if captions == "names":
            views = _views(batch, rng, crop_prob)
        else:
            views = _detailed_views(batch, rng, crop_prob, detail)
        losses.append(_train_step(bb, opt, sched, *views, gen, flip=captions == "names", captions_style=captions,
                                  pool=pool, loss_kind=loss))
        if on_step is not None:
            on_step(step, losses[-1])
    seconds = time.perf_counter() - start
    bb.model.eval().requires_grad_(False)
    training = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "data": source,
                "crop_prob": crop_prob, "scene_cfg": asdict(scene_cfg), "final_loss": float(np.mean(losses[-10:])),
                "seconds": round(seconds, 1), "device": str(dev), "threads": torch.get_num_threads()}
    recipe = {"logit_scale_init": logit_scale, "layers": layers, "captions": captions, "detail": detail,
              "pool": pool, "loss": loss, "final_logit_scale": round(float(bb.model.logit_scale.exp()), 2)}
    training.update(recipe)
    arch = {"layers": layers, "captions": captions, "pool": pool}
    return _save_and_score(Path(out_dir), bb.model, training, seed, scene_cfg, eval_scenes, cam_scenes, arch)


# --------------------------------------------------------------------------------------------- checkpoint
def _write_checkpoint(folder: Path, model: torch.nn.Module, extra: dict[str, Any],
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


def _check_out_dir(out: Path) -> None:
    """Refuse to replace anything but a model folder (or an empty folder): checked before training starts too."""
    if out.exists() and not (out.is_dir() and ((out / "open_clip_config.json").is_file() or not any(out.iterdir()))):
        raise VplError(f"{out}: exists and is not a model folder; choose another output folder")


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished folder ``tmp``; an old model folder is removed only once the new one is in."""
    old = None
    if out.exists():
        _check_out_dir(out)
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save_and_score(out: Path, model: torch.nn.Module, training: dict[str, Any], seed: int, cfg: SceneConfig,
                    eval_scenes: int, cam_scenes: int, arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the checkpoint beside ``out``, score the weights *as saved* (fp16), record the scores, swap it in."""
    from ..backbone import load_backbone

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the folder ships inside the package
    try:
        arch = arch or {}
        extra = {"vocabulary": toy_vocabulary(arch.get("captions", "names")),
                 "attention_window": toy_window(arch.get("layers", 4)), "training": training}
        _write_checkpoint(tmp, model, extra, arch)
        bb = load_backbone(ModelSpec(model=f"local-dir:{tmp}"))
        heldout = scene_seed(seed, "heldout")
        scores = caption_accuracy(bb, generate_scenes(eval_scenes, heldout, cfg), cfg) if eval_scenes else {}
        if cam_scenes:
            scores["gradcam_miou"] = localization_miou(bb, generate_scenes(cam_scenes, heldout, cfg))
        extra["training"] = {**training, **scores, "eval_scenes": eval_scenes, "cam_scenes": cam_scenes}
        (tmp / EXTRA_CONFIG).write_text(json.dumps(extra, indent=2) + "\n")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**extra["training"], "path": str(out)}


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
            classes_only += keys[j] - _BACKGROUND_WORDS == truth - _BACKGROUND_WORDS
            total += 1
    return {"caption_accuracy": exact / max(total, 1), "label_set_accuracy": classes_only / max(total, 1)}


def localization_miou(bb: ClipBackbone, scenes: Iterable[Scene], template: str = PROMPT_TEMPLATE,
                      bg_exponent: float = 1.0) -> float:
    """mIoU of raw softmax-GradCAM (CLIP-ES, no CAA) against the exact scene masks.

    Per scene: rows = text prototypes of the present classes + the 4 background words from ``template``;
    temperature ``1 / logit_scale``; maps upsampled to the image and labelled with ``bg = (1 - max)^a``, argmax.
    """
    from ..cam import gradcam, upsample
    from ..metrics import MiouAccumulator, cams_to_labels

    class_rows = bb.encode_text([template.format(c) for c in CLASSES[1:]])  # [8, D]
    bg_rows = bb.encode_text([template.format(b) for b in BACKGROUNDS])  # [4, D]
    acc = MiouAccumulator(len(CLASSES))
    for scene in scenes:
        pixels = to_pixels(scene.image[None], bb.mean, bb.std).to(bb.device)
        grid = (pixels.shape[-2] // bb.patch_size, pixels.shape[-1] // bb.patch_size)
        with torch.no_grad():
            x, _ = bb.run_blocks(bb.embed(pixels), grid, 0, bb.n_blocks - 1)
        labels = list(scene.labels)
        rows = torch.cat([class_rows[[c - 1 for c in labels]], bg_rows])
        cams, _, _ = gradcam(bb, x[0], grid, rows, len(labels), 1.0 / bb.logit_scale)
        full = upsample(cams.cpu(), scene.mask.shape)
        acc.add(scene.mask, cams_to_labels(full.numpy(), labels, bg_exponent))
    return float(acc.result()["miou"])

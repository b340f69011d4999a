"""`vpltool train-toy-clip`: train the demo world's toy CLIP (:mod:`.toyclip`) from scratch on scene captions.

* **Train through the inference path.** The image embedding is the mean of the projected patch tokens, exactly
  CLIP-ES's surgery (``bb.dense(tokens).mean(1)``), and the blocks run through ``ClipBackbone.encode`` with the
  window mask. What GradCAM differentiates at inference is then what the contrastive loss shaped.
* **Crops re-captioned.** Half of the training images are random crops re-captioned with what they show
  (:func:`crop_scene`): with whole scenes only, single-object scenes localise well but multi-object ones do not;
  crops teach that a region matches the words for what lies in it.
* **CLIP's temperature.** The logit scale starts at 100 (CLIP's clamp and roughly its final value): Adam moves a
  scalar by about lr a step, so from open_clip's 1/0.07 the schedule, not the data, would set the temperature.
  VPL's tau_I = 0.03 sits above tau_T = 0.01 only at CLIP-like temperatures (the paper's Proposition 1).
* **Detailed captions.** Each object is also described by look, size, position and count words read off its mask
  (:func:`vpltool.demo.scenes.detailed_caption`), so language shapes more of the image space than eight names.

Training scenes are rendered on the fly from a seed derived from ``seed`` by :func:`scene_seed` (purpose
``"train"``); held-out scenes for the reported accuracy use purpose ``"heldout"``, and neither coincides with the
demo's own train/val splits: the toy CLIP has never seen a scene the pipeline is scored on.

A batch holds duplicate captions (only 372 distinct label-set x background combinations exist), so the loss is a
**multi-positive** InfoNCE: every caption with the same key is a positive, the target spread evenly over them.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import VplError
from ..models import EXTRA_CONFIG, ClipBackbone, ModelSpec
from .config import ToyClipConfig
from .scenes import BACKGROUNDS, CLASSES, Scene, SceneConfig, detailed_caption, generate_scenes, make_caption
from .toyclip import (
    BACKGROUND_WORDS,
    IMAGE_SIZE,
    MAX_LOGIT_SCALE,
    build_toy_backbone,
    caption_accuracy,
    caption_key,
    check_out_dir,
    encode_captions,
    encode_images,
    localization_miou,
    scene_seed,
    swap_in,
    to_pixels,
    toy_vocabulary,
    toy_window,
    write_checkpoint,
)


# ---------------------------------------------------------------------------------------------- data
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
    from ..data import open_dataset
    from ..io import load_image, read_json, read_mask

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
        background = next(iter(caption_key(captions[item.id]) & BACKGROUND_WORDS), BACKGROUNDS[0])
        pool.append(Scene(image, read_mask(item.gt), item.labels, background, captions[item.id]))
    return pool


def random_box(size: int, rng: np.random.Generator, min_side: int = 48) -> tuple[int, int, int]:
    """A random square ``(top, left, side)`` inside a ``size`` x ``size`` scene, side ``min_side``..``size``."""
    side = int(rng.integers(min_side, size + 1))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return top, left, side


def _window(box: tuple[int, int, int]) -> tuple[slice, slice]:
    top, left, side = box
    return slice(top, top + side), slice(left, left + side)


def _leaves_a_sliver(scene: Scene, counts: np.ndarray, min_pixels: int) -> bool:
    """Whether a crop with these per-class pixel ``counts`` keeps 1 to ``min_pixels - 1`` pixels of a class."""
    return any(0 < counts[c] < min_pixels for c in scene.labels)


def _resized(crop: np.ndarray, scene: Scene, resample: int) -> np.ndarray:
    """A crop resized back to the scene's size."""
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((scene.image.shape[1], scene.image.shape[0]), resample))


def crop_and_recaption(scene: Scene, rng: np.random.Generator, min_side: int = 48) -> tuple[np.ndarray, str]:
    """A random square crop of ``scene`` (side ``min_side``..full), re-captioned by :func:`crop_scene`."""
    return crop_scene(scene, random_box(scene.image.shape[0], rng, min_side), rng)


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

    window = _window(box)
    counts = np.bincount(scene.mask[window].ravel(), minlength=256)
    if _leaves_a_sliver(scene, counts, min_pixels):
        return scene.image, scene.caption
    names = [CLASSES[c] for c in scene.labels if counts[c]]
    return _resized(scene.image[window], scene, Image.BICUBIC), make_caption(rng, names, scene.background)


def _views(batch: Sequence[Scene], rng: np.random.Generator, crop_prob: float) -> tuple[np.ndarray, list[str]]:
    """``[B, 96, 96, 3]`` uint8 images and B captions: each scene whole, or cropped with probability ``crop_prob``."""
    views = [crop_and_recaption(s, rng) if rng.random() < crop_prob else (s.image, s.caption) for s in batch]
    return np.stack([v[0] for v in views]), [v[1] for v in views]


def crop_with_mask(scene: Scene, rng: np.random.Generator, min_side: int = 48,
                   min_pixels: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A random square crop of ``scene`` (side ``min_side``..full) resized back to full size, image and mask.

    Like :func:`crop_scene`, a crop leaving a class only a sliver returns the whole scene.
    """
    from PIL import Image

    window = _window(random_box(scene.image.shape[0], rng, min_side))
    if _leaves_a_sliver(scene, np.bincount(scene.mask[window].ravel(), minlength=256), min_pixels):
        return scene.image, scene.mask
    return (_resized(scene.image[window], scene, Image.BICUBIC), _resized(scene.mask[window], scene, Image.NEAREST))


def detailed_view(scene: Scene, rng: np.random.Generator, crop_prob: float, detail: float) -> tuple[np.ndarray, str]:
    """One training view of ``scene``: with probability ``crop_prob`` a random crop (:func:`crop_with_mask`),
    flipped half of the time (here, since a caption may say left or right), described from its mask
    (:func:`vpltool.demo.scenes.detailed_caption`). Returns ``[H, W, 3]`` uint8 and the caption. `make-pairs`
    writes these views as shards."""
    image, mask = crop_with_mask(scene, rng) if rng.random() < crop_prob else (scene.image, scene.mask)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return image, detailed_caption(rng, mask, scene.labels, scene.background, detail)


def _detailed_views(batch: Sequence[Scene], rng: np.random.Generator, crop_prob: float,
                    detail: float) -> tuple[np.ndarray, list[str]]:
    """Like :func:`_views`, each scene's view by :func:`detailed_view`."""
    views = [detailed_view(scene, rng, crop_prob, detail) for scene in batch]
    return np.stack([v[0] for v in views]), [v[1] for v in views]


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


def open_pair_source(path: str | Path, batch_size: int, captions: str) -> Any:
    """The pairs of ``path`` (`make-pairs` shards, any webdataset shards or caption folder:
    :func:`vpltool.data.pairs.open_pairs`), checked before training: a sample without a caption, a caption with a
    word outside the toy CLIP's vocabulary or too long for its context, fewer pairs than one batch: one line."""
    from ..data.pairs import open_pairs
    from .tokenizer import WordTokenizer
    from .toyclip import context_length

    pairs = open_pairs(path)  # a folder with split listings: its train split
    if len(pairs.pairs) < batch_size:
        raise VplError(f"{pairs.root}: {len(pairs.pairs)} pairs cannot fill one batch of {batch_size}; write more "
                       f"(make-pairs --scenes) or lower --batch-size")
    vocabulary, context = set(toy_vocabulary(captions)), context_length(captions)
    split = WordTokenizer([], context).split
    for p in pairs.pairs:
        words = split(p.caption)
        if not words:
            raise VplError(f"{p.where()}: empty caption; write one, or drop the sample")
        unknown = sorted(set(words) - vocabulary)
        if unknown:
            raise VplError(f"{p.where()}: caption words {unknown} are not in the toy CLIP's vocabulary; pass pairs "
                           "of the demo world (make-pairs)")
        if len(words) + 2 > context:
            raise VplError(f"{p.where()}: caption of {len(words)} words is longer than the toy CLIP's context "
                           f"({context - 2} words); shorten it")
    return pairs


def _pair_batches(pairs: Any, steps: int, batch_size: int,
                  gen: torch.Generator) -> Iterator[tuple[np.ndarray, list[str]]]:
    """``steps`` batches of ``([B, H, W, 3] uint8, B captions)`` read in a seeded order, every pair once per pass (a
    pass's last partial batch dropped), decoded as they are needed."""
    from ..data.pairs import decode_rgb

    per_pass = len(pairs.pairs) // batch_size
    order: list[int] = []
    for step in range(steps):
        if step % per_pass == 0:
            order = torch.randperm(len(pairs.pairs), generator=gen).tolist()
        chosen = [pairs.pairs[i] for i in order[(step % per_pass) * batch_size:][:batch_size]]
        yield np.stack([np.asarray(decode_rgb(p)) for p in chosen]), [p.caption for p in chosen]


def _batches(steps: int, batch_size: int, seed: int, data_dir: str | Path | None, n_scenes: int | None,
             cfg: SceneConfig, gen: torch.Generator, pairs: Any = None) -> tuple[Iterator, str]:
    """The training batches (of scenes; of ready views with ``pairs``) and a one-line description of where they
    come from (recorded in vpltool.json)."""
    if pairs is not None:
        return _pair_batches(pairs, steps, batch_size, gen), f"{len(pairs.pairs)} pairs in {Path(pairs.root).resolve()}"
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
    out_dir: str | Path, cfg: ToyClipConfig = ToyClipConfig(), *, data_dir: str | Path | None = None,
    n_scenes: int | None = None, scene_cfg: SceneConfig = SceneConfig(), eval_scenes: int = 500,
    cam_scenes: int = 200, device: str = "cpu", on_step: Callable[[int, float], None] | None = None,
    pairs: str | Path | Any = None,
) -> dict[str, Any]:
    """Train the toy CLIP on demo-world captions and save it as a ``local-dir:`` model folder.

    Args:
        out_dir: the model folder (``open_clip_config.json``, ``open_clip_model.safetensors`` in fp16,
            ``vpltool.json``); written beside it first and swapped in at the end, so it is never half-written.
        cfg: the recipe (:class:`ToyClipConfig`; its defaults rebuild the shipped checkpoint).
        data_dir: a `make-world` folder whose train split (images + ``captions.json``) is the training pool.
            None (default): render scenes on the fly from :func:`scene_seed` ``(seed, "train")``.
        n_scenes: with no ``data_dir``, train on a fixed pool of this many scenes instead of fresh ones each step.
        scene_cfg: how scenes are drawn (the demo world's default).
        eval_scenes: held-out scenes for the caption retrieval accuracy.
        cam_scenes: held-out scenes for the GradCAM mIoU (0 skips it).
        device: 'cpu' (default, reproducible), 'cuda', or 'auto'.
        on_step: called as ``on_step(step, loss)`` after every step (1-based).
        pairs: image-caption pairs to train on instead (`make-pairs` shards, or the PairSet
            :func:`open_pair_source` opened and checked), each image
            and caption as stored (no crop, no flip, no re-captioning: the shards hold the views); needs
            ``cfg.captions`` 'detailed' for their words.

    Returns:
        ``final_loss`` (mean of the last 10 steps), ``caption_accuracy`` (top-1 over every label-set x background
        caption, exact match), ``label_set_accuracy`` (the same, background ignored), ``gradcam_miou``,
        ``seconds`` (training only), ``steps``, ``path``; all but the path are also in ``vpltool.json``.
    """
    check_out_dir(Path(out_dir))
    if pairs is not None and (data_dir is not None or n_scenes is not None):
        raise VplError("--pairs: the pairs are the training data; drop the world folder / scene pool")
    if pairs is not None and isinstance(pairs, (str, Path)):
        pairs = open_pair_source(pairs, cfg.batch_size, cfg.captions)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(Path(out_dir), cfg, data_dir, n_scenes, scene_cfg, eval_scenes, cam_scenes, device, on_step,
                      pairs)
    finally:
        torch.set_num_threads(previous_threads)


def _train(out_dir: Path, cfg: ToyClipConfig, data_dir, n_scenes, scene_cfg, eval_scenes, cam_scenes, device,
           on_step, pairs=None) -> dict[str, Any]:
    """:func:`train_toy_clip` once the output folder is checked and the thread count is set."""
    from ..device import resolve_device

    dev = resolve_device(device)
    bb = build_toy_backbone(cfg.seed, dev, layers=cfg.layers, captions=cfg.captions, pool=cfg.pool,
                            logit_scale=cfg.logit_scale or None, global_blocks=cfg.global_blocks,
                            window=cfg.window, qk_init=cfg.qk_init, qk_blocks=cfg.qk_blocks)
    bb.model.requires_grad_(True).train()  # ClipBackbone froze it; we are the one stage that trains
    opt = _optimizer(bb.model, cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 0xC409])  # crops and their captions
    batches, source = _batches(cfg.steps, cfg.batch_size, cfg.seed, data_dir, n_scenes, scene_cfg, gen, pairs)
    losses: list[float] = []
    start = time.perf_counter()
    for step, batch in enumerate(batches, 1):
        if pairs is not None:
            views = batch
        elif cfg.captions == "names":
            views = _views(batch, rng, cfg.crop_prob)
        else:
            views = _detailed_views(batch, rng, cfg.crop_prob, cfg.detail)
        losses.append(_train_step(bb, opt, sched, *views, gen, flip=cfg.captions == "names",
                                  captions_style=cfg.captions, pool=cfg.pool, loss_kind=cfg.loss))
        if on_step is not None:
            on_step(step, losses[-1])
    seconds = time.perf_counter() - start
    bb.model.eval().requires_grad_(False)
    training = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed, "data": source,
                "crop_prob": cfg.crop_prob, "scene_cfg": asdict(scene_cfg),
                "final_loss": float(np.mean(losses[-10:])), "seconds": round(seconds, 1), "device": str(dev),
                "threads": torch.get_num_threads(), "logit_scale_init": cfg.logit_scale or None, "layers": cfg.layers,
                "captions": cfg.captions, "detail": cfg.detail, "pool": cfg.pool, "loss": cfg.loss,
                "final_logit_scale": round(float(bb.model.logit_scale.exp()), 2)}
    for key, before in (("global_blocks", 1), ("window", 3), ("qk_init", 0.0), ("qk_blocks", "global")):
        if getattr(cfg, key) != before:  # recorded only when not as before, so an older toy's record stays as it was
            training[key] = getattr(cfg, key)
    arch = {"layers": cfg.layers, "captions": cfg.captions, "pool": cfg.pool, "global_blocks": cfg.global_blocks,
            "window": cfg.window}
    return _save_and_score(out_dir, bb.model, training, cfg.seed, scene_cfg, eval_scenes, cam_scenes, arch)


def _save_and_score(out: Path, model: torch.nn.Module, training: dict[str, Any], seed: int, cfg: SceneConfig,
                    eval_scenes: int, cam_scenes: int, arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the checkpoint beside ``out``, score the weights *as saved* (fp16), record the scores, swap it in."""
    from ..models import load_model

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the folder ships inside the package
    try:
        arch = arch or {}
        extra = {"tokenizer": "word", "vocabulary": toy_vocabulary(arch.get("captions", "names")),
                 "attention_window": toy_window(arch.get("layers", 4), arch.get("global_blocks", 1),
                                                arch.get("window", 3)),
                 "training": training}
        write_checkpoint(tmp, model, extra, arch)
        bb = load_model("clip", ModelSpec(model=f"local-dir:{tmp}"))
        heldout = scene_seed(seed, "heldout")
        scores = caption_accuracy(bb, generate_scenes(eval_scenes, heldout, cfg), cfg) if eval_scenes else {}
        if cam_scenes:
            scores["gradcam_miou"] = localization_miou(bb, generate_scenes(cam_scenes, heldout, cfg))
        extra["training"] = {**training, **scores, "eval_scenes": eval_scenes, "cam_scenes": cam_scenes}
        (tmp / EXTRA_CONFIG).write_text(json.dumps(extra, indent=2) + "\n")
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**extra["training"], "path": str(out)}


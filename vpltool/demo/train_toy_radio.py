"""`vpltool train-toy-radio`: a toy C-RADIOv3 and its toy SigLIP teacher, the two files ``--dense radseg`` reads.

RADIO's recipe (Ranzinger et al., CVPR 2024; C-RADIOv3 its 2025 release) at toy size, in two phases, each run
through the very modules inference loads:

1. **A toy SigLIP** (:func:`train_siglip`): transformers' ``SiglipModel`` at a tiny configuration (vision and text
   towers, :func:`siglip_config`), trained from scratch with SigLIP's sigmoid loss (Zhai et al. 2023: a logit
   scale starting at 10 and a bias at -10, every image-caption pair of the batch a binary problem) on the demo
   world's image-caption pairs, drawn as the toy CLIP draws them (:func:`vpltool.demo.train_toy_clip.detailed_view`:
   crops re-captioned, flips, detailed captions; fresh scenes from :func:`vpltool.demo.toyclip.scene_seed`
   ``(seed, "train")``, so never a scene of a `make-world` train or val split). A batch's identical captions are
   positives of each other (the toy CLIP's multi-positive rule, in the sigmoid form). The prompts are tokenised
   exactly as RADSeg's loader tokenises them (:class:`vpltool.models.backbones.radio.SigLIP2Text`: big_vision's
   canonical text, padded to 64 tokens), by a word-level tokenizer of the toy CLIP's detailed vocabulary. It is
   RADSeg's text side and the student's language teacher; written as a Hugging Face folder (``siglip/``).
2. **The toy C-RADIO student** (:func:`train_radio`): timm's ``naflexvit_base_patch16_radio_v3`` (RADIO's CPE ViT:
   a class token per teacher, registers, a learned position table resized to the input's grid, layer scale) at
   :class:`~vpltool.demo.config.ToyRadioConfig`'s depth and width, distilled on unlabeled images of the same scene
   stream (purpose ``"radio"``'s seed: other scenes than the SigLIP's) from frozen teachers, each with RADIO's
   ``MLP2`` heads: the toy SigLIP's vision tower (teacher ``siglip2``: its pooled embedding through the summary head
   of the first class token, its patch tokens through a feature head) and the shipped toy DINO
   (vpltool/assets/toy-dino, teacher ``dino_v2``: its class token through the second class token's summary head, its
   patch tokens, resized bilinearly from its own 6 x 6 grid to the student's as RADIO resizes a teacher's features,
   through a feature head). Losses as RADIO's: cosine distance for the summaries, cosine distance plus smooth-L1 for
   the features. Written in RADIO's hub checkpoint format (:mod:`vpltool.models.backbones.radio_files`:
   ``radio.pth.tar``, float16 as the hub's ``_half`` files), so ``--proxy-weights`` loads it unchanged under the
   default ``--proxy-model naflexvit_base_patch16_radio_v3`` (the ``dino`` family builds it at the size its
   ``args`` record, as RADIO's hub code does).

What is not reproduced, and why: RADIO's teachers are pretrained at scale (SigLIP 2-g, DINOv2-g, CLIP, SAM) and its
student sees DataComp's billion images; here both teachers are toys of the demo world, and the SigLIP learns only
its 56 words. No SAM or CLIP teacher (the methods here read only the ``siglip2`` adaptor), no PHI-S
standardisation of the teachers' features and no feature normaliser in the file (RADIO fits it afterwards; the
hub's loader reads a file without one as the identity), no multi-resolution training or CPE's random crops of the
position table (every image is the world's 96-pixel scene at ``side`` pixels, the resolution RADSeg runs it at), no
spectral reparametrisation, no EMA. Both towers start from scratch at toy sizes and train a few hundred steps on one
CPU thread.

Everything is seeded, runs on the CPU with a fixed thread count, and draws its scenes in a fixed order, so the same
settings rebuild the same files bit for bit (`make toy-radio`; at test size in tests/test_toy_radio.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError
from .config import ToyRadioConfig

RADIO_FILE, TEXT_FOLDER, RECORD_FILE = "radio.pth.tar", "siglip", "model.json"
RECORD_KIND = "toy-radio-record"  # the file kind of its record (io.marks)
PATCH = 16  # C-RADIOv3's and the toy SigLIP's patch side
WORLD_SIDE = 96  # the demo world's scenes (vpltool.demo.scenes.SceneConfig)
TEACHERS = [{"name": "siglip2", "type": "siglip2", "model": "toy-siglip"},
            {"name": "dino_v2", "type": "dino_v2", "model": "toy-dino"}]
FEATURE_SMOOTH_L1 = 1.0  # the smooth-L1 term's weight beside the cosine distance (RADIO's feature loss)


# ---------------------------------------------------------------------------------------------- data
def words() -> list[str]:
    """The toy SigLIP's vocabulary: every word of the world's detailed captions (the toy CLIP's)."""
    from .toyclip import toy_vocabulary

    return toy_vocabulary("detailed")


def _scene_stream(seed: int, purpose: str, n: int):
    from .scenes import SceneConfig, generate_scenes
    from .toyclip import scene_seed

    base = scene_seed(seed, "train")
    if purpose == "radio":  # a stream of its own beside the SigLIP's (both never a make-world split's)
        base = int(np.random.SeedSequence([base, 0x4AD10]).generate_state(1, np.uint64)[0])
    return generate_scenes(n, base, SceneConfig())


def pixels_at(images: np.ndarray, side: int) -> torch.Tensor:
    """``[B, 96, 96, 3]`` uint8 -> ``[B, 3, side, side]`` float32, OpenAI CLIP's normalisation (C-RADIOv3's input
    conditioner, and RADSeg's preprocessor), resized bilinearly (RADSeg's resize of a photo to its short side)."""
    from .toyclip import to_pixels

    x = to_pixels(images)
    return x if x.shape[-1] == side else F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def _lr(lr: float, step: int, total: int, warmup: int = 25) -> float:
    """Linear warmup, then cosine decay to 0 at the last step."""
    warmup = max(1, min(warmup, total // 20))
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _adamw(params: list, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (gains, biases, tokens and the loss's scale and bias left alone)."""
    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)


# ---------------------------------------------------------------------------------------------- phase 1
def siglip_config(cfg: ToyRadioConfig, vocab: int):
    """The toy SigLIP's ``SiglipConfig``: a vision tower of ``cfg.width`` on ``cfg.side`` pixels, a text tower as
    wide (its rows ``projection_size`` = the vision embedding's width, as SigLIP's), 64 text positions (RADSeg pads
    every prompt to 64)."""
    from transformers import SiglipConfig

    w = cfg.width
    text = dict(vocab_size=vocab, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=cfg.text_depth,
                num_attention_heads=2, max_position_embeddings=64, projection_size=w, pad_token_id=0,
                eos_token_id=1, bos_token_id=None)
    vision = dict(hidden_size=w, intermediate_size=4 * w, num_hidden_layers=cfg.teacher_depth, num_attention_heads=2,
                  image_size=cfg.side, patch_size=PATCH)
    return SiglipConfig(text_config=text, vision_config=vision)


def tokenizer(vocabulary: list[str]):
    """The word-level tokenizer written beside the toy SigLIP (:func:`.radio_files.word_tokenizer`), in memory."""
    from transformers import PreTrainedTokenizerFast

    from ..models.backbones.radio_files import word_tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=word_tokenizer(vocabulary), pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=64)


def tokens(tok, captions: list[str]) -> dict:
    """RADSeg's tokenisation (:meth:`vpltool.models.backbones.radio.SigLIP2Text.tokens`): canonical text, padded to
    64 tokens."""
    from ..models.backbones.radio import TEXT_LENGTH, canonical

    return dict(tok([canonical(c) for c in captions], return_tensors="pt", max_length=TEXT_LENGTH,
                    padding="max_length", truncation=True))


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, captions: list[str], scale: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss of ``[B, D]`` unit image and text rows: ``-mean_i sum_j log sigmoid(z_ij (t x_i.y_j + b))``,
    ``z_ij`` 1 where captions i and j are the same text (the diagonal always), -1 elsewhere."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions])
    z = (key[:, None] == key[None, :]).float() * 2 - 1
    logits = img @ txt.T * scale.exp() + bias
    return -F.logsigmoid(z * logits).sum() / len(img)


def train_siglip(cfg: ToyRadioConfig, on_step: Callable[[], None] | None = None):
    """Phase 1 (module docstring): the trained ``SiglipModel`` (eval mode) and its record."""
    from transformers import SiglipModel

    from .train_toy_clip import detailed_view

    vocabulary = words()
    tok = tokenizer(vocabulary)
    torch.manual_seed(cfg.seed)
    model = SiglipModel(siglip_config(cfg, len(vocabulary) + 3)).train()
    with torch.no_grad():  # SigLIP's init of the loss's temperature and bias (t' = log 10, b = -10)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    opt = _adamw(list(model.parameters()), cfg.siglip_lr)
    rng = np.random.default_rng([cfg.seed, 0x51C1])  # crops, flips, caption wording
    scenes = _scene_stream(cfg.seed, "siglip", cfg.siglip_steps * cfg.batch_size)
    losses = []
    for step in range(cfg.siglip_steps):
        views = [detailed_view(next(scenes), rng, cfg.crop_prob, cfg.detail) for _ in range(cfg.batch_size)]
        images, captions = np.stack([v[0] for v in views]), [v[1] for v in views]
        for group in opt.param_groups:
            group["lr"] = _lr(cfg.siglip_lr, step, cfg.siglip_steps)
        img = F.normalize(model.vision_model(pixel_values=pixels_at(images, cfg.side)).pooler_output, dim=-1)
        txt = F.normalize(model.text_model(**tokens(tok, captions)).pooler_output, dim=-1)
        loss = sigmoid_loss(img, txt, captions, model.logit_scale, model.logit_bias)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step()
    model.eval().requires_grad_(False)
    return model, {"steps": cfg.siglip_steps, "first_loss": _mean(losses[:10]), "final_loss": _mean(losses[-10:]),
                   "logit_scale": round(float(model.logit_scale.exp()), 3),
                   "logit_bias": round(float(model.logit_bias), 3), "words": len(vocabulary)}


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4) if values else float("nan")


# ---------------------------------------------------------------------------------------------- phase 2
def build_student(cfg: ToyRadioConfig):
    """A freshly drawn (torch's seed) timm ``naflexvit_base_patch16_radio_v3`` at the toy's depth and width, its
    position table on a ``side / 16`` grid (RADIO's table reaches ``cpe_max_size`` pixels), aligned as RADSeg runs
    it (``pos_embed_align_corners`` False); its patch bias zero and frozen (RADIO's projection has none)."""
    import timm

    grid = cfg.side // PATCH
    model = timm.create_model("naflexvit_base_patch16_radio_v3", num_classes=0, depth=cfg.depth,
                              embed_dim=cfg.width, num_heads=2, pos_embed_grid_size=(grid, grid),
                              pos_embed_align_corners=False)
    with torch.no_grad():
        model.embeds.proj.bias.zero_()
    model.embeds.proj.bias.requires_grad_(False)
    return model.train()


def _heads(cfg: ToyRadioConfig, siglip_dim: int, dino_dim: int | None):
    """RADIO's ``MLP2`` heads per teacher (:class:`vpltool.models.backbones.radio.AdaptorMLP`, one inner block):
    ``{index: summary head}``, ``{index: feature head}``."""
    from ..models.backbones.radio import AdaptorMLP

    w, hidden = cfg.width, cfg.head_width

    def mlp(out):
        return AdaptorMLP("v2", w, hidden, out, 1).train().requires_grad_(True)

    summary, feature = {0: mlp(siglip_dim)}, {0: mlp(siglip_dim)}
    if dino_dim is not None:
        summary[1], feature[1] = mlp(dino_dim), mlp(dino_dim)
    return summary, feature


def load_toy_dino():
    """The shipped toy DINO (the ``dino`` family's loader: the very model ``--affinity dino`` reads)."""
    from ..models import load_model
    from ..models.backbones.dino import DinoSpec
    from ..models.text.talk2dino.config import TOY_DINO

    return load_model("dino", DinoSpec("test_vit", TOY_DINO), "cpu")


def _dino_targets(dino, images: np.ndarray, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The toy DINO's class token ``[B, C]`` and patch tokens ``[B, grid * grid, C]`` at its own 96 pixels (a
    6 x 6 grid, as it trained), resized bilinearly to the student's grid."""
    from .toyclip import to_pixels

    x = to_pixels(images, dino.mean, dino.std)
    out = dino.model.forward_features(x)
    side = WORLD_SIDE // dino.patch_size
    patches = out[:, dino.n_prefix:].transpose(1, 2).reshape(len(x), -1, side, side)
    patches = F.interpolate(patches, size=(grid, grid), mode="bilinear", align_corners=False)
    return out[:, 0], patches.flatten(2).transpose(1, 2)


def feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RADIO's feature loss of ``[B, N, C]`` tokens: mean cosine distance plus smooth-L1 (x
    :data:`FEATURE_SMOOTH_L1`)."""
    cos = 1 - F.cosine_similarity(pred, target, dim=-1).mean()
    return cos + FEATURE_SMOOTH_L1 * F.smooth_l1_loss(pred, target)


def train_radio(cfg: ToyRadioConfig, siglip, dino=None, on_step: Callable[[], None] | None = None):
    """Phase 2 (module docstring): the student (eval mode), its summary and feature heads (``{teacher index:
    AdaptorMLP}``) and its record."""
    torch.manual_seed(cfg.seed + 1)
    student = build_student(cfg)
    w_sig = siglip.config.vision_config.hidden_size
    summary, feature = _heads(cfg, w_sig, None if dino is None else dino.model.embed_dim)
    params = list(student.parameters()) + [p for h in (*summary.values(), *feature.values()) for p in h.parameters()]
    opt = _adamw(params, cfg.radio_lr)
    rng = np.random.default_rng([cfg.seed, 0x4AD1])  # flips
    scenes = _scene_stream(cfg.seed, "radio", cfg.radio_steps * cfg.batch_size)
    grid = cfg.side // PATCH
    n_prefix = student.num_prefix_tokens
    losses, terms = [], []
    for step in range(cfg.radio_steps):
        images = np.stack([next(scenes).image for _ in range(cfg.batch_size)])
        flip = rng.random(len(images)) < 0.5
        images[flip] = images[flip, :, ::-1]
        pixels = pixels_at(images, cfg.side)
        with torch.no_grad():
            out = siglip.vision_model(pixel_values=pixels)
            targets = {0: (out.pooler_output, out.last_hidden_state)}
            if dino is not None:
                targets[1] = _dino_targets(dino, images, grid)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg.radio_lr, step, cfg.radio_steps)
        tok = student.forward_features(pixels)
        step_terms = {}
        for index, (summ, feats) in targets.items():
            step_terms[f"summary{index}"] = 1 - F.cosine_similarity(summary[index](tok[:, index]), summ, dim=-1).mean()
            step_terms[f"feature{index}"] = feature_loss(feature[index](tok[:, n_prefix:]), feats)
        loss = sum(step_terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        terms.append({k: float(v.detach()) for k, v in step_terms.items()})
        if on_step is not None:
            on_step()
    student.eval().requires_grad_(False)
    for head in (*summary.values(), *feature.values()):
        head.eval().requires_grad_(False)
    last = terms[-10:]
    record = {"steps": cfg.radio_steps, "first_loss": _mean(losses[:10]), "final_loss": _mean(losses[-10:]),
              "terms": {k: _mean([t[k] for t in last]) for k in last[-1]} if last else {},
              "teachers": [t["name"] for t in TEACHERS[:len(targets)]]}
    return student, summary, feature, record


# ---------------------------------------------------------------------------------------------- the command
def train_toy_radio(out: str | Path, cfg: ToyRadioConfig = ToyRadioConfig(),
                    on_start: Callable[[int], None] | None = None,
                    on_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Both phases, then the folder ``out``: ``radio.pth.tar`` (RADIO's hub checkpoint), ``siglip/`` (the toy
    SigLIP's Hugging Face folder) and the record ``model.json``. Returns the record with ``path``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VplError(f"{out}: exists and is not a folder; choose a folder for the toy RADIO")
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            if on_start is not None:
                on_start(cfg.siglip_steps + cfg.radio_steps)
            start = time.perf_counter()
            siglip, phase1 = train_siglip(cfg, on_step)
            dino = load_toy_dino() if cfg.dino_teacher else None
            student, summary, feature, phase2 = train_radio(cfg, siglip, dino, on_step)
            seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    from .train_toy_sam3 import cpu_name

    record = {"model": "toy-radio", "recipe": asdict(cfg),
              "data": {"scenes": "fresh demo-world scenes (vpltool.demo.toyclip.scene_seed(seed, 'train') and a "
                                 "stream of its own for the student), never a make-world split",
                       "siglip_pairs": cfg.siglip_steps * cfg.batch_size,
                       "radio_images": cfg.radio_steps * cfg.batch_size},
              "siglip": phase1, "radio": phase2, "seconds": round(seconds, 1), "cpu": cpu_name(),
              "threads": cfg.threads}
    write_toy_radio(out, student, summary, feature, siglip, record)
    return {**record, "path": str(out)}


def write_toy_radio(out: Path, student, summary: dict, feature: dict, siglip, record: dict[str, Any]) -> None:
    """The folder (:func:`train_toy_radio`); the record last, written whole or not at all."""
    from ..io import atomic_path
    from ..io.marks import marked
    from ..models.backbones.radio_files import write_radio_checkpoint, write_text_folder

    out.mkdir(parents=True, exist_ok=True)
    teachers = TEACHERS[:len(summary)]
    write_radio_checkpoint(out / RADIO_FILE, student, teachers, {i: h.state_dict() for i, h in summary.items()},
                           {i: h.state_dict() for i, h in feature.items()})
    write_text_folder(out / TEXT_FOLDER, siglip, words())
    with atomic_path(out / RECORD_FILE) as tmp:
        Path(tmp).write_text(json.dumps(marked(record, RECORD_KIND), indent=1) + "\n")
    for path in [out / RADIO_FILE, out / RECORD_FILE, *(out / TEXT_FOLDER).iterdir()]:
        path.chmod(0o644)  # the package ships these


__all__ = ["RADIO_FILE", "TEXT_FOLDER", "RECORD_FILE", "RECORD_KIND", "TEACHERS", "words", "pixels_at",
           "siglip_config", "tokenizer", "tokens", "sigmoid_loss", "train_siglip", "build_student", "load_toy_dino",
           "feature_loss", "train_radio", "train_toy_radio", "write_toy_radio"]

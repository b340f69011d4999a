"""The frozen CLIP backbone with the CLIP-ES surgery. The only module that imports open_clip.

What is taken where (ViT-B/16 numbers; every open_clip ViT with standard blocks works the same way):

* ``embed``: ``conv1`` patches + class token + the positional embedding **bilinearly resized** (align_corners
  False, as CLIP-ES) from the native 14x14 grid to the input's ``h x w`` grid, then ``ln_pre``.
  Output ``[B, 1 + h*w, width]``, token 0 = CLS.
* ``run_blocks``: blocks ``start..stop-1``; for requested blocks it also returns the **head-averaged**
  attention ``[B, 1+hw, 1+hw]`` (rows sum to 1), as ``nn.MultiheadAttention(need_weights=True)`` gives it.
* ``last_block``: the last block, optionally exposing its ``ln_1`` output (the GradCAM activation).
* ``dense``: ``ln_post`` on the patch tokens, then ``@ proj`` -> ``[B, hw, D]`` in the joint image-text space.
  The **image embedding is the mean of these** (CLIP-ES replaces the class token by the patch mean; since
  ``proj`` is linear, mean-then-project equals project-then-mean).
* ``encode_text``: the text tower, with the context truncated to the longest prompt in the batch (the causal
  mask makes later positions irrelevant: same embeddings, ~10x faster; research §9).

The toy CLIP of the demo world adds two things through a ``vpltool.json`` beside its weights: a word-level
vocabulary and a local attention window in its early blocks.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .errors import VplError

EXTRA_CONFIG = "vpltool.json"  # beside open_clip_config.json in a local-dir model: tokenizer + attention window
_HUB_HOST = "huggingface.co"
TOY_MODEL = "vpltool-toy"  # alias of the demo world's toy CLIP shipped inside the package
TOY_DIR = Path(__file__).parent / "assets" / "toy-clip"


@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP to load.

    Args:
        model: an open_clip architecture name (``ViT-B-16``), ``local-dir:/path`` (open_clip's folder format:
            ``open_clip_config.json`` + ``open_clip_model.safetensors``), or ``vpltool-toy`` (the demo world's
            toy CLIP shipped with the package).
        pretrained: an open_clip tag (``openai``), a local weights file (``.safetensors``, ``.pt``, ``.bin``,
            an OpenAI JIT archive), or ``none`` for random weights. Ignored for ``local-dir:`` models.
        config_dir: a folder of extra open_clip JSON model configs (tiny test architectures).
    """

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    config_dir: str | None = None

    def identity(self) -> dict[str, str]:
        """What is stored in every output file, so downstream stages rebuild the same model."""
        ident = {"model": self.model, "pretrained": self.pretrained}
        if self.config_dir:
            ident["config_dir"] = str(self.config_dir)
        return ident

    @classmethod
    def from_identity(cls, ident: dict[str, str]) -> ModelSpec:
        return cls(model=ident["model"], pretrained=ident.get("pretrained", "none"), config_dir=ident.get("config_dir"))


# --------------------------------------------------------------------------------------------- loading
def _register_config_dir(config_dir: str | None) -> None:
    import open_clip

    for d in filter(None, [config_dir, os.environ.get("VPLTOOL_MODEL_CONFIGS")]):
        if not Path(d).is_dir():
            raise VplError(f"{d}: model config folder not found")
        open_clip.add_model_config(d)


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    try:  # a failed name lookup answers at once; open_clip would otherwise retry the hub for ~47 s
        socket.getaddrinfo(_HUB_HOST, 443)
        return False
    except OSError:
        return True


def _resolve_tag(model: str, tag: str) -> tuple[str | None, dict[str, Any]]:
    """A pretrained tag -> (cached local file or None, preprocessing overrides). Raises when unusable offline."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise VplError(
            f"--pretrained {tag!r} is neither a file nor a tag of {model}; tags: {', '.join(tags) or 'none'}"
        )
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation") if k in cfg}
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        for name in ("open_clip_model.safetensors", filename or "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found, preprocess
    if _offline():
        raise VplError(
            f"weights for {model} --pretrained {tag} are not in the local cache and the hub is unreachable; "
            f"download them elsewhere and pass the file: --pretrained /path/to/{model}.safetensors"
        )
    return None, preprocess


def _create_model(spec: ModelSpec):
    import open_clip

    _register_config_dir(spec.config_dir)
    if spec.model == TOY_MODEL:
        spec = ModelSpec(model=f"local-dir:{TOY_DIR}", pretrained="none")
    if spec.model.startswith("local-dir:"):
        folder = Path(spec.model[len("local-dir:") :])
        if not (folder / "open_clip_config.json").is_file():
            raise VplError(f"{folder}: not an open_clip model folder (needs open_clip_config.json + weights)")
        return open_clip.create_model(spec.model), folder
    if spec.model not in open_clip.list_models():
        raise VplError(f"--model {spec.model!r} unknown to open_clip; e.g. ViT-B-16, ViT-L-14, or local-dir:/path")
    pretrained = spec.pretrained
    if pretrained in (None, "", "none"):
        # random weights must be the same in every process: `cam` rebuilds the model `extract` used
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(spec.model, pretrained=None), None
    path = Path(pretrained).expanduser()
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin") or path.exists():
        if not path.is_file():
            raise VplError(f"{path}: weights file not found")
        try:
            return open_clip.create_model(spec.model, pretrained=str(path)), path.parent
        except (RuntimeError, KeyError) as e:
            msg = str(e).splitlines()[0][:200]
            raise VplError(f"{path}: does not hold {spec.model} weights ({msg}); check --model") from None
    cached, preprocess = _resolve_tag(spec.model, pretrained)
    if cached is not None:
        return open_clip.create_model(spec.model, pretrained=cached, force_preprocess_cfg=preprocess), None
    return open_clip.create_model(spec.model, pretrained=pretrained), None


def load_extra_config(folder: Path | None) -> dict[str, Any]:
    """The ``vpltool.json`` beside a local model (toy CLIP): ``{"vocabulary": [...], "attention_window": ...}``."""
    if folder is None or not (folder / EXTRA_CONFIG).is_file():
        return {}
    return json.loads((folder / EXTRA_CONFIG).read_text())


class WordTokenizer:
    """Word-level tokenizer of the toy CLIP: ``[SOT] words [EOT] 0...``; EOT has the highest id so that
    open_clip's argmax text pooling finds it."""

    def __init__(self, vocabulary: Sequence[str], context_length: int):
        self.words = list(vocabulary)
        self.index = {w: i + 1 for i, w in enumerate(self.words)}  # 0 = padding
        self.sot, self.eot = len(self.words) + 1, len(self.words) + 2
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 3

    def split(self, text: str) -> list[str]:
        return "".join(c if c.isalnum() else " " for c in text.lower()).split()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = self.split(text)
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise VplError(f"prompt {text!r}: words {unknown} are not in the model's vocabulary")
            ids = [self.sot] + [self.index[w] for w in words][: self.context_length - 2] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


# --------------------------------------------------------------------------------------------- the backbone
class ClipBackbone:
    """A frozen open_clip CLIP with the CLIP-ES surgery (see module docstring)."""

    def __init__(self, model, spec: ModelSpec, device: torch.device, extra: dict[str, Any] | None = None):
        visual = model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise VplError(f"--model {spec.model}: only ViT image towers are supported (no ResNet/timm towers)")
        if getattr(visual, "attn_pool", None) is not None:
            raise VplError(f"--model {spec.model}: attentional-pooling towers (CoCa) are not supported")
        self.model = model.eval().requires_grad_(False).to(device)
        self.spec, self.device, self.extra = spec, device, extra or {}
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        self.n_blocks = len(self.blocks)
        ps = visual.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        self.logit_scale = float(model.logit_scale.exp().item())
        pp = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(pp.get("std", (0.26862954, 0.26130258, 0.27577711)))
        grid = visual.grid_size
        self.native_grid = (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) else (int(grid), int(grid))
        window = self.extra.get("attention_window") or {}
        self.window_size = int(window.get("size", 0))
        self.window_blocks = frozenset(int(b) for b in window.get("blocks", []))
        self._tokenizer = None
        self._pos_cache: dict[tuple[int, int, bool], torch.Tensor] = {}

    # ---- images
    def input_size(self, height: int, width: int, image_size: int | None = None, max_side: int | None = None):
        """CLIP-ES input size: each side rounded **up** to a multiple of the patch size (or a fixed square)."""
        p = self.patch_size
        if image_size:
            side = int(math.ceil(image_size / p) * p)
            return side, side
        if max_side and max(height, width) > max_side:
            scale = max_side / max(height, width)
            height, width = max(1, round(height * scale)), max(1, round(width * scale))
        return int(math.ceil(height / p) * p), int(math.ceil(width / p) * p)

    def preprocess(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """``[H0, W0, 3]`` uint8 RGB -> ``[3, H, W]`` float32, bicubic-resized to ``size`` and CLIP-normalised."""
        h, w = size
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def positional_embedding(self, grid: tuple[int, int], fp16_round: bool = False) -> torch.Tensor:
        """``[1 + h*w, width]``: CLS row kept, patch rows bilinearly resized from the native grid.

        ``fp16_round`` reproduces CLIP-ES, which casts the resized embedding to fp16 even in fp32 runs.
        """
        key = (grid[0], grid[1], fp16_round)
        if key not in self._pos_cache:
            pos = self.visual.positional_embedding.detach().float()
            cls, patches = pos[:1], pos[1:]
            if tuple(grid) != self.native_grid:
                gh, gw = self.native_grid
                patches = patches.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
                patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
                patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
            out = torch.cat([cls, patches])
            if fp16_round:
                out = out.half().float()
            self._pos_cache[key] = out
        return self._pos_cache[key]

    def embed(self, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels -> ``[B, 1 + h*w, width]`` tokens entering block 0."""
        v = self.visual
        p = self.patch_size
        if pixels.shape[-2] % p or pixels.shape[-1] % p:
            raise VplError(f"input {tuple(pixels.shape[-2:])} is not a multiple of the patch size {p}")
        grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        x = v.conv1(pixels.to(v.conv1.weight.dtype))  # [B, width, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, hw, width]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid, fp16_pos).to(x.device, x.dtype)
        return v.ln_pre(x)

    def attention_mask(self, block: int, grid: tuple[int, int], device) -> torch.Tensor | None:
        """Additive ``[L, L]`` mask for a windowed block (toy CLIP): patches see a ``k x k`` neighbourhood,
        not the CLS token; the CLS token sees everything. ``None`` for ordinary global blocks."""
        if block not in self.window_blocks or self.window_size <= 1:
            return None
        return _window_mask(grid[0], grid[1], self.window_size, str(device))

    def block(self, i: int, x: torch.Tensor, grid: tuple[int, int], need_weights: bool = False,
              keep_ln1: bool = False):
        """Run block ``i`` on ``[B, L, width]``.

        Returns:
            (x_out ``[B, L, width]``, head-mean attention ``[B, L, L]`` or None, ln_1 output or None).
        """
        blk = self.blocks[i]
        mask = self.attention_mask(i, grid, x.device)
        h = blk.ln_1(x)
        attn_out, attn = blk.attn(h, h, h, need_weights=need_weights, average_attn_weights=True,
                                  attn_mask=None if mask is None else mask.to(h.dtype))
        x = x + blk.ls_1(attn_out)
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return x, attn, (h if keep_ln1 else None)

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int], start: int, stop: int,
                   attention_from: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks ``start..stop-1``; head-mean attention of every block ``>= attention_from`` is returned."""
        attns = []
        for i in range(start, stop):
            need = attention_from is not None and i >= attention_from
            x, attn, _ = self.block(i, x, grid, need_weights=need)
            if need:
                attns.append(attn)
        return x, attns

    def dense(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block ``[B, 1+hw, width]`` -> patch features ``[B, hw, D]`` (joint space, not
        normalised)."""
        v = self.visual
        x = v.ln_post(tokens[:, 1:])
        return x @ v.proj.to(x.dtype) if v.proj is not None else x

    # ---- text
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            vocab = self.extra.get("vocabulary")
            if vocab:
                self._tokenizer = WordTokenizer(vocab, self._text_parts()["context_length"])
            else:
                import open_clip

                self._tokenizer = open_clip.get_tokenizer(self.spec.model)
        return self._tokenizer

    def _text_parts(self) -> dict[str, Any]:
        m = self.model
        t = m.text if hasattr(m, "text") else m  # CustomTextCLIP keeps the tower in .text
        return {
            "token_embedding": t.token_embedding, "positional_embedding": t.positional_embedding,
            "transformer": t.transformer, "ln_final": t.ln_final, "projection": t.text_projection,
            "attn_mask": t.attn_mask, "pool": getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax")),
            "context_length": t.positional_embedding.shape[0], "cls_emb": getattr(t, "cls_emb", None),
        }

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> ``[N, D]`` float32 L2-normalised text embeddings."""
        parts = self._text_parts()
        if parts["pool"] != "argmax" or parts["cls_emb"] is not None:  # unusual towers: open_clip's own path
            tokens = self.tokenizer(list(texts)).to(self.device)
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            out.append(self._encode_tokens(tokens, parts))
        return F.normalize(torch.cat(out).float(), dim=-1)

    def _encode_tokens(self, tokens: torch.Tensor, parts: dict[str, Any]) -> torch.Tensor:
        eot = tokens.argmax(dim=-1)  # the EOT token has the highest id in CLIP vocabularies
        length = int(eot.max()) + 1  # causal mask: positions after EOT never influence it
        tokens = tokens[:, :length]
        x = parts["token_embedding"](tokens) + parts["positional_embedding"][:length]
        mask = parts["attn_mask"]
        x = parts["transformer"](x, attn_mask=None if mask is None else mask[:length, :length])
        x = parts["ln_final"](x)[torch.arange(len(tokens), device=x.device), eot]
        proj = parts["projection"]
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@lru_cache(maxsize=16)
def _window_mask(h: int, w: int, size: int, device: str) -> torch.Tensor:
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    r = size // 2
    near = ((rows[:, None] - rows[None, :]).abs() <= r) & ((cols[:, None] - cols[None, :]).abs() <= r)
    allowed = torch.zeros(1 + h * w, 1 + h * w, dtype=torch.bool)
    allowed[0, :] = True  # CLS gathers globally; patches stay local so early features stay local
    allowed[1:, 1:] = near
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
    return mask.to(device)


def load_backbone(spec: ModelSpec, device: torch.device | str = "cpu") -> ClipBackbone:
    """Build the frozen backbone; a one-line VplError for every way the weights can be missing or wrong."""
    device = torch.device(device)
    model, folder = _create_model(spec)
    extra = load_extra_config(folder if spec.model.startswith("local-dir:") or spec.model == TOY_MODEL else None)
    return ClipBackbone(model, spec, device, extra)

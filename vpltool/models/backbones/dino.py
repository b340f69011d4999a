"""A second, image-only backbone for CAA's affinity (SSR, AAAI 2026): a timm ViT such as DINO, used for its attention.

Only the attention maps are taken: the head-mean self-attention ``softmax(q k^T * scale)`` of the last blocks, prefix
tokens (class token, registers) removed, on **the same patch grid as the CLIP pass**: the image is resized to
``(h * p, w * p)`` pixels for the DINO patch size ``p`` (16 for ViT-S/16, 14 for DINOv2), so token ``i`` of both
backbones covers the same image region. timm interpolates its positional embedding to that size
(``dynamic_img_size``).

The same family takes timm's RoPE and register models, DINOv3 (``vit_*_patch16_dinov3``: ``eva.Eva``, a class token and
4 registers, RoPE on the patches' q and k, no positional table) and C-RADIOv3 (``naflexvit_*_radio_v3``: NaFlexViT, a
class token and 7 registers, its own patch and position embedding). Their tokens come from timm's own forward at the
input's size (``forward_features``; :attr:`DinoBackbone.own_forward`), and what a method reads of a block (its
attention map, its q and k) is recomputed from the block's input and the RoPE tensor that forward gave it (forward
pre-hooks), in timm's order (:mod:`.timm_blocks`): the similarity the model computes. Their prefix tokens (class token
and registers) are dropped together wherever patches are read. The mixing of both kinds is one function of two
parameters, the prefix count and the RoPE tensor, so one family module serves them; DINO and DINOv2 keep vpltool's
own forward below (their positional resize is the references' own, not timm's). tests/test_dino_rope.py checks the
attention, keys and final tokens against forward hooks on timm's forward.

timm is an optional dependency (``pip install -e '.[dino]'`` in vpltool's checkout; open_clip usually brings it).
Weights: timm's
pretrained tag of the name (``hub``; read from the local Hugging Face cache when offline), a local file, or ``none``
(random, seeded: tests). Every way the weights can be unavailable is a one-line :class:`~vpltool.errors.VplError`,
raised by :func:`check_dino` before any model is built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...config import licences
from ...errors import VplError, install_extra
from ...io import is_regular_file, not_a_file
from ..registry import register_family
from .dino_attention import dino_attention, dino_mlp, fused_qkv, layer_scaled, mean_attention_weights, written_attention
from .dino_weights import (
    DINO_WEIGHTS_FIX,
    cached_hub_file,
    file_weights,
    meta_model,
    model_from_file,
    spec_files,
    weights_fix,
)
from .loading import _offline
from .onednn import use_onednn
from .radio_files import recorded_size
from .timm_blocks import attention_weights, check_blocks, forward_capturing, heads_qkv, timm_forward

# how DINO's own forward (:meth:`DinoBackbone._dino_forward`) resizes the positional embedding to another grid
# (:func:`vpltool.models.dense.resize_positional`): "bicubic-dino", the +0.1 scale factor of DINO and of DINOv2's
# plain hub models; "bicubic-antialias", to the size with the antialiased kernel, as DINOv2's *_reg hub models
# (interpolate_offset 0, interpolate_antialias True) and timm's own resample
DINO_POS_RESIZE = ("bicubic-dino", "bicubic-antialias")
# the largest activation of a group of images :meth:`DinoBackbone._dino_forward` runs at once on the CPU. glibc's
# malloc serves a block larger than 32 MiB (its largest mmap threshold) by a fresh mapping and unmaps it on free, so
# each such activation of each block is page-faulted in again: 750,000 faults, 1.5 of a Talk2DINO step's 12.5
# CPU-seconds (6 images at 448 px, DINOv2 ViT-B on an Intel Xeon: a block's 76 MB MLP layer). Blocks under it are
# reused from the heap. Every product and the attention are per image: the same bits in groups.
CPU_GROUP_BYTES = 16 << 20
# models whose own code mixes a block's tokens with the fused kernel (DINOv2's Attention); the others' writes the
# weights out (DINO's), and vpltool's forward does as each does (DinoBackbone.fused)
FUSED_MODELS = ("dinov2",)


@dataclass(frozen=True)
class DinoSpec:
    """Which timm ViT: ``model`` a timm name (``vit_small_patch16_224.dino``); ``weights`` ``hub`` | FILE | ``none``;
    ``pos_resize`` how DINO's own forward resizes its positional embedding (:data:`DINO_POS_RESIZE`)."""

    model: str
    weights: str = "hub"
    pos_resize: str = "bicubic-dino"


def import_timm():
    try:
        import timm
    except ImportError:
        raise VplError(f"--affinity dino needs timm, which is not installed: {install_extra('dino')}") from None
    return timm


EXAMPLES = ("e.g. vit_small_patch16_224.dino, vit_base_patch16_224.dino, vit_small_patch14_dinov2.lvd142m, "
            "vit_small_patch16_dinov3, naflexvit_base_patch16_radio_v3")
def _create(timm, spec: DinoSpec, overrides: dict, **kwargs):
    """``timm.create_model`` as a frozen affinity backbone is built (no head, any input size); one line for a
    model that cannot be (a CNN such as resnet18 takes no ``dynamic_img_size``)."""
    try:
        try:
            return timm.create_model(spec.model, num_classes=0, dynamic_img_size=True, **overrides, **kwargs)
        except TypeError as e:  # NaFlexViT (C-RADIOv3) takes any size by construction, and no dynamic_img_size
            if not str(e).startswith("NaFlexVit"):
                raise
            return timm.create_model(spec.model, num_classes=0, **overrides, **kwargs)
    except (TypeError, RuntimeError, KeyError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if isinstance(e, TypeError):
            raise VplError(f"--dino-model {spec.model}: not a plain ViT ({msg}); use a timm vision_transformer, "
                           f"{EXAMPLES}") from None
        raise VplError(f"--dino-model {spec.model} --dino-weights {spec.weights}: cannot load ({msg}); check that "
                       "the file holds that architecture") from None


def check_dino(spec: DinoSpec, *, report: bool = True, **overrides) -> str | None:
    """Refuse at once (one line) when ``spec`` cannot be loaded, before any model is: an unknown name, a model that
    is no plain ViT, weights that are missing or offline, a weights file whose tensors are not that architecture's
    (:func:`_file_weights`). Returns the weights file to load (None: random weights, or a hub download the network
    allows). ``report``: warn about a stripped key prefix. ``overrides``: timm model kwargs (tests' tiny models)."""
    if spec.pos_resize not in DINO_POS_RESIZE:
        raise VplError(f"DINO positional resize {spec.pos_resize!r}: choose one of {', '.join(DINO_POS_RESIZE)}")
    timm = import_timm()
    if not timm.is_model(spec.model):
        raise VplError(f"--dino-model {spec.model!r} is not a timm model; {EXAMPLES}")
    overrides = {**recorded_size(spec.model, spec.weights), **overrides}
    model = meta_model(lambda: _create(timm, spec, overrides), _key(timm, spec, overrides))
    _check_plain_vit(model, spec.model)
    if spec.weights == "none":
        return None
    if spec.weights != "hub":
        path = Path(spec.weights).expanduser()
        if not is_regular_file(path):
            raise not_a_file(path, "DINO weights", "pass an existing file to --dino-weights")
        file_weights(path, model.state_dict(), shapes_only=True, report=report, fix=weights_fix(spec.model))
        return str(path)
    cached = cached_hub_file(timm, spec.model)
    if cached is None and _offline():
        raise VplError(f"weights for --dino-model {spec.model} are not in the local cache and the hub is "
                       "unreachable (offline); download them elsewhere and pass the file: --dino-weights "
                       "/path/to/model.safetensors")
    return cached


def _key(timm, spec: DinoSpec, overrides: dict) -> str:
    """What makes the same architecture: the name, the function timm builds it with now, the overrides."""
    return repr((spec.model, id(timm.models.model_entrypoint(spec.model)), sorted(overrides.items())))


def _check_plain_vit(model, name: str) -> None:
    blocks = list(getattr(model, "blocks", []))
    if not blocks or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
        raise VplError(f"--dino-model {name}: not a plain ViT (blocks with a fused qkv attention); use a timm "
                       "vision_transformer such as vit_small_patch16_224.dino")


def load_dino(spec: DinoSpec, device: torch.device | str = "cpu", **overrides) -> DinoBackbone:
    """Build the frozen :class:`DinoBackbone` for ``spec`` (``overrides``: timm model kwargs, e.g. a tiny ``depth``
    and ``embed_dim`` for tests). A weights file is loaded strictly (:func:`_file_weights`); the model is seeded
    first, so that nothing of it is ever an unseeded random init."""
    timm = import_timm()
    weights = check_dino(spec, report=False, **overrides)
    overrides = {**recorded_size(spec.model, spec.weights), **overrides}
    if spec.weights not in ("none", "hub"):
        model = model_from_file(lambda **kw: _create(timm, spec, overrides, **kw),
                                _key(timm, spec, overrides), Path(weights), weights_fix(spec.model))
        return DinoBackbone(model, torch.device(device), spec)
    with torch.random.fork_rng(devices=[]):  # the same random model in every process
        torch.manual_seed(0)
        model = _create(timm, spec, overrides, pretrained=spec.weights == "hub")
    return DinoBackbone(model, torch.device(device), spec)


class DinoBackbone:
    """A frozen timm ViT whose head-mean attention :meth:`attention` returns on a given patch grid."""

    def __init__(self, model, device: torch.device, spec: DinoSpec | None = None):
        blocks = list(getattr(model, "blocks", []))
        if not blocks or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
            name = spec.model if spec else type(model).__name__
            raise VplError(f"--dino-model {name}: not a plain ViT (blocks with a fused qkv attention); use a timm "
                           "vision_transformer such as vit_small_patch16_224.dino")
        self.model = model.eval().requires_grad_(False).to(device)
        use_onednn(self.model)  # its fp32 linear layers through oneDNN on the CPU (onednn.py)
        self.spec, self.device, self.blocks = spec, device, blocks
        self.packed: list = []  # blocks' layers holding packed weights (a caller's mkl_packed.pack_blocks)
        # timm's own forward for a model whose tokens vpltool's DINO forward does not make (RoPE: DINOv3; its own
        # embedding: C-RADIOv3's NaFlexViT); its blocks must be ones whose mixing timm_blocks repeats
        self.own_forward = timm_forward(model)
        if self.own_forward:
            check_blocks(blocks, f"--dino-model {spec.model if spec else type(model).__name__}")
        ps = (model.patch_embed if hasattr(model, "patch_embed") else model.embeds).patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.n_prefix = int(getattr(model, "num_prefix_tokens", 1))
        # how vpltool's forward mixes a block's tokens, as the model's own code does (:func:`dino_attention`):
        # DINOv2's Attention calls the fused kernel; DINO's writes the weights out (a method's parity against it
        # can hinge on that rounding: ProxyCLIP masks its proxy similarities at 0)
        self.fused = spec is not None and any(n in spec.model for n in FUSED_MODELS)
        self.pos_resize = spec.pos_resize if spec is not None else "bicubic-dino"
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def to(self, device: torch.device | str) -> DinoBackbone:
        """This model on ``device`` (moved in place, as ``nn.Module.to``; a copy of the wrapper says where)."""
        clone = copy.copy(self)
        clone.model, clone.device = self.model.to(device), torch.device(device)
        return clone

    def preprocess(self, image: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """``[H0, W0, 3]`` uint8 RGB -> ``[1, 3, h*p, w*p]`` float32, bicubic-resized so the patch grid is ``grid``."""
        h, w = grid[0] * self.patch_size, grid[1] * self.patch_size
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255)
        x = (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)
        return x[None].to(self.device)

    def final_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """A proxy model's patch tokens as DINO's own ``get_intermediate_layers(x)[0]`` gives them (ProxyCLIP):
        ``[B, 3, H, W]`` pixels normalised with :attr:`mean` / :attr:`std` -> (``[B, hw, C]`` the final ``norm``
        output without the prefix tokens, ``(h, w)``) (:meth:`_dino_forward`; DINOv3 and C-RADIOv3: timm's own, its
        class token and registers dropped)."""
        if self.own_forward:
            return self._timm_forward(pixels)[0], self._grid(pixels)
        if self.n_prefix != 1 or getattr(self.model, "cls_token", None) is None:
            name = self.spec.model if self.spec else type(self.model).__name__
            raise VplError(f"--proxy-model {name}: {self.n_prefix} prefix tokens; the proxy attention takes a DINO "
                           "ViT with one class token and no registers, e.g. vit_base_patch8_224.dino")
        tokens, _, grid = self._dino_forward(pixels)
        return tokens, grid

    def _dino_forward(self, pixels: torch.Tensor, last_qkv: bool = False, tokens: bool = True
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[int, int]]:
        """DINO's / DINOv2's own forward on timm's modules (:meth:`_dino_tokens`, then every block, then the final
        norm): ``[B, 3, H, W]`` -> (``[B, hw, C]`` final-norm patch tokens, ``[B, prefix + hw, 3C]`` what the last
        block's fused ``qkv`` linear returned (``last_qkv``; else None), grid). Each block mixes its tokens with
        :func:`dino_attention` (fused; the last one's from that same qkv). ``tokens`` False: the forward stops
        after the last block's ``norm1`` and ``qkv`` (a method that reads that qkv alone), and the tokens are None.
        """
        groups = self._cpu_groups(pixels)
        if groups > 1:  # the images in groups (the arithmetic is per image: the same bits)
            parts = [self._dino_forward(p, last_qkv, tokens) for p in pixels.tensor_split(groups)]
            x, qkv = (None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in (0, 1))
            return x, qkv, parts[0][2]
        m = self.model
        x, grid = self._dino_tokens(pixels)
        for layer in self.packed:  # packed for these rows before the blocks' activations (mkl_packed.PackedLinear)
            layer.prepare(x.shape[0] * x.shape[1])
        qkv, last = None, len(m.blocks) - 1
        for i, blk in enumerate(m.blocks):
            h = blk.norm1(x)
            if i == last and (last_qkv or not tokens):
                qkv = blk.attn.qkv(h)
                if not tokens:
                    return None, qkv, grid
            x = x + layer_scaled(blk.ls1, dino_attention(blk.attn, h, qkv, self.fused))
            x = x + layer_scaled(blk.ls2, dino_mlp(blk.mlp, blk.norm2(x)))
        return m.norm(x)[:, self.n_prefix :], qkv, grid

    def _cpu_groups(self, pixels: torch.Tensor) -> int:
        """In how many groups :meth:`_dino_forward` runs a CPU batch: the fewest whose largest activation (a block's
        MLP hidden layer, ``images x tokens x hidden`` floats) fits :data:`CPU_GROUP_BYTES`; 1 on other devices."""
        if pixels.device.type != "cpu" or pixels.shape[0] < 2:
            return 1
        mlp = getattr(self.model.blocks[0], "mlp", None)
        hidden = getattr(getattr(mlp, "fc1", None), "out_features", None) or 4 * int(self.model.embed_dim)
        tokens = self.n_prefix + (pixels.shape[-2] // self.patch_size) * (pixels.shape[-1] // self.patch_size)
        per_image = tokens * hidden * (torch.finfo(self.model_dtype).bits // 8)
        return min(pixels.shape[0], -(-pixels.shape[0] * per_image // CPU_GROUP_BYTES))

    def _dino_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """DINO's / DINOv2's ``prepare_tokens`` on timm's modules: ``[B, 3, H, W]`` -> (``[B, prefix + hw, C]``,
        ``(h, w)``). The positional embedding resized as :attr:`pos_resize` says: ``bicubic-dino``, bicubic with the
        ``+0.1`` scale factor (DINOv2's plain ``interpolate_pos_encoding``; timm's resample maps the grid
        differently: 0.28 max |Δ| on a random ViT-S/14 at 22x22, parity/weclip_parity.py), or
        ``bicubic-antialias``, to the size antialiased (DINOv2's ``*_reg`` models). Register tokens inserted after
        the class token once the positions are added; a side that is no patch multiple loses its remainder. timm's
        DINOv2 ``*_reg`` conversion (``no_embed_class``) keeps the class token's position inside the token and the
        table for the patches alone: the same sums."""
        from ..dense import resize_positional

        m = self.model
        p = self.patch_size
        grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
        pixels = pixels[..., : grid[0] * p, : grid[1] * p]
        x = m.patch_embed.proj(pixels.to(m.patch_embed.proj.weight.dtype)).flatten(2).transpose(1, 2)
        pos = m.pos_embed[0].float()
        if getattr(m, "no_embed_class", False):  # a zero class row, dropped again below
            pos = torch.cat([pos.new_zeros(1, pos.shape[-1]), pos])
        native = m.patch_embed.grid_size
        # the resized table of the last grid, kept (a batch in groups, a run of same-sized images) until the model's
        # table changes (its version counter) or another grid, dtype or device is asked
        key = (grid, x.dtype, x.device, m.pos_embed._version, m.pos_embed.data_ptr(), torch.is_grad_enabled())
        kept = getattr(self, "_pos_kept", None)
        if kept is not None and kept[0] == key:
            pos = kept[1]
        else:
            pos = resize_positional(pos, (int(native[0]), int(native[1])), grid, self.pos_resize).to(x.dtype)
            self._pos_kept = (key, pos)
        if getattr(m, "no_embed_class", False):
            x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x + pos[None, 1:]], dim=1)
        else:
            x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + pos[None]
        registers = getattr(m, "reg_token", None)
        if registers is not None:  # DINOv2's *_reg models: registers between the class token and the patches
            x = torch.cat([x[:, :1], registers.expand(x.shape[0], -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        return x, grid

    def tokens_and_last_qkv(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """DINO's own forward (:meth:`_dino_forward`) that also keeps what the last block's fused ``qkv`` linear
        returned (what a forward hook on ``blocks[-1].attn.qkv`` sees, as Talk2DINO reads it; computed once, the
        block's attention mixes with it): ``[B, 3, H, W]`` normalised pixels -> (``[B, hw, C]`` final-norm patch
        tokens, ``[B, prefix + hw, 3C]`` the last block's qkv (prefix tokens first), ``(h, w)``). Gradients flow
        where the caller enables them. DINOv3: q and k as the attention uses them, after its RoPE
        (:meth:`_timm_forward`)."""
        if self.own_forward:
            tokens, qkv = self._timm_forward(pixels.to(self.device), last_qkv=True)
            return tokens, fused_qkv(qkv), self._grid(pixels)
        return self._dino_forward(pixels.to(self.device), last_qkv=True)

    def last_qkv(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """What the last block's fused ``qkv`` linear returns, the forward stopped there (CorrCLIP reads that qkv
        alone; the last block's attention and MLP and the final norm are not run): ``[B, 3, H, W]`` normalised
        pixels -> (``[B, prefix + hw, 3C]``, ``(h, w)``), as :meth:`tokens_and_last_qkv`'s."""
        if self.own_forward:
            return fused_qkv(self._timm_forward(pixels.to(self.device), last_qkv=True, tokens=False)[1]), \
                self._grid(pixels)
        _, qkv, grid = self._dino_forward(pixels.to(self.device), tokens=False)
        return qkv, grid

    def last_block_input(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The last block's input, for a method that rebuilds that block (OV-Stitcher): blocks ``0..L-2`` of
        :meth:`_dino_forward` (DINO, DINOv2) on ``[B, 3, H, W]`` normalised pixels -> (``[B, prefix + hw, C]``, no
        final norm; ``(h, w)``)."""
        if self.own_forward:
            raise VplError("last_block_input runs vpltool's DINO forward: a DINO or DINOv2 ViT, not DINOv3 / C-RADIOv3")
        x, grid = self._dino_tokens(pixels.to(self.device))
        for blk in self.model.blocks[:-1]:
            x = x + blk.ls1(dino_attention(blk.attn, blk.norm1(x), fused=self.fused))
            x = x + blk.ls2(dino_mlp(blk.mlp, blk.norm2(x)))
        return x, grid

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """``softmax((q kᵀ) scale) v`` of ``[B, heads, N, hd]`` q, k, v as the model's own code computes it
        (:attr:`fused`), for a block a method runs on tokens of its own (OV-Stitcher's stitched last block)."""
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        return written_attention(q, k, v, scale)

    def last_keys(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The keys of the last block (CASS's ``get_intermediate_feat(x)`` qkv ``[1]``): ``[B, 3, H, W]`` pixels
        normalised with :attr:`mean` / :attr:`std` -> (``[B, heads, hw, hd]`` without the prefix tokens, ``(h, w)``),
        the forward stopped after the last block's ``qkv`` (:meth:`_dino_forward`); DINOv3's keys after its RoPE."""
        if self.own_forward:
            return self._timm_forward(pixels, last_qkv=True, tokens=False)[1][1][:, :, self.n_prefix:], \
                self._grid(pixels)
        _, qkv, grid = self._dino_forward(pixels, tokens=False)
        attn = self.blocks[-1].attn
        b, n, _ = qkv.shape
        keys = attn.k_norm(qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)[1])
        return keys[:, :, self.n_prefix :], grid

    @torch.no_grad()
    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels -> ``[B, H // p, W // p, C]`` float32: the final-norm patch tokens
        (DINOv2's ``forward_features(x)["x_norm_patchtokens"]``, :meth:`_dino_forward`; prefix and register tokens
        dropped). WeCLIP+ first resizes its crop to whole patches (bilinear, :meth:`resized`), which callers do."""
        if self.own_forward:
            return self._timm_forward(pixels.to(self.device))[0].float().unflatten(1, self._grid(pixels))
        if getattr(self.model, "cls_token", None) is None or not hasattr(self.model, "pos_embed"):
            name = self.spec.model if self.spec else type(self.model).__name__
            raise VplError(f"--dino-model {name}: no class token with an absolute positional embedding; use a "
                           "DINO / DINOv2 ViT such as vit_small_patch14_dinov2.lvd142m")
        tokens, _, grid = self._dino_forward(pixels.to(self.device))
        return tokens.float().unflatten(1, grid)

    def resized(self, pixels: torch.Tensor) -> torch.Tensor:
        """WeCLIP+'s DINO input: ``pixels`` bilinearly resized to whole patches (``(H // p) p``, no antialias)."""
        h, w = (pixels.shape[-2] // self.patch_size) * self.patch_size, (pixels.shape[-1] // self.patch_size) * \
            self.patch_size
        if (h, w) == tuple(pixels.shape[-2:]):
            return pixels
        return F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def attention(self, image: np.ndarray, grid: tuple[int, int], n_blocks: int) -> torch.Tensor:
        """``[hw, hw]`` float32: the mean over the last ``n_blocks`` blocks of the head-mean attention, prefix
        tokens removed (rows then sum to a little under 1, as CLIP's maps without CLS)."""
        if self.own_forward:
            first = len(self.blocks) - min(n_blocks, len(self.blocks))
            _, seen = forward_capturing(self.model, self.preprocess(image, grid), range(first, len(self.blocks)))
            n = self.n_prefix
            maps = [attention_weights(self.blocks[i].attn, self.blocks[i].norm1(x), rope).mean(1)[0, n:, n:]
                    for i, (x, rope) in sorted(seen.items())]
            return torch.stack(maps).mean(0)
        wanted = self.blocks[-min(n_blocks, len(self.blocks)):]
        inputs: list[torch.Tensor] = []
        hooks = [b.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for b in wanted]
        try:
            self.model.forward_features(self.preprocess(image, grid))
        finally:
            for hook in hooks:
                hook.remove()
        maps = [mean_attention_weights(b.attn, x)[0, self.n_prefix:, self.n_prefix:] for b, x in zip(wanted, inputs)]
        att = torch.stack(maps).mean(0)
        if att.shape[0] != grid[0] * grid[1]:
            raise VplError(f"--dino-model: {att.shape[0]} patch tokens for a {grid[0]}x{grid[1]} grid; the model "
                           "pads or pools its patches, use a plain ViT")
        return att


    def summary_and_patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The final tokens split as RADIO's adaptors read them (C-RADIOv3's ``(summary, features)``; NVlabs/RADIO's
        hub code feeds its language (SigLIP 2) and SAM adaptors these two): ``[B, 3, H, W]`` pixels -> (``[B,
        n_prefix, C]`` the prefix tokens, class token first, ``[B, hw, C]`` the patches, ``(h, w)``). Timm's own
        forward (:meth:`_timm_forward`; DINOv3 and C-RADIOv3 only)."""
        if not self.own_forward:
            raise VplError("summary_and_patches reads timm's own forward: DINOv3 or C-RADIOv3 models only")
        p = self.patch_size
        pixels = pixels[..., : pixels.shape[-2] // p * p, : pixels.shape[-1] // p * p]
        out = self.model.forward_features(pixels.to(self.device, self.model_dtype))
        return out[:, : self.n_prefix], out[:, self.n_prefix:], self._grid(pixels)

    def _grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        return pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size

    def _timm_forward(self, pixels: torch.Tensor, last_qkv: bool = False, tokens: bool = True):
        """timm's own forward (DINOv3, C-RADIOv3): ``[B, 3, H, W]`` pixels (sides whole patches) -> ``[B, hw, C]``
        final tokens without the prefix tokens; with ``last_qkv`` also the last block's ``(q, k, v)``, each ``[B,
        heads, N, hd]``, q and k after its norms and RoPE (:func:`.timm_blocks.heads_qkv`). ``tokens`` False: the
        forward stops before the last block runs, and the tokens are None."""
        p, last = self.patch_size, len(self.blocks) - 1
        pixels = pixels[..., : pixels.shape[-2] // p * p, : pixels.shape[-1] // p * p]
        out, seen = forward_capturing(self.model, pixels.to(self.model_dtype), [last] if last_qkv else [],
                                      stop=not tokens)
        if not last_qkv:
            return out[:, self.n_prefix:], None
        x, rope = seen[last]
        return (out[:, self.n_prefix:] if tokens else None), heads_qkv(self.blocks[last].attn,
                                                                        self.blocks[last].norm1(x), rope)

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


register_family("dino", load_dino, check_dino, summary="a timm ViT (DINO, DINOv2, the toy DINO): its patch attention",
                module=__name__, files=spec_files, fix=DINO_WEIGHTS_FIX, licence=licences.DINO_FAMILY)

__all__ = ["DINO_POS_RESIZE", "DinoSpec", "DinoBackbone", "check_dino", "import_timm", "load_dino"]


"""The frozen CLIP with the CLIP-ES surgery, and the GradCAM every stage takes from it.

What is taken where (ViT-B/16 numbers; how tokens are made, mixed and projected is the image tower's, a parameter of
the family: :mod:`vpltool.models.backbones.towers` for open_clip's ViTs, :mod:`.timm_tower` for SigLIP 2 and PE-Core):

* :meth:`ClipBackbone.embed`: ``conv1`` patches + class token + the positional embedding **bilinearly resized**
  (align_corners False, as CLIP-ES ``clip/model.py:upsample_pos_emb``) from the native 14x14 grid to the input's
  ``h x w`` grid, then ``ln_pre``. Output ``[B, n_prefix + h*w, width]``, token 0 = CLS (``n_prefix`` = 1; SigLIP 2
  has no class token: 0).
* :meth:`ClipBackbone.encode`: the one frozen forward loop. Blocks ``0..stop-1``; it keeps the **head-averaged**
  attention ``[B, L, L]`` (rows sum to 1) of the blocks from ``attention_from`` on, as
  ``nn.MultiheadAttention(need_weights=True)`` gives it, and the patch tokens of the blocks in ``collect``.
* :meth:`ClipBackbone.dense`: ``ln_post`` on the patch tokens, then ``@ proj`` -> ``[B, hw, D]`` in the joint
  image-text space (a timm tower: its pooling head's value path). The **image embedding is the mean of these**
  (CLIP-ES replaces the class token by the patch mean; since ``proj`` is linear, mean-then-project equals
  project-then-mean).
* :meth:`ClipBackbone.gradcam`: softmax-GradCAM of CLIP-ES re-running only the last block, all classes from one
  forward of it (a SigLIP's own sigmoid score in place of the softmax); its arithmetic is in
  :mod:`vpltool.models.backbones.gradcam`.
* :meth:`ClipBackbone.encode_text`: the text tower, with the context truncated to the longest prompt in the batch
  (the causal mask makes later positions irrelevant: same embeddings, ~10x faster).

A model folder's ``vpltool.json`` can add a tokenizer (see :mod:`vpltool.models.backbones.loading`) and a local
attention window in early blocks (``{"attention_window": {"size": 3, "blocks": [0, 1, 2]}}``).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import VplError
from ..dense import (
    DenseHooks,
    DenseMixing,
    dense_hooks,
    dense_mixing,
    mix_last_block,
    neighbourhood_bias,
    resize_positional,
)
from .gradcam import BatchGradCam, GradCam, SoftmaxRows, gradcam, gradcam_batch
from .loading import ModelSpec
from .preprocess import Preprocess
from .text_tower import TextTower
from .towers import OPENAI_MEAN, OPENAI_STD, image_tower
from .windows import window_attention_mask


@dataclass
class Encoded:
    """What :meth:`ClipBackbone.encode` kept of one frozen forward.

    Attributes:
        tokens: ``[B, 1 + hw, width]`` after the last block run (the input of block ``stop``).
        attentions: head-mean attention ``[B, 1 + hw, 1 + hw]`` of each block from ``attention_from`` on.
        blocks: patch tokens ``[B, hw, width]`` of each block in ``collect`` (its output), in order.
        grid: ``(h, w)``.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    attentions: list[torch.Tensor] = field(default_factory=list)
    blocks: list[torch.Tensor] = field(default_factory=list)


class ClipBackbone(TextTower):
    """A frozen open_clip CLIP with the CLIP-ES surgery (see module docstring); its image tower ``tower``
    (:func:`~vpltool.models.backbones.towers.image_tower`), its text tower:
    :class:`~vpltool.models.backbones.text_tower.TextTower`."""

    def __init__(self, model, spec: ModelSpec, device: torch.device, extra: dict[str, Any] | None = None,
                 dense: str | DenseMixing = "none"):
        self.model = model.eval().requires_grad_(False).to(device)
        self.spec, self.device, self.extra = spec, device, extra or {}
        self.visual = model.visual
        self.tower = image_tower(model.visual, spec.model)  # how its tokens are made, mixed, projected (.towers)
        self.blocks = self.tower.blocks
        self.n_blocks = len(self.blocks)
        self.n_prefix = self.tower.n_prefix  # tokens before the patches: the class token (1), none for SigLIP 2
        self.patch_size, self.width, self.embed_dim = self.tower.patch_size, self.tower.width, self.tower.embed_dim
        self.native_grid = self.tower.native_grid
        self.logit_scale = float(model.logit_scale.exp().item())
        bias = getattr(model, "logit_bias", None)  # SigLIP's: its image-text score is a sigmoid (gradcam.py)
        self.logit_bias = None if bias is None else float(bias.item())
        pp = getattr(self.visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pp.get("mean", OPENAI_MEAN))
        self.std = tuple(pp.get("std", OPENAI_STD))
        window = self.extra.get("attention_window") or {}
        self.window_size = int(window.get("size", 0))
        self.window_blocks = frozenset(int(b) for b in window.get("blocks", []))
        self._tokenizer = None
        self.mixing = dense_mixing(dense)  # how the last block mixes its tokens (--dense; models.dense)
        self.hooks: DenseHooks = dense_hooks(self.mixing.method)  # its hooks (models.dense.hooks), resolved once
        self.proxy = None  # ProxyCLIP's proxy vision model (a DinoBackbone), given by with_dense
        self.sam = None  # Trident's SAM encoder (a SamEncoder), given by with_dense
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self._bias_cache: dict[tuple, torch.Tensor] = {}
        # CLIP's mean and std on the device, once: made per batch they would be a host-to-device copy each time
        self._stats = (torch.tensor(self.mean, device=device).view(1, 3, 1, 1),
                       torch.tensor(self.std, device=device).view(1, 3, 1, 1))

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
        return self.preprocessor(image, size)

    @property
    def preprocessor(self) -> Preprocess:
        """:meth:`preprocess` as a small object without the model, for the data-loading workers."""
        from ...runtime.batches import cuda_paths

        return Preprocess(self.mean, self.std, on_device=cuda_paths(self.device))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the image tower's weights are stored in (float32 unless :meth:`with_image_tower_in`)."""
        return self.tower.dtype

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> ClipBackbone:
        """A copy of this backbone whose inputs are normalised with ``mean`` / ``std`` (3 values each, on [0, 1]
        pixels) instead of CLIP's own: WeCLIP feeds its frozen CLIP ImageNet's statistics. The model is shared."""
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if (mean, std) == (self.mean, self.std):
            return self
        clone = copy.copy(self)
        clone.mean, clone.std = mean, std
        clone._stats = (torch.tensor(mean, device=self.device).view(1, 3, 1, 1),
                        torch.tensor(std, device=self.device).view(1, 3, 1, 1))
        return clone

    def with_image_tower_in(self, dtype: torch.dtype) -> ClipBackbone:
        """A copy of this backbone whose image tower is stored and run in ``dtype`` (bf16 / fp16): the residual
        stream, LayerNorms and attention in ``dtype`` without autocast, as OpenAI's CLIP runs in fp16 (WeCLIP's
        frozen encoder), so that ``nn.MultiheadAttention`` takes its fused inference path (one kernel sequence per
        block, flash attention on CUDA) and no weight is cast per forward. The text tower and this backbone are
        untouched (GradCAM needs fp32). For forwards that keep no attention map (train-decoder)."""
        if dtype == self.dtype:
            return self
        clone = copy.copy(self)
        clone.tower = self.tower.in_dtype(dtype)
        clone.visual, clone.blocks, clone._pos_cache = clone.tower.visual, clone.tower.blocks, {}
        return clone

    @property
    def dense_method(self) -> str:
        """The ``--dense`` method of the last block (``none``: CLIP-ES's vanilla block)."""
        return self.mixing.method

    def with_dense(self, dense: str | DenseMixing, proxy=None, sam=None, hooks: DenseHooks | None = None
                   ) -> ClipBackbone:
        """A copy of this backbone (sharing the model) whose last block mixes its tokens as ``dense`` says
        (:mod:`vpltool.models.dense`); the positional embedding follows the method's interpolation. ``proxy``: the
        proxy vision model of a method with proxy attention (ProxyCLIP: a
        :class:`~vpltool.models.backbones.dino.DinoBackbone`); ``sam``: Trident's SAM encoder (a
        :class:`~vpltool.models.backbones.sam.SamEncoder`); ``hooks``: the method's hooks made with the run's config
        (:class:`~vpltool.models.dense.method.DenseMethod`), by default the method's own without one."""
        mixing = dense_mixing(dense)
        if mixing == self.mixing and proxy is self.proxy and sam is self.sam and hooks in (None, self.hooks):
            return self
        clone = copy.copy(self)
        clone.mixing, clone.proxy, clone.sam = mixing, proxy, sam
        clone.hooks = hooks if hooks is not None else dense_hooks(mixing.method)
        clone._pos_cache, clone._bias_cache = {}, {}
        return clone

    def to(self, device: torch.device | str) -> ClipBackbone:
        """This backbone on ``device``: its model (and a proxy model's and SAM's, when it has them) moved there, in
        place as ``nn.Module.to`` moves, and a copy of the wrapper whose tensors kept per device are remade there."""
        device = torch.device(device)
        self.model.to(device)
        clone = copy.copy(self)
        clone.device = device
        clone._stats = tuple(s.to(device) for s in self._stats)
        clone._pos_cache, clone._bias_cache = {}, {}
        clone.proxy = None if self.proxy is None else self.proxy.to(device)
        clone.sam = None if self.sam is None else self.sam.to(device)
        return clone

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """A batch of :meth:`Preprocess.resize` outputs ``[B, H, W, 3]`` uint8 (on the model's device) ->
        ``[B, 3, H, W]`` float32 CLIP-normalised, the same values as :meth:`preprocess`."""
        return self.preprocessor.normalize(pixels, self._stats)

    def pixels(self, loaded: torch.Tensor | Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """A batch as the loading workers sent it (:meth:`Preprocess.loaded`, collated: ``[B, H0, W0, 3]`` uint8, or
        B images of several sizes, a :class:`~vpltool.runtime.batches.Ragged` or a list) -> ``[B, 3, H, W]`` float32
        CLIP-normalised on the model's device, resized to ``size`` ``(H, W)`` there where the workers did not (the
        same values as :meth:`preprocess`)."""
        from ...runtime.batches import Ragged, to_device
        from .preprocess import resize_uint8

        if isinstance(loaded, torch.Tensor):
            return self.normalize(resize_uint8(to_device(loaded, self.device), size))
        if isinstance(loaded, Ragged):  # a worker's batch of several decoded sizes: one copy to the device
            loaded = loaded.to_device(self.device)
        shapes: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(loaded):  # photos of one network size may differ by a few pixels: one call each
            shapes.setdefault(tuple(image.shape), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(loaded)
        for members in shapes.values():
            group = torch.stack([to_device(loaded[i], self.device) for i in members])
            for i, image in zip(members, resize_uint8(group, size)):
                out[i] = image
        return self.normalize(torch.stack(out))

    def positional_embedding(self, grid: tuple[int, int], fp16_round: bool = False) -> torch.Tensor | None:
        """``[lead + h*w, width]``: the tower's positional table (``lead`` class rows kept, none for SigLIP 2), its
        patch rows resized from the native grid (bilinearly, or as the ``--dense`` method's code does:
        :func:`vpltool.models.dense.resize_positional`); None for a tower without one.

        At the native grid (and without rounding) this is the parameter itself, so a model being trained (the toy
        CLIP) gets its gradient; resized grids are cached, detached. ``fp16_round`` reproduces CLIP-ES, which
        casts the resized embedding to fp16 even in fp32 runs.
        """
        table = self.tower.pos_table
        if table is None or (tuple(grid) == self.native_grid and not fp16_round):
            return table
        key = (grid[0], grid[1], fp16_round, self.mixing.pos_interpolation)
        if torch.compiler.is_compiling():  # traced into the graph, never kept: a graph's output stored here would be
            return self._resized_positional(table, key)  # overwritten by the next CUDA-graph replay (reduce-overhead)
        if key not in self._pos_cache:
            self._pos_cache[key] = self._resized_positional(table, key)
        return self._pos_cache[key]

    def _resized_positional(self, table: torch.Tensor, key: tuple) -> torch.Tensor:
        h, w, fp16_round, mode = key
        out = resize_positional(table.detach().float(), self.native_grid, (h, w), mode, lead=self.tower.pos_lead)
        return out.half().float() if fp16_round else out

    def grid_of(self, pixels: torch.Tensor) -> tuple[int, int]:
        p = self.patch_size
        if pixels.shape[-2] % p or pixels.shape[-1] % p:
            raise VplError(f"input {tuple(pixels.shape[-2:])} is not a multiple of the patch size {p}")
        h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
        if torch.jit.is_tracing():  # `export`'s tracer reads sizes as tensors: ints here (a cache key; sizes fixed)
            h, w = int(h), int(w)
        return h, w

    def embed(self, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels -> ``[B, n_prefix + h*w, width]`` tokens entering block 0."""
        return self.tower.embed(pixels.to(self.device), self.positional_embedding(self.grid_of(pixels), fp16_pos))

    def attention_mask(self, block: int, grid: tuple[int, int], device) -> torch.Tensor | None:
        """Additive ``[L, L]`` mask for a windowed block (toy CLIP): patches see a ``k x k`` neighbourhood (k = 1:
        themselves), not the CLS token; the CLS token sees everything. ``None`` for ordinary global blocks."""
        if block not in self.window_blocks or self.window_size < 1:
            return None
        # the CLS token gathers globally; patches stay local so early features stay local
        return window_attention_mask(grid[0], grid[1], self.window_size, lead=self.n_prefix).to(device)

    def block(self, i: int, x: torch.Tensor, grid: tuple[int, int], need_weights: bool = False,
              keep_ln1: bool = False):
        """Run block ``i`` on ``[B, L, width]`` (the tower's: :mod:`vpltool.models.backbones.towers`).

        Returns:
            (x_out ``[B, L, width]``, head-mean attention ``[B, L, L]`` or None, ln_1 output or None).
        """
        return self.tower.block(i, x, grid, need_weights, keep_ln1, self.attention_mask(i, grid, x.device))

    def class_token(self, i: int, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Block ``i``'s output for the class token alone: ``[B, L, width]`` -> ``[B, 1, width]``, its attention
        over every token then its MLP; the patch rows, which CASS's image embedding does not read, are not made
        (the values of ``block(i, x, grid)[0][:, :1]`` up to the float order of the products)."""
        return self.tower.class_token(i, x, self.attention_mask(i, grid, x.device))

    def last_block(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The last block on ``[B, n_prefix + hw, width]`` tokens, mixing them as ``--dense`` says: the vanilla
        :meth:`block` for ``none``, :func:`vpltool.models.dense.mix_last_block` on the tower's last block
        otherwise. Returns ``[B, n_prefix + hw, width]``."""
        if self.mixing.vanilla:
            return self.block(self.n_blocks - 1, x, grid)[0]
        bias = None
        if self.mixing.gaussian_std > 0:
            key = (tuple(grid), self.mixing.gaussian_std, str(x.device), x.dtype)
            if key not in self._bias_cache:
                self._bias_cache[key] = neighbourhood_bias(grid, self.mixing.gaussian_std, x.device, x.dtype,
                                                           lead=self.n_prefix)
            bias = self._bias_cache[key]
        attend = None
        if self.mixing.attention == "hook":  # the method's own attention on this block's q, k, v
            attend = functools.partial(self.hooks.attention, grid=tuple(grid), lead=self.n_prefix)
        return mix_last_block(self.tower.mixing_block(grid), x, self.mixing, bias, attend=attend)

    def dense_features(self, pixels: torch.Tensor, fp16_pos: bool = False) -> torch.Tensor:
        """``[B, 3, H, W]`` float32 CLIP-normalised pixels (H, W multiples of the patch size) -> ``[B, h*w, D]``
        joint-space patch features (not normalised) of the ``--dense`` method: blocks ``0..L-2`` as always, then
        :meth:`last_block`, ``ln_post`` and ``proj``. For ``none`` the values `extract` stores. The method's
        ``features`` hook (:class:`~vpltool.models.dense.DenseHooks`; SC-CLIP reads every block's output, ProxyCLIP
        and CASS a proxy model's)."""
        return self.hooks.features(self, pixels, fp16_pos)

    def feature_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The grid of :meth:`dense_features` for an input of ``size`` ``(H, W)`` pixels: CLIP's patch grid, or
        the method's (its ``feature_grid`` hook: ProxyCLIP's output is on its proxy model's grid)."""
        return self.hooks.feature_grid(self, size)

    def encode(self, pixels: torch.Tensor, *, stop: int | None = None, attention_from: int | None = None,
               collect: Sequence[int] = (), fp16_pos: bool = False) -> Encoded:
        """The frozen forward: embed, then blocks ``0..stop-1`` (all by default). Runs under the caller's grad
        mode and autocast; see :class:`Encoded` for what is kept."""
        grid = self.grid_of(pixels)
        stop = self.n_blocks if stop is None else stop
        x, out = self.embed(pixels, fp16_pos), Encoded(None, grid)
        wanted = set(collect)
        for i in range(stop):
            need = attention_from is not None and i >= attention_from
            x, attn, _ = self.block(i, x, grid, need_weights=need)
            if need:
                out.attentions.append(attn)
            if i in wanted:
                out.blocks.append(x[:, self.n_prefix:])
        out.tokens = x
        return out

    def frozen_pass(self, pixels: torch.Tensor, attention_blocks: int, fp16_pos: bool = False,
                    keep_maps: bool = False) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """What GradCAM and CAA need from the frozen blocks ``0..L-2``.

        Returns:
            ``last_block_input`` ``[B, 1 + hw, width]``, ``attention`` ``[B, hw, hw]`` float32 (the mean of the
            head-averaged maps of the ``attention_blocks - 1`` blocks before the last, CLS row and column removed;
            zeros for a one-block model; with ``keep_maps`` the maps themselves ``[B, n, hw, hw]``, so that CAA can
            average all of them at once as CLIP-ES does) and the grid. CAA adds the last block's own map (CLIP-ES
            averages the last ``attention_blocks`` maps).

        The mean is a running sum in float32 divided at the end: one ``[B, hw, hw]`` buffer, not one per block, and
        the same values as stacking the maps and taking their mean.
        """
        n_prev = min(attention_blocks, self.n_blocks) - 1
        grid, stop = self.grid_of(pixels), self.n_blocks - 1
        x, total, maps = self.embed(pixels, fp16_pos), None, []
        for i in range(stop):
            need = i >= stop - n_prev
            x, attn, _ = self.block(i, x, grid, need_weights=need)
            if not need:
                continue
            n = self.n_prefix  # the class token's row and column removed
            if keep_maps:
                maps.append(attn[:, n:, n:].float())
            elif total is None:
                total = attn[:, n:, n:].float().clone()
            else:
                total += attn[:, n:, n:]
        if keep_maps and maps:
            attention = torch.stack(maps, 1)
        elif total is not None:
            attention = total / n_prev
        else:
            hw = grid[0] * grid[1]
            attention = torch.zeros(len(pixels), hw, hw, device=x.device)
        return x, attention, grid

    @torch.no_grad()
    def fill_tokens(self, feats, image: np.ndarray, attention_blocks: int, parity: str = "none") -> None:
        """Give a features record of a light cache (``feats.last_block_input is None``) its tokens and attention.

        Args:
            feats: a :class:`vpltool.io.Features`, changed in place.
            image: ``[H0, W0, 3]`` uint8, the image the features were extracted from.
            attention_blocks, parity: the `extract` settings recorded for those features.

        The values are rounded like `extract`'s full cache stores them (:func:`vpltool.io.token_dtype`), so a stage
        gives the same maps with and without cached tokens.
        """
        from ...io import token_dtype

        if feats.last_block_input is not None:
            return
        pixels = self.preprocess(image, feats.input_size)[None]
        exact = parity == "clip-es"
        tokens, attention, _ = self.frozen_pass(pixels, attention_blocks, fp16_pos=exact, keep_maps=exact)
        dtype = token_dtype(parity)
        feats.last_block_input = tokens[0].cpu().to(dtype).float()
        feats.attention = attention[0].cpu().to(dtype).float()

    def dense(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block ``[B, n_prefix + hw, width]`` -> patch features ``[B, hw, D]`` (joint space,
        not normalised)."""
        return self.project(tokens[:, self.n_prefix:])

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., width]`` patch tokens -> ``[..., D]`` in the joint image-text space: ``ln_post`` then ``proj``
        (the tower's :meth:`~vpltool.models.backbones.towers.OpenClipTower.project`; a timm tower's pooling head's
        value path)."""
        return self.tower.project(tokens)

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` unit image embeddings: CLIP-ES's mean of the projected patch tokens."""
        return F.normalize(self.dense(tokens).mean(1), dim=-1)

    def gradcam(self, last_block_input: torch.Tensor, grid: tuple[int, int], rows: torch.Tensor, n_classes: int,
                temperature: float, layer: str = "input", exact: bool = False, precision: str = "fp32") -> GradCam:
        """One image's softmax-GradCAM: :func:`vpltool.models.backbones.gradcam.gradcam`."""
        return gradcam(self, last_block_input, grid, rows, n_classes, temperature, layer, exact, precision)

    def gradcam_batch(self, last_block_input: torch.Tensor, grid: tuple[int, int], rows: SoftmaxRows,
                      temperature: float, layer: str = "input", precision: str = "fp32") -> BatchGradCam:
        """Softmax-GradCAM of B images of one grid: :func:`vpltool.models.backbones.gradcam.gradcam_batch`."""
        return gradcam_batch(self, last_block_input, grid, rows, temperature, layer, precision)

"""The decoder network of VPL phase 2, and its file: frozen CLIP block outputs -> dense embeddings V -> scores.

Architecture (WeCLIP's ``SegFormerHead`` + ``DecoderTransformer``, with the classifier replaced by prototypes):

1. Inputs: the patch tokens of L frozen blocks ``[B, L, h, w, width]`` (by default every block but the last).
2. Per block a LayerNorm and an MLP ``width -> dim -> dim`` (ReLU); the L results are concatenated and fused by
   a linear ``L*dim -> dim`` (WeCLIP's 1x1 conv), then ``Dropout2d``.
3. ``layers`` pre-LN transformer layers (``heads`` heads, MLP 4x, GELU) over the ``h*w`` tokens, a LayerNorm and a
   linear ``dim -> D``: ``V [B, D, h, w]``, L2-normalised per pixel.
4. Row scores ``cos(V, w_n) / T`` for every prototype row; the class score is the row of the class, the background
   score the log-sum-exp (or max) over the background rows: ``A [B, C + 1, h, w]``.

The LayerNorm on each input is ours (WeCLIP feeds the raw residual stream): it makes the input scale independent
of depth so that one SGD learning rate suits every block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import io
from ..config import BACKGROUNDS, DecoderConfig
from ..device import autocast
from ..errors import ContractError, VplError

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of its learned logit scale; a learned temperature never goes below 0.01


# --------------------------------------------------------------------------------------------- frozen features
def feature_blocks(n_blocks: int, include_last: bool) -> list[int]:
    """Indices of the CLIP blocks whose outputs feed the decoder (WeCLIP: all but the last)."""
    return list(range(n_blocks if include_last or n_blocks == 1 else n_blocks - 1))


@torch.no_grad()
def block_features(bb, pixels: Tensor, blocks: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Frozen forward collecting the patch tokens of ``blocks``.

    Args:
        bb: a :class:`~vpltool.backbone.ClipBackbone`.
        pixels: ``[B, 3, H, W]`` CLIP-normalised, ``H`` and ``W`` multiples of the patch size.
        blocks: increasing block indices.
        dtype: the frozen blocks' precision (bf16 / fp16 / fp32): an image tower stored in ``dtype``
            (:meth:`~vpltool.backbone.ClipBackbone.with_image_tower_in`) runs as it is, another under autocast.

    Returns:
        ``[B, L, h, w, width]`` (L = len(blocks)) on the backbone's device: ``dtype`` for a tower stored in it, else
        the autocast residual stream's dtype.
    """
    with contextlib.nullcontext() if bb.dtype == dtype else autocast(bb.device, dtype):
        enc = bb.encode(pixels, stop=max(blocks) + 1, collect=blocks)
    return torch.stack(enc.blocks, 1).unflatten(2, enc.grid)


# --------------------------------------------------------------------------------------------- the module
def _class_rows(row_class: Tensor) -> Tensor:
    """``[C]`` int64: the row of each class 1..C; ContractError unless every class has exactly one row."""
    fg = (row_class > 0).nonzero().flatten()
    n = int(row_class.max())
    rows = torch.full((n,), -1, dtype=torch.long)
    rows[row_class[fg] - 1] = fg
    if (rows < 0).any() or len(fg) != n:
        raise ContractError("prototypes need exactly one row per class 1..C")
    return rows


class SegDecoder(nn.Module):
    """Frozen-CLIP features -> unit pixel embeddings V and class scores A (see module docstring).

    Args:
        cfg: the architecture fields are read (dim, layers, heads, dropout, background, temperature, ...).
        in_width: CLIP transformer width (768 for ViT-B/16).
        n_inputs: number of block outputs L.
        prototypes: ``[N, D]`` rows of a prototypes file (normalised again here).
        row_class: ``[N]`` int64 class of each row, 0 = background; one row per class 1..C, >= 1 background row.
        temperature: the score temperature when ``cfg.temperature`` is None (the prototypes file's).
    """

    def __init__(self, cfg: DecoderConfig, *, in_width: int, n_inputs: int, prototypes: Tensor, row_class: Tensor,
                 temperature: float):
        super().__init__()
        if cfg.background not in BACKGROUNDS:
            raise VplError(f"--background {cfg.background!r}: choose {' or '.join(BACKGROUNDS)}")
        if cfg.dim % cfg.heads:
            raise VplError(f"--dim {cfg.dim} is not divisible by --heads {cfg.heads}")
        rows_bg = (row_class == 0).nonzero().flatten()
        if len(rows_bg) == 0:
            raise VplError("the prototypes have no background row; make them with background words (--background)")
        self.cfg, self.in_width, self.n_inputs = cfg, int(in_width), int(n_inputs)
        dim = cfg.dim
        self.norms = nn.ModuleList(nn.LayerNorm(in_width) for _ in range(n_inputs))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(in_width, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)) for _ in range(n_inputs)
        )
        self.fuse = nn.Linear(n_inputs * dim, dim)
        self.drop = nn.Dropout2d(cfg.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, cfg.heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(cfg.layers)
        )
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, prototypes.shape[1])
        self.prototypes = nn.Parameter(F.normalize(prototypes.detach().float(), dim=-1).clone(),
                                       requires_grad=cfg.train_prototypes)
        self.register_buffer("row_class", row_class.detach().long().clone())
        temp = cfg.temperature or temperature
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temp)), requires_grad=cfg.learn_temperature)
        self.register_buffer("class_rows", _class_rows(row_class), persistent=False)  # derived from row_class
        self.register_buffer("bg_rows", rows_bg, persistent=False)
        if cfg.lambda_proto > 0:  # CMPA: only then, so that decoders without it keep their state dict
            n_fg = len(self.class_rows)
            self.proto_log_temp = nn.Parameter(torch.tensor(math.log(cfg.proto_temperature)))
            # persistent: a resumed run continues with the bank of the last refresh (bit-identical resume)
            self.register_buffer("proto_bank", torch.zeros(n_fg, cfg.proto_clusters, prototypes.shape[1]))
            self.register_buffer("proto_bank_valid", torch.zeros(n_fg, cfg.proto_clusters, dtype=torch.bool))

    def set_prototypes(self, prototypes: Tensor, row_class: Tensor) -> None:
        """Swap in other prototype rows (open-vocabulary prediction): ``[N', D]`` rows, ``[N']`` their classes.

        The rows are frozen; the temperature, the decoder weights and (with CMPA) the bank are kept.
        """
        if prototypes.shape[1] != self.prototypes.shape[1]:
            raise ContractError(f"new prototypes are {prototypes.shape[1]}-d, the decoder's are "
                                f"{self.prototypes.shape[1]}-d")
        rows_bg = (row_class == 0).nonzero().flatten()
        if len(rows_bg) == 0:
            raise VplError("the new prototypes have no background row; give background words")
        device = self.prototypes.device
        self.prototypes = nn.Parameter(F.normalize(prototypes.detach().float(), dim=-1).to(device),
                                       requires_grad=False)
        self.row_class = row_class.detach().long().to(device)
        self.class_rows = _class_rows(row_class).to(device)
        self.bg_rows = rows_bg.to(device)

    @property
    def n_classes(self) -> int:
        """C + 1 (background included)."""
        return len(self.class_rows) + 1

    def unit_prototypes(self) -> Tensor:
        """``[N, D]`` float32 unit rows of W (re-normalised: fine-tuning may move them off the sphere)."""
        return F.normalize(self.prototypes.float(), dim=-1)

    def embed(self, feats: Tensor) -> Tensor:
        """``[B, L, h, w, width]`` (any float dtype) -> ``V [B, D, h, w]`` float32, unit norm per pixel."""
        b, n, h, w, _ = feats.shape
        if n != self.n_inputs:
            raise ContractError(f"the decoder reads {self.n_inputs} CLIP blocks, got features of {n}")
        x = self.fuse(self.block_mlps(feats))  # [B, h, w, dim]
        x = self.drop(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # Dropout2d drops whole channels
        for blk in self.blocks:
            x = blk(x)  # [B, hw, dim]
        v = self.head(self.ln_out(x)).float()  # [B, hw, D]
        return F.normalize(v, dim=-1).transpose(1, 2).unflatten(2, (h, w))

    def block_mlps(self, feats: Tensor) -> Tensor:
        """Step 2's per-block LayerNorm and MLP, every block at once: ``[B, L, h, w, width]`` -> ``[B, h, w, L*dim]``
        (block-major, as the concatenation of the L outputs).

        One normalisation of the stacked blocks and two batched matmuls, each LayerNorm's scale and shift folded
        into its first linear layer (``(x^ g + b) W^T + c = x^ (W diag g)^T + (W b + c)``), instead of 11 x 4 small
        ops: on a GPU the decoder's forward and backward are launch-bound, not compute-bound. The parameters stay
        the modules' own (``norms``, ``mlps``), so files and their state dicts do not change.
        """
        # fp16 cache / bf16 frozen features -> fp32 into the normalisation; autocast (CUDA) lowers the matmuls again
        x = F.layer_norm(feats.float(), feats.shape[-1:], eps=self.norms[0].eps)  # [B, L, h, w, width]
        gain, shift = (torch.stack([getattr(n, k) for n in self.norms]) for k in ("weight", "bias"))  # [L, width]
        w1, c1, w2, c2 = (torch.stack([getattr(m[i], k) for m in self.mlps])
                          for i, k in ((0, "weight"), (0, "bias"), (2, "weight"), (2, "bias")))
        c1 = c1 + torch.einsum("ldc,lc->ld", w1, shift)  # [L, dim]
        hidden = torch.einsum("blhwc,ldc->blhwd", x, w1 * gain[:, None, :]) + c1[None, :, None, None]
        out = torch.einsum("blhwd,lkd->blhwk", F.relu(hidden), w2) + c2[None, :, None, None]
        return out.permute(0, 2, 3, 1, 4).flatten(3)

    def score(self, v: Tensor, protos: Tensor | None = None) -> Tensor:
        """Class scores ``A [B, C + 1, h, w]`` float32 from ``V [B, D, h, w]``: cosine x learned/fixed scale.

        Channel 0 = background (log-sum-exp or max of the background rows), channel c = the row of class c.
        """
        protos = self.unit_prototypes() if protos is None else protos
        scale = self.log_scale.float().clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        with torch.autocast(v.device.type, enabled=False):  # bf16 cosines x 100 would lose the logits' 2nd digit
            rows = torch.einsum("bdhw,nd->bnhw", v.float(), protos.float()) * scale  # [B, N, h, w]
        bg = rows[:, self.bg_rows]
        bg = bg.logsumexp(1, keepdim=True) if self.cfg.background == "logsumexp" else bg.amax(1, keepdim=True)
        return torch.cat([bg, rows[:, self.class_rows]], dim=1)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``feats [B, L, h, w, width]`` -> (V ``[B, D, h, w]``, A ``[B, C + 1, h, w]``, W ``[N, D]``), float32.

        Everything the losses need comes out of ``forward`` so that DistributedDataParallel sees every use of a
        parameter (W included, when it is fine-tuned).
        """
        protos = self.unit_prototypes()
        v = self.embed(feats)
        return v, self.score(v, protos), protos




def decoder_arch(model: SegDecoder, blocks: Sequence[int]) -> dict[str, Any]:
    """What, besides the config, rebuilds the module: CLIP width, blocks read, embedding dim, prototype rows."""
    return {"in_width": model.in_width, "blocks": list(blocks), "embed_dim": int(model.prototypes.shape[1]),
            "n_rows": int(model.prototypes.shape[0])}


def save_decoder(path: str | Path, model: SegDecoder, cfg: DecoderConfig, *, classes: Sequence[str],
                 model_identity: dict[str, str], blocks: Sequence[int], **extra: Any) -> Path:
    """Write ``decoder.safetensors`` (:func:`vpltool.io.write_decoder`): the state dict (W included), the full
    :class:`DecoderConfig`, :func:`decoder_arch`, the frozen CLIP's identity and ``extra``."""
    model = getattr(model, "module", model)  # a DDP wrapper saves its inner module
    return io.write_decoder(path, model.state_dict(), classes=classes, config=asdict(cfg),
                            arch=decoder_arch(model, blocks), model=model_identity, **extra)


def build_decoder(state: dict[str, Tensor], cfg: DecoderConfig, arch: dict[str, Any]) -> SegDecoder:
    """A :class:`SegDecoder` from a state dict and its recorded config/arch (strict load: no silent partial)."""
    model = SegDecoder(cfg, in_width=arch["in_width"], n_inputs=len(arch["blocks"]), prototypes=state["prototypes"],
                       row_class=state["row_class"], temperature=math.exp(-float(state["log_scale"])))
    model.load_state_dict(state, strict=True)
    return model


def config_from_json(obj: dict[str, Any]) -> DecoderConfig:
    """A :class:`DecoderConfig` from its JSON form; unknown keys (a newer vpltool) are refused."""
    known = DecoderConfig.__dataclass_fields__
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise ContractError(f"decoder config has unknown fields {unknown}; made by a newer vpltool?")
    return DecoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()})


def load_decoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegDecoder, io.TensorFile]:
    """Rebuild a decoder from its file alone; returns ``(model in eval mode on device, file)``.

    ``file.meta("model")`` is the frozen CLIP to load, ``file.classes`` the class names, ``file.meta("blocks")``
    (inside ``decoder_arch``) the CLIP blocks to read.
    """
    f = io.read_decoder(path)
    try:
        model = build_decoder(f.tensors, config_from_json(f.meta("decoder_config")), f.meta("decoder_arch"))
    except (KeyError, RuntimeError) as e:
        raise ContractError(f"{path}: decoder weights do not match its recorded config ({str(e)[:160]})") from None
    return model.to(device).eval(), f


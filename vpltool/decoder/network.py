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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import io
from ..config import BACKGROUNDS, DecoderConfig, from_params, to_params
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
        bb: a :class:`~vpltool.models.ClipBackbone`.
        pixels: ``[B, 3, H, W]`` CLIP-normalised, ``H`` and ``W`` multiples of the patch size.
        blocks: increasing block indices.
        dtype: the frozen blocks' precision (bf16 / fp16 / fp32): an image tower stored in ``dtype``
            (:meth:`~vpltool.models.ClipBackbone.with_image_tower_in`) runs as it is, another under autocast.

    Returns:
        ``[B, L, h, w, width]`` (L = len(blocks)) on the backbone's device: ``dtype`` for a tower stored in it, else
        the autocast residual stream's dtype.
    """
    with contextlib.nullcontext() if bb.dtype == dtype else autocast(bb.device, dtype):
        enc = bb.encode(pixels, stop=max(blocks) + 1, collect=blocks)
    return torch.stack(enc.blocks, 1).unflatten(2, enc.grid)


# --------------------------------------------------------------------------------------------- the module
# step 2's stacked parameters and the per-block names files give them (WeCLIP's L LayerNorm and MLP modules), in
# the order those modules listed them: block by block, the LayerNorms' first
PER_BLOCK = {"norm_weight": "norms.{}.weight", "norm_bias": "norms.{}.bias", "fc1_weight": "mlps.{}.0.weight",
             "fc1_bias": "mlps.{}.0.bias", "fc2_weight": "mlps.{}.2.weight", "fc2_bias": "mlps.{}.2.bias"}


class BlockMLPs(nn.Module):
    """Step 2: per CLIP block a LayerNorm and an MLP ``width -> dim -> dim`` (ReLU), the L blocks at once.

    Each parameter holds the L blocks' stacked (``norm_weight [L, width]``, ``fc1_weight [L, dim, width]``, ...):
    the forward is one normalisation and two batched matmuls, and autograd and the optimizer see 6 tensors, not
    6 L: no stack of 66 module parameters per step, and no 66 slices of its gradient (on a GPU the decoder's step
    is bound by the host's launches; ``bench_decoder.py --mode host`` counts them). Initialised as WeCLIP's modules
    (the same draws, in the same order), and written to files under their per-block names (:data:`PER_BLOCK`, by
    :class:`SegDecoder`'s state-dict hooks), so files do not change.
    """

    def __init__(self, n_inputs: int, in_width: int, dim: int, norm: bool = True):
        super().__init__()
        norms = [nn.LayerNorm(in_width) for _ in range(n_inputs)]  # no random draws: the MLPs' draws stay
        mlps = [(nn.Linear(in_width, dim), nn.Linear(dim, dim)) for _ in range(n_inputs)]
        self.eps, self.norm = norms[0].eps, norm
        stacked = {"norm_weight": [n.weight for n in norms], "norm_bias": [n.bias for n in norms],
                   "fc1_weight": [a.weight for a, _ in mlps], "fc1_bias": [a.bias for a, _ in mlps],
                   "fc2_weight": [b.weight for _, b in mlps], "fc2_bias": [b.bias for _, b in mlps]}
        for name in block_parameters(norm):
            self.register_parameter(name, nn.Parameter(torch.stack(stacked[name]).detach()))

    def forward(self, feats: Tensor) -> Tensor:
        """``[B, L, h, w, width]`` -> ``[B, h, w, L*dim]`` (block-major, as the concatenation of the L outputs).

        Each LayerNorm's scale and shift is folded into its first linear layer
        (``(x^ g + b) W^T + c = x^ (W diag g)^T + (W b + c)``).
        """
        # fp16 cache / bf16 frozen features -> fp32 into the normalisation; autocast (CUDA) lowers the matmuls again
        if not self.norm:  # WeCLIP: the raw residual stream, cast to float (segformer_head.py:74)
            hidden = torch.einsum("blhwc,ldc->blhwd", feats.float(), self.fc1_weight)
            hidden = hidden + self.fc1_bias[None, :, None, None]
        else:
            x = F.layer_norm(feats.float(), feats.shape[-1:], eps=self.eps)  # [B, L, h, w, width]
            c1 = self.fc1_bias + torch.einsum("ldc,lc->ld", self.fc1_weight, self.norm_bias)  # [L, dim]
            hidden = torch.einsum("blhwc,ldc->blhwd", x, self.fc1_weight * self.norm_weight[:, None, :])
            hidden = hidden + c1[None, :, None, None]
        out = torch.einsum("blhwd,lkd->blhwk", F.relu(hidden), self.fc2_weight) + self.fc2_bias[None, :, None, None]
        return out.permute(0, 2, 3, 1, 4).flatten(3)


def block_parameters(norm: bool = True) -> list[str]:
    """Step 2's stacked parameters: :data:`PER_BLOCK`'s, the LayerNorms' only with ``norm``."""
    return [name for name in PER_BLOCK if norm or not name.startswith("norm_")]


def per_block_names(n_inputs: int, norm: bool = True) -> list[tuple[str, str, int]]:
    """``(file name, stacked parameter, block)`` of step 2's parameters in files' order (:data:`PER_BLOCK`)."""
    norms, mlps = ("norm_weight", "norm_bias") if norm else (), ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
    return [(PER_BLOCK[name].format(i), name, i) for group in (norms, mlps) for i in range(n_inputs) for name in group]


class EncoderLayer(nn.TransformerEncoderLayer):
    """Step 3's layer: torch's pre-LN ``TransformerEncoderLayer`` (GELU MLP 4x, no dropout, batch first): its
    parameters, their initialisation and their state-dict names, with a forward of fewer ops.

    torch's training-mode forward goes through ``multi_head_attention_forward``'s general path (checks, the packed
    projection unpacked into three tensors, heads folded into the batch); here one projection is viewed as the q,
    k, v heads for the fused attention, with fewer ops forward and backward (on a GPU the decoder's step
    is bound by the host's launches; ``bench_decoder.py --mode host`` counts them). The same values forward
    (bitwise on the CPU), the gradients within float32 rounding (tests/test_decoder.py).
    """

    def __init__(self, dim: int, heads: int, activation: str = "gelu"):
        super().__init__(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.act = quick_gelu if activation == "quick_gelu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        """``[B, n, dim]`` -> ``[B, n, dim]``: ``x + attn(norm1(x))``, then ``+ mlp(norm2(.))`` (no masks: the
        decoder attends over every patch)."""
        attn = self.self_attn
        b, n, dim = x.shape
        qkv = F.linear(self.norm1(x), attn.in_proj_weight, attn.in_proj_bias).unflatten(-1, (3, attn.num_heads, -1))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, n, dim / heads]
        x = x + attn.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim))
        return x + self.linear2(self.act(self.linear1(self.norm2(x))))


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's ``x * sigmoid(1.702 x)`` (WeCLIP's decoder blocks, ``Decoder/TransDecoder.py``)."""
    return x * torch.sigmoid(1.702 * x)


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
                 temperature: float, dino_width: int | None = None):
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
        self.block_mlp = BlockMLPs(n_inputs, in_width, dim, cfg.block_norm)
        self.register_state_dict_post_hook(_per_block_state)
        self.register_load_state_dict_pre_hook(_stacked_state)
        self.fuse = nn.Linear(n_inputs * dim, dim)
        self.drop = nn.Dropout2d(cfg.dropout)
        self.dino_width = dino_width
        self.dino_backbone = None  # WeCLIP+: the frozen DINO (not a module: never in the state dict), set by callers
        if dino_width is not None:  # WeCLIP+'s dino_decoder_fts_fuse: MLP width -> dim -> dim, 1x1 fuse, Dropout2d
            self.dino_mlp = nn.Sequential(nn.Linear(dino_width, dim), nn.ReLU(), nn.Linear(dim, dim))
            self.dino_fuse = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(EncoderLayer(dim, cfg.heads, cfg.activation) for _ in range(cfg.layers))
        self.conv = cfg.classifier == "conv"
        if self.conv:  # WeCLIP: the last layer's tokens straight into a 1x1 conv to C + 1 classes
            self.head = nn.Conv2d(dim, int((row_class > 0).sum()) + 1, kernel_size=1)
        else:
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

    def fused(self, feats: Tensor) -> Tensor:
        """``[B, L, h, w, width]`` (any float dtype) -> the fused features ``[B, dim, h, w]`` after Dropout2d
        (steps 1-2; WeCLIP's affinity ``sigmoid(F^T F)`` is taken of them)."""
        n = feats.shape[1]
        if n != self.n_inputs:
            raise ContractError(f"the decoder reads {self.n_inputs} CLIP blocks, got features of {n}")
        x = self.fuse(self.block_mlp(feats))  # [B, h, w, dim]
        return self.drop(x.permute(0, 3, 1, 2))  # Dropout2d drops whole channels

    def dino_fused(self, dino: Tensor, grid: tuple[int, int]) -> Tensor:
        """WeCLIP+'s DINO head: patch tokens ``[B, gh, gw, C]`` -> ``[B, dim, h, w]`` (MLP, 1x1 fuse, Dropout2d,
        then bilinear to the CLIP's grid ``(h, w)``)."""
        x = self.dino_fuse(self.dino_mlp(dino.float()))  # [B, gh, gw, dim]
        x = self.drop(x.permute(0, 3, 1, 2))
        return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)

    def forward_plus(self, feats: Tensor, dino: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """WeCLIP+'s forward: ``(F [B, 2 dim, h, w]`` the CLIP's and the DINO's fused features concatenated, the
        shared decoder's logits on the CLIP's, on the DINO's ``[B, C + 1, h, w])``."""
        fused = self.fused(feats)
        grid = fused.shape[-2:]
        dino_fused = self.dino_fused(dino, tuple(grid))
        logits = [self.head(self.tokens(f).transpose(1, 2).unflatten(2, grid)).float() for f in (fused, dino_fused)]
        return torch.cat([fused, dino_fused], dim=1), logits[0], logits[1]

    def tokens(self, fused: Tensor) -> Tensor:
        """Step 3's transformer layers: ``[B, dim, h, w]`` -> ``[B, hw, dim]``."""
        x = fused.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)  # [B, hw, dim]
        return x

    def embed(self, feats: Tensor) -> Tensor:
        """``[B, L, h, w, width]`` (any float dtype) -> ``V [B, D, h, w]`` float32, unit norm per pixel."""
        h, w = feats.shape[2:4]
        v = self.head(self.ln_out(self.tokens(self.fused(feats)))).float()  # [B, hw, D]
        return F.normalize(v, dim=-1).transpose(1, 2).unflatten(2, (h, w))

    def file_parameters(self) -> list[tuple[str, str, int | None]]:
        """``(file name, parameter name, block or None)`` of every parameter, in the order and under the names of
        the files (WeCLIP's per-block modules): step 2's stacked parameters become L rows each (see
        :class:`BlockMLPs`). For checkpoints, whose optimizer state is kept per file parameter."""
        out: list[tuple[str, str, int | None]] = []
        for name, _ in self.named_parameters():
            if not name.startswith("block_mlp."):
                out.append((name, name, None))
            elif name == f"block_mlp.{block_parameters(self.cfg.block_norm)[0]}":  # the first: all L x 6 (4) rows
                out += [(file, f"block_mlp.{stacked}", i)
                        for file, stacked, i in per_block_names(self.n_inputs, self.cfg.block_norm)]
        return out

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

    def forward(self, feats: Tensor, dino: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``feats [B, L, h, w, width]`` -> (V ``[B, D, h, w]``, A ``[B, C + 1, h, w]``, W ``[N, D]``), float32.

        With ``classifier conv`` (WeCLIP) the first is the fused features ``F [B, dim, h, w]`` (for the affinity
        loss) and A the conv's free logits.

        Everything the losses need comes out of ``forward`` so that DistributedDataParallel sees every use of a
        parameter (W included, when it is fine-tuned).
        """
        protos = self.unit_prototypes()
        if self.dino_width is not None:  # WeCLIP+: the mean of the two branches' logits (its test protocol)
            if dino is None:
                raise ContractError("this decoder has a DINO branch (--recipe weclip+): give the DINO's patch tokens")
            fused, clip, dino_logits = self.forward_plus(feats, dino)
            return fused, 0.5 * clip + 0.5 * dino_logits, protos
        if self.conv:  # WeCLIP: (the fused features F, the conv's logits, W unused)
            fused = self.fused(feats)
            x = self.tokens(fused).transpose(1, 2).unflatten(2, fused.shape[-2:])  # [B, dim, h, w]
            return fused, self.head(x).float(), protos
        v = self.embed(feats)
        return v, self.score(v, protos), protos




def _per_block_state(module: SegDecoder, state: dict[str, Tensor], prefix: str, local_metadata) -> None:
    """State-dict post-hook: step 2's stacked parameters under their per-block file names (:data:`PER_BLOCK`),
    where they were in the dict, each row its own tensor (a file holds no views of another tensor)."""
    norm = module.cfg.block_norm
    stacked = {k: state[prefix + "block_mlp." + k] for k in block_parameters(norm)}
    rows = {prefix + file: stacked[name][i].clone() for file, name, i in per_block_names(module.n_inputs, norm)}
    items = list(state.items())
    at = next(j for j, (k, _) in enumerate(items) if k.startswith(prefix + "block_mlp."))
    kept = [(k, v) for k, v in items if not k.startswith(prefix + "block_mlp.")]
    state.clear()
    state.update(kept[:at] + list(rows.items()) + kept[at:])


def _stacked_state(module: SegDecoder, state: dict[str, Tensor], prefix: str, local_metadata, strict: bool,
                   missing_keys: list[str], *args) -> None:
    """Load-state-dict pre-hook: a file's per-block rows of step 2 stacked into :class:`BlockMLPs`' parameters;
    rows missing are named among strict loading's missing keys."""
    names = per_block_names(module.n_inputs, module.cfg.block_norm)
    missing = [prefix + file for file, _, _ in names if prefix + file not in state]
    if missing:
        if len(missing) < len(names):  # some rows, not all: name those missing (none at all: a stacked state)
            missing_keys.extend(missing)
        return
    rows: dict[str, list[Tensor]] = {name: [] for name in block_parameters(module.cfg.block_norm)}
    for file, name, _ in sorted(names, key=lambda n: n[2]):
        rows[name].append(state.pop(prefix + file))
    for name, values in rows.items():
        state[prefix + "block_mlp." + name] = torch.stack(values)


def decoder_arch(model: SegDecoder, blocks: Sequence[int]) -> dict[str, Any]:
    """What, besides the config, rebuilds the module: CLIP width, blocks read, embedding dim, prototype rows."""
    out = {"in_width": model.in_width, "blocks": list(blocks), "embed_dim": int(model.prototypes.shape[1]),
           "n_rows": int(model.prototypes.shape[0])}
    if model.dino_width is not None:
        out["dino_width"] = model.dino_width
    return out


def save_decoder(path: str | Path, model: SegDecoder, cfg: DecoderConfig, *, classes: Sequence[str],
                 model_identity: dict[str, str], blocks: Sequence[int], **extra: Any) -> Path:
    """Write ``decoder.safetensors`` (:func:`vpltool.io.write_decoder`): the state dict (W included), the full
    :class:`DecoderConfig`, :func:`decoder_arch`, the frozen CLIP's identity and ``extra``."""
    model = getattr(model, "module", model)  # a DDP wrapper saves its inner module
    return io.write_decoder(path, model.state_dict(), classes=classes, config=to_params(cfg),
                            arch=decoder_arch(model, blocks), model=model_identity, **extra)


def build_decoder(state: dict[str, Tensor], cfg: DecoderConfig, arch: dict[str, Any]) -> SegDecoder:
    """A :class:`SegDecoder` from a state dict and its recorded config/arch (strict load: no silent partial)."""
    model = SegDecoder(cfg, in_width=arch["in_width"], n_inputs=len(arch["blocks"]), prototypes=state["prototypes"],
                       row_class=state["row_class"], temperature=math.exp(-float(state["log_scale"])),
                       dino_width=arch.get("dino_width"))
    model.load_state_dict(state, strict=True)
    return model


def config_from_json(obj: dict[str, Any], source: object = None) -> DecoderConfig:
    """A :class:`DecoderConfig` from its JSON form, each value checked like input (:func:`vpltool.config.from_params`:
    one line naming ``source`` and the field); unknown keys (a newer vpltool) are refused."""
    known = DecoderConfig.__dataclass_fields__
    unknown = sorted(set(obj) - set(known))
    if unknown:
        where = f"{source}: " if source is not None else ""
        raise ContractError(f"{where}decoder config has unknown fields {unknown}; made by a newer vpltool?")
    return from_params(DecoderConfig, obj, f"{source} (decoder_config)" if source is not None else None)


def load_decoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegDecoder, io.TensorFile]:
    """Rebuild a decoder from its file alone; returns ``(model in eval mode on device, file)``.

    ``file.meta("model")`` is the frozen CLIP to load, ``file.classes`` the class names, ``file.meta("blocks")``
    (inside ``decoder_arch``) the CLIP blocks to read.
    """
    f = io.read_decoder(path)
    try:
        model = build_decoder(f.tensors, config_from_json(f.meta("decoder_config"), f.path), f.meta("decoder_arch"))
    except (KeyError, RuntimeError, IndexError, ValueError) as e:  # torch's message spans lines: one line of it
        said = " ".join(str(e).split())[:200]
        raise ContractError(f"{path}: decoder weights do not match its recorded config ({said}); re-run `vpltool "
                            "train-decoder` (with --overwrite)") from None
    return model.to(device).eval(), f


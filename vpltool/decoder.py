"""The segmentation decoder of VPL phase 2: frozen CLIP block outputs -> dense embeddings V -> scores against W.

Architecture (WeCLIP's ``SegFormerHead`` + ``DecoderTransformer``, with the classifier replaced by prototypes):

1. Inputs: the patch tokens of L frozen blocks ``[B, L, h, w, width]`` (by default every block but the last).
2. Per block a LayerNorm and an MLP ``width -> dim -> dim`` (ReLU); the L results are concatenated and fused by
   a linear ``L*dim -> dim`` (WeCLIP's 1x1 conv), then ``Dropout2d``.
3. ``layers`` pre-LN transformer layers (``heads`` heads, MLP 4x, GELU) over the ``h*w`` tokens, a LayerNorm and a
   linear ``dim -> D``: ``V [B, D, h, w]``, L2-normalised per pixel.
4. Row scores ``cos(V, w_n) / T`` for every prototype row; the class score is the row of the class, the background
   score the log-sum-exp (or max) over the background rows: ``A [B, C + 1, h, w]``.

The LayerNorm on each input is ours (WeCLIP feeds the raw residual stream): it makes the input scale independent
of depth so that one SGD learning rate suits every block. Losses: :func:`ce_loss`, :func:`balanced_ce_loss`,
:func:`rsc_loss` (Eq. 13, the reading of docs/decoder.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import io
from .config import BACKGROUNDS, IGNORE_INDEX, DecoderConfig
from .device import autocast
from .errors import ContractError, VplError

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
        dtype: autocast dtype of the frozen blocks (bf16 / fp16; fp32 = none).

    Returns:
        ``[B, L, h, w, width]`` (L = len(blocks)) on the backbone's device, in the autocast dtype.
    """
    with autocast(bb.device, dtype):
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
        # fp16 cache / bf16 frozen features -> fp32 into the LayerNorms; autocast (CUDA) lowers the linears again
        parts = [mlp(norm(feats[:, i].float())) for i, (norm, mlp) in enumerate(zip(self.norms, self.mlps))]
        x = self.fuse(torch.cat(parts, dim=-1))  # [B, h, w, dim]
        x = self.drop(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # Dropout2d drops whole channels
        for blk in self.blocks:
            x = blk(x)  # [B, hw, dim]
        v = self.head(self.ln_out(x)).float()  # [B, hw, D]
        return F.normalize(v, dim=-1).transpose(1, 2).unflatten(2, (h, w))

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


# --------------------------------------------------------------------------------------------- losses
def ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel cross-entropy, 255 ignored; 0 (not NaN) when every pixel is ignored.

    Args:
        logits: ``[B, C + 1, H, W]`` float.
        target: ``[B, H, W]`` int64 in 0..C or 255.
    """
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (target != IGNORE_INDEX).sum().clamp_min(1)


def balanced_ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """WeCLIP/AFA's ``0.5 * (CE over background pixels + CE over foreground pixels)``, 255 ignored.

    Background-heavy pseudo masks otherwise teach the decoder to say background; a part without pixels adds 0.
    """
    bg = target.masked_fill(target != 0, IGNORE_INDEX)
    fg = target.masked_fill(target == 0, IGNORE_INDEX)
    return 0.5 * (ce_loss(logits, bg) + ce_loss(logits, fg))


def present_classes(target: Tensor, n_classes: int) -> Tensor:
    """``[B, H, W]`` int64 masks -> ``[B, n_classes]`` bool: which classes have a pixel (255 ignored)."""
    valid = target.masked_fill(target == IGNORE_INDEX, n_classes).flatten(1)  # 255 -> a spare bin
    counts = torch.zeros(len(target), n_classes + 1, dtype=torch.long, device=target.device)
    counts.scatter_add_(1, valid, torch.ones_like(valid))
    return counts[:, :n_classes] > 0


def region_masks(logits: Tensor, present: Tensor) -> Tensor:
    """Soft region masks from the scores A (Eq. 12): softmax over background + the classes of the image.

    Restricting the softmax to the image's classes (as CAMs use image-level labels) stops an absent class from
    claiming pixels. The masks are not detached: as in Eq. 12, RSC's gradient reaches V through the pooled
    values and through A (on the demo world detaching scored lower; docs/decoder.md).

    Args:
        logits: ``[B, C + 1, h, w]``; present: ``[B, C + 1]`` bool (background is always kept).

    Returns:
        ``[B, C + 1, h, w]`` float32 in [0, 1], zero for absent classes.
    """
    keep = present.clone()
    keep[:, 0] = True
    masked = logits.float().masked_fill(~keep[:, :, None, None], float("-inf"))
    return masked.softmax(1)


def region_embeddings(v: Tensor, probs: Tensor, present: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Masked average pooling (Eq. 12) of the foreground classes present in each image.

    Args:
        v: ``[B, D, h, w]`` pixel embeddings.
        probs: ``[B, C + 1, h, w]`` soft masks in [0, 1] (softmax of A), channel 0 = background.
        present: ``[B, C + 1]`` bool, the classes of each image's pseudo mask; background is never a region.

    Returns:
        ``P [R, D]`` float32 unit region embeddings and ``[R]`` int64 their classes (1..C), R = regions in the batch.
    """
    present = present.clone()
    present[:, 0] = False
    b_idx, c_idx = present.nonzero(as_tuple=True)
    masks = probs[b_idx, c_idx]  # [R, h, w]
    pooled = torch.einsum("rhw,rdhw->rd", masks, v[b_idx]) / masks.sum((1, 2)).clamp_min(eps)[:, None]
    return F.normalize(pooled.float(), dim=-1), c_idx


def rsc_loss(regions: Tensor, region_class: Tensor, protos: Tensor, row_class: Tensor, tau: float) -> Tensor:
    """Regional semantic contrast (Eq. 13), symmetric InfoNCE between regions and their class prototypes.

    With ``s_r = cos(P_r, w_{c_r})``, row r of the first term contrasts region r against *every* prototype row
    (the other classes and all background rows are negatives); the second contrasts the prototype of region r
    against the regions of the batch, where the negatives are the regions of *other* classes (a region of the
    same class in another image is not a negative and is left out):

        L = 1/(2R) sum_r [ -log e^{s_r/tau} / sum_n e^{cos(P_r, w_n)/tau}
                           -log e^{s_r/tau} / sum_{q: q = r or c_q != c_r} e^{cos(P_q, w_{c_r})/tau} ]

    Args:
        regions: ``[R, D]`` unit region embeddings; region_class: ``[R]`` int64 in 1..C.
        protos: ``[N, D]`` unit prototype rows; row_class: ``[N]`` int64 (0 = background row).
        tau: temperature.

    Returns:
        Scalar float32; 0 (still attached to ``regions``) when the batch has no region.
    """
    if len(regions) == 0:
        return regions.sum() * 0.0
    own = (row_class[None, :] == region_class[:, None]).float().argmax(1)  # [R] the row of each region's class
    sim = regions @ protos.T / tau  # [R, N]
    to_protos = F.cross_entropy(sim, own)
    sim_t = protos[own] @ regions.T / tau  # [R, R]: prototype of region r vs region q
    same = region_class[:, None] == region_class[None, :]
    same.fill_diagonal_(False)
    to_regions = F.cross_entropy(sim_t.masked_fill(same, float("-inf")), torch.arange(len(regions), device=sim.device))
    return 0.5 * (to_protos + to_regions)


# --------------------------------------------------------------------------------------------- CMPA (SSR)
def mask_fractions(target: Tensor, n_classes: int, grid: tuple[int, int]) -> Tensor:
    """Hard pseudo masks -> per-patch class fractions (soft masks for masked average pooling at the patch grid).

    Args:
        target: ``[B, S, S']`` int64 in 0..C or 255 (ignored pixels count for no class); S a multiple of ``grid``.
        n_classes: C + 1.
        grid: ``(h, w)`` of the decoder's embeddings.

    Returns:
        ``[B, C + 1, h, w]`` float32 in [0, 1]: the share of each patch's pixels labelled with each class.
    """
    valid = target != IGNORE_INDEX
    onehot = F.one_hot(target.masked_fill(~valid, 0), n_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    return F.adaptive_avg_pool2d(onehot, grid)


def cmpa_loss(regions: Tensor, region_class: Tensor, text: Tensor, bank: Tensor, bank_valid: Tensor,
              log_temp: Tensor, min_temp: float = 0.01) -> Tensor:
    """CMPA's prototype InfoNCE (our reading of SSR): each region against every class prototype, text and image.

    The prototype set is the C class rows of W ("text prototypes") and the valid K-means centres of the image-
    prototype bank; a region's positives are every prototype of its class (multi-positive InfoNCE)::

        L = 1/R sum_r -log( sum_{q : class(q) = c_r} e^{cos(P_r, q)/t} / sum_q e^{cos(P_r, q)/t} ),  t = e^log_temp

    Args:
        regions: ``[R, D]`` unit region embeddings; region_class: ``[R]`` int64 in 1..C.
        text: ``[C, D]`` unit class rows (class c at row c - 1).
        bank: ``[C, K, D]`` image prototypes; bank_valid: ``[C, K]`` bool (centres not yet built are left out).
        log_temp: scalar learnable log temperature (clamped below at ``log(min_temp)``).

    Returns:
        Scalar float32; 0 (attached to ``regions`` and ``log_temp``) when the batch has no region.
    """
    t = log_temp.float().clamp(min=math.log(min_temp)).exp()
    if len(regions) == 0:
        return regions.sum() * 0.0 + t * 0.0
    n_fg, k = bank.shape[:2]
    protos = torch.cat([text.float(), bank.flatten(0, 1).float()])  # [C + C*K, D]
    proto_class = torch.cat([torch.arange(1, n_fg + 1), torch.arange(1, n_fg + 1).repeat_interleave(k)])
    valid = torch.cat([torch.ones(n_fg, dtype=torch.bool), bank_valid.flatten().cpu()]).to(regions.device)
    logits = (regions.float() @ protos.T / t).masked_fill(~valid, float("-inf"))  # [R, Q]
    pos = (proto_class.to(regions.device)[None, :] == region_class[:, None]) & valid
    return (logits.logsumexp(1) - logits.masked_fill(~pos, float("-inf")).logsumexp(1)).mean()


def spherical_kmeans(x: Tensor, k: int, iters: int = 20, seed: int = 0) -> Tensor:
    """K-means on the unit sphere (cosine): ``[n, D]`` unit rows -> ``[min(k, n), D]`` unit centres.

    Deterministic: k-means++ seeding from a generator seeded by ``seed``, then ``iters`` Lloyd steps; an empty
    cluster keeps its previous centre.
    """
    x = F.normalize(x.float(), dim=-1)
    k = min(k, len(x))
    gen = torch.Generator().manual_seed(seed)
    centres = [x[int(torch.randint(len(x), (1,), generator=gen))]]
    for _ in range(1, k):
        dist = (1 - x @ torch.stack(centres).T).amin(1).clamp_min(0)
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1 / len(x))
        centres.append(x[int(torch.multinomial(probs, 1, generator=gen))])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=k) > 0
        c = torch.where(filled[:, None], F.normalize(sums, dim=-1), c)
    return c


@torch.no_grad()
def refresh_bank(model: SegDecoder, batches, seed: int = 0) -> int:
    """Rebuild CMPA's image-prototype bank from the current decoder: per class, K-means of the region embeddings
    (pseudo-mask masked average pooling of V) of the training images. Returns the number of regions pooled.

    Args:
        model: a CMPA decoder (``cfg.lambda_proto > 0``); run in eval mode (no dropout), left in eval mode.
        batches: iterable of ``(feats [B, L, h, w, width], target [B, S, S] int64)``.
    """
    model.eval()
    n_classes = model.n_classes
    regions, classes = [], []
    for feats, target in batches:
        v = model.embed(feats)
        present = present_classes(target, n_classes)
        r, c = region_embeddings(v, mask_fractions(target, n_classes, v.shape[-2:]), present)
        regions.append(r.cpu())
        classes.append(c.cpu())
    regions, classes = torch.cat(regions), torch.cat(classes)
    bank = torch.zeros_like(model.proto_bank, device="cpu")
    valid = torch.zeros_like(model.proto_bank_valid, device="cpu")
    for c in range(1, n_classes):
        own = regions[classes == c]
        if len(own):
            centres = spherical_kmeans(own, bank.shape[1], seed=seed + c)
            bank[c - 1, : len(centres)], valid[c - 1, : len(centres)] = centres, True
    model.proto_bank.copy_(bank)
    model.proto_bank_valid.copy_(valid)
    return len(regions)


# --------------------------------------------------------------------------------------------- the file
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


# --------------------------------------------------------------------------------------------- inference
LONG_SIDE_RATIO = 1.6  # WeCLIP: 320 px training crops, 512 px long side at test


def input_long_side(long_side: int | None, crop_size: int) -> int:
    """The test input's long side: ``long_side`` or 1.6 x the training crop."""
    return int(long_side or round(LONG_SIDE_RATIO * crop_size))


def view_size(bb, height: int, width: int, long_side: int, scale: float) -> tuple[int, int]:
    """``(H, W)`` of one test view: long side ``long_side * scale``, sides rounded up to the patch size."""
    ratio = long_side * scale / max(height, width)
    return bb.input_size(max(1, round(height * ratio)), max(1, round(width * ratio)))


def view_logits(forward: Callable[[Tensor], Tensor], pixels: Tensor, flip: bool) -> Tensor:
    """Scores of a batch of views, each averaged with those of its mirror image flipped back.

    Args:
        forward: ``[B', 3, H, W]`` -> ``[B', N, h, w]``.
        pixels: ``[B, 3, H, W]`` normalised pixels (or one view ``[3, H, W]``).

    Returns:
        ``[B, N, h, w]`` float32 (``[N, h, w]`` for one view); the mirrors run in the same forward as the views.
    """
    if pixels.ndim == 3:
        return view_logits(forward, pixels[None], flip)[0]
    n = len(pixels)
    out = forward(torch.cat([pixels, pixels.flip(-1)]) if flip else pixels).float()
    return (out[:n] + out[n:].flip(-1)) / 2 if flip else out


def multiscale_logits(forward: Callable[[Tensor], Tensor], views: Sequence[Tensor], flip: bool) -> Tensor:
    """Mean of :func:`view_logits` over views (one per scale, each ``[B, 3, H_s, W_s]`` or ``[3, H_s, W_s]``);
    every view's scores are resized to the first view's grid.

    Returns:
        ``[B, N, h0, w0]`` float32 on the first view's patch grid (``[N, h0, w0]`` for single views).
    """
    if views and views[0].ndim == 3:
        return multiscale_logits(forward, [v[None] for v in views], flip)[0]
    total, grid = None, None
    for pixels in views:
        out = view_logits(forward, pixels, flip)
        if grid is None:
            grid = out.shape[-2:]
        elif out.shape[-2:] != grid:
            out = F.interpolate(out, size=grid, mode="bilinear", align_corners=False)
        total = out if total is None else total + out
    return total / len(views)


def decoder_forward(bb, model: SegDecoder, blocks: Sequence[int], dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """``[B, 3, H, W]`` pixels -> ``[B, C + 1, h, w]`` class scores: the frozen blocks, then the decoder."""

    def forward(batch: Tensor) -> Tensor:
        feats = block_features(bb, batch, blocks, dtype)
        with torch.no_grad(), autocast(bb.device, dtype):
            return model(feats)[1]

    return forward


def predict_logits_batch(bb, model: SegDecoder, blocks: Sequence[int], views: Sequence[Tensor], flip: bool,
                         size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """WeCLIP's test protocol for B images of one size: ``views`` (one ``[B, 3, H_s, W_s]`` per scale) and their
    mirrors through the frozen CLIP and the decoder, averaged, resized to the images' ``size`` ``(H0, W0)``.

    Returns:
        ``[B, C + 1, H0, W0]`` float32 scores on the model's device.
    """
    forward = decoder_forward(bb, model, blocks, dtype)
    logits = multiscale_logits(forward, [v.to(bb.device, non_blocking=True) for v in views], flip)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def predict_logits(bb, model: SegDecoder, blocks: Sequence[int], image, scales: Sequence[float], flip: bool,
                   long_side: int, dtype: torch.dtype) -> Tensor:
    """Multi-scale (+ flip) class scores of one image at its own resolution (WeCLIP's test protocol).

    Args:
        bb: the frozen :class:`~vpltool.backbone.ClipBackbone` the decoder was trained on.
        image: ``[H0, W0, 3]`` uint8 RGB.

    Returns:
        ``[C + 1, H0, W0]`` float32 scores (channel 0 = background), on the CPU.
    """
    h0, w0 = image.shape[:2]
    views = [bb.preprocess(image, view_size(bb, h0, w0, long_side, s))[None] for s in scales]
    return predict_logits_batch(bb, model, blocks, views, flip, (h0, w0), dtype)[0].cpu()

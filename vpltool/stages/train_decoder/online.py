"""WeCLIP's online pseudo masks and losses (zbf1991/WeCLIP, ``WeCLIP/``): what ``--recipe weclip`` trains on.

Per training crop and iteration (``model_attn_aff_voc.py:forward``, ``clip/clip_tool.py:perform_single_voc_cam``):

1. GradCAM of each image-level class on the frozen CLIP (the softmax over the class's text row and the background
   rows, prompt "a clean origami {}."): ``cams [K, h, w]`` in [0, 1] (vpltool's CLIP-ES GradCAM, the same
   arithmetic: :meth:`vpltool.models.ClipBackbone.gradcam_batch`).
2. The propagation attention (:func:`propagation_attention`): the mean of the last 8 head-mean attention maps; after
   ``rfm_start`` iterations RFM: of the last 6 maps, those whose summed difference to the decoder's affinity is at
   most the mean difference, averaged, times that affinity.
3. CAA's transition matrix of it (:func:`vpltool.ops.affinity.affinity`, CLIP-ES's arithmetic without a floor), each
   class's map propagated inside the union of its boxes at threshold 0.4 (CLIP-ES's ``scoremap2bbox``, its border
   clipping included: :func:`vpltool.ops.affinity.box_masks` with ``parity``, OpenCV's boxes on the device).
4. Min-max per map, bilinear to the crop, background ``(1 - max_k)^1``, PAR (20 iterations, dilations 1, 2, 4, 8,
   12, 24: :func:`.par.par`) on the normalised crop, argmax: labels ``[S, S]`` with no ignored pixel.

Losses (``scripts/dist_clip_voc.py``): balanced CE (:func:`vpltool.decoder.losses.balanced_ce_loss`) of the
bilinearly upsampled logits + 0.1 x the affinity loss (:func:`affinity_loss`) of ``sigmoid(F^T F)`` of the fused
decoder features against the pairs of equal pseudo labels within a radius of 8 patches (:func:`affinity_targets`).

Every function here is pure (no module state): the parity runner compares them with WeCLIP's own code.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ... import io
from ...config import IGNORE_INDEX, DecoderConfig
from ...decoder.losses import balanced_ce_loss, ce_loss, upsample_logits
from ...device import autocast
from ...models.backbones.gradcam import PrototypeRows
from ...ops.affinity import affinity, box_masks
from ...ops.kernels import minmax
from ...runtime.batches import die_with_parent
from .data import augment, normalize_views, sample_rng
from .par import PAR_DILATIONS, par


# --------------------------------------------------------------------------------------------- pseudo masks
def propagation_attention(attention: Tensor, seg_affinity: Tensor | None, mean_blocks: int = 8,
                          rfm_blocks: int = 6) -> Tensor:
    """The attention CAA propagates with (``clip_tool.py:153-176``).

    Args:
        attention: ``[N, hw, hw]`` float head-mean attention maps without CLS of the last N frozen blocks, the last
            block's last (N >= ``mean_blocks`` and ``rfm_blocks``, or all there are).
        seg_affinity: ``[hw, hw]`` the decoder's ``sigmoid(F^T F)`` (RFM), or None (before ``rfm_start``).

    Returns:
        ``[hw, hw]`` float32 (float64 when ``attention`` is: parity/weclip_parity.py's precision study): the mean of
        the last ``mean_blocks`` maps; with ``seg_affinity`` (RFM) the mean of those of the last ``rfm_blocks`` maps
        whose summed ``seg_affinity - map`` is at most the mean over them, times ``seg_affinity`` (no gradient flows
        back into the decoder).
    """
    dtype = torch.float64 if attention.dtype == torch.float64 else torch.float32
    attention = attention.to(dtype)
    if seg_affinity is None:
        return attention[-mean_blocks:].mean(0)
    maps = attention[-rfm_blocks:]
    seg = seg_affinity.detach().to(dtype)
    diff = (seg[None] - maps).flatten(1).sum(1)  # [n]
    keep = (diff <= diff.mean()).float()[:, None, None]
    mean = (keep * maps).sum(0) / (keep.sum(0) + 1e-5)
    return mean * seg


def online_crop_scores(cams: Tensor, attention: Tensor, size: tuple[int, int], seg_affinity: Tensor | None = None,
                       *, box_threshold: float = 0.4, mean_blocks: int = 8, rfm_blocks: int = 6,
                       boxes: Tensor | None = None, guide: Tensor | None = None) -> Tensor:
    """The scores PAR starts from for one crop (steps 2-4 of the module's list, before PAR).

    Args:
        cams: ``[K, h, w]`` float GradCAM maps in [0, 1] of the image's K >= 1 classes (CLIP-ES scaling).
        attention: ``[N, hw, hw]`` (:func:`propagation_attention`).
        size: the crop's ``(S, S)`` (S = 16 h for ViT-B/16).
        seg_affinity: ``[hw, hw]`` the decoder's affinity for RFM, or None.
        boxes: ``[K, h, w]`` the maps' box masks when already made (:func:`vpltool.ops.affinity.box_masks` of a whole
            batch, on the device); None = made here.
        guide: ``[K, h, w]`` WeCLIP+'s decoder probabilities of the K classes (``clip_tool.py``'s ``seg_dino_cam``):
            each map is multiplied by its class's, and propagated without boxes.

    Returns:
        ``[1 + K, S, S]`` float32 in [0, 1]: background ``(1 - max_k)^1`` first, then each propagated map min-max
        scaled and bilinearly resized to the crop.
    """
    cams = cams.float()
    k, h, w = cams.shape
    trans = affinity(propagation_attention(attention, seg_affinity, mean_blocks, rfm_blocks), exact=True)
    if guide is not None:  # WeCLIP+: the CAMs weighted by the decoders' own probabilities, no box restriction
        cams, boxes = cams * guide.detach().float().to(cams.device), torch.ones_like(cams)
    elif boxes is None:  # CLIP-ES's scoremap2bbox (its border clipping included), on the device
        boxes = box_masks(cams.detach(), box_threshold, parity=True)
    boxes = boxes.to(trans.device).flatten(1)  # [K, hw]
    flat = cams.to(trans.device).flatten(1)  # [K, hw]
    refined = torch.stack([(trans * boxes[i][None]) @ flat[i] for i in range(k)]).view(k, h, w)
    refined = F.interpolate(minmax(refined)[None], size=size, mode="bilinear", align_corners=False)[0]
    return torch.cat([1 - refined.amax(0, keepdim=True), refined])  # background (1 - max)^1 first


def par_labels(images: Tensor, scores: Sequence[Tensor], classes: Sequence[Sequence[int]], iters: int = 20,
               dilations: Sequence[int] = PAR_DILATIONS) -> Tensor:
    """PAR of several crops' scores in one call, then each crop's arg-max as class ids.

    Args:
        images: ``[B, 3, S, S]`` the normalised crops; scores: B tensors ``[1 + K_b, S, S]``
            (:func:`online_crop_scores`); classes: the B crops' class ids (K_b each, in the order of their maps).

    Returns:
        ``[B, S, S]`` int64 labels in 0..C; a crop with no class is all background. The maps are padded with zeros
        to one K (PAR refines each map on its own: a crop's labels are those of a call of its own) and each crop's
        arg-max reads its own ``1 + K_b`` maps only.
    """
    size = images.shape[-2:]
    out = torch.zeros(len(scores), *size, dtype=torch.long, device=images.device)
    todo = [b for b, c in enumerate(classes) if len(c)]
    if not todo:
        return out
    width = max(len(scores[b]) for b in todo)
    stacked = torch.stack([F.pad(scores[b], [0, 0, 0, 0, 0, width - len(scores[b])]) for b in todo])
    with torch.no_grad():
        refined = par(images[todo].to(stacked.device), stacked, dilations, iters)
    for row, b in enumerate(todo):
        lut = torch.tensor([0, *classes[b]], dtype=torch.long, device=refined.device)
        out[b] = lut[refined[row, :len(scores[b])].argmax(0)]
    return out


def online_pseudo_mask(cams: Tensor, classes: Sequence[int], attention: Tensor, image: Tensor,
                       seg_affinity: Tensor | None = None, *, box_threshold: float = 0.4, mean_blocks: int = 8,
                       rfm_blocks: int = 6, par_iters: int = 20,
                       par_dilations: Sequence[int] = PAR_DILATIONS, boxes: Tensor | None = None,
                       guide: Tensor | None = None) -> Tensor:
    """WeCLIP's pseudo label of one training crop: :func:`online_crop_scores`, then :func:`par_labels`.

    Args:
        cams: ``[K, h, w]`` float GradCAM maps in [0, 1] of the image's K classes (CLIP-ES scaling).
        classes: the K class ids (1..C), in the order of ``cams``.
        attention: ``[N, hw, hw]`` (:func:`propagation_attention`).
        image: ``[3, S, S]`` the normalised crop the CLIP saw (S = 16 h for ViT-B/16).
        seg_affinity, boxes, guide: as :func:`online_crop_scores`'s.

    Returns:
        ``[S, S]`` int64 labels in 0..C (0 = background; no ignored pixel); all background when K = 0.
    """
    size = tuple(image.shape[-2:])
    if len(classes) == 0:
        return torch.zeros(size, dtype=torch.long, device=image.device)
    scores = online_crop_scores(cams, attention, size, seg_affinity, box_threshold=box_threshold,
                                mean_blocks=mean_blocks, rfm_blocks=rfm_blocks, boxes=boxes, guide=guide)
    return par_labels(image[None], [scores], [list(classes)], par_iters, par_dilations)[0]


# --------------------------------------------------------------------------------------------- affinity loss
def radius_mask(h: int, w: int, radius: int, device: torch.device | str = "cpu") -> Tensor:
    """``[hw, hw]`` bool: patch pairs at most ``radius`` rows and ``radius`` columns apart
    (``dist_clip_voc.py:get_mask_by_radius``)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)


def affinity_targets(labels: Tensor, grid: tuple[int, int], radius: int) -> Tensor:
    """Pair targets of the affinity loss (``utils/camutils.py:cams_to_affinity_label``).

    Args:
        labels: ``[B, S, S]`` int64 pseudo labels (255 = ignored).
        grid: the patch grid ``(h, w)``; labels are sampled at it by nearest neighbour.

    Returns:
        ``[B, hw, hw]`` int64: 1 = same label, 0 = different, 255 = outside the radius or an ignored patch.
    """
    small = F.interpolate(labels[:, None].float(), size=grid, mode="nearest").flatten(1)  # [B, hw]
    out = (small[:, :, None] == small[:, None, :]).long()
    out[:, ~radius_mask(*grid, radius, labels.device)] = IGNORE_INDEX
    ignored = small == IGNORE_INDEX
    out.masked_fill_(ignored[:, None, :] | ignored[:, :, None], IGNORE_INDEX)
    return out


def decoder_affinity(fused: Tensor) -> Tensor:
    """``sigmoid(F^T F)`` ``[B, hw, hw]`` of the fused decoder features ``F [B, dim, h, w]``
    (``model_attn_aff_voc.py:129-137``)."""
    flat = fused.float().flatten(2)
    return torch.sigmoid(flat.transpose(1, 2) @ flat)


def affinity_loss(pred: Tensor, targets: Tensor) -> Tensor:
    """``0.5 sum_pos (1 - a) / (n_pos + 1) + 0.5 sum_neg a / (n_neg + 1)`` over the batch (``utils/losses.py:
    get_aff_loss``); ``pred`` ``[B, hw, hw]`` in (0, 1), ``targets`` from :func:`affinity_targets`."""
    pos, neg = (targets == 1).float(), (targets == 0).float()
    return 0.5 * (pos * (1 - pred)).sum() / (pos.sum() + 1) + 0.5 * (neg * pred).sum() / (neg.sum() + 1)


def weclip_losses(logits: Tensor, fused: Tensor, labels: Tensor, radius: int = 8, lambda_aff: float = 0.1,
                  balanced: bool = True) -> dict[str, Tensor]:
    """WeCLIP's training loss of a batch: ``{"ce", "aff", "loss"}`` with ``loss = ce + lambda_aff aff``.

    Args:
        logits: ``[B, C + 1, h, w]`` the decoder's class scores; fused: ``[B, dim, h, w]`` its fused features.
        labels: ``[B, S, S]`` int64 online pseudo labels (:func:`online_pseudo_mask`).
        balanced: WeCLIP's mean of the background-pixel and foreground-pixel CE (else plain CE).
    """
    up = upsample_logits(logits, labels.shape[-2:])
    ce = balanced_ce_loss(up, labels) if balanced else ce_loss(up, labels)
    aff = affinity_loss(decoder_affinity(fused), affinity_targets(labels, tuple(fused.shape[-2:]), radius))
    return {"ce": ce, "aff": aff, "loss": ce + lambda_aff * aff}


def dice_loss(logits: Tensor, labels: Tensor, eps: float = 1e-7) -> Tensor:
    """WeCLIP+'s Dice loss (``WeCLIP_Plus/dice_loss.py``): ``1 - mean_c 2 sum(p_c y_c) / (sum(p_c + y_c) + eps)``,
    sums over the batch and the pixels, every class counted (absent ones too), 255 ignored.

    Args:
        logits: ``[B, C + 1, S, S]``; labels: ``[B, S, S]`` int64.
    """
    n = logits.shape[1]
    valid = (labels != IGNORE_INDEX)[:, None].float()
    onehot = F.one_hot(labels.masked_fill(labels == IGNORE_INDEX, n), n + 1)[..., :n].permute(0, 3, 1, 2).float()
    pred = F.softmax(logits.float(), dim=1)
    inter = (pred * valid * onehot).sum((0, 2, 3))
    union = (pred * valid + onehot * valid).sum((0, 2, 3))
    return 1 - (2 * inter / (union + eps)).mean()


def weclip_plus_losses(seg_clip: Tensor, seg_dino: Tensor, fused: Tensor, labels: Tensor, cfg: DecoderConfig,
                       it: int) -> dict[str, Tensor]:
    """WeCLIP+'s training loss (``WeCLIP+/scripts/dist_clip_voc.py:255-288``).

    ``seg`` = the mean of the two branches' logits, bilinearly upsampled; the affinity loss on the online labels;
    from ``cfg.self_label_from`` on, pixels where ``seg``'s softmax exceeds ``self_label_threshold`` take its arg-max
    as label; ``loss = ce(seg) + lambda_aff aff + lambda_cross (ce(clip, argmax dino) + ce(dino, argmax clip)) +
    lambda_dice dice(seg)`` (balanced CEs).

    Args:
        seg_clip, seg_dino: ``[B, C + 1, h, w]``; fused: ``[B, 2 dim, h, w]``; labels: ``[B, S, S]`` int64.
    """
    size = labels.shape[-2:]
    seg = upsample_logits(0.5 * seg_clip + 0.5 * seg_dino, size)
    clip_up, dino_up = upsample_logits(seg_clip, size), upsample_logits(seg_dino, size)
    label_clip, label_dino = clip_up.detach().argmax(1), dino_up.detach().argmax(1)
    aff = affinity_loss(decoder_affinity(fused), affinity_targets(labels, tuple(fused.shape[-2:]), cfg.aff_radius))
    if it >= cfg.self_label_from:
        confidence, predicted = F.softmax(seg.detach(), dim=1).max(1)
        labels = torch.where(confidence > cfg.self_label_threshold, predicted, labels)
    ce = balanced_ce_loss(seg, labels)
    dice = dice_loss(seg, labels)
    cross = balanced_ce_loss(clip_up, label_dino) + balanced_ce_loss(dino_up, label_clip)
    loss = ce + cfg.lambda_aff * aff + cfg.lambda_cross * cross + cfg.lambda_dice * dice
    return {"ce": ce, "aff": aff, "cross": cross, "dice": dice, "loss": loss}


# --------------------------------------------------------------------------------------------- the training step
def place(pixels: np.ndarray, extent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """WeCLIP's padding (``transforms.py:random_crop``): the image part of a crop (:func:`.data.augment`'s
    top-left ``extent``) moved to a random offset inside black padding; one more draw from the sample's ``rng``."""
    rows, cols = int(extent[0]), int(extent[1])
    side = pixels.shape[0]
    y, x = int(rng.integers(0, side - rows + 1)), int(rng.integers(0, side - cols + 1))
    out = np.zeros_like(pixels)
    out[y:y + rows, x:x + cols] = pixels[:rows, :cols]
    return out


class LabelledImages(torch.utils.data.Dataset):
    """Augmented crops per key ``(index, epoch)`` for online pseudo masks: ``(pixels [S, S, 3] uint8, index)``
    (the image labels stay with the run: ``items[index]``)."""

    def __init__(self, items: Sequence[tuple[str, Path, tuple[int, ...]]], cfg: DecoderConfig):
        self.items, self.cfg = list(items), cfg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, epoch = key
        image = io.load_image(self.items[index][1])
        rng = sample_rng(self.cfg.seed, epoch, index)
        pixels, _, extent = augment(image, np.zeros(image.shape[:2], np.uint8), rng, self.cfg)
        if self.cfg.padding == "black":
            pixels = place(pixels, extent, rng)
            extent = np.array(pixels.shape[:2], np.int32)  # nothing is refilled: the black is normalised as is
        return torch.from_numpy(pixels), torch.from_numpy(extent), torch.tensor(index)


def labelled_views(data: LabelledImages, plan, workers: int, device: torch.device, mean, std
                   ) -> Iterator[tuple[Tensor, list[tuple[int, ...]]]]:
    """``(pixels [B, 3, S, S] float32 normalised, the B images' labels)`` on ``device``, one per iteration."""
    loader = torch.utils.data.DataLoader(data, batch_sampler=plan, num_workers=workers if workers > 1 else 0,
                                         worker_init_fn=functools.partial(die_with_parent, os.getpid()))
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    for pixels, extent, index in loader:
        views = normalize_views(pixels.to(device), extent.to(device), mean, std)
        yield views, [data.items[i][2] for i in index.tolist()]


@dataclass
class FrozenOnline:
    """The frozen CLIP's pass over a batch of crops, for the decoder and the online masks.

    Attributes:
        feats: ``[B, L, h, w, width]`` the blocks the decoder reads.
        last_input: ``[B, n_prefix + hw, width]`` float32 tokens entering the last block (GradCAM re-runs it).
        attention: ``[B, n, hw, hw]`` float32 head-mean attention without CLS of the n blocks before the last.
    """

    feats: Tensor
    last_input: Tensor
    attention: Tensor
    grid: tuple[int, int]


@torch.no_grad()
def frozen_online(bb, pixels: Tensor, blocks: Sequence[int], maps: int, dtype: torch.dtype = torch.float32,
                  cam_input_back: int = 1) -> FrozenOnline:
    """Blocks ``0..L-2`` on ``pixels [B, 3, S, S]``, keeping ``blocks``' tokens and the last ``maps - 1`` blocks'
    attention (the last block's own map comes from GradCAM's forward of it). GradCAM's input is the output of block
    ``L-1-cam_input_back`` (WeCLIP: 1, the last block's own input; WeCLIP+'s code: 2, ``fts_all_stack[-2]``)."""
    stop = bb.n_blocks - 1
    n_prev = min(maps, bb.n_blocks) - 1
    first = max(0, stop - cam_input_back + 1)  # blocks first..stop-1 run after GradCAM's input is taken
    with contextlib.nullcontext() if dtype == torch.float32 else autocast(bb.device, dtype):
        enc = bb.encode(pixels, stop=first, attention_from=stop - n_prev, collect=[b for b in blocks if b < first])
        cam_input, x = enc.tokens, enc.tokens
        kept, attentions = list(enc.blocks), list(enc.attentions)
        for i in range(first, stop):
            need = i >= stop - n_prev
            x, attn, _ = bb.block(i, x, enc.grid, need_weights=need)
            if need:
                attentions.append(attn)
            if i in blocks:
                kept.append(x[:, bb.n_prefix:])
    feats = torch.stack(kept, 1).unflatten(2, enc.grid)
    hw = enc.grid[0] * enc.grid[1]
    n = bb.n_prefix  # the class token's row and column (none for SigLIP 2)
    attention = (torch.stack([a[:, n:, n:].float() for a in attentions], 1) if attentions
                 else pixels.new_zeros(len(pixels), 0, hw, hw))
    return FrozenOnline(feats, cam_input.float(), attention, enc.grid)


def online_masks(bb, frozen: FrozenOnline, labels: Sequence[Sequence[int]], rows: PrototypeRows,
                 temperature: float, pixels: Tensor, seg_affinity: Tensor | None, cfg: DecoderConfig,
                 guide: Tensor | None = None) -> Tensor:
    """``[B, S, S]`` int64 online pseudo labels of a batch (:func:`online_pseudo_mask`'s, PAR batched) from its frozen
    pass; ``seg_affinity`` ``[B, hw, hw]`` (RFM) or None; ``guide`` ``[B, C + 1, h, w]`` WeCLIP+'s decoder
    probabilities (each crop's CAMs weighted by its classes' channels) or None."""
    cam = bb.gradcam_batch(frozen.last_input, frozen.grid, rows.for_labels(labels), temperature, layer="input")
    boxes = box_masks(cam.maps, cfg.box_threshold, parity=True)  # every map's at once, no host round trip
    scores = []
    for b, classes in enumerate(labels):
        if not classes:
            scores.append(None)
            continue
        n = bb.n_prefix
        attention = torch.cat([frozen.attention[b], cam.attention[b][None, n:, n:].float()])
        scores.append(online_crop_scores(
            cam.image_maps(b), attention, tuple(pixels.shape[-2:]),
            None if seg_affinity is None else seg_affinity[b], box_threshold=cfg.box_threshold,
            mean_blocks=cfg.cam_blocks, rfm_blocks=cfg.rfm_blocks, boxes=boxes[cam.offsets[b]:cam.offsets[b + 1]],
            guide=None if guide is None else guide[b, list(classes)]))
    return par_labels(pixels, scores, [list(c) for c in labels], cfg.par_iters)  # the batch's PAR in one call


def online_step(model, optimizer: torch.optim.Optimizer, bb, blocks: Sequence[int], rows: PrototypeRows,
                temperature: float, pixels: Tensor, labels: Sequence[Sequence[int]], cfg: DecoderConfig, it: int,
                lr: float, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """One WeCLIP iteration (``dist_clip_voc.py``'s loop body): the frozen pass, the decoder, the online masks of
    the crops (RFM from ``cfg.rfm_from`` on, with the decoder's affinity of this very forward), the losses, one
    AdamW step. Returns the detached float32 losses (``ce``, ``aff``, ``loss``) on the device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    frozen = frozen_online(bb, pixels, blocks, max(cfg.cam_blocks, cfg.rfm_blocks), dtype, cfg.cam_input_back)
    inner = getattr(model, "module", model)
    if inner.dino_width is not None:  # WeCLIP+: the DINO branch beside the CLIP's
        dino = inner.dino_backbone
        tokens = dino.patch_tokens(dino.resized(pixels))
        with autocast(pixels.device, dtype):
            fused, seg_clip, seg_dino = inner.forward_plus(frozen.feats, tokens)
        guide = F.softmax(0.5 * seg_dino.float() + 0.5 * seg_clip.float(), dim=1).detach()
        seg_affinity = decoder_affinity(fused).detach() if it >= cfg.rfm_from else None
        targets = online_masks(bb, frozen, labels, rows, temperature, pixels, seg_affinity, cfg, guide)
        losses = weclip_plus_losses(seg_clip.float(), seg_dino.float(), fused.float(), targets, cfg, it)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        return {k: v.detach().float() for k, v in losses.items()}
    with autocast(pixels.device, dtype):
        fused, logits, _ = model(frozen.feats)
    seg_affinity = decoder_affinity(fused).detach() if it >= cfg.rfm_from else None
    targets = online_masks(bb, frozen, labels, rows, temperature, pixels, seg_affinity, cfg)
    losses = weclip_losses(logits.float(), fused.float(), targets, cfg.aff_radius, cfg.lambda_aff,
                           balanced=cfg.loss == "balanced")
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: v.detach().float() for k, v in losses.items()}

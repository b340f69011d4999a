"""RADSeg (``--dense radseg``; RADSeg-OVSS/RADSeg, ``radseg/radseg.py`` ``RADSegEncoder`` and
``evaluation/2d/radseg_segmentor.py``): open-vocabulary segmentation from one agglomerative model, C-RADIOv3, and
its SigLIP 2 language adaptor; no CLIP. Restated from a reading of its code.

One photo, ``[1, 3, H, W]`` normalised with OpenAI CLIP's statistics (the reference's mmseg preprocessor; RADIO's
own input conditioner made external):

1. :func:`stride_input`: resized bilinearly so both sides are multiples of the window stride (the longer side
   rounded up, the other scaled with it and rounded up, each at least the window), unless they are already
   (``_preprocess_image``, called with the stride as its patch);
2. mmseg's windows (:func:`~.segmentor.slide_windows`), two at a time (:data:`WINDOWS_A_FORWARD`), through C-RADIOv3
   whose last block's attention is the **self-correlating recursive attention** (:func:`scra`): the block's own
   attention output, projected, then split into heads again, each token's cosine with every other times
   ``scra_scale``, negatives dropped, softmax, applied to the block's values and projected again; RADIO's feature
   normaliser on the patch tokens; the windows' patch features summed on the photo's patch grid and divided by their
   count (:func:`window_features`);
3. the **self-correlating global aggregation** over the whole grid (:func:`scga`): cosine of every pair of patch
   features, less the mean of all of them, times ``scga_scale``, negatives dropped, softmax, applied to the features;
4. the language adaptor's summary head on each patch feature, its cosine with each query row, ``softmax(100 cos)``
   over the queries (:func:`query_probabilities`), resized bilinearly to the photo;
5. **prompt denoising** (the :meth:`Hooks.probabilities` hook): a query whose probability is below
   ``denoise_threshold`` at every pixel is set to 0, then the argmax.

The model (:class:`RadsegBackbone`) is the ``dino`` family's C-RADIOv3 (timm's ``naflexvit_*_radio_v3``, its
position table resized without ``align_corners``, as NVlabs/RADIO's hub code has done since 2025-06 and RADSeg runs
it) loaded from NVlabs/RADIO's checkpoint (``--proxy-weights``), the adaptor head and feature normaliser from the
same file, and SigLIP 2's text tower from a local folder (``--language-model``): :mod:`..backbones.radio`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ....errors import VplError
from ...backbones.fused_blocks import use_fused_blocks
from ...backbones.mkl_packed import pack_blocks
from ..hooks import DenseHooks
from ..mixing import DenseMixing
from ..segmentor import slide_windows, stride_multiple_input
from .files import check_widths, checked_files, note_text_files

PRESET = DenseMixing("radseg")  # no CLIP block is mixed: the name alone
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the reference's SegDataPreProcessor (its 0-255 values / 255)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class RadsegSettings:
    """RADSeg's settings as a run uses them (``RADSegEncoder.__init__``): the two scales (`segment`'s
    ``--scra-scale`` / ``--scga-scale``, :class:`vpltool.config.dense_knobs.RadsegKnobs`; eval.py's options) and its
    configs' constants."""

    scra_scale: float = 10.0  # scra_scaling: the last block's self-correlating attention
    scga_scale: float = 10.0  # scga_scaling: the global aggregation
    denoise_threshold: float = 0.5  # prompt_denoising_thresh (base_config.py): a query below it everywhere dropped
    adaptor: str = "siglip2"  # lang_model: the RADIO teacher whose summary head maps patches to the text space


def knobs_of(cfg) -> RadsegSettings:
    """The run's settings: ``cfg.knobs``'s scales (a :class:`~vpltool.config.SegmentConfig`'s) where given."""
    knobs = getattr(cfg, "knobs", None)
    given = {k: getattr(knobs, k) for k in ("scra_scale", "scga_scale") if getattr(knobs, k, None) is not None}
    return RadsegSettings(**given)


# ``_preprocess_image``: the sides made multiples of the window stride, as Trident's (one function for both)
stride_input = stride_multiple_input


def scra(attn, x: torch.Tensor, scale: float) -> torch.Tensor:
    """The self-correlating recursive attention in place of timm attention module ``attn`` on its input ``x``
    ``[B, N, C]`` (every token, prefix tokens included): ``o = proj(softmax(q kᵀ/√d) v)``; per head ``ô`` the unit
    rows of ``o``'s head slice, ``A = softmax(scale ô ôᵀ)`` with negative cosines dropped; ``proj(A v)``. The
    reference skips the module's q/k norms (identities in C-RADIOv3)."""
    b, n, c = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    first = F.scaled_dot_product_attention(q, k, v)  # [B, h, N, d]
    o = attn.proj(first.transpose(1, 2).reshape(b, n, c)).reshape(b, n, heads, c // heads).transpose(1, 2)
    unit = F.normalize(o, dim=-1)
    mixed = torch.stack([_correlate(unit[i], v[i], scale) for i in range(b)])
    return attn.proj(mixed.transpose(1, 2).reshape(b, n, c))


def _correlate(unit: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One window's recursive step: ``softmax(scale ûûᵀ) v`` ``[h, N, d]`` (negative cosines dropped) from its
    ``[h, N, d]`` unit rows ``û`` and values ``v``. A window at a time: its ``[h, N, N]`` scores (9.7 MB at ViT-B's
    449 tokens) stay one window's, where a batch's at once were the largest blocks of a photo's heap (58 MB, twice,
    at six windows); each window's products and softmax are the batched ones' bit for bit, and no slower."""
    # the scale inside the product (MKL's alpha) and the mask in place: two passes over [h, N, N] fewer
    sim = torch.baddbmm(unit.new_empty(()), unit, unit.transpose(-2, -1), beta=0.0, alpha=scale)
    return drop_negatives_(sim).softmax(-1) @ v


# the largest float32 below 0 (the negative of the least subnormal): ``x <= NEGATIVE`` is ``x < 0`` for every float32,
# -0.0 and NaN kept as ``x < 0`` keeps them (flushing subnormals to zero is off in torch unless asked)
NEGATIVE = -(2.0 ** -149)


def drop_negatives_(sim: torch.Tensor) -> torch.Tensor:
    """``sim.masked_fill_(sim < 0, -inf)`` in one pass over ``sim`` (``threshold_``: no boolean mask made and read
    back), the same bits; returns ``sim``."""
    return F.threshold_(sim, NEGATIVE, float("-inf"))


class ScraAttention(nn.Module):
    """:func:`scra` as the last block's attention module (the block keeps its residual, layer scale and MLP)."""

    def __init__(self, attn: nn.Module, scale: float):
        super().__init__()
        self.inner, self.scale = attn, float(scale)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return scra(self.inner, x, self.scale)


def scga(features: torch.Tensor, scale: float) -> torch.Tensor:
    """The self-correlating global aggregation of one photo's ``[N, C]`` patch features: ``S`` the cosine of every
    pair, ``A = softmax(scale (S - mean(S)))`` with negative entries dropped, ``A @ features``."""
    unit = F.normalize(features, dim=-1)
    sim = unit @ unit.T
    sim = sim.sub_(sim.mean()).mul_(scale)  # in place: the same bits as (sim - mean) * scale, no [N, N] copies
    return drop_negatives_(sim).softmax(-1) @ features


# the windows a forward of the backbone takes at most, outside reproducible mode: every photo's forwards then have the
# same shapes (two windows, one where a photo's count is odd), so the heap's blocks of one photo fit the next's
# whatever their sizes, the activations' peak is two windows' (a photo of six windows took all at once held 90 MB
# more, and its freed blocks left the heap larger for the photos after it), and MKL's packing of the qkv layers (made
# for one row count: backbones.mkl_packed) serves every photo. Each window's features are the same bits either way
# there (each row of MKL's products is its own sums: tests/test_radseg.py); reproducible mode's AVX2 kernels round a
# row apart by the rows beside it, so there all of a photo's windows go in one forward, as before
WINDOWS_A_FORWARD = 2


def window_features(bb, image: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Step 2 for one ``[1, 3, H, W]`` input: ``[C, h, w]`` patch features on its grid (``crop`` 0: the whole input
    at once, its sides multiples of the patch); the windows through the backbone :data:`WINDOWS_A_FORWARD` at a
    time, summed on the grid in the reference's order (:func:`_summed_tokens`). Reproducible mode keeps the
    reference's arithmetic: all windows in one forward, each normalised, summed channel-first
    (:func:`_summed_channels`)."""
    from ....runtime.numerics import reproducible_asked

    p = bb.patch_size
    if crop <= 0:
        return bb.patch_features(image)[0]
    image = stride_input(image, stride, crop)
    height, width = image.shape[-2:]
    boxes = slide_windows(height, width, crop, stride)
    if any(v % p for box in boxes for v in box):
        raise VplError(f"--dense radseg: windows {crop}/{stride} leave a window off the {p}-pixel patch grid; give "
                       f"a --slide-crop and --slide-stride that are multiples of {p}")
    grid = (math.ceil(height / p), math.ceil(width / p))
    if reproducible_asked():
        return _summed_channels(bb, image, boxes, grid)
    return _summed_tokens(bb, image, boxes, grid)


def _summed_tokens(bb, image: torch.Tensor, boxes: list, grid: tuple[int, int]) -> torch.Tensor:
    """The windows' raw patch tokens (:meth:`RadsegBackbone.patch_tokens`, :data:`WINDOWS_A_FORWARD` a forward)
    summed token-major on the ``grid``, divided by their count, then the feature normaliser once on the grid's
    tokens: affine, so the mean of the windows' normalised tokens, with the normaliser's product on the grid's
    tokens (a VOC photo's 980) instead of every window's (six windows' 2,646), and each window added as it comes out
    of the model, not through a channel-first view. ``[C, h, w]``, a view of ``[h, w, C]`` memory: its
    ``reshape(C, -1).T`` is contiguous."""
    p, full, count = bb.patch_size, None, None
    for i in range(0, len(boxes), WINDOWS_A_FORWARD):
        group = boxes[i:i + WINDOWS_A_FORWARD]
        tokens, (h, w) = bb.patch_tokens(torch.cat([image[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in group]))
        if full is None:
            full = tokens.new_zeros(*grid, tokens.shape[-1])
            count = tokens.new_zeros(*grid, 1)
        for t, (y0, y1, x0, x1) in zip(tokens, group):
            full[y0 // p:y1 // p, x0 // p:x1 // p] += t.view(h, w, -1)
            count[y0 // p:y1 // p, x0 // p:x1 // p] += 1
    full = bb.normalized(full.div_(count).view(-1, full.shape[-1]))
    return full.view(*grid, -1).permute(2, 0, 1)


def _summed_channels(bb, image: torch.Tensor, boxes: list, grid: tuple[int, int]) -> torch.Tensor:
    """The reference's order (reproducible mode): every window in one forward, each window's patch features
    normalised (:meth:`RadsegBackbone.patch_features`), summed channel-first, divided by their count."""
    p = bb.patch_size
    feats = bb.patch_features(torch.cat([image[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]))
    full, count = feats.new_zeros(feats.shape[1], *grid), feats.new_zeros(1, *grid)
    for f, (y0, y1, x0, x1) in zip(feats, boxes):
        full[:, y0 // p:y1 // p, x0 // p:x1 // p] += f
        count[:, y0 // p:y1 // p, x0 // p:x1 // p] += 1
    return full / count


def query_probabilities(bb, features: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``[C, h, w]`` aggregated patch features -> ``[Q, h, w]``: the adaptor head's output per patch, its cosine
    with each row of ``text`` ``[Q, D]``, ``softmax(logit_scale cos)`` over the queries."""
    from ....runtime.numerics import reproducible_asked

    c, h, w = features.shape
    mapped = F.normalize(bb.head(features.reshape(c, -1).T), dim=-1)  # [hw, D]
    cos = mapped @ F.normalize(text.to(mapped), dim=-1).T
    probs = (cos * logit_scale).softmax(-1).T
    # laid out query by query: the transposed view is channels-last to torch's resize, whose kernel then writes the
    # photo-sized result in that layout and copies it back (0.03 CPU-s a VOC photo, against 0.006). Reproducible
    # mode keeps the view: the two kernels' last bits differ
    return (probs if reproducible_asked() else probs.contiguous()).reshape(-1, h, w)


def radseg_probabilities(bb, pixels: torch.Tensor, text: torch.Tensor, size: tuple[int, int], settings,
                         knobs: RadsegSettings) -> torch.Tensor:
    """Steps 1-4 for one photo: ``[1, 3, H, W]`` -> ``[Q, H0, W0]`` float32 query probabilities at its ``size``."""
    feats = window_features(bb, pixels, settings.slide_crop, settings.slide_stride)
    c, h, w = feats.shape
    feats = scga(feats.reshape(c, -1).T, knobs.scga_scale).T.reshape(c, h, w)
    probs = query_probabilities(bb, feats, text, settings.logit_scale)
    return F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def denoised_labels(probs: torch.Tensor, query_class: torch.Tensor, n_classes: int, threshold: float,
                    prob_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 5: ``[Q, H0, W0]`` query probabilities -> (``[C, H0, W0]`` class probabilities, each class the max over
    its queries after the denoising; ``[H0, W0]`` int64 labels, the class of the pixel's top query (the reference's
    argmax over its prompts: where every query was dropped, its first), class 0 where that query's probability is
    below ``prob_threshold``)."""
    query_class = query_class.to(probs.device)
    keep = (probs.flatten(1).amax(1) >= threshold).to(probs.dtype)
    probs = probs * keep[:, None, None]
    top, best = probs.max(0)
    index = query_class.view(-1, 1, 1).expand_as(probs)
    out = probs.new_zeros(n_classes, *probs.shape[1:]).scatter_reduce_(0, index, probs, "amax", include_self=True)
    labels = query_class[best]
    return out, torch.where(top < prob_threshold, torch.zeros_like(labels), labels)


class RadsegBackbone:
    """The model RADSeg runs (module docstring): C-RADIOv3 (``dino``, a
    :class:`~vpltool.models.backbones.dino.DinoBackbone` whose last block's attention is :class:`ScraAttention`),
    its adaptor ``head``, its feature ``normalizer`` (``(mean, tx)`` or None) and SigLIP 2's ``text`` tower."""

    def __init__(self, dino, head: nn.Module, normalizer, text, hooks, scra_scale: float):
        self.dino, self.model, self.hooks, self.text = dino, dino.model, hooks, text
        last = self.model.blocks[-1]
        if not isinstance(last.attn, ScraAttention):
            last.attn = ScraAttention(last.attn, scra_scale)
        # the blocks' four linear layers hold a packed copy of their weights (MKL's or oneDNN's), 324 MiB beside them
        # at ViT-B: room the loading and the text tower made by giving back their file pages (dino_weights._load_mapped,
        # radio.SigLIP2Text.page_out; without it the worker had peaked above the reference's with all four packed:
        # bench/results/radseg_four_packed_3photos_intel_emerald_rapids.json)
        self.packed = pack_blocks(self.model)
        use_fused_blocks(self.model.blocks)  # residuals added in place outside reproducible mode (fused_blocks)
        self.device = dino.device
        self.head = head.to(self.device)
        self.normalizer = None if normalizer is None else tuple(t.to(self.device) for t in normalizer)
        self.patch_size, self.mean, self.std = dino.patch_size, OPENAI_MEAN, OPENAI_STD
        self.embed_dim = int(text.dim)
        self._stats = (torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1),
                       torch.tensor(self.std, device=self.device).view(1, 3, 1, 1))

    @property
    def preprocessor(self):
        from ....runtime.batches import cuda_paths
        from ...backbones.preprocess import Preprocess

        return Preprocess(self.mean, self.std, on_device=cuda_paths(self.device))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.preprocessor.normalize(pixels, self._stats)

    def pixels(self, loaded, size: tuple[int, int]) -> torch.Tensor:
        """As :meth:`vpltool.models.ClipBackbone.pixels`: loaded uint8 images -> ``[B, 3, H, W]`` normalised."""
        from ...backbones.model import ClipBackbone

        return ClipBackbone.pixels(self, loaded, size)

    @property
    def tokenizer(self):
        """SigLIP 2's tokenizer (Hugging Face's: it warns of no unknown word)."""
        return self.text.tokenizer

    def encode_text(self, prompts, exact: bool = False) -> torch.Tensor:
        """Prompts -> ``[N, D]`` float32 unit rows of SigLIP 2's text tower (``exact`` has no other path here)."""
        return F.normalize(self.text.encode(list(prompts)), dim=-1)

    def patch_tokens(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[n, 3, h*p, w*p]`` normalised windows -> (``[n, hw, C]`` float32 C-RADIOv3's patch tokens, its last
        block the SCRA, before the feature normaliser; ``(h, w)``)."""
        tokens = (windows.shape[-2] // self.patch_size) * (windows.shape[-1] // self.patch_size)
        for layer in self.packed:  # packed weights made before the forward's activations (mkl_packed.PackedLinear)
            layer.prepare(len(windows) * (tokens + self.dino.n_prefix))
        _, patches, grid = self.dino.summary_and_patches(windows)
        return patches.float(), grid

    def normalized(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` patch tokens through RADIO's feature normaliser (``(x - mean) txᵀ``; unchanged without one)."""
        if self.normalizer is None:
            return tokens
        mean, tx = self.normalizer
        return (tokens - mean) @ tx.T

    def patch_features(self, windows: torch.Tensor) -> torch.Tensor:
        """``[n, 3, h*p, w*p]`` normalised windows -> ``[n, C, h, w]`` C-RADIOv3's patch tokens (its last block the
        SCRA), through its feature normaliser."""
        patches, grid = self.patch_tokens(windows)
        return self.normalized(patches).transpose(1, 2).reshape(len(windows), -1, *grid)

    def to(self, device) -> RadsegBackbone:
        import copy

        clone = copy.copy(self)
        clone.dino, clone.device = self.dino.to(device), torch.device(device)
        clone.head, clone.text = self.head.to(device), self.text.to(device)
        clone.normalizer = None if self.normalizer is None else tuple(t.to(device) for t in self.normalizer)
        clone._stats = tuple(s.to(device) for s in self._stats)
        return clone


class Hooks(DenseHooks, method="radseg", preset=PRESET):
    """RADSeg's hooks: its own model (:meth:`backbone`), its segmentor (:func:`radseg_probabilities`) and its prompt
    denoising (:meth:`probabilities`)."""

    def check(self) -> None:
        note_text_files(checked_files(self.cfg, knobs_of(self.cfg).adaptor)[2])

    def record(self) -> dict:
        from ....io import file_identity
        from ...backbones.radio import describe, read_checkpoint

        chk = read_checkpoint(self.cfg.proxy_weights, shapes_only=True)
        folder = checked_files(self.cfg, knobs_of(self.cfg).adaptor)[2]
        texts = sorted(p for p in folder.iterdir() if p.is_file())
        return {"radio": describe(chk), "radseg": vars(knobs_of(self.cfg)),
                "language_model": {p.name: file_identity(p)["sha256"] for p in texts}}

    def backbone(self, device):
        from ...backbones.dino import DinoSpec
        from ...backbones.onednn import use_onednn
        from ...backbones.radio import RADIO_FIX, SigLIP2Text, feature_normalizer
        from ...registry import certify, load_model

        chk, head, folder = checked_files(self.cfg, knobs_of(self.cfg).adaptor)
        note_text_files(folder)  # read outside the registry's door: into the run's ledger all the same, before it loads
        knobs = knobs_of(self.cfg)
        # RADIO's hub code (RADSeg's torch.hub.load) resizes the position table without align_corners; the dino
        # family's load through the registry's door, and the weights rule on the adaptor's head and the text tower
        dino = load_model("dino", DinoSpec(self.cfg.proxy_model, self.cfg.proxy_weights), device,
                          pos_embed_align_corners=False)
        certify(head, str(chk.path), RADIO_FIX)
        text = certify(SigLIP2Text(folder, device), str(folder), "pass a local folder of "
                       "google/siglip2-giant-opt-patch16-384 (re-download it)")
        check_widths(chk, knobs.adaptor, head, folder, text.dim)  # the loaded config's, defaults included
        # fp32 on the CPU, the linear layers (~80 % of a photo's time) on oneDNN's route (each shape oneDNN's where
        # this machine's calibration finds it faster: 2.2 times MKL's rate on bench/results/radseg.json's EPYC, 1.1
        # on a Zen 4)
        use_onednn(head, text.model)  # the DINO's: the dino family converts its own (DinoBackbone)
        return RadsegBackbone(dino, head, feature_normalizer(chk), text, self, knobs.scra_scale)

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        from ....runtime.heap import KEEP_FREED, keep_freed_memory

        # a photo's activations (11 MB a block's MLP, 15 MB its probabilities: above glibc's mmap threshold) reuse
        # the last photo's pages rather than being faulted in and zeroed anew (the kernel's time, in CPU-seconds)
        keep_freed_memory(KEEP_FREED, KEEP_FREED)
        knobs = knobs_of(self.cfg)
        return [radseg_probabilities(bb, pixels[i:i + 1], text, size, settings, knobs)
                for i, size in enumerate(sizes)]

    def features(self, bb, pixels, fp16_pos=False):
        raise VplError("--dense radseg has no CLIP features: it segments through segment or vpltool.segmenter")

    def probabilities(self, bb, logits, query_class, n_classes, settings):
        return denoised_labels(logits, query_class, n_classes, knobs_of(self.cfg).denoise_threshold,
                               settings.prob_threshold)


__all__ = ["Hooks", "PRESET", "RadsegSettings", "knobs_of", "stride_input", "scra", "ScraAttention",
           "scga", "WINDOWS_A_FORWARD", "window_features", "query_probabilities", "radseg_probabilities",
           "denoised_labels", "RadsegBackbone", "OPENAI_MEAN", "OPENAI_STD"]

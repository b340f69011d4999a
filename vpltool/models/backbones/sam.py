"""SAM (Kirillov et al., ICCV 2023) as a model family: the ``segment-anything`` package's ``ImageEncoderViT``, built
with ``sam_model_registry``'s shapes, its weights read offline from a local file; with ``SamSpec.prompt`` also its
``PromptEncoder`` and ``MaskDecoder`` (Trident's ``--sam-refine``: :mod:`vpltool.models.dense.sam_refine`).

Trident (``--dense trident``) takes two things from it: the last block's global self-attention
``softmax(q kᵀ scale + rel_pos)`` per head and that block's values, both on SAM's own ``S/16 x S/16`` patch grid
(``S`` = 1024 for the released models), as Trident's patched copy of the package exposes them (``last_attn``,
``last_v``). :meth:`SamEncoder.last_attention` recomputes them from the installed package's modules, with the same
arithmetic; :meth:`SamEncoder.features` is the encoder's own output (the neck's 256 channels).

SAM 2 (``--sam-model sam2...``) is refused in one line (:data:`SAM2_REFUSAL`): its Hiera encoder has no counterpart of
that attention, and the methods built on SAM 2 read its masks, which CorrCLIP's ``--region-masks sam2:CONFIG`` runs
(``pip install -e '.[sam2]'`` in vpltool's checkout).

Weights: SAM's released checkpoints (``sam_vit_b_01ec64.pth``: the whole Sam, whose ``image_encoder.`` tensors are
taken, and its prompt encoder and mask decoder when ``prompt`` is set, else dropped), a file of the encoder's
tensors alone (not with ``prompt``: one line), or ``none`` (seeded random: tests and parity). A file of another
architecture, or of another SAM size, is one line (:func:`check_sam`), raised before any model is built; nothing
loads as a random model in its place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...config import licences
from ...errors import VplError
from ...io import check_weights, is_regular_file, not_a_file, read_weights
from ..registry import register_family


@dataclass(frozen=True)
class SamArch:
    """An ``ImageEncoderViT``'s shape (``segment_anything.build_sam``'s ``_build_sam`` arguments)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    window_size: int = 14
    out_chans: int = 256  # the neck's channels = the prompt embedding's (``prompt_embed_dim``)
    # the prompt encoder's and mask decoder's shapes (``_build_sam``: mask_in_chans 16, TwoWayTransformer depth 2,
    # mlp_dim 2048, 8 heads, iou head 256 wide)
    mask_in_chans: int = 16
    decoder_mlp: int = 2048
    decoder_heads: int = 8
    iou_hidden: int = 256


# build_sam.py's three sizes; "test": a tiny encoder of the same code for the test suite (256 px, 16x16 patches);
# "toy": the demo world's trained toy
SAM_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "test": SamArch(32, 2, 2, (1,), img_size=256, window_size=4, out_chans=16, mask_in_chans=4, decoder_mlp=32,
                    decoder_heads=2, iou_hidden=16),
    # the toy SAM of the demo world (vpltool/assets/toy-sam, `train-toy-sam`): a 96-px scene is resized to 192, a
    # 12x12 grid (the toy CLIP's); windows of 6, the last block global (Trident's aggregation reads it)
    "toy": SamArch(64, 4, 4, (1, 3), img_size=192, window_size=6, out_chans=64, mask_in_chans=8, decoder_mlp=256,
                   decoder_heads=4, iou_hidden=64),
}
PIXEL_MEAN = (123.675, 116.28, 103.53)  # Sam's pixel_mean / pixel_std (0..255 RGB)
PIXEL_STD = (58.395, 57.12, 57.375)
PATCH = 16
OTHER_PARTS = ("prompt_encoder.", "mask_decoder.")  # a whole Sam checkpoint's tensors beside the encoder's
FIX = "pass SAM's released checkpoint of that size (e.g. sam_vit_b_01ec64.pth for vit_b) to --sam-weights"
PROMPT_FIX = ("--sam-refine prompts SAM's mask decoder: pass SAM's whole released checkpoint (e.g. "
              "sam_vit_b_01ec64.pth) to --sam-weights, or drop --sam-refine")


@dataclass(frozen=True)
class SamSpec:
    """Which SAM encoder: ``model`` one of :data:`SAM_ARCHS`; ``weights`` a local file | ``none`` (seeded random)."""

    model: str = "vit_b"
    weights: str = "none"
    prompt: bool = False  # also the prompt encoder and mask decoder (Trident's --sam-refine)


def import_sam():
    """``segment_anything``, imported without ``torch._dynamo`` (which its torchvision import would pull in, most of
    the import's time; :func:`~.open_clip_import.import_deferring_dynamo`), or one line naming the fix. Call it
    before any other import of segment-anything in the process (:func:`check_sam` does)."""
    from .open_clip_import import import_deferring_dynamo

    try:
        return import_deferring_dynamo("segment_anything")
    except ImportError:
        raise VplError("the sam family needs the segment-anything package, which is not installed: "
                       "pip install segment-anything") from None


def _build(arch: SamArch):
    """``ImageEncoderViT`` exactly as ``_build_sam`` builds it (on the current default device)."""
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size, mlp_ratio=4,
                           norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads,
                           patch_size=PATCH, qkv_bias=True, use_rel_pos=True,
                           global_attn_indexes=arch.global_attn_indexes, window_size=arch.window_size,
                           out_chans=arch.out_chans)


def _build_prompt(arch: SamArch):
    """``PromptEncoder`` and ``MaskDecoder`` exactly as ``_build_sam`` builds them (on the current default device)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    grid = arch.img_size // PATCH
    prompt = PromptEncoder(embed_dim=arch.out_chans, image_embedding_size=(grid, grid),
                           input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans)
    decoder = MaskDecoder(num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=arch.out_chans,
                                                        mlp_dim=arch.decoder_mlp, num_heads=arch.decoder_heads),
                          transformer_dim=arch.out_chans, iou_head_depth=3, iou_head_hidden_dim=arch.iou_hidden)
    return prompt, decoder


def _prompt_state(path: Path, spec: SamSpec, expected: dict[str, torch.Tensor], shapes_only: bool
                  ) -> dict[str, Any]:
    """The file's ``prompt_encoder.`` and ``mask_decoder.`` tensors under those prefixes, exactly ``expected``'s
    keys and shapes; a file without them (an encoder-only file) is one line (:data:`PROMPT_FIX`)."""
    state = read_weights(path, shapes_only, FIX)
    state = {k: v for k, v in state.items() if k.startswith(OTHER_PARTS)}
    if not state:
        raise VplError(f"{path}: holds SAM's image encoder only (no prompt encoder, no mask decoder); {PROMPT_FIX}")
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    bad = [k for k in sorted(set(state) & set(expected))
           if (tuple(state[k]) if shapes_only else tuple(state[k].shape)) != tuple(expected[k].shape)]
    if missing or unknown or bad:
        first = (missing or unknown or bad)[0]
        raise VplError(f"{path}: not the SAM {spec.model} prompt encoder and mask decoder ({len(missing)} tensors "
                       f"missing, {len(unknown)} unknown, {len(bad)} of another shape; first {first!r}); {FIX}")
    if not shapes_only:  # the tensors themselves, as they load: dtypes and finite values
        check_weights(path, state, expected, FIX)
    return state


# SAM 2 has no place in Trident's aggregation: its Hiera encoder is hierarchical (pooled stages, windowed blocks
# around a few global ones) and has no "last global attention on the prompt grid" Trident reads of SAM's ViT; the
# methods that use SAM 2 take its masks alone (TextRegion @ e392cd2, TextRegionSegmenter.py L92-108 and L544: its
# automatic mask generator; CorrCLIP @ 103bc18, CorrCLIPv1/corrclip_segmentor.py L263-276), which vpltool runs as
# CorrCLIP's --region-masks sam2:CONFIG (vpltool.models.dense.corrclip.regions)
SAM2_REFUSAL = ("SAM 2's Hiera encoder has no counterpart of the last global attention Trident reads of SAM's ViT "
                "(the methods built on SAM 2 take its masks alone); pass --sam-model vit_b, vit_l or vit_h (SAM), "
                "or use SAM 2 for CorrCLIP's regions: --dense corrclip --region-masks sam2:CONFIG")


# SAM 3 neither: its concept model (the sam3 family) reads text and boxes; the point and mask prompts of Trident's
# --sam-refine are its tracker's (SAM 2's design), and Trident's aggregation reads a SAM ViT's last block on SAM's
# input; the methods that take SAM's masks take SAM 3's through --region-masks sam3
SAM3_REFUSAL = ("SAM 3 is its own family (sam3): its concept model reads text and boxes, not the point, box and mask "
                "prompts of Trident's refinement, nor is its ViT SAM's; pass --sam-model vit_b, vit_l or vit_h (SAM), "
                "or use SAM 3 for the region masks: --dense corrclip --region-masks sam3 --sam-weights SAM3")


def _arch(spec: SamSpec) -> SamArch:
    if spec.model.lower().startswith("sam2"):
        raise VplError(f"--sam-model {spec.model}: {SAM2_REFUSAL}")
    if spec.model.lower().startswith("sam3"):
        raise VplError(f"--sam-model {spec.model}: {SAM3_REFUSAL}")
    if spec.model not in SAM_ARCHS:
        raise VplError(f"--sam-model {spec.model!r} is not a SAM encoder; choose one of {', '.join(SAM_ARCHS)}")
    return SAM_ARCHS[spec.model]


def _encoder_state(path: Path, spec: SamSpec, expected: dict[str, torch.Tensor], shapes_only: bool
                   ) -> dict[str, Any]:
    """The file's encoder tensors under ``ImageEncoderViT``'s names: a whole Sam checkpoint's ``image_encoder.``
    part (its prompt encoder and mask decoder dropped) or the encoder's own; exactly ``expected``'s keys and
    shapes, else one line."""
    state = read_weights(path, shapes_only, FIX)
    if any(k.startswith("image_encoder.") for k in state):
        others = [k for k in state if not k.startswith(("image_encoder.", *OTHER_PARTS))]
        if others:
            raise VplError(f"{path}: not a SAM checkpoint ({len(others)} tensors outside image_encoder / "
                           f"prompt_encoder / mask_decoder, first {others[0]!r}); {FIX}")
        state = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        parts = [f"{len(missing)} of its tensors missing (first: {missing[0]!r})" if missing else "",
                 f"{len(unknown)} unknown (first: {unknown[0]!r})" if unknown else ""]
        raise VplError(f"{path}: not weights of the SAM {spec.model} image encoder "
                       f"({'; '.join(p for p in parts if p)}); {FIX}")
    for key, value in sorted(state.items()):
        shape = tuple(value) if shapes_only else tuple(value.shape)
        if shape != tuple(expected[key].shape):
            raise VplError(f"{path}: tensor {key!r} is {list(shape)}, the SAM {spec.model} encoder's is "
                           f"{list(expected[key].shape)} (another SAM size?); {FIX}, or the --sam-model it "
                           "belongs to")
    if not shapes_only:  # the tensors themselves, as they load: dtypes and finite values
        check_weights(path, state, expected, FIX)
    return state


def check_sam(spec: SamSpec) -> str | None:
    """Refuse at once (one line), before any model is built: an unknown ``--sam-model``, the package missing, a
    weights file that is missing, unreadable, or holds another architecture (names or shapes; read lazily, nothing
    of the encoder allocated). Returns the file to load, or None for random weights."""
    arch = _arch(spec)
    import_sam()
    if spec.weights == "none":
        return None
    path = Path(spec.weights).expanduser()
    if not is_regular_file(path):
        raise not_a_file(path, "SAM weights", FIX)
    with torch.device("meta"):
        expected = _build(arch).state_dict()
    _encoder_state(path, spec, expected, shapes_only=True)
    if spec.prompt:
        # built for real, not on the meta device, whose random initialisers (the decoder's embeddings) import
        # torch._dynamo; the two modules are small beside the encoder, and the process's random state is kept
        with torch.random.fork_rng(devices=[]):
            prompt, decoder = _build_prompt(arch)
        _prompt_state(path, spec, _prefixed(prompt, decoder), shapes_only=True)
    return str(path)


def _prefixed(prompt, decoder) -> dict[str, torch.Tensor]:
    """The two modules' tensors under a whole Sam's names (``prompt_encoder.``, ``mask_decoder.``)."""
    return {**{f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()},
            **{f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()}}


def load_sam(spec: SamSpec, device: torch.device | str = "cpu") -> SamEncoder:
    """The frozen :class:`SamEncoder` of ``spec``: checked first (:func:`check_sam`), built seeded (the same
    random model in every process when ``weights`` is ``none``), a weights file loaded strictly."""
    weights = check_sam(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _build(_arch(spec))
        prompt, decoder = _build_prompt(_arch(spec)) if spec.prompt else (None, None)
    if weights is not None:
        model.load_state_dict(_encoder_state(Path(weights), spec, model.state_dict(), shapes_only=False), strict=True)
        if prompt is not None:
            state = _prompt_state(Path(weights), spec, _prefixed(prompt, decoder), shapes_only=False)
            for name, module in (("prompt_encoder.", prompt), ("mask_decoder.", decoder)):
                module.load_state_dict({k[len(name):]: v for k, v in state.items() if k.startswith(name)},
                                       strict=True)
    return SamEncoder(model, torch.device(device), spec, prompt, decoder)


def sam_input(image: np.ndarray, img_size: int, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, tuple[int, int]]:
    """SamPredictor's ``set_image`` input: ``[H, W, 3]`` uint8 RGB -> (``[1, 3, S, S]`` float32, the image
    resized so its long side is ``S`` = ``img_size`` (``ResizeLongestSide``: PIL bilinear), normalised with SAM's
    pixel mean and std, zero-padded bottom and right; ``(h, w)`` the grid of patches the image covers: the resized
    sides ``// 16``, as Trident's ``sam_valid_h``, ``sam_valid_w``)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(img_size).apply_image(np.ascontiguousarray(image))
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    mean = torch.tensor(PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(-1, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    x = F.pad(x, (0, img_size - w, 0, img_size - h))
    return x, (h // PATCH, w // PATCH)


class SamEncoder:
    """A frozen SAM ``ImageEncoderViT`` and SAM's input transform; with ``prompt_encoder`` and ``mask_decoder``
    (``SamSpec.prompt``) also SamPredictor's ``predict_torch`` (:meth:`predict`)."""

    def __init__(self, model, device: torch.device, spec: SamSpec | None = None, prompt_encoder=None,
                 mask_decoder=None):
        self.model = model.eval().requires_grad_(False).to(device)
        self.prompt_encoder = None if prompt_encoder is None else prompt_encoder.eval().requires_grad_(False).to(device)
        self.mask_decoder = None if mask_decoder is None else mask_decoder.eval().requires_grad_(False).to(device)
        self.spec, self.device = spec, device
        self.img_size = int(model.img_size)
        self.patch_size = PATCH
        self.num_heads = int(model.blocks[-1].attn.num_heads)

    def to(self, device: torch.device | str) -> SamEncoder:
        """This encoder (and its prompt encoder and mask decoder) on ``device``, moved in place as
        ``nn.Module.to``; a copy of the wrapper says where."""
        clone = copy.copy(self)
        clone.device = torch.device(device)
        for part in (self.model, self.prompt_encoder, self.mask_decoder):
            if part is not None:
                part.to(clone.device)
        return clone

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """SamPredictor's ``set_image`` input of ``image`` (:func:`sam_input` at this encoder's side)."""
        return sam_input(image, self.img_size, self.device)

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` (:meth:`prepare`) -> ``[B, out_chans, S/16, S/16]``: the encoder's output (its neck)."""
        return self.model(pixels.to(self.device))

    @torch.no_grad()
    def last_attention(self, pixels: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, ...]:
        """The last block's global attention and values (Trident's ``last_attn``, ``last_v``).

        Args:
            pixels: ``[B, 3, S, S]`` float32 (:meth:`prepare`).
            features: also finish the last block and the neck (one pass for Trident's aggregation and its
                ``--sam-refine``, which prompts the mask decoder with the same image).

        Returns:
            ``[B, heads, N, N]`` float32 ``softmax(q kᵀ scale + decomposed rel-pos)`` (rows sum to 1, ``N`` =
            ``(S/16)²``) and ``[B, heads, S/16, S/16, hd]`` the values; with ``features`` third the encoder's output
            ``[B, out_chans, S/16, S/16]`` (:meth:`features`), else the rest of the last block and the neck are not
            run.
        """
        from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

        m = self.model
        last = m.blocks[-1]
        if last.window_size > 0:
            name = self.spec.model if self.spec else "this encoder"
            raise VplError(f"--sam-model {name}: its last block attends within windows; Trident takes a global "
                           "last block (every released SAM size has one)")
        x = m.patch_embed(pixels.to(self.device))
        if m.pos_embed is not None:
            x = x + m.pos_embed
        for blk in m.blocks[:-1]:
            x = blk(x)
        shortcut = x
        x = last.norm1(x)
        attn = last.attn
        b, h, w, _ = x.shape
        qkv = attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * attn.num_heads, h * w, -1).unbind(0)
        weights = (q * attn.scale) @ k.transpose(-2, -1)
        if attn.use_rel_pos:
            weights = add_decomposed_rel_pos(weights, q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
        weights = weights.softmax(dim=-1)
        out = (weights.view(b, attn.num_heads, h * w, h * w), v.view(b, attn.num_heads, h, w, -1))
        if not features:
            return out
        # the rest of the package's Block and Attention forward: heads joined, proj, residual, MLP; then the neck
        mixed = (weights @ v).view(b, attn.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        x = shortcut + attn.proj(mixed)
        x = x + last.mlp(last.norm2(x))
        return (*out, m.neck(x.permute(0, 3, 1, 2)))

    @torch.no_grad()
    def predict(self, features: torch.Tensor, points: torch.Tensor | None, boxes: torch.Tensor | None,
                mask: torch.Tensor | None, input_size: tuple[int, int], original_size: tuple[int, int],
                labels: torch.Tensor | None = None, multimask: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SamPredictor's ``predict_torch``: by default (Trident's call) one positive point, a box and a mask prompt
        each, one mask out (``multimask_output=False``).

        Args:
            features: ``[1, out_chans, S/16, S/16]`` the image's encoding (:meth:`last_attention`).
            points: ``[N, P, 2]`` float32 ``(x, y)`` in SAM's input frame, or None; boxes ``[N, 4]`` ``x0, y0, x1,
                y1`` likewise, or None.
            mask: the mask prompt as the prompt encoder takes it (``[1, 4S/16, 4S/16]`` in Trident's call: see
                :func:`vpltool.models.dense.sam_refine.refine`), or None.
            input_size: the image's ``(h, w)`` in SAM's input (resized, before padding); original_size the
                image's own.
            labels: ``[N, P]`` the points' labels (1 foreground, 0 background); None: all foreground.
            multimask: the decoder's three masks (``multimask_output=True``: what a single prompt asks for).

        Returns:
            ``[N, M, H, W]`` float32 mask logits at ``original_size`` (``postprocess_masks``; > 0 is the mask; M = 3
            with ``multimask``, else 1), ``[N, M]`` float32 the predicted IoU, ``[N, M, 4S/16, 4S/16]`` the
            low-resolution logits.
        """
        if self.prompt_encoder is None or self.mask_decoder is None:
            raise VplError(f"this SAM was loaded without its prompt encoder and mask decoder; {PROMPT_FIX}")
        point_prompt = None
        if points is not None:
            labels = torch.ones(points.shape[:2]) if labels is None else labels
            point_prompt = (points.to(self.device), labels.to(self.device))
        sparse, dense = self.prompt_encoder(points=point_prompt, boxes=None if boxes is None else boxes.to(self.device),
                                            masks=None if mask is None else mask.to(self.device))
        low, iou = self.mask_decoder(image_embeddings=features.to(self.device),
                                     image_pe=self.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                     dense_prompt_embeddings=dense, multimask_output=multimask)
        up = F.interpolate(low, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        up = up[..., : input_size[0], : input_size[1]]
        return F.interpolate(up, tuple(original_size), mode="bilinear", align_corners=False), iou, low


def _check(spec: SamSpec) -> None:
    check_sam(spec)


def _files(spec: SamSpec) -> list[Path]:
    """The weights file a spec names (none for random weights)."""
    return [] if spec.weights == "none" else [Path(spec.weights).expanduser()]


register_family("sam", load_sam, _check, summary="SAM (segment-anything): its encoder's last global attention; with "
                "SamSpec.prompt its prompt encoder and mask decoder",
                module=__name__, files=_files, fix=FIX, licence=licences.SAM_FAMILY)

__all__ = ["SAM_ARCHS", "SamArch", "SamSpec", "SamEncoder", "check_sam", "load_sam", "sam_input"]

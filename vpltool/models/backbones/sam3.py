"""SAM 3 (Carion et al., ICLR 2026) as a model family: transformers' ``Sam3Model``, the concept-prompted detector
and segmenter, its weights read offline from Hugging Face's layout or Meta's ``sam3.pt``
(:mod:`.sam3_weights`, :mod:`.sam3_files`), and the calls that Meta's ``Sam3Processor`` (and ActiveSAM's bucketed
processor over it) make, written once (:class:`Sam3`):

* :meth:`Sam3.prepare`: a photo as Meta's processor feeds it (resized to ``S x S``, ``S`` = 1008, torchvision's
  bilinear resize with antialiasing on the uint8 image, then ``(x / 255 - 0.5) / 0.5``);
* :meth:`Sam3.encode_image`: the image's state, once (its FPN levels and their position encodings); any side that
  is a multiple of the patch (ActiveSAM's 672 px preview), the global layers' RoPE positions rescaled as Meta's ViT
  rescales them (``window / grid``);
* :meth:`Sam3.encode_text`: K concept prompts at once, through CLIP's tokenizer (open_clip's BPE, Meta's vocabulary)
  and the text tower without a padding mask (as Meta's, causal only);
* :meth:`Sam3.ground`: the K prompts against the cached image (Meta's ``forward_grounding``): the prompt is the text
  tokens, any extra tokens appended (:meth:`Sam3Text.with_tokens`: ActiveSAM's context memory) and the geometry
  encoder's token of an empty geometric prompt (Meta's ``_encode_prompt``; transformers' text-only forward leaves it
  out: ``geometry_token``), then the DETR encoder and decoder, the scores, and, unless ``masks`` is False
  (ActiveSAM's presence preview), the segmentation head;
* :meth:`Sam3.concepts`: the grounding at the photo's size as Meta's ``_forward_grounding`` post-processes it (the
  object scores times the presence, the masks kept above the confidence threshold, sigmoid probabilities);
  :meth:`Sam3.segment` all of it for one photo and a list of prompts, in buckets.

How the model mixes its tokens (the extra tokens, the geometry token, the head skipped, the side) are parameters of
these calls, never a second forward. Weights are identified by content (:func:`sam3_identity`) and, as every family's,
certified finite by the registry when they load.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...config import licences
from ...errors import VplError, install_extra
from ..registry import register_family
from .sam3_files import check_state, identity, read_config, read_state
from .sam3_states import Sam3Concept, Sam3Grounding, Sam3Image, Sam3Text
from .sam3_weights import FIX, GET, Sam3Files, locate, sam3_config

MEAN, STD = 0.5, 0.5  # Meta's Sam3Processor: Normalize(mean=[0.5] * 3, std=[0.5] * 3) after /255
CONFIDENCE = 0.5  # Meta's Sam3Processor's confidence_threshold default
BUCKET = 8  # prompts grounded at once by Sam3.segment (their masks: [K, 200, 288, 288] float32, 66 MB a prompt)
# prompts through the segmentation head at once: its pixel decoder is each prompt's own ([256, 288, 288] float32
# tensors, 85 MB each, several alive), so a bucket's at once would take gigabytes; one at a time, as Meta's processor
MASK_PROMPTS = 1
# how the head's pixel decoder convolves in fp32 fast mode (sam3_fast.HEAD_CONVS): its finest stage channels-last, as
# Meta's channels-last levels make it, so its mask logits round as Meta's (parity/sam3_parity.py's bar), one prompt at
# a time
HEAD_CONV = "channels_last"


@dataclass(frozen=True)
class Sam3Spec:
    """Which SAM 3: ``weights`` a folder of Hugging Face's layout, Meta's ``sam3.pt`` (or its folder), or a
    ``model.safetensors`` beside its ``config.json``."""

    weights: str


def import_transformers():
    try:
        from transformers import Sam3Model
    except ImportError:
        raise VplError(f"SAM 3 needs transformers with Sam3Model (5.x): {install_extra('sam3')}") from None
    return Sam3Model


_EXPECTED: dict[str, dict[str, torch.Tensor]] = {}  # by configuration (a process checks one several times)


def _expected(config) -> dict[str, torch.Tensor]:
    """The architecture's tensors (shapes only, nothing allocated), built once a process per configuration."""
    from transformers.initialization import no_init_weights

    key = config.to_json_string(use_diff=False)
    if key not in _EXPECTED:  # no init: even on the meta device each fill went through torch's device mode in Python
        with torch.device("meta"), no_init_weights():
            _EXPECTED[key] = import_transformers()(copy.deepcopy(config)).state_dict()
    return dict(_EXPECTED[key])


def check_sam3(spec: Sam3Spec) -> tuple[Sam3Files, Any]:
    """Refuse at once (one line), before any model is built: the package missing, weights missing, unreadable, or of
    another architecture (names and shapes against what the configuration builds; a torch file's index, nothing of
    the weights read). Returns the files and the configuration."""
    import_transformers()
    files = locate(spec.weights)
    config = sam3_config(read_config(files), files.config or files.weights[0])
    check_state(_where(files), read_state(files, shapes_only=True), _expected(config))
    return files, config


def _where(files: Sam3Files) -> Path:
    return files.weights[0] if len(files.weights) == 1 else files.weights[0].parent


def load_sam3(spec: Sam3Spec, device: torch.device | str = "cpu") -> Sam3:
    """The frozen :class:`Sam3` of ``spec``: checked first (:func:`check_sam3`), built without random
    initialisation, then every tensor loaded strictly (names, shapes, dtypes, finite values: one line naming the
    file). Under a bf16/fp16 autocast on ``device`` (``--precision``) its linear and convolution weights are read
    straight into that dtype a tensor at a time (:mod:`.sam3_half`): the fp32 weights never held whole."""
    from transformers.initialization import no_init_weights

    from ...io import check_weights, sha256_file
    from .sam3_half import autocast_dtype, load_dtypes

    files, config = check_sam3(spec)
    loaded = {str(f): sha256_file(f) for f in files.files}  # what follow_autocast reads back must be these bytes
    with no_init_weights():  # its own tensors allocated, never written: not resident (the read ones replace them)
        model = import_transformers()(config)
    held = autocast_dtype(torch.device(device))
    state = read_state(files, shapes_only=False, dtype_of=None if held == torch.float32 else load_dtypes(model, held))
    check_weights(_where(files), state, model.state_dict(), FIX)
    # the read tensors become the parameters (assign): the model's own, allocated uninitialised, are never written,
    # so the weights are resident once, not twice while they are copied (3.4 GB each in fp32 at full size)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    sam = Sam3(model, torch.device(device), spec)
    sam.loaded, sam.held = loaded, held
    return sam


def sam3_identity(spec: Sam3Spec) -> dict[str, Any]:
    """The weights ``spec`` names by content (:func:`.sam3_files.identity`): what a record keeps."""
    return identity(locate(spec.weights))


# ----------------------------------------------------------------------------------------------- the model
class Sam3:
    """A frozen SAM 3 (transformers' ``Sam3Model``) and the calls Meta's processor makes on it (module
    docstring). ``image_size`` (1008), ``patch`` (14), ``context`` (32 tokens), ``queries`` (200), ``width`` (the
    DETR's, 256); ``head_conv`` how its segmentation head convolves in fp32 fast mode (:data:`HEAD_CONV`, one of
    :data:`.sam3_fast.HEAD_CONVS`)."""

    def __init__(self, model, device: torch.device, spec: Sam3Spec | None = None):
        from .sam3_fast import speed_up

        self.model, self.spec, self.device = model.eval().requires_grad_(False).to(device), spec, device
        speed_up(self.model)  # the same sums laid out for the CPU (sam3_fast; transformers' own in reproducible mode)
        cfg = model.config
        self.vit_config = cfg.vision_config.backbone_config
        self.image_size = int(self.vit_config.image_size)
        self.patch = int(self.vit_config.patch_size)
        self.context = int(cfg.text_config.max_position_embeddings)
        self.queries = int(cfg.detr_decoder_config.num_queries)
        self.width = int(cfg.detr_decoder_config.hidden_size)
        self._positions: dict[int, list[torch.Tensor]] = {}
        self._texts: dict[tuple[str, ...], Sam3Text] = {}
        self.held = torch.float32  # the dtype its linear and convolution weights are held in (follow_autocast)
        self.loaded: dict[str, str] = {}  # its files' sha256 when it was loaded (load_sam3): what a re-read must find
        self.head_conv = HEAD_CONV

    def follow_autocast(self) -> None:
        """Its linear and convolution weights made the dtype of the caller's autocast (:mod:`.sam3_half`): half
        under ``--precision bf16|fp16`` (the same outputs, half the memory), read again from its files back in
        fp32. A model built without files (no ``spec``) stays fp32. Each call of the model asks first."""
        from .sam3_half import autocast_dtype, hold

        dtype = autocast_dtype(self.device)
        if dtype == self.held or self.spec is None:
            return
        self.held = hold(self.model, dtype, self.held, self._read_fp32)
        self._texts.clear()  # encoded under the other precision

    def _read_fp32(self) -> dict[str, torch.Tensor]:
        """Its weights as its files hold them (fp32), under transformers' names; one line when a file is no longer
        the bytes the model was loaded from (replaced since: the weights read back would be another model's)."""
        from ...io import sha256_file
        from ...io.reads import FileReplaced, short

        files = locate(self.spec.weights)
        for path in files.files:
            then, now = self.loaded.get(str(path)), sha256_file(path)
            if self.loaded and then != now:
                was = f"sha256 {short(then)} when it was loaded" if then else "not a file it was loaded from"
                raise FileReplaced(f"{path}: replaced after SAM 3 was loaded from it ({was}, {short(now)} now), so "
                                   "its fp32 weights would be read back from another model; put the file back, and "
                                   "run the command again")
        return read_state(files, shapes_only=False)

    def to(self, device: torch.device | str) -> Sam3:
        """This model on ``device`` (moved in place, as ``nn.Module.to``)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._positions, self._texts = {}, {}  # made for the other device
        return self

    # -------------------------------------------------------------------------------------------- images
    def prepare(self, image: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Meta's ``Sam3Processor`` input: ``[H, W, 3]`` uint8 RGB (or ``[3, H, W]`` uint8) -> ``[1, 3, S, S]``
        float32 on this model's device, ``S`` = ``size`` or :attr:`image_size` (resized as a uint8 image,
        torchvision's bilinear with antialiasing, then ``(x / 255 - 0.5) / 0.5``)."""
        from torchvision.transforms.v2 import functional as TF

        side = int(size or self.image_size)
        if side % self.patch:
            raise VplError(f"SAM 3 input side {side}: give a multiple of its {self.patch}-pixel patch")
        x = torch.tensor(image) if isinstance(image, np.ndarray) else image  # a copy: it may be read-only
        if x.dtype != torch.uint8 or x.dim() != 3:
            raise ValueError(f"SAM 3 takes a uint8 RGB image, not {x.dtype} {tuple(x.shape)}")
        if x.shape[-1] == 3 and x.shape[0] != 3:
            x = x.permute(2, 0, 1)
        x = TF.resize(x.to(self.device), [side, side], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return ((x.float() / 255.0 - MEAN) / STD)[None]

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, finer: bool = True) -> Sam3Image:
        """``[B, 3, S, S]`` float32 (:meth:`prepare`) -> the images' :class:`Sam3Image` (Meta's
        ``backbone.forward_image``); ``finer=False``: its coarsest level alone, all the DETR and the geometry encoder
        read (the neck's finer levels, for the segmentation head, not made: ActiveSAM's preview)."""
        side = int(pixels.shape[-1])
        if pixels.shape[-2] != side or side % self.patch:
            raise VplError(f"SAM 3 input {tuple(pixels.shape[-2:])}: give a square side, a multiple of {self.patch}")
        from ...runtime.heap import KEEP_FREED, keep_freed_memory

        # at 1008 px most of a photo's tensors are tens of MB (the ViT's [5184, 4736] activations, a prompt's
        # [8, 200, 5184] attention bias): glibc maps each afresh and its pages fault in again, a third of the time
        # of an element-wise op; kept on the heap when freed, the next one reuses them
        keep_freed_memory(KEEP_FREED, KEEP_FREED)
        self.follow_autocast()
        self._set_positions(side)
        if finer:
            out = self.model.vision_encoder(pixels.to(self.device))
            return Sam3Image(tuple(out.fpn_hidden_states[:-1]), tuple(out.fpn_position_encoding[:-1]), side)
        vision = self.model.vision_encoder  # its forward with the one neck layer (Meta's scalp drops the last)
        tokens = vision.backbone(pixels.to(self.device)).last_hidden_state
        level = vision.neck.fpn_layers[-2](tokens.view(tokens.shape[0], side // self.patch, side // self.patch,
                                                       -1).permute(0, 3, 1, 2))
        return Sam3Image((level,), (vision.neck.position_encoding(level.shape, level.device, level.dtype),), side)

    def _set_positions(self, side: int) -> None:
        """The global layers' RoPE positions for a ``side / patch`` grid: Meta's ViT scales them by
        ``window / grid`` (rebuilt for another side, as ActiveSAM's preview patch rebuilds its table)."""
        from transformers.models.sam3.modeling_sam3 import Sam3ViTLayer

        if side not in self._positions:
            cfg = copy.deepcopy(self.vit_config)
            cfg.image_size = side
            self._positions[side] = [Sam3ViTLayer.precompute_positions(cfg, 0).to(self.device)]
        for layer in self.model.vision_encoder.backbone.layers:
            if layer.window_size == 0:
                layer.position_ids = self._positions[side][0]

    # ---------------------------------------------------------------------------------------------- text
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[K, L]`` int64 CLIP BPE ids (start, the prompt lower-cased, end; zero-padded to :attr:`context`,
        cut with the end token last), as Meta's ``SimpleTokenizer``."""
        return _tokenizer(self.context)(list(prompts)).to(torch.long)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Sam3Text:
        """K prompts -> their :class:`Sam3Text` (Meta's ``backbone.forward_text``)."""
        if not prompts:
            raise ValueError("no prompts to encode")
        self.follow_autocast()
        ids = self.tokenize(prompts).to(self.device)
        text = self.model.text_encoder.text_model
        tokens = text(input_ids=ids).last_hidden_state  # causal attention only, no padding mask: Meta's
        return Sam3Text(self.model.text_projection(tokens), ids != 0, text.embeddings.token_embedding(ids))

    # ----------------------------------------------------------------------------------------- grounding
    @torch.no_grad()
    def ground(self, image: Sam3Image, text: Sam3Text, index: Sequence[int] | torch.Tensor | None = None,
               masks: bool | float = True, geometry_token: bool = True) -> Sam3Grounding:
        """K prompts against the encoded images (Meta's ``forward_grounding`` with an empty geometric prompt).

        Args:
            image: the encoded images (:meth:`encode_image`).
            text: K prompts (:meth:`encode_text`, :meth:`Sam3Text.with_tokens`).
            index: ``[K]`` the image each prompt reads (Meta's ``img_ids``); None: image 0 for all (one image) or
                prompt k reads image k (as many images as prompts).
            masks: run the segmentation head (False: ActiveSAM's preview, which reads the presence alone); a score
                (0.5): run it for the prompts with a query scoring above it alone (:meth:`Sam3Grounding.scores`;
                ``mask_prompts`` says which): what a prompt with no kept instance needs of it is nothing, when its
                semantic head is not read (the "SAM 3" row of ``--dense sam3``).
            geometry_token: the geometry encoder's token of the empty geometric prompt appended to the prompt, as
                Meta's model does (False: transformers' text-only forward, which leaves it out).
        """
        from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

        from .sam3_half import autocast_dtype

        if masks is not False and len(image.features) < 3:
            raise ValueError("SAM 3's segmentation head needs the finer levels: encode_image(pixels) with finer=True")
        self.follow_autocast()
        m = self.model
        k = text.features.shape[0]
        if index is None:
            index = [0] * k if image.batch == 1 else list(range(k))
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        one = image.batch == 1 and not bool(index.any())
        if one:  # every prompt reads the one image: views, not K copies
            # (at 1008 px its finest level and positions are 85 MB each a prompt)
            feats = [f.expand(k, *f.shape[1:]) for f in image.features]
            pos = [p.expand(k, *p.shape[1:]) for p in image.positions]
        else:
            feats = [f[index] for f in image.features]
            pos = [p[index] for p in image.positions]
        prompt, valid = text.features.to(self.device), text.valid.to(self.device)
        if geometry_token:
            empty = torch.zeros(k, 0, 4, device=self.device, dtype=prompt.dtype)
            # under a run's autocast (--precision bf16 / fp16) in fp32: torchvision's roi_align, which the box path
            # calls even with no box, has no autocast rule for bfloat16 on the CPU (its work here is one token)
            with torch.autocast(self.device.type, enabled=False):
                geo = m.geometry_encoder(box_embeddings=empty.float(),
                                         box_mask=torch.zeros(k, 0, dtype=torch.bool, device=self.device),
                                         box_labels=torch.zeros(k, 0, dtype=torch.long, device=self.device),
                                         img_feats=[f.float() for f in feats], img_pos_embeds=[p.float() for p in pos])
            prompt = torch.cat([prompt, geo.last_hidden_state], dim=1)
            valid = torch.cat([valid, geo.attention_mask.to(valid.dtype)], dim=1)
        precision = (self.held, autocast_dtype(self.device))
        with _first_attention_shared(m.detr_encoder.layers[0], image, precision, one):
            enc = m.detr_encoder(vision_features=[feats[-1]], text_features=prompt, vision_pos_embeds=[pos[-1]],
                                 text_mask=valid)
        dec = m.detr_decoder(vision_features=enc.last_hidden_state, text_features=enc.text_features,
                             vision_pos_encoding=enc.pos_embeds_flattened, text_mask=valid,
                             spatial_shapes=enc.spatial_shapes)
        hidden = dec.intermediate_hidden_states
        boxes = (inverse_sigmoid(dec.reference_boxes[-1]) + m.detr_decoder.box_head(hidden[-1])).sigmoid()
        logits = m.dot_product_scoring(decoder_hidden_states=hidden[-1:], text_features=enc.text_features,
                                       text_mask=valid)[0, ..., 0]
        out = Sam3Grounding(logits, dec.presence_logits[-1].reshape(k), boxes)
        rows = None
        if masks is not False and masks is not True:  # a score: the heads of the prompts with a query above it
            rows = torch.nonzero((out.scores() > float(masks)).any(1)).flatten()
            out.mask_prompts = rows.tolist()
        if masks is not False and (rows is None or len(rows)):
            pick = torch.arange(k, device=self.device) if rows is None else rows
            from .sam3_fast import pixel_decoder_set

            # the one image's levels as views (rows of an expanded tensor are alike): picked rows would copy them,
            # 111 MB a prompt at 1008 px, on top of the copy the head makes of them itself
            with pixel_decoder_set(m.mask_decoder.pixel_decoder, self.head_conv, image, precision, one):
                parts = [m.mask_decoder(decoder_queries=hidden[-1][p],
                                        backbone_features=[f[:len(p)] if one else f[p] for f in feats],
                                        encoder_hidden_states=enc.last_hidden_state[p], prompt_features=prompt[p],
                                        prompt_mask=valid[p])
                         for p in pick.split(MASK_PROMPTS)]
            out.pred_masks = torch.cat([h.pred_masks for h in parts])
            out.semantic_seg = torch.cat([h.semantic_seg for h in parts])
        return out

    @torch.no_grad()
    def concepts(self, grounding: Sam3Grounding, size: tuple[int, int], threshold: float = CONFIDENCE
                 ) -> list[Sam3Concept]:
        """Each prompt's :class:`Sam3Concept` at the photo's ``size`` ``(H, W)``: the queries whose probability
        exceeds ``threshold`` (Meta's ``confidence_threshold``, 0.5), their masks and boxes, the presence and the
        semantic map (Meta's ``_forward_grounding``, ActiveSAM's ``set_text_prompts_batch``)."""
        if grounding.pred_masks is None or grounding.semantic_seg is None:
            raise ValueError("this grounding skipped the segmentation head (masks=False)")
        h, w = (int(s) for s in size)
        probs, presence = grounding.scores(), grounding.presence_logits.sigmoid()
        semantic = F.interpolate(grounding.semantic_seg, (h, w), mode="bilinear", align_corners=False).sigmoid()
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=probs.device)
        out = []
        for i in range(probs.shape[0]):
            keep = probs[i] > threshold
            low = grounding.pred_masks[i][keep]
            masks = (F.interpolate(low[:, None], (h, w), mode="bilinear", align_corners=False)[:, 0].sigmoid()
                     if low.shape[0] else low.new_zeros(0, h, w))
            cx, cy, bw, bh = grounding.pred_boxes[i][keep].unbind(-1)
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1) * scale
            out.append(Sam3Concept(masks, probs[i][keep], boxes, float(presence[i]), semantic[i, 0]))
        return out

    @torch.no_grad()
    def segment(self, photo: np.ndarray | torch.Tensor, prompts: Sequence[str], threshold: float = CONFIDENCE,
                bucket: int = BUCKET) -> list[Sam3Concept]:
        """Each prompt's :class:`Sam3Concept` on one photo (``[H, W, 3]`` uint8 RGB): the photo encoded once, the
        prompts encoded once (kept for the next photo with the same prompts) and grounded ``bucket`` at a time (their
        masks are ``[K, 200, 288, 288]`` float32), each bucket's concepts at the photo's size."""
        h, w = int(photo.shape[0]), int(photo.shape[1])
        image = self.encode_image(self.prepare(photo))
        key = tuple(prompts)
        if key not in self._texts:
            self._texts = {key: self.encode_text(list(prompts))}  # the last prompts only: a run keeps its words
        text, out = self._texts[key], []
        for start in range(0, len(key), bucket):
            grounding = self.ground(image, text.select(range(start, min(start + bucket, len(key)))))
            out += self.concepts(grounding, (h, w), threshold)
        return out


class _SharedAttention(torch.nn.Module):
    """A DETR encoder layer's self-attention whose K query rows are one image's, alike: computed on the first row
    once per image and precision (kept in ``store``), the K rows its view."""

    def __init__(self, attention: torch.nn.Module, store: dict, key):
        super().__init__()
        self.attention, self.store, self.key = attention, store, key

    def forward(self, query, key, value, **kwargs):
        if self.key not in self.store:
            self.store[self.key] = self.attention(query=query[:1], key=key[:1], value=value[:1], **kwargs)[0]
        out = self.store[self.key]
        return out.expand(query.shape[0], *out.shape[1:]), None


@contextlib.contextmanager
def _first_attention_shared(layer, image: Sam3Image, key, shared: bool):
    """While open, the DETR encoder's first ``layer`` computes its self-attention once per image (with
    ``shared``: every prompt reads the one image): its input is the image's coarsest level and positions alone,
    the prompt not yet mixed in, so each prompt's is the same numbers (6 layers: a sixth of the encoder's
    attention, the costliest part of a prompt at Meta's 72 x 72 grid)."""
    if not shared:
        yield
        return
    own = layer.self_attn
    layer.self_attn = _SharedAttention(own, image.attended, key)
    try:
        yield
    finally:
        layer.self_attn = own


@functools.lru_cache(maxsize=None)
def _tokenizer(context: int):
    """open_clip's CLIP BPE tokenizer (Meta's vocabulary and cleaning) for ``context`` tokens, once a process."""
    from .open_clip_import import clip_bpe

    return clip_bpe(context)


def _check(spec: Sam3Spec) -> None:
    check_sam3(spec)


def _files(spec: Sam3Spec) -> list[Path]:
    """The files a spec's weights are read from (the config and the weights)."""
    try:
        return locate(spec.weights).files
    except VplError:
        return []


register_family("sam3", load_sam3, _check, summary="SAM 3 (transformers' Sam3Model): concept prompts -> masks, "
                "scores and presence; Hugging Face's or Meta's weights", module=__name__, files=_files, fix=FIX,
                licence=licences.SAM3_FAMILY, get=GET)

__all__ = ["BUCKET", "CONFIDENCE", "Sam3", "Sam3Concept", "Sam3Grounding", "Sam3Image", "Sam3Spec", "Sam3Text",
           "check_sam3", "load_sam3", "sam3_identity"]

"""SAM 3's CPU arithmetic laid out for speed, the same sums within float rounding: some of transformers'
``Sam3Model`` layers given another ``forward`` in place (:func:`speed_up`, at load; parameters, state dict, ``.to``
and the half-precision weights of :mod:`.sam3_half` unchanged), each only where it is the same computation.

* :class:`ComplexRoPEAttention`, the ViT's attention: its rotary encoding as one complex product of each (even, odd)
  pair of q's and k's channels with ``cos + i sin``, as Meta's ViT applies it, where transformers builds
  ``rotate_pairwise``'s stacked copy and two more products and a sum (``stack``, ``mul``, ``add`` and ``neg`` in
  bench/results/sam3_full_profile_cpu_intel_emerald_rapids.txt); fp32 outside reproducible mode.
* :class:`.sam3_detr.LayoutDetrDecoder`, the DETR decoder: each layer's box relative-position bias ``[B, heads,
  1 + Q, H*W]`` (the ``y`` and ``x`` embeddings' outer sum, below the presence token's zero row) written in its final
  layout by one broadcast sum, where transformers sums into ``[B, Q, H, W, heads]``, copies it transposed and copies
  it again to prepend the zero row (33 MB a prompt a layer each at Meta's 72 x 72 grid): the same numbers bit for
  bit, in every mode.
* :class:`FusedReluMLP`, the DETR encoder's and decoder's feed-forward, and :class:`FusedReluDecoderMLP`, the
  decoder's small heads (its box relative-position bias's among them): each product followed by a ReLU as one
  oneDNN call (its ReLU applied as each tile is written) where transformers writes the product and reads it again
  (``[5184, 2048]`` float32 a prompt an encoder layer), the feed-forward a few hundred rows at a time (its hidden
  map read back from the cache); fp32 inference outside reproducible mode and :func:`.onednn.references_library`.
* :class:`SharedLateralPixelDecoder` and :class:`LevelsMaskDecoder`, the segmentation head: each stage's
  convolution of ``upsample(prev) + level`` on that sum laid out channels-last, as Meta's bucketed head convolves it
  (its rounding: :data:`HEAD_CONVS`), or, with ``"phases"`` where every prompt reads one image, as the image's
  ``conv(level)``, once per image, plus the prompt's own ``prev`` convolved before upsampling
  (:func:`upsampled_conv`, 4/9 of the multiply-adds), the four phases summed into the output as one strided view;
  the image's levels handed over without transformers' copies; the 1 x 1 instance projection applied to the queries,
  not to every pixel (:func:`projected_masks`: a prompt with a kept instance pays the head, so a photo where most
  words keep one pays it most).

Reproducible mode (:mod:`vpltool.runtime.numerics`) keeps transformers' rotary encoding, pixel decoder and MKL's
products: only the layouts that are the same sums in the same order (the decoder's bias, the levels handed over) run
there, so its numbers are transformers' bit for bit.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam3 import modeling_sam3 as hf

from .onednn import use_onednn
from .sam3_detr import LayoutDetrDecoder


def _fast_fp32(*tensors: torch.Tensor) -> bool:
    """Whether the faster layout may run: fp32 CPU tensors, no gradient asked, no autocast, outside reproducible
    mode (whose numbers are transformers' bit for bit)."""
    from ...runtime.numerics import reproducible_asked

    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not torch.is_autocast_enabled("cpu") and not reproducible_asked()


def rotate_complex(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, heads, S, D]`` float32 (a view: any strides with unit channel stride) rotated pairwise:
    channels ``(2j, 2j+1)`` as the complex number ``x[2j] + i x[2j+1]`` times ``turn`` ``[S, D/2]`` complex64
    (``cos + i sin`` of the pair's angle) -> ``[B, heads, S, D]`` float32, contiguous. Transformers'
    ``apply_rotary_pos_emb_2d`` in one product: ``x cos + rotate_pairwise(x) sin``."""
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    # written contiguous, whatever x's strides (a transposed view of a projection): SDPA's CPU kernel reads
    # contiguous [B, heads, S, D] faster than the transposed view, by more than the copy costs
    out = torch.empty(pairs.shape, dtype=pairs.dtype, device=pairs.device)
    return torch.view_as_real(torch.mul(pairs, turn, out=out)).flatten(-2)


def turn_of(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Transformers' ``(cos, sin)`` ``[1, S, D]`` float32 (each angle repeated for its pair's two channels) ->
    ``[S, D/2]`` complex64 ``cos + i sin``, one entry a pair."""
    return torch.complex(cos[0, :, ::2], sin[0, :, ::2])


class ComplexRoPEAttention(hf.Sam3ViTRoPEAttention):
    """Transformers' ``Sam3ViTRoPEAttention`` whose fp32 rotary encoding is one complex product
    (:func:`rotate_complex`, module docstring); elsewhere its own ``forward``."""

    def forward(self, hidden_states: torch.Tensor, position_embeddings, **kwargs):
        """``[B, h, w, C]`` float32 tokens (a window or the whole grid), ``(cos, sin)`` ``[1, h*w, D]`` ->
        ``([B, h, w, C], None)``."""
        cos, sin = position_embeddings
        if self.config._attn_implementation != "sdpa" or not _fast_fp32(hidden_states, self.q_proj.weight, cos):
            return super().forward(hidden_states, position_embeddings, **kwargs)
        b, h, w, _ = hidden_states.shape
        shape = (b, h * w, self.num_attention_heads, self.head_dim)
        turn = turn_of(cos, sin)
        query = rotate_complex(self.q_proj(hidden_states).view(shape).transpose(1, 2), turn)
        key = rotate_complex(self.k_proj(hidden_states).view(shape).transpose(1, 2), turn)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2).contiguous()  # as query and key (above)
        out = F.scaled_dot_product_attention(query, key, value, scale=self.scaling)
        return self.o_proj(out.transpose(1, 2).reshape(b, h, w, -1)), None


def heads_first(x: torch.Tensor, heads: int, parts: int = 1) -> tuple[torch.Tensor, ...]:
    """A projection's ``[B, S, parts * heads * D]`` float32 -> ``parts`` tensors ``[B, heads, S, D]``, contiguous
    (one copy for all parts): SDPA's CPU kernel reads them faster than the transposed views transformers passes."""
    b, s, _ = x.shape
    return x.view(b, s, parts, heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)


def _fused_qk(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn``'s query and key projections as one ``[2 C, C]`` weight and ``[2 C]`` bias, kept beside it for their
    current weights (0.5 MB at the DETR's 256 channels)."""
    key = tuple((id(p), p._version) for p in (attn.q_proj.weight, attn.k_proj.weight, attn.q_proj.bias,
                                               attn.k_proj.bias))
    kept = attn.__dict__.get("_qk")
    if kept is None or kept[0] != key:
        weight = torch.cat([attn.q_proj.weight.detach(), attn.k_proj.weight.detach()])
        kept = attn.__dict__["_qk"] = (key, weight, torch.cat([attn.q_proj.bias.detach(), attn.k_proj.bias.detach()]))
    return kept[1], kept[2]


class HeadsFirstAttention(hf.Sam3Attention):
    """Transformers' ``Sam3Attention`` (the DETR encoder's and decoder's, the heads') whose fp32 SDPA reads its
    query, key and value as contiguous ``[B, heads, S, D]`` (:func:`heads_first`), and where the query and the key
    are one tensor (the encoder's self-attention: ``x + pos`` both) their two projections as one product
    (:func:`_fused_qk`); elsewhere its own ``forward``."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None = None, **kwargs):
        """``[B, Lq, C]``, ``[B, Lk, C]``, ``[B, Lk, C]`` float32, an additive or boolean mask broadcastable to
        ``[B, heads, Lq, Lk]`` -> ``([B, Lq, C], None)``."""
        if (self.training or self.config._attn_implementation != "sdpa" or kwargs.get("output_attentions")
                or not _fast_fp32(query, key, value, self.q_proj.weight)):
            return super().forward(query, key, value, attention_mask=attention_mask, **kwargs)
        h = self.num_attention_heads
        if key is query:
            q, k = heads_first(F.linear(query, *_fused_qk(self)), h, 2)
        else:
            (q,), (k,) = heads_first(self.q_proj(query), h), heads_first(self.k_proj(key), h)
        (v,) = heads_first(self.v_proj(value), h)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scaling)
        return self.o_proj(out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)), None


def linear_relu(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``relu(layer(x))``: ``[..., K]`` -> ``[..., N]``; one oneDNN call with the ReLU fused where it may run
    (fp32 CPU inference, oneDNN in this torch, outside reproducible mode and :func:`.onednn.references_library`),
    else the layer's own product and a ReLU."""
    from .onednn import available, pinned

    w, bias = layer.weight, layer.bias
    if (_fast_fp32(x, w) and available() and not pinned() and w.is_contiguous() and x.dim() >= 2
            and (bias is None or bias.dtype == torch.float32)):
        return torch.ops.mkldnn._linear_pointwise(x, w, bias, "relu", [], "")
    return F.relu(layer(x))


# rows of the feed-forward's hidden map made and read at a time: [1024, 2048] float32 (8 MB) is read back by the
# second product from the cache, where a bucket's whole map ([4 x 5184, 2048], 170 MB) goes to memory and back
# (bench/bench_sam3_ffn.py: 0.88 of the time at ActiveSAM's preview and at 1008 px on an Emerald Rapids core,
# bench/results/sam3_ffn_rows_intel_emerald_rapids.json). Rows are independent: the same sums
FFN_ROWS = 1024


class FusedReluMLP(hf.Sam3MLP):
    """Transformers' ``Sam3MLP`` with a ReLU, its first product and the ReLU one call (:func:`linear_relu`), and
    outside reproducible mode and :func:`.onednn.references_library` :data:`FFN_ROWS` rows at a time where there
    are more than twice as many."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` -> ``[..., C]`` (dropout: inference, none)."""
        if self.training:
            return super().forward(hidden_states)
        from .onednn import pinned

        rows = hidden_states.numel() // max(hidden_states.shape[-1], 1)
        if rows <= 2 * FFN_ROWS or pinned() or not _fast_fp32(hidden_states, self.fc1.weight, self.fc2.weight):
            return self.fc2(linear_relu(hidden_states, self.fc1))
        x = hidden_states.reshape(rows, hidden_states.shape[-1])
        out = x.new_empty(rows, self.fc2.out_features)
        for start in range(0, rows, FFN_ROWS):
            out[start:start + FFN_ROWS] = self.fc2(linear_relu(x[start:start + FFN_ROWS], self.fc1))
        return out.view(*hidden_states.shape[:-1], self.fc2.out_features)


class FusedReluDecoderMLP(hf.Sam3DecoderMLP):
    """Transformers' ``Sam3DecoderMLP`` (the DETR decoder's box, presence and relative-position heads) with each
    product followed by a ReLU one call (:func:`linear_relu`): the position bias's heads run on ``[B, Q, 72, 2]`` a
    layer at Meta's 72 x 72 grid, their ``[B, Q, 72, 256]`` hidden map written once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., input_dim]`` -> ``[..., output_dim]``."""
        x = linear_relu(x, self.layer1)
        if self.layer3 is None:
            return self.layer2(x)
        return self.layer3(linear_relu(x, self.layer2))


# the rows (a) of a 3-tap kernel that fall on each low-resolution row, for an output row of either parity (p): a
# nearest 2x upsampling repeats each row, so output row 2m reads rows m-1 (tap 0) and m (taps 1, 2), row 2m+1 rows m
# (taps 0, 1) and m+1 (tap 2)
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 convolution's ``weight`` ``[O, I, 3, 3]`` -> ``[4 O, I, 2, 2]``: the four 2 x 2 kernels that give its
    output on a nearest 2x upsampled input from the input before upsampling, one per output parity ``(py, px)``
    (``2 py + px``), the taps that read the same input pixel summed."""
    taps = _PHASE_TAPS.to(weight)
    return torch.cat([torch.einsum("ak,oikl,bl->oiab", taps[py], weight, taps[px]) for py in (0, 1) for px in (0, 1)])


def upsampled_conv(x: torch.Tensor, kernels: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """``conv3x3(upsample_nearest_2x(x)) + plus`` (no bias, zero padding 1): ``x`` ``[B, I, h, w]``, ``kernels``
    :func:`phase_kernels`' ``[4 O, I, 2, 2]``, ``plus`` ``[1 or B, O, 2h, 2w]`` -> ``[B, O, 2h, 2w]``; one
    convolution of 4 x 4 taps a pixel on the small input, where the upsampled one takes 9 on four times the pixels
    (4/9 of the multiply-adds)."""
    b, _, h, w = x.shape
    o = kernels.shape[0] // 4
    # [B, 4 O, h + 1, w + 1]: output row 2m + py is row m + py of phase 2 py + px here, column 2n + px column n + px
    phases = F.conv2d(x, kernels, padding=1).contiguous()
    out = x.new_empty(b, o, h, 2, w, 2)
    # the four phases' shifted windows as one strided view in the output's layout (a step in py or px moves a phase
    # block and a row or a column at once): one sum writing the output in order, where one sum a phase wrote every
    # other float of every cache line four times (130 of a prompt's 800 ms at Meta's 288 x 288 level)
    ch, row = (h + 1) * (w + 1), w + 1
    shifted = phases.as_strided((b, o, h, 2, w, 2), (phases.stride(0), ch, row, 2 * o * ch + row, 1, o * ch + 1))
    torch.add(shifted, plus.view(plus.shape[0], o, h, 2, w, 2), out=out)
    return out.view(b, o, 2 * h, 2 * w)


# how the segmentation head's pixel decoder convolves in fp32 fast mode. "channels_last": its finest stage (288 x 288
# at Meta's sizes) convolves ``upsample(prev) + level`` laid out channels-last, as Meta's does (Meta's FPN levels are
# channels-last, its neck's layout, and the level comes first in its sum), so oneDNN runs the kernel Meta's runs
# (brgemm on nhwc, where a contiguous map gets the blocked direct kernel, rounded otherwise) and the mask logits
# round as the reference's (parity/sam3_head_rounding.py); the coarser stage as "phases" where the image's levels are
# shared (its rounding barely reaches the logits, and phases are the cheaper per prompt there). "phases": every
# stage as the image's conv(level) once and each prompt's :func:`upsampled_conv` (4/9 of its multiply-adds; nearer a
# float64 head, but 1.3e-4 to 1.6e-4 from Meta's mask logits at the reduced model's parity).
# bench/bench_sam3_head.py measures both
HEAD_CONVS = ("channels_last", "phases")


class SharedLateralPixelDecoder(hf.Sam3PixelDecoder):
    """Transformers' ``Sam3PixelDecoder`` in fp32 fast mode, as ``conv`` says (:data:`HEAD_CONVS`; :meth:`Sam3.ground`
    sets it, and, where every prompt reads one image, ``levels``, the image's own ``[1, C, H_i, W_i]``, and
    ``lateral``, a dict the image keeps). A stage by phases: its ``conv(upsample(prev) + level)`` as ``conv(level)``
    (with the bias) once per image, kept in ``lateral``, plus :func:`upsampled_conv` of the prompt's own ``prev``; a
    stage channels-last: ``upsample(prev) + level`` written channels-last, then convolved. "channels_last": the finest
    stage channels-last, the others by phases where the image's levels are shared (every stage channels-last where
    not); "phases": every stage by phases; elsewhere (none set, not fp32, reproducible mode; "phases" without the
    image's levels) its own ``forward``."""

    def forward(self, backbone_features: list[torch.Tensor]) -> torch.Tensor:
        """Levels ``[B, C, H_i, W_i]``, coarse last (the prompt's encoder map), the others the image's in every row
        -> ``[B, C, H, W]`` at the finest level."""
        how, lateral, levels = (self.__dict__.get(k) for k in ("conv", "lateral", "levels"))
        prev = backbone_features[-1]
        shared = lateral is not None and levels is not None
        if how is None or not _fast_fp32(prev, self.conv_layers[0].weight) or (how == "phases" and not shared):
            return super().forward(backbone_features)
        stages = len(backbone_features) - 1
        own = backbone_features[:-1] if levels is None else levels[:-1]  # coarse last
        for i in range(stages):
            conv = self.conv_layers[i]
            if how == "channels_last" and (i == stages - 1 or not shared):
                out = conv(_channels_last_sum(prev, own[-1 - i]))
            else:
                if i not in lateral:
                    # the image's own tensor, not the prompt's view of it (whose strides depend on the bucket):
                    # convolution's kernel follows the strides, and an image's numbers must not depend on its first
                    # call
                    lateral[i] = conv(levels[-2 - i])
                out = upsampled_conv(prev, _kernels(conv), lateral[i])
            prev = F.relu(self.norms[i](out), inplace=True)
        return prev


def _channels_last_sum(prev: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``upsample_nearest(prev) + level`` (``[B, C, h, w]``, ``[1 or B, C, H, W]``) -> ``[B, C, H, W]`` written
    channels-last in one pass (the sum's values whatever its layout; the layout is what the convolution reads)."""
    up = F.interpolate(prev, size=level.shape[-2:], mode="nearest")
    summed = torch.empty_like(up, memory_format=torch.channels_last)
    return torch.add(up, level, out=summed)


def _kernels(conv: nn.Conv2d) -> torch.Tensor:
    """``conv``'s :func:`phase_kernels`, kept beside it for its current weights (1 MB at SAM 3's 256 channels)."""
    key = (id(conv.weight), conv.weight._version)
    kept = conv.__dict__.get("_phase_kernels")
    if kept is None or kept[0] != key:
        kept = conv.__dict__["_phase_kernels"] = (key, phase_kernels(conv.weight.detach()))
    return kept[1]


def projected_masks(queries: torch.Tensor, projection: nn.Conv2d, pixels: torch.Tensor) -> torch.Tensor:
    """``einsum("bqc,bchw->bqhw", queries, projection(pixels))`` for a 1 x 1 ``projection``: ``queries`` ``[B, Q, C]``,
    ``pixels`` ``[B, C, H, W]`` float32 (contiguous or channels-last) -> ``[B, Q, H, W]`` mask logits, the projection
    applied to the Q queries (``queries W`` and ``queries . bias``) rather than to the H W pixels: a [256, 256]
    product where the map's was [256, 256] x [256, 82944] (92 ms a prompt at Meta's 288 x 288 level), the same sums
    associated otherwise."""
    b, c, h, w = pixels.shape
    weight = projection.weight.flatten(1)  # [C_out, C_in]
    folded = torch.matmul(queries, weight)  # [B, Q, C_in]
    bias = torch.matmul(queries, projection.bias)[..., None] if projection.bias is not None else queries.new_zeros(1)
    if pixels.is_contiguous(memory_format=torch.channels_last):  # read as [B, HW, C] transposed: no 85 MB copy
        flat = pixels.permute(0, 2, 3, 1).reshape(b, h * w, c).transpose(1, 2)
    else:
        flat = pixels.reshape(b, c, h * w)
    return torch.baddbmm(bias, folded, flat).view(b, -1, h, w)


class LevelsMaskDecoder(hf.Sam3MaskDecoder):
    """Transformers' ``Sam3MaskDecoder`` that hands its pixel decoder the image's levels as they are: transformers
    copies each first (85 MB a prompt at SAM 3's 288 x 288 level), which nothing writes to; in fp32 fast mode its
    instance projection applied to the queries (:func:`projected_masks`)."""

    def forward(self, decoder_queries: torch.Tensor, backbone_features: list[torch.Tensor],
                encoder_hidden_states: torch.Tensor, prompt_features: torch.Tensor | None = None,
                prompt_mask: torch.Tensor | None = None, **kwargs):
        """Transformers' arguments (queries ``[B, Q, C]``, levels ``[B, C, H_i, W_i]``, encoder states ``[B, S, C]``,
        prompt ``[B, P, C]`` and its mask ``[B, P]``) -> its ``Sam3MaskDecoderOutput`` (``pred_masks`` ``[B, Q, H,
        W]``, ``semantic_seg`` ``[B, 1, H, W]``); elsewhere (attentions asked, not fp32, reproducible mode) its own
        ``forward``."""
        if (kwargs or self.training or prompt_features is None
                or not _fast_fp32(decoder_queries, encoder_hidden_states, self.instance_projection.weight)):
            return super().forward(decoder_queries, backbone_features, encoder_hidden_states,
                                   prompt_features=prompt_features, prompt_mask=prompt_mask, **kwargs)
        from transformers.masking_utils import create_bidirectional_mask

        # transformers' cross-attention of the encoder's states to the prompt, as it is
        normed = self.prompt_cross_attn_norm(encoder_hidden_states)
        mask = None if prompt_mask is None else create_bidirectional_mask(
            config=self.config, inputs_embeds=normed, encoder_hidden_states=prompt_features,
            attention_mask=prompt_mask)
        attended, _ = self.prompt_cross_attn(query=normed, key=prompt_features, value=prompt_features,
                                             attention_mask=mask)
        pixels = self._embed_pixels(backbone_features, encoder_hidden_states + attended)
        masks = projected_masks(self.mask_embedder(decoder_queries), self.instance_projection, pixels)
        return hf.Sam3MaskDecoderOutput(pred_masks=masks, semantic_seg=self.semantic_projection(pixels))

    def _embed_pixels(self, backbone_features: list[torch.Tensor], encoder_hidden_states: torch.Tensor
                      ) -> torch.Tensor:
        """The levels ``[B, C, H_i, W_i]`` (coarse last) with the coarse one replaced by the encoder's image tokens
        ``[B, h*w (+ more), C]`` -> the pixel decoder's ``[B, C, H, W]``."""
        b, height, width = encoder_hidden_states.shape[0], *backbone_features[-1].shape[-2:]
        tokens = encoder_hidden_states[:, :height * width, :]
        coarse = tokens.transpose(1, 2).reshape(b, tokens.shape[-1], height, width)
        return self.pixel_decoder([*backbone_features[:-1], coarse])


def speed_up(model: nn.Module) -> int:
    """``model`` (transformers' ``Sam3Model``)'s ViT attention, DETR decoder and ReLU feed-forward layers given the
    classes above and its ViT's linear layers oneDNN's route (:func:`.onednn.use_onednn`), in place (idempotent);
    returns how many modules took the classes above. The classes are module-level: a converted model pickles and
    deep-copies as before."""
    kinds = {hf.Sam3ViTRoPEAttention: ComplexRoPEAttention, hf.Sam3DetrDecoder: LayoutDetrDecoder,
             hf.Sam3Attention: HeadsFirstAttention,
             hf.Sam3PixelDecoder: SharedLateralPixelDecoder, hf.Sam3MaskDecoder: LevelsMaskDecoder,
             hf.Sam3DecoderMLP: FusedReluDecoderMLP}
    n = 0
    for m in model.modules():
        if type(m) in kinds:
            m.__class__ = kinds[type(m)]
        elif type(m) is hf.Sam3MLP and isinstance(m.activation_fn, nn.ReLU):
            m.__class__ = FusedReluMLP
        else:
            continue
        n += 1
    # the ViT's fp32 linear layers (over half of a full-size photo) through the library this CPU runs faster, per
    # shape with margin (onednn.py's route; MKL's in reproducible mode): on an AMD Zen 4 oneDNN ran its products at
    # 95-107 GFLOP/s against MKL's 87-92, one thread. Not counted: idempotent too, and not one of the classes above
    use_onednn(*(m for m in model.modules() if isinstance(m, hf.Sam3ViTModel)))
    return n


__all__ = ["HEAD_CONVS", "ComplexRoPEAttention", "FusedReluDecoderMLP", "FusedReluMLP", "HeadsFirstAttention",
           "LayoutDetrDecoder", "LevelsMaskDecoder", "SharedLateralPixelDecoder", "heads_first", "linear_relu",
           "phase_kernels", "projected_masks", "rotate_complex", "speed_up", "turn_of", "upsampled_conv"]


@contextlib.contextmanager
def pixel_decoder_set(decoder, conv: str, image, key, shared: bool):
    """While open, the segmentation head's pixel decoder convolves as ``conv`` says (:data:`HEAD_CONVS`) and, with
    ``shared`` (every prompt reads the one :class:`.sam3_states.Sam3Image`), reads the image's own levels, each
    stage it runs by phases convolving the image's level once per image and precision (kept in
    ``image.convolved``), each prompt only its own upsampled map (:class:`SharedLateralPixelDecoder`)."""
    if conv not in HEAD_CONVS:
        raise ValueError(f"SAM 3 head_conv {conv!r}: give one of {', '.join(HEAD_CONVS)}")
    if not isinstance(decoder, SharedLateralPixelDecoder):
        yield
        return
    decoder.conv = conv
    if shared:
        decoder.levels, decoder.lateral = image.features, image.convolved.setdefault(key, {})
    try:
        yield
    finally:
        for name in ("conv", "levels", "lateral"):
            decoder.__dict__.pop(name, None)

"""SAM 3's DETR decoder with its box relative-position bias written in its final layout (:mod:`.sam3_fast` gives the
model this class at load): the same numbers bit for bit, in every mode.

Transformers' ``Sam3DetrDecoder`` builds each layer's bias ``[B, heads, Q, H*W]`` (the ``y`` and ``x`` embeddings'
outer sum) into ``[B, Q, H, W, heads]`` and copies it transposed, then copies it again one row down to prepend the
presence token's zero row (``F.pad``: 59 MB a bucket of 4 prompts a layer at ActiveSAM's 48 x 48 preview grid, 133
MB at Meta's 72 x 72). Here the outer sum is written once, below a zero row, into the ``[B, heads, 1 + Q, H*W]`` mask
the vision cross-attention reads.
"""

from __future__ import annotations

import math

import torch
from transformers.models.sam3 import modeling_sam3 as hf


def _rpb_embeddings(decoder, reference_boxes: torch.Tensor, spatial_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformers' ``_get_rpb_matrix`` up to its outer sum: the boxes' log-scaled distances to each grid row and
    column, embedded -> ``[B, Q, H, heads]`` and ``[B, Q, W, heads]``."""
    height, width = spatial_shape
    boxes = hf.box_cxcywh_to_xyxy(reference_boxes)
    b, q, _ = boxes.shape
    coords_h, coords_w = decoder._get_coords(height, width, dtype=reference_boxes.dtype,
                                             device=reference_boxes.device)
    deltas_y = (coords_h.view(1, -1, 1) - boxes.reshape(-1, 1, 4)[:, :, 1:4:2]).view(b, q, -1, 2)
    deltas_x = (coords_w.view(1, -1, 1) - boxes.reshape(-1, 1, 4)[:, :, 0:3:2]).view(b, q, -1, 2)
    scaled = []
    for d in (deltas_x, deltas_y):
        d = d * 8
        scaled.append(torch.sign(d) * torch.log2(torch.abs(d) + 1.0) / math.log2(8))
    return decoder.box_rpb_embed_y(scaled[1]), decoder.box_rpb_embed_x(scaled[0])


def rpb_mask(decoder, reference_boxes: torch.Tensor, spatial_shape, presence_row: bool) -> torch.Tensor:
    """``[B, Q, 4]`` boxes (cx, cy, w, h in [0, 1]), the grid's ``(H, W)`` -> ``[B, heads, Q, H*W]`` float (with
    ``presence_row``: ``[B, heads, 1 + Q, H*W]``, row 0 zeros): bias ``(q, y*W + x)`` = ``embed_y(dy)[q, y] +
    embed_x(dx)[q, x]``, one broadcast sum written in place."""
    dy, dx = _rpb_embeddings(decoder, reference_boxes, spatial_shape)  # [B, Q, H, heads], [B, Q, W, heads]
    dy, dx = dy.permute(0, 3, 1, 2), dx.permute(0, 3, 1, 2)  # [B, heads, Q, H], [B, heads, Q, W]: small
    b, heads, q, h = dy.shape
    out = dy.new_empty(b, heads, q + presence_row, h, dx.shape[-1])
    if presence_row:
        out[:, :, 0].zero_()  # the presence token attends to every vision token alike
    torch.add(dy[..., :, None], dx[..., None, :], out=out[:, :, int(presence_row):])
    return out.flatten(3)


class LayoutDetrDecoder(hf.Sam3DetrDecoder):
    """Transformers' ``Sam3DetrDecoder`` whose box relative-position bias is summed in its final layout, with the
    presence token's zero row (module docstring); with gradients on, or attentions or hidden states asked for,
    transformers' own (the sum is written into its place, which autograd does not follow)."""

    def _get_rpb_matrix(self, reference_boxes: torch.Tensor, spatial_shape) -> torch.Tensor:
        """``[B, Q, 4]`` boxes, ``(H, W)`` -> ``[B, heads, Q, H*W]`` (:func:`rpb_mask`), transformers' bits."""
        if torch.is_grad_enabled():
            return super()._get_rpb_matrix(reference_boxes, spatial_shape)
        return rpb_mask(self, reference_boxes, spatial_shape, presence_row=False)

    def forward(self, vision_features: torch.Tensor, text_features: torch.Tensor, vision_pos_encoding: torch.Tensor,
                text_mask: torch.Tensor | None = None, spatial_shapes: torch.Tensor | None = None, **kwargs):
        """Transformers' arguments (vision ``[B, H*W, C]``, text ``[B, L, C]``, positions ``[B, H*W, C]``, the text's
        ``[B, L]`` True = valid, the one level's ``[1, 2]`` grid) -> its ``Sam3DETRDecoderOutput``: its loop as
        written, each layer's mask made by :func:`rpb_mask` with the zero row in place of ``F.pad``'s copy."""
        cfg = self.config
        if (kwargs or torch.is_grad_enabled() or cfg.output_attentions or cfg.output_hidden_states
                or spatial_shapes is None or spatial_shapes.shape[0] != 1):
            return super().forward(vision_features, text_features, vision_pos_encoding, text_mask=text_mask,
                                   spatial_shapes=spatial_shapes, **kwargs)
        b = vision_features.shape[0]
        queries = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        boxes = self.reference_points.weight.unsqueeze(0).expand(b, -1, -1).sigmoid()
        hidden = torch.cat([self.presence_token.weight.unsqueeze(0).expand(b, -1, -1), queries], dim=1)
        text_attn = None if text_mask is None else hf.create_bidirectional_mask(
            config=cfg, inputs_embeds=hidden, attention_mask=text_mask, encoder_hidden_states=text_features)
        outputs, all_boxes, presence = [], [boxes], []
        grid = (spatial_shapes[0, 0], spatial_shapes[0, 1])
        for layer in self.layers:
            query_pos = self.ref_point_head(self.position_encoding.encode_boxes(boxes))
            hidden = layer(hidden, query_pos=query_pos, text_features=text_features, vision_features=vision_features,
                           vision_pos_encoding=vision_pos_encoding, text_cross_attn_mask=text_attn,
                           vision_cross_attn_mask=rpb_mask(self, boxes, grid, presence_row=True))
            normed = self.output_layer_norm(hidden[:, 1:])
            boxes = (self.box_head(normed) + hf.inverse_sigmoid(boxes)).sigmoid()
            outputs.append(normed)
            all_boxes.append(boxes)
            logit = self.presence_head(self.presence_layer_norm(hidden[:, :1])).squeeze(-1)
            limit = self.clamp_presence_logit_max_val
            presence.append(logit.clamp(min=-limit, max=limit))
        return hf.Sam3DETRDecoderOutput(intermediate_hidden_states=torch.stack(outputs),
                                        reference_boxes=torch.stack(all_boxes[:-1]),
                                        presence_logits=torch.stack(presence))


__all__ = ["LayoutDetrDecoder", "rpb_mask"]

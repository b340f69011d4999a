"""segment-anything's automatic mask generator with the same masks at a fraction of its CPU time.

``SamAutomaticMaskGenerator._process_batch`` runs SAM's mask decoder on every point prompt, upsamples every mask it
predicts (three a point) to the model's input size and back to the image's, then drops those whose predicted IoU is
under ``pred_iou_thresh``. :class:`MaskGenerator` gives the same records with less work (``bench/bench_sam_pseudo.py``
times `sam-pseudo` on the demo's CAMs and digests its masks):

* :func:`decode`, the decoder: the first two-way layer's image side (keys and values of the token->image attention,
  queries of the image->token one) is the same for every prompt (the image embedding plus the no-mask embedding), so
  it is projected once an image instead of once a prompt; the predicted IoU comes before the masks, and only the
  prompts with a mask over the threshold are upscaled, only their kept masks made;
* only those masks are upsampled, by the same ``F.interpolate`` calls on the same logits (one plane each);
* an RLE is not deep-copied each time ``MaskData.cat`` gathers the batches and the crops (:class:`_Rle`).

Every kept mask's logits are the same bits as segment-anything's (the same operations on the same operands; where a
route depends on the batch, as a transposed convolution of one image does, the batch takes it too), so its stability
score, box, RLE, the NMS and the records are too; ``tests/test_sam_pseudo.py`` compares the records with
segment-anything's own generator, with crops too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    uncrop_masks,
)


# --------------------------------------------------------------------------------------------- the mask decoder
def _project_once(linear: torch.nn.Linear, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``linear`` of one image-side tensor ``x`` ``[1, N, C]`` (a permuted view, as segment-anything's transformer
    holds its image tokens) repeated for ``batch`` prompts: ``[batch, N, out]`` contiguous, the bits of ``linear``
    on the repeated tensor. That non-contiguous input takes ``F.linear``'s matmul-then-bias route on a contiguous
    copy (a matrix product's row does not depend on how many rows share the call), so this takes it too."""
    out = torch.matmul(x.contiguous(), linear.weight.t())
    out.add_(linear.bias)
    return out.expand(batch, -1, -1).contiguous()


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention.forward`` from its projections on: ``q`` ``[B, Nq, D]``, ``k``, ``v``
    ``[B, Nk, D]`` -> ``[B, Nq, C]``."""
    heads = attn.num_heads
    q, k, v = (attn._separate_heads(t, heads) for t in (q, k, v))
    weights = q @ k.permute(0, 1, 3, 2)
    weights = weights / math.sqrt(q.shape[-1])
    weights = torch.softmax(weights, dim=-1)
    return attn.out_proj(attn._recombine_heads(weights @ v))


def _attend_image(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The image->token attention (``attn`` a segment-anything ``Attention``) from its projections on, the scores
    held token-major: ``q`` ``[B, N, D]`` (the image's N queries), ``k``, ``v`` ``[B, T, D]`` (the T prompt tokens)
    -> ``[B, N, C]``. Why: a softmax over the last dimension of T = 7 scores (a point prompt's tokens) runs ~13x
    slower on CPU than the same softmax over the middle dimension of the transposed scores ``[B, heads, T, N]``,
    where it vectorises over the N queries; this attention was a third of the decoder's time. The same sums, the
    softmax within float32 rounding of segment-anything's (a few ulp: ``tests/test_sam_pseudo.py`` holds the
    logits to the parity tolerance and the records to segment-anything's)."""
    heads = attn.num_heads
    q, k, v = (attn._separate_heads(t, heads) for t in (q, k, v))
    weights = k @ q.permute(0, 1, 3, 2)  # [B, heads, T, N]
    weights = weights / math.sqrt(q.shape[-1])
    weights = torch.softmax(weights, dim=-2)
    out = v.transpose(-1, -2) @ weights  # [B, heads, D / heads, N]
    b, h, d, n = out.shape
    return attn.out_proj(out.permute(0, 3, 1, 2).reshape(b, n, h * d))


def _first_layer(layer, queries, image: torch.Tensor, image_pe: torch.Tensor):
    """The first ``TwoWayAttentionBlock`` (no positional encoding on its self-attention), its image-side work done
    once: every prompt's image tokens are the same there (``image`` ``[1, N, C]``, the embedding plus the no-mask
    embedding), so the token->image keys and values and the image->token queries are projected once and repeated.
    ``queries`` ``[B, T, C]`` -> (queries, keys ``[B, N, C]``)."""
    batch = queries.shape[0]
    query_pe = queries
    queries = layer.norm1(layer.self_attn(q=queries, k=queries, v=queries))
    k_img = image + image_pe  # [1, N, C]: the same for every prompt
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    q = queries + query_pe
    queries = layer.norm2(queries + _attend(t2i, t2i.q_proj(q), _project_once(t2i.k_proj, k_img, batch),
                                            _project_once(t2i.v_proj, image, batch)))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    out = _attend_image(i2t, _project_once(i2t.q_proj, k_img, batch), i2t.k_proj(q), i2t.v_proj(queries))
    return queries, layer.norm4(image + out)


def _layer(layer, queries, keys, query_pe, key_pe):
    """A later ``TwoWayAttentionBlock``, as segment-anything's but for ``keys + key_pe``, computed once for both
    cross attentions (the same operands, so the same tensor)."""
    q = queries + query_pe
    queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    q, k = queries + query_pe, keys + key_pe
    queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=q, k=k, v=keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    i2t = layer.cross_attn_image_to_token
    keys = layer.norm4(keys + _attend_image(i2t, i2t.q_proj(k), i2t.k_proj(q), i2t.v_proj(queries)))
    return queries, keys


def decode(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
           no_mask: torch.Tensor, iou_thresh: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """segment-anything's ``MaskDecoder(..., multimask_output=True)`` for point prompts, the same bits, less work:
    the first layer's image side once per image, and the masks of only the (prompt, mask) pairs whose predicted IoU
    is over ``iou_thresh`` (which the generator drops before anything else).

    Args:
        decoder: segment-anything's ``MaskDecoder`` (two-way transformer of two or more layers).
        image_embeddings: ``[1, C, h, w]`` float32, the image's; ``image_pe``: ``[1, C, h, w]``, the dense PE.
        sparse: ``[B, P, C]`` the prompts' embeddings; ``no_mask``: ``[B or 1, C, h, w]`` the prompt encoder's
            dense embedding without a mask input (one value per channel, the same for every prompt).
        iou_thresh: keep the pairs whose predicted IoU is strictly over this; None: every pair.

    Returns:
        ``keep`` ``[B * 3]`` bool (prompt-major), ``low_res`` ``[K, 4h, 4w]`` and ``iou`` ``[K]`` of the kept pairs.
    """
    transformer, batch = decoder.transformer, sparse.shape[0]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
    src = image_embeddings + no_mask[:1]  # [1, C, h, w], what repeat_interleave + dense gives every prompt
    c, h, w = src.shape[1:]
    image = src.flatten(2).permute(0, 2, 1)
    pos_src = torch.repeat_interleave(image_pe, batch, dim=0)
    key_pe = pos_src.flatten(2).permute(0, 2, 1)
    queries, keys = _first_layer(transformer.layers[0], tokens, image, image_pe.flatten(2).permute(0, 2, 1))
    for layer in transformer.layers[1:]:
        queries, keys = _layer(layer, queries, keys, tokens, key_pe)
    q, k = queries + tokens, keys + key_pe
    queries = transformer.norm_final_attn(queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys))

    iou = decoder.iou_prediction_head(queries[:, 0, :])[:, 1:]  # [B, 3]: multimask output, masks 1..3
    keep = iou > iou_thresh if iou_thresh is not None else torch.ones_like(iou, dtype=torch.bool)
    rows = keep.any(dim=1).nonzero()[:, 0]  # the prompts with a kept mask
    if not len(rows):
        return keep.flatten(), iou.new_zeros((0, 4 * h, 4 * w)), iou.flatten()[keep.flatten()]
    picked = keep[rows]
    if len(rows) == 1 < batch:  # a transposed convolution of one image takes another route than of several: pair it
        rows = torch.cat([rows, rows])
    mask_tokens = queries[:, 1:1 + decoder.num_mask_tokens, :]
    hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    up = decoder.output_upscaling(keys[rows].transpose(1, 2).view(len(rows), c, h, w))
    masks = (hyper[rows] @ up.view(len(rows), up.shape[1], -1)).view(len(rows), -1, *up.shape[2:])
    masks = masks[: len(picked), 1:][picked]
    return keep.flatten(), masks, iou.flatten()[keep.flatten()]


def upsample(model, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
    """``Sam.postprocess_masks``: ``low_res`` ``[K, 1, h, w]`` logits -> ``[K, 1, H0, W0]`` at the image's size.
    segment-anything resizes bilinearly to the model's square input (4h = img_size), crops the image's part and
    resizes that to the image. Where the image is square and half the input (a 96-px scene on a 192-px model, 512
    px on SAM's 1024), the crop is the whole square and the two resizes are one bilinear 2x resize of the logits:
    4x up then 2x down (align_corners=False) takes the mean of the samples at i/2 - 3/8 and i/2 - 1/8, which is the
    sample at i/2 - 1/4, the 2x resize's, edges clamped alike; one resize of a quarter of the pixels instead of
    two. Equal in exact arithmetic, within float32 rounding in fact (the bench's mask digest and
    ``tests/test_sam_pseudo.py`` hold the masks to segment-anything's); other sizes take segment-anything's route."""
    side = model.image_encoder.img_size
    if (tuple(input_size) == (side, side) and tuple(original_size) == (side // 2, side // 2)
            and low_res.shape[-2:] == (side // 4, side // 4) and side % 4 == 0):
        return torch.nn.functional.interpolate(low_res, tuple(original_size), mode="bilinear", align_corners=False)
    return model.postprocess_masks(low_res, input_size, original_size)


class _Rle(dict):
    """An RLE record (``size``, ``counts``). ``MaskData.cat`` deep-copies every list it concatenates, each batch's
    RLEs and then each crop's (an eighth of the generator's time on the demo); an RLE is never changed once made,
    so its copy is itself."""

    def __deepcopy__(self, memo: dict) -> _Rle:
        return self


class MaskGenerator(SamAutomaticMaskGenerator):
    """:class:`segment_anything.SamAutomaticMaskGenerator` (same arguments, same records) whose batches decode the
    image side once and make and upsample only the masks the predicted-IoU threshold keeps (the module docstring)."""

    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
                       orig_size: tuple[int, ...]) -> MaskData:
        """One batch of point prompts (``points`` ``[B, 2]`` float, the crop's pixels) -> the kept masks' MaskData:
        ``rles``, ``iou_preds`` ``[K]``, ``stability_score`` ``[K]``, ``boxes`` ``[K, 4]``, ``points`` ``[K, 2]``,
        in segment-anything's order (point-major, three masks a point)."""
        predictor, model = self.predictor, self.predictor.model
        orig_h, orig_w = orig_size
        coords = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        # SamPredictor.predict_torch's model calls, the decoder's image side once and only the kept masks made
        sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        keep, low_res, iou_preds = decode(model.mask_decoder, predictor.features, model.prompt_encoder.get_dense_pe(),
                                          sparse, dense, self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None)
        # under a half-precision autocast (--precision bf16 / fp16) the model's outputs are half: the steps below
        # are segment-anything's post-processing, in fp32 as there (its MaskData.to_numpy has no bfloat16)
        low_res, iou_preds = low_res.float(), iou_preds.float()
        points_t = torch.as_tensor(points.repeat(len(keep) // len(points), axis=0))[keep]
        # each mask one plane [K, 1, h, w]: F.interpolate works plane by plane, so a plane's values do not depend on
        # which other planes share the call
        masks = upsample(model, low_res[:, None], predictor.input_size, predictor.original_size)[:, 0]
        data = MaskData(masks=masks, iou_preds=iou_preds, points=points_t)
        del masks

        # from here on segment-anything's own steps, unchanged
        data["stability_score"] = calculate_stability_score(data["masks"], model.mask_threshold,
                                                            self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = [_Rle(rle) for rle in mask_to_rle_pytorch(data["masks"])]
        del data["masks"]
        return data


__all__ = ["MaskGenerator"]

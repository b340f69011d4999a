"""segment-anything's automatic mask generator with the same masks at a fraction of its CPU time.

``SamAutomaticMaskGenerator._process_batch`` runs SAM's mask decoder on every point prompt, upsamples every mask it
predicts (three a point) to the model's input size and back to the image's, then drops those whose predicted IoU is
under ``pred_iou_thresh``. :class:`MaskGenerator` gives the same records with less work (``bench/bench_sam_pseudo.py``
times `sam-pseudo` on the demo's CAMs and digests its masks):

* :func:`decode`, the decoder: the first two-way layer's image side (keys and values of the token->image attention,
  queries of the image->token one) is the same for every prompt (the image embedding plus the no-mask embedding), so
  it is projected once an image instead of once a prompt; the later layers' cross attentions never project the
  image's tokens (the projections folded into the tokens' side: :func:`_token_to_image`, :func:`_image_to_token`),
  the image->token softmax runs token-major, the final attention only for the tokens read after it; the predicted
  IoU comes before the masks, and only the prompts with a mask over the threshold are upscaled (:func:`_upscale`,
  its norm in place), only their kept masks made;
* only those masks are upsampled (:func:`upsample`: one 2x resize where the image is square and half the model's
  input, segment-anything's two resizes otherwise);
* the kept masks' RLEs in one pass (:func:`mask_to_rle`), and an RLE is not deep-copied each time ``MaskData.cat``
  gathers the batches and the crops (:class:`_Rle`).

Each step is segment-anything's in exact arithmetic; in float32 the logits and scores move by rounding (within the
parity tolerance, 1e-4), the masks not: ``tests/test_sam_pseudo.py`` holds the records' masks, boxes and points to
segment-anything's own generator exactly, with crops too, and ``bench/bench_sam_pseudo.py`` digests the demo's 500
masks, which must stay those of segment-anything's generator.
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
    uncrop_masks,
)


# --------------------------------------------------------------------------------------------- the mask decoder
def _split(linear: torch.nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention's input projection by head: weight ``[heads, d, C]``, bias ``[heads, d, 1]`` (d = out / heads)."""
    out, c = linear.weight.shape
    return linear.weight.view(heads, out // heads, c), linear.bias.view(heads, out // heads, 1)


def _token_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, T, D]`` -> ``[B, heads, T, D / heads]`` (segment-anything's ``_separate_heads``)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _token_to_image(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's token->image ``Attention`` (``attn``): ``q`` ``[B, T, C]`` the prompt tokens, ``k``, ``v``
    ``[B, N, C]`` the image's -> ``[B, T, C]``, the image side never projected. A score is q_h . (W_h k + b_h) =
    (W_h^T q_h) . k + q_h . b_h, and the softmax's rows sum to one, so P (W_h v + b_h) = W_h (P v) + b_h: two
    products of the heads' T-token rows with the N image tokens (``[B, heads T, C] x [B, C, N]`` and back) in place
    of two projections of the N tokens and the per-head products. Equal in exact arithmetic, within float32
    rounding in fact (``tests/test_sam_pseudo.py``)."""
    heads, (b, n, c) = attn.num_heads, k.shape
    wk, bk = _split(attn.k_proj, heads)
    wv, bv = _split(attn.v_proj, heads)
    qh = _token_heads(attn.q_proj(q), heads)  # [B, h, T, d]
    t, d = qh.shape[2], qh.shape[3]
    qh = qh / math.sqrt(d)  # the scores' scale on the T tokens, not on the T x N scores
    scores = torch.baddbmm((qh @ bk).reshape(b, heads * t, 1), (qh @ wk).reshape(b, heads * t, c), k.transpose(1, 2))
    weights = torch.softmax(scores.view(b, heads, t, n), dim=-1)
    mixed = (weights.view(b, heads * t, n) @ v).view(b, heads, t, c)  # [B, h, T, C]
    out = mixed @ wv.transpose(1, 2) + bv.transpose(1, 2)  # [B, h, T, d]
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, heads * d))


def _image_to_token(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's image->token ``Attention`` (``attn``): ``q`` ``[B or 1, N, C]`` the image's queries,
    ``k``, ``v`` ``[B, T, C]`` the prompt tokens -> ``[B, N, C]``, the image side never projected: a score is
    (W_h q + b_h) . k_h = q . (W_h^T k_h) + b_h . k_h, and the output projection of the heads' mix is the mix of
    the tokens' values each projected by its head's block of the output weights (the softmax's rows sum to one):
    ``[B, heads T, C] x [C, N]`` and ``[B, N, heads T] x [B, heads T, C]``, no projection of the N tokens. The scores
    are held token-major, ``[B, heads, T, N]``: a softmax over their middle dimension vectorises over the N
    queries, ~13x faster on CPU than over a last dimension of T = 7 (a point prompt's tokens). Equal in exact
    arithmetic, within float32 rounding in fact (``tests/test_sam_pseudo.py``)."""
    heads, (b, t, c), n = attn.num_heads, k.shape, q.shape[1]
    wq, bq = _split(attn.q_proj, heads)
    kh, vh = _token_heads(attn.k_proj(k), heads), _token_heads(attn.v_proj(v), heads)  # [B, h, T, d]
    d = kh.shape[-1]
    kh = kh / math.sqrt(d)  # the scores' scale on the T tokens, not on the T x N scores
    mixed, bias = kh @ wq, kh @ bq  # [B, h, T, C], [B, h, T, 1]
    if q.shape[0] == 1:  # one image for every prompt (the first layer): one product of every prompt's rows
        scores = torch.addmm(bias.reshape(b * heads * t, 1), mixed.reshape(b * heads * t, c), q[0].t())
    else:
        scores = torch.baddbmm(bias.reshape(b, heads * t, 1), mixed.reshape(b, heads * t, c), q.transpose(1, 2))
    weights = torch.softmax(scores.view(b, heads, t, n), dim=-2)  # over the tokens
    wo = attn.out_proj.weight.view(c, heads, d).permute(1, 2, 0)  # [h, d, C]: each head's block
    values = (vh @ wo).reshape(b, heads * t, c)  # [B, h T, C]
    return torch.baddbmm(attn.out_proj.bias, weights.view(b, heads * t, n).transpose(1, 2), values)


def _token_to_one_image(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's token->image ``Attention`` (``attn``) where every prompt attends to the same image tokens:
    ``q`` ``[B, T, C]`` the prompt tokens, ``k``, ``v`` ``[1, N, C]`` -> ``[B, T, C]``. The image side is projected
    once, and each head's products take every prompt's tokens at once (``[heads, B T, d] x [heads, d, N]``), in place
    of B copies of the projected image and B x heads small products."""
    heads, (b, t, _), n = attn.num_heads, q.shape, k.shape[1]
    qh = attn.q_proj(q)
    d = qh.shape[-1] // heads
    qh = qh.view(b * t, heads, d).transpose(0, 1)  # [h, B T, d]
    kh = attn.k_proj(k[0]).view(n, heads, d).permute(1, 2, 0)  # [h, d, N]
    vh = attn.v_proj(v[0]).view(n, heads, d).transpose(0, 1)  # [h, N, d]
    weights = torch.softmax((qh @ kh) / math.sqrt(d), dim=-1)
    out = (weights @ vh).transpose(0, 1).reshape(b, t, heads * d)
    return attn.out_proj(out)


def _first_layer(layer, queries, image: torch.Tensor, image_pe: torch.Tensor):
    """The first ``TwoWayAttentionBlock`` (no positional encoding on its self-attention): every prompt's image
    tokens are the same there (``image`` ``[1, N, C]``, the embedding plus the no-mask embedding), so its
    token->image keys and values are projected once an image and repeated, and the image->token attention takes
    the one image. ``queries`` ``[B, T, C]`` -> (queries, keys ``[B, N, C]``)."""
    query_pe = queries
    queries = layer.norm1(layer.self_attn(q=queries, k=queries, v=queries))
    k_img = image + image_pe  # [1, N, C]: the same for every prompt
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    q = queries + query_pe
    queries = layer.norm2(queries + _token_to_one_image(t2i, q, k_img, image))
    queries = layer.norm3(queries + layer.mlp(queries))
    # the sum in place in the attention's fresh output (a float sum is the same bits either way round)
    return queries, layer.norm4(_image_to_token(i2t, k_img, queries + query_pe, queries).add_(image))


def _layer(layer, queries, keys, query_pe, key_pe):
    """A later ``TwoWayAttentionBlock``, as segment-anything's but for ``keys + key_pe``, computed once for both
    cross attentions (the same operands, so the same tensor), and its cross attentions with the image side
    unprojected (:func:`_token_to_image`, :func:`_image_to_token`)."""
    q = queries + query_pe
    queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    q, k = queries + query_pe, keys + key_pe
    queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image, q, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    keys = layer.norm4(_image_to_token(layer.cross_attn_image_to_token, k, queries + query_pe, queries).add_(keys))
    return queries, keys


def decode(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
           no_mask: torch.Tensor, iou_thresh: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """segment-anything's ``MaskDecoder(..., multimask_output=True)`` for point prompts, within float32 rounding,
    less work: the first layer's image side once per image, no projection of the image's tokens in the later
    layers, the final attention for the read tokens alone, and the masks of only the (prompt, mask) pairs whose
    predicted IoU is over ``iou_thresh`` (which the generator drops before anything else).

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
    key_pe = image_pe.flatten(2).permute(0, 2, 1)  # [1, N, C]: broadcast, the values repeat_interleave would copy
    queries, keys = _first_layer(transformer.layers[0], tokens, image, key_pe)
    for layer in transformer.layers[1:]:
        queries, keys = _layer(layer, queries, keys, tokens, key_pe)
    # the final attention for the tokens read after it alone: the IoU token and the multimask output's mask tokens
    # (1..3; mask token 0 is the single-mask output, the point tokens are read by nothing); a token's row of an
    # attention does not depend on the other rows
    read = [0, *range(2, 1 + decoder.num_mask_tokens)]
    q, k = queries[:, read] + tokens[:, read], keys + key_pe
    queries = transformer.norm_final_attn(queries[:, read] + _token_to_image(transformer.final_attn_token_to_image,
                                                                             q, k, keys))

    iou = decoder.iou_prediction_head(queries[:, 0, :])[:, 1:]  # [B, 3]: multimask output, masks 1..3
    keep = iou > iou_thresh if iou_thresh is not None else torch.ones_like(iou, dtype=torch.bool)
    rows = keep.any(dim=1).nonzero()[:, 0]  # the prompts with a kept mask
    if not len(rows):
        return keep.flatten(), iou.new_zeros((0, 4 * h, 4 * w)), iou.flatten()[keep.flatten()]
    picked = keep[rows]
    if len(rows) == 1 < batch:  # a transposed convolution of one image takes another route than of several: pair it
        rows = torch.cat([rows, rows])
    hyper = torch.stack([mlp(queries[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps[1:], 1)], 1)
    kept = keys if len(rows) == batch else keys[rows]  # every prompt has a kept mask: no gathered copy
    up = _upscale(decoder.output_upscaling, kept.transpose(1, 2).view(len(rows), c, h, w))
    masks = (hyper[rows] @ up.view(len(rows), up.shape[1], -1)).view(len(rows), -1, *up.shape[2:])
    masks = masks[: len(picked)][picked]
    return keep.flatten(), masks, iou.flatten()[keep.flatten()]


def _upscale(upscaling, x: torch.Tensor) -> torch.Tensor:
    """The decoder's ``output_upscaling`` (segment-anything's: transposed convolution, ``LayerNorm2d``, GELU,
    transposed convolution, GELU) of ``x`` ``[K, C, h, w]`` -> ``[K, C/8, 4h, 4w]``, its norm's steps in place: the
    same operations in the same order (``pow(2)`` is a product with itself, ``x - u`` made once), so the same bits,
    with four fewer ``[K, C/4, 2h, 2w]`` tensors made (a third of the norm's CPU time on the demo)."""
    if len(upscaling) != 5 or type(upscaling[1]).__name__ != "LayerNorm2d":  # another decoder: its own modules
        return upscaling(x)
    up1, norm, act1, up2, act2 = upscaling
    x = up1(x)
    centred = x - x.mean(1, keepdim=True)
    spread = (centred * centred).mean(1, keepdim=True)
    x = centred.div_(torch.sqrt(spread + norm.eps)).mul_(norm.weight[:, None, None]).add_(norm.bias[:, None, None])
    return act2(up2(act1(x)))


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


def mask_to_rle(masks: torch.Tensor) -> list[_Rle]:
    """segment-anything's ``mask_to_rle_pytorch``: ``masks`` ``[K, H, W]`` bool -> K uncompressed RLEs (column-major
    run lengths, the first a run of zeros), the same lists. Its loop runs six small torch operations a mask; this
    finds every mask's changes in one ``nonzero`` and cuts them per mask with numpy (~5x less CPU a mask)."""
    k, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    change = (flat[:, 1:] ^ flat[:, :-1]).nonzero().cpu().numpy()  # [changes, 2]: (mask, index), mask-major
    first = flat[:, 0].cpu().numpy()
    bounds = np.searchsorted(change[:, 0], np.arange(k + 1))
    starts = change[:, 1] + 1
    out = []
    for i in range(k):
        counts = [0] if first[i] else []
        counts.extend(np.diff(np.concatenate(([0], starts[bounds[i]:bounds[i + 1]], [h * w]))).tolist())
        out.append(_Rle(size=[h, w], counts=counts))
    return out


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
        data["rles"] = mask_to_rle(data["masks"])
        del data["masks"]
        return data


__all__ = ["MaskGenerator"]

"""segment-anything's automatic mask generator with the same masks at a fraction of its CPU time.

``SamAutomaticMaskGenerator._process_batch`` upsamples every mask the decoder predicts (three a point) to the model's
input size and back to the image's, then drops those whose predicted IoU is under ``pred_iou_thresh``. The predicted
IoU does not depend on the upsampling, so :class:`MaskGenerator` drops them first and upsamples only the rest
(``bench/bench_sam_pseudo.py`` times `sam-pseudo` on the demo's CAMs and digests its masks). Every kept mask is
upsampled by the same ``F.interpolate`` calls on the same low-resolution logits (one plane each, as before), so its
logits, stability score, box, RLE, the NMS and the records are the same bits; ``tests/test_sam_pseudo.py`` compares
the records with segment-anything's own generator.
"""

from __future__ import annotations

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


class MaskGenerator(SamAutomaticMaskGenerator):
    """:class:`segment_anything.SamAutomaticMaskGenerator` (same arguments, same records) whose batches upsample only
    the masks the predicted-IoU threshold keeps."""

    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
                       orig_size: tuple[int, ...]) -> MaskData:
        """One batch of point prompts (``points`` ``[B, 2]`` float, the crop's pixels) -> the kept masks' MaskData:
        ``rles``, ``iou_preds`` ``[K]``, ``stability_score`` ``[K]``, ``boxes`` ``[K, 4]``, ``points`` ``[K, 2]``,
        in segment-anything's order (point-major, three masks a point)."""
        predictor, model = self.predictor, self.predictor.model
        orig_h, orig_w = orig_size
        coords = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        # SamPredictor.predict_torch's model calls, without its postprocess_masks of every mask
        sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        low_res, iou_preds = model.mask_decoder(image_embeddings=predictor.features,
                                                image_pe=model.prompt_encoder.get_dense_pe(),
                                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                multimask_output=True)
        per_point = low_res.shape[1]
        # under a half-precision autocast (--precision bf16 / fp16) the model's outputs are half: the steps below
        # are segment-anything's post-processing, in fp32 as there (its MaskData.to_numpy has no bfloat16)
        low_res, iou_preds = low_res.flatten(0, 1).float(), iou_preds.flatten(0, 1).float()
        points_t = torch.as_tensor(points.repeat(per_point, axis=0))
        if self.pred_iou_thresh > 0.0:
            keep = iou_preds > self.pred_iou_thresh
            low_res, iou_preds, points_t = low_res[keep], iou_preds[keep], points_t[keep]
        # each mask one plane [K, 1, h, w]: F.interpolate works plane by plane, so a plane's values do not depend on
        # which other planes share the call
        masks = model.postprocess_masks(low_res[:, None], predictor.input_size, predictor.original_size)[:, 0]
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
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        return data


__all__ = ["MaskGenerator"]

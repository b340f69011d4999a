"""`vpltool predict`: a trained decoder -> palette PNG masks for a dataset split (WeCLIP's test protocol).

Per image (research notes §2.5):

1. The long side is resized to ``long_side`` (default 1.6 x the decoder's training crop: WeCLIP trains on 320
   crops and tests at 512), each side rounded up to a multiple of the patch size; the same for every scale
   ``s`` in ``scales`` at ``s x long_side``.
2. Each view and its mirror go through the frozen CLIP and the decoder; the mirror's scores are flipped back
   and the two averaged. Scores of the other scales are resized (bilinear) to the first scale's patch grid and
   averaged with it.
3. The averaged scores are resized to the image and arg-maxed; with ``crf`` the softmax first goes through a
   dense CRF with WeCLIP's test parameters on the RGB image.

Open-vocabulary use (prototypes + class names, no decoder) is not implemented.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import io
from .backbone import ClipBackbone, ModelSpec, load_backbone
from .config import CrfConfig, PredictConfig, RuntimeConfig, to_params
from .decoder import SegDecoder, block_features, load_decoder
from .device import autocast, resolve_device, resolve_precision
from .errors import ContractError, VplError

STAGE = "predict"
LONG_SIDE_RATIO = 1.6  # WeCLIP: 320 px training crops, 512 px long side at test


# --------------------------------------------------------------------------------------------- kernels
def input_long_side(cfg: PredictConfig, crop_size: int) -> int:
    """The input long side: ``cfg.long_side`` or 1.6 x the training crop."""
    return int(cfg.long_side or round(LONG_SIDE_RATIO * crop_size))


def view_size(bb: ClipBackbone, height: int, width: int, long_side: int, scale: float) -> tuple[int, int]:
    """``(H, W)`` of one test view: long side ``long_side * scale``, sides rounded up to the patch size."""
    ratio = long_side * scale / max(height, width)
    return bb.input_size(max(1, round(height * ratio)), max(1, round(width * ratio)))


def view_logits(forward: Callable[[Tensor], Tensor], pixels: Tensor, flip: bool) -> Tensor:
    """Scores of one view, averaged with those of its mirror image flipped back.

    Args:
        forward: ``[B, 3, H, W]`` -> ``[B, N, h, w]``.
        pixels: ``[3, H, W]`` normalised pixels.

    Returns:
        ``[N, h, w]`` float32.
    """
    batch = torch.stack([pixels, pixels.flip(-1)]) if flip else pixels[None]
    out = forward(batch).float()
    return (out[0] + out[1].flip(-1)) / 2 if flip else out[0]


def multiscale_logits(forward: Callable[[Tensor], Tensor], views: Sequence[Tensor], flip: bool) -> Tensor:
    """Mean of :func:`view_logits` over views; every view's scores are resized to the first view's grid.

    Returns:
        ``[N, h0, w0]`` float32 on the first view's patch grid.
    """
    total, grid = None, None
    for pixels in views:
        out = view_logits(forward, pixels, flip)
        if grid is None:
            grid = out.shape[-2:]
        elif out.shape[-2:] != grid:
            out = F.interpolate(out[None], size=grid, mode="bilinear", align_corners=False)[0]
        total = out if total is None else total + out
    return total / len(views)


def predict_logits(bb: ClipBackbone, model: SegDecoder, blocks: Sequence[int], image: np.ndarray,
                   scales: Sequence[float], flip: bool, long_side: int, dtype: torch.dtype) -> Tensor:
    """Multi-scale (+ flip) class scores of one image at its own resolution.

    Args:
        image: ``[H0, W0, 3]`` uint8 RGB.

    Returns:
        ``[C + 1, H0, W0]`` float32 scores (channel 0 = background), on the CPU.
    """
    h0, w0 = image.shape[:2]
    views = [bb.preprocess(image, view_size(bb, h0, w0, long_side, s)) for s in scales]

    def forward(batch: Tensor) -> Tensor:
        feats = block_features(bb, batch, blocks, dtype)
        with torch.no_grad(), autocast(bb.device, dtype):
            return model(feats)[1]

    logits = multiscale_logits(forward, views, flip)
    return F.interpolate(logits[None], size=(h0, w0), mode="bilinear", align_corners=False)[0].cpu()


def crf_config(cfg: PredictConfig) -> CrfConfig:
    """WeCLIP's test-time CRF parameters as a :class:`CrfConfig` for :func:`vpltool.crf.dense_crf`."""
    return CrfConfig(iterations=cfg.crf_iterations, gaussian_sxy=cfg.crf_gaussian_sxy,
                     gaussian_compat=cfg.crf_gaussian_compat, bilateral_sxy=cfg.crf_bilateral_sxy,
                     bilateral_srgb=cfg.crf_bilateral_srgb, bilateral_compat=cfg.crf_bilateral_compat)


def logits_to_mask(logits: Tensor, image: np.ndarray, cfg: PredictConfig) -> np.ndarray:
    """``[C + 1, H, W]`` scores -> ``[H, W]`` uint8 class ids (argmax, optionally after the dense CRF)."""
    if not cfg.crf:
        return logits.argmax(0).numpy().astype(np.uint8)
    from .crf import dense_crf

    probs = logits.float().softmax(0).numpy()
    return dense_crf(image, probs, crf_config(cfg)).argmax(0).astype(np.uint8)


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    """``[image | image blended 50 % with the palette colours of mask]`` as one RGB PNG."""
    from PIL import Image

    palette = np.asarray(io.voc_palette(), dtype=np.uint8).reshape(256, 3)
    blend = (0.5 * image + 0.5 * palette[mask]).astype(np.uint8)
    with io.atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([image, blend], axis=1)).save(tmp, format="PNG")


# --------------------------------------------------------------------------------------------- the stage
PredictSummary = io.StageSummary



def _check(cfg: PredictConfig) -> None:
    if not cfg.scales or any(not (s > 0 and math.isfinite(s)) for s in cfg.scales):
        raise VplError(f"--scales {list(cfg.scales)}: give positive scales, e.g. 1.0,0.75")
    if cfg.long_side is not None and cfg.long_side < 1:
        raise VplError(f"--long-side {cfg.long_side}: must be a positive number of pixels")


def _open_split(f: io.TensorFile, data: str | Path | None, split: str | None):
    """The dataset to predict: ``data`` (+ split), or the decoder's training dataset root with ``split``."""
    from .data import open_dataset

    if data is None:
        trained_on = f.meta("dataset", None)
        if not trained_on:
            raise VplError(f"{f.path}: records no dataset; pass --data ROOT")
        data = trained_on["root"]
    dataset = open_dataset(data, split)
    if list(dataset.classes) != list(f.classes):
        raise ContractError(f"{f.path}: trained for classes {f.classes[1:4]}..., the dataset has "
                            f"{list(dataset.classes)[1:4]}...; predict on a dataset with the same classes")
    return dataset


def run_predict(
    decoder_file: str | Path,
    data: str | Path | None,
    split: str | None,
    out: str | Path,
    cfg: PredictConfig = PredictConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    overlays: str | Path | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
) -> PredictSummary:
    """Masks ``<out>/<id>.png`` for every image of a split, then ``<out>/_stage.json`` (so `vpltool eval OUT` works).

    Args:
        decoder_file: a ``decoder.safetensors`` of `train-decoder`; it names the frozen CLIP and the classes.
        data: dataset root or manifest; None = the dataset the decoder was trained on (with ``split``).
        overlays: optional folder for ``<id>.png`` side-by-side previews.
        backbone: reuse an already loaded CLIP (it must be the one the decoder records).
    """
    _check(cfg)
    out = Path(out)
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    model, f = load_decoder(decoder_file, device)
    dataset = _open_split(f, data, split)
    decoder_id = {"path": str(f.path), "sha256": io.sha256_file(f.path)}
    params = {**to_params(cfg), "decoder": decoder_id}
    start = time.perf_counter()
    with io.output_lock(out):  # before prepare_stage_dir: a refused run must not touch the folder
        io.prepare_stage_dir(out, STAGE, params, runtime.overwrite)
        todo = [it for it in dataset.items if not io.item_done(out / f"{it.id}.png", runtime.overwrite)]
        if on_start:
            on_start(len(todo))
        if todo:
            bb = backbone or load_backbone(ModelSpec.from_identity(f.meta("model")), device)
            arch = f.meta("decoder_arch")
            if bb.width != arch["in_width"]:
                raise ContractError(f"{f.path}: trained on a CLIP of width {arch['in_width']}, got {bb.width}")
            long_side = input_long_side(cfg, f.meta("decoder_config")["crop_size"])
            for item in todo:
                _predict_one(bb, model, arch["blocks"], item, out, cfg, long_side, dtype, overlays)
                if on_item:
                    on_item(1)
        io.write_stage_record(out, STAGE, params=params, count=len(dataset.items), classes=list(dataset.classes),
                              inputs={"decoder": decoder_id["sha256"], "dataset": dataset.identity()})
    return PredictSummary(done=len(todo), skipped=len(dataset.items) - len(todo), seconds=time.perf_counter() - start)


def _predict_one(bb, model, blocks, item, out, cfg, long_side, dtype, overlays) -> None:
    from .data import load_image

    image = load_image(item.image)
    logits = predict_logits(bb, model, blocks, image, cfg.scales, cfg.flip, long_side, dtype)
    mask = logits_to_mask(logits, image, cfg)
    io.write_mask(out / f"{item.id}.png", mask)
    if overlays is not None:
        write_overlay(Path(overlays) / f"{item.id}.png", image, mask)

"""`vpltool diagnose`: did learn-prototypes do its job? Phase-1 figures on a labelled split, before the decoder.

For each prototypes file (the text prototypes Z and the learned vision prototypes W) and every image of an `extract`
folder whose dataset has ground truth, with the image's K labelled classes and every background row:

* **pixel**: the pixel classifier phase 1 fits, ``argmax_r softmax(x_p . w_r / T)`` over the image's rows on the
  unit dense features (a background row's win is background). High for W, low for Z: phase 1 fitted the pixels.
* **GradCAM at each layer**: the raw softmax-GradCAM (no CAA) at the last block's input (``ln_1`` output, the
  paper's and CLIP-ES's layer) and at its output tokens, scored like `eval` scores CAMs (best background exponent).
  If W wins on pixels but loses here, GradCAM does not carry W's directions back through the last block.
* **modality gap**: mean cosine between an image embedding and its classes' rows; mean cosine between each class's
  row and its text row; the paper's region gap, mean ``||c_n - w_n||`` with ``c_n`` the normalised mean feature of
  the ground-truth pixels of class n; and ``||Z_cls - W_cls||_F`` (Theorem 1).

All mIoU values are fractions in [0, 1], over the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..config import EvalConfig, ExtractConfig, RuntimeConfig, from_params
from ..data import open_recorded
from ..device import resolve_device
from ..errors import VplError
from ..models import GRADCAM_LAYERS, ClipBackbone, ModelSpec, load_model
from ..ops.kernels import MiouAccumulator, cams_to_labels, upsample
from ..runtime.batches import run_image_batches
from ..runtime.numerics import run_numerics

KINDS = ("pixel", *(f"gradcam_{layer}" for layer in GRADCAM_LAYERS))


class _Scores:
    """Confusion matrices of one prototypes file: the pixel classifier, and GradCAM per layer and exponent."""

    def __init__(self, n_classes: int, exponents: Sequence[float]):
        self.pixel = MiouAccumulator(n_classes)
        self.gradcam = {(layer, a): MiouAccumulator(n_classes) for layer in GRADCAM_LAYERS for a in exponents}
        self.image_cos: list[float] = []

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {"pixel": self.pixel.result()["miou"]}
        for layer in GRADCAM_LAYERS:
            scores = [acc.result()["miou"] for (lay, _), acc in self.gradcam.items() if lay == layer]
            out[f"gradcam_{layer}"] = max((s for s in scores if s is not None), default=None)
        out["image_to_class_cosine"] = float(np.mean(self.image_cos)) if self.image_cos else None
        return out


def pixel_labels(x: torch.Tensor, rows: torch.Tensor, labels: Sequence[int], temperature: float) -> torch.Tensor:
    """``[hw]`` class ids of the pixel classifier: the argmax row of ``x . rows^T / T`` (background rows -> 0).

    Args:
        x: ``[hw, D]`` unit dense features. rows: ``[K + M, D]`` unit rows, the K classes first.
    """
    best = (x @ rows.T / temperature).argmax(1)
    ids = torch.tensor([*labels, *[0] * (len(rows) - len(labels))], dtype=torch.long)
    return ids[best]


def _score_image(bb: ClipBackbone, feats: io.Features, gt: np.ndarray, protos: io.Prototypes, scores: _Scores,
                 exponents: Sequence[float]) -> None:
    labels = tuple(int(c) for c in feats.labels)
    rows = protos.image_rows(labels)
    x = F.normalize(feats.dense.flatten(0, 1), dim=1)
    grid = feats.grid
    px = pixel_labels(x, rows, labels, protos.temperature).view(1, 1, *grid).float()
    full = F.interpolate(px, size=gt.shape, mode="nearest")[0, 0].numpy().astype(np.uint8)
    scores.pixel.add(gt, full, item=feats.id)
    for layer in GRADCAM_LAYERS:
        cam = bb.gradcam(feats.last_block_input, grid, rows, len(labels), protos.temperature, layer=layer)
        maps = upsample(cam.maps.cpu(), gt.shape).numpy()
        for a in exponents:
            scores.gradcam[layer, a].add(gt, cams_to_labels(maps, labels, a), item=feats.id)
        if layer == "input" and labels:
            img = F.normalize(cam.dense.mean(0), dim=0).cpu()
            scores.image_cos.append(float((rows[: len(labels)] @ img).mean()))


def region_centroids(features: Path, items: dict, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[C, D]`` unit mean feature of each class's ground-truth patches (nearest GT label per patch) and ``[C]``
    patch counts."""
    sums, counts = None, torch.zeros(len(classes) - 1)
    for item_id in io.item_ids(features):
        feats = io.read_features(io.feature_path(features, item_id), classes=classes, dense_only=True)
        gt = io.read_mask(items[item_id].gt, num_classes=len(classes))
        small = cv2.resize(gt, feats.grid[::-1], interpolation=cv2.INTER_NEAREST).reshape(-1)
        x = F.normalize(feats.dense.flatten(0, 1), dim=1).double()
        sums = torch.zeros(len(classes) - 1, x.shape[1], dtype=torch.float64) if sums is None else sums
        keep = torch.from_numpy((small > 0) & (small < len(classes))).bool()
        ids = torch.from_numpy(small.astype(np.int64))[keep] - 1
        sums.index_add_(0, ids, x[keep])
        counts += torch.bincount(ids, minlength=len(classes) - 1).float()
    return F.normalize(sums.float(), dim=1), counts


def gap_figures(protos: io.Prototypes, text: io.Prototypes | None, centroids: torch.Tensor,
                counts: torch.Tensor) -> dict[str, float | None]:
    """Row-to-text cosine, region gap and ``||Z - W||_F`` over the class rows (classes seen in GT for the region)."""
    rows = protos.vectors[protos.class_rows()]
    seen = counts > 0
    out: dict[str, float | None] = {"region_gap": float((centroids[seen] - rows[seen]).norm(dim=1).mean())
                                    if seen.any() else None}
    if text is not None:
        z = text.vectors[text.class_rows()]
        out["row_to_text_cosine"] = float((rows * z).sum(1).mean())
        out["frobenius_to_text"] = float((z - rows).norm())
    return out


def run_diagnose(features: str | Path, prototypes: Sequence[str | Path], text: str | Path | None = None,
                 runtime: RuntimeConfig = RuntimeConfig(), *, cfg: EvalConfig = EvalConfig(),
                 json_out: str | Path | None = None, on_start: Callable[[int], None] | None = None,
                 on_item: Callable[[int], None] | None = None, backbone: ClipBackbone | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Phase-1 figures of each prototypes file (and of ``text``, first, when given) on an `extract` folder;
    ``json_out`` replaces a file there only if it holds a diagnosis, anything else only with ``overwrite``.

    Returns:
        ``{"images": n, "rows": [{"prototypes", "source", "pixel", "gradcam_input", "gradcam_output",
        "image_to_class_cosine", "region_gap", "row_to_text_cosine", "frobenius_to_text"}, ...]}``.
    """
    features = Path(features)
    if json_out is not None:
        io.check_writable_target(json_out, ".json", "--json")
    record = io.read_stage_record(features, "extract")
    classes, model = record["classes"], io.recorded_model(record, features)
    paths = ([Path(text)] if text is not None else []) + [Path(p) for p in prototypes]
    if not paths:
        raise VplError("give at least one prototypes file (--prototypes) or --text")
    files = [io.read_prototypes(p, classes=classes, model=model, source="text" if text is not None and i == 0
                                else None) for i, p in enumerate(paths)]
    text_protos = files[0] if text is not None else None
    numerics = run_numerics()  # fp32 (no --precision): the features' and prototypes' mode must be this run's
    io.check_numerics(numerics, *io.folder_made(features, record, "extract"), *(f.made() for f in files))
    dataset = open_recorded(features)
    io.check_outputs("diagnose", {"--json": (json_out, "file", "diagnosis")}, overwrite=overwrite,
                     inputs={"the extract folder": features, "--text": text,
                             **{f"--prototypes {p}": p for p in prototypes}}, protected=dataset.folders())
    items = {it.id: it for it in dataset.items if it.gt is not None}
    ids = [i for i in io.item_ids(features) if i in items]
    if not ids:
        raise VplError(f"{features}: none of its images has a ground-truth mask; diagnose needs a labelled split "
                       "(extract e.g. --split val or train with masks)")
    extract_cfg = from_params(ExtractConfig, record["params"], io.stage_record_path(features))
    bb = backbone or load_model("clip", ModelSpec.from_identity(model, features), resolve_device(runtime.device))
    scores = [_Scores(len(classes), cfg.bg_exponents) for _ in files]
    if on_start:
        on_start(len(ids))

    def load(i: int) -> dict:  # in the shared pipeline's loading workers, ahead of the scoring
        item = items[ids[i]]
        feats = io.read_features(io.feature_path(features, ids[i]), classes=classes)
        image = io.load_image(item.image) if feats.last_block_input is None else None
        return {"feats": feats, "image": image, "gt": io.read_mask(item.gt, num_classes=len(classes))}

    def run(batch: dict) -> Callable[[slice], dict]:  # one image a batch: its figures, added to ``scores`` here
        feats, image, gt = batch["feats"][0], batch["image"][0], batch["gt"][0]

        def score(part: slice) -> dict:
            if image is not None:
                bb.fill_tokens(feats, image, extract_cfg.attention_blocks, extract_cfg.parity)
            for protos, acc in zip(files, scores):
                _score_image(bb, feats, gt.numpy() if isinstance(gt, torch.Tensor) else gt, protos, acc,
                             cfg.bg_exponents)
            return {}

        return score

    # the shared loop with one image a batch (the scores are per image; loading is what runs ahead) and nothing
    # written per image: the figures are summed over the images, on this thread
    run_image_batches(ids, load, run, lambda index, t: None, bb.device, runtime,
                      lambda i: str(io.feature_path(features, ids[i])), "run diagnose with --device cpu", on_item,
                      batch_size=1)
    centroids, counts = region_centroids(features, items, classes)
    rows = [{"prototypes": str(p), "source": f.source, **s.result(), **gap_figures(f, text_protos, centroids, counts)}
            for p, f, s in zip(paths, files, scores)]
    result = {"features": str(features), "images": len(ids), "rows": rows, io.NUMERICS: numerics}
    if json_out is not None:
        io.write_json(json_out, result, kind="diagnosis")
    return result


def format_result(result: dict[str, Any]):
    """A rich table: one row per prototypes file, mIoU in percent, gap figures as they are."""
    from rich.table import Table

    table = Table(title=f"phase-1 diagnosis on {result['images']} labelled images of {result['features']}")
    headers = ("prototypes", "pixel mIoU %", "GradCAM input mIoU %", "GradCAM output mIoU %", "cos(image, class)",
               "cos(row, text row)", "region gap", "||Z - W||_F")
    for name in headers:
        table.add_column(name, justify="left" if name == "prototypes" else "right")
    keys = ("pixel", "gradcam_input", "gradcam_output", "image_to_class_cosine", "row_to_text_cosine", "region_gap",
            "frobenius_to_text")
    for row in result["rows"]:
        cells = [f"{100 * row[k]:.1f}" if k in KINDS and row.get(k) is not None else
                 (f"{row[k]:.3f}" if row.get(k) is not None else "—") for k in keys]
        table.add_row(f"{Path(row['prototypes']).name} ({row['source']})", *cells)
    table.caption = ("pixel: argmax of softmax(x.W/T) over the image's rows; GradCAM at the last block's input is the "
                     "paper's layer; region gap: mean ||centroid of a class's GT patches - its row||")
    return table


__all__ = ["KINDS", "pixel_labels", "region_centroids", "gap_figures", "run_diagnose", "format_result"]

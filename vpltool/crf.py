"""`vpltool crf`: pseudo-mask PNGs from CAM files + images with a dense CRF (CLIP-ES ``eval_cam_with_crf.py``).

Per image (research notes §1.9, §4.1; K image-level labels, C = K + 1 rows with background first):

1. ``P = [(1 - max_k cam_k)^a ; cam_1 .. cam_K]`` ``[C, H, W]``, not renormalised (CLIP-ES feeds it as is).
2. Unary ``-log(clip(P, 1e-5, 1))``; ``DenseCRF2D`` with a Gaussian (sxy 1, compat 3) and a bilateral
   (sxy 67, srgb 3, compat 4) Potts term, 10 mean-field iterations -> ``Q`` ``[C, H, W]``.
3. ``label = [0, labels...][argmax Q]``; pixels with ``max Q < 0.95`` -> 255 (ignored by the decoder's loss).

``--parity clip-es`` gives the bilateral term CLIP-ES's image: the BGR photo minus the Caffe means, cast to uint8
so negative values wrap around (see :func:`clip_es_image`), and builds step 1 and the unary in float16 like CLIP-ES
(its CAM files are float16); the default gives it the RGB photo and computes in float32.
``--no-crf`` skips steps 2-3: ``label = [0, labels...][argmax P]`` with no ignore pixel, i.e. exactly the
masks ``vpltool eval`` scores for the CAM folder at the same exponent (the paper's rows without CRF).

Images are processed by a pool of spawned processes, each reading its CAM file and image and writing its PNG
itself, one image at a time; the result of an image never depends on the worker that made it.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import io
from .config import IGNORE_INDEX, CrfConfig, RuntimeConfig, to_params
from .errors import ContractError, MissingDependencyError, VplError

STAGE = "crf"
PARITIES = ("none", "clip-es")
CLIP_ES_BGR_MEAN = (104.008, 116.669, 122.675)  # deeplab-pytorch's Caffe means, B, G, R
UNARY_FLOOR = 1e-5  # pydensecrf.utils.unary_from_softmax's clip: -log(0) would be an infinite unary
MAX_CHUNK = 8  # images per pool task: amortises the task round trip, small enough to keep workers balanced


# --------------------------------------------------------------------------------------------- kernels
def _densecrf() -> Any:
    """The ``pydensecrf.densecrf`` module, imported only when the stage runs (an optional native extra)."""
    try:
        import pydensecrf.densecrf as dcrf  # shipped by the `pydensecrf2` wheel
    except ImportError:
        raise MissingDependencyError(
            "`vpltool crf` needs the CRF extra: pip install 'vpltool[crf]' (or use --no-crf)"
        ) from None
    return dcrf


def crf_probabilities(cams: np.ndarray, bg_exponent: float = CrfConfig.bg_exponent, fp16: bool = False
                      ) -> np.ndarray:
    """CLIP-ES's class scores: a background row ``(1 - max_k cams)^a`` stacked on the CAMs.

    Args:
        cams: ``[K, H, W]`` float in [0, 1], one map per image-level label (K may be 0).
        bg_exponent: ``a`` > 0; larger values shrink the background score.
        fp16: compute in float16 as CLIP-ES does on its fp16 CAM files (``--parity clip-es``); the default computes
            in float32, so the background row is not rounded to 11 bits.

    Returns:
        ``[K + 1, H, W]`` in [0, 1] (float32, or float16 with ``fp16``), row 0 = background; rows are *not*
        normalised to sum to 1.
    """
    if fp16:
        cams = np.asarray(cams, dtype=np.float16)
        fg = cams.max(0) if len(cams) else np.zeros(cams.shape[1:], np.float16)
        return np.concatenate([np.power(1 - fg, bg_exponent)[None], cams])  # CLIP-ES: eval_cam_with_crf.py:crf
    cams = np.asarray(cams, dtype=np.float32)  # float16 files: no half arithmetic in the power below
    if cams.ndim != 3:
        raise ValueError(f"cams must be [K, H, W], got shape {cams.shape}")
    fg = cams.max(0) if len(cams) else np.zeros(cams.shape[1:], np.float32)
    bg = np.clip(1.0 - fg, 0.0, 1.0) ** np.float32(bg_exponent)  # clip: fp16 values just above 1 would give NaN
    return np.concatenate([bg[None], cams]).astype(np.float32, copy=False)


def unary(probs: np.ndarray) -> np.ndarray:
    """``-log(clip(p, 1e-5, 1))`` ``[C, H*W]`` float32 C-contiguous, computed in the dtype of ``probs``.

    As ``pydensecrf.utils.unary_from_softmax``: float16 probs (CLIP-ES's, from its float16 CAM files) give a float16
    logarithm, which flips a few pixels against a float32 one.
    """
    flat = probs.reshape(len(probs), -1)
    kind = flat.dtype.type
    return np.ascontiguousarray(-np.log(np.clip(flat, kind(UNARY_FLOOR), kind(1.0))), dtype=np.float32)


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CrfConfig = CrfConfig()) -> np.ndarray:
    """Mean-field inference of a fully connected CRF (Krähenbühl & Koltun 2011) with CLIP-ES's kernels.

    Args:
        image: ``[H, W, 3]`` uint8, what the bilateral term compares (RGB photo or :func:`clip_es_image`).
        probs: ``[C, H, W]`` float scores in [0, 1] (e.g. :func:`crf_probabilities`); unary = :func:`unary`.
        cfg: iterations and the Gaussian / bilateral kernel parameters.

    Returns:
        Q ``[C, H, W]`` float32, per-pixel marginals summing to 1 over C.
    """
    c, h, w = probs.shape
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be [{h}, {w}, 3] uint8 to match probs, got {image.dtype} {image.shape}")
    if c == 1:  # a single label has nothing to decide; pydensecrf would only spend time on it
        return np.ones((1, h, w), np.float32)
    dcrf = _densecrf()
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary(probs))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    rgbim = np.require(image, requirements="CW")  # pydensecrf wants a writable buffer; PIL's arrays are read-only
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=rgbim, compat=cfg.bilateral_compat)
    return np.asarray(crf.inference(cfg.iterations), dtype=np.float32).reshape(c, h, w)


def clip_es_image(rgb: np.ndarray) -> np.ndarray:
    """The image CLIP-ES's CRF sees: ``uint8(BGR - (104.008, 116.669, 122.675))``, negative values wrapped.

    CLIP-ES casts float32 to uint8, which on x86 numpy truncates toward zero and wraps modulo 256
    (-104.008 -> 152, -1.5 -> 255). Done explicitly here so the result does not depend on the platform's
    undefined float-to-unsigned cast.

    Args:
        rgb: ``[H, W, 3]`` uint8 RGB.

    Returns:
        ``[H, W, 3]`` uint8, channels B, G, R.
    """
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CLIP_ES_BGR_MEAN, np.float32)
    return np.ascontiguousarray((np.trunc(bgr).astype(np.int16) % 256).astype(np.uint8))


def pseudo_labels(scores: np.ndarray, labels: Sequence[int], confidence: float | None) -> np.ndarray:
    """Label map from per-class scores whose row 0 is background.

    Args:
        scores: ``[K + 1, H, W]`` float (CRF marginals Q, or :func:`crf_probabilities`).
        labels: K class ids in 1..254 of rows 1..K.
        confidence: pixels whose winning score is below it become 255; None or 0 = no ignore pixel.

    Returns:
        ``[H, W]`` uint8: 0 background, a value of ``labels``, or 255. Ties go to the first row (background first,
        like CLIP-ES's argmax and ``vpltool eval``).
    """
    if scores.ndim != 3 or scores.shape[0] != len(labels) + 1:
        raise ValueError(f"scores must be [K + 1, H, W] with K = {len(labels)}, got {scores.shape}")
    ids = np.asarray([0, *labels], dtype=np.int64)
    if ids[1:].size and (ids[1:].min() < 1 or ids[1:].max() > 254):
        raise ValueError(f"labels must be class ids in 1..254, got {list(labels)}")
    out = ids.astype(np.uint8)[scores.argmax(0)]
    if confidence:
        out[scores.max(0) < confidence] = IGNORE_INDEX
    return out


def refine_image(
    image: np.ndarray, cams: np.ndarray, labels: Sequence[int], cfg: CrfConfig = CrfConfig()
) -> np.ndarray:
    """One pseudo mask: steps 1-3 of the module docstring (or the ``no_crf`` argmax).

    Args:
        image: ``[H, W, 3]`` uint8 RGB photo.
        cams: ``[K, H, W]`` float in [0, 1] at image resolution.
        labels: K class ids of the maps.

    Returns:
        ``[H, W]`` uint8 mask (0 background, class ids, 255 ignore).
    """
    parity = cfg.parity == "clip-es"
    probs = crf_probabilities(cams, cfg.bg_exponent, fp16=parity)
    if cfg.no_crf:
        return pseudo_labels(probs, labels, None)
    seen = clip_es_image(image) if parity else image
    return pseudo_labels(dense_crf(seen, probs, cfg), labels, cfg.confidence)


# --------------------------------------------------------------------------------------------- per item
def mask_path(folder: str | os.PathLike, item_id: str) -> Path:
    return Path(folder) / f"{item_id}.png"


def read_cam_array(path: str | os.PathLike, classes: Sequence[str]) -> tuple[np.ndarray, tuple[int, ...]]:
    """A ``cam`` file as numpy, without importing torch (workers start in ~0.3 s instead of ~2 s).

    Returns:
        cams ``[K, H, W]`` float32 in [0, 1] and the K class ids.

    Raises:
        ContractError: wrong kind or classes, damaged file, bad shapes or labels; one line naming the file.
    """
    path = Path(path)
    meta, tensors = _read_safetensors_np(path)
    if meta.get("vpltool.kind") != io.CAM_KIND:
        raise ContractError(f"{path}: expected a 'cam' file, found {meta.get('vpltool.kind')!r}; "
                            "pass the output folder of `vpltool cam`")
    if json.loads(meta.get("vpltool.classes", "[]")) != list(classes):
        raise ContractError(f"{path}: made for other classes than its dataset; re-run `vpltool cam` on this dataset")
    if "cams" not in tensors or "labels" not in tensors:
        raise ContractError(f"{path}: missing tensor 'cams' or 'labels'; re-run `vpltool cam`")
    cams, labels = tensors["cams"].astype(np.float32), tuple(int(v) for v in tensors["labels"].reshape(-1))
    if cams.ndim != 3 or len(cams) != len(labels):
        raise ContractError(f"{path}: cams {cams.shape} do not match {len(labels)} labels; re-run `vpltool cam`")
    if any(not 1 <= c < len(classes) for c in labels):
        raise ContractError(f"{path}: labels {list(labels)} outside 1..{len(classes) - 1}; re-run `vpltool cam`")
    if not np.isfinite(cams).all():
        raise ContractError(f"{path}: tensor 'cams' contains NaN or inf; re-run `vpltool cam`")
    return cams, labels


def _read_safetensors_np(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    from safetensors import safe_open

    if not path.is_file():
        raise VplError(f"{path}: CAM file not found")
    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ContractError(f"{path}: not a readable safetensors file ({e}); re-run `vpltool cam`") from None


def crf_item(cams_dir: str, out: str, item_id: str, image_path: str, classes: Sequence[str], cfg: CrfConfig) -> None:
    """Read one CAM file and its image, write ``<out>/<id>.png`` (atomically)."""
    from .data import load_image

    cam_file = io.cam_path(cams_dir, item_id)
    cams, labels = read_cam_array(cam_file, classes)
    image = load_image(image_path)
    if image.shape[:2] != cams.shape[1:]:
        raise ContractError(
            f"{cam_file}: CAMs are {cams.shape[1]}x{cams.shape[2]} but image {image_path} is "
            f"{image.shape[0]}x{image.shape[1]}; CAMs must be at image resolution (was `cam` run on this dataset?)"
        )
    io.write_mask(mask_path(out, item_id), refine_image(image, cams, labels, cfg))


@dataclass(frozen=True)
class _Chunk:
    """One pool task: only ids and paths cross the process boundary, never images or maps."""

    cams_dir: str
    out: str
    classes: tuple[str, ...]
    cfg: CrfConfig
    items: tuple[tuple[str, str], ...]  # (id, image path)


def _run_chunk(chunk: _Chunk) -> int:
    for item_id, image_path in chunk.items:
        crf_item(chunk.cams_dir, chunk.out, item_id, image_path, chunk.classes, chunk.cfg)
    return len(chunk.items)


def _chunks(items: list[tuple[str, str]], workers: int, **common: Any) -> list[_Chunk]:
    """About 4 tasks per worker so that a slow last task cannot leave the other workers idle for long."""
    size = max(1, min(MAX_CHUNK, len(items) // (4 * workers)))
    return [_Chunk(items=tuple(items[i:i + size]), **common) for i in range(0, len(items), size)]


def _run_chunks(chunks: list[_Chunk], workers: int, on_item: Callable[[int], None] | None) -> int:
    """Run the chunks in this process (1 worker) or in a spawned pool; the first error stops the run.

    Returns:
        The number of processes that ran them.
    """
    tick = on_item or (lambda n: None)
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            tick(_run_chunk(chunk))
        return 1
    workers = min(workers, len(chunks))
    # spawn, not fork: the parent may hold torch's thread pools, and forking after they start can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_chunk, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                tick(future.result())
        except BrokenProcessPool:
            raise VplError(f"a CRF worker process died (out of memory?); retry with fewer --workers than {workers}; "
                           "finished masks are kept") from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return workers


# --------------------------------------------------------------------------------------------- the stage
@dataclass
class CrfSummary(io.StageSummary):
    workers: int = 1  # processes that ran (1 = in this process)




def check_config(cfg: CrfConfig) -> None:
    """VplError naming the option for a value the CRF cannot use."""
    if cfg.parity not in PARITIES:
        raise VplError(f"--parity {cfg.parity!r}: choose {' or '.join(PARITIES)}")
    if not 0.0 <= cfg.confidence <= 1.0:
        raise VplError(f"--confidence {cfg.confidence}: must be in [0, 1] (0 = never ignore)")
    if cfg.iterations < 0:
        raise VplError(f"--iterations {cfg.iterations}: must be >= 0")
    positive = {"bg-exponent": cfg.bg_exponent, "gaussian-sxy": cfg.gaussian_sxy, "bilateral-sxy": cfg.bilateral_sxy,
                "bilateral-srgb": cfg.bilateral_srgb}
    for name, value in positive.items():
        if not value > 0 or not math.isfinite(value):
            raise VplError(f"--{name} {value}: must be a positive number")


def resolve_workers(workers: int) -> int:
    """``workers`` < 1 means one per CPU core."""
    return workers if workers >= 1 else (os.cpu_count() or 1)


def run_crf(
    cams_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: CrfConfig = CrfConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> CrfSummary:
    """Pseudo masks ``<out>/<id>.png`` for every CAM file of a `cam` folder, then ``<out>/_stage.json``.

    Args:
        cams_dir: output folder of `vpltool cam`; its ``_stage.json`` names the dataset holding the images.
        out: output folder (created); finished masks are kept unless ``runtime.overwrite``.
        cfg: CRF parameters (recorded in ``_stage.json``).
        runtime: ``workers`` processes (< 1 = all cores; 1 = in this process), ``overwrite``.
        on_item: called with the number of images just finished. on_start: called once with the number to do.

    Raises:
        MissingDependencyError: pydensecrf is not installed (and ``cfg.no_crf`` is False).
        ContractError: a CAM file of the wrong kind/classes, or whose size differs from its image.
    """
    from .data import open_dataset

    cams_dir, out = Path(cams_dir), Path(out)
    check_config(cfg)
    if not cfg.no_crf:
        _densecrf()  # fail in one line before any folder is touched
    record = io.read_stage_record(cams_dir, "cam")
    ident = record.get("inputs", {}).get("dataset")
    if not isinstance(ident, dict) or "root" not in ident:
        raise ContractError(f"{io.stage_record_path(cams_dir)}: names no dataset; re-run `vpltool cam`")
    dataset = open_dataset(ident["root"], ident.get("split"))
    params = to_params(cfg)
    ids = sorted(p.stem for p in cams_dir.glob("*.safetensors"))
    images = {item.id: str(item.image) for item in dataset.items}
    unknown = [i for i in ids if i not in images]
    if unknown:
        raise VplError(f"{io.cam_path(cams_dir, unknown[0])}: image '{unknown[0]}' is not in dataset "
                       f"{ident['root']} (split {ident.get('split')}); was the dataset changed after `cam`?")
    start = time.perf_counter()
    with io.output_lock(out):  # before prepare_stage_dir: a refused run must not touch the folder
        io.prepare_stage_dir(out, STAGE, params, runtime.overwrite)
        todo = [(i, images[i]) for i in ids if not io.item_done(mask_path(out, i), runtime.overwrite)]
        if on_start:
            on_start(len(todo))
        workers = resolve_workers(runtime.workers)
        chunks = _chunks(todo, workers, cams_dir=str(cams_dir), out=str(out), classes=tuple(dataset.classes), cfg=cfg)
        workers = _run_chunks(chunks, workers, on_item)
        io.write_stage_record(out, STAGE, params=params, count=len(ids),
                              inputs={"cams": io.sha256_file(io.stage_record_path(cams_dir)), "dataset": ident})
    return CrfSummary(done=len(todo), skipped=len(ids) - len(todo), seconds=time.perf_counter() - start,
                      workers=workers)


__all__ = [
    "STAGE", "PARITIES", "crf_probabilities", "unary", "dense_crf", "clip_es_image", "pseudo_labels", "refine_image",
    "read_cam_array", "mask_path", "CrfSummary", "check_config", "run_crf",
]

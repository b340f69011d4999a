"""The tensor file kinds the stages exchange: features, prototypes, cam, cam-debug (docs/file-formats.md).

One writer and one reader per kind. Readers check the kind, the classes and NaN/inf before anything is used, and
every error is one line naming the file and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ContractError
from .files import by_content, jsonable
from .stage import recorded_ids
from .tensors import TensorFile, check_finite, header_numerics, read_header, read_tensors, write_tensors

FEATURES_KIND = "features"
PROTOTYPES_KIND = "prototypes"
CAM_KIND = "cam"
CAM_DEBUG_KIND = "cam-debug"
TENSOR_SUFFIX = ".safetensors"


def feature_path(folder: str | os.PathLike, item_id: str) -> Path:
    """Image ``item_id``'s file in an `extract` folder."""
    return Path(folder) / f"{item_id}{TENSOR_SUFFIX}"


def cam_path(folder: str | os.PathLike, item_id: str) -> Path:
    """Image ``item_id``'s file in a `cam` (or ``--save-debug``) folder."""
    return Path(folder) / f"{item_id}{TENSOR_SUFFIX}"


def item_ids(folder: str | os.PathLike) -> list[str]:
    """Sorted ids of the per-image tensor files of a finished stage folder, from its record
    (:func:`vpltool.io.recorded_ids`: a stray ``.safetensors`` is no item, a missing item is an error)."""
    return recorded_ids(folder, TENSOR_SUFFIX)


# --------------------------------------------------------------------------------------------- features
class Features:
    """One image's cached `extract` output (float32 CPU tensors).

    Attributes:
        dense: ``[h, w, D]`` patch features in the joint space (not normalised).
        last_block_input: ``[1 + h*w, width]`` tokens entering the last block, or None (light cache).
        attention: ``[h*w, h*w]`` mean head-averaged attention of the blocks before the last, CLS removed, or None.
        image_size / input_size: original ``(H0, W0)`` and network ``(H, W)``.
    """

    def __init__(self, f: TensorFile):
        self.file = f
        self.id: str = f.meta("id")
        self.dense = f["dense"].float()
        tokens, attention = f.tensors.get("last_block_input"), f.tensors.get("attention")
        self.last_block_input = None if tokens is None else tokens.float()
        self.attention = None if attention is None else attention.float()
        self.image_size: tuple[int, int] = tuple(f.meta("image_size"))
        self.input_size: tuple[int, int] = tuple(f.meta("input_size"))
        self.labels: tuple[int, ...] = tuple(f.meta("labels", []))
        self.model: dict[str, str] = f.meta("model")

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.dense.shape[:2])


def token_dtype(parity: str):
    """The dtype a features file keeps ``last_block_input`` and ``attention`` in: float16, but float32 under
    ``--parity clip-es``, where `cam` must see CLIP-ES's fp32 values (fp16 tokens alone leave the raw CAM 8e-4 off).
    ``dense`` is always float16 (CLIP-ES does not use it)."""
    import torch

    return torch.float32 if parity == "clip-es" else torch.float16


def write_features(path: str | os.PathLike, tensors: Mapping[str, Any], *, dtypes: Mapping[str, Any],
                   classes: Sequence[str], params: Mapping[str, Any], checked: bool = False, **meta: Any) -> Path:
    """One image's features file (kind ``features``).

    Args:
        tensors: ``dense`` ``[h, w, D]``, optionally ``last_block_input`` ``[1+hw, width]`` and ``attention``
            ``[hw, hw]`` (torch, any float dtype).
        dtypes: the dtype each tensor is stored in (fp16, or fp32 for parity tokens).
        checked: the tensors are in their stored dtypes and free of NaN/inf already (checked on the device).
        meta: ``id``, ``image_size``, ``input_size``, ``grid``, ``labels``, ``model``, ``patch_size``, ``width``,
            ``embed_dim``, ``logit_scale``, ``attention_blocks``.
    """
    return write_tensors(path, {k: v.to(dtypes[k]) for k, v in tensors.items()}, kind=FEATURES_KIND,
                         classes=classes, params=params, checked=checked, **meta)


def read_features(path: str | os.PathLike, classes: Sequence[str] | None = None, need_tokens: bool = False,
                  dense_only: bool = False) -> Features:
    """Read and validate one ``features`` file (NaN/inf in any tensor refused)."""
    return Features(read_feature_tensors(path, classes, ["dense"] if dense_only else None, need_tokens))


def read_feature_tensors(path: str | os.PathLike, classes: Sequence[str] | None = None,
                         keys: Sequence[str] | None = None, need_tokens: bool = False) -> TensorFile:
    """A ``features`` file's tensors ``keys`` (all when None) as stored, validated: NaN/inf refused, and with
    ``need_tokens`` a light cache (no ``last_block_input``) refused."""
    f = read_tensors(path, kind=FEATURES_KIND, classes=classes, keys=keys)
    for name, tensor in f.tensors.items():
        check_finite(f.path, name, tensor)
    if need_tokens and "last_block_input" not in f.tensors:
        # asked for by a folder whose record says --cache full: the folder mixes two runs (made before one lock
        # served shards and plain runs alike), so skipping finished items would not help: --overwrite
        raise ContractError(f"{path}: extracted with a light cache; re-run `vpltool extract --cache full --overwrite` "
                            "on its folder")
    return f


def features_header(path: str | os.PathLike) -> tuple[tuple[int, ...], tuple[int, int]]:
    """``(labels, grid)`` of a features file from its header alone (no tensor read)."""
    head = read_header(path)
    if "vpltool.grid" not in head:
        raise ContractError(f"{path}: no 'vpltool.grid' metadata; re-run `vpltool extract`")
    return tuple(int(c) for c in json.loads(head.get("vpltool.labels", "[]"))), tuple(json.loads(head["vpltool.grid"]))


def features_meta(path: str | os.PathLike) -> dict[str, Any]:
    """What a stage plans a batch with, from a features file's header alone (no tensor read): ``labels``,
    ``grid`` ``(h, w)``, ``image_size`` / ``input_size`` ``(H, W)`` and ``n_prev`` (attention blocks averaged before
    the last)."""
    head = read_header(path)
    try:
        meta = {k: json.loads(head[f"vpltool.{k}"]) for k in ("grid", "image_size", "input_size")}
        labels = json.loads(head.get("vpltool.labels", "[]"))
        n_prev = int(json.loads(head.get("vpltool.attention_blocks", "0")))
    except (KeyError, ValueError, TypeError) as e:
        raise ContractError(f"{path}: metadata {e} missing or malformed; re-run `vpltool extract`") from None
    return {"labels": tuple(int(c) for c in labels), "grid": tuple(meta["grid"]),
            "image_size": tuple(meta["image_size"]), "input_size": tuple(meta["input_size"]), "n_prev": n_prev}


# --------------------------------------------------------------------------------------------- prototypes
class Prototypes:
    """A prototypes file: text prototypes (`text-prototypes`) or vision prototypes (`learn-prototypes`).

    Attributes:
        vectors: ``[N, D]`` float32, rows L2-normalised.
        row_class: ``[N]`` int64; the class index (1..C) of each row, 0 for background rows. Every class has
            exactly one row.
        row_names: N display names (prompt names / background words).
        temperature: the softmax temperature the prototypes were made for (1/logit_scale for text, tau_I for
            vision prototypes); `cam` uses it unless told otherwise.
        classes: class names, index 0 = background. source: 'text' | 'vision'. model: the CLIP identity.
        numerics: the dtype and numeric mode of the run that made the file (:mod:`runtime.numerics`; None: a file
            of an older vpltool, or not read from a file).
    """

    def __init__(self, vectors, row_class, row_names: Sequence[str], *, classes: Sequence[str], temperature: float,
                 source: str, model: Mapping[str, str], params: Mapping[str, Any] | None = None,
                 path: Path | None = None, numerics: Any = None):
        self.vectors, self.row_class, self.row_names = vectors, row_class, list(row_names)
        self.classes, self.temperature, self.source = list(classes), float(temperature), source
        self.model, self.params, self.path = dict(model), dict(params or {}), path
        self.numerics = numerics  # the dtype and mode that made the file (runtime.numerics), None when unrecorded

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def made(self) -> tuple[Path | None, Any, str]:
        """``(path, numerics, the command that made it)``, for :func:`vpltool.io.check_numerics`."""
        return self.path, self.numerics, "text-prototypes" if self.source == "text" else "learn-prototypes"

    def class_rows(self) -> Any:
        """``[C]`` row index of each class 1..C."""
        import torch

        rows = torch.full((len(self.classes) - 1,), -1, dtype=torch.long)
        fg = (self.row_class > 0).nonzero().flatten()
        rows[self.row_class[fg] - 1] = fg
        return rows

    def background_rows(self) -> Any:
        return (self.row_class == 0).nonzero().flatten()

    def image_rows(self, labels: Sequence[int]) -> Any:
        """``[K + M, D]``: the rows of an image's K classes (in ``labels`` order), then every background row; the
        rows a CAM softmax runs over."""
        import torch

        return torch.cat([self.vectors[self.class_rows()[[c - 1 for c in labels]]],
                          self.vectors[self.background_rows()]])


def write_prototypes(path: str | os.PathLike, p: Prototypes, **extra: Any) -> Path:
    return write_tensors(
        path, {"prototypes": p.vectors.float(), "row_class": p.row_class.long()}, kind=PROTOTYPES_KIND,
        classes=p.classes, params=p.params, row_names=p.row_names, temperature=p.temperature, source=p.source,
        model=p.model, **extra,
    )


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two recorded CLIP identities name the same weights: by content (:func:`vpltool.io.by_content`: the
    digest of local bytes, ``"weights"``, and a file's architecture; a folder reached by another path is the same
    model) where both record a digest; by architecture and pretrained tag or file otherwise (a tag names published
    weights; a record of an older vpltool has no digest and is compared by name, as it was made)."""
    if isinstance(a.get("weights"), str) and isinstance(b.get("weights"), str):
        return by_content(jsonable(_named(a))) == by_content(jsonable(_named(b)))
    return (a.get("model"), a.get("pretrained", "none")) == (b.get("model"), b.get("pretrained", "none"))


def _named(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What names a CLIP's weights in ``identity`` (its config folder only says where its config was found)."""
    return {k: identity[k] for k in ("model", "pretrained", "weights") if k in identity}


def _digest(model: Mapping[str, Any]) -> str:
    weights = model.get("weights")
    return f", sha256 {str(weights).removeprefix('sha256:')[:12]}…" if weights else ""


PROTOTYPE_SOURCES = {"text": "`vpltool text-prototypes`", "vision": "`vpltool learn-prototypes`"}


def _bad_meta(f: TensorFile, key: str, what: str,
              fix: str = "the file is damaged: re-create it with `vpltool text-prototypes` or `vpltool "
                         "learn-prototypes`") -> ContractError:
    raw = f.raw_meta.get(f"vpltool.{key}")
    found = "missing" if raw is None else f"{raw if len(raw) <= 40 else raw[:40] + '…'!r}"
    return ContractError(f"{f.path}: metadata 'vpltool.{key}' is {found}, not {what}; {fix}")


def prototypes_meta(f: TensorFile) -> tuple[float, str, dict[str, Any], list[str]]:
    """``(temperature, source, model, row_names)`` of a prototypes file, validated like its tensors: a finite
    temperature > 0, a known source, the CLIP identity as a JSON object, N row names; ContractError otherwise.
    Also 'background' first among the classes and nowhere else."""
    import math

    classes = f.classes
    if classes[0] != "background" or "background" in classes[1:]:
        raise _bad_meta(f, "classes", "a class list with 'background' first and nowhere else")
    temperature = f.meta("temperature", None)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise _bad_meta(f, "temperature", "a finite number > 0")
    source = f.meta("source", None)
    if source not in PROTOTYPE_SOURCES:
        raise _bad_meta(f, "source", f"one of {', '.join(PROTOTYPE_SOURCES)}")
    model = f.meta("model", None)
    if not isinstance(model, dict) or not isinstance(model.get("model"), str) \
            or not isinstance(model.get("pretrained", "none"), str):
        raise _bad_meta(f, "model", "a JSON object naming the CLIP (model, pretrained)")
    row_names = f.meta("row_names", None)
    if not isinstance(row_names, list) or not all(isinstance(n, str) for n in row_names) \
            or len(row_names) != len(f["prototypes"]):
        raise _bad_meta(f, "row_names", "a list of one name per prototype row")
    return float(temperature), source, model, row_names


def read_prototypes(path: str | os.PathLike, classes: Sequence[str] | None = None,
                    dim: int | None = None, model: Mapping[str, Any] | None = None,
                    source: str | None = None, option: str = "--text") -> Prototypes:
    """Read a prototypes file; check its metadata (:func:`prototypes_meta`), classes, dimension, unit norms, one
    row per class and (given ``model``, the identity recorded by the stage that made the features) the CLIP they
    were made with. ``source``: 'text' or 'vision' when only one will do (``option`` names where it was given)."""
    import torch

    f = read_tensors(path, kind=PROTOTYPES_KIND, classes=classes)
    temperature, found_source, made_with, row_names = prototypes_meta(f)
    if source is not None and found_source != source:
        raise ContractError(f"{path}: holds {found_source} prototypes (its 'vpltool.source'), {option} expects "
                            f"{source} prototypes: pass the output of {PROTOTYPE_SOURCES[source]}")
    vectors, row_class = f["prototypes"].float(), f["row_class"].long()
    check_finite(f.path, "prototypes", vectors)
    if vectors.ndim != 2 or row_class.shape != (vectors.shape[0],):
        raise ContractError(f"{path}: prototypes must be [N, D] with row_class [N]")
    if dim is not None and vectors.shape[1] != dim:
        raise ContractError(f"{path}: prototypes are {vectors.shape[1]}-d but the features are {dim}-d; "
                            "make prototypes with the same CLIP model")
    n_classes = len(f.classes) - 1
    fg = sorted(row_class[row_class > 0].tolist())
    if fg != list(range(1, n_classes + 1)):
        raise ContractError(f"{path}: needs exactly one row per class 1..{n_classes}; the file is damaged")
    if not torch.allclose(vectors.norm(dim=1), torch.ones(len(vectors)), atol=1e-3):
        raise ContractError(f"{path}: prototype rows are not unit-norm; the file is damaged")
    if model is not None and not same_model(made_with, model):
        other = "other weights of " if made_with.get("model") == model.get("model") else ""
        raise ContractError(f"{path}: made with {other}CLIP {made_with.get('model')} ({made_with.get('pretrained')}"
                            f"{_digest(made_with)}), but the features come from {model.get('model')} "
                            f"({model.get('pretrained')}{_digest(model)}); make prototypes with the same model")
    return Prototypes(vectors, row_class, row_names, classes=f.classes, temperature=temperature,
                      source=found_source, model=made_with, params=f.params, path=f.path,
                      numerics=header_numerics(f.raw_meta))


# --------------------------------------------------------------------------------------------- cam
@dataclass
class CamMaps:
    """One image's CAMs as consumers use them (numpy: the CRF workers never import torch).

    Attributes:
        cams: ``[K, H0, W0]`` float16 in [0, 1] at image resolution (upsampled on read from the stored grid).
        labels: the K class ids (1..C) of the maps.
    """

    cams: np.ndarray
    labels: tuple[int, ...]
    file: TensorFile


def write_cam(path: str | os.PathLike, maps, labels: Sequence[int], *, image_size: Sequence[int],
              classes: Sequence[str], params: Mapping[str, Any], checked: bool = False, **extra: Any) -> Path:
    """``maps`` ``[K, h, w]`` in [0, 1] at any resolution up to ``image_size`` (``cam`` stores the patch grid:
    ~100x smaller than maps at image size), stored float32; :func:`read_cam` resizes them to ``image_size``.
    ``checked``: the maps were checked for NaN/inf already (on the device)."""
    import torch

    return write_tensors(path, {"cams": maps.clamp(0, 1).float(),
                                "labels": torch.as_tensor(list(labels), dtype=torch.int64)},
                         kind=CAM_KIND, classes=classes, params=params, checked=checked, image_size=list(image_size),
                         **extra)


def upsample_maps(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``[K, h, w]`` float -> ``[K, H, W]`` float16, bilinear with half-pixel centres (``cv2.resize``) and rounded
    to float16: exactly CLIP-ES's ``scale_cam_image(..., (W0, H0))`` followed by its float16 ``.npy`` storage."""
    import cv2

    h, w = int(size[0]), int(size[1])
    if maps.shape[1:] == (h, w):
        return maps.astype(np.float16)
    if len(maps) == 0:
        return np.zeros((0, h, w), np.float16)
    return np.stack([cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for m in maps]
                    ).astype(np.float16)


def read_cam(path: str | os.PathLike, classes: Sequence[str] | None = None,
             labels: Sequence[int] | None = None) -> CamMaps:
    """Read one ``cam`` file: maps resized to the image (:func:`upsample_maps`), labels checked against classes.

    ``labels``: the image-level labels of the item the file is read for (its dataset's); when given, the file's
    recorded labels must be the same set: a file of another dataset's image of the same id is refused, never
    refined or scored as this one.

    Raises:
        ContractError: wrong kind or classes, damaged file, NaN, shapes or labels that do not fit; one line.
    """
    f = read_tensors(path, kind=CAM_KIND, classes=classes, keys=("cams", "labels"), framework="np")
    maps, raw_labels = f["cams"], f["labels"]
    expected, labels = labels, tuple(int(v) for v in raw_labels.reshape(-1))
    if maps.ndim != 3 or len(maps) != len(labels):
        raise ContractError(f"{f.path}: cams {maps.shape} do not match {len(labels)} labels; re-run `vpltool cam`")
    n_classes = len(classes if classes is not None else f.classes)
    if any(not 1 <= c < n_classes for c in labels):
        raise ContractError(f"{f.path}: labels {list(labels)} outside 1..{n_classes - 1}; re-run `vpltool cam` "
                            "for this dataset")
    if len(set(labels)) != len(labels):
        raise ContractError(f"{f.path}: labels {list(labels)} name a class twice (one map per label); the file is "
                            "damaged: re-run `vpltool cam` (with --overwrite)")
    if expected is not None and sorted(labels) != sorted(int(c) for c in expected):
        raise ContractError(f"{f.path}: CAMs for classes {list(labels)}, but the image is labelled "
                            f"{sorted(int(c) for c in expected)}; the file was made for another image or dataset: "
                            "re-run `vpltool cam` (with --overwrite)")
    check_finite(f.path, "cams", maps)
    if maps.size and (maps.min() < 0 or maps.max() > 1):
        raise ContractError(f"{f.path}: cams hold values in [{maps.min():g}, {maps.max():g}], the format's are in "
                            "[0, 1]; the file is damaged: re-run `vpltool cam` (with --overwrite)")
    size = _cam_image_size(f, maps.shape[1:])
    return CamMaps(upsample_maps(maps, size), labels, f)


def _cam_image_size(f: TensorFile, grid: Sequence[int]) -> tuple[int, int]:
    """A CAM file's ``image_size`` metadata ``[H, W]``, checked: two whole numbers of pixels (at most Pillow's
    decoding limit in all) that the stored grid ``(h, w)`` fits (format 1: the image size itself; else a patch grid:
    the image's aspect within one cell, or square, as ``--image-size`` makes it). Format-1 files carry none."""
    from PIL import Image

    raw = f.meta("image_size", None)
    if raw is None:
        return int(grid[0]), int(grid[1])
    fix = "the file is damaged: re-run `vpltool cam` (with --overwrite)"
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) or float("inf")
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            and v >= 1 for v in raw) and raw[0] * raw[1] <= limit):
        raise _bad_meta(f, "image_size", f"[height, width] in pixels (whole numbers >= 1, {limit:,.0f} pixels at most)",
                        fix)
    (big_h, big_w), (h, w) = raw, (int(grid[0]), int(grid[1]))
    fits = (h, w) == (big_h, big_w) or h == w or ((h - 1) / big_h <= (w + 1) / big_w
                                                  and (w - 1) / big_w <= (h + 1) / big_h)
    if not fits:
        raise ContractError(f"{f.path}: a {h}x{w} grid of CAMs does not fit its {big_h}x{big_w} image (the patch grid "
                            f"keeps the image's aspect); {fix}")
    return big_h, big_w


def write_cam_debug(path: str | os.PathLike, raw, probs, labels: Sequence[int], before_minmax=None, boxes=None, *,
                    classes: Sequence[str], params: Mapping[str, Any], row_names: Sequence[str],
                    **extra: Any) -> Path:
    """One image's `cam --save-debug` file: what each step of `cam` produced, in float32 at patch resolution.

    Args:
        raw: ``[K, h, w]`` GradCAM in [0, 1], before CAA (CLIP-ES's ``grayscale_cam``).
        probs: ``[K + M]`` softmax over the image's rows (``row_names``: K classes, then M background rows).
        labels: ``[K]`` class ids of the maps.
        before_minmax: ``[K, h, w]`` CAA's ``(T * box[None, :]) @ cam`` before its min-max; None with --refine none.
        boxes: per class, the ``(x0, y0, x1, y1)`` boxes on the patch grid (exclusive ends), stored as
            ``[n, 5]`` int32 rows ``(k, x0, y0, x1, y1)`` with ``k`` the map index; None with --refine none.
    """
    import torch

    tensors = {"raw": raw.float(), "probs": probs.float(), "labels": torch.as_tensor(list(labels), dtype=torch.int64)}
    if before_minmax is not None:
        tensors["refined_before_minmax"] = before_minmax.float()
    if boxes is not None:
        rows = [(k, *box) for k, found in enumerate(boxes) for box in found]
        tensors["boxes"] = torch.tensor(rows, dtype=torch.int32).reshape(-1, 5)
    return write_tensors(path, tensors, kind=CAM_DEBUG_KIND, classes=classes, params=params,
                         row_names=list(row_names), **extra)


def read_cam_debug(path: str | os.PathLike, classes: Sequence[str] | None = None) -> TensorFile:
    """A ``cam-debug`` file (see :func:`write_cam_debug`); tensors as stored."""
    return read_tensors(path, kind=CAM_DEBUG_KIND, classes=classes)

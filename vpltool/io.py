"""The file contract: the only module that reads or writes vpltool's formats.

* Tensors: safetensors, every file stamped with ``vpltool.kind``, ``vpltool.format``, ``vpltool.version``,
  ``vpltool.classes`` (JSON list, index 0 = background) and ``vpltool.params`` (JSON of the stage config).
* Masks: single-channel palette PNGs, 0 = background, 1..C = classes, 255 = ignore, VOC palette.
* Directory stages end with ``_stage.json`` written last; it is the Make target and the proof of completion.
* Every write goes to a temporary name in the same folder and is renamed into place, so a crash never leaves a
  file that looks valid. No pickle anywhere.

See docs/file-formats.md for the per-kind keys, shapes and dtypes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from . import __version__
from .errors import ContractError, VplError, write_error

FORMAT_VERSION = "1"
STAGE_RECORD = "_stage.json"
LOCK_FILE = ".vpltool.lock"


# --------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) or VplError(f"{path.parent}: cannot write here ({e.strerror}); "
                                               "choose another --out") from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _raise_write_error(path, e)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither a half file nor its temporary


def _raise_write_error(path: str | os.PathLike, e: OSError) -> NoReturn:
    """Re-raise ``e`` as the one-line error naming ``path`` when the user can fix it; unchanged otherwise."""
    error = write_error(path, e)
    if error is None:
        raise e
    raise error from None


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` + newline to a log file; a full disk or a missing permission is a one-line error."""
    try:
        with open(path, "a") as fh:
            fh.write(line + "\n")
    except OSError as e:
        _raise_write_error(path, e)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VplError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ContractError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------------------------- safetensors
def write_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    *,
    kind: str,
    classes: Sequence[str],
    params: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write torch tensors to ``path`` atomically with the contract metadata.

    Args:
        tensors: name -> torch.Tensor (moved to CPU and made contiguous here).
        kind: the file kind (``features``, ``prototypes``, ``cam``, ``decoder``, ...).
        classes: class names, index 0 = background.
        params: the producing stage's parameters (JSON-able).
        extra: more ``vpltool.<key>`` metadata; non-strings are JSON-encoded.
    """
    from safetensors.torch import save_file

    meta = {
        "vpltool.format": FORMAT_VERSION,
        "vpltool.kind": kind,
        "vpltool.version": __version__,
        "vpltool.classes": json.dumps(list(classes)),
        "vpltool.params": json.dumps(dict(params or {}), default=str),
    }
    meta.update({f"vpltool.{k}": v if isinstance(v, str) else json.dumps(v, default=str) for k, v in extra.items()})
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=meta)
    return Path(path)


class TensorFile:
    """A validated safetensors file: ``tensors`` (dict of torch tensors) and parsed ``meta``."""

    def __init__(self, path: Path, tensors: dict[str, Any], meta: dict[str, str]):
        self.path, self.tensors, self.raw_meta = path, tensors, meta

    def __getitem__(self, key: str):
        try:
            return self.tensors[key]
        except KeyError:
            raise ContractError(f"{self.path}: missing tensor '{key}'; the file is damaged or of an old format") from None

    def meta(self, key: str, default: Any = ...) -> Any:
        """Metadata value ``vpltool.<key>``, JSON-decoded where possible."""
        raw = self.raw_meta.get(f"vpltool.{key}")
        if raw is None:
            if default is ...:
                raise ContractError(f"{self.path}: metadata 'vpltool.{key}' missing; re-create the file with vpltool")
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    @property
    def classes(self) -> list[str]:
        return self.meta("classes")

    @property
    def params(self) -> dict[str, Any]:
        return self.meta("params", {})


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """Metadata of a safetensors file without loading tensors; ContractError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise VplError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for truncated/foreign files
        raise ContractError(f"{path}: not a readable safetensors file ({e}); re-run the stage that wrote it") from None


def read_tensors(
    path: str | os.PathLike,
    *,
    kind: str | Sequence[str],
    classes: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
) -> TensorFile:
    """Read a vpltool safetensors file, checking its kind (and classes) before loading any tensor.

    Raises:
        ContractError: one line naming the file and what was expected.
    """
    from safetensors import safe_open

    path = Path(path)
    meta = read_header(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    found = meta.get("vpltool.kind")
    if found not in kinds:
        what = " or ".join(repr(k) for k in kinds)
        raise ContractError(f"{path}: expected a {what} file, found {found!r}; did you pass another stage's output?")
    if classes is not None:
        file_classes = json.loads(meta.get("vpltool.classes", "[]"))
        if list(file_classes) != list(classes):
            raise ContractError(
                f"{path}: made for {len(file_classes) - 1} classes {file_classes[1:4]}..., expected "
                f"{len(classes) - 1} classes {list(classes)[1:4]}...; use files made from the same dataset"
            )
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys()) if keys is None else [k for k in keys if k in f.keys()]
        tensors = {k: f.get_tensor(k) for k in names}
    return TensorFile(path, tensors, meta)


def check_finite(path: Path, name: str, tensor) -> None:
    """ContractError if a tensor holds NaN or inf (a silent poison for every later stage)."""
    import torch

    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ContractError(f"{path}: tensor '{name}' contains NaN or inf; re-run the stage that wrote it")


# --------------------------------------------------------------------------------------------- masks
def voc_palette() -> list[int]:
    """The PASCAL VOC colour map, 256 entries x RGB (bit-interleaved class index); entry 255 is drawn white."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    palette[-3:] = [255, 255, 255]
    return palette


_PALETTE = voc_palette()


def write_mask(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Save an ``[H, W]`` uint8 label map as a VOC-palette PNG (0 = background, 255 = ignore), atomically."""
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ContractError(f"{path}: a mask must be HxW uint8, got {labels.dtype} {labels.shape}")
    img = Image.fromarray(labels, mode="L").convert("P")
    img.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False)
    return Path(path)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette or grayscale) as ``[H, W]`` uint8 class indices, never RGB colours."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L", "I", "I;16"):
                raise ContractError(
                    f"{path}: masks must be palette (P) or grayscale (L) PNGs holding class indices, not {img.mode}"
                )
            arr = np.asarray(img)
    except FileNotFoundError:
        raise VplError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError) as e:
        raise ContractError(f"{path}: unreadable mask ({e}); re-create it") from None
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise ContractError(f"{path}: mask values above 255; class indices must fit in uint8")
        arr = arr.astype(np.uint8)
    return arr


# --------------------------------------------------------------------------------------------- stage folders
@dataclass
class StageSummary:
    """What a per-image stage did in one run: items written, items skipped as already done, wall seconds."""

    done: int
    skipped: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def stage_record_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / STAGE_RECORD


def write_stage_record(
    folder: str | os.PathLike, stage: str, *, params: Mapping[str, Any], inputs: Mapping[str, Any], count: int,
    **extra: Any,
) -> Path:
    """Write ``_stage.json`` last, atomically: the proof that every item of the folder is complete."""
    record = {"stage": stage, "vpltool": __version__, "format": FORMAT_VERSION, "params": dict(params),
              "inputs": dict(inputs), "count": count, **extra}
    return write_json(stage_record_path(folder), record)


def read_stage_record(folder: str | os.PathLike, stage: str | Sequence[str]) -> dict[str, Any]:
    """The completion record of a stage folder; a VplError if the stage never finished there."""
    folder = Path(folder)
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    if not folder.is_dir():
        raise VplError(f"{folder}: folder not found; run `vpltool {stages[0]}` first")
    path = stage_record_path(folder)
    if not path.is_file():
        raise ContractError(f"{folder}: no {STAGE_RECORD}; `vpltool {stages[0]}` did not finish there (re-run it)")
    record = read_json(path)
    if record.get("stage") not in stages:
        raise ContractError(f"{folder}: holds `{record.get('stage')}` output, expected `{stages[0]}` output")
    return record


def prepare_stage_dir(folder: str | os.PathLike, stage: str, params: Mapping[str, Any], overwrite: bool) -> Path:
    """Create ``folder`` for a stage run; refuse to mix parameter sets unless ``overwrite``.

    A folder with a record of other parameters would otherwise end up half old, half new. With ``overwrite``
    the record is removed first so that an interrupted re-run can never look complete.
    """
    folder = Path(folder)
    _make_output_folder(folder)
    if not os.access(folder, os.W_OK):
        raise VplError(f"permission denied writing {folder}: fix the folder's permissions or choose another --out")
    record = stage_record_path(folder)
    if record.is_file():
        old = read_json(record)
        if overwrite:
            record.unlink()
        elif old.get("stage") != stage:
            raise VplError(f"{folder}: holds `{old.get('stage')}` output; choose another --out")
        elif _jsonable(old.get("params")) != _jsonable(params):
            raise VplError(f"{folder}: made with other parameters; pass --overwrite or choose another --out")
    return folder


def _make_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) or VplError(f"{folder}: cannot create output folder ({e.strerror})") from None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold an exclusive lock on an output folder; a second writer is refused at once, not interleaved.

    Take it before anything in the folder changes (:func:`prepare_stage_dir` included: ``--overwrite`` removes
    the record), so that a refused run leaves the folder as it found it. ``name`` lets shards of one run
    (``--shard i/n``) hold separate locks on the same folder.
    """
    folder = Path(folder)
    _make_output_folder(folder)
    try:
        fh = open(folder / name, "a+")
    except OSError as e:
        _raise_write_error(folder / name, e)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VplError(f"{folder}: another vpltool run is writing here; wait for it or choose another --out") from None
        yield
    finally:
        fh.close()


def item_done(path: Path, overwrite: bool) -> bool:
    """True if ``path`` is a finished per-item output to skip (written atomically, so existence is enough)."""
    return not overwrite and path.is_file()


# --------------------------------------------------------------------------------------------- per-kind schemas
FEATURES_KIND = "features"
PROTOTYPES_KIND = "prototypes"
CAM_KIND = "cam"


def feature_path(folder: str | os.PathLike, item_id: str) -> Path:
    return Path(folder) / f"{item_id}.safetensors"


def cam_path(folder: str | os.PathLike, item_id: str) -> Path:
    return Path(folder) / f"{item_id}.safetensors"


class Features:
    """One image's cached `extract` output (float32 CPU tensors).

    Attributes:
        dense: ``[h, w, D]`` patch features in the joint space (not normalised).
        last_block_input: ``[1 + h*w, width]`` tokens entering the last block, or None (``--no-tokens``).
        attention: ``[h*w, h*w]`` mean head-averaged attention of the blocks before the last, CLS removed.
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


def read_features(path: str | os.PathLike, classes: Sequence[str] | None = None, need_tokens: bool = False,
                  dense_only: bool = False) -> Features:
    """Read and validate one ``features`` file (NaN/inf refused)."""
    f = read_tensors(path, kind=FEATURES_KIND, classes=classes, keys=["dense"] if dense_only else None)
    check_finite(f.path, "dense", f["dense"])
    if need_tokens and "last_block_input" not in f.tensors:
        raise ContractError(f"{path}: extracted with --no-tokens; re-run `vpltool extract` without it for `cam`")
    return Features(f)


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
    """

    def __init__(self, vectors, row_class, row_names: Sequence[str], *, classes: Sequence[str], temperature: float,
                 source: str, model: Mapping[str, str], params: Mapping[str, Any] | None = None,
                 path: Path | None = None):
        self.vectors, self.row_class, self.row_names = vectors, row_class, list(row_names)
        self.classes, self.temperature, self.source = list(classes), float(temperature), source
        self.model, self.params, self.path = dict(model), dict(params or {}), path

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

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


def read_prototypes(path: str | os.PathLike, classes: Sequence[str] | None = None,
                    dim: int | None = None) -> Prototypes:
    """Read a prototypes file; check classes, dimension, unit norms and one row per class."""
    import torch

    f = read_tensors(path, kind=PROTOTYPES_KIND, classes=classes)
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
    return Prototypes(vectors, row_class, f.meta("row_names"), classes=f.classes, temperature=f.meta("temperature"),
                      source=f.meta("source"), model=f.meta("model"), params=f.params, path=f.path)


def write_cam(path: str | os.PathLike, cams, labels: Sequence[int], *, classes: Sequence[str],
              params: Mapping[str, Any], **extra: Any) -> Path:
    """``cams`` ``[K, H0, W0]`` in [0, 1] at image resolution (stored float16), ``labels`` ``[K]`` class ids."""
    import torch

    return write_tensors(path, {"cams": cams.clamp(0, 1).to(torch.float16),
                                "labels": torch.as_tensor(list(labels), dtype=torch.int64)},
                         kind=CAM_KIND, classes=classes, params=params, **extra)


def read_cam(path: str | os.PathLike, classes: Sequence[str] | None = None) -> tuple[Any, Any, TensorFile]:
    """``(cams [K, H, W] float32, labels [K] int64, file)``."""
    f = read_tensors(path, kind=CAM_KIND, classes=classes)
    cams, labels = f["cams"].float(), f["labels"].long()
    if cams.ndim != 3 or len(labels) != cams.shape[0]:
        raise ContractError(f"{path}: cams must be [K, H, W] with K labels")
    return cams, labels, f


CAM_DEBUG_KIND = "cam-debug"


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

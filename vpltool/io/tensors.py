"""safetensors files with vpltool's contract metadata: the base of every tensor file kind.

Every file is stamped with ``vpltool.kind``, ``vpltool.format``, ``vpltool.version``, ``vpltool.classes`` (JSON list,
index 0 = background) and ``vpltool.params`` (JSON of the producing stage's config). Readers check the kind (and
classes) from the header before loading any tensor.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..errors import ContractError, VplError
from . import files
from .pages import read_at, read_buffer
from .provenance import ITEM_WRITERS, RUN_META, check_item, writing_digest, writing_numerics
from .records import FORMAT_VERSION, NUMERICS, check_format
from .values import check_weight_values, is_finite


def write_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    *,
    kind: str,
    classes: Sequence[str],
    params: Mapping[str, Any] | None = None,
    checked: bool = False,
    **extra: Any,
) -> Path:
    """Write torch tensors to ``path`` atomically with the contract metadata (canonical bytes: two identical runs
    write identical files). A float tensor holding NaN or inf is refused (ContractError), before anything is written,
    unless ``checked``: the caller has checked them already (the image stages do, on the device, once per batch).

    Args:
        tensors: name -> torch.Tensor (moved to CPU and made contiguous here).
        kind: the file kind (``features``, ``prototypes``, ``cam``, ``decoder``, ...).
        classes: class names, index 0 = background.
        params: the producing stage's parameters (JSON-able).
        extra: more ``vpltool.<key>`` metadata; non-strings are JSON-encoded. ``numerics``: the dtype and mode of
            the run that made the file (:func:`runtime.numerics.run_numerics`); an item of a stage folder takes its
            run's from the folder's ``_run.json`` when not given.
    """
    meta = {
        "vpltool.format": FORMAT_VERSION,
        "vpltool.kind": kind,
        "vpltool.version": __version__,
        "vpltool.classes": json.dumps(list(classes)),
        "vpltool.params": json.dumps(dict(params or {}), default=str, sort_keys=True),
    }
    meta.update({f"vpltool.{k}": v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
                 for k, v in extra.items()})
    if kind in ITEM_WRITERS and (run := writing_digest(Path(path).parent)) is not None:
        meta[f"vpltool.{RUN_META}"] = run  # the run under way in the item's folder (vpltool.io.provenance)
    if kind in ITEM_WRITERS and f"vpltool.{NUMERICS}" not in meta \
            and (made := writing_numerics(Path(path).parent)) is not None:
        meta[f"vpltool.{NUMERICS}"] = json.dumps(made, sort_keys=True)  # the dtype and mode of that run
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, tensor in data.items():  # a diverged run must not leave a file that poisons every later stage
        if not checked and not is_finite(tensor):
            raise ContractError(f"{path}: tensor '{name}' holds NaN or inf; not written (the computation that made "
                                "it diverged or overflowed)")
    return save_tensor_file(path, data, meta)


def tensor_file_chunks(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
                       ) -> tuple[bytes, memoryview]:
    """A safetensors file as two chunks, canonical: the length and header, with the header's keys sorted (the
    library writes them in hash order, so two identical runs gave different bytes), then the library's data section
    (tensors in its own order: by dtype, then name) as a view, not a copy."""
    from safetensors.torch import save

    raw = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned, as the library pads it
    return len(text).to_bytes(8, "little") + text, memoryview(raw)[8 + size:]


def save_tensor_file(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                     *, atomic: bool = True) -> Path:
    """Write torch tensors as a safetensors file (canonical bytes, :func:`tensor_file_chunks`), atomically unless
    ``atomic`` is False (scratch files), with the one-line error of :func:`vpltool.errors.write_error` for a full
    disk, a file-size limit or a read-only file system: the library's own writer raised ``SafetensorError`` for
    those, which is no ``OSError``."""
    from safetensors import SafetensorError

    try:
        chunks = tensor_file_chunks(tensors, metadata)
    except SafetensorError as e:
        raise_safetensor_error(Path(path), e)
    if not atomic:
        path = Path(path)
        try:
            with open(path, "wb") as fh:
                fh.writelines(chunks)
        except OSError as e:
            path.unlink(missing_ok=True)
            files.raise_write_error(path, e)
        return path
    return files.atomic_write(path, chunks)


def raise_safetensor_error(path: Path, e: Exception) -> NoReturn:
    """``e`` (a ``SafetensorError`` wrapping an I/O error as "... (os error 28)") as the one-line write error when
    it names an errno the user can fix; unchanged otherwise."""
    found = re.search(r"\(os error (\d+)\)", str(e))
    if found is not None:
        code = int(found.group(1))
        files.raise_write_error(path, OSError(code, os.strerror(code), str(path)))
    raise e


def read_weights(path: Path, shapes_only: bool, fix: str, containers: Sequence[str] = ("model",),
                 ) -> dict[str, Any]:
    """Name -> tensor (or, ``shapes_only``, its shape tuple) of a model's weights file as released: safetensors (read
    lazily) or a torch checkpoint loaded with ``weights_only`` (no code runs), whose first entry of ``containers``
    that is a dict (a training checkpoint's ``model``, ``teacher``, ...) is taken. Anything else is one line naming
    ``path``, ending with ``fix``."""
    import torch

    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then its JSON header
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: (tuple(f.get_slice(k).get_shape()) if shapes_only else f.get_tensor(k)) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise VplError(f"{path}: not a readable safetensors file ({str(e)[:120]}); {fix}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # pickle, zip or format errors of every kind: the file is no weights file
        raise VplError(f"{path}: not a weights file (neither safetensors nor a torch checkpoint of tensors); "
                       f"{fix}") from None
    inner = next((k for k in containers if isinstance(state, dict) and isinstance(state.get(k), dict)), None)
    state = state[inner] if inner is not None else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VplError(f"{path}: holds no name -> tensor mapping; {fix}")
    return {k: (tuple(v.shape) if shapes_only else v) for k, v in state.items()}


# safetensors' dtype names -> torch's (torch.uint16/32/64 exist from torch 2.3)
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                       "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn",
                       "F8_E5M2": "float8_e5m2"}


def _entry(name: str, entry: dict, data_bytes: int) -> tuple[Any, list[int], int, int, int]:
    """``(dtype, shape, count, begin, end)`` of one tensor of a safetensors header, its byte span checked: inside the
    file's ``data_bytes`` and exactly its shape's size (ValueError otherwise, naming it)."""
    import torch

    dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
    begin, end = entry["data_offsets"]
    shape = [int(d) for d in entry["shape"]]
    count = math.prod(shape)
    if not 0 <= begin <= end <= data_bytes or end - begin != count * dtype.itemsize:
        raise ValueError(name)
    return dtype, shape, count, begin, end


def _header(fh) -> tuple[dict, int, int]:
    """An open safetensors file's JSON header, the byte where its data starts and the file's size; ValueError where
    the header's stated length does not fit in the file."""
    total = os.fstat(fh.fileno()).st_size
    size = int.from_bytes(fh.read(8), "little")
    if not 0 < size <= total - 8:
        raise ValueError(fh.name)
    return json.loads(fh.read(size)), 8 + size, total


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """A safetensors file's tensors in this process's own memory, each read straight from the file into its own
    allocation (torch's, 64-byte aligned), the whole file read once. ``safetensors.torch.load_file`` maps the file
    instead, so a model that keeps its tensors (a load with ``assign``) computes with the file's pages: a file
    rewritten in place during a run changed the weights under it, and one cut short killed the run with SIGBUS.
    Each tensor aligned, not a view at its file offset (a multiple of 8 bytes): MKL's product of a one-row input
    (its matrix-vector kernel) gave other bits for a weight off a 64-byte line than for an aligned one on an AMD
    Zen 4, so a loaded model and its copy, or one file and the same weights saved with a longer header, computed
    apart. A file this reader cannot make sense of (cut short, a header it does not know) is handed to the library,
    whose error says what is wrong."""
    import torch

    from .pages import CutShort

    path = Path(path)
    if sys.byteorder != "little":  # the format's byte order is this machine's: no swap to make
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with open(path, "rb") as fh:
            header, start, total = _header(fh)
            out = {}
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                dtype, shape, count, begin, _ = _entry(name, entry, total - start)
                out[name] = torch.empty(shape, dtype=dtype)  # not zero-filled: every byte is read in
                if count:
                    read_at(fh, start + begin, memoryview(out[name].reshape(-1).view(torch.uint8).numpy()))
            return out
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, CutShort):
        pass
    from safetensors.torch import load_file

    return load_file(str(path))  # raises the library's own error for a damaged file


def read_safetensors_as(path: str | os.PathLike, dtypes: Mapping[str, Any]) -> dict[str, Any]:
    """The tensors of a safetensors file that ``dtypes`` names, each converted to its dtype there (None: the file's
    own) as it is read: one tensor's bytes at a time into one reused buffer, then copied out in the new dtype. So the
    file's dtype is never held whole: an fp32 file read into bf16 peaks at the bf16 tensors plus its largest fp32
    tensor, where :func:`read_safetensors` then a cast holds the whole file and its copy. Plain reads, no mapping
    (as :func:`read_safetensors`). A file this reader cannot make sense of is handed to the library, whose error
    says what is wrong; one that ends early while it is read raises :class:`.pages.CutShort`."""
    import torch

    path = Path(path)
    try:
        if sys.byteorder != "little":
            raise ValueError(path)
        with open(path, "rb") as fh:
            header, start, total = _header(fh)
            out, buffer = {}, read_buffer(0)
            for name, want in dtypes.items():
                dtype, shape, count, begin, end = _entry(name, header[name], total - start)
                if buffer.size < end - begin:
                    buffer = read_buffer(end - begin)
                read_at(fh, start + begin, memoryview(buffer)[:end - begin])  # where the header said it is
                read = torch.frombuffer(buffer, dtype=dtype, count=count).reshape(shape) if count else \
                    torch.empty(shape, dtype=dtype)
                out[name] = read.to(want or dtype, copy=True)  # a copy: the buffer is the next tensor's
            return out
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, OSError):
        pass
    from safetensors.torch import load_file

    state = load_file(str(path))  # raises the library's own error for a damaged file
    return {k: state[k].to(want or state[k].dtype, copy=True) for k, want in dtypes.items()}


def check_weights(path: str | os.PathLike, state: Mapping[str, Any], expected: Mapping[str, Any] | None = None,
                  fix: str = "re-download it, or pass the file of that model", shapes_only: bool = False) -> None:
    """The one scrutiny of a model file loaded from outside (a release ``.pth``, a weights file, a checkpoint):
    ``state`` (name -> tensor) against ``expected`` (the built model's ``state_dict()``, when known): every key
    there (the first missing named), no other, each shape; then every tensor's dtype (a floating-point tensor
    where the model has one, never a complex one) and every floating-point value finite. One line naming
    ``path`` and the tensor, ending with ``fix``; nothing is loaded from a file that fails. ``shapes_only``:
    ``state``'s values are shape tuples (a file's header, read before anything is loaded): names and shapes
    alone."""
    import torch

    if shapes_only:
        for key, shape in state.items():
            want = expected.get(key) if expected is not None else None
            if want is not None and tuple(shape) != tuple(want.shape):
                raise VplError(f"{path}: tensor {key!r} is {list(shape)}, this model's is {list(want.shape)}; {fix}")

    if expected is not None:
        missing = [k for k in expected if k not in state]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise VplError(f"{path}: lacks tensor {missing[0]!r}{more}, which this model needs; {fix}")
        unknown = [k for k in state if k not in expected]
        if unknown:
            raise VplError(f"{path}: holds tensor {unknown[0]!r}, which this model does not have ({len(unknown)} "
                           f"such); {fix}")
    if shapes_only:
        return
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise VplError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; {fix}")
        want = expected.get(key) if expected is not None else None
        if want is not None and tuple(value.shape) != tuple(want.shape):
            raise VplError(f"{path}: tensor {key!r} is {list(value.shape)}, this model's is {list(want.shape)}; {fix}")
        if value.is_complex() or (want is not None and want.is_floating_point() and not value.is_floating_point()):
            raise VplError(f"{path}: tensor {key!r} is {str(value.dtype).removeprefix('torch.')}, not the "
                           f"floating-point weights this model holds; {fix}")
    check_weight_values(path, state.items(), fix)


class TensorFile:
    """A validated safetensors file: ``tensors`` (dict of torch tensors) and parsed ``meta``."""

    def __init__(self, path: Path, tensors: dict[str, Any], meta: dict[str, str]):
        self.path, self.tensors, self.raw_meta = path, tensors, meta

    def __getitem__(self, key: str):
        try:
            return self.tensors[key]
        except KeyError:
            raise ContractError(f"{self.path}: missing tensor '{key}'; the file is damaged or of an old "
                                "format") from None

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
        return header_classes(self.path, self.raw_meta)

    @property
    def params(self) -> dict[str, Any]:
        params = self.meta("params", {})
        if not isinstance(params, dict):
            raise ContractError(f"{self.path}: metadata 'vpltool.params' is not a JSON object; the file is damaged: "
                                "re-run the stage that wrote it")
        return params


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """Metadata of a safetensors file without loading tensors; ContractError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():  # `predict runs/decoder/`: the folder of the file asked for
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        raise VplError(f"{path}: a folder, not a safetensors file{hint}; give the file itself")
    if not path.is_file():
        raise VplError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="np") as f:  # numpy: reading a header never imports torch
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for truncated/foreign files
        raise ContractError(f"{path}: not a readable safetensors file ({e}); re-run the stage that wrote it") from None


def read_tensors(
    path: str | os.PathLike,
    *,
    kind: str | Sequence[str],
    classes: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    framework: str = "pt",
) -> TensorFile:
    """Read a vpltool safetensors file, checking its kind (and classes) before loading any tensor.

    Args:
        keys: the tensors to load (others are not read); None = all.
        framework: ``pt`` (torch tensors) or ``np`` (numpy arrays, so a reader need not import torch).

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
    check_format(path, meta.get("vpltool.format"), meta.get("vpltool.version"))
    check_item(path, meta.get("vpltool.id"), meta.get(f"vpltool.{RUN_META}"), found)
    if classes is not None:
        file_classes = header_classes(path, meta)
        if list(file_classes) != list(classes):
            raise ContractError(
                f"{path}: made for {len(file_classes) - 1} classes {file_classes[1:4]}..., expected "
                f"{len(classes) - 1} classes {list(classes)[1:4]}...; use files made from the same dataset"
            )
    try:
        with safe_open(str(path), framework=framework) as f:
            names = list(f.keys()) if keys is None else [k for k in keys if k in f.keys()]
            tensors = {k: f.get_tensor(k) for k in names}
    except Exception as e:  # a file truncated after its header
        raise ContractError(f"{path}: damaged safetensors file ({e}); re-run the stage that wrote it") from None
    return TensorFile(path, tensors, meta)


def header_numerics(meta: Mapping[str, str]) -> Any:
    """``vpltool.numerics`` of a header (the dtype and mode of the run that made the file), decoded; None for a file
    of a vpltool before numerics were recorded (:func:`vpltool.io.check_numerics` names a damaged one)."""
    raw = meta.get(f"vpltool.{NUMERICS}")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def file_numerics(path: str | os.PathLike) -> Any:
    """The numerics a model file records (:func:`header_numerics`), None for a file that records none or is not a
    safetensors file (a released checkpoint)."""
    try:
        return header_numerics(read_header(path))
    except VplError:
        return None


def header_classes(path: Path, meta: Mapping[str, str]) -> list[str]:
    """``vpltool.classes`` of a header, validated like a tensor: a JSON list of at least two unique, non-empty
    strings (index 0 = background); ContractError naming the file otherwise (never a traceback)."""
    raw = meta.get("vpltool.classes")
    if raw is None:
        raise ContractError(f"{path}: metadata 'vpltool.classes' missing; re-create the file with vpltool")
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    well_formed = isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) and n for n in names)
    if not well_formed or len(set(names)) != len(names):
        raise ContractError(f"{path}: metadata 'vpltool.classes' is {_short(raw)}, not a list of unique class names "
                            "(background first); the file is damaged: re-create it with vpltool")
    return names


def _short(raw: str, n: int = 40) -> str:
    return repr(raw if len(raw) <= n else raw[:n] + "…")


def check_finite(path: Path, name: str, tensor) -> None:
    """ContractError if a float tensor (torch or numpy) holds NaN or inf: a silent poison for every later stage."""
    import numpy as np

    if isinstance(tensor, np.ndarray):
        bad = tensor.dtype.kind == "f" and not np.isfinite(tensor).all()
    else:
        bad = not is_finite(tensor)
    if bad:
        raise ContractError(f"{path}: tensor '{name}' contains NaN or inf; re-run the stage that wrote it")

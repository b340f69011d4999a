"""SAM 3's weight files read and written: both layouts (:mod:`.sam3_weights`) as one ``(config, state)`` under
transformers' names, checked against the architecture the configuration builds; tiny seeded random models written in
either layout (tests, and trying the commands without the real weights: :func:`write_tiny`); the weights' identity by
content (:func:`identity`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...errors import VplError
from ...io.pages import CutShort, read_at, read_buffer
from .sam3_weights import (
    CONFIG_KEY,
    FIX,
    HF_CONFIG,
    HF_WEIGHTS,
    META_FILE,
    Sam3Files,
    from_meta,
    meta_config,
    sam3_config,
    tiny_config,
    to_meta,
)

HF_PREFIX = "detector_model."  # the hub's Sam3VideoModel file: its detector's tensors
HF_OTHER = ("tracker_model.", "tracker_neck.")  # ... and its tracker's, which the concept model never reads


def read_config(files: Sam3Files) -> dict[str, Any]:
    """The configuration values of ``files``: ``config.json`` (hf), the file's own (:data:`CONFIG_KEY`, a file of
    :func:`write_meta`) or Meta's builder's (:func:`meta_config`, its release)."""
    if files.layout == "hf":
        try:
            values = json.loads(Path(files.config).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            raise VplError(f"{files.config}: not a readable JSON configuration; {FIX}") from None
        if not isinstance(values, dict):
            raise VplError(f"{files.config}: not a JSON object; {FIX}")
        return values
    saved = _torch_file(files.weights[0], lazy=True)
    own = saved.get(CONFIG_KEY) if isinstance(saved, dict) else None
    return own if isinstance(own, dict) else meta_config()


def read_state(files: Sam3Files, shapes_only: bool, dtype_of: Callable[[str], Any] | None = None
               ) -> dict[str, Any]:
    """The tensors of ``files`` under transformers' ``Sam3Model`` names. ``shapes_only``: nothing read but what
    the names and shapes take (safetensors' header; a torch file's index, its tensors empty ones on the meta
    device), else every tensor in this process's own memory. ``dtype_of`` (a name -> the dtype to hold it in, None:
    the file's): each tensor converted as it is read, one at a time (:func:`_read_as`), so the file's fp32 is never
    held whole (a load straight into bf16: :func:`.sam3_half.load_dtypes`)."""
    if files.layout == "hf":
        held = {path: _safetensors(path, shapes_only or dtype_of is not None) for path in files.weights}
        state: dict[str, Any] = {k: v for part in held.values() for k, v in part.items()}
        prefixed = any(k.startswith(HF_PREFIX) for k in state)
        if prefixed:
            state = {k[len(HF_PREFIX):]: v for k, v in state.items() if k.startswith(HF_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(HF_OTHER)}
        if dtype_of is None:
            return state
        inner = {(HF_PREFIX if prefixed else "") + k: k for k in state}  # the file's name -> transformers'
        read: dict[str, Any] = {}
        for path, part in held.items():  # each file's own names, from the header read above
            read.update(_safetensors(path, False, {n: dtype_of(inner[n]) for n in part if n in inner}))
        return {inner[n]: v for n, v in read.items()}
    path = files.weights[0]
    saved, indexed = _torch_file_indexed(path, lazy=shapes_only or dtype_of is not None)
    detector = _detector(saved)
    if not detector:
        raise VplError(f"{path}: holds no detector.* tensors, so it is not Meta's SAM 3 checkpoint; {FIX}")
    bad = next((k for k, v in detector.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise VplError(f"{path}: entry 'detector.{bad}' is no tensor; {FIX}")
    state = from_meta(detector, path)
    if dtype_of is None or shapes_only:
        return state
    if not indexed:  # a torch that does not tell where a storage lies (older than 2.6): read whole, then converted
        state = from_meta(_detector(_torch_file(path, lazy=False)), path)
    return _read_as(path, state, dtype_of, indexed)


def _detector(saved: dict) -> dict[str, Any]:
    """The ``detector.`` entries of a Meta checkpoint (``{"model": state}`` or the state), the prefix stripped."""
    state = saved.get("model") if isinstance(saved.get("model"), dict) else saved
    return {k[len("detector."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("detector.")}


def _read_as(path: Path, state: dict[str, torch.Tensor], dtype_of: Callable[[str], Any], indexed: bool
             ) -> dict[str, torch.Tensor]:
    """Each tensor of ``state`` as ``dtype_of(name)`` (None: its own dtype), a copy in this process's memory.
    ``indexed``: ``state``'s tensors are empty (the meta device), each storage knowing where its bytes lie in
    ``path`` (:func:`_torch_file_indexed`): each storage's bytes read with plain reads into one buffer of this
    process's own, reused (the largest converted storage's size), and its tensors copied out of it in their dtype,
    so the file's fp32 is never held whole; a tensor kept in its dtype that is its whole storage (the embedding
    tables, 200 MB at full size) is read straight into its own memory, through no buffer. No mapping: a file cut
    short or rewritten while it is read gives a short read, one line here, where a mapped page past the file's new
    end killed the process (SIGBUS)."""
    if not indexed:  # tensors in memory already (read whole)
        return {name: value.to(dtype_of(name) or value.dtype, copy=True) for name, value in state.items()}
    out: dict[str, torch.Tensor] = {}
    buffer, at = read_buffer(0), None
    with open(path, "rb") as fh, _refusing_cut_short(path):
        for name, value in state.items():  # a fused projection's q, k and v views come one after the other
            storage = value.untyped_storage()
            offset, nbytes = storage._checkpoint_offset, storage.nbytes()
            dtype = dtype_of(name) or value.dtype
            if dtype == value.dtype and _whole(value):  # kept as it is (the embedding tables): read straight in
                out[name] = torch.empty(value.shape, dtype=dtype)
                read_at(fh, offset, memoryview(out[name].reshape(-1).view(torch.uint8).numpy()))
                continue
            if at != offset:
                buffer = buffer if buffer.size >= nbytes else read_buffer(nbytes)
                read_at(fh, offset, memoryview(buffer)[:nbytes])
                at = offset
            out[name] = _view(buffer, value).to(dtype, copy=True)  # a copy: the buffer is the next storage's
    return out


def _whole(value: torch.Tensor) -> bool:
    """Whether ``value`` is its whole storage, in order (its bytes the storage's, nothing else there)."""
    return (value.numel() > 0 and value.is_contiguous() and value.storage_offset() == 0
            and value.numel() * value.itemsize == value.untyped_storage().nbytes())


@contextlib.contextmanager
def _refusing_cut_short(path: Path):
    """:class:`vpltool.io.pages.CutShort` of a read of ``path`` as one line naming it and the fix."""
    try:
        yield
    except CutShort as e:
        raise VplError(f"{path}: {e}: was it being copied or replaced? Pass the whole file; {FIX}") from None


def _view(buffer, value: torch.Tensor) -> torch.Tensor:
    """``value`` (an empty tensor: its dtype, shape, strides and offset within its storage) as a view of
    ``buffer`` (the storage's bytes)."""
    if value.numel() == 0:
        return torch.empty(value.shape, dtype=value.dtype)
    whole = torch.frombuffer(buffer, dtype=value.dtype, count=value.untyped_storage().nbytes() // value.itemsize)
    return whole.as_strided(value.shape, value.stride(), value.storage_offset())


def _safetensors(path: Path, shapes_only: bool, dtypes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tensors of one safetensors file (``dtypes``: those it names, each read into its dtype there)."""
    from safetensors import SafetensorError, safe_open

    from ...io import read_safetensors, read_safetensors_as

    try:
        if shapes_only:  # empty tensors on the meta device: the header's shapes and dtypes, nothing read
            with safe_open(str(path), framework="pt") as f:
                return {k: _header_tensor(f.get_slice(k)) for k in f.keys()}
        with _refusing_cut_short(path):
            return read_safetensors(path) if dtypes is None else read_safetensors_as(path, dtypes)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise VplError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:100]}); {FIX}") from None


# safetensors' dtype names (its header) -> torch's; another name is taken as float32 (a dtype torch reads there)
_HEADER_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                  "BOOL": torch.bool}


def _header_tensor(view) -> torch.Tensor:
    """An empty meta-device tensor of a safetensors slice's header shape and dtype (nothing of the file read)."""
    return torch.empty(view.get_shape(), dtype=_HEADER_DTYPES.get(view.get_dtype(), torch.float32), device="meta")


def _torch_file(path: Path, lazy: bool) -> dict:
    """A torch checkpoint loaded with ``weights_only`` (no code runs); ``lazy``: nothing read but its index, its
    tensors empty (:func:`_torch_file_indexed`)."""
    return _torch_file_indexed(path, lazy)[0]


def _torch_file_indexed(path: Path, lazy: bool) -> tuple[dict, bool]:
    """:func:`_torch_file`, and whether each tensor's storage knows where its bytes lie in the file. ``lazy``: the
    tensors are empty ones on the meta device (nothing of their data read, nothing mapped); a torch of 2.6 or later
    sets each storage's ``_checkpoint_offset`` (the byte in the file where its data starts), which
    :func:`_read_as` reads from. A file of another byte order than this machine's is read whole (torch swaps)."""
    try:
        saved = torch.load(path, map_location="meta" if lazy else "cpu", weights_only=True)
    except Exception:  # pickle, zip or format errors of every kind: the file is no checkpoint
        raise VplError(f"{path}: not a readable torch checkpoint (cut short, or another format); {FIX}") from None
    if not isinstance(saved, dict):
        raise VplError(f"{path}: holds a {type(saved).__name__}, not a checkpoint's name -> tensor mapping; {FIX}")
    return saved, lazy and _indexed(path, saved)


def _indexed(path: Path, saved: dict) -> bool:
    """Whether every tensor of ``saved`` (a lazy load) knows its bytes' offset in ``path``, a file of this
    machine's byte order, within the file's size."""
    import sys
    import zipfile

    model = saved.get("model") if isinstance(saved.get("model"), dict) else saved
    tensors = [v for v in model.values() if isinstance(v, torch.Tensor)]
    if sys.byteorder != "little" or not all(hasattr(v.untyped_storage(), "_checkpoint_offset") for v in tensors):
        return False
    with zipfile.ZipFile(path) as z:  # torch records the writer's byte order; none: little (older writers)
        order = next((z.read(n).decode() for n in z.namelist() if n.endswith("/byteorder")), "little")
    return order == "little"


def check_state(where: Path | str, state: dict[str, Any], expected: dict[str, torch.Tensor]) -> None:
    """Names and shapes of ``state`` (tensors or shape tuples) against the built model's ``expected``: one line
    naming the first tensor missing, unknown or of another shape (:func:`vpltool.io.check_weights`), or, for a
    tensor (a header's, a torch file's index), of an integer or complex dtype where the model holds floats (the same
    line as the load's, before the progress starts; values, NaN and zeros, need the whole file: checked at load)."""
    from ...io import check_weights

    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items()}
    check_weights(where, shapes, expected, FIX, shapes_only=True)
    for key, value in state.items():  # the dtypes a header (or a torch file's index) tells, before anything is loaded
        if isinstance(value, torch.Tensor) and (value.is_complex() or (
                expected[key].is_floating_point() and not value.is_floating_point())):
            raise VplError(f"{where}: tensor {key!r} is {str(value.dtype).removeprefix('torch.')}, not the "
                           f"floating-point weights this model holds; {FIX}")


def identity(files: Sam3Files) -> dict[str, Any]:
    """The weights by content, as a record keeps them: ``{"layout", "files": [[name, sha256], ...], "sha256"}``
    (one digest over the files' names and digests), so that the same bytes by another path are the same model."""
    import hashlib

    from ...io import sha256_file

    named = [[p.name, sha256_file(p)] for p in files.files]
    h = hashlib.sha256("".join(f"{n}:{d}\n" for n, d in named).encode())
    return {"layout": files.layout, "files": named, "sha256": "sha256:" + h.hexdigest()}


# ------------------------------------------------------------------------------------------ writing models
def random_state(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random ``Sam3Model`` state of ``config``: every float tensor drawn so that every part computes
    something (weights ~ N(0, 0.02) scaled to their fan-in, LayerNorm weights near 1, biases small), the same in
    every process and on every CPU (drawn in float64 on the CPU, then cast)."""
    from transformers import Sam3Model

    with torch.device("meta"):
        shapes = Sam3Model(sam3_config(dict(config))).state_dict()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in shapes.items():
        x = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        if name.endswith("position_embeddings"):  # the ViT's [1, N, D] table
            x = 0.02 * x
        elif t.dim() >= 2:  # a weight: unit-variance outputs for unit-variance inputs
            x = x / max(1.0, t[0].numel()) ** 0.5
        elif "norm" in name and name.endswith("weight"):
            x = 1.0 + 0.1 * x
        else:
            x = 0.02 * x
        out[name] = x.to(torch.float32)
    return out


def tiny_state(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`random_state` with its scoring heads set so that, as a trained model's, some queries pass Meta's 0.5
    confidence threshold (random heads score every query near 0.3, so nothing downstream of the threshold would
    run): the query and text projections of the dot-product scoring doubled, the presence head's last bias 1.5."""
    state = random_state(config, seed)
    for name in ("dot_product_scoring.query_proj.weight", "dot_product_scoring.text_proj.weight"):
        state[name] = 2.0 * state[name]
    state["detr_decoder.presence_head.layer3.bias"] = torch.full_like(state["detr_decoder.presence_head.layer3.bias"],
                                                                      1.5)
    return state


def write_hf(folder: Path | str, config: dict[str, Any], state: dict[str, torch.Tensor],
             metadata: dict[str, str] | None = None) -> Path:
    """``folder`` in Hugging Face's layout: ``config.json`` (a ``sam3`` configuration) and ``model.safetensors``
    (with ``metadata`` in its header: the toy SAM 3's file kind, which the output guard reads)."""
    from ...io import save_tensor_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = {**sam3_config(dict(config)).to_dict(), "model_type": "sam3", "architectures": ["Sam3Model"]}
    (folder / HF_CONFIG).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    save_tensor_file(folder / HF_WEIGHTS, {k: v.contiguous() for k, v in state.items()}, metadata)
    return folder


def write_meta(path: Path | str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """``path`` as Meta's ``sam3.pt`` (``{"model": detector.* tensors}``, which Meta's ``build_sam3_image_model``
    loads), with the configuration under :data:`CONFIG_KEY` (Meta's loader reads ``model`` alone): a folder is
    given its ``sam3.pt``."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        path = path / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": to_meta(state), CONFIG_KEY: json.loads(json.dumps(config))}, path)
    return path


def write_tiny(where: Path | str, layout: str = "hf", seed: int = 0) -> Path:
    """A tiny seeded random SAM 3 (:func:`~.sam3_weights.tiny_config`) at ``where``: a folder in Hugging Face's
    layout (``hf``) or Meta's ``sam3.pt`` (``meta``: a file, or a folder given its ``sam3.pt``). The same seed
    writes the same model in both layouts. Returns what ``--sam-weights`` takes."""
    config = tiny_config()
    state = tiny_state(config, seed)
    if layout == "hf":
        return write_hf(where, config, state)
    if layout == "meta":
        return write_meta(where, config, state)
    raise VplError(f"layout {layout!r}: give hf (config.json + model.safetensors) or meta (sam3.pt)")


def main(argv: list[str] | None = None) -> None:
    """``python -m vpltool.models.backbones.sam3_files OUT [--layout hf|meta] [--seed N]``: a tiny random SAM 3
    to try the commands without the real weights (its masks mean nothing)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vpltool.models.backbones.sam3_files",
                                     description="Write a tiny seeded random SAM 3 (tests; trying the commands).")
    parser.add_argument("out", help="a folder (hf), or a file or folder for Meta's sam3.pt (meta)")
    parser.add_argument("--layout", choices=("hf", "meta"), default="hf",
                        help="hf: config.json + model.safetensors; meta: sam3.pt [default: hf]")
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed [default: 0]")
    args = parser.parse_args(argv)
    print(write_tiny(args.out, args.layout, args.seed))


__all__ = ["check_state", "identity", "main", "random_state", "read_config", "read_state", "tiny_state", "write_hf",
           "write_meta", "write_tiny"]

if __name__ == "__main__":
    main()

"""The ``dino`` family's weights: a timm pretrained tag's file in the local Hugging Face cache, and a local weights
file checked against the architecture's tensor names and shapes (a training checkpoint's prefixes stripped), so that
nothing loads as a random model in place of weights that did not fit (:mod:`.dino`)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...errors import VplError, VplWarning
from ...io import check_weights, read_weights

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def cached_hub_file(timm, name: str) -> str | None:
    """The locally cached weights file of timm model ``name``'s pretrained tag, or None."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in _WEIGHT_FILES:
        found = try_to_load_from_cache(hub.split("@")[0], filename)
        if isinstance(found, str):
            return found
    return None


# prefixes a training checkpoint puts before the backbone's keys (DINO's teacher/student, DDP's module., a model
# wrapper's backbone.): stripped, and said so; any key left that the architecture lacks, or one it lacks, is refused
KEY_PREFIXES = ("module.", "teacher.", "student.", "backbone.", "model.", "encoder.")


DINO_WEIGHTS_FIX = "pass a timm or DINO weights file (.safetensors, or a torch checkpoint) to --dino-weights"
# a C-RADIOv3 (timm's naflexvit_*_radio_v3): its weights are most often NVlabs/RADIO's own checkpoint
RADIO_WEIGHTS_FIX = ("pass NVlabs/RADIO's checkpoint as its hub entry downloads it (e.g. c-radio_v3-b_half.pth.tar), "
                     "or a timm weights file of that model, to --dino-weights")


def file_weights(path: Path, expected: dict[str, torch.Tensor], shapes_only: bool = False,
                  report: bool = False, fix: str = DINO_WEIGHTS_FIX) -> dict[str, Any]:
    """The file's tensors under the architecture's names: exactly ``expected``'s keys and shapes, after stripping
    the prefixes of :data:`KEY_PREFIXES` (``report``: a warning says which); NVlabs/RADIO's own checkpoint
    (``c-radio_v3-b_half.pth.tar``) read as timm's ``naflexvit_*_radio_v3`` holds it (:mod:`.radio`). A weights
    file of another model (a prototypes file, another ViT) is refused in one line: timm loaded it as a random model
    with a warning, ending with ``fix``."""
    from .radio import backbone_state, is_radio_file, read_checkpoint

    if is_radio_file(path):  # NVlabs/RADIO's own checkpoint (C-RADIOv3): its backbone under timm's names
        state = backbone_state(read_checkpoint(path, shapes_only))
    else:
        state = read_weights(path, shapes_only, fix, containers=("teacher", "state_dict", "model"))
    stripped = []
    while state and not set(state) & set(expected):
        prefix = next((p for p in KEY_PREFIXES if any(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # a head beside: dropped
        stripped.append(prefix)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{len(missing)} of its tensors missing (first: {missing[0]!r})" if missing else "",
                 f"{len(unexpected)} unknown (first: {unexpected[0]!r})" if unexpected else ""]
        raise VplError(f"{path}: not weights of this --dino-model ({'; '.join(p for p in parts if p)}); pass the "
                       "weights of that architecture, or the --dino-model they belong to")
    for key, value in state.items():
        shape = tuple(value) if shapes_only else tuple(value.shape)
        if shape != tuple(expected[key].shape):
            raise VplError(f"{path}: tensor {key!r} is {list(shape)}, the --dino-model's is "
                           f"{list(expected[key].shape)}; pass the weights of that architecture")
    if stripped and report:
        warnings.warn(VplWarning(f"--dino-weights {path}: tensor names prefixed {''.join(stripped)!r} (a training "
                                 "checkpoint); the prefix was stripped"), stacklevel=3)
    if not shapes_only:  # the tensors themselves, as they load: dtypes and finite values
        check_weights(path, state, expected, fix)
    return state


def weights_fix(model: str) -> str:
    """What a bad weights file's line tells the user to pass: RADIO's own checkpoint for a C-RADIOv3."""
    return RADIO_WEIGHTS_FIX if "radio" in model else DINO_WEIGHTS_FIX


def spec_files(spec) -> list[Path]:
    """The weights file a DinoSpec names (none for the hub's cache, whose files timm reads, or random weights): the
    files the registry checks were not replaced after the run named them."""
    return [] if spec.weights in ("hub", "none") else [Path(spec.weights).expanduser()]


__all__ = ["DINO_WEIGHTS_FIX", "RADIO_WEIGHTS_FIX", "KEY_PREFIXES", "cached_hub_file", "file_weights", "spec_files",
           "weights_fix"]


# the meta-device models built so far, by name and timm overrides (a process checks the same model several times)
_META: dict[str, torch.nn.Module] = {}


def meta_model(create: Callable[[], torch.nn.Module], key: str) -> torch.nn.Module:
    """``create()`` on the meta device: the architecture's tensor names, shapes and dtypes without memory. Built
    once a process per ``key`` (read, never changed): timm's random init runs even on the meta device, each fill
    through torch's device mode in Python, slower than the tiny model's own forward."""
    if key not in _META:
        with torch.device("meta"):
            model = create()
        if len(_META) >= 16:
            _META.clear()
        _META[key] = model
    return _META[key]


def model_from_file(create: Callable[..., torch.nn.Module], key: str, path: Path, fix: str) -> torch.nn.Module:
    """The model ``create(pretrained=False)`` builds, with the weights of ``path`` (:func:`file_weights`): built on
    the meta device and given the file's tensors (cast to its dtypes) where they are every tensor it has, so that
    no random init is drawn to be overwritten; built seeded, then loaded into, where it keeps a tensor its state
    dict leaves out (a RoPE model's non-persistent buffers) or the file is RADIO's (mapped, not read)."""
    from .radio import is_radio_file

    model = copy.deepcopy(meta_model(create, key))
    state = file_weights(path, model.state_dict(), fix=fix)
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if own.keys() == state.keys() and not is_radio_file(path):
        model.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point()
                               else v for k, v in state.items()}, strict=True, assign=True)
        return model
    if is_radio_file(path):
        return _load_mapped(create, state)
    with torch.random.fork_rng(devices=[]):  # the same random model in every process
        torch.manual_seed(0)
        model = create(pretrained=False)
    model.load_state_dict(state, strict=True)
    return model


def _load_mapped(create: Callable[..., torch.nn.Module], state: dict) -> torch.nn.Module:
    """``create(pretrained=False)`` (seeded) given ``state``'s tensors (exactly its keys and shapes:
    :func:`file_weights` checked them), a block at a time, where ``state`` is a memory-mapped checkpoint's (RADIO's):
    the pages each group's copy read are handed back after it (:func:`vpltool.io.pages.page_out_tensors`), as the
    pages the values check read are before the model is built, so that the file's pages are not resident beside
    the model's own copy (C-RADIOv3-B: 344 MiB of them, the peak of RADSeg's loading). The same tensors as one
    ``load_state_dict``."""
    from ...io.pages import page_out_tensors

    page_out_tensors(state.values())
    with torch.random.fork_rng(devices=[]):  # the same random model in every process
        torch.manual_seed(0)
        model = create(pretrained=False)
    groups: dict[str, dict] = {}
    for k, v in state.items():
        parts = k.split(".")
        groups.setdefault(".".join(parts[:2]) if parts[0] == "blocks" else parts[0], {})[k] = v
    for group in groups.values():
        result = model.load_state_dict(group, strict=False)
        if result.unexpected_keys:  # not after file_weights' check; said as load_state_dict would
            raise RuntimeError(f"unexpected keys {result.unexpected_keys[:3]}")
        page_out_tensors(group.values())
    return model

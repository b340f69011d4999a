"""Faster loading of a model whose every weight then comes from a file: no random initialisation, no second copy.

Both are context managers around open_clip's ``create_model`` (:func:`vpltool.models.backbones.loading.create_model`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextlib.contextmanager
def no_weight_init() -> Iterator[None]:
    """Skip the random initialisation of modules built inside (``torch.nn.init`` fills do nothing).

    For a model whose every weight is then loaded from a checkpoint (open_clip loads strictly: a missing key is an
    error), the random draws are wasted work: 1.6 s of ViT-B/16's start-up on a CPU. Memory is still allocated.
    The same device as Hugging Face transformers' ``no_init_weights``. Modules that bound an init function by name
    at import (``torch.nn.MultiheadAttention`` calls its own ``xavier_uniform_``) are patched too.
    """
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS}
    skip = lambda tensor, *args, **kwargs: tensor  # noqa: E731
    patched = [(module, name) for module in (init, *_init_importers()) for name, fn in saved.items()
               if getattr(module, name, None) is fn]
    for module, name in patched:
        setattr(module, name, skip)
    try:
        yield
    finally:
        for module, name in patched:
            setattr(module, name, saved[name])


def _init_importers() -> list[Any]:
    """The loaded ``torch.nn`` modules (and open_clip's) other than ``torch.nn.init`` itself."""
    return [m for name, m in list(sys.modules.items()) if m is not None and name != "torch.nn.init"
            and name.startswith(("torch.nn.", "open_clip."))]


@contextlib.contextmanager
def assign_loaded_weights() -> Iterator[None]:
    """``Module.load_state_dict`` takes the checkpoint's tensors (``assign=True``) instead of copying them into
    the freshly built ones: no second copy of the weights in memory (0.6 GB for ViT-B/16) and 0.35 s less start-up
    on a CPU. Each tensor is first cast to the dtype of the one it replaces, so an fp16 file still gives an fp32
    model; shape and key checks are torch's, unchanged.

    The tensors so taken must be the process's own memory: open_clip reads a ``.safetensors`` checkpoint with
    ``safetensors.torch.load_file``, which maps the file, so an fp32 model kept the file's pages and computed with
    whatever was later written over the file in place (SIGBUS when it was cut short). Inside the block open_clip
    reads it with :func:`vpltool.io.read_safetensors` (the file read once into memory) instead.
    """
    original = torch.nn.Module.load_state_dict

    def load(module, state_dict, strict=True, assign=False):
        own = module.state_dict()
        cast = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() and own[k].is_floating_point() else v
                for k, v in state_dict.items()}
        return original(module, cast, strict=strict, assign=True)

    factory = sys.modules.get("open_clip.factory")
    read = getattr(factory, "load_state_dict", None)

    def read_checkpoint(checkpoint_path, *args, **kwargs):  # open_clip's reader, a safetensors file read not mapped
        if not str(checkpoint_path).endswith(".safetensors"):
            return read(checkpoint_path, *args, **kwargs)  # torch.load reads into memory already
        from ...io.tensors import read_safetensors

        state = read_safetensors(checkpoint_path)
        if state and next(iter(state)).startswith("module"):  # as open_clip strips a DDP prefix
            state = {k[7:]: v for k, v in state.items()}
        return state

    torch.nn.Module.load_state_dict = load  # type: ignore[method-assign]
    if read is not None:
        factory.load_state_dict = read_checkpoint
    try:
        yield
    finally:
        torch.nn.Module.load_state_dict = original  # type: ignore[method-assign]
        if read is not None:
            factory.load_state_dict = read


__all__ = ["no_weight_init", "assign_loaded_weights"]

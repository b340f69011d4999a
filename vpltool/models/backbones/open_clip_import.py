"""open_clip imported cheaply (:func:`import_open_clip`), and its optional parts bound when a model needs them:
timm for a timm image tower (SigLIP 2, PE-Core: :func:`with_timm`), transformers for a Hugging Face text tower
(:func:`with_transformers`). :mod:`.loading` is its caller; ``bench/bench_startup.py`` times the import.
:func:`import_deferring_dynamo` is the mechanism, for any package that imports torchvision (:mod:`.sam` imports
segment-anything with it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch


def import_open_clip():
    """``open_clip``, imported without two optional costs it does not need here (a third of its import time).

    * timm: open_clip imports it if installed only to build timm image towers (SigLIP 2, PE-Core) and falls back
      cleanly when it cannot be imported; :func:`create_model` binds it (:func:`with_timm`) for a model whose config
      names one (``vision_cfg.timm_model_name``), so the other models never pay for it.
    * ``torch._dynamo`` (~2 s of a 3 s import on a 2-core CPU): open_clip imports torchvision, whose
      ``ops.roi_align`` imports ``torch._dynamo.utils.is_compile_supported`` at import time (torchvision's own
      comment there: importing dynamo is best avoided for eager-mode users). A stand-in module serves that one
      name during this import and resolves the real function on first call.

    * transformers (seconds on a machine that has it: issue 19 measured 5.5 s of start-up compiling imports on a
      GPU host): open_clip imports it only for Hugging Face text towers; :func:`create_model` imports open_clip
      again with it for a model whose config names one (:func:`_needs_transformers`).

    * huggingface_hub's ``hf_api`` (~0.25 CPU-s on a 2-core CPU, its HTTP stack included): open_clip's
      ``push_to_hf_hub`` binds four of its upload helpers at import; vpltool never uploads (and with
      huggingface_hub 2.x that import fails on a name the package no longer has, leaving open_clip's push disabled
      either way). :func:`_hub_api_deferred` serves those names as forwarders that import ``hf_api`` when called.

    All last only for this import: ``import timm`` and ``torch._dynamo`` / ``torch.compile`` work normally after.
    Should the stand-in ever be short of a name (a torchvision release that wants more), the import is retried
    the plain way.
    """
    with _hub_api_deferred():
        return import_deferring_dynamo("open_clip", "timm", "transformers")


def import_deferring_dynamo(name: str, *blocked: str) -> ModuleType:
    """``import name`` with ``torch._dynamo`` deferred (:func:`_dynamo_deferred`: a package that imports torchvision,
    as open_clip and segment-anything do, no longer pays ~2 CPU-s for dynamo) and each of ``blocked`` made
    unimportable for the import (:func:`_without`). Should the stand-in be short of a name (a torchvision release
    that wants more), the half-imported modules are dropped and the import retried the plain way (``blocked``
    still blocked); an ImportError of that import (the package missing) is the caller's."""
    if name in sys.modules:
        return sys.modules[name]
    before = set(sys.modules)
    try:
        with _blocking(blocked), _dynamo_deferred():
            return importlib.import_module(name)
    except (AttributeError, ImportError):
        for module in set(sys.modules) - before:  # the half-imported packages, then the plain import
            del sys.modules[module]
        with _blocking(blocked):
            return importlib.import_module(name)


@functools.lru_cache(maxsize=None)
def clip_bpe(context_length: int | None = None):
    """open_clip's ``SimpleTokenizer`` (CLIP's BPE: its vocabulary and cleaning) for ``context_length`` tokens
    (None: open_clip's default, 77), built once a process: building one ranks 49k merges (each
    text family's caption count and tokenizer built one), and nothing changes it after but its encoding memo."""
    import_open_clip()
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, SimpleTokenizer

    return SimpleTokenizer(context_length=context_length or DEFAULT_CONTEXT_LENGTH)


def timm_tower_name(cfg: dict[str, Any]) -> str | None:
    """The timm model an open_clip config's image tower is (``vision_cfg.timm_model_name``: SigLIP 2, PE-Core), or
    None for open_clip's own ViT."""
    return (cfg.get("vision_cfg") or {}).get("timm_model_name") or None


def with_timm(open_clip):
    """``open_clip`` able to build timm image towers: :func:`import_open_clip` imports it with timm blocked (start-up
    speed), which leaves ``open_clip.timm_model`` without the names its ``try: import timm`` would have bound; they
    are bound now, from timm itself (the same names, the same objects), once a model needs them."""
    tm = open_clip.timm_model
    if getattr(tm, "timm", None) is None:
        import timm
        from timm.layers import AttentionPool2d, Mlp, RotAttentionPool2d, to_2tuple

        tm.timm, tm.RotAttentionPool2d, tm.AbsAttentionPool2d, tm.Mlp, tm.to_2tuple = (
            timm, RotAttentionPool2d, AttentionPool2d, Mlp, to_2tuple)
    return open_clip


def with_transformers(open_clip):
    """open_clip imported again the plain way (transformers included), for a Hugging Face text tower."""
    if getattr(open_clip.hf_model, "transformers", None) is not None:
        return open_clip
    for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
        del sys.modules[name]
    with _without("timm"):
        import open_clip as plain
    return plain


@contextlib.contextmanager
def _blocking(packages: tuple[str, ...]) -> Iterator[None]:
    """:func:`_without` for each of ``packages``."""
    with contextlib.ExitStack() as stack:
        for package in packages:
            stack.enter_context(_without(package))
        yield


@contextlib.contextmanager
def _without(package: str) -> Iterator[None]:
    """Make ``import package`` fail (``sys.modules[name] = None``, Python's documented way) for the block."""
    blocked = package not in sys.modules
    if blocked:
        sys.modules[package] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked:
            del sys.modules[package]


# the names of huggingface_hub.hf_api that open_clip.push_to_hf_hub imports (its upload helpers)
_HUB_API_NAMES = ("create_repo", "list_repo_files", "upload_folder")


@contextlib.contextmanager
def _hub_api_deferred() -> Iterator[None]:
    """For the block, ``from huggingface_hub import NAME`` of each of :data:`_HUB_API_NAMES` gives a forwarder that
    calls huggingface_hub's own ``NAME`` (importing ``hf_api`` then) instead of importing ``hf_api`` now; afterwards
    the package resolves those names itself again. Nothing is done where huggingface_hub is missing, where
    ``hf_api`` is already imported, or where the package holds a name itself (not lazily)."""
    try:
        import huggingface_hub
    except ImportError:
        yield
        return
    if "huggingface_hub.hf_api" in sys.modules:
        yield
        return
    served = {name: _hub_forwarder(name) for name in _HUB_API_NAMES if name not in vars(huggingface_hub)}
    for name, forwarder in served.items():
        setattr(huggingface_hub, name, forwarder)
    try:
        yield
    finally:
        for name, forwarder in served.items():
            if vars(huggingface_hub).get(name) is forwarder:
                delattr(huggingface_hub, name)


def _hub_forwarder(name: str):
    """A function that calls ``huggingface_hub.NAME`` with its arguments, resolved when called."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module("huggingface_hub"), name)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    return forward


def _compile_supported(device_type: str) -> bool:
    from torch._dynamo.utils import is_compile_supported  # the real one: dynamo is imported when first needed

    return is_compile_supported(device_type)


@contextlib.contextmanager
def _dynamo_deferred() -> Iterator[None]:
    """Serve ``torch._dynamo.utils.is_compile_supported`` from a stand-in module for the block, unless dynamo is
    already imported; afterwards ``torch._dynamo`` imports for real (torch resolves it lazily)."""
    import types

    if "torch._dynamo" in sys.modules:
        yield
        return
    dynamo, utils = types.ModuleType("torch._dynamo"), types.ModuleType("torch._dynamo.utils")
    utils.is_compile_supported = _compile_supported  # type: ignore[attr-defined]
    dynamo.utils = utils  # type: ignore[attr-defined]
    dynamo.__path__ = []  # a package, so that the submodule import resolves
    sys.modules.update({"torch._dynamo": dynamo, "torch._dynamo.utils": utils})
    try:
        yield
    finally:
        for name, stub in (("torch._dynamo", dynamo), ("torch._dynamo.utils", utils)):
            if sys.modules.get(name) is stub:
                del sys.modules[name]
        if torch.__dict__.get("_dynamo") is dynamo:
            delattr(torch, "_dynamo")


__all__ = ["clip_bpe", "import_deferring_dynamo", "import_open_clip", "timm_tower_name", "with_timm",
           "with_transformers"]

"""The CLIP's registration point, torch-free: an alias of ``--model`` (:func:`register_model`: the demo world's
``vpltool-toy``) and a tokenizer kind (:func:`register_tokenizer`) that packages plug in without the core knowing
their names. They are called by a plugin's register function (the ``vpltool.plugins`` entry point,
:mod:`vpltool.plugins`), which runs when a command's options are made: nothing here may import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import VplError
from ...plugins import entry_points

EXTRA_CONFIG = "vpltool.json"  # beside open_clip_config.json in a local-dir model: tokenizer + attention window
PLUGIN_GROUP = entry_points.GROUP

_MODELS: dict[str, Callable[[], Path]] = {}
_TOKENIZERS: dict[str, Callable[[dict[str, Any], int], Any]] = {}


def register_model(alias: str, folder: Callable[[], Path]) -> None:
    """``--model alias`` loads the open_clip ``local-dir`` folder that ``folder()`` returns (weights, config and
    ``vpltool.json``); the recorded identity stays ``alias`` so later stages rebuild the same model."""
    _MODELS[alias] = folder
    entry_points.undoable(lambda: _MODELS.pop(alias, None), f"model:{alias}")  # gone again if its plugin fails


def register_tokenizer(kind: str, factory: Callable[[dict[str, Any], int], Any]) -> None:
    """A folder whose ``vpltool.json`` says ``"tokenizer": kind`` gets ``factory(extra_config, context_length)``:
    a callable from a list of strings to ``[N, context_length]`` int64 token ids (EOT the highest id per row)."""
    _TOKENIZERS[kind] = factory
    entry_points.undoable(lambda: _TOKENIZERS.pop(kind, None), f"tokenizer:{kind}")


def registered_models() -> list[str]:
    """The aliases plugins registered (``vpltool-toy``, ...), in registration order (vpltool.list_models): vpltool's
    own and those of the plugins loaded here, then those of the other plugins that list cleanly, each listed in a
    child process and not loaded here (:func:`vpltool.plugins.survey.shown`)."""
    from ...plugins.survey import shown

    entry_points.listed()
    return list(dict.fromkeys([*_MODELS, *shown("models")]))


def registered_folder(alias: str) -> Path | None:
    """The local folder of a registered alias, or None (vpltool's own entry points read first; another plugin's
    alias is found once that plugin is loaded: listed, or named by one of its methods or families, or by
    :func:`vpltool.plugins.load`; every ``--model`` is looked up here, and an open_clip name must not start a
    listing of the plugins)."""
    if alias not in _MODELS:
        entry_points.load()
    if alias not in _MODELS and alias in _listed_models():  # listed (list_models): its plugin loaded now
        entry_points.want(alias)
    return _MODELS[alias]() if alias in _MODELS else None


def _listed_models() -> dict[str, str]:
    """The aliases of the plugins listed so far in this process (none listed: nothing, no listing started)."""
    from ...plugins.survey import shown_so_far

    return shown_so_far("models")


def tokenizer_factory(kind: str) -> Callable[[dict[str, Any], int], Any]:
    if kind not in _TOKENIZERS:
        entry_points.load()
    if kind not in _TOKENIZERS:
        entry_points.want(kind)  # a plugin's (listed in a child first: vpltool.plugins.entry_points.survey)
    if kind not in _TOKENIZERS:
        raise VplError(f"tokenizer {kind!r} (named by a model's {EXTRA_CONFIG}) is not registered; install the "
                       "package that provides it")
    return _TOKENIZERS[kind]


__all__ = ["PLUGIN_GROUP", "register_model", "register_tokenizer", "registered_folder", "registered_models",
           "tokenizer_factory"]

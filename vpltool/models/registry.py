"""The one registry of model families: a stage asks for a model by family name and gets that family's interface.

A *family* is one module or package of :mod:`vpltool.models` (as timm's ``register_model`` / ``create_model`` and
open_clip's factory): it registers, once, a ``load(spec, device, **options)`` that builds the frozen model from a
local file or a cache (offline: one line, never a random model in place of weights that did not load) and,
optionally, a ``check(spec, **options)`` that validates the weights before anything heavy runs (so that bad input is
refused before a model loads). Families today:

========== ====================================================== ==============================================
family     what it is                                             used by
========== ====================================================== ==============================================
clip       open_clip ViTs (SigLIP 2, PE-Core: its timm towers),   every CLIP stage; ``--dense`` is a parameter
           local files and folders, the toy CLIP
dino       a timm ViT (DINO, DINOv2, DINOv3, C-RADIOv3, toy DINO) SSR's ``--affinity dino``; proxy attention
pgseg      PGSeg / GroupViT (vpltool.models.text.pgseg)              ``train-text``, ``--model pgseg:FILE``
sam        SAM's image encoder (segment-anything), a local file   ``--dense trident``'s affinity
sam3       SAM 3 (transformers' Sam3Model): concept prompts       ``--region-masks sam3``
========== ====================================================== ==============================================

The text-supervised families (:data:`TEXT_FAMILIES`, one row each) have one more interface,
:class:`vpltool.models.text.family.TextSegFamily`, which the stages ask for through
:func:`vpltool.models.text.family.text_family`.

The families that later modules add register themselves when :func:`load_model` first names them (the module is
imported by name from :data:`_MODULES`), so importing the registry costs nothing.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import licences
from ..config.licences import Licence
from ..errors import VplError
from ..plugins.entry_points import DerivedMap, PluginTable

DEFAULT_FIX = "re-download it, or pass the file of that model"


@dataclass(frozen=True)
class Family:
    """A registered model family.

    Args:
        name: the family's name (``clip``, ``dino``, ...).
        load: ``load(spec, device, **options)`` -> the frozen model object of the family's interface.
        check: ``check(spec, **options)`` -> None; raises a one-line :class:`~vpltool.errors.VplError` for weights
            that are missing offline or hold another architecture, without building the model. None: ``load`` checks.
        summary: one line for listings and ``--help``.
        files: ``files(spec)`` -> the local files the model is read from (named in the messages of
            :func:`load_model`, watched while it loads); None: ``spec`` itself when it is a path to a file.
        fix: how to mend a damaged weights file of this family (the end of those messages).
        licence: the licences of the code it follows and the weights it reads
            (:class:`~vpltool.config.licences.Licence`); None: undeclared (a plugin's, listed as such).
        get: how to get its weights where they are missing (`vpltool doctor`'s ``missing:`` lines); "" = ``fix``.
    """

    name: str
    load: Callable[..., Any]
    check: Callable[..., Any] | None = None
    summary: str = ""
    files: Callable[[Any], list[Path]] | None = None
    fix: str = DEFAULT_FIX
    licence: Licence | None = None
    get: str = ""


@dataclass(frozen=True)
class TextFamilyRow:
    """A text-supervised family's row (torch-free: what the CLI reads before torch loads).

    Args:
        module: the module that registers the family (:func:`vpltool.models.text.family.register_text_family`),
            imported the first time the family is named.
        config: ``"module:Class"``, its configuration class (a torch-free
            :class:`~vpltool.config.text.TextTrainConfig` subclass: training fields, recipes, zero-shot
            defaults, files).
        segmenters: the names it segments under: ``--model NAME:FILE``, ``segmenter(NAME, checkpoint=FILE)``.
        title: its name in messages.
        files: what a checkpoint of it is, for messages ("a train-pgseg pgseg.safetensors or ...").
        licence: its :class:`~vpltool.config.licences.Licence`; None: undeclared (a plugin's, listed as such).
    """

    module: str
    config: str
    segmenters: tuple[str, ...]
    title: str
    files: str
    licence: Licence | None = None


# the text-supervised families, one row each: a new family is its package and its row here (a plugin's family is a
# row its package registers: vpltool.plugins.register_text_family)
_OWN_TEXT_FAMILIES: dict[str, TextFamilyRow] = {
    "pgseg": TextFamilyRow("vpltool.models.text.pgseg", "vpltool.config.pgseg:PGSegTrainConfig", ("pgseg", "groupvit"),
                           "PGSeg / GroupViT", "a train-pgseg pgseg.safetensors or a GroupViT / PGSeg release .pth",
                           licences.PGSEG),
    "talk2dino": TextFamilyRow("vpltool.models.text.talk2dino.family",
                               "vpltool.models.text.talk2dino.config:Talk2DINOTrainConfig", ("talk2dino",), "Talk2DINO",
                               "a talk2dino.safetensors of train-text --family talk2dino or a Talk2DINO release .pth",
                               licences.TALK2DINO),
}



def _plugin_text_row(name: str, row: Any, dist: str) -> TextFamilyRow:
    """A plugin's text-supervised family row checked: one line for what is wrong."""
    from ..config.dense import DENSE_SPECS

    if not isinstance(row, TextFamilyRow):
        raise VplError(f"register_text_family takes a TextFamilyRow, not a {type(row).__name__}")
    if ":" not in row.config or not row.module:
        raise VplError("its row names its module and its configuration class as 'module:Class'")
    from ..config.text import TextTrainConfig
    from ..plugins.entry_points import PluginFailure, plugin_code

    module, _, cls_name = row.config.partition(":")
    try:  # torch-free by the interface's contract: the command line reads it for --help
        with plugin_code() as said:
            cls = getattr(importlib.import_module(module), cls_name)
    except PluginFailure as e:  # the plugin's own code (sys.exit and Ctrl-C in it too)
        raise VplError(f"its configuration {row.config} cannot be imported ({e.cause}{said.tail()})") from None
    if not (isinstance(cls, type) and issubclass(cls, TextTrainConfig)):
        raise VplError(f"its configuration {row.config} is no TextTrainConfig subclass")
    if name in BACKBONES:
        raise VplError(f"{name!r} is the model family {name!r} already")
    taken = {n for other in TEXT_FAMILIES.rows_so_far().values() for n in other.segmenters}
    for other in (n for n in row.segmenters if n in taken or n in DENSE_SPECS):
        raise VplError(f"it segments as {other!r}, which is already a method's name (vpltool.list_methods())")
    licences.checked(row.licence, f"text-supervised family {name!r}")
    return row


def _plugin_backbone(name: str, module: Any, dist: str) -> str:
    """A plugin's model family (its module's dotted name) checked."""
    if not isinstance(module, str) or not module or module.startswith("."):
        raise VplError("register_backbone_family takes the family's module as a full dotted name")
    if name in TEXT_FAMILIES.rows_so_far():
        raise VplError(f"{name!r} is a text-supervised family's name")
    if name in ("local-dir", "hf-hub"):  # --model FAMILY:SPEC names a plugin's CLIP family
        raise VplError(f"{name!r} is a --model prefix of open_clip's")
    return module


TEXT_FAMILIES: PluginTable = PluginTable("text", _OWN_TEXT_FAMILIES, _plugin_text_row, "text-supervised family")
# the backbone families' modules, each imported the first time its family is named (a plugin's: a module its
# package registers, vpltool.plugins.register_backbone_family)
BACKBONES: PluginTable = PluginTable("family", {name: f"vpltool.models.backbones.{name}"
                                                for name in ("clip", "dino", "sam", "sam3")}, _plugin_backbone,
                                     "model family")
_FAMILIES: dict[str, Family] = {}
# the modules register_family() named for families outside the tables, and the trained decoder's (predict loads it
# through the registry)
_MODULES: dict[str, str] = {"decoder": "vpltool.decoder"}


def _module_of(name: str) -> str | None:
    """The module that registers family ``name``: a backbone's, a text-supervised family's row's, or the one its
    registration named; None for an unknown name."""
    if name in _MODULES:
        return _MODULES[name]
    if name in TEXT_FAMILIES:
        return TEXT_FAMILIES[name].module
    return BACKBONES.get(name)


def own_family(name: str) -> bool:
    """Family ``name`` is vpltool's own: its module is in the package (not a plugin's, nor one a program registered)."""
    return (_module_of(name) or "").startswith("vpltool.")


def register_family(name: str, load: Callable[..., Any], check: Callable[..., Any] | None = None,
                    summary: str = "", module: str | None = None, files: Callable[[Any], list[Path]] | None = None,
                    fix: str = DEFAULT_FIX, licence: Licence | None = None, get: str = "") -> Family:
    """Register family ``name`` (called once, by the family's own module). ``module``: where it lives, so that a
    later :func:`load_model` finds it without an import elsewhere; ``files``, ``fix``, ``licence``, ``get``: see
    :class:`Family`."""
    if name in _FAMILIES and _FAMILIES[name].load is not load:
        raise ValueError(f"model family {name!r} registered twice")
    fam = Family(name, load, check, summary, files, fix, licences.checked(licence, f"model family {name!r}"), get)
    _FAMILIES[name] = fam
    if module and _module_of(name) is None:
        _MODULES[name] = module
    return fam


def family(name: str) -> Family:
    """The registered family ``name`` (its module imported on first use); one line naming the known ones."""
    module = _module_of(name)
    if name not in _FAMILIES and module is not None:
        _import_family(name, module)
    if name not in _FAMILIES:
        raise VplError(f"unknown model family {name!r}; known: {', '.join(families())}")
    return _FAMILIES[name]


def _import_family(name: str, module: str) -> None:
    """Import family ``name``'s module; a plugin's that fails (or registers no family ``name``) is one line naming
    its distribution and the fix."""
    from ..plugins.entry_points import PluginFailure, plugin_code, uninstall_hint

    dist = BACKBONES.plugin(name) or TEXT_FAMILIES.plugin(name)
    if dist is None:
        importlib.import_module(module)
        return
    what = "text-supervised family" if name in TEXT_FAMILIES else "model family"
    try:
        with plugin_code() as said:
            importlib.import_module(module)
    except PluginFailure as e:  # the plugin's own code (sys.exit and Ctrl-C in it too)
        raise VplError(f"plugin {dist}: the {what} {name!r}'s module {module} cannot be used ({e.cause}"
                       f"{said.tail()}); fix the plugin{uninstall_hint(dist)}") from None
    if name not in _FAMILIES:
        call = (f"vpltool.models.text.family.register_text_family(family) once, with an object whose name is {name!r}"
                if name in TEXT_FAMILIES else f"vpltool.models.register_family({name!r}, load, ...) once")
        raise VplError(f"plugin {dist}: its module {module} registers no {what} {name!r} (it calls {call}); fix the "
                       f"plugin{uninstall_hint(dist)}")


def family_module(name: str) -> ModuleType:
    """The module of family ``name``, registered (its whole interface, beyond ``load`` and ``check``: PGSeg's
    tokenizer, templates and zero-shot maps); the stages ask for it here, never by importing it themselves."""
    family(name)
    return importlib.import_module(_module_of(name))


# the models that segment by class names from a checkpoint, as the command line and :func:`vpltool.segmenter` name
# them (``--model NAME:FILE``, ``segmenter(NAME, checkpoint=FILE)``) -> their text-supervised family, read from
# :data:`TEXT_FAMILIES`; any other name is a dense method of the clip family (``--dense``)
SEGMENTERS = DerivedMap(lambda: {name: family for family, row in TEXT_FAMILIES.items() for name in row.segmenters},
                        TEXT_FAMILIES, names=True)


def segmenter_family(method: str) -> str:
    """The family that segments with ``method``: a text-supervised family for one of its names (PGSeg, GroupViT:
    ``pgseg``), else ``clip``."""
    return SEGMENTERS.get(method, "clip")


def text_config(family: str) -> type:
    """The configuration class (a :class:`~vpltool.config.text.TextTrainConfig` subclass) of text-supervised
    family ``family``, imported from its row (torch-free); one line naming the known families."""
    from ..config.text import TextTrainConfig

    if family not in TEXT_FAMILIES:
        raise VplError(f"unknown text-supervised family {family!r}; known: {', '.join(TEXT_FAMILIES)}")
    module, _, name = TEXT_FAMILIES[family].config.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, TextTrainConfig)):
        raise TypeError(f"{TEXT_FAMILIES[family].config}: not a TextTrainConfig subclass")
    return cls


def text_file_kinds() -> dict[str, str]:
    """Every kind of file the text-supervised families write -> what it is (messages), from their configs."""
    return {kind: what for family in TEXT_FAMILIES for kind, what in text_config(family).FILE_KINDS.items()}


def model_family(value: str) -> tuple[str, Any]:
    """A ``--model`` value -> ``(family, spec)``: ``NAME:FILE`` for a name of :data:`SEGMENTERS` (``pgseg:FILE``,
    ``groupvit:FILE``: the checkpoint, `train-text`'s final file or a release the family reads) ->
    ``(SEGMENTERS[NAME], Path(FILE))``; anything else -> ``("clip", value)`` unchanged (an open_clip name,
    ``local-dir:/path``, ``hf-hub:org/repo``, ``vpltool-toy``). A family prefix with no file is one line."""
    prefix, sep, rest = value.partition(":")
    if not sep or prefix.lower() not in SEGMENTERS:
        return "clip", value
    family = SEGMENTERS[prefix.lower()]
    if not rest.strip():
        raise VplError(f"--model {value!r}: no checkpoint file after '{prefix}:'; give --model {prefix}:FILE "
                       f"({TEXT_FAMILIES[family].files})")
    return family, Path(rest)


def families() -> list[str]:
    """Every family's name (registered or registrable), sorted; the plugins' that list cleanly among them, each
    listed in a child process and none loaded here (:func:`vpltool.plugins.entry_points.listed`; the survey module
    sits above this one)."""
    from ..plugins import entry_points

    listed = {name for item in entry_points.listed() if item.failure is None for name in item.shown.get("families", [])}
    return sorted({*loaded_families(), *listed})


def loaded_families() -> list[str]:
    """The families of this process's tables: vpltool's own and those of the plugins loaded here (iterated, never
    looked up by name: a lookup loads the plugin that registers the name)."""
    return sorted({*_FAMILIES, *_MODULES, *BACKBONES, *TEXT_FAMILIES})


def check_model(name: str, spec: Any, **options: Any) -> None:
    """Validate ``spec``'s weights for family ``name`` before loading (a one-line error, nothing built)."""
    fam = family(name)
    if fam.check is not None:
        fam.check(spec, **options)
    read_by_content(fam, spec)


def load_model(name: str, spec: Any, device: Any = "cpu", **options: Any) -> Any:
    """The frozen model of family ``name`` built from ``spec`` on ``device``, once every weight it holds is a
    finite number and the files it was read from are the bytes this run named them by (:func:`certify`): the one
    door every family's model comes through, so a new family is checked without a line of its own."""
    from ..io.digests import check_loaded_files, file_stamp

    fam = family(name)
    files = model_files(fam, spec)
    before = {path: file_stamp(path) for path in files}
    read_by_content(fam, spec, files)  # before the load reads them: a file replaced since its check is refused
    model = fam.load(spec, device, **options)
    certify(model, where(fam, spec, files), fam.fix)
    check_loaded_files(before)
    return model


def read_by_content(fam: Family, spec: Any, files: list[Path] | None = None) -> list[Path]:
    """The door's one record of what a model is read from: ``spec``'s files (:func:`model_files`) added to the run's
    ledger by sha256 and size (:func:`vpltool.io.reads.note`), for every family alike, built-in or plugin, so that
    no method or family keeps a list of its own. A file whose bytes are not those the run (or the run its folder
    continues) read it as is refused here, in one line, before the model is built from it."""
    from ..io.reads import note

    files = model_files(fam, spec) if files is None else files
    note(files)
    return files


def model_files(fam: Family, spec: Any) -> list[Path]:
    """The local files ``spec``'s model is read from (:attr:`Family.files`; by default ``spec`` when it is a path
    to a file)."""
    if fam.files is not None:
        return list(fam.files(spec))
    return [Path(spec)] if isinstance(spec, (str, os.PathLike)) and Path(spec).is_file() else []


def where(fam: Family, spec: Any, files: list[Path]) -> str:
    """A model's weights as messages name them: its one file (or the folder of several), else its spec."""
    if len(files) == 1:
        return str(files[0])
    parents = {p.parent for p in files}
    return str(parents.pop()) if len(parents) == 1 else str(spec)


def certify(model: Any, where: str, fix: str = DEFAULT_FIX) -> Any:
    """``model`` (a module, or an object or tuple holding modules, as a family's ``load`` returns it), once every
    floating-point tensor of its state (parameters and persistent buffers) is finite (the rule of
    :func:`vpltool.io.check_weight_values`: one line naming ``where``, the tensor and ``fix``). A model whose state
    holds no tensor at all is refused as a :class:`TypeError`: its family would escape the rule unseen."""
    from ..io.values import check_weight_values

    states = list(_states(model))
    if not states:
        raise TypeError(f"{type(model).__name__}: no torch module in what the family's load returned, so its weights "
                        "cannot be checked; return the module (or an object whose attributes hold it)")
    for state in states:
        check_weight_values(where, state.items(), fix)
    return model


def _states(model: Any) -> Iterator[dict[str, Any]]:
    """The ``state_dict()`` of each module ``model`` is or holds (itself, the items of a tuple or list, or its
    attributes one level down)."""
    import torch

    if isinstance(model, torch.nn.Module):
        yield model.state_dict()
    elif isinstance(model, (tuple, list)):
        for part in model:
            yield from _states(part) if isinstance(part, torch.nn.Module) else ()
    else:
        for value in getattr(model, "__dict__", {}).values():
            if isinstance(value, torch.nn.Module):
                yield value.state_dict()


__all__ = ["DEFAULT_FIX", "Family", "SEGMENTERS", "TEXT_FAMILIES", "BACKBONES", "TextFamilyRow", "text_config",
           "text_file_kinds", "certify", "model_files", "register_family", "family", "family_module", "families",
           "check_model", "load_model", "model_family", "read_by_content", "segmenter_family"]

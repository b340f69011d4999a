"""Which CLIP to load and how: open_clip architectures and tags, local weight files and folders, registered aliases.

The only place open_clip models are created. Everything that can go wrong offline (an unknown tag, weights not
in the cache, a file that holds another architecture) is a one-line :class:`~vpltool.errors.VplError`.

**Registration point** (:mod:`.aliases`, torch-free). Packages plug models and tokenizers in without the core
knowing their names: :func:`register_model` maps an alias (``--model NAME``) to a local open_clip folder,
:func:`register_tokenizer` maps the ``"tokenizer"`` kind named in a folder's ``vpltool.json`` to a factory. Plugins
are found through the ``vpltool.plugins`` entry-point group (:mod:`plugins.entry_points`; the demo world registers
its toy CLIP there).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ...errors import VplError

# the registration point, torch-free (a plugin's register function calls it): importable from here too
from .aliases import (  # noqa: F401
    EXTRA_CONFIG,
    PLUGIN_GROUP,
    register_model,
    register_tokenizer,
    registered_folder,
    registered_models,
    tokenizer_factory,
)
from .fast_load import assign_loaded_weights, no_weight_init  # noqa: F401 (imported from here too)
from .open_clip_import import import_open_clip, timm_tower_name, with_timm, with_transformers

_HUB_HOST = "huggingface.co"
@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP to load.

    Args:
        model: an open_clip architecture name (``ViT-B-16``), ``local-dir:/path`` (open_clip's folder format:
            ``open_clip_config.json`` + ``open_clip_model.safetensors``), or a registered alias (``vpltool-toy``,
            the demo world's toy CLIP).
        pretrained: an open_clip tag (``openai``), a local weights file (``.safetensors``, ``.pt``, ``.bin``,
            an OpenAI JIT archive), or ``none`` for random weights. Ignored (recorded as ``none``) for folders and
            aliases, whose weights are in the folder.
        config_dir: a folder of extra open_clip JSON model configs (tiny test architectures).
        weights: the digest of the local bytes a record named (:meth:`from_identity`); None for a model given now.
    """

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    config_dir: str | None = None
    weights: str | None = None

    @property
    def folder(self) -> Path | None:
        """The local model folder of a ``local-dir:`` model or a registered alias; None for open_clip names."""
        if self.model.startswith("local-dir:"):
            return Path(self.model[len("local-dir:"):])
        return registered_folder(self.model)

    def vision_value(self, key: str) -> int | None:
        """A whole number of the image tower's config (``layers``: its blocks, ``patch_size``) from the model's
        config alone (open_clip's JSON, or a local folder's ``open_clip_config.json``), so that an option it bounds
        is checked before the model loads; None when the config does not say (a timm tower, a hub model without a
        local config)."""
        folder = self.folder
        try:
            if folder is not None:
                cfg = json.loads((folder / "open_clip_config.json").read_text()).get("model_cfg", {})
            else:
                register_config_dir(self.config_dir)
                cfg = import_open_clip().get_model_config(self.model) or {}
        except (OSError, ValueError, AttributeError):
            return None
        value = (cfg.get("vision_cfg") or {}).get(key) if isinstance(cfg, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def depth(self) -> int | None:
        """The image tower's number of blocks (:meth:`vision_value`), None when the config does not say."""
        return self.vision_value("layers")

    def identity(self) -> dict[str, str]:
        """What is stored in every output file, so downstream stages rebuild the same model. The config folder is
        recorded only when it defines this model (``<model>.json`` there): set by ``VPLTOOL_MODEL_CONFIGS`` on one
        run and not the next, it changes nothing for vpltool-toy or ViT-B-16, so a resume must not refuse it.
        A tag built with QuickGELU on a GELU config (OpenAI's on ``ViT-B-16``) adds ``"activation"``. Weights from
        local bytes (a folder, an alias, a file) add ``"weights"``: their digest
        (:mod:`vpltool.models.backbones.local_weights`), so that other bytes under the same name are another model."""
        from .local_weights import weights_digest

        ident = {"model": self.model, "pretrained": "none" if self.folder is not None else self.pretrained}
        if self.folder is None and (activation := tag_activation(self.model, self.pretrained)):
            ident["activation"] = activation  # the tag's weights on a config of the other activation
        if self.config_dir and self.folder is None and (Path(self.config_dir) / f"{self.model}.json").is_file():
            ident["config_dir"] = str(self.config_dir)
        digest = self.weights or weights_digest(self)
        return {**ident, "weights": digest} if digest else ident

    @classmethod
    def from_identity(cls, ident: dict[str, str], where: str | os.PathLike = "the record",
                      at: ModelSpec | None = None, also: Sequence[dict[str, str]] = ()) -> ModelSpec:
        """The model a record names (``ident``: an :meth:`identity`), its local bytes checked against the recorded
        digest now, before anything loads: one line naming ``where`` (the record's file or folder) otherwise.
        ``at``: where that model lies now, given by the user (a ``local-dir:`` folder renamed since, a weights file
        moved): taken when it holds the recorded bytes, else one line naming it
        (:func:`~vpltool.models.backbones.local_weights.recorded_at`). ``also``: other records' identities of the
        same model (by content; `cam`'s prototypes beside its features): where the recorded place no longer holds
        the bytes, the first of theirs that does is taken."""
        from .local_weights import check_recorded, recorded_at, weights_digest

        spec = cls(model=ident["model"], pretrained=ident.get("pretrained", "none"),
                   config_dir=ident.get("config_dir"), weights=ident.get("weights"))
        if at is not None:
            return recorded_at(spec, at, str(where))
        try:
            check_recorded(spec, str(where))
        except VplError:
            for other in also:  # the same bytes recorded at another place (made after a rename) that holds them
                place = cls(model=other["model"], pretrained=other.get("pretrained", "none"),
                            config_dir=other.get("config_dir") or spec.config_dir, weights=spec.weights)
                if spec.weights and other.get("weights") == spec.weights and weights_digest(place) == spec.weights:
                    return recorded_at(spec, place, str(where))
            raise
        return spec


def register_config_dir(config_dir: str | None) -> None:
    """``config_dir`` and ``VPLTOOL_MODEL_CONFIGS`` (each checked: :func:`check_config_dir`) added to open_clip's
    config folders, last (their configs win); nothing re-read when that is already so, with the same bytes."""
    open_clip = import_open_clip()

    folders = []
    for d in filter(None, [config_dir, os.environ.get("VPLTOOL_MODEL_CONFIGS")]):
        if not Path(d).is_dir():
            raise VplError(f"{d}: model config folder not found")
        check_config_dir(Path(d))
        folders.append(Path(d))
    factory = sys.modules.get("open_clip.factory")
    paths = getattr(factory, "_MODEL_CONFIG_PATHS", None)
    if not isinstance(paths, list):
        for d in folders:
            open_clip.add_model_config(d)
        return
    wanted = list(paths)
    for d in folders:
        wanted = [p for p in wanted if p != d] + [d]
    # open_clip re-reads every config of every folder (its own ~150 included) on each add: registered once per
    # model made, a long-lived process (the app, a Python caller, the test suite) re-read them all each time
    state = (wanted, _configs_read(wanted))
    if (paths == wanted and _REGISTERED.get("state") == state
            and _REGISTERED.get("configs") is getattr(factory, "_MODEL_CONFIGS", None)):
        return
    for d in folders:
        # open_clip appends the folder to its list on every call and then re-reads every folder of the list: a
        # long-lived process re-read one folder 900 times per model made. An earlier entry of the same folder is
        # dropped first: its configs win as the last-added folder's do now
        paths[:] = [p for p in paths if p != d]
        open_clip.add_model_config(d)
    now = state if paths == wanted else (list(paths), _configs_read(paths))  # what was just read, not read again
    _REGISTERED.update(state=now, configs=getattr(factory, "_MODEL_CONFIGS", None))


# open_clip's config folders and what they held when vpltool last registered one, and the dict it read them into
_REGISTERED: dict[str, Any] = {}


def _configs_read(paths: Sequence[Path]) -> list[tuple[str, bytes]]:
    """The bytes of every file open_clip reads from ``paths`` (a folder's ``*.json``, or a file; its own folder,
    inside the package, left out: it does not change), in its order: the same bytes from the same list re-read
    into the same configs."""
    own = Path(sys.modules["open_clip.factory"].__file__).parent
    files = [f for p in map(Path, paths) if own not in (p, *p.parents)
             for f in (sorted(p.glob("*.json")) if p.is_dir() else [p] if p.is_file() else [])]
    return [(str(f), f.read_bytes()) for f in files]


CONFIG_SOURCE = "the model config folder (--model-config-dir, VPLTOOL_MODEL_CONFIGS)"
CONFIG_PARTS = ("embed_dim", "vision_cfg", "text_cfg")  # what open_clip needs to list a config as a model
# whole numbers >= 1 wherever a config gives them, null for open_clip's default (open_clip fails deep inside, or
# allocates nonsense, otherwise)
CONFIG_WHOLE = {"": ("embed_dim",), "vision_cfg": ("layers", "width", "head_width", "patch_size"),
                "text_cfg": ("context_length", "vocab_size", "width", "heads", "layers")}


def check_config_dir(folder: Path) -> None:
    """Every ``*.json`` open_clip will read from ``folder`` (it reads them all, and one that fails to parse fails
    every model): valid JSON, an object with :data:`CONFIG_PARTS`, and whole numbers where :data:`CONFIG_WHOLE`
    says; one line naming the file and where the folder came from otherwise."""
    from ... import io

    fix = f"fix or remove it ({CONFIG_SOURCE})"
    for path in sorted(folder.glob("*.json")):
        try:
            cfg = io.read_json(path)
        except VplError as e:
            raise VplError(f"{e}; {fix}") from None
        if not isinstance(cfg, dict) or not all(k in cfg for k in CONFIG_PARTS):
            raise VplError(f"{path}: not an open_clip model config (an object with {', '.join(CONFIG_PARTS)}); {fix}")
        for part, keys in CONFIG_WHOLE.items():
            where = cfg if not part else cfg[part]
            if not isinstance(where, dict):
                raise VplError(f"{path}: '{part}' is {json.dumps(where)[:40]}, not an object; {fix}")
            for key in keys:
                value = where.get(key)
                if value is None:  # absent or null: open_clip's default (a ResNet has no patch size)
                    continue
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1  # ResNet layers: a list
                           for v in (value if isinstance(value, list) and value else [value])):
                    name = f"{part}.{key}" if part else key
                    raise VplError(f"{path}: '{name}' is {json.dumps(value)[:40]}, not a whole number >= 1; {fix}")


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    try:  # a failed name lookup answers at once; open_clip would otherwise retry the hub for ~47 s
        socket.getaddrinfo(_HUB_HOST, 443)
        return False
    except OSError:
        return True


def check_quick_gelu(open_clip, model: str, tag: str, cfg: dict[str, Any] | None = None) -> bool:
    """Whether tag ``tag``'s weights need QuickGELU on ``model``'s GELU config: True for a tag trained with QuickGELU
    on a config that runs GELU (OpenAI's own ``ViT-B-16 --pretrained openai``, as ``clip.load`` and every reference
    built on it, CLIP-ES included, run it; MetaCLIP's tags on ``ViT-B-16``), which :func:`create_model` then builds
    with QuickGELU, as the weights were trained (open_clip only warns, and would run them with GELU: a silently
    different model). One line for a tag trained with GELU on a ``-quickgelu`` config, which cannot be undone."""
    cfg = open_clip.get_pretrained_cfg(model, tag) if cfg is None else cfg
    if not cfg:
        return False
    trained = bool(cfg.get("quick_gelu", False))
    runs = bool((open_clip.get_model_config(model) or {}).get("quick_gelu", False))
    if trained or not runs:
        return trained and not runs
    other = model.removesuffix("-quickgelu")
    fix = f"--model {other}" if tag in open_clip.list_pretrained_tags_by_model(other) else "another --model"
    raise VplError(f"--pretrained {tag} was trained without QuickGELU, --model {model} runs QuickGELU; pass {fix} "
                   f"--pretrained {tag}")


def tag_activation(model: str, tag: str) -> str | None:
    """``"quickgelu"`` when tag ``tag`` of open_clip name ``model`` is built with QuickGELU on a GELU config
    (:func:`check_quick_gelu`), else None: recorded in the model's identity, so that a run made before vpltool
    followed the tag (GELU) is another model."""
    if tag in ("", "none") or Path(tag).suffix in (".safetensors", ".pt", ".pth", ".bin") or Path(tag).exists():
        return None
    open_clip = import_open_clip()
    return "quickgelu" if check_quick_gelu(open_clip, model, tag) else None


def tags_preprocess(open_clip, model: str) -> dict[str, Any]:
    """The input normalisation every pretrained tag of ``model`` agrees on (``mean``, ``std``), for its weights
    from a local file, which name no tag: SigLIP's and PE's 0.5 / 0.5 instead of open_clip's OpenAI default; ``{}``
    where the tags differ or there are none (open_clip's default then, as before)."""
    seen = {tuple((k, tuple(cfg[k])) for k in ("mean", "std") if k in cfg)
            for tag in open_clip.list_pretrained_tags_by_model(model)
            if (cfg := open_clip.get_pretrained_cfg(model, tag))}
    return dict((k, v) for k, v in next(iter(seen))) if len(seen) == 1 else {}


def _resolve_tag(model: str, tag: str) -> tuple[str | None, dict[str, Any]]:
    """A pretrained tag -> (cached local file or None, open_clip's ``create_model`` options: the preprocessing
    overrides and the tag's activation). Raises when unusable offline."""
    open_clip = import_open_clip()

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise VplError(
            f"--pretrained {tag!r} is neither a file nor a tag of {model}; tags: {', '.join(tags) or 'none'}"
        )
    quick = check_quick_gelu(open_clip, model, tag, cfg)
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation") if k in cfg}
    options = {"force_preprocess_cfg": preprocess, "force_quick_gelu": quick}
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        for name in ("open_clip_model.safetensors", filename or "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found, options
    if _offline():
        raise VplError(
            f"weights for {model} --pretrained {tag} are not in the local cache and the hub is unreachable; "
            f"download them elsewhere and pass the file: --pretrained /path/to/{model}.safetensors"
        )
    return None, {"force_quick_gelu": quick}


def model_config(open_clip, spec: ModelSpec) -> dict[str, Any]:
    """The open_clip model config of ``spec`` (a local folder's ``open_clip_config.json``, else open_clip's own or
    the config folder's), ``{}`` when none can be read."""
    if spec.folder is not None:
        try:
            cfg = json.loads((spec.folder / "open_clip_config.json").read_text()).get("model_cfg", {})
        except (OSError, ValueError):
            return {}
    else:
        cfg = open_clip.get_model_config(spec.model) or {}
    return cfg if isinstance(cfg, dict) else {}


def _needs_transformers(open_clip, spec: ModelSpec) -> bool:
    """Whether the model's text tower is a Hugging Face model (``text_cfg.hf_model_name``)."""
    return bool((model_config(open_clip, spec).get("text_cfg") or {}).get("hf_model_name"))



@contextlib.contextmanager
def _quiet_root_log(prefix: str) -> Iterator[None]:
    """Drop the root logger's records that start with ``prefix`` while the block runs (open_clip logs there)."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def create_model(spec: ModelSpec):
    """``(open_clip model, its local folder or None)`` for ``spec``; one-line VplErrors for every way it fails."""
    open_clip = import_open_clip()
    register_config_dir(spec.config_dir)
    if _needs_transformers(open_clip, spec):
        open_clip = with_transformers(open_clip)
        register_config_dir(spec.config_dir)
    if timm_tower_name(model_config(open_clip, spec)):
        with_timm(open_clip)
    folder = spec.folder
    if folder is not None:
        if not (folder / "open_clip_config.json").is_file():
            raise VplError(f"{folder}: not an open_clip model folder (needs open_clip_config.json + weights)")
        try:
            with no_weight_init(), assign_loaded_weights():
                return open_clip.create_model(f"local-dir:{folder}"), folder
        except _LOAD_ERRORS as e:  # a weights file cut short, a tensor missing or of another shape
            raise VplError(f"{folder}: its weights do not load as the model its open_clip_config.json describes "
                           f"({_first_line(e)}); re-download or re-train that model") from None
    if spec.model not in open_clip.list_models():
        raise VplError(f"--model {spec.model!r} unknown to open_clip; e.g. ViT-B-16, ViT-L-14, or local-dir:/path")
    pretrained = spec.pretrained
    if pretrained in (None, "", "none"):
        return _random_model(open_clip, spec.model), None
    path = Path(pretrained).expanduser()
    if path.suffix in (".safetensors", ".pt", ".pth", ".bin") or path.exists():
        if not path.is_file():
            from ...io import not_a_file

            raise not_a_file(path, "weights", "pass the model's weights file to --pretrained")
        try:
            with no_weight_init(), assign_loaded_weights():
                return open_clip.create_model(spec.model, pretrained=str(path),
                                              force_preprocess_cfg=tags_preprocess(open_clip, spec.model)), path.parent
        except _LOAD_ERRORS as e:
            raise VplError(f"{path}: does not hold {spec.model} weights ({_first_line(e)}); check --model") from None
    cached, options = _resolve_tag(spec.model, pretrained)
    with no_weight_init(), assign_loaded_weights():
        return open_clip.create_model(spec.model, pretrained=cached or pretrained, **options), None


# the random weights drawn so far (--pretrained none), by architecture; a model above this many values is not kept
_RANDOM: dict[str, dict[str, torch.Tensor]] = {}
RANDOM_KEPT_VALUES = 32_000_000


def _random_model(open_clip, name: str):
    """open_clip's ``name`` with random weights, the same in every process (seed 0): `cam` rebuilds the model
    `extract` used. Drawn once a process per configuration, then copied into a model built without its init (a
    tiny tower's draws cost more than the rest of its build). open_clip's "No pretrained weights loaded ...
    initialized randomly" says what --pretrained none asked for: not shown."""
    key = json.dumps([name, open_clip.get_model_config(name)], sort_keys=True, default=str)
    with torch.random.fork_rng(devices=[]), _quiet_root_log("No pretrained weights loaded"):
        torch.manual_seed(0)
        if key in _RANDOM:
            with no_weight_init():
                model = open_clip.create_model(name, pretrained=None)
            model.load_state_dict(_RANDOM[key], strict=True)
            return model
        model = open_clip.create_model(name, pretrained=None)
    state = model.state_dict()
    if sum(v.numel() for v in state.values()) <= RANDOM_KEPT_VALUES:
        _RANDOM[key] = {k: v.detach().clone() for k, v in state.items()}
    return model


def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return RuntimeError, KeyError, IndexError, ValueError, AssertionError, SafetensorError


# what open_clip raises for weights that do not fit its model (torch's load_state_dict: RuntimeError; its own
# conversions of an older layout: KeyError, IndexError; its resize of another architecture's positional tables:
# AssertionError, "text pos_embed width changed!"; a file cut short: SafetensorError, or a zip's RuntimeError)
_LOAD_ERRORS = _load_errors()


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])[:200] or type(e).__name__



def load_extra_config(folder: Path | None) -> dict[str, Any]:
    """The ``vpltool.json`` beside a local model: ``{"tokenizer": kind, "vocabulary": [...], "attention_window":
    {...}}``; a ``vocabulary`` without a ``tokenizer`` means the ``word`` tokenizer (checkpoints before the key)."""
    if folder is None or not (folder / EXTRA_CONFIG).is_file():
        return {}
    extra = json.loads((folder / EXTRA_CONFIG).read_text())
    if extra.get("vocabulary") and "tokenizer" not in extra:
        extra["tokenizer"] = "word"
    return extra

"""The ``clip`` model family: open_clip models whose image tower is a ViT, with the CLIP-ES surgery
(:class:`~vpltool.models.backbones.model.ClipBackbone`): open_clip's own ViTs (OpenAI's CLIP, LAION's, MetaCLIP's
QuickGELU ViTs, the toy CLIP) and its timm towers with an attention-pooling head (SigLIP 2, PE-Core).

Stages ask for it through the registry, ``load_model("clip", spec, device, dense=...)`` and
``check_model("clip", spec, dense=...)`` (:mod:`vpltool.models.registry`); this module is the family's one entry
point. Its parts stay in their own modules: which weights and how they load (:mod:`.loading`: local files and
folders, open_clip tags, the toy CLIP), the model and its forward (:mod:`.model`), its image tower (:mod:`.towers`,
:mod:`.timm_tower`: how tokens are made, mixed and projected, a parameter of the family), its GradCAM
(:mod:`.gradcam`) and how its last block mixes its tokens (:mod:`..dense`: ``none`` = CLIP-ES, or one preset per
training-free method; a parameter, not a second forward).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import licences
from ...errors import VplError
from ..dense import DenseMixing, dense_mixing
from ..registry import register_family
from .loading import (
    ModelSpec,
    check_quick_gelu,
    create_model,
    import_open_clip,
    load_extra_config,
    model_config,
    register_config_dir,
)
from .local_weights import weight_files
from .model import ClipBackbone
from .open_clip_import import timm_tower_name
from .timm_tower import TIMM_METHODS

# the last-block attentions a timm tower's view computes (hook: a method's attention hook on its q, k, v)
TIMM_ATTENTIONS = ("qk", "identity", "qq+kk", "qq", "kk", "hook")


def _plugin_families() -> set[str]:
    """The backbone families plugins registered (vpltool.plugins.register_backbone_family)."""
    from ..registry import BACKBONES

    return {name for name in BACKBONES if BACKBONES.plugin(name)}


def plugin_clip(spec: ModelSpec) -> tuple[str, str] | None:
    """``(family, its spec)`` for ``--model FAMILY:SPEC`` naming a plugin's backbone family, whose load gives a CLIP
    (a :class:`~vpltool.models.ClipBackbone`, its ``dense`` option the ``--dense`` mixing); None otherwise."""
    prefix, sep, rest = spec.model.partition(":")
    if not sep or prefix in ("local-dir", "hf-hub"):
        return None
    from ..registry import BACKBONES

    if prefix not in BACKBONES or prefix not in _plugin_families():  # `in` loads the plugin that registers it
        return None
    return prefix, rest


def check_backbone(spec: ModelSpec, dense: str | DenseMixing | None = None) -> None:
    """Refuse, from the model's config alone and before any model loads, a tag trained with GELU on a config that
    runs QuickGELU (:func:`~.loading.check_quick_gelu`; a QuickGELU tag on a GELU config is built with QuickGELU),
    an image tower vpltool does not read (a ResNet, CoCa's attentional pooling,
    a timm tower without an attention-pooling head) and a ``--dense`` method its tower does not take: a timm tower
    (SigLIP 2, PE-Core) runs the last block's token mixing alone
    (:data:`~vpltool.models.backbones.timm_tower.TIMM_METHODS`); the other methods read open_clip's attention
    modules or the class token. A name open_clip does not know passes here (:func:`create_model` says so). A
    plugin's family (``--model FAMILY:SPEC``, :func:`plugin_clip`) is checked by its own check."""
    plugin = plugin_clip(spec)
    if plugin is not None:
        from ..registry import check_model

        check_model(plugin[0], plugin[1], **({} if dense is None else {"dense": dense}))
        return
    open_clip = import_open_clip()
    register_config_dir(spec.config_dir)
    cfg = model_config(open_clip, spec)
    if spec.folder is None and spec.pretrained not in (None, "", "none"):  # a GELU tag on a QuickGELU config
        check_quick_gelu(open_clip, spec.model, spec.pretrained)
    vision = cfg.get("vision_cfg") or {}
    if isinstance(vision.get("layers"), (list, tuple)):
        raise VplError(f"--model {spec.model}: a ResNet image tower; vpltool reads ViT towers only (e.g. ViT-B-16)")
    if vision.get("attentional_pool"):
        raise VplError(f"--model {spec.model}: attentional-pooling towers (CoCa) are not supported")
    tower = timm_tower_name(cfg)
    if not tower:
        return
    if vision.get("timm_pool", "avg") != "map":
        raise VplError(f"--model {spec.model}: its timm tower {tower} pools with {vision.get('timm_pool', 'avg')!r}; "
                       "vpltool takes a timm tower's dense tokens through an attention-pooling head (timm_pool "
                       "'map': SigLIP 2, PE-Core)")
    if dense is None:
        return
    mixing = dense_mixing(dense)
    choose = f"on it choose --dense {', '.join(TIMM_METHODS)}"
    if mixing.method not in TIMM_METHODS:
        from ...config.dense import DENSE_SPECS

        dist = DENSE_SPECS[mixing.method].plugin if mixing.method in DENSE_SPECS else None
        if dist is not None:  # a plugin's: it did not say it runs there
            raise VplError(f"--dense {mixing.method} (plugin {dist}) does not say it runs on a timm image tower "
                           f"({spec.model}'s {tower}: SigLIP 2, PE-Core); {choose}, or the plugin's spec row sets "
                           "timm_tower=True if its hooks change only the last block's attention (its attention hook)")
        raise VplError(f"--dense {mixing.method} reads open_clip's own attention modules or the class token, which "
                       f"{spec.model}'s timm tower ({tower}) does not have; {choose}")
    if mixing.attention not in TIMM_ATTENTIONS:
        raise VplError(f"--attention {mixing.attention} reads open_clip's own attention modules, which {spec.model}'s "
                       f"timm tower ({tower}) does not have; {choose}")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model")


def check_tokenizer(spec: ModelSpec) -> None:
    """Refuse, before any model loads, a CLIP whose tokenizer cannot be made here: a Hugging Face tokenizer (its
    config's ``text_cfg.hf_tokenizer_name``: SigLIP 2's Gemma tokenizer) without ``transformers``, one whose files
    are not in the local Hugging Face cache while the hub is unreachable (else open_clip retries the hub for minutes
    after building the model), or a ``local-dir:`` folder that names one without holding its files (open_clip reads a
    local folder's tokenizer from the folder itself). For the stages that encode text; the image stages need none."""
    if plugin_clip(spec) is not None:  # a plugin's CLIP: its family makes its tokenizer
        return
    open_clip = import_open_clip()
    register_config_dir(spec.config_dir)
    text = (model_config(open_clip, spec) or {}).get("text_cfg") or {}
    name = text.get("hf_tokenizer_name")
    if not name:
        return
    try:
        import transformers  # noqa: F401 (open_clip's HFTokenizer builds on it)
    except ImportError:
        raise VplError(f"--model {spec.model}: its tokenizer is Hugging Face's {name}, which needs `pip install "
                       "transformers sentencepiece`") from None
    folder = spec.folder
    if folder is not None:
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise VplError(f"--model {spec.model}: its config names the tokenizer {name}, whose files open_clip reads "
                           f"from the folder itself, and it holds none of {', '.join(TOKENIZER_FILES)}; save them "
                           "there (transformers' AutoTokenizer.from_pretrained(NAME).save_pretrained(DIR))")
        return
    from huggingface_hub import try_to_load_from_cache

    from .loading import _offline

    if Path(name).is_dir():
        return
    if any(isinstance(try_to_load_from_cache(name, f), str) for f in TOKENIZER_FILES):
        return
    if _offline():
        raise VplError(f"--model {spec.model}: its tokenizer ({name}, from the Hugging Face hub) is not in the local "
                       f"cache and the hub is unreachable; run a text stage once online (it is cached then), or give "
                       "--model local-dir:DIR, a folder holding the model's open_clip files and its tokenizer's "
                       f"({', '.join(TOKENIZER_FILES[:2])}, ...)")


def load_backbone(spec: ModelSpec, device: torch.device | str = "cpu", dense: str | DenseMixing = "none"
                  ) -> ClipBackbone:
    """Build the frozen :class:`ClipBackbone`; a one-line VplError for every way the weights can be missing or
    wrong (a file of another architecture included). ``dense``: how its last block mixes its tokens
    (:mod:`vpltool.models.dense`; ``none`` = CLIP-ES)."""
    mixing = dense_mixing(dense)  # a bad name fails before the weights load
    check_backbone(spec, mixing)
    plugin = plugin_clip(spec)
    if plugin is not None:  # a plugin's CLIP family: its load makes the backbone (the registry certifies it after)
        from ..registry import BACKBONES, family

        bb = family(plugin[0]).load(plugin[1], device, dense=mixing)
        if not isinstance(bb, ClipBackbone):
            raise VplError(f"plugin {BACKBONES.plugin(plugin[0])}: --model {spec.model}: its family {plugin[0]!r} "
                           f"gave a {type(bb).__name__}, where --model takes a CLIP (vpltool.models.ClipBackbone); "
                           "fix the plugin")
        return bb
    model, folder = create_model(spec)
    return ClipBackbone(model, spec, torch.device(device), load_extra_config(folder if spec.folder else None), mixing)


def _files(spec: ModelSpec) -> list[Path]:
    """The local files a CLIP is read from: a plugin family's own (its ``files``, or its spec when that is a file)."""
    plugin = plugin_clip(spec)
    if plugin is None:
        return weight_files(spec)
    from ..registry import family, model_files

    return model_files(family(plugin[0]), plugin[1])


register_family("clip", load_backbone, check_backbone,
                summary="open_clip ViTs (OpenAI, LAION, MetaCLIP, SigLIP 2, PE-Core), local weight files and folders, "
                "the demo's toy CLIP; the CLIP-ES surgery, --dense a parameter of its last block", module=__name__,
                files=lambda spec: _files(spec), fix="re-download or re-train that model", licence=licences.CLIP_FAMILY)

__all__ = ["check_backbone", "check_tokenizer", "load_backbone", "plugin_clip"]

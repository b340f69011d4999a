"""Writing the two files RADSeg reads (:mod:`.radio`), from models trained here (the demo's toy RADIO,
:mod:`vpltool.demo.train_toy_radio`):

* :func:`write_radio_checkpoint`: NVlabs/RADIO's hub checkpoint (``{"args": Namespace, "state_dict"}``): a timm
  ``naflexvit_*_radio_v3``'s backbone under RADIO's CPE ViT names (:func:`radio_state`, the inverse of
  :func:`.radio.backbone_state`), the input conditioner, a summary head (``_heads.<i>.``) and a feature head
  (``_feature_projections.<i>.``) per teacher, RADIO's ``MLP2`` (:class:`.radio.AdaptorMLP` ``v2``). Its ``args``
  record the backbone's depth, width and heads (``model_kwargs``) and its position table's reach (``cpe_max_size``),
  which the ``dino`` family builds the timm model at (:func:`radio_overrides`), as RADIO's hub code builds its
  model from them.
* :func:`write_text_folder`: a Hugging Face folder of a ``SiglipModel`` (``config.json``, ``model.safetensors``)
  with a word-level tokenizer (a ``tokenizers`` vocabulary, ``</s>`` appended, padded with ``<pad>``) and SigLIP's
  image processor config (RADIO's adaptor reads the folder through ``AutoProcessor``).

parity/radseg_files.py keeps its own writer of the same layout (parity/ imports nothing from vpltool); both are read
by the same loader, so a drift of either shows in its tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # RADIO's input conditioner (C-RADIOv3's: OpenAI CLIP's)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIZE_KWARGS = ("depth", "embed_dim", "num_heads")  # what args.model_kwargs may size (RADIO's create_model_from_args)


def radio_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm ``naflexvit_*_radio_v3``'s backbone under RADIO's CPE ViT names (``base_model.`` prefix): the patch
    projection in (channel, row, column) order without its bias (RADIO's has none: the model's must be zero), the
    position table flattened, the class and register tokens as one ``cls_token.token``, ``gamma`` as ``grandma``."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    w = sd["embeds.proj.weight"]
    dim, p = w.shape[0], int(round((w.shape[1] / 3) ** 0.5))
    if sd["embeds.proj.bias"].abs().max() > 0:
        raise ValueError("RADIO's patch projection has no bias: zero the model's and keep it frozen")
    out = {"patch_generator.embedder.weight": w.reshape(dim, p, p, 3).permute(0, 3, 1, 2).reshape(dim, -1),
           "patch_generator.pos_embed": sd["embeds.pos_embed"].reshape(1, -1, dim),
           "patch_generator.cls_token.token": torch.cat([sd["embeds.cls_token"][0], sd["embeds.reg_token"][0]])}
    out.update({k.replace(".gamma", ".grandma"): v for k, v in sd.items() if k.startswith("blocks.")})
    return {f"base_model.{k}": v.contiguous().clone() for k, v in out.items()}


def write_radio_checkpoint(path: Path, model: torch.nn.Module, teachers: list[dict], heads: dict[int, dict],
                           feature_heads: dict[int, dict], arch: str = "vit_base_patch16_v2_224",
                           dtype: torch.dtype = torch.float16, extra_args: dict | None = None) -> Path:
    """The hub checkpoint (module docstring) of ``model`` with teacher ``i``'s summary head ``heads[i]`` and feature
    head ``feature_heads[i]`` (each an ``MLP2``'s state dict), every tensor stored in ``dtype`` (the hub's
    ``_half`` files: float16). ``arch``: the ``args.model`` RADIO's hub code builds."""
    state = radio_state(model)
    state["input_conditioner.norm_mean"] = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    state["input_conditioner.norm_std"] = torch.tensor(OPENAI_STD).view(3, 1, 1)
    for index, sd in heads.items():
        state.update({f"_heads.{index}.{k}": v.detach() for k, v in sd.items()})
    for index, sd in feature_heads.items():
        state.update({f"_feature_projections.{index}.{k}": v.detach() for k, v in sd.items()})
    state = {k: v.to(dtype).contiguous().clone() for k, v in state.items()}
    n_prefix = 1 + model.embeds.reg_token.shape[1]
    grid = model.embeds.pos_embed.shape[1]
    patch = int(round((model.embeds.proj.weight.shape[1] / 3) ** 0.5))
    args = argparse.Namespace(
        model=arch, in_chans=None, input_size=None, pretrained=False, num_classes=0, drop=0.0, drop_path=None,
        model_kwargs={"embed_dim": model.embed_dim, "depth": len(model.blocks),
                      "num_heads": model.blocks[0].attn.num_heads},
        model_norm=False, cpe_max_size=grid * patch, teachers=teachers, cls_token_per_teacher=True,
        cpe_num_registers=n_prefix - len(teachers), register_multiple=None, mlp_version="v2",
        spectral_reparam=False, damp=None, dtype=dtype, **(extra_args or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"args": args, "state_dict": state}, path)
    return path


def radio_overrides(args: dict, state: dict) -> dict:
    """The timm keyword arguments that build a ``naflexvit_*_radio_v3`` at the size a RADIO checkpoint records:
    ``args['model_kwargs']``'s depth, width and heads (where given) and the position table's grid, read off the
    checkpoint's own table (``state``: name -> tensor or shape tuple). C-RADIOv3's own files record their
    registered sizes, so for them this changes nothing."""
    sized = {k: int(v) for k, v in (args.get("model_kwargs") or {}).items() if k in SIZE_KWARGS}
    table = state.get("base_model.patch_generator.pos_embed")
    if table is not None:
        n = table[1] if isinstance(table, tuple) else table.shape[1]
        side = int(round(n ** 0.5))
        sized["pos_embed_grid_size"] = (side, side)
    return sized


def write_text_folder(folder: Path, model, words: list[str], dtype: torch.dtype = torch.float16) -> Path:
    """``model`` (a transformers ``SiglipModel``, its weights stored in ``dtype``; the loader reads them as float32)
    and a word-level tokenizer of ``words`` in the Hugging Face folder ``folder`` (module docstring): ``<pad>`` 0,
    ``</s>`` 1, ``<unk>`` 2, then ``words`` in order."""
    import copy

    from transformers import PreTrainedTokenizerFast, SiglipImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=word_tokenizer(words), pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>", model_max_length=64).save_pretrained(folder)
    SiglipImageProcessor().save_pretrained(folder)  # AutoProcessor (RADIO's adaptor) needs the processor's config
    copy.deepcopy(model).to(dtype).save_pretrained(folder)  # a copy: the caller's model keeps its float32 weights
    return folder


def word_tokenizer(words: list[str]):
    """The ``tokenizers`` word-level tokenizer of :func:`write_text_folder` (whitespace split, ``</s>`` appended)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


__all__ = ["OPENAI_MEAN", "OPENAI_STD", "SIZE_KWARGS", "radio_state", "write_radio_checkpoint", "radio_overrides",
           "write_text_folder", "word_tokenizer"]


def recorded_size(model: str, weights: str) -> dict:
    """The size a C-RADIOv3 weights file records (NVlabs/RADIO's checkpoint: ``args.model_kwargs``' depth, width
    and heads, its position table's grid; :func:`radio_overrides`), as timm keyword arguments for ``model``: RADIO's
    hub code builds its model from them, and so a smaller C-RADIOv3 (the demo's toy RADIO) loads under
    ``naflexvit_base_patch16_radio_v3``'s name. Empty for any other model or file (a missing one is refused
    later, in its own words)."""
    from ...io import is_regular_file
    from .radio import is_radio_file, read_checkpoint

    if "radio" not in model or weights in ("hub", "none"):
        return {}
    path = Path(weights).expanduser()
    if not is_regular_file(path) or not is_radio_file(path):
        return {}
    chk = read_checkpoint(path, shapes_only=True)
    return radio_overrides(chk.args, chk.state)

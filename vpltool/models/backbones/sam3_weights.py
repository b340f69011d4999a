"""SAM 3's weights in its two released layouts, read under transformers' ``Sam3Model`` names (:mod:`.sam3`).

* **Hugging Face's** (``facebook/sam3``): a folder of ``config.json`` and ``model.safetensors`` (or its shards and
  ``model.safetensors.index.json``). The hub's file is a ``Sam3VideoModel``: its detector is read
  (``detector_model.`` stripped, the tracker's tensors left), and a ``Sam3Model`` saved alone is read as it is.
* **Meta's** ``sam3.pt`` (``torch.save({"model": state})``, as Meta's ``sam3`` package and ActiveSAM load it with
  ``build_sam3_image_model``): its ``detector.`` tensors renamed to transformers' modules by :data:`PARTS`, a table
  of this module's own (facts from Meta's ``model_builder.py`` and transformers' ``modeling_sam3.py``): fused
  ``qkv`` / ``in_proj`` projections split in three, CLIP's text projection transposed, the ViT's position table
  without its class-token row. Meta's release holds no configuration: it is the one its builder hard-codes
  (:func:`meta_config`); a file written by :func:`write_meta` carries its own under :data:`CONFIG_KEY`.

Every tensor the model needs must be there with its shape, else one line naming the file (nothing loads as a random
model in place of weights that did not fit). Tensors the concept model never reads are left, as Meta's loader
leaves them: the tracker's, the SAM 2 neck of its interactive head (``sam2_convs``), the point-prompt projections
transformers' geometry encoder has no counterpart of, and the ViT's RoPE tables (recomputed). SAM 3.1's checkpoint
(its multiplex neck, ``propagation_convs``) is another architecture: one line.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import VplError

HF_CONFIG, HF_WEIGHTS, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
META_FILE = "sam3.pt"
CONFIG_KEY = "vpltool_sam3_config"  # a Meta-layout file's own configuration (Meta's release has none)
# how to get them: the hub's repository is gated (accept Meta's SAM License there first); read offline after
GET = ("accept the SAM License of the gated facebook/sam3 on the Hugging Face hub, then on a machine online "
       "`hf download facebook/sam3 config.json model.safetensors --local-dir sam3` and pass that folder "
       "(Hugging Face's layout), or `hf download facebook/sam3 sam3.pt --local-dir sam3-meta` and pass "
       "sam3-meta/sam3.pt (Meta's); vpltool reads either offline (docs/backbones.md: SAM 3)")
FIX = ("pass SAM 3's weights: a folder of facebook/sam3 (config.json + model.safetensors) or Meta's sam3.pt "
       "(see docs/backbones.md: SAM 3)")


# ------------------------------------------------------------------------------------------ configurations
def meta_config() -> dict[str, Any]:
    """The ``Sam3Config`` of the model Meta's ``build_sam3_image_model`` builds (``model_builder.py``): a 32-layer
    ViT of width 1024 on 1008 px, 14 px patches, windows of 24 with global layers 7, 15, 23 and 31, MLP ratio 4.625;
    a 24-layer CLIP text tower of width 1024 over 32 tokens; a 256-wide DETR of 6 + 6 layers and 200 queries; every
    LayerNorm at torch's default eps (1e-5), as Meta's modules build theirs."""
    eps = 1e-5
    return {
        "vision_config": {
            "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 1024, "intermediate_size": 4736,
                                "num_hidden_layers": 32, "num_attention_heads": 16, "image_size": 1008,
                                "patch_size": 14, "window_size": 24, "global_attn_indexes": [7, 15, 23, 31],
                                "pretrain_image_size": 336, "layer_norm_eps": eps},
            "fpn_hidden_size": 256, "scale_factors": [4.0, 2.0, 1.0, 0.5],
            "backbone_feature_sizes": [[288, 288], [144, 144], [72, 72]], "layer_norm_eps": eps},
        "text_config": {"model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 1024,
                        "intermediate_size": 4096, "projection_dim": 512, "num_hidden_layers": 24,
                        "num_attention_heads": 16, "max_position_embeddings": 32, "hidden_act": "gelu",
                        "layer_norm_eps": eps},
        "geometry_encoder_config": {"hidden_size": 256, "num_layers": 3, "num_attention_heads": 8,
                                    "intermediate_size": 2048, "layer_norm_eps": eps},
        "detr_encoder_config": {"hidden_size": 256, "num_layers": 6, "num_attention_heads": 8,
                                "intermediate_size": 2048, "layer_norm_eps": eps},
        "detr_decoder_config": {"hidden_size": 256, "num_layers": 6, "num_queries": 200, "num_attention_heads": 8,
                                "intermediate_size": 2048, "layer_norm_eps": eps},
        "mask_decoder_config": {"hidden_size": 256, "num_upsampling_stages": 3, "num_attention_heads": 8,
                                "layer_norm_eps": eps},
    }


def tiny_config() -> dict[str, Any]:
    """A tiny SAM 3 of the same code for tests and trying the commands (:func:`write_tiny`): a 2-layer ViT of width
    32 on 112 px (an 8 x 8 grid, windows of 4, the last layer global), a 2-layer text tower of width 32 over CLIP's
    vocabulary (so the real tokenizer serves), a 32-wide DETR of 2 + 2 layers and 16 queries. Builds and runs in a
    fraction of a second."""
    cfg = meta_config()
    vit = cfg["vision_config"]["backbone_config"]
    vit.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=112,
               window_size=4, global_attn_indexes=[1], pretrain_image_size=56)
    cfg["vision_config"].update(fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]])
    cfg["text_config"].update(hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2,
                              num_attention_heads=2)
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    cfg["geometry_encoder_config"].update(small, num_layers=1)
    cfg["detr_encoder_config"].update(small, num_layers=2)
    cfg["detr_decoder_config"].update(small, num_layers=2, num_queries=16)
    cfg["mask_decoder_config"].update(hidden_size=32, num_attention_heads=2)
    return cfg


def sam3_config(values: dict[str, Any], where: Path | str = "config"):
    """transformers' ``Sam3Config`` of ``values`` (a ``config.json``: a ``sam3`` one, or a ``sam3_video`` one whose
    ``detector_config`` is taken); one line for another model's configuration."""
    from transformers import Sam3Config

    if values.get("detector_config") is not None:  # the hub's facebook/sam3: the video model around the detector
        values = values["detector_config"]
    kind = values.get("model_type", "sam3")
    if kind != "sam3":
        raise VplError(f"{where}: the configuration of a {kind!r} model, not SAM 3's (sam3); {FIX}")
    values = {k: v for k, v in values.items() if k not in ("model_type", "architectures", "transformers_version")}
    try:
        return Sam3Config(**values)
    except (TypeError, ValueError, KeyError) as e:
        raise VplError(f"{where}: not a SAM 3 configuration ({type(e).__name__}: {str(e)[:120]}); {FIX}") from None


# ------------------------------------------------------------------------------------- Meta's names -> HF's
# How a tensor moves: ``None`` unchanged; ``split`` a fused q|k|v projection into ``{q,k,v}_proj``; ``t`` transposed;
# ``cls`` the ViT's position table without its first (class-token) row
@dataclass(frozen=True)
class Rename:
    meta: str  # a prefix of the name within its part; ``{n}`` a layer index
    hf: str  # its transformers name; ``{n}`` the same index, ``{n1}`` that index + 1 (Meta's MLP layers count from 0)
    how: str | None = None


def _attn(meta: str, hf: str) -> tuple[Rename, ...]:
    """A ``nn.MultiheadAttention`` of Meta's (fused ``in_proj_``) as transformers' four projections."""
    return Rename(f"{meta}.out_proj.", f"{hf}.o_proj."), Rename(f"{meta}.in_proj_", f"{hf}.", "split")


def _mlp(meta: str, hf: str) -> tuple[Rename, ...]:
    """Meta's ``MLP`` (``layers.N``) as transformers' ``layer1..3``."""
    return (Rename(f"{meta}.layers.{{n}}.", f"{hf}.layer{{n1}}."),)


_ENCODER_LAYER = (*_attn("self_attn", "self_attn"), *_attn("cross_attn_image", "cross_attn"),
                  Rename("linear1.", "mlp.fc1."), Rename("linear2.", "mlp.fc2."),
                  Rename("norm1.", "layer_norm1."), Rename("norm2.", "layer_norm2."), Rename("norm3.", "layer_norm3."))
# (Meta's part, transformers' part, the renames within it); the first part whose prefix a name starts with is its
PARTS: tuple[tuple[str, str, tuple[Rename, ...]], ...] = (
    ("backbone.vision_backbone.trunk.blocks.{n}.", "vision_encoder.backbone.layers.{n}.", (
        Rename("norm1.", "layer_norm1."), Rename("norm2.", "layer_norm2."), Rename("attn.qkv.", "attention.", "split"),
        Rename("attn.proj.", "attention.o_proj."), Rename("mlp.", "mlp."))),
    ("backbone.vision_backbone.trunk.", "vision_encoder.backbone.", (
        Rename("patch_embed.proj.", "embeddings.patch_embeddings.projection."), Rename("ln_pre.", "layer_norm."),
        Rename("pos_embed", "embeddings.position_embeddings", "cls"))),
    ("backbone.vision_backbone.convs.{n}.", "vision_encoder.neck.fpn_layers.{n}.", (
        Rename("dconv_2x2_0.", "scale_layers.0."), Rename("dconv_2x2_1.", "scale_layers.2."),
        Rename("dconv_2x2.", "scale_layers.0."), Rename("conv_1x1.", "proj1."), Rename("conv_3x3.", "proj2."))),
    ("backbone.language_backbone.encoder.transformer.resblocks.{n}.", "text_encoder.text_model.encoder.layers.{n}.", (
        Rename("attn.out_proj.", "self_attn.out_proj."), Rename("attn.in_proj_", "self_attn.", "split"),
        Rename("ln_1.", "layer_norm1."), Rename("ln_2.", "layer_norm2."), Rename("mlp.c_fc.", "mlp.fc1."),
        Rename("mlp.c_proj.", "mlp.fc2."))),
    ("backbone.language_backbone.encoder.", "text_encoder.", (
        Rename("token_embedding.", "text_model.embeddings.token_embedding."),
        Rename("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        Rename("ln_final.", "text_model.final_layer_norm."), Rename("text_projection", "text_projection.weight", "t"))),
    ("backbone.language_backbone.resizer.", "text_projection.", (Rename("", ""),)),
    ("geometry_encoder.encode.{n}.", "geometry_encoder.layers.{n}.", _ENCODER_LAYER),
    ("geometry_encoder.", "geometry_encoder.", (
        Rename("img_pre_norm.", "vision_layer_norm."), Rename("norm.", "prompt_layer_norm."),
        Rename("encode_norm.", "output_layer_norm."), *(Rename(n, n) for n in (
            "boxes_direct_project.", "boxes_pool_project.", "boxes_pos_enc_project.", "cls_embed.", "label_embed.",
            "final_proj.")))),
    ("transformer.encoder.layers.{n}.", "detr_encoder.layers.{n}.", _ENCODER_LAYER),
    ("transformer.decoder.layers.{n}.", "detr_decoder.layers.{n}.", (
        *_attn("self_attn", "self_attn"), *_attn("ca_text", "text_cross_attn"),
        *_attn("cross_attn", "vision_cross_attn"), Rename("linear1.", "mlp.fc1."), Rename("linear2.", "mlp.fc2."),
        Rename("norm1.", "vision_cross_attn_layer_norm."),
        Rename("catext_norm.", "text_cross_attn_layer_norm."), Rename("norm2.", "self_attn_layer_norm."),
        Rename("norm3.", "mlp_layer_norm."))),
    ("transformer.decoder.", "detr_decoder.", (
        *(Rename(n, n) for n in ("query_embed.", "reference_points.", "presence_token.")),
        *_mlp("presence_token_head", "presence_head"), Rename("presence_token_out_norm.", "presence_layer_norm."),
        Rename("norm.", "output_layer_norm."), *_mlp("bbox_embed", "box_head"),
        *_mlp("ref_point_head", "ref_point_head"),
        *_mlp("boxRPB_embed_x", "box_rpb_embed_x"), *_mlp("boxRPB_embed_y", "box_rpb_embed_y"))),
    ("dot_prod_scoring.", "dot_product_scoring.", (
        *_mlp("prompt_mlp", "text_mlp"), Rename("prompt_mlp.out_norm.", "text_mlp_out_norm."),
        Rename("prompt_proj.", "text_proj."), Rename("hs_proj.", "query_proj."))),
    ("segmentation_head.", "mask_decoder.", (
        Rename("pixel_decoder.", "pixel_decoder."), Rename("mask_predictor.mask_embed.", "mask_embedder."),
        Rename("instance_seg_head.", "instance_projection."), Rename("semantic_seg_head.", "semantic_projection."),
        *_attn("cross_attend_prompt", "prompt_cross_attn"), Rename("cross_attn_norm.", "prompt_cross_attn_norm."))),
)
# Meta's tensors the concept model never reads (left, as Meta's own loader leaves what its model lacks)
UNREAD = re.compile(r"^(backbone\.vision_backbone\.sam2_convs\.|geometry_encoder\.points_|geometry_encoder\."
                    r"mask_encoder\.|backbone\.vision_backbone\.trunk\.blocks\.\d+\.attn\.freqs_cis)")
SAM31 = "backbone.vision_backbone.propagation_convs."  # SAM 3.1's multiplex neck


def _pattern(prefix: str) -> re.Pattern:
    return re.compile(re.escape(prefix).replace(re.escape("{n}"), r"(\d+)"))


_COMPILED = [(_pattern(m), hf, [(_pattern(r.meta), r) for r in renames]) for m, hf, renames in PARTS]


def meta_to_hf_name(name: str) -> tuple[str, str | None] | None:
    """A Meta ``detector`` tensor's name (``detector.`` stripped) -> ``(transformers name, how)``; None for a name
    outside :data:`PARTS`. A ``split`` name ends before ``{q,k,v}_proj.weight`` / ``.bias``."""
    for part, hf_part, renames in _COMPILED:
        found = part.match(name)
        if found is None:
            continue
        rest = name[found.end():]
        head = hf_part.replace("{n}", found.group(1)) if found.groups() else hf_part
        for pattern, rename in renames:
            inner = pattern.match(rest)
            if inner is None:
                continue
            tail = rest[inner.end():]
            hf = rename.hf
            if inner.groups():
                n = int(inner.group(1))
                hf = hf.replace("{n1}", str(n + 1)).replace("{n}", str(n))
            if rename.how == "split":  # qkv.weight -> weight; in_proj_bias -> bias
                return head + hf + "|" + tail, "split"
            return head + hf + tail, rename.how
        return None
    return None


def from_meta(state: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """Meta's ``detector`` state (``detector.`` stripped) -> transformers' names and layouts (views: nothing copied).
    Names Meta's image model reads that no part of :data:`PARTS` knows are refused in one line (another model's
    file); the ones the concept model never reads (:data:`UNREAD`) are left."""
    if any(k.startswith(SAM31) for k in state):
        raise VplError(f"{where}: a SAM 3.1 checkpoint (its multiplex neck {SAM31}*), another architecture than "
                       f"SAM 3's; {FIX}")
    out: dict[str, Any] = {}
    for name, value in state.items():
        if UNREAD.match(name):
            continue
        mapped = meta_to_hf_name(name)
        if mapped is None:
            raise VplError(f"{where}: tensor 'detector.{name}' is no part of SAM 3's image model; {FIX}")
        hf, how = mapped
        if how == "split":
            stem, _, kind = hf.partition("|")
            parts = _chunk3(value, where, name)
            out.update({f"{stem}{x}_proj.{kind}": p for x, p in zip("qkv", parts)})
        elif how == "t":
            out[hf] = _transposed(value)
        elif how == "cls":
            out[hf] = value[:, 1:] if isinstance(value, torch.Tensor) else (value[0], value[1] - 1, *value[2:])
        else:
            out[hf] = value
    return out


def _chunk3(value: Any, where: Path | str, name: str) -> tuple[Any, Any, Any]:
    """A fused projection's three parts (a tensor's views, or a shape's thirds)."""
    rows = value.shape[0] if isinstance(value, torch.Tensor) else value[0]
    if rows % 3:
        raise VplError(f"{where}: tensor 'detector.{name}' has {rows} rows, no fused q|k|v projection; {FIX}")
    if isinstance(value, torch.Tensor):
        return tuple(value.chunk(3, dim=0))
    third = (rows // 3, *value[1:])
    return third, third, third


def _transposed(value: Any) -> Any:
    return value.t() if isinstance(value, torch.Tensor) else tuple(reversed(value))


def to_meta(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' state of a ``Sam3Model`` -> Meta's ``detector.`` names and layouts (the inverse of
    :func:`from_meta`; the position table gets a zero class-token row): what :func:`.sam3_files.write_meta`
    saves."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        meta, how = _hf_to_meta_name(name)
        if how == "split":
            fused.setdefault(meta, {})[name.rsplit("_proj.", 1)[0][-1]] = value
        elif how == "t":
            out[meta] = value.t().contiguous()
        elif how == "cls":
            out[meta] = torch.cat([torch.zeros_like(value[:, :1]), value], dim=1)
        else:
            out[meta] = value
    out.update({meta: torch.cat([parts[x] for x in "qkv"], dim=0) for meta, parts in fused.items()})
    # a level's first transposed convolution is dconv_2x2_0 where a second follows it (x4), else dconv_2x2 (x2)
    for name in [k for k in out if ".dconv_2x2_0." in k]:
        if name.replace("_2x2_0.", "_2x2_1.") not in out:
            out[name.replace("_2x2_0.", "_2x2.")] = out.pop(name)
    return {f"detector.{k}": v for k, v in out.items()}


def _hf_to_meta_name(name: str) -> tuple[str, str | None]:
    """One transformers name -> ``(Meta name, how)``: the inverse of :func:`meta_to_hf_name`."""
    for part, hf_part, renames in PARTS:
        head = _pattern(hf_part).match(name)
        if head is None:
            continue
        meta_head = part.replace("{n}", head.group(1)) if head.groups() else part
        rest = name[head.end():]
        for rename in renames:
            if rename.how == "split":
                found = re.match(re.escape(rename.hf) + r"[qkv]_proj\.(weight|bias)$", rest)
                if found:
                    return meta_head + rename.meta + found.group(1), "split"
                continue
            pattern = re.escape(rename.hf).replace(re.escape("{n1}"), r"(\d+)").replace(re.escape("{n}"), r"(\d+)")
            found = re.match(pattern, rest)
            if found is None:
                continue
            meta = rename.meta
            if found.groups():
                meta = meta.replace("{n}", str(int(found.group(1)) - (1 if "{n1}" in rename.hf else 0)))
            return meta_head + meta + rest[found.end():], rename.how
    raise KeyError(f"no Meta name for {name!r}")


# ----------------------------------------------------------------------------------------------- the files
@dataclass(frozen=True)
class Sam3Files:
    """Where a SAM 3's weights lie: ``layout`` ``hf`` | ``meta``, the ``config.json`` (hf) and the weight files."""

    layout: str
    config: Path | None
    weights: tuple[Path, ...]

    @property
    def files(self) -> list[Path]:
        return ([self.config] if self.config is not None else []) + list(self.weights)


def locate(value: str | Path) -> Sam3Files:
    """The files ``value`` names: a folder of Hugging Face's layout (``config.json`` + ``model.safetensors`` or its
    index and shards), a folder holding Meta's ``sam3.pt``, a ``.safetensors`` file beside its ``config.json``, or
    a Meta checkpoint file. One line naming the path and the fix for anything else."""
    path = Path(value).expanduser()
    if path.is_dir():
        for name in (HF_CONFIG, HF_WEIGHTS, HF_INDEX, META_FILE):
            _regular_or_absent(path / name)
        hf, meta = (path / HF_WEIGHTS).is_file() or (path / HF_INDEX).is_file(), (path / META_FILE).is_file()
        if (path / HF_CONFIG).is_file() and hf and meta:  # which one is meant is the user's to say, not a guess
            weights = HF_WEIGHTS if (path / HF_WEIGHTS).is_file() else HF_INDEX
            raise VplError(f"{path}: holds both Hugging Face's SAM 3 ({HF_CONFIG} + {weights}) and Meta's "
                           f"{META_FILE}, which may be other weights; pass the one meant: {path / weights} or "
                           f"{path / META_FILE}")
        if (path / HF_CONFIG).is_file():
            if (path / HF_WEIGHTS).is_file():
                return Sam3Files("hf", path / HF_CONFIG, (path / HF_WEIGHTS,))
            if (path / HF_INDEX).is_file():
                return Sam3Files("hf", path / HF_CONFIG, _shards(path / HF_INDEX))
            raise VplError(f"{path}: a config.json without {HF_WEIGHTS} (or {HF_INDEX}) beside it; {FIX}")
        if (path / META_FILE).is_file():
            return Sam3Files("meta", None, (path / META_FILE,))
        raise VplError(f"{path}: holds neither Hugging Face's SAM 3 ({HF_CONFIG} + {HF_WEIGHTS}) nor Meta's "
                       f"{META_FILE}; {FIX}")
    if not path.is_file():
        broken = _broken_link(path)  # a link loop once read "no such file or folder", though the name is there
        raise VplError(f"{path}: {broken or 'no such file or folder'}; {FIX}")
    if path.suffix == ".safetensors":
        if not (path.parent / HF_CONFIG).is_file():
            raise VplError(f"{path}: Hugging Face's weights need their {HF_CONFIG} beside them; pass the folder "
                           f"holding both")
        return Sam3Files("hf", path.parent / HF_CONFIG, (path,))
    return Sam3Files("meta", None, (path,))


def _regular_or_absent(path: Path) -> None:
    """One line for a weights file of SAM 3's folder that is there but is no regular file: a link loop, a link to
    nothing, a device or pipe, a folder (else it would be reported missing, or read as zeros)."""
    from ...io import is_regular_file, not_a_file

    if not os.path.lexists(path) or is_regular_file(path):
        return
    broken = _broken_link(path)
    if broken is not None:
        raise VplError(f"{path}: {broken}, not a {path.name} file; {FIX}")
    raise not_a_file(path, f"SAM 3 {path.name}", FIX)


def _broken_link(path: Path) -> str | None:
    """What ``path`` is when it is a symbolic link that cannot be followed (a loop, a link to nothing), else None."""
    if not path.is_symlink() or os.path.exists(path):
        return None
    try:
        os.stat(path)
    except OSError as e:
        return "a symbolic link loop" if e.errno == errno.ELOOP else f"a link to nothing ({os.readlink(path)})"
    return None


def _shards(index: Path) -> tuple[Path, ...]:
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise VplError(f"{index}: not a readable safetensors index (its weight_map); {FIX}") from None
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise VplError(f"{index.parent / missing[0]}: a shard the index names is missing; {FIX}")
    return tuple(index.parent / n for n in names)


__all__ = ["CONFIG_KEY", "FIX", "GET", "HF_CONFIG", "HF_WEIGHTS", "META_FILE", "PARTS", "Sam3Files", "from_meta",
           "locate", "meta_config", "meta_to_hf_name", "sam3_config", "tiny_config", "to_meta"]

"""PGSeg / GroupViT weights: vpltool's safetensors checkpoints, and the key maps that read the reference's releases.

* vpltool's own: a safetensors file of kind ``pgseg-model`` whose header records the :class:`PGSegConfig`
  (``vpltool.config``) and the caller's ``extra`` (``vpltool.params``: step, data, ...).
* GroupViT's released checkpoints (NVlabs/GroupViT, e.g. ``group_vit_gcc_yfcc_30e-879422e0.pth``) and PGSeg's
  (Ferenas/PGSeg): a ``torch.save`` of a dict whose ``model`` entry is the state dict of ``MultiLabelContrastive``
  (keys ``img_encoder.*``, ``text_encoder.*``, ``img_projector.*``, ``text_projector.*``, ``logit_scale``; DDP's
  ``module.`` prefix where saved from the wrapper). The config is read from the tensors' shapes (a head is 64 wide,
  as in GroupViT-S and CLIP's text tower); ``npr`` is on when the NPR modules are there. GroupViT's multi-label
  ``multi_label_logit_scale`` is dropped (inference does not read it; `train-pgseg --init FILE --multi-label K`
  starts that scale afresh, at 1 / 0.07).

The pickled extras of a release (its OmegaConf config, optimiser state) are read by an unpickler that builds only
tensors and plain containers (:class:`_WeightsUnpickler`): nothing of a file's pickle is executed.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ....errors import VplError
from .model import PGSeg, PGSegConfig

KIND = "pgseg-model"
DROPPED = ("multi_label_logit_scale",)
_PREFIXES = ("img_encoder.", "text_encoder.", "img_projector.", "text_projector.", "logit_scale")


def save_checkpoint(path: str | Path, model: PGSeg, extra: dict[str, Any] | None = None,
                    **meta: Any) -> Path:
    """Write ``model``'s state dict (buffers included: BatchNorm statistics, NPR prototypes) and config to
    ``path`` (.safetensors), atomically; ``extra``: JSON-able facts recorded in the header. ``meta``: more
    ``vpltool.<key>`` metadata (``numerics``: the run's dtype and mode)."""
    from ....io.tensors import write_tensors

    state = {k: v for k, v in model.state_dict().items()}
    return write_tensors(path, state, kind=KIND, classes=[], params=extra or {},
                         config=json.dumps(model.cfg.to_dict(), sort_keys=True), **meta)


def load_checkpoint(path: str | Path) -> tuple[PGSegConfig, dict[str, torch.Tensor]]:
    """``(config, state dict in vpltool's keys)`` of a vpltool checkpoint or a GroupViT / PGSeg release; one-line
    :class:`VplError` for a missing file or one that holds another model."""
    path = Path(path)
    if not path.is_file():
        raise VplError(f"{path}: no such checkpoint file; pass a PGSeg/GroupViT checkpoint (.safetensors or .pth)")
    from ....io.tensors import check_weights

    cfg, state = _load_safetensors(path) if path.suffix == ".safetensors" else from_reference(_read_pth(path),
                                                                                               str(path))
    check_weights(path, state, fix=RELEASE_FIX)  # dtypes and finite values; keys and shapes in model_from_state
    return cfg, state


RELEASE_FIX = "pass a complete GroupViT/PGSeg release (re-download it) or a train-pgseg checkpoint"


def _load_safetensors(path: Path) -> tuple[PGSegConfig, dict[str, torch.Tensor]]:
    from ....io.tensors import read_header

    meta = read_header(path)
    if meta.get("vpltool.kind") != KIND:
        raise VplError(f"{path}: not a PGSeg checkpoint (kind {meta.get('vpltool.kind')!r}); pass a file written "
                       "by train-pgseg or a GroupViT/PGSeg release (.pth)")
    try:
        cfg = PGSegConfig.from_dict(json.loads(meta["vpltool.config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise VplError(f"{path}: its recorded PGSeg config is unreadable ({e}); re-save it with this vpltool")
    from safetensors.torch import load_file

    return cfg, load_file(str(path))


class _Opaque:
    """What a non-tensor class of a release's pickle becomes: it takes any arguments and state, and holds them."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bytes", "bool", "complex",
                  "slice", "range", "bytearray"}


class _WeightsUnpickler(pickle.Unpickler):
    """Resolves torch's tensor rebuild functions, storages and plain containers; everything else is
    :class:`_Opaque` (never imported, never called)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            return super().find_class(module, name)
        if module in ("torch._utils", "torch") and (name.startswith("_rebuild") or name.endswith("Storage")
                                                   or name in ("Size", "device", "dtype")):
            return super().find_class(module, name)
        if module == "torch" and hasattr(torch, name) and isinstance(getattr(torch, name), torch.dtype):
            return super().find_class(module, name)
        return _Opaque


class _WeightsPickle:
    Unpickler = _WeightsUnpickler
    load = pickle.load
    __name__ = "pickle"


def _read_pth(path: Path) -> dict[str, Any]:
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # a release also pickles its config object: tensors and containers only
            return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_WeightsPickle)
    except Exception as e:  # a truncated or foreign file
        raise VplError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:120]}); pass a "
                       "GroupViT/PGSeg release or a vpltool checkpoint") from None


def _tensors(obj: Any, where: str) -> dict[str, torch.Tensor]:
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VplError(f"{where}: holds no state dict (expected a dict with a 'model' state dict, as GroupViT and "
                       "PGSeg save); pass their released checkpoint")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def from_reference(obj: Any, where: str = "checkpoint") -> tuple[PGSegConfig, dict[str, torch.Tensor]]:
    """The key map from GroupViT's / PGSeg's checkpoint format (the loaded ``torch.save`` object, or its state
    dict) to vpltool's: prefixes stripped, unused keys dropped, the config read from the shapes. Keys keep their
    names (vpltool's modules are named as the reference's)."""
    state = {k: v for k, v in _tensors(obj, where).items() if k not in DROPPED}
    if "img_encoder.pos_embed" not in state or "text_encoder.token_embedding.weight" not in state:
        sample = ", ".join(list(state)[:3])
        raise VplError(f"{where}: not a GroupViT/PGSeg checkpoint (no img_encoder.pos_embed / text_encoder "
                       f"weights; its keys begin {sample}); pass a GroupViT or PGSeg release")
    strange = [k for k in state if not k.startswith(_PREFIXES)]
    if strange:
        raise VplError(f"{where}: unexpected keys for GroupViT/PGSeg ({', '.join(strange[:3])}); pass a GroupViT "
                       "or PGSeg release")
    return infer_config(state, where), state


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor], where: str = "checkpoint") -> PGSegConfig:
    """The :class:`PGSegConfig` a reference-format state dict was built with (heads 64 wide). A tensor it reads
    that the file lacks is one line naming ``where`` and the key."""

    def need(key: str, dims: int) -> torch.Tensor:
        if key not in state:
            raise VplError(f"{where}: lacks tensor {key!r}, which every GroupViT/PGSeg release holds; {RELEASE_FIX}")
        if state[key].ndim < dims:
            raise VplError(f"{where}: tensor {key!r} is {list(state[key].shape)}, not {dims}-d as in a "
                           f"GroupViT/PGSeg release; {RELEASE_FIX}")
        return state[key]

    pos = need("img_encoder.pos_embed", 2)
    embed = pos.shape[-1]
    patch = need("img_encoder.patch_embed.proj.weight", 4).shape[-1]
    n_stages = _count(state, r"img_encoder\.layers\.(\d+)\.")
    depths = tuple(_count(state, rf"img_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(n_stages))
    groups = tuple(int(need(f"img_encoder.layers.{i}.group_token", 2).shape[1])
                   if f"img_encoder.layers.{i}.group_token" in state else 0 for i in range(n_stages))
    outputs = tuple(int(need(f"img_encoder.layers.{i}.downsample.mlp_inter.fc2.weight", 1).shape[0])
                    for i in range(n_stages - 1))
    tpos = need("text_encoder.positional_embedding", 2)
    proj = state["img_projector.linear_hidden.0.weight"] if "img_projector.linear_hidden.0.weight" in state else None
    return PGSegConfig(
        img_size=int(round(pos.shape[1] ** 0.5)) * patch, patch_size=patch, embed_dim=embed, depths=depths,
        num_heads=tuple(max(embed // 64, 1) for _ in range(n_stages)), num_group_tokens=groups,
        num_output_groups=outputs, context_length=tpos.shape[0], text_width=tpos.shape[1],
        text_layers=_count(state, r"text_encoder\.transformer\.resblocks\.(\d+)\."),
        vocab_size=need("text_encoder.token_embedding.weight", 1).shape[0],
        output_dim=need("img_projector.linear_out.weight", 1).shape[0],
        proj_inner_dim=proj.shape[0] if proj is not None else 4096,
        npr=any(".downsample_spatial." in k for k in state))


def model_from_state(cfg: PGSegConfig, state: dict[str, torch.Tensor], where: str = "checkpoint") -> PGSeg:
    """Build ``cfg``'s model and load ``state`` strictly; a mismatch is one line naming the first keys."""
    from ....io.tensors import check_weights
    from .model import build_model

    model = build_model(cfg)
    check_weights(where, state, model.state_dict(), fix="pass a checkpoint of this model")  # the key, shape, values
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise VplError(f"{where}: does not fit the PGSeg/GroupViT architecture it declares "
                       f"({str(e).splitlines()[1].strip()[:160] if len(str(e).splitlines()) > 1 else e}); pass a "
                       "checkpoint of this model") from None
    if missing or unexpected:
        raise VplError(f"{where}: does not fit the PGSeg/GroupViT architecture it declares (missing "
                       f"{missing[:3]}, unexpected {unexpected[:3]}); pass a checkpoint of this model")
    return model

"""Talk2DINO weights: vpltool's safetensors file (the projection, its config naming the frozen backbones) and the
reference's released ``.pth`` (a ``ProjectionLayer`` state dict: ``linear_layer.*``, ``hidden_layers.N.*`` or the
older ``linear_layer2.*``), whose backbones are the reference's (DINOv2 ViT-B/14 with registers, OpenAI ViT-B/16,
or ViT-L/14 for a 1024-wide projection)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ....errors import VplError
from .model import Talk2DINOConfig

KIND = "talk2dino-model"
# the reference's backbones by projection width (configs/vitb_mlp_infonce.yaml, vitl_mlp_infonce.yaml)
RELEASE_DINO = {768: "vit_base_patch14_reg4_dinov2.lvd142m", 1024: "vit_large_patch14_reg4_dinov2.lvd142m"}


def save_checkpoint(path: str | Path, model: torch.nn.Module, extra: dict[str, Any] | None = None,
                    **meta: Any) -> Path:
    """The projection's state dict and the model's config, to ``path`` (.safetensors) atomically; ``extra``:
    JSON-able facts for the header (``vpltool.params``). ``meta``: more
    ``vpltool.<key>`` metadata (``numerics``: the run's dtype and mode)."""
    from ....io.tensors import write_tensors

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return write_tensors(path, state, kind=KIND, classes=[], params=extra or {},
                         config=json.dumps(model.cfg.to_dict(), sort_keys=True), **meta)


def load_checkpoint(path: str | Path) -> tuple[Talk2DINOConfig, dict[str, torch.Tensor]]:
    """``(config, state dict under vpltool's keys, proj.*)`` of a vpltool file or a released ``.pth``; one line for
    a missing file, another model's or an unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise VplError(f"{path}: no such Talk2DINO checkpoint; pass a train-talk2dino talk2dino.safetensors or a "
                       "Talk2DINO release .pth")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from ....io.tensors import read_header

        meta = read_header(path)
        if meta.get("vpltool.kind") != KIND:
            raise VplError(f"{path}: not a Talk2DINO model (kind {meta.get('vpltool.kind')!r}); pass a file its "
                           "training wrote or a Talk2DINO release .pth")
        try:
            cfg = Talk2DINOConfig.from_dict(json.loads(meta["vpltool.config"]))
        except (KeyError, ValueError, TypeError) as e:
            raise VplError(f"{path}: its recorded Talk2DINO config is unreadable ({e}); re-save it") from None
        return cfg, load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable pickle is the same one line
        raise VplError(f"{path}: not a readable Talk2DINO release ({type(e).__name__}); pass its "
                       "weights/*.pth") from None
    return from_reference(state, str(path))


def from_reference(state: dict[str, torch.Tensor], where: str = "the checkpoint") -> tuple[Talk2DINOConfig, dict]:
    """A ``ProjectionLayer`` state dict -> ``(config, proj.* state)``; ``linear_layer2`` read as ``hidden_layers.0``
    (``ProjectionLayer.load_state_dict``)."""
    if not isinstance(state, dict) or "linear_layer.weight" not in state:
        raise VplError(f"{where}: no linear_layer.weight; not a Talk2DINO projection (ProjectionLayer)")
    state = dict(state)
    for part in ("weight", "bias"):
        if f"linear_layer2.{part}" in state:
            state[f"hidden_layers.0.{part}"] = state.pop(f"linear_layer2.{part}")
    unknown = [k for k in state if not (k.startswith("linear_layer.") or k.startswith("hidden_layers."))]
    if unknown:
        raise VplError(f"{where}: tensors {unknown[:3]} are no ProjectionLayer's (weighted heads or a visual "
                       "projection); only the text projection of the released models is supported")
    dino_dim, text_dim = state["linear_layer.weight"].shape
    hidden = len({k.split(".")[1] for k in state if k.startswith("hidden_layers.")})
    if int(dino_dim) not in RELEASE_DINO:
        raise VplError(f"{where}: a {dino_dim}-wide projection; the releases' DINOs are 768 or 1024 wide")
    cfg = Talk2DINOConfig(dino_model=RELEASE_DINO[int(dino_dim)], text_dim=int(text_dim), dino_dim=int(dino_dim),
                          hidden_layers=hidden)
    return cfg, {f"proj.{k}": v for k, v in state.items()}


__all__ = ["KIND", "save_checkpoint", "load_checkpoint", "from_reference"]

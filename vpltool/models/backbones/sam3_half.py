"""SAM 3's weights held in the run's half precision: under a bf16 or fp16 autocast (``--precision bf16|fp16``) the
weights of its linear and convolution layers are stored in that dtype, so a full-size SAM 3 holds about half the
memory (its weights are almost all in those layers), with the same outputs.

Why the outputs do not move: autocast casts a linear or convolution layer's fp32 weight to its dtype at every call
(round to nearest even, as ``Tensor.to``); a weight stored in that dtype is the same number, which autocast then
leaves alone. What autocast runs in fp32 keeps fp32 weights: the norms and the embedding tables (read as they
are), and the geometry encoder, which :meth:`~vpltool.models.backbones.sam3.Sam3.ground` runs with autocast off
(torchvision's ``roi_align`` has no bf16 rule on the CPU). Back in fp32 (no autocast), the halved weights are read
again from the model's files: a bf16 weight cast back would not be the file's number.

:meth:`~vpltool.models.backbones.sam3.Sam3.follow_autocast` calls :func:`hold` at each call of the model, so the
weights follow whatever autocast the caller runs under, as the stages' ``autocast`` (:func:`vpltool.device.autocast`)
sets it. A model loaded under such an autocast (:func:`~vpltool.models.backbones.sam3.load_sam3`) reads its halved
weights straight into that dtype, one tensor at a time (:func:`load_dtypes`): the fp32 copy is never held whole,
so the process's peak memory shrinks with the weights.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

# the layers whose weights autocast casts at each call (its lower-precision list on the CPU and CUDA)
HALVED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
KEPT = ("geometry_encoder",)  # modules run with autocast off: their weights stay fp32


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The dtype the caller's autocast runs ``device``'s linear layers in; float32 when autocast is off there."""
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        return torch.float32
    return torch.get_autocast_dtype(kind)


def halved_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` of each linear and convolution layer whose weights follow the autocast: every one outside
    :data:`KEPT`."""
    for name, module in model.named_modules():
        if isinstance(module, HALVED) and not set(KEPT) & set(name.split(".")):
            yield name, module


def halved_names(model: nn.Module) -> set[str]:
    """The names (``model``'s state) of the parameters of its :func:`halved_layers`."""
    return {f"{name}.{key}" if name else key
            for name, layer in halved_layers(model) for key, _ in layer.named_parameters(recurse=False)}


def load_dtypes(model: nn.Module, dtype: torch.dtype):
    """What a load straight into ``dtype`` reads each of ``model``'s tensors as (its name -> ``dtype``, or None: as
    the file holds it): the weights :func:`hold` makes of an fp32 load, the same numbers (``Tensor.to``'s rounding),
    without the fp32 copy ever held whole."""
    halved = halved_names(model)
    return lambda name: dtype if name in halved else None


def hold(model: nn.Module, dtype: torch.dtype, held: torch.dtype, read_fp32) -> torch.dtype:
    """``model``'s halved layers' weights made ``dtype`` (they are ``held`` now); returns ``dtype``.

    To a half dtype from fp32: cast in place. Back to fp32 (or from one half dtype to the other): the weights
    ``read_fp32()`` gives (``{name: fp32 tensor}`` under the model's names, read from its files) first."""
    if dtype == held:
        return held
    layers = list(halved_layers(model))
    if held != torch.float32:
        state = read_fp32()
        for name, layer in layers:
            for key, param in layer.named_parameters(recurse=False):
                param.data = state[f"{name}.{key}" if name else key].to(param.device, torch.float32)
        del state
    if dtype != torch.float32:
        for _, layer in layers:
            for param in layer.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return dtype


def weights_bytes(model: nn.Module) -> int:
    """The bytes ``model``'s parameters and buffers hold (its weights' footprint)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


__all__ = ["HALVED", "KEPT", "autocast_dtype", "halved_layers", "halved_names", "hold", "load_dtypes", "weights_bytes"]

"""The example CLIP family ``example-clip`` (imported only when it is named): ``--model example-clip:ARCH@SEED``
is the open_clip architecture ``ARCH`` (a name open_clip or ``--model-config-dir`` knows) with random weights drawn
from ``SEED``, for trying a pipeline on any architecture without its weights. A family that gives a CLIP returns a
:class:`vpltool.models.ClipBackbone` (its ``dense`` option is the ``--dense`` mixing), and every stage that takes
``--model`` and :func:`vpltool.segmenter` (``model="example-clip:ARCH@SEED"``) run on it."""

from __future__ import annotations

import torch

from vpltool.errors import VplError
from vpltool.models import ClipBackbone, ModelSpec, create_model, register_family


def _parts(spec: str) -> tuple[str, int]:
    arch, _, seed = str(spec).partition("@")
    if not arch or not (seed or "0").isdigit():
        raise VplError(f"--model example-clip:{spec}: give example-clip:ARCH@SEED, e.g. example-clip:ViT-B-16@0")
    return arch, int(seed or 0)


def check(spec, dense=None, **options):
    _parts(spec)


def load(spec, device="cpu", dense="none", **options):
    arch, seed = _parts(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = create_model(ModelSpec(arch, "none"))
    return ClipBackbone(model, ModelSpec(f"example-clip:{spec}", "none"), torch.device(device), {}, dense)


register_family("example-clip", load, check, summary="an example plugin's CLIP family: an open_clip architecture "
                "with seeded random weights", module=__name__)

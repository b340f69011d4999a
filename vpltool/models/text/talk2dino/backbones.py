"""Talk2DINO's frozen backbones named by their bytes: a checkpoint holds the projection alone and names the DINO and
the CLIP it was learnt against (:class:`~.model.Talk2DINOConfig`), so the same names over other bytes (the shipped
toy CLIP retrained under its alias, a DINO weights file replaced) would give another model, certified.

:func:`with_digests` records the digest of each backbone's local bytes in the model config when a run makes one
(``clip_digest``: :func:`vpltool.models.backbones.local_weights.weights_digest`, a local-dir folder, an alias or a
``--pretrained`` file; ``dino_digest``: the ``dino_weights`` file's sha256); :func:`check_backbones` compares them
with the bytes there now before anything loads, wherever a checkpoint is read (`segment`, `cam`, `benchmark` and the
Python API through the family's check, `train-text --init`, and a resume, which compares the model configs). A
backbone named by a tag (``openai``, ``hub``) or random has no digest: the tag names published weights.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ....errors import VplError
from .model import Talk2DINOConfig


def backbone_digests(cfg: Talk2DINOConfig) -> tuple[str | None, str | None]:
    """``(CLIP digest, DINO digest)`` of the local bytes ``cfg`` names now; None where it names none."""
    from .... import io
    from ...backbones.loading import ModelSpec
    from ...backbones.local_weights import weights_digest

    clip = weights_digest(ModelSpec(cfg.clip_model, cfg.clip_pretrained))
    path = Path(cfg.dino_weights).expanduser() if cfg.dino_weights not in ("hub", "none") else None
    return clip, io.sha256_file(path) if path is not None and path.is_file() else None


def check_backbones(cfg: Talk2DINOConfig, where: str) -> None:
    """Refuse, in one line naming ``where`` (the checkpoint), a config whose recorded backbone digests are not the
    bytes its backbones' names give now."""
    if cfg.clip_digest is None and cfg.dino_digest is None:
        return
    clip, dino = backbone_digests(cfg)
    short = lambda d: str(d).removeprefix("sha256:")[:12] + "…"  # noqa: E731
    for what, recorded, now in ((f"the CLIP {cfg.clip_model}", cfg.clip_digest, clip),
                                (f"the DINO weights {cfg.dino_weights}", cfg.dino_digest, dino)):
        if recorded is None or recorded == now:
            continue
        state = "are not there any more" if now is None else f"changed since (sha256 {short(recorded)} there, " \
                                                              f"{short(now)} here)"
        raise VplError(f"{where}: a Talk2DINO projection learnt over {what}, whose bytes {state}; restore those "
                       "bytes, or re-train the projection over these (train-text --family talk2dino)")


def with_digests(cfg: Talk2DINOConfig, where: str | None = None) -> Talk2DINOConfig:
    """``cfg`` with the digests of its backbones' bytes now; ``where`` (an ``--init`` checkpoint): its recorded
    digests checked first (:func:`check_backbones`)."""
    if where is not None:
        check_backbones(cfg, where)
    clip, dino = backbone_digests(cfg)
    return replace(cfg, clip_digest=clip, dino_digest=dino)


# the dino and clip families name their own options; Talk2DINO's backbones are train-text's --set KEY=VALUE settings
_SETTINGS = ((r"--dino-weights\b", "dino_weights=FILE"), (r"--dino-model\b", "dino_model=NAME"),
             (r"(?<![\w-])--pretrained\b", "clip_pretrained=TAG_OR_FILE"), (r"(?<![\w-])--model\b", "clip_model=NAME"))


@contextlib.contextmanager
def backbone_options(cfg: Any) -> Iterator[None]:
    """A backbone's one-line error inside the block, with the options that name Talk2DINO's backbones instead of
    the dino and clip families' own (which `train-text` does not have): ``--set dino_weights=FILE`` and the like
    while training (``cfg`` a training config); for a checkpoint's backbones, that setting of the `train-text` run
    that would re-make it over other ones."""
    from ....config.text import TextTrainConfig

    try:
        yield
    except VplError as e:
        training = isinstance(cfg, TextTrainConfig)
        said = str(e)
        for option, setting in _SETTINGS:
            said = re.sub(option, f"--set {setting}" if training else
                          f"`vpltool train-text --family talk2dino --set {setting}` (re-train over another)", said)
        raise VplError(said) from None


__all__ = ["backbone_digests", "backbone_options", "check_backbones", "with_digests"]

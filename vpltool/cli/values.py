"""Option values as the commands read them: comma-separated numbers, ``--shard i/n``, the model triple."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import VplError


def parse_floats(value: str, option: str, example: str = "1,2") -> tuple[float, ...]:
    """``"1.0,0.75"`` -> ``(1.0, 0.75)``; a VplError naming the option (and a valid ``example``) for anything else."""
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise VplError(f"{option} {value!r}: give comma-separated numbers, e.g. {example}") from None
    if not values:
        raise VplError(f"{option} is empty: give comma-separated numbers, e.g. {example}")
    return values


def parse_ints(value: str, option: str, example: str = "16,8") -> tuple[int, ...]:
    """``"16,8"`` -> ``(16, 8)``; ``""`` -> ``()``; a VplError naming the option for anything else (ASCII digits)."""
    parts = [v.strip() for v in value.split(",") if v.strip()]
    if not all(re.fullmatch(r"[0-9]+", v, flags=re.ASCII) for v in parts):
        raise VplError(f"{option} {value!r}: give comma-separated whole numbers, e.g. {example}")
    return tuple(int(v) for v in parts)


def shard(value: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` as ``(i, n)`` (None when not given: then torchrun's RANK/WORLD_SIZE decide); ASCII digits
    only, so that ``1_0/20`` (Python's int reads 10) or other scripts' digits never pick a shard by surprise."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", value, flags=re.ASCII)
    if match is None:
        raise VplError(f"--shard {value!r}: use i/n with digits 0-9, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise VplError(f"--shard {value}: need 0 <= i < n")
    return index, count


def model_spec(model: str, pretrained: str, config_dir: Path | None):
    from ..models import ModelSpec

    return ModelSpec(model=model, pretrained=pretrained, config_dir=str(config_dir) if config_dir else None)


def names_a_folder(model: str) -> bool:
    """Whether ``--model`` names a CLIP's local folder (``local-dir:DIR`` or a registered alias of one): what a
    stage that takes its CLIP from a record accepts, as where that CLIP lies now."""
    from ..models.backbones.aliases import registered_folder

    return model.startswith("local-dir:") or registered_folder(model) is not None


def clip_folder(model: str | None, option: str = "--model"):
    """``--model local-dir:DIR`` (or a registered alias) given to a stage that takes its CLIP from a record: where
    that CLIP lies now, as a :class:`~vpltool.models.ModelSpec` (checked later by its bytes); None when not given.
    Any other value is one line, before anything loads."""
    if model is None:
        return None
    if not names_a_folder(model):
        raise VplError(f"{option} {model}: this command's CLIP is the one its input's record names; give "
                       f"{option} local-dir:DIR only where that CLIP's folder lies now, or drop {option}")
    return model_spec(model, "none", None)


def segmenting_model(model: str | None, pgseg: Path | None = None) -> tuple[str, object]:
    """``--model`` with its alias ``--pgseg FILE`` -> ``(family, spec)`` (:func:`vpltool.models.registry.model_family`:
    ``NAME:FILE`` of a text-supervised family -> ``(its family, Path(FILE))``, any other value -> ``("clip",
    value)``). ``--pgseg FILE`` is ``--model pgseg:FILE``; both naming different files is one line, before anything
    loads. A CLIP ``--model`` beside ``--pgseg`` is left to :mod:`.applies` (warned: not used)."""
    from ..models.registry import model_family

    family, spec = ("clip", None) if model is None else model_family(model)
    if pgseg is None:
        return family, spec
    if family != "clip" and os.path.abspath(spec) != os.path.abspath(pgseg):
        raise VplError(f"--model {model} and --pgseg {pgseg}: two checkpoints; give one (--pgseg FILE is the "
                       "alias of --model pgseg:FILE)")
    return model_family(f"pgseg:{pgseg}")  # the alias is that spelling, read as every --model is


def text_defaults(setting: str) -> str:
    """``--help``'s default of a zero-shot setting (``bg_thresh``, ``short_side``, ``slide_crop``, ...) with a
    text-supervised family's checkpoint: each family's (its configuration's ``ZERO_SHOT``), e.g. ``pgseg 0.95``."""
    from ..models.registry import TEXT_FAMILIES, text_config

    return ", ".join(f"{name} {text_config(name).ZERO_SHOT.options()[setting]}" for name in TEXT_FAMILIES)


def floats_text(values: tuple[float, ...]) -> str:
    """A config tuple as the CLI spells it (``(1.0, 0.75)`` -> ``"1,0.75"``): defaults come from config."""
    return ",".join(f"{v:g}" for v in values)

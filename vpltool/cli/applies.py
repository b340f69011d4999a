"""Which options apply under which mode: one table, checked once for every command (:func:`check_options`, from
:func:`vpltool.cli.errors.friendly_errors`) before anything runs.

An option the user gave (on the command line or from its environment variable; never a default) that has no
effect in the command's mode is warned about in one line and is not recorded (the mode's code path never puts it
in a record); one that contradicts the mode (it would change what is asked, and would be dropped) is refused in
one line, exit 2. Options that live in a stage config say the same through the config's ``inert()``
(:func:`vpltool.config.inert_fields`); this table covers the options that switch a command to another path
(``--model NAME:FILE``, ``--pgseg``), where no config of the other path is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.checks import ignored_option
from ..config.dense import KNOBS
from ..errors import VplError


@dataclass(frozen=True)
class Rule:
    """``options`` (parameter names) have no effect when ``when(values)`` holds (``values``: the command's
    parameters by name), ``why`` saying so ("with --pgseg ..."); ``refuse``: a contradiction, refused with
    ``fix``."""

    options: tuple[str, ...]
    when: Callable[[dict[str, Any]], bool]
    why: str
    refuse: bool = False
    fix: str = "drop one of them"


def _model_family(values: dict[str, Any]) -> str:
    """The family of ``--model`` (a text-supervised family's for ``NAME:FILE``: ``pgseg`` for ``pgseg:FILE`` /
    ``groupvit:FILE``, :mod:`vpltool.models.registry`, torch-free); ``clip`` when it is a CLIP's name or not
    given."""
    from ..models.registry import model_family

    model = values.get("model")
    return "clip" if model is None else model_family(model)[0]


def _text(values: dict[str, Any]) -> bool:
    """A text-supervised family's checkpoint segments: ``--model NAME:FILE`` or PGSeg's alias ``--pgseg FILE``."""
    return values.get("pgseg") is not None or _model_family(values) != "clip"


def _no_text(values: dict[str, Any]) -> bool:
    return not _text(values)


# every --dense method's own knobs (their spec rows, vpltool.config.dense.DENSE_SPECS)
_DENSE_KNOBS = tuple(KNOBS)
_SEGMENT_CLIP = ("dense", "pretrained", "model_config_dir", "templates", "logit_scale", "prob_threshold",
                 "area_threshold", "pamr_steps", "attention", "residual", "proxy_model", "proxy_weights",
                 "sam_model", "sam_weights", *_DENSE_KNOBS)
_CAM_GRADCAM = ("refine", "affinity", "affinity_weight", "dino_model", "dino_weights", "sgc_segments",
                "sgc_clusters", "sgc_position", "box_threshold", "layer", "temperature", "attention_blocks",
                "dense_side", "dense_scale", "dense_crop", "dense_stride", "dense_pamr")
_TEXT_WHY = "with --pgseg or a FAMILY:FILE checkpoint (a text-supervised one: its own text encoder, template and maps)"
# benchmark's options that a PGSeg checkpoint does not read (it takes --short-side, --slide-crop, --slide-stride)
_BENCHMARK_CLIP = ("pretrained", "model_config_dir", "logit_scale", "prob_threshold", "area_threshold", "pamr_steps",
                   "attention", "residual", *_DENSE_KNOBS, "proxy_model", "proxy_weights", "sam_model", "sam_weights")
_TEXT_MODEL_WHY = "with a FAMILY:FILE checkpoint (a text-supervised one: its own text encoder, template and maps)"

RULES: dict[str, tuple[Rule, ...]] = {
    "segment": (
        Rule(_SEGMENT_CLIP, _text, _TEXT_WHY),
        Rule(("model",), lambda v: _text(v) and _model_family(v) == "clip", _TEXT_WHY),
        Rule(("class_file",), _text, "with --pgseg or a FAMILY:FILE checkpoint, which queries one name a class "
             "(--classes)", refuse=True),
        Rule(("classes",), lambda v: _text(v) and "|" in str(v.get("classes") or ""),
             "with --pgseg or a FAMILY:FILE checkpoint, which queries one name a class (its synonyms would be dropped)",
             refuse=True,
             fix="give one name a class (no '|')"),
        Rule(("bg_thresh",), _no_text, "without --pgseg or a FAMILY:FILE checkpoint"),
    ),
    "cam": (
        Rule(("prototypes", "save_overlays", "save_debug", "raw_out"), _text, _TEXT_WHY, refuse=True),
        Rule(("dense",), lambda v: _text(v) and v.get("dense") not in (None, "none"), _TEXT_WHY, refuse=True),
        Rule(("parity",), lambda v: _text(v) and v.get("parity") not in (None, "none"), _TEXT_WHY, refuse=True),
        Rule(_CAM_GRADCAM, _text, "with --pgseg or a FAMILY:FILE checkpoint (its seeds are the checkpoint's maps: no "
             "GradCAM, no CAA)"),
        Rule(("pgseg_side",), _no_text, "without --pgseg or a FAMILY:FILE checkpoint"),
    ),
    "benchmark": (
        Rule(_BENCHMARK_CLIP, _text, _TEXT_MODEL_WHY),
        Rule(("class_file",), _text, "with a FAMILY:FILE checkpoint, which queries one name a class", refuse=True),
    ),
    "train-pgseg": (
        Rule(("multi_label_weight",), lambda v: not v.get("multi_label"), "without --multi-label K (K > 0)"),
        Rule(("preset",), lambda v: v.get("init") is not None, "with --init (its architecture replaces --preset)"),
    ),
}


def check_options(command: str, values: dict[str, Any], given: Callable[[str], bool],
                  spelled: Callable[[str], str], warn: Callable[[str], None]) -> None:
    """Apply :data:`RULES` of ``command`` to the options ``given`` (a parameter name -> whether the user gave it):
    the first contradiction is refused (VplError), each option without effect is ``warn``-ed once. ``spelled``:
    a parameter's option as the user types it (``--bg-thresh``)."""
    said = set()
    for rule in RULES.get(command, ()):
        names = [n for n in rule.options if n in values and n not in said and given(n)]
        if not names or not rule.when(values):
            continue
        for name in names:
            said.add(name)
            value = values[name]
            shown = "" if isinstance(value, bool) else f" {value}"
            if rule.refuse:  # a path is named by the option alone (the fix is to drop it, not to rename it)
                shown = "" if isinstance(value, Path) else shown
                raise VplError(f"{spelled(name)}{shown}: not used {rule.why}; {rule.fix}")
            warn(ignored_option(spelled(name), shown.strip() or "", rule.why).replace("  ", " "))


__all__ = ["Rule", "RULES", "check_options"]

"""The rules a value must follow, and configs to and from stage records.

Each check raises :class:`~vpltool.errors.VplError` with one line that names the CLI option and the fix, so that a
library caller gets the message a CLI user sees. The stage dataclasses (:mod:`.stages`, :mod:`.decoder`) call these
in their ``__post_init__``.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from typing import Any

from ..errors import VplError


def require(ok: bool, message: str) -> None:
    if not ok:
        raise VplError(message)


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """``" did you mean 'naclip'?"`` for a mistyped ``value`` (difflib's closest of ``choices``, case aside), or
    ``""`` when none is close: the help a one-line error gives besides the list."""
    import difflib

    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" did you mean {by_lower[close[0]]!r}?" if close else ""


# torch's and numpy's names of the dtypes --precision names (transformers' torch_dtype, a habit from other tools)
DTYPE_NAMES = {"float32": "fp32", "float": "fp32", "fp": "fp32", "bfloat16": "bf16", "float16": "fp16",
               "half": "fp16", "bfloat": "bf16"}


def choice(option: str, value: Any, choices: tuple[str, ...], aliases: dict[str, str] | None = None) -> None:
    """One line for ``value`` not in ``choices``: the closest (difflib), or the choice an alias names (``float32``
    is ``fp32`` for ``--precision``: ``aliases``)."""
    if value in choices:
        return
    listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
    named = (aliases or {}).get(str(value).strip().lower().removeprefix("torch."))
    hint = f" did you mean {named!r}?" if named in choices else did_you_mean(value, choices)
    require(False, f"{option} {value!r}:{hint} choose {listed}" if hint else f"{option} {value!r}: choose {listed}")


def positive(option: str, value: float | None, *, allow_none: bool = False, upper: float = math.inf) -> None:
    if value is None and allow_none:
        return
    ok = value is not None and math.isfinite(value) and 0 < value <= upper
    bound = f" and at most {upper:g}" if math.isfinite(upper) else ""
    require(ok, f"{option} {value}: must be a number above 0{bound}")


# the largest float32: a background exponent is a float32 in the CAMs' arithmetic (ops.kernels), and a larger one
# overflowed to inf there (numpy's "overflow encountered in cast", then masks of an inf power)
FLOAT32_MAX = 3.4028234663852886e38


def exponent(option: str, value: float) -> None:
    """A background exponent (``--bg-exponent``, ``--bg-exponents``): above 0 and at most :data:`FLOAT32_MAX`."""
    positive(option, value, upper=FLOAT32_MAX)


def at_least(option: str, value: int | None, low: int, *, allow_none: bool = False, why: str = "") -> None:
    if value is None and allow_none:
        return
    require(value is not None and value >= low, f"{option} {value}: must be >= {low}{why}")


def whole_number(option: str, value: Any, *, allow_none: bool = False) -> None:
    """An option that counts (a batch size, workers): an int, not a bool, a float or a string (from Python:
    ``batch_size='2'`` once raised a TypeError, ``1.5`` and ``True`` were taken)."""
    if value is None and allow_none:
        return
    require(isinstance(value, int) and not isinstance(value, bool),
            f"{option} {value!r}: not a whole number (a {type(value).__name__}); give one, e.g. 2")


def fraction(option: str, value: float) -> None:
    require(math.isfinite(value) and 0.0 <= value <= 1.0, f"{option} {value}: must be in [0, 1]")


def non_negative(option: str, value: float, upper: float = math.inf, why: str = "") -> None:
    """A weight: finite and >= 0 (nan is not "< 0", so it gets its own words), at most ``upper``."""
    require(math.isfinite(value), f"{option} {value}: not a finite number; give a number >= 0")
    require(value >= 0, f"{option} {value}: must be >= 0{why}")
    require(value <= upper, f"{option} {value:g}: must be at most {upper:g}{why}")


def finite_numbers(values: dict[str, Any], spelled: Any = None) -> None:
    """Every float of ``values`` (option name -> value; ``spelled(name)`` the option as typed) finite: nan passes
    every bound check written as a comparison (``nan < 0`` is False), so each command's float options are
    checked here once, before the per-option bounds (the CLI calls this for every command)."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            option = spelled(name) if spelled is not None else name
            raise VplError(f"{option} {value}: not a finite number; give a number")


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds: a negative one is refused by numpy deep inside, a traceback


def seed_value(option: str, value: int) -> None:
    require(0 <= value <= MAX_SEED, f"{option} {value}: must be an integer from 0 to {MAX_SEED}")



def check_tokens(image: object, size: tuple[int, int], grid: tuple[int, int], patch: int, max_tokens: int, *,
                 stage: str = "extract", scale: float = 1.0) -> None:
    """Refuse an image whose ``grid`` (``(h, w)`` patches of its network input) exceeds ``max_tokens``.

    The rule every stage that runs the frozen blocks on an image applies before the forward (`extract`, and `cam`
    when it recomputes or re-runs the last block): one line naming the image, its ``size`` ``(H, W)`` in pixels,
    the token count, and the ``--max-side`` (`predict`: the ``--long-side``; its ``size`` is then the largest test
    view, at ``scale`` x the long side) that brings it under the limit.
    """
    n = grid[0] * grid[1]
    if n <= max_tokens:
        return
    long, short = max(size), min(size)
    side = patch * max(1, int(math.sqrt(max_tokens * long / short)))  # the largest long side whose grid fits
    while side > patch and math.ceil(side / patch) * math.ceil(side * short / long / patch) > max_tokens:
        side -= patch
    if stage == "predict":  # size is the largest test view, at scale x --long-side
        fix = f"pass --long-side {int(side / scale)} or less"
    elif stage == "extract":
        fix = f"pass --max-side {side}"
    else:
        fix = f"re-run `vpltool extract` with --max-side {side}"
    what = f"{size[0]}x{size[1]} pixels"
    what = f"its largest test view, {what}, makes" if stage == "predict" else f"{what} make"
    raise VplError(f"{image}: {what} {n:,} patch tokens ({grid[0]}x{grid[1]} at patch "
                   f"{patch}), above --max-tokens {max_tokens} (attention memory grows with its square); {fix} "
                   "(or raise --max-tokens where the memory is)")



def inert_fields(cfg: Any) -> dict[str, str]:
    """The fields of ``cfg`` that have no effect in its combination, -> why (``"without --refine caa+sgc"``): each
    config class may define ``inert()`` saying so. They are never recorded (:func:`to_params`), so a resume compares
    only what changes a result, and a non-default value of one is warned about (:func:`inert_options`)."""
    rule = getattr(cfg, "inert", None)
    return rule() if callable(rule) else {}


def inert_options(cfg: Any, defaults: Any = None) -> list[str]:
    """One sentence per field of ``cfg`` that was set (differs from ``defaults``, the class's own by default) but
    has no effect: ``--sgc-clusters 7 has no effect without --refine caa+sgc; ignored``."""
    defaults = defaults if defaults is not None else type(cfg)()
    said = []
    for name, why in inert_fields(cfg).items():
        value = getattr(cfg, name)
        if value != getattr(defaults, name):
            said.append(ignored_option(f"--{name.replace('_', '-')}", shown_value(value), why))
    return said


def shown_value(value: Any) -> str:
    """An option's value as a warning shows it (``0.2``, ``8,16``, ``False``)."""
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def ignored_option(option: str, value: object, why: str) -> str:
    """The one sentence for an option given without effect (a config field, or an option outside the configs
    such as ``--batch-size`` with the pydensecrf backend): warned about, never recorded."""
    return f"{option} {value} has no effect {why}; it is ignored (and not recorded)"


def to_params(cfg: Any) -> dict[str, Any]:
    """A config as a JSON-able dict, for file metadata and stage records; fields without effect in the config's
    combination are left out (:func:`inert_fields`)."""
    inert = inert_fields(cfg)
    # a config holding a method's own settings (SegmentConfig.knobs) records them by field name beside its own
    values = cfg.flat() if callable(getattr(cfg, "flat", None)) else asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k not in inert}


def override(cfg: Any, **changes: Any) -> Any:
    """Copy of ``cfg`` with the given fields changed; ``None`` values keep the default (SAM's CLI pattern)."""
    names = {f.name for f in fields(cfg)}
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None and k in names})


def from_params(cls: type, params: dict[str, Any], source: object = None) -> Any:
    """A config rebuilt from a recorded dict (a stage record's params): unknown keys ignored, lists as tuples.

    The values are input like any other: each must have its field's type, and the config's own checks run; a bad
    one is a one-line error naming ``source`` (the record) and the field, never a TypeError, and never blamed on
    an option the user did not pass (``params.parity: null`` is not "--parity None").
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    where = f"{source}: " if source is not None else ""
    fix = "the record was edited or is damaged; re-run the stage that wrote it (with --overwrite)"
    for key, value in params.items():
        if key in names and not _accepts(hints[key], value):
            shown = json.dumps(value)
            raise VplError(f"{where}'params.{key}' is {shown if len(shown) <= 40 else shown[:40] + '…'}, not "
                           f"{_type_words(hints[key])}; {fix}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names})
    except VplError as e:
        raise VplError(f"{where}a recorded parameter is refused ({e}); {fix}") from None


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a JSON ``value`` fits the type ``hint`` of a config field (int | None, tuple[float, ...], ...)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_accepts(args[0], v) for v in value) if args else True
    return True


def _type_words(hint: Any) -> str:
    """``int | None`` -> "an integer or null", for the message."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_words(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list"
    return words.get(hint, str(hint))

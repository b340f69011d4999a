"""What :func:`vpltool.segmenter` and a segmenter's call take besides the photos, checked in one line each, and the
lines they give named as a Python caller names things (``batch_size``, not ``--batch-size``).

* the factory's names as the command line spells them (``dense=``, ``pgseg=FILE``, ``model="pgseg:FILE"``), an
  unknown option with the closest name, and ``torch_dtype=`` (transformers' name) pointed to ``precision=``;
* ``device=`` as torch and transformers take it: ``"cpu"``, ``"cuda:1"``, ``0`` (a GPU's index), ``-1`` (the CPU)
  or a ``torch.device``;
* the class names of a call: ``classes`` or ``candidate_labels`` (transformers' zero-shot name), a list, a tuple or
  ``"cat|kitten,dog"``; a ``set`` is refused, since its order (the class indices) changes from run to run;
* the options a call may change without reloading the model (:data:`PER_CALL`).

Torch-free.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ..config import DENSE_CHOICES, SegmentConfig
from ..errors import VplError

RUNTIME = ("device", "precision", "batch_size")
# a dense method's segmentor settings (DenseSettings fields that SegmentConfig names) a call may change: they act
# after the model (the windows, the threshold, PAMR, the working size), so no reload; `threshold` is transformers'
# name of the probability threshold. Trident's SAM refinement is not among them: it needs SAM's decoder loaded
PER_CALL = ("prob_threshold", "logit_scale", "area_threshold", "short_side", "slide_crop", "slide_stride",
            "pamr_steps", "max_side")
ALIASES = {"threshold": "prob_threshold"}
TEXT_PER_CALL = ("bg_thresh",)  # a text-supervised family's: its background threshold (transformers' `threshold`)
TEXT_ALIASES = {"threshold": "bg_thresh"}
# the command line's names of the Python door's keywords, where they differ (--dense is method=, eval's --json is
# json_out=; a text-supervised family's alias of --model NAME:FILE, --pgseg FILE, is checkpoint=: :func:`keyword_line`
# reads those from the registry)
_KEYWORD_OF = {"dense": "method", "json": "json_out"}
_KEYWORDS = {*SegmentConfig.option_names(), *RUNTIME, "dense", "model", "pretrained", "checkpoint",
             "model_config_dir", "bg_thresh", "workers", "overwrite"}  # every method's knobs too, by name
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def keyword_line(message: str, keywords: Collection[str] | None = None) -> str:
    """A library line as a Python caller reads it: each ``--option`` the Python door takes as a keyword named by
    that keyword (``--batch-size`` -> ``batch_size``, ``--dense`` -> ``method``, ``--json`` -> ``json_out``);
    other text unchanged. ``keywords``: the names the caller's function takes (by default the segmenter's)."""
    from ..models.registry import TEXT_FAMILIES

    keys = _KEYWORDS if keywords is None else keywords

    def name(m: re.Match) -> str:
        key = m.group(1).replace("-", "_")
        python = _KEYWORD_OF.get(key, key)
        if key in keys or python in keys:
            return python
        return "checkpoint" if key in TEXT_FAMILIES and "checkpoint" in keys else m.group(0)

    return _FLAG.sub(name, message)


def python_lines(fn: Callable, keywords: Collection[str] | None = None) -> Callable:
    """``fn``'s :class:`VplError` lines with the command line's options named as Python keywords
    (:func:`keyword_line`, with ``keywords`` the names ``fn`` takes: a stage function's, by default the
    segmenter's); a generator function's too, as it runs."""
    def renamed(e: VplError) -> VplError:
        out = type(e)(keyword_line(str(e), keywords))
        out.__cause__, out.__suppress_context__ = e.__cause__, True
        return out

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any):
            try:
                yield from fn(*args, **kwargs)
            except VplError as e:
                raise renamed(e) from None
        return gen

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except VplError as e:
            raise renamed(e) from None
    return wrapper


def device_name(device: Any) -> str:
    """``device=`` as torch and transformers take it -> `segment`'s ``--device`` value: a str as it is, a
    ``torch.device`` by its name, ``0`` / ``1`` ... a GPU's index (``cuda:N``), ``-1`` the CPU (transformers'
    ``pipeline(device=-1)``)."""
    if isinstance(device, str):
        return device
    if type(device).__module__.split(".")[0] == "torch" and type(device).__name__ == "device":
        return str(device)
    if isinstance(device, int) and not isinstance(device, bool):
        if device == -1:
            return "cpu"
        if device >= 0:
            return f"cuda:{device}"
    raise VplError(f"device={device!r}: give 'auto', 'cpu', 'cuda', 'cuda:N', a GPU's index (0, 1, ...; -1 = the "
                   "CPU) or a torch.device")


def torch_dtype_pointer(options: dict) -> None:
    """transformers' ``torch_dtype=`` is ``precision=`` here: one line that says which value."""
    if "torch_dtype" not in options and "dtype" not in options:
        return
    key = "torch_dtype" if "torch_dtype" in options else "dtype"
    value = str(options[key]).replace("torch.", "")
    named = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}.get(value)
    hint = f"precision={named!r}" if named else "precision='fp32', 'bf16', 'fp16' or 'auto'"
    raise VplError(f"{key}={options[key]!r}: vpltool names the compute dtype precision=; pass {hint} (auto: bf16 "
                   "on CUDA and on CPUs with AMX, else fp32)")


def class_entries(classes: Any, candidate_labels: Any = None) -> list[str]:
    """A call's class names -> the ``--classes`` entries: ``"cat|kitten,dog"`` or ``["cat|kitten", "dog"]`` ->
    ``["cat|kitten", "dog"]``, in the order given (class ``i + 1`` is entry ``i``). ``candidate_labels``:
    transformers' name for the same. An empty entry is kept, for `segment`'s check to refuse as it refuses
    ``--classes cat,,dog``."""
    if candidate_labels is not None:
        if classes is not None and class_entries(classes) != class_entries(candidate_labels):
            raise VplError("classes and candidate_labels name different classes; give one (candidate_labels is "
                           "transformers' name for classes)")
        classes = candidate_labels
    if classes is None:
        raise VplError("classes: give the class names, seg(image, ['cat', 'dog']) or seg(image, 'cat,dog') "
                       "(candidate_labels=[...] as transformers names them)")
    if isinstance(classes, (set, frozenset)):
        raise VplError(f"classes: a {type(classes).__name__} has no order, so the class indices (result.labels) "
                       "would change from run to run; give a list, e.g. sorted(names)")
    if isinstance(classes, str):
        entries = classes.split(",")
    elif isinstance(classes, (bytes, dict)) or not isinstance(classes, Sequence) and not hasattr(classes, "__iter__"):
        raise VplError(f"classes: a {type(classes).__name__}; give a list of names or 'cat,dog'")
    else:
        entries = list(classes)
    bad = next((e for e in entries if not isinstance(e, str)), None)
    if bad is not None:
        raise VplError(f"classes: {bad!r} is a {type(bad).__name__}, not a name; give the names as strings")
    entries = [e.strip() for e in entries]
    if not any(entries):
        raise VplError("classes: give at least one class name, e.g. ['cat', 'dog'] or 'cat,dog'")
    return entries


# the fields whose value may be a list of words, joined as the command line's comma-separated value
_WORD_LISTS = ("background",)
_HINTS = {"templates": "a string: one template with '{}' ('a photo of a {}.'), a set's name ('imagenet', "
                       "'clip-es') or a file of one template a line"}


def typed_options(options: dict, config: type) -> dict:
    """``options`` (a stage's or a segmenter's, by their Python names) checked against the types ``config``'s
    fields declare (a dataclass of :mod:`vpltool.config`; a name it has no field of is left to its own check): a
    path given as a ``Path`` for a text field is its string, ``background=['grass', 'sky']`` is ``'grass,sky'``; any
    other type is one line naming the keyword, never a raw AttributeError or TypeError later (``templates=[...]``,
    ``background=5``, ``batch_size='2'``, ``batch_size=True``, ``batch_size=1.5``)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config)
    names = {f.name for f in dataclasses.fields(config)}
    out = dict(options)
    for key, value in options.items():
        if key not in names or value is None and _allows(hints[key], type(None)):
            continue
        if key in _WORD_LISTS and isinstance(value, (list, tuple)) and all(isinstance(w, str) for w in value):
            bad = next((w for w in value if "," in w or not w.strip()), None)
            if bad is not None:
                raise VplError(f"{key}: the word {bad!r} is empty or holds a comma; give one word an entry")
            out[key] = value = ",".join(w.strip() for w in value)
        if isinstance(value, os.PathLike) and _allows(hints[key], str):
            out[key] = value = os.fspath(value)
        if not _of_type(value, hints[key]):
            kind = type(value).__name__
            raise VplError(f"{key}={value!r}: {'an' if kind[0] in 'aeiou' else 'a'} {kind}; give "
                           f"{_HINTS.get(key) or _what(hints[key], key)}")
    return out


def _kinds(hint: Any) -> tuple:
    import typing

    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is None:
        return (hint,)
    if args and (origin is typing.Union or type(hint).__name__ == "UnionType"):
        return tuple(k for a in args for k in _kinds(a))
    return (origin,)


def _allows(hint: Any, kind: type) -> bool:
    return kind in _kinds(hint)


def _of_type(value: Any, hint: Any) -> bool:
    kinds = [k for k in _kinds(hint) if isinstance(k, type)]
    if not kinds:
        return True  # an annotation this check does not read: the config's own check decides
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True  # an int where a float is asked (a threshold of 1)
    return any(isinstance(value, k) for k in kinds if k is not type(None))


def _what(hint: Any, key: str) -> str:
    words = {str: "a string", int: "a whole number", float: "a number", bool: "True or False", tuple: "a tuple",
             type(None): "None (the default)"}
    said = [words.get(k, getattr(k, "__name__", str(k))) for k in _kinds(hint)]
    if key in _WORD_LISTS:
        said.insert(1, "a list of words")
    return " or ".join(dict.fromkeys(said))


def call_options(options: dict, allowed: Sequence[str], aliases: dict[str, str], where: str) -> dict:
    """A call's per-call options by their own names (``threshold`` -> the family's name); one line for an
    unknown one (the closest name), and for an alias given beside its name with another value."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # name -> the key that gave it
    for key, value in options.items():
        name = aliases.get(key, key)
        if name not in allowed:
            raise unknown_option(where, key, [*allowed, *aliases])
        if name in out and out[name] != value:
            alias, own = (key, given[name]) if key in aliases else (given[name], key)
            a, b = (value, out[name]) if key in aliases else (out[name], value)
            raise VplError(f"{where}: {alias}={a!r} and {own}={b!r}; give one ({alias} is {own})")
        out[name], given[name] = value, key
    return out


def method_option(where: str, method: str | None, checkpoint: Any, options: dict) -> tuple[str | None, Any]:
    """``(method, checkpoint)`` with the command line's names popped from ``options``: ``dense=`` (``--dense``) is
    ``method=``, and a text-supervised family's name as a keyword (``pgseg=FILE``, as ``--pgseg FILE``) is
    ``method=NAME, checkpoint=FILE``; two different values for one thing are one line, never one dropped."""
    from ..models.registry import SEGMENTERS

    dense = options.pop("dense", None)
    if dense is not None:
        if method is not None and method != dense:
            raise VplError(f"{where}: method={method!r} and dense={dense!r}; give one (dense= is method=, as "
                           "--dense names it)")
        method = dense
    for name in [n for n in SEGMENTERS if n in options]:
        given = options.pop(name)
        if checkpoint is not None and os.path.abspath(checkpoint) != os.path.abspath(given):
            raise VplError(f"{where}: checkpoint={str(checkpoint)!r} and {name}={str(given)!r}; give one ({name}=FILE "
                           f"is checkpoint=FILE, as --{name} names it)")
        if method is not None and method != name:
            raise VplError(f"{where}: method={method!r} and {name}=FILE; give one ({name}=FILE is method={name!r}, "
                           "checkpoint=FILE)")
        method, checkpoint = name, given
    return method, checkpoint


def dense_options(method: str) -> list[str]:
    """The options a dense ``method`` reads: `segment`'s shared ones and its own knobs (not the other methods'),
    less those without effect for it (:meth:`SegmentConfig.inert`), and the runtime's."""
    if method not in DENSE_CHOICES:
        return [*(n for n in SegmentConfig.option_names() if n not in ("dense", "classes")), *RUNTIME]
    inert = SegmentConfig(dense=method).inert()
    own = [n for n in SegmentConfig.option_names(method) if n not in ("dense", "classes") and n not in inert]
    return [*own, *RUNTIME]


def unknown_option(where: str, name: str, options: Sequence[str]) -> VplError:
    """One line for an option nobody knows: the closest of ``options`` (difflib), then the list."""
    from ..config.checks import did_you_mean

    hint = did_you_mean(name, options)
    return VplError(f"{where}: unknown option {name!r};{hint} its options are {', '.join(options)}")


def model_names(model: Any, pretrained: Any) -> tuple[str, str]:
    """``model=`` and ``pretrained=`` as `segment`'s ``--model`` / ``--pretrained`` take them: strings (a weights
    file as a ``Path`` is its string); ``model=None`` or a ``Path`` is one line with the forms a model takes."""
    if not isinstance(model, str):
        folder = f"'local-dir:{os.fspath(model)}'" if isinstance(model, os.PathLike) else "'local-dir:/path'"
        raise VplError(f"model={model!r}: give the model by name as a string: an open_clip name ('ViT-B-16'; "
                       f"vpltool.list_models()), {folder} for a model folder, or 'pgseg:FILE' for a checkpoint; "
                       "leave model out for the default")
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if not isinstance(pretrained, str):
        raise VplError(f"pretrained={pretrained!r}: give a tag ('openai'; vpltool.list_pretrained(model)), a weights "
                       "file, or 'none' for random weights")
    return model, pretrained


def segmenting(method: str | None, model: str, checkpoint: str | os.PathLike | None) -> tuple[str, str, Any]:
    """``(method, model, checkpoint)`` as :func:`vpltool.segmenter` takes them -> ``(family, method, checkpoint)``:
    ``model="NAME:FILE"`` (:func:`vpltool.models.registry.model_family`) is ``method=NAME, checkpoint=FILE``;
    a dense method beside it, or another checkpoint, is one line. ``method`` None: `segment`'s default method."""
    from ..models.registry import model_family, segmenter_family
    from .methods import check_method

    if method is not None:
        check_method(method)  # one line with the closest name, before anything loads
    family, spec = model_family(model)
    if family == "clip":
        method = SegmentConfig.dense if method is None else method
        return segmenter_family(method), method, checkpoint
    if method is not None and segmenter_family(method) != family:
        raise VplError(f"model={model!r} is a {family} checkpoint, which segments as method {family!r}; drop method "
                       f"{method!r} (a dense CLIP method)")
    if checkpoint is not None and os.path.abspath(checkpoint) != os.path.abspath(spec):
        raise VplError(f"model={model!r} and checkpoint={str(checkpoint)!r}: two checkpoints; give one "
                       f"(model='{family}:FILE' is checkpoint=FILE)")
    return family, method or model.partition(":")[0].lower(), spec


def text_options(family: str, options: dict, where: str) -> dict:
    """A text-supervised family's zero-shot options (``bg_thresh``, ``short_side``, ``slide_crop``,
    ``slide_stride``, ``background``) over its defaults (its configuration's ``ZERO_SHOT``); an unknown option is
    one line with the closest name and the options."""
    from ..models.registry import text_config

    defaults = text_config(family).ZERO_SHOT.options()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise unknown_option(where, unknown[0], [*defaults, *RUNTIME])
    return {**defaults, **options}


__all__ = ["ALIASES", "PER_CALL", "RUNTIME", "TEXT_ALIASES", "TEXT_PER_CALL", "typed_options", "model_names",
           "call_options",
           "class_entries",
           "dense_options", "device_name", "keyword_line", "method_option", "python_lines", "segmenting",
           "text_options", "torch_dtype_pointer", "unknown_option"]

"""What a plugin's ``--dense`` row is checked for beyond its fields (:func:`check_hooks_source`: its module read, not
imported, for a misspelt hook), and a plugin's knobs made with one-line errors (:func:`method_knobs`). Torch-free:
`vpltool --help` reads the rows. The table itself, and its rows' own checks, are in :mod:`vpltool.config.dense`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import VplError
from .checks import shown_value
from .knobs import Knob, MethodKnobs

# every hook of vpltool.models.dense.DenseHooks, in the order it runs; a subclass's public names must be among them
# (torch-free here, so that a plugin's method module is read for a misspelt hook when its row registers)
HOOK_NAMES = ("check", "models", "check_items", "record", "older_record", "with_knobs", "backbone", "query_text",
              "extra_inputs", "image_side", "dense_logits", "input_embedding", "grid_logits", "features", "attention",
              "feature_grid", "probabilities", "postprocess")

# how long one plugin's register function may take while the plugins are listed in a child process
# (vpltool.plugins.entry_points.survey): a light module that imports no torch registers in well under a second even on
# a loaded machine; one that hangs is killed at this and listed as one line. TIMEOUT_VARIABLE overrides it (tests).
PLUGIN_TIMEOUT_S = 30.0
TIMEOUT_VARIABLE = "VPLTOOL_PLUGIN_TIMEOUT"


def plugin_timeout() -> float:
    """The seconds one plugin's register function may take while listed: :data:`PLUGIN_TIMEOUT_S`, or a positive
    number of seconds in the environment variable :data:`TIMEOUT_VARIABLE`."""
    import os

    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return PLUGIN_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise VplError(f"{TIMEOUT_VARIABLE}={text!r}: give a positive number of seconds, or unset it (default "
                       f"{PLUGIN_TIMEOUT_S:g})")
    return value


def check_hooks_source(module: str) -> None:
    """A plugin method's module read, not imported (no torch at registration: `vpltool --help` reads the rows): one
    line for a module that is not installed, or a class of it that names a ``method=`` and defines a public name
    that is no hook (a misspelt ``dense_logit``, which would otherwise be found only when the method runs). A module
    that is no ``.py`` file (compiled, zipped) is checked where its class is written, when it is imported."""
    import ast
    from importlib.util import find_spec

    from ..plugins.entry_points import PluginFailure, plugin_code

    try:
        with plugin_code():  # a parent package is imported to find a submodule: the plugin's own code
            found = find_spec(module)
    except PluginFailure as e:
        raise VplError(f"its module {module} cannot be found ({e.cause})") from None
    if found is None:
        raise VplError(f"its module {module} is not installed (its spec row's module=, the module of its DenseHooks "
                       "class)")
    origin = Path(found.origin or "")
    if origin.suffix != ".py" or not origin.is_file():
        return
    try:
        tree = ast.parse(origin.read_bytes(), str(origin))
    except (OSError, SyntaxError, ValueError) as e:
        raise VplError(f"its module {module} cannot be read ({type(e).__name__}: {e})") from None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and any(k.arg == "method" for k in node.keywords)):
            continue
        names = [n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        names += [t.id for n in node.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                  for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)]
        unknown = sorted(n for n in names if not n.startswith("_") and n not in HOOK_NAMES)
        if unknown:
            from .checks import did_you_mean

            raise VplError(f"its module {module}: {node.name}.{unknown[0]} is no dense hook;"
                           f"{did_you_mean(unknown[0], HOOK_NAMES) or ''} the hooks are {', '.join(HOOK_NAMES)} (a "
                           "helper goes in the module, or starts with '_')")


def method_knobs(dense: str, spec: Any, given: dict[str, Any], knobs: Mapping[str, Knob]
                 ) -> MethodKnobs:
    """``--dense dense``'s knobs class (its ``spec`` row's) made with ``given`` (by field; ``knobs``: every
    method's knobs by field, for the message). A plugin's class that refuses a value with a
    ``ValueError`` or ``TypeError`` (as a dataclass's ``__post_init__`` commonly does) is one line, as its
    :class:`~vpltool.errors.VplError` is (``vpltool.plugins.VplError``, the type a plugin raises)."""
    if spec.plugin is None:  # vpltool's own classes refuse in one line themselves; anything else is a bug
        return spec.knobs_class(**given)
    try:
        return spec.knobs_class(**given)
    except VplError:
        raise
    except (ValueError, TypeError) as e:
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        options = [f"{knobs[k].option.split('/')[0]} {shown_value(v)}" for k, v in given.items()
                   if v is not None and k in knobs]
        named = any(o.split()[0] in text for o in options)  # its message names the option already
        given_ = "" if named or not options else f" (given {', '.join(options)})"
        raise VplError(f"--dense {dense} (plugin {spec.plugin}): {text}{given_}") from None


__all__ = ["HOOK_NAMES", "check_hooks_source", "method_knobs"]

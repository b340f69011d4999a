"""What a package outside vpltool registers, without forking it: a ``--dense`` method, a model family or a
text-supervised family (docs/architecture.md, "A method from outside the tree", shows a whole example package).

A plugin's distribution names one function in its ``pyproject.toml``::

    [project.entry-points."vpltool.plugins"]
    example = "vpltool_example:register"

vpltool calls it once, with no argument, in a child process when the plugins are listed (`vpltool --help`,
``benchmark --presets``, :func:`vpltool.list_methods`: what each registered is read from there, so that one that ends
the process, hangs or crashes costs only itself), and in vpltool's own process only when a command or program runs
one of its methods or families (or asks for it: :func:`load`). It must be cheap: it imports no torch, and names the
module that does the work, which is imported only when the method or family is used. It calls the functions here:

* :func:`register_dense_method` ``(name, spec)``: ``--dense name`` in `segment`, `cam --dense`, `predict --dense`,
  `benchmark` (with its spec row's ``presets``), :func:`vpltool.segmenter` and :func:`vpltool.list_methods`; its
  knobs (the spec row's ``knobs_class``) become options of `segment` and `benchmark`;
* :func:`register_backbone_family` ``(name, module)``: ``vpltool.models.load_model(name, spec)`` (the module calls
  :func:`vpltool.models.register_family` when imported); a family whose load gives a CLIP
  (:class:`vpltool.models.ClipBackbone`) is ``--model name:SPEC`` in every stage and
  ``vpltool.segmenter(model="name:SPEC")``;
* :func:`register_text_family` ``(name, row)``: ``--model NAME:FILE`` and ``train-text --family name`` (the row's
  module calls :func:`vpltool.models.text.family.register_text_family`);
* :func:`register_model` / :func:`register_tokenizer`: a CLIP alias and a tokenizer (the demo world's toy CLIP).

Each method and family declares its :class:`Licence` (the code it follows, the weights it loads) where it registers:
the spec row's and the text row's ``licence=``, and :func:`vpltool.models.register_family`'s ``licence=``. One that
declares none is listed as ``undeclared`` by ``vpltool list-methods --licences`` and
:func:`vpltool.list_methods` ``(licences=True)``.

A plugin that fails (its function raises or calls ``sys.exit``, a row is malformed, a name is vpltool's own or
another plugin's, its module is not installed, does not import or misspells a hook) is one line naming its
distribution and the fix, and is left out; the commands that do not use it go on. Its code runs with ``sys.argv`` as
the program's name alone and its prints kept out of vpltool's output (:func:`vpltool.plugins.entry_points.plugin_code`).

A plugin tells its user of a mistake by raising :class:`VplError` (a bad setting in its knobs class's
``__post_init__``, a missing file in its ``check`` hook): the command line prints its message as one ``error:``
line and exits 2, and the Python door raises it as vpltool's own. A knobs class's ``ValueError`` or ``TypeError`` is
taken as such too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import VplError
from . import entry_points, survey

# a name no table holds is looked for among the plugins, each listed in a child process first (survey): the tables'
# module, the ground under the registries, imports nothing above it, so it is told here
entry_points.install(want=survey.want, load_all=survey.load_all, survey=survey.survey)

if TYPE_CHECKING:
    from ..config.dense import DenseMethodSpec
    from ..models.registry import TextFamilyRow

# the names a plugin writes its rows with, each read from its module on first use: config.dense and models.registry
# read their plugins' rows through .entry_points, so this package imports neither when they import it
_LAZY = {
    **dict.fromkeys(("DenseMethodSpec", "DenseSettings", "MethodKnobs", "knob"), "vpltool.config.dense"),
    "MethodPresets": "vpltool.config.method_presets",
    **dict.fromkeys(("register_model", "register_tokenizer"), "vpltool.models.backbones.aliases"),
    "TextFamilyRow": "vpltool.models.registry",
    "Licence": "vpltool.config.licences",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vpltool.plugins' has no attribute {name!r}")


def register_dense_method(name: str, spec: DenseMethodSpec) -> None:
    """``--dense name``: ``spec`` is its row (:class:`~vpltool.config.dense.DenseMethodSpec`: its segmentor
    ``settings``, ``module`` (the full dotted name of the module holding its ``DenseHooks`` subclass), and as it
    needs ``proxy_model``, ``sam``, ``knobs_class``, ``class_files`` (a set of vpltool's) and ``presets``)."""
    entry_points.add("dense", name, spec)


def register_backbone_family(name: str, module: str) -> None:
    """Model family ``name``, registered by ``module`` (a full dotted name) when first named."""
    entry_points.add("family", name, module)


def register_text_family(name: str, row: TextFamilyRow) -> None:
    """Text-supervised family ``name`` and its registry row (:class:`~vpltool.models.registry.TextFamilyRow`)."""
    entry_points.add("text", name, row)


def load(*names: str) -> list[str]:
    """Load into this process the plugins that register ``names`` (``"example-smooth"``: a ``--dense`` method, a
    family, a tokenizer kind), or, with no name, every plugin that lists cleanly; returns the names that no plugin
    registers. vpltool does this itself where a name is looked up (``segmenter("example-smooth")``, ``--dense
    example-smooth`` on the command line); a program calls it before ``from vpltool.cli import app`` when it runs a
    plugin method's own options through typer's runner (the options are made when the module is imported)."""
    from ..config.dense import DENSE_SPECS
    from ..models.registry import BACKBONES, TEXT_FAMILIES

    if not names:
        entry_points.load_all()
        return []
    tables = (DENSE_SPECS, BACKBONES, TEXT_FAMILIES)
    return [name for name in names if not any(name in table for table in tables) and not entry_points.want(name)]


def problems() -> list[str]:
    """The one line of every plugin that failed so far; every plugin is listed first, each in a child process
    (:func:`vpltool.plugins.survey.survey`: its rows checked there), and none is loaded here."""
    from ..config.dense import DENSE_SPECS
    from ..models.registry import BACKBONES, TEXT_FAMILIES

    entry_points.listed()
    for table in (DENSE_SPECS, BACKBONES, TEXT_FAMILIES):
        len(table)  # read: each table checks the rows of the plugins loaded here so far
    return entry_points.problems()


def installed() -> dict[str, Any]:
    """``{kind: {name: distribution}}`` of the plugins' rows (``dense``, ``family``, ``text``), as each plugin lists
    in a child process (none is loaded here), with those loaded here."""
    from ..config.dense import DENSE_SPECS
    from ..models.registry import BACKBONES, TEXT_FAMILIES

    entry_points.listed()
    tables = (DENSE_SPECS, BACKBONES, TEXT_FAMILIES)
    out = {table.kind: {n: table.plugin(n) for n in table if table.plugin(n)} for table in tables}
    for item in survey.survey():
        if item.failure is not None:
            continue
        methods, families = item.shown.get("methods", {}), set(item.shown.get("families", ()))
        for name in (n for n, fam in methods.items() if fam == "clip"):
            out["dense"].setdefault(name, item.dist)
        for name in families:
            kind = "text" if f"text:{name}" in item.names else "family"
            out[kind].setdefault(name, item.dist)
    return out


__all__ = ["register_dense_method", "register_backbone_family", "register_text_family", "register_model",
           "register_tokenizer", "load", "problems", "installed", "DenseMethodSpec", "DenseSettings", "MethodKnobs",
           "knob", "MethodPresets", "TextFamilyRow", "Licence", "VplError"]

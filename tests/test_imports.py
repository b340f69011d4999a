"""The import graph of vpltool's own modules: no circle, and no arrow running up the three layers.

The layers are folders: the CLI (``vpltool/cli/``, and the front door ``vpltool/__init__.py``, ``__main__.py``) on
top, the stages (``vpltool/stages/``: one module or package per command, peers) below it, the core (every other
package and module: models, data, io, config, runtime, ops, decoder, plugins, errors, device) at the bottom. The demo
world (``vpltool/demo/``) is a plugin: it registers itself through the entry point, and nothing below the CLI names
it. The stage list is read from the folder, so a new stage is checked the day it lands.

Read from the source with ``ast`` (nothing is imported), every ``import`` and ``from ... import`` counted, the lazy
ones inside functions too: a lazy import only hides a circle until the day it runs first. An edge goes to the
module named (``from .io import stage`` -> ``vpltool.io.stage``; ``from .io import read_json`` -> ``vpltool.io``),
not to the packages above it, which Python runs on the way down: a package's ``__init__`` importing its own
submodules is how packages work, not a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vpltool"
STAGE_DIR = PACKAGE / "stages"
# the stage modules and packages, read from the folder: peers that never import each other. A module whose name
# starts with "_" is no command: what several stages share in the stage layer (stages/_masks.py, the one path from a
# method's labels to the masks on disk); every stage may import it, and it imports no stage
STAGES = tuple(sorted(p.stem for p in STAGE_DIR.iterdir() if not p.name.startswith("_")
                      and (p.suffix == ".py" or (p / "__init__.py").is_file())))
# a stage that runs others, and the stages it runs (and nothing else): `benchmark` is `segment` (a CLIP's, or a
# text-supervised family's checkpoint: segment_text) then `eval` per dataset, the same functions the two commands call
COMPOSITES = {"benchmark": {"segment", "segment_text", "eval"},
              # `export` traces the very functions `segment` runs (its queries, its method, a text-supervised
              # family's zero-shot settings), so that the file's labels are segment's
              "export": {"segment", "segment_text"}}
# the CLI and the front door: they may import anything. The package root is imported below for its __version__
# alone (the circle check keeps the front door's imports lazy)
TOP = ("vpltool", "vpltool.__main__", "vpltool.cli", "vpltool.api")  # the front doors: the CLI and the Python API
PLUGINS = ("vpltool.demo",)  # imported only by the CLI (its commands) and the entry point


def modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package's __init__)}`` of every module under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _known(name: str, mods: dict) -> str | None:
    """``name`` or the closest module above it (``vpltool.io.read_json`` -> ``vpltool.io``); None outside."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imported(module: str, mods: dict) -> set[str]:
    """The modules of ``module``'s own package tree that it imports, anywhere in its file."""
    path, is_package = mods[module]
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        top = module.split(".")[0]
        out.update(t for t in (_known(n, mods) for n in names if n.split(".")[0] == top) if t and t != module)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    return {m: imported(m, mods) for m in mods}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _module(stage: str) -> str:
    return f"vpltool.stages.{stage}"


def _stage(module: str) -> str | None:
    """The stage ``module`` belongs to (``vpltool.stages.cam.caa`` -> ``cam``); None outside the stages."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stages" and parts[2] in STAGES else None


def _shared(module: str) -> bool:
    """A shared module of the stage layer (``vpltool.stages._masks``), or the stages package itself."""
    parts = module.split(".")
    return module == "vpltool.stages" or (len(parts) > 2 and parts[1] == "stages" and parts[2].startswith("_"))


def _under(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots if r != "vpltool") or module in roots


def layer(module: str) -> int:
    """2: the CLI and the front door; 1: a stage (or the stages package); 0: the core. Plugins are their own."""
    if _under(module, TOP):
        return 2
    return 1 if _shared(module) or _stage(module) else 0


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every arrow that runs up: a core module importing a stage, the CLI or a plugin; a stage importing the CLI,
    a plugin, or another stage (a composite only the stages it runs)."""
    bad = []
    for m, targets in graph.items():
        if _under(m, PLUGINS):
            bad += [f"{m} -> {t}" for t in sorted(targets) if layer(t) > 0]  # a plugin sits on the core alone
            continue
        for t in sorted(targets - {"vpltool"}):
            if _under(t, PLUGINS) and layer(m) < 2:
                bad.append(f"{m} -> {t}")
            elif layer(t) > layer(m):
                bad.append(f"{m} -> {t}")
            elif layer(m) == layer(t) == 1 and _stage(m) != _stage(t) and not _shared(t):
                if _stage(t) not in COMPOSITES.get(_stage(m) or "", ()):
                    bad.append(f"{m} -> {t}")
    return bad


def test_the_graph_is_read():
    graph = import_graph()
    assert "vpltool.io.stage" in graph["vpltool.stages.crf"] or "vpltool.io" in graph["vpltool.stages.crf"]
    assert "vpltool.device" in graph["vpltool.io.stage"]  # a lazy import, inside a function, is an edge too
    assert all(_stage(_module(s)) == s for s in STAGES)
    assert all(_module(s) in graph for s in STAGES)
    assert {"extract", "cam", "segment", "train_text", "segment_text", "benchmark"} <= set(STAGES)


def test_no_import_circle_among_vpltool_modules():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_stage_modules_never_import_each_other():
    crossings = [f"{m} -> {t}" for m, targets in import_graph().items() for t in sorted(targets)
                 if _stage(m) and _stage(t) and _stage(m) != _stage(t)
                 and _stage(t) not in COMPOSITES.get(_stage(m), ())]
    assert not crossings, "a stage imports another stage (move what they share into the core): " + ", ".join(crossings)


def test_no_import_runs_up_the_layers():
    """Core never imports a stage, the CLI or the demo plugin; a stage never imports the CLI or the demo."""
    found = upward(import_graph())
    assert not found, "imports running up the layers (register through the plugin point, or move the shared piece " \
                      "down into the core): " + ", ".join(found)


@pytest.mark.parametrize("edge, up", [
    (("vpltool.models.text.pgseg", "vpltool.demo.tokenizer"), True),  # a model family naming the demo plugin
    (("vpltool.io.stage", "vpltool.stages.crf"), True),  # the core reaching a stage
    (("vpltool.stages.crf", "vpltool.cli.output"), True),  # a stage reaching the CLI
    (("vpltool.stages.crf", "vpltool.stages.cam.caa"), True),  # a stage reaching a peer
    (("vpltool.stages.benchmark", "vpltool.stages.segment"), False),  # a composite and the stages it runs
    (("vpltool.stages.benchmark", "vpltool.stages.cam"), True),  # ... and no other
    (("vpltool.cli.segment", "vpltool.stages.segment"), False),
    (("vpltool.demo.toyclip", "vpltool.models"), False),  # a plugin on the core
    (("vpltool.cli.demo", "vpltool.demo"), False),
    (("vpltool.stages.cam.stage", "vpltool.stages.cam.caa"), False),  # inside one stage
    (("vpltool.stages.segment", "vpltool.stages._masks"), False),  # a stage and what the stages share
    (("vpltool.stages._masks", "vpltool.stages.segment"), True),  # ... which imports no stage
    (("vpltool.io.stage", "vpltool.stages._masks"), True),  # nor does the core import it
    (("vpltool.io.stage", "vpltool"), False),  # the version
])
def test_the_check_finds_an_upward_arrow(edge, up):
    assert bool(upward({edge[0]: {edge[1]}})) == up


@pytest.mark.parametrize("files, circle", [
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, ["pkg.a", "pkg.b"]),
    ({"__init__.py": "from .a import x\n", "a.py": "from . import b\n", "b.py": "from pkg import y\n"},
     ["pkg", "pkg.a", "pkg.b"]),
    ({"__init__.py": "from .a import x\n", "a.py": "from .b import y\n", "b.py": "import os\n"}, None),
])
def test_the_check_finds_a_circle(tmp_path, files, circle):
    """The check itself: a lazy circle and one through a package's ``__init__`` are found; a plain chain is not."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    assert circles(import_graph(root)) == ([circle] if circle else [])



def test_no_module_is_over_450_lines():
    """docs/architecture.md's rule: a module a reader takes in at once (a bigger one is split by what its parts do)."""
    long = {str(p.relative_to(PACKAGE)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long

"""The import graph of vpltool's own modules: no circle, and no stage module importing another.

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
# the stage modules: one per command (or per group of the demo world's commands), peers that never import each other
STAGES = ("extract", "text_prototypes", "cam", "learn_prototypes", "crf", "segment", "train_decoder", "predict",
          "eval", "diagnose", "report", "demo")


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
    return f"vpltool.{stage}" if stage == "demo" else f"vpltool.stages.{stage}"


def _stage(module: str) -> str | None:
    parts = module.split(".")
    name = parts[2] if len(parts) > 2 and parts[1] == "stages" else parts[1] if len(parts) > 1 else None
    return name if name in STAGES else None


def test_the_graph_is_read():
    graph = import_graph()
    assert "vpltool.io.stage" in graph["vpltool.stages.crf"] or "vpltool.io" in graph["vpltool.stages.crf"]
    assert "vpltool.device" in graph["vpltool.io.stage"]  # a lazy import, inside a function, is an edge too
    assert all(_stage(_module(s)) == s for s in STAGES)
    assert all(_module(s) in graph for s in STAGES)


def test_no_import_circle_among_vpltool_modules():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_stage_modules_never_import_each_other():
    crossings = [f"{m} -> {t}" for m, targets in import_graph().items() for t in sorted(targets)
                 if _stage(m) and _stage(t) and _stage(m) != _stage(t)]
    assert not crossings, "a stage imports another stage (move what they share into the core): " + ", ".join(crossings)


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


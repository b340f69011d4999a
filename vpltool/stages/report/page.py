"""The page: ``index.html`` (a Jinja2 template), the shipped script and style, and the data as ``.js`` files.

The report opens from disk (``file://``) with no server and no network: browsers refuse ``fetch()`` of local
files, so every datum is a script that calls into ``window.VPL`` (``data/meta.js`` first, then the rows in chunks
of :data:`ROWS_PER_FILE`, each a ``<script>`` of the page); a detail view loads its image's ``d/<s>/<r>.js`` by
adding a ``<script>`` when it opens. The table pages its rows and its thumbnails load lazily, so the page opens at
once with VOC's 10,582 rows.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ... import __version__, io

ROWS_PER_FILE = 2000
ASSETS = ("report.js", "report.css")  # shipped with vpltool (vpltool/assets/report), MIT like the rest of it


def _assets():
    return resources.files("vpltool") / "assets" / "report"


def _js(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def write_data(out: Path, meta: dict[str, Any], rows: list[list[list[Any]]]) -> list[str]:
    """``data/meta.js`` and the row chunks of each split; returns the scripts in the order the page loads them."""
    scripts = ["data/meta.js"]
    io.write_text(out / "data" / "meta.js", f"window.VPL = {{meta: {_js(meta)}, rows: {_js([[] for _ in rows])}}};\n"
                  "VPL.addRows = function (s, rows) { Array.prototype.push.apply(VPL.rows[s], rows); };\n")
    for s, split_rows in enumerate(rows):
        for k in range(0, len(split_rows), ROWS_PER_FILE):
            name = f"data/rows-{s}-{k // ROWS_PER_FILE}.js"
            io.write_text(out / name, f"VPL.addRows({s},{_js(split_rows[k:k + ROWS_PER_FILE])});\n")
            scripts.append(name)
    return scripts


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; an en dash when there is none."""
    return "–" if value is None else f"{100 * value:.1f}"


def write_page(out: Path, title: str, table: dict[str, Any], meta: dict[str, Any], scripts: list[str]) -> Path:
    """``index.html`` from ``assets/report/index.html.j2`` (autoescaped), and the shipped script and style."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    with resources.as_file(_assets()) as folder:
        env = Environment(loader=FileSystemLoader(str(folder)), autoescape=select_autoescape(["html", "j2"]),
                          trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
        env.filters["pct"] = pct
        html = env.get_template("index.html.j2").render(title=title, table=table, meta=meta, scripts=scripts,
                                                         version=__version__)
        for name in ASSETS:
            io.write_text(out / name, (Path(folder) / name).read_text(encoding="utf-8"))
    return io.write_text(out / "index.html", html)


__all__ = ["ROWS_PER_FILE", "pct", "write_data", "write_page"]

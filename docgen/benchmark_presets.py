"""Write the presets table of docs/benchmarks.md (between its ``presets`` markers) from vpltool.config.benchmarks.

    python docgen/benchmark_presets.py [--page docs/benchmarks.md]

tests/test_ovss_benchmarks.py fails when the page's table differs from the presets. Torch-free, instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vpltool.config.benchmarks import presets_markdown  # noqa: E402

BEGIN, END = "<!-- presets: begin (docgen/benchmark_presets.py) -->", "<!-- presets: end -->"


def render(page: str) -> str:
    """``page`` with the text between the markers replaced by the table."""
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{presets_markdown()}{END}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    args.page.write_text(render(args.page.read_text()))


if __name__ == "__main__":
    main()

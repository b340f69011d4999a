"""Write docs/cli.md: every command's --help as plain text (vpltool.cli.reference).

    python docgen/cli_docs.py [--out docs/cli.md]

tests/test_docs.py fails when the page is out of date.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vpltool.cli.reference import render

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "cli.md")
    args = ap.parse_args()
    args.out.write_text(render())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

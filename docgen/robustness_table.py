"""Write docs/robustness.md: every bad input of tests/robustness_cases.py run through the real CLI (never typed).

    python docgen/robustness_table.py [--out docs/robustness.md]

The same cases run in tests/test_robustness.py, which fails when the page is out of date; with
``VPLTOOL_WRITE_DOCS=1`` that test rewrites the page from the rows it has just run (a whole-suite run then also
regenerates it). CPU, offline, ~15 minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import robustness_cases as rc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "robustness.md")
    args = ap.parse_args()
    rc.configure_environment()
    with tempfile.TemporaryDirectory(prefix="vpltool-robustness-") as tmp:
        rows = rc.run_all(rc.Workspace(Path(tmp) / "ws"))
    args.out.write_text(rc.render(rows))
    bad = [case.name for case, _, outcome in rows
           if outcome.exit_code != case.exit_code or len(outcome.error_lines) != (case.exit_code == 2)
           or case.unexpected(outcome)]
    print(f"wrote {args.out}: {len(rows)} cases" + (f"; NOT as the case expects: {bad}" if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

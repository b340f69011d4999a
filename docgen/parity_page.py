"""Write docs/parity.md: every parity runner (peers' own code run from a clone against vpltool), its command, the
clones and commits, and its figures, all read from the JSON files in parity/results/.

    python docgen/parity_page.py [--results parity/results] [--out docs/parity.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INTRO = """# Parity with the peers' own code

Each runner in `parity/` runs a peer's public code from a clone kept outside this repository, in its own process,
on seeded random weights and the 12 parity photos (scikit-image's bundled photos at VOC sizes,
`bench/bench_cam.py`'s `PHOTOS`), in fp32 on the CPU, and compares the tensors with what vpltool's public
functions give on the same inputs. Only imports the arithmetic never reaches are stubbed; each runner's module
docstring lists them. `make parity DENSE_REFS=... WECLIP_REF=...` re-runs them. Every figure below is read from
`parity/results/*.json` by `docgen/parity_page.py`; a piece that was not compared says so and is never counted as
met.
"""


def num(v) -> str:
    if v is None:
        return "not compared"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(num(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]


def dense_section(d: dict) -> list[str]:
    clones = d["reference"].get("clones", {}) if isinstance(d["reference"], dict) else {}
    out = ["## Training-free dense CLIP methods (`--dense`)", "",
           "`python parity/dense_parity.py --ref DIR` (`parity/dense_ref_runner.py` runs each clone). Clones: " +
           ", ".join(f"{k} `{v.get('commit', '?')[:7]}`" for k, v in clones.items()) + ".", "",
           f"Bar: {d['bar']}.", ""]
    rows = [[m, v["max_abs_diff"], v["labels_equal_min"], "met" if v["bar_met"] else "NOT met"]
            for m, v in d["methods"].items()]
    return out + table(["method", "max abs diff of the logits", "labels equal (min over photos)", "bar"], rows) + [""]


def weclip_section(d: dict) -> list[str]:
    ref = d["reference"]
    out = ["## WeCLIP and WeCLIP+ (`train-decoder --recipe weclip` / `weclip+`)", "",
           f"`python parity/weclip_parity.py --ref DIR` (`parity/weclip_ref_runner.py` runs the clone's "
           f"`WeCLIP/` code). Clone: {ref['repository']} `{(ref.get('commit') or '?')[:7]}`; vpltool "
           f"`{(d.get('vpltool_commit') or '?')[:7]}`; {d['crops']} training crops, {d['steps']} optimiser steps, "
           f"the test script on {d.get('test_photos', d['photos'])} photos; {d['machine'].get('cpu', '')} CPU, "
           f"{d['threads']} thread(s).", ""]
    for recipe, body in d["recipes"].items():
        out += [f"### `{recipe}`", ""]
        rows = [[name, f["kind"] + f" {f['bar']:g}", f["value"],
                 ("met" if f["met"] else "NOT met") if f["compared"] else "not compared"]
                for name, f in body["figures"].items()]
        out += table(["figure", "bar", "value", ""], rows) + [""]
        notes = [f"- `{name}`: {f['note']}" for name, f in body["figures"].items() if f.get("note")]
        errors = [f"- {part}: {msg}" for part, msg in body.get("errors", {}).items()]
        out += (["Notes:", ""] + notes + [""] if notes else []) + \
            (["Not compared:", ""] + errors + [""] if errors else [])
    out += [f"- {line}" for line in d.get("findings", [])] + ([""] if d.get("findings") else [])
    return out


def render(results: Path) -> str:
    lines = [INTRO]
    for name, section in (("dense_parity.json", dense_section), ("weclip_parity.json", weclip_section)):
        path = results / name
        if path.is_file():
            lines += section(json.loads(path.read_text()))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "parity" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "parity.md")
    args = ap.parse_args(argv)
    args.out.write_text(render(args.results))


if __name__ == "__main__":
    main()

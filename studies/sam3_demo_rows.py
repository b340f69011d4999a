"""`make sam3`'s summary: val mIoU of `segment --dense sam3` and `--dense activesam` with the toy SAM 3 beside
all-background and chance, one JSON object.

Reads RUN/metrics/dense_sam3/<method>.json (`vpltool eval --json` of each method's val masks). The references, on
the same val pixels: all-background and uniform chance from the confusion matrix (studies/weclip_demo.py's
``references``), and the demo report's chance row (random smooth CAMs given the true labels, `demo-report`'s
:func:`vpltool.demo.report.chance_baselines`, every val image).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from weclip_demo import read, references

from vpltool.data import open_dataset
from vpltool.demo.report import chance_baselines

METHODS = ("sam3", "activesam")


def dense_rows(run: Path, folder: str, methods: tuple[str, ...]) -> dict:
    """Each method's val mIoU from RUN/metrics/FOLDER/METHOD.json (None where not run) and, from any one of them,
    the references on the same val pixels (module docstring); ``studies/radseg_demo_rows.py`` reads its row so."""
    rows = {m: read(run / "metrics" / folder / f"{m}.json") for m in methods}
    out = {m: ({"miou": r["miou"], "n_images": r.get("n_images")} if r else None) for m, r in rows.items()}
    some = next((r for r in rows.values() if r), None)
    if some is not None:
        out["references"] = references(some["confusion"])
        val = open_dataset(run / "world", "val")
        out["references"]["chance_random_cams"] = chance_baselines(val, limit=len(val.items))["random CAMs"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    print(json.dumps(dense_rows(args.run, "dense_sam3", METHODS), indent=1))


if __name__ == "__main__":
    main()

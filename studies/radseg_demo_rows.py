"""`make radseg`'s summary: val mIoU of `segment --dense radseg` with the toy RADIO (a toy C-RADIOv3 and its toy
SigLIP text tower) beside all-background and chance, one JSON object.

Reads RUN/metrics/dense_radseg/radseg.json (`vpltool eval --json` of the val masks). The references, on the same
val pixels: all-background and uniform chance from the confusion matrix (studies/weclip_demo.py's ``references``),
and the demo report's chance row (random smooth CAMs given the true labels, `demo-report`'s
:func:`vpltool.demo.report.chance_baselines`, every val image).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from weclip_demo import read, references

from vpltool.data import open_dataset
from vpltool.demo.report import chance_baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    row = read(args.run / "metrics" / "dense_radseg" / "radseg.json")
    out = {"radseg": {"miou": row["miou"], "n_images": row.get("n_images")} if row else None}
    if row is not None:
        out["references"] = references(row["confusion"])
        val = open_dataset(args.run / "world", "val")
        out["references"]["chance_random_cams"] = chance_baselines(val, limit=len(val.items))["random CAMs"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

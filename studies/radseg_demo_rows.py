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

from sam3_demo_rows import dense_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    print(json.dumps(dense_rows(args.run, "dense_radseg", ("radseg",)), indent=1))


if __name__ == "__main__":
    main()

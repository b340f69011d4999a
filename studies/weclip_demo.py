"""`make weclip`'s summary: val mIoU of WeCLIP's and WeCLIP+'s recipes over decoder seeds (mean ± spread) beside
VPL's decoder.

Reads RUN/metrics/weclip_seed<S>.json and weclipplus_seed<S>.json (`vpltool eval --json` of each seed's val
masks) and, when there, RUN/metrics/pred_val.json (VPL's decoder, `make predict`); prints one JSON object.
Spread = max - min.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def miou(path: Path) -> float | None:
    return json.loads(path.read_text())["miou"] if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    args = parser.parse_args()
    metrics = args.run / "metrics"
    out = {}
    for name, stem in (("weclip", "weclip_seed"), ("weclip+", "weclipplus_seed")):
        per_seed = {s: miou(metrics / f"{stem}{s}.json") for s in args.seeds}
        values = [v for v in per_seed.values() if v is not None]
        out[name] = {"val_miou": per_seed, "mean": statistics.fmean(values) if values else None,
                     "spread": max(values) - min(values) if values else None}
    out["vpl_decoder_val_miou"] = miou(metrics / "pred_val.json")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

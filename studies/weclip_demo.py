"""`make weclip`'s summary: val mIoU of WeCLIP's and WeCLIP+'s recipes over decoder seeds (mean ± spread) beside
VPL's decoder, all-background and chance.

Reads RUN/metrics/weclip_seed<S>.json and weclipplus_seed<S>.json (`vpltool eval --json` of each seed's val
masks), VPL's decoder from RUN/metrics/vpl_seed<S>.json (one VPL decoder per seed on the pipeline's pseudo masks)
or else RUN/metrics/pred_val.json (`make predict`), and prints one JSON object. Spread = max - min; a recipe with
no metrics file for a seed has null there (not run). ``train_check``: the same recipes' mIoU on the training split
(RUN/metrics/train_weclip_seed<S>.json, ...: `make weclip`'s WECLIP_CHECK_SEEDS), next to that split's
all-background: what the iterations were chosen by (val is read for the rows only).

The two references are computed from any one confusion matrix (rows = GT class, the same val pixels for every
row): all-background predicts class 0 everywhere (IoU of background = its pixel share, the others 0); chance
predicts each class with probability 1/N independently per pixel (expected IoU_c = (p_c / N) / (p_c + 1/N -
p_c / N), p_c = the class's pixel share). Both are means over the classes present in GT, as `vpltool eval`'s mIoU.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def references(confusion: list[list[int]]) -> dict:
    """All-background and uniform-chance mIoU from a [N][N + 1] confusion matrix (module docstring)."""
    gt = [sum(row) for row in confusion]
    total, n = sum(gt), len(gt)
    present = [c for c in range(n) if gt[c] > 0]
    share = {c: gt[c] / total for c in present}
    all_bg = [share[c] if c == 0 else 0.0 for c in present]
    chance = [(share[c] / n) / (share[c] + 1 / n - share[c] / n) for c in present]
    return {"all_background": statistics.fmean(all_bg), "chance_uniform": statistics.fmean(chance),
            "classes_present": len(present), "background_share": share.get(0, 0.0)}


def summary(values: dict[int, float | None]) -> dict:
    got = [v for v in values.values() if v is not None]
    return {"val_miou": values, "mean": statistics.fmean(got) if got else None,
            "spread": max(got) - min(got) if got else None, "seeds_run": len(got)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    args = parser.parse_args()
    metrics = args.run / "metrics"
    out, any_metrics = {}, None
    for name, stem in (("weclip", "weclip_seed"), ("weclip+", "weclipplus_seed"), ("vpl", "vpl_seed")):
        files = {s: read(metrics / f"{stem}{s}.json") for s in args.seeds}
        any_metrics = any_metrics or next((f for f in files.values() if f), None)
        out[name] = summary({s: (f["miou"] if f else None) for s, f in files.items()})
    if not out["vpl"]["seeds_run"]:  # `make predict`'s one decoder
        pred = read(metrics / "pred_val.json")
        out["vpl"] = summary({0: pred["miou"] if pred else None})
        any_metrics = any_metrics or pred
    out["references"] = references(any_metrics["confusion"]) if any_metrics else None
    check, train_any = {}, None
    for name, stem in (("weclip", "train_weclip_seed"), ("weclip+", "train_weclipplus_seed")):
        files = {s: read(metrics / f"{stem}{s}.json") for s in args.seeds}
        files = {s: f for s, f in files.items() if f}
        train_any = train_any or next(iter(files.values()), None)
        check[name] = {s: f["miou"] for s, f in files.items()}
    if train_any:
        check["references"] = references(train_any["confusion"])
        out["train_check"] = check
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

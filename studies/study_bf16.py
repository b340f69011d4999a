"""Fidelity and speed of `--precision bf16` against fp32 on the CPU, on a finished demo run.

    python studies/study_bf16.py [--run runs/demo] [--split val]

For each precision it runs `cam` straight from the dataset (extract's frozen forward included, no cache) with the
run's text prototypes, `--refine none` as the demo does, then `eval`. It reports the mIoU of both, their
difference (the bar: within 0.5 points), the largest absolute difference between the two runs' CAM maps (values in
[0, 1], on the patch grid as stored) and the wall time of each `cam`. Prints one JSON object; ``"amx"`` says
whether this CPU has AMX-bf16 (`--precision auto` picks bf16 only then).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from vpltool import io
from vpltool.device import cpu_has_amx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

VPL = str(Path(sys.executable).parent / "vpltool")


def cam(run: Path, split: str, precision: str, out: Path) -> float:
    """`cam` from the run's world at ``precision``, then `eval`; returns the cam's wall seconds."""
    start = time.perf_counter()
    subprocess.run([VPL, "cam", str(run / "world"), "--split", split, "-p", str(run / "text_prototypes.safetensors"),
                    "-o", str(out), "--refine", "none", "--device", "cpu", "--precision", precision, "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    subprocess.run([VPL, "eval", str(out), "--json", str(out.with_suffix(".json"))], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/demo"))
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    work = args.run / "bf16_study"
    seconds, miou = {}, {}
    for precision in ("fp32", "bf16"):
        seconds[precision] = round(cam(args.run, args.split, precision, work / precision), 1)
        miou[precision] = json.loads((work / f"{precision}.json").read_text())["miou"]
    worst = 0.0
    for path in sorted((work / "fp32").glob("*.safetensors")):
        a = io.read_tensors(path, kind=io.CAM_KIND).tensors
        b = io.read_tensors(work / "bf16" / path.name, kind=io.CAM_KIND).tensors
        worst = max([worst] + [float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel()])
    print(json.dumps({"benchmark": "bf16_study", "machine": machine("cpu"), "amx": cpu_has_amx(),
                      "torch_threads": torch.get_num_threads(), "run": str(args.run), "split": args.split,
                      "miou_pct": {k: round(100 * v, 2) for k, v in miou.items()},
                      "miou_change_pct": round(100 * (miou["bf16"] - miou["fp32"]), 2),
                      "cam_max_abs_difference": round(worst, 4), "cam_seconds": seconds,
                      "bf16_over_fp32_time": round(seconds["bf16"] / seconds["fp32"], 2)}, indent=1))


if __name__ == "__main__":
    main()

"""Start-up of the command line: `vpltool --help` against `python -c "import torch"`, and refused input; prints ONE
JSON object.

    python bench/bench_startup.py [--rounds 5] [--pythonpath DIR]

Each command runs as its own process, the commands alternating round by round (``--rounds``), and the medians of
their wall seconds and of their CPU seconds (user + sys of the process, from ``wait4``: what the command costs,
whatever else the machine runs) are reported:

* ``import_torch``: ``python -c "import torch"``, the yardstick;
* ``help``: ``vpltool --help``; ``segment_help``: ``vpltool segment --help``;
* ``refused_segment``: ``vpltool segment`` on a photo that is not there (one line, exit 2), and ``refused_cam``:
  ``vpltool cam`` on a missing folder: what a typo costs;
* ``stage_imports``: what a stage imports before its first image (the CLI, the `cam` and `segment` stages, the
  CLIP family's open_clip), and ``stage_modules`` which of torch, open_clip, timm, torchvision and
  segment_anything that loads (timm and segment-anything belong to the DINO and SAM families, loaded only there).

``--pythonpath DIR``: time another checkout's vpltool (e.g. an export of an older commit) with this same Python.
Bars: ``help`` at most 0.3 of ``import_torch`` (medians), refused input within about 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "timm", "torchvision", "segment_anything")
STAGE_IMPORTS = ("import sys, json, importlib, importlib.util; import vpltool.cli\n"
                 "try: stages = 'vpltool.stages'; importlib.import_module(stages)\n"
                 "except ImportError: stages = 'vpltool'\n"  # before the layer folders
                 "importlib.import_module(stages + '.cam'); importlib.import_module(stages + '.segment')\n"
                 # the CLIP family's loading module, wherever this checkout keeps it
                 "loading = next(m for m in ('vpltool.models.backbones.loading', 'vpltool.models.loading', "
                 "'vpltool.backbone.loading') if importlib.util.find_spec(m.rpartition('.')[0]) and "
                 "importlib.util.find_spec(m))\n"
                 "importlib.import_module(loading).import_open_clip()\n"
                 f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")


def run(cmd: list[str], env: dict, expect: int = 0, cwd: Path | None = None) -> tuple[float, float, str]:
    """Run ``cmd`` as its own process: (wall s, CPU s of that process, stdout); its exit code must be ``expect``."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, cwd=cwd)
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}, expected {expect}:\n"
                         f"{proc.stderr.decode()[-2000:]}")
    return wall, cpu, proc.stdout.decode()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    ap.add_argument("--pythonpath", type=Path, default=ROOT, help="the checkout whose vpltool is timed")
    ap.add_argument("--stage-rounds", type=int, default=1, help="rounds of stage_imports (the slowest; 0 = skip)")
    args = ap.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    env = {**os.environ, "PYTHONPATH": str(args.pythonpath.resolve()), "OMP_NUM_THREADS": threads}
    py = sys.executable
    vpl = [py, "-m", "vpltool"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    commands = {
        "import_torch": ([py, "-c", "import torch"], 0),
        "help": ([*vpl, "--help"], 0),
        "segment_help": ([*vpl, "segment", "--help"], 0),
        "refused_segment": ([*vpl, "segment", str(tmp / "no-photo.jpg"), "--classes", "cat,dog", "-o",
                             str(tmp / "out")], 2),
        "refused_cam": ([*vpl, "cam", str(tmp / "no-features"), "-p", str(tmp / "p.safetensors"), "-o",
                         str(tmp / "cams")], 2),
        "stage_imports": ([py, "-c", STAGE_IMPORTS], 0),
    }
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    modules: list[str] = []
    for r in range(args.rounds):
        for name, (cmd, expect) in commands.items():
            if name == "stage_imports" and r >= args.stage_rounds:
                continue
            wall, cpu, out = run(cmd, env, expect, tmp)  # not in a checkout: '' on sys.path would shadow it
            walls[name].append(round(wall, 3))
            cpus[name].append(round(cpu, 3))
            if name == "stage_imports":
                modules = json.loads(out.strip().splitlines()[-1])
    med = {k: round(statistics.median(v), 3) for k, v in walls.items() if v}
    cpu_med = {k: round(statistics.median(v), 3) for k, v in cpus.items() if v}
    result = {
        "benchmark": "startup",
        "machine": benchlib.machine("cpu"),
        "vpltool": str(args.pythonpath),
        "rounds": args.rounds,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "seconds_median": med,
        "cpu_seconds_median": cpu_med,
        "seconds": walls,
        "cpu_seconds": cpus,
        "help_over_import_torch": round(med["help"] / med["import_torch"], 3),
        "help_over_import_torch_cpu": round(cpu_med["help"] / cpu_med["import_torch"], 3),
        "stage_modules": modules,
        "bars": {"help_over_import_torch": "<= 0.3", "refused_segment": "<= 0.5 s", "refused_cam": "<= 0.5 s"},
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()

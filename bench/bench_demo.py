"""Wall and CPU time of `make demo` after setup (targets: < 8 min wall on 2 cores, <= 10 CPU-minutes of user +
system time, which the machine's load does not inflate): one JSON object.

    python bench/bench_demo.py [--run /tmp/bench-demo] [--keep] [--stages] [--per-command] [--with-setup]

Runs ``make demo`` itself into a fresh run folder (``make -jN -O report`` with the demo's rows: refinements none
and caa, no SSR caa+sgc rows, no dense CLIP rows, no DINO affinity rows; N = the cores: two independent stages at a
time) and times it (wall, and the CPU time of every process it ran), then reads the per-stage mIoU from
``metrics.json``. With ``--stages`` it
instead runs the Makefile's targets one at a time in pipeline order, timing each one (a target only does its own stage
because the earlier ones are already built): where the time goes, not what `make demo` takes.
With ``--with-setup`` it times what a new user's ``make demo`` costs: a ``git clone`` of this checkout's
committed HEAD into a fresh folder, there ``make setup-demo`` (what ``make demo`` runs first: a new ``.venv``, pip
installs torch etc.) and then ``make demo``, each by the CPU time of the processes it ran; their sum is the figure.
Its figures are checked against the README's table (``readme``: every README row the run made, train and val to the
printed 0.1, and the mismatches; a row of another target, e.g. `make sgc`'s, is listed as not made): the README's
demo table is checked here on the demo world itself, tests/test_demo_quality.py checks the bars on a smaller world.
Optionally times the toy CLIP's retraining too (``--toy-clip``, ~10 min; the issue's target is <= 15 min) and checks
that it reproduces the shipped weights bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("world", "features", "text-prototypes", "cams-text", "learn-prototypes", "cams-vision", "pseudo",
           "decoder", "predict", "heldout", "refines", "diagnose", "report")
SHIPPED = ROOT / "vpltool" / "assets" / "toy-clip"


QUICK = ("WORLD_TRAIN=16", "WORLD_VAL=8", "ITERS=20", "DEC_ITERS=10")  # --quick: a smoke test of the script
# the Makefile's DEMO_ROWS, for --stages (`make demo` sets them itself): the rows of `make dense`, `make affinity` and
# `make sgc` left out
DEMO_ROWS = ("DENSE=", "DENSE_SEEDS=", "AFFINITY_ROWS=", "REFINES=none caa")


# the README table's stage column -> the prefix of metrics.json's stage name (demo-report's rows)
README_STAGES = {"CAM, text prototypes": "CAM, text", "CAM, vision prototypes": "CAM, vision",
                 "CRF masks of the text CAMs": "CRF masks from text", "CRF pseudo masks": "CRF pseudo",
                 "decoder (VPL phase 2)": "decoder"}


def readme_rows(text: str) -> list[dict]:
    """The rows of the README's demo table (the first table under "## What the demo shows") whose stage is one of
    ``README_STAGES``: ``{"stage": metrics prefix, "refine", "train", "val"}``, figures as printed (str, "—" for
    none); a row with an empty stage cell continues the row above's stage. Other stages (SAM's) are skipped."""
    section = text.split("## What the demo shows", 1)[1]
    rows, stage = [], None
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows or stage:
                break  # the table's end
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("stage", "---"):
            continue
        if cells[0]:
            stage = next((v for k, v in README_STAGES.items() if cells[0].startswith(k)), "")
        if stage:
            rows.append({"stage": stage, "refine": cells[1].strip("`").split()[0], "train": cells[2],
                         "val": cells[3]})
    return rows


def _printed(miou: float | None) -> str:
    """A figure as the README prints it: mIoU %, one decimal ("—" for none)."""
    return "—" if miou is None else f"{100 * miou:.1f}"


def check_readme(metrics: dict, text: str) -> dict:
    """The README's demo table against a run's ``metrics.json``: each README row the run made (same stage prefix and
    refinement), compared split by split as printed; ``mismatches`` lists each differing figure, ``not_made`` the
    README rows (or a row's split) this run did not make (another target's: `make sgc`, `make affinity`)."""
    compared, mismatches, not_made = 0, [], []
    for row in readme_rows(text):
        made = next((r for r in metrics["stages"]
                     if r["stage"].startswith(row["stage"]) and r.get("refine") == row["refine"]), None)
        if made is None:
            not_made.append(f"{row['stage']} [{row['refine']}]")
            continue
        compared += 1
        for split in ("train", "val"):
            got = _printed((made[split] or {}).get("miou"))
            if got == "—" and row[split] != "—":  # a split this run did not score (the demo test's caa+sgc row)
                not_made.append(f"{row['stage']} [{row['refine']}] {split}")
            elif got != row[split]:
                mismatches.append({"row": f"{row['stage']} [{row['refine']}]", "split": split, "readme": row[split],
                                   "run": got})
    return {"rows_compared": compared, "mismatches": mismatches, "not_made": not_made}


def make(target: str, run: Path, venv: Path, extra: tuple[str, ...] = (), env: dict | None = None) -> float:
    """Seconds taken by ``make [-jN -O] TARGET RUN=run``; its output is kept out of the JSON."""
    start = time.perf_counter()
    subprocess.run(["make", "-C", str(ROOT), *extra, target, f"RUN={run}", f"VENV={venv}", "DEVICE=cpu"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return round(time.perf_counter() - start, 1)


def per_command(log: Path) -> dict:
    """``bench/vpl_timed.py``'s lines summed by command, and the ten costliest processes."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    by_command: dict[str, float] = {}
    for row in rows:
        by_command[row["command"]] = round(by_command.get(row["command"], 0.0) + row["cpu_s"], 2)
    return {"processes": len(rows), "cpu_s_by_command": dict(sorted(by_command.items(), key=lambda kv: -kv[1])),
            "costliest": sorted(rows, key=lambda r: -r["cpu_s"])[:10]}


def timed_make(target: str, clone: Path, extra: tuple[str, ...] = (), env: dict | None = None) -> dict:
    """``make TARGET EXTRA`` in ``clone`` (its own ``.venv`` unless ``extra`` names another): wall seconds and the CPU
    seconds of every process it ran. A failure exits with the target and the tail of make's stderr."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(["make", "-C", str(clone), target, *extra], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"make {target} failed:\n{proc.stderr[-3000:]}")
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def with_setup(clone: Path, per_command_log: Path | None, extra: tuple[str, ...]) -> tuple[dict, Path]:
    """A fresh clone's ``make setup-demo`` then ``make demo`` (its RUN, runs/demo), each timed; with ``per_command_log``
    every vpltool process of the demo timed too. Returns the timing and the run folder."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    setup = timed_make("setup-demo", clone)  # what `make demo` runs first (`make setup` adds the test extras)
    env = None
    if per_command_log is not None:
        env = {**os.environ, "VPL_TIMED_LOG": str(per_command_log)}
        extra = (*extra, f"VPL={sys.executable} -S {clone / 'bench' / 'vpl_timed.py'} {clone / '.venv/bin/vpltool'}")
    demo = timed_make("demo", clone, extra, env)
    timing = {"how": "a fresh git clone: make setup-demo (a new .venv), then make demo",
              "commit": benchlib.clone_commit(clone),
              "setup": setup, "demo": demo, "total_s": round(setup["wall_s"] + demo["wall_s"], 1),
              "cpu_s": round(setup["cpu_s"] + demo["cpu_s"], 1), "cpu_target_s": 600}
    if per_command_log is not None:
        timing["per_command"] = per_command(per_command_log)
    return timing, clone / "runs" / "demo"


def time_toy_clip(venv: Path) -> dict:
    """Retrain the toy CLIP into a temp folder with the shipped defaults; seconds and whether weights match."""
    import torch
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "toy-clip"
        start = time.perf_counter()
        subprocess.run([str(venv / "bin" / "vpltool"), "train-toy-clip", str(out)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = round(time.perf_counter() - start, 1)
        new, old = (load_file(str(d / "open_clip_model.safetensors")) for d in (out, SHIPPED))
        same = new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)
    return {"seconds": seconds, "target_s": 900, "identical_to_shipped": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="run folder (default: a fresh temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder")
    ap.add_argument("--toy-clip", action="store_true", help="also time `vpltool train-toy-clip` (~10 min)")
    ap.add_argument("--device", default="cpu", choices=["cpu"], help="the demo runs on CPU (the issue's target)")
    ap.add_argument("--quick", action="store_true", help="a tiny world and schedule: checks the script, not speed")
    ap.add_argument("--stages", action="store_true", help="time each target alone, in order (not `make demo`)")
    ap.add_argument("--per-command", action="store_true",
                    help="time each vpltool process `make demo` starts (bench/vpl_timed.py as the Makefile's VPL; "
                         "a VPL given on make's command line bypasses the fork server: each command a process)")
    ap.add_argument("--with-setup", action="store_true",
                    help="a fresh clone's make setup-demo (new .venv) and make demo, timed together; --run: the clone")
    ap.add_argument("--fast", action="store_true",
                    help="make demo in fast mode at fp32 (REPRODUCIBLE=0, VPLTOOL_ASSUME_AMX=0) in place of its "
                         "reproducible mode: what that mode costs, and whether the README's table still comes out")
    args = ap.parse_args()
    if args.fast and (args.with_setup or args.stages):
        ap.error("--fast times `make demo` alone: leave out --with-setup and --stages")
    venv = Path(sys.executable).parent.parent
    run = args.run or Path(tempfile.mkdtemp(prefix="bench-demo-"))
    shutil.rmtree(run, ignore_errors=True)

    extra = QUICK if args.quick else ()
    if args.with_setup:
        log = run.parent / f"{run.name}.commands.jsonl" if args.per_command else None
        if log is not None:
            log.unlink(missing_ok=True)
        timing, run_dir = with_setup(run, log, extra)
    elif args.stages:
        seconds = {t: make(t, run, venv, (*DEMO_ROWS, *extra)) for t in TARGETS}
        timing = {"how": "each target alone, in order", "stage_seconds": seconds,
                  "total_s": round(sum(seconds.values()), 1)}
    else:
        log, env = run.parent / f"{run.name}.commands.jsonl", None
        if args.fast:  # fp32 on every CPU: a CPU with AMX would turn --precision auto into bf16
            env, extra = {**os.environ, "VPLTOOL_ASSUME_AMX": "0"}, (*extra, "REPRODUCIBLE=0")
        if args.per_command:
            log.unlink(missing_ok=True)
            env = {**(env or os.environ), "VPL_TIMED_LOG": str(log)}
            wrapper = f"{sys.executable} -S {ROOT / 'bench' / 'vpl_timed.py'} {venv / 'bin' / 'vpltool'}"
            extra = (*extra, f"VPL={wrapper}")
        demo = timed_make("demo", ROOT, (*extra, f"RUN={run}", f"VENV={venv}", "DEVICE=cpu"), env)
        how = "make demo (make -jWORKERS -O report, the demo's rows)"
        if args.fast:
            how += ", in fast mode at fp32 (REPRODUCIBLE=0, VPLTOOL_ASSUME_AMX=0), not its reproducible mode"
        timing = {"how": how, "total_s": demo["wall_s"], "cpu_s": demo["cpu_s"], "cpu_target_s": 600}
        if args.per_command:
            timing["per_command"] = per_command(log)
    metrics = json.loads(((run_dir if args.with_setup else run) / "metrics.json").read_text())
    result = {
        "benchmark": "demo",
        "machine": benchlib.machine("cpu"),
        **timing,
        "target_s": 480,
        "quick": args.quick,
        # per stage and split ("train": the scenes W is learned on; "val": held out); None where a stage did not run
        "miou": {f"{row['stage']} [{row.get('refine')}]": {split: (row[split] or {}).get("miou")
                                                            for split in ("train", "val")}
                 for row in metrics["stages"]},
        "pseudo_choice": metrics.get("pseudo_choice"),
        "other_layers": {row["stage"]: row["val"] for row in metrics.get("other_layers", [])},
        "chance": metrics.get("chance"),
        "readme": check_readme(metrics, (ROOT / "README.md").read_text()),
        # children's ru_maxrss is the largest single stage process (Linux reports KiB)
        "peak_memory": [{"stage": "largest stage process", "scope": "max over the stages' processes",
                         "rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}],
    }
    if args.toy_clip and not args.quick:  # a smoke test never spends 10 minutes retraining
        result["toy_clip"] = time_toy_clip(venv)
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)  # with --with-setup: the whole clone, its .venv too
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

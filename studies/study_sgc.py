"""SSR's spatial rectification on full demo worlds: `cam --refine` none vs caa vs caa+sgc, CAM and CRF mIoU, over
several world seeds (mean and spread), and SGC's settings chosen on train.

    python studies/study_sgc.py --seeds 0,1,2 --root runs/sgc_study [--run0 runs/demo] \
        > studies/results/sgc_full.json 2> studies/results/sgc_full.md

1. Per world seed S, the Makefile's own comparison: ``make refines RUN=ROOT/seedS SEED=S`` renders the demo world
   of that seed (500 train + 200 val scenes), extracts both splits, makes the text prototypes, learns W (VPL phase
   1, from the Makefile's ``REFINE`` text CAMs), then for each refinement of ``REFINES`` (none, caa, caa+sgc with
   the shipped SGC defaults) makes text and vision CAMs and the CRF masks of each (crf's defaults) on both splits,
   and scores them. The prototypes are fixed per world; only `cam`'s refinement changes, so every difference within
   a seed is the refinement's. ``--run0 runs/demo`` takes seed 0 from a finished `make demo` (the same targets).
   Reported: mean, sample standard deviation, min and max over the seeds, and the per-seed differences
   caa+sgc - caa and caa+sgc - none.
2. With ``--grid``, SGC's settings chosen again on train: vision-prototype CAM mIoU on the train split of the seeds
   ``--grid-seeds`` (default: the first seed), for SLIC segments x K-means clusters (position weight
   ``--position``); the best mean is kept (ties: the first listed), and the JSON says whether it lies on the grid's
   edge. A chosen point other than the defaults is then scored on every seed as in 1 (its own folders).

Every folder is kept under the run folders and re-used when the script runs again (Make's targets, and the grid's
folders named by their settings), so an interrupted study resumes. Prints one JSON object (stdout) and markdown
tables (stderr). The DINO-affinity rows (``--affinity-rows``, the shipped toy DINO) are made and reported too, with
their differences to caa, and caa - none (issue 36's bar). The small first study (100 + 50
scenes, one seed, its own W, before the Makefile compared refinements) is kept in studies/results/sgc_demo.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vpltool.config import CamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import machine  # noqa: E402

SEGMENTS = (128, 256, 512)
CLUSTERS = (16, 32, 64)
DEFAULT = {"refine": "caa+sgc", "segments": CamConfig.sgc_segments, "clusters": CamConfig.sgc_clusters,
           "position": CamConfig.sgc_position}
# eval JSON of each figure, as the Makefile names them under RUN/metrics[/R]/ (R: a refinement other than REFINE's)
FIGURES = {"text_cam": "cams_text", "vision_cam": "cams_vision", "text_crf": "pseudo_text", "vision_crf": "pseudo"}
SPLITS = ("train", "val")


def _run(*cmd: object) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(c) for c in cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{done.stderr[-3000:]}")


def _vpl(*args: object) -> None:
    _run(sys.executable, "-m", "vpltool", *args)


def make_refines(run: Path, seed: int, make: str, device: str, jobs: int, affinity_rows: list[str]) -> None:
    """The Makefile's comparison of refinements on the demo world of ``seed`` (``make refines``), in ``run``, with
    the DINO-affinity rows ``affinity_rows`` (the Makefile's AFFINITY_ROWS, e.g. caa@dino)."""
    _run(make, "-s", f"-j{jobs}", "refines", f"RUN={run}", f"SEED={seed}", f"DEVICE={device}", "REFINE=none",
         "REFINES=none caa caa+sgc", f"AFFINITY_ROWS={' '.join(affinity_rows)}")


def made_row(run: Path, refine: str) -> dict:
    """mIoU % of each figure of ``refine`` from the eval JSONs `make refines` wrote (REFINE = none)."""
    where = run / "metrics" if refine == "none" else run / "metrics" / refine
    return {f"{key}_{split}": round(100 * json.loads((where / f"{name}{'_val' if split == 'val' else ''}.json")
                                                     .read_text())["miou"], 2)
            for key, name in FIGURES.items() for split in SPLITS}


def miou(folder: Path) -> float:
    """``eval``'s mIoU % of a CAM or mask folder (its JSON beside it, re-used when present)."""
    out = folder.with_name(folder.name + ".json")
    if not out.is_file():
        _vpl("eval", folder, "--json", out)
    return round(100 * json.loads(out.read_text())["miou"], 2)


def _name(setting: dict) -> str:
    return "_".join(f"{v}" for v in setting.values()).replace("+", "-")


def cams(run: Path, protos: str, split: str, setting: dict, device: str) -> Path:
    """``cam`` of ``run``'s ``protos`` (text | vision) prototypes on ``split`` with an SGC ``setting``; re-used."""
    out = run / "study" / f"cams_{protos}_{split}_{_name(setting)}"
    if not (out / "_stage.json").is_file():
        features = run / ("features" if split == "train" else "features_val")
        _vpl("cam", features, "-p", run / f"{protos}_prototypes.safetensors", "-o", out, "--refine", "caa+sgc",
             "--sgc-segments", setting["segments"], "--sgc-clusters", setting["clusters"], "--sgc-position",
             setting["position"], "--device", device, "--overwrite")
    return out


def crf(folder: Path) -> Path:
    out = folder.with_name(folder.name.replace("cams_", "crf_", 1))
    if not (out / "_stage.json").is_file():
        _vpl("crf", folder, "-o", out, "--workers", "2", "--overwrite")
    return out


def setting_row(run: Path, setting: dict, device: str) -> dict:
    """The figures of :func:`made_row` for an SGC setting other than the Makefile's, in ``run/study``."""
    row = {}
    for split in SPLITS:
        for protos in ("text", "vision"):
            folder = cams(run, protos, split, setting, device)
            row[f"{protos}_cam_{split}"] = miou(folder)
            row[f"{protos}_crf_{split}"] = miou(crf(folder))
    return row


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 2),
            "sd": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def on_edge(chosen: dict) -> list[str]:
    """The grid axes on which ``chosen`` takes the smallest or largest value tried."""
    return [f"{key} = {chosen[key]} ({'largest' if chosen[key] == axis[-1] else 'smallest'} tried)"
            for key, axis in (("segments", SEGMENTS), ("clusters", CLUSTERS))
            if chosen[key] in (axis[0], axis[-1])]


def summarise(per_seed: dict, seeds: list[int]) -> tuple[dict, dict]:
    summary = {name: {key: spread([rows[s][key] for s in seeds]) for key in rows[seeds[0]]}
               for name, rows in per_seed.items()}
    pairs = [("caa+sgc", "caa"), ("caa+sgc", "none"), ("caa", "none")]  # the last: issue 36's bar
    pairs += [(row, "caa") for row in per_seed if "@" in row]
    deltas = {f"{a} - {b}": {key: spread([round(per_seed[a][s][key] - per_seed[b][s][key], 2) for s in seeds])
                             for key in summary["caa"]} for a, b in pairs}
    return summary, deltas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="world seeds (make-world --seed)")
    ap.add_argument("--root", type=Path, default=Path("runs/sgc_study"))
    ap.add_argument("--run0", type=Path, default=None, help="a finished `make demo` run to use as seed 0")
    ap.add_argument("--grid", action="store_true", help="also choose SGC's segments and clusters on train")
    ap.add_argument("--grid-seeds", default=None, help="seeds the grid is scored on (default: the first seed)")
    ap.add_argument("--position", type=float, default=CamConfig.sgc_position, help="--sgc-position of the grid")
    ap.add_argument("--make", default="make")
    ap.add_argument("--device", default="cpu", help="cam's device (the CRF runs on the CPU)")
    ap.add_argument("--jobs", type=int, default=2, help="stages (make -j) or grid points run at once")
    ap.add_argument("--affinity-rows", default="caa@dino,caa@clip+dino",
                    help="the DINO-affinity rows (the Makefile's AFFINITY_ROWS, comma-separated; empty: none)")
    args = ap.parse_args()
    affinity_rows = [r for r in args.affinity_rows.split(",") if r]
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    runs = {s: args.run0 if s == 0 and args.run0 else args.root / f"seed{s}" for s in seeds}
    per_seed: dict = {"none": {}, "caa": {}, "caa+sgc": {}, **{r: {} for r in affinity_rows}}
    for s, run in runs.items():
        make_refines(run, s, args.make, args.device, args.jobs, affinity_rows)
        for name in per_seed:
            per_seed[name][s] = made_row(run, name)
        print(json.dumps({"seed": s, "run": str(run), **{n: r[s] for n, r in per_seed.items()}}), file=sys.stderr)
    summary, deltas = summarise(per_seed, seeds)
    result = {"benchmark": "sgc_study_full", "machine": machine(args.device), "seeds": seeds,
              "runs": {str(s): str(r) for s, r in runs.items()}, "world": {"train": 500, "val": 200},
              "sgc": DEFAULT, "per_seed": {n: {str(s): row for s, row in rows.items()} for n, rows in per_seed.items()},
              "summary": summary, "paired_differences": deltas,
              "affinity_rows": affinity_rows}

    if args.grid:
        grid_seeds = [int(s) for s in args.grid_seeds.split(",")] if args.grid_seeds else seeds[:1]
        settings = [{**DEFAULT, "segments": segments, "clusters": clusters, "position": args.position}
                    for segments, clusters in itertools.product(SEGMENTS, CLUSTERS)]

        def score(setting: dict) -> dict:
            scores = {s: (per_seed["caa+sgc"][s]["vision_cam_train"] if setting == DEFAULT else
                          miou(cams(runs[s], "vision", "train", setting, args.device))) for s in grid_seeds}
            entry = {"setting": setting, "vision_cam_train": scores, "mean": round(statistics.fmean(scores.values()),
                                                                                   2)}
            print(json.dumps(entry), file=sys.stderr)
            return entry

        with ThreadPoolExecutor(args.jobs) as pool:  # each cam is its own process; threads only wait on them
            grid = list(pool.map(score, settings))
        chosen = max(grid, key=lambda e: e["mean"])["setting"]
        result["choice_on_train"] = {"seeds": grid_seeds, "grid": {"segments": SEGMENTS, "clusters": CLUSTERS,
                                                                   "position": args.position},
                                     "scores": grid, "chosen": chosen, "on_grid_edge": on_edge(chosen)}
        if chosen != DEFAULT:  # the chosen point on every seed, beside the defaults
            rows = {s: setting_row(runs[s], chosen, args.device) for s in seeds}
            result["chosen_rows"] = {"per_seed": {str(s): r for s, r in rows.items()},
                                     "summary": {k: spread([rows[s][k] for s in seeds]) for k in rows[seeds[0]]}}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))
    print(markdown(result), file=sys.stderr)


def _cell(s: dict) -> str:
    return f"{s['mean']:.1f} ± {s['sd']:.1f} ({s['min']:.1f} to {s['max']:.1f})"


def markdown(result: dict) -> str:
    """The summary, the paired differences and the grid as markdown tables (docs/pipeline.md quotes them)."""
    cols = [f"{k}_{s}" for k in FIGURES for s in SPLITS]
    head = ("| `--refine` | text CAM train | val | vision CAM train | val | CRF of text CAMs train | val | "
            "CRF of vision CAMs train | val |\n|---|" + "---|" * len(cols))
    d = result["sgc"]
    name = {"caa+sgc": f"caa+sgc ({d['segments']} / {d['clusters']} / {d['position']:g})"}
    lines = [f"mIoU %, mean ± sd (min to max) over world seeds {result['seeds']}:", "", head]
    lines += [f"| {name.get(n, n)} | " + " | ".join(_cell(row[k]) for k in cols) + " |"
              for n, row in result["summary"].items()]
    lines += [f"| {n} | " + " | ".join(_cell(row[k]) for k in cols) + " |"
              for n, row in result["paired_differences"].items()]
    if "choice_on_train" in result:
        c = result["choice_on_train"]
        lines += ["", f"Choice on train (vision CAM mIoU %, train split of seeds {c['seeds']}); rows: SLIC segments, "
                  f"columns: K-means clusters; position {c['grid']['position']:g}:", "",
                  "| segments | " + " | ".join(str(k) for k in c["grid"]["clusters"]) + " |",
                  "|---|" + "---|" * len(c["grid"]["clusters"])]
        for segments in c["grid"]["segments"]:
            cells = [e["mean"] for e in c["scores"] if e["setting"]["segments"] == segments]
            lines.append(f"| {segments} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
        ch, edge = c["chosen"], c["on_grid_edge"]
        lines += ["", f"Chosen: {ch['segments']} segments, {ch['clusters']} clusters; "
                  + (f"on the grid's edge: {'; '.join(edge)}." if edge else "inside the grid.")]
        if "chosen_rows" in result:
            lines += ["", "The chosen point on every seed: " + ", ".join(
                f"{k} {_cell(v)}" for k, v in result["chosen_rows"]["summary"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

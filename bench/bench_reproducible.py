"""A reduced `make demo` in reproducible mode, as this machine is and with an AVX2-only machine emulated: are
``metrics.json`` and every mask, CAM and features file the same bytes? One JSON object
(bench/results/reproducible.json).

    python bench/bench_reproducible.py [--work /tmp/bench-repro] [--variants A,B,...] [--quick]

Each variant renders the reduced world (its scenes are compared with those of a master world rendered once), then
runs the Makefile's demo pipeline (``make RUN/metrics.json``: extract, text prototypes, text and vision CAMs of
refinements none and caa, their CRF masks on both splits, the decoder of each and the one chosen on train predicting
val, `demo-report`) on a reduced schedule (:data:`REDUCED`) over a copy of the master world (file times kept: the
records' dataset digests hold them), in the same run folder one after the other (the records name their folder),
and keeps its files for the comparison:

* ``reproducible``: ``make demo``'s mode (``REPRODUCIBLE=1``), this machine as it is (AVX-512, no AMX here);
* ``reproducible-avx2``: the same with an AVX2-only machine emulated from the start: every library's instructions
  capped at AVX2 by its documented setting before anything loads (:func:`avx2_machine`; glibc's own ifuncs too),
  and no AMX;
* ``reproducible-amx``: the same with ``VPLTOOL_ASSUME_AMX=1`` (``--precision auto`` as a CPU with AMX resolves
  it), which reproducible mode must ignore;
* ``fast`` and ``fast-avx2``: the negative control, the same pair in fast mode (``REPRODUCIBLE=0``): they must
  differ, else the emulation changes nothing and the pair above proves nothing;
* ``fast-threads2``: fast mode with two intra-op threads a command (``OMP_NUM_THREADS=2``) where the others run one:
  what the thread count alone changes (measured, not checked).

The emulation's instruction caps are the settings reproducible mode sets itself (:data:`runtime.numerics.ISA_PINS`,
the libraries' documented caps); in fast mode they are the only difference between the two runs of a pair.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vpltool.runtime import numerics  # noqa: E402

# a few dozen images and short schedules: every stage of the demo runs, in minutes
REDUCED = ("WORLD_TRAIN=24", "WORLD_VAL=12", "ITERS=60", "DEC_ITERS=30", "REFINES=none caa", "DENSE=", "DENSE_SEEDS=",
           "AFFINITY_ROWS=", "DEVICE=cpu")
QUICK = ("WORLD_TRAIN=16", "WORLD_VAL=8", "ITERS=10", "DEC_ITERS=4", "REFINES=none", "DENSE=", "DENSE_SEEDS=",
         "AFFINITY_ROWS=", "DEVICE=cpu")
# glibc's ifunc choices (memcpy, libm) as on a CPU without AVX-512 (glibc.cpu.hwcaps, glibc's documented tunable)
GLIBC_AVX2 = "glibc.cpu.hwcaps=-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL,-AVX512ER,-AVX512PF"
VARIANTS = {
    "reproducible": {"REPRODUCIBLE": "1", "avx2": False, "amx": None},
    "reproducible-avx2": {"REPRODUCIBLE": "1", "avx2": True, "amx": None},
    "reproducible-amx": {"REPRODUCIBLE": "1", "avx2": False, "amx": "1"},
    "fast": {"REPRODUCIBLE": "0", "avx2": False, "amx": None},
    "fast-avx2": {"REPRODUCIBLE": "0", "avx2": True, "amx": None},
    "fast-threads2": {"REPRODUCIBLE": "0", "avx2": False, "amx": None, "threads": "2"},
}
# (a, b, expected): "same" and "differ" are checked; "measured" only says what the threads change
PAIRS = (("reproducible", "reproducible-avx2", "same"), ("reproducible", "reproducible-amx", "same"),
         ("fast", "fast-avx2", "differ"), ("fast", "fast-threads2", "measured"))


def avx2_machine() -> dict[str, str]:
    """The environment of an AVX2-only x86-64 machine without AMX, emulated on this one: each library capped at AVX2
    (numpy's, OpenCV's and glibc's AVX-512 features off), --precision auto resolving as without AMX."""
    env = {**numerics.ISA_PINS, "GLIBC_TUNABLES": GLIBC_AVX2, numerics.ASSUME_AMX_ENV: "0"}
    opencv = numerics.pinned_environment().get("OPENCV_CPU_DISABLE")
    if opencv:
        env["OPENCV_CPU_DISABLE"] = opencv
    return env


def variant_env(name: str) -> dict[str, str]:
    """The environment a variant's commands run in (the mode's variables of this shell left out)."""
    spec = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if k not in numerics.pinned_environment()}
    env.pop(numerics.ASSUME_AMX_ENV, None)
    env["OMP_NUM_THREADS"] = spec.get("threads", "1")  # the Makefile's own default: one thread a command
    if spec["avx2"]:
        env.update(avx2_machine())
    if spec["amx"] is not None:
        env[numerics.ASSUME_AMX_ENV] = spec["amx"]
    return env


def make(name: str, target: str, run: Path, venv: Path, settings: tuple[str, ...]) -> dict:
    """``make TARGET RUN=run`` with the variant's environment and mode; wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", target, f"RUN={run}", f"VENV={venv}",
                           f"REPRODUCIBLE={VARIANTS[name]['REPRODUCIBLE']}", *settings], env=variant_env(name),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: make {target} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu, 1)}


def world_files(world: Path) -> dict[str, bytes]:
    """The rendered scenes: every image and mask PNG and the class list."""
    return {str(p.relative_to(world)): p.read_bytes() for p in sorted(world.rglob("*"))
            if p.suffix in (".png", ".jpg", ".txt")}


def run_variant(name: str, work: Path, master: Path, venv: Path, settings: tuple[str, ...]) -> dict:
    """The variant's world rendered (its scenes compared with the master world's), then the pipeline in
    ``work/run`` on a copy of the master world (modification times kept: the records' dataset digests hold them,
    so every run's records and file headers can be the same bytes), kept as ``work/NAME``."""
    scratch = work / "worlds" / name
    shutil.rmtree(scratch.parent, ignore_errors=True)
    make(name, f"{scratch}/world/_stage.json", scratch, venv, settings)
    same_world = world_files(scratch / "world") == world_files(master)
    run = work / "run"  # every variant runs here: the records name the folder
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(master, run / "world", copy_function=shutil.copy2)
    timing = make(name, f"{run}/metrics.json", run, venv, settings)
    shutil.rmtree(work / name, ignore_errors=True)
    run.rename(work / name)
    return {**timing, "world_scenes_identical": same_world}


def outputs(folder: Path) -> dict[str, Path]:
    """The files compared: metrics.json and every mask (PNG), CAM and features file (safetensors) of the run."""
    found = {"metrics.json": folder / "metrics.json"}
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".png", ".safetensors") and "report" not in path.parts:
            found[str(path.relative_to(folder))] = path
    return found


def tensor_payload(path: Path) -> bytes:
    """A safetensors file's tensors alone (its header, which records the instructions that ran, left out)."""
    raw = path.read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little"):]


def compare(a: Path, b: Path) -> dict:
    """Byte comparison of two runs' outputs; for tensors also the data alone and the largest difference."""
    import numpy as np
    from safetensors.numpy import load_file

    fa, fb = outputs(a), outputs(b)
    differ, data_differ, max_diff = [], [], {}
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fa or rel not in fb:
            differ.append(rel)
            continue
        if fa[rel].read_bytes() != fb[rel].read_bytes():
            differ.append(rel)
        if rel.endswith(".safetensors") and tensor_payload(fa[rel]) != tensor_payload(fb[rel]):
            data_differ.append(rel)
            ta, tb = load_file(str(fa[rel])), load_file(str(fb[rel]))
            kind = rel.split("/")[0]
            for key in ta.keys() & tb.keys():
                if ta[key].dtype.kind == "f" and ta[key].shape == tb[key].shape:
                    d = float(np.abs(ta[key].astype(np.float64) - tb[key].astype(np.float64)).max())
                    max_diff[kind] = max(max_diff.get(kind, 0.0), d)
    ma, mb = (json.loads((x / "metrics.json").read_text()) for x in (a, b))
    rows = [(ra["stage"], ra.get("refine"), s) for ra, rb in zip(ma["stages"], mb["stages"]) for s in ("train", "val")
            if (ra.get(s) or {}).get("miou") != (rb.get(s) or {}).get("miou")]
    return {"files": len(fa), "files_differ": len(differ), "first_differ": differ[:5],
            "masks_differ": sum(d.endswith(".png") for d in differ), "tensor_data_differ": len(data_differ),
            "max_abs_diff_by_folder": {k: float(f"{v:.3g}") for k, v in sorted(max_diff.items())},
            "metrics_json_identical": (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes(),
            "miou_cells_differ": len(rows)}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for rel, path in outputs(folder).items():
        h.update(rel.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-reproducible"), help="scratch folder")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="a tiny world and schedule: checks the script")
    args = ap.parse_args()
    venv = Path(sys.executable).parent.parent
    settings = QUICK if args.quick else REDUCED
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    master = args.work / "master" / "world"  # the world every variant's pipeline reads: rendered once, reproducibly
    if not (master / "_stage.json").is_file():
        make("reproducible", f"{master}/_stage.json", master.parent, venv, settings)
    timings = {}
    for name in names:
        timings[name] = run_variant(name, args.work, master, venv, settings)
        print(f"{name}: {timings[name]}", file=sys.stderr)
    pairs = []
    for a, b, expect in PAIRS:
        if a in names and b in names:
            result = compare(args.work / a, args.work / b)
            same = result["files_differ"] == 0
            ok = None if expect == "measured" else same == (expect == "same")
            pairs.append({"a": a, "b": b, "expect": expect, "ok": ok, **result})
    print(json.dumps({"benchmark": "reproducible", "machine": benchlib.machine("cpu"), "settings": list(settings),
                      "variants": timings, "digests": {n: digest(args.work / n) for n in names}, "pairs": pairs},
                     indent=1))


if __name__ == "__main__":
    main()

"""`vpltool sam-pseudo` against `vpltool crf` on the demo's CAMs: CPU-seconds an image of each whole command (user +
system, its loading processes included), their ratio, and a digest of each mask folder; prints ONE JSON object.

    python bench/bench_sam_pseudo.py --cams runs/demo/caa/cams_vision [--shard 0/10] > bench/results/sam_pseudo.json

Both run as the Makefile runs them in `make sam` (reproducible mode, one torch thread a command; crf with
``--workers`` = the cores, sam-pseudo with the Makefile's SAM_PSEUDO_* settings: the toy SAM of world 20, 16 points a
side, thresholds 0.4). As there, the CRF runs once: `crf --start-out` writes sam-pseudo's start labels beside its
masks and `sam-pseudo --start FOLDER` reads them (``crf_start_out``: that crf run's CPU time, its masks' digest
checked against plain crf's); ``--own-crf`` times sam-pseudo computing its start labels itself (``--start crf``,
the CRF counted twice). The ratio divides by plain crf's CPU-seconds an image (without --start-out, the smaller).
The issue's bar: sam-pseudo at most 5 times the CRF's CPU-seconds an image. ``masks_sha256``
digests the masks' names and labels (not the PNGs' text chunks, which name the run): the same digest before and after a
change of the generator's code is the proof that its masks did not move.

    python bench/bench_sam_pseudo.py --profile 30 > bench/results/sam_pseudo_profile.json

``--profile N`` runs neither command: the generator alone, in this process (reproducible mode, one thread), on the
CAM folder's first N images, its CPU-seconds an image and where they go (cProfile's own time of each function).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the Makefile's SAM_PSEUDO_MODEL, SAM_PSEUDO_WEIGHTS and SAM_PSEUDO_ARGS
SAM_ARGS = ("--masks", "sam", "--sam-model", "toy", "--sam-weights",
            str(ROOT / "vpltool/assets/toy-sam-world20/model.safetensors"), "--points-per-side", "16",
            "--pred-iou-thresh", "0.4", "--stability-score-thresh", "0.4")


def cpu_run(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``: its wall seconds and CPU seconds (user + system of it and every process it waited for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr.decode()[-3000:]}")
    return {"wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def folder_digest(folder: Path) -> tuple[int, str]:
    """(PNG count, sha256 of every mask's name and labels in name order): the pixels, not the file's bytes, whose
    text chunks name the run (its record, which holds the weights' path)."""
    from vpltool import io

    h, n = hashlib.sha256(), 0
    for png in sorted(folder.glob("*.png")):
        h.update(png.name.encode() + b"\0" + io.read_mask(png).tobytes())
        n += 1
    return n, h.hexdigest()


def generator_profile(cams: Path, n: int, top: int = 14) -> dict:
    """sam-pseudo's generator (the demo's settings) on the first ``n`` images of ``cams``' dataset, after one
    warm-up image: CPU-seconds an image, and the ``top`` functions by their own CPU time (share of the total)."""
    import cProfile
    import pstats

    import numpy as np
    import torch
    from PIL import Image

    from vpltool import io
    from vpltool.data import open_recorded
    from vpltool.models.dense.corrclip.regions import region_source

    torch.set_num_threads(1)
    settings = {"points_per_side": 16, "pred_iou_thresh": 0.4, "stability_score_thresh": 0.4}  # SAM_ARGS'
    generator = region_source("sam", "toy", SAM_ARGS[SAM_ARGS.index("--sam-weights") + 1], settings=settings,
                              method="sam-pseudo")
    ids, items = io.cam_items(cams, open_recorded(cams))
    images = [np.asarray(Image.open(items[i].image).convert("RGB")) for i in ids[:n + 1]]
    generator.records(images[0])
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(lambda: [generator.records(image) for image in images[1:]])
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive calls, own, cumulative, callers)}
    total = sum(own for _, _, own, _, _ in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    where = {key: f"{Path(key[0]).parent.name}/{Path(key[0]).name}:{key[1]}({key[2]})" if key[0] != "~" else key[2]
             for key, _ in rows}  # segment-anything's utils/amg.py and ours share a file name
    per = len(images) - 1
    return {"images": per, "cpu_s_per_image": round(total / per, 4),
            "own_time": [{"function": where[key], "cpu_s_per_image": round(own / per, 4),
                          "share": round(own / total, 3)} for key, (_, _, own, _, _) in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cams", type=Path, default=ROOT / "runs/demo/caa/cams_vision",
                    help="a finished `cam` folder of the demo (default: runs/demo/caa/cams_vision)")
    ap.add_argument("--shard", default=None, help="i/n: every n-th image from the i-th (both commands)")
    ap.add_argument("--profile", type=int, default=None, metavar="N",
                    help="only profile the generator in this process on the first N images (no commands run)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="crf --workers (the Makefile's: cores)")
    ap.add_argument("--own-crf", action="store_true",
                    help="sam-pseudo --start crf (its own CRF, as before crf --start-out) instead of the start "
                         "labels crf --start-out wrote")
    benchlib.add_common_args(ap, "unused (the demo's CAMs are the input)", "cpu (the demo's)")
    args = ap.parse_args()
    env = {**os.environ, "VPLTOOL_REPRODUCIBLE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    vpl = [sys.executable, "-m", "vpltool"]
    shard = ["--shard", args.shard] if args.shard else []
    if args.profile:
        os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        import vpltool  # noqa: F401  (reproducible mode, from VPLTOOL_REPRODUCIBLE, before torch loads)

        print(json.dumps({"benchmark": "sam-pseudo generator profile", "machine": benchlib.machine("cpu"),
                          "cams": str(args.cams), "mode": "reproducible (VPLTOOL_REPRODUCIBLE=1), one thread",
                          "generator": generator_profile(args.cams, args.profile)}, indent=1))
        return
    start = "crf (sam-pseudo's own CRF)" if args.own_crf else "crf_start_out's folder (the CRF counted once, in crf)"
    result = {"benchmark": "sam-pseudo", "machine": benchlib.machine("cpu"), "cams": str(args.cams),
              "shard": args.shard, "mode": "reproducible (VPLTOOL_REPRODUCIBLE=1), OMP_NUM_THREADS=1",
              "start_labels": start}
    with tempfile.TemporaryDirectory() as tmp:
        crf = [*vpl, "crf", str(args.cams), "-o", f"{tmp}/crf", "--workers", str(args.workers)]
        runs = {"crf": (crf, "crf"), "crf_start_out": ([*crf[:6], f"{tmp}/crf2", *crf[7:], "--start-out",
                                                         f"{tmp}/start"], "crf2")} if not args.own_crf else {
            "crf": (crf, "crf")}
        runs["sam_pseudo"] = ([*vpl, "sam-pseudo", str(args.cams), "-o", f"{tmp}/sam", *SAM_ARGS, "--device", "cpu",
                               *(() if args.own_crf else ("--start", f"{tmp}/start"))], "sam")
        for name, (cmd, folder) in runs.items():
            if args.shard and name == "crf_start_out":  # sam-pseudo --start reads a finished folder: every image
                cmd = [*cmd, "--overwrite"]
            else:
                cmd = [*cmd, "--overwrite", *shard]
            timing = cpu_run(cmd, env)
            images, digest = folder_digest(Path(tmp) / folder)
            result[name] = {**timing, "images": images, "cpu_s_per_image": round(timing["cpu_s"] / images, 4),
                            "masks_sha256": digest, "command": " ".join(cmd[2:])}
        if not args.own_crf:
            result["crf_start_out"]["start_sha256"] = folder_digest(Path(tmp) / "start")[1]
            result["crf_start_out"]["same_masks_as_crf"] = None if args.shard else (  # a shard's crf: fewer masks
                result["crf_start_out"]["masks_sha256"] == result["crf"]["masks_sha256"])
    result["ratio"] = round(result["sam_pseudo"]["cpu_s_per_image"] / result["crf"]["cpu_s_per_image"], 2)
    result["bar"] = 5.0
    result["within_bar"] = result["ratio"] <= result["bar"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

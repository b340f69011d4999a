"""Speed of ``--dense ov-stitcher`` against OV-Stitcher's own code, side by side; prints ONE JSON object.

    python bench/bench_ov_stitcher.py --ref OV-Stitcher --dino-ref DINO --work DIR [--images 12] [--rounds 3]
        [--short-side 224] [--slide-crop 224] [--slide-stride 112]

The same set-up as ``parity/ov_stitcher_parity.py`` (its random ViT-B/16 and DINO ViT-B/8 weights, the parity
photos and region-mask files, in ``--work``). Two processes stay up, one thread each, fp32: the reference
(``ov_stitcher_ref_runner.py --serve``: its segmentor built once, its class-biased text encoded) and vpltool (this
file with ``--serve``: `segment`'s method resolved and loaded once, the same query words encoded with
``--templates ov-stitcher``). Photo by photo they are asked in turn, the order swapped every other pair, to run one
photo's whole prediction and say its CPU-seconds (``time.process_time``): the reference's
``OVStitcherSegmentation.predict`` (its region file read, its windows, both models, the map correction) and
vpltool's `segment` path (:func:`corrclip_parity.vpltool_outputs`: the region file read, the method's hooks, the
shared probabilities, its ``postprocess``). Loading and text are not timed on either side. A pair's ratio is
``vpltool / reference`` on the same photo moments apart, so a shared machine's load moves both sides alike; the
verdict is the median over every pair of every round, against the goal 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "parity"), str(HERE)]

GOAL = 0.8


def serve(args) -> None:
    """vpltool's side: the method loaded once, then per photo index read from stdin its `segment` path timed, one
    JSON line each, until ``quit``."""
    import numpy as np
    import ov_stitcher_parity as op
    import torch
    from corrclip_parity import setup, vpltool_outputs

    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names, resolve_templates

    torch.set_num_threads(1)
    s = setup(args.work, args.images, 1)
    meta = json.loads((args.ref_out / "meta.json").read_text())
    method = op.ov_stitcher_method(args, s)
    bb = method.load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = meta["query_words"], torch.tensor(meta["query_idx"])
    with torch.no_grad():
        text = encode_names(bb, words, resolve_templates(method.cfg.templates))
    inputs = [torch.load(args.ref_out / f"photo_{i:03d}.pt")["input"] for i in range(args.images)]
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        i = int(line)
        start = time.process_time()
        ids = torch.from_numpy(np.load(s["masks"][i])["instance_mask"])
        vpltool_outputs(bb, inputs[i], text, idx, int(idx.max()) + 1, ids, tuple(meta["photos"][i]["ori_shape"]),
                        method.settings)
        print(json.dumps({"i": i, "cpu_seconds": time.process_time() - start}), flush=True)


class Worker:
    """A serving process: ``ask(i)`` -> its CPU-seconds for photo ``i``."""

    def __init__(self, cmd: list[str], env: dict):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"{self.proc.args[1]} stopped (exit {self.proc.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, i: int) -> float:
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()
        return float(self._read()["cpu_seconds"])

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="the OV-Stitcher clone (parity/ov_stitcher_parity.py's docstring)")
    ap.add_argument("--dino-ref", type=Path, help="a clone of facebookresearch/dino")
    ap.add_argument("--work", type=Path, required=True, help="the parity's work folder (made here when missing)")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--short-side", type=int, default=224)
    ap.add_argument("--slide-crop", type=int, default=224)
    ap.add_argument("--slide-stride", type=int, default=112)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ref-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    if args.serve:
        serve(args)
        return
    import ov_stitcher_parity as op
    from corrclip_parity import setup

    import benchlib

    args.ref, args.dino_ref, args.threads, args.dino_commit = args.ref.resolve(), args.dino_ref.resolve(), 1, "7c446df"
    s = setup(args.work, args.images, 1)
    ref_out = args.work / f"ref_{args.short_side}_{args.slide_crop}_{args.slide_stride}"
    op.run_reference(args, s, ref_out)  # the parity's run (reused when there): its inputs and query words
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": ""}
    ref = Worker([sys.executable, str(ROOT / "parity" / "ov_stitcher_ref_runner.py"), "--serve", "--clone",
                  str(args.ref), "--dino-clone", str(args.dino_ref), "--dino-weights", str(s["dino"]),
                  "--clip-weights", str(s["pt"]), "--model-config", str(Path(s["config_dir"]) / f"{s['name']}.json"),
                  "--masks", str(s["masks"][0].parent), "--out", str(args.work / "bench_serve"), "--threads", "1",
                  "--short-side", str(args.short_side), "--overrides", json.dumps(op.overrides(args)),
                  *map(str, s["photos"])], env)
    ours = Worker([sys.executable, __file__, "--serve", "--work", str(args.work), "--ref-out", str(ref_out),
                   "--images", str(args.images), "--short-side", str(args.short_side), "--slide-crop",
                   str(args.slide_crop), "--slide-stride", str(args.slide_stride)], env)
    pairs = []
    for r in range(args.rounds):
        for i in range(args.images):
            first_ref = (r + i) % 2 == 0
            a = ref.ask(i) if first_ref else ours.ask(i)
            b = ours.ask(i) if first_ref else ref.ask(i)
            theirs, mine = (a, b) if first_ref else (b, a)
            pairs.append({"round": r, "photo": i, "reference": round(theirs, 3), "vpltool": round(mine, 3),
                          "ratio": round(mine / theirs, 4)})
    ref.close()
    ours.close()
    sums = {side: [sum(p[side] for p in pairs if p["round"] == r) for r in range(args.rounds)]
            for side in ("reference", "vpltool")}
    ratio = statistics.median(p["ratio"] for p in pairs)
    result = {"benchmark": "ov_stitcher", "machine": benchlib.machine("cpu"), "threads": 1, "precision": "fp32",
              "reference": {"repo": op.REPO, "commit": op.COMMIT, "config_commit": op.CONFIG_COMMIT},
              "model": s["name"], "proxy": op.PROXY_MODEL, "images": args.images, "rounds": args.rounds,
              "run": {"short_side": args.short_side, "slide_crop": args.slide_crop,
                      "slide_stride": args.slide_stride},
              "median_cpu_seconds_per_photo": {side: round(statistics.median(p[side] for p in pairs), 2)
                                               for side in ("reference", "vpltool")},
              "ratio_of_round_sums": [round(m / t, 3) for m, t in zip(sums["vpltool"], sums["reference"])],
              "ratio_median": round(ratio, 3), "goal": GOAL, "goal_met": bool(ratio <= GOAL), "pairs": pairs}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

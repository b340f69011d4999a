"""What the class count costs ``--dense sam3`` and ``--dense activesam`` on the CPU, beside ActiveSAM's own code, and
what ``seg.embed(photo)`` saves; prints ONE JSON object (and writes it with ``--out``).

    python bench/bench_sam3_classes.py --ref ActiveSAM [--work DIR] [--counts 1,21,150] [--methods sam3,activesam]
        [--door-only] [--arch reduced|full]

Per method and class count, ``bench_activesam.py`` (its own process pair, one thread each, the reference's and
vpltool's CPU-seconds per photo in alternating pairs, the outputs compared) on the parity's reduced SAM 3 with the
first N classes of ADE20K's 150 (``activesam:ade20k``, the reference's configs/cls_ade20k.txt), one parity photo,
ActiveSAM's own settings (``--max-active`` 40, buckets of 32, its 0.3 confidence; the "SAM 3" row at the parity's
0.44, since the random model's instance scores lie below the row's 0.5). A count the reference cannot run is
recorded with its error's last line.

Then the Python door, vpltool alone: ``seg = vpltool.segmenter(method, ...)`` on the same weights, the CPU-seconds of
``seg.embed(photo)``, of ``seg(emb, names)`` and of a fresh ``seg(photo, names)`` for each count (one thread, the
median of ``--repeats``), and the share ``seg(emb, names) / seg(photo, names)``. ``--arch full``: SAM 3 at Meta's
own sizes in place of the reduced one (``activesam_parity.setup``; its ``sam3.pt`` in ``--work``, written there
when missing: 3.4 GB), for the door's figures (``--door-only``) at full size.
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
sys.path[:0] = [str(HERE), str(ROOT / "parity")]

SETTINGS = {"sam3": {"prob_thd": 0.2, "confidence_threshold": 0.44}, "activesam": {"prob_thd": 0.02}}
CLASS_SET = "activesam:ade20k"


def side_by_side(args, method: str, count: int) -> dict:
    """One ``bench_activesam.py`` run; its JSON's figures, or the error that stopped it."""
    out = args.work / f"classes_{method}_{count}.json"
    cmd = [sys.executable, str(HERE / "bench_activesam.py"), "--ref", str(args.ref), "--method", method, "--work",
           str(args.work), "--arch", args.arch, "--images", "1", "--pairs", str(args.pairs), "--class-set", CLASS_SET,
           "--classes", str(count), "--settings", json.dumps(SETTINGS[method]), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if run.returncode:
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        return {"error": next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "?")}
    r = json.loads(out.read_text())
    return {k: r[k] for k in ("words", "cpu_seconds_median", "ratio_median", "unit_rss_peak_mib_max", "outputs")}


def door(args, method: str, counts: list[int]) -> dict:
    """The Python door's CPU-seconds (module docstring), in this process."""
    import numpy as np
    import torch
    from PIL import Image

    import vpltool
    from vpltool.data.class_files import read_class_file

    torch.set_num_threads(1)
    photo = np.asarray(Image.open(sorted((args.work / "voc" / "JPEGImages").glob("*.jpg"))[0]).convert("RGB"))
    knobs = {"preview_resolution": 224} if method == "activesam" else {"confidence_threshold": 0.44}
    seg = vpltool.segmenter(method, sam3_weights=str(args.work / "sam3.pt"), device="cpu",
                            prob_threshold=SETTINGS[method]["prob_thd"], **knobs)
    lines = read_class_file(CLASS_SET)

    def cpu(fn) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return round(statistics.median(times), 3)

    emb = seg.embed(photo)
    out = {"embed_cpu_s": cpu(lambda: seg.embed(photo))}
    for n in counts:
        names = ["|".join(line) for line in lines[:n]]
        seg(photo, names)  # the words' text and ActiveSAM's context bank, made once per class list: not timed
        fresh, kept = cpu(lambda: seg(photo, names)), cpu(lambda: seg(emb, names))
        out[str(n)] = {"fresh_cpu_s": fresh, "embedded_cpu_s": kept, "share": round(kept / fresh, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of VILA-Lab/ActiveSAM (41cad43)")
    ap.add_argument("--work", type=Path, default=Path("runs/parity-activesam"), help="the parity's files")
    ap.add_argument("--counts", default="1,21,150")
    ap.add_argument("--methods", default="sam3,activesam")
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--door-only", action="store_true", help="only the Python door's figures (no side-by-side runs)")
    ap.add_argument("--arch", choices=("reduced", "full"), default="reduced",
                    help="the parity's reduced SAM 3, or Meta's sizes (full) [default: reduced]")
    args = ap.parse_args()
    args.work, args.ref = args.work.resolve(), args.ref.resolve()
    import activesam_parity

    import benchlib

    activesam_parity.setup(args.work, 3, args.arch)
    os.environ["NLTK_DATA"] = str(args.work / "nltk_data")
    counts = [int(c) for c in args.counts.split(",")]
    start = time.perf_counter()
    result = {"benchmark": "sam3-classes",
              "what": "CPU-seconds of one photo against the number of classes (the first N of ADE20K's 150), "
                      "vpltool beside ActiveSAM's own code, and seg.embed's share of a fresh call",
              "command": " ".join(["python", "bench/bench_sam3_classes.py", *sys.argv[1:]]),
              "model": ("reduced SAM 3 (parity/activesam_parity.py reduced_config)" if args.arch == "reduced" else
                        "full-size SAM 3 (Meta's sizes: sam3_weights.meta_config)") + ", seeded random, Meta's layout",
              "machine": benchlib.machine("cpu"), "threads": 1, "precision": "fp32", "settings": SETTINGS,
              "reference": {"repo": "VILA-Lab/ActiveSAM", "commit": activesam_parity.commit_of(args.ref)}}
    for method in args.methods.split(","):
        pairs = {} if args.door_only else {"side_by_side": {str(n): side_by_side(args, method, n) for n in counts}}
        result[method] = {**pairs, "python_door": door(args, method, counts)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""vpltool's side of ``bench_activesam.py`` in one process, its units in an order you give, each unit's CPU-seconds,
minor page faults and the load printed to stderr: whether a photo costs more the first time the process sees it
than the next (a first-sight cost) or every time (its content).

    python bench/sam3_photo_units.py --order 0,1,0,1,2,2 [bench_activesam's arguments: --ref ... --work ...
        --method sam3 --arch full --images 3 --confidence-threshold 0.15 --prob-threshold 0.1]

``--order``: the parity photos' indices (0 is ``img_000``), one unit each, the first the warm-up. The worker is
``bench_activesam.vpltool_worker`` as the bench builds it (one thread, fp32, the bench's environment variables set
here, the bench's settings: the parity's ``activesam_parity.OVERRIDES`` of ``--method``, the thresholds given over
them), its heap trimmed once built as the bench's is. Per unit: CPU-seconds, user and system seconds, minor faults.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "parity")]
import activesam_parity as ap  # noqa: E402
import bench_activesam as ba  # noqa: E402


def run(order: list[int]) -> None:
    """Replace the bench worker's loop by ``order``'s units, each a JSON line: photo, CPU-s, user, sys, faults, load."""
    pick = ba.photos

    def photos(work, images, photo=None):
        files = pick(work, images, photo)
        return [files[i] for i in order]

    def units(args, unit, *_) -> None:  # (finish's files and state: the order is the photos' own)
        from sidebyside import trim_heap

        trim_heap()
        for i in order:
            before, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
            unit()
            after = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"photo": i, "cpu": round(time.process_time() - cpu, 2),
                              "user": round(after.ru_utime - before.ru_utime, 2),
                              "sys": round(after.ru_stime - before.ru_stime, 2),
                              "minor_faults": after.ru_minflt - before.ru_minflt,
                              "load": round(os.getloadavg()[0], 1)}), file=sys.stderr, flush=True)

    ba.photos, ba.finish = photos, units


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = argv.index("--order")
    order = [int(v) for v in argv[at + 1].split(",")]
    del argv[at:at + 2]
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    os.environ.update(PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    method = argv[argv.index("--method") + 1] if "--method" in argv else "activesam"
    settings = dict(ap.OVERRIDES[method])  # the bench's settings (the parity's), the thresholds given over them
    for flag, key in (("--prob-threshold", "prob_thd"), ("--confidence-threshold", "confidence_threshold")):
        if flag in argv:
            at = argv.index(flag)
            settings[key] = float(argv[at + 1])
            del argv[at:at + 2]
    work = Path(argv[argv.index("--work") + 1]).resolve()
    settings["classname_path"] = str(ba.class_file(work, 21))
    run(order)
    ba.main([*argv, "--worker", "vpltool", "--overrides", json.dumps(settings)])


if __name__ == "__main__":
    main()

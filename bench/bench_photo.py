"""What does one camera photo cost `vpltool segment` with its defaults? Peak RSS and CPU-seconds per megapixel.

    python bench/bench_photo.py [--sizes 1.5,6,12,24,48] [--classes cat,dog] [--quick]

Each photo is scikit-image's ``chelsea`` (a cat, 451 x 300) resized with Pillow (bicubic) to the size asked
(3:2, e.g. 24 MP = 6000 x 4000) and saved as a JPEG (quality 90), then segmented by ``vpltool segment PHOTO
--classes cat,dog`` as its own process with segment's defaults (NACLIP with PAMR, 80 templates, the VOC background
words: 27 queries) on the toy CLIP (``--model vpltool-toy --pretrained none``: the same work after the model as
ViT-B/16, a smaller model). Peak RSS and user + sys CPU seconds come from ``os.wait4``; the start-up (Python,
torch, the model) is in every row, so the smallest photo's CPU-s per MP is the highest. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine

VPL = str(Path(sys.executable).parent / "vpltool")


def photo(path: Path, megapixels: float) -> tuple[int, int]:
    """A 3:2 JPEG of ``megapixels`` at ``path``; its ``(width, height)``."""
    from PIL import Image
    from skimage import data

    height = round((megapixels * 1e6 / 1.5) ** 0.5)
    width = round(height * 1.5)
    Image.fromarray(data.chelsea()).resize((width, height), Image.BICUBIC).save(path, quality=90)
    return width, height


def run(photo_path: Path, out: Path, classes: str, extra: list[str]) -> dict:
    """``vpltool segment`` on one photo as its own process: exit code, wall, CPU and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([VPL, "segment", str(photo_path), "--classes", classes, "-o", str(out), "--model",
                             "vpltool-toy", "--pretrained", "none", "--device", "cpu", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {"exit": code, "wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            **({"stderr": stderr.decode()[-500:]} if code else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1.5,6,12,24,48", help="megapixels, comma-separated")
    ap.add_argument("--classes", default="cat,dog")
    ap.add_argument("--extra", default="", help="more segment options, e.g. '--pamr-steps 0'")
    ap.add_argument("--quick", action="store_true", help="0.3 MP only: checks the script")
    args = ap.parse_args()
    sizes = [0.3] if args.quick else [float(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in sizes:
            path = Path(tmp) / f"photo_{mp}mp.jpg"
            width, height = photo(path, mp)
            row = {"megapixels": round(width * height / 1e6, 2), "width": width, "height": height,
                   **run(path, Path(tmp) / f"out_{mp}", args.classes, args.extra.split())}
            row["cpu_s_per_mp"] = round(row["cpu_s"] / row["megapixels"], 2)
            row["rss_gib_per_mp"] = round(row["peak_rss_gib"] / row["megapixels"], 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"machine": machine(), "command": f"vpltool segment PHOTO --classes {args.classes} "
                      f"--model vpltool-toy --pretrained none --device cpu {args.extra}".strip(),
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

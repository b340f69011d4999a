"""Size and wall time of `vpltool report`: on the demo run, and on a synthetic run of VOC train_aug's size (10,582
images): one JSON object.

    python bench/bench_report.py [--demo runs/demo] [--images 10582] [--side 448] [--workers 0] [--quick]

The synthetic run is fabricated through vpltool's own writers: a folder dataset of ``--images`` scenes of the demo
world rendered at ``--side`` pixels (448² ~ a VOC photo's 187,500 pixels; 64 distinct scenes, hard-linked under
10,582 ids), two `cam` folders (text and vision: smooth random maps on the 16-pixel patch grid, as `cam` stores
them), and a mask folder (the ground truth shifted by 8 pixels, written by ``io.write_mask``), each with its
stage record. Only `vpltool report` is timed, as its own process (wall seconds and peak memory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DISTINCT = 64  # scenes rendered; the rest are hard links to them under new ids
PATCH = 16  # the patch grid `cam` stores maps on


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy
        shutil.copyfile(src, dst)


def fabricate_world(folder: Path, images: int, side: int) -> Path:
    """A folder dataset (images/, masks/, labels.csv, classes.txt, splits/train_aug.txt) of ``images`` scenes."""
    from vpltool.demo.make_world import write_dataset
    from vpltool.demo.scenes import SceneConfig

    src = write_dataset(folder / "scenes", n_train=min(DISTINCT, images), n_val=0, seed=0, cfg=SceneConfig(size=side))
    world = folder / "world"
    (world / "images").mkdir(parents=True)
    (world / "masks").mkdir()
    (world / "splits").mkdir()
    shutil.copyfile(src / "classes.txt", world / "classes.txt")
    rows = dict(line.split(",", 1) for line in (src / "labels.csv").read_text().splitlines()[1:])
    sources = sorted(rows)
    ids, lines = [], ["id,labels"]
    for i in range(images):
        base = sources[i % len(sources)]
        item = f"synthetic_{i:06d}"
        _link(src / "images" / f"{base}.png", world / "images" / f"{item}.png")
        _link(src / "masks" / f"{base}.png", world / "masks" / f"{item}.png")
        ids.append(item)
        lines.append(f"{item},{rows[base]}")
    (world / "labels.csv").write_text("\n".join(lines) + "\n")
    (world / "splits" / "train_aug.txt").write_text("\n".join(ids) + "\n")
    return world


def fabricate_run(run: Path, world: Path, seed: int = 0) -> int:
    """``run/cams_text``, ``run/cams_vision`` (cam) and ``run/pseudo`` (crf) for every image of ``world``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.runtime.numerics import run_numerics

    dataset = open_dataset(world, "train_aug")
    ident = {"dataset": dataset.identity()}
    rng = np.random.default_rng(seed)
    ids = [it.id for it in dataset.items]
    for name, source in (("cams_text", "text"), ("cams_vision", "vision")):
        # a stand-in file identity (no prototypes file exists in this synthetic run; records require a digest)
        digest = hashlib.sha256(f"synthetic {source} prototypes".encode()).hexdigest()
        params = {"refine": "caa", "prototypes": {"path": f"{source}.safetensors", "sha256": digest, "source": source}}
        for item in dataset.items:
            h, w = io.image_size(item.image)
            noise = torch.from_numpy(rng.random((max(len(item.labels), 1), 4, 4), dtype=np.float32))
            maps = F.interpolate(noise[None], size=(h // PATCH, w // PATCH), mode="bilinear")[0, : len(item.labels)]
            io.write_cam(io.cam_path(run / name, item.id), maps, item.labels, image_size=(h, w),
                         classes=dataset.classes, params=params, id=item.id,
                         numerics=run_numerics())
        io.write_stage_record(run / name, "cam", params=params, inputs=ident, count=len(ids), ids=ids,
                              numerics=run_numerics())
    for item in dataset.items:
        io.write_mask(io.mask_path(run / "pseudo", item.id), np.roll(io.read_mask(item.gt), 8, axis=1))
    io.write_stage_record(run / "pseudo", "crf", params={"confidence": 0.95}, inputs=ident, count=len(ids), ids=ids,
                          numerics=run_numerics())
    return len(ids)


# runs a command and prints the largest peak RSS (KiB) of its processes: started from this small process, not from
# the benchmark's (whose torch-sized memory a forked child's peak would count as its own)
PEAK = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")


def time_report(run: Path, out: Path, workers: int) -> dict:
    """`vpltool report RUN -o OUT` as its own process: seconds, the peak memory of its largest process (the main
    one or a worker), bytes and files written."""
    cmd = [sys.executable, "-m", "vpltool", "report", str(run), "-o", str(out), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *cmd], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(int(done.stdout.split()[-1]) / 1024, 1),
            "bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def page_ready_ms(index: Path) -> dict | None:
    """How long headless Chromium takes from navigation to the first page of rows on screen (``VPL.readyMs``),
    and the rows it then holds; None without selenium and a system Chromium (the test's browser)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    with tempfile.TemporaryDirectory(prefix="vpltool-chromium-") as profile:
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}"):
            options.add_argument(arg)
        chrome = webdriver.Chrome(service=Service(driver), options=options)
        try:
            chrome.get(index.as_uri())
            ready = WebDriverWait(chrome, 60).until(lambda d: d.execute_script("return window.VPL.readyMs"))
            rows = chrome.execute_script("return VPL.rows[0].length")
        finally:
            chrome.quit()
    return {"ready_ms": round(ready), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=ROOT / "runs" / "demo", help="a finished demo run (skipped if absent)")
    ap.add_argument("--images", type=int, default=10582, help="images of the synthetic run (VOC train_aug: 10,582)")
    ap.add_argument("--side", type=int, default=448, help="side of the synthetic scenes, pixels")
    ap.add_argument("--workers", type=int, default=0, help="report --workers (0: one per core)")
    ap.add_argument("--device", default="cpu", help="recorded only: the report runs on the CPU")
    ap.add_argument("--quick", action="store_true", help="smoke test: 40 images of 96 px, no demo run")
    args = ap.parse_args()
    if args.quick:
        args.images, args.side = 40, 96
    result = {"benchmark": "report", "machine": benchlib.machine("cpu"), "quick": args.quick,
              "workers": args.workers or os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="vpltool-bench-report-") as tmp:
        tmp = Path(tmp)
        if (args.demo / "metrics.json").is_file() and not args.quick:
            where = args.demo.resolve()
            name = str(where.relative_to(ROOT)) if ROOT in where.parents else where.name  # no machine paths
            result["demo"] = {"run": name, **time_report(args.demo, tmp / "demo-report", args.workers)}
        world = fabricate_world(tmp, args.images, args.side)
        images = fabricate_run(tmp / "run", world)
        synthetic = time_report(tmp / "run", tmp / "run" / "report", args.workers)
        result["synthetic"] = {"images": images, "side": args.side, "columns": 3, **synthetic,
                               "images_per_s": round(images / synthetic["seconds"], 1),
                               "page": page_ready_ms(tmp / "run" / "report" / "index.html")}
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    result["peak_memory"] = [{"stage": f"report ({name} run)", "rss_mib": result[name]["peak_rss_mib"],
                              "cuda_mib": None, "scope": "largest process (main or worker)"}
                             for name in ("demo", "synthetic") if name in result]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

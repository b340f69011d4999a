"""What the dataset check of every stage costs (`data.check_recorded`, issue 38): the demo world's splits.

    python bench/bench_dataset_check.py [--train 500] [--val 200] [--repeats 100] [--quick]

Renders a demo world (the Makefile's 500 train + 200 val scenes), records each split as an `extract` record does
(``Dataset.inputs``), then times, warm (the file cache holds the folders), what a stage pays to reopen a folder's
dataset: ``open_dataset`` (it paid that before the check) and ``check_recorded`` (the check itself: one ``stat`` per
image, each image's bytes hashed (sha256) once per process, the digests compared): ``check_recorded_first`` with
the per-process cache of image digests emptied before each call (what the first check of a command pays: every
image read and hashed, from the file cache), ``check_recorded`` warm (a later check in the same command). Minimum
and median of ``--repeats`` calls, in milliseconds, and the images' total bytes. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import machine


def timed_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"min_ms": round(min(times), 2), "median_ms": round(statistics.median(times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="40 + 10 scenes, 10 repeats (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.train, args.val, args.repeats = 40, 10, 10

    from vpltool import io
    from vpltool.data import check_recorded, common, open_dataset
    from vpltool.demo.make_world import write_dataset
    from vpltool.runtime.numerics import run_numerics

    out = {"machine": machine(), "repeats": args.repeats, "splits": {}}
    with tempfile.TemporaryDirectory(prefix="vpltool-dataset-check-") as tmp:
        world = write_dataset(Path(tmp) / "world", n_train=args.train, n_val=args.val, seed=0)
        for split in ("train", "val"):
            dataset = open_dataset(world, split)
            folder = Path(tmp) / f"features_{split}"
            folder.mkdir()
            io.write_stage_record(folder, "extract", params={}, inputs=dataset.inputs(), count=len(dataset.items),
                                  numerics=run_numerics())
            out["splits"][split] = {
                "images": len(dataset.items),
                "open_dataset": timed_ms(lambda: open_dataset(world, split), args.repeats),
                "image_bytes": sum(item.image.stat().st_size for item in dataset.items),
                "check_recorded_first": timed_ms(lambda: (common._CONTENT_CACHE.clear(),
                                                          check_recorded(folder, dataset)), args.repeats),
                "check_recorded": timed_ms(lambda: check_recorded(folder, dataset), args.repeats),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

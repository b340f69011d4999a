"""Run SAM_WSSS's OWN merge (cskyl/SAM_WSSS, ``processor.Processor.generate_merged_masks`` and
``merge/max_iou*.py``) from a clone: the reference half of ``sam_wsss_parity.py``.

    python sam_wsss_ref_runner.py --clone DIR --pseudo START_DIR --sam MASKS_DIR --out OUT_DIR \\
        --methods max_iou_imp2,max_iou_imp,max_iou [--classes 21]

It imports nothing from vpltool: run it as its own process. The clone has no licence: it is run from where it lies,
never copied or edited. Its ``processor`` imports ``util.vis`` (plots and csv tables: matplotlib and pandas, which the
merge never reaches), stubbed here (:func:`refstubs.stub_module`); every other import is the clone's own. The inputs
are the clone's own formats: ``START_DIR/<id>.png`` (the CAM labels, 0..C-1) and ``MASKS_DIR/<id>/<k>.png`` (SAM's
masks, 255 inside, as segment-anything's ``scripts/amg.py`` writes them). Per method, the clone's
``Processor(args).generate_merged_masks()`` writes its PNGs (multithreaded, as its default), moved to
``OUT_DIR/<method>/``; ``OUT_DIR/seconds.json`` holds each method's wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refstubs import in_clone, stub_module  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clone", type=Path, required=True)
    parser.add_argument("--pseudo", type=Path, required=True)
    parser.add_argument("--sam", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="max_iou_imp2,max_iou_imp,max_iou")
    parser.add_argument("--classes", type=int, default=21)
    args = parser.parse_args()
    # util/vis.py's plotting and tables: never reached by generate_merged_masks
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.image", "pandas"):
        stub_module(name)
    clone = args.clone.resolve()
    seconds = {}
    with in_clone(clone):
        import processor

        assert Path(processor.__file__).resolve().parent == clone, processor.__file__
        for method in args.methods.split(","):
            ns = argparse.Namespace(method=method, number_class=args.classes, image_list=None,
                                    pseudo_path=str(args.pseudo.resolve()), sam_path=str(args.sam.resolve()),
                                    gt_dir=None, images_path=None, vis_sample=None, vis_worst=False, vis_best=False,
                                    multithread=True)
            proc = processor.Processor(ns)
            start = time.perf_counter()
            proc.generate_merged_masks()
            seconds[method] = time.perf_counter() - start
            target = args.out / method
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(proc.save_path, target)
    (args.out / "seconds.json").write_text(json.dumps(seconds))


if __name__ == "__main__":
    main()

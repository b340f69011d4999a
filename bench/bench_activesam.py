"""``--dense sam3`` and ``--dense activesam`` against ActiveSAM's own code, side by side; prints ONE JSON object.

    python bench/bench_activesam.py --ref ActiveSAM --method activesam [--work DIR] [--images 3] [--pairs 6]

The set-up of ``parity/activesam_parity.py`` (made in ``--work`` when missing, reused when there): its reduced SAM 3
with seeded random weights in Meta's layout, the parity photos, its small WordNet, ``configs/cfg_voc21.py``'s 21
words and the parity's settings (:data:`activesam_parity.OVERRIDES`: the preview prunes to 8 words, buckets of 4).
Two processes stay up (``sidebyside.py``), one thread each, fp32 on the CPU, each built once (the model loaded, the
words' text and ActiveSAM's context bank made: not timed):

* the reference (``--worker reference``; it imports nothing from vpltool): ``activesam_ref_runner.build``, the
  clone's ``ActiveSAM`` (or, ``--method sam3``, ``FrozenSAM3Segmentor`` with the row's two methods as read); a unit is
  its ``predict`` on the next photo (it opens the file itself);
* vpltool (``--worker vpltool``): the method resolved and loaded as `segment` does; a unit is the photo decoded,
  the method's ``dense_logits`` and ``probabilities`` hooks (`segment`'s path from the photo to its labels).

A unit is one photo, the photos taken in turn. One warm-up unit each, then ``--pairs`` pairs, the order swapped
every pair; per unit the process's CPU-seconds. The figure is the median over the pairs of vpltool's CPU-seconds over
the reference's, against the goal 0.8; the last unit's per-word scores and labels of the two sides are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "parity")]
from sidebyside import claim_stdout, race, serve  # noqa: E402

GOAL = 0.8


def photos(work: Path, images: int) -> list[Path]:
    return sorted((work / "voc" / "JPEGImages").glob("*.jpg"))[:images]


def reference_worker(args) -> None:
    import activesam_ref_runner as rr
    import torch
    from dense_ref_runner import Sample
    from PIL import Image
    from refstubs import in_clone

    torch.set_grad_enabled(False)
    rr.install_stubs()
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    opts = argparse.Namespace(clone=args.ref, weights=args.work / "sam3.pt", method=args.method,
                              overrides=args.overrides)
    arch = json.loads((args.work / "arch.json").read_text())
    with in_clone(args.ref):
        rr.reduced_builders(arch)
        seg, _ = rr.build(opts, arch, rr.read_config(args.ref, "configs/cfg_voc21.py"))
        files, state = photos(args.work, args.images), {"k": 0}

        def unit():
            path = files[state["k"] % len(files)]
            state["k"] += 1
            w, h = Image.open(path).size
            sample, seen = Sample({"ori_shape": (h, w), "img_path": str(path)}), {}
            inner = seg._inference_single_view

            def single(image):
                seen["scores"] = inner(image)
                return seen["scores"]

            seg._inference_single_view = single
            seg.predict(torch.zeros(1, 3, h, w), [sample])
            seg._inference_single_view = inner
            return {"scores": seen["scores"], "pred": sample.data["pred_sem_seg"].data[0]}

        serve(unit)


def vpltool_worker(args) -> None:
    import activesam_parity as ap
    import numpy as np
    import torch
    from PIL import Image

    torch.set_grad_enabled(False)
    dense, bb = ap.vpltool_method(args.method, args.work / "sam3.pt")
    meta = json.loads((args.work / f"ref_{args.method}" / "meta.json").read_text())
    text = dense.hooks.query_text(bb, meta["query_words"], ["{}"])
    query_class, n = torch.tensor(meta["query_idx"]), len(set(meta["query_idx"]))
    files, state = photos(args.work, args.images), {"k": 0}

    def unit():
        path = files[state["k"] % len(files)]
        state["k"] += 1
        photo = np.asarray(Image.open(path).convert("RGB"))
        scores = dense.hooks.dense_logits(bb, None, text, [photo.shape[:2]], dense.settings,
                                          [dense.hooks.extra_inputs(None, photo)])[0]
        _, labels = dense.hooks.probabilities(bb, scores, query_class, n, dense.settings)
        return {"scores": scores, "pred": labels}

    serve(unit)


def main(argv: list[str] | None = None) -> None:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--ref", type=Path, required=True, help="a clone of VILA-Lab/ActiveSAM (41cad43)")
    ap_.add_argument("--method", choices=("sam3", "activesam"), default="activesam")
    ap_.add_argument("--work", type=Path, default=Path("runs/parity-activesam"), help="the parity's files")
    ap_.add_argument("--images", type=int, default=3, help="photos taken in turn, one a unit")
    ap_.add_argument("--pairs", type=int, default=6, help="alternating pairs after the warm-up (median over them)")
    ap_.add_argument("--worker", choices=("reference", "vpltool"), help=argparse.SUPPRESS)
    ap_.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)  # the reference's (the parity's)
    args = ap_.parse_args(argv)
    args.work, args.ref = args.work.resolve(), args.ref.resolve()
    os.environ["NLTK_DATA"] = str(args.work / "nltk_data")
    if args.worker:
        claim_stdout()
        import torch

        torch.set_num_threads(1)
        (reference_worker if args.worker == "reference" else vpltool_worker)(args)
        return
    import activesam_parity as ap
    import torch

    import benchlib

    torch.set_num_threads(1)
    s = ap.setup(args.work, max(args.images, 3))
    if not (args.work / f"ref_{args.method}" / "meta.json").is_file():  # the query words, from one reference run
        ap.run_reference(argparse.Namespace(ref=args.ref), {**s, "photos": s["photos"][:1]}, args.method,
                         args.work / f"ref_{args.method}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    common = ["--ref", args.ref, "--method", args.method, "--work", args.work, "--images", args.images,
              "--overrides", json.dumps(ap.OVERRIDES[args.method])]
    load_before, start = round(os.getloadavg()[0], 2), time.perf_counter()
    rows, a, b = race(__file__, common, args.work, env, args.pairs)
    ratios = [r["vpltool"]["cpu"] / r["reference"]["cpu"] for r in rows]
    ratio = statistics.median(ratios)
    print(json.dumps({
        "benchmark": f"{args.method}-vs-reference", "machine": benchlib.machine("cpu"), "threads": 1,
        "precision": "fp32",
        "command": " ".join(["python", "bench/bench_activesam.py", *map(str, argv or sys.argv[1:])]),
        "vpltool_commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
        "reference": {"repo": "VILA-Lab/ActiveSAM", "commit": ap.commit_of(args.ref)},
        "model": "reduced SAM 3 (parity/activesam_parity.py reduced_config), seeded random",
        "settings": ap.OVERRIDES[args.method], "unit": f"one photo, the first {args.images} parity photos in turn",
        "pairs": [{side: {k: round(v, 3) for k, v in r[side].items()} for side in r} for r in rows],
        "ratios": [round(r, 3) for r in ratios], "ratio_median": round(ratio, 3),
        "cpu_seconds_median": {side: round(statistics.median(r[side]["cpu"] for r in rows), 3)
                               for side in ("vpltool", "reference")},
        "goal": GOAL, "goal_met": bool(ratio <= GOAL),
        "outputs": {"scores_max_abs_diff": float((a["scores"] - b["scores"]).abs().max()),
                    "labels_equal": float((a["pred"] == b["pred"]).float().mean())},
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()

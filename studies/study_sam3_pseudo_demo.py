"""`sam-pseudo --masks sam3` on the demo world: SAM 3's confidence threshold and the CAM gate chosen on TRAIN, by the
pseudo masks' mIoU, as the toy SAM's settings were (``study_sam_pseudo.py choose``).

    python studies/study_sam3_pseudo_demo.py --run runs/demo --refine caa [--weights vpltool/assets/toy-sam3] \\
        > studies/results/sam3_pseudo_settings.json

The CAMs of ``--refine`` (``RUN/R/cams_vision``; the demo's chosen refinement), their first ``--images`` training
images, the start label `sam-pseudo` makes (``--start crf``), and the toy SAM 3 prompted with each image's labels
(:class:`vpltool.stages.sam_pseudo.sources.Sam3Masks`'s prompts). SAM 3 runs once per image, at the lowest
threshold of :data:`THRESHOLDS`; each (threshold, gate) keeps the instances scoring above the threshold and applies
`sam-pseudo`'s rule (:func:`vpltool.stages.sam_pseudo.prompted_masks`). Val is not read. Also per threshold: the
instances SAM 3 keeps per label and the share of labels it keeps none for. Prints one JSON object; the Makefile's
SAM3_PSEUDO_ARGS take its choice (Meta's 0.5 is kept when it scores as well).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import machine  # noqa: E402

THRESHOLDS = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02)  # Meta's 0.5 first: it wins a tie
GATES = (0.5, 0.3, 0.7, 0.2, 0.1, 0.05, 0.0)  # the rule's default (the automatic rule's majority) first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--refine", default="caa", help="the refinement whose CAMs (RUN/R; 'own' = RUN's)")
    ap.add_argument("--weights", type=Path, default=ROOT / "vpltool" / "assets" / "toy-sam3")
    ap.add_argument("--images", type=int, default=100)
    args = ap.parse_args()
    import torch

    from vpltool import io
    from vpltool.config import SamPseudoConfig
    from vpltool.data import open_recorded
    from vpltool.models.backbones.sam3 import BUCKET, Sam3Spec
    from vpltool.models.registry import load_model
    from vpltool.ops.kernels import MiouAccumulator
    from vpltool.stages.sam_pseudo import prompted_masks, start_label
    from vpltool.stages.sam_pseudo.sources import Sam3Masks

    torch.set_num_threads(1)
    cams = (args.run if args.refine == "own" else args.run / args.refine) / "cams_vision"
    data = open_recorded(cams)
    if data.split != "train":
        raise SystemExit(f"{cams}: CAMs of split {data.split!r}; the settings are chosen on train")
    items, n = data.by_id(), len(data.classes)
    ids = io.item_ids(cams)[: args.images]
    names = Sam3Masks(SamPseudoConfig(masks="sam3", sam_weights=str(args.weights)), data.classes).names
    model = load_model("sam3", Sam3Spec(str(args.weights)), "cpu")
    text = model.encode_text(names[1:])
    acc = {(t, g): MiouAccumulator(n) for t in THRESHOLDS for g in GATES}
    start_acc = MiouAccumulator(n)
    kept = {t: [] for t in THRESHOLDS}  # instances per label
    low, started = min(THRESHOLDS), time.process_time()
    for i in ids:
        image, maps = io.read_cam_item(cams, i, items[i].image, items[i].labels, data.classes)
        begin = start_label(image, maps.cams, maps.labels, SamPseudoConfig())
        gt = io.read_mask(items[i].gt)
        start_acc.add(gt, begin)
        labels = list(items[i].labels)
        encoded = model.encode_image(model.prepare(image))
        concepts = []
        for b in range(0, len(labels), BUCKET):
            grounding = model.ground(encoded, text.select([k - 1 for k in labels[b:b + BUCKET]]))
            concepts += model.concepts(grounding, image.shape[:2], low)
        for t in THRESHOLDS:
            found = [(k, c.masks[c.scores > t].float().numpy()) for k, c in zip(labels, concepts)]
            kept[t] += [len(f) for _, f in found]
            for g in GATES:
                acc[t, g].add(gt, prompted_masks(begin, found, g)[0])
    seconds = (time.process_time() - started) / max(len(ids), 1)
    rows = [{"threshold": t, "gate": g, "miou": 100 * acc[t, g].result()["miou"]} for t in THRESHOLDS for g in GATES]
    best = max(rows, key=lambda r: r["miou"])  # the first of equal ones: Meta's 0.5, the gate 0.5
    report = {"machine": machine(), "run": str(args.run), "refine": args.refine, "split": "train",
              "images": len(ids), "weights": str(args.weights), "prompts": names[1:],
              "rule": "the highest pseudo-mask mIoU on train; val not read",
              "start_miou": 100 * start_acc.result()["miou"], "chosen": best,
              "instances": {str(t): {"per_label": float(np.mean(k)), "labels_without": float(np.mean(np.equal(k, 0)))}
                            for t, k in kept.items()},
              "cpu_seconds_per_image": seconds, "rows": rows}
    print(json.dumps(report, indent=1))
    print(f"chosen: {best}; the CRF start alone {report['start_miou']:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""``--dense ov-stitcher`` against OV-Stitcher's OWN code (atw617/OV-Stitcher@91a9489); prints ONE JSON object.

    python parity/ov_stitcher_parity.py --ref OV-Stitcher --dino-ref DINO [--work DIR] [--images 12]

The clone: the repository's snapshot now holds README and images only (270b85a); the code of 91a9489 (its
``ov_stitcher_segmentor.py``, ``open_clip/model.py`` and ``transformer.py``, ``configs/base_config.py``,
``prompts/class_biased_template.json``) and the configs of 2bb6586 (``configs/cfg_*.py``, ``cls_all.txt``) are
read from a stored index of public repositories, each file checked against the index's character count; the files
that index keeps only as duplicates of another repository's (the rest of ``open_clip/``, ``myutils.py``,
``prompts/imagenet_template.py``, ``configs/cls_*.txt``, ``custom_datasets.py``) are CorrCLIP's ``CorrCLIPv1/`` at
103bc18, which its code derives from (its ``cls_all.txt``, the concatenation of the class files' query words, is
CorrCLIP's files' words, character for character). ``--ref`` is that folder; the JSON records the sha256 of every
file the run reads.

Set-up (made once in ``--work``), as ``corrclip_parity.py``'s (its functions): random ``ViT-B-16-quickgelu``
weights (seed 0; the ViT-B/16 image tower with QuickGELU of both its ``('openai', 'ViT-B/16')`` and MetaCLIP's
``ViT-B-16-quickgelu``) with a one-block text tower (``--text-layers``), a random DINO ViT-B/8 (timm's init, seed 0,
positions redrawn N(0, 1), seed 2) loaded by the clone's ``torch.hub`` entry ``dino_vitb8`` and by vpltool as
``vit_base_patch8_224.dino``, ``--images`` of the parity photos (scikit-image's) and a region-mask file each
(Felzenszwalb segments, every third painted 0; the last map without a 0). Both sides read the same files.

The clone runs in its own process (``ov_stitcher_ref_runner.py``: stub OpenMMLab imports, fp32,
``configs/cfg_voc21.py``: logit scale 40, threshold 0.1, its class-biased templates, CorrCLIP's class file) at
``--short-side`` with ``--slide-crop`` / ``--slide-stride`` windows (its config: 448, 336/112). vpltool gets the
same normalised inputs and region maps, its own text rows of the same query words (``--templates ov-stitcher``),
and runs `segment`'s path (``resolve_method``, the method's hooks, the shared probabilities, its ``postprocess``).

Compared per photo: the cosine logits its ``predict`` hands ``postprocess_result``, the class probabilities and the
labels after the map correction (at its threshold and at the argmax); its DBSCAN clustering (recorded from its
scikit-learn call) against vpltool's on the same distance matrix. Bar: max |Δ| <= 1e-4 and >= 99.9 % equal labels.
Each side's CPU-seconds per photo (one thread) are recorded too: ``bench/bench_ov_stitcher.py`` measures the ratio.

The merge's parity (``query_merge``; ``--merge-images`` photos) is ``corrclip_parity.merge_parity``: its class file
with one more query on rows 1, 4, 5, 10 and 20, whose rows its ``postprocess_result`` (CorrCLIP's) merges by
position, against ``--query-merge reference`` and ``max``. The set-up, the clone's process and the run are
``parity_setup``'s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import parity_setup as ps
from corrclip_parity import (
    PROXY_MODEL,
    commit_of,
    file_digest,
    max_abs,
    merge_parity,
    reference_args,
    setup,
    vpltool_outputs,
)

BAR, LABELS_BAR = ps.BAR, ps.LABELS_BAR
REPO = "atw617/OV-Stitcher"
COMMIT = "91a94894e4e4b277de2c26faba43b46c2a41204d"  # ov_stitcher_segmentor.py, open_clip/, base_config.py, prompts/
CONFIG_COMMIT = "2bb65864c0f231cdfab2df041a4613a320013366"  # configs/cfg_*.py, configs/cls_all.txt
FILES = ("ov_stitcher_segmentor.py", "open_clip/model.py", "open_clip/transformer.py", "configs/base_config.py",
         "configs/cfg_voc21.py", "configs/cls_voc21.txt", "prompts/class_biased_template.json",
         "prompts/imagenet_template.py", "myutils.py")


def clone_files(ref: Path) -> dict:
    """The sha256 of each file of the clone the run reads (the clone is a reconstruction: module docstring)."""
    return {f: hashlib.sha256((ref / f).read_bytes()).hexdigest()[:16] for f in FILES}


def overrides(args) -> dict:
    return {"slide_crop": args.slide_crop, "slide_stride": args.slide_stride}


def reference_stamp(args, s: dict) -> dict:
    """What the clone's output depends on: its files, the files both sides read, the run's sizes."""
    return {"files": clone_files(args.ref), "dino_commit": args.dino_commit, "weights": file_digest(s["pt"]),
            "dino": file_digest(s["dino"]), "photos": [file_digest(p) for p in s["photos"]],
            "masks": [file_digest(m) for m in s["masks"]], "short_side": args.short_side,
            "overrides": overrides(args)}


def run_reference(args, s: dict, out: Path) -> bool:
    """The clone's run (``ov_stitcher_ref_runner.py``, its own process) into ``out``; an output there with the
    same :func:`reference_stamp` is reused. Returns whether it was reused."""
    return ps.run_reference("ov_stitcher_ref_runner.py", reference_args(args, s), reference_stamp(args, s), out,
                            args.threads)


def ov_stitcher_method(args, s: dict, query_merge: str | None = None):
    """``--dense ov-stitcher`` resolved as `segment` resolves it: its VOC21 defaults with this run's short side and
    windows, the proxy DINO from the parity file, the region masks from the parity folder (``query_merge``: its
    ``--query-merge``, None: the default)."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method

    cfg = SegmentConfig.of(dense="ov-stitcher", templates="ov-stitcher", short_side=args.short_side,
                           slide_crop=args.slide_crop, slide_stride=args.slide_stride, proxy_model=PROXY_MODEL,
                           proxy_weights=str(s["dino"]), region_masks=str(s["masks"][0].parent),
                           query_merge=query_merge)
    return resolve_method(cfg)


def compare(args, s: dict, ref: Path) -> dict:
    import numpy as np
    import torch

    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names, resolve_templates
    from vpltool.models.dense.corrclip import dbscan_labels, map_correction
    from vpltool.models.dense.segmentor import dense_probabilities

    torch.set_num_threads(args.threads)
    meta = json.loads((ref / "meta.json").read_text())
    method = ov_stitcher_method(args, s)
    settings = method.settings
    bb = method.load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = meta["query_words"], torch.tensor(meta["query_idx"])
    with torch.no_grad():
        text = encode_names(bb, words, resolve_templates(method.cfg.templates))
    n_classes = int(idx.max()) + 1
    photos, worst_logits, worst_probs, equal, total, clusters = [], 0.0, 0.0, 0, 0, []
    for i, mask_path in enumerate(s["masks"]):
        r = torch.load(ref / f"photo_{i:03d}.pt")
        x, ori = r["input"], tuple(meta["photos"][i]["ori_shape"])
        ids = torch.from_numpy(np.load(mask_path)["instance_mask"])
        start = time.process_time()
        logits, probs, labels = vpltool_outputs(bb, x, text, idx, n_classes, ids, ori, settings)
        seconds = time.process_time() - start
        same = labels == r["pred"][0]
        with torch.no_grad():  # the argmax (prob_thd 0) on the same logits, then the map correction
            argmax = map_correction(dense_probabilities(logits, idx, n_classes, settings.logit_scale, 0.0)[1], ids)
        same_argmax = argmax == r["pred_argmax"][0]
        calls = [bool(torch.equal(torch.from_numpy(dbscan_labels(c["dist"].numpy(), 0.2)), c["labels"]))
                 for c in r["windows"]]
        row = {"file": meta["photos"][i]["file"], "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
               "regions": int(len(torch.unique(ids))), "seg_logits": max_abs(logits, r["logits"][0]),
               "probs": max_abs(probs, r["probs"]), "labels_equal": float(same.float().mean()),
               "labels_equal_argmax": float(same_argmax.float().mean()),
               "reference_classes": sorted(int(c) for c in torch.unique(r["pred"])),
               "reference_classes_argmax": sorted(int(c) for c in torch.unique(r["pred_argmax"])),
               "dbscan": {"calls": len(calls), "equal": sum(calls), "regions": [len(c["labels"]) for c in r["windows"]],
                          "clusters": [int(c["labels"].max()) + 1 for c in r["windows"]]},
               "cpu_seconds": {"vpltool": round(seconds, 2), "reference": meta["cpu_seconds"][i]}}
        worst_logits, worst_probs = max(worst_logits, row["seg_logits"]), max(worst_probs, row["probs"])
        equal, total = equal + int(same.sum()) + int(same_argmax.sum()), total + same.numel() + same_argmax.numel()
        clusters += calls
        photos.append(row)
    share = equal / max(total, 1)
    worst = max(worst_logits, worst_probs)
    ours = sum(p["cpu_seconds"]["vpltool"] for p in photos)
    theirs = sum(p["cpu_seconds"]["reference"] for p in photos)
    return {"text_rows": max_abs(text, torch.load(ref / "text.pt")["query_features"]), "seg_logits": worst_logits,
            "probs": worst_probs, "labels_equal": share, "dbscan_calls": len(clusters),
            "dbscan_equal": sum(clusters), "photos": photos,
            "cpu_seconds": {"vpltool": round(ours, 1), "reference": round(theirs, 1),
                            "ratio": round(ours / theirs, 3) if theirs else None,
                            "note": "one thread, each photo's predict; a single pass each, not alternating pairs: "
                                    "bench/bench_ov_stitcher.py measures the speed"},
            "settings": {"vpltool": {"logit_scale": settings.logit_scale, "prob_thd": settings.prob_threshold,
                                     "slide_crop": settings.slide_crop, "slide_stride": settings.slide_stride,
                                     "short_side": settings.short_side},
                         "reference": {**meta["effective"], "short_side": min(meta["resize_scale"])}},
            "bar_met": bool(worst <= BAR and share >= LABELS_BAR and all(clusters)),
            "reference_seconds": meta["seconds"]}


def page(r: dict) -> dict:
    """The section docs/parity.md shows for this run (``docgen/parity_page.py`` reads it)."""
    run = r["run"]
    return {"title": f"OV-Stitcher (`--dense ov-stitcher`), short side {run['short_side']}, windows "
                     f"{run['slide_crop']}/{run['slide_stride']}",
            "command": f"`python parity/ov_stitcher_parity.py --ref OV-Stitcher --dino-ref DINO` "
                       f"(`parity/ov_stitcher_ref_runner.py` runs the clone). Clone: {r['reference']['repo']} "
                       f"`{r['reference']['commit'][:7]}` (its configs `{r['reference']['config_commit'][:7]}`; the "
                       "code read from a stored index: the repository now holds only its README, see "
                       f"docs/open-vocabulary.md), facebookresearch/dino `{r['reference']['dino_commit']}`; random "
                       f"{r['model']} (one text block) and DINO ViT-B/8; {r['images']} photos at short side "
                       f"{run['short_side']}, windows {run['slide_crop']}/{run['slide_stride']} (its cfg_voc21.py "
                       "otherwise, its class-biased templates); both sides read the same region-mask files.",
            "bar": f"max abs diff <= {r['bar']['max_abs']:g}, labels equal >= {r['bar']['labels_equal']:.1%}",
            "rows": [["dense logits, max abs diff", r["seg_logits"]], ["probabilities, max abs diff", r["probs"]],
                     ["labels equal (threshold 0.1 and argmax, after the map correction)", r["labels_equal"]],
                     ["DBSCAN clusterings equal", f"{r['dbscan_equal']} of {r['dbscan_calls']}"],
                     ["text rows (its class-biased templates), max abs diff", r["text_rows"]], *ps.merge_rows(r)]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="the OV-Stitcher clone (module docstring)")
    ap.add_argument("--dino-ref", type=Path, required=True, help="a clone of facebookresearch/dino")
    ap.add_argument("--work", type=Path, default=None, help="keeps the weights, photos, masks and the clone's output")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--merge-images", type=int, default=3, help="photos of the merge's parity (0: none)")
    ap.add_argument("--text-layers", type=int, default=1, help="text blocks of the random model (0: its own 12)")
    ap.add_argument("--short-side", type=int, default=224, help="both sides' short side (its VOC21 config: 448)")
    ap.add_argument("--slide-crop", type=int, default=224, help="both sides' window (its VOC21 config: 336)")
    ap.add_argument("--slide-stride", type=int, default=112)
    ap.add_argument("--dino-commit", default="7c446df", help="the facebookresearch/dino commit of --dino-ref")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    args.ref = args.ref.resolve()

    def result(work: Path) -> dict:
        from vpltool.models.backbones.prompts import resolve_templates

        s = setup(work, args.images, args.text_layers)
        ref_out = work / f"ref_{args.short_side}_{args.slide_crop}_{args.slide_stride}"
        reused = run_reference(args, s, ref_out)
        out = {"reference": {"repo": REPO, "commit": COMMIT, "config_commit": CONFIG_COMMIT,
                             "clone_commit": commit_of(args.ref), "files_sha256": clone_files(args.ref),
                             "dino": "facebookresearch/dino", "dino_commit": args.dino_commit,
                             "output_reused": reused},
               "run": {"short_side": args.short_side, "slide_crop": args.slide_crop,
                       "slide_stride": args.slide_stride, "config": "configs/cfg_voc21.py"},
               "model": s["name"], "proxy": PROXY_MODEL, "images": args.images, "threads": args.threads,
               "bar": {"max_abs": BAR, "labels_equal": LABELS_BAR}, **compare(args, s, ref_out)}
        if args.merge_images:
            out["query_merge"] = merge_parity(args, s, work, "ov_stitcher_ref_runner.py", ov_stitcher_method,
                                              resolve_templates("ov-stitcher"), reference_stamp(args, s))
            out["bar_met"] = out["bar_met"] and out["query_merge"]["bar_met"]
        return out

    ps.run(args, result, page)


if __name__ == "__main__":
    main()

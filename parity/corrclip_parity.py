"""``--dense corrclip`` against CorrCLIP's OWN code (zdk258/CorrCLIP@103bc18, ``CorrCLIPv1/``); prints ONE JSON object.

    python parity/corrclip_parity.py --ref CorrCLIP/CorrCLIPv1 --dino-ref DINO [--work DIR] [--images 3]

Set-up (made once in ``--work``):

* random ``ViT-B-16-quickgelu`` weights (seed 0, the 12-block ViT-B/16 image tower of MetaCLIP's model, QuickGELU;
  ``dense_parity.py``'s, with a one-block text tower: ``--text-layers``), saved as ``.pt`` for the clone and
  ``.safetensors`` for vpltool;
* a random DINO ViT-B/8 (timm's init, seed 0, ``pos_embed`` redrawn N(0, 1), seed 2: ``ovss_parity.proxy_weights``,
  so that a smooth photo's tokens do not collapse), loaded by the clone's ``torch.hub`` entry ``dino_vitb8`` (built
  from a clone of facebookresearch/dino) and by vpltool as ``vit_base_patch8_224.dino``;
* ``--images`` of the parity photos (scikit-image's, ``bench_cam.make_voc``) and, for each, a region-mask file in
  the reference's form (``<stem>.npz``, key ``instance_mask``, int ``[H0, W0]``): scikit-image's Felzenszwalb
  segments, every third one painted 0 (unsegmented); the last photo's map has no 0, so that its smallest real
  region is taken as the unsegmented one (the reference's quirk). Both sides read the same files.

The clone runs in its own process (``corrclip_ref_runner.py``: stub OpenMMLab imports, fp32, the offline masks,
``configs/cfg_voc21.py``: logit scale 40, threshold 0.2, slide 336/112 padded to 56, short side 336, its own class
file). vpltool gets the same normalised input tensors and the same region maps, its own text rows of the same
query words, and runs `segment`'s path (``resolve_method``; the method's hooks through
:func:`vpltool.models.dense.segmentor.segment_logits`, the shared probabilities, its ``postprocess``) with
``--dense corrclip``'s settings.

Compared per photo: the cosine logits the segmentor hands ``postprocess_result`` (``seg_logits``), the class
probabilities and the labels after the map correction; per window DBSCAN's clusters (recorded from the clone's
scikit-learn call) against vpltool's on the clone's own distance matrix. Bar: max |Δ| <= 1e-4 (fp32, CPU) and
>= 99.9 % equal labels.

The merge's parity (``query_merge`` in the JSON; ``--merge-images`` photos): the clone run again on its class file
with one more query on rows 1, 4, 5, 10 and 20 (``parity_setup.synonym_class_file``), where its
``postprocess_result`` merges the rows into classes by position; vpltool's labels with ``--query-merge reference``
(the bar) and with its default ``max`` (each class over its own queries: the share that agrees) against its labels.

The set-up, the clone's process and the run are ``parity_setup``'s (shared with OV-Stitcher's, TextRegion's and
RADSeg's runners).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import parity_setup as ps

BAR, LABELS_BAR = ps.BAR, ps.LABELS_BAR
MODEL = ps.CLIP_MODEL
PROXY_MODEL = "vit_base_patch8_224.dino"
# the shared pieces, importable from here as before (ov_stitcher_parity.py's)
commit_of, file_digest, max_abs = ps.commit_of, ps.file_digest, ps.max_abs


def region_maps(photos: list[Path], folder: Path) -> list[Path]:
    """The region-mask files of the photos (module docstring), made once."""
    import numpy as np
    from PIL import Image
    from skimage.segmentation import felzenszwalb

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, photo in enumerate(photos):
        path = folder / f"{photo.stem}.npz"
        if not path.is_file():
            image = np.asarray(Image.open(photo).convert("RGB"))
            seg = felzenszwalb(image, scale=200, sigma=0.8, min_size=200).astype(np.int64) + 1
            if i < len(photos) - 1:
                seg[seg % 3 == 0] = 0
            np.savez_compressed(path, instance_mask=seg.astype(np.int32))
        out.append(path)
    return out


def setup(work: Path, images: int, text_layers: int) -> dict:
    import ovss_parity as op

    clip = ps.clip_weights(work, text_layers, MODEL)
    photos = ps.parity_photos(work, images, derived=("masks",))
    masks = region_maps(photos, work / "masks")
    dino = op.proxy_weights(work, pos_std=1.0)
    return {**clip, "photos": photos, "masks": masks, "dino": dino}


def reference_stamp(args, s: dict) -> dict:
    """What the clone's output depends on: its commit, the files both sides read, the run's sizes."""
    return {"commit": commit_of(args.ref), "dino_commit": args.dino_commit, "weights": file_digest(s["pt"]),
            "dino": file_digest(s["dino"]), "photos": [file_digest(p) for p in s["photos"]],
            "masks": [file_digest(m) for m in s["masks"]], "short_side": args.short_side,
            "overrides": overrides(args)}


def overrides(args) -> dict:
    return {"slide_crop": args.slide_crop, "slide_stride": args.slide_stride}


def reference_args(args, s: dict, photos: list[Path] | None = None) -> list[str]:
    """The clone's runner's arguments (``corrclip_ref_runner.py``; ``photos``: these, not all)."""
    return ["--clone", str(args.ref), "--dino-clone", str(args.dino_ref), "--dino-weights", str(s["dino"]),
            "--clip-weights", str(s["pt"]), "--model-config", str(Path(s["config_dir"]) / f"{s['name']}.json"),
            "--masks", str(s["masks"][0].parent), "--short-side", str(args.short_side),
            "--overrides", json.dumps(overrides(args)), *map(str, photos or s["photos"])]


def run_reference(args, s: dict, out: Path) -> bool:
    """The clone's run (``corrclip_ref_runner.py``, its own process) into ``out``; an output there with the same
    :func:`reference_stamp` is reused. Returns whether it was reused."""
    return ps.run_reference("corrclip_ref_runner.py", reference_args(args, s), reference_stamp(args, s), out,
                            args.threads)


def vpltool_outputs(bb, x, text, idx, n_classes: int, ids, ori: tuple[int, int], settings):
    """vpltool's logits ``[Q, H0, W0]``, probabilities ``[C, H0, W0]`` and corrected labels ``[H0, W0]`` of one
    input ``x`` ``[1, 3, H, W]`` with the photo's region map ``ids`` ``[H0, W0]``, through `segment`'s path: the
    method's hooks (:func:`~vpltool.models.dense.segmentor.segment_logits`, then what
    :func:`~vpltool.models.dense.segmentor.scores_batch` does after it: the shared probabilities and the method's
    ``postprocess``)."""
    import torch

    from vpltool.models.dense.segmentor import dense_probabilities, segment_logits

    extras = [{"regions": ids}]
    with torch.no_grad():
        logits = segment_logits(bb, x, text, settings, [ori], extras)[0]
        probs, labels = dense_probabilities(logits, idx, n_classes, settings.logit_scale, settings.prob_threshold)
        probs, labels = bb.hooks.postprocess(bb, probs, labels, extras[0], settings)
    return logits, probs, labels


def output_key(x, text, ids, settings) -> str:
    """What vpltool's outputs of a photo depend on: the input tensor, the text rows, the region map, the settings,
    and the bytes of vpltool's CorrCLIP package (its kernels and hooks) and of the modules its forward runs (a
    cached output is reused only when all are the same)."""
    import hashlib

    import vpltool.models.backbones.dino as dino
    import vpltool.models.backbones.model as model
    import vpltool.models.dense.corrclip as pkg
    import vpltool.models.dense.segmentor as seg

    h = hashlib.sha256(repr(settings).encode())
    for t in (x, text, ids):
        h.update(t.detach().contiguous().numpy().tobytes())
    sources = [Path(pkg.__file__).parent / f for f in ("kernels.py", "__init__.py")] + [
        Path(m.__file__) for m in (dino, model, seg)]
    for path in sources:
        h.update(path.read_bytes())
    return h.hexdigest()[:24]


def cached_outputs(cache: Path | None, bb, x, text, idx, n_classes, ids, ori, settings):
    """:func:`vpltool_outputs`, read from ``cache/<key>.pt`` when a run with the same :func:`output_key` left it
    there (the same computation: both sides of this parity take minutes a photo on a shared CPU)."""
    import torch

    if cache is None:
        return vpltool_outputs(bb, x, text, idx, n_classes, ids, ori, settings) + (False,)
    path = cache / f"{output_key(x, text, ids, settings)}.pt"
    if path.is_file():
        d = torch.load(path)
        return d["logits"], d["probs"], d["labels"], True
    logits, probs, labels = vpltool_outputs(bb, x, text, idx, n_classes, ids, ori, settings)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"logits": logits, "probs": probs, "labels": labels}, path)
    return logits, probs, labels, False


def compare(args, s: dict, ref: Path, work: Path) -> dict:
    import numpy as np
    import torch

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names
    from vpltool.models.dense.corrclip import dbscan_labels, map_correction
    from vpltool.models.dense.segmentor import dense_probabilities

    torch.set_num_threads(args.threads)
    meta = json.loads((ref / "meta.json").read_text())
    method = corrclip_method(args, s)
    settings = method.settings
    bb = method.load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = meta["query_words"], torch.tensor(meta["query_idx"])
    with torch.no_grad():
        text = encode_names(bb, words, list(IMAGENET_TEMPLATES))
    ref_text = torch.load(ref / "text.pt")["query_features"]
    n_classes = int(idx.max()) + 1
    photos, worst_logits, worst_probs, equal, total, clusters = [], 0.0, 0.0, 0, 0, []
    for i, mask_path in enumerate(s["masks"]):
        r = torch.load(ref / f"photo_{i:03d}.pt")
        x, ori = r["input"], tuple(meta["photos"][i]["ori_shape"])
        ids = torch.from_numpy(np.load(mask_path)["instance_mask"])
        start = time.perf_counter()
        logits, probs, labels, reused = cached_outputs(work / "ours", bb, x, text, idx, n_classes, ids, ori,
                                                       settings)
        same = labels == r["pred"][0]
        with torch.no_grad():  # the argmax (prob_thd 0) on the same logits, then the map correction
            argmax = map_correction(dense_probabilities(logits, idx, n_classes, settings.logit_scale, 0.0)[1], ids)
        same_argmax = argmax == r["pred_argmax"][0]
        row = {"file": meta["photos"][i]["file"], "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
               "regions": int(len(torch.unique(ids))), "seconds": round(time.perf_counter() - start, 1),
               "cached": reused,
               "seg_logits": max_abs(logits, r["logits"][0]), "probs": max_abs(probs, r["probs"]),
               "labels_equal": float(same.float().mean()),
               "labels_equal_argmax": float(same_argmax.float().mean()),
               "reference_classes": sorted(int(c) for c in torch.unique(r["pred"])),
               "reference_classes_argmax": sorted(int(c) for c in torch.unique(r["pred_argmax"])),
               "reference_probs_max": float(r["probs"].max())}
        worst_logits, worst_probs = max(worst_logits, row["seg_logits"]), max(worst_probs, row["probs"])
        equal, total = equal + int(same.sum()) + int(same_argmax.sum()), total + same.numel() + same_argmax.numel()
        calls = [bool(torch.equal(torch.from_numpy(dbscan_labels(c["dist"].numpy(), 0.2)), c["labels"]))
                 for c in r["windows"]]
        row["dbscan"] = {"calls": len(calls), "equal": sum(calls),
                         "regions": [len(c["labels"]) for c in r["windows"]],
                         "clusters": [int(c["labels"].max()) + 1 for c in r["windows"]]}
        clusters += calls
        photos.append(row)
    share = equal / max(total, 1)
    worst = max(worst_logits, worst_probs)
    return {"text_rows": max_abs(text, ref_text), "seg_logits": worst_logits, "probs": worst_probs,
            "labels_equal": share, "dbscan_calls": len(clusters), "dbscan_equal": sum(clusters), "photos": photos,
            "settings": {"vpltool": {"logit_scale": settings.logit_scale, "prob_thd": settings.prob_threshold,
                                     "slide_crop": settings.slide_crop, "slide_stride": settings.slide_stride,
                                     "short_side": settings.short_side},
                         "reference": {**meta["effective"], "short_side": min(meta["resize_scale"])}},
            "bar_met": bool(worst <= BAR and share >= LABELS_BAR and all(clusters)),
            "reference_seconds": meta["seconds"]}


def corrclip_method(args, s: dict, query_merge: str | None = None):
    """``--dense corrclip`` resolved as `segment` resolves it: its VOC21 defaults with this run's short side and
    windows, the proxy DINO from the parity file, the region masks from the parity folder (``query_merge``: its
    ``--query-merge``, None: the default)."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method

    cfg = SegmentConfig.of(dense="corrclip", short_side=args.short_side, slide_crop=args.slide_crop,
                           slide_stride=args.slide_stride, proxy_model=PROXY_MODEL, proxy_weights=str(s["dino"]),
                           region_masks=str(s["masks"][0].parent), query_merge=query_merge)
    return resolve_method(cfg)


def merge_parity(args, s: dict, work: Path, runner: str, method_of, templates, stamp: dict) -> dict:
    """The merge's parity (module docstring), for CorrCLIP and OV-Stitcher: the clone's run on the synonym class
    file (``runner`` with ``--name-path``, the first ``--merge-images`` photos; reused by its stamp), then vpltool's
    logits on the same inputs and its labels, after the map correction, at each ``--query-merge``, at the config's
    threshold and at the argmax."""
    from dataclasses import replace

    import numpy as np
    import torch

    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names
    from vpltool.models.dense.segmentor import segment_logits

    photos = s["photos"][: args.merge_images]
    names = ps.synonym_class_file(args.ref / "configs" / "cls_voc21.txt", work / "synonyms" / "cls_voc21.txt")
    out = work / "ref_synonyms"
    stamp = {**stamp, "name_path": ps.file_digest(names), "photos": [ps.file_digest(p) for p in photos]}
    reused = ps.run_reference(runner, [*reference_args(args, s, photos), "--name-path", str(names)], stamp, out,
                              args.threads)
    meta = json.loads((out / "meta.json").read_text())
    methods = {m: method_of(args, s, query_merge=m) for m in ("reference", "max")}
    settings = methods["reference"].settings
    bb = methods["reference"].load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = meta["query_words"], torch.tensor(meta["query_idx"])
    n_classes = int(idx.max()) + 1
    with torch.no_grad():
        text = encode_names(bb, words, templates)
    worst, equal, total = 0.0, {(m, t): 0 for m in methods for t in ("threshold", "argmax")}, 0
    for i, photo in enumerate(photos):
        r = torch.load(out / f"photo_{i:03d}.pt")
        x, ori = r["input"], tuple(meta["photos"][i]["ori_shape"])
        extras = {"regions": torch.from_numpy(np.load(work / "masks" / f"{photo.stem}.npz")["instance_mask"])}
        with torch.no_grad():
            logits = segment_logits(bb, x, text, settings, [ori], [dict(extras)])[0]
            worst = max(worst, ps.max_abs(logits, r["logits"][0]))
            for m, method in methods.items():
                argmax = replace(settings, prob_threshold=0.0)
                for t, run, want in (("threshold", settings, r["pred"][0]), ("argmax", argmax, r["pred_argmax"][0])):
                    probs, labels = method.hooks.probabilities(bb, logits, idx, n_classes, run)
                    labels = method.hooks.postprocess(bb, probs, labels, extras, run)[1]
                    equal[m, t] += int((labels == want).sum())
        total += r["pred"][0].numel()
    return ps.merge_result(equal, total, worst, queries=len(words), classes=n_classes, images=len(photos),
                           reused=reused)


def page(r: dict) -> dict:
    """The section docs/parity.md shows for this run (``docgen/parity_page.py`` reads it)."""
    run = r["run"]
    return {"title": "CorrCLIP (`--dense corrclip`)",
            "command": f"`python parity/corrclip_parity.py --ref CorrCLIP/CorrCLIPv1 --dino-ref DINO` "
                       f"(`parity/corrclip_ref_runner.py` runs the clone). Clone: {r['reference']['repo']} "
                       f"`{(r['reference']['commit'] or '?')[:7]}` (`CorrCLIPv1/`), facebookresearch/dino "
                       f"`{r['reference']['dino_commit']}`; random {r['model']} (one text block) and DINO ViT-B/8; "
                       f"{r['images']} photos at short side {run['short_side']}, windows {run['slide_crop']}/"
                       f"{run['slide_stride']} (its cfg_voc21.py otherwise); both sides read the same region-mask "
                       "files.",
            "bar": f"max abs diff <= {r['bar']['max_abs']:g}, labels equal >= {r['bar']['labels_equal']:.1%}",
            "rows": [["dense logits, max abs diff", r["seg_logits"]], ["probabilities, max abs diff", r["probs"]],
                     ["labels equal (threshold 0.2 and argmax, after the map correction)", r["labels_equal"]],
                     ["DBSCAN clusterings equal", f"{r['dbscan_equal']} of {r['dbscan_calls']}"],
                     ["text rows, max abs diff", r["text_rows"]], *ps.merge_rows(r)]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="the clone's CorrCLIPv1 folder (zdk258/CorrCLIP@103bc18)")
    ap.add_argument("--dino-ref", type=Path, required=True, help="a clone of facebookresearch/dino")
    ap.add_argument("--work", type=Path, default=None, help="keeps the weights, photos, masks and the clone's output")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--merge-images", type=int, default=3, help="photos of the merge's parity (0: none)")
    ap.add_argument("--text-layers", type=int, default=1, help="text blocks of the random model (0: its own 12)")
    ap.add_argument("--short-side", type=int, default=200, help="both sides' short side (its VOC21 config: 336)")
    ap.add_argument("--slide-crop", type=int, default=224, help="both sides' window (its VOC21 config: 336)")
    ap.add_argument("--slide-stride", type=int, default=112)
    ap.add_argument("--dino-commit", default="7c446df", help="the facebookresearch/dino commit of --dino-ref")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    args.ref = args.ref.resolve()

    def result(work: Path) -> dict:
        from vpltool.config.presets import IMAGENET_TEMPLATES

        s = setup(work, args.images, args.text_layers)
        ref_out = work / "ref"
        reused = run_reference(args, s, ref_out)
        out = {"reference": {"repo": "zdk258/CorrCLIP", "folder": "CorrCLIPv1", "commit": commit_of(args.ref),
                             "dino": "facebookresearch/dino", "dino_commit": args.dino_commit,
                             "output_reused": reused},
               "run": {"short_side": args.short_side, "slide_crop": args.slide_crop,
                       "slide_stride": args.slide_stride, "config": "configs/cfg_voc21.py"},
               "model": s["name"], "proxy": PROXY_MODEL, "images": args.images, "threads": args.threads,
               "bar": {"max_abs": BAR, "labels_equal": LABELS_BAR}, **compare(args, s, ref_out, work)}
        if args.merge_images:
            out["query_merge"] = merge_parity(args, s, work, "corrclip_ref_runner.py", corrclip_method,
                                              list(IMAGENET_TEMPLATES), reference_stamp(args, s))
            out["bar_met"] = out["bar_met"] and out["query_merge"]["bar_met"]
        return out

    ps.run(args, result, page)


if __name__ == "__main__":
    main()

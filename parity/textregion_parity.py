"""``--dense textregion`` against TextRegion's OWN code (avaxiao/TextRegion@e392cd2, ``model_semantic.py``); prints ONE
JSON object.

    python parity/textregion_parity.py --ref TextRegion [--work DIR] [--images 12]

Set-up (made once in ``--work``):

* random ``ViT-B-16-quickgelu`` weights (seed 0: OpenAI's ViT-B/16 image tower, the one its ``clip_pretrained=
  'openai'`` path loads; ``dense_parity.py``'s, with a one-block text tower: ``--text-layers``), saved as ``.pt``
  for the clone (its ``custom_clip.load`` reads a state dict) and ``.safetensors`` for vpltool;
* ``--images`` of the parity photos (scikit-image's, ``bench_cam.make_voc``) and, for each, a region-mask file
  (``<stem>.npz``, key ``masks``, ``[R, H0, W0]`` float16, values in [0, 3] as TextRegion's SAM 2 generator gives
  them): scikit-image's Felzenszwalb segments at two scales (overlapping regions), every third coarse and every
  second fine one left out (pixels no mask covers), each mask's border softened (a Gaussian ramp 0..3), and one
  mask smaller than a patch (dropped on the feature grid). Both sides read the same files: the reference's SAM 2
  generator is stubbed to return them (``textregion_ref_runner.py``).

The clone runs in its own process (stub OpenMMLab, matplotlib and sam2 imports, fp32, ``configs/cfg_ds/
cfg_voc21.py``: region logit scale 50, threshold 0.4, Resize (1008, 672), 336-pixel views, the global-patch filter
at 0.07, its own class file). vpltool gets the same input tensors (CLIP-normalised) and the same masks, its own text
rows of the same query words, and runs `segment`'s path (``resolve_method``; the method's ``dense_logits`` hook
through :func:`vpltool.models.dense.segmentor.segment_logits`, then the shared probabilities) with
``--dense textregion``'s settings.

With ``--sam2`` (where the ``sam2`` package is installed), also its SAM 2 generator: a seeded random SAM 2.1 hiera-t
(the package's config; the decoder's hypernetworks' last layers scaled by 200 and its IoU head's bias set to 3, so
that a random model's masks pass the 0.6 thresholds), saved as a checkpoint both load; the clone's own
``load_sam2`` and ``generate_for_batch`` (its ``sam2`` fork, ``--generator`` of the runner; both in batches of 16
points, where its 2048 would hold ~10 GB of this CPU's memory) against
:class:`vpltool.models.dense.textregion.generator.TextRegionGenerator`, on the same decoded photos.

Compared per photo: the logits its softmax receives (divided by the scale), the class probabilities, the labels
(its threshold and the argmax), and the number of regions kept after the global-patch filter. Bar: max |Δ| <= 1e-4
(fp32, CPU) and >= 99.9 % equal labels.

"fp32" here is its arithmetic, not its weights: its ``custom_clip.load`` builds the model with OpenAI's
``build_model``, which converts the linear, convolution and attention weights (and ``proj``, ``text_projection``)
to fp16 before ``model.float()`` on the CPU, so it computes in fp32 on weights rounded to fp16 values. The parity's
random weights are made fp16 values (``bench_cam.make_weights``), so both sides read the same numbers. With
``--rounding-images N`` the clone also runs on the same weights unrounded (an fp32 checkpoint, as a user's own is),
and the JSON's ``fp16_rounding`` says how far vpltool's logits, which keep the file's fp32 values, then are from its.

The merge's parity (``query_merge``; ``--merge-images`` photos): the clone run again on its class file with one
more query on rows 1, 4, 5, 10 and 20 (``parity_setup.synonym_class_file``), whose rows its ``postprocess_result``
merges by position, against vpltool's labels with ``--query-merge reference`` (the bar) and ``max`` (the share that
agrees). The set-up, the clone's process and the run are ``parity_setup``'s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import parity_setup as ps

BAR, LABELS_BAR = ps.BAR, ps.LABELS_BAR
MODEL = ps.CLIP_MODEL
commit_of, file_digest, max_abs = ps.commit_of, ps.file_digest, ps.max_abs
CONFIG = "configs/cfg_ds/cfg_voc21.py"
SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# both generators' prompts a decoder call (the reference's 2048 holds ~10 GB on a CPU); a batch's order is the same
POINTS_PER_BATCH = 16
# the generator's masks are float16 (its own .half()): one float16 step at their top range [2, 4) is 2^-9; a logit
# a rounding boundary apart on the two sides' SAM 2 (its fork's model code and the package's) moves a value by it
MASK_STEP = 2.0**-9


def soft_masks(image, seed: int):
    """One photo's region masks (module docstring): ``[R, H0, W0]`` float16 in [0, 3]."""
    import numpy as np
    from scipy.ndimage import gaussian_filter
    from skimage.segmentation import felzenszwalb

    masks = []
    for scale, keep in ((600, lambda k: k % 3 != 0), (150, lambda k: k % 2 == 0)):
        seg = felzenszwalb(image, scale=scale, sigma=0.8, min_size=300)
        for k in range(int(seg.max()) + 1):
            if keep(k + seed):
                ramp = gaussian_filter((seg == k).astype(np.float32), sigma=2.0)
                masks.append(np.clip(3.0 * (ramp - 0.25) / 0.5, 0.0, 3.0))
    tiny = np.zeros(image.shape[:2], np.float32)
    tiny[5:8, 5:8] = 3.0  # under a patch: it has no weight on the feature grid
    masks.append(tiny)
    return np.stack(masks).astype(np.float16)


def region_masks(photos: list[Path], folder: Path) -> list[Path]:
    """The photos' region-mask files, made once."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, photo in enumerate(photos):
        path = folder / f"{photo.stem}.npz"
        if not path.is_file():
            np.savez_compressed(path, masks=soft_masks(np.asarray(Image.open(photo).convert("RGB")), i))
        out.append(path)
    return out


def setup(work: Path, images: int, text_layers: int) -> dict:
    clip = ps.clip_weights(work, text_layers, MODEL)
    photos = ps.parity_photos(work, images, derived=("masks",))
    return {**clip, "photos": photos, "masks": region_masks(photos, work / "masks")}


def reference_stamp(args, s: dict) -> dict:
    """What the clone's output depends on: its commit, the files both sides read, the run's settings."""
    return {"commit": commit_of(args.ref), "weights": file_digest(s["pt"]),
            "photos": [file_digest(p) for p in s["photos"]], "masks": [file_digest(m) for m in s["masks"]],
            "config": args.config, "scale": args.scale, "runner": file_digest(Path(__file__).with_name(
                "textregion_ref_runner.py"))}


def reference_args(args, s: dict, photos: list[Path] | None = None, weights: Path | None = None) -> list[str]:
    """The clone's runner's arguments (``textregion_ref_runner.py``; ``photos`` and ``weights``: these in place of
    the run's)."""
    return ["--clone", str(args.ref), "--config", args.config, "--clip-weights", str(weights or s["pt"]),
            "--masks", str(s["masks"][0].parent), "--scale", args.scale, *map(str, photos or s["photos"])]


def run_reference(args, s: dict, out: Path) -> bool:
    """The clone's run (``textregion_ref_runner.py``, its own process) into ``out``; an output there with the same
    :func:`reference_stamp` is reused. Returns whether it was reused."""
    return ps.run_reference("textregion_ref_runner.py", reference_args(args, s), reference_stamp(args, s), out,
                            args.threads)


def textregion_method(folder: Path, scale: tuple[int, int], query_merge: str | None = None):
    """``--dense textregion`` resolved as `segment` resolves it: its VOC21 defaults (this run's Resize scale), the
    region masks from the parity folder (``query_merge``: its ``--query-merge``, None: the default)."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method

    cfg = SegmentConfig.of(dense="textregion", region_masks=str(folder), long_side=scale[0], short_side=scale[1],
                           query_merge=query_merge)
    return resolve_method(cfg)


def side_run(args, s: dict, work: Path, name: str, photos: list[Path], extra: list[str], stamp: dict,
             weights: Path | None = None) -> tuple[Path, bool]:
    """One more run of the clone into ``work/name`` on ``photos`` (``extra`` arguments, ``weights`` in place of the
    run's), reused by its stamp."""
    out = work / name
    stamp = {**reference_stamp(args, s), **stamp, "photos": [file_digest(p) for p in photos]}
    return out, ps.run_reference("textregion_ref_runner.py", [*reference_args(args, s, photos, weights), *extra],
                                 stamp, out, args.threads)


def vpltool_logits(bb, settings, text, r: dict, ori, mask_path: Path):
    """vpltool's logits ``[Q, H0, W0]`` of one reference photo (its input, CLIP-normalised; its masks)."""
    import numpy as np
    import torch

    from vpltool.models.dense.segmentor import segment_logits

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.mean, bb.std))
    masks = torch.from_numpy(np.load(mask_path)["masks"])
    with torch.no_grad():
        return segment_logits(bb, (r["input"] / 255.0 - mean) / std, text, settings, [ori], [{"masks": masks}])[0]


def merge_parity(args, s: dict, work: Path) -> dict:
    """The merge's parity (module docstring): the clone on the synonym class file, vpltool's labels at each
    ``--query-merge`` (its threshold and the argmax) against its."""
    from dataclasses import replace

    import torch

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names

    photos = s["photos"][: args.merge_images]
    names = ps.synonym_class_file(args.ref / "configs" / "cls_voc21.txt", work / "synonyms" / "cls_voc21.txt")
    out, reused = side_run(args, s, work, "ref_synonyms", photos, ["--name-path", str(names)],
                           {"name_path": file_digest(names)})
    meta = json.loads((out / "meta.json").read_text())
    scale = tuple(meta["resize_scale"])
    methods = {m: textregion_method(s["masks"][0].parent, scale, m) for m in ("reference", "max")}
    settings = methods["reference"].settings
    bb = methods["reference"].load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = meta["query_words"], torch.tensor(meta["query_idx"])
    n_classes = int(idx.max()) + 1
    with torch.no_grad():
        text = encode_names(bb, words, list(IMAGENET_TEMPLATES))
    worst, equal, total = 0.0, {(m, t): 0 for m in methods for t in ("threshold", "argmax")}, 0
    for i, photo in enumerate(photos):
        r = torch.load(out / f"photo_{i:03d}.pt")
        logits = vpltool_logits(bb, settings, text, r, tuple(meta["photos"][i]["ori_shape"]),
                                work / "masks" / f"{photo.stem}.npz")
        worst = max(worst, max_abs(logits, r["logits"][0]))
        with torch.no_grad():
            for m, method in methods.items():
                argmax = replace(settings, prob_threshold=0.0)
                for t, run, want in (("threshold", settings, r["pred"][0]), ("argmax", argmax, r["pred_argmax"][0])):
                    labels = method.hooks.probabilities(bb, logits, idx, n_classes, run)[1]
                    equal[m, t] += int((labels == want).sum())
        total += r["pred"][0].numel()
    return ps.merge_result(equal, total, worst, queries=len(words), classes=n_classes, images=len(photos),
                           reused=reused)


def unrounded_weights(s: dict, work: Path) -> tuple[Path, Path]:
    """The run's random CLIP without the rounding to fp16 values (``bench_cam.make_weights``' draw, seed 0), as
    ``.pt`` and ``.safetensors``, made once."""
    import torch
    from safetensors.torch import save_file

    from vpltool.models import ModelSpec, create_model

    folder = work / "unrounded"
    pt, st = folder / "weights.pt", folder / "weights.safetensors"
    if not (pt.is_file() and st.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _ = create_model(ModelSpec(s["name"], "none", config_dir=str(s["config_dir"])))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, pt)
        save_file(state, str(st))
    return pt, st


def rounding_parity(args, s: dict, work: Path) -> dict:
    """The clone on the run's weights unrounded (fp32 values its loader rounds to fp16) against vpltool on the same
    file (its fp32 values kept): how far its weight rounding moves the logits (module docstring)."""
    import torch

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names

    pt, st = unrounded_weights(s, work)
    photos = s["photos"][: args.rounding_images]
    out, reused = side_run(args, s, work, "ref_unrounded", photos, [], {"weights": file_digest(pt)}, weights=pt)
    meta = json.loads((out / "meta.json").read_text())
    method = textregion_method(s["masks"][0].parent, tuple(meta["resize_scale"]))
    bb = method.load(ModelSpec(s["name"], str(st), config_dir=str(s["config_dir"])), "cpu")
    with torch.no_grad():
        text = encode_names(bb, meta["query_words"], list(IMAGENET_TEMPLATES))
    worst = 0.0
    for i, photo in enumerate(photos):
        r = torch.load(out / f"photo_{i:03d}.pt")
        logits = vpltool_logits(bb, method.settings, text, r, tuple(meta["photos"][i]["ori_shape"]),
                                work / "masks" / f"{photo.stem}.npz")
        worst = max(worst, max_abs(logits, r["logits"][0]))
    return {"images": len(photos), "output_reused": reused, "seg_logits": worst,
            "text_rows": max_abs(text, torch.load(out / "text.pt")["query_features"])}


def compare(args, s: dict, ref: Path) -> dict:
    import numpy as np
    import torch

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models import ModelSpec
    from vpltool.models.backbones.prompts import encode_names
    from vpltool.models.dense.segmentor import dense_probabilities, segment_logits

    torch.set_num_threads(args.threads)
    meta = json.loads((ref / "meta.json").read_text())
    method = textregion_method(s["masks"][0].parent, tuple(meta["resize_scale"]))
    settings = method.settings
    bb = method.load(ModelSpec(s["name"], str(s["st"]), config_dir=str(s["config_dir"])), "cpu")
    words, idx = meta["query_words"], torch.tensor(meta["query_idx"])
    with torch.no_grad():
        text = encode_names(bb, words, list(IMAGENET_TEMPLATES))
    ref_text = torch.load(ref / "text.pt")["query_features"]
    n_classes = int(idx.max()) + 1
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.mean, bb.std))
    photos, worst_logits, worst_probs, equal, total = [], 0.0, 0.0, 0, 0
    for i, mask_path in enumerate(s["masks"]):
        r = torch.load(ref / f"photo_{i:03d}.pt")
        x, ori = r["input"], tuple(meta["photos"][i]["ori_shape"])
        pixels = (x / 255.0 - mean) / std
        masks = torch.from_numpy(np.load(mask_path)["masks"])
        start = time.perf_counter()
        with torch.no_grad():
            logits = segment_logits(bb, pixels, text, settings, [ori], [{"masks": masks}])[0]
            probs, labels = dense_probabilities(logits, idx, n_classes, settings.logit_scale,
                                                settings.prob_threshold)
            argmax = dense_probabilities(logits, idx, n_classes, settings.logit_scale, 0.0)[1]
        same, same_argmax = labels == r["pred"][0], argmax == r["pred_argmax"][0]
        row = {"file": meta["photos"][i]["file"], "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
               "regions_fed": meta["photos"][i]["regions_fed"], "regions_kept": meta["photos"][i]["regions_kept"],
               "seconds": round(time.perf_counter() - start, 1), "seg_logits": max_abs(logits, r["logits"][0]),
               "probs": max_abs(probs, r["probs"]), "labels_equal": float(same.float().mean()),
               "labels_equal_argmax": float(same_argmax.float().mean()),
               "uncovered_pixels": float((r["region_masks"].clamp(0, 1).sum(0) == 0).float().mean()),
               "reference_classes": sorted(int(c) for c in torch.unique(r["pred"])),
               "reference_classes_argmax": sorted(int(c) for c in torch.unique(r["pred_argmax"]))}
        worst_logits, worst_probs = max(worst_logits, row["seg_logits"]), max(worst_probs, row["probs"])
        equal, total = equal + int(same.sum()) + int(same_argmax.sum()), total + same.numel() + same_argmax.numel()
        photos.append(row)
    share = equal / max(total, 1)
    worst = max(worst_logits, worst_probs)
    return {"text_rows": max_abs(text, ref_text), "seg_logits": worst_logits, "probs": worst_probs,
            "labels_equal": share, "photos": photos,
            "settings": {"vpltool": {"logit_scale": settings.logit_scale, "prob_thd": settings.prob_threshold,
                                     "short_side": settings.short_side, "long_side": settings.long_side},
                         "reference": {**meta["effective"], "resize_scale": meta["resize_scale"]}},
            "bar_met": bool(worst <= BAR and share >= LABELS_BAR), "reference_seconds": meta["seconds"]}


def sam2_checkpoint(work: Path) -> Path:
    """The random SAM 2.1 hiera-t of ``--sam2`` (module docstring), made once."""
    import torch
    from sam2.build_sam import build_sam2

    path = work / "sam2.1_hiera_t_random.pt"
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_sam2(SAM2_CONFIG, None, device="cpu")
        with torch.no_grad():
            for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(200.0)
            model.sam_mask_decoder.iou_prediction_head.layers[-1].bias.fill_(3.0)
        torch.save({"model": model.state_dict()}, path)
    return path


def generator_parity(args, s: dict, work: Path) -> dict:
    """The clone's SAM 2 generator against vpltool's on each photo (``--sam2``)."""
    import cv2
    import numpy as np
    import torch

    from vpltool.config import SegmentConfig
    from vpltool.models.dense.textregion.generator import MaskGenerator, Sam2Model, TextRegionGenerator

    ckpt = sam2_checkpoint(work)
    out = work / "ref_generator"
    stamp = {**reference_stamp(args, s), "sam2": file_digest(ckpt), "points_per_batch": POINTS_PER_BATCH}
    reused = ps.run_reference("textregion_ref_runner.py", [
        "--clone", str(args.ref), "--config", args.config, "--generator", "--sam2-config", SAM2_CONFIG,
        "--sam2-checkpoint", str(ckpt), "--points-per-batch", str(POINTS_PER_BATCH), "--scale", args.scale,
        *map(str, s["photos"])], stamp, out, args.threads)
    meta = json.loads((out / "meta.json").read_text())
    scale = meta["resize_scale"]
    cfg = SegmentConfig.of(dense="textregion", region_masks="sam2", long_side=scale[0], short_side=scale[1])
    settings = MaskGenerator(points_per_side=meta["sam2_cfg"]["points_per_side"], points_per_batch=POINTS_PER_BATCH)
    ours = TextRegionGenerator(Sam2Model(SAM2_CONFIG, ckpt), settings)
    rows, worst, equal, same_count = [], 0.0, 1.0, True
    for i, photo in enumerate(s["photos"]):
        bgr = cv2.imdecode(np.frombuffer(photo.read_bytes(), np.uint8), cv2.IMREAD_COLOR)  # as its pipeline decodes
        start = time.perf_counter()
        got = torch.from_numpy(ours.masks(photo, np.ascontiguousarray(bgr[..., ::-1]), cfg))
        want = torch.load(out / f"masks_{i:03d}.pt")["masks"]
        row = {"file": photo.name, "regions": len(want), "regions_vpltool": len(got),
               "seconds": round(time.perf_counter() - start, 1)}
        if len(got) == len(want):
            row["masks"] = max_abs(got, want) if len(got) else 0.0
            row["values_equal"] = float((got.float() == want.float()).float().mean()) if len(got) else 1.0
            worst, equal = max(worst, row["masks"]), min(equal, row["values_equal"])
        same_count &= len(got) == len(want)
        rows.append(row)
    return {"config": SAM2_CONFIG, "settings": meta["sam2_cfg"], "output_reused": reused,
            "reference_seconds": meta["seconds"], "photos": rows, "masks": worst, "values_equal": equal,
            "same_counts": same_count, "bar": {"max_abs": MASK_STEP, "values_equal": LABELS_BAR},
            "bar_met": bool(same_count and worst <= MASK_STEP and equal >= LABELS_BAR)}


def page(r: dict) -> dict:
    """The section docs/parity.md shows for this run (``docgen/parity_page.py`` reads it)."""
    kept = [p["regions_kept"] for p in r["photos"]]
    return {"title": "TextRegion (`--dense textregion`)",
            "command": f"`python parity/textregion_parity.py --ref TextRegion"
                       f"{'' if r['images'] == 12 else ' --images ' + str(r['images'])}"
                       f"{' --sam2' if 'generator' in r else ''}` (`parity/textregion_ref_runner.py` "
                       f"runs the clone). Clone: {r['reference']['repo']} `{(r['reference']['commit'] or '?')[:7]}`; "
                       f"random {r['model']} (OpenAI's ViT-B/16 image tower, one text block); {r['images']} photos "
                       f"through its {r['run']['config']} (Resize {r['run']['resize_scale']}); both sides read the "
                       f"same soft region masks (its SAM 2 generator stubbed to return them; {min(kept)}-{max(kept)} "
                       "regions a photo kept after its global-patch filter)."
                       + (f" Its SAM 2 generator: a random {r['generator']['config'].rsplit('/', 1)[-1]} (decoder "
                          "scaled so that masks pass its 0.6 thresholds), the clone's sam2 fork against the sam2 "
                          f"package, both decoding {POINTS_PER_BATCH} points a call." if "generator" in r else ""),
            "bar": f"max abs diff <= {r['bar']['max_abs']:g}, labels equal >= {r['bar']['labels_equal']:.1%}",
            "rows": [["logits (before the softmax), max abs diff", r["seg_logits"]],
                     ["probabilities, max abs diff", r["probs"]],
                     ["labels equal (threshold 0.4 and argmax)", r["labels_equal"]],
                     ["text rows, max abs diff", r["text_rows"]],
                     *ps.merge_rows(r, logits="logits"),
                     *([[f"its fp16 weight rounding: logits on an unrounded fp32 checkpoint, max abs diff "
                         f"({r['fp16_rounding']['images']} photos; not a bar)", r["fp16_rounding"]["seg_logits"]]]
                       if "fp16_rounding" in r else []),
                     *([["SAM 2 generator: masks a photo (reference / vpltool)", ", ".join(
                         f"{p['regions']} / {p['regions_vpltool']}" for p in r["generator"]["photos"])],
                        ["SAM 2 generator: mask values, max abs diff (bar: one float16 step, 2^-9)",
                         r["generator"]["masks"]],
                        ["SAM 2 generator: mask values equal", r["generator"]["values_equal"]]]
                       if "generator" in r else [])]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of avaxiao/TextRegion (e392cd2)")
    ap.add_argument("--work", type=Path, default=None, help="keeps the weights, photos, masks and the clone's output")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--merge-images", type=int, default=3, help="photos of the merge's parity (0: none)")
    ap.add_argument("--rounding-images", type=int, default=0,
                    help="photos of its fp16 weight rounding on an unrounded checkpoint (0: none)")
    ap.add_argument("--text-layers", type=int, default=1, help="text blocks of the random model (0: its own 12)")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--scale", default="", help="JSON [long, short]: both sides' Resize in place of the config's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sam2", action="store_true", help="also its SAM 2 generator (the sam2 package)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    args.ref = args.ref.resolve()

    def result(work: Path) -> dict:
        s = setup(work, args.images, args.text_layers)
        ref_out = work / "ref"
        reused = run_reference(args, s, ref_out)
        meta = json.loads((ref_out / "meta.json").read_text())
        out = {"reference": {"repo": "avaxiao/TextRegion", "commit": commit_of(args.ref), "output_reused": reused,
                             "stubbed": meta["stubbed"]},
               "run": {"config": args.config, "resize_scale": meta["resize_scale"]},
               "model": s["name"], "images": args.images, "threads": args.threads,
               "bar": {"max_abs": BAR, "labels_equal": LABELS_BAR}, **compare(args, s, ref_out)}
        if args.merge_images:
            out["query_merge"] = merge_parity(args, s, work)
            out["bar_met"] = out["bar_met"] and out["query_merge"]["bar_met"]
        if args.rounding_images:
            out["fp16_rounding"] = rounding_parity(args, s, work)
        if args.sam2:
            out["generator"] = generator_parity(args, s, work)
            out["bar_met"] = out["bar_met"] and out["generator"]["bar_met"]
        return out

    ps.run(args, result, page)


if __name__ == "__main__":
    main()

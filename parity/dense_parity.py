"""vpltool's dense CLIP methods (``--dense``) against each method's OWN public code; prints ONE JSON object.

    python parity/dense_parity.py --ref DIR [--work DIR] [--images 12] [--threads 1]
    python parity/dense_parity.py --quick      # plumbing only: no clone, vpltool against itself (Δ = 0)

``--ref DIR`` holds clones of wangf3014/SCLIP, mc-lan/ClearCLIP and sinahmr/NACLIP (folders named ``SCLIP``,
``ClearCLIP``, ``NACLIP``, any case); a missing one is reported, not compared. The clones' code never enters this
repository: each runs in its own process through ``dense_ref_runner.py`` (its module docstring says what is put
around it: stub OpenMMLab modules, the local weights, fp32 on the CPU, mmseg's VOC21 test pipeline restated).

Set-up: random ``ViT-B-16-quickgelu`` weights (seed 0, values exact in fp16 so that ``clip.load``'s fp16 round trip
changes nothing; OpenAI's layout, as ``bench_cam.py`` makes them for CLIP-ES) saved as ``.pt`` for the clones and
``.safetensors`` for vpltool, and the 12 parity photos (``bench_cam.PHOTOS``: scikit-image's bundled photos at
VOC-like sizes) as JPEGs. Each method runs as its ``configs/cfg_voc21.py`` says (VOC with background, the clone's own
class file with its synonyms and background words); the variants (:data:`VARIANTS`):

* ``sclip``: SCLIP's ``CLIPForSegmentation`` (CSA last block, logit scale 65, area filter 0.1, threshold 0.1,
  slide 224/112, short side 336);
* ``clearclip``: ClearCLIP's ``ClearCLIPSegmentation`` with ``model_type='ClearCLIP'`` (its ``base_config.py`` says
  ``'vanilla'``: the method needs the override), slide 448/224, short side 448, scale 50, threshold 0.5;
* ``maskclip``: the same segmentor with ``model_type='MaskCLIP'``, ``ignore_residual=False`` (value path, residual
  and FFN), ClearCLIP's settings;
* ``naclip``: NACLIP's ``NACLIP`` (``reduced``, ``naclip``, std 5), the whole image, PAMR off; ``naclip-pamr``: its
  default PAMR (10 steps, dilations 8 and 16); ``naclip-slide``: slide 224/112; ``naclip-csa``: ``arch='vanilla'``,
  ``attn_strategy='csa'`` (SCLIP's block in NACLIP's code) against vpltool's ``sclip`` with NACLIP's segmentor.

Compared per variant, vpltool given the same normalised input tensors and its own text rows:

a. ``patch_logits``: the patch-level cosine logits ``[Q, h, w]`` of one ``forward_feature`` (the first photo's
   input cropped to 224x224, and whole) against :func:`vpltool.models.dense.segmentor.grid_logits`;
b. ``seg_logits``: per photo the cosine logits at the photo's size that the segmentor hands its
   ``postprocess_result`` (slide or whole image, PAMR where on) against
   :func:`vpltool.models.dense.segmentor.segment_logits` with vpltool's settings of the method; ``probs`` and
   ``labels_equal`` against :func:`vpltool.models.dense.segmentor.dense_probabilities` (NACLIP divides its
   probabilities by their sum over classes after the argmax: vpltool's are compared after the same division);
   ``settings``: vpltool's defaults of the method against the segmentor's own (its instance's values);
c. ``text_rows``: the segmentor's query rows (80 ImageNet templates, per-template normalised, mean, normalised)
   against :func:`vpltool.models.backbones.prompts.encode_names` with vpltool's ``imagenet`` templates;
d. ``preprocessing`` (not part of a, b): mmseg's input (cv2 decode, ``Resize`` = cv2 bilinear, mmseg's mean/std in
   0-255) against vpltool's own (Pillow decode, :func:`~vpltool.models.dense.segmentor.short_side_size`, Pillow bicubic,
   CLIP's mean/std): the sizes, the pixels' difference, and the labels vpltool gives from its own input.

The headline ``methods`` is each method's max |Δ| over its patch and seg logits (the bar: <= 1e-4, fp32, CPU).
``--work DIR`` keeps the weights, photos and the clones' outputs; a later run reuses an output whose variant,
clone commit, weights and photo count are the same (vpltool's side always runs). The clones run at the same time,
one process each.

Cost, and what it changes: the four methods run on ``--images`` photos (12), the extra variants on
``--extra-images`` (3), point d's labels on ``--pre-images`` (3). The random model's **text tower has
``--text-layers`` blocks (1 by default; 0 = the model's own 12)**: the clones encode each of their 56 (SCLIP,
NACLIP) or 21 (ClearCLIP) queries with 80 prompts at the full 77-token context, ~26 TFLOP per clone with 12 blocks,
more than a shared two-core machine gives a session; with one block the text rows go through the same code
(tokenizer, EOT pooling, projection, the per-template normalisation and mean), and the image tower is ViT-B/16's
whole (12 blocks, width 768, 16-pixel patches).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets" / "model_configs"
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "bench")]
import benchlib  # noqa: E402

BAR = 1e-4
QUICK = {"images": 1, "model": "vpl-test-vit"}
# name -> (clone, module, class, the segmentor's overrides, vpltool's --dense, vpltool's settings of, their overrides)
VARIANTS: dict[str, tuple[str, str, str, dict, str, str, dict]] = {
    "sclip": ("SCLIP", "clip_segmentor", "CLIPForSegmentation", {}, "sclip", "sclip", {}),
    "clearclip": ("ClearCLIP", "clearclip_segmentor", "ClearCLIPSegmentation",
                  {"model_type": "ClearCLIP", "ignore_residual": True}, "clearclip", "clearclip", {}),
    "maskclip": ("ClearCLIP", "clearclip_segmentor", "ClearCLIPSegmentation",
                 {"model_type": "MaskCLIP", "ignore_residual": False}, "maskclip", "maskclip", {}),
    "naclip": ("NACLIP", "naclip", "NACLIP", {"pamr_steps": 0}, "naclip", "naclip", {"pamr_steps": 0}),
    "naclip-pamr": ("NACLIP", "naclip", "NACLIP", {}, "naclip", "naclip", {}),
    "naclip-slide": ("NACLIP", "naclip", "NACLIP", {"pamr_steps": 0, "slide_crop": 224, "slide_stride": 112},
                     "naclip", "naclip", {"pamr_steps": 0, "slide_crop": 224, "slide_stride": 112}),
    "naclip-csa": ("NACLIP", "naclip", "NACLIP", {"pamr_steps": 0, "arch": "vanilla", "attn_strategy": "csa"},
                   "sclip", "naclip", {"pamr_steps": 0}),
}
# a variant's point-a inputs other than crop224 and whole (dense_ref_runner.patch_inputs)
PATCH_INPUTS: dict[str, list[str]] = {}
# a clone's extra dense_ref_runner.py arguments (ProxyCLIP's proxy model)
RUNNER_ARGS: dict[str, list[str]] = {}
# the headline: each method's variants
MAIN = ("maskclip", "sclip", "clearclip", "naclip")  # every photo; the other variants --extra-images
METHODS = {"maskclip": ("maskclip",), "sclip": ("sclip",), "clearclip": ("clearclip",),
           "naclip": ("naclip", "naclip-pamr", "naclip-slide"), "naclip-repo-csa (sclip)": ("naclip-csa",)}
MASKCLIP_NOTE = (
    "maskclip is compared with ClearCLIP's MaskCLIP mode (model_type='MaskCLIP', ignore_residual=False: value path, "
    "residual, FFN), which vpltool follows. The original chongzhou96/MaskCLIP (an mmseg 0.x / mmcv 1.x fork) is not "
    "run; as its configs/_base_/models/maskclip_vit16.py reads, its ViT-B/16 differs in numerics: exact GELU (not "
    "CLIP's QuickGELU), LayerNorm eps 1e-6 (CLIP: 1e-5), the positional embedding resized bicubically to the grid "
    "(not the +0.1 scale factor), and its own text embeddings and test protocol.")
# the segmentors' attribute -> vpltool's DenseSettings field
SETTINGS = {"logit_scale": "logit_scale", "prob_thd": "prob_threshold", "area_thd": "area_threshold",
            "slide_crop": "slide_crop", "slide_stride": "slide_stride", "pamr_steps": "pamr_steps",
            "pamr_dilations": "pamr_dilations"}


# --------------------------------------------------------------------------------------------- set-up
def model_config(work: Path, model: str, text_layers: int | None) -> tuple[str, Path]:
    """The model's name and config folder: ``model`` itself, or (``text_layers``) a copy of its open_clip config
    with that many text blocks, written into ``work`` as ``<model>-text<N>`` (the image tower unchanged)."""
    if not text_layers:
        return model, ASSETS
    from open_clip.factory import get_model_config

    cfg = get_model_config(model)
    if cfg is None:
        raise SystemExit(f"--text-layers: open_clip has no config {model!r} to copy")
    cfg["text_cfg"]["layers"] = text_layers
    name = f"{model}-text{text_layers}"
    folder = work / "model_configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    return name, folder


def setup(work: Path, model: str, config_dir: Path, images: int, scale: float) -> tuple[Path, Path, Path]:
    """The weights (.pt, .safetensors) and the photos' folder in ``work``, made once."""
    import bench_cam

    pt, st = work / "weights.pt", work / "weights.safetensors"
    marker = work / "weights.json"
    if not (pt.is_file() and st.is_file() and marker.is_file()
            and json.loads(marker.read_text()) == {"model": model}):
        bench_cam.make_weights(work, model, config_dir)
        marker.write_text(json.dumps({"model": model}))
    voc = work / "voc"
    photos = voc / "JPEGImages"
    if len(list(photos.glob("*.jpg"))) != images:
        import shutil

        shutil.rmtree(voc, ignore_errors=True)
        bench_cam.make_voc(voc, images, scale)
    return pt, st, photos


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def find_clones(ref: Path) -> dict[str, Path]:
    """``{SCLIP, ClearCLIP, NACLIP}`` -> the clone in ``ref`` (a folder of that name, any case)."""
    found = {}
    children = {p.name.lower(): p for p in ref.iterdir() if p.is_dir()} if ref.is_dir() else {}
    for name in ("SCLIP", "ClearCLIP", "NACLIP"):
        if name.lower() in children:
            found[name] = children[name.lower()]
    return found


def commit_of(clone: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def variant_images(name: str, images: int, extra_images: int) -> int:
    """Photos a variant runs on: every photo for the four methods, ``extra_images`` for the extra variants."""
    return images if name in MAIN else min(images, extra_images)


def start_references(clones: dict[str, Path], work: Path, pt: Path, photos: Path, images: int, extra_images: int,
                     threads: int, python: str) -> tuple[dict[str, dict], dict]:
    """Start each clone's variants through ``dense_ref_runner.py`` (one process per clone, all at once), reusing
    outputs in ``work/ref`` whose variant, clone commit, weights and photo count match; a variant to run loses its
    old folder first, so that its ``meta.json`` (written last) says it is done. Returns (per clone what runs,
    the processes for :func:`finish_references`)."""
    import shutil

    digest = file_digest(pt)
    out, info, procs = work / "ref", {}, {}
    out.mkdir(parents=True, exist_ok=True)
    for clone_name, clone in clones.items():
        commit = commit_of(clone)
        todo = []
        for name, (owner, module, cls, overrides, *_) in VARIANTS.items():
            if owner != clone_name:
                continue
            stamp = {"commit": commit, "weights": digest, "overrides": overrides,
                     "images": variant_images(name, images, extra_images)}
            if PATCH_INPUTS.get(name):
                stamp["patches"] = PATCH_INPUTS[name]
            meta, done = out / name / "meta.json", out / name / "stamp.json"
            if not (meta.is_file() and done.is_file() and json.loads(done.read_text()) == stamp):
                shutil.rmtree(out / name, ignore_errors=True)
                todo.append((name, module, cls, overrides, stamp))
        info[clone_name] = {"path": str(clone), "commit": commit, "ran": [t[0] for t in todo],
                            "reused": [n for n, v in VARIANTS.items() if v[0] == clone_name
                                       and n not in [t[0] for t in todo]]}
        if todo:
            variants = [{"name": n, "overrides": o, "images": st["images"], "patches": PATCH_INPUTS.get(n)}
                        for n, _, _, o, st in todo]
            cmd = [python, str(Path(__file__).parent / "dense_ref_runner.py"), "--clone", str(clone), "--module",
                   todo[0][1], "--cls", todo[0][2], "--weights", str(pt), "--photos", str(photos), "--images",
                   str(images), "--out", str(out), "--threads", str(threads), "--variants", json.dumps(variants),
                   *RUNNER_ARGS.get(clone_name, [])]
            log = open(out / f"{clone_name}.log", "w")
            procs[clone_name] = (subprocess.Popen(cmd, env=_env(threads), stdout=log, stderr=log), log, todo, cmd,
                                 time.perf_counter())
    return info, procs


def check_references(procs: dict, work: Path, wait: bool = False) -> None:
    """Exit with the log's tail if a clone's process failed (``wait``: wait for each; then write the stamps)."""
    for clone_name, (proc, log, todo, cmd, start) in procs.items():
        if wait:
            proc.wait()
        code = proc.poll()
        if code is not None and not hasattr(proc, "seconds"):
            proc.seconds = time.perf_counter() - start  # the first time it is seen finished (polled every 2 s)
        if code:
            log.flush()
            tail = (work / "ref" / f"{clone_name}.log").read_text()[-3000:]
            raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{tail}")


def finish_references(procs: dict, info: dict, work: Path) -> None:
    """Wait for the clones' processes, stamp their variants' outputs (reused by a later run), record seconds."""
    check_references(procs, work, wait=True)
    for clone_name, (proc, log, todo, cmd, start) in procs.items():
        log.close()
        for name, *_, stamp in todo:
            (work / "ref" / name / "stamp.json").write_text(json.dumps(stamp))
        info[clone_name]["seconds"] = round(proc.seconds, 1)


def _env(threads: int) -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}


# --------------------------------------------------------------------------------------------- vpltool's side
def settings_for(name: str):
    """vpltool's :class:`~vpltool.config.DenseSettings` of a variant (its method's defaults, then the variant's
    overrides)."""
    from vpltool.config.dense import DENSE_SEGMENTORS

    _, _, _, _, _, settings_of, overrides = VARIANTS[name]
    return replace(DENSE_SEGMENTORS[settings_of], **overrides)


class Vpltool:
    """vpltool's side: one backbone per ``--dense`` method on the same weights, text rows made once per query list."""

    def __init__(self, model: str, weights: Path, config_dir: Path = ASSETS):
        from vpltool.models import ModelSpec, load_backbone

        self.base = load_backbone(ModelSpec(model, str(weights), config_dir=str(config_dir)), "cpu")
        self._rows: dict = {}

    def backbone(self, method: str):
        return self.base.with_dense(method)

    def rows(self, words: list[str]):
        """``[Q, D]`` unit rows of ``words`` with vpltool's ``imagenet`` templates."""
        from vpltool.config.presets import IMAGENET_TEMPLATES
        from vpltool.models.backbones.prompts import encode_names

        key = tuple(words)
        if key not in self._rows:
            import torch

            with torch.no_grad():
                self._rows[key] = encode_names(self.base, list(words), list(IMAGENET_TEMPLATES))
        return self._rows[key]


def vpltool_outputs(vt: Vpltool, name: str, x, text, query_idx, n_classes: int, ori, renormalise: bool):
    """vpltool's logits ``[Q, H0, W0]``, probabilities ``[C, H0, W0]`` and labels ``[H0, W0]`` of one input."""
    import torch

    from vpltool.models.dense.segmentor import dense_probabilities, segment_logits

    settings = settings_for(name)
    bb = vt.backbone(VARIANTS[name][4])
    with torch.no_grad():
        logits = segment_logits(bb, x, text, settings, [tuple(ori)])[0]
        probs, labels = dense_probabilities(logits, query_idx, n_classes, settings.logit_scale,
                                            settings.prob_threshold, settings.area_threshold)
    if renormalise:
        probs = probs / probs.sum(0, keepdim=True)
    return logits, probs, labels


def write_self_reference(vt: Vpltool, work: Path, photos: Path, images: int) -> None:
    """Without ``--ref``: vpltool's own outputs in the runner's format (the comparison's plumbing, Δ = 0)."""
    import torch
    from dense_ref_runner import mmseg_input, patch_inputs

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models.dense.segmentor import grid_logits

    words = ["grass", "sky", "aeroplane", "cat", "person", "man"]  # background words, then classes and a synonym
    query_idx = [0, 0, 1, 2, 3, 3]
    pre = {"mean": [m * 255 for m in vt.base.mean], "std": [s * 255 for s in vt.base.std], "bgr_to_rgb": True}
    files = sorted(photos.glob("*.jpg"))[:images]
    for name in VARIANTS:
        out = work / "ref" / name
        out.mkdir(parents=True, exist_ok=True)
        settings = settings_for(name)
        text = vt.rows(words)
        torch.save({"query_features": text}, out / "text.pt")
        inputs = [mmseg_input(p, (2048, settings.short_side), pre) for p in files]
        bb = vt.backbone(VARIANTS[name][4])
        first = inputs[0][0]
        patches = {}
        for key, x in patch_inputs(first, PATCH_INPUTS.get(name)).items():
            with torch.no_grad():
                patches[key] = {"input": x, "patch_logits": grid_logits(bb, x, text)}
        torch.save(patches, out / "patch.pt")
        shapes = []
        renorm = VARIANTS[name][0] == "NACLIP"
        for i, ((x, ori), path) in enumerate(zip(inputs, files)):
            logits, probs, labels = vpltool_outputs(vt, name, x, text, torch.tensor(query_idx), 4, ori, renorm)
            torch.save({"input": x, "logits": logits[None], "probs": probs, "pred": labels[None]},
                       out / f"photo_{i:03d}.pt")
            shapes.append({"file": path.name, "ori_shape": list(ori), "input_shape": list(x.shape[-2:])})
        effective = {k: getattr(settings, v) for k, v in SETTINGS.items()}
        effective["pamr_dilations"] = list(settings.pamr_dilations) if settings.pamr_steps else None
        meta = {"variant": {"name": name}, "module": "self", "kwargs": {}, "effective": effective,
                "resize_scale": [2048, settings.short_side], "preprocessor": pre, "query_words": words,
                "query_idx": query_idx, "templates": list(IMAGENET_TEMPLATES), "photos": shapes, "notes": []}
        (out / "meta.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------------------------- comparison
def max_abs(a, b) -> float | None:
    """max |a - b| (float64), or None when the shapes differ."""
    if tuple(a.shape) != tuple(b.shape):
        return None
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def worst(values) -> float | None:
    """The largest of ``values``; None (a shape mismatch) wins, then NaN."""
    values = list(values)
    if any(v is None for v in values):
        return None
    if any(v != v for v in values):  # NaN (a side's logits NaN) wins too: Python's max would skip it
        return float("nan")
    return max(values) if values else None


def summary(variants: dict, methods: dict, labels_bar: float | None = None) -> dict:
    """Per method of ``methods`` (name -> its variants): the worst max |Δ| of its variants' patch and seg logits, the
    fewest equal labels of any of them, and the bars (with ``labels_bar``, the labels' too)."""
    out = {}
    for method, members in methods.items():
        present = [m for m in members if m in variants]
        if not present:
            continue
        values = [variants[m]["seg_logits_max_abs_diff"] for m in present]
        values += [p["max_abs_diff"] for m in present for p in variants[m]["patch_logits"].values()]
        value = worst(values)
        labels = [variants[m]["labels_equal_min"] for m in present]
        labels_min = None if any(v is None for v in labels) else min(labels)  # the fewest, not worst()'s largest
        out[method] = {"max_abs_diff": value, "bar_met": value is not None and value <= BAR,
                       "labels_equal_min": labels_min}
        if labels_bar is not None:
            out[method]["labels_bar_met"] = labels_min is not None and labels_min >= labels_bar
        out[method]["variants"] = present
    return out


def compare_variant(vt: Vpltool, name: str, ref: Path) -> dict:
    """Points a-c of the module docstring for one variant whose reference outputs are in ``ref``."""
    import torch

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models.dense.segmentor import grid_logits

    meta = json.loads((ref / "meta.json").read_text())
    words, query_idx = meta["query_words"], torch.tensor(meta["query_idx"])
    n_classes = int(query_idx.max()) + 1
    text = vt.rows(words)
    ref_text = torch.load(ref / "text.pt")["query_features"]
    bb = vt.backbone(VARIANTS[name][4])
    patch = {}
    for key, item in torch.load(ref / "patch.pt").items():
        with torch.no_grad():
            ours = grid_logits(bb, item["input"], text)
        patch[key] = {"input_shape": list(item["input"].shape[-2:]),
                      "max_abs_diff": max_abs(ours, item["patch_logits"])}
    renorm = VARIANTS[name][0] == "NACLIP"
    photos = []
    for i, shape in enumerate(meta["photos"]):
        saved = torch.load(ref / f"photo_{i:03d}.pt")
        logits, probs, labels = vpltool_outputs(vt, name, saved["input"], text, query_idx, n_classes,
                                                shape["ori_shape"], renorm)
        same = labels.shape == saved["pred"][0].shape
        photos.append({"file": shape["file"], "input_shape": shape["input_shape"], "ori_shape": shape["ori_shape"],
                       "reference_label_classes": int(saved["pred"].unique().numel()),
                       "logits": max_abs(logits, saved["logits"][0]), "probs": max_abs(probs, saved["probs"]),
                       "labels_equal": float((labels == saved["pred"][0]).double().mean()) if same else None})
    settings = settings_for(name)
    ours = {k: getattr(settings, v) for k, v in SETTINGS.items()}
    ours["pamr_dilations"] = list(settings.pamr_dilations) if settings.pamr_steps else None
    theirs = meta.get("effective", {})
    ours["short_side"], theirs = settings.short_side, {**theirs, "short_side": min(meta["resize_scale"])}
    mismatched = {k: {"vpltool": ours[k], "reference": theirs.get(k)} for k in ours
                  if k in theirs and not _same(ours[k], theirs[k])}
    return {
        "reference": f"{VARIANTS[name][0]} {meta['module']}.{meta.get('cls', '')} {meta.get('config', '')} "
                     f"+ {json.dumps(VARIANTS[name][3])}".strip(),
        "vpltool": f"--dense {VARIANTS[name][4]}, the segmentor settings of {VARIANTS[name][5]}"
                   + (f" with {json.dumps(VARIANTS[name][6])}" if VARIANTS[name][6] else ""),
        "queries": len(words), "classes": n_classes,
        "text_rows_max_abs_diff": max_abs(text, ref_text),
        "templates_equal": list(IMAGENET_TEMPLATES) == meta.get("templates"),
        "patch_logits": patch,
        "seg_logits_max_abs_diff": worst(p["logits"] for p in photos),
        "probs_max_abs_diff": worst(p["probs"] for p in photos),
        "labels_equal_min": None if any(p["labels_equal"] is None for p in photos)
        else min(p["labels_equal"] for p in photos),
        # random weights: a method may label a whole photo one class (ClearCLIP's 0.5 threshold: background), where
        # equal labels say little; the logits and probabilities are the comparison
        "reference_label_classes_max": max((p["reference_label_classes"] for p in photos), default=0),
        "settings_mismatched": mismatched,
        "reference_settings": theirs,
        "photos": photos,
        "notes": meta.get("notes", []),
    }


def compare_all(vt: Vpltool, names: list[str], work: Path, procs: dict, jobs: int) -> dict:
    """:func:`compare_variant` of every variant, ``jobs`` at a time in threads (torch's ops run outside the GIL),
    each as soon as its reference is written (its ``meta.json``), while the clones still run their other variants."""
    from concurrent.futures import ThreadPoolExecutor

    pending, futures = list(names), {}
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        while pending:
            for name in [n for n in pending if (work / "ref" / n / "meta.json").is_file()]:
                futures[name] = pool.submit(compare_variant, vt, name, work / "ref" / name)
                pending.remove(name)
            if pending:
                check_references(procs, work)
                if procs and all(p[0].poll() is not None for p in procs.values()) and not any(
                        (work / "ref" / n / "meta.json").is_file() for n in pending):
                    raise SystemExit(f"the clones finished without writing {', '.join(pending)}")
                time.sleep(2)
        return {name: futures[name].result() for name in names}


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return float(a) == float(b)


def preprocessing(vt: Vpltool, work: Path, photos: Path, images: int, label_variants: list[str]) -> dict:
    """Point d of the module docstring: mmseg's input against vpltool's own, per photo and short side."""
    import cv2
    import numpy as np
    import torch
    from dense_ref_runner import mmseg_input

    from vpltool.io import load_image
    from vpltool.models.dense.segmentor import short_side_size

    files = sorted(photos.glob("*.jpg"))[:images]
    pre = vt.base.preprocessor
    out: dict = {"decode_max_abs_diff_uint8": 0, "sizes_equal": True, "by_short_side": {}}
    for path in files:
        ours = load_image(path)
        theirs = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        out["decode_max_abs_diff_uint8"] = max(out["decode_max_abs_diff_uint8"],
                                               int(np.abs(ours.astype(int) - theirs.astype(int)).max()))
    for name in label_variants:
        ref = work / "ref" / name
        if not (ref / "meta.json").is_file():
            continue
        meta = json.loads((ref / "meta.json").read_text())
        short = min(meta["resize_scale"])
        mm = {"mean": meta["preprocessor"]["mean"], "std": meta["preprocessor"]["std"], "bgr_to_rgb": True}
        stats = out["by_short_side"].setdefault(str(short), {"pixels_max_abs_diff": 0.0, "pixels_mean_abs_diff": [],
                                                            "normalisation_only_max_abs_diff": 0.0,
                                                            "labels_equal_from_own_input": {}})
        words, query_idx = meta["query_words"], torch.tensor(meta["query_idx"])
        for i, path in enumerate(files):
            x_ref, ori = mmseg_input(path, tuple(meta["resize_scale"]), mm)
            size = short_side_size(*ori, short)
            out["sizes_equal"] &= tuple(size) == tuple(x_ref.shape[-2:])
            x_own = pre(load_image(path), size)[None]
            diff = (x_own - x_ref).abs()
            stats["pixels_max_abs_diff"] = max(stats["pixels_max_abs_diff"], float(diff.max()))
            stats["pixels_mean_abs_diff"].append(float(diff.mean()))
            # the same cv2-resized bytes normalised both ways: what the mean/std constants alone change
            img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)[..., ::-1].copy()
            norm = pre.normalize(torch.from_numpy(img)[None])
            stats["normalisation_only_max_abs_diff"] = max(stats["normalisation_only_max_abs_diff"],
                                                           float((norm - x_ref).abs().max()))
            saved = torch.load(ref / f"photo_{i:03d}.pt")
            text = vt.rows(words)
            _, _, labels = vpltool_outputs(vt, name, x_own, text, query_idx, int(query_idx.max()) + 1, ori, False)
            stats["labels_equal_from_own_input"].setdefault(name, []).append(
                round(float((labels == saved["pred"][0]).double().mean()), 4))
    for stats in out["by_short_side"].values():
        stats["pixels_mean_abs_diff"] = round(float(np.mean(stats["pixels_mean_abs_diff"])), 4)
    out["what"] = ("mmseg (the methods' test pipeline): cv2.imdecode, Resize(scale=(2048, S), keep_ratio=True) = "
                   "mmcv.imrescale with cv2.INTER_LINEAR (bilinear, no antialias), (x - mean*255) / (std*255) with "
                   "mean [122.771, 116.746, 104.094], std [68.501, 66.632, 70.323]; vpltool: Pillow decode, the same "
                   "output size (short_side_size), Pillow BICUBIC (antialiased when shrinking), CLIP's mean/std in "
                   "0-1. Pixels are in normalised units (1 uint8 level ~ 0.057).")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help="a folder holding clones SCLIP, ClearCLIP, NACLIP (without it, or with "
                                             "--quick: vpltool against itself, the comparison's plumbing only)")
    ap.add_argument("--work", type=Path, help="keep the weights, photos and the clones' outputs here (reused)")
    ap.add_argument("--images", type=int, default=12, help="photos of the four methods' runs")
    ap.add_argument("--extra-images", type=int, default=3, help="photos of the extra variants (naclip-pamr, "
                                                                 "naclip-slide, naclip-csa)")
    ap.add_argument("--pre-images", type=int, default=3, help="photos of point d's labels from vpltool's own input")
    ap.add_argument("--text-layers", type=int, default=1,
                    help="text blocks of the random model (0: the model's own, 12 for ViT-B/16): the clones encode "
                         "every query with 80 prompts at the full 77-token context, ~26 TFLOP per clone with 12")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (and per clone)")
    ap.add_argument("--jobs", type=int, default=4, help="variants compared at once (threads) on vpltool's side")
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    ap.add_argument("--ref-python", default=sys.executable, help="a Python with torch, ftfy, regex, OpenCV")
    ap.add_argument("--no-preprocessing", action="store_true", help="skip point d (vpltool's own resize)")
    benchlib.add_common_args(ap, f"{QUICK['images']} small photo, the tiny random test ViT, no clone",
                             "ignored: both sides run fp32 on the CPU")
    args = benchlib.apply_quick(ap.parse_args(argv), QUICK)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dense_parity_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(run(work, args)))


def run(work: Path, args) -> dict:
    start = time.perf_counter()
    model, config_dir = model_config(work, args.model, None if args.quick else args.text_layers)
    pt, st, photos = setup(work, model, config_dir, args.images, 0.25 if args.quick else 1.0)
    vt = Vpltool(model, st, config_dir)
    procs: dict = {}
    if args.ref and not args.quick:
        clones = find_clones(args.ref)
        reference, procs = start_references(clones, work, pt, photos, args.images, args.extra_images, args.threads,
                                            args.ref_python)
        names = [n for n, v in VARIANTS.items() if v[0] in clones]
        source = {"clones": reference, "missing": [c for c in ("SCLIP", "ClearCLIP", "NACLIP") if c not in clones]}
    else:
        write_self_reference(vt, work, photos, args.images)
        names, source = list(VARIANTS), "self: vpltool against itself (no --ref): the comparison's plumbing only"
    variants = compare_all(vt, names, work, procs, args.jobs)
    if procs:
        finish_references(procs, source["clones"], work)
    methods = summary(variants, METHODS)
    main_variants = [n for n in MAIN if n in variants]
    pre = None if args.no_preprocessing else preprocessing(vt, work, photos, args.pre_images, main_variants)
    return {
        "benchmark": "dense-parity", "quick": args.quick, "machine": benchlib.machine("cpu"), "model": model,
        "text_layers": None if args.quick else args.text_layers,
        "weights": "random (seed 0, fp16-exact values)", "precision": "fp32",
        "device": "cpu" if args.device == "cpu" else f"cpu (--device {args.device} ignored: fp32 on the CPU)",
        "threads": args.threads,
        "photos": args.images, "extra_variant_photos": min(args.images, args.extra_images),
        "preprocessing_label_photos": min(args.images, args.pre_images),
        "bar": f"max abs difference of the dense logits <= {BAR:g} (fp32, CPU)",
        "reference": source, "methods": methods, "variants": variants, "preprocessing": pre,
        "maskclip_reference": MASKCLIP_NOTE,
        "seconds": round(time.perf_counter() - start, 1), "peak_memory": [],
    }


if __name__ == "__main__":
    main()

"""SAM 3's footprint in fp32 and with its weights held in bf16 (``--precision bf16``,
vpltool/models/backbones/sam3_half.py), on the CPU; prints ONE JSON object (and writes it with ``--out``).

    python bench/bench_sam3_footprint.py [--work DIR] [--classes 20] [--repeats 2] [--out FILE]
        [--methods sam3,activesam,toy-sam3,sam-pseudo-sam,sam-pseudo-sam3] [--images 4]
        [--weights sam3.pt --preview 672 --confidence-threshold 0.15]
        [--photos 1] [--precisions fp32,bf16] [--layout meta|hf|both] [--parity-out parity/results/FILE.json]

The model is ``--weights`` (e.g. ``bench_activesam.py --arch full``'s full-size ``sam3.pt``), or the parity's
reduced SAM 3 (``parity/activesam_parity.reduced_config``: a 4-block ViT of width 128 on
336 pixels, 2 text layers, the 256-wide DETR at 2 + 2 layers and 200 queries) with seeded random weights in Hugging
Face's layout, written in ``--work`` when missing.

Each precision runs in a process of its own (its peak RSS its own: ``VmHWM``, ``sidebyside.peak_rss_mib``), one
thread: the model loaded through the registry under the precision's autocast, as `segment` loads it (bf16: the
halved weights read straight into bf16), then under it the ``--classes`` VOC words encoded and one seeded 500 x 375
photo segmented by ``--dense sam3``'s path (``sam3_scores``: the image encoded once, the prompts in buckets, both
heads run). Per process: the weights' MiB after the run (parameters and buffers), the peak RSS once loaded
(``load_peak_rss_mib``) and after the photo (``peak_rss_mib``), and the CPU-seconds of the load and of the photo
(text not counted). ``bf16_against_fp32``: the photo's scores of the two precisions' last rounds, their max abs
difference and the % of pixels whose highest-scoring class is the same, and that % on the pixels where fp32's top-2
gap exceeds the difference (``confident``: the others are near-ties of random weights, which either precision may
break; ``certain``: where it exceeds twice the pixel's own difference). ``--repeats`` rounds, the order of the
precisions swapped each round; the JSON keeps every round and the medians, and the machine (its CPU by name).

``--photos N``: N seeded photos a process (seeds 0..N-1; the first the single photo's), 0 the load alone (its
figures; no scores). ``--precisions``: of fp32 and bf16. ``--layout hf``: the weights' Hugging Face twin
(``config.json`` + ``model.safetensors``, the same tensors under transformers' names, written once in ``--work``
from a Meta ``sam3.pt``) instead of the weights as given; ``both``: the rounds as given, and the twin at fp32 in a
process of its own per round (``layouts``: each layout's medians and the twin's scores against the given's,
``hf_against_meta_fp32``). ``--parity-out``: bf16's agreement with fp32 as a parity JSON with its page block
(``docgen/parity_page.py``).

With ``--methods``, each method runs in a process of its own per precision (its peak RSS and CPU-seconds its own),
on the first round only, and the JSON's ``methods`` gives, per method, bf16's distance from fp32: the max abs
difference of its scores, the share of its labels equal, and each precision's CPU-seconds and peak RSS:

* ``sam3``, ``activesam``: as `segment` runs them (``resolve_method``, the hooks ``query_text``, ``dense_logits``,
  ``probabilities``: ``activesam_parity.vpltool_method`` at the parity's settings; ``--preview`` and
  ``--confidence-threshold`` over them) on the seeded photo and the 21-word class file, with the model above;
  scores: the per-word scores;
* ``toy-sam3``: `segment --dense sam3` (``vpltool.segmenter``) with the shipped toy SAM 3 (vpltool/assets/toy-sam3,
  trained on world seed 20) at the demo's settings (the Makefile's SAM3_DEMO_ARGS_sam3) on ``--images`` val scenes
  of the demo world (seed 0); scores: the per-class probabilities;
* ``sam-pseudo-sam``: `sam-pseudo --masks sam`'s mask source (the demo's toy SAM, vpltool/assets/toy-sam-world20, at
  the Makefile's SAM_PSEUDO_ARGS) and its merge rule on the same scenes, from a start label that is each scene's
  ground truth dilated by 5 pixels (a CAM's spill); scores: per pixel the highest predicted IoU of a kept mask
  covering it (0 where none); labels: the merged pseudo label;
* ``sam-pseudo-sam3``: `sam-pseudo --masks sam3`'s source (the toy SAM 3, the Makefile's SAM3_PSEUDO_ARGS) and
  its gated rule from the same start; scores: per label the highest instance probability at each pixel; labels:
  the pseudo label.

Each is run under the precision's autocast as the stage runs it (``vpltool.device.autocast``), after a warm-up
call on the first image (the text, ActiveSAM's bank), which is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "parity"), str(ROOT)]

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
       "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]
PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("meta", "hf", "both")
GAP_FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # bf16's labels against fp32's where fp32's top-2 gap > f x the max diff
FIGURES = ("weights_mib", "load_peak_rss_mib", "peak_rss_mib", "load_cpu_s", "cpu_s")
METHODS = ("sam3", "activesam", "toy-sam3", "sam-pseudo-sam", "sam-pseudo-sam3")
ASSETS = ROOT / "vpltool" / "assets"
TOY_SAM3, TOY_SAM = ASSETS / "toy-sam3", ASSETS / "toy-sam-world20" / "model.safetensors"
SPILL = 5  # pixels: the start label of sam-pseudo's rules, each scene's ground truth dilated (a CAM's spill)


def model_folder(work: Path) -> Path:
    """The reduced SAM 3's folder (written once)."""
    folder = work / "sam3_reduced"
    if not (folder / "model.safetensors").is_file():
        from activesam_parity import reduced_config

        from vpltool.models.backbones.sam3_files import tiny_state, write_hf

        config = reduced_config()
        write_hf(folder, config, tiny_state(config, 0))
    return folder


def worker(args) -> None:
    """One precision's process: prints its figures as one JSON line (``--worker-method``: that method's only)."""
    import numpy as np
    import torch
    from sidebyside import peak_rss_mib  # this process's own peak (ru_maxrss would count the parent's at the fork)

    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.worker]
    if args.worker_method:
        row = {"precision": args.worker, "method": args.worker_method,
               "cpu_s": METHOD_RUNS[args.worker_method](args, dtype)}
        row["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(row))
        return
    from vpltool.device import autocast
    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec
    from vpltool.models.backbones.sam3_half import weights_bytes
    from vpltool.models.dense.sam3 import Sam3Settings, sam3_scores

    weights = str(layout_weights(args, args.worker_layout or "meta"))
    start = time.process_time()
    # loaded as a run loads it, under its precision's autocast: in bf16 the halved weights are read straight in
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        sam = load_model("sam3", Sam3Spec(weights), "cpu")
    load = {"load_peak_rss_mib": peak_rss_mib(), "load_cpu_s": round(time.process_time() - start, 3),
            "held_at_load": str(sam.held)}
    # the seeded photos (the first one the figures of a single photo always used)
    photos = [torch.from_numpy(np.random.default_rng(i).integers(0, 256, (375, 500, 3), dtype=np.uint8))
              for i in range(args.photos)]
    settings = Sam3Settings(confidence_threshold=0.0, heads="both")  # every query kept: both heads, every mask
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        text = sam.encode_text(VOC[:args.classes]) if photos else None
        start = time.process_time()
        scores = [sam3_scores(sam, photo, text, (375, 500), settings) for photo in photos]
        cpu = time.process_time() - start
    row = {"precision": args.worker, "weights_mib": round(weights_bytes(sam.model) / 2**20, 2),
           "peak_rss_mib": peak_rss_mib(), "cpu_s": round(cpu, 3), "held": str(sam.held),
           "scores_shape": list(scores[0].shape) if scores else None, **load}
    if args.worker_layout:
        row["layout"] = args.worker_layout
    if scores:  # [photos * Q, H, W]... kept per photo: [P, Q, H, W]; bf16's distance from fp32, hf's from meta's
        torch.save(torch.stack(scores).float(), args.work / scores_name(args.worker, args.worker_layout))
    print(json.dumps(row))


def scores_name(precision: str, layout: str | None) -> str:
    """The file a worker saves its scores in (``[P, Q, H, W]``); Meta's layout (or the weights as given) keeps the
    name of a single layout's runs."""
    return f"footprint_scores_{precision}{'_hf' if layout == 'hf' else ''}.pt"


def layout_weights(args, layout: str) -> Path:
    """The weights a worker loads: ``--weights`` (or the reduced model), or in ``hf`` their Hugging Face twin."""
    weights = args.weights or model_folder(args.work)
    return hf_twin(weights, args.work) if layout == "hf" else weights


def hf_twin(weights: Path, work: Path) -> Path:
    """``weights`` in Hugging Face's layout (``config.json`` + ``model.safetensors``): the same tensors under
    transformers' names, written once in ``work/sam3_hf`` (a full-size one: 3.4 GB); a Hugging Face folder is
    itself."""
    from vpltool.models.backbones.sam3_files import read_config, read_state, write_hf
    from vpltool.models.backbones.sam3_weights import locate

    files = locate(weights)
    if files.layout == "hf":
        return Path(weights)
    folder = work / "sam3_hf"
    if not folder.is_dir():  # written beside, then renamed: a folder there is whole
        part = work / "sam3_hf.part"
        write_hf(part, read_config(files), {})  # its config.json (and an empty weights file, replaced below)
        stream_safetensors(part / "model.safetensors", read_state(files, shapes_only=False, dtype_of=lambda n: None))
        os.replace(part, folder)
    return folder


def stream_safetensors(path: Path, state: dict) -> None:
    """``state`` as a safetensors file written a tensor at a time (safetensors' own ``save`` builds the whole file
    in memory, twice the 3.4 GB a full-size SAM 3 holds); written beside, then renamed."""
    import torch

    names = sorted(state)
    kinds = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    header, at = {}, 0
    for name in names:
        size = state[name].numel() * state[name].element_size()
        header[name] = {"dtype": kinds[state[name].dtype], "shape": list(state[name].shape),
                        "data_offsets": [at, at + size]}
        at += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        for name in names:  # raw little-endian bytes (bf16 through a same-size integer view numpy knows)
            t = state[name].contiguous()
            fh.write((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    os.replace(part, path)


def save(args, method: str, scores, labels) -> None:
    """A method's ``scores`` and ``labels`` (tensors or arrays, or lists of them, one per image) in ``--work``."""
    import torch

    def flat(x):
        parts = x if isinstance(x, (list, tuple)) else [x]
        return torch.cat([torch.as_tensor(p).float().flatten() for p in parts])

    torch.save({"scores": flat(scores), "labels": flat(labels)}, args.work / f"{method}_{args.worker}.pt")


def segment_run(args, method: str, dtype) -> float:
    """``method`` (sam3, activesam) on the seeded photo as `segment` runs it under ``dtype``'s autocast; its scores
    and labels saved in ``--work``; returns the photo's CPU-seconds (the words' text and ActiveSAM's bank made first,
    not counted)."""
    import activesam_parity as ap
    import numpy as np
    import torch
    import wordnet_fixture

    from vpltool.data.class_files import read_class_file
    from vpltool.device import autocast

    wordnet_fixture.write(args.work / "nltk_data")  # ActiveSAM's hypernyms: the parity's small WordNet
    os.environ["NLTK_DATA"] = str(args.work / "nltk_data")
    photo = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    knobs = {"preview_resolution": args.preview} if method == "activesam" and args.preview else {}
    if args.confidence_threshold is not None:
        knobs["confidence_threshold"] = args.confidence_threshold
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):  # loaded as `segment` loads it, at the precision
        dense, bb = ap.vpltool_method(method, Path(args.weights or model_folder(args.work)), **knobs)
    lines = read_class_file("activesam:voc21")
    words, idx = [w for line in lines for w in line], [i for i, line in enumerate(lines) for _ in line]
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        text = dense.hooks.query_text(bb, words, ["{}"])
        extras = [dense.hooks.extra_inputs(None, photo)]
        dense.hooks.dense_logits(bb, None, text, [photo.shape[:2]], dense.settings, extras)  # warm: bank, text
        start = time.process_time()
        scores = dense.hooks.dense_logits(bb, None, text, [photo.shape[:2]], dense.settings, extras)[0]
        _, labels = dense.hooks.probabilities(bb, scores, torch.tensor(idx), len(lines), dense.settings)
        cpu = time.process_time() - start
    save(args, method, scores, labels)
    return round(cpu, 3)


def world(args):
    """The demo world's val scenes (seed 0, ``--images`` of them), written once in ``--work``: its dataset."""
    from vpltool.data import open_dataset
    from vpltool.demo.make_world import write_dataset

    folder = args.work / f"world_{args.images}"
    if not (folder / "_stage.json").is_file():
        write_dataset(folder, n_train=0, n_val=args.images, seed=0)
    return open_dataset(folder, "val")


def toy_sam3_run(args, dtype) -> float:
    """`segment --dense sam3` with the toy SAM 3 on the world's scenes (``vpltool.segmenter``, the Makefile's
    SAM3_DEMO_ARGS_sam3); returns the scenes' CPU-seconds after a warm-up on the first."""
    import vpltool

    data = world(args)
    photos = [str(it.image) for it in data.items]
    seg = vpltool.segmenter("sam3", sam3_weights=str(TOY_SAM3), confidence_threshold=0.1, prob_threshold=0.1,
                            precision=args.worker, device="cpu")
    seg(photos[:1], list(data.classes[1:]))  # warm: the text
    start = time.process_time()
    found = seg(photos, list(data.classes[1:]))
    cpu = time.process_time() - start
    save(args, "toy-sam3", [r.scores for r in found], [r.labels for r in found])
    return round(cpu, 3)


def spilled(gt):
    """The start label of sam-pseudo's rules: ``gt`` (``[H, W]`` ids, 255 ignore) with each object dilated by
    :data:`SPILL` pixels, later classes over earlier ones (a CAM's spill, which the rules are there to fix)."""
    import cv2
    import numpy as np

    out = np.where(gt == 255, 0, gt).astype(np.int64)
    kernel = np.ones((2 * SPILL + 1, 2 * SPILL + 1), np.uint8)
    for c in sorted(set(np.unique(out).tolist()) - {0}):
        out[cv2.dilate((gt == c).astype(np.uint8), kernel) > 0] = c
    return out


def sam_pseudo_run(args, dtype, rule: str) -> float:
    """`sam-pseudo --masks sam` (``rule`` sam: the toy SAM's automatic masks, merged) or ``--masks sam3`` (the toy
    SAM 3 prompted with the labels, gated) on the world's scenes, the stage's mask source under ``dtype``'s
    autocast as the stage runs it; returns the scenes' CPU-seconds after a warm-up on the first."""
    import numpy as np
    import torch

    from vpltool import io
    from vpltool.config import SamPseudoConfig
    from vpltool.device import autocast
    from vpltool.models.dense.corrclip.regions import record_masks
    from vpltool.stages.sam_pseudo.rules import merge_masks, prompted_masks
    from vpltool.stages.sam_pseudo.sources import mask_source

    data = world(args)
    if rule == "sam":  # the Makefile's SAM_PSEUDO_ARGS
        cfg = SamPseudoConfig(masks="sam", sam_model="toy", sam_weights=str(TOY_SAM), points_per_side=16,
                              pred_iou_thresh=0.4, stability_score_thresh=0.4)
    else:  # SAM3_PSEUDO_ARGS
        cfg = SamPseudoConfig(masks="sam3", sam_weights=str(TOY_SAM3), sam3_threshold=0.02, sam3_gate=0.0)
    source = mask_source(cfg, data.classes)
    scenes = [(io.load_image(it.image), spilled(io.read_mask(it.gt)), tuple(it.labels)) for it in data.items]
    device = torch.device("cpu")

    def one(image, start, labels):
        h, w = image.shape[:2]
        if rule == "sam":
            records = source.generator.records(image)
            masks = record_masks(records, (h, w))
            score = np.zeros((h, w), np.float32)
            for r, m in zip(records, masks):
                score[m] = np.maximum(score[m], r["predicted_iou"])
            return score, merge_masks(start, masks, cfg.merge)
        found = source.masks(image, labels)
        score = np.zeros((len(data.classes), h, w), np.float32)
        for k, probs in found:
            if len(probs):
                score[k] = np.maximum(score[k], probs.max(0))
        return score, prompted_masks(start, found, cfg.sam3_gate)[0]

    with torch.no_grad(), autocast(device, dtype):
        source.load(device)
        one(*scenes[0])  # warm
        start = time.process_time()
        made = [one(*scene) for scene in scenes]
        cpu = time.process_time() - start
    save(args, f"sam-pseudo-{rule}", [s for s, _ in made], [lab for _, lab in made])
    return round(cpu, 3)


METHOD_RUNS = {
    "sam3": lambda args, dtype: segment_run(args, "sam3", dtype),
    "activesam": lambda args, dtype: segment_run(args, "activesam", dtype),
    "toy-sam3": toy_sam3_run,
    "sam-pseudo-sam": lambda args, dtype: sam_pseudo_run(args, dtype, "sam"),
    "sam-pseudo-sam3": lambda args, dtype: sam_pseudo_run(args, dtype, "sam3"),
}


def parity(work: Path, method: str) -> dict:
    """bf16's scores and labels against fp32's (the files the workers saved): the max abs difference of the scores,
    the % of labels equal."""
    import torch

    a, b = (torch.load(work / f"{method}_{p}.pt") for p in PRECISIONS)
    return {"scores_max_abs_diff": float((a["scores"] - b["scores"]).abs().max()),
            "labels_equal_pct": round(100 * float((a["labels"] == b["labels"]).float().mean()), 4),
            "labels": int(a["labels"].numel()), "fp32_score_max": float(a["scores"].max())}


def footprint_parity(work: Path, a_name: str = "footprint_scores_fp32.pt",
                     b_name: str = "footprint_scores_bf16.pt") -> dict:
    """The footprint rounds' scores (``[P, Q, H, W]`` or one photo's ``[Q, H, W]``, the last round of each), ``b``
    (bf16) against ``a`` (fp32): the max and mean abs difference, and the % of pixels whose highest-scoring class is
    the same, beside the median gap between ``a``'s two highest classes at a pixel (a gap below the difference: a
    tie that either may break). ``confident``: the same % on the pixels where that gap exceeds the scores' max abs
    difference (the whole photo's), and ``certain``: where it exceeds twice that pixel's own largest difference
    (there no class can overtake the top one: the labels must agree)."""
    import torch

    a, b = (torch.load(work / n) for n in (a_name, b_name))
    if a.dim() == 3:
        a, b = a[None], b[None]
    top = a.topk(2, dim=1).values
    gap, equal = top[:, 0] - top[:, 1], a.argmax(1) == b.argmax(1)  # [P, H, W]
    err, own = float((a - b).abs().max()), (a - b).abs().amax(1)

    def share(where):
        return {"pixels_pct": round(100 * float(where.float().mean()), 4),
                "argmax_equal_pct": round(100 * float(equal[where].float().mean()), 4) if where.any() else None}

    return {"scores_max_abs_diff": err, "scores_mean_abs_diff": float((a - b).abs().mean()),
            "argmax_equal_pct": round(100 * float(equal.float().mean()), 4),
            "fp32_top2_gap_median": float(gap.median()),
            "pixels": int(gap.numel()), "photos": int(a.shape[0]), "fp32_score_max": float(a.max()),
            "confident": {"rule": "fp32's top-2 gap > the scores' max abs difference", **share(gap > err)},
            "certain": {"rule": "fp32's top-2 gap > 2 x the pixel's own max abs difference", **share(gap > 2 * own)},
            # the % equal as the gap grows: a label bf16 changes is a near-tie of fp32's
            "by_gap": [{"gap_over": round(f * err, 6), "fraction_of_max_diff": f, **share(gap > f * err)}
                       for f in GAP_FRACTIONS]}


def spawn(args, precision: str, method: str | None = None, layout: str | None = None) -> dict:
    """One worker process (its figures)."""
    cmd = [sys.executable, __file__, "--worker", precision, "--work", str(args.work), "--classes",
           str(args.classes), "--images", str(args.images), "--photos", str(args.photos),
           *(["--worker-layout", layout] if layout else []),
           *(["--worker-method", method] if method else []),
           *(["--weights", str(args.weights)] if args.weights else []),
           *(["--preview", str(args.preview)] if args.preview else []),
           *(["--confidence-threshold", str(args.confidence_threshold)]
             if args.confidence_threshold is not None else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd[1:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def half_parity(result: dict) -> dict:
    """bf16's labels against fp32's (``result``'s ``bf16_against_fp32``) as a parity JSON with its page block
    (docgen/parity_page.py). It has no bar (``bar_met`` None): half precision's distance from fp32 is measured and
    reported. The ``certain`` row is a consistency check of the measurement, not a bar: a pixel whose fp32 top-2 gap
    exceeds twice its own largest difference keeps its label by arithmetic."""
    d = result["bf16_against_fp32"]
    rows = [["photos (seeded 500 x 375), classes", f"{d['photos']}, {result['rounds'][0]['scores_shape'][0]}"],
            ["scores: max abs difference, bf16 against fp32", d["scores_max_abs_diff"]],
            ["labels equal, every pixel (%)", d["argmax_equal_pct"]],
            ["fp32's top-2 gap, median", d["fp32_top2_gap_median"]],
            ["pixels whose fp32 top-2 gap > the max abs difference (%)", d["confident"]["pixels_pct"]],
            ["labels equal there (%)", d["confident"]["argmax_equal_pct"]],
            ["pixels whose gap > 2 x their own max abs difference (%)", d["certain"]["pixels_pct"]],
            ["labels equal there (%)", d["certain"]["argmax_equal_pct"]],
            *[[f"labels equal where fp32's top-2 gap > {g['gap_over']:.2g} ({g['pixels_pct']:.3g} % of pixels)",
               g["argmax_equal_pct"]] for g in d.get("by_gap", [])]]
    return {"what": "SAM 3 at --precision bf16 (its weights held in bf16) against fp32, --dense sam3's scores",
            "model": result["model"], "machine": result["cpu_name"], "command": result["command"],
            "bf16_against_fp32": d, "bar_met": None,
            "page": {"title": "SAM 3 in half precision against fp32 (`--precision bf16`)",
                     "command": f"`{result['command']}` ({result['model']}; {result['cpu_name']}).",
                     "bar": "none, a measurement: the scores' distance and the labels kept, by fp32's top-2 gap (with "
                            "random weights most pixels are near-ties). The pixels whose gap exceeds twice their own "
                            "difference keep their labels by arithmetic: a check of the measurement, not a bar",
                     "rows": rows}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vpltool_sam3_footprint"))
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="footprint rounds (0: the methods only)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--weights", type=Path, default=None, help="SAM 3's weights [default: the reduced, made]")
    ap.add_argument("--methods", default="", help=f"also these, bf16 against fp32: {','.join(METHODS)}")
    ap.add_argument("--images", type=int, default=4, help="demo-world scenes of the toy methods")
    ap.add_argument("--preview", type=int, default=None, help="ActiveSAM's preview side [default: the parity's]")
    ap.add_argument("--confidence-threshold", type=float, default=None)
    ap.add_argument("--parity", type=Path, default=None,
                    help="only recompute this JSON's bf16_against_fp32 from the scores its rounds left in --work")
    ap.add_argument("--photos", type=int, default=1,
                    help="seeded 500x375 photos a process segments (0: the load only) [default: 1]")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="of fp32,bf16 [default: both]")
    ap.add_argument("--layout", choices=LAYOUTS, default="meta",
                    help="meta: the weights as given; hf: their Hugging Face twin (written in --work); both: every "
                         "precision as given, and the twin at fp32, its scores against the given's [default: meta]")
    ap.add_argument("--parity-out", type=Path, default=None,
                    help="also write bf16's label agreement with fp32 as a parity page JSON (parity/results/)")
    ap.add_argument("--worker", choices=PRECISIONS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-layout", choices=("meta", "hf"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-method", choices=METHODS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work.resolve()
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        ap.error(f"--methods: {', '.join(sorted(unknown))}: choose among {', '.join(METHODS)}")
    if args.worker:
        worker(args)
        return
    if args.parity:
        result = json.loads(args.parity.read_text())
        result["bf16_against_fp32"] = footprint_parity(args.work)
        result["parity_command"] = " ".join(["python", "bench/bench_sam3_footprint.py", *sys.argv[1:]])
        args.parity.write_text(json.dumps(result, indent=2) + "\n")
        if args.parity_out:
            args.parity_out.write_text(json.dumps(half_parity(result), indent=2) + "\n")
        print(json.dumps(result["bf16_against_fp32"]))
        return
    from benchlib import cpu_identity, cpu_name, machine

    args.work.mkdir(parents=True, exist_ok=True)
    if not args.weights:
        model_folder(args.work)
    precisions = [p for p in PRECISIONS if p in args.precisions.split(",")]
    given = "hf" if args.layout == "hf" else None  # the layout of the rounds the medians are of
    if given == "hf" or args.layout == "both":  # written once, before any round is timed, in a process of its own
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; sys.path[:0] = sys.argv[3:]; "
                        "from bench_sam3_footprint import hf_twin; hf_twin(Path(sys.argv[1]), Path(sys.argv[2]))",
                        str(args.weights or model_folder(args.work)), str(args.work), str(HERE), str(ROOT / "parity"),
                        str(ROOT)], check=True)
    rounds = [spawn(args, p, layout=given) for r in range(args.repeats)
              for p in (precisions if r % 2 == 0 else precisions[::-1])]
    twin = [spawn(args, "fp32", layout="hf") for _ in range(args.repeats)] if args.layout == "both" else []
    result = {
        "benchmark": "sam3-footprint",
        "what": (f"SAM 3's footprint, {' against '.join(precisions)} (bf16: --precision bf16, its weights held in "
                 f"bf16), {args.photos} seeded 500x375 photo(s), {args.classes} classes, --dense sam3's path, one "
                 "thread" + (", its weights in Hugging Face's layout" if given else "")
                 + ("; the same weights in Hugging Face's layout at fp32 beside them" if twin else "")
                 if rounds else "")
                + ("; " if rounds and methods else "")
                + (f"the SAM family at bf16 against fp32: {', '.join(methods)}, one thread" if methods else ""),
        "command": " ".join(["python", "bench/bench_sam3_footprint.py", *sys.argv[1:]]),
        "model": (f"SAM 3 of {args.weights}" if args.weights else
                  "the parity's reduced SAM 3 (activesam_parity.reduced_config), seeded random weights"),
        "machine": machine("cpu"),
        "cpu_name": cpu_name(cpu_identity()),
    }
    if rounds:
        medians = {p: {k: statistics.median(r[k] for r in rounds if r["precision"] == p)
                       for k in FIGURES} for p in precisions}
        result.update(rounds=rounds, median=medians)
        if len(precisions) == 2:
            result["bf16_over_fp32"] = {k: round(medians["bf16"][k] / medians["fp32"][k], 3) if medians["fp32"][k]
                                        else None for k in FIGURES}
            if args.photos:
                result["bf16_against_fp32"] = footprint_parity(args.work, scores_name("fp32", given),
                                                               scores_name("bf16", given))
    if twin and "fp32" in precisions:
        result["layouts"] = {
            "rounds_hf": twin,
            "median": {"meta": result["median"]["fp32"],
                       "hf": {k: statistics.median(r[k] for r in twin) for k in FIGURES}},
            **({"hf_against_meta_fp32": footprint_parity(args.work, scores_name("fp32", None),
                                                         scores_name("fp32", "hf"))} if args.photos else {})}
    if args.parity_out and "bf16_against_fp32" in result:
        args.parity_out.write_text(json.dumps(half_parity(result), indent=2) + "\n")
    if methods:
        result["methods"] = {}
        for method in methods:
            runs = {p: spawn(args, p, method) for p in PRECISIONS}
            result["methods"][method] = {**parity(args.work, method),
                                         **{p: {k: runs[p][k] for k in ("cpu_s", "peak_rss_mib")}
                                            for p in PRECISIONS}}
            print(method, json.dumps(result["methods"][method]), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""SAM 3's methods in half precision on a device (issue: half precision for the SAM family, a folder batched on a
GPU); prints ONE JSON object (and writes it with ``--out``).

    python bench/bench_sam3_device.py --device cuda [--models toy,reduced] [--methods sam3,activesam]
        [--precisions fp32,bf16,fp16] [--photos 4] [--folder 16] [--batch 8] [--budget-s 200] [--work DIR]
    python bench/bench_sam3_device.py --device cpu --quick      # the test's smoke run (the toy, fp32, 2 photos)

Two models, each through the ``sam3`` family's registry door, as `segment` loads it (``resolve_method``, the
method's ``load`` under the precision's autocast: SAM 3 holds its halved weights in that dtype):

* ``toy``: the shipped toy SAM 3 (vpltool/assets/toy-sam3) on the demo world's val scenes (seed 0) and its real
  vocabulary (the world's class names), at the demo's settings (the Makefile's ``SAM3_DEMO_ARGS_*``);
* ``reduced``: the parity's reduced SAM 3 (``parity/activesam_parity.reduced_config``, seeded random weights,
  ``random_state`` seed 0) written in Meta's layout (``write_meta``: a ``sam3.pt``) in ``--work``, on the parity's
  photos (scikit-image's, ``bench_cam.make_voc``) and the 21-word class file ``activesam:voc21``, at the parity's
  settings (``KNOBS``, where some of the random model's instances pass the threshold).

Per model, method and precision (fp32, bf16, fp16; fp16 only on CUDA, as ``--precision`` refuses it on the CPU):
the model loaded, a warm-up photo (the words' text, ActiveSAM's bank; not counted), then ``--photos`` photos one
at a time through the method's hooks (``dense_logits``, ``probabilities``) as `segment` runs them. Recorded: the
max abs difference of the per-word scores from a separate fp32 run's (``reference``: so fp32's own row measures
how reproducible the device is, 0 where it is deterministic), the % of labels equal, peak device memory
(``torch.cuda.max_memory_allocated`` from before the load; None on the CPU), the weights' MiB and seconds per photo
(wall, the device synchronised).

``folder``: ``--folder`` photos through ``--dense sam3``'s segmentor one at a time (``sam3_scores``) and in batches
of ``--batch`` (``sam3_scores_batch``: the image encoder once per batch, the grounding per photo, which `segment`'s
``dense_logits`` hook runs on CUDA for the loader's batch), at fp32 and bf16: seconds per photo each way and the
batched scores' max abs difference from one-at-a-time's (bar: 1e-4 at fp32). ActiveSAM runs one photo at a time
(its preview and buckets per photo), said in the JSON.

``--budget-s``: a unit (model, method, precision) or folder run that would start after this many seconds is
skipped and named in ``skipped``; the JSON is printed all the same (and ``--out`` is rewritten after each unit).
A unit that fails is recorded with its error and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "parity"), str(ROOT)]

MODELS = ("toy", "reduced")
METHODS = ("sam3", "activesam")
PRECISIONS = ("fp32", "bf16", "fp16")
TOY_SAM3 = ROOT / "vpltool" / "assets" / "toy-sam3"
TOY_KNOBS = {"sam3": {"confidence_threshold": 0.1, "prob_threshold": 0.1},  # the Makefile's SAM3_DEMO_ARGS_*
             "activesam": {"confidence_threshold": 0.3, "prob_threshold": 0.1, "hypernym_tokens": 0}}
BATCH_BAR = 1e-4  # batched against one at a time, fp32
QUICK = {"models": "toy", "methods": "sam3,activesam", "precisions": "fp32", "photos": 2, "folder": 2,
         "batch": 2, "folder_precisions": "fp32"}


class Inputs:
    """A model's photos (``[H, W, 3]`` uint8 arrays), its words, each word's class, the class count, its weights
    and the method knobs."""

    def __init__(self, args, model: str, count: int):
        if model == "toy":
            from vpltool import io
            from vpltool.data import open_dataset
            from vpltool.demo.make_world import write_dataset

            folder = args.work / f"world_{count}"
            if not (folder / "_stage.json").is_file():
                write_dataset(folder, n_train=0, n_val=count, seed=0)
            data = open_dataset(folder, "val")
            self.photos = [io.load_image(it.image) for it in data.items][:count]
            lines = [[name] for name in data.classes[1:]]  # class 0 (background) has no word: the threshold's
            self.weights, self.knobs, self.class_file = TOY_SAM3, TOY_KNOBS, None
            self.words, self.owner, self.n_classes = [w for line in lines for w in line], \
                list(range(1, len(lines) + 1)), len(lines) + 1
        else:
            import bench_cam
            from activesam_parity import KNOBS

            from vpltool import io
            from vpltool.data.class_files import read_class_file

            voc = args.work / f"voc_{count}"
            if not (voc / "ImageSets").is_dir():  # the parity's photos (scikit-image's), on which its thresholds
                bench_cam.make_voc(voc, count)  # keep some of the random model's instances
            self.photos = [io.load_image(p) for p in sorted((voc / "JPEGImages").glob("*.jpg"))][:count]
            lines = read_class_file("activesam:voc21")
            self.weights, self.knobs, self.class_file = reduced_weights(args.work), KNOBS, "activesam:voc21"
            self.words = [w for line in lines for w in line]
            self.owner = [i for i, line in enumerate(lines) for _ in line]
            self.n_classes = len(lines)


def reduced_weights(work: Path) -> Path:
    """The reduced SAM 3 in Meta's layout (``sam3.pt``), written once in ``work``."""
    path = work / "sam3_reduced_meta" / "sam3.pt"
    if not path.is_file():
        from activesam_parity import reduced_config

        from vpltool.models.backbones.sam3_files import random_state, write_meta

        config = reduced_config()
        write_meta(path, config, random_state(config, 0))
    return path


def loaded(inputs: Inputs, method: str, device, dtype):
    """`segment`'s resolved method and its SAM 3, loaded on ``device`` under ``dtype``'s autocast."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method

    knobs = dict(inputs.knobs[method])
    if method == "activesam" and knobs.get("hypernym_tokens", 1) and not nltk_ready():
        knobs["hypernym_tokens"] = 0  # no nltk here: no WordNet (recorded in the unit's settings)
    cfg = SegmentConfig.of(method, sam3_weights=str(inputs.weights),
                           **({"class_file": inputs.class_file} if inputs.class_file else {}), **knobs)
    dense = resolve_method(cfg)
    return dense, dense.load(None, str(device), dtype=dtype), knobs


def nltk_ready() -> bool:
    try:
        import nltk  # noqa: F401
    except ImportError:
        return False
    return True


def unit(args, inputs: Inputs, method: str, precision: str) -> tuple:
    """One model, method and precision: scores and labels of ``--photos`` photos (on the host), seconds per
    photo, peak device memory."""
    import torch

    from vpltool.device import autocast, resolve_precision
    from vpltool.models.backbones.sam3_half import weights_bytes

    from benchlib import synchronize

    device = args.dev
    dtype = resolve_precision(precision, device)  # fp16 is a CUDA unit alone (the library refuses it on a CPU)
    cuda = device.type == "cuda"
    if cuda:  # the last unit's model gone: this peak is this unit's
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.no_grad():
        dense, bb, knobs = loaded(inputs, method, device, dtype)
        synchronize(str(device))
        load_s = time.perf_counter() - start
        photos = inputs.photos[:args.photos]
        with autocast(device, dtype):
            text = dense.hooks.query_text(bb, inputs.words, ["{}"])
            extras = [dense.hooks.extra_inputs(None, p) for p in photos]
            owner = torch.tensor(inputs.owner)

            def one(i):
                scores = dense.hooks.dense_logits(bb, None, text, [photos[i].shape[:2]], dense.settings,
                                                  [extras[i]])[0]
                _, labels = dense.hooks.probabilities(bb, scores, owner, inputs.n_classes, dense.settings)
                return scores.float().cpu(), labels.cpu()

            one(0)  # warm: the text, ActiveSAM's bank, the kernels
            synchronize(str(device))
            start = time.perf_counter()
            made = [one(i) for i in range(len(photos))]
            synchronize(str(device))
            seconds = time.perf_counter() - start
    row = {"load_s": round(load_s, 3), "s_per_photo": round(seconds / len(photos), 4),
           "weights_mib": round(weights_bytes(bb.sam.model) / 2**20, 2), "held": str(bb.sam.held),
           "peak_device_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
           "settings": knobs}
    return row, [s for s, _ in made], [lab for _, lab in made]


def distance(ref, ref_labels, scores, labels) -> dict:
    """``scores``/``labels`` (per photo) against the fp32 reference run's: max abs difference, % labels equal."""
    import torch

    diff = max(float((a - b).abs().max()) for a, b in zip(ref, scores))
    equal = sum(int((a == b).sum()) for a, b in zip(ref_labels, labels))
    total = sum(a.numel() for a in ref_labels)
    return {"scores_max_abs_diff": diff, "labels_equal_pct": round(100 * equal / total, 4), "labels": total,
            "fp32_score_max": max(float(a.max()) for a in ref), "finite": all(bool(torch.isfinite(s).all())
                                                                              for s in scores)}


def folder_run(args, inputs: Inputs, precision: str) -> dict:
    """``--folder`` photos through ``--dense sam3``'s segmentor one at a time and batched (module docstring)."""
    import torch

    from vpltool.device import autocast, resolve_precision
    from vpltool.models.dense.sam3 import sam3_scores, sam3_scores_batch, sam3_settings

    from benchlib import synchronize

    device = args.dev
    dtype = resolve_precision(precision, device)  # fp16 is a CUDA unit alone (the library refuses it on a CPU)
    photos = [torch.tensor(p) for p in inputs.photos[:args.folder]]
    sizes = [tuple(p.shape[:2]) for p in photos]
    with torch.no_grad():
        dense, bb, _ = loaded(inputs, "sam3", device, dtype)
        settings = sam3_settings(dense.cfg)
        with autocast(device, dtype):
            text = bb.text_of(inputs.words)

            def single():
                return [sam3_scores(bb.sam, p, text, s, settings) for p, s in zip(photos, sizes)]

            def batched():
                return sam3_scores_batch(bb.sam, photos, text, sizes, settings, encode=args.batch)

            times = {}
            for name, run in (("one_at_a_time", single), ("batched", batched)):
                run()  # warm
                synchronize(str(device))
                start = time.perf_counter()
                times[name] = [s.float().cpu() for s in run()]
                synchronize(str(device))
                times[name + "_s_per_photo"] = round((time.perf_counter() - start) / len(photos), 4)
    diff = max(float((a - b).abs().max()) for a, b in zip(times["one_at_a_time"], times["batched"]))
    row = {"photos": len(photos), "batch": args.batch, "precision": precision,
           "one_at_a_time_s_per_photo": times["one_at_a_time_s_per_photo"],
           "batched_s_per_photo": times["batched_s_per_photo"],
           "speedup": round(times["one_at_a_time_s_per_photo"] / max(times["batched_s_per_photo"], 1e-9), 3),
           "batched_against_one_max_abs_diff": diff}
    if precision == "fp32":
        row["bar"], row["bar_met"] = BATCH_BAR, diff <= BATCH_BAR
    return row


def main() -> None:
    from vpltool.models.dense.sam3 import ENCODE_BATCH

    from benchlib import add_common_args, apply_quick, cpu_identity, cpu_name, machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "the toy model at fp32, 2 photos, a folder of 2 (the CPU test)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"of {','.join(MODELS)} [default: both]")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"of {','.join(METHODS)} [default: both]")
    ap.add_argument("--precisions", default=None,
                    help="of fp32,bf16,fp16 [default: all three on CUDA, fp32,bf16 on the CPU]")
    ap.add_argument("--photos", type=int, default=4, help="photos a unit times, after one warm-up [default: 4]")
    ap.add_argument("--folder", type=int, default=16, help="photos of the folder run (0: none) [default: 16]")
    ap.add_argument("--batch", type=int, default=ENCODE_BATCH,
                    help=f"the folder run's photos an image-encoder forward [default: {ENCODE_BATCH}, segment's]")
    ap.add_argument("--folder-precisions", default="fp32,bf16", help="[default: fp32,bf16]")
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="skip what would start after this many seconds; the JSON still prints [default: 200]")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vpltool_sam3_device"))
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the JSON here, rewritten after each unit (what a killed run measured)")
    args = ap.parse_args()
    apply_quick(args, QUICK)
    started = time.perf_counter()

    import torch

    from vpltool.device import resolve_device

    args.dev = resolve_device(args.device)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    cuda = args.dev.type == "cuda"
    precisions = (args.precisions or ("fp32,bf16,fp16" if cuda else "fp32,bf16")).split(",")
    unknown = ({*args.models.split(",")} - set(MODELS)) | ({*args.methods.split(",")} - set(METHODS)) \
        | (set(precisions) - set(PRECISIONS))
    if unknown:
        ap.error(f"not known: {', '.join(sorted(unknown))}")
    if not cuda and "fp16" in precisions:
        precisions.remove("fp16")  # --precision fp16 is refused on the CPU
    # ActiveSAM's hypernyms on the reduced model: the parity's small WordNet (set before nltk is imported: it
    # reads NLTK_DATA at its import)
    import wordnet_fixture

    wordnet_fixture.write(args.work / "nltk_data")
    os.environ["NLTK_DATA"] = str(args.work / "nltk_data")

    result = {
        "benchmark": "sam3-device",
        "what": "SAM 3's methods at fp32, bf16 and fp16 against a separate fp32 run, on the device; a folder of "
                "photos one at a time against batched (the image encoder once per batch)",
        "command": " ".join(["python", "bench/bench_sam3_device.py", *sys.argv[1:]]),
        "machine": machine(str(args.dev)), "cpu_name": cpu_name(cpu_identity()),
        "gpu": torch.cuda.get_device_name(args.dev) if cuda else None,
        "precisions": precisions, "models": {}, "skipped": [], "errors": [],
        # fp32 on CUDA as torch runs it here: TF32 in matmuls / cuDNN convolutions moves fp32's own figures
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        if cuda else None,
        "batching": {"sam3": "segment's dense_logits hook runs the loader's batch through sam3_scores_batch on CUDA "
                             "(the image encoder once per batch, the grounding per photo); one at a time on the CPU",
                     "activesam": "one photo at a time on every device (its preview and prompt buckets per photo)"},
    }

    def progress() -> None:  # what is measured so far, in --out after each unit (a run killed keeps it)
        if args.out:
            result["seconds"] = round(time.perf_counter() - started, 1)
            args.out.write_text(json.dumps(result, indent=2) + "\n")

    def over(name: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            result["skipped"].append(name)
            return True
        return False

    for model in args.models.split(","):
        inputs = Inputs(args, model, max(args.photos, args.folder, 1))
        entry = result["models"][model] = {
            "weights": str(inputs.weights.relative_to(ROOT) if model == "toy" else "reduced SAM 3, Meta's layout "
                           "(activesam_parity.reduced_config, random_state seed 0)"),
            "photos": args.photos, "photo_sizes": sorted({tuple(p.shape[:2]) for p in inputs.photos[:args.photos]}),
            "words": len(inputs.words), "methods": {}}
        for method in args.methods.split(","):
            rows = entry["methods"][method] = {}
            name = f"{model}/{method}"
            if over(f"{name}/reference"):
                continue
            try:
                ref_row, ref, ref_labels = unit(args, inputs, method, "fp32")
                rows["reference_fp32"] = ref_row
                for precision in precisions:
                    if over(f"{name}/{precision}"):
                        continue
                    row, scores, labels = unit(args, inputs, method, precision)
                    rows[precision] = {**row, "against_fp32": distance(ref, ref_labels, scores, labels)}
                    print(name, precision, json.dumps(rows[precision]), file=sys.stderr, flush=True)
                    progress()
            except Exception as exc:  # noqa: BLE001 (one failing unit must not lose the others' figures)
                result["errors"].append({"unit": name, "error": f"{type(exc).__name__}: {exc}",
                                         "trace": traceback.format_exc()[-2000:]})
        if args.folder and "sam3" in args.methods.split(","):
            entry["folder"] = {}
            for precision in args.folder_precisions.split(","):
                if precision not in precisions or over(f"{model}/folder/{precision}"):
                    continue
                try:
                    entry["folder"][precision] = folder_run(args, inputs, precision)
                    print(model, "folder", json.dumps(entry["folder"][precision]), file=sys.stderr, flush=True)
                    progress()
                except Exception as exc:  # noqa: BLE001
                    result["errors"].append({"unit": f"{model}/folder/{precision}",
                                             "error": f"{type(exc).__name__}: {exc}",
                                             "trace": traceback.format_exc()[-2000:]})
    progress()
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""``--dense sam3`` and ``--dense activesam`` against ActiveSAM's own code, side by side; prints ONE JSON object.

    python bench/bench_activesam.py --ref ActiveSAM --method activesam [--work DIR] [--images 3] [--pairs 6]
        [--arch reduced|full] [--photo WxH] [--class-set SET:BENCHMARK] [--classes N] [--confidence-threshold T]
        [--settings JSON] [--one-at-a-time]
    python bench/bench_activesam.py --worker vpltool|reference --profile 40 ...   # where one unit's CPU time goes

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

``--arch full``: SAM 3 at Meta's own sizes (``meta_config``; 3.4 GB of seeded random fp32 weights in Meta's layout,
written once in ``--work``: keep it outside the repository), which the reference builds with Meta's builders as they
are, ActiveSAM's 672-pixel preview. ``--photo WxH``: one photo of that size (the first parity photo cropped to its
aspect) in place of the parity photos; ``--classes N``: the first N lines of ``--class-set`` (a bundled class file,
the reference's own: ``activesam:voc21``, its configs/cls_voc21.txt; ``activesam:ade20k``, 150 classes), which both
sides read; ``--settings``: the reference's keyword arguments over its config in place of the parity's (vpltool
given the same; what it leaves out, the reference's defaults: :data:`REF_DEFAULTS`); ``--confidence-threshold`` and
``--prob-threshold``: the instances' and the background's thresholds on both sides, over those (the full-size random
model's instance scores lie about 0.1-0.18).

A unit is one photo, the photos taken in turn. One warm-up unit each, then ``--pairs`` pairs, the order swapped
every pair; per unit the process's CPU-seconds. The figure is the median over the pairs of vpltool's CPU-seconds over
the reference's, against the goal 0.8 (``ratio_spread``: the pairs' lowest and highest); the last unit's per-word
scores and labels of the two sides are compared.
The **floor** beside the ratio (:func:`floor_of`, issue 79's rule): each worker's untimed warm-up unit runs under
torch's FLOP counter (:func:`count_flops`: every matrix product, convolution and attention from its shapes), and
after its timed units the reference's runs each other photo once more, untimed, counted (``vpltool_flops``: vpltool's
warm-up photo's count, beside); once both workers are closed the driver measures this CPU's fp32 GEMM
rate (:func:`gemm_probes`); the floor of a unit is the reference's FLOPs on its photo at the fastest rate, all other
work free, over the reference's CPU-seconds on it: the least ratio the same arithmetic allows on this CPU.
``--floor-from JSON``: the floor of an earlier result alone (:func:`floor_from`): the reference's worker counts the
first ``--images`` photos (nothing timed), the probes run, and the earlier run's pairs on those photos get theirs.
Each worker gives its heap's free pages back once built (``sidebyside.trim_heap``: what loading freed, a checkpoint
read whole then copied into the model, leaves the resident memory). Per unit each side's peak resident memory during
the unit (its process's own, the peak reset before each unit:
``sidebyside.reset_peak``) and the process's peak so far (its building's included).

``--one-at-a-time`` (two full-size models need ~13 GB together): the reference's worker does its warm-up and units,
is closed, then vpltool's (``sidebyside.one_at_a_time``); the JSON says ``"sides": "one at a time, not alternated"``.
``--reference-from JSON`` (with ``--one-at-a-time``): vpltool's side alone, the reference's units taken from an
earlier result of the same settings, class set, photos, pairs and reference commit (:func:`reference_rows`; one line
where any differs) and its outputs from the ``reference_out.pt`` that run left in ``--work``, refused where the
record beside it names other worker arguments (another method's or settings' run in the same ``--work``:
``sidebyside.check_outputs``): the reference's code
does not change between vpltool's commits, and its side is half the run. The JSON names the file and its load.
``--worker SIDE --profile N`` (the driver's arguments otherwise, ``--overrides`` the reference's JSON): that side's
first unit with each aten operator's and module class's CPU-seconds (:func:`cpu_profile`), its N costliest to
stderr: where one side spends more than the other.
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
from sidebyside import claim_stdout, count_flops, one_at_a_time, race, serve  # noqa: E402

GOAL = 0.8
# the reference's keyword -> vpltool's knob, for the settings both sides are given
# what the reference runs where its keyword arguments leave them (configs/base_config.py, cfg_voc21.py's prob_thd; the
# SAM 3 row: base.py's confidence_threshold, activesam_ref_runner.build)
REF_DEFAULTS = {"activesam": {"prob_thd": 0.4, "confidence_threshold": 0.3, "pruner_max_active": 40, "bucket_size": 32},
                "sam3": {"prob_thd": 0.4, "confidence_threshold": 0.5}}
KNOB_OF = {"prob_thd": "prob_threshold", "confidence_threshold": "confidence_threshold",
           "pruner_max_active": "max_active", "bucket_size": "bucket_size"}
MODELS = {"full": "full-size SAM 3 (meta_config: Meta's sizes), seeded random (random_state, seed 0), Meta's layout",
          "reduced": "reduced SAM 3 (parity/activesam_parity.py reduced_config), seeded random"}


def photos(work: Path, images: int, photo: str | None = None) -> list[Path]:
    """The photos a unit takes in turn: the parity's first ``images``, or the one ``photo`` (``WxH``) made."""
    if photo:
        folder = work / f"photo_{photo}"
        if not (folder / "JPEGImages").is_dir():
            import bench_cam

            bench_cam.make_voc(folder, 1, sizes=[tuple(int(v) for v in photo.split("x"))])
        return sorted((folder / "JPEGImages").glob("*.jpg"))[:1]
    return sorted((work / "voc" / "JPEGImages").glob("*.jpg"))[:images]


def class_file(work: Path, classes: int, class_set: str = "activesam:voc21") -> Path:
    """The first ``classes`` lines of the bundled ``class_set`` (the reference's own file), written in ``work``: what
    both sides read."""
    from vpltool.data.class_files import read_class_file

    path = work / f"classes_{class_set.replace(':', '_')}_{classes}.txt"
    path.write_text("".join(", ".join(line) + "\n" for line in read_class_file(class_set)[:classes]))
    return path


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
        if not arch.get("meta"):  # Meta's own sizes: its builders as they are
            rr.reduced_builders(arch)
        seg, _ = rr.build(opts, arch, rr.read_config(args.ref, "configs/cfg_voc21.py"))
        files, state = photos(args.work, args.images, args.photo), {"k": 0}

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

        finish(args, unit, files, state)


def vpltool_worker(args) -> None:
    import activesam_parity as ap
    import numpy as np
    import torch
    from PIL import Image

    from vpltool.data.class_files import read_class_file

    torch.set_grad_enabled(False)
    overrides, arch = json.loads(args.overrides), json.loads((args.work / "arch.json").read_text())
    knobs = {KNOB_OF[k]: overrides.get(k, v) for k, v in REF_DEFAULTS[args.method].items()}
    if args.method == "activesam":
        knobs["preview_resolution"] = int(arch["preview"])
    dense, bb = ap.vpltool_method(args.method, args.work / "sam3.pt", **knobs)
    # the reference's words and their classes (its load_class_vocabulary's query_idx)
    lines = read_class_file(str(class_file(args.work, args.classes, args.class_set)))
    words, idx = [w for line in lines for w in line], [i for i, line in enumerate(lines) for _ in line]
    text = dense.hooks.query_text(bb, words, ["{}"])
    query_class, n = torch.tensor(idx), len(lines)
    files, state = photos(args.work, args.images, args.photo), {"k": 0}

    def unit():
        path = files[state["k"] % len(files)]
        state["k"] += 1
        photo = np.asarray(Image.open(path).convert("RGB"))
        scores = dense.hooks.dense_logits(bb, None, text, [photo.shape[:2]], dense.settings,
                                          [dense.hooks.extra_inputs(None, photo)])[0]
        _, labels = dense.hooks.probabilities(bb, scores, query_class, n, dense.settings)
        return {"scores": scores, "pred": labels}

    finish(args, unit, files, state)


def finish(args, unit, files: list[Path], state: dict) -> None:
    """A worker's loop (:func:`sidebyside.serve`), or with ``--profile N``: one unit profiled (:func:`cpu_profile`),
    its ``N`` costliest operators and module classes written to stderr as JSON, the driver's protocol unused.
    The worker's first unit (its untimed warm-up) runs under :func:`count_flops`; its ``flops`` command: each
    photo's count, the photos not counted yet run once more (untimed, after the timed units); ``counted``: the
    counts so far, nothing run. ``state["k"]``: the unit's next photo in ``files``."""
    counted: dict = {}

    def photo() -> str:
        return files[state["k"] % len(files)].name

    def warm_up_counted():
        if counted:
            return unit()
        name = photo()
        out, counted[name] = count_flops(unit)
        return out

    def flops() -> dict:
        for _ in files:
            name = photo()  # before the unit, which moves on to the next
            if name in counted:
                state["k"] += 1
            else:
                counted[name] = count_flops(unit)[1]
        return {"flops": [{"photo": p, **c} for p, c in counted.items()]}

    if not args.profile:
        serve(warm_up_counted, trim=True,
              commands={"flops": flops, "counted": lambda: {"flops": [{"photo": p, **c} for p, c in counted.items()]}})
        return
    prof = cpu_profile(unit, args.profile)
    print(f"{args.worker}: {prof['cpu_seconds']} CPU-s, {prof['ops_seconds']} in operators", file=sys.stderr)
    for table in ("modules", "ops_by_name", "ops"):
        print(f"-- {table}", file=sys.stderr)
        for row in prof[table]:
            print(" ".join(f"{v:9.3f}" if isinstance(v, float) else str(v) for v in row[1:]), row[0], file=sys.stderr)


def cpu_profile(unit, top: int) -> dict:
    """One call of ``unit`` with each aten operator's and each module class's CPU-seconds (this thread's
    ``time.thread_time``: on a shared machine a wall-clock profiler counts the other processes' time too;
    ``torch.profiler`` also held gigabytes at SAM 3's full size). Operators: outermost calls (what they dispatch
    inside is theirs), keyed by name and input shapes; modules: a class's outermost calls, inclusive (a module
    within another of its class is not counted twice)."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    ops, mods, depth, open_ = collections.Counter(), collections.Counter(), collections.Counter(), {}
    calls = collections.Counter()

    class Timed(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t = time.thread_time()
            out = func(*args, **(kwargs or {}))
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            key = f"{func.__name__} {shapes}"[:150]
            ops[key] += time.thread_time() - t
            calls[key] += 1
            return out

    def pre(module, _):
        name = type(module).__name__
        depth[name] += 1
        if depth[name] == 1:
            open_[name] = time.thread_time()

    def post(module, _, __):
        name = type(module).__name__
        depth[name] -= 1
        if depth[name] == 0:
            mods[name] += time.thread_time() - open_.pop(name)

    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
             torch.nn.modules.module.register_module_forward_hook(post)]
    start = time.thread_time()
    try:
        with Timed():
            unit()
    finally:
        for h in hooks:
            h.remove()
    total = time.thread_time() - start
    return {"cpu_seconds": round(total, 2), "ops_seconds": round(sum(ops.values()), 2),
            "ops": [[k, round(v, 3), calls[k]] for k, v in ops.most_common(top)],
            "modules": [[k, round(v, 3)] for k, v in mods.most_common(top)],
            "ops_by_name": [[k, round(v, 3)] for k, v in collections.Counter(
                {n: sum(v for k, v in ops.items() if k.split(" ")[0] == n)
                 for n in {k.split(" ")[0] for k in ops}}).most_common(top)]}


def gemm_probes(arch: str) -> dict:
    """This CPU's fp32 GEMM rates as the harness measures them (:func:`benchlib.gemm_rates`: MKL, oneDNN, MKL's
    packed; one thread), on its default product and, ``arch`` full, on the SAM 3 ViT's MLP at 1008 pixels
    (``[5184, 1024] x [1024, 4736]``, the unit's largest product): ``{shape: rates}``."""
    import benchlib

    shapes = {"default": {}, **({"sam3_vit_mlp": {"rows": 5184, "k": 1024, "n": 4736, "repeats": 2}}
                                if arch == "full" else {})}
    return {name: benchlib.gemm_rates(**kw) for name, kw in shapes.items()}


def floor_of(flops: list[dict], rows: list[dict], files: list[Path], probes: dict) -> dict:
    """The floor under each timed unit on this CPU (issue 79's rule): the reference's GEMM, convolution and
    attention FLOPs on that unit's photo (``flops``: :func:`count_flops` per photo, its worker's ``flops``
    command: its warm-up's photo and the others run once more) at the fastest fp32 GEMM rate measured here
    (``probes``: :func:`gemm_probes`), all other work 0, over the reference's CPU-seconds on that unit. Pair ``i``
    timed photo ``(i + 1) % len(files)`` on both sides (a warm-up unit each, the photos in turn); a pair whose
    photo was not counted (``--floor-from`` with fewer ``--images``) has None, the median is over the others."""
    import benchlib

    rates = {k: v for shape, r in probes.items() for k, v in benchlib.probe_rates(r, f"{shape}_{{library}}").items()}
    gflop = {f["photo"]: f["gflop"] for f in flops}
    peak = max(rates.values())
    per_pair = [gflop[files[(i + 1) % len(files)].name] / peak / row["reference"]["cpu"]
                if files[(i + 1) % len(files)].name in gflop else None for i, row in enumerate(rows)]
    known = [f for f in per_pair if f is not None]
    return {"what": "the reference's GEMM, convolution and attention FLOPs on each photo (torch's FlopCounterMode "
                    "over an untimed unit of the reference's worker: its warm-up, the other photos after its timed "
                    "units) at the fastest fp32 GEMM "
                    "rate measured here (benchlib.gemm_rates' probes, one thread), all else 0, over the reference's "
                    "CPU-seconds on the unit of the same photo",
            "reference_flops": flops, "probes": probes, "rates_gflops_per_s": rates, "peak_gflops_per_s": peak,
            "floor_s_per_photo": {p: round(g / peak, 2) for p, g in gflop.items()},
            "floor_over_reference": [None if f is None else round(f, 3) for f in per_pair],
            "floor_over_reference_median": round(statistics.median(known), 3) if known else None}


def earlier_result(flag: str, path: Path, args, settings: dict, **more) -> tuple[dict, list[str]]:
    """An earlier result of this bench (``--out``'s JSON at ``path``) and the keys where it measured another run than
    this one would (method, model, settings, class set, classes, the clone's commit, and ``more``); one line naming
    ``flag`` and the file where it is not such a JSON."""
    import activesam_parity as ap

    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{flag} {path}: not a result of this bench ({e}); give the JSON an earlier run wrote "
                         "with --out") from None
    own = {"benchmark": f"{args.method}-vs-reference", "model": MODELS[args.arch], "settings": settings,
           "class_set": args.class_set, "classes": args.classes, **more,
           "reference": {"repo": "VILA-Lab/ActiveSAM", "commit": ap.commit_of(args.ref)}}
    return earlier, [key for key, value in own.items() if earlier.get(key) != value]


def floor_from(args, settings: dict, common: list, env: dict, files: list[Path]) -> dict:
    """``--floor-from JSON``: the floor (:func:`floor_of`) of an earlier result of the same method, model, settings,
    class set and reference commit (one line naming what differs otherwise), its timed pairs as they are: the
    reference's worker alone counts this run's photos (its warm-up, then ``flops``; nothing timed), then the GEMM
    probes run. The first ``--images`` photos of that run's: pairs on a photo not counted have no floor."""
    from sidebyside import Side

    path = args.floor_from
    earlier, differs = earlier_result("--floor-from", path, args, settings)
    if differs or not earlier.get("pairs"):
        raise SystemExit(f"--floor-from {path}: measured another run ({', '.join(differs) or 'no pairs'} differ); "
                         "give the same --method, --arch, --settings and thresholds")
    side = Side("reference", [sys.executable, __file__, "--worker", "reference", *common], args.work / "reference.log",
                env)
    try:
        warm_up = side.run()  # untimed: its photo counted as it runs
        flops = side.ask("flops")["flops"]
    finally:
        side.close()
    probes = gemm_probes(args.arch)
    import re

    taken = re.search(r"(\d+) in turn", earlier.get("unit", ""))  # "one photo, N in turn: WxH, ..."
    earlier_files = photos(args.work, int(taken.group(1)) if taken else len(files))
    return {"benchmark": f"{args.method}-vs-reference-floor", "floor_of": str(path), "of_command": earlier["command"],
            "of_vpltool_commit": earlier.get("vpltool_commit"), "of_load_average_1min": earlier.get(
                "load_average_1min"), "ratios": earlier.get("ratios"), "ratio_median": earlier.get("ratio_median"),
            "photos_counted": [f.name for f in files], "counting_unit_cpu_s": round(warm_up["cpu"], 1),
            "floor": floor_of(flops, earlier["pairs"], earlier_files, probes)}


def reference_rows(args, settings: dict, unit: str) -> dict:
    """``--reference-from``: the earlier result's reference rows (``{"rows": [...], "note": {...}}``), after checking
    that it measured what this run measures (method, model, settings, class set, classes, photos, pairs, the clone's
    commit) and that its outputs are in ``--work``; one line naming the file and what differs otherwise."""
    path = args.reference_from
    if not args.one_at_a_time:
        raise SystemExit("--reference-from runs vpltool's side alone: add --one-at-a-time")
    earlier, differs = earlier_result("--reference-from", path, args, settings, unit=unit)
    if len(earlier.get("pairs", [])) != args.pairs:
        differs.append(f"pairs ({len(earlier.get('pairs', []))} there)")
    if differs:
        raise SystemExit(f"--reference-from {path}: measured another run ({', '.join(differs)} differ); run both "
                         "sides (leave --reference-from out)")
    if not (args.work / "reference_out.pt").is_file():
        raise SystemExit(f"--reference-from {path}: {args.work / 'reference_out.pt'} missing (the reference's outputs "
                         "that run left in its --work); copy it there, or run both sides")
    note = {"file": str(path), "command": earlier.get("command"), "vpltool_commit": earlier.get("vpltool_commit"),
            "load_average_1min": earlier.get("load_average_1min", earlier.get("machine", {}).get("load_average_1min"))}
    return {"rows": [pair["reference"] for pair in earlier["pairs"]], "note": note,
            "flops": (earlier.get("floor") or {}).get("reference_flops")}


def main(argv: list[str] | None = None) -> None:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--ref", type=Path, required=True, help="a clone of VILA-Lab/ActiveSAM (41cad43)")
    ap_.add_argument("--method", choices=("sam3", "activesam"), default="activesam")
    ap_.add_argument("--work", type=Path, default=Path("runs/parity-activesam"), help="the parity's files")
    ap_.add_argument("--images", type=int, default=3, help="photos taken in turn, one a unit")
    ap_.add_argument("--pairs", type=int, default=6, help="alternating pairs after the warm-up (median over them)")
    ap_.add_argument("--arch", choices=("reduced", "full"), default="reduced",
                     help="reduced: the parity's SAM 3; full: Meta's sizes (3.4 GB written in --work once)")
    ap_.add_argument("--photo", default=None, help="WxH: one photo of that size in place of the parity photos")
    ap_.add_argument("--class-set", default="activesam:voc21", help="a bundled class file both sides read")
    ap_.add_argument("--classes", type=int, default=21, help="the first N lines of --class-set")
    ap_.add_argument("--settings", default=None, help="JSON: the reference's keyword arguments [default: the parity's]")
    ap_.add_argument("--confidence-threshold", type=float, default=None,
                     help="the instances' threshold on both sides [default: the parity's]")
    ap_.add_argument("--prob-threshold", type=float, default=None,
                     help="the background threshold (prob_thd) on both sides [default: the parity's]")
    ap_.add_argument("--one-at-a-time", action="store_true",
                     help="one worker alive at a time (the reference's units, then vpltool's): two full-size models "
                          "need ~13 GB together")
    ap_.add_argument("--reference-from", type=Path, default=None, metavar="JSON",
                     help="with --one-at-a-time: the reference's units from this earlier result of the same settings "
                          "(its outputs from --work's reference_out.pt); vpltool's side alone is run")
    ap_.add_argument("--floor-from", type=Path, default=None, metavar="JSON",
                     help="the floor of this earlier result alone: the reference's FLOPs on the first --images "
                          "photos counted, nothing timed")
    ap_.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap_.add_argument("--worker", choices=("reference", "vpltool"), help=argparse.SUPPRESS)
    ap_.add_argument("--profile", type=int, default=0, metavar="N",
                     help="with --worker: one unit profiled (CPU time), its N costliest ops and modules to stderr")
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
    from PIL import Image

    import benchlib

    torch.set_num_threads(1)
    ap.setup(args.work, max(args.images, 3), args.arch)
    settings = json.loads(args.settings) if args.settings else dict(ap.OVERRIDES[args.method])
    if args.confidence_threshold is not None:
        settings["confidence_threshold"] = args.confidence_threshold
    if args.prob_threshold is not None:
        settings["prob_thd"] = args.prob_threshold
    overrides = {**settings, "classname_path": str(class_file(args.work, args.classes, args.class_set))}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    common = ["--ref", args.ref, "--method", args.method, "--work", args.work, "--images", args.images,
              "--overrides", json.dumps(overrides), "--arch", args.arch, "--classes", args.classes,
              "--class-set", args.class_set,
              *(["--photo", args.photo] if args.photo else [])]
    files = photos(args.work, args.images, args.photo)
    unit = f"one photo, {len(files)} in turn: " + ", ".join(f"{Image.open(f).size[0]}x{Image.open(f).size[1]}"
                                                            for f in files)
    if args.floor_from:
        import benchlib

        load_before = round(os.getloadavg()[0], 2)
        floor = floor_from(args, settings, common, env, files)
        result = json.dumps({**floor, "machine": benchlib.machine("cpu", floor["floor"]["probes"]["default"]),
                             "threads": 1, "precision": "fp32",
                             "command": " ".join(["python", "bench/bench_activesam.py",
                                                  *map(str, argv or sys.argv[1:])]),
                             "vpltool_commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
                             "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)}},
                            indent=1)
        print(result)
        if args.out:
            args.out.write_text(result + "\n")
        return
    reused = reference_rows(args, settings, unit) if args.reference_from else None
    load_before, start = round(os.getloadavg()[0], 2), time.perf_counter()
    flops: list = []  # the reference's FLOPs per photo (its warm-up's counted, the other photos' after its units)
    ours_flops: list = []  # vpltool's, its warm-up photo's: beside (torch's table and oneDNN's/MKL's linear)
    count_ours = {"vpltool": lambda side: ours_flops.extend(side.ask("counted")["flops"])}
    if reused:
        rows, a, b = one_at_a_time(__file__, common, args.work, env, args.pairs, names=("vpltool",),
                                   after=count_ours)
        for row, earlier in zip(rows, reused["rows"]):
            row["reference"] = earlier
        flops = reused["flops"] or []
    else:
        after = {"reference": lambda side: flops.extend(side.ask("flops")["flops"]), **count_ours}
        rows, a, b = (one_at_a_time if args.one_at_a_time else race)(__file__, common, args.work, env, args.pairs,
                                                                       after=after)
    probes = gemm_probes(args.arch)  # the workers closed: the probes run alone
    ratios = [r["vpltool"]["cpu"] / r["reference"]["cpu"] for r in rows]
    ratio = statistics.median(ratios)
    result = json.dumps({
        "benchmark": f"{args.method}-vs-reference", "machine": benchlib.machine("cpu", probes["default"]),
        "threads": 1,
        "precision": "fp32", "sides": "one at a time, not alternated" if args.one_at_a_time else "alternated",
        "command": " ".join(["python", "bench/bench_activesam.py", *map(str, argv or sys.argv[1:])]),
        "vpltool_commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
        "reference": {"repo": "VILA-Lab/ActiveSAM", "commit": ap.commit_of(args.ref)},
        "model": MODELS[args.arch],
        "settings": settings, "class_set": args.class_set, "classes": args.classes,
        "words": sum(len(line.split(",")) for line in
                     class_file(args.work, args.classes, args.class_set).read_text().splitlines()),
        "unit": unit,
        **({"reference_from": reused["note"]} if reused else {}),
        "pairs": [{side: {k: round(v, 3) for k, v in r[side].items()} for side in r} for r in rows],
        "ratios": [round(r, 3) for r in ratios], "ratio_median": round(ratio, 3),
        "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],  # the pairs' lowest and highest
        "cpu_seconds_median": {side: round(statistics.median(r[side]["cpu"] for r in rows), 3)
                               for side in ("vpltool", "reference")},
        "unit_rss_peak_mib_max": {side: max((r[side].get("unit_rss_peak_mib") or 0) for r in rows)
                                  for side in ("vpltool", "reference")},
        "process_rss_peak_mib": {side: max((r[side].get("rss_peak_mib") or 0) for r in rows)
                                 for side in ("vpltool", "reference")},
        "goal": GOAL, "goal_met": bool(ratio <= GOAL),
        **({"floor": floor_of(flops, rows, files, probes)} if flops else {}),
        **({"vpltool_flops": ours_flops} if ours_flops else {}),
        "memory_goal_met": bool(max((r["vpltool"].get("unit_rss_peak_mib") or 0) for r in rows)
                                <= max((r["reference"].get("unit_rss_peak_mib") or 0) for r in rows)),
        "outputs": {"scores_max_abs_diff": float((a["scores"] - b["scores"]).abs().max()),
                    "labels_equal": float((a["pred"] == b["pred"]).float().mean())},
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - start, 1)}, indent=1)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()

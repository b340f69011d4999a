"""Write docs/performance.md from the JSON objects in bench/results/ (never typed by hand).

One section per result file: the machine it ran on, a headline table (cam: images/s and speed-ups;
learn-prototypes: seconds for 3000 iterations; crf: workers vs wall time; decoder: iterations/s with and without
the feature cache; stage-costs: disk and compute per stage), the peak memory of each measured stage, and every
other recorded field in a collapsed list. The stage-costs tables are also written into docs/reproduce.md,
between its ``<!-- stage-costs:begin -->`` and ``<!-- stage-costs:end -->`` markers.

    python docgen/make_table.py [--results bench/results] [--out docs/performance.md]
                                    [--reproduce docs/reproduce.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # benchlib, shared with the speed benchmarks
from benchlib import ISA_FLAGS, cpu_name, machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the repository
# sections in pipeline order, others after
ORDER = ("units-vs-reference", "gpu-pipeline", "demo", "cam", "dense-parity", "learn-prototypes", "crf", "densecrf",
         "decoder", "decoder-paper", "decoder-host", "stage-costs")
BEGIN, END = "<!-- stage-costs:begin -->", "<!-- stage-costs:end -->"


# --------------------------------------------------------------------------------------------- formatting
def num(x, digits: int = 3) -> str:
    """A number with ``digits`` significant digits and thousands separators; '—' for a missing value."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    if isinstance(x, int) or abs(x) >= 10 ** digits:
        return f"{round(x):,}"
    return f"{x:.{digits}g}"


def size(gb) -> str:
    """Gigabytes (10^9 bytes) as a readable size: '812 KB', '5.9 GB'."""
    if gb is None:
        return "—"
    for unit, scale in (("TB", 1e3), ("GB", 1.0), ("MB", 1e-3), ("KB", 1e-6)):
        if gb >= scale:
            return f"{num(gb / scale)} {unit}"
    return f"{num(gb * 1e9)} B"


def duration(seconds) -> str:
    """Seconds as a readable duration: '42 s', '3.5 min', '2.1 h'."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{num(seconds, 2)} s"
    if seconds < 90 * 60:
        return f"{num(seconds / 60, 2)} min"
    return f"{num(seconds / 3600, 2)} h"


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A markdown table; ``align`` has one 'l' or 'r' per column (default: first left, others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |",
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


# --------------------------------------------------------------------------------------------- common parts
def machine_of(data: dict) -> str:
    m = data.get("machine")
    if isinstance(m, dict):
        return machine_line(m)
    return f"{m} (generation not recorded)" if m else "not recorded (no CPU named, so generation not recorded)"


def peak_memory(data: dict) -> list[str]:
    """Peak memory table from ``peak_memory`` (per stage) or the older single ``peak_rss_mb``."""
    if data.get("peak_memory"):
        rows = [[p["stage"], num(p.get("rss_mib"), 4), num(p.get("cuda_mib"), 4), p.get("scope", "stage")]
                for p in data["peak_memory"]]
        return ["Peak memory (MiB):", "", *table(["stage", "host RSS", "CUDA allocator", "scope"], rows, "lrrl")]
    if "peak_rss_mb" in data:
        return [f"Peak memory: {num(data['peak_rss_mb'], 4)} MiB resident (whole process)."]
    # a result that keeps its peaks elsewhere (a unit's rss_peak_mib, a stage's rss_mib) shows them in its own table
    # and its fields: "not recorded" under that table would contradict it
    return [] if records_memory(data) else ["Peak memory: not recorded."]


def records_memory(value) -> bool:
    """Whether a result holds a resident-memory figure anywhere (a key naming RSS or memory, at any depth)."""
    if isinstance(value, dict):
        return any(("rss" in str(k) or "memory" in str(k)) and v is not None or records_memory(v)
                   for k, v in value.items())
    return isinstance(value, list) and any(records_memory(v) for v in value)


# a collapsed field's value is cut after this many characters: the JSON file named above holds it whole (a bench's
# profile or per-shape record runs to 40,000 characters, half of this page, in one cell nobody reads here)
FIELD_CHARS = 600


def field(value) -> str:
    """A recorded value as :func:`all_fields` shows it: JSON, cut after :data:`FIELD_CHARS` characters."""
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= FIELD_CHARS else f"{text[:FIELD_CHARS]} … (cut here: the JSON file holds it whole)"


def all_fields(data: dict) -> list[str]:
    """Every recorded field, collapsed, each long value cut (:func:`field`): the headline tables above are a view
    of these."""
    rows = [[k, field(v)] for k, v in data.items() if k not in ("machine", "peak_memory")]
    return ["<details><summary>all recorded fields</summary>", "", *table(["key", "value"], rows, "ll"), "",
            "</details>"]


def header(data: dict, path: Path, title: str) -> list[str]:
    lines = [f"## {title}", "", f"`{path.name}` · machine: {machine_of(data)}", ""]
    if data.get("quick"):
        lines += ["**`--quick` smoke-test result: tiny sizes, not a measurement.**", ""]
    return lines


# --------------------------------------------------------------------------------------------- sections
def sentence(text: str | None) -> str:
    """A recorded note as a sentence (capitalised, full stop)."""
    text = (text or "").strip()
    return text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")


def cam_section(d: dict) -> list[str]:
    med = d.get("seconds_median", {})
    n = d.get("images")
    rows = [
        [f"CLIP-ES, {n} images", num(med.get("clip_es")), "1.00", ""],
        [f"vpltool `cam DATA` (first pass), {n} images", num(med.get("first_pass")),
         num(d.get("first_pass_speedup_vs_clip_es")), f"speed-up {d['bars']['first_pass_speedup_vs_clip_es']}"],
        [f"vpltool `cam FEATURES` (second pass), {n} images", num(med.get("second_pass")),
         num(_inverse(d.get("second_pass_over_clip_es"))),
         f"time {d['bars']['second_pass_over_clip_es']} x CLIP-ES"],
        ["CLIP-ES, 1 image", num(med.get("clip_es_1")), "1.00", ""],
        ["vpltool `cam DATA`, 1 image", num(med.get("first_pass_1")), num(_inverse(d.get("one_image_over_clip_es"))),
         f"time {d['bars']['one_image_over_clip_es']} x CLIP-ES"],
    ]
    return [*table(["whole command (start-up included)", "seconds (median)", "speed-up vs CLIP-ES", "bar"], rows),
            "",
            f"Per image {num(d.get('per_image_s'))} s = {num(d.get('per_image_over_bare_forward'))} x the bare "
            f"forward ({num(d.get('bare_forward_s'))} s; bar {d['bars']['per_image_over_bare_forward']}); start-up "
            f"{num(d.get('startup_s'))} s (bar {d['bars']['startup_s']} s). {d.get('model')} with "
            f"{d.get('weights')} weights, {d.get('threads')} thread(s), {d.get('precision')}, {d.get('pairs')} "
            f"alternating pairs; CLIP-ES side: {d.get('clip_es_source')}. Speed-ups are medians of per-pair "
            "ratios.", "", *_startup_phases(d), *_clip_es_split(d)]


def _startup_phases(d: dict) -> list[str]:
    """Where the one-image command's seconds go (bench_cam.py's ``one_image_startup``, from startup_phases.py)."""
    phases = (d.get("one_image_startup") or {}).get("phases_s")
    if not phases:
        return []
    steps = ", ".join(f"{name.replace('_', ' ')} {num(seconds)} s" for name, seconds in phases.items()
                      if name != "second_call")
    return [f"One image, phase by phase (`startup_phases.py`, one fresh process after the timed pairs): {steps}; "
            f"{num(d['one_image_startup']['one_image_s'])} s in all, of which the stage's first call paid "
            f"{num(d['one_image_startup']['once_in_first_call_s'])} s once (a second call in the same process took "
            f"{num(phases.get('second_call'))} s).", ""]


def _clip_es_split(d: dict) -> list[str]:
    """CLIP-ES's per-image cost and start-up by the same differencing, and what they imply on CUDA."""
    runs, n = d.get("seconds", {}), d.get("images")
    if not (runs.get("clip_es") and runs.get("clip_es_1") and n and n > 1 and d.get("per_image_s")):
        return []
    per = statistics.median((a - b) / (n - 1) for a, b in zip(runs["clip_es"], runs["clip_es_1"]))
    start = statistics.median(runs["clip_es_1"]) - per
    same = (f"CLIP-ES by the same differencing: {num(per)} s per image ({num(per / d['per_image_s'])} x vpltool's), "
            f"start-up {num(start)} s.")
    if d.get("machine", {}).get("device", "cpu") != "cpu":
        return [same + " Steady first pass (bench_cam.py's first_pass_img_per_s_steady): "
                f"{num(d.get('first_pass_img_per_s_steady'))} img/s; the bf16 batched bare forward's floor: "
                + ", ".join(f"{num(v)} img/s at {k.replace('_', ' ')}"
                            for k, v in (d.get("batched_forward_floor_img_per_s") or {}).items()) + "."]
    return [f"{same} On this CPU the ViT forward bounds both tools per image, so the whole-run "
            "ratio tends to the per-image one as the image count grows. The floor of a first pass here, vpltool's "
            f"start-up plus {n} bare forwards, is {num(d['startup_s'] + n * d['bare_forward_s'])} s: at most "
            f"{num(statistics.median(runs['clip_es']) / (d['startup_s'] + n * d['bare_forward_s']))} x faster than "
            "CLIP-ES's whole run by any fp32 implementation with this start-up.",
            "",
            "On CUDA both sides run as their users run them (the section of a result with device cuda, when one "
            "was measured): vpltool batches images by their input size and label count with its frozen blocks "
            "in bf16; CLIP-ES runs one image at a time in fp16 with one backward per class."]


def _inverse(ratio):
    return None if not ratio else 1 / ratio


def learn_prototypes_section(d: dict) -> list[str]:
    """Seconds per iteration of the stage's kernel against the skinny-product floor on the same chunks."""
    target = next((k for k in d if k.startswith("seconds_for_") and k.endswith("_iters")), None)
    iters = target[len("seconds_for_"):-len("_iters")] if target else "3000"
    per_iter = d.get("s_per_iter_median", d.get("s_per_iter"))
    rows = [[num(d.get("n_features"), 4), d.get("dim"), num(d.get("rows_in_play_mean")), num(per_iter),
             f"{duration(d.get(target))}" + (" (extrapolated)" if d.get("extrapolated", True) else ""),
             num(d.get("gflop_per_s")), num(d.get("bound_gflop_per_s")),
             f"**{num(d.get('fraction_of_bound_median'))}** (bar {num(d.get('bar_fraction_of_bound'))})",
             f"{d.get('precision')} / {d.get('storage')}"]]
    return [*table(["pixel features", "dim", "rows in play", "s / iteration", f"{iters} iterations", "GFLOP/s",
                    "bound GFLOP/s", "fraction of the bound", "compute / storage"], rows), "",
            f"The bound: the same two skinny products (x.W and (P - T)^T.x) on the same chunks and threads with "
            f"nothing else, timed in {d.get('pairs')} alternating pairs with the stage's kernel; the fraction is the "
            f"median of the per-pair ratios {d.get('fraction_of_bound_per_pair')}. Device {d.get('device')}, "
            f"{d.get('threads')} threads, {d.get('chunks')} chunks of {num(d.get('chunk_px'), 6)} pixels; setup "
            f"(not counted) {num(d.get('setup_seconds'))} s; loss over {d.get('descend_iters')} real iterations "
            f"{d.get('loss_first_last')}."]


def crf_section(d: dict) -> list[str]:
    rows = []
    for run in (d.get("single"), d.get("parallel")):
        if run:
            rows.append([run["workers"], num(run["seconds"]), num(run["images_per_s"]),
                         num(run["cpu_seconds_per_image"]), num(run["cores_used"])])
    return [*table(["workers", "wall s", "images/s", "CPU s / image", "cores used"], rows, "rrrrr"), "",
            f"{d.get('images')} images of {d.get('size')}, {d.get('classes')} classes, K = {d.get('k')}. Scaling "
            f"{num(d.get('scaling'))}x (target {num(d.get('target'))}x, met: {d.get('meets_target')}); "
            f"CPU-bound scaling {num(d.get('cpu_bound_scaling'))}x; identical PNGs: {d.get('identical_pngs')}; "
            f"load average {d.get('load_average_1min')} on {d.get('cpu_count')} cores, nice {d.get('nice')}."]


def densecrf_section(d: dict) -> list[str]:
    rows = [[name, s["images"], num(100 * s["worst"], 4), num(100 * s["mean"], 4), s.get("differing_pixels", "—"),
             num(s.get("largest_margin")) if s.get("largest_margin") is not None else "—"]
            for name, s in d["agreement"].items()]
    t, miou = d["throughput"], d["demo_miou"]
    speeds = [["torch, `crf` end to end", t["torch_stage"]["device"], num(t["torch_stage"]["img_per_s"])],
              ["torch, the device alone", t["torch_stage"]["device"], num(t["torch_device_only"]["img_per_s"])],
              [f"pydensecrf, {t['pydensecrf_stage']['processes']} processes", "cpu",
               num(t["pydensecrf_stage"]["img_per_s"])]]
    cost = d["iteration_cost"]["labels_3"]
    return [*table(["set", "images", "worst image % equal", "mean %", "pixels differing", "largest Q margin"], rows,
                   "lrrrrr"), "",
            *table(["backend", "device", "images/s"], speeds, "llr"), "",
            "Demo mIoU pydensecrf vs torch: " + "; ".join(
                f"{name} {num(m['pydensecrf'])} vs {num(m['torch'])} ({num(m['difference_points'])} points)"
                for name, m in miou.items())
            + f". Device alone: {num(t['torch_device_only']['lattice_ms_per_image'])} ms/image building lattices, "
            f"{num(t['torch_device_only']['mean_field_ms_per_image'])} ms/image mean field. One iteration at "
            f"500x375, 3 labels: {num(cost['mbytes_per_iteration'])} MB, {num(cost['mflop_per_iteration'])} MFLOP."]


def decoder_section(d: dict) -> list[str]:
    rows = [["frozen CLIP on the fly", num(d.get("on_the_fly_iters_per_s")), "1.00"],
            ["`--cache-features`", num(d.get("cached_iters_per_s")), num(d.get("speedup"))]]
    cfg = d.get("config", {})
    return [*table(["", "iterations/s", "speed-up"], rows), "",
            f"{d.get('model')} ({d.get('weights')} weights) on {d.get('device')}, {d.get('images')} images; decoder "
            + ", ".join(f"{k} {v}" for k, v in cfg.items())
            + f"; cache build {num(d.get('cache_build_s'))} s (once per run). {sentence(d.get('note'))}".rstrip()]


def stage_costs_tables(d: dict) -> list[str]:
    """Per dataset: stage | items | disk | TFLOP | GPU ESTIMATE | bound | measured-rate time; plus the assumptions."""
    a = d.get("assumptions", {})
    rate = d.get("rate", "CPU core time")
    lines = []
    for name, title in (("voc", "PASCAL VOC"), ("coco", "COCO 2014")):
        ds = d.get(name)
        if not ds:
            continue
        rows = [[r["stage"], num(r["count"]), size(r["disk_gb"]), num(r["tflop"]),
                 duration(r["gpu_seconds_estimate"]), r["bound"] or "—", duration(r["measured_rate_seconds"]),
                 r["note"]] for r in ds["stages"]]
        lines += [f"**{title}**: {ds['train_split']} ({num(ds['train_images'])} images) and val "
                  f"({num(ds['val_images'])} images); total written {size(ds['total_disk_gb'])}.", "",
                  *table(["stage", "items", "disk", "TFLOP", "GPU time ESTIMATE", "bound", f"{rate} (measured rate)",
                          "basis"], rows, "lrrrrlrl"), ""]
    measured = d.get("measured", {})
    sizes = ", ".join(f"{k.upper()} {v['image_size']} ({v['images_measured']} images)" for k, v in measured.items()
                      if isinstance(v, dict) and "image_size" in v)
    lines += [*measured_table(measured), "",
              f"Measured with `bench/stage_costs.py` on synthetic images ({sizes}), {d.get('model')} with "
              f"{d.get('weights')} weights (sizes and FLOPs depend on shapes only); machine: {machine_of(d)}. "
              "GPU time is an **ESTIMATE, not a measurement**: the "
              f"larger of FLOPs / {num(a.get('gpu_tflops'))} TFLOP/s and bytes read + written / "
              f"{num(a.get('disk_gbs'))} GB/s (learn-prototypes: features read per iteration at "
              f"{num(a.get('gpu_bandwidth_gbs'))} GB/s from a {num(a.get('gpu_memory_gb'))} GB GPU, or from disk when "
              f"they do not fit); all four rates are assumptions. Labels per image (assumed, they set the CAM "
              f"folders' size): VOC {a.get('voc_labels_per_image')}, COCO {a.get('coco_labels_per_image')}. "
              f"{rate} = this machine's measured seconds per item x items (attention unfused, as counted)."]
    return lines


def demo_section(d: dict) -> list[str]:
    """`make demo`: seconds per Makefile target (the wall total, with setup where the JSON has it) against the target,
    its CPU-seconds with setup (``--with-setup``), and the mIoU it got."""
    rows = [[f"`make {target}`", num(s)] for target, s in d.get("stage_seconds", {}).items()]
    rows.append([f"**total** (target <= {num(d.get('target_s'))} s)", f"**{num(d.get('total_s'))}**"])
    lines = table(["target", "seconds"], rows)
    if isinstance(d.get("setup"), dict) and isinstance(d.get("demo"), dict):  # bench_demo.py --with-setup
        lines += ["", f"{d.get('how')}: CPU-s {num(d['setup'].get('cpu_s'))} (setup) + {num(d['demo'].get('cpu_s'))} "
                      f"(make demo) = **{num(d.get('cpu_s'))}** (target <= {num(d.get('cpu_target_s'))}); the total "
                      "above is the wall time of both."]
    elif d.get("cpu_s") is not None:  # bench_demo.py: make demo alone (its mode in ``how``)
        lines += ["", f"CPU-s of {d.get('how')}: **{num(d['cpu_s'])}**, no setup recorded beside it (the target, <= "
                      f"{num(d.get('cpu_target_s'))}, counts a fresh clone's setup too); the total above is its wall "
                      "time."]
    readme = d.get("readme") or {}
    if readme.get("rows_compared"):
        differ = "; ".join(f"{m['row']} {m['split']}: {m['run']} against {m['readme']}" for m in readme["mismatches"])
        lines += ["", f"README's table: {readme['rows_compared']} rows compared to the printed 0.1, "
                      + (f"differing: {differ}." if differ else "every figure the same.")]
    pct = lambda v: num(100 * v if v is not None else None)  # noqa: E731
    rows = [[k, *(pct(v.get(split)) for split in ("train", "val"))] if isinstance(v, dict) else [k, pct(v), "—"]
            for k, v in d.get("miou", {}).items()]
    chance = d.get("chance") or {}
    for name in ("random CAMs", "all background"):
        if isinstance(chance.get("val"), dict):  # per split since held-out scoring
            rows.append([f"chance: {name}", pct(chance["train"].get(name)), pct(chance["val"].get(name))])
    lines += ["", *table(["stage", "mIoU % train", "mIoU % val (held out)"], rows)]
    others = d.get("other_layers") or {}
    if others:
        lines += ["", "Other maps on val (raw, no CAA; `vpltool diagnose`):", "",
                  *table(["map", "mIoU % val"], [[k, pct(v)] for k, v in others.items()])]
    toy = d.get("toy_clip")
    if toy:
        lines += ["", f"`vpltool train-toy-clip` (shipped defaults): {num(toy['seconds'])} s (target <= "
                      f"{num(toy['target_s'])} s); weights identical to the shipped checkpoint: "
                      f"{toy['identical_to_shipped']}."]
    return lines


def measured_table(m: dict) -> list[str]:
    """What was measured per item on the synthetic images, before any scaling."""
    rows = []
    for name in ("voc", "coco"):
        if name not in m:
            continue
        v = m[name]
        parts = v["extract"].get("tensor_bytes", {})
        rows += [
            [f"{name.upper()} extract (per image" + (": " + ", ".join(parts) if parts else "") + ")",
             size(v["extract"]["bytes_per_image"] / 1e9) + (" = " + " + ".join(size(b / 1e9) for b in parts.values())
                                                              if parts else ""),
             num(v["extract"]["flops_per_image"] / 1e9), num(v["extract"]["s_per_image"])],
            [f"{name.upper()} cam (per image: overhead + per label map)",
             f"{size(v['cam']['bytes_overhead'] / 1e9)} + {size(v['cam']['bytes_per_label_map'] / 1e9)}",
             num(v["cam"]["flops_per_image"] / 1e9), num(v["cam"]["s_per_image"])],
            [f"{name.upper()} crf (per image)", size(v["crf"]["bytes_per_image"] / 1e9), "—",
             num(v["crf"]["s_per_image"])],
            [f"{name.upper()} text / vision prototypes (one file)", size(v["text_prototypes"]["bytes"] / 1e9), "—",
             "—"],
        ]
    if "train_decoder" in m:
        t, p = m["train_decoder"], m["predict"]
        rows += [[f"train-decoder (batch {t['batch_size']}, crop {t['crop_size']}; bytes: decoder + checkpoint, "
                  "GFLOP and seconds: per iteration)",
                  size(t["bytes"] / 1e9), num(t["flops_per_iteration"] / 1e9), num(t["s_per_iteration"])],
                 ["predict (per image)", size(p["bytes_per_image"] / 1e9), num(p["flops_per_image"] / 1e9),
                  num(p["s_per_image"])]]
    return ["Measured per item (before scaling):", "",
            *table(["what", "bytes written", "GFLOP", "seconds"], rows, "lrrr")]


def memory_section(d: dict) -> list[str]:
    """Peak RSS per stage process at two image counts: flat means no growth with the number of images."""
    small, large = d.get("images", [None, None])
    rows = [[stage, num(v["rss_mib"].get(str(small))), num(v["rss_mib"].get(str(large))),
             num(v["growth_mib_per_100_images"])] for stage, v in d.get("stages", {}).items()]
    return [*table(["stage (own process)", f"peak RSS MiB, {small} images", f"{large} images",
                    "growth MiB / 100 images"], rows, "lrrr"), "",
            f"{d.get('model')} on the demo world; crf with 1 worker; predict on val with a 5-iteration decoder."]


def report_section(d: dict) -> list[str]:
    """`vpltool report`: size and wall time on the demo run and on a synthetic run of VOC train_aug's size."""
    rows = []
    if d.get("demo"):
        m = d["demo"]
        rows.append(["demo run (`make demo`: 500 train + 200 val scenes, 96 px, 7 stage columns)",
                     size(m["bytes"] / 1e9), num(m["files"]), duration(m["seconds"]), num(m.get("peak_rss_mib"))])
    s = d["synthetic"]
    rows.append([f"synthetic run: {s['images']:,} images of {s['side']}² px, {s['columns']} stage columns",
                 size(s["bytes"] / 1e9), num(s["files"]), duration(s["seconds"]), num(s.get("peak_rss_mib"))])
    page = s.get("page")
    opens = "" if not page else (f" Headless Chromium shows the first page of the synthetic run's {page['rows']:,} "
                                 f"rows {page['ready_ms']:,} ms after it starts loading `index.html`.")
    return [*table(["run", "report size", "files", "wall time", "peak RSS MiB (largest process)"], rows, "lrrrr"), "",
            f"`vpltool report --workers {d.get('workers')}` as its own process (`bench/bench_report.py`); "
            f"load average {d['machine'].get('load_average_1min')} before, {d.get('load_average_1min_after')} "
            f"after, at nice {d['machine'].get('nice')}: a shared machine, so the wall times are upper bounds, not "
            "speed claims." + opens]


def gpu_pipeline_section(d: dict) -> list[str]:
    sec, proj = d["seconds"], d.get("voc_projection", {}).get("seconds", {})
    goals = d.get("bars", {})
    n = {"extract": d["images"], "cam_text": d["images"], "cam_vision": d["images"], "crf": d["images"],
         "predict": d["predict_images"]}
    rows = []
    for stage, seconds in sec.items():
        whole = round(n[stage] / seconds, 1) if stage in n else None
        goal = goals.get(f"{stage}_img_per_s_steady") or {"train_decoder": goals.get("train_decoder_it_per_s"),
                                                          "learn_prototypes": goals.get("learn_prototypes_s")
                                                          and f"{goals['learn_prototypes_s']} s"}.get(stage) or ""
        rows.append([stage.replace("_", "-"), num(seconds), num(whole), num(d.get(f"{stage}_img_per_s_steady")),
                     num(d.get("printed_rate", {}).get(stage)), num(proj.get(stage)), goal])
    met = {True: "met", False: "not met", None: "—"}
    return [*table(["stage (whole command)", "seconds", "img/s (whole)", "img/s (steady)", "rate its log printed",
                    "VOC projection, s", "goal"], rows, "lrrrrrl"), "",
            f"{d['images']:,} VOC-like photos (mean {d.get('labels_per_image_mean')} labels), {d['decoder_iters']:,} "
            f"decoder iterations (the paper's recipe), {d['predict_images']:,} photos predicted; {d.get('model')} "
            f"with {d.get('weights')} weights; crf {' '.join(d.get('crf_options') or [])}. This run: "
            f"{num(d['total_minutes'])} min. Projected to VOC (10,582 images, 30,000 iterations): "
            f"{num(d.get('voc_projection', {}).get('total_minutes'))} min against the goal of "
            f"{num(d.get('goal_minutes'))} min ({met[d.get('projected_goal_met')]}). "
            f"{sentence(d.get('voc_projection', {}).get('how'))} {sentence(d.get('note'))}".rstrip()]


def decoder_paper_section(d: dict) -> list[str]:
    rows = [[f"`--compile {mode}`", num(r.get("steady_iters_per_s")), num(r.get("loop_iters_per_s")),
             num(r.get("minutes_for_30000_iters")), f">= {d.get('bar_iters_per_s')}"]
            for mode, r in d.get("compile", {}).items()]
    cfg = d.get("config", {})
    return [*table(["train-decoder", "iterations/s (steady)", "iterations/s (whole loop)", "min for 30,000",
                    "bar"], rows, "lrrrl"), "",
            f"{d.get('model')} ({d.get('weights')} weights) on {d.get('device')}, {d.get('images')} photos, "
            f"{d.get('workers')} loading workers, steady state from iteration {d.get('warmup_iters')}; decoder "
            + ", ".join(f"{k} {v}" for k, v in cfg.items()) + f". {sentence(d.get('note'))}".rstrip()]


def decoder_host_section(d: dict) -> list[str]:
    """bench_decoder.py --mode host: the training loop's ops and CPU-ms per iteration, and the CE's upsampling."""
    up = d.get("upsample_fwd_bwd_ms", {})
    rows = [["ops per iteration (the loop's thread)", num(d.get("ops_per_iter"))],
            ["... of which the frozen tower's forward", num(d.get("ops_frozen_forward"))],
            ["... of which the decoder's forward, losses and backward",
             num(d.get("ops_decoder_forward_losses_backward"))],
            ["CPU-ms per iteration, the loop's thread", num(d.get("main_ms_per_iter"))],
            ["iterations/s that thread allows on this CPU (the stand-in; no GPU figure)",
             num(d.get("main_thread_bound_iters_per_s"))],
            ["CPU-ms per augmented 320-px view (a loading process)", num(d.get("augment_ms_per_view"))],
            ["loading cores for 100 it/s", num(d.get("loading_cores_for_100_its"))],
            [f"CE upsampling {d.get('upsample_shapes')}, forward + backward, CPU-ms: F.interpolate",
             num(up.get("interpolate"))],
            ["... two matrix products (train-decoder's)", num(up.get("products"))],
            ["... products / interpolate (median of pairs)", num(d.get("upsample_products_vs_interpolate"))]]
    return [*table(["train-decoder, the host's work", "value"], rows, "lr"), "",
            f"{d.get('model')}; batch {d.get('batch_size')}, loop crops {d.get('crop_size_loop')} px, views "
            f"{d.get('crop_size_views')} px; iterations {d.get('iters')} (the first {d.get('warmup')} left out)."]


def host_section(d: dict) -> list[str] | None:
    """bench_host.py: the host's CPU-ms per image, its three parts, and every thread's time on this CPU."""
    if not all("host_ms" in v for v in d["stages"].values()):
        return None  # an older result (every thread's time only): the generic list
    rows = []
    for name, r in d["stages"].items():
        parts = r["host_parts"]
        goal = d.get("goal_met", {}).get(name)
        rows.append([name, num(r["host_ms"]), num(parts["main_thread_ms_small_photos"]),
                     num(parts["loading_processes_ms"]), num(parts["other_threads_ms"]),
                     num(r["host_img_per_s_per_core"]), num(r.get("host_ms_in_decodes")),
                     num(r.get("ops_per_image_12_blocks")), num(r["cpu_ms"]),
                     {True: "met", False: "**not met**", None: "—"}[goal]])
    decode = d.get("reference_decode_ms")
    return [*table(["stage", "host CPU-ms / image", "main thread (small photos)", "loading processes",
                    "writer threads", "img/s per core", "in JPEG decodes", "ops / image (12 blocks)",
                    "every thread, VOC photos", f"goal <= {num(d.get('goal_cpu_ms_extract_cam'))}"], rows,
                   "lrrrrrrrrl"), "",
            f"{d.get('images')} VOC-like photos ({d.get('labels_per_image_mean')} labels each), batch "
            f"{d.get('batch_size')}, {d.get('loading_processes')} loading processes, {d.get('torch_threads')} torch "
            f"thread; paths: {d.get('paths')}."
            + (f" This machine decoded a VOC-like JPEG in {num(decode)} CPU-ms (its speed that day)." if decode else "")
            + f" {sentence(d.get('note'))}".rstrip()]


def dense_parity_section(d: dict) -> list[str] | None:
    """dense_parity.py: each dense method's max |Δ| against its own public code, then every variant's figures."""
    ref = d.get("reference")
    clones = ref.get("clones", {}) if isinstance(ref, dict) else {}
    source = {n: f"{Path(c['path']).name}@{(c.get('commit') or '?')[:7]}" for n, c in clones.items()}
    owner = {"maskclip": "ClearCLIP", "sclip": "SCLIP", "clearclip": "ClearCLIP", "naclip": "NACLIP"}
    rows = []
    for method, m in d["methods"].items():
        code = source.get(owner.get(method, "NACLIP"), "vpltool itself (no --ref)" if not clones else "—")
        met = "met" if m["bar_met"] else "**not met**"
        rows.append([method, code, ", ".join(m["variants"]), num(m["max_abs_diff"]),
                     num(m.get("labels_equal_min"), 6), met])
    lines = [*table(["method", "public code (clone)", "variants", "max \\|Δ\\| logits", "labels equal (min)",
                     f"bar: ≤ {d['bar'].split('<=')[-1].strip()}"], rows, "lllrrl"), ""]
    vrows = []
    for name, v in d["variants"].items():
        patch = v["patch_logits"]
        mismatched = ", ".join(f"{k}: {x['vpltool']} vs {x['reference']}" for k, x in v["settings_mismatched"].items())
        vrows.append([name, num(v["text_rows_max_abs_diff"], 2), num(patch["crop224"]["max_abs_diff"], 2),
                      num(patch["whole"]["max_abs_diff"], 2), num(v["seg_logits_max_abs_diff"], 2),
                      num(v["probs_max_abs_diff"], 2), num(v["labels_equal_min"], 6),
                      num(v.get("reference_label_classes_max")), len(v["photos"]),
                      mismatched or "none"])
    lines += [*table(["variant", "text rows", "patch logits 224²", "patch logits whole", "seg logits",
                      "probabilities", "labels equal (min)", "classes in its labels (max)", "photos",
                      "settings differing"], vrows, "lrrrrrrrrl"), ""]
    text = "its own" if not d.get("text_layers") else f"a {d['text_layers']}-block"
    lines.append(f"Max abs differences in fp32 on the CPU; {d.get('model')} with {d.get('weights')} weights "
                 f"({text} text tower), {d.get('photos')} parity photos (the extra variants "
                 f"{d.get('extra_variant_photos', '—')}). Each variant's reference, vpltool's side and the clones' "
                 "commits are in the recorded fields below. Command: `python parity/dense_parity.py --ref CLONES "
                 f"--images {d.get('photos')} --extra-images {d.get('extra_variant_photos')} --pre-images "
                 f"{d.get('preprocessing_label_photos')} --text-layers {d.get('text_layers') or 0}`"
                 + (" (`--quick`)." if d.get("quick") else "."))
    pre = d.get("preprocessing")
    if pre:
        parts = [f"short side {s}: max {num(v['pixels_max_abs_diff'], 2)}, mean {num(v['pixels_mean_abs_diff'], 2)}"
                 for s, v in pre["by_short_side"].items()]
        labels = [f"{n} {num(min(x), 4)}" for v in pre["by_short_side"].values()
                  for n, x in v["labels_equal_from_own_input"].items()]
        lines += ["", f"Preprocessing (not part of the figures above, which start from the same input tensor): "
                  f"{pre['what']} Sizes equal: {pre['sizes_equal']}; decode max |Δ| {pre['decode_max_abs_diff_uint8']} "
                  f"levels; pixels {'; '.join(parts)}; labels equal from vpltool's own input (min): "
                  f"{', '.join(labels)}."]
    return lines


def vs_reference_section(d: dict) -> list[str]:
    """bench_vs_reference.py: per method, vpltool's CPU-seconds over its reference's for the same unit of work."""
    rows = []
    for method, m in d["methods"].items():
        out = m["outputs"]
        same = (f"loss Δ {num(out['loss_abs_diff'], 2)}" if "loss_abs_diff" in out else
                "losses not compared (other views of the photos)" if "loss" in out else
                f"logits Δ {num(out['logits_max_abs_diff'], 2)}, labels {out['labels_equal']:.2%}")
        floor = (m.get("floor") or {}).get("floor_over_reference")
        kernel = ((m.get("floor") or {}).get("with_torch_attention") or {}).get("floor_over_reference")
        rows.append([method, m["unit"], num(m["cpu_seconds_median"]["vpltool"]),
                     num(m["cpu_seconds_median"]["reference"]), num(m["ratio_median"]),
                     "—" if floor is None else num(floor) + ("" if kernel is None else
                                                             f" ({num(kernel)} with torch's attention)"),
                     "met" if m["bar_met"] else "**not met**", same])
    lines = [sentence(d.get("shared_machine")), "", *table(
        ["method", "unit of work", "vpltool CPU-s", "reference CPU-s", "ratio (median of pairs)", "floor",
         f"bar ≤ {next(iter(d['methods'].values()))['bar']}", "outputs"], rows, "llrrrrll")]
    floors = [m["floor"] for m in d["methods"].values() if m.get("floor")]
    if floors:
        f = floors[0]
        lines += ["", f"The floor: {sentence(f['what'])} The fastest rate measured: "
                  f"{num(f['peak_gflops_per_s'])} GFLOP/s; each method's reference FLOPs a unit: " + "; ".join(
                      f"{k} {num(v['floor']['reference_gflop'])} GFLOP" for k, v in d["methods"].items()
                      if v.get("floor")) + "."]
    peaks = {m: v["rss_peak_mib"] for m, v in d["methods"].items() if v.get("rss_peak_mib")}
    if peaks:
        lines += ["", "Peak resident memory of each side's process (MiB, vpltool / reference): " + "; ".join(
            f"{m} {num(p['vpltool'])} / {num(p['reference'])}" for m, p in peaks.items()) + "."]
    routes = [(m, v.get("run", {}).get("cpu_linear") or d.get("cpu_linear")) for m, v in d["methods"].items()]
    routes = [(m, r) for m, r in routes if r]
    if routes:
        said = {json.dumps(r, sort_keys=True): r for _, r in routes}
        for r in said.values():
            onednn = r.get("onednn_products") or []
            mkl = len(r.get("mkl_products", []))
            how = "" if r["route"] != "auto" else \
                f"; oneDNN's for {', '.join(onednn)}, MKL's for the {mkl} other shapes this machine measured" \
                if onednn else f"; MKL's for every shape this machine measured ({mkl})"
            lines += ["", f"The frozen towers' fp32 products: `VPLTOOL_CPU_LINEAR={r['route']}`{how}."]
    beside = {v.get("run", {}).get("beside") or d.get("beside") for v in d["methods"].values()} - {None}
    for note in sorted(beside):
        lines += ["", sentence(note)]
    for method, m in d["methods"].items():
        if "roofline" in m:  # the floor under a unit both sides spend in the same GEMMs
            r = m["roofline"]
            lines += ["", f"{method}: {sentence(r['what'])} {num(r['tflop_per_forward'])} TFLOP a forward; the "
                      f"fastest GEMM {num(r['peak_gflops_per_s'])} GFLOP/s, so {num(r['floor_seconds'])} s at least; "
                      "the unit runs at "
                      f"{num(r['unit_gflops_per_s']['vpltool'])} (vpltool) and "
                      f"{num(r['unit_gflops_per_s']['reference'])} (reference) GFLOP/s; the least ratio on this "
                      f"arithmetic is {num(r['least_ratio_on_this_arithmetic'])}."]
    return lines


def sam3_side_by_side_section(d: dict) -> list[str]:
    """bench_activesam.py: SAM 3's or ActiveSAM's CPU-seconds per photo and peak memory beside ActiveSAM's code."""
    out, cpu, peaks = d["outputs"], d["cpu_seconds_median"], d.get("unit_rss_peak_mib_max") or {}
    memory = (f"{num(peaks['vpltool'], 4)} / {num(peaks['reference'], 4)}" if peaks else "not recorded")
    rows = [[d["model"], d["unit"], f"{d.get('words', '?')}", json.dumps(d["settings"]), num(cpu["vpltool"]),
             num(cpu["reference"]), num(d["ratio_median"]), "met" if d["goal_met"] else "**not met**", memory,
             f"scores Δ {num(out['scores_max_abs_diff'], 2)}, labels {out['labels_equal']:.2%}"]]
    lines = table(["model", "unit", "words", "settings", "vpltool CPU-s", "reference CPU-s", "ratio (median of pairs)",
                   f"goal ≤ {d['goal']}", "peak RSS in a photo, MiB (vpltool / reference)", "outputs"], rows,
                  "lllrrrrlll")
    floor = d.get("floor")
    if floor:  # issue 79's rule: the least ratio the reference's arithmetic allows on this CPU
        gflop = sorted({round(f["gflop"]) for f in floor["reference_flops"]})
        lines += ["", f"The floor: the reference's products, convolutions and attention, "
                      f"{' / '.join(num(g, 5) for g in gflop)} GFLOP a photo, at the fastest GEMM rate measured here "
                      f"({num(floor['peak_gflops_per_s'])} GFLOP/s), all else free: "
                      f"{', '.join(num(v) for v in floor['floor_s_per_photo'].values())} s a photo, "
                      f"{json.dumps(floor['floor_over_reference'])} of the reference's CPU-seconds per pair "
                      f"(median {num(floor['floor_over_reference_median'])}) beside the ratio "
                      f"{num(d['ratio_median'])}."]
    reused = d.get("reference_from")
    if reused:  # --reference-from: vpltool's side alone ran, the reference's units are an earlier run's
        lines += ["", f"The reference's units and outputs are those of an earlier run of the same settings "
                      f"(vpltool {reused.get('vpltool_commit')}, its load {json.dumps(reused.get('load_average_1min'))}"
                      "): only vpltool's side ran here (`bench/bench_activesam.py --reference-from`)."]
    return lines


def sam3_classes_section(d: dict) -> list[str]:
    """bench_sam3_classes.py: one photo's CPU-seconds against the number of classes, and seg.embed's share."""
    rows = []
    for method in ("sam3", "activesam"):
        if method not in d:
            continue
        door = d[method]["python_door"]
        for n, r in d[method]["side_by_side"].items():
            share = door.get(n, {}).get("share")
            if "error" in r:
                rows.append([method, n, "", "", "", f"reference failed: {r['error']}", num(share)])
                continue
            cpu = r["cpu_seconds_median"]
            rows.append([method, n, num(cpu["vpltool"]), num(cpu["reference"]), num(r["ratio_median"]),
                         f"scores Δ {num(r['outputs']['scores_max_abs_diff'], 2)}, labels "
                         f"{r['outputs']['labels_equal']:.2%}", num(share)])
    return [sentence(d["what"]) + f" Model: {d['model']}.", "", *table(
        ["method", "classes", "vpltool CPU-s", "reference CPU-s", "ratio", "outputs",
         "seg(emb, names) / seg(photo, names)"], rows, "lrrrrlr")]


def _by_gap(rows: list[dict]) -> str:
    """bench_sam3_footprint.py's ``by_gap``: the % of labels bf16 keeps as fp32's top-2 gap grows (a sentence)."""
    rows = [r for r in rows if r.get("argmax_equal_pct") is not None]
    if not rows:
        return ""
    return (" As fp32's top-2 gap grows past " + ", ".join(num(r["gap_over"], 2) for r in rows) + " ("
            + ", ".join(f"{r['pixels_pct']:.3g}" for r in rows) + " % of pixels) the class is the same at "
            + ", ".join(f"{r['argmax_equal_pct']:.1f}" for r in rows) + " %: a label bf16 changes is a near-tie.")


def sam3_footprint_section(d: dict) -> list[str]:
    """bench_sam3_footprint.py: fp32 against bf16 weights (its rounds, where run); with --methods, each method's
    bf16 distance from fp32 (scores, % of labels equal) and each precision's CPU-seconds and peak RSS."""
    lines = [sentence(d["what"]) + f" Model: {d['model']}." + (f" CPU: {d['cpu_name']}." if d.get("cpu_name") else "")]
    if d.get("median"):
        m = d["median"]
        loads = all("load_peak_rss_mib" in m[p] for p in m)  # recorded since the load reads straight into bf16
        rows = [[p, num(m[p]["weights_mib"], 4), *([num(m[p]["load_peak_rss_mib"], 4)] if loads else []),
                 num(m[p]["peak_rss_mib"], 4), *([num(m[p]["load_cpu_s"])] if loads else []), num(m[p]["cpu_s"])]
                for p in m]
        heads = ["precision", "weights MiB", *(["peak RSS MiB once loaded"] if loads else []),
                 "peak RSS MiB after the photo", *(["CPU-s (load)"] if loads else []), "CPU-s (sam3_scores)"]
        lines += ["", *table(heads, rows, "l" + "r" * (len(heads) - 1))]
    if d.get("bf16_against_fp32"):
        p = d["bf16_against_fp32"]
        lines += ["", f"bf16 against fp32 on the {p['pixels']:,} pixels of {p.get('photos', 1)} photo(s): scores "
                      f"{num(p['scores_max_abs_diff'], 2)} apart at most ({num(p['scores_mean_abs_diff'], 2)} on "
                      f"average; fp32's highest {num(p['fp32_score_max'], 2)}), the highest-scoring class the same at "
                      f"{p['argmax_equal_pct']:.1f}% of pixels, where fp32's two highest classes are "
                      f"{num(p['fp32_top2_gap_median'], 2)} apart (median)."
                      + (f" Where that gap exceeds the largest difference ({p['confident']['pixels_pct']:.1f}% of "
                         f"pixels) the class is the same at {num(p['confident']['argmax_equal_pct'])}%."
                         if p.get("confident", {}).get("argmax_equal_pct") is not None else "")
                      + _by_gap(p.get("by_gap", []))]
    if d.get("layouts"):
        m, twin = d["layouts"]["median"], d["layouts"].get("hf_against_meta_fp32")
        rows = [[layout, num(m[layout]["load_peak_rss_mib"], 4), num(m[layout]["peak_rss_mib"], 4),
                 num(m[layout]["load_cpu_s"]), num(m[layout]["cpu_s"])] for layout in m]
        lines += ["", *table(["layout (fp32)", "peak RSS MiB once loaded", "peak RSS MiB after the photos",
                              "CPU-s (load)", "CPU-s (sam3_scores)"], rows, "lrrrr")]
        if twin:
            lines += ["", f"Hugging Face's layout against Meta's (the same weights, fp32): scores "
                          f"{num(twin['scores_max_abs_diff'], 2)} apart at most, the highest-scoring class the same "
                          f"at {twin['argmax_equal_pct']:.1f}% of {twin['pixels']:,} pixels."]
    if d.get("methods"):
        rows = [[method, num(p["scores_max_abs_diff"], 2), f"{p['labels_equal_pct']:.3f}%", num(p["fp32"]["cpu_s"]),
                 num(p["bf16"]["cpu_s"]), num(p["fp32"]["peak_rss_mib"], 4), num(p["bf16"]["peak_rss_mib"], 4)]
                for method, p in d["methods"].items()]
        lines += ["", *table(["method (bf16 against fp32)", "scores max abs diff", "labels equal", "fp32 CPU-s",
                              "bf16 CPU-s", "fp32 peak RSS MiB", "bf16 peak RSS MiB"], rows, "lrrrrrr")]
    return lines



def outputs_line(out: dict) -> str:
    """A bench's compared outputs in a few words: the largest difference it recorded and the labels' agreement."""
    parts = []
    for key, value in out.items():
        if key.endswith("abs_diff") and isinstance(value, (int, float)):
            parts.append(f"{key.removesuffix('_max_abs_diff').removesuffix('_abs_diff')} Δ {num(value, 2)}")
        elif key == "labels_equal":
            shares = value if isinstance(value, list) else [value]
            parts.append(f"labels {min(shares):.2%}")
    return ", ".join(parts) or "losses not compared (other views)"


def units_section(d: dict) -> list[str]:
    """units_vs_reference.py: every unit of one CPU with its ratio, floor, goal, outputs and both sides' memory."""
    rows = []
    for name, u in d["units"].items():
        mem = u.get("rss_peak_mib") or {}
        floor = num(u["floor"]) + (f" ({num(u['floor_as_run'])} as run)" if u.get("floor_as_run") else "")
        rows.append([name, num(u["ratio"]), floor, num(u.get("floor_with_torch_attention")), num(u["goal"]),
                     "met" if u["goal_met"] else "**not met**", outputs_line(u["outputs"]),
                     f"{num(mem.get('vpltool'))} / {num(mem.get('reference'))}", f"`{u['file']}`"])
    kernel = ("The floor with torch's attention puts a unit's fused attention at the fastest rate torch's own kernel "
              "(the one both sides call) reached on the unit's shapes, the rest of its arithmetic at the fastest GEMM "
              "rate: the least ratio this torch allows; it does not set the goal.")
    return [sentence(d["what"]), "", kernel, "",
            *table(["unit", "ratio", "floor", "floor with torch's attention", "goal", "", "outputs",
                    "peak MiB (vpltool / reference)", "from"], rows, "lrrrrllll")]


def mode_cost_section(d: dict) -> list[str]:
    """bench_mode_cost.py: reproducible mode's products and pipeline beside fast mode's (fp32 both)."""
    rows = [["x".join(map(str, p["shape"])), num(p["fast_gflop_per_s"]), num(p["reproducible_gflop_per_s"]),
             num(p["reproducible_over_fast"])] for p in d["products"]]
    pipe = d["pipeline"]
    tables = pipe["tables"]
    return [*table(["fp32 product (rows x inner x outputs)", "fast GFLOP/s", "reproducible GFLOP/s",
                    "reproducible / fast time"], rows, "lrrr"), "",
            f"{sentence(pipe['what'])} CPU-seconds, fast: {pipe['cpu_s']['fast']}; reproducible: "
            f"{pipe['cpu_s']['reproducible']} (median ratio {num(pipe['reproducible_over_fast'])}). The two tables: "
            f"{tables['figures']} figures, at most {num(tables['max_abs_diff_miou'])} apart in mIoU, "
            f"{len(tables['cells_differ_at_0_1'])} differing at the printed 0.1."]

SECTIONS = {"demo": ("make demo: time per stage, and with its setup where measured", demo_section),
            "cam": ("cam: the original CLIP-ES vs vpltool, whole commands", cam_section),
            "learn-prototypes": ("learn-prototypes: 3000 iterations", learn_prototypes_section),
            "crf": ("crf: worker scaling", crf_section),
            "densecrf": ("crf backends: torch against pydensecrf", densecrf_section),
            "decoder": ("train-decoder: with and without the feature cache", decoder_section),
            "decoder-paper": ("train-decoder: the paper's recipe", decoder_paper_section),
            "gpu-pipeline": ("A VOC-scale run, stage by stage (bench_gpu_pipeline.py)", gpu_pipeline_section),
            "stage-costs": ("Disk and compute per stage (VOC train_aug, COCO train)", stage_costs_tables),
            "memory": ("Host memory against the number of images", memory_section),
            "report": ("report: the HTML report's size and time", report_section),
            "host": ("The host's work per image (bench_host.py)", host_section),
            "decoder-host": ("train-decoder: the host's work per iteration (bench_decoder.py --mode host)",
                             decoder_host_section),
            "learn-prototypes-launches": ("learn-prototypes: ops per iteration over VOC's pixels "
                                          "(bench_learn_prototypes.py --launches)", None),
            "dense-parity": ("Dense CLIP methods against their public code (dense_parity.py)", dense_parity_section),
            "vs-reference": ("vpltool against the references' own code, CPU-seconds side by side "
                             "(bench_vs_reference.py)", vs_reference_section),
            "sam3-vs-reference": ("SAM 3 (--dense sam3) against ActiveSAM's own code (bench_activesam.py)",
                                  sam3_side_by_side_section),
            "activesam-vs-reference": ("ActiveSAM (--dense activesam) against its own code (bench_activesam.py)",
                                       sam3_side_by_side_section),
            "sam3-classes": ("SAM 3 and ActiveSAM: the cost of the class count (bench_sam3_classes.py)",
                             sam3_classes_section),
            "sam3-footprint": ("SAM 3 in bf16 on the CPU: footprint and distance from fp32 (bench_sam3_footprint.py)",
                               sam3_footprint_section),
            "units-vs-reference": ("Every unit against its reference's own code, one CPU (units_vs_reference.py)",
                                   units_section),
            "mode-cost": ("What reproducible mode costs: its products and the demo pipeline beside fast mode's "
                          "(bench_mode_cost.py)", mode_cost_section)}


# results whose figures hold for the CPU they ran on alone (the two CPU libraries' speeds differ by CPU): their title
# names it, so that each machine has its own table
PER_CPU = ("vs-reference", "radseg-vs-reference", "textregion-vs-reference", "cpu_linear", "mode-cost",
           "units-vs-reference")


def cpu_label(data: dict) -> str:
    return cpu_of(data)


def cpu_of(data: dict) -> str:
    """The CPU a result came from, with whether it has AMX: its generation where the record holds its identity
    (``benchlib.cpu_name``), else the name recorded, marked "generation not recorded" (a record of "AMD EPYC"
    alone covers several generations)."""
    m = data.get("machine")
    if isinstance(m, dict) and isinstance(m.get("cpu_identity"), dict):
        identity = m["cpu_identity"]
        amx = identity.get("isa_flags", {}).get("amx_tile")
        return f"{cpu_name(identity)}{', AMX' if amx else ', no AMX'}"
    if isinstance(m, dict) and m.get("cpu"):
        amx = {True: "AMX; ", False: "no AMX; "}.get(m.get("amx"), "")
        return f"{m['cpu']} ({amx}generation not recorded)"
    return f"{str(m).split(',')[0]} (generation not recorded)" if m else "CPU not recorded"


def gemm_of(data: dict) -> dict:
    """Each library's fp32 GEMM rate (GFLOP/s) that a result measured on its CPU: the machine's identity's, else an
    older result's own fields (RADSeg's ``linear``; the roofline's fastest shape; cpu_linear's fastest shape)."""
    m = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    if (m.get("cpu_identity") or {}).get("gemm_gflops"):
        return m["cpu_identity"]["gemm_gflops"]
    if isinstance(data.get("linear"), dict):
        return data["linear"]
    gemms = ((data.get("methods") or {}).get("talk2dino") or {}).get("roofline", {}).get("gemms")
    if isinstance(gemms, dict):
        rates = {"mkl_gflops": "gflops_per_s_torch", "onednn_gflops": "gflops_per_s_onednn"}
        return {name: max(g[key] for g in gemms.values() if key in g) for name, key in rates.items()
                if any(key in g for g in gemms.values())}
    if data.get("benchmark") == "cpu_linear" and isinstance(data.get("shapes"), list):
        return {f"{side}_gflops": max(2 * r["rows"] * r["in"] * r["out"] / r["ms_median"][side] / 1e6
                                      for r in data["shapes"]) for side in ("mkl", "onednn")}
    return {}


def cpus_section(results: list[tuple[Path, dict]]) -> list[str]:
    """One table per CPU that a figure on this page came from: its identity where recorded, and its result files.
    A ratio or rate holds for the CPU of its table, not for a vendor's CPUs in general."""
    by_cpu: dict[str, list[tuple[Path, dict]]] = {}
    for path, data in results:
        by_cpu.setdefault(cpu_of(data), []).append((path, data))
    lines = ["## The CPUs these figures came from", "",
             "One table per CPU. A figure holds for the CPU of its table: the same script gives other ratios on "
             "another generation (oneDNN's and MKL's fp32 products, for one, rank differently from one CPU to "
             "the next), so no figure here is a claim about a vendor's CPUs in general.", ""]
    for name, items in sorted(by_cpu.items()):
        lines += [f"### CPU: {name}", ""]
        identity = next((d["machine"]["cpu_identity"] for _, d in items if isinstance(d.get("machine"), dict)
                         and isinstance(d["machine"].get("cpu_identity"), dict)), None)
        if identity:
            flags = ", ".join(f for f in ISA_FLAGS if identity.get("isa_flags", {}).get(f)) or "none of them"
            blas = identity.get("blas") or {}
            lines += [f"Vendor {identity.get('vendor')}, family {identity.get('family')}, model "
                      f"{identity.get('model')}, stepping {identity.get('stepping')}, microcode "
                      f"{identity.get('microcode')}; {identity.get('cores')} cores; of {', '.join(ISA_FLAGS)}: "
                      f"{flags}; torch {identity.get('torch')}, BLAS {blas.get('blas_info')} (MKL "
                      f"{blas.get('mkl')}, oneDNN {blas.get('onednn')}).", ""]
        elif name == "CPU not recorded":
            lines += ["These results record no machine (parity runs: their bars are of exactness, not speed).", ""]
        else:
            lines += [f"The records name this CPU only as \"{name.split(' (')[0]}\": its family and model were not "
                      "recorded, so its generation is unknown and its figures are that machine's alone.", ""]
        rows = []
        for path, data in items:
            m = data.get("machine") if isinstance(data.get("machine"), dict) else {}
            gemm = gemm_of(data)
            rows.append([f"`{path.name}`", data.get("benchmark", path.stem), m.get("device", "—"),
                         num(m.get("load_average_1min")), num(gemm.get("mkl_gflops")),
                         num(gemm.get("onednn_gflops"))])
        lines += [*table(["result", "benchmark", "device", "load", "MKL fp32 GFLOP/s", "oneDNN fp32 GFLOP/s"],
                         rows, "llllrr"), ""]
    return lines


def section(path: Path, data: dict) -> list[str]:
    """One benchmark's section: header, headline table (or the generic list), peak memory, all fields."""
    name = data.get("benchmark", path.stem)
    title, render = SECTIONS.get(name, (name, None))
    if name in PER_CPU:
        title = f"{title} · {cpu_label(data)}"
    lines = header(data, path, title)
    try:
        body = render(data) if render else None
    except KeyError:  # a result an older version of the script wrote: shown as it is, not as today's table
        body = None
    if body is None:  # no headline view (e.g. crf-quality, the lr study): every field, uncollapsed
        rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in data.items() if k != "machine"]
        return lines + [*table(["key", "value"], rows, "ll"), "", *peak_memory(data), ""]
    lines += [*body, ""]
    details = [] if name == "stage-costs" else all_fields(data)  # its tables already show every measured figure
    return lines + [*peak_memory(data), "", *details, ""]


def sort_key(item: tuple[Path, dict]) -> tuple[int, str]:
    name = item[1].get("benchmark", item[0].stem)
    return (ORDER.index(name) if name in ORDER else len(ORDER), item[0].name)


def update_reproduce(doc: Path, stage_costs: dict | None) -> bool:
    """Replace the block between the stage-costs markers of ``doc``; False when there is nothing to do."""
    if stage_costs is None or not doc.is_file():
        return False
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        return False
    block = "\n".join([BEGIN, "<!-- generated by docgen/make_table.py from bench/results/stage_costs.json;"
                       " do not edit -->", "", *stage_costs_tables(stage_costs), "", END])
    doc.write_text(text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):])
    return True


def load(path: Path) -> tuple[Path, dict] | None:
    """A result file, or None (with a warning) when it is not one JSON object, e.g. left by a crashed script."""
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        print(f"warning: {path}: not valid JSON ({e}); skipped", file=sys.stderr)
        return None
    return (path, data) if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    ap.add_argument("--reproduce", type=Path, default=ROOT / "docs" / "reproduce.md",
                    help="doc whose stage-costs block is regenerated (skipped when it has no markers)")
    ap.add_argument("--parity", type=Path, default=ROOT / "parity" / "results",
                    help="the parity runners' results, whose summaries the page shows beside the speed figures")
    args = ap.parse_args(argv)
    files = [*args.results.glob("*.json"), *(args.parity.glob("*.json") if args.parity.is_dir() else [])]
    results = sorted(filter(None, map(load, files)), key=sort_key)
    lines = ["# Performance", "", "Generated by `make bench` (`docgen/make_table.py`) from the JSON each benchmark "
             "script printed into `bench/results/`; each section names the machine it ran on. Do not edit: "
             "re-run `make bench` (or one script, then `make_table.py`) to refresh. On a GPU machine lent for a "
             "session, `bench/gpu_session.sh` runs the GPU's share (its header says how); its results are "
             "kept here with the GPU in their names (`*_h100.json`).", ""]
    lines += cpus_section(results)
    for path, data in results:
        lines += section(path, data)
    args.out.write_text("\n".join(lines).rstrip() + "\n")
    costs = next((d for _, d in results if d.get("benchmark") == "stage-costs"), None)
    also = f" and {args.reproduce}" if update_reproduce(args.reproduce, costs) else ""
    print(f"wrote {args.out}{also} from {len(results)} result files")


if __name__ == "__main__":
    main()

"""The benchmark scripts run (``--quick``), print one JSON object with the machine and per-stage peak memory, and
make_table.py renders their results; ``make bench`` runs every script.

The scripts run in two processes started together (bench/run_scripts_in_one.py, one torch thread each), half of
the scripts one after the other in each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MAKE_TABLE = ROOT / "docgen" / "make_table.py"

# script (and its arguments besides --quick) -> (benchmark name, keys its result must have besides the common ones)
SCRIPTS = {
    "bench_cam.py": ("cam", {"clip_es_source", "seconds_median", "first_pass_speedup_vs_clip_es",
                             "second_pass_over_clip_es", "one_image_over_clip_es", "per_image_over_bare_forward",
                             "startup_s", "bars", "one_image_startup"}),
    "bench_learn_prototypes.py": ("learn-prototypes", {"seconds_for_3000_iters", "s_per_iter", "gflop_per_iter",
                                                       "bound_gflop_per_s", "fraction_of_bound_median"}),
    "bench_crf.py": ("crf", {"single", "parallel", "scaling", "identical_pngs"}),
    "bench_densecrf.py": ("densecrf", {"agreement", "worst_image_equal", "demo_miou", "throughput", "iteration_cost"}),
    "bench_decoder.py": ("decoder", {"on_the_fly_iters_per_s", "cached_iters_per_s", "speedup"}),
    "bench_decoder.py --mode host": ("decoder-host", {"ops_per_iter", "ops_frozen_forward", "main_ms_per_iter",
                                                      "upsample_fwd_bwd_ms", "upsample_products_vs_interpolate"}),
    "stage_costs.py": ("stage-costs", {"measured", "voc", "coco", "assumptions"}),
    "bench_memory.py": ("memory", {"images", "stages"}),
    "bench_report.py": ("report", {"synthetic", "workers"}),
    "bench_gpu_pipeline.py": ("gpu-pipeline", {"seconds", "extract_img_per_s", "cam_text_img_per_s",
                                               "predict_img_per_s", "learn_prototypes_s", "total_s", "bars",
                                               "total_minutes", "goal_minutes", "cam_text_img_per_s_steady",
                                               "segment_img_per_s"}),
    "bench_host.py": ("host", {"stages", "goal_cpu_ms_extract_cam", "goal_met", "labels_per_image_mean"}),
    "profile_stage.py": ("profile", {"stages", "images", "model"}),
    "bench_train_pgseg.py": ("train-pgseg", {"configs", "loader", "ratio", "bar_met", "threads", "precision"}),
    "bench_flops.py": ("flops", {"extract_gflop_per_image", "cam_gflop_per_image_voc", "cam_over_extract_voc",
                                 "batch_adds_up", "bar_met"}),
}
COMMON = {"benchmark", "quick", "machine", "peak_memory"}
# scripts `make bench` runs on the CPU whatever BENCH_DEVICE says (the reference's fp32 loop has no GPU path here)
CPU_ONLY = {"bench_train_pgseg.py"}
MACHINE = {"cpu", "cores", "torch", "device", "gpu"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def _stem(script: str) -> str:
    """The result file's name of a SCRIPTS entry: the script's stem, then its arguments (``bench_decoder_host``)."""
    name, *args = script.split()
    return "_".join([Path(name).stem, *(a.lstrip("-") for a in args if a != "--mode")])


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    """Every script's ``--quick`` stdout in ``<tmp>/<script stem>.json``. The scripts run in two processes started
    together (bench/run_scripts_in_one.py, half of them each, one after the other): a process per script paid its
    3-5 CPU-s of start-up fourteen times, which cost more than most quick runs themselves."""
    out, runs = tmp_path_factory.mktemp("bench_results"), tmp_path_factory.mktemp("bench_runs")
    names = sorted(SCRIPTS)
    procs = {}
    for i, half in enumerate((names[0::2], names[1::2])):
        listed = runs / f"scripts{i}.json"
        listed.write_text(json.dumps([[_stem(name), str(BENCH / name.split()[0]), *name.split()[1:], "--quick"]
                                      for name in half]))
        procs[tuple(half)] = subprocess.Popen(
            [sys.executable, str(BENCH / "run_scripts_in_one.py"), str(runs), str(listed)], cwd=ROOT, env=_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for half, proc in procs.items():
        _, stderr = pace.communicate(proc, 600)
        assert proc.returncode == 0, f"run_scripts_in_one.py failed:\n{stderr[-3000:]}"
        for name in half:
            status = (runs / f"{_stem(name)}.status").read_text()
            assert status == "0", f"{name} --quick failed:\n{status[-3000:]}\n{stderr[-2000:]}"
            (runs / f"{_stem(name)}.stdout").rename(out / f"{_stem(name)}.json")
    return out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_quick_run_prints_one_json_object_with_machine_and_peak_memory(quick_results, script):
    text = (quick_results / f"{_stem(script)}.json").read_text()
    assert len(text.strip().splitlines()) == 1, "a benchmark prints exactly one JSON object on stdout"
    data = json.loads(text)
    name, keys = SCRIPTS[script]
    assert data["benchmark"] == name and data["quick"] is True
    assert COMMON | keys <= data.keys(), f"missing {sorted(COMMON | keys - data.keys())}"
    assert MACHINE <= data["machine"].keys() and data["machine"]["device"] == "cpu"
    assert data["peak_memory"], "at least one measured stage"
    for peak in data["peak_memory"]:
        assert peak["stage"] and peak["rss_mib"] > 0 and peak["cuda_mib"] is None


def test_bench_cam_splits_the_one_image_command_into_its_phases(quick_results):
    """The one-image bar is start-up: the phases say which part of it to work on, and they add up to the whole."""
    startup = json.loads((quick_results / "bench_cam.json").read_text())["one_image_startup"]
    phases = startup["phases_s"]
    assert list(phases) == ["python_start", "import_torch", "import_open_clip", "import_vpltool", "device_init",
                            "load_backbone", "first_call", "second_call"]
    assert all(seconds >= 0 for seconds in phases.values()) and phases["import_torch"] > 0
    assert startup["one_image_s"] == pytest.approx(sum(phases.values()) - phases["second_call"], abs=0.01)
    assert startup["once_in_first_call_s"] == pytest.approx(phases["first_call"] - phases["second_call"], abs=0.002)


def test_make_table_renders_headline_tables_and_the_reproduce_block(quick_results, tmp_path):
    doc = tmp_path / "reproduce.md"
    doc.write_text("# Reproduce\n\nbefore\n\n<!-- stage-costs:begin -->\nSTALE-BLOCK\n<!-- stage-costs:end -->\n"
                   "\nafter\n")
    out = tmp_path / "performance.md"
    pace.run([sys.executable, str(MAKE_TABLE), "--parity", "/nonexistent", "--results", str(quick_results),
              "--out", str(out), "--reproduce", str(doc)], 60, cwd=ROOT, env=_env(), check=True, capture_output=True)
    page = out.read_text()
    for heading in ("## cam:", "## learn-prototypes:", "## crf:", "## train-decoder:", "## Disk and compute"):
        assert heading in page
    assert page.index("## cam:") < page.index("## learn-prototypes:") < page.index("## crf:")  # pipeline order
    for headline in ("| seconds (median) | speed-up vs CLIP-ES |", "3000 iterations |", "| workers | wall s |",
                     "| iterations/s | speed-up |", "GPU time ESTIMATE", "growth MiB / 100 images |",
                     "| ... two matrix products (train-decoder's) |"):
        assert headline in page
    assert page.count("Peak memory (MiB):") == len(SCRIPTS) and page.count("machine: ") >= len(SCRIPTS)
    assert "smoke-test result" in page  # quick results say they are not measurements
    repro = doc.read_text()
    assert "STALE-BLOCK" not in repro and "before" in repro and "after" in repro
    assert "| stage | items | disk |" in repro and repro.count("<!-- stage-costs:begin -->") == 1


def test_make_table_reads_an_older_result_without_peak_memory_list(tmp_path):
    (tmp_path / "results").mkdir()
    old = {"benchmark": "cam", "machine": "x86_64, 2 cores, torch 2.14.1", "images": 20,
           "clip_es_formulation_images_per_s": 0.655, "vpltool_first_pass_images_per_s": 0.551,
           "vpltool_second_pass_images_per_s": 3.159, "first_pass_speedup": 0.84,
           "second_pass_speedup_vs_clip_es": 4.82, "peak_rss_mb": 2106.7}
    (tmp_path / "results" / "cam.json").write_text(json.dumps(old))
    out = tmp_path / "performance.md"
    pace.run([sys.executable, str(MAKE_TABLE), "--parity", "/nonexistent", "--results", str(tmp_path / "results"),
              "--out", str(out), "--reproduce", str(tmp_path / "none.md")], 60, cwd=ROOT, env=_env(), check=True,
             capture_output=True)
    page = out.read_text()
    assert "| first_pass_speedup | 0.84 |" in page  # an older layout is shown field by field, not as today's table
    assert "machine: x86_64, 2 cores" in page and "2107 MiB" in page


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_bench_runs_every_benchmark_script():
    dry = pace.run(["make", "-n", "bench", "BENCH_DEVICE=cuda"], 60, cwd=ROOT, env=_env(), capture_output=True,
                   text=True, check=True).stdout
    for name in SCRIPTS:
        script, *args = name.split()
        device = "cpu" if script in CPU_ONLY else "cuda"
        assert " ".join([f"bench/{script} --device {device}", *args]) in dry
    assert "docgen/make_table.py" in dry


def test_gpu_session_script_names_scripts_and_options_that_exist():
    """bench/gpu_session.sh runs only on a lent GPU machine, so a typo would cost a GPU session: every script
    it runs exists and takes each option it is given; without a part it prints its usage and exits 2."""
    import re

    script = BENCH / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    usage = pace.run(["bash", str(script)], 30, capture_output=True, text=True)
    assert usage.returncode == 2 and "gpu_session.sh a" in usage.stderr
    calls = re.findall(r"python3 bench/(\w+\.py)((?:[^\n]|\\\n)*)", script.read_text())
    assert {name for name, _ in calls} >= {"bench_decoder.py", "bench_host.py", "bench_gpu_pipeline.py"}
    for name, args in calls:
        source = (BENCH / name).read_text()
        for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", args):
            assert f'"{option}"' in source or option == "--device", f"{name} takes no {option}"


def test_profile_counts_the_device_busy_once_where_kernels_overlap():
    """profile_stage.py's device-busy time: the union of the kernels' intervals (two streams overlapping count
    once, a gap not at all), and each stage's summary in the quick run."""
    sys.path.insert(0, str(BENCH))
    import profile_stage

    assert profile_stage._union_ms([(0, 1000), (500, 1500), (3000, 3500), (3100, 3200)]) == pytest.approx(2.0)
    assert profile_stage._union_ms([]) == 0


def test_profile_quick_run_summarises_each_stage(quick_results):
    data = json.loads((quick_results / "profile_stage.json").read_text())
    for stage in ("extract", "cam"):
        summary = data["stages"][stage]
        assert summary["img_per_s"] > 0 and summary["top_cpu_ops"] and "host_waits" in summary
        assert "device_busy_share" not in summary  # the CPU: no device timeline


def test_peak_memory_says_not_recorded_only_where_no_figure_is_recorded():
    """A result whose units hold their peaks (``rss_peak_mib`` at any depth) shows them in its own table, so the
    page must not add "not recorded" under it; one with no memory figure at all says so."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_table_probe", MAKE_TABLE)
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    units = {"benchmark": "units-vs-reference", "units": {"radseg": {"ratio": 0.8, "rss_peak_mib": {"vpltool": 1}}}}
    assert mt.peak_memory(units) == []
    assert mt.peak_memory({"benchmark": "x", "ratios": [0.8, 0.9]}) == ["Peak memory: not recorded."]
    assert mt.peak_memory({"benchmark": "x", "rows": [{"rss_mib": None}]}) == ["Peak memory: not recorded."]

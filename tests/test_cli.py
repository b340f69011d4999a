"""The command line: help, version, one-line errors with exit code 2, and the stage chain end to end."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import torch
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.demo.make_world import write_dataset
from vpltool.runtime.numerics import run_numerics

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds

TINY = ["--model", "vpl-test-vit", "--pretrained", "none"]


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_help_lists_the_stages():
    r = _invoke("--help")
    assert r.exit_code == 0
    for command in ("extract", "text-prototypes", "cam", "eval"):
        assert command in r.output


def test_version():
    from vpltool import __version__

    r = _invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"vpltool {__version__}"


def test_python_dash_m_runs_the_cli():
    r = pace.run([sys.executable, "-m", "vpltool", "--help"], 120, capture_output=True, text=True)
    assert r.returncode == 0 and "text-prototypes" in r.stdout


_REFUSED = ("import sys\nfrom vpltool.cli import main\nsys.argv = ['vpltool', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch', 'torch' in sys.modules)\n")


def test_a_refused_cam_or_segment_answers_before_torch_loads(world, tmp_path):
    """A source or a prototypes file that is not there, or a --dense method no table or plugin has, is one line and
    exit 2 before torch is imported: what a typo costs is the CLI's start-up, not torch's (bench/bench_startup.py
    times it)."""
    missing = tmp_path / "no-such"
    protos = tmp_path / "p.safetensors"
    for args, named in ((["cam", missing, "-p", protos, "-o", tmp_path / "c1"], missing),
                        (["cam", world, "-p", protos, "-o", tmp_path / "c2"], protos),
                        (["segment", tmp_path / "no-photo.jpg", "--classes", "cat,dog", "-o", tmp_path / "s"],
                         tmp_path / "no-photo.jpg"),
                        (["segment", world, "--classes", "cat,dog", "--dense", "no-such", "-o", tmp_path / "s"],
                         "--dense 'no-such': choose none, maskclip")):
        r = pace.run([sys.executable, "-c", _REFUSED, *map(str, args)], 120, capture_output=True, text=True)
        assert r.stdout.strip() == "exit 2 torch False", (args, r.stdout, r.stderr)
        assert _error_lines(r.stderr) == [r.stderr.strip()] and str(named) in r.stderr, r.stderr
    assert not any(tmp_path.glob("c?")) and not (tmp_path / "s").exists()


def test_corrupt_image_is_one_error_line_naming_the_file(tmp_path):
    root = write_dataset(tmp_path / "data", n_train=2, n_val=1, seed=0)
    bad = root / "images" / "train_000001.png"
    bad.write_bytes(b"not a png")
    r = _invoke("extract", root, "--split", "train", "-o", tmp_path / "out", *TINY, "--device", "cpu")
    assert r.exit_code == 2, r.output
    errors = _error_lines(r.output)
    assert len(errors) == 1 and str(bad) in errors[0]
    assert "Traceback" not in r.output


def test_cuda_request_without_cuda(world, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    r = _invoke("extract", world, "--split", "train", "-o", out, *TINY, "--device", "cuda")
    assert r.exit_code == 2 and "CUDA is not available" in r.output
    assert len(_error_lines(r.output)) == 1 and not out.exists()  # refused before anything is written


def test_bad_shard_spec(world, tmp_path):
    r = _invoke("extract", world, "-o", tmp_path / "out", *TINY, "--shard", "2/2")
    assert r.exit_code == 2 and "--shard" in _error_lines(r.output)[0]


def test_text_prototypes_wants_an_extract_folder(features_dir, world, tmp_path):
    feature_file = next(features_dir.glob("*.safetensors"))
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "p.safetensors"
    for wrong, message in ((feature_file, "folder not found"), (empty, "did not finish"),
                           (world, "holds `make-world` output")):
        r = _invoke("text-prototypes", wrong, "-o", out)
        assert r.exit_code == 2, r.output
        assert message in _error_lines(r.output)[0] and str(wrong) in r.output
    assert _invoke("text-prototypes", "-o", out).exit_code == 2  # neither a folder nor --classes
    assert not out.exists()


def test_text_prototypes_from_a_class_list(tmp_path):
    out = tmp_path / "p.safetensors"
    r = _invoke("text-prototypes", "--classes", "cat, dog", *TINY, "--background", "sky", "--templates", "{}",
                "-o", out)
    assert r.exit_code == 0, r.output
    p = io.read_prototypes(out, classes=["background", "cat", "dog"])
    assert p.row_names == ["cat", "dog", "sky"]


def test_eval_of_ground_truth_is_perfect(world, tmp_path):
    masks = tmp_path / "masks"
    shutil.copytree(world / "masks", masks)
    report = tmp_path / "metrics.json"
    r = _invoke("eval", masks, "--data", world, "--split", "train", "--json", report)
    assert r.exit_code == 0, r.output
    result = json.loads(report.read_text())
    assert result["miou"] == pytest.approx(1.0) and result["n_images"] == 6 and result["kind"] == "mask"


def test_eval_without_a_dataset_is_one_line(tmp_path):
    r = _invoke("eval", tmp_path)
    assert r.exit_code == 2 and "--data" in _error_lines(r.output)[0]


def test_stage_chain_end_to_end(world, tmp_path):
    feats, protos, cams = tmp_path / "features", tmp_path / "text.safetensors", tmp_path / "cams"
    steps = [
        ("extract", world, "--split", "train", "-o", feats, *TINY, "--device", "cpu", "--workers", "1"),
        ("text-prototypes", feats, "-o", protos, "--templates", "a photo of a {}.", "--background",
         "grass,sky,wall,water", "--device", "cpu"),
        ("cam", feats, "-p", protos, "-o", cams, "--device", "cpu"),
        ("eval", cams, "--json", tmp_path / "metrics.json"),
    ]
    for step in steps:
        r = _invoke(*step)
        assert r.exit_code == 0, (step[0], r.output)
    assert io.read_stage_record(feats, "extract")["count"] == 6
    assert io.read_stage_record(cams, "cam")["count"] == 6
    assert sorted(p.stem for p in cams.glob("*.safetensors")) == sorted(p.stem for p in feats.glob("*.safetensors"))
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["kind"] == "cam" and result["n_images"] == 6 and 0.0 <= result["miou"] <= 1.0
    # a file of the wrong kind where prototypes belong is refused in one line
    r = _invoke("cam", feats, "-p", next(feats.glob("*.safetensors")), "-o", tmp_path / "cams2", "--device", "cpu")
    assert r.exit_code == 2 and "expected a 'prototypes' file" in _error_lines(r.output)[0]
    assert not (tmp_path / "cams2").exists()  # refused before the output folder is made


def test_summaries_say_what_each_number_is(world, features_dir, text_protos, tmp_path):
    """"loss 0.3121 → path" and "gap frobenius 0.000, region 1.563 → ..." named no quantity; each number is now
    named, with before → after where there is a before."""
    cams, vision, pseudo = tmp_path / "cams", tmp_path / "vision.safetensors", tmp_path / "pseudo"
    assert _invoke("cam", features_dir, "-p", text_protos, "-o", cams, "--device", "cpu").exit_code == 0
    r = _invoke("learn-prototypes", features_dir, "-c", cams, "-t", text_protos, "-o", vision, "--iters", "3",
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert re.search(r"learn-prototypes: \d+ pixels, 3 iterations in [\d.]+s; mean cross-entropy [\d.]+ → [\d.]+ "
                     r"nats; prototype-to-region distance [\d.]+ → [\d.]+; distance to the text prototypes "
                     r"\|\|Z - W\|\|_F [\d.]+ → ", r.output), r.output
    from vpltool.data import open_dataset

    dataset = open_dataset(world, "train")
    pseudo.mkdir()
    for item in dataset.items:  # ground truth as pseudo masks
        shutil.copy(item.gt, pseudo / f"{item.id}.png")
    io.write_stage_record(pseudo, "crf", params={}, inputs={"dataset": dataset.identity()}, count=len(dataset.items),
                          numerics=run_numerics())  # the mode every stage records (ground truth: no dtype)
    r = _invoke("train-decoder", pseudo, "-p", vision, "-o", tmp_path / "decoder", "--iters", "4", "--batch-size",
                "2", "--dim", "16", "--layers", "1", "--heads", "2", "--crop-size", "64", "--workers", "1",
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert re.search(r"train-decoder: 4 iterations \([\d.]+ it/s\), training loss \(CE \+ RSC\) [\d.]+ → [\d.]+ "
                     r"\(first → last logged iteration\) → ", r.output), r.output


def test_off_a_terminal_extract_prints_progress_while_a_batch_is_slow(world, tmp_path, monkeypatch):
    """nohup, Slurm and CI logs once saw nothing for 97 s: off a terminal a plain line comes every
    PROGRESS_EVERY_S (10 s, under the 30 s bar) even while no image finishes. Here the interval is 0.05 s and every
    batch takes 0.4 s: each batch must be covered by at least one line."""
    import time

    import vpltool.stages.extract as extract
    from vpltool.cli import output

    assert output.PROGRESS_EVERY_S <= 30
    monkeypatch.setattr(output, "PROGRESS_EVERY_S", 0.05)
    printed, batches = [], []
    real_print, real_encode = output.err.print, extract.encode_batch

    def record_print(text, *args, **kwargs):
        printed.append((time.monotonic(), str(text)))
        real_print(text, *args, **kwargs)

    def slow_encode(*args, **kwargs):
        t0 = time.monotonic()
        time.sleep(0.4)
        out = real_encode(*args, **kwargs)
        batches.append((t0, time.monotonic()))
        return out

    monkeypatch.setattr(output.err, "print", record_print)
    monkeypatch.setattr(extract, "encode_batch", slow_encode)
    r = _invoke("extract", world, "--split", "train", "-o", tmp_path / "f", *TINY, "--device", "cpu",
                "--batch-size", "2", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert not output.err.is_terminal and len(batches) == 3
    progress = [(t, text) for t, text in printed if text.startswith("extract: ")]
    for t0, t1 in batches:
        assert any(t0 <= t <= t1 for t, _ in progress), (t0, t1, progress)
    assert re.search(r"^extract: 0/6 images \(0%\), 0\.00 images/s, 0m0\ds elapsed$", r.output, re.M), r.output
    assert "extract: 6/6 images (100%)" in r.output


def test_a_model_folder_or_alias_records_no_pretrained_tag():
    """`extract --model vpltool-toy` without `--pretrained none` once recorded "pretrained": "openai"."""
    from vpltool.models import ModelSpec

    ident = ModelSpec("vpltool-toy").identity()
    assert {k: ident[k] for k in ("model", "pretrained")} == {"model": "vpltool-toy", "pretrained": "none"}
    assert ModelSpec("local-dir:/somewhere").identity()["pretrained"] == "none"
    assert ModelSpec("ViT-B-16").identity()["pretrained"] == "openai"


def test_a_stage_run_under_a_group_umask_writes_group_readable_files(features_dir, text_protos, tmp_path):
    """Files were created 0600 whatever the umask (mkstemp): collaborators could not read results."""
    import os

    old = os.umask(0o027)
    try:
        r = _invoke("cam", features_dir, "-p", text_protos, "-o", tmp_path / "cams", "--device", "cpu")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "cams").iterdir()}
    assert modes and set(modes.values()) == {"0o640"}, modes  # items, _stage.json and the lock file
    assert oct((tmp_path / "cams").stat().st_mode & 0o777) == "0o750"


def test_a_second_call_in_one_process_logs_to_the_current_stderr(monkeypatch):
    """typer's runner (and notebooks) swap sys.stderr per call; a handler kept from the first call would write to a
    closed stream and print a '--- Logging error ---' traceback instead of the warning."""
    import io as stdio
    import logging

    from vpltool.cli.errors import friendly_errors

    @friendly_errors
    def command(**kwargs) -> None:
        logging.getLogger("vpltool.test").warning("the warning")

    streams = []
    for _ in range(2):
        streams.append(stdio.StringIO())
        monkeypatch.setattr(sys, "stderr", streams[-1])
        command(verbose=False)
        if len(streams) == 1:
            streams[0].close()
    assert streams[1].getvalue() == "warning: the warning\n"  # a log record is one warning line, as a warning


# --------------------------------------------------------------------------------------------- --log, warnings, bars
def test_the_log_gets_every_line_in_order_and_a_refused_log_none(features_dir, tmp_path):
    """--log is an output: its lines wait until the run's guard passed it, then go in order (the final ✓ last);
    a log the guard refuses (a new file inside the input extract folder) is never created, the error not included."""
    log = tmp_path / "logs" / "run.log"  # its folder is made
    r = _invoke("text-prototypes", features_dir, "-o", tmp_path / "t.safetensors", "--templates", "{}",
                "--background", "sky", "--device", "cpu", "--log", log)
    assert r.exit_code == 0, r.output
    lines = log.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ✓ text-prototypes: .*", lines[-1]), lines
    refused = features_dir / "run.log"
    r = _invoke("text-prototypes", features_dir, "-o", tmp_path / "t2.safetensors", "--templates", "{}",
                "--background", "sky", "--device", "cpu", "--log", refused)
    assert r.exit_code == 2 and "this run's input (the extract folder)" in r.output and not refused.exists()
    r = _invoke("eval", tmp_path / "nowhere", "--log", log)  # a run that fails before any check still logs
    assert r.exit_code == 2 and log.read_text().splitlines()[-1].endswith("predictions folder not found")


def test_pythons_fork_warning_is_no_line(monkeypatch):
    """Python >= 3.12 warns (DeprecationWarning) at each fork of a process with threads: the data loaders' forks
    printed it after the result line on such a Python, under filters that show DeprecationWarning (pytest's, an
    AMX Xeon's Python 3.12 run of this suite). It is no line; another DeprecationWarning still is one."""
    import os
    import warnings

    from vpltool.cli.errors import friendly_errors

    @friendly_errors
    def command(**kwargs) -> None:
        warnings.warn(f"This process (pid={os.getpid()}) is multi-threaded, use of fork() may lead to deadlocks in "
                      "the child.", DeprecationWarning, stacklevel=1)
        warnings.warn("another deprecation", DeprecationWarning, stacklevel=1)

    stream = __import__("io").StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        command(verbose=False)
    assert stream.getvalue().splitlines() == ["warning: another deprecation"]


def test_library_warnings_are_one_line_each(tmp_path, monkeypatch):
    """timm's "Unexpected keys ..." (a logging record) and a library's warnings.warn came in their own formats,
    over several lines; both are one yellow warning: line now."""
    import logging
    import warnings

    from vpltool.cli.errors import friendly_errors

    @friendly_errors
    def command(**kwargs) -> None:
        logging.getLogger("timm.models._builder").warning("Unexpected keys (head.w) found while loading.\nmore")
        warnings.warn("a library's own warning\nsecond line", FutureWarning, stacklevel=1)

    stream = __import__("io").StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    command(verbose=False)
    assert stream.getvalue().splitlines() == ["warning: Unexpected keys (head.w) found while loading.",
                                              "warning: a library's own warning"]


def test_a_run_that_fails_its_first_check_draws_no_progress_bar(world, tmp_path, monkeypatch):
    """On a terminal the bar appears with the first total, once the checks passed: a refused run prints its one
    line only (under TERM=dumb too, where the frame could not even be erased)."""
    from vpltool.cli import output

    monkeypatch.setattr(type(output.err), "is_terminal", property(lambda self: True))
    r = _invoke("extract", world, "--split", "nope", "-o", tmp_path / "f", *TINY, "--device", "cpu")
    assert r.exit_code == 2 and [line for line in r.output.splitlines() if line.strip()] == _error_lines(r.output)


def test_a_file_option_takes_its_default_and_refuses_a_folder_spelling(tmp_path, monkeypatch):
    """-o of text-prototypes is parsed to keep a trailing slash (a folder, which pathlib forgets): `-o dir/` wrote a
    file named dir. The default name still works."""
    monkeypatch.chdir(tmp_path)
    args = ["text-prototypes", "--classes", "cat,dog", *TINY, "--templates", "{}", "--background", "sky", "--device",
            "cpu"]
    r = _invoke(*args)
    assert r.exit_code == 0 and (tmp_path / "text_prototypes.safetensors").is_file(), r.output
    r = _invoke(*args, "-o", "protos/")
    assert r.exit_code == 2 and "ends with '/', so it names a folder" in r.output and not (tmp_path / "protos").exists()


def test_progress_counts_a_resumed_run_on_and_its_rate_from_the_start_call(monkeypatch):
    """A resumed run's progress starts at its checkpoint (661/1500 was shown at about 1461), and the rate counts
    only this run's items from the moment the work began (model loading excluded, as in the final it/s)."""
    from vpltool.cli import output

    now = [0.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: now[0])
    lines = output._Lines("train-decoder", "iterations", echo=False)  # t=0: the command starts
    now[0] = 100.0
    lines.start_with(1500, 800)  # the model loaded, the checkpoint at 800 restored
    now[0] = 102.0
    lines.advance(2)
    assert lines.line().startswith("train-decoder: 802/1500 iterations (53%), 1.00 iterations/s")


def test_an_interrupted_train_decoder_says_whether_a_checkpoint_is_kept(tmp_path):
    from vpltool.cli.errors import interrupted_hint

    assert interrupted_hint({"resume": False, "out": tmp_path}).startswith("no checkpoint was written yet")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.safetensors").write_bytes(b"")
    assert "with --resume to continue" in interrupted_hint({"resume": False, "out": tmp_path})
    assert interrupted_hint({}) == "finished items are kept; re-run the same command to resume"


def test_train_decoder_without_a_recipe_on_a_cpu_says_how_long_it_will_take(monkeypatch):
    from vpltool.cli import training

    said = []
    monkeypatch.setattr(training, "say", said.append)
    clock = iter([10.0, 14.0, 18.0, 22.0])
    monkeypatch.setattr("time.perf_counter", lambda: next(clock))
    hook = training._slow_recipe_timer("cpu")
    for iteration in (1, 2, 3, 4):
        hook(iteration, 30000)
    assert len(said) == 2 and "pass --recipe cpu" in said[0]
    assert "4.00 s per iteration, so its 30,000 iterations take about 33.3 h" in said[1]

"""Fault tolerance and bad input, through the real CLI.

* Crash safety: a stage killed with SIGKILL mid-run leaves only complete files, never looks finished, and the same
  command resumes it to exactly the uninterrupted run's result (extract, cam, crf, train-decoder).
* A second run on a locked output folder, a full disk or a denied write: one error line, exit 2, nothing half
  written, the folder left as it was.
* Determinism: seeded stages repeat byte for byte on CPU.
* Every bad input of ``robustness_cases.py``: exit 2, one ``error:`` line, and docs/robustness.md is current.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vpltool import io
from vpltool.io import read_log

import pace  # tests/ is on sys.path: hang bounds in idle-machine seconds
import robustness_cases as rc  # tests/ is on sys.path: pytest imports test modules from their own folder

DOC = Path(__file__).resolve().parent.parent / "docs" / "robustness.md"
N_IMAGES = 41  # big_world: 40 train + 1 val scenes, all in the folder layout's default split
DECODER_ITERS, CHECKPOINT_EVERY = 8, 2


# --------------------------------------------------------------------------------------------- the commands
def _extract_args(world: Path, out: Path) -> list[object]:
    return ["extract", world, "-o", out, *rc.TINY, "--cache", "full", "--batch-size", "1", "--workers", "1", *rc.CPU]


def _cam_args(features: Path, text: Path, out: Path) -> list[object]:
    return ["cam", features, "-p", text, "-o", out, *rc.CPU]


def _crf_args(cams: Path, out: Path) -> list[object]:
    return ["crf", cams, "-o", out, "--workers", "1"]


def _decoder_args(pseudo: Path, text: Path, out: Path, resume: bool = True) -> list[object]:
    """A tiny decoder; ``--resume`` from the start, as a preemptible job passes it (a fresh start without a
    checkpoint), so that re-running the very same command continues a killed run."""
    return ["train-decoder", pseudo, "-p", text, "-o", out, "--iters", DECODER_ITERS, "--checkpoint-every",
            CHECKPOINT_EVERY, "--batch-size", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--crop-size", "64",
            "--workers", "1", *rc.CPU, *(["--resume"] if resume else [])]


def _predict_args(decoder: Path, out: Path) -> list[object]:
    return ["predict", decoder / "decoder.safetensors", "-o", out, *rc.CPU]


# --------------------------------------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def big_world(tmp_path_factory) -> Path:
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("big"), n_train=40, n_val=1, seed=1)


# Each finished folder below is also the uninterrupted run that a killed-and-resumed run must reproduce.
@pytest.fixture(scope="module")
def features(big_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features")
    rc.cli_ok(*_extract_args(big_world, out))
    return out


@pytest.fixture(scope="module")
def text(features, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text") / "text.safetensors"
    rc.cli_ok("text-prototypes", features, "-o", out, *rc.TEXT_ARGS, *rc.CPU)
    return out


@pytest.fixture(scope="module")
def cams(features, text, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cams")
    rc.cli_ok(*_cam_args(features, text, out))
    return out


@pytest.fixture(scope="module")
def pseudo(cams, tmp_path_factory) -> Path:
    pytest.importorskip("pydensecrf.densecrf")
    out = tmp_path_factory.mktemp("pseudo")
    rc.cli_ok(*_crf_args(cams, out))
    return out


@pytest.fixture(scope="module")
def decoder(pseudo, text, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("decoder")
    rc.cli_ok(*_decoder_args(pseudo, text, out))
    return out


@pytest.fixture(scope="module")
def predictions(decoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predictions")
    rc.cli_ok(*_predict_args(decoder, out))
    return out


# --------------------------------------------------------------------------------------------- helpers
def _kill_mid_run(args: list[object], started: Callable[[], bool], timeout: float = 120) -> None:
    """Run ``vpltool ARGS`` (paced, :data:`robustness_cases.PACED_CLI`) in its own process group; SIGKILL the whole
    group (data-loader workers included) as soon as ``started()`` holds."""
    proc = rc.paced_cli(args)
    try:
        rc.wait_until(proc, started, timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _visible(folder: Path) -> list[str]:
    """Relative paths of the files a user or a later stage sees: temporary and lock files are hidden (".name")."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in _visible(folder)}


def _assert_reads_back(folder: Path) -> None:
    """Every visible file is complete: it parses as what its name says."""
    for name in _visible(folder):
        path = folder / name
        if path.suffix == ".safetensors":
            io.read_header(path)
        elif path.suffix == ".png":  # masks, or the decoder's RGB loss curve
            with Image.open(path) as img:
                img.load()
        elif path.suffix == ".json":
            io.read_json(path)
        elif path.suffix == ".jsonl":
            read_log(path)


def _assert_interrupted(folder: Path, pattern: str, read: Callable[[Path], object]) -> int:
    """The killed folder never looks finished and holds only complete items; returns how many."""
    assert not (folder / io.STAGE_RECORD).exists()
    done = sorted(folder.glob(pattern))
    assert 3 <= len(done) < N_IMAGES
    for path in done:
        read(path)
    _assert_reads_back(folder)
    return len(done)


def _resume(args: list[object], skipped: int) -> None:
    """Re-run the same command; it must skip exactly the items the killed run finished."""
    r = rc.invoke(*args)
    assert r.exit_code == 0, r.output
    assert f", {skipped} already done" in r.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = rc.error_lines(output)
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in output, output
    return errors[0]


# --------------------------------------------------------------------------------------------- kill -9
def test_extract_killed_mid_run_resumes_to_the_same_features(big_world, features, tmp_path):
    out = tmp_path / "features"
    args = _extract_args(big_world, out)
    _kill_mid_run(args, lambda: len(list(out.glob("*.safetensors"))) >= 3)
    n = _assert_interrupted(out, "*.safetensors", io.read_features)
    _resume(args, skipped=n)
    assert io.read_stage_record(out, "extract")["count"] == N_IMAGES
    assert _visible(out) == _visible(features)  # a temp file the kill left is hidden: never taken for an output
    for path in sorted(features.glob("*.safetensors")):
        a, b = io.read_features(path), io.read_features(out / path.name)
        assert torch.equal(a.dense, b.dense) and torch.equal(a.last_block_input, b.last_block_input)


def test_cam_killed_mid_run_resumes_to_the_same_cams(features, text, cams, tmp_path):
    out = tmp_path / "cams"
    args = _cam_args(features, text, out)
    _kill_mid_run(args, lambda: len(list(out.glob("*.safetensors"))) >= 3)
    n = _assert_interrupted(out, "*.safetensors", io.read_cam)
    _resume(args, skipped=n)
    assert _visible(out) == _visible(cams)
    assert io.read_json(out / io.STAGE_RECORD) == io.read_json(cams / io.STAGE_RECORD)
    for path in sorted(cams.glob("*.safetensors")):
        a, b = io.read_cam(path), io.read_cam(out / path.name)
        assert np.array_equal(a.file["cams"], b.file["cams"]) and a.labels == b.labels
        assert a.file.raw_meta == b.file.raw_meta


def test_crf_killed_mid_run_resumes_to_byte_identical_masks(cams, pseudo, tmp_path):
    out = tmp_path / "pseudo"
    args = _crf_args(cams, out)
    _kill_mid_run(args, lambda: len(list(out.glob("*.png"))) >= 3)
    n = _assert_interrupted(out, "*.png", io.read_mask)
    _resume(args, skipped=n)
    assert _snapshot(out) == _snapshot(pseudo)  # every mask and the record, byte for byte


def test_train_decoder_killed_mid_run_resumes_to_the_same_weights(pseudo, text, decoder, tmp_path):
    out = tmp_path / "decoder"
    args = _decoder_args(pseudo, text, out)
    checkpoint = out / "checkpoints" / "last.safetensors"
    _kill_mid_run(args, checkpoint.is_file)
    assert not (out / "decoder.safetensors").exists()  # never looks finished
    reached = io.read_tensors(checkpoint, kind="decoder-checkpoint", keys=()).meta("iteration")
    assert CHECKPOINT_EVERY <= reached < DECODER_ITERS and reached % CHECKPOINT_EVERY == 0
    _assert_reads_back(out)
    with open(out / "log.jsonl", "a") as fh:  # a log line cut short, as a full disk or a power cut leaves it
        fh.write('{"iter": 9, "lo')

    r = rc.invoke(*args)
    assert r.exit_code == 0, r.output
    final = io.read_tensors(out / "decoder.safetensors", kind="decoder").tensors
    reference = io.read_tensors(decoder / "decoder.safetensors", kind="decoder").tensors
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)

    def losses(folder: Path) -> list[dict]:
        return [{k: v for k, v in rec.items() if k != "sec"} for rec in read_log(folder / "log.jsonl")]

    assert losses(out) == losses(decoder) and losses(out)[-1]["iter"] == DECODER_ITERS


# --------------------------------------------------------------------------------------------- SIGTERM
def test_loading_workers_take_sigterms_default_action():
    """A loader worker is forked with the command's SIGTERM handler (which raises); it gets the default back, so a
    worker the loader terminates dies without a traceback after the command's one resume line."""
    import sys

    code = ("import os, signal\n"
            "from vpltool.runtime.batches import die_with_parent\n"
            "signal.signal(signal.SIGTERM, lambda *a: 1 / 0)\n"
            "die_with_parent(os.getppid())\n"
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n")
    done = pace.run([sys.executable, "-c", code], 60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_a_loading_worker_is_silent_when_the_run_hangs_up_and_loud_otherwise():
    """The run interrupted mid-handover of a batch closes the connection of multiprocessing's resource sharer, whose
    serving thread in the worker reports errors with ``sys.excepthook``: a hang-up prints nothing (it printed
    "ConnectionResetError" after the run's one resume line), any other error still prints."""
    import sys

    code = ("import os, sys\n"
            "from vpltool.runtime.batches import die_with_parent\n"
            "die_with_parent(os.getppid())\n"
            "for kind in (ConnectionResetError, BrokenPipeError, ValueError):\n"
            "    try:\n"
            "        raise kind('x')\n"
            "    except Exception:\n"
            "        sys.excepthook(*sys.exc_info())\n")
    done = pace.run([sys.executable, "-c", code], 60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ValueError: x" in done.stderr
    assert "ConnectionResetError" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_a_sigchld_pending_when_the_loader_checks_go_is_not_an_error():
    """SIGTERM's handler removes torch's SIGCHLD check of the loading workers; a SIGCHLD already pending for it
    (the group's workers dying at the same moment) must not meet SIG_DFL when Python runs it ("OSError: Signal 17
    ignored due to race condition" was printed after the run's one resume line). Both arrive at once (blocked, then
    released): Python runs the lower signal's handler first (SIGUSR1 here, SIGTERM in a run), which removes the
    check as SIGTERM's does, and then the pending SIGCHLD."""
    import sys

    code = ("import os, signal\n"
            "from vpltool.cli.errors import _quiet_loader_checks\n"
            "signal.signal(signal.SIGCHLD, lambda *a: None)\n"
            "signal.signal(signal.SIGUSR1, lambda *a: _quiet_loader_checks())\n"
            "both = {signal.SIGUSR1, signal.SIGCHLD}\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, both)\n"
            "for s in both:\n"
            "    os.kill(os.getpid(), s)\n"
            "signal.pthread_sigmask(signal.SIG_UNBLOCK, both)\n"
            "print('ok')\n")
    done = pace.run([sys.executable, "-c", code], 60, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert "Traceback" not in done.stderr and "race condition" not in done.stderr, done.stderr


def test_sigterm_is_one_line_exit_143_and_resumes(features, text, tmp_path):
    """Slurm's preemption: the resume hint, as for Ctrl-C, exit 143 (128 + SIGTERM), no temporary left, and the
    same command resumes."""
    out = tmp_path / "cams"
    args = _cam_args(features, text, out)
    proc = rc.paced_cli(args)
    try:
        rc.wait_until(proc, lambda: len(list(out.glob("*.safetensors"))) >= 2)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = pace.communicate(proc, 120)
    assert proc.returncode == 143, err
    assert [line for line in err.splitlines() if line.strip()][-1] == (
        "interrupted (SIGTERM): finished items are kept; re-run the same command to resume")
    assert not list(out.glob(".*.tmp")) and not (out / io.STAGE_RECORD).exists()
    _resume(args, skipped=len(list(out.glob("*.safetensors"))))


def test_sigterm_to_the_whole_process_group_is_one_line_exit_143_and_resumes(big_world, tmp_path):
    """What Slurm's preemption and `timeout` do: SIGTERM to every process of the group, the loader's workers too;
    the loader may report its dead workers before the command's handler runs, and that is the same preemption."""
    out = tmp_path / "seg"
    args = ["segment", big_world, "-o", out, *rc.TINY, *rc.CPU, "--dense", "maskclip", "--classes", "circle,square",
            "--workers", "2", "--batch-size", "1"]
    proc = rc.paced_cli(args)
    try:
        rc.wait_until(proc, lambda: len(list(out.glob("*.png"))) >= 2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "RuntimeError" not in err, err
    assert [line for line in err.splitlines() if line.strip()][-1] == (
        "interrupted (SIGTERM): finished items are kept; re-run the same command to resume")
    assert not list(out.glob(".*.tmp")) and not (out / io.STAGE_RECORD).exists()
    _resume(args, skipped=len(list(out.glob("*.png"))))


# --------------------------------------------------------------------------------------------- benchmark --shard
def _benchmark_args(root: Path, out: Path, shard: str) -> list[object]:
    """Two benchmarks of one miniature root (VOC21, VOC20: 3 images each), shard ``shard``, two loading workers."""
    return ["benchmark", "naclip", "--root", f"voc21={root}", "--root", f"voc20={root}", "-o", out, *rc.TINY, *rc.CPU,
            "--short-side", "64", "--slide-crop", "0", "--workers", "2", "--shard", shard]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    from vpltool.data.miniature import make_miniature

    return make_miniature("voc21", tmp_path_factory.mktemp("bench_root"))


@pytest.fixture(scope="module")
def benchmarked(bench_root, tmp_path_factory) -> Path:
    """Both shards run uninterrupted: what a stopped and resumed run must reproduce."""
    out = tmp_path_factory.mktemp("bench") / "b"
    for shard in ("0/2", "1/2"):
        rc.cli_ok(*_benchmark_args(bench_root, out, shard))
    return out


def _bench_files(out: Path) -> dict[str, object]:
    """Every file under a benchmark's ``-o`` folder, hidden ones too: bytes, or for a score file its JSON without
    the folder it names (the only place two runs into two folders differ)."""
    import json

    found: dict[str, object] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        found[str(path.relative_to(out))] = ({k: v for k, v in json.loads(path.read_text()).items() if k != "folder"}
                                             if path.suffix == ".json" and path.parent == out else path.read_bytes())
    return found


def _lock_free(folder: Path) -> bool:
    """Whether a run may take ``folder``'s lock now (nobody holds the ``flock``): probed without taking it over."""
    import fcntl

    with open(folder / io.LOCK_FILE, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


@pytest.mark.parametrize("how", ["SIGINT to the group (Ctrl-C)", "SIGTERM to the process", "SIGKILL to the process"])
def test_benchmark_shard_stopped_by_a_signal_resumes_to_the_same_results(how, bench_root, benchmarked, tmp_path):
    """``benchmark --shard 0/2`` (two loading workers) stopped once its first mask is written: Ctrl-C and SIGTERM
    exit 130 / 143 with the one resume line, SIGKILL (as the OOM killer: the loaders orphaned) leaves at most its
    temporaries; no process of the run outlives it and its lock is free. The same command then resumes, shard 1/2
    completes the folder, and every file is the uninterrupted run's, with nothing else left."""
    out = tmp_path / "b"
    sig = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}[how.split()[0]]
    proc = rc.paced_cli(_benchmark_args(bench_root, out, "0/2"))
    try:
        rc.wait_until(proc, lambda: any((out / "voc21").glob("*.png")))
    finally:
        (os.killpg if "group" in how else os.kill)(proc.pid, sig)
        _, err = pace.communicate(proc, 120)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}.get(sig, -signal.SIGKILL), err
    if sig != signal.SIGKILL:
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err and lines[-1] == (
            f"interrupted{' (SIGTERM)' if sig == signal.SIGTERM else ''}: finished items are kept; re-run the same "
            "command to resume"), err
        assert not list(out.rglob(".*.tmp"))
    assert rc.survivors(proc.pid) == []  # its loaders too
    assert all(_lock_free(folder) for folder in out.iterdir() if folder.is_dir())
    assert not (out / "table.json").exists() and not (out / "voc21" / io.STAGE_RECORD).exists()
    kept = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    assert kept  # the mask it was stopped after
    rc.cli_ok(*_benchmark_args(bench_root, out, "0/2"))  # the same command: it resumes
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # the finished masks kept, not made again
    assert {p.name for p in out.rglob(".*")} == {io.LOCK_FILE}  # the kill's temporary and shard claim removed
    rc.cli_ok(*_benchmark_args(bench_root, out, "1/2"))
    assert _bench_files(out) == _bench_files(benchmarked)  # the temporaries and claims gone, the rest identical


# --------------------------------------------------------------------------------------------- locked, full, denied
def _stage_command(stage: str, request, out: Path) -> list[object]:
    """``stage``'s command writing ``out``, its inputs taken from the module fixtures."""
    get = request.getfixturevalue
    return {
        "extract": lambda: _extract_args(get("big_world"), out),
        "cam": lambda: _cam_args(get("features"), get("text"), out),
        "crf": lambda: _crf_args(get("cams"), out),
        "train-decoder": lambda: _decoder_args(get("pseudo"), get("text"), out, resume=False),
        "predict": lambda: _predict_args(get("decoder"), out),
    }[stage]()


FINISHED = {"extract": "features", "cam": "cams", "crf": "pseudo", "train-decoder": "decoder",
            "predict": "predictions"}


@pytest.mark.parametrize("stage", list(FINISHED))
def test_a_locked_output_folder_is_refused_and_left_untouched(stage, request, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(request.getfixturevalue(FINISHED[stage]), out)
    before = _snapshot(out)
    # --overwrite: were the run let in, it would reset the folder first (remove its record / decoder)
    args = [*_stage_command(stage, request, out), "--overwrite"]
    with io.output_lock(out):
        r = rc.invoke(*args)
    assert r.exit_code == 2
    line = _one_error_line(r.output)
    assert line == f"error: {out}: another vpltool run is writing here; wait for it or choose another --out"
    assert _snapshot(out) == before


@pytest.mark.parametrize("stage, code, message", [
    ("cam", errno.ENOSPC, "no space left on device writing {path}: free space or choose another --out"),
    ("crf", errno.EACCES, "permission denied writing {path}: fix the folder's permissions or choose another --out"),
    ("train-decoder", errno.ENOSPC, "no space left on device writing {path}: free space or choose another --out"),
    ("predict", errno.EROFS, "read-only file system writing {path}: choose another --out"),
], ids=["cam-ENOSPC", "crf-EACCES", "train-decoder-ENOSPC", "predict-EROFS"])
def test_a_failing_disk_is_one_line_and_leaves_only_complete_files(stage, code, message, request, tmp_path):
    out = tmp_path / "out"
    args = _stage_command(stage, request, out)
    with rc.failing_writes(code, after=2):  # two files make it to disk, the third fails half-way
        r = rc.invoke(*args)
    assert r.exit_code == 2
    line = _one_error_line(r.output)
    path = re.fullmatch(r"error: \S+ .*? writing (\S+): .*", line).group(1)
    assert line == "error: " + message.format(path=path)
    assert Path(path).parent in (out, out / "checkpoints")  # the file asked for, not its temporary name
    assert not list(out.rglob("*.tmp"))  # the half-written temporary was removed
    assert not (out / io.STAGE_RECORD).exists() and not (out / "decoder.safetensors").exists()
    # what was written before the disk failed is kept, and complete: two items (with _run.json, written first, for
    # the per-image stages), or the decoder's one checkpoint file, written twice, and its log
    assert len(_visible(out)) == 2
    _assert_reads_back(out)
    # a write that would have replaced a file (the decoder's third checkpoint) keeps the previous one
    assert Path(path).exists() == (stage == "train-decoder")
    if stage == "train-decoder":
        assert io.read_tensors(path, kind="decoder-checkpoint", keys=()).meta("iteration") == 2 * CHECKPOINT_EVERY


# --------------------------------------------------------------------------------------------- determinism
# crf: two runs are byte-identical in tests/test_crf.py (1 vs 2 worker processes) and in the kill test above.
def test_predict_twice_gives_byte_identical_masks(decoder, predictions, tmp_path):
    again = tmp_path / "again"
    rc.cli_ok(*_predict_args(decoder, again))
    assert len(list(again.glob("*.png"))) == N_IMAGES
    assert _snapshot(again) == _snapshot(predictions)


def test_learn_prototypes_twice_gives_identical_prototypes(features, cams, text, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        rc.cli_ok("learn-prototypes", features, "-c", cams, "-t", text, "-o", out, "--iters", "20", *rc.CPU)
        runs.append(io.read_prototypes(out).vectors)
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], io.read_prototypes(text).vectors)  # they did move away from the text


# --------------------------------------------------------------------------------------------- bad input table
@pytest.fixture(scope="module")
def case_rows(tmp_path_factory):
    return rc.run_all(rc.Workspace(tmp_path_factory.mktemp("cases")))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@pytest.mark.parametrize("index", range(len(rc.CASES)), ids=[_slug(c.name) for c in rc.CASES])
def test_bad_input_message_exit_code_and_what_is_left(case_rows, index):
    """Exit 2 with one ``error:`` line (the last), or exit 0 without one; the message holds the case's words; the
    run left on disk exactly what the case allows (nothing, unless it says so)."""
    case, command, outcome = case_rows[index]
    assert outcome.exit_code == case.exit_code and not outcome.traceback, (command, outcome)
    if case.exit_code == 2:
        assert len(outcome.error_lines) == 1 and outcome.last_line == outcome.error_lines[0], (command, outcome)
    else:
        assert not outcome.error_lines, (command, outcome)
    assert case.expect, f"case {case.name!r} states no words its message must hold"
    for fragment in case.expect:
        assert fragment in outcome.seen, (fragment, outcome.seen)
    assert not case.unexpected(outcome), (command, case.unexpected(outcome))


@pytest.fixture(scope="module")
def numeric_ws(tmp_path_factory):
    return rc.Workspace(tmp_path_factory.mktemp("numeric_cases"))


@pytest.mark.numeric
@pytest.mark.parametrize("index", [i for i, c in enumerate(rc.CASES) if c.numeric],
                         ids=[_slug(c.name) for c in rc.CASES if c.numeric])
def test_a_case_that_computes_keeps_its_message_and_its_row_on_every_cpu(numeric_ws, index):
    """The cases whose run computes in ``--precision auto``'s dtype or with the CPU's kernels, run alone: their
    premise holds and their row of docs/robustness.md is the same, in the suite's pass as on a CPU with AMX (bf16:
    a Talk2DINO cache entry's key hashes the dtype; T-NPR's empty rows were once a matter of rounding)."""
    case = rc.CASES[index]
    args, outcome = case.run(numeric_ws)
    numeric_ws.end_case()  # its big files of its own (an 82 MB train-pgseg run), as the table's run does
    assert outcome.exit_code == case.exit_code and not outcome.traceback, outcome
    for fragment in case.expect:
        assert fragment in outcome.seen, (fragment, outcome.seen)
    assert not case.unexpected(outcome), case.unexpected(outcome)
    row = rc.render([(case, case.command(numeric_ws, args, outcome.env), outcome)]).splitlines()[-1]
    assert row in DOC.read_text().splitlines(), ("docs/robustness.md's row differs on this run", row)


def test_every_option_a_message_names_is_one_of_its_command(case_rows):
    """A fix that names an option names one the command has (or the vpltool command it names: "re-run `vpltool
    crf` with a lower --confidence"): `benchmark` said "pass --overwrite", `predict` "change --templates"."""
    from test_docs import command_options, misnamed_options

    table = command_options()
    bad = [f"{command}: {', '.join(wrong)}: {line[:300]}" for case, command, outcome in case_rows
           if not case.python for line in outcome.error_lines + outcome.warning_lines
           if (wrong := misnamed_options(command.split("vpltool ", 1)[1].split()[0], line, table))]
    assert not bad, "\n".join(bad)


def test_messages_are_printed_verbatim(case_rows):
    """Square brackets in a message are text, not rich markup (which would print "pip install 'vpltool'")."""
    [(_, _, outcome)] = [row for row in case_rows if row[0].name.startswith("CRF extra")]
    assert "pip install -e '.[crf]'" in outcome.error_lines[0]


def test_docs_robustness_md_is_generated_from_the_cases(case_rows):
    if os.environ.get("VPLTOOL_WRITE_DOCS") == "1":  # a full run that also rewrites the page (snapshot-update style)
        DOC.write_text(rc.render(case_rows))
    assert DOC.read_text() == rc.render(case_rows), (
        "docs/robustness.md is out of date: run .venv/bin/python docgen/robustness_table.py")


def test_the_page_shows_no_score_and_every_other_figure():
    """The page shows no figure that follows the CPU (machines differ there), and every word and other number."""
    row = ("| eval | `vpltool eval x` | 0 | `✓ eval: mIoU 14.68 over 4 images; loss 2.0612 → 4.6211 → a; the loss "
           "did not move in 3 iterations (2.984e+28 → 2.984e+28 nats), so; training loss (CE + RSC) 4.3757 → "
           "2.5353 (first → last)` | nothing |")
    masked = rc.without_scores(row)
    assert masked == rc.without_scores(row.replace("14.68", "14.67").replace("4.6211", "4.6210")
                                       .replace("2.984e+28", "2.997e+28").replace("4.3757", "4.3756"))
    assert "loss (CE + RSC) · → · (first → last)" in masked  # a loss named by its terms (bf16 moved its 4th digit)
    assert "mIoU · over 4" in masked and "loss · → · → a" in masked and "(· → · nats)" in masked
    assert masked != rc.without_scores(row.replace("over 4", "over 5").replace("in 3 iterations", "in 2 iterations"))
    assert rc.without_scores(row) != rc.without_scores(row.replace("| 0 |", "| 2 |"))


def _cache_state(run: str, keys: dict[str, list[str]], stamp: int) -> dict[str, tuple[int, ...]]:
    """A :func:`rc.disk_state` of a Talk2DINO run folder whose feature cache holds ``keys`` (``{side: [sha256 hex]}``,
    each entry in its two-digit shard folder), every entry written at ``stamp``."""
    state: dict[str, tuple[int, ...]] = {f"{run}/": (), f"{run}/cache/": (), f"{run}/cache/_cache.json": (1, 9, 1),
                                         f"{run}/talk2dino.safetensors": (1, 99, stamp)}
    for side, side_keys in keys.items():
        state[f"{run}/cache/{side}/"] = ()
        state[f"{run}/cache/{side}/_layout.json"] = (1, 7, 1)
        for key in side_keys:
            state[f"{run}/cache/{side}/{key[:2]}/"] = ()
            state[f"{run}/cache/{side}/{key[:2]}/{key}.safetensors"] = (1, 64, stamp)
    return state


def _keys(draw, n: int) -> list[str]:
    """``n`` distinct sha256 keys as another CPU might name the same entries: shard folders drawn from a few, so
    that entries share one, or not, as keys fall; first digits that sort before ``_layout.json`` or after it."""
    from hypothesis import strategies as st

    shard = st.sampled_from(["0a", "3f", "9c", "a1", "ff"])
    tail = st.text("0123456789abcdef", min_size=62, max_size=62)
    return draw(st.lists(st.builds(str.__add__, shard, tail), min_size=n, max_size=n, unique=True))


def test_a_feature_cache_row_is_the_same_whatever_keys_the_cpu_names_its_entries_by():
    """docs/robustness.md's left-on-disk cell of a Talk2DINO cache case follows the entries and what happened to
    each, never their keys: the keys hash the DINO's matrix products, which differ between CPUs (an AMD Zen 4 listed
    another set of ``cache/image/<kk>/<key>`` entries than the committed page, three rounds running). Hypothesis
    draws the keys two CPUs might give; each case's cell must be the one the first keys give."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    def cell(before, after) -> str:
        return rc.describe_left(rc.keyed_left(rc.disk_changes(before, after)))

    def cells(keys: list[list[str]]) -> tuple[str, ...]:  # [image's 8 keys, text's 8]: 4 old, 4 of another DINO
        old = {"image": keys[0][:4], "text": keys[1][:4]}
        new = {"image": keys[0][4:], "text": keys[1][4:]}
        return (cell(_cache_state("r", old, 1), _cache_state("r", new, 2)),  # made by another DINO: re-made
                cell(_cache_state("r", old, 1), _cache_state("r", old, 2)),  # cleared and made again, same keys
                cell(_cache_state("r", old, 1), _cache_state("r", {**old, "image": old["image"][:3]}, 1)))

    first = cells([[f"{d}{i}" + "0" * 62 for i in range(1, 9)] for d in ("a", "b")])

    # no shrinking: a failing draw is readable as it is (four keys a side), and shrinking one took over 5 minutes
    @settings(max_examples=200, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def same_cells(data) -> None:
        assert cells([_keys(data.draw, 8) for _ in range(2)]) == first

    same_cells()


def test_the_workspace_watch_sees_what_a_walk_sees(tmp_path):
    """:class:`rc.DiskWatch` (the cases' before and after, kept up to date from inotify) gives :func:`rc.disk_state`
    after each kind of change a run or a case makes: a file made, written in place, truncated, chmod-ed, its times
    set back, renamed, replaced by a folder; folders made nested, renamed with files then written under the new
    name, moved out and back in, removed whole; a symlink and a FIFO; and a change made by another process."""
    import subprocess
    import sys

    root = tmp_path / "ws"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.bin").write_bytes(b"x" * 10)
    watch = rc.DiskWatch.start(root)
    if watch is None:
        pytest.skip("no inotify here: the cases walk the workspace instead")
    outside = tmp_path / "outside"
    stamp = os.stat(root / "a" / "b" / "x.bin").st_mtime_ns

    def write_in_place():
        with open(root / "a" / "b" / "x.bin", "r+b") as f:
            f.write(b"y")

    steps = [
        lambda: (root / "f.txt").write_text("one"),
        write_in_place,
        lambda: os.utime(root / "a" / "b" / "x.bin", ns=(stamp, stamp)),  # same size, its time set back
        lambda: os.truncate(root / "f.txt", 1),
        lambda: os.chmod(root / "f.txt", 0o600),
        lambda: (root / "f.txt").rename(root / "g.txt"),
        lambda: (root / "n" / "m" / "k").mkdir(parents=True),
        lambda: (root / "n" / "m" / "k" / "deep.txt").write_text("deep"),
        lambda: ((root / "a").rename(root / "c"), (root / "c" / "b" / "new.txt").write_text("new")),
        lambda: (root / "c" / "b" / "x.bin").write_bytes(b"z" * 3),
        lambda: (root / "n").rename(outside),
        lambda: ((outside / "m" / "later.txt").write_text("later"), outside.rename(root / "back")),
        lambda: (root / "back" / "m" / "k" / "deep.txt").unlink(),
        lambda: shutil.rmtree(root / "c"),
        lambda: (root / "link").symlink_to(root / "back"),
        lambda: os.mkfifo(root / "fifo"),
        lambda: ((root / "g.txt").unlink(), (root / "g.txt").mkdir(), (root / "g.txt" / "in.txt").write_text("i")),
        lambda: subprocess.run([sys.executable, "-c", f"open({str(root / 'back' / 'kid.txt')!r}, 'w').write('k')"],
                               check=True),
    ]
    seen = set()
    for i, step in enumerate(steps):
        before = watch.snapshot()
        step()
        kept, walked = watch.snapshot(), rc.disk_state(root)
        assert kept == walked, (i, sorted(set(kept.items()) ^ set(walked.items())))
        assert kept != before, i  # each step changed something the snapshot shows
        seen.add(i)
    assert watch.missed() == [] and len(seen) == len(steps)

"""Runs identify their inputs by content (vpltool.io.inputs): the records, the message that names a changed input,
train-pgseg's log on resume, and torchrun's ranks dying with their agent. The two-command generator
(test_fuzz_two_command.py) and the rows of robustness_cases.py check the commands end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pgseg_stand_in
import pytest

from vpltool import io
from vpltool.config.pgseg import pgseg_recipe
from vpltool.data.pairs import open_pairs
from vpltool.demo.make_world import write_dataset
from vpltool.errors import VplError
from vpltool.stages.train_text import run_train_text

import pace  # tests/ is on sys.path: bounds in idle-machine seconds

TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=8, n_val=2, seed=0)


def test_changed_inputs_compares_content_not_paths(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.bin"
    a.write_bytes(b"weights")
    b.parent.mkdir()
    shutil.copyfile(a, b)
    before = {"init": io.file_identity(a), "nouns": None}
    assert io.changed_inputs(before, {"init": io.file_identity(b), "nouns": None}) == []
    b.write_bytes(b"other weights")
    [said] = io.changed_inputs(before, {"init": io.file_identity(b), "nouns": None}, {"init": "--init"})
    assert said.startswith(f"--init {b}: its content changed (sha256 ") and " there, " in said
    [added] = io.changed_inputs(before, {"init": io.file_identity(a), "nouns": "nltk"}, {"nouns": "--nouns"})
    assert added.startswith("--nouns: none there")


def test_a_stage_record_tells_a_changed_input_from_another_setting(tmp_path, monkeypatch):
    """A file a parameter names (by content: {path, sha256}) whose bytes changed is a changed input, said with the
    file (relative to the current folder, as typed); another value is another setting; a path an older record kept
    is the same input where it is the same file now."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    path = tmp_path / "w" / "proxy.safetensors"
    path.write_bytes(b"weights")
    made = {"proxy_weights": io.weights_identity(str(path)), "max_side": None}
    assert io.param_changes(made, {**made, "proxy_weights": io.weights_identity("w/proxy.safetensors")}) == ([], [])
    path.write_bytes(b"other weights")
    settings, [(key, said)] = io.param_changes(made, {**made, "proxy_weights": io.weights_identity(str(path))})
    assert settings == [] and key == "proxy_weights"
    assert said.startswith("proxy_weights w/proxy.safetensors: its content changed (sha256 ")
    assert io.param_changes(made, {**made, "proxy_weights": "hub", "max_side": 512}) == (
        ["max_side", "proxy_weights"], [])
    older = {"class_file": "w/proxy.safetensors"}  # a record of an older vpltool: the path as given
    assert io.param_changes(older, {"class_file": io.weights_identity(str(path))}) == ([], [])
    assert io.param_changes(older, {"class_file": "sclip:voc21"}) == (["class_file"], [])
    assert io.shown_path(path) == "w/proxy.safetensors" and io.shown_path("/elsewhere/x") == "/elsewhere/x"


def test_what_a_record_derives_from_a_changed_prompt_file_follows_the_file(tmp_path, monkeypatch):
    """--templates / --background files are recorded by content (segment), beside the lines read from them
    (template_list, background_words): other bytes are the file's change, named with it, not other settings; the
    same bytes by another path are the same run."""
    from vpltool.models.backbones.prompts import prompt_files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("a photo of a {}.\n")
    (tmp_path / "bg.txt").write_text("sky\n")
    named = prompt_files("t.txt", "bg.txt")
    assert set(named) == {"templates", "background"} and prompt_files("imagenet", "sky,grass") == {}

    def params(words: list[str], **extra):
        return {"templates": io.file_identity(named["templates"].resolve()),
                "background": io.file_identity(named["background"].resolve()), "template_list": ["a photo of a {}."],
                "background_words": words, **extra}

    made = params(["sky"], short_side=64)
    assert io.param_changes(made, params(["sky"], short_side=64)) == ([], [])
    named["background"].write_text("sky\ngrass\n")
    settings, [(key, said)] = io.param_changes(made, params(["sky", "grass"], short_side=64))
    assert settings == [] and key == "background" and said.startswith("background bg.txt: its content changed")
    settings, contents = io.param_changes(made, params(["sky", "grass"], short_side=96))
    assert settings == ["short_side"] and [k for k, _ in contents] == ["background"]  # a setting still is one
    assert io.param_changes(made, {**made, "background_words": ["grass"]}) == (["background_words"], [])


def test_a_stage_folder_refuses_a_resume_over_a_changed_file_as_a_changed_input(tmp_path):
    out, weights = tmp_path / "seg", tmp_path / "proxy.safetensors"
    weights.write_bytes(b"weights")
    params = {"dense": "proxyclip", "proxy_weights": io.weights_identity(str(weights))}
    with io.StageFolder(out, "segment", params, shard=(0, 2)):
        pass
    weights.write_bytes(b"other weights")
    with pytest.raises(VplError) as e:
        with io.StageFolder(out, "segment", {**params, "proxy_weights": io.weights_identity(str(weights))},
                            shard=(1, 2)):
            pass
    msg = str(e.value)
    assert msg.startswith(f"{out}: an interrupted run made from other inputs (proxy_weights {weights}: its content "
                          "changed (sha256 ") and "other parameters" not in msg and "--overwrite" in msg


def test_a_dataset_moved_between_shards_is_the_same_input_where_its_content_is_recorded(world, tmp_path):
    from vpltool.data import open_dataset

    moved = shutil.copytree(world, tmp_path / "moved")
    out = tmp_path / "seg"
    with io.StageFolder(out, "segment", {"a": 1}, shard=(0, 2), inputs=open_dataset(world, "val").inputs()):
        pass
    with io.StageFolder(out, "segment", {"a": 1}, shard=(1, 2), inputs=open_dataset(moved, "val").inputs()):
        pass  # the same bytes elsewhere: the same run
    image = sorted((moved / "images").glob("val_*.png"))
    shutil.copyfile(image[1], image[0])  # then another picture under the same name
    with pytest.raises(VplError, match="made from other inputs \\(content changed since"):
        with io.StageFolder(out, "segment", {"a": 1}, shard=(1, 2), inputs=open_dataset(moved, "val").inputs()):
            pass


def test_weights_identity_is_a_file_by_content_or_the_value(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    assert io.weights_identity("hub") == "hub" and io.weights_identity(None) is None
    ident = io.weights_identity(os.path.relpath(path))
    assert ident["path"] == str(path.resolve()) and ident["sha256"] == io.sha256_file(path)


def test_pairs_are_identified_by_every_caption_and_image(world, tmp_path):
    copy = shutil.copytree(world, tmp_path / "copy")
    here, there = open_pairs(world).identity(), open_pairs(copy).identity()
    assert here["path"] != there["path"] and io.by_content(here) == io.by_content(there)
    image = sorted((copy / "images").glob("train_*.png"))
    shutil.copyfile(image[1], image[0])  # the same name, another picture
    replaced = open_pairs(copy).identity()
    assert replaced["files"] == there["files"] and replaced["sha256"] != there["sha256"]
    table = json.loads((copy / "captions.json").read_text())
    table[sorted(table)[0]] += " again"
    (copy / "captions.json").write_text(json.dumps(table))
    [said] = io.changed_inputs({"pairs": there}, {"pairs": open_pairs(copy).identity()}, {"pairs": "PAIRS"})
    assert said.startswith(f"PAIRS: {(copy / 'captions.json').resolve()} changed")
    # resumed on another folder: its file named as the user reaches it (relative to the current folder), and the
    # record's beside it, not "changed"
    with pytest.MonkeyPatch.context() as m:
        m.chdir(tmp_path)
        [said] = io.changed_inputs({"pairs": here}, {"pairs": open_pairs("copy").identity()}, {"pairs": "PAIRS"})
    assert said.startswith(f"PAIRS: copy/captions.json differs from the record's {world.resolve()}/captions.json")


def _cfg(**kw):
    return pgseg_recipe("cpu", **{**dict(batch_size=2, epochs=2, warmup_epochs=1, crop_size=32, log_every=1,
                                         checkpoint_every=2), **kw})


def test_pgseg_log_holds_each_iteration_once_after_a_resume_and_none_of_a_dead_run(world, tmp_path, monkeypatch):
    pgseg_stand_in.install(monkeypatch)
    run = tmp_path / "run"
    run_train_text(world, run, _cfg(), stop_after=3)  # checkpoint at 2, iteration 3 logged then lost
    assert [r["iter"] for r in io.read_log(run / "log.jsonl")] == [1, 2, 3]
    s = run_train_text(world, run, _cfg(), resume=True)
    assert s.start == 2 and [r["iter"] for r in io.read_log(run / "log.jsonl")] == list(range(1, s.iterations + 1))
    dead = tmp_path / "dead"
    run_train_text(world, dead, _cfg(checkpoint_every=100), stop_after=3)  # killed before any checkpoint
    assert not (dead / "checkpoints" / "last.safetensors").exists()
    run_train_text(world, dead, _cfg(checkpoint_every=100))  # a new run, not a resume: the dead run's lines go
    iters = [r["iter"] for r in io.read_log(dead / "log.jsonl")]
    assert iters == list(range(1, len(iters) + 1))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("when", ["mid-run", "starting"])
def test_kill_9_of_torchrun_ends_its_ranks_and_certifies_nothing(world, tmp_path, when):
    """Two CLI ranks of train-pgseg (the stand-in family) under torchrun; torchrun killed with -9 once the run
    logged its first iterations (``mid-run``), or as soon as its ranks exist, while they still import torch
    (``starting``): both ranks are gone, and no model or record is written after.

    ``starting`` is how ranks outlived torchrun (ppid 1, alive minutes later, waiting on the agent's store): a rank
    orphaned before it tied itself to its agent tied itself to init, which had adopted it. A rank now compares its
    parent with the one it had when vpltool was imported, and stops with one line; ``mid-run`` ranks die at once
    (``PR_SET_PDEATHSIG``, and a watchdog thread)."""
    out = tmp_path / "run"
    script = tmp_path / "cli.py"
    script.write_text(f"import vpltool\nimport sys\nsys.path.insert(0, {str(TESTS)!r})\nimport pgseg_stand_in\n"
                      "pgseg_stand_in.install()\nfrom vpltool.cli import main\nmain()\n")  # vpltool first, as the CLI
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_port()), str(script), "train-pgseg", str(world), "-o", str(out), "--recipe", "cpu",
           "--batch-size", "2", "--epochs", "100000", "--crop-size", "32", "--workers", "1", "--device", "cpu",
           "--log-every", "1"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    ranks: list[int] = []
    try:
        budget = pace.Budget(240)
        while not budget.expired() and (len(_children(agent.pid)) < 2 if when == "starting"
                                        else len(io.read_log(out / "log.jsonl")) < 3):
            assert agent.poll() is None, "torchrun ended before it could be killed"
            time.sleep(0.05 if when == "starting" else 0.2)
        ranks = _children(agent.pid)
        assert len(ranks) == 2, ranks
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        # mid-run: at once; starting: once each rank has imported what it runs with (seconds; more under load)
        budget = pace.Budget(10 if when == "mid-run" else 60)
        while not budget.expired() and any(_alive(p) for p in ranks):
            time.sleep(0.1)
        left = {p: Path(f"/proc/{p}/stat").read_text()[:80] for p in ranks if _alive(p)}
        assert not left, f"a rank outlived torchrun: {left}"
        assert not (out / "pgseg.safetensors").exists() and not (out / "_stage.json").exists()
    finally:
        for pid in [agent.pid, *ranks, *_children(agent.pid)]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        agent.wait()


def test_an_input_is_read_as_the_run_named_it(tmp_path):
    """io.read_as_named: inside a run (a command, a Python stage: io.naming_scope), the bytes of a file the run
    named by its digest are those bytes, or one line (a file rewritten while the run goes); the same bytes written
    again pass; a file never named is read as it is. Outside a run nothing is held (a notebook may change a file
    between two runs, and the next run names it anew)."""
    path = tmp_path / "x.bin"
    path.write_bytes(b"first")
    with io.naming_scope():
        assert io.read_as_named(path) == b"first"  # never named: as it is
        io.sha256_file(path)  # the run names it (its record)
        path.write_bytes(b"first")  # touched: the same bytes
        assert io.read_as_named(path) == b"first"
        path.write_bytes(b"other")
        with pytest.raises(VplError, match="x.bin: changed while this run was using it"):
            io.read_as_named(path)
    assert io.read_as_named(path) == b"other"  # the run is over
    with io.naming_scope():  # the next run names it anew
        io.sha256_file(path)
        assert io.read_as_named(path) == b"other"

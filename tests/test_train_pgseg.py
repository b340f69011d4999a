"""`train-pgseg` and its pairs reader, on a tiny demo world, with the tests' stand-in model family
(tests/pgseg_stand_in.py): checkpoints, bit-exact --resume after kill -9, DDP (torchrun, gloo) against one process,
the reference's schedule, bad inputs."""

from __future__ import annotations

import io as _io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cli_server
import numpy as np
import pgseg_stand_in
import pytest
import torch
from killed_runs import free_port, kill_at_checkpoint
from PIL import Image
from typer.testing import CliRunner

from vpltool import io
from vpltool.config.pgseg import pgseg_recipe
from vpltool.data.pairs import check_pairs, open_pairs
from vpltool.demo.make_world import write_dataset
from vpltool.errors import VplError
from vpltool.stages.train_text import GlobalBatches, lr_at, run_train_text, schedule_lr

TESTS = Path(__file__).parent
REPO = TESTS.parent
# 16 pairs, batch 4, 2 epochs = 8 iterations of the stand-in at 32 px crops
SMALL = dict(batch_size=4, epochs=2, warmup_epochs=1, crop_size=32, min_scale=0.3, log_every=1, checkpoint_every=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=16, n_val=4, seed=0)


@pytest.fixture
def family(monkeypatch):
    return pgseg_stand_in.install(monkeypatch)


def _cfg(**kw):
    return pgseg_recipe("cpu", **{**SMALL, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return pgseg_stand_in.load_checkpoint(path)[1]


# ------------------------------------------------------------------------------------------------ pairs
def test_world_is_a_folder_of_pairs_of_its_train_split(world):
    pairs = open_pairs(world)
    captions = json.loads((world / "captions.json").read_text())
    assert pairs.kind == "folder" and len(pairs.pairs) == 16
    assert all(p.key.startswith("train_") and p.caption == captions[p.key] for p in pairs.pairs)
    assert len(open_pairs(world, "val").pairs) == 4


def _shard(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, parts in samples.items():
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, _io.BytesIO(data))
    return path


def _jpeg(seed: int) -> bytes:
    buf = _io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_shards_read_as_webdataset_groups_them(tmp_path):
    import webdataset as wds

    _shard(tmp_path / "00000.tar", {f"{i:09d}": {"jpg": _jpeg(i), "txt": f"a photo {i}".encode(), "json": b"{}"}
                                    for i in range(3)})
    _shard(tmp_path / "00001.tar", {"000000009": {"jpg": _jpeg(9), "txt": b"  spaced caption "}})
    pairs = open_pairs(tmp_path)
    assert [p.key for p in pairs.pairs] == ["00000.tar:000000000", "00000.tar:000000001", "00000.tar:000000002",
                                           "00001.tar:000000009"]
    assert pairs.pairs[-1].caption == "spaced caption"
    # the same samples, bytes and keys as webdataset's own reader
    ref = list(wds.WebDataset([str(tmp_path / "00000.tar")], shardshuffle=False))
    assert [s["__key__"] for s in ref] == [p.key.split(":")[1] for p in pairs.pairs[:3]]
    assert all(s["jpg"] == p.image_bytes() for s, p in zip(ref, pairs.pairs))
    assert open_pairs(f"{tmp_path}/{{00000..00001}}.tar").pairs == pairs.pairs


@pytest.mark.parametrize("bad, words", [
    ({"k1": {"jpg": None}}, ["00000.tar:k1", "no caption"]),
    ({"k1": {"jpg": None, "txt": b"   "}}, ["00000.tar:k1", "empty caption"]),
    ({"k1": {"jpg": b"not a jpeg", "txt": b"a cat"}}, ["00000.tar:k1", "does not decode"]),
    ({"k1": {"jpg": None, "txt": b"w " * 40}}, ["00000.tar:k1", "longer than the text context", "--truncate"]),
])
def test_bad_shard_samples_are_named(tmp_path, bad, words):
    samples = {"k0": {"jpg": _jpeg(0), "txt": b"fine"}}
    samples.update({k: {e: (_jpeg(1) if v is None else v) for e, v in parts.items()} for k, parts in bad.items()})
    tok = pgseg_stand_in.tokenizer(pgseg_stand_in.PGSegConfig())
    with pytest.raises(VplError) as e:
        check_pairs(open_pairs(_shard(tmp_path / "00000.tar", samples)), tok.length, tok.context_length)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_long_caption_passes_with_truncate(tmp_path):
    tok = pgseg_stand_in.tokenizer(pgseg_stand_in.PGSegConfig())
    pairs = open_pairs(_shard(tmp_path / "00000.tar", {"k": {"jpg": _jpeg(0), "txt": b"w " * 40}}))
    check_pairs(pairs, tok.length, tok.context_length, truncate=True)


def test_folder_without_captions_or_image(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(VplError, match="captions.json"):
        open_pairs(tmp_path)
    (tmp_path / "captions.json").write_text(json.dumps({"b": "a cat"}))
    with pytest.raises(VplError, match="'b' but no image"):
        open_pairs(tmp_path)


# ------------------------------------------------------------------------------------------------ schedule, plan
def test_schedule_is_timms_cosine_updated_after_each_step():
    from timm.scheduler import CosineLRScheduler

    cfg, steps = _cfg(epochs=3, warmup_epochs=1), 5
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs * steps, lr_min=cfg.min_lr,
                              warmup_lr_init=cfg.warmup_lr, warmup_t=cfg.warmup_epochs * steps, cycle_limit=1,
                              t_in_epochs=False)
    for it in range(cfg.epochs * steps):  # main_pg_seg.py: step with the group's lr, then step_update(it)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(cfg, it, steps), rel=1e-12)
        sched.step_update(it)
    assert schedule_lr(cfg, 0, steps) == cfg.warmup_lr and schedule_lr(cfg, 99, steps) == cfg.min_lr


def test_ranks_share_the_global_batch():
    one = list(GlobalBatches(20, 4, 1, 0, seed=3, start=0, stop=9))
    two = [list(GlobalBatches(20, 2, 2, r, seed=3, start=0, stop=9)) for r in range(2)]
    assert all(a == b + c for a, b, c in zip(one, *two))
    assert list(GlobalBatches(20, 4, 1, 0, seed=3, start=4, stop=9)) == one[4:]


# ------------------------------------------------------------------------------------------------ training
def test_training_writes_model_checkpoint_record_and_log(world, tmp_path, family):
    s = run_train_text(world, tmp_path / "run", _cfg())
    assert s.iterations == 8 and s.model == tmp_path / "run" / "pgseg.safetensors"
    cfg, weights = family.load_checkpoint(s.model)
    assert cfg.npr and set(weights) == set(family.PGSeg(cfg).state_dict())
    record = io.read_record(io.stage_record_path(tmp_path / "run"))
    assert record["stage"] == "train-pgseg" and record["count"] == 16 and record["params"]["npr"] is True
    log = io.read_log(tmp_path / "run" / "log.jsonl")
    assert [r["iter"] for r in log] == list(range(1, 9)) and {"loss", "contrast", "npr", "lr"} <= set(log[0])
    _, _, ckpt = io.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors", kind="pgseg-checkpoint")
    assert ckpt.meta("iteration") == 8
    fresh = family.PGSeg(cfg).state_dict()
    assert any(not torch.equal(fresh[k], weights[k]) for k in weights)  # it learnt something


def test_no_npr_trains_groupvit_without_the_npr_term(world, tmp_path, family):
    s = run_train_text(world, tmp_path / "run", _cfg(npr=False, epochs=1))
    cfg, _ = family.load_checkpoint(s.model)
    assert not cfg.npr and "npr" not in io.read_log(tmp_path / "run" / "log.jsonl")[0]


def test_refuses_to_clobber_and_resume_with_other_settings(world, tmp_path, family):
    run_train_text(world, tmp_path / "done", _cfg(epochs=1))
    with pytest.raises(VplError, match="holds a trained model; pass --overwrite"):
        run_train_text(world, tmp_path / "done", _cfg(epochs=1))
    run_train_text(world, tmp_path / "run", _cfg(epochs=1), stop_after=2)
    with pytest.raises(VplError, match="interrupted run"):
        run_train_text(world, tmp_path / "run", _cfg(epochs=1))
    with pytest.raises(VplError, match="--lr 0.001 there, 0.002 here"):
        run_train_text(world, tmp_path / "run", _cfg(epochs=1, lr=2e-3), resume=True)
    # a setting that also changes the model it builds (the crop side is its img_size) is said once, as the setting:
    # "the model's img_size ... (a file it names changed)" was said too, though no file changed
    with pytest.raises(VplError) as e:
        run_train_text(world, tmp_path / "run", _cfg(epochs=1, crop_size=2 * SMALL["crop_size"]), resume=True)
    assert f"(--crop-size {SMALL['crop_size']} there, {2 * SMALL['crop_size']} here); " in str(e.value)


def _script(body: str) -> list[str]:
    # faulthandler: a process that dies of a signal (an abort in torch's C++) prints every thread's Python stack
    return [sys.executable, "-c", "import faulthandler; faulthandler.enable(all_threads=True); import sys; "
            "sys.path.insert(0, %r); import pgseg_stand_in; pgseg_stand_in.install(); %s" % (str(TESTS), body)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    """This process on one thread, as the killed run's (_env), whatever the caller's OMP_NUM_THREADS: another
    thread count sums in another order, and bit-exact means the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_kill_9_and_resume_gives_the_uninterrupted_weights(world, tmp_path, family, one_thread):
    whole = run_train_text(world, tmp_path / "whole", _cfg()).model
    run = tmp_path / "killed"
    # a run slowed down after each iteration, killed with -9 once its second checkpoint (iteration 4) is on disk
    body = ("import time; from vpltool.config.pgseg import pgseg_recipe; from vpltool.stages.train_text import "
            f"run_train_text; run_train_text({str(world)!r}, {str(run)!r}, pgseg_recipe('cpu', **{SMALL!r}), "
            "on_iter=lambda i, r: time.sleep(0.5))")
    proc = subprocess.Popen(_script(body), env=_env())
    kill_at_checkpoint(proc, run / "checkpoints" / "last.safetensors", "pgseg-checkpoint", 4, seconds=120)
    assert not (run / "pgseg.safetensors").exists()
    s = run_train_text(world, run, _cfg(), resume=True)
    assert 4 <= s.start < 8 and s.iterations == 8
    a, b = _weights(whole), _weights(s.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


# DDP on 2 ranks x batch 2 against one process x batch 4: the same loss (each rank's rows against every rank's
# columns, the gradients of every rank's loss summed back through the gather, averaged by DDP), summed in another
# order (one step's gradients: 3.6e-7 at most, /tmp experiment on these weights)
DDP_ATOL = 1e-6


# what a rank of these runs imports, once, in the fork server its ranks are forked from (tests/cli_server.py): each
# rank otherwise paid ~5 CPU-s importing them (torch, dynamo for DistributedDataParallel, timm for the GroupViT,
# scipy for the matching) before its few iterations
RANK_PRELOAD = ("vpltool", "torch", "torch.distributed", "torch.nn.parallel", "torch._dynamo", "timm", "scipy.optimize",
                "vpltool.config", "vpltool.config.pgseg", "vpltool.stages.train_text", "vpltool.models.text.pgseg",
                "pgseg_stand_in")


def _rank_env() -> dict[str, str]:
    """The ranks' environment as far as a library reads it when it loads: the tests' (_env), with what torchrun's
    agent adds that the fork server compares (TORCH_*)."""
    return cli_server.rank_env({**_env(), "TORCH_NCCL_ASYNC_ERROR_HANDLING":
                                os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")})


@pytest.fixture(scope="module")
def rank_server(tmp_path_factory):
    """One fork server for every torchrun rank of this module (its CPU time counted when it is stopped)."""
    with cli_server.ScriptServer(tmp_path_factory.mktemp("rank_server") / "sock", _rank_env(), RANK_PRELOAD) as server:
        yield server


def _torchrun(script: Path, lines: list[str], server) -> subprocess.CompletedProcess:
    """``lines`` of Python (``script``, written) on 2 gloo ranks under torchrun, on this machine; it must exit 0.
    Each rank is ``script`` run by a fork of ``server`` (the libraries imported, no run made: a fresh rank), in
    the environment torchrun's agent gave it."""
    script.write_text("\n".join(["import faulthandler", "faulthandler.enable(all_threads=True)", *lines]) + "\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--no-python", *server.script_command(script)]
    done = subprocess.run(cmd, env=_rank_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-8000:]
    return done


def _train_line(world: Path, out: Path, cfg: dict, extra: str = "") -> str:
    return (f"run_train_text({str(world)!r}, {str(out)!r}, pgseg_recipe('cpu', **{cfg!r}), "
            f"RuntimeConfig(device='cpu', workers=1){extra})")


IMPORTS = ["from vpltool.config.pgseg import pgseg_recipe", "from vpltool.config import RuntimeConfig",
           "from vpltool.stages.train_text import run_train_text"]
REAL_DDP = dict(SMALL, batch_size=2, epochs=1)  # the real family under torchrun: 2 ranks x batch 2, 4 iterations
STAND_IN_DDP = dict(SMALL, batch_size=2)  # the stand-in's: 2 ranks x batch 2 against one process x batch 4


@pytest.fixture(scope="module")
def two_ranks(world, tmp_path_factory, rank_server) -> tuple[Path, str]:
    """One torchrun of 2 gloo ranks that two tests read (its start-up, 3 processes' imports, paid once): the real
    pgseg family's run that goes through (``whole``) and the same run stopped after its iteration-2 checkpoint
    (``cut``), then, the tests' stand-in family installed in the same ranks, its run at batch 2 (``ddp``). A run
    after another in the same ranks meets its peers under its own prefix (runtime.ranks). Returns the folder and
    torchrun's stderr."""
    root = tmp_path_factory.mktemp("two_ranks")
    done = _torchrun(root / "runs.py", [
        *IMPORTS, _train_line(world, root / "whole", REAL_DDP), _train_line(world, root / "cut", REAL_DDP,
                                                                            ", stop_after=2"),
        f"import sys; sys.path.insert(0, {str(TESTS)!r})", "import pgseg_stand_in", "pgseg_stand_in.install()",
        "pgseg_stand_in.NOISE = False", _train_line(world, root / "ddp", STAND_IN_DDP)], rank_server)
    return root, done.stderr


def test_torchrun_two_ranks_give_one_process_weights(world, tmp_path, family, two_ranks):
    root, stderr = two_ranks
    assert "Warning" not in stderr, stderr[-8000:]  # torch's FutureWarning of broadcast_buffers, per rank
    monkey = pytest.MonkeyPatch()
    monkey.setattr(pgseg_stand_in, "NOISE", False)
    try:
        one = run_train_text(world, tmp_path / "one", _cfg(batch_size=4)).model
    finally:
        monkey.undo()
    a, b = _weights(one), _weights(root / "ddp" / "pgseg.safetensors")
    gaps = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert max(gaps.values()) <= DDP_ATOL, gaps
    log = io.read_log(root / "ddp" / "log.jsonl")
    assert io.read_record(io.stage_record_path(root / "ddp"))["world_size"] == 2 and len(log) == 8


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_trains_and_refuses_bad_pairs_in_one_line(world, tmp_path, family):
    from vpltool.cli import app

    runner = CliRunner()
    args = ["--recipe", "cpu", "--batch-size", "4", "--epochs", "1", "--crop-size", "32", "--device", "cpu",
            "--workers", "1"]
    done = runner.invoke(app, ["train-pgseg", str(world), "-o", str(tmp_path / "run"), "--no-npr", *args])
    assert done.exit_code == 0, done.output
    assert "GroupViT, 16 pairs, 4 iterations" in done.output and (tmp_path / "run" / "pgseg.safetensors").is_file()
    _shard(tmp_path / "sh" / "00000.tar" if (tmp_path / "sh").mkdir() is None else None,
           {"k0": {"jpg": _jpeg(0), "txt": b""}})
    bad = runner.invoke(app, ["train-pgseg", str(tmp_path / "sh"), "-o", str(tmp_path / "run2"), *args])
    assert bad.exit_code == 2 and "00000.tar:k0: empty caption" in bad.output
    assert not (tmp_path / "run2").exists()


def test_train_text_family_pgseg_is_train_pgseg(world, tmp_path, family):
    """`train-pgseg` is the alias of `train-text --family pgseg`: the same options give the same weights, files and
    records (the stage a run folder records stays train-pgseg, so runs of either resume with the other)."""
    from vpltool.cli import app

    runner = CliRunner()
    args = ["--recipe", "cpu", "--batch-size", "4", "--epochs", "1", "--crop-size", "32", "--device", "cpu",
            "--workers", "1"]
    old = runner.invoke(app, ["train-pgseg", str(world), "-o", str(tmp_path / "old"), "--no-npr", *args])
    new = runner.invoke(app, ["train-text", str(world), "-o", str(tmp_path / "new"), "--family", "pgseg",
                              "--set", "npr=false", *args])
    assert old.exit_code == 0 and new.exit_code == 0, (old.output, new.output)
    a, b = _weights(tmp_path / "old" / "pgseg.safetensors"), _weights(tmp_path / "new" / "pgseg.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    records = [io.read_record(io.stage_record_path(tmp_path / d)) for d in ("old", "new")]
    assert records[0]["stage"] == records[1]["stage"] == "train-pgseg"
    assert records[0]["params"] == records[1]["params"] and records[0]["params"]["npr"] is False


def test_a_run_folder_of_before_train_text_resumes(world, tmp_path, family, one_thread):
    """A run folder written by `train-pgseg` before the trainer served every family (tests/assets/old_runs: its
    checkpoint at iteration 2, kind pgseg-checkpoint, its record's stage train-pgseg) resumes, and ends with the
    weights of a run of today's code that went through (within float rounding: below)."""
    import shutil

    run = tmp_path / "old"
    shutil.copytree(TESTS / "assets" / "old_runs" / "train_pgseg_stand_in", run)
    s = run_train_text(world, run, _cfg(), resume=True)
    assert s.start == 2 and s.iterations == 8 and s.model == run / "pgseg.safetensors"
    whole = run_train_text(world, tmp_path / "whole", _cfg()).model
    a, b = _weights(whole), _weights(s.model)
    # the asset's first two iterations ran on the CPU that wrote it: on another vector unit their float sums round
    # differently (3e-8 at most, measured on an AVX-512 EPYC), so equal within 1e-6, not bit for bit; a resume that
    # lost the optimiser's moments or restarted the schedule is off by the learning rate's order
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    from safetensors.torch import load_file

    start = load_file(TESTS / "assets" / "old_runs" / "train_pgseg_stand_in" / "checkpoints" / "last.safetensors")
    assert max(float((a[k] - start[f"model.{k}"]).abs().max()) for k in a) > 1e-3  # 6 steps move far beyond 1e-6


# ------------------------------------------------------------------------------------------------ the real family
def test_real_family_trains_groupvit_and_segment_takes_it(world, tmp_path):
    """The pgseg family's tiny GroupViT: 4 iterations from the world's pairs, then `segment --pgseg` by class names
    and `eval` of its folder."""
    from vpltool.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["train-pgseg", str(world), "-o", str(tmp_path / "run"), "--recipe", "cpu", "--no-npr",
                               "--batch-size", "4", "--epochs", "1", "--crop-size", "32", "--device", "cpu",
                               "--workers", "1"])
    assert done.exit_code == 0, done.output
    model = tmp_path / "run" / "pgseg.safetensors"
    seg = runner.invoke(app, ["segment", str(world), "--split", "val", "--pgseg", str(model), "--short-side", "32",
                              "-o", str(tmp_path / "seg"), "--device", "cpu"])
    assert seg.exit_code == 0, seg.output
    record = io.read_record(io.stage_record_path(tmp_path / "seg"))
    classes = (world / "classes.txt").read_text().split()
    assert record["classes"] == classes and record["count"] == 4 and record["params"]["bg_thresh"] == 0.95
    masks = [np.asarray(Image.open(tmp_path / "seg" / f"val_{i:06d}.png")) for i in range(4)]
    assert all(m.shape == (96, 96) and m.max() < len(classes) for m in masks)
    scored = runner.invoke(app, ["eval", str(tmp_path / "seg")])
    assert scored.exit_code == 0 and "mIoU" in scored.output, scored.output
    assert record["params"]["background"] == []  # the reference's: no background words unless asked

    # background words: more queries, whose pixels are background; a word that is a class is refused, unwritten
    words = runner.invoke(app, ["segment", str(world), "--split", "val", "--pgseg", str(model), "--short-side", "32",
                                "-o", str(tmp_path / "seg_bg"), "--device", "cpu", "--background", "sky,grass,wall"])
    assert words.exit_code == 0, words.output
    record = io.read_record(io.stage_record_path(tmp_path / "seg_bg"))
    assert record["classes"] == classes and record["params"]["background"] == ["sky", "grass", "wall"]
    assert all(np.asarray(Image.open(tmp_path / "seg_bg" / f"val_{i:06d}.png")).max() < len(classes) for i in range(4))
    clash = runner.invoke(app, ["segment", str(world), "--split", "val", "--pgseg", str(model), "-o",
                                str(tmp_path / "seg_clash"), "--device", "cpu", "--background", "sky,star"])
    assert clash.exit_code == 2 and "'star' is also a class" in clash.output, clash.output
    assert not (tmp_path / "seg_clash").exists()


def test_segment_pgseg_refuses_another_file_before_writing(world, tmp_path):
    from vpltool.cli import app

    other = io.write_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(2)}, kind="features", classes=[],
                             params={})
    done = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "--pgseg", str(other), "-o",
                                    str(tmp_path / "seg"), "--device", "cpu"])
    assert done.exit_code == 2 and "not a PGSeg checkpoint" in done.output, done.output
    assert not (tmp_path / "seg").exists()


def test_real_family_resume_is_bit_exact(world, tmp_path):
    """The family's tiny GroupViT (gumbel noise, drop path): stopped after iteration 2 (its checkpoint) and resumed
    gives the weights of the run that went through."""
    from vpltool.models.text import pgseg

    cfg = _cfg(npr=False, epochs=1, checkpoint_every=2)
    whole = run_train_text(world, tmp_path / "whole", cfg).model
    run_train_text(world, tmp_path / "cut", cfg, stop_after=2)
    s = run_train_text(world, tmp_path / "cut", cfg, resume=True)
    assert s.start == 2 and s.iterations == 4
    a, b = pgseg.load_checkpoint(whole)[1], pgseg.load_checkpoint(s.model)[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)



def test_init_at_another_crop_is_one_line(world, tmp_path):
    from vpltool.models.text import pgseg

    init = pgseg.save_checkpoint(tmp_path / "init.safetensors", pgseg.build_model(pgseg.tiny_config(img_size=48)))
    with pytest.raises(VplError, match="trains at 48 px .* pass --crop-size 48"):
        run_train_text(world, tmp_path / "run", _cfg(npr=False), init=init)
    assert not (tmp_path / "run").exists()


def test_an_empty_t_npr_selection_is_not_a_divergence():
    """T-NPR's closs is NaN when HRS keeps no row (the reference's mean over none) and gives no gradient: the run
    goes on; a non-finite gradient norm or contrastive loss stops it."""
    from vpltool.stages.train_text import diverged

    nan = float("nan")
    assert not diverged({"loss": nan, "contrastive": 2.0, "npr_text": nan}, 5.0)
    assert diverged({"loss": nan, "contrastive": nan}, 5.0)
    assert diverged({"loss": 2.0, "contrastive": 2.0}, float("inf"))
    assert diverged({"loss": nan}, 1.0) and not diverged({"loss": 1.0}, 1.0)  # GroupViT: the loss is contrastive


def test_torchrun_two_ranks_real_family_resumes_bit_exact(world, two_ranks, rank_server):
    """The pgseg family's tiny PGSeg (NPR on: gumbel noise, drop path, the text prototypes gathered across ranks)
    under torchrun, 2 gloo ranks x batch 2: a run stopped after its iteration-2 checkpoint and resumed gives the
    weights of the run that went through. (Not compared with one process at batch 4: on the CPU the projectors'
    BatchNorm keeps per-rank statistics and each rank draws its own noise, so those weights differ by design.)"""
    from vpltool.models.text import pgseg

    root = two_ranks[0]  # the run that went through, and the one stopped early (the two_ranks fixture)
    assert not (root / "cut" / "pgseg.safetensors").exists()
    # the resume: fresh ranks, as after a preemption
    _torchrun(root / "resume.py", [*IMPORTS, _train_line(world, root / "cut", REAL_DDP, ", resume=True")], rank_server)
    a = pgseg.load_checkpoint(root / "whole" / "pgseg.safetensors")[1]
    b = pgseg.load_checkpoint(root / "cut" / "pgseg.safetensors")[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    record = io.read_record(io.stage_record_path(root / "whole"))
    assert record["world_size"] == 2 and record["model_config"]["npr"] is True
    log = io.read_log(root / "whole" / "log.jsonl")
    assert len(log) == 4 and all("npr_stage1" in r for r in log)

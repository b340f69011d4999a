"""Talk2DINO trained by the shared text trainer (`train-text --family talk2dino`): a run killed with -9 and resumed
gives the uninterrupted run's weights bit for bit, and two gloo ranks under torchrun give one process's weights at
the same global batch; on a tiny world with the toy DINO and the toy CLIP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cli_server
import pytest
import torch
from killed_runs import free_port, kill_at_checkpoint

from vpltool import io
from vpltool.config import RuntimeConfig
from vpltool.models.text.family import text_family
from vpltool.stages.train_text import run_train_text

REPO = Path(__file__).resolve().parents[1]
TOY_DINO = REPO / "vpltool" / "assets" / "toy-dino" / "model.safetensors"
# 16 pairs, batch 4, 2 epochs = 8 iterations at 32-px views (a 2x2 patch grid of the toy DINO)
SMALL = dict(batch_size=4, epochs=2, crop_size=32, log_every=1, checkpoint_every=2, dino_weights=str(TOY_DINO))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=16, n_val=2, seed=0)


def _cfg(**kw):
    return text_family("talk2dino").TrainConfig.recipe_config("demo", **{**SMALL, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return text_family("talk2dino").load_checkpoint(path)[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_kill_9_and_resume_gives_the_uninterrupted_weights(world, tmp_path, one_thread):
    whole = run_train_text(world, tmp_path / "whole", _cfg(), RuntimeConfig(device="cpu", workers=1)).model
    fresh = text_family("talk2dino").build_model(
        text_family("talk2dino").model_config(_cfg()), seed=_cfg().seed).state_dict()
    assert any(not torch.equal(fresh[k], _weights(whole)[k]) for k in fresh)  # it learnt something
    run = tmp_path / "killed"
    body = ("import time; from vpltool.models.text.family import text_family; from vpltool.config import "
            "RuntimeConfig; from vpltool.stages.train_text import run_train_text; "
            f"cfg = text_family('talk2dino').TrainConfig.recipe_config('demo', **{SMALL!r}); "
            f"run_train_text({str(world)!r}, {str(run)!r}, cfg, RuntimeConfig(device='cpu', workers=1), "
            "on_iter=lambda i, r: time.sleep(0.5))")
    proc = subprocess.Popen([sys.executable, "-c", body], env=_env())
    kind = text_family("talk2dino").TrainConfig.CHECKPOINT_KIND
    kill_at_checkpoint(proc, run / "checkpoints" / "last.safetensors", kind, 4, seconds=180)
    assert not (run / "talk2dino.safetensors").exists()
    s = run_train_text(world, run, _cfg(), RuntimeConfig(device="cpu", workers=1), resume=True)
    assert 4 <= s.start < 8 and s.iterations == 8
    a, b = _weights(whole), _weights(s.model)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# what a rank imports, once, in the fork server its ranks are forked from (tests/cli_server.py; each rank otherwise
# paid ~6 CPU-s importing them before its few iterations)
RANK_PRELOAD = ("vpltool", "torch", "torch.distributed", "torch.nn.parallel", "torch._dynamo", "timm", "open_clip",
                "vpltool.config", "vpltool.stages.train_text", "vpltool.models.text.family",
                "vpltool.models.text.talk2dino")


@pytest.mark.slow  # two torchrun ranks (forks of a server) and their server
def test_torchrun_two_gloo_ranks_give_one_process_weights(world, tmp_path, one_thread):
    cfg = dict(SMALL, batch_size=2)
    script = tmp_path / "ddp.py"
    script.write_text("\n".join([
        "from vpltool.models.text.family import text_family", "from vpltool.config import RuntimeConfig",
        "from vpltool.stages.train_text import run_train_text",
        f"cfg = text_family('talk2dino').TrainConfig.recipe_config('demo', **{cfg!r})",
        f"run_train_text({str(world)!r}, {str(tmp_path / 'ddp')!r}, cfg, RuntimeConfig(device='cpu', workers=1))"]))
    # torchrun's agent starts each rank as a client of the server: the rank is a fork of it, in the agent's
    # environment for the rank (the server's load-time variables are the ranks', TORCH_* that torchrun sets too)
    env = cli_server.rank_env({**_env(), "TORCH_NCCL_ASYNC_ERROR_HANDLING":
                               os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")})
    with cli_server.ScriptServer(tmp_path / "sock", env, RANK_PRELOAD) as server:
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--no-python",
                               *server.script_command(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    one = run_train_text(world, tmp_path / "one", _cfg(batch_size=4), RuntimeConfig(device="cpu", workers=1)).model
    a, b = _weights(one), _weights(tmp_path / "ddp" / "talk2dino.safetensors")
    gaps = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert max(gaps.values()) <= 1e-6, gaps  # the same loss summed in another order
    assert io.read_record(io.stage_record_path(tmp_path / "ddp"))["world_size"] == 2
    # each rank kept the frozen features of its own share of the first epoch: every pair once, read in the second
    assert len(list((tmp_path / "ddp" / "cache" / "image").glob("*/*.safetensors"))) == 16


def test_a_resume_over_other_backbone_bytes_under_the_same_names_is_refused(world, tmp_path, one_thread):
    import shutil

    from safetensors.torch import load_file, save_file

    from vpltool.errors import VplError

    dino, run = tmp_path / "dino.safetensors", tmp_path / "run"
    shutil.copy(TOY_DINO, dino)
    cfg = _cfg(dino_weights=str(dino), epochs=1)
    run_train_text(world, run, cfg, RuntimeConfig(device="cpu", workers=1), stop_after=2)
    state = load_file(dino)
    state["cls_token"] = state["cls_token"] + 0.5  # other weights under the same name
    save_file(state, str(dino))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    with pytest.raises(VplError, match=r"last.safetensors: made with other settings or inputs \(the model's "
                                       r"dino_digest [0-9a-f]{12}… there, [0-9a-f]{12}… here"):
        run_train_text(world, run, cfg, RuntimeConfig(device="cpu", workers=1), resume=True)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before  # nothing written

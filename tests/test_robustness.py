"""Crash safety: a stage killed with SIGKILL mid-run leaves only complete files and resumes to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vpltool import io


def _extract_cmd(world: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vpltool", "extract", str(world), "-o", str(out), "--model", "vpl-test-vit",
            "--pretrained", "none", "--batch-size", "1", "--workers", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def big_world(tmp_path_factory) -> Path:
    from vpltool.demo.scenes import write_dataset

    return write_dataset(tmp_path_factory.mktemp("big"), n_train=40, n_val=1, seed=1)


def test_extract_killed_mid_run_resumes_to_the_same_features(big_world, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_extract_cmd(big_world, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(killed.glob("*.safetensors"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("extract finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert not (killed / io.STAGE_RECORD).exists()  # an interrupted stage never looks finished
    done = sorted(killed.glob("*.safetensors"))
    assert 3 <= len(done) < 41
    for path in done:  # every file that exists is complete and valid: temp names never look like outputs
        io.read_features(path)

    subprocess.run(_extract_cmd(big_world, killed), check=True, capture_output=True)
    subprocess.run(_extract_cmd(big_world, clean), check=True, capture_output=True)
    assert io.read_stage_record(killed, "extract")["count"] == 41
    for path in sorted(clean.glob("*.safetensors")):
        a, b = io.read_features(path), io.read_features(killed / path.name)
        assert torch.equal(a.dense, b.dense) and torch.equal(a.last_block_input, b.last_block_input)
    # a temp file the kill may leave behind is hidden (".<name>.<random>.tmp"): the visible files are exactly the
    # uninterrupted run's
    visible = lambda folder: sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert visible(killed) == visible(clean)

"""What the shared text trainer's kill -9 and torchrun tests share: killing a run once a checkpoint of a given
iteration is on disk, and a free port for a torchrun rendezvous."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from vpltool import io


def kill_at_checkpoint(proc: subprocess.Popen, checkpoint: Path, kind: str, iteration: int, seconds: float) -> None:
    """Wait (at most ``seconds`` of wall time) for ``checkpoint`` (a ``kind`` file) to record ``iteration`` or a
    later one, then SIGKILL ``proc``, as the OOM killer ends a run: no handler runs. Fails if ``proc`` ended first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.is_file() and io.read_checkpoint(checkpoint, header_only=True, kind=kind)[2].meta(
                "iteration") >= iteration:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (torchrun's --master-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["free_port", "kill_at_checkpoint"]

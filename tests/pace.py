"""How slow this machine is right now, so that the suite's hang bounds hold on a busy one.

A subprocess timeout in a test is there to catch a hang, not to time the code (speed targets are benchmarks, never
tests). A fixed number of seconds fails on a machine whose cores other jobs share: under a load of 5-8 on 2 cores
every command takes several times longer, and a test that starts a dozen processes at once loads the machine
itself. So a bound here is counted in *idle-machine seconds*: wall time divided by the current *pace*, how much
longer a fixed single-threaded workload takes now than on an idle core, re-measured while the test waits
(:class:`Budget`). A hang (a deadlock, a lost peer) still fails: its budget runs out at any pace, and the pace
itself is capped (:data:`MAX_PACE`).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

# the workload's median seconds on one idle core of the 2-core AMD EPYC the suite's bounds were set on
REFERENCE_S = 0.007
MAX_PACE = 30.0  # beyond this the machine is not busy but stalled: the bound stops stretching and a hang fails
_TTL_S = 15.0  # a measurement is reused this long (it costs ~0.05 s on an idle machine)
_last: tuple[float, float] | None = None  # (when, pace)


def _workload() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(100_000):
        total += i * i
    return time.perf_counter() - start


def pace() -> float:
    """How many times slower than an idle core this process runs now (1 to :data:`MAX_PACE`): the median of a few
    runs of a fixed workload over :data:`REFERENCE_S`, re-measured at most every 15 s."""
    global _last
    now = time.monotonic()
    if _last is None or now - _last[0] > _TTL_S:
        measured = statistics.median(_workload() for _ in range(7))
        _last = (now, min(MAX_PACE, max(1.0, measured / REFERENCE_S)))
    return _last[1]


def bound(seconds: float, cap: float | None = None) -> float:
    """``seconds`` (a bound measured on an idle machine) times the current :func:`pace`, for a bound that must be
    one number (a library's timeout argument); at most ``cap`` where a larger bound would stop meaning what the
    test checks (a fail-fast path against a slow one)."""
    scaled = seconds * pace()
    return min(scaled, cap) if cap is not None else scaled


class Budget:
    """``seconds`` of an idle machine, spent at the current pace: ``while not budget.expired(): ...``."""

    def __init__(self, seconds: float):
        self.seconds, self.left, self._at = seconds, seconds, time.monotonic()

    def expired(self) -> bool:
        now = time.monotonic()
        self.left -= (now - self._at) / pace()
        self._at = now
        return self.left < 0


def communicate(proc: subprocess.Popen, seconds: float, poll_s: float = 5.0) -> tuple[Any, Any]:
    """``proc.communicate()`` within a :class:`Budget` of ``seconds``; past it the process is killed and
    :class:`subprocess.TimeoutExpired` raised, as ``communicate(timeout=...)`` does."""
    budget = Budget(seconds)
    while True:
        try:
            return proc.communicate(timeout=poll_s)
        except subprocess.TimeoutExpired:  # retrying loses no output (the subprocess docs)
            if budget.expired():
                proc.kill()
                proc.communicate()
                raise subprocess.TimeoutExpired(proc.args, seconds) from None


def run(args: Any, seconds: float, check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(args, timeout=...)`` with the bound counted in idle-machine seconds (:func:`communicate`)."""
    capture = kwargs.pop("capture_output", False)
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    with subprocess.Popen(args, **kwargs) as proc:
        stdout, stderr = communicate(proc, seconds)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def wait(proc: subprocess.Popen, seconds: float, poll_s: float = 1.0) -> int:
    """``proc.wait()`` within a :class:`Budget` of ``seconds`` (TimeoutExpired past it; the caller kills)."""
    budget = Budget(seconds)
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            if budget.expired():
                raise subprocess.TimeoutExpired(proc.args, seconds) from None


__all__ = ["REFERENCE_S", "Budget", "bound", "communicate", "pace", "run", "wait"]

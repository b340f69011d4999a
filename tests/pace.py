"""How slow this machine is right now, so that the suite's hang bounds hold on a busy one.

A subprocess timeout in a test is there to catch a hang, not to time the code (speed targets are benchmarks, never
tests). A fixed number of seconds fails on a machine whose cores other jobs share: under a load of 5-8 on 2 cores
every command takes several times longer. :func:`bound` scales a bound measured on an idle machine by the current
*pace*: how much longer a fixed single-threaded workload takes now than it took on an idle core.
"""

from __future__ import annotations

import statistics
import time

# the workload's median seconds on one idle core of the 2-core AMD EPYC the suite's bounds were set on
REFERENCE_S = 0.007
MAX_PACE = 30.0  # beyond this the machine is not busy but stalled: the bound stops growing and a hang still fails
_TTL_S = 30.0  # a measurement is reused this long (it costs ~0.1 s on an idle machine)
_last: tuple[float, float] | None = None  # (when, pace)


def _workload() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(100_000):
        total += i * i
    return time.perf_counter() - start


def pace() -> float:
    """How many times slower than an idle core this process runs now (>= 1): the median of a few runs of a fixed
    workload over :data:`REFERENCE_S`, re-measured at most every 30 s."""
    global _last
    now = time.monotonic()
    if _last is None or now - _last[0] > _TTL_S:
        measured = statistics.median(_workload() for _ in range(7))
        _last = (now, min(MAX_PACE, max(1.0, measured / REFERENCE_S)))
    return _last[1]


def bound(seconds: float, cap: float | None = None) -> float:
    """``seconds`` (a hang bound measured on an idle machine) times the current :func:`pace`; at most ``cap``
    where a larger bound would stop meaning what the test checks (a fail-fast path against a slow one)."""
    scaled = seconds * pace()
    return min(scaled, cap) if cap is not None else scaled


__all__ = ["REFERENCE_S", "bound", "pace"]

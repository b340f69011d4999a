"""Two long-lived processes timed in alternation: the worker loop each side runs (:func:`serve`) and the driver's
handle on one (:class:`Side`). Imported by ``bench_vs_reference.py`` and its reference half ``vs_reference_ref.py``;
it imports nothing from vpltool, so a reference's process never meets vpltool's modules.

A worker builds its models once, then answers one line per command on a private copy of its stdout (its own
``sys.stdout`` and file descriptor 1 go to stderr, so a reference's prints cannot corrupt the protocol):

* ``run``: one unit of work; answers ``{"cpu": s, "wall": s, "rss_peak_mib": MiB, "unit_rss_peak_mib": MiB}``,
  the process's CPU-seconds (user + sys, every thread: ``time.process_time``), the wall time of the unit alone, the
  process's peak resident memory so far (:func:`peak_rss_mib`: its building included) and the peak during the unit
  alone (Linux's peak reset before it, :func:`reset_peak`; None where it cannot be reset);
* ``save PATH``: ``torch.save`` of what the last unit returned (the driver compares the two sides' outputs);
* any word of the worker's own ``commands`` (:func:`serve`): that function's dict as one JSON line (untimed work
  after the timed units: :meth:`Side.ask`);
* ``flops`` (where ``commands`` has no word of that name): one more unit, untimed, under torch's FLOP counter
  (:func:`count_flops`), answered ``{"gflop", "by_op_gflop"}``: the arithmetic a bench's floor is made of;
* ``quit``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

_PROTO: list = []


def claim_stdout() -> None:
    """Keep a private copy of stdout for the protocol and send everything else written there to stderr: call it
    first in a worker, before anything that may print (a clone's module prints as it is imported)."""
    if not _PROTO:
        sys.stdout.flush()
        _PROTO.append(os.fdopen(os.dup(1), "w", buffering=1))
        os.dup2(2, 1)
        sys.stdout = sys.stderr


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB: Linux's ``VmHWM`` of its own address space (``ru_maxrss`` would
    count the parent's resident memory at the fork that started it), None where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return round(kib / 1024, 1)


def reset_peak() -> bool:
    """Set this process's ``VmHWM`` back to its resident memory now (``/proc/self/clear_refs`` given 5, Linux 4.0
    on), so that the next :func:`peak_rss_mib` is the peak since; False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``; nothing elsewhere): what a model's
    loading freed (a checkpoint read whole, then copied into the model) no longer counts in the resident memory."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def count_flops(fn) -> tuple[object, dict]:
    """One call of ``fn`` under torch's ``FlopCounterMode``: its output and ``{"gflop", "by_op_gflop"}`` (per op,
    rounded to 1e-3), the multiply-adds (x2) of every matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``),
    convolution (transposed too) and attention (``q kᵀ`` and ``· v``) it dispatched, from their shapes; all other
    work counts 0. The CPU's
    fused attention (``_scaled_dot_product_flash_attention_for_cpu``, what ``F.scaled_dot_product_attention`` runs
    on a CPU) is missing from torch's table, so it is given SDPA's formula here, and oneDNN's and MKL's packed linear
    layers (vpltool's products; the reference runs none) theirs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *_, out_shape=None, **__) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def linear(x_shape, w_shape, *_, out_shape=None, **__) -> int:  # oneDNN's (x, w, ...): vpltool's products
        return 2 * math.prod(x_shape) * w_shape[0]

    def mkl_linear(x_shape, _packed, w_shape, *_, out_shape=None, **__) -> int:  # MKL's packed (x, packed, w, ...)
        return 2 * math.prod(x_shape) * w_shape[0]

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa,
               torch.ops.mkldnn._linear_pointwise: linear}
    if hasattr(torch.ops.mkl, "_mkl_linear"):
        mapping[torch.ops.mkl._mkl_linear] = mkl_linear
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        out = fn()
    by_op = counter.get_flop_counts().get("Global", {})
    return out, {"gflop": counter.get_total_flops() / 1e9,
                 "by_op_gflop": {str(k): round(v / 1e9, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def serve(unit: Callable[[], object], trim: bool = False,
          commands: dict[str, Callable[[], dict]] | None = None) -> None:
    """Answer the driver's commands (module docstring) with ``unit``, a function of no argument doing one unit;
    ``trim``: :func:`trim_heap` once first (both sides of a bench alike); ``commands``: more words, each answered
    with its function's dict as one JSON line."""
    if trim:
        trim_heap()
    claim_stdout()
    proto = _PROTO[0]
    print("ready", file=proto)
    out, before = None, peak_rss_mib()  # the peak so far (the building's), kept across the resets
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            before = max(before or 0.0, peak_rss_mib() or 0.0)
            reset = reset_peak()
            cpu, wall = time.process_time(), time.perf_counter()
            out = unit()
            cpu, wall, peak = time.process_time() - cpu, time.perf_counter() - wall, peak_rss_mib()
            print(json.dumps({"cpu": cpu, "wall": wall, "rss_peak_mib": max(before, peak or 0.0) or None,
                              "unit_rss_peak_mib": peak if reset else None}), file=proto)
        elif cmd.startswith("save "):
            import torch

            torch.save(out, cmd[5:])
            print("saved", file=proto)
        elif cmd in (commands or {}):
            print(json.dumps(commands[cmd]()), file=proto)
        elif cmd == "flops":
            print(json.dumps(count_flops(unit)[1]), file=proto)
        elif cmd == "quit":
            return


class Side:
    """One worker process (``cmd``), its stderr in ``log``; :meth:`run` times one unit there."""

    def __init__(self, name: str, cmd: list, log: Path, env: dict):
        self.name, self.log = name, log
        self._err = open(log, "w")
        self.proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, env=env, text=True, bufsize=1)
        self._expect("ready")

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log.read_text()[-3000:]
            raise SystemExit(f"the {self.name} worker ended ({self.proc.returncode}):\n{tail}")
        return line.strip()

    def _expect(self, word: str) -> None:
        line = self._line()
        if line != word:
            raise SystemExit(f"the {self.name} worker said {line!r}, not {word!r}")

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        return json.loads(self._line())

    def ask(self, word: str) -> dict:
        """One of the worker's own commands (:func:`serve`'s ``commands``): its answer."""
        self.proc.stdin.write(f"{word}\n")
        return json.loads(self._line())

    def save(self, path: Path) -> None:
        self.proc.stdin.write(f"save {path}\n")
        self._expect("saved")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait()
        self._err.close()


def alternate(first: Side, second: Side, pairs: int) -> list[dict]:
    """One warm-up unit each, then ``pairs`` pairs, the order swapped every pair (``first`` leads the even ones) so
    that a drift of the machine's load falls on both sides alike. Returns per pair ``{side name: timing}``; each
    unit's timing is also written to stderr as it comes (a run whose worker is killed keeps what it measured)."""
    for side in (first, second):
        print(json.dumps({"warm_up": side.name, **side.run()}), file=sys.stderr, flush=True)
    rows = []
    for i in range(pairs):
        order = (first, second) if i % 2 == 0 else (second, first)
        rows.append({side.name: side.run() for side in order})
        print(json.dumps({"pair": i, **rows[-1]}), file=sys.stderr, flush=True)  # kept if a side dies later
    return rows


def _made_by(path: Path) -> Path:
    """Where the worker arguments that made a side's saved outputs ``path`` are recorded (beside them)."""
    return path.with_name(path.stem + ".args.json")


def save_outputs(side: Side, path: Path, common: list) -> None:
    """``side``'s outputs saved to ``path``, and beside them the worker arguments that made them (method, settings,
    photos, model: ``common``), which a later run that reads them checks (:func:`check_outputs`)."""
    side.save(path)
    _made_by(path).write_text(json.dumps([str(a) for a in common]))


def check_outputs(path: Path, common: list) -> None:
    """That the outputs saved at ``path`` were made with the worker arguments ``common`` (:func:`save_outputs`);
    one line naming the file otherwise (another method's or settings' outputs in the same ``--work`` would be
    compared with this run's)."""
    record = _made_by(path)
    if not path.is_file():
        raise SystemExit(f"{path} missing: no earlier run's outputs to compare with; run both sides")
    made = json.loads(record.read_text()) if record.is_file() else None
    if made != [str(a) for a in common]:
        why = "no record of the run that made them" if made is None else \
            "made by a run with other arguments: " + ", ".join(sorted(set(made) ^ {str(a) for a in common}))[:200]
        raise SystemExit(f"{path}: {why}; run both sides (leave --reference-from out)")


def race(script: str, common: list, work: Path, env: dict, pairs: int,
         after: dict[str, Callable[[Side], None]] | None = None) -> tuple[list[dict], object, object]:
    """A side-by-side bench's two workers (``script --worker vpltool|reference *common``, their logs in ``work``)
    timed in ``pairs`` alternating pairs, the reference first (:func:`alternate`); returns those rows and each
    side's outputs (vpltool's, then the reference's), saved to ``work`` and read back. ``after``: per side name, a
    function given that side once its outputs are saved (untimed work: :meth:`Side.ask`). Both workers are closed
    whatever happens."""
    import torch

    ours = Side("vpltool", [sys.executable, script, "--worker", "vpltool", *common], work / "vpltool.log", env)
    ref = Side("reference", [sys.executable, script, "--worker", "reference", *common], work / "reference.log", env)
    try:
        rows = alternate(ref, ours, pairs)
        for side in (ours, ref):
            save_outputs(side, work / f"{side.name}_out.pt", common)
        for side in (ref, ours):
            (after or {}).get(side.name, lambda _: None)(side)
    finally:
        ours.close()
        ref.close()
    return rows, torch.load(work / "vpltool_out.pt"), torch.load(work / "reference_out.pt")


def one_at_a_time(script: str, common: list, work: Path, env: dict, pairs: int,
                  names: tuple[str, ...] = ("reference", "vpltool"),
                  after: dict[str, Callable[[Side], None]] | None = None) -> tuple[list[dict], object, object]:
    """:func:`race`'s rows and outputs with one worker alive at a time (where two models do not fit in memory):
    the reference's worker does its warm-up unit and ``pairs`` units, then is closed, then vpltool's the same. The
    sides do not alternate: a drift of the machine's load falls on one side alone (say so beside the figure).
    ``names`` without ``"reference"``: vpltool's side alone, the reference's outputs read from ``work`` as an
    earlier run of the same worker arguments left them (:func:`check_outputs`; its rows are the caller's). ``after``:
    as :func:`race`'s, before that side is closed."""
    import torch

    if "reference" not in names:  # before vpltool's side runs: outputs of another run would be compared silently
        check_outputs(work / "reference_out.pt", common)
    rows: list[dict] = [{} for _ in range(pairs)]
    for name in names:
        side = Side(name, [sys.executable, script, "--worker", name, *common], work / f"{name}.log", env)
        try:
            print(json.dumps({"warm_up": name, **side.run()}), file=sys.stderr, flush=True)
            for row in rows:
                row[name] = side.run()
                print(json.dumps({"unit": name, **row[name]}), file=sys.stderr, flush=True)
            save_outputs(side, work / f"{name}_out.pt", common)
            (after or {}).get(name, lambda _: None)(side)
        finally:
            side.close()
    return rows, torch.load(work / "vpltool_out.pt"), torch.load(work / "reference_out.pt")


__all__ = ["claim_stdout", "peak_rss_mib", "reset_peak", "trim_heap", "serve", "Side", "alternate", "race",
           "one_at_a_time", "save_outputs", "check_outputs"]

"""The ranks of a ``torchrun`` launch (or of a job script that sets ``RANK`` and ``WORLD_SIZE``): how a command runs
on them, across GPUs and nodes.

Every command is one of three kinds (:data:`SPLIT`, :data:`ONE`, :data:`ALL`; the CLI says which, see
:func:`vpltool.cli.errors._on_ranks`, which every command goes through):

* :data:`SPLIT`, the per-image stages (those with ``--shard``: extract, cam, crf, predict, ...): rank r of n runs
  shard r/n of the items (:func:`vpltool.device.shard_from_env`, :class:`vpltool.io.StageFolder`); the last shard to
  finish writes ``_stage.json``;
* :data:`ONE`, every other stage (learn-prototypes, eval, report, ...): rank 0 runs it, the others say so in one
  line and wait for it;
* :data:`ALL`: train-decoder, data-parallel over every rank (it joins the group itself, :func:`process_group`).

Under torchrun (``MASTER_ADDR``/``MASTER_PORT`` set) a command of the first two kinds joins a gloo group of the
ranks (:func:`command_group`) and ends with a barrier, so that all ranks leave together: the next command of a job
script never starts on one node while the last one still writes on another. A rank that dies closes its
connections, so the barrier of the others fails at once; they say so in one line and exit 2 (a non-zero exit also
spares torchrun's agent its 300 s wait for the dead node). Without ``MASTER_ADDR`` (``RANK``/``WORLD_SIZE`` from a
job script; ``srun`` waits for every task) the per-image stages split all the same and the other stages run on
rank 0 only, with no group.

A bad input fails every rank with the same line; under torchrun the first rank of each node prints it and the
others of that node exit 2 silently (:func:`error_said_once`), while a line only one rank has is printed by it.

Several commands may run one after the other in one torchrun worker (``torchrun ... --no-python bash
pipeline.sh``): each command's group lives under its own prefix of the agent's store (the count of commands this
rank ran so far, the same on every rank), so no command reads another's keys.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device, torchrun_rank
from ..errors import VplError

SPLIT, ONE, ALL = "split", "one", "all"  # how a command runs on the ranks (module doc)
# how long the ranks wait for each other to start: torchrun starts them within seconds, a busy Slurm allocation within
# minutes; a rank whose peers never come (a stale RANK in a shell) fails after this, not after torch's 30 minutes
RENDEZVOUS_S = 300
# how long a rank that finished its part waits for the others at the end of a command: a peer that dies is noticed at
# once (its connections close), so this only bounds a peer that hangs alive; it must cover the longest part of a
# command on a slow node (the whole of learn-prototypes on rank 0, a shard's CRF on a CPU node)
PEER_WAIT_S = 24 * 3600
_CALLS = "vpltool/calls/{rank}"  # per-rank count of the commands run in this torchrun worker (the group's prefix)
# how long a torchrun rank that fails waits to learn whether its node's first rank failed with the same line (the same
# bad input fails every rank within a second of each other); a rank whose failure is its own (a bad image in its
# shard) prints its line this much later
ECHO_WAIT_S = 10
_ERROR_KEY = "vpltool/error/{restart}/{node}/{digest}"  # in the agent's store: when a node's first rank failed


def in_group() -> tuple[int, int] | None:
    """``(rank, world)`` when this process is one of several ranks that can meet (torchrun: ``MASTER_ADDR`` and
    ``MASTER_PORT`` set), else None (one process, or a job script's ranks, which have no address to meet at)."""
    env = torchrun_rank()
    if env is None or env[1] == 1 or not all(os.environ.get(v, "").strip() for v in ("MASTER_ADDR", "MASTER_PORT")):
        return None
    return env


def runs_here(kind: str) -> bool:
    """Whether this rank runs the body of a command of ``kind``: every rank but for :data:`ONE`, which runs on
    rank 0 only (or in one process)."""
    env = torchrun_rank()
    return kind != ONE or env is None or env[0] == 0


def waiting_line(kind: str, command: str) -> str | None:
    """The one line a rank prints that does not run a command of ``kind`` (:func:`runs_here`), else None."""
    env = torchrun_rank()
    if runs_here(kind) or env is None:
        return None
    then = "this rank waits for it" if in_group() else "nothing to do here"
    return f"rank {env[0]} of {env[1]}: `vpltool {command}` runs on rank 0 only; {then}"


@contextlib.contextmanager
def command_group(kind: str) -> Iterator[bool]:
    """Around one command of ``kind`` (:data:`SPLIT` or :data:`ONE`): yields whether this rank runs its body
    (:func:`runs_here`); under torchrun the ranks meet in a gloo group first and at a barrier after the body (which
    waits up to :data:`PEER_WAIT_S` for a slow peer), and a rank whose peer died (the barrier breaks at once) raises
    a one-line :class:`VplError`. A body that fails leaves at once: its own message is the one to read, and the
    others' barrier breaks on its exit."""
    here = runs_here(kind)
    if in_group() is None:
        yield here
        return
    import torch.distributed as dist

    # the group's own timeout, not only the barrier's: a rank other than 0 waits for rank 0 in a receive that
    # keeps the group's timeout (gloo), whatever the barrier's says
    with process_group("cpu", timeout=PEER_WAIT_S, leave_together=False) as (rank, world, _):
        yield here
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=PEER_WAIT_S))
        except (RuntimeError, dist.DistError) as e:  # gloo: "Connection closed by peer" (a DistBackendError)
            raise VplError(peer_lost(rank, world, e)) from None


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, this process sees no ranks (``RANK``, ``WORLD_SIZE`` unset; restored after): a :data:`ONE` command
    runs whole on rank 0, so that a stage folder it writes (:class:`vpltool.io.StageFolder`, which takes its shard
    from the rank) holds every item, not rank 0's shard of them."""
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def error_said_once(line: str) -> bool:
    """Whether this torchrun rank keeps the error ``line`` to itself, because the first rank of its node
    (``LOCAL_RANK`` 0: rank 0 on one node) prints the same line: the same bad input fails every rank, and one line
    says it. The first rank of a node records when it failed with ``line`` in torchrun's agent store and prints it;
    any other rank waits up to :data:`ECHO_WAIT_S` seconds for that record and stays silent if it finds one from the
    same moment, so a line that only this rank has (a bad image in its shard, a file missing on its node) is still
    printed. Outside torchrun, or if the store cannot be reached, every rank prints (False)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or torchrun_rank() is None:
        return False
    import hashlib
    import time

    import torch.distributed as dist

    now = time.time()
    key = _ERROR_KEY.format(restart=os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
                            node=os.environ.get("GROUP_RANK", "0"),
                            digest=hashlib.sha256(line.encode()).hexdigest()[:16])
    leader = os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=ECHO_WAIT_S))
        if leader:
            store.set(key, repr(now))
            return False
        while time.time() - now < ECHO_WAIT_S:
            # a record older than the wait is an earlier command's (several commands in one worker)
            if store.check([key]) and abs(float(store.get(key)) - now) < ECHO_WAIT_S:
                return True
            time.sleep(0.05)
    except (RuntimeError, ValueError, KeyError, OSError):  # no store to meet at (the agent gone): say it here
        return False
    return False


def peer_gone(e: BaseException) -> bool:
    """Whether torch raised ``e`` because a peer rank is gone (its process died, its connection closed)."""
    import torch.distributed as dist

    text = str(e).lower()
    return isinstance(e, dist.DistNetworkError) or any(
        what in text for what in ("connection closed by peer", "connection reset by peer", "broken pipe"))


def peer_lost(rank: int, world: int, e: BaseException,
              then: str = "re-run the same command on every node to resume") -> str:
    """The one line of a rank whose peer stopped during a collective (``e``: what torch raised; ``then``: how to
    go on)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    low = text.lower()
    if any(w in low for w in ("closed", "reset by peer", "broken pipe", "received errors while waiting")):
        why = "its connection closed"  # gloo's words for a peer that died, on either side of the barrier
    elif "failed to pass monitoredbarrier" in low:
        why = f"it did not answer within {PEER_WAIT_S} s"
    else:
        why = re.sub(r"^\[[^\]]*\]\s*", "", text)[:160]
    return (f"rank {rank} of {world}: another rank stopped before the end ({why}); what this rank finished is kept: "
            f"read the other rank's message, then {then}")


@contextlib.contextmanager
def process_group(device: str, timeout: float | None = None, leave_together: bool = True
                  ) -> Iterator[tuple[int, int, torch.device]]:
    """``(rank, world_size, device)``; under torchrun (``WORLD_SIZE`` > 1) joins the process group (env://): NCCL on
    CUDA, gloo on a CPU, under the prefix of this command (module doc).

    The environment is checked as the per-image stages check it (:func:`vpltool.device.torchrun_rank`), plus the
    rendezvous address torchrun sets; the ranks must meet within :data:`RENDEZVOUS_S` seconds; collectives time out
    after ``timeout`` seconds (None: torch's own 30 minutes). ``leave_together``: a barrier after the body (the
    caller may meet in its own). One line for each way it fails.
    """
    import torch.distributed as dist

    env = torchrun_rank()
    dev = resolve_device(device)
    if env is None or env[1] == 1:
        yield 0, 1, dev
        return
    rank, world = env
    local = int(os.environ.get("LOCAL_RANK", "0")) if os.environ.get("LOCAL_RANK", "0").isdigit() else 0
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        _bind_no_group()
        extra = {} if timeout is None else {"timeout": timedelta(seconds=timeout)}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=_rendezvous(rank, world),
                                rank=rank, world_size=world, **extra)
    try:
        yield rank, world, dev
        # leave together: a rank tearing the group down while rank 0 still writes could abort the run
        if created and leave_together:
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def _bind_no_group() -> None:
    """Import ``torch.distributed.nn`` before any group exists. Its ``functional`` module binds the world group of
    the moment as the default ``group`` of ten functions when it is first imported (DistributedDataParallel and
    ``torch._dynamo`` import it, the latter at an optimizer's first step): imported under a live group, those
    defaults keep the group alive after ``destroy_process_group``, and its gloo threads (``pt_gloo_runloop``,
    ``gloo_tcp_loop``) run on into the interpreter's exit instead of being joined when the command ends. Imported
    first, the defaults are None and the group ends with the command."""
    import torch.distributed.nn  # noqa: F401  (for its import-time defaults, above)


def _rendezvous(rank: int, world: int):
    """The ranks' store (env://: MASTER_ADDR, MASTER_PORT), met within :data:`RENDEZVOUS_S` seconds, under this
    command's prefix (module doc)."""
    import torch.distributed as dist

    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v, "").strip()]
    if missing:
        raise VplError(f"RANK={rank} WORLD_SIZE={world} are set but {' and '.join(missing)} not: launch with "
                       "torchrun (it sets them all), or unset RANK and WORLD_SIZE to train in one process")
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        with _quiet_c10d():
            store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timedelta(seconds=RENDEZVOUS_S)))
            call = store.add(_CALLS.format(rank=rank), 1)
    except (RuntimeError, ValueError) as e:  # DistStoreError / DistNetworkError (timeouts), a bad port
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        why = "no peer answered" if "timed out" in text.lower() else text[:160]  # else: a bad address, a port taken
        raise VplError(f"rank {rank} of WORLD_SIZE={world} did not meet its peers at {where} within {RENDEZVOUS_S} s "
                       f"({why}); start all {world} ranks (torchrun starts them together), or unset RANK and "
                       "WORLD_SIZE to run in one process") from None
    return dist.PrefixStore(f"vpltool/{call}/", store)


# what torch's C++ side writes on stderr for each failed connection attempt: a log line, then a stack
_C10D_LINE = re.compile(r"\[[EWI]\d|Exception raised from|frame #|<omitting python frames>|\s*$")


@contextlib.contextmanager
def _quiet_c10d() -> Iterator[None]:
    """Keep back what torch's C++ rendezvous logs on stderr (file descriptor 2) while the ranks meet: a stack trace
    per failed connection attempt, where the one line of :func:`_rendezvous` says it all. Other lines are replayed."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to quieten
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines() if not _C10D_LINE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")



def prepare_run_folder(out_dir: Path, checkpoint: Path, refusals: Sequence[tuple[Path, str]],
                       cleared: Sequence[Path], *, resume: bool, overwrite: bool, rank: int, world: int
                       ) -> Path | None:
    """A training run's folder before its first step, on every rank (train-decoder's and train-pgseg's).

    Without ``--resume`` or ``--overwrite`` the first of ``refusals`` ``(file, why)`` that exists is refused in one
    line (``"{out_dir}: {why}"``); with ``--overwrite`` (and not ``--resume``) rank 0 deletes ``cleared`` once every
    rank has checked. Returns the checkpoint to resume from, or None (a fresh start): ``--resume`` without a
    checkpoint starts afresh, so a preemptible job can always pass it.
    """
    import torch.distributed as dist

    if not overwrite and not resume:
        for path, why in refusals:
            if path.is_file():
                raise VplError(f"{out_dir}: {why}")
    if world > 1:
        dist.barrier()  # every rank checked before rank 0 deletes anything
    if overwrite and not resume and rank == 0:
        for path in cleared:
            path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    return checkpoint if resume and checkpoint.is_file() else None


def check_resumable(checkpoint, said: Sequence[str], inputs: Mapping[str, Any], input_options: Mapping[str, str],
                    world: int, batch_size: int) -> None:
    """Refuse to resume a training run from ``checkpoint`` (a :class:`vpltool.io.TensorFile`'s header) made with other
    settings, inputs or world size, naming every difference at once (a second try must not meet a second refusal):
    ``said``, the trainer's own (each option with its value there and here), then each input of ``inputs`` whose
    content differs from the checkpoint's record (:func:`vpltool.io.changed_inputs`, ``input_options`` naming the
    option of each), then the world size (the global batch, ``world x batch_size``, follows from it). Before
    anything is written: a refused resume leaves the folder as it was. Shared by train-decoder and train-pgseg."""
    from ..io import changed_inputs

    said = [*said, *changed_inputs(checkpoint.meta("inputs"), inputs, input_options)]
    was = checkpoint.meta("world_size", None)
    if was is not None and was != world:
        said.append(f"{was} process(es) there (global batch {was * batch_size}), {world} here (global batch "
                    f"{world * batch_size}): resume with the same torchrun --nproc-per-node")
    if said:
        raise VplError(f"{checkpoint.path}: made with other settings or inputs ({'; '.join(said)}); resume with the "
                       "same options and inputs, or start again without --resume (with --overwrite)")


__all__ = ["SPLIT", "ONE", "ALL", "RENDEZVOUS_S", "PEER_WAIT_S", "ECHO_WAIT_S", "in_group", "runs_here",
           "waiting_line", "command_group", "alone", "error_said_once", "peer_gone", "peer_lost", "process_group",
           "prepare_run_folder", "check_resumable"]

"""The shared per-image pipeline (vpltool/runtime/batches.py): planning, loading workers, OOM halving, the writer,
shards."""

from __future__ import annotations

import signal
import sys
import threading
import time

import pytest
import torch

from vpltool.config import WORKERS_MIN_IMAGES
from vpltool.device import shard_from_env
from vpltool.errors import ContractError, VplError
from vpltool.runtime.batches import (
    BackgroundWriter,
    BatchRunner,
    Ragged,
    load_batches,
    plan_batches,
    resolve_batch_size,
)


def test_plan_groups_equal_sizes_in_input_order():
    keys = ["a", "b", "a", "a", "b", "c", "a"]
    assert plan_batches(keys, 2) == [[0, 2], [1, 4], [3, 6], [5]]
    assert plan_batches(keys, 1) == [[i] for i in range(7)]  # batch size 1 keeps the input order
    assert sorted(i for b in plan_batches(keys, 3) for i in b) == list(range(7))


def test_auto_batch_size():
    assert resolve_batch_size(None, torch.device("cuda"), cpu_default=1) == 32
    assert resolve_batch_size(None, torch.device("cpu"), cpu_default=8) == 8
    assert resolve_batch_size(5, torch.device("cuda"), cpu_default=1) == 5


@pytest.mark.parametrize("workers", [1, 2])
def test_loading_workers_collate_planned_batches(workers):
    def load(i):
        return {"pixels": torch.full((2, 3), float(i)), "name": f"x{i}"}

    plan = [[0, 2], [1], [3]]
    batches = list(load_batches(4, plan, load, workers, torch.device("cpu")))
    assert [b["index"] for b in batches] == [[0, 2], [1], [3]]
    assert batches[0]["pixels"].shape == (2, 2, 3) and batches[0]["pixels"][1, 0, 0] == 2
    assert batches[0]["name"] == ["x0", "x2"]


@pytest.mark.parametrize("workers", [1, 2])
def test_tensors_of_several_shapes_cross_as_one_block(workers):
    """Photos of one network size but several decoded sizes (sent so when the device resizes them): one flat
    buffer per batch (one shared-memory block from a worker), read back as the same tensors, sliceable."""
    shapes = [(3, 4, 3), (2, 5, 3), (3, 4, 3)]

    def load(i):
        return {"pixels": torch.arange(torch.Size(shapes[i]).numel(), dtype=torch.uint8).view(shapes[i]) + i}

    (batch,) = list(load_batches(3, [[0, 1, 2]], load, workers, torch.device("cpu")))
    got = batch["pixels"]
    assert isinstance(got, Ragged) and len(got) == 3 and got.flat.dim() == 1
    for i, tensor in enumerate(got):
        assert torch.equal(tensor, load(i)["pixels"])
    part = got[1:]  # a slice is a Ragged over its part of the same buffer
    assert isinstance(part, Ragged) and [tuple(t.shape) for t in part] == shapes[1:]
    assert part.flat.data_ptr() == got.flat.data_ptr() + got[0].numel()
    assert torch.equal(got[-1], load(2)["pixels"]) and len(got[3:]) == 0
    assert [tuple(t.shape) for t in got[::2]] == [shapes[0], shapes[2]]


def test_a_workers_error_arrives_as_the_same_one_line():
    def load(i):
        if i == 1:
            raise ContractError("img_1.jpg: unreadable image (truncated); re-download or remove it from the split")
        return {"v": torch.zeros(1)}

    with pytest.raises(ContractError) as e:
        list(load_batches(3, [[0], [1], [2]], load, 2, torch.device("cpu")))
    assert str(e.value) == "img_1.jpg: unreadable image (truncated); re-download or remove it from the split"


def test_out_of_memory_halves_the_batch_and_the_run_goes_on():
    seen, warnings = [], []

    def fn(part: slice):
        if part.stop - part.start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        seen.append((part.start, part.stop))
        return part.stop - part.start

    runner = BatchRunner(8, describe=lambda i: f"img_{i}", warn=warnings.append)
    assert sum(runner(7, fn)) == 7
    assert [a for a, _ in seen] == [0] + [b for _, b in seen][:-1]  # contiguous, nothing skipped or repeated
    assert seen[-1][1] == 7 and runner.limit <= 2 and len(warnings) == 2  # 7 -> 3 -> 1: halved twice, kept


def test_an_image_that_does_not_fit_alone_is_one_line_naming_it():
    def fn(part: slice):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(VplError, match=r"img_0 \(500x375\): does not fit .* --max-side"):
        BatchRunner(4, describe=lambda i: f"img_{i} (500x375)")(3, fn)


def test_the_writer_writes_behind_and_hands_errors_back():
    written, done = [], []
    with BackgroundWriter(on_item=done.append) as writer:
        for i in range(5):
            writer.submit({"t": torch.tensor([i])},
                          lambda t: written.append((int(t["t"]), threading.current_thread().name)))
    assert sorted(w[0] for w in written) == list(range(5))  # several threads: any order, each batch once
    assert all(w[1].startswith("vpltool-writer") for w in written) and sum(done) == 5

    def fail(t):
        raise VplError("out.safetensors: no space left on device; free some space")

    with pytest.raises(VplError, match="no space left"):
        with BackgroundWriter() as writer:
            for _ in range(20):
                writer.submit({}, fail)


def test_the_writers_queue_holds_whole_batches_and_blocks_when_full():
    """``depth`` batches wait besides those being written; the next submit waits for the disk."""
    release, started = threading.Event(), threading.Event()

    def slow(t):
        started.set()
        release.wait(5)

    with BackgroundWriter(depth=1, threads=1) as writer:
        writer.submit({"t": torch.zeros(32, 4)}, slow, n=32)  # taken by the thread, blocked on the disk
        assert started.wait(5)
        writer.submit({"t": torch.zeros(32, 4)}, slow, n=32)  # waits in the queue
        third = threading.Thread(target=writer.submit, args=({"t": torch.zeros(32, 4)}, slow, 32))
        third.start()
        third.join(0.3)
        assert third.is_alive()  # the queue is full: the third batch waits
        release.set()
        third.join(5)
        assert not third.is_alive()


def _main_stack() -> list:
    """The code objects of the main thread's frames, innermost first."""
    frame, stack = sys._current_frames().get(threading.main_thread().ident), []
    while frame is not None:
        stack.append(frame.f_code)
        frame = frame.f_back
    return stack


def _main_thread_waits_in_close() -> bool:
    """Whether the main thread is inside :meth:`BackgroundWriter.close`, in threading's waiting code (a lock, an
    event, a join): blocked there until a writer thread moves."""
    stack = _main_stack()
    return bool(stack) and stack[0].co_filename == threading.__file__ and BackgroundWriter.close.__code__ in stack


def _until(condition, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_an_interrupt_while_close_waits_finishes_the_writes_in_hand_drops_the_queued_and_ends_every_thread():
    """Ctrl-C (a KeyboardInterrupt from a signal handler, as SIGINT and the CLI's SIGTERM raise it) made to land
    while ``close`` waits: two writes in hand, blocked on the disk, two queued. The interrupt propagates only once
    the writes in hand have finished, the queued ones are dropped, and no writer thread is left running (one left
    freeing a batch's tensors while the interpreter exits aborts the process, exit -6). ``Thread.join`` alone does
    not do it: on Python 3.11 a join that a signal interrupts marks a running thread as stopped."""
    release, in_hand, written = threading.Event(), threading.Semaphore(0), []
    interrupted = threading.Event()

    def blocked(name):
        def write(t):
            in_hand.release()
            release.wait(20)  # the disk, until the interrupt has landed and close waits again (or returned)
            written.append(name)
        return write

    def ctrl_c(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    def interrupt_close():  # on a helper thread: the signal, once the main thread waits in close
        if _until(_main_thread_waits_in_close):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
            _until(lambda: interrupted.is_set() and (_main_thread_waits_in_close()
                                                     or BackgroundWriter.close.__code__ not in _main_stack()))
        release.set()

    previous = signal.signal(signal.SIGUSR1, ctrl_c)
    helper = threading.Thread(target=interrupt_close, daemon=True)
    # depth 4: the queued writes and both end markers fit, so close waits on the threads, not for room
    writer = BackgroundWriter(threads=2, depth=4)
    try:
        for i in range(2):
            writer.submit({"t": torch.zeros(8)}, blocked(f"in hand {i}"))
        assert in_hand.acquire(timeout=20) and in_hand.acquire(timeout=20)  # both threads hold one
        for i in range(2):
            writer.submit({"t": torch.zeros(8)}, lambda t, i=i: written.append(f"queued {i}"))
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            writer.close()
        assert interrupted.is_set()
        assert sorted(written) == ["in hand 0", "in hand 1"]  # finished, not cut off; the queued ones dropped
        assert not any(t.is_alive() for t in writer._threads)
    finally:
        release.set()
        signal.signal(signal.SIGUSR1, previous)
        helper.join(20)
        for t in writer._threads:
            t.join(20)


def test_the_cuda_path_copies_a_batch_to_host_buffers_under_the_test_switch(monkeypatch):
    """``to_host`` on a CPU under VPLTOOL_TEST_CUDA_PATHS=1 runs the CUDA path: every tensor (lists too) copied to a
    host buffer of its own, one event for the batch; without the switch the CPU tensors pass as they are."""
    from vpltool.runtime.batches import to_host

    batch = {"maps": torch.arange(6.0).view(2, 3), "scores": [torch.ones(2), torch.zeros(3)], "n": 2, "none": None}
    host, event = to_host(batch)
    assert event is None and host["maps"] is batch["maps"]
    monkeypatch.setenv("VPLTOOL_TEST_CUDA_PATHS", "1")
    host, event = to_host(batch)
    event.synchronize()
    assert host["maps"] is not batch["maps"] and torch.equal(host["maps"], batch["maps"])
    assert host["maps"].untyped_storage().data_ptr() != batch["maps"].untyped_storage().data_ptr()
    assert [t.tolist() for t in host["scores"]] == [[1.0, 1.0], [0.0, 0.0, 0.0]]
    assert host["n"] == 2 and host["none"] is None


def test_workers_auto_is_one_per_core_up_to_12_on_cuda_and_2_on_a_cpu(monkeypatch):
    from vpltool.config import RuntimeConfig, stages

    monkeypatch.setattr(stages.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    auto = RuntimeConfig()
    assert auto.loader_workers(torch.device("cuda")) == 12 and auto.loader_workers(torch.device("cpu")) == 2
    assert auto.worker_count == 2  # crf and train-decoder keep their default
    assert RuntimeConfig(workers=0).loader_workers(torch.device("cuda")) == 16  # 0: every core, as asked
    assert RuntimeConfig(workers=3).loader_workers(torch.device("cuda")) == 3
    monkeypatch.setattr(stages.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert auto.loader_workers(torch.device("cuda")) == 4


def test_auto_workers_start_processes_only_for_a_run_of_enough_images(monkeypatch):
    """The one rule of the loaders and the CRF's processes (config.worker_count): auto is this process for a run of
    fewer than WORKERS_MIN_IMAGES images, CPU_WORKERS (or CUDA's loaders) from there; an explicit count is kept."""
    from vpltool.config import CPU_WORKERS, RuntimeConfig, stages, worker_count

    monkeypatch.setattr(stages.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert worker_count(None, WORKERS_MIN_IMAGES - 1) == 1 and worker_count(None, WORKERS_MIN_IMAGES) == CPU_WORKERS
    assert worker_count(None) == CPU_WORKERS and worker_count(3, 2) == 3 and worker_count(0, 2) == 16
    auto = RuntimeConfig()
    assert auto.loader_workers(torch.device("cuda"), WORKERS_MIN_IMAGES - 1) == 1
    assert auto.loader_workers(torch.device("cuda"), WORKERS_MIN_IMAGES) == 12
    assert RuntimeConfig(workers=2).loader_workers(torch.device("cpu"), 1) == 2


@pytest.mark.parametrize("workers, images, forks", [(None, WORKERS_MIN_IMAGES - 1, 0), (None, WORKERS_MIN_IMAGES, 2),
                                                    (2, 3, 2)])
def test_auto_loads_a_run_of_a_few_images_in_this_process(workers, images, forks):
    """A loading process is a fork of the process that holds the model: auto starts none for a run of fewer than
    WORKERS_MIN_IMAGES images (their decoding costs less than its start), the loaders of a longer run as before, and
    an explicit --workers is kept whatever the run's length."""
    import os

    from vpltool.config import RuntimeConfig
    from vpltool.runtime.batches import run_image_batches

    pids, forked = [], []
    os.register_at_fork(before=lambda: forked.append(1))  # (the hook outlives the test: it appends to its own list)
    run_image_batches([0] * images, lambda i: pids.append(os.getpid()) or {"i": i}, lambda batch: lambda part: {},
                      lambda index, t: None, torch.device("cpu"), RuntimeConfig(device="cpu", workers=workers),
                      str, batch_size=1)
    assert len(forked) == forks
    assert pids == ([os.getpid()] * images if forks == 0 else [])  # a worker's appends stay in the worker


def test_shard_from_torchrun_environment(monkeypatch):
    assert shard_from_env() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert shard_from_env() == (3, 8)
    assert shard_from_env((3, 8)) == (3, 8)  # --shard given by hand, and the same: fine
    with pytest.raises(VplError, match="--shard 1/2, but RANK=3 WORLD_SIZE=8"):  # which one was meant? refused
        shard_from_env((1, 2))
    monkeypatch.delenv("RANK")
    with pytest.raises(VplError, match="WORLD_SIZE=8 is set but RANK is not"):  # a half-set environment
        shard_from_env()
    monkeypatch.setenv("RANK", "1_0")  # Python's int reads 10; only plain digits are a rank
    with pytest.raises(VplError, match="not integers"):
        shard_from_env()
    for rank in ("9", "-1"):  # issue 38: -1 is an integer, out of range, not "not integers"
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(VplError, match=rf"RANK={rank} WORLD_SIZE=8: RANK must be in 0..WORLD_SIZE-1 \(0..7\)"):
            shard_from_env()
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(VplError, match="WORLD_SIZE=0 must be at least 1"):
        shard_from_env()


STUCK_WORKERS = """
import time, torch
from vpltool.runtime.batches import load_batches

def load(i):
    if i:
        time.sleep(120)  # a worker on a slow image (network storage, a huge file): it outlived its run by minutes
    return {"x": torch.zeros(1)}

for batch in load_batches(4, [[0], [1], [2], [3]], load, 2, torch.device("cpu")):
    print("first batch", flush=True)
    time.sleep(120)
"""


def test_loading_workers_die_with_their_run():
    """kill -9 of a run (the OOM killer's way) takes its DataLoader workers with it at once (PR_SET_PDEATHSIG):
    they neither hold its folder's lock (io.stage) nor keep working for nobody."""
    import os
    import signal
    import subprocess
    import sys

    import robustness_cases as rc  # tests/ is on sys.path

    proc = subprocess.Popen([sys.executable, "-c", STUCK_WORKERS], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "first batch"
        assert len(rc.session_processes(proc.pid)) == 3  # the run and its two workers, both asleep in load()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert rc.survivors(proc.pid) == []  # without the signal its workers would sleep on for 2 minutes


INTERRUPTED_CLOSE = """
import os, signal, sys, threading, time, torch
from vpltool.runtime.batches import BackgroundWriter

signal.signal(signal.SIGINT, signal.default_int_handler)  # a pytest-xdist worker's children inherit it ignored
written = threading.Event()

def write(host):
    time.sleep(0.5)  # the disk
    written.set()  # what is left: freeing the batch

batch = {"t": [torch.zeros(1) for _ in range(200_000)]}  # a batch that takes its thread a while to free
writer = BackgroundWriter(threads=1)
writer.submit(batch, write)
del batch
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while close waits on the write
try:
    writer.close()
except KeyboardInterrupt:
    written.wait()
    sys.exit(130)  # the run's exit, as the writer thread frees the batch (unless close waited for it)
"""


def test_a_run_interrupted_while_the_writer_closes_exits_130_not_aborted():
    """The whole failure in a process: Ctrl-C while ``close`` waits for a write, then the interpreter exits. A writer
    thread still freeing the batch's tensors then took the process down with C++'s "terminate called without an
    active exception" (exit -6, after the run's resume line); ``close`` now lets the interrupt out only once every
    thread has freed what it held."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_CLOSE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "terminate called" not in proc.stderr

"""The training loops wait for the device only at their reads (issue 28): train-decoder reads its losses at the log
lines, checkpoints and validations, learn-prototypes every READ_EVERY iterations and at the end. Counted on the CPU
with :class:`StallCounter` (the ops that would make a CUDA host wait), iteration by iteration."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from stalls import StallCounter

from vpltool.config import DecoderConfig, RuntimeConfig
from vpltool.errors import VplError
from vpltool.stages.learn_prototypes import ChunkBuilder, MemorySource, descend, make_targets, project_rows
from vpltool.stages.learn_prototypes import descent as descent_module
from vpltool.stages.train_decoder import LossWindow, run_train_decoder

TINY = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=8, log_every=4,
                     checkpoint_every=8, val_every=1000, warmup_iters=2, lr=0.05)
CPU = RuntimeConfig(device="cpu", workers=1)


def test_train_decoder_waits_only_at_its_reads(gt_pseudo, text_protos, tmp_path, monkeypatch):
    """Iterations 2..8 (1 includes the set-up): one wait at each read (4 and 8), none elsewhere; the checkpoint's
    own file checks (io's finiteness test of the tensors it writes) are left out by a stand-in."""
    import vpltool.stages.train_decoder as td

    saved = []
    monkeypatch.setattr(td, "save_checkpoint", lambda path, model, opt, n, *a: saved.append(n))
    totals = {}
    with StallCounter() as stalls:
        run_train_decoder(gt_pseudo, text_protos, tmp_path, TINY, CPU,
                          on_iter=lambda n, record: totals.__setitem__(n, stalls.total))
    per_iteration = {n: totals[n] - totals[n - 1] for n in range(2, TINY.iters + 1)}
    assert per_iteration == {2: 0, 3: 0, 4: 1, 5: 0, 6: 0, 7: 0, 8: 1}, stalls.counts
    assert saved == [8]


def test_train_decoder_with_rsc_and_cmpa_waits_only_at_its_reads(gt_pseudo, text_protos, tmp_path, monkeypatch):
    """CMPA's loss too (its bank refresh, every proto_every iterations, reads on purpose: not in iterations 2..3)."""
    import vpltool.stages.train_decoder as td

    monkeypatch.setattr(td, "save_checkpoint", lambda *a: None)
    totals = {}
    cfg = replace(TINY, iters=4, lambda_proto=0.1, proto_every=100)
    with StallCounter() as stalls:
        run_train_decoder(gt_pseudo, text_protos, tmp_path, cfg, CPU,
                          on_iter=lambda n, record: totals.__setitem__(n, stalls.total))
    assert [totals[n] - totals[n - 1] for n in (2, 3, 4)] == [0, 0, 1], stalls.counts


def test_loss_window_names_the_first_non_finite_iteration_and_spoilt_weights():
    window = LossWindow()
    for n, loss in ((5, 1.0), (6, math.inf), (7, math.nan)):
        window.add(n, {"loss": torch.tensor(loss), "ce": torch.tensor(0.5)})
    got = window.read()
    assert (got.iteration, got.diverged_at, got.bad["loss"], got.losses["ce"]) == (7, 6, math.inf, 0.5)
    window.add(8, {"loss": torch.tensor(2.0)})
    assert window.read().diverged_at is None  # the window was emptied by the read
    window.add(9, {"loss": torch.tensor(2.0)})
    spoilt = window.read(weights=[torch.ones(3), torch.tensor([1.0, math.nan])])
    assert spoilt.diverged_at == 9 and "weights" in spoilt.bad


# --------------------------------------------------------------------------------------------- learn-prototypes
def _problem(n_images: int = 6, hw: int = 32, d: int = 16, c: int = 3, m: int = 2):
    g = torch.Generator().manual_seed(0)
    z = project_rows(torch.randn(c + m, d, generator=g))
    source = MemorySource(torch.device("cpu"))
    builder = ChunkBuilder(torch.arange(c), torch.arange(c, c + m), 64, torch.float32, source.add)
    for i in range(n_images):
        x = F.normalize(torch.randn(hw, d, generator=g), dim=1)
        labels = (1 + i % c,)
        builder.add(x, make_targets(torch.rand(1, hw, generator=g), x, z[c:], 0.01, "hard", 0.4), labels)
    builder.flush()
    return source, z, n_images * hw


def test_learn_prototypes_descent_waits_only_every_read_every_iterations(monkeypatch):
    monkeypatch.setattr(descent_module, "READ_EVERY", 10)
    source, z, n = _problem()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU's chunk threads are a pool only with more than one thread
    totals = []
    try:
        with StallCounter() as stalls:
            _, curve = descend(source, z, tau=0.03, lr=10.0, iters=25, total_weight=n,
                               on_iter=lambda it, loss: totals.append(stalls.total))
    finally:
        torch.set_num_threads(threads)
    waits = [b - a for a, b in zip(totals, totals[1:])]  # the stalls during iteration it (1..24), by its end
    assert [it for it, w in enumerate(waits, start=1) if w] == [10, 20] and set(waits) == {0, 1}, stalls.counts
    assert stalls.total == 3  # reads after iterations 10 and 20, and the last one with the final loss
    assert len(curve) == 26 and all(math.isfinite(v) for v in curve) and curve[-1] < curve[0]


def test_learn_prototypes_names_the_first_non_finite_iteration(monkeypatch):
    monkeypatch.setattr(descent_module, "READ_EVERY", 10)
    source, z, n = _problem()
    real = descent_module.mean_loss_and_grad

    def spoilt_at_13(*args, **kwargs):  # the loss of W_13 is nan (what a blow-up leaves), the read comes at 20
        loss, grad = real(*args, **kwargs)
        spoilt_at_13.calls += 1
        return (loss * math.nan if spoilt_at_13.calls == 14 else loss), grad

    spoilt_at_13.calls = 0
    monkeypatch.setattr(descent_module, "mean_loss_and_grad", spoilt_at_13)
    with pytest.raises(VplError, match="loss became nan at iteration 13"):
        descend(source, z, tau=0.03, lr=10.0, iters=25, total_weight=n)
    assert spoilt_at_13.calls == 20  # stopped at the read after iteration 20, not at the end


# --------------------------------------------------------------------------------------------- on a GPU
def _sync_warnings_per_call(run, monkeypatch) -> dict[int, int]:
    """torch's own check on a GPU (``set_sync_debug_mode``: it also sees what StallCounter cannot, ``tolist``,
    ``.cpu()``, a list made a device tensor): the synchronising calls between consecutive ``on_iter`` calls."""
    import warnings

    marks: dict[int, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(lambda n, *rest: marks.__setitem__(n, len(caught)))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return {n: marks[n] - marks[n - 1] for n in sorted(marks) if n - 1 in marks}


@pytest.mark.cuda
def test_train_decoder_on_cuda_synchronises_only_at_its_reads(gt_pseudo, text_protos, tmp_path, monkeypatch):
    import vpltool.stages.train_decoder as td

    monkeypatch.setattr(td, "save_checkpoint", lambda *a: None)  # its copies to the host are no iteration's
    waits = _sync_warnings_per_call(lambda on_iter: run_train_decoder(
        gt_pseudo, text_protos, tmp_path, TINY, RuntimeConfig(device="cuda", workers=1), on_iter=on_iter),
        monkeypatch)
    assert [n for n, w in waits.items() if w] == [4, 8], waits  # the reads (iteration 1 includes the set-up)


@pytest.mark.cuda
def test_learn_prototypes_on_cuda_synchronises_only_at_its_reads(monkeypatch):
    monkeypatch.setattr(descent_module, "READ_EVERY", 10)
    source, z, n = _problem()
    source.chunks = [ch.to(torch.device("cuda")) for ch in source.chunks]
    waits = _sync_warnings_per_call(lambda on_iter: descend(source, z.cuda(), tau=0.03, lr=10.0, iters=25,
                                                            total_weight=n, on_iter=on_iter), monkeypatch)
    assert [it for it, w in waits.items() if w] == [10, 20], waits  # on_iter(it) comes before step it

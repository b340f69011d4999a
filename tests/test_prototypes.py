"""`learn-prototypes` (VPL phase 1): kernels on seeded toy problems, then the stage on tiny synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vpltool import io
from vpltool.config import LearnPrototypesConfig, RuntimeConfig
from vpltool.errors import ContractError, VplError
from vpltool.stages import learn_prototypes as prototypes
from vpltool.stages.learn_prototypes import (
    Chunk,
    ChunkBuilder,
    MemorySource,
    class_level_chunk,
    descend,
    loss_and_grad,
    make_targets,
    modality_gap,
    project_rows,
    run_learn_prototypes,
)

CPU = RuntimeConfig(device="cpu", precision="fp32")  # fp32 also on CPUs with AMX, where auto is bf16
CLASSES = ["background", "cat", "dog", "car"]


# --------------------------------------------------------------------------------------------- toy problems
def _clip_like(seed: int = 0, n_images: int = 12, hw: int = 64, d: int = 32, c: int = 3, m: int = 2):
    """Image features in one cone, text prototypes in another (CLIP's modality gap), 1-2 classes per image.

    Returns ``z`` ``[c + m, d]`` (class rows, then background rows) and ``[(x [hw, d], cams [K, hw], labels)]``
    with CAM-like maps: the true object pixels plus noise that crosses the 0.4 threshold now and then.
    """
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, c + m + 2, generator=g))[0].T
    u_img, u_txt, sem = basis[0], F.normalize(0.3 * basis[0] + basis[1], dim=0), basis[2:]
    z = F.normalize(0.8 * u_txt + 0.6 * sem, dim=1)
    images = []
    for _ in range(n_images):
        labels = sorted((torch.randperm(c, generator=g)[: 1 + int(torch.rand(1, generator=g) < 0.3)] + 1).tolist())
        owner = torch.randint(c, c + m, (hw,), generator=g)
        fg = torch.randperm(hw, generator=g)[: hw // 3]
        owner[fg] = torch.tensor(labels)[torch.randint(len(labels), (len(fg),), generator=g)] - 1
        x = F.normalize(0.8 * u_img + 0.4 * sem[owner] + 0.1 * torch.randn(hw, d, generator=g), dim=1)
        cams = (owner[None] == torch.tensor(labels)[:, None] - 1).float() * 0.8 + 0.5 * torch.rand(len(labels), hw,
                                                                                                  generator=g)
        images.append((x, cams.clamp(0, 1), labels))
    return z, images


def _chunks(z, images, c, mode="hard", threshold=0.4, chunk_px=4096, dtype=torch.float32):
    """A resident problem built the way the stage builds it; returns (source, pixel count)."""
    source = MemorySource(torch.device("cpu"))
    builder = ChunkBuilder(torch.arange(c), torch.arange(c, len(z)), chunk_px, dtype, source.add)
    for x, cams, labels in sorted(images, key=lambda it: (len(it[2]), it[2])):
        builder.add(x, make_targets(cams, x, z[c:], 0.01, mode, threshold), labels)
    builder.flush()
    return source, sum(len(x) for x, _, _ in images)


def _reference_loss(w, z, images, c, tau, mode="hard"):
    """The objective written naively per image with autograd: tau**2 * mean CE over each image's own rows."""
    w = w.clone().requires_grad_(True)
    total, n = 0.0, 0
    for x, cams, labels in images:
        rows = torch.cat([torch.tensor(labels) - 1, torch.arange(c, len(z))])
        t = make_targets(cams, x, z[c:], 0.01, mode)
        total = total - (t * (x @ w[rows].T / tau).log_softmax(1)).sum()
        n += len(x)
    loss = total / n
    (tau**2 * loss).backward()
    return loss.item(), w.grad


# --------------------------------------------------------------------------------------------- kernels
def test_chunked_loss_and_gradient_match_a_naive_per_image_reference():
    z, images = _clip_like()
    source, n = _chunks(z, images, 3, chunk_px=300)  # small chunks: mixed label sets under `absent` masks
    assert any(ch.absent is not None for ch in source.chunks)
    w = project_rows(z + 0.1 * torch.randn(z.shape))
    loss, grad = loss_and_grad(source(), w, 0.03, n)
    ref_loss, ref_grad = _reference_loss(w, z, images, 3, 0.03)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_loss_decreases_monotonically_with_the_default_lr():
    z, images = _clip_like()
    source, n = _chunks(z, images, 3)
    cfg = LearnPrototypesConfig()
    _, curve = descend(source, z, tau=cfg.tau_i, lr=cfg.lr, iters=200, total_weight=n)
    steps = torch.tensor(curve).diff()
    assert (steps <= 1e-9).all(), f"loss rose at iterations {(steps > 1e-9).nonzero().flatten().tolist()}"
    assert curve[-1] < 0.5 * curve[0]


def test_learned_prototypes_recover_the_ones_that_made_the_targets():
    g = torch.Generator().manual_seed(1)
    n_rows, d, tau = 10, 6, 0.03  # more rows than dims: with fewer, a common shift of unit rows is invisible
    w_true = project_rows(torch.randn(n_rows, d, generator=g))
    x = project_rows(w_true[torch.randint(n_rows, (600,), generator=g)] + 0.4 * torch.randn(600, d, generator=g))
    targets = (x @ w_true.T / tau).softmax(1)  # realizable soft targets: the optimum is w_true itself
    chunk = Chunk(x, targets, torch.arange(n_rows))
    start = project_rows(w_true + 0.5 * torch.randn(n_rows, d, generator=g))
    w, curve = descend(lambda: [chunk], start, tau=tau, lr=100.0, iters=300, total_weight=len(x))
    cos = (w * w_true).sum(1)
    assert cos.min() > 0.99, cos
    assert (start * w_true).sum(1).min() < 0.95  # it did have somewhere to go


def test_projection_keeps_unit_norms():
    w = project_rows(torch.randn(7, 16) * 5)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(7))
    z, images = _clip_like()
    source, n = _chunks(z, images, 3)
    learned, _ = descend(source, z, tau=0.03, lr=10.0, iters=5, total_weight=n)
    torch.testing.assert_close(learned.norm(dim=1), torch.ones(len(z)))


def test_hard_targets_threshold_the_cams_and_split_background_by_the_text_softmax():
    x = F.normalize(torch.randn(4, 8), dim=1)
    bg = F.normalize(torch.randn(2, 8), dim=1)
    cams = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.2, 0.3, 0.6, 0.39]])
    t = make_targets(cams, x, bg, 0.01, "hard", threshold=0.4)
    assert t.shape == (4, 4)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    assert t[0, :2].tolist() == [1.0, 0.0] and t[2, :2].tolist() == [0.0, 1.0]  # argmax among classes >= 0.4
    assert t[1, :2].sum() == 0 and t[3, :2].sum() == 0  # below the threshold: all background
    torch.testing.assert_close(t[1, 2:], (x[1] @ bg.T / 0.01).softmax(0))
    assert make_targets(cams, x, bg, 0.01, "hard", threshold=0.3)[3, 1] == 1.0


def test_soft_targets_are_cams_plus_a_background_score():
    x, bg = F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(1, 8), dim=1)
    cams = torch.tensor([[1.0, 0.5, 0.0]])
    t = make_targets(cams, x, bg, 0.01, "soft", bg_exponent=2.0)
    torch.testing.assert_close(t, torch.tensor([[1.0, 0.0], [0.5 / 0.75, 0.25 / 0.75], [0.0, 1.0]]))


def test_class_level_equals_instance_level_when_classes_are_compact():
    """Theorem 2's bound is tight at kappa = 0: every pixel equal to its class anchor gives the same loss."""
    g = torch.Generator().manual_seed(0)
    anchors = project_rows(torch.randn(4, 6, generator=g))  # rows 0-2 classes, row 3 the only background row
    source = MemorySource(torch.device("cpu"))
    builder = ChunkBuilder(torch.arange(3), torch.tensor([3]), 50, torch.float32, source.add)
    pairs, anchor_sum = {}, torch.zeros(4, 6, dtype=torch.float64)
    for labels in [(1,), (1, 2), (3,), (2, 3), (1,)]:
        rows = torch.tensor([k - 1 for k in labels] + [3])
        owner = torch.randint(len(rows), (20,), generator=g)
        x, t = anchors[rows[owner]], F.one_hot(owner, len(rows)).float()
        builder.add(x, t, labels)
        pairs[labels] = pairs.get(labels, 0) + (t.T @ t).double()
        anchor_sum.index_add_(0, rows, (t.T @ x).double())
    builder.flush()
    from vpltool.stages.learn_prototypes import Scan

    scan = Scan(100, 0.0, torch.zeros(3, 6), torch.zeros(3), anchor_sum, pairs)
    pseudo = class_level_chunk(scan, torch.arange(3), torch.tensor([3]))
    w = project_rows(anchors + 0.3 * torch.randn(4, 6, generator=g))
    inst_loss, inst_grad = loss_and_grad(source(), w, 0.05, 100)
    cls_loss, cls_grad = loss_and_grad([pseudo], w, 0.05, 100)
    assert cls_loss == pytest.approx(inst_loss, rel=1e-5)
    torch.testing.assert_close(cls_grad, inst_grad, rtol=1e-4, atol=1e-6)


def test_modality_gap_is_zero_for_text_and_shrinks_when_prototypes_move_to_their_regions():
    z = project_rows(torch.randn(3, 8))
    centroids = project_rows(torch.randn(2, 8))
    before = modality_gap(z, z, torch.arange(2), centroids, torch.tensor([5, 5]))
    after = modality_gap(torch.cat([centroids, z[2:]]), z, torch.arange(2), centroids, torch.tensor([5, 5]))
    assert before["frobenius"] == 0.0 and before["region"] > 0.5
    assert after["region"] == pytest.approx(0.0, abs=1e-6) and after["frobenius"] > 0.5


# --------------------------------------------------------------------------------------------- the stage
def _write_problem(root: Path, *, dim: int = 16, n_images: int = 6, grid=(4, 4), seed: int = 0,
                   classes=CLASSES, text_dim: int | None = None, background=("sky", "road")) -> dict[str, Path]:
    """`extract`, `cam` and `text-prototypes` outputs for a tiny synthetic dataset (16x16 px images)."""
    from vpltool.runtime.numerics import run_numerics

    g = torch.Generator().manual_seed(seed)
    made = run_numerics()  # synthetic: no --precision made them (dtype None goes with every run)
    feats, cams = root / "features", root / "cams"
    feats.mkdir(parents=True), cams.mkdir()
    c, model = len(classes) - 1, {"model": "synthetic", "pretrained": "none"}
    for i in range(n_images):
        labels = [1 + i % c] + ([1 + (i + 1) % c] if i % 3 == 0 else [])
        item = f"img_{i:02d}"
        io.write_tensors(io.feature_path(feats, item), {"dense": torch.randn(*grid, dim, generator=g).half()},
                         kind="features", classes=classes, id=item, image_size=[16, 16], input_size=[16, 16],
                         grid=list(grid), labels=labels, model=model, embed_dim=dim, numerics=made)
        io.write_cam(io.cam_path(cams, item), torch.rand(len(labels), 16, 16, generator=g), labels[::-1],
                     classes=classes, params={}, id=item, image_size=[16, 16], numerics=made)
    io.write_stage_record(feats, "extract", params={"model": model}, inputs={}, count=n_images, classes=list(classes),
                          numerics=made)  # what every stage records (the record and each item): dtype and mode
    text = root / "text.safetensors"
    d = text_dim or dim
    io.write_prototypes(text, io.Prototypes(
        project_rows(torch.randn(c + len(background), d, generator=g)),
        torch.cat([torch.arange(1, c + 1), torch.zeros(len(background), dtype=torch.long)]),
        list(classes[1:]) + list(background), classes=classes, temperature=0.01, source="text", model=model))
    io.write_stage_record(cams, "cam", params={"prototypes": {"sha256": io.sha256_file(text)}}, count=n_images,
                          inputs={"features": io.sha256_file(io.stage_record_path(feats))}, numerics=made)
    return {"features": feats, "cams": cams, "text": text}


@pytest.fixture
def problem(tmp_path) -> dict[str, Path]:
    return _write_problem(tmp_path / "in")


def _learn(problem, out, **cfg):
    kwargs = {k: cfg.pop(k) for k in ("stream", "plot") if k in cfg}
    cfg.setdefault("iters", 30)
    return run_learn_prototypes(problem["features"], problem["cams"], problem["text"], out,
                                LearnPrototypesConfig(**cfg), CPU, **kwargs)


def test_writes_a_prototypes_file_that_cam_accepts(problem, tmp_path):
    out = tmp_path / "vision.safetensors"
    summary = _learn(problem, out, plot=None)
    text = io.read_prototypes(problem["text"])
    vision = io.read_prototypes(out, classes=CLASSES, dim=16)
    assert vision.source == "vision" and vision.temperature == pytest.approx(0.03)
    assert vision.row_class.tolist() == text.row_class.tolist() and vision.row_names == text.row_names
    f = io.read_tensors(out, kind="prototypes")
    assert f.meta("text_prototypes")["sha256"] == io.sha256_file(problem["text"])
    assert f.meta("targets") == "hard" and f.meta("iterations") == 30 and f.meta("lr") == 10.0
    curve = f.meta("loss_curve")
    assert curve[0][0] == 0 and curve[-1][0] == 30 and curve[-1][1] == pytest.approx(f.meta("final_loss"), abs=1e-5)
    assert set(f.meta("gap_before")) == {"frobenius", "region"} and f.meta("gap_before")["frobenius"] == 0.0
    assert f.meta("gap_after")["frobenius"] > 0
    assert Path(summary["plot"]).name == "vision.loss.png" and Path(summary["plot"]).stat().st_size > 0
    assert summary["mode"] == "memory" and summary["n_pixels"] == 6 * 16


def test_tau_threshold_and_targets_options_change_the_result(problem, tmp_path):
    def learned(**cfg):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.safetensors"
        _learn(problem, out, plot=False, **cfg)
        return io.read_prototypes(out).vectors

    base = learned()
    for change in ({"tau_i": 0.05}, {"threshold": 0.55}, {"targets": "soft"}, {"regularization": "class"},
                   {"lr": 1.0}, {"iters": 10}):
        assert not torch.allclose(learned(**change), base, atol=1e-4), change
    with pytest.raises(VplError, match="--threshold 0.7: no pixel reached it"):  # no seed at all: said (issue 38)
        learned(threshold=0.7)


def test_pixel_fraction_samples_the_same_pixels_every_run(problem, tmp_path):
    half = _learn(problem, tmp_path / "a.safetensors", plot=False, pixel_fraction=0.5)
    _learn(problem, tmp_path / "b.safetensors", plot=False, pixel_fraction=0.5)
    full = _learn(problem, tmp_path / "c.safetensors", plot=False)
    assert half["n_pixels"] == 6 * 8 and full["n_pixels"] == 6 * 16  # 6 images of 16 patches
    vectors = [io.read_prototypes(tmp_path / f"{n}.safetensors").vectors for n in "abc"]
    assert torch.equal(vectors[0], vectors[1])  # seeded: reproducible
    assert not torch.allclose(vectors[0], vectors[2], atol=1e-4)  # and really a subset
    with pytest.raises(VplError, match="pixel-fraction"):
        _learn(problem, tmp_path / "d.safetensors", plot=False, pixel_fraction=0.0)


def test_sample_pixels_keeps_rows_aligned_and_in_order():
    x, hard = torch.arange(10.0)[:, None].repeat(1, 3), torch.arange(10)
    sx, sh = prototypes.sample_pixels((x, hard), 0.3, seed=0, index=4)
    assert len(sx) == 3 and torch.equal(sx[:, 0].long(), sh) and torch.equal(sh, sh.sort().values)
    assert len(prototypes.sample_pixels((x,), 0.01, seed=0, index=4)[0]) == 1  # never an empty image


def test_streaming_from_shards_matches_the_in_memory_path(problem, tmp_path, monkeypatch):
    monkeypatch.setitem(prototypes.CHUNK_PX, "cpu", 20)  # several chunks from 96 pixels
    # streamed shards are fp16 (the budget forbids fp32): compare with the in-memory path at that precision
    monkeypatch.setattr(prototypes, "pick_storage", lambda compute, need, budget: torch.float16)
    memory = _learn(problem, tmp_path / "m.safetensors", stream=False, plot=False)
    monkeypatch.undo()
    monkeypatch.setitem(prototypes.CHUNK_PX, "cpu", 20)
    tiny_budget = 2e-6  # 2 kB: every chunk goes to its own shard file
    streamed = run_learn_prototypes(problem["features"], problem["cams"], problem["text"], tmp_path / "s.safetensors",
                                    LearnPrototypesConfig(iters=30, max_memory_gb=tiny_budget), CPU, plot=False)
    assert memory["mode"] == "memory" and streamed["mode"] == "stream"
    assert streamed["shards"] == streamed["chunks"] == memory["chunks"] > 2
    torch.testing.assert_close(io.read_prototypes(tmp_path / "s.safetensors").vectors,
                               io.read_prototypes(tmp_path / "m.safetensors").vectors, rtol=0, atol=1e-6)
    assert streamed["final_loss"] == pytest.approx(memory["final_loss"], rel=1e-9)
    assert not [p for p in tmp_path.iterdir() if "shards" in p.name]  # scratch removed


def test_pixels_are_kept_in_fp32_when_they_fit_the_budget():
    need = {torch.float32: 400, torch.float16: 200}.__getitem__
    assert prototypes.pick_storage(torch.float32, need, budget=500) == torch.float32  # no per-iteration upcast
    assert prototypes.pick_storage(torch.float32, need, budget=300) == torch.float16
    assert prototypes.pick_storage(torch.bfloat16, need, budget=10**9) == torch.bfloat16


@pytest.mark.parametrize("mismatch", ["dim", "classes"])
def test_mismatched_text_prototypes_are_one_line_contract_errors(tmp_path, mismatch):
    files = _write_problem(tmp_path / "a", text_dim=12 if mismatch == "dim" else None)
    if mismatch == "classes":  # text prototypes of another dataset
        files["text"] = _write_problem(tmp_path / "b", classes=["background", "a", "b", "c"])["text"]
    with pytest.raises(ContractError) as e:
        _learn(files, tmp_path / "o.safetensors")
    assert str(files["text"]) in str(e.value) and "\n" not in str(e.value)


def test_cams_made_from_other_features_are_refused(tmp_path):
    files = _write_problem(tmp_path / "a")
    record = json.loads((files["cams"] / "_stage.json").read_text())
    record["inputs"]["features"] = "sha256:" + "0" * 64
    (files["cams"] / "_stage.json").write_text(json.dumps(io.seal(record)))  # sealed again
    with pytest.raises(ContractError, match="other features"):
        _learn(files, tmp_path / "o.safetensors")


def test_text_prototypes_without_background_rows_are_refused(tmp_path):
    files = _write_problem(tmp_path / "a", background=())
    with pytest.raises(VplError, match="no background rows"):
        _learn(files, tmp_path / "o.safetensors")


def test_bf16_storage_on_cpu_stays_close_to_fp32(problem, tmp_path):
    _learn(problem, tmp_path / "a.safetensors", plot=False)
    run_learn_prototypes(problem["features"], problem["cams"], problem["text"], tmp_path / "b.safetensors",
                         LearnPrototypesConfig(iters=30), RuntimeConfig(device="cpu", precision="bf16"), plot=False)
    a, b = (io.read_prototypes(tmp_path / f"{k}.safetensors").vectors for k in "ab")
    assert (a * b).sum(1).min() > 0.999


def test_cam_runs_on_learned_prototypes(features_dir, text_protos, tmp_path):
    """End to end on the tiny random CLIP: text CAMs -> vision prototypes -> CAMs from them."""
    from vpltool.config import CamConfig
    from vpltool.stages.cam import run_cam

    auto = RuntimeConfig(device="cpu")  # the session's features' dtype: auto's (bf16 on a CPU with AMX)
    run_cam(features_dir, text_protos, tmp_path / "cams_text", CamConfig(refine="none"), auto)
    out = tmp_path / "vision.safetensors"
    summary = run_learn_prototypes(features_dir, tmp_path / "cams_text", text_protos, out,
                                   LearnPrototypesConfig(iters=20), auto, plot=False)
    assert summary["n_images"] == 6 and summary["final_loss"] < summary["loss_curve"][0][1]
    done = run_cam(features_dir, out, tmp_path / "cams_vision", CamConfig(refine="none"), auto)
    assert done.done == 6

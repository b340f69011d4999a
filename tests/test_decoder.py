"""VPL phase 2: the decoder, its losses, training (resume, DDP, feature cache) and predict. CPU, tiny, seeded."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vpltool import io
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig, decoder_recipe
from vpltool.decoder import (
    SegDecoder,
    balanced_ce_loss,
    block_features,
    ce_loss,
    feature_blocks,
    load_decoder,
    multiscale_logits,
    region_embeddings,
    rsc_loss,
    save_decoder,
    view_logits,
)
from vpltool.errors import ContractError, VplError
from vpltool.predict import run_predict
from vpltool.train_decoder import BatchPlan, compute_losses, lr_at, make_optimizer, run_train_decoder, train_step

TINY = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=4, checkpoint_every=2,
                     log_every=1, warmup_iters=2, lr=0.05)
CPU = RuntimeConfig(device="cpu", workers=1)  # data loaded in this process
ROW_CLASS = torch.tensor([0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])  # 4 background words, then classes 1..8


def _decoder(cfg: DecoderConfig = TINY, dim: int = 32) -> SegDecoder:
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(len(ROW_CLASS), dim), dim=1)
    return SegDecoder(cfg, in_width=64, n_inputs=2, prototypes=protos, row_class=ROW_CLASS, temperature=0.03)


@pytest.fixture(scope="module")
def trained(gt_pseudo, text_protos, tmp_path_factory) -> Path:
    """A decoder trained for TINY.iters iterations without interruption (the resume reference)."""
    out = tmp_path_factory.mktemp("trained")
    run_train_decoder(gt_pseudo, text_protos, out, TINY, CPU)
    return out


# --------------------------------------------------------------------------------------------- module + losses
def test_decoder_shapes_and_dtypes():
    model = _decoder()
    feats = torch.randn(2, 2, 3, 5, 64).half()  # the feature cache stores fp16
    v, logits, protos = model(feats)
    assert v.shape == (2, 32, 3, 5) and v.dtype == torch.float32
    assert torch.allclose(v.norm(dim=1), torch.ones(2, 3, 5), atol=1e-5)
    assert logits.shape == (2, 9, 3, 5) and logits.dtype == torch.float32
    assert protos.shape == (12, 32) and not model.prototypes.requires_grad  # W frozen by default
    with pytest.raises(ContractError):
        model(torch.randn(1, 3, 3, 5, 64))  # three blocks for a two-block decoder


def test_block_features_shape(tiny_spec):
    from vpltool.backbone import load_backbone

    bb = load_backbone(tiny_spec, "cpu")
    blocks = feature_blocks(bb.n_blocks, include_last=False)
    feats = block_features(bb, torch.randn(2, 3, 64, 96), blocks)
    assert blocks == [0, 1] and feats.shape == (2, 2, 4, 6, bb.width) and feats.dtype == torch.float32


def test_scores_pick_the_prototype_and_reduce_background_rows():
    model = _decoder()
    w = model.unit_prototypes()
    v = torch.stack([w[5], w[1]])[:, :, None, None]  # pixel 0 = class 2's row, pixel 1 = background row 1
    logits = model.score(v)
    assert logits[:, :, 0, 0].argmax(1).tolist() == [2, 0]
    rows = (w @ w[1]) / 0.03
    assert torch.allclose(logits[1, 0, 0, 0], rows[:4].logsumexp(0), atol=1e-4)
    model_max = _decoder(replace(TINY, background="max"))
    assert torch.allclose(model_max.score(v)[1, 0, 0, 0], rows[:4].max(), atol=1e-4)


def test_ce_losses_ignore_255_and_balance_background():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 2], [0, 0, 255, 255], [0, 0, 0, 0]])[None]
    keep = target != 255
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert torch.allclose(ce_loss(logits, target), ref)
    bg, fg = target == 0, (target > 0) & keep
    balanced = 0.5 * (F.cross_entropy(logits.permute(0, 2, 3, 1)[bg], target[bg])
                      + F.cross_entropy(logits.permute(0, 2, 3, 1)[fg], target[fg]))
    assert torch.allclose(balanced_ce_loss(logits, target), balanced)
    assert ce_loss(logits, torch.full_like(target, 255)).item() == 0.0  # all ignored: 0, not NaN


def test_region_embeddings_pool_with_soft_masks():
    v = F.normalize(torch.randn(1, 8, 2, 2), dim=1)
    probs = torch.zeros(1, 3, 2, 2)
    probs[0, 1, 0, 0] = 1.0  # class 1 lives on pixel (0, 0) only
    probs[0, 2] = 0.5
    present = torch.tensor([[True, True, True]])
    regions, classes = region_embeddings(v, probs, present)
    assert classes.tolist() == [1, 2]  # background never forms a region
    assert torch.allclose(regions[0], v[0, :, 0, 0], atol=1e-6)
    assert torch.allclose(regions[1], F.normalize(v[0].mean((1, 2)), dim=0), atol=1e-6)


def test_rsc_low_when_regions_match_prototypes_high_when_swapped():
    protos = torch.eye(6, 16)  # rows 0-1 background, rows 2-5 classes 1-4
    row_class = torch.tensor([0, 0, 1, 2, 3, 4])
    classes = torch.tensor([1, 2, 3])
    matched = rsc_loss(protos[[2, 3, 4]], classes, protos, row_class, tau=0.07)
    swapped = rsc_loss(protos[[3, 4, 2]], classes, protos, row_class, tau=0.07)
    assert matched < 0.01 and swapped > 10
    # two regions of one class (two images) are not each other's negatives
    twins = rsc_loss(protos[[2, 2]], torch.tensor([1, 1]), protos, row_class, tau=0.07)
    assert twins < 0.01
    empty = rsc_loss(torch.zeros(0, 16, requires_grad=True), torch.zeros(0, dtype=torch.long), protos, row_class, 0.07)
    assert empty.item() == 0.0 and empty.requires_grad


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    cfg = replace(TINY, dropout=0.0)
    model = _decoder(cfg)
    torch.manual_seed(1)
    feats = torch.randn(2, 2, 4, 4, 64)
    target = torch.randint(0, 9, (2, 4, 4)).repeat_interleave(16, 1).repeat_interleave(16, 2)
    target[:, :8] = 255
    optimizer = make_optimizer(model, cfg)
    before = compute_losses(model, feats, target, cfg)["loss"].item()
    train_step(model, optimizer, feats, target, cfg, lr=lr_at(DecoderConfig(), 0))  # the default's first step
    assert compute_losses(model, feats, target, cfg)["loss"].item() < before


def test_lr_schedule_and_recipes():
    cfg = DecoderConfig(lr=0.01, warmup_iters=50, iters=1000, poly_power=0.9)
    assert lr_at(cfg, 0) == pytest.approx(0.01 / 50) and lr_at(cfg, 49) == pytest.approx(0.01 * 0.951**0.9)
    assert lr_at(cfg, 999) < 1e-4
    weclip = decoder_recipe("weclip", iters=10)
    assert (weclip.optimizer, weclip.lr, weclip.loss, weclip.iters) == ("adamw", 2e-3, "balanced", 10)
    with pytest.raises(VplError):
        decoder_recipe("deeplab")


def test_batch_plan_resumes_mid_epoch():
    full = list(BatchPlan(7, 2, 1, 0, seed=3, start=0, stop=9))
    assert list(BatchPlan(7, 2, 1, 0, seed=3, start=4, stop=9)) == full[4:]
    assert len({i for batch in full[:3] for i, _ in batch}) == 6  # one epoch = 3 batches of distinct images
    ranks = [list(BatchPlan(8, 2, 2, r, seed=0, start=0, stop=2)) for r in (0, 1)]
    assert not {i for b in ranks[0] for i, _ in b} & {i for b in ranks[1] for i, _ in b}  # DDP: disjoint


# --------------------------------------------------------------------------------------------- training
def test_train_writes_decoder_log_and_curve(trained):
    assert {p.name for p in trained.iterdir()} >= {"decoder.safetensors", "log.jsonl", "curve.png", "checkpoints"}
    records = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in records)
    model, f = load_decoder(trained / "decoder.safetensors")
    assert f.classes[0] == "background" and f.meta("model")["model"] == "vpl-test-vit"
    assert model.n_classes == len(f.classes) and not model.training


class _Stop(Exception):
    pass


def _stop_at(n: int):
    def on_iter(it: int, record: dict) -> None:
        if it == n:
            raise _Stop
    return on_iter


def test_resume_gives_the_weights_of_an_uninterrupted_run(gt_pseudo, text_protos, trained, tmp_path):
    with pytest.raises(_Stop):
        run_train_decoder(gt_pseudo, text_protos, tmp_path, TINY, CPU, on_iter=_stop_at(2))
    assert not (tmp_path / "decoder.safetensors").exists()
    with pytest.raises(VplError, match="--resume"):
        run_train_decoder(gt_pseudo, text_protos, tmp_path, TINY, CPU)
    with pytest.raises(VplError, match="other settings"):
        run_train_decoder(gt_pseudo, text_protos, tmp_path, replace(TINY, lr=0.1), CPU, resume=True)
    summary = run_train_decoder(gt_pseudo, text_protos, tmp_path, TINY, CPU, resume=True)
    assert summary.start == 2 and summary.iterations == 4
    a = io.read_tensors(trained / "decoder.safetensors", kind="decoder").tensors
    b = io.read_tensors(tmp_path / "decoder.safetensors", kind="decoder").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "log.jsonl").read_text() != "" and len((tmp_path / "log.jsonl").read_text().splitlines()) == 4


def test_log_has_a_first_line_at_once_then_every_log_every(gt_pseudo, text_protos, tmp_path):
    run_train_decoder(gt_pseudo, text_protos, tmp_path, replace(TINY, log_every=3), CPU)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 3, 4]  # the first iteration shows the run is alive; the last ends it


def test_feature_cache_and_validation(gt_pseudo, text_protos, tmp_path):
    cfg = replace(TINY, cache_features=True, iters=2, val_every=2)
    summary = run_train_decoder(gt_pseudo, text_protos, tmp_path, cfg, CPU, val_split="val")
    assert summary.val_miou is not None and 0.0 <= summary.val_miou <= 1.0
    assert any("val_miou" in json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, pseudo: str, protos: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    run_train_decoder(pseudo, protos, out, replace(TINY, iters=2, batch_size=1), CPU)


def test_ddp_two_cpu_processes_gloo(gt_pseudo, text_protos, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(_free_port(), str(gt_pseudo), str(text_protos), str(tmp_path)), nprocs=2, join=True)
    model, _ = load_decoder(tmp_path / "decoder.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs


# --------------------------------------------------------------------------------------------- predict
def test_flip_averaging_unflips():
    pixels = torch.randn(3, 32, 64)

    def forward(batch):  # flip-equivariant at patch multiples: correct un-flipping changes nothing
        return F.avg_pool2d(batch, 16)

    plain = view_logits(forward, pixels, flip=False)
    assert torch.allclose(view_logits(forward, pixels, flip=True), plain, atol=1e-6)
    assert not torch.allclose((plain + plain.flip(-1)) / 2, plain)  # what averaging un-flipped maps would give
    small = F.interpolate(pixels[None], size=(16, 32), mode="bilinear", align_corners=False)[0]
    assert multiscale_logits(forward, [pixels, small], flip=True).shape == plain.shape


def test_predict_writes_masks_that_eval_reads(trained, tmp_path):
    from vpltool.eval import run_eval

    out = tmp_path / "pred"
    summary = run_predict(trained / "decoder.safetensors", None, "val", out, PredictConfig(), CPU,
                          overlays=tmp_path / "overlays")
    assert summary.done == 3 and (out / "_stage.json").is_file()
    mask = io.read_mask(next(out.glob("*.png")))
    assert mask.shape == (96, 96) and mask.max() <= 8
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 3
    result, _ = run_eval(out)
    assert 0.0 <= result["miou"] <= 1.0


def test_predict_with_crf(trained, tmp_path):
    """Both CRF backends: pydensecrf on the writer thread, torch on the device; the same masks up to rounding."""
    pytest.importorskip("pydensecrf.densecrf")
    masks = {}
    for backend in ("pydensecrf", "torch"):
        out = tmp_path / backend
        summary = run_predict(trained / "decoder.safetensors", None, "val", out,
                              PredictConfig(crf=True, crf_backend=backend), CPU)
        assert summary.done == 3 and io.read_stage_record(out, "predict")["params"]["crf_backend"] == backend
        masks[backend] = [io.read_mask(p) for p in sorted(out.glob("*.png"))]
    for a, b in zip(masks["pydensecrf"], masks["torch"]):
        assert (a == b).mean() >= 0.995


def test_decoder_file_round_trip_and_wrong_kind(text_protos, tmp_path):
    model = _decoder(dim=32).eval()
    path = save_decoder(tmp_path / "d.safetensors", model, TINY, classes=[f"c{i}" for i in range(9)],
                        model_identity={"model": "vpl-test-vit", "pretrained": "none"}, blocks=[0, 1])
    again, f = load_decoder(path)
    feats = torch.randn(1, 2, 2, 2, 64)
    assert torch.allclose(again(feats)[1], model(feats)[1]) and f.meta("decoder_arch")["blocks"] == [0, 1]
    with pytest.raises(ContractError):
        load_decoder(text_protos)

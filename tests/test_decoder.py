"""VPL phase 2: the decoder, its losses, training (resume, DDP, feature cache) and predict. CPU, tiny, seeded."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
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
    upsample_logits,
    view_logits,
)
from vpltool.errors import ContractError, VplError
from vpltool.stages.predict import run_predict
from vpltool.stages.train_decoder import BatchPlan, compute_losses, lr_at, make_optimizer, run_train_decoder, train_step

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
    from vpltool.models import load_backbone

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


@pytest.mark.parametrize("shape, size", [((20, 20), (320, 320)), ((7, 13), (50, 97)), ((6, 4), (3, 9)),
                                         ((5, 5), (5, 5)), ((1, 3), (4, 2))])
def test_upsampling_as_two_products_is_torch_bilinear(shape, size):
    """The CE's upsampling (two matrix products) = ``F.interpolate`` bilinear with half-pixel centres, values and
    gradients, for enlargements, reductions, odd ratios, one-pixel sides and the identity: within float32 rounding
    of torch's map computed in float64 (torch's own float32 kernel is 4e-5 off it at 50 x 97, ours 3e-6)."""
    torch.manual_seed(0)
    logits = (10 * torch.randn(2, 3, *shape, dtype=torch.float64)).float().requires_grad_()
    grad = torch.randn(2, 3, *size, dtype=torch.float64)
    exact = logits.detach().double().requires_grad_()
    ref = F.interpolate(exact, size=size, mode="bilinear", align_corners=False)
    out = upsample_logits(logits, size)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-5)
    a, b = torch.autograd.grad(out, logits, grad.float())[0], torch.autograd.grad(ref, exact, grad)[0]
    assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-4)
    if shape == size:
        assert torch.equal(out, logits.detach())


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
    started = []
    summary = run_train_decoder(gt_pseudo, text_protos, tmp_path, TINY, CPU, resume=True,
                                on_start=lambda total, done: started.append((total, done)))
    assert summary.start == 2 and summary.iterations == 4
    assert started == [(4, 2)]  # the progress counts on from the checkpoint, not from 0 (issue 38)
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
    torch.set_num_threads(1)  # a forked rank: no OpenMP team of the parent's (none exists at 1 thread)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    run_train_decoder(pseudo, protos, out, replace(TINY, iters=2, batch_size=1), CPU)


def test_ddp_two_cpu_processes_gloo(gt_pseudo, text_protos, tmp_path):
    import torch._dynamo  # noqa: F401  (DistributedDataParallel imports it: here once, not in each rank)
    import torch.multiprocessing as mp

    # two ranks forked from this process start with torch, dynamo and vpltool imported and leave with os._exit
    # (spawned, each paid ~6 CPU-s of imports and exit of its own before its 2 iterations)
    mp.start_processes(_ddp_worker, args=(_free_port(), str(gt_pseudo), str(text_protos), str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
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
    from vpltool.stages.eval import run_eval

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


# --------------------------------------------------------------------------------------------- the fast path
def _resize_then_crop(image, mask, rng, cfg):
    """The augmentation as it was before crop-first resizing: the whole image rescaled, flipped, padded, cropped."""
    from PIL import Image

    h, w = mask.shape
    s = rng.uniform(cfg.scale_min, cfg.scale_max)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    if cfg.flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    crop = cfg.crop_size
    ph, pw = max(crop, size[1]), max(crop, size[0])
    canvas, labels = np.zeros((ph, pw, 3), np.uint8), np.full((ph, pw), 255, np.uint8)
    canvas[: size[1], : size[0]], labels[: size[1], : size[0]] = image, mask
    y, x = rng.integers(0, ph - crop + 1), rng.integers(0, pw - crop + 1)
    return canvas[y : y + crop, x : x + crop], labels[y : y + crop, x : x + crop]


@pytest.mark.parametrize("shape", [(75, 100), (30, 40)], ids=["larger-than-crop", "smaller-than-crop"])
def test_crop_first_augmentation_gives_the_views_of_resize_then_crop(shape):
    """The same draws, the same window, the same padding; the pixels up to PIL's rounding of the box corners."""
    from PIL import Image

    from vpltool.stages.train_decoder.data import augment, sample_rng

    cfg = replace(TINY, crop_size=64)
    g = np.random.default_rng(0)
    image = np.asarray(Image.fromarray((g.random((6, 8, 3)) * 255).astype(np.uint8)).resize(shape[::-1],
                                                                                              Image.BICUBIC))
    mask = np.asarray(Image.fromarray(g.integers(0, 5, (6, 8)).astype(np.uint8)).resize(shape[::-1], Image.NEAREST))
    differ, mask_differ = [], []
    for index in range(40):
        pixels, labels, (rows, cols) = augment(image, mask, sample_rng(3, 0, index), cfg)
        ref_pixels, ref_labels = _resize_then_crop(image, mask, sample_rng(3, 0, index), cfg)
        padding = ref_labels == 255  # this mask has no ignored pixels: 255 is padding alone
        assert np.array_equal(labels == 255, padding) and (pixels[padding] == 0).all()
        assert padding[:rows, :cols].sum() == 0 and padding.sum() == 64 * 64 - rows * cols
        diff = np.abs(pixels.astype(int) - ref_pixels.astype(int))
        assert diff.max() <= 2
        differ.append((diff > 0).mean())
        mask_differ.append((labels != ref_labels).mean())
    assert np.mean(differ) < 0.01 and np.mean(mask_differ) < 0.01


def test_views_are_normalised_on_the_device_as_numpy_did():
    from vpltool.stages.train_decoder.data import normalize_views

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    extent = torch.tensor([[8, 8], [5, 3]], dtype=torch.int32)
    out = normalize_views(pixels, extent, mean, std)
    ref = (pixels.numpy().astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.from_numpy(ref[0]).permute(2, 0, 1))  # bit for bit
    assert torch.equal(out[1, :, :5, :3], torch.from_numpy(ref[1, :5, :3]).permute(2, 0, 1))
    assert (out[1, :, 5:] == 0).all() and (out[1, :, :, 3:] == 0).all()  # padding: the mean colour


def test_image_tower_in_bf16_is_as_close_to_fp32_as_autocast_and_runs_fused_attention(tiny_spec):
    """A tower stored and run in bf16 (residual stream included, as OpenAI's fp16 CLIP) is as close to the fp32
    features as bf16 autocast is, runs the fused attention kernel (no softmax of a materialised map), and leaves the
    caller's backbone in fp32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from vpltool.models import load_backbone

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    bb = load_backbone(tiny_spec, "cpu")
    low = bb.with_image_tower_in(torch.bfloat16)
    pixels = torch.randn(2, 3, 64, 96)
    exact = block_features(bb, pixels, [0, 1], torch.float32)
    autocast_err = (block_features(bb, pixels, [0, 1], torch.bfloat16).float() - exact).abs().mean()
    tower_err = (block_features(low, pixels, [0, 1], torch.bfloat16).float() - exact).abs().mean()
    assert tower_err < 2 * autocast_err and tower_err < 0.01 * exact.abs().mean()
    with Ops() as ops:
        feats = block_features(low, pixels, [0, 1], torch.bfloat16)
    assert feats.dtype == torch.bfloat16 and "aten::_native_multi_head_attention" in ops.names
    assert not {"aten::_softmax", "aten::bmm"} & ops.names
    assert bb.dtype == torch.float32 and low.dtype == torch.bfloat16 and bb.with_image_tower_in(torch.float32) is bb


def test_fixed_size_regions_give_the_losses_of_the_present_ones():
    """RSC and CMPA over every (image, class) pair with a validity mask (no host read) equal the losses over the
    present regions alone, gradients included."""
    from vpltool.decoder import class_regions, cmpa_loss, present_classes, region_masks

    torch.manual_seed(0)
    v = F.normalize(torch.randn(3, 8, 4, 4), dim=1).requires_grad_()
    logits = torch.randn(3, 6, 4, 4, requires_grad=True)
    target = torch.randint(0, 6, (3, 16, 16))
    target[0] = 0  # an image with no foreground region
    present = present_classes(target, 6)
    probs = region_masks(logits, present)
    protos = F.normalize(torch.randn(7, 8), dim=1)
    row_class = torch.tensor([0, 0, 1, 2, 3, 4, 5])
    dense, classes, valid = class_regions(v, probs, present)
    compact, compact_classes = region_embeddings(v, probs, present)
    assert dense.shape == (15, 8) and torch.equal(classes[valid], compact_classes)
    pairs = [(rsc_loss(dense, classes, protos, row_class, 0.07, valid), rsc_loss(compact, compact_classes, protos,
                                                                                 row_class, 0.07))]
    bank, built, log_t = F.normalize(torch.randn(5, 2, 8), dim=-1), torch.rand(5, 2) > 0.5, torch.tensor(-2.0)
    pairs.append((cmpa_loss(dense, classes, protos[2:], bank, built, log_t, valid=valid),
                  cmpa_loss(compact, compact_classes, protos[2:], bank, built, log_t)))
    for a, b in pairs:
        assert torch.allclose(a, b, atol=1e-6)
        for ga, gb in zip(torch.autograd.grad(a, (v, logits), retain_graph=True),
                          torch.autograd.grad(b, (v, logits), retain_graph=True)):
            assert torch.allclose(ga, gb, atol=1e-6)
    none = torch.zeros_like(valid)
    empty = rsc_loss(dense, classes, protos, row_class, 0.07, none)
    assert empty.item() == 0.0 and torch.autograd.grad(empty, v, retain_graph=True)[0].abs().max() == 0


def test_loading_processes_give_the_weights_of_loading_in_process(gt_pseudo, text_protos, trained, tmp_path):
    """Augmentation in 2 DataLoader processes (uint8 batches, normalised here) = in this process, bit for bit."""
    run_train_decoder(gt_pseudo, text_protos, tmp_path, TINY, RuntimeConfig(device="cpu", workers=2))
    a = io.read_tensors(trained / "decoder.safetensors", kind="decoder").tensors
    b = io.read_tensors(tmp_path / "decoder.safetensors", kind="decoder").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_workers_one_per_core_up_to_12_on_cuda_two_on_a_cpu(monkeypatch):
    from vpltool.config import stages

    monkeypatch.setattr(stages, "worker_count", lambda w, images=None: 16 if w == 0 else (2 if w is None else w))
    auto = RuntimeConfig()
    assert auto.workers is None and auto.loader_workers(torch.device("cuda")) == 12
    assert auto.loader_workers(torch.device("cpu")) == 2
    assert RuntimeConfig(workers=3).loader_workers(torch.device("cuda")) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share the machine's 16 cores
    assert auto.loader_workers(torch.device("cuda")) == 4


# --------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events_hold_the_losses_speed_memory_and_previews(gt_pseudo, text_protos, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb"
    cfg = replace(TINY, log_every=2, val_every=2)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "run", cfg, CPU, val_split="val", tensorboard=board)
    events = EventAccumulator(str(board), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/loss", "loss/ce", "loss/rsc", "lr", "speed/iters_per_s", "memory/host_peak_rss_gib",
            "val/miou"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/loss")] == [1, 2, 4]  # the log lines of log.jsonl
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [round(e.value, 5) for e in events.Scalars("loss/ce")] == [round(r["ce"], 5) for r in logged if "ce" in r]
    previews = [t for t in tags["images"] if t.startswith("preview/")]
    assert len(previews) == 3 and [e.step for e in events.Images(previews[0])] == [2, 4]  # the 3 val images
    assert events.Images(previews[0])[0].width == 2 * 96  # photo | prediction
    assert (tmp_path / "run" / "log.jsonl").is_file() and (tmp_path / "run" / "curve.png").is_file()
    # the same run started again replaces its events (one run's curves, not two overlapping); another run is refused
    first = sorted(board.glob("events.out.tfevents.*"))
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "run", cfg, replace(CPU, overwrite=True), val_split="val",
                      tensorboard=board)
    again = sorted(board.glob("events.out.tfevents.*"))
    assert len(again) == 1 and again != first
    with pytest.raises(VplError, match="holds the TensorBoard events of another run"):
        run_train_decoder(gt_pseudo, text_protos, tmp_path / "other", cfg, CPU, tensorboard=board)
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_tensorboard_asked_for_without_the_package_is_one_line(gt_pseudo, text_protos, tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from vpltool.cli import app

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    r = CliRunner().invoke(app, ["train-decoder", str(gt_pseudo), "-p", str(text_protos), "-o", str(tmp_path / "d"),
                                 "--iters", "2", "--tensorboard", str(tmp_path / "tb"), "--device", "cpu"])
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "--tensorboard needs the tensorboard package" in lines[0]
    assert "-e '.[tensorboard]' in vpltool's checkout" in lines[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "tb").exists()  # refused before anything is made


@pytest.mark.numeric
def test_compiled_decoder_trains_to_the_same_weights_and_file(gt_pseudo, text_protos, tmp_path, monkeypatch):
    """--compile wraps the losses (the decoder's forward included) and the frozen forward: traced with the eager
    backend here (inductor compiles for minutes on a CPU), the run is the uncompiled one bit for bit, checkpoint and
    decoder included, at auto's dtype (bf16 on a CPU with AMX too).

    Both runs without nn.MultiheadAttention's fused inference kernel: eager takes it, a traced forward never does
    (its composite path), and the two round otherwise: 1.2e-7 apart after 4 iterations in fp32, 1.5e-4 in bf16."""
    real = torch.compile
    modes = []

    def traced(model, mode=None, **kwargs):
        modes.append(mode)
        return real(model, backend="eager")

    monkeypatch.setattr(torch.backends.mha, "get_fastpath_enabled", lambda: False)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "eager", TINY, CPU)
    monkeypatch.setattr(torch, "compile", traced)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "compiled", replace(TINY, compile="reduce-overhead"), CPU)
    assert modes == ["reduce-overhead", "reduce-overhead"]
    a = io.read_tensors(tmp_path / "eager" / "decoder.safetensors", kind="decoder").tensors
    b = io.read_tensors(tmp_path / "compiled" / "decoder.safetensors", kind="decoder").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(VplError, match="--compile 'max'"):
        DecoderConfig(compile="max")


@pytest.mark.cuda
def test_reduce_overhead_trains_on_cuda_with_a_resized_positional_embedding(gt_pseudo, text_protos, tmp_path):
    """``--compile reduce-overhead`` for real (inductor, CUDA graphs) at a crop whose grid is not the backbone's
    native one, so the positional embedding is resized inside the frozen graph: a resized table kept between calls
    was a graph output that the next replay overwrote ("accessing tensor output of CUDAGraphs that has been
    overwritten"), on an H100."""
    cuda = RuntimeConfig(device="cuda", workers=1)
    summary = run_train_decoder(gt_pseudo, text_protos, tmp_path / "graphs",
                                replace(TINY, compile="reduce-overhead", iters=6, crop_size=48), cuda)
    assert summary is not None
    tensors = io.read_tensors(tmp_path / "graphs" / "decoder.safetensors", kind="decoder").tensors
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_an_iteration_compiles_to_one_graph_per_part(tiny_spec, text_protos):
    """The frozen forward and the losses (decoder forward, CE, RSC) each trace into one graph without a break: what
    ``--compile reduce-overhead`` needs to replay an iteration as CUDA graphs (a break leaves eager launches)."""
    from vpltool.decoder import block_features, feature_blocks
    from vpltool.models import load_backbone
    from vpltool.stages.train_decoder import compute_losses

    bb = load_backbone(tiny_spec, "cpu")
    cfg = replace(TINY, lambda_rsc=0.1)
    protos = io.read_prototypes(text_protos)
    blocks = feature_blocks(bb.n_blocks, cfg.include_last_block)
    model = SegDecoder(cfg, in_width=bb.width, n_inputs=len(blocks), prototypes=protos.vectors,
                       row_class=protos.row_class, temperature=protos.temperature).train()
    pixels = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, model.n_classes, (2, 64, 64))
    frozen = torch._dynamo.explain(block_features)(bb, pixels, blocks)
    feats = block_features(bb, pixels, blocks)
    losses = torch._dynamo.explain(compute_losses)(model, feats, target, cfg)
    for part in (frozen, losses):
        assert (part.graph_count, part.graph_break_count) == (1, 0), part.break_reasons
    assert losses.op_count > 50  # the whole loss, not an empty graph


@pytest.mark.parametrize("train", [True, False])
def test_encoder_layer_is_torchs_with_fewer_ops(train):
    """Step 3's layer = torch's pre-LN TransformerEncoderLayer of the same weights (made from the same draws, under
    the same state-dict names): its values, and its gradients within float32 rounding, in training and eval mode."""
    from vpltool.decoder.network import EncoderLayer

    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(32, 4, 128, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True).train(train)
    torch.manual_seed(0)
    layer = EncoderLayer(32, 4).train(train)
    assert ref.state_dict().keys() == layer.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), layer.state_dict().values()))
    x = torch.randn(3, 20, 32)
    with torch.set_grad_enabled(train):
        want, got = ref(x), layer(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    if train:
        for a, b in zip(torch.autograd.grad(got.square().sum(), list(layer.parameters())),
                        torch.autograd.grad(want.square().sum(), list(ref.parameters()))):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _per_block_modules(model: SegDecoder) -> tuple[list[torch.nn.LayerNorm], list[torch.nn.Sequential]]:
    """WeCLIP's per-block LayerNorm and MLP modules, loaded from the decoder's file state (per-block names)."""
    norms = [torch.nn.LayerNorm(model.in_width) for _ in range(model.n_inputs)]
    mlps = [torch.nn.Sequential(torch.nn.Linear(model.in_width, model.cfg.dim), torch.nn.ReLU(),
                                torch.nn.Linear(model.cfg.dim, model.cfg.dim)) for _ in range(model.n_inputs)]
    state = model.state_dict()
    named = [(f"norms.{i}", m) for i, m in enumerate(norms)] + [(f"mlps.{i}", m) for i, m in enumerate(mlps)]
    for name, module in named:
        module.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})
    return norms, mlps


def test_block_mlps_at_once_equal_the_modules_one_by_one():
    """Step 2 batched over the blocks (stacked parameters, LayerNorm affine folded into the first linear) = each
    block's LayerNorm and MLP modules, loaded from the file's per-block names, applied in turn and concatenated:
    values and gradients."""
    model = _decoder(replace(TINY, dim=16))
    with torch.no_grad():  # a LayerNorm with a non-trivial scale and shift
        model.block_mlp.norm_weight.normal_()
        model.block_mlp.norm_bias.normal_()
    norms, mlps = _per_block_modules(model)
    feats = torch.randn(2, 2, 3, 5, 64)
    ref = torch.cat([mlp(norm(feats[:, i])) for i, (norm, mlp) in enumerate(zip(norms, mlps))], -1)
    out = model.block_mlp(feats)
    assert out.shape == ref.shape == (2, 3, 5, 32) and torch.allclose(out, ref, atol=1e-5)
    got = torch.autograd.grad(out.square().sum(), [model.block_mlp.norm_weight, model.block_mlp.norm_bias,
                                                   model.block_mlp.fc1_weight, model.block_mlp.fc2_bias])
    want = torch.autograd.grad(ref.square().sum(), [norms[1].weight, norms[0].bias, mlps[1][0].weight, mlps[0][2].bias])
    for a, b in zip((got[0][1], got[1][0], got[2][1], got[3][0]), want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_files_keep_the_per_block_names_and_the_modules_initialisation():
    """The stacked step-2 parameters are written under WeCLIP's per-block names (files of earlier versions load,
    and files do not change), initialised with the draws the per-block modules made, and read back exactly."""
    model = _decoder()
    state = model.state_dict()
    names = [k for k in state if k.startswith(("norms.", "mlps."))]
    assert names[:4] == ["norms.0.weight", "norms.0.bias", "norms.1.weight", "norms.1.bias"]
    assert names[4:8] == ["mlps.0.0.weight", "mlps.0.0.bias", "mlps.0.2.weight", "mlps.0.2.bias"]
    keys = list(state)
    assert not any(k.startswith("block_mlp") for k in state) and keys[keys.index(names[-1]) + 1] == "fuse.weight"
    torch.manual_seed(0)  # the modules of the previous layout, made in the same order from the same seed
    torch.nn.functional.normalize(torch.randn(len(ROW_CLASS), 32), dim=1)
    old = [(torch.nn.Linear(64, TINY.dim), torch.nn.Linear(TINY.dim, TINY.dim)) for _ in range(2)]
    assert torch.equal(state["mlps.1.0.weight"], old[1][0].weight)
    assert torch.equal(state["mlps.0.2.bias"], old[0][1].bias)
    other = _decoder()
    with torch.no_grad():
        other.block_mlp.fc1_weight.zero_()
    other.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    with pytest.raises(RuntimeError, match="norms.1.bias"):
        _decoder().load_state_dict({k: v for k, v in state.items() if k != "norms.1.bias"}, strict=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_checkpoint_optimizer_state_is_per_file_parameter_and_round_trips(optimizer, tmp_path):
    """The optimizer's slots of a stacked parameter are written one row per file parameter (the layout of the
    per-block modules: earlier checkpoints resume) and come back equal."""
    from vpltool.stages.train_decoder.steps import optimizer_state_from_file, optimizer_state_to_file

    model = _decoder(replace(TINY, optimizer=optimizer))
    opt = make_optimizer(model, model.cfg)
    feats, target = torch.randn(2, 2, 4, 4, 64), torch.randint(0, 9, (2, 64, 64))
    train_step(model, opt, feats, target, model.cfg, lr=0.01)
    state = opt.state_dict()
    filed = optimizer_state_to_file(model, state)
    trainable = [n for n, p in model.state_dict(keep_vars=True).items() if getattr(p, "requires_grad", False)]
    assert len(filed["param_groups"][0]["params"]) == len(trainable) == len(filed["state"])
    slot = "momentum_buffer" if optimizer == "sgd" else "exp_avg"
    assert torch.equal(filed["state"][trainable.index("mlps.1.0.weight")][slot], state["state"][2][slot][1])
    back = optimizer_state_from_file(model, filed)
    assert back["param_groups"] == state["param_groups"]
    assert all(torch.equal(back["state"][j][k], v) for j, s in state["state"].items() for k, v in s.items())
    path = tmp_path / "last.safetensors"  # through the file (safetensors refuses two views of one tensor)
    from vpltool.stages.train_decoder import load_checkpoint, save_checkpoint

    save_checkpoint(path, model, opt, 1, ["background"] + [f"c{i}" for i in range(1, 9)],
                    {"decoder_config": {}, "inputs": {}, "model": {}})
    other = _decoder(replace(TINY, optimizer=optimizer))
    other_opt = make_optimizer(other, other.cfg)
    load_checkpoint(path, other, other_opt)
    again = other_opt.state_dict()
    assert all(torch.equal(again["state"][j][k], v) for j, s in state["state"].items() for k, v in s.items())


def test_an_option_without_effect_is_in_neither_params(gt_pseudo, text_protos, tmp_path):
    """--proto-every without CMPA is warned about as "not recorded": neither the checkpoint's nor the decoder's
    params hold it (issue 38), and a resume does not compare it."""
    cfg = replace(TINY, iters=2, lambda_proto=0.0, proto_every=5)
    run_train_decoder(gt_pseudo, text_protos, tmp_path, cfg, CPU)
    decoder = io.read_decoder(tmp_path / "decoder.safetensors")
    checkpoint = io.read_checkpoint(tmp_path / "checkpoints" / "last.safetensors", header_only=True)[2]
    for f in (decoder, checkpoint):
        assert "proto_every" not in f.params and "proto_every" not in f.meta("decoder_config")
        assert f.params["dim"] == TINY.dim  # what has an effect is recorded
    assert load_decoder(tmp_path / "decoder.safetensors")[0].cfg.proto_every is None  # rebuilt with the default


def test_a_resume_names_every_difference_at_once(gt_pseudo, text_protos, trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "run")
    (tmp_path / "run" / "decoder.safetensors").unlink()
    with pytest.raises(VplError) as e:
        run_train_decoder(gt_pseudo, text_protos, tmp_path / "run", replace(TINY, iters=5, lr=0.1), CPU, resume=True)
    assert "--iters 4 there, 5 here" in str(e.value) and "--lr 0.05 there, 0.1 here" in str(e.value)
    assert "start again without --resume" in str(e.value)

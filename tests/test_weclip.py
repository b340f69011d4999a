"""`train-decoder --recipe weclip`: WeCLIP's online pseudo masks, PAR, affinity loss, conv decoder, end to end.

CPU, tiny, seeded; the comparison with WeCLIP's own code is parity/weclip_parity.py's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool import io
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig, decoder_recipe, to_params
from vpltool.decoder import SegDecoder, load_decoder
from vpltool.errors import VplError
from vpltool.stages.eval import run_eval
from vpltool.stages.predict import run_predict
from vpltool.stages.train_decoder import run_train_decoder
from vpltool.stages.train_decoder.online import (
    affinity_loss,
    affinity_targets,
    decoder_affinity,
    online_pseudo_mask,
    propagation_attention,
    radius_mask,
    weclip_losses,
)
from vpltool.stages.train_decoder.par import par

CPU = RuntimeConfig(device="cpu", workers=1)
WECLIP = replace(decoder_recipe("weclip", iters=4, batch_size=2, crop_size=64, dim=16, layers=1, heads=2,
                                checkpoint_every=2), log_every=1, warmup_iters=2, rfm_start=2)
ROW_CLASS = torch.tensor([0, 0, 1, 2, 3])


# --------------------------------------------------------------------------------------------- pure functions
def test_par_keeps_constant_masks_and_smooths_within_a_colour_region():
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 24, 24)
    image[..., 12:] = 3.0  # two flat colour halves
    flat = torch.full((1, 2, 24, 24), 0.25)
    # each pixel's weights sum to 1.01 (a softmax + 0.01 x the positional softmax): a constant grows 1.01x a round
    assert torch.allclose(par(image, flat, iters=5), flat * 1.01**5, atol=1e-6)
    noisy = torch.rand(1, 2, 24, 24)
    out = par(image, noisy, dilations=(1, 2), iters=10)
    left, right = out[..., :, 2:10], out[..., :, 14:22]
    assert left.std() < 0.5 * noisy[..., :, 2:10].std() and right.std() < 0.5 * noisy[..., :, 14:22].std()
    # the colour edge holds: the halves' means stay apart when their inputs differ
    skewed = noisy.clone()
    skewed[:, 0, :, 12:] += 1.0
    out = par(image, skewed, dilations=(1, 2), iters=10)
    assert out[0, 0, :, 14:].mean() - out[0, 0, :, :10].mean() > 0.8


def test_propagation_attention_mean_of_last_maps_and_rfm_filter():
    maps = torch.stack([torch.full((4, 4), float(i)) for i in range(10)])  # map i is constant i
    assert torch.equal(propagation_attention(maps, None, mean_blocks=8), torch.full((4, 4), 5.5))  # mean of 2..9
    seg = torch.full((4, 4), 6.0)
    # RFM over maps 4..9: diff = 16 (6 - i); mean diff at i = 6.5: maps 7, 8, 9 kept (diff <= mean), times seg
    got = propagation_attention(maps, seg, rfm_blocks=6)
    assert torch.allclose(got, torch.full((4, 4), (7 + 8 + 9) / (3 + 1e-5) * 6.0))


def test_online_pseudo_mask_labels_the_class_where_its_cam_is_high():
    torch.manual_seed(0)
    h = w = 6
    cams = torch.zeros(1, h, w)
    cams[0, 1:4, 1:4] = torch.tensor([[0.6, 0.8, 0.6], [0.8, 1.0, 0.8], [0.6, 0.8, 0.6]])
    attention = torch.eye(h * w).expand(3, -1, -1) + 0.01  # patches attend to themselves: propagation is local
    image = torch.zeros(3, 16 * h, 16 * w)
    labels = online_pseudo_mask(cams, [3], attention, image, par_iters=2)
    assert labels.shape == (16 * h, 16 * w) and labels.dtype == torch.long
    assert set(labels.unique().tolist()) == {0, 3}  # no ignored pixel: background or the image's class
    assert labels[16 * 2 + 8, 16 * 2 + 8] == 3 and labels[4, 4] == 0 and labels[-4, -4] == 0
    none = online_pseudo_mask(cams[:0], [], attention, image)
    assert not none.any()


def test_affinity_targets_radius_and_loss():
    assert radius_mask(3, 3, 1).sum() == 9 * 9 - 2 * 2 * 2 * 2 - 2 * 2 * 2 * 2  # corners do not see far corners
    assert not radius_mask(5, 5, 1)[0, 2] and radius_mask(5, 5, 2)[0, 2]
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 2
    t = affinity_targets(labels, (4, 4), radius=8)
    assert t.shape == (1, 16, 16) and t[0, 0, 1] == 1 and t[0, 0, 2] == 0 and (t != 255).all()
    assert (affinity_targets(labels, (4, 4), radius=1)[0, 0, 3] == 255)  # 3 columns apart
    perfect = (t == 1).float()
    assert affinity_loss(perfect, t) == 0 and affinity_loss(1 - perfect, t) > 0.99
    fused = torch.randn(2, 8, 4, 4)
    a = decoder_affinity(fused)
    assert a.shape == (2, 16, 16) and torch.allclose(a, a.transpose(1, 2)) and ((a > 0) & (a < 1)).all()


def test_weclip_losses_total_is_ce_plus_a_tenth_of_affinity():
    torch.manual_seed(0)
    logits, fused = torch.randn(2, 4, 4, 4, requires_grad=True), torch.randn(2, 8, 4, 4, requires_grad=True)
    labels = torch.randint(0, 4, (2, 64, 64))
    out = weclip_losses(logits, fused, labels)
    assert torch.allclose(out["loss"], out["ce"] + 0.1 * out["aff"])
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0 and fused.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- the decoder
def _conv_decoder(cfg: DecoderConfig) -> SegDecoder:
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(len(ROW_CLASS), 8), dim=1)
    return SegDecoder(cfg, in_width=32, n_inputs=2, prototypes=protos, row_class=ROW_CLASS, temperature=0.01)


def test_conv_decoder_gives_fused_features_and_free_logits_without_input_norms():
    cfg = replace(WECLIP, dim=16, heads=2, dropout=0.0)
    model = _conv_decoder(cfg)
    fused, logits, _ = model(torch.randn(2, 2, 3, 5, 32))
    assert fused.shape == (2, 16, 3, 5) and logits.shape == (2, 4, 3, 5)  # C + 1 = 4 classes
    names = set(model.state_dict())
    assert "head.weight" in names and model.head.weight.shape == (4, 16, 1, 1)
    assert not any(n.startswith("norms.") for n in names) and "ln_out.weight" not in names
    assert "mlps.0.0.weight" in names and "mlps.1.2.bias" in names  # WeCLIP's per-block MLP names
    x = torch.linspace(-4, 4, 9)
    layer = model.blocks[0]
    assert torch.allclose(layer.act(x), x * torch.sigmoid(1.702 * x))  # QuickGELU


def test_recipe_records_conv_classifier_rsc_off_and_online_settings():
    cfg = decoder_recipe("weclip")
    assert (cfg.classifier, cfg.lambda_rsc, cfg.lambda_aff, cfg.pseudo, cfg.normalization, cfg.block_norm,
            cfg.activation, cfg.padding, cfg.rfm_from) == ("conv", 0.0, 0.1, "online", "imagenet", False,
                                                          "quick_gelu", "black", 15000)
    params = to_params(cfg)
    assert params["classifier"] == "conv" and params["lambda_rsc"] == 0.0 and "rsc_temperature" not in params
    with pytest.raises(VplError, match="RSC"):
        decoder_recipe("weclip", lambda_rsc=1.0)
    with pytest.raises(VplError, match="conv"):
        DecoderConfig(lambda_aff=0.1)
    with pytest.raises(VplError, match="--compile none"):
        decoder_recipe("weclip", compile="default")


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def weclip_run(world, text_protos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weclip")
    run_train_decoder(world, text_protos, out, WECLIP, CPU)
    return out


def test_weclip_trains_from_image_labels_and_predict_and_eval_use_it(weclip_run, world, tmp_path):
    records = [json.loads(line) for line in (weclip_run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3, 4] and all({"ce", "aff", "loss"} <= set(r) for r in records)
    model, f = load_decoder(weclip_run / "decoder.safetensors")
    recorded = f.meta("decoder_config")
    assert (recorded["classifier"], recorded["lambda_rsc"], recorded["pseudo"]) == ("conv", 0.0, "online")
    assert f.meta("inputs")["pseudo"] == "online"
    masks = tmp_path / "masks"
    summary = run_predict(weclip_run / "decoder.safetensors", None, "val", masks, PredictConfig(), CPU)
    assert summary.done == 3 and io.read_mask(next(masks.glob("*.png"))).max() <= 8
    result, _ = run_eval(masks)
    assert 0.0 <= result["miou"] <= 1.0


def _stopped_then_resumed(world, text_protos, out, cfg) -> dict:
    """The decoder's tensors after a run of ``cfg`` stopped at iteration 3 and resumed (``--resume``) to its end."""
    class Stop(Exception):
        pass

    def stop_at_3(it: int, record: dict) -> None:
        if it == 3:
            raise Stop

    with pytest.raises(Stop):
        run_train_decoder(world, text_protos, out, cfg, CPU, on_iter=stop_at_3)
    run_train_decoder(world, text_protos, out, cfg, CPU, resume=True)
    return io.read_decoder(out / "decoder.safetensors").tensors


def test_weclip_resume_gives_the_weights_of_an_uninterrupted_run(weclip_run, world, text_protos, tmp_path):
    a = io.read_decoder(weclip_run / "decoder.safetensors").tensors
    b = _stopped_then_resumed(world, text_protos, tmp_path / "resumed", WECLIP)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weclip_refuses_a_pseudo_mask_folder_and_writes_nothing(gt_pseudo, text_protos, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(VplError, match="takes none"):
        run_train_decoder(gt_pseudo, text_protos, out, WECLIP, CPU)
    assert not out.exists()


def test_resume_with_another_recipe_is_one_line(weclip_run, gt_pseudo, text_protos, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(weclip_run, out)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    vpl = replace(WECLIP, **{k: getattr(DecoderConfig(), k) for k in (
        "recipe", "classifier", "block_norm", "activation", "pseudo", "normalization", "padding", "lambda_aff",
        "lambda_rsc", "loss")})
    with pytest.raises(VplError, match="other settings or inputs.*--recipe weclip there, vpl here"):
        run_train_decoder(gt_pseudo, text_protos, out, vpl, CPU, resume=True)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_online_views_pad_black_at_a_random_offset(world):
    from vpltool.data import open_dataset
    from vpltool.stages.train_decoder.online import LabelledImages

    items = [(it.id, it.image, it.labels) for it in open_dataset(world, "train").items]
    cfg = replace(WECLIP, crop_size=128, scale_min=0.5, scale_max=0.5)  # 96 px scenes -> 48 px: padding
    data = LabelledImages(items, cfg)
    corners = set()
    for epoch in range(4):
        pixels, extent, index = data[(0, epoch)]
        assert pixels.shape == (128, 128, 3) and extent.tolist() == [128, 128] and int(index) == 0
        rows = np.nonzero(pixels.numpy().any(-1).any(1))[0]
        corners.add(int(rows[0]))
    assert len(corners) > 1  # not always the top-left corner


def test_weclip_test_views_truncate_sizes_and_stay_whole(tiny_spec):
    from vpltool.decoder import weclip_views
    from vpltool.models import load_backbone

    bb = load_backbone(tiny_spec, "cpu").with_normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    image = np.random.default_rng(0).integers(0, 256, (75, 100, 3), dtype=np.uint8)
    v1, v075 = weclip_views(bb, image, 90, (1.0, 0.75))
    # long side 90: 67 x 90 (67.5 truncated); 0.75 of 67 x 90: 50 x 67 (floored); not cut to patches here
    assert v1.shape == (1, 3, 67, 90) and v075.shape == (1, 3, 50, 67)
    full = bb.normalize(torch.from_numpy(image)[None])
    expected = F.interpolate(full, size=(67, 90), mode="bilinear", align_corners=False)
    assert torch.allclose(v1, expected) and v1[0, 0].mean() < 1  # ImageNet-normalised


def test_decoder_forward_cuts_to_patches_after_the_flip(tiny_spec, monkeypatch):
    """WeCLIP's test script flips the whole view and its patch conv then drops the last < 16 columns: of the
    mirror image, the original's first columns go. The CLIP sees the cut batch; the flip happens before."""
    from vpltool.decoder import views
    from vpltool.models import load_backbone

    bb = load_backbone(tiny_spec, "cpu")
    seen = []

    def fake_blocks(bb_, pixels, blocks, dtype):
        seen.append(pixels.clone())
        return torch.zeros(len(pixels), 1, pixels.shape[-2] // 16, pixels.shape[-1] // 16, 4)

    class Model:
        dino_width = None

        def __call__(self, feats):
            return None, feats[:, 0, ..., 0][:, None], None

    monkeypatch.setattr(views, "block_features", fake_blocks)
    x = torch.arange(2 * 3 * 40 * 50, dtype=torch.float32).reshape(2, 3, 40, 50)
    views.view_logits(views.decoder_forward(bb, Model(), [0], torch.float32), x, flip=True)
    got = seen[0]
    assert got.shape == (4, 3, 32, 48)
    assert torch.equal(got[:2], x[..., :32, :48]) and torch.equal(got[2:], x.flip(-1)[..., :32, :48])
    assert not torch.equal(got[2:], x[..., :32, :48].flip(-1))  # cut-then-flip would keep the other columns


def test_predict_picks_weclip_views_for_a_weclip_decoder(weclip_run, tmp_path):
    auto = tmp_path / "auto"
    run_predict(weclip_run / "decoder.safetensors", None, "val", auto, PredictConfig(), CPU)
    bilinear = tmp_path / "bilinear"
    run_predict(weclip_run / "decoder.safetensors", None, "val", bilinear, PredictConfig(resize="bilinear"), CPU)
    names = sorted(p.name for p in auto.glob("*.png"))
    assert len(names) == 3
    same = [np.array_equal(io.read_mask(auto / n), io.read_mask(bilinear / n)) for n in names]
    assert all(same)
    assert "resize" not in json.loads((auto / "_stage.json").read_text())["params"]


def test_par_neighbours_are_the_one_hot_dilated_convolution_exactly():
    from vpltool.stages.train_decoder.par import NEIGHBOURS, _neighbours

    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 17)
    kernel = torch.zeros(8, 1, 3, 3)
    for k, (i, j) in enumerate(NEIGHBOURS):
        kernel[k, 0, i, j] = 1
    expected = []
    for d in (1, 2, 4):  # WeCLIP PAR.py:get_dilated_neighbors
        padded = F.pad(x, [d] * 4, mode="replicate").reshape(6, 1, 11 + 2 * d, 17 + 2 * d)
        expected.append(F.conv2d(padded, kernel, dilation=d).view(2, 3, -1, 11, 17))
    assert torch.equal(_neighbours(x, (1, 2, 4)), torch.cat(expected, dim=2))


def test_par_gives_the_values_of_par_py_stacked_arithmetic_exactly():
    """PAR.py's round is ``(neighbours stacked [B, K, n, h, w] * aff).sum(2)`` on weights computed batch-wise; the
    run-by-run sum, the weights image by image and a batch of crops padded to one K give the same float32 values."""
    from vpltool.stages.train_decoder.par import _neighbours, par_affinity, par_step

    def stacked_affinity(image, dilations):  # PAR.py:forward before its loop, the whole batch at once
        b, _, h, w = image.shape
        near = _neighbours(image, dilations)
        ring = torch.ones(8)
        ring[[0, 2, 5, 7]] = float(np.sqrt(2))
        pos = torch.cat([ring * d for d in dilations]).view(1, 1, -1, 1, 1).expand(b, 1, -1, h, w)
        aff = (-((near - image.unsqueeze(2)).abs() / (near.std(dim=2, keepdim=True) + 1e-8) / 0.3) ** 2).mean(1, True)
        pos_aff = -(pos / (pos.std(dim=2, keepdim=True) + 1e-8) / 0.3) ** 2
        return F.softmax(aff, dim=2) + 0.01 * F.softmax(pos_aff, dim=2)

    torch.manual_seed(0)
    image, masks = torch.randn(3, 3, 16, 24), torch.rand(3, 4, 16, 24)  # 384 pixels: par_step's run-by-run sum
    for dilations in ((1, 2, 4, 8, 12, 24), (1, 2), (1, 2, 4, 8, 12)):  # 48, 16 and 40 neighbours
        aff = stacked_affinity(image, dilations)
        assert torch.equal(par_affinity(image, (16, 24), dilations), aff)
        expected = masks
        for _ in range(3):
            expected = (_neighbours(expected, dilations) * aff).sum(2)
        got = masks
        for _ in range(3):
            got = par_step(got, aff, dilations)
        assert torch.equal(got, expected)
    whole = par(image, masks, iters=4)
    assert all(torch.equal(whole[b:b + 1, :2], par(image[b:b + 1], masks[b:b + 1, :2].contiguous(), iters=4))
               for b in range(3))  # each crop and map alone: a batch padded to one K changes nothing


def test_batched_online_masks_are_each_crops_own():
    from vpltool.stages.train_decoder.online import online_crop_scores, par_labels

    torch.manual_seed(1)
    attention = torch.softmax(torch.randn(8, 16, 16) * 3, dim=-1)
    images = torch.randn(3, 3, 64, 64)
    cams = [torch.rand(2, 4, 4), torch.rand(0, 4, 4), torch.rand(1, 4, 4)]
    classes = [[2, 5], [], [3]]
    alone = [online_pseudo_mask(c, k, attention, images[b], par_iters=3) for b, (c, k) in enumerate(zip(cams, classes))]
    scores = [online_crop_scores(c, attention, (64, 64)) if k else None for c, k in zip(cams, classes)]
    batched = par_labels(images, scores, classes, iters=3)
    assert all(torch.equal(batched[b], alone[b]) for b in range(3))
    assert set(batched[0].unique().tolist()) <= {0, 2, 5} and not batched[1].any()


def test_weclip_learning_rate_is_polywarmupadamw():
    cfg = decoder_recipe("weclip", iters=1000)

    def weclip(t: int) -> float:  # WeCLIP utils/optimizer.py:PolyWarmupAdamW.step, decoder group (2e-4 x 10)
        if t < 50:
            return 2e-3 * (1 - (1 - t / 50) * (1 - 1e-6))
        return 2e-3 * (1 - t / 1000) ** 1.0

    from vpltool.stages.train_decoder import lr_at

    assert lr_at(cfg, 0) == pytest.approx(2e-9)
    assert all(lr_at(cfg, t) == pytest.approx(weclip(t), rel=1e-12) for t in (0, 1, 25, 49, 50, 51, 500, 999))


def test_online_mask_boxes_on_the_device_are_opencvs():
    from vpltool.stages.cam.caa import box_mask, box_masks

    torch.manual_seed(3)
    cams = torch.rand(5, 9, 11) ** 3  # scattered peaks: several contours per map, some at the border
    cams[0] = 0  # an empty map: no box
    opencv = torch.from_numpy(np.stack([box_mask(c, 0.4, parity=True) for c in cams.numpy()]))
    assert torch.equal(box_masks(cams, 0.4, parity=True), opencv)
    attention = torch.rand(8, 99, 99)
    image = torch.randn(3, 16 * 9, 16 * 11)
    given = online_pseudo_mask(cams[1:3], [2, 5], attention, image, par_iters=3, boxes=opencv[1:3])
    assert torch.equal(online_pseudo_mask(cams[1:3], [2, 5], attention, image, par_iters=3), given)


# --------------------------------------------------------------------------------------------- WeCLIP+
TOY_DINO = Path(__file__).parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"
PLUS = replace(decoder_recipe("weclip+", iters=4, batch_size=2, crop_size=64, dim=16, layers=1, heads=2,
                              checkpoint_every=2, dino_model="test_vit", dino_weights=str(TOY_DINO)),
               log_every=1, warmup_iters=2, self_label_start=2)


def test_dice_loss_is_weclip_plus_formula():
    from vpltool.stages.train_decoder.online import dice_loss

    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    p, y = F.softmax(logits, 1), F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    expected = 1 - (2 * (p * y).sum((0, 2, 3)) / ((p + y).sum((0, 2, 3)) + 1e-7)).mean()
    assert torch.allclose(dice_loss(logits, labels), expected)
    sure = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(sure, labels) < 1e-6


def test_weclip_plus_recipe_settings():
    cfg = decoder_recipe("weclip+")
    assert (cfg.dino_model, cfg.lr, cfg.read_blocks, cfg.cam_input_back, cfg.rfm_from, cfg.cam_blocks,
            cfg.lambda_dice, cfg.lambda_cross, cfg.self_label_from) == (
        "vit_small_patch14_dinov2.lvd142m", 2e-4, 1, 2, 0, 6, 1.0, 0.1, 18001)
    with pytest.raises(VplError, match="weclip\\+"):
        DecoderConfig(dino_model="test_vit")


def test_gradcam_input_two_blocks_back_is_that_blocks_output(tiny_spec):
    from vpltool.models import load_backbone
    from vpltool.stages.train_decoder.online import frozen_online

    bb = load_backbone(tiny_spec, "cpu")
    pixels = torch.randn(2, 3, 64, 64)
    one, two = frozen_online(bb, pixels, [1], 3), frozen_online(bb, pixels, [1], 3, cam_input_back=2)
    assert torch.equal(one.feats, two.feats) and torch.equal(one.attention, two.attention)
    # the same block's output, within fp32 rounding: frozen_online keeps attention maps (the weights path of each
    # block), a plain encode runs the fused one, whose products go through oneDNN on a CPU
    plain = bb.encode(pixels, stop=bb.n_blocks - 2).tokens.float()
    assert torch.allclose(two.last_input, plain, rtol=0, atol=1e-5), (two.last_input - plain).abs().max()
    assert not torch.equal(one.last_input, two.last_input)


@pytest.fixture(scope="module")
def plus_run(world, text_protos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("weclip_plus")
    run_train_decoder(world, text_protos, out, PLUS, CPU)
    return out


def test_weclip_plus_trains_with_the_toy_dino_and_predicts(plus_run, tmp_path):
    records = [json.loads(line) for line in (plus_run / "log.jsonl").read_text().splitlines()]
    assert all({"ce", "aff", "cross", "dice", "loss"} <= set(r) for r in records)
    model, f = load_decoder(plus_run / "decoder.safetensors")
    assert f.meta("decoder_arch")["dino_width"] == model.dino_width and f.meta("decoder_arch")["blocks"] == [1]
    assert "dino_mlp.0.weight" in f.tensors and f.meta("decoder_config")["dino_model"] == "test_vit"
    masks = tmp_path / "masks"
    assert run_predict(plus_run / "decoder.safetensors", None, "val", masks, PredictConfig(), CPU).done == 3
    result, _ = run_eval(masks)
    assert 0.0 <= result["miou"] <= 1.0


def test_weclip_plus_resume_is_bit_exact(plus_run, world, text_protos, tmp_path):
    a = io.read_decoder(plus_run / "decoder.safetensors").tensors
    b = _stopped_then_resumed(world, text_protos, tmp_path / "resumed", PLUS)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("weights, message", [("missing.safetensors", "DINO weights file not found"),
                                              ("hub", "not in the local cache")])
def test_weclip_plus_without_dino_weights_is_one_line_and_writes_nothing(world, text_protos, tmp_path, weights,
                                                                         message):
    out = tmp_path / "never"
    cfg = replace(PLUS, dino_model="vit_small_patch14_dinov2.lvd142m" if weights == "hub" else "test_vit",
                  dino_weights=str(tmp_path / weights) if weights != "hub" else "hub")
    with pytest.raises(VplError, match=message):
        run_train_decoder(world, text_protos, out, cfg, CPU)
    assert not out.exists()


def test_dino_patch_tokens_resize_positions_as_dinov2():
    """WeCLIP+ hub-loads DINOv2, whose interpolate_pos_encoding resizes the positions bicubically with a scale factor
    of (grid + 0.1) / native grid; timm's resample maps the grid otherwise (0.28 max |diff| on a random ViT-S/14 at
    22x22). At the native grid both are the model's own forward."""
    from vpltool.models import DinoSpec, load_model

    dino = load_model("dino", DinoSpec("test_vit", str(TOY_DINO)), "cpu")
    m, p = dino.model, dino.patch_size
    g0, g1 = (int(v) for v in m.patch_embed.grid_size)
    gen = torch.Generator().manual_seed(0)
    native = torch.randn(1, 3, g0 * p, g1 * p, generator=gen)
    with torch.no_grad():
        assert torch.allclose(dino.patch_tokens(native).flatten(1, 2), m.forward_features(native)[:, 1:], atol=1e-5)
        x = torch.randn(2, 3, 7 * p, 6 * p, generator=gen)
        pos = m.pos_embed[0, 1:].reshape(1, g0, g1, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, scale_factor=((7 + 0.1) / g0, (6 + 0.1) / g1), mode="bicubic", align_corners=False)
        tokens = m.patch_embed.proj(x).flatten(2).transpose(1, 2) + pos.flatten(2).transpose(1, 2)
        cls = (m.cls_token + m.pos_embed[:, :1]).expand(2, -1, -1)
        want = m.norm(m.blocks(torch.cat([cls, tokens], 1)))[:, 1:]
        got = dino.patch_tokens(x).flatten(1, 2)
        timm_own = m.forward_features(x)[:, 1:]
    assert got.shape == (2, 42, m.num_features)
    assert torch.allclose(got, want, atol=1e-5)
    assert (timm_own - want).abs().max() > 1e-3  # the two resizes do differ here: the check above can fail

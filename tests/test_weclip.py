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
from vpltool.eval import run_eval
from vpltool.predict import run_predict
from vpltool.train_decoder import run_train_decoder
from vpltool.train_decoder.online import (
    affinity_loss,
    affinity_targets,
    decoder_affinity,
    online_pseudo_mask,
    par,
    propagation_attention,
    radius_mask,
    weclip_losses,
)

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


def test_weclip_resume_gives_the_weights_of_an_uninterrupted_run(weclip_run, world, text_protos, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_3(it: int, record: dict) -> None:
        if it == 3:
            raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        run_train_decoder(world, text_protos, out, WECLIP, CPU, on_iter=stop_at_3)
    run_train_decoder(world, text_protos, out, WECLIP, CPU, resume=True)
    a, b = (io.read_decoder(p / "decoder.safetensors").tensors for p in (weclip_run, out))
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
    from vpltool.train_decoder.online import LabelledImages

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

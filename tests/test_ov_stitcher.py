"""``--dense ov-stitcher`` (atw617/OV-Stitcher@91a9489): its stitching against literal restatements of the
reference's two ``stitch_features_from_batch`` loops, its DINO last block rebuilt on the stitched grid, the windows
it refuses, a forward on the tiny test CLIP with the toy DINO (fp32 and bf16), and `segment` on scikit-image
photos with a folder of region masks. The bit-level parity with the reference's own code is
parity/ov_stitcher_parity.py's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool.errors import VplError
from vpltool.models.dense.ov_stitcher import CORRELATION, check_windows, dino_features, ov_stitcher_logits, stitch
from vpltool.models.dense.segmentor import slide_windows

TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


def _ref_stitch(feature, boxes, patch, size, pad_by_ceil):
    """The reference's loop (its segmentor's when ``pad_by_ceil``: the valid cells are the window's grid less the
    padding's; its transformer's otherwise: the window's pixels over the patch), for unpadded windows."""
    d = feature.shape[1]
    preds = torch.zeros(1, d, size[0] // patch, size[1] // patch)
    count = torch.zeros(1, 1, size[0] // patch, size[1] // patch)
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        fh, fw = math.ceil((y2 - y1) / patch), math.ceil((x2 - x1) / patch)
        vh, vw = (fh, fw) if pad_by_ceil else ((y2 - y1) // patch, (x2 - x1) // patch)
        feat = feature[i].reshape(d, fh, fw)[:, :vh, :vw]
        preds[:, :, y1 // patch : y1 // patch + vh, x1 // patch : x1 // patch + vw] += feat.unsqueeze(0)
        count[:, :, y1 // patch : y1 // patch + vh, x1 // patch : x1 // patch + vw] += 1
    assert (count == 0).sum() == 0
    return (preds / count)[0]


@pytest.mark.parametrize("size", [(112, 112), (112, 299), (171, 250)])
def test_stitch_is_the_references_loops(size):
    boxes = slide_windows(*size, 112, 56)
    g = torch.Generator().manual_seed(sum(size))
    for patch in (8, 16):
        maps = torch.randn(len(boxes), 5, 112 // patch, 112 // patch, generator=g)
        got = stitch(maps, boxes, patch, size)
        for ceil in (True, False):
            assert torch.equal(got, _ref_stitch(maps.flatten(2), boxes, patch, size, ceil))


def test_dino_last_block_on_one_window_is_dinos_own():
    """One window covering the input: stitching is the identity, so the rebuilt last block is DINO's own on that
    input, its output's residual base the final-normed input (the reference's get_intermediate_layers(n=2)[0])."""
    from vpltool.models import load_model
    from vpltool.models.backbones.dino import DinoSpec

    dino = load_model("dino", DinoSpec("test_vit", str(TOY_DINO)), "cpu")
    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, grid = dino_features(dino, pixels, [(0, 112, 0, 112)], (112, 112))
        x, _ = dino.last_block_input(pixels)
        blk = dino.model.blocks[-1]
        b, n, c = x.shape
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(b, n, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)[:, :, :, 1:]
        att = ((qkv[0] @ qkv[1].transpose(-2, -1)) * blk.attn.scale).softmax(-1) @ qkv[2]  # written out
        y = dino.model.norm(x)[:, 1:] + blk.attn.proj(att.transpose(1, 2).reshape(1, n - 1, c))
        y = F.normalize(y + blk.mlp(blk.norm2(y)), dim=-1)[0]
    assert grid == (7, 7) and (got - y).abs().max() < 1e-5


def test_windows_it_cannot_stitch_are_refused_in_one_line():
    check_windows(336, 448, 56)
    for crop, short, text in ((300, 448, "--slide-crop 300: --dense ov-stitcher stitches whole windows"),
                              (0, 448, "--slide-crop 0"),
                              (336, 224, "--short-side 224 is smaller than --slide-crop 336")):
        with pytest.raises(VplError, match=text) as e:
            check_windows(crop, short, 56)
        assert "\n" not in str(e.value)


def _backbone(tiny_spec):
    from vpltool.models import load_backbone, load_model
    from vpltool.models.backbones.dino import DinoSpec

    proxy = load_model("dino", DinoSpec("test_vit", str(TOY_DINO)), "cpu")
    return load_backbone(tiny_spec, "cpu").with_dense("ov-stitcher", proxy=proxy)


def test_a_forward_on_the_test_clip_in_fp32_and_bf16(tiny_spec):
    bb = _backbone(tiny_spec)
    assert bb.n_blocks == 3  # the depth rule: its spatial branch is block 0
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 112, 168, generator=g)
    ids = torch.zeros(112, 168, dtype=torch.int32)
    ids[:56, :80], ids[60:, 100:], ids[20:40, 120:160] = 4, 9, 12
    text = F.normalize(torch.randn(5, bb.embed_dim, generator=g), dim=-1)
    with torch.no_grad():
        (logits,) = ov_stitcher_logits(bb, pixels, text, [ids], [(90, 130)], 112, 56, CORRELATION)
    assert logits.shape == (5, 90, 130) and torch.isfinite(logits).all()
    assert logits.abs().max() <= 1.0 + 1e-5  # cosines
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # --precision bf16: the same arithmetic
        (lg,) = ov_stitcher_logits(bb, pixels, text, [ids], [(90, 130)], 112, 56, CORRELATION)
    assert lg.dtype == torch.float32 and torch.isfinite(lg).all() and (lg - logits).abs().max() < 0.1
    with pytest.raises(VplError, match="narrower than --slide-crop 112"):
        ov_stitcher_logits(bb, pixels[..., :100, :], text, [ids[:100]], [(90, 130)], 112, 56, CORRELATION)


def _photos(folder: Path) -> Path:
    """Two scikit-image photos and, beside them, a region map each: four quarters, the top-left one unsegmented."""
    import skimage.data
    from PIL import Image

    (folder / "photos").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name in ("chelsea", "coffee"):
        image = getattr(skimage.data, name)()
        h, w = image.shape[0] // 3, image.shape[1] // 3
        Image.fromarray(image).resize((w, h)).save(folder / "photos" / f"{name}.png")
        ids = np.zeros((h, w), np.int32)
        ids[: h // 2, w // 2 :], ids[h // 2 :, : w // 2], ids[h // 2 :, w // 2 :] = 7, 8, 9
        np.savez(folder / "masks" / f"{name}.npz", instance_mask=ids)
    return folder


def test_segment_runs_on_real_photos_with_region_masks(tiny_spec, tmp_path):
    """The whole method through `segment` on two real photos (random weights: the masks mean nothing, the run is
    real): its settings refused before any model loads, then masks written, every region but the unsegmented one a
    single label (the map correction), the region files recorded by content."""
    from vpltool import io
    from vpltool.config import RuntimeConfig, SegmentConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    root = _photos(tmp_path)
    ds = open_dataset(root / "photos")
    base = dict(dense="ov-stitcher", classes=("cat", "cup"), templates="ov-stitcher", background="wall,floor",
                proxy_model="test_vit", proxy_weights=str(TOY_DINO), region_masks=str(root / "masks"))
    with pytest.raises(VplError, match="--short-side 112 is smaller than --slide-crop 336"):
        run_segment(ds, tmp_path / "refused", tiny_spec, SegmentConfig.of(**base, short_side=112),
                    RuntimeConfig(device="cpu", workers=1))
    assert not (tmp_path / "refused").exists()
    cfg = SegmentConfig.of(**base, short_side=112, slide_crop=112, slide_stride=56, prob_threshold=0.0)
    out = tmp_path / "ov"
    s = run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == 2
    params = io.read_stage_record(out, "segment")["params"]
    assert params["region_source"] == {"generator": "folder"}  # the folder by content: its path, digest, files
    assert len(params["region_masks"]["sha256"]) == 64
    assert params["templates"] == "ov-stitcher"
    for item in ds.items:
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=3)
        ids = np.load(root / "masks" / f"{item.id}.npz")["instance_mask"]
        assert mask.shape == ids.shape
        for v in (7, 8, 9):
            assert len(np.unique(mask[ids == v])) == 1


@pytest.mark.parametrize("proxy", ["vpl_test_dinov3", "vpl_test_radio_v3"])
def test_a_dinov3_or_radio_proxy_is_refused_before_any_model_loads_naming_the_option(proxy, world, tmp_path):
    """OV-Stitcher rebuilds its proxy's last block with DINO's forward: a DINOv3 (RoPE) or C-RADIOv3 proxy is one line
    naming --proxy-model, before any model loads (it was refused mid-run, naming an internal function)."""
    import tiny_towers  # noqa: F401 (registers the tiny DINOv3 and C-RADIOv3 in timm)
    from typer.testing import CliRunner

    from vpltool.cli import app

    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(world), "--split", "val", "-o", str(out), "--classes", "circle,star",
                                 "--model", "vpl-test-vit", "--pretrained", "none", "--dense", "ov-stitcher",
                                 "--proxy-model", proxy, "--proxy-weights", "none", "--region-masks", "sam",
                                 "--sam-model", "toy", "--sam-weights", "none", "--device", "cpu"])
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "segment:" not in r.output, r.output
    assert errors[0].startswith(f"error: --proxy-model {proxy}: --dense ov-stitcher rebuilds its proxy's last block")
    assert "--proxy-model vit_base_patch8_224.dino" in errors[0] and not out.exists()

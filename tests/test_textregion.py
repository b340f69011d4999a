"""``--dense textregion`` (avaxiao/TextRegion ``model_semantic.py``): its views against torchvision's resize of a
naive tile loop, the multi-resolution assembly and the global-patch filter against per-patch restatements, the
pooling of unit values, the painting of region logits (banded and whole), the mask files and their refusals, and
runs on the tiny test CLIP: `segment` over a folder of masks, and the Python segmenter on a real photo. The parity
with the reference's own code is parity/textregion_parity.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool.errors import VplError
from vpltool.models.dense.textregion import (
    RegionPooling,
    clip_views,
    global_patch_filter,
    multi_resolution,
    photo_logits,
    region_logits,
)
from vpltool.models.dense.textregion.regions import read_mask_file

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@pytest.mark.parametrize("size", [(40, 70), (16, 50), (33, 16)])
def test_views_are_torchvisions_resize_of_the_tiles(size):
    from PIL import Image
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(size[1])
    raw = torch.rand(3, *size, generator=g)
    cfg = RegionPooling(crop=16)
    views, (nh, nw) = clip_views(raw, cfg, MEAN, STD)
    tv = v2.Compose([v2.Resize((16, 16), interpolation=Image.BICUBIC), v2.Normalize(MEAN.flatten().tolist(),
                                                                                    STD.flatten().tolist())])
    h, w = size
    assert (nh, nw) == (max(h // 16, 1), max(w // 16, 1))
    th, tw = -(-h // nh), -(-w // nw)
    want = [tv(raw)]
    for i in range(nh):  # the tiles, each cut flush with the border when it would pass it
        for j in range(nw):
            y2, x2 = min((i + 1) * th, h), min((j + 1) * tw, w)
            want.append(tv(raw[:, y2 - th : y2, x2 - tw : x2]))
    assert len(views) == 1 + nh * nw and torch.allclose(views, torch.stack(want), atol=1e-6)
    halves, _ = clip_views(raw, RegionPooling(crop=16, halves=True), MEAN, STD)
    assert torch.allclose(halves[0], tv(raw[:, :, : w // 2]), atol=1e-6) and len(halves) == 2 + nh * nw


def _naive_assembly(maps, nh, nw, halves, weight):
    g = maps.shape[-1]
    out = torch.zeros(1, maps.shape[1], nh * g, nw * g)
    whole = [maps[0]] if not halves else [maps[0], maps[1]]
    width = nw * g // len(whole)
    for k, m in enumerate(whole):
        out[..., k * width : (k + 1) * width] = weight * F.interpolate(m[None], size=(nh * g, width),
                                                                       mode="bilinear", align_corners=False)
    tiles = maps[len(whole) :]
    for i in range(nh):
        for j in range(nw):
            out[0, :, i * g : (i + 1) * g, j * g : (j + 1) * g] += tiles[i * nw + j]
    return out


@pytest.mark.parametrize("halves,weight", [(False, 1.0), (True, 1.0), (False, 0.5)])
def test_multi_resolution_adds_each_tile_onto_the_resized_whole(halves, weight):
    g = torch.Generator().manual_seed(3)
    nh, nw = 2, 4
    maps = torch.randn((2 if halves else 1) + nh * nw, 5, 3, 3, generator=g)
    got = multi_resolution(maps, (nh, nw), halves, weight)
    assert torch.allclose(got, _naive_assembly(maps, nh, nw, halves, weight), atol=1e-6)
    with pytest.raises(VplError, match="even grid width"):
        multi_resolution(torch.randn(3, 5, 3, 3), (1, 1), True)


def _naive_filter(units, masks, threshold):
    sim = units @ units.T
    out = masks.clone()
    n_regions, n_patches = masks.shape
    avg = torch.stack([sim[:, masks[r] > 0].mean(dim=1) for r in range(n_regions)], dim=1)  # [P, R]
    for p in range(n_patches):
        inside = [r for r in range(n_regions) if masks[r, p] > 0]
        outside = [r for r in range(n_regions) if masks[r, p] == 0]
        belong = avg[p, inside].mean() if inside else torch.tensor(0.0)
        away = avg[p, outside].mean() if outside else torch.tensor(0.0)
        if belong - away < threshold:
            out[:, p] = 0
    return out


@pytest.mark.parametrize("seed", range(4))
def test_global_patch_filter_is_a_per_patch_restatement(seed):
    g = torch.Generator().manual_seed(seed)
    units = F.normalize(torch.randn(30, 8, generator=g) + torch.randn(1, 8, generator=g), dim=-1)
    masks = (torch.rand(6, 30, generator=g) - 0.4).clamp(0, 1)
    masks[:, :2] = 0  # patches no region covers: their in-region mean is 0
    got = global_patch_filter(units, masks.clone(), 0.07)
    assert torch.allclose(got, _naive_filter(units, masks, 0.07))
    assert (got == 0).sum() > (masks == 0).sum()  # some patches are global


@pytest.fixture(scope="module")
def bb(tiny_spec):
    from vpltool.models import load_backbone

    return load_backbone(tiny_spec, "cpu", dense="textregion")


def test_regions_pool_the_unit_values_when_filtering_and_the_raw_ones_otherwise(bb):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(bb.width, 12, generator=g)
    masks = torch.rand(3, 12, generator=g)
    text = F.normalize(torch.randn(4, bb.embed_dim, generator=g), dim=-1)
    blk = bb.blocks[-1]

    def expected(v, m):
        feats = bb.project(blk.attn.out_proj(m @ v.T))
        return F.normalize(feats, dim=-1) @ text.T

    with torch.no_grad():
        raw, keep = region_logits(bb, values, masks, text, RegionPooling(remove_global_patch=False))
        assert keep.all() and torch.allclose(raw, expected(values, masks), atol=1e-5)
        unit, keep = region_logits(bb, values, masks, text, RegionPooling(threshold=-10.0))  # filters nothing
        assert keep.all() and torch.allclose(unit, expected(F.normalize(values, dim=0), masks), atol=1e-5)
        _, keep = region_logits(bb, values, masks, text, RegionPooling(threshold=10.0))  # every patch global
    assert not keep.any()


def test_photo_logits_paint_the_regions_and_the_uncovered_pixels_take_the_patch_logits():
    g = torch.Generator().manual_seed(1)
    region = torch.randn(3, 4, generator=g)
    masks = (torch.rand(3, 20, 30, generator=g) * 4).half()
    masks[:, :5] = 0  # the top rows: no region
    fallback = torch.randn(1, 4, 5, 6, generator=g)
    whole = photo_logits(region, masks, fallback)
    assert torch.equal(photo_logits(region, masks, fallback, rows=3), whole)
    soft = masks.float().clamp(0, 1)
    assert torch.allclose(whole[:, 5:], torch.einsum("rq,rhw->qhw", region, soft)[:, 5:], atol=1e-5)
    up = F.interpolate(fallback, size=(20, 30), mode="bilinear", align_corners=False)[0]
    assert torch.equal(whole[:, :5], up[:, :5])


def test_mask_files_and_their_refusals(tmp_path):
    good = tmp_path / "a.npz"
    np.savez(good, masks=np.ones((2, 3, 4), np.float32) * 2.5)
    assert read_mask_file(good, (3, 4)).dtype == np.float16
    np.savez(good, masks=np.ones((2, 3, 4), bool))
    assert read_mask_file(good, (3, 4)).max() == 1
    cases = {"missing.npz": None, "corrupt.npz": b"not a zip", "nokey.npz": {"instance_mask": np.zeros((3, 4), int)},
             "flat.npz": {"masks": np.zeros((3, 4))}, "shape.npz": {"masks": np.zeros((1, 4, 3))},
             "nan.npz": {"masks": np.full((1, 3, 4), np.nan)}, "negative.npz": {"masks": -np.ones((1, 3, 4))}}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            np.savez(path, **content)
        with pytest.raises(VplError) as e:
            read_mask_file(path, (3, 4))
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def _mask_folder(images, folder: Path) -> Path:
    """One mask file per image: its left half, its lower right quarter (overlapping nothing) and a soft band; the
    top right stays uncovered."""
    from vpltool import io

    folder.mkdir()
    for path in images:
        h, w = io.load_image(path).shape[:2]
        m = np.zeros((3, h, w), np.float16)
        m[0, :, : w // 2] = 3
        m[1, h // 2 :, w // 2 :] = 0.5
        m[2, h // 3 : h // 2] = 1.5
        np.savez(folder / f"{Path(path).stem}.npz", masks=m)
    return folder


def test_segment_with_a_folder_of_masks_and_a_bad_file(world, tiny_spec, tmp_path):
    from vpltool import io
    from vpltool.config import RuntimeConfig, SegmentConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    masks = _mask_folder([it.image for it in ds.items], tmp_path / "masks")
    cfg = SegmentConfig.of(dense="textregion", templates="a photo of a {}.", background="grass,sky", short_side=64,
                           long_side=128, region_masks=str(masks), prob_threshold=0.0)
    out = tmp_path / "textregion"
    s = run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == len(ds.items)
    params = io.read_stage_record(out, "segment")["params"]
    assert params["region_source"]["generator"] == "folder"  # the folder by content, in place of its path
    assert params["region_masks"]["path"] == str(masks.resolve()) and len(params["region_masks"]["sha256"]) == 64
    assert [name for name, _ in params["region_masks"]["files"]] == [f"{it.image.stem}.npz" for it in ds.items]
    assert params["settings"]["long_side"] == 128
    for item in ds.items:  # a region with one mask of constant weight is one label
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=len(ds.classes))
        h, w = mask.shape
        assert len(np.unique(mask[: h // 3, : w // 2])) == 1
    bad = masks / f"{ds.items[1].id}.npz"
    np.savez(bad, masks=np.zeros((1, 5, 5), np.float16))
    with pytest.raises(VplError, match=f"{bad}.*5x5 region masks"):
        run_segment(ds, tmp_path / "again", tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())


def test_textregion_runs_end_to_end_on_a_photo(tiny_spec, bb, tmp_path):
    """A real photo (scikit-image's astronaut), random weights: the masks mean nothing, the run is real; without
    masks, or asked for features alone, it refuses in one line."""
    import skimage.data
    from PIL import Image

    import vpltool

    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()[::4, ::4]).save(photo)  # 128 x 128
    masks = _mask_folder([photo], tmp_path / "masks")
    seg = vpltool.segmenter("textregion", model=tiny_spec.model, pretrained="none",
                            model_config_dir=tiny_spec.config_dir, device="cpu", short_side=96, long_side=144,
                            region_masks=str(masks), templates="a photo of a {}.")
    out = seg(photo, ["person", "rocket"])
    assert out.labels.shape == (128, 128) and out.scores.shape == (3, 128, 128)
    assert (out.scores >= 0).all() and (out.scores <= 1).all()
    assert len(np.unique(out.labels[: 128 // 3, : 64])) == 1  # one mask of constant weight: one label
    with pytest.raises(VplError, match="needs class-agnostic region masks"):
        vpltool.segmenter("textregion", model=tiny_spec.model, pretrained="none",
                          model_config_dir=tiny_spec.config_dir, device="cpu")(photo, ["person"])
    with pytest.raises(VplError, match="no features without each image's region masks"):
        bb.dense_features(torch.zeros(1, 3, 32, 32))


def test_the_uncovered_pixels_read_sclips_last_block_made_for_the_rows_they_need(bb):
    """SCLIP's block made for some query rows is the whole block's rows, and the cells a bilinear resize reads for
    some outputs are enough to give those outputs."""
    from vpltool.models.dense.textregion.kernels import _qkv, _sclip_rows, _sources_2d

    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(2, 3, 64, 48, generator=g)
    with torch.no_grad():
        tokens = bb.encode(pixels, stop=bb.n_blocks - 1).tokens
        whole = bb.dense(bb.last_block(tokens, (4, 3)))  # [2, 12, D]
        rows = torch.tensor([0, 5, 11])
        part = _sclip_rows(bb, tokens[1], _qkv(bb.blocks[-1], tokens)[1], rows + 1)
    assert torch.allclose(part, whole[1, rows], atol=1e-5)
    small = torch.randn(1, 2, 5, 7, generator=g)
    needed = torch.zeros(23, 31, dtype=torch.bool)
    needed[3:6, 20:25] = True
    reads = _sources_2d(needed, (5, 7))
    masked = torch.where(reads, small, torch.full_like(small, float("nan")))
    up = F.interpolate(masked, size=(23, 31), mode="bilinear", align_corners=False)
    assert torch.isfinite(up[..., needed]).all() and reads.sum() < reads.numel()

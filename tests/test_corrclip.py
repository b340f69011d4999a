"""``--dense corrclip`` (zdk258/CorrCLIP ``CorrCLIPv1/``): its DBSCAN as connected components against scikit-learn's,
its scope reconstruction, semantic-branch mask and map correction against literal restatements of the reference's
loops, the region-mask files and their refusals, the depth rule, and a forward on the tiny test CLIP with the toy
DINO. The bit-level parity with the reference's own code is parity/corrclip_parity.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool.errors import VplError
from vpltool.models.dense.corrclip import (
    Correlation,
    dbscan_labels,
    map_correction,
    merge_regions,
    region_attention_mask,
    scope_attention,
    spatial_blocks,
)
from vpltool.models.dense.corrclip.regions import paint_masks, read_region_file

TOY_DINO = Path(__file__).resolve().parents[1] / "vpltool" / "assets" / "toy-dino" / "model.safetensors"


def _distances(seed: int, n: int) -> np.ndarray:
    """A symmetric distance matrix ``max S - S`` of random unit rows, some entries set exactly to 0.2 (DBSCAN's
    ``<=`` boundary)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) + rng.normal(size=(1, 4)) * 2
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = (x @ x.T).astype(np.float32)
    d = s.max() - s
    d = (d + d.T) / 2
    i, j = rng.integers(0, n, size=(2, max(1, n // 3)))
    d[i, j] = d[j, i] = np.float32(0.2)
    return d


@pytest.mark.parametrize("seed", range(12))
def test_dbscan_is_scikit_learns(seed):
    from sklearn.cluster import DBSCAN

    n = 1 + seed * 3
    d = _distances(seed, n)
    want = DBSCAN(metric="precomputed", eps=0.2, min_samples=1).fit_predict(d)
    assert np.array_equal(dbscan_labels(d, 0.2), want)


def _ref_merge(ids, feats, eps=0.2):
    """The reference's mask merging (transformer.py), batch of one, with scikit-learn's DBSCAN."""
    from sklearn.cluster import DBSCAN

    masks = ids.clone()
    values = torch.unique(masks)
    if values.shape[0] > 2:
        region_masks = [v == masks for v in values]
        inst = F.normalize(torch.stack([feats[m].mean(dim=0) for m in region_masks]), dim=1)[1:]
        sim = torch.einsum("m c, n c -> m n", inst, inst)
        cluster = torch.from_numpy(DBSCAN(metric="precomputed", eps=eps, min_samples=1).fit_predict(
            (sim.max() - sim).numpy())).to(masks.dtype)
        for k, c in enumerate(cluster, start=1):
            masks[region_masks[k]] = c + 10000
    return masks


def _ref_scope(feats, ids, tau=4.0):
    sim = feats @ feats.T
    regions = [(v == ids) for v in torch.unique(ids)]
    equal = torch.zeros_like(sim).bool()
    for m in regions[1:]:
        equal += torch.outer(m, m)
    m = regions[0]
    equal += (m.unsqueeze(0) + m.unsqueeze(1)) * (sim > sim.mean())
    sim[~equal] = float("-inf")
    return (sim * tau).softmax(-1)


@pytest.mark.parametrize("seed", range(3))
def test_merging_and_scope_are_the_references(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 8, generator=g)
    ids = torch.randint(0, 6, (48,), generator=g, dtype=torch.int32)
    feats = F.normalize(base[ids % 4] + 0.3 * torch.randn(48, 8, generator=g), dim=-1)
    merged = merge_regions(ids, feats, Correlation())
    assert torch.equal(merged, _ref_merge(ids, feats))
    assert torch.allclose(scope_attention(feats, merged, 4.0), _ref_scope(feats, merged), atol=1e-6)


def test_semantic_mask_is_the_references():
    tok = torch.tensor([0, 0, 3, 3, 7, 0])
    regions = tok[None] == torch.unique(tok)[:, None]
    r, hw = regions.shape
    want = torch.zeros(r + 1 + hw, r + 1 + hw).bool()  # the reference's construction, then negated
    want[r:, r:] = True
    want[:r, r] = True
    want[:r, r + 1 :] = regions
    assert torch.equal(region_attention_mask(regions), ~want)


def test_spatial_blocks_and_the_depth_rule():
    assert list(spatial_blocks(12)) == [5, 6, 7, 8, 9]
    assert list(spatial_blocks(24)) == list(range(10, 22))
    assert list(spatial_blocks(6)) == [2, 3]  # the reference's L-4
    assert list(spatial_blocks(4)) == [1]  # the depth rule: the toy CLIP
    assert list(spatial_blocks(3)) == [0]
    with pytest.raises(VplError, match="at least 3"):
        spatial_blocks(2)


def test_map_correction_is_torch_mode_with_the_smallest_on_ties():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 9, (20, 24), generator=g)
    labels = torch.randint(0, 4, (20, 24), generator=g)
    ids[:2, :2], labels[:2, :2] = 11, torch.tensor([[3, 1], [1, 3]])  # a tie: 1 wins
    want = labels.clone()[None]
    inst = ids[None]
    for v in torch.unique(inst)[1:]:
        m = inst == v
        want[m] = torch.mode(want[m])[0]
    got = map_correction(labels, ids)
    assert torch.equal(got, want[0])
    assert (got[:2, :2] == 1).all()


def test_paint_masks_paints_larger_masks_last():
    small = np.zeros((4, 4), bool)
    small[0, 0] = True
    big = np.zeros((4, 4), bool)
    big[:2, :2] = True
    ids = paint_masks([{"segmentation": big, "area": 4}, {"segmentation": small, "area": 1}], (4, 4))
    assert ids[0, 0] == 2 and ids[1, 1] == 2 and ids[3, 3] == 0


def test_region_files_and_their_refusals(tmp_path):
    good = tmp_path / "a.npz"
    np.savez(good, instance_mask=np.arange(12, dtype=np.int32).reshape(3, 4))
    assert read_region_file(good, (3, 4)).dtype == np.int64
    cases = {"missing.npz": None, "corrupt.npz": b"not a zip", "nokey.npz": {"masks": np.zeros((3, 4), int)},
             "float.npz": {"instance_mask": np.zeros((3, 4))}, "shape.npz": {"instance_mask": np.zeros((4, 3), int)}}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            np.savez(path, **content)
        with pytest.raises(VplError) as e:
            read_region_file(path, (3, 4))
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    bare = tmp_path / "bare.npz"  # np.save's one array under an .npz name (was a TypeError)
    with open(bare, "wb") as fh:
        np.save(fh, np.zeros((3, 4), int))
    with pytest.raises(VplError, match="bare.npz: one bare array"):
        read_region_file(bare, (3, 4))


@pytest.mark.parametrize("dtype, low", [("int64", (1 << 24) - 1), ("int64", -(1 << 40)), ("uint64", (1 << 63) - 1)])
def test_region_ids_are_read_exactly_never_merged_or_wrapped(tmp_path, dtype, low):
    """Ids past 2^24 pass through float32 in the segmentor (the nearest resize of the map) and merged there
    (2^24 + 1 reads as 2^24); uint64 ids past 2^63 wrapped to negative ones in the int64 cast, and the smallest id
    (the unsegmented pixels) was no longer the smallest. Read, they keep every region apart and in order."""
    ids = (np.array(low, dtype=dtype) + np.arange(4, dtype=dtype)).reshape(2, 2).repeat(2, 0).repeat(2, 1)
    path = tmp_path / "big.npz"
    np.savez(path, instance_mask=ids)
    got = read_region_file(path, (4, 4))
    assert got.dtype == np.int64
    order = np.argsort(ids.ravel(), kind="stable")
    assert np.array_equal(np.argsort(got.ravel(), kind="stable"), order)  # the same order, the same regions
    assert len(np.unique(got)) == 4 and got.ravel()[order[0]] == got.min()
    from vpltool.models.dense.corrclip import input_regions

    resized = input_regions(torch.from_numpy(got), (4, 4))  # through float32, as the segmentor reads it
    assert len(torch.unique(resized)) == 4


def test_a_map_of_more_regions_than_float32_keeps_apart_is_refused(tmp_path, monkeypatch):
    from vpltool.models.dense.corrclip import regions

    monkeypatch.setattr(regions, "EXACT", 2)  # the 2^24 bound, made small: 5 distinct ids past it
    path = tmp_path / "many.npz"
    np.savez(path, instance_mask=np.arange(10, 15, dtype=np.int64).reshape(1, 5))
    with pytest.raises(VplError, match="many.npz: 5 regions, more than"):
        read_region_file(path, (1, 5))


def test_a_forward_on_the_test_clip_with_the_depth_rule(tiny_spec):
    from vpltool.models import load_backbone, load_model
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.dense.corrclip import CORRELATION, corrclip_logits, input_regions

    proxy = load_model("dino", DinoSpec("test_vit", str(TOY_DINO)), "cpu")
    bb = load_backbone(tiny_spec, "cpu").with_dense("corrclip", proxy=proxy)
    assert bb.n_blocks == 3
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 48, 64, generator=g)
    ids = torch.zeros(24, 32, dtype=torch.int64)
    ids[:12, :16], ids[12:, 20:] = 4, 9
    text = F.normalize(torch.randn(5, bb.embed_dim, generator=g), dim=-1)
    with torch.no_grad():
        (logits,) = corrclip_logits(bb, pixels, text, [input_regions(ids, (48, 64))], [(24, 32)], 32, 16,
                                    CORRELATION)
    assert logits.shape == (5, 24, 32) and torch.isfinite(logits).all()
    assert logits.abs().max() <= 1.0 + 1e-5  # cosines


def _region_folder(ds, folder: Path) -> Path:
    """One region map per val image: its left and right halves, and an unsegmented top band."""
    from vpltool import io

    folder.mkdir()
    for item in ds.items:
        h, w = io.load_image(item.image).shape[:2]
        ids = np.ones((h, w), np.int32)
        ids[:, w // 2 :] = 2
        ids[: h // 4] = 0
        np.savez(folder / f"{item.id}.npz", instance_mask=ids)
    return folder


@pytest.mark.numeric  # at --precision auto: bf16 on a CPU with AMX (its DBSCAN hand-off once raised there)
def test_segment_with_a_folder_of_region_masks_and_a_bad_file(world, tiny_spec, tmp_path):
    from vpltool import io
    from vpltool.config import RuntimeConfig, SegmentConfig
    from vpltool.data import open_dataset
    from vpltool.stages.segment import run_segment

    ds = open_dataset(world, "val")
    masks = _region_folder(ds, tmp_path / "masks")
    cfg = SegmentConfig.of(dense="corrclip", templates="a photo of a {}.", background="grass,sky", short_side=64,
                           slide_crop=64, slide_stride=32, proxy_model="test_vit", proxy_weights=str(TOY_DINO),
                           region_masks=str(masks), prob_threshold=0.0)
    out = tmp_path / "corrclip"
    s = run_segment(ds, out, tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert s.done == len(ds.items)
    params = io.read_stage_record(out, "segment")["params"]
    assert params["region_source"] == {"generator": "folder"}  # the folder by content: its path, digest, files
    assert params["region_masks"]["path"] == str(masks.resolve()) and len(params["region_masks"]["sha256"]) == 64
    assert [name for name, _ in params["region_masks"]["files"]] == [f"{it.id}.npz" for it in ds.items]
    for item in ds.items:  # the map correction: each region one label
        mask = io.read_mask(io.mask_path(out, item.id), num_classes=len(ds.classes))
        ids = np.load(masks / f"{item.id}.npz")["instance_mask"]
        for v in (1, 2):
            assert len(np.unique(mask[ids == v])) == 1
    bad = masks / f"{ds.items[1].id}.npz"
    np.savez(bad, instance_mask=np.zeros((5, 5), np.int32))
    with pytest.raises(VplError, match=f"{bad}.*5x5 region map"):
        run_segment(ds, tmp_path / "again", tiny_spec, cfg, RuntimeConfig(device="cpu", workers=1))
    assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())


def test_sam2_regions_are_its_generator_painted_as_the_reference(tmp_path):
    """``--region-masks sam2:CONFIG`` where the sam2 package is installed (skipped where it is not, as in CI): a
    seeded random SAM2 hiera-t from the package's own config, loaded from a checkpoint file as the reference loads
    SAM2-L; the region map equals the package's generator, run with CorrCLIP's settings and ``multimask_output=False``,
    painted as corrclip_segmentor.py's SAM2 branch paints (ascending area, ids 1..N, larger masks last).

    Random decoders give masks that are neither stable nor confident, so the generator would keep none: the
    hypernetworks' last layers are scaled by 200 and the IoU head's bias set to 3, which lets their masks pass the
    0.4 thresholds (the masks themselves stay the random model's)."""
    pytest.importorskip("sam2")
    import skimage.data
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    from vpltool.models.dense.corrclip.regions import _SOURCES, SAM_SETTINGS, region_source, source_record

    torch.manual_seed(0)
    model = build_sam2("sam2_hiera_t.yaml", None, device="cpu")
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(200.0)
        model.sam_mask_decoder.iou_prediction_head.layers[-1].bias.fill_(3.0)
    checkpoint = tmp_path / "sam2_hiera_t_random.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    image = np.ascontiguousarray(skimage.data.astronaut()[::8, ::8])  # 64 x 64

    source = region_source("sam2:sam2_hiera_t.yaml", sam_weights=str(checkpoint))
    try:
        assert source.generator.multimask_output is False
        assert (source.generator.pred_iou_thresh, source.generator.stability_score_thresh) == (0.4, 0.4)
        got = source.region_map(tmp_path / "astronaut.png", image)
    finally:
        _SOURCES.clear()

    reference = SAM2AutomaticMaskGenerator(
        model=build_sam2("sam2_hiera_t.yaml", str(checkpoint), device="cpu", apply_postprocessing=False),
        multimask_output=False, **SAM_SETTINGS)
    with torch.no_grad():
        records = reference.generate(image)
    want = np.zeros(image.shape[:2], dtype=int)
    for k, rec in enumerate(sorted(records, key=lambda r: r["area"]), start=1):
        want[rec["segmentation"]] = k
    assert records and got.max() == len(records)
    assert np.array_equal(got, want)
    record = source_record("sam2:sam2_hiera_t.yaml", "vit_b", str(checkpoint))
    assert record["settings"]["multimask_output"] is False and record["sam_model"] is None
    assert len(record["weights_sha256"]) == 64


def _reference_postprocess(seg_logit, query_idx, logit_scale, prob_thd):
    """CorrCLIP's postprocess_result restated (OV-Stitcher's and TextRegion's merge the same way), on the query rows
    in its class file's order: the softmax, the first Q - C + 1 rows' max, then each later row one class."""
    probs = (seg_logit * logit_scale).softmax(0)
    num_cls, num_queries = int(max(query_idx)) + 1, len(query_idx)
    if num_cls != num_queries:
        probs = torch.cat([probs[: num_queries - num_cls + 1].max(0, keepdim=True)[0],
                           probs[num_queries - num_cls + 1:]])
    pred = probs.argmax(0)
    pred[probs.max(0)[0] < prob_thd] = 0
    return probs, pred


def test_query_merge_reference_is_the_references_merge_by_position_and_max_each_classs_own():
    """--query-merge reference repeats the references' merge by position: with synonyms on the background's row
    alone it equals max; with a synonym on a class's row it moves the later rows onto the next classes, as their
    code does, and max keeps each class's own."""
    from vpltool.config import SegmentConfig
    from vpltool.errors import VplError
    from vpltool.models.dense.queries import merged_probabilities, reference_query_class

    # vpltool's order: class 1..3's queries, then the background's words (class 0)
    plain = torch.tensor([1, 2, 3, 0, 0])
    assert torch.equal(reference_query_class(plain), plain)  # synonyms on the background's row alone
    synonyms = torch.tensor([1, 2, 2, 3, 0, 0])  # class 2 has two queries
    assert reference_query_class(synonyms).tolist() == [0, 1, 2, 3, 0, 0]
    file_order = torch.tensor([4, 5, 0, 1, 2, 3])  # the class file's rows: background, then classes 1..3
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, 9, generator=gen) * 0.3
    settings = SegmentConfig.of(dense="corrclip").resolved()
    want_probs, want = _reference_postprocess(logits[file_order], [0, 0, 1, 2, 2, 3], settings.logit_scale,
                                              settings.prob_threshold)
    cfg = SegmentConfig.of(dense="corrclip", query_merge="reference")
    probs, labels = merged_probabilities(cfg, logits, synonyms, 4, settings)
    assert torch.equal(labels, want) and torch.allclose(probs, want_probs, atol=1e-7)
    _, own = merged_probabilities(SegmentConfig.of(dense="corrclip"), logits, synonyms, 4, settings)
    assert not torch.equal(own, want)  # max: each class over its own rows, where the reference's shifted them
    with pytest.raises(VplError, match="--query-merge 'median'"):
        SegmentConfig.of(dense="textregion", query_merge="median")
    assert SegmentConfig.of(dense="ov-stitcher", query_merge="reference").knobs.query_merge == "reference"

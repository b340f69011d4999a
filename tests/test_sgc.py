"""SSR's spatial rectification in `cam`: the superpixel-group mask on CAA's affinity (SGC) and the DINO attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpltool import io
from vpltool.config import CamConfig, ExtractConfig
from vpltool.errors import VplError
from vpltool.models import DinoBackbone, DinoSpec, check_dino, load_backbone, load_dino
from vpltool.stages.cam import (
    affinity,
    caa_attention,
    caa_transition,
    cached_tokens,
    cams_for_image,
    group_mask,
    kmeans,
    patch_majority,
    refine,
    run_cam,
    superpixel_groups,
)

timm = pytest.importorskip("timm")


def _tiny_vit(name: str = "vit_tiny_patch16_224", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, depth=2, embed_dim=32,
                             num_heads=2, **kw)


# --------------------------------------------------------------------------------------------- the mask
def test_group_mask_hand_computed():
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(group_mask(np.array([3, 3, 7, 7])), expected)


def test_patch_majority_and_its_mask_on_a_2x2_grid():
    # a 4x4 label image over a 2x2 patch grid: each patch holds a 2x2 block of pixels
    labels = np.array([[0, 0, 1, 1],
                       [0, 1, 1, 1],
                       [2, 2, 1, 0],
                       [2, 2, 0, 0]])
    groups = patch_majority(labels, (2, 2))
    assert groups.tolist() == [0, 1, 2, 0]  # top-left 3 of 4 are 0, bottom-right 3 of 4 are 0
    expected = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.float32)
    assert torch.equal(group_mask(groups), expected)


def test_patch_majority_fills_patches_no_pixel_falls_in():
    labels = np.array([[0, 1]])  # a 1x2 image on a 2x4 grid: half the patches get no pixel
    assert patch_majority(labels, (2, 4)).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


def test_sgc_mask_stops_propagation_across_groups():
    """Hand case: T all ones on a 2x2 grid, groups {0, 1} | {2, 3}, cam (1, .5, 0, 0): the box holds patches 0 and 1.
    Without the mask every patch receives 1.5 (a flat map); with it only group {0, 1} does."""
    cams = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    trans = torch.ones(4, 4)
    plain = refine(cams, trans, threshold=0.4)
    assert torch.equal(plain.before_minmax.flatten(), torch.full((4,), 1.5))
    masked = refine(cams, trans * group_mask(np.array([0, 0, 1, 1])), threshold=0.4)
    assert torch.equal(masked.before_minmax.flatten(), torch.tensor([1.5, 1.5, 0.0, 0.0]))
    assert torch.allclose(masked.maps.flatten(), torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-6)


def test_kmeans_separates_two_blobs_and_is_seeded():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2))])
    labels = kmeans(x, 2, seed=3)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
    assert np.array_equal(labels, kmeans(x, 2, seed=3))
    assert len(set(kmeans(np.zeros((5, 2)), 3))) == 1  # fewer distinct rows than clusters: one group


def test_superpixel_groups_follow_colour():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = (220, 30, 30)
    image[:, 16:] = (30, 30, 220)
    groups = superpixel_groups(image, (2, 2), n_segments=4, n_clusters=2, position=0.0)
    assert groups[0] == groups[2] and groups[1] == groups[3] and groups[0] != groups[1]


# --------------------------------------------------------------------------------------------- inside cam
@pytest.fixture(scope="module")
def one_image(tiny_spec, features_dir, world):
    from vpltool.data import open_dataset

    bb = load_backbone(tiny_spec)
    items = open_dataset(world, "train").by_id()
    path = next(p for p in sorted(features_dir.glob("*.safetensors")) if io.read_features(p).labels)
    feats = io.read_features(path)
    image = io.load_image(items[feats.id].image)
    return bb, cached_tokens(bb, path, None, image, ExtractConfig()), image


def test_caa_transition_default_is_clip_es_and_sgc_masks_it(one_image, text_protos):
    bb, tokens, image = one_image
    cam = bb.gradcam(tokens.last_block_input, tokens.grid, io.read_prototypes(text_protos).image_rows(tokens.labels),
                     len(tokens.labels), 0.01)
    plain = affinity(caa_attention(tokens, cam.attention, 8, bb.n_blocks))
    assert torch.equal(caa_transition(bb, tokens, cam.attention, CamConfig(), image), plain)
    cfg = CamConfig(refine="caa+sgc", sgc_segments=16, sgc_clusters=3)
    groups = superpixel_groups(image, tokens.grid, 16, 3, cfg.sgc_compactness, cfg.sgc_position)
    assert len(set(groups.tolist())) > 1  # the check below would be vacuous with one group
    assert torch.equal(caa_transition(bb, tokens, cam.attention, cfg, image), plain * group_mask(groups))


def test_caa_sgc_maps_stay_on_the_patch_grid(one_image, text_protos):
    bb, tokens, image = one_image
    res = cams_for_image(bb, tokens, io.read_prototypes(text_protos), CamConfig(refine="caa+sgc"), 0.01, image)
    assert res.maps.shape[1:] == tokens.grid and res.maps.min() >= 0 and res.maps.max() <= 1
    plain = cams_for_image(bb, tokens, io.read_prototypes(text_protos), CamConfig(), 0.01, image)
    assert not torch.equal(res.maps, plain.maps)


# --------------------------------------------------------------------------------------------- DINO attention
def test_dino_attention_equals_timms_own_weights():
    model = _tiny_vit()
    dino = DinoBackbone(model, torch.device("cpu"))
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    seen = []
    for block in model.blocks:  # timm's unfused path computes the weights; attn_drop (identity in eval) sees them
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out.mean(1)[0, 1:, 1:]))
    att = dino.attention(image, (4, 5), n_blocks=8)
    assert att.shape == (20, 20)  # the CLIP grid, whatever DINO's own input size
    assert torch.allclose(att, torch.stack(seen).mean(0), atol=1e-6)  # both blocks (8 asked, 2 exist)
    assert torch.allclose(dino.attention(image, (4, 5), n_blocks=1), seen[-1], atol=1e-6)


def test_dino_grid_matches_clip_for_patch_14_and_registers():
    model = _tiny_vit("vit_small_patch14_reg4_dinov2", img_size=56)
    dino = DinoBackbone(model, torch.device("cpu"))
    assert dino.patch_size == 14 and dino.n_prefix == 5  # class token + 4 registers dropped
    att = dino.attention(np.zeros((40, 60, 3), np.uint8), (3, 6), n_blocks=2)
    assert att.shape == (18, 18) and (att >= 0).all() and (att.sum(1) < 1).all()


def test_clip_dino_mix_is_weighted_before_the_normalisation(one_image, text_protos):
    bb, tokens, image = one_image
    cam = bb.gradcam(tokens.last_block_input, tokens.grid, io.read_prototypes(text_protos).image_rows(tokens.labels),
                     len(tokens.labels), 0.01)
    dino = DinoBackbone(_tiny_vit(), torch.device("cpu"))
    clip_att = caa_attention(tokens, cam.attention, 8, bb.n_blocks)
    dino_att = dino.attention(image, tokens.grid, 8)
    mixed = caa_transition(bb, tokens, cam.attention, CamConfig(affinity="clip+dino"), image, dino)
    assert torch.allclose(mixed, affinity(0.4 * clip_att + 0.6 * dino_att), atol=1e-6)
    alone = caa_transition(bb, tokens, cam.attention, CamConfig(affinity="dino"), image, dino)
    assert torch.allclose(alone, affinity(dino_att), atol=1e-6)
    # random attention is near uniform, so the matrices differ little, but they differ
    assert (mixed - affinity(clip_att)).abs().max() > 1e-6


def test_dino_weights_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    model = _tiny_vit()
    path = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_dino(DinoSpec("vit_tiny_patch16_224", str(path)), depth=2, embed_dim=32, num_heads=2)
    image = np.full((32, 48, 3), 100, np.uint8)
    assert torch.allclose(loaded.attention(image, (2, 3), 2), DinoBackbone(model, "cpu").attention(image, (2, 3), 2))


def test_dino_weights_unavailable_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VplError, match="offline.*--dino-weights"):
        check_dino(DinoSpec("vit_small_patch16_224.dino"))
    with pytest.raises(VplError, match="not a timm model"):
        check_dino(DinoSpec("no_such_vit"))


def test_cam_stage_with_random_dino_end_to_end(features_dir, text_protos, tmp_path):
    plain = run_cam(features_dir, text_protos, tmp_path / "clip", CamConfig())
    cfg = CamConfig(affinity="clip+dino", dino_model="vit_tiny_patch16_224", dino_weights="none")
    run_cam(features_dir, text_protos, tmp_path / "mixed", cfg)
    assert plain.done == 6
    first = sorted((tmp_path / "clip").glob("*.safetensors"))
    changed = [not np.array_equal(io.read_cam(p).cams, io.read_cam(tmp_path / "mixed" / p.name).cams)
               for p in first if io.read_cam(p).labels]
    assert changed and all(changed)


@pytest.mark.parametrize("kwargs, words", [
    ({"affinity": "sam"}, "--affinity"),
    ({"affinity": "clip+dino", "affinity_weight": 1.5}, "--affinity-weight"),
    ({"affinity": "dino", "refine": "none"}, "needs --refine"),
    ({"affinity": "dino", "parity": "clip-es"}, "parity"),
    ({"sgc_clusters": 0}, "--sgc-clusters"),
    ({"sgc_position": -1.0}, "--sgc-position"),
])
def test_bad_ssr_options_are_refused(kwargs, words):
    with pytest.raises(VplError, match=words):
        CamConfig(**kwargs)

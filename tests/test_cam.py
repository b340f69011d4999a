"""CAM stage: CLIP-ES property tests (CLIP-ES generate_cams_voc12.py, utils.py) and stage behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpltool import io
from vpltool.config import ExtractConfig, RuntimeConfig
from vpltool.errors import ContractError, VplError
from vpltool.models import load_backbone
from vpltool.ops.kernels import minmax
from vpltool.stages.cam import affinity, box_mask, refine, run_cam
from vpltool.stages.extract import run_extract


def _stochastic(n: int, seed: int = 0) -> torch.Tensor:
    a = torch.rand(n, n, generator=torch.Generator().manual_seed(seed))
    return a / a.sum(1, keepdim=True)


def test_affinity_is_symmetric_and_non_negative():
    t = affinity(_stochastic(12))
    assert torch.allclose(t, t.T, atol=1e-6)
    assert (t >= 0).all()


def test_masked_columns_do_not_propagate():
    cams = torch.zeros(1, 3, 4)
    cams[0, 0, 0] = 1.0  # the only box is the top-left patch
    trans = affinity(_stochastic(12, seed=1))
    out = refine(cams, trans, threshold=0.4).maps
    expected = trans[:, 0] / trans[:, 0].max()  # only column 0 survives the box mask, then min-max
    expected = (expected - expected.min()) / (expected.max() - expected.min() + 1e-7)
    assert torch.allclose(out.flatten(), expected.float(), atol=1e-5)


def test_minmax_range():
    m = minmax(torch.randn(3, 5, 6))
    assert m.min() >= 0 and torch.allclose(m.flatten(1).amax(1), torch.ones(3), atol=1e-5)
    assert minmax(torch.zeros(1, 2, 2)).abs().max() == 0  # all-zero map stays zero, no NaN


@pytest.mark.parametrize(
    "cam, threshold, parity, expected",
    [
        # strict '>' against int(thr * max(uint8)): 0.4*255 -> 102, a pixel at exactly 102/255 is out
        (np.array([[0, 102 / 255], [1, 0]]), 0.4, False, np.array([[0, 0], [1, 0]])),
        # two separate blobs -> two boxes (all contours, not only the largest)
        (np.array([[1, 0, 0, 1], [0, 0, 0, 0]]), 0.4, False, np.array([[1, 0, 0, 1], [0, 0, 0, 0]])),
        # a box touching the right/bottom border: CLIP-ES drops the last row/column, the default keeps it
        (np.array([[0, 0, 0], [0, 1, 1], [0, 1, 1]]), 0.4, True, np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])),
        (np.array([[0, 0, 0], [0, 1, 1], [0, 1, 1]]), 0.4, False, np.array([[0, 0, 0], [0, 1, 1], [0, 1, 1]])),
        # nothing above the threshold of an all-zero map -> empty mask
        (np.zeros((3, 3)), 0.4, False, np.zeros((3, 3))),
    ],
)
def test_box_mask_goldens(cam, threshold, parity, expected):
    assert np.array_equal(box_mask(cam.astype(np.float32), threshold, parity), expected.astype(np.float32))


def test_batched_gradcam_equals_per_class(tiny_spec, features_dir, text_protos):
    bb = load_backbone(tiny_spec)
    path = next(p for p in sorted(features_dir.glob("*.safetensors")) if len(io.read_features(p).labels) >= 2)
    feats = io.read_features(path)
    protos = io.read_prototypes(text_protos)
    rows = torch.cat([protos.vectors[protos.class_rows()[[c - 1 for c in feats.labels]]],
                      protos.vectors[protos.background_rows()]])
    k = len(feats.labels)
    out = bb.gradcam(feats.last_block_input, feats.grid, rows, k, 0.01)
    batched, attn, probs = out.maps, out.attention, out.probs
    assert torch.allclose(probs.sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(attn.sum(-1), torch.ones(attn.shape[0]), atol=1e-4)
    for j in range(k):  # one class at a time: put class j first and ask for a single map
        order = [j] + [i for i in range(len(rows)) if i != j]
        single = bb.gradcam(feats.last_block_input, feats.grid, rows[order], 1, 0.01).maps
        # the softmax is over the same rows, so class j's probability and its gradient are identical
        assert torch.allclose(single[0], batched[j], atol=1e-5)


def test_cam_stage_outputs(features_dir, text_protos, tmp_path, world):
    out = tmp_path / "cams"
    summary = run_cam(features_dir, text_protos, out, overlays=tmp_path / "ov")
    assert summary.done == len(list(features_dir.glob("*.safetensors")))
    assert io.read_stage_record(out, "cam")["count"] == summary.done
    for path in sorted(out.glob("*.safetensors")):
        maps = io.read_cam(path)
        cams, labels = maps.cams, maps.labels
        feats = io.read_features(features_dir / path.name)
        assert labels == feats.labels
        # stored on the patch grid, read back at image size
        assert maps.file["cams"].shape == (len(labels), *feats.grid)
        assert cams.shape == (len(labels), *feats.image_size)
        # min-max happens at patch resolution, then the bilinear resize (CLIP-ES order): in [0, 1], max may be < 1
        assert len(labels) == 0 or (cams.min() >= 0 and cams.max() <= 1)
    assert any((tmp_path / "ov").glob("*.png"))
    again = run_cam(features_dir, text_protos, out)
    assert again.done == 0 and again.skipped == summary.done


@pytest.mark.numeric
def test_cache_and_no_cache_give_the_same_cams(world, tiny_spec, features_dir, text_protos, tmp_path):
    """The full cache's tokens and a light cache's, made again by `cam`, in one dtype: --precision auto's, as the
    session's features were made (bf16 on a CPU with AMX). A cam in another dtype than its features is refused."""
    from vpltool.data import open_dataset

    no_tokens = tmp_path / "features_no_tokens"
    cpu = RuntimeConfig(device="cpu")
    run_extract(open_dataset(world, "train"), no_tokens, tiny_spec, ExtractConfig(cache="light"), cpu)
    a, b = tmp_path / "a", tmp_path / "b"
    run_cam(features_dir, text_protos, a, runtime=cpu)
    run_cam(no_tokens, text_protos, b, runtime=cpu)
    for path in sorted(a.glob("*.safetensors")):
        ca, cb = io.read_cam(path).cams, io.read_cam(b / path.name).cams
        assert np.allclose(ca.astype(np.float32), cb.astype(np.float32), atol=2e-3)


def test_vision_prototypes_are_accepted_and_change_the_maps(features_dir, text_protos, tmp_path):
    text = io.read_prototypes(text_protos)
    gen = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(text.vectors + 0.5 * torch.randn(text.vectors.shape, generator=gen), dim=1)
    vision = io.Prototypes(vectors, text.row_class, text.row_names, classes=text.classes, temperature=0.03,
                           source="vision", model=text.model)
    io.write_prototypes(tmp_path / "vision.safetensors", vision)
    run_cam(features_dir, text_protos, tmp_path / "t")
    run_cam(features_dir, tmp_path / "vision.safetensors", tmp_path / "v")
    assert io.read_stage_record(tmp_path / "v", "cam")["params"]["temperature"] == pytest.approx(0.03)
    diffs = [np.abs(io.read_cam(p).cams.astype(np.float32) - io.read_cam(tmp_path / "v" / p.name).cams).max()
             for p in sorted((tmp_path / "t").glob("*.safetensors")) if len(io.read_cam(p).labels)]
    assert max(diffs) > 1e-3


def test_wrong_dimension_prototypes_are_refused(features_dir, text_protos, tmp_path):
    text = io.read_prototypes(text_protos)
    wide = torch.nn.functional.normalize(torch.randn(len(text.vectors), text.dim + 4), dim=1)
    bad = io.Prototypes(wide, text.row_class, text.row_names, classes=text.classes, temperature=0.01,
                        source="text", model=text.model)
    io.write_prototypes(tmp_path / "wide.safetensors", bad)
    with pytest.raises(ContractError, match="wide.safetensors"):
        run_cam(features_dir, tmp_path / "wide.safetensors", tmp_path / "cams")
    assert not any((tmp_path / "cams").glob("*.safetensors"))


def test_save_debug_writes_every_step(features_dir, text_protos, tmp_path):
    from vpltool.ops.kernels import upsample

    run_cam(features_dir, text_protos, tmp_path / "cams", debug=tmp_path / "debug")
    protos = io.read_prototypes(text_protos)
    n_bg = len(protos.background_rows())
    checked = 0
    for path in sorted((tmp_path / "cams").glob("*.safetensors")):
        maps = io.read_cam(path)
        cams, labels = torch.from_numpy(maps.cams.astype(np.float32)), torch.tensor(maps.labels, dtype=torch.int64)
        d = io.read_cam_debug(tmp_path / "debug" / path.name)
        k, (h, w) = len(labels), io.read_features(features_dir / path.name).grid
        assert d["raw"].shape == (k, h, w) and d["probs"].shape == (k + n_bg,)
        assert torch.equal(d["labels"], labels) and len(d.meta("row_names")) == k + n_bg
        assert torch.allclose(d["probs"].sum(), torch.tensor(1.0), atol=1e-5)
        if k == 0:
            continue
        checked += 1
        assert d["raw"].min() >= 0 and d["raw"].max() <= 1
        boxes = d["boxes"]
        assert boxes.shape[1] == 5 and set(boxes[:, 0].tolist()) <= set(range(k))
        assert (boxes[:, 1] < boxes[:, 3]).all() and (boxes[:, 3] <= w).all() and (boxes[:, 4] <= h).all()
        # the stored CAM is the min-max of the debug's pre-min-max map, resized to the image
        assert torch.allclose(upsample(minmax(d["refined_before_minmax"]), cams.shape[1:]), cams, atol=2e-3)
    assert checked


def test_cam_straight_from_a_dataset_equals_cam_from_an_extract_cache(world, features_dir, text_protos, tmp_path):
    """One process, no cache: the same maps as extract + cam (which rounds the cached tokens to fp16)."""
    run_cam(features_dir, text_protos, tmp_path / "cached")
    summary = run_cam(world, text_protos, tmp_path / "direct", split="train")
    assert summary.done == len(io.item_ids(tmp_path / "cached"))
    record = io.read_stage_record(tmp_path / "direct", "cam")
    assert "features" not in record["inputs"] and record["inputs"]["dataset"]["split"] == "train"
    for item_id in io.item_ids(tmp_path / "cached"):
        a, b = io.read_cam(io.cam_path(tmp_path / "cached", item_id)), io.read_cam(io.cam_path(tmp_path / "direct",
                                                                                                 item_id))
        assert a.labels == b.labels and a.cams.shape == b.cams.shape
        if a.labels:
            assert np.abs(a.cams.astype(np.float32) - b.cams.astype(np.float32)).max() < 2e-2


def test_split_is_refused_on_an_extract_folder(features_dir, text_protos, tmp_path):
    from vpltool.errors import VplError

    with pytest.raises(VplError, match="--split"):
        run_cam(features_dir, text_protos, tmp_path / "cams", split="val")


def test_cam_applies_the_token_limit_extract_recorded(features_dir, text_protos, tmp_path):
    """`cam` re-runs the last block (and recomputes every block for a light cache): an extract folder made before
    the limit, or with a higher one than its record says, is refused per image, in one line."""
    import json
    import shutil

    features = tmp_path / "features"
    shutil.copytree(features_dir, features)
    record = json.loads((features / io.STAGE_RECORD).read_text())
    record["params"]["max_tokens"] = 10  # the world's scenes are 36 tokens
    (features / io.STAGE_RECORD).write_text(json.dumps(io.seal(record)))  # sealed again: not an edit here
    with pytest.raises(VplError, match=r"train_000000\.safetensors: 96x96 pixels make 36 patch tokens .* "
                                       r"re-run `vpltool extract` with --max-side 48"):
        run_cam(features, text_protos, tmp_path / "cams")
    assert not (tmp_path / "cams").exists()


# --------------------------------------------------------------------------------------------- batching
def _cams(folder):
    paths = sorted(folder.glob("*.safetensors"))
    return {p.stem: io.read_tensors(p, kind="cam", framework="pt")["cams"] for p in paths}


@pytest.mark.parametrize("source", ["full", "light", "dataset"])
def test_batches_give_exactly_the_maps_of_single_images(source, world, tiny_spec, features_fp32, text_protos, tmp_path):
    """Batched (4 images, loaded by 2 worker processes) against one image at a time in fp32, whether the tokens come
    from the cache, from a light cache's images, or from the dataset directly.

    Not bit for bit: the CPU's batched attention product (``bmm`` over B x heads matrices) rounds differently at
    some batch sizes (here 2 against 1), by ~1e-7 in the raw scores, which CAA's final min-max magnifies to <= 1e-3;
    every product vpltool writes itself is batch-invariant (`test_gradcam_batch_equals_gradcam_per_image`)."""
    from vpltool.data import open_dataset

    if source == "light":
        src = tmp_path / "light"
        run_extract(open_dataset(world, "train"), src, tiny_spec, ExtractConfig(cache="light"),
                    RuntimeConfig(device="cpu", precision="fp32", workers=1))
    else:
        src = features_fp32 if source == "full" else world
    split = "train" if source == "dataset" else None
    one = RuntimeConfig(device="cpu", precision="fp32", batch_size=1, workers=1)
    four = RuntimeConfig(device="cpu", precision="fp32", batch_size=4, workers=2)
    run_cam(src, text_protos, tmp_path / "one", runtime=one, split=split)
    run_cam(src, text_protos, tmp_path / "four", runtime=four, split=split)
    a, b = _cams(tmp_path / "one"), _cams(tmp_path / "four")
    assert sorted(a) == sorted(b) and len(a) == 6
    assert any(len(m) > 1 for m in a.values())  # some image has several classes: the slot backward is exercised
    for item_id in a:
        assert torch.allclose(a[item_id], b[item_id], rtol=0, atol=1e-3), item_id


def test_gradcam_batch_equals_gradcam_per_image(features_dir, text_protos, tiny_spec):
    """Batched by label count: a batch gives each image's maps and softmax as the image alone, up to the
    rounding of torch's batched attention product on the CPU (``bmm`` over rows x heads matrices rounds differently
    at some row counts, with autograd on; ~1e-7 in the raw scores): every product vpltool writes itself (the image
    embedding's projection, the GradCAM sum, CAA's propagation) is batch-invariant."""
    from vpltool.stages.cam import PrototypeRows

    bb = load_backbone(tiny_spec, "cpu")
    protos = io.read_prototypes(text_protos)
    feats = [io.read_features(p) for p in sorted(features_dir.glob("*.safetensors"))][:4]
    tokens = torch.stack([f.last_block_input for f in feats])
    labels = [f.labels for f in feats]
    batch = bb.gradcam_batch(tokens, feats[0].grid, PrototypeRows(protos, bb.device).for_labels(labels), 0.01)
    assert batch.offsets[-1] == len(batch.maps) == sum(len(lab) for lab in labels)
    for b, f in enumerate(feats):
        single = bb.gradcam(f.last_block_input, f.grid, protos.image_rows(f.labels), len(f.labels), 0.01)
        assert torch.allclose(batch.image_maps(b), single.maps, rtol=0, atol=1e-3)
        assert torch.allclose(batch.probs[b], single.probs, rtol=0, atol=1e-5)
        assert torch.allclose(batch.attention[b], single.attention, rtol=0, atol=1e-6)


def test_an_image_without_labels_gets_no_map_but_its_softmax(features_dir, text_protos, tiny_spec):
    from vpltool.stages.cam import PrototypeRows

    bb = load_backbone(tiny_spec, "cpu")
    protos = io.read_prototypes(text_protos)
    f = io.read_features(sorted(features_dir.glob("*.safetensors"))[0])
    tokens = torch.stack([f.last_block_input] * 3)
    batch = bb.gradcam_batch(tokens, f.grid, PrototypeRows(protos, bb.device).for_labels([(), f.labels, ()]), 0.01)
    assert batch.offsets == [0, 0, len(f.labels), len(f.labels)] and len(batch.maps) == len(f.labels)
    m = len(protos.background_rows())
    assert [len(p) for p in batch.probs] == [m, len(f.labels) + m, m]
    assert torch.allclose(batch.probs[0].sum(), torch.tensor(1.0)) and torch.equal(batch.probs[0], batch.probs[2])


def test_a_batch_costs_the_flops_of_its_images_alone(features_dir, text_protos, tiny_spec):
    """No padded class slots (FlopCounterMode, forward and backward): a batch of a 1-label and a 6-label image costs
    what the two cost alone (padding to the batch's largest label count cost 2 x 6 backward slots), and an image's
    cost grows linearly with its labels."""
    from torch.utils.flop_counter import FlopCounterMode

    from vpltool.stages.cam import PrototypeRows

    bb = load_backbone(tiny_spec, "cpu")
    rows = PrototypeRows(io.read_prototypes(text_protos), bb.device)
    f = io.read_features(sorted(features_dir.glob("*.safetensors"))[0])

    def cost(labels):
        tokens = torch.stack([f.last_block_input] * len(labels))
        with FlopCounterMode(display=False) as counter:
            bb.gradcam_batch(tokens, f.grid, rows.for_labels(labels), 0.01)
        return counter.get_total_flops()

    one, two, six = cost([(1,)]), cost([(1, 2)]), cost([(1, 2, 3, 4, 5, 6)])
    assert cost([(1,), (1, 2, 3, 4, 5, 6)]) == one + six
    assert six - one == 5 * (two - one) > 0


def test_box_masks_on_the_device_equal_the_contour_boxes():
    """The batched box masks (connected components, on the maps' device) equal the union of OpenCV's contour boxes
    (CLIP-ES's scoremap2bbox), on blobs, noise, rings with islands inside, empty and full maps, both box-end rules."""
    import cv2

    from vpltool.stages.cam import box_masks

    rng = np.random.default_rng(0)
    maps = []
    for i in range(120):
        h, w = rng.integers(1, 24, 2)
        m = rng.random((h, w)).astype(np.float32)
        if i % 3 == 0:
            m = cv2.GaussianBlur(m, (5, 5), 2)
        maps.append((m - m.min()) / (m.max() - m.min() + 1e-7))
    ring = np.zeros((9, 9), np.float32)
    ring[1:8, 1:8], ring[2:7, 2:7], ring[4, 4] = 1, 0, 1  # a ring with an island: holes and nested contours
    maps += [ring, np.zeros((5, 6), np.float32), np.ones((4, 4), np.float32)]
    for m in maps:
        for parity in (False, True):
            expected = box_mask(m, 0.4, parity)
            got = box_masks(torch.from_numpy(m)[None], 0.4, parity)[0].numpy()
            assert np.array_equal(expected, got), (m.shape, parity)


def test_a_hand_made_box_mask():
    from vpltool.stages.cam import box_masks

    cam = torch.zeros(1, 5, 6)
    cam[0, 1, 1] = cam[0, 2, 2] = 1.0  # diagonal neighbours: one 8-connected component
    cam[0, 4, 5] = 0.9  # a second component in the corner
    expected = torch.zeros(5, 6)
    expected[1:3, 1:3] = 1
    expected[4, 5] = 1
    assert torch.equal(box_masks(cam, 0.4)[0], expected)
    clipped = expected.clone()
    clipped[4, 5] = 0  # CLIP-ES clips the box end to W-1 / H-1: the corner box is empty
    assert torch.equal(box_masks(cam, 0.4, parity=True)[0], clipped)


def _spiral(n: int) -> np.ndarray:
    """An ``n x n`` square spiral of width 1 with gaps of 1 (drawn inward, turning right where the path would run
    out or touch itself): one component whose path is ~n^2 / 2 pixels, the longest a square grid holds."""
    grid = np.zeros((n, n), bool)
    r = c = d = 0
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    grid[0, 0] = True
    while True:
        for _ in range(2):  # ahead, else after one right turn
            dr, dc = steps[d]
            r1, c1, r2, c2 = r + dr, c + dc, r + 2 * dr, c + 2 * dc
            free = 0 <= r1 < n and 0 <= c1 < n and not grid[r1, c1]
            if free and not (0 <= r2 < n and 0 <= c2 < n and grid[r2, c2]):
                r, c = r1, c1
                grid[r, c] = True
                break
            d = (d + 1) % 4
        else:
            return grid


def _serpentine(h: int, w: int, reverse: bool = False) -> np.ndarray:
    """Rows of a snake joined at alternate ends: one component, path length ~ h * w / 2."""
    grid = np.zeros((h, w), bool)
    grid[::2] = True
    for r in range(1, h, 2):
        grid[r, (w - 1) if (r // 2) % 2 == 0 else 0] = True
    return grid[:, ::-1] if reverse else grid


def test_components_label_long_paths_exactly_with_their_fixed_number_of_steps():
    """The fixed round count of :func:`components` (no convergence test, so no synchronisation) against scipy's
    labelling on the longest paths a grid holds, in every orientation, and on random maps of many component sizes."""
    from vpltool.stages.cam import components

    shapes = [_spiral(n) for n in (5, 9, 16, 24, 31)] + [np.rot90(_spiral(24), k) for k in (1, 2, 3)]
    shapes += [_serpentine(24, 32), _serpentine(24, 32, True), _serpentine(31, 17).T, _spiral(24)[::-1]]
    rng = np.random.default_rng(1)
    shapes += [rng.random((24, 32)) < p for p in (0.3, 0.45, 0.6)]  # near the percolation threshold: many sizes
    for binary in shapes:
        binary = np.ascontiguousarray(binary)
        assert _same_partition(binary, components(torch.from_numpy(binary)[None])[0].numpy()), binary.shape


def _same_partition(binary: np.ndarray, labels: np.ndarray) -> bool:
    from scipy import ndimage

    expected, count = ndimage.label(binary, structure=np.ones((3, 3)))
    pairs = {(int(a), int(b)) for a, b in zip(expected[binary], labels[binary])}
    return bool(((labels > 0) == binary).all()) and len(pairs) == count == len({b for _, b in pairs})


def test_fewer_rounds_than_the_bound_can_leave_a_component_split():
    """The round count matters: on a random map near the percolation threshold the same steps stopped after two
    rounds leave a component split (so the tests above could fail); the bound, never an early stop, labels it."""
    from vpltool.stages.cam import components

    binary = np.random.default_rng(3).random((24, 32)) < 0.45
    assert not _same_partition(binary, components(torch.from_numpy(binary)[None], rounds=2)[0].numpy())
    assert _same_partition(binary, components(torch.from_numpy(binary)[None])[0].numpy())


@pytest.mark.cuda
def test_the_gpu_batched_path_matches_the_cpu(world, tiny_spec, text_protos, tmp_path):
    """The batched CUDA path (bf16 blocks, batched backward, CAA on the GPU) against the per-image CPU one, both at
    bf16 on the same bf16 features (``auto`` on CUDA; a run refuses features of another dtype than its own)."""
    from vpltool.data import open_dataset

    torch.manual_seed(0)
    bf16 = RuntimeConfig(device="cpu", precision="bf16", workers=1)
    run_extract(open_dataset(world, "train"), tmp_path / "features", tiny_spec, ExtractConfig(cache="full"), bf16)
    run_cam(tmp_path / "features", text_protos, tmp_path / "cpu", runtime=bf16)
    run_cam(tmp_path / "features", text_protos, tmp_path / "gpu", runtime=RuntimeConfig(device="cuda", batch_size=4))
    a, b = _cams(tmp_path / "cpu"), _cams(tmp_path / "gpu")
    assert sorted(a) == sorted(b)
    for item_id in a:
        assert torch.allclose(a[item_id], b[item_id], rtol=0, atol=5e-2), item_id  # bf16 blocks


@pytest.mark.cuda
def test_the_gpu_batched_path_from_a_dataset_matches_the_per_image_gpu_path(world, text_protos, tmp_path):
    run_cam(world, text_protos, tmp_path / "one", split="train", runtime=RuntimeConfig(device="cuda", batch_size=1))
    run_cam(world, text_protos, tmp_path / "six", split="train", runtime=RuntimeConfig(device="cuda", batch_size=6))
    a, b = _cams(tmp_path / "one"), _cams(tmp_path / "six")
    for item_id in a:
        assert torch.allclose(a[item_id], b[item_id], rtol=0, atol=5e-2), item_id  # bf16 blocks


def test_shards_complete_the_folder_together_and_torchrun_ranks_are_shards(features_dir, text_protos, tmp_path,
                                                                          monkeypatch):
    cpu = RuntimeConfig(device="cpu", workers=1)  # auto: the session's features' dtype
    first = run_cam(features_dir, text_protos, tmp_path / "c", runtime=cpu, shard=(0, 2))
    assert first.done == 3 and not io.stage_record_path(tmp_path / "c").exists()
    assert io.finished_shards(tmp_path / "c") == [(0, 2)]  # the next stage names the pending shard
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = run_cam(features_dir, text_protos, tmp_path / "c", runtime=cpu)  # torchrun's rank 1 of 2
    assert second.done == 3
    assert io.read_stage_record(tmp_path / "c", "cam")["count"] == 6  # the last shard completed the folder
    whole = tmp_path / "whole"
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    run_cam(features_dir, text_protos, whole, runtime=cpu)
    for path in sorted(whole.glob("*.safetensors")):
        assert torch.equal(io.read_tensors(path, kind="cam")["cams"],
                           io.read_tensors(tmp_path / "c" / path.name, kind="cam")["cams"])


def test_two_identical_cam_runs_give_byte_identical_files(features_dir, text_protos, tmp_path):
    """Tensors, metadata and the header's key order: the safetensors library writes its header in hash order, a new
    one per file, so without the canonical writer the bytes differed from run to run."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        run_cam(features_dir, text_protos, out)
    files = sorted(p.name for p in runs[0].iterdir() if not p.name.startswith("."))
    assert files == sorted(p.name for p in runs[1].iterdir() if not p.name.startswith("."))
    assert len([f for f in files if f.endswith(".safetensors")]) >= 4
    for name in files:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name


def test_affinity_share_against_chance():
    from vpltool.stages.cam import affinity_share

    regions = np.array([0, 0, 0, 1])  # three background patches, one object patch
    blind = torch.full((4, 4), 0.25)  # attends evenly everywhere: own share = chance
    own, chance = affinity_share(blind, regions)
    assert torch.allclose(own, chance) and torch.allclose(chance, torch.tensor([0.75, 0.75, 0.75, 0.25]))
    grouped = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 2]])  # no mass crosses regions
    own, _ = affinity_share(grouped, regions)
    assert torch.equal(own, torch.ones(4))
    own, _ = affinity_share(torch.ones(4, 4) - torch.eye(4), regions)  # everything elsewhere: the object keeps 0
    assert own[3] == 0 and torch.allclose(own[:3], torch.full((3,), 2 / 3))


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_raw_out_writes_the_refine_none_folder_from_the_caa_pass(features_dir, text_protos, tmp_path):
    """`cam --refine caa --raw-out DIR`: DIR holds the very bytes (maps, headers, record) of a `--refine none` run,
    and --out those of a plain caa run, from one GradCAM pass (the Makefile's demo rows rely on it)."""
    from vpltool.config import CamConfig

    run_cam(features_dir, text_protos, tmp_path / "none", CamConfig(refine="none"))
    run_cam(features_dir, text_protos, tmp_path / "caa", CamConfig(refine="caa"))
    both = run_cam(features_dir, text_protos, tmp_path / "both_caa", CamConfig(refine="caa"),
                   raw_out=tmp_path / "both_none")
    assert both.complete and both.done == len(list(features_dir.glob("*.safetensors")))
    none, caa = _files(tmp_path / "none"), _files(tmp_path / "caa")
    assert len([n for n in none if n.endswith(".safetensors")]) >= 4
    assert none != caa  # CAA changes the maps: the comparison below could fail
    assert _files(tmp_path / "both_none") == none
    assert _files(tmp_path / "both_caa") == caa
    again = run_cam(features_dir, text_protos, tmp_path / "both_caa", CamConfig(refine="caa"),
                    raw_out=tmp_path / "both_none")
    assert again.done == 0  # both folders complete: a resume has nothing to do


@pytest.mark.parametrize("refine, same", [("none", False), ("caa+sgc", False), ("caa", True)])
def test_raw_out_is_refused_where_it_would_not_be_the_none_folder(features_dir, text_protos, tmp_path, refine, same):
    from vpltool.config import CamConfig

    out = tmp_path / "cams"
    with pytest.raises(VplError, match="--raw-out"):
        run_cam(features_dir, text_protos, out, CamConfig(refine=refine), raw_out=out if same else tmp_path / "r")
    assert not out.exists() and not (tmp_path / "r").exists()  # refused before anything is written
